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
use runnel_core::run::{Attempt, AttemptStatus, Packet, Run};
use runnel_core::tenancy::{ApiKeyInfo, Environment, Project};
use runnel_core::{EnvironmentId, MachinePreset, ProjectId, RunId, RunStatus};
use serde_json::Value;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::Row;

use crate::{Bootstrap, Error, Result, RevokeOutcome, Store, TriggerOutcome};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

const BUSY_TIMEOUT: Duration = Duration::from_secs(10);
const READER_CONNECTIONS: u32 = 4;

#[derive(Debug, Clone)]
pub struct SqliteStore {
    writer: SqlitePool,
    reader: SqlitePool,
}

fn ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

fn time(ms: i64) -> Result<DateTime<Utc>> {
    DateTime::from_timestamp_millis(ms)
        .ok_or_else(|| Error::Corrupt(format!("timestamp {ms} out of range")))
}

fn opt_time(ms: Option<i64>) -> Result<Option<DateTime<Utc>>> {
    ms.map(time).transpose()
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

const RUN_COLUMNS: &str = "id, environment_id, task_identifier, status, payload, payload_type, output, output_type, \
    error, idempotency_key, idempotency_key_user, idempotency_key_scope, idempotency_key_expires_at, tags, metadata, \
    metadata_type, delay_until, ttl, expire_at, expired_at, max_attempts, max_duration_secs, machine, priority_ms, \
    is_test, queue, concurrency_key, lock_to_version, worker_version, created_at, updated_at, started_at, \
    completed_at, attempt_count, usage_duration_ms, cost_in_cents, base_cost_in_cents, depth, parent_run_id, \
    root_run_id, batch_id, resume_parent_on_completion, schedule_id";

fn run_from_row(row: &SqliteRow) -> Result<Run> {
    let status: String = row.try_get("status")?;
    let status = RunStatus::from_str(&status).map_err(|e| Error::Corrupt(e.to_string()))?;
    let tags: String = row.try_get("tags")?;
    let tags: Vec<String> =
        serde_json::from_str(&tags).map_err(|e| Error::Corrupt(format!("tags: {e}")))?;
    let error: Option<String> = row.try_get("error")?;
    let error = error
        .map(|e| serde_json::from_str::<Value>(&e))
        .transpose()
        .map_err(|e| Error::Corrupt(format!("error: {e}")))?;
    let machine: Option<String> = row.try_get("machine")?;
    let machine = machine
        .map(|m| MachinePreset::from_str(&m))
        .transpose()
        .map_err(|e| Error::Corrupt(e.to_string()))?;
    let output_type: Option<String> = row.try_get("output_type")?;
    let metadata_type: Option<String> = row.try_get("metadata_type")?;
    let run_id = |col: &str| -> Result<Option<RunId>> {
        Ok(row
            .try_get::<Option<String>, _>(col)?
            .map(RunId::from_trusted))
    };
    let count = |col: &str| -> Result<u32> {
        let n: i64 = row.try_get(col)?;
        u32::try_from(n).map_err(|_| Error::Corrupt(format!("{col} = {n}")))
    };
    Ok(Run {
        id: RunId::from_trusted(row.try_get("id")?),
        environment_id: EnvironmentId::from_trusted(row.try_get("environment_id")?),
        task_identifier: row.try_get("task_identifier")?,
        status,
        payload: Packet {
            data: row.try_get("payload")?,
            data_type: row.try_get("payload_type")?,
        },
        output: output_type
            .map(|data_type| -> Result<Packet> {
                Ok(Packet {
                    data: row.try_get("output")?,
                    data_type,
                })
            })
            .transpose()?,
        error,
        idempotency_key: row.try_get("idempotency_key")?,
        idempotency_key_user: row.try_get("idempotency_key_user")?,
        idempotency_key_scope: row.try_get("idempotency_key_scope")?,
        idempotency_key_expires_at: opt_time(row.try_get("idempotency_key_expires_at")?)?,
        tags,
        metadata: metadata_type
            .map(|data_type| -> Result<Packet> {
                Ok(Packet {
                    data: row.try_get("metadata")?,
                    data_type,
                })
            })
            .transpose()?,
        delay_until: opt_time(row.try_get("delay_until")?)?,
        ttl: row.try_get("ttl")?,
        expire_at: opt_time(row.try_get("expire_at")?)?,
        expired_at: opt_time(row.try_get("expired_at")?)?,
        max_attempts: row
            .try_get::<Option<i64>, _>("max_attempts")?
            .map(|n| n as u32),
        max_duration_secs: row
            .try_get::<Option<i64>, _>("max_duration_secs")?
            .map(|n| n as u32),
        machine,
        priority_ms: row.try_get::<i64, _>("priority_ms")? as i32,
        is_test: row.try_get("is_test")?,
        queue: row.try_get("queue")?,
        concurrency_key: row.try_get("concurrency_key")?,
        lock_to_version: row.try_get("lock_to_version")?,
        worker_version: row.try_get("worker_version")?,
        created_at: time(row.try_get("created_at")?)?,
        updated_at: time(row.try_get("updated_at")?)?,
        started_at: opt_time(row.try_get("started_at")?)?,
        completed_at: opt_time(row.try_get("completed_at")?)?,
        attempt_count: count("attempt_count")?,
        usage_duration_ms: row.try_get("usage_duration_ms")?,
        cost_in_cents: row.try_get("cost_in_cents")?,
        base_cost_in_cents: row.try_get("base_cost_in_cents")?,
        depth: count("depth")?,
        parent_run_id: run_id("parent_run_id")?,
        root_run_id: run_id("root_run_id")?,
        batch_id: row.try_get("batch_id")?,
        resume_parent_on_completion: row.try_get("resume_parent_on_completion")?,
        schedule_id: row.try_get("schedule_id")?,
    })
}

fn environment_from_row(row: &SqliteRow) -> Result<Environment> {
    let kind: String = row.try_get("kind")?;
    Ok(Environment {
        id: EnvironmentId::from_trusted(row.try_get("id")?),
        project_id: ProjectId::from_trusted(row.try_get("project_id")?),
        kind: EnvironmentKind::from_str(&kind).map_err(|e| Error::Corrupt(e.to_string()))?,
    })
}

async fn insert_run(conn: &mut sqlx::SqliteConnection, run: &Run) -> Result<(), sqlx::Error> {
    let tags = serde_json::to_string(&run.tags).expect("a list of strings serializes");
    let sql = format!(
        "INSERT INTO runs ({RUN_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    );
    sqlx::query(&sql)
        .bind(run.id.as_str())
        .bind(run.environment_id.as_str())
        .bind(&run.task_identifier)
        .bind(run.status.as_str())
        .bind(run.payload.data.as_deref())
        .bind(&run.payload.data_type)
        .bind(run.output.as_ref().and_then(|o| o.data.as_deref()))
        .bind(run.output.as_ref().map(|o| o.data_type.as_str()))
        .bind(run.error.as_ref().map(Value::to_string))
        .bind(run.idempotency_key.as_deref())
        .bind(run.idempotency_key_user.as_deref())
        .bind(run.idempotency_key_scope.as_deref())
        .bind(run.idempotency_key_expires_at.map(ms))
        .bind(tags)
        .bind(run.metadata.as_ref().and_then(|m| m.data.as_deref()))
        .bind(run.metadata.as_ref().map(|m| m.data_type.as_str()))
        .bind(run.delay_until.map(ms))
        .bind(run.ttl.as_deref())
        .bind(run.expire_at.map(ms))
        .bind(run.expired_at.map(ms))
        .bind(run.max_attempts.map(i64::from))
        .bind(run.max_duration_secs.map(i64::from))
        .bind(run.machine.map(MachinePreset::as_str))
        .bind(i64::from(run.priority_ms))
        .bind(run.is_test)
        .bind(&run.queue)
        .bind(run.concurrency_key.as_deref())
        .bind(run.lock_to_version.as_deref())
        .bind(run.worker_version.as_deref())
        .bind(ms(run.created_at))
        .bind(ms(run.updated_at))
        .bind(run.started_at.map(ms))
        .bind(run.completed_at.map(ms))
        .bind(i64::from(run.attempt_count))
        .bind(run.usage_duration_ms)
        .bind(run.cost_in_cents)
        .bind(run.base_cost_in_cents)
        .bind(i64::from(run.depth))
        .bind(run.parent_run_id.as_ref().map(RunId::as_str))
        .bind(run.root_run_id.as_ref().map(RunId::as_str))
        .bind(run.batch_id.as_deref())
        .bind(run.resume_parent_on_completion)
        .bind(run.schedule_id.as_deref())
        .execute(conn)
        .await?;
    Ok(())
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.is_unique_violation())
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
        sqlx::query("INSERT INTO api_keys (key_hash, prefix, environment_id, created_at) VALUES (?, ?, ?, ?)")
            .bind(dev_key.hash())
            .bind(dev_key.display_prefix())
            .bind(dev.id.as_str())
            .bind(ms(now))
            .execute(&mut *tx)
            .await?;
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
        row.map(|row| {
            Ok(Project {
                id: ProjectId::from_trusted(row.try_get("id")?),
                created_at: time(row.try_get("created_at")?)?,
            })
        })
        .transpose()
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
        sqlx::query("INSERT INTO api_keys (key_hash, prefix, environment_id, created_at) VALUES (?, ?, ?, ?)")
            .bind(key.hash())
            .bind(key.display_prefix())
            .bind(environment.as_str())
            .bind(ms(now))
            .execute(&self.writer)
            .await?;
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
        rows.iter()
            .map(|row| {
                let kind: String = row.try_get("kind")?;
                Ok(ApiKeyInfo {
                    prefix: row.try_get("prefix")?,
                    environment: EnvironmentKind::from_str(&kind)
                        .map_err(|e| Error::Corrupt(e.to_string()))?,
                    created_at: time(row.try_get("created_at")?)?,
                    revoked_at: opt_time(row.try_get("revoked_at")?)?,
                })
            })
            .collect()
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
                let status =
                    RunStatus::from_str(&status).map_err(|e| Error::Corrupt(e.to_string()))?;
                match idempotency::decide(status, opt_time(expires_at)?, now) {
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
        rows.iter()
            .map(|row| {
                let status: String = row.try_get("status")?;
                let error: Option<String> = row.try_get("error")?;
                Ok(Attempt {
                    id: row.try_get("id")?,
                    run_id: RunId::from_trusted(row.try_get("run_id")?),
                    number: row.try_get::<i64, _>("number")? as u32,
                    status: AttemptStatus::parse(&status)
                        .ok_or_else(|| Error::Corrupt(format!("attempt status {status:?}")))?,
                    created_at: time(row.try_get("created_at")?)?,
                    updated_at: time(row.try_get("updated_at")?)?,
                    started_at: opt_time(row.try_get("started_at")?)?,
                    completed_at: opt_time(row.try_get("completed_at")?)?,
                    error: error
                        .map(|e| serde_json::from_str(&e))
                        .transpose()
                        .map_err(|e| Error::Corrupt(format!("attempt error: {e}")))?,
                })
            })
            .collect()
    }

    async fn close(&self) {
        self.reader.close().await;
        self.writer.close().await;
    }
}
