//! The embedded SQLite backend.
//!
//! One file in WAL mode, opened through two pools:
//!
//! ```text
//!   writes ──► writer pool (1 connection) ──► BEGIN IMMEDIATE … COMMIT
//!   reads  ──► reader pool (N connections, WAL snapshots, never block the writer)
//! ```
//!
//! SQLite allows one writer at a time; funnelling every write through one connection
//! queues writers in the pool instead of failing them with `SQLITE_BUSY`. Transactions
//! that read before they write start with `BEGIN IMMEDIATE`, so another process (the
//! `runnel keys` CLI) writing at the same moment makes them wait (`busy_timeout`) rather
//! than fail on a stale snapshot. `synchronous = NORMAL` in WAL mode survives a crash of
//! the process; only a power loss can drop the last commits.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use runnel_core::idempotency::{self, Decision};
use runnel_core::key::{EnvironmentKind, SecretKey};
use runnel_core::run::{Attempt, Run};
use runnel_core::tenancy::{ApiKeyInfo, Environment, Project};
use runnel_core::{EnvironmentId, ProjectId, RunId, RunStatus};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

use crate::rows::{
    self, api_key_info_from_row, attempt_from_row, environment_from_row, ms, opt_time,
    project_from_row, run_from_row, run_status, RUN_COLUMNS,
};
use crate::{Bootstrap, Error, Result, RevokeOutcome, Store, TriggerOutcome};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

const BUSY_TIMEOUT: Duration = Duration::from_secs(10);
const READER_CONNECTIONS: u32 = 4;

#[derive(Debug, Clone)]
pub struct SqliteStore {
    writer: SqlitePool,
    reader: SqlitePool,
}

impl SqliteStore {
    /// Opens (creating when missing) the database file at `path` and migrates it.
    pub async fn open(path: &Path) -> Result<Self> {
        let options = SqliteConnectOptions::new().filename(path);
        Self::open_with(options).await
    }

    /// Opens a `sqlite://…` url (or a bare file path).
    pub async fn open_url(url: &str) -> Result<Self> {
        let options = if url.starts_with("sqlite:") {
            SqliteConnectOptions::from_str(url)?
        } else if url.contains("://") {
            return Err(Error::UnsupportedUrl(url.to_owned()));
        } else {
            SqliteConnectOptions::new().filename(url)
        };
        Self::open_with(options).await
    }

    async fn open_with(options: SqliteConnectOptions) -> Result<Self> {
        let options = options
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(BUSY_TIMEOUT)
            .foreign_keys(true);
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .connect_with(options.clone())
            .await?;
        MIGRATOR.run(&writer).await?;
        let reader = SqlitePoolOptions::new()
            .max_connections(READER_CONNECTIONS)
            .connect_with(options.read_only(true))
            .await?;
        Ok(SqliteStore { writer, reader })
    }
}

async fn insert_run(conn: &mut sqlx::SqliteConnection, run: &Run) -> Result<(), sqlx::Error> {
    let placeholders = vec!["?"; rows::run_column_count()].join(", ");
    let sql = format!("INSERT INTO runs ({RUN_COLUMNS}) VALUES ({placeholders})");
    rows::bind_run(sqlx::query(&sql), run).execute(conn).await?;
    Ok(())
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.is_unique_violation())
}

/// Stores a key (hashed) for `environment`, inside whatever transaction or pool `db` is.
async fn api_key_insert_in<'e>(
    db: impl sqlx::Executor<'e, Database = sqlx::Sqlite>,
    key: &SecretKey,
    environment: &EnvironmentId,
    now: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO api_keys (key_hash, prefix, environment_id, created_at) VALUES (?, ?, ?, ?)",
    )
    .bind(key.hash())
    .bind(key.display_prefix())
    .bind(environment.as_str())
    .bind(ms(now))
    .execute(db)
    .await?;
    Ok(())
}

#[async_trait]
impl Store for SqliteStore {
    async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.reader).await?;
        Ok(())
    }

    async fn project_bootstrap(
        &self,
        dev_key: &SecretKey,
        now: DateTime<Utc>,
    ) -> Result<Option<Bootstrap>> {
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
        let existing: Option<String> = sqlx::query_scalar("SELECT id FROM projects LIMIT 1")
            .fetch_optional(&mut *tx)
            .await?;
        if existing.is_some() {
            return Ok(None);
        }
        let project = Project {
            id: ProjectId::generate(ms(now)),
            created_at: now,
        };
        sqlx::query("INSERT INTO projects (id, created_at) VALUES (?, ?)")
            .bind(project.id.as_str())
            .bind(ms(now))
            .execute(&mut *tx)
            .await?;
        let mut environments = Vec::new();
        for kind in EnvironmentKind::ALL {
            let environment = Environment {
                id: EnvironmentId::generate(ms(now)),
                project_id: project.id.clone(),
                kind,
            };
            sqlx::query(
                "INSERT INTO environments (id, project_id, kind, created_at) VALUES (?, ?, ?, ?)",
            )
            .bind(environment.id.as_str())
            .bind(project.id.as_str())
            .bind(kind.slug())
            .bind(ms(now))
            .execute(&mut *tx)
            .await?;
            environments.push(environment);
        }
        let dev = environments
            .iter()
            .find(|e| e.kind == EnvironmentKind::Dev)
            .expect("every kind was created");
        api_key_insert_in(&mut *tx, dev_key, &dev.id, now).await?;
        tx.commit().await?;
        Ok(Some(Bootstrap {
            project,
            environments,
        }))
    }

    async fn project_get(&self) -> Result<Option<Project>> {
        let row = sqlx::query("SELECT id, created_at FROM projects ORDER BY created_at LIMIT 1")
            .fetch_optional(&self.reader)
            .await?;
        row.as_ref().map(project_from_row).transpose()
    }

    async fn environment_get(&self, kind: EnvironmentKind) -> Result<Option<Environment>> {
        let row = sqlx::query("SELECT id, project_id, kind FROM environments WHERE kind = ?")
            .bind(kind.slug())
            .fetch_optional(&self.reader)
            .await?;
        row.as_ref().map(environment_from_row).transpose()
    }

    async fn api_key_insert(
        &self,
        key: &SecretKey,
        environment: &EnvironmentId,
        now: DateTime<Utc>,
    ) -> Result<()> {
        api_key_insert_in(&self.writer, key, environment, now).await?;
        Ok(())
    }

    async fn api_key_authenticate(&self, key_hash: &str) -> Result<Option<Environment>> {
        let row = sqlx::query(
            "SELECT e.id, e.project_id, e.kind FROM api_keys k JOIN environments e ON e.id = k.environment_id \
             WHERE k.key_hash = ? AND k.revoked_at IS NULL",
        )
        .bind(key_hash)
        .fetch_optional(&self.reader)
        .await?;
        row.as_ref().map(environment_from_row).transpose()
    }

    async fn api_key_list(&self) -> Result<Vec<ApiKeyInfo>> {
        let rows = sqlx::query(
            "SELECT k.prefix, e.kind, k.created_at, k.revoked_at FROM api_keys k \
             JOIN environments e ON e.id = k.environment_id ORDER BY k.created_at, k.prefix",
        )
        .fetch_all(&self.reader)
        .await?;
        rows.iter().map(api_key_info_from_row).collect()
    }

    async fn api_key_revoke(&self, prefix: &str, now: DateTime<Utc>) -> Result<RevokeOutcome> {
        if prefix.is_empty() {
            return Ok(RevokeOutcome::NotFound);
        }
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
        // `instr(prefix, ?) = 1` is "starts with" without LIKE's wildcards.
        let hashes: Vec<(String, String)> =
            sqlx::query_as("SELECT key_hash, prefix FROM api_keys WHERE revoked_at IS NULL AND instr(prefix, ?) = 1")
                .bind(prefix)
                .fetch_all(&mut *tx)
                .await?;
        let outcome = match hashes.as_slice() {
            [] => RevokeOutcome::NotFound,
            [(hash, full_prefix)] => {
                sqlx::query("UPDATE api_keys SET revoked_at = ? WHERE key_hash = ?")
                    .bind(ms(now))
                    .bind(hash)
                    .execute(&mut *tx)
                    .await?;
                RevokeOutcome::Revoked {
                    prefix: full_prefix.clone(),
                }
            }
            many => RevokeOutcome::Ambiguous {
                matches: many.len(),
            },
        };
        tx.commit().await?;
        Ok(outcome)
    }

    async fn run_trigger(&self, run: &Run, now: DateTime<Utc>) -> Result<TriggerOutcome> {
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
        if let Some(key) = &run.idempotency_key {
            let holder: Option<(String, String, Option<i64>)> = sqlx::query_as(
                "SELECT id, status, idempotency_key_expires_at FROM runs \
                 WHERE environment_id = ? AND task_identifier = ? AND idempotency_key = ?",
            )
            .bind(run.environment_id.as_str())
            .bind(&run.task_identifier)
            .bind(key)
            .fetch_optional(&mut *tx)
            .await?;
            if let Some((holder_id, status, expires_at)) = holder {
                match idempotency::decide(run_status(&status)?, opt_time(expires_at)?, now) {
                    Decision::ReturnExisting => {
                        return Ok(TriggerOutcome::Cached(RunId::from_trusted(holder_id)))
                    }
                    Decision::ReleaseAndCreate => {
                        sqlx::query(
                            "UPDATE runs SET idempotency_key = NULL, idempotency_key_expires_at = NULL, updated_at = ? \
                             WHERE id = ?",
                        )
                        .bind(ms(now))
                        .bind(&holder_id)
                        .execute(&mut *tx)
                        .await?;
                    }
                }
            }
        }
        // One writer connection serializes triggers, so the lookup above cannot race with
        // another insert from this process; the unique index still guards other writers.
        insert_run(&mut tx, run).await.map_err(|e| {
            if is_unique_violation(&e) {
                tracing::warn!(run = %run.id, "idempotency key taken by a concurrent writer");
            }
            Error::from(e)
        })?;
        tx.commit().await?;
        Ok(TriggerOutcome::Created(run.id.clone()))
    }

    async fn run_get(&self, environment: &EnvironmentId, id: &RunId) -> Result<Option<Run>> {
        let sql = format!("SELECT {RUN_COLUMNS} FROM runs WHERE id = ? AND environment_id = ?");
        let row = sqlx::query(&sql)
            .bind(id.as_str())
            .bind(environment.as_str())
            .fetch_optional(&self.reader)
            .await?;
        row.as_ref().map(run_from_row).transpose()
    }

    async fn run_children(&self, parent: &RunId) -> Result<Vec<Run>> {
        let sql = format!(
            "SELECT {RUN_COLUMNS} FROM runs WHERE parent_run_id = ? ORDER BY created_at, id"
        );
        let rows = sqlx::query(&sql)
            .bind(parent.as_str())
            .fetch_all(&self.reader)
            .await?;
        rows.iter().map(run_from_row).collect()
    }

    async fn run_transition(
        &self,
        id: &RunId,
        from: RunStatus,
        to: RunStatus,
        now: DateTime<Utc>,
    ) -> Result<bool> {
        if !from.can_move_to(to) {
            return Ok(false);
        }
        let completed_at = to.is_final().then_some(ms(now));
        let done = sqlx::query(
            "UPDATE runs SET status = ?, updated_at = ?, completed_at = COALESCE(?, completed_at) \
             WHERE id = ? AND status = ?",
        )
        .bind(to.as_str())
        .bind(ms(now))
        .bind(completed_at)
        .bind(id.as_str())
        .bind(from.as_str())
        .execute(&self.writer)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn run_expire_due(&self, now: DateTime<Utc>, limit: u32) -> Result<Vec<RunId>> {
        // The error is the upstream TaskRunError for an expired run.
        let ids: Vec<String> = sqlx::query_scalar(
            "UPDATE runs SET status = 'EXPIRED', expired_at = ?1, completed_at = ?1, updated_at = ?1, \
             error = json_object('type', 'STRING_ERROR', 'raw', 'Run expired because the TTL (' || ttl || ') was reached') \
             WHERE id IN (SELECT id FROM runs WHERE status = 'QUEUED' AND expire_at IS NOT NULL AND expire_at <= ?1 \
                          ORDER BY expire_at LIMIT ?2) \
             AND status = 'QUEUED' \
             RETURNING id",
        )
        .bind(ms(now))
        .bind(i64::from(limit))
        .fetch_all(&self.writer)
        .await?;
        Ok(ids.into_iter().map(RunId::from_trusted).collect())
    }

    async fn run_promote_due(&self, now: DateTime<Utc>, limit: u32) -> Result<Vec<RunId>> {
        let ids: Vec<String> = sqlx::query_scalar(
            "UPDATE runs SET status = 'QUEUED', updated_at = ?1 \
             WHERE id IN (SELECT id FROM runs WHERE status = 'DELAYED' AND delay_until <= ?1 \
                          ORDER BY delay_until LIMIT ?2) \
             AND status = 'DELAYED' \
             RETURNING id",
        )
        .bind(ms(now))
        .bind(i64::from(limit))
        .fetch_all(&self.writer)
        .await?;
        Ok(ids.into_iter().map(RunId::from_trusted).collect())
    }

    async fn run_next_due_at(&self) -> Result<Option<DateTime<Utc>>> {
        let next: Option<i64> = sqlx::query_scalar(
            "SELECT min(t) FROM ( \
               SELECT min(expire_at) AS t FROM runs WHERE status = 'QUEUED' AND expire_at IS NOT NULL \
               UNION ALL \
               SELECT min(delay_until) AS t FROM runs WHERE status = 'DELAYED')",
        )
        .fetch_one(&self.reader)
        .await?;
        opt_time(next)
    }

    async fn attempt_list(&self, run: &RunId) -> Result<Vec<Attempt>> {
        let rows = sqlx::query(
            "SELECT id, run_id, number, status, created_at, updated_at, started_at, completed_at, error \
             FROM attempts WHERE run_id = ? ORDER BY number",
        )
        .bind(run.as_str())
        .fetch_all(&self.reader)
        .await?;
        rows.iter().map(attempt_from_row).collect()
    }

    async fn close(&self) {
        self.reader.close().await;
        self.writer.close().await;
    }
}
