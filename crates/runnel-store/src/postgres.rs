//! The PostgreSQL backend, for several server nodes sharing one database.
//!
//! One connection pool ([`PgStore::connect_with`]); every node runs the migrations on
//! start, and sqlx's migrator holds a session advisory lock while it does, so nodes
//! starting together apply each migration once. Where the SQLite backend gets atomicity
//! for free from its single writer connection, this one takes row locks:
//!
//! - **Conditional updates** (`run_transition`, the expirer, the promoter) are single
//!   `UPDATE … WHERE status = <from>` statements. Under READ COMMITTED a second writer
//!   waits for the first's row lock, then re-checks the `WHERE` on the new row version
//!   and finds nothing to do: one of two racing actors wins.
//! - **The expirer and the promoter** pick due rows with `FOR UPDATE SKIP LOCKED`, so two
//!   nodes sweeping at once split the work instead of queueing on the same rows. The pick
//!   is a `MATERIALIZED` CTE on purpose: written inline as `WHERE id IN (SELECT … LIMIT n
//!   FOR UPDATE SKIP LOCKED)`, the planner may make it the inner side of a nested-loop
//!   semi-join and rescan it once per candidate row, and a rescan can pick other rows,
//!   so more than `n` runs move. The CTE runs once.
//! - **Bootstrap** serializes on a transaction-scoped advisory lock, so two nodes starting
//!   on an empty database create exactly one project.
//! - **Idempotent triggers** lock the key's holder, and fall back on the unique index
//!   when there is no holder to lock yet:
//!
//! ```text
//!   trigger A                              trigger B (same env, task, key)
//!   BEGIN                                  BEGIN
//!   SELECT holder … FOR UPDATE  → none     SELECT holder … FOR UPDATE  → none
//!   INSERT run A (key)                     INSERT run B (key)  ── waits on A's index entry
//!   COMMIT  → Created(A)                   unique violation on runs_by_idempotency_key
//!                                          ROLLBACK, BEGIN again
//!                                          SELECT holder … FOR UPDATE  → A
//!                                          decide(A) = ReturnExisting  → Cached(A)
//! ```
//!
//!   When a holder exists, the `FOR UPDATE` queues concurrent triggers behind the one
//!   that releases its key (a failed or expired holder); the next one in line re-reads
//!   the row, sees that it no longer holds the key, inserts, hits the index and goes
//!   round again to find the new holder. Each round trip only happens because another
//!   trigger committed, so [`TRIGGER_ROUNDS`] bounds a loop that in practice ends in two.
//!
//! Every failure is a [`crate::Error`]; nothing is retried except the idempotency race.

use std::str::FromStr;
use std::sync::LazyLock;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use runnel_core::idempotency::{self, Decision};
use runnel_core::key::{EnvironmentKind, SecretKey};
use runnel_core::run::{Attempt, Run};
use runnel_core::tenancy::{ApiKeyInfo, Environment, Project};
use runnel_core::{EnvironmentId, ProjectId, RunId, RunStatus};
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions};

use crate::rows::{
    self, api_key_info_from_row, attempt_from_row, environment_from_row, ms, opt_time,
    project_from_row, run_from_row, run_status, RUN_COLUMNS,
};
use crate::{Bootstrap, Error, Result, RevokeOutcome, Store, TriggerOutcome};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// Pool size of [`PgStore::connect`].
pub const MAX_CONNECTIONS_DEFAULT: u32 = 10;

/// How many times a trigger looks for the key's holder again after losing the insert
/// race to a concurrent trigger with the same key.
pub const TRIGGER_ROUNDS: usize = 5;

/// The unique index that guards idempotency keys (migrations/postgres/0001_init.sql).
const IDEMPOTENCY_INDEX: &str = "runs_by_idempotency_key";

/// Advisory lock key serializing `project_bootstrap` across nodes ("runnel" + 1).
const BOOTSTRAP_LOCK_KEY: i64 = 0x7275_6e6e_656c_0001;

static INSERT_RUN: LazyLock<String> = LazyLock::new(|| {
    let placeholders: Vec<String> = (1..=rows::run_column_count())
        .map(|n| format!("${n}"))
        .collect();
    format!(
        "INSERT INTO runs ({RUN_COLUMNS}) VALUES ({})",
        placeholders.join(", ")
    )
});

#[derive(Debug, Clone)]
pub struct PgStore {
    pool: PgPool,
}

impl PgStore {
    /// Connects to a `postgres://…` url with [`MAX_CONNECTIONS_DEFAULT`] connections
    /// and migrates the database.
    pub async fn connect(url: &str) -> Result<Self> {
        Self::connect_with(url, MAX_CONNECTIONS_DEFAULT).await
    }

    /// Connects with at most `max_connections` pooled connections and migrates the
    /// database. Safe to call from several nodes at once: the migrator takes an
    /// advisory lock.
    pub async fn connect_with(url: &str, max_connections: u32) -> Result<Self> {
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(Error::UnsupportedUrl(url.to_owned()));
        }
        let options = PgConnectOptions::from_str(url)?;
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .connect_with(options)
            .await?;
        MIGRATOR.run(&pool).await?;
        Ok(PgStore { pool })
    }
}

async fn insert_run(conn: &mut PgConnection, run: &Run) -> Result<(), sqlx::Error> {
    rows::bind_run(sqlx::query(&INSERT_RUN), run)
        .execute(conn)
        .await?;
    Ok(())
}

/// Whether `e` is a concurrent trigger having taken the idempotency key first (and not,
/// say, a duplicate run id).
fn is_idempotency_race(e: &Error) -> bool {
    matches!(e, Error::Database(sqlx::Error::Database(db))
        if db.is_unique_violation() && db.constraint() == Some(IDEMPOTENCY_INDEX))
}

impl PgStore {
    /// One round of a keyed trigger, in its own transaction: lock the holder, decide,
    /// insert. Fails with the unique violation when a concurrent trigger inserted first.
    async fn trigger_keyed_once(
        &self,
        run: &Run,
        key: &str,
        now: DateTime<Utc>,
    ) -> Result<TriggerOutcome> {
        let mut tx = self.pool.begin().await?;
        let holder: Option<(String, String, Option<i64>)> = sqlx::query_as(
            "SELECT id, status, idempotency_key_expires_at FROM runs \
             WHERE environment_id = $1 AND task_identifier = $2 AND idempotency_key = $3 \
             FOR UPDATE",
        )
        .bind(run.environment_id.as_str())
        .bind(&run.task_identifier)
        .bind(key)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some((holder_id, status, expires_at)) = holder {
            match idempotency::decide(run_status(&status)?, opt_time(expires_at)?, now) {
                Decision::ReturnExisting => {
                    tx.rollback().await?;
                    return Ok(TriggerOutcome::Cached(RunId::from_trusted(holder_id)));
                }
                Decision::ReleaseAndCreate => {
                    sqlx::query(
                        "UPDATE runs SET idempotency_key = NULL, idempotency_key_expires_at = NULL, \
                         updated_at = $1 WHERE id = $2",
                    )
                    .bind(ms(now))
                    .bind(&holder_id)
                    .execute(&mut *tx)
                    .await?;
                }
            }
        }
        insert_run(&mut tx, run).await?;
        tx.commit().await?;
        Ok(TriggerOutcome::Created(run.id.clone()))
    }
}

/// Stores a key (hashed) for `environment`, inside whatever transaction or pool `db` is.
async fn api_key_insert_in<'e>(
    db: impl sqlx::Executor<'e, Database = sqlx::Postgres>,
    key: &SecretKey,
    environment: &EnvironmentId,
    now: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO api_keys (key_hash, prefix, environment_id, created_at) VALUES ($1, $2, $3, $4)")
        .bind(key.hash())
        .bind(key.display_prefix())
        .bind(environment.as_str())
        .bind(ms(now))
        .execute(db)
        .await?;
    Ok(())
}

#[async_trait]
impl Store for PgStore {
    async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn project_bootstrap(
        &self,
        dev_key: &SecretKey,
        now: DateTime<Utc>,
    ) -> Result<Option<Bootstrap>> {
        let mut tx = self.pool.begin().await?;
        // Held until commit: a second node waits here, then sees the first's project.
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(BOOTSTRAP_LOCK_KEY)
            .execute(&mut *tx)
            .await?;
        let existing: Option<String> = sqlx::query_scalar("SELECT id FROM projects LIMIT 1")
            .fetch_optional(&mut *tx)
            .await?;
        if existing.is_some() {
            tx.rollback().await?;
            return Ok(None);
        }
        let project = Project {
            id: ProjectId::generate(ms(now)),
            created_at: now,
        };
        sqlx::query("INSERT INTO projects (id, created_at) VALUES ($1, $2)")
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
                "INSERT INTO environments (id, project_id, kind, created_at) VALUES ($1, $2, $3, $4)",
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
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(project_from_row).transpose()
    }

    async fn environment_get(&self, kind: EnvironmentKind) -> Result<Option<Environment>> {
        let row = sqlx::query("SELECT id, project_id, kind FROM environments WHERE kind = $1")
            .bind(kind.slug())
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(environment_from_row).transpose()
    }

    async fn api_key_insert(
        &self,
        key: &SecretKey,
        environment: &EnvironmentId,
        now: DateTime<Utc>,
    ) -> Result<()> {
        api_key_insert_in(&self.pool, key, environment, now).await?;
        Ok(())
    }

    async fn api_key_authenticate(&self, key_hash: &str) -> Result<Option<Environment>> {
        let row = sqlx::query(
            "SELECT e.id, e.project_id, e.kind FROM api_keys k JOIN environments e ON e.id = k.environment_id \
             WHERE k.key_hash = $1 AND k.revoked_at IS NULL",
        )
        .bind(key_hash)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(environment_from_row).transpose()
    }

    async fn api_key_list(&self) -> Result<Vec<ApiKeyInfo>> {
        // COLLATE "C": byte order, as SQLite sorts text, whatever the database's locale.
        let rows = sqlx::query(
            "SELECT k.prefix, e.kind, k.created_at, k.revoked_at FROM api_keys k \
             JOIN environments e ON e.id = k.environment_id \
             ORDER BY k.created_at, k.prefix COLLATE \"C\"",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(api_key_info_from_row).collect()
    }

    async fn api_key_revoke(&self, prefix: &str, now: DateTime<Utc>) -> Result<RevokeOutcome> {
        if prefix.is_empty() {
            return Ok(RevokeOutcome::NotFound);
        }
        let mut tx = self.pool.begin().await?;
        // `strpos(prefix, $1) = 1` is "starts with" without LIKE's wildcards. FOR UPDATE
        // makes a concurrent revoke of the same key wait, then find it revoked.
        let hashes: Vec<(String, String)> = sqlx::query_as(
            "SELECT key_hash, prefix FROM api_keys WHERE revoked_at IS NULL AND strpos(prefix, $1) = 1 \
             FOR UPDATE",
        )
        .bind(prefix)
        .fetch_all(&mut *tx)
        .await?;
        let outcome = match hashes.as_slice() {
            [] => RevokeOutcome::NotFound,
            [(hash, full_prefix)] => {
                sqlx::query("UPDATE api_keys SET revoked_at = $1 WHERE key_hash = $2")
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
        let Some(key) = &run.idempotency_key else {
            let mut conn = self.pool.acquire().await?;
            insert_run(&mut conn, run).await?;
            return Ok(TriggerOutcome::Created(run.id.clone()));
        };
        let mut round = 1;
        loop {
            match self.trigger_keyed_once(run, key, now).await {
                Err(e) if is_idempotency_race(&e) && round < TRIGGER_ROUNDS => {
                    // The transaction was rolled back when it dropped; look again.
                    tracing::debug!(run = %run.id, round, "idempotency key taken by a concurrent trigger");
                    round += 1;
                }
                Err(e) => {
                    if is_idempotency_race(&e) {
                        tracing::warn!(run = %run.id, rounds = round, "idempotency key still contended, giving up");
                    }
                    return Err(e);
                }
                Ok(outcome) => return Ok(outcome),
            }
        }
    }

    async fn run_get(&self, environment: &EnvironmentId, id: &RunId) -> Result<Option<Run>> {
        let sql = format!("SELECT {RUN_COLUMNS} FROM runs WHERE id = $1 AND environment_id = $2");
        let row = sqlx::query(&sql)
            .bind(id.as_str())
            .bind(environment.as_str())
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(run_from_row).transpose()
    }

    async fn run_children(&self, parent: &RunId) -> Result<Vec<Run>> {
        // COLLATE "C": ties on created_at break by id in byte order, as in SQLite.
        let sql = format!(
            "SELECT {RUN_COLUMNS} FROM runs WHERE parent_run_id = $1 ORDER BY created_at, id COLLATE \"C\""
        );
        let rows = sqlx::query(&sql)
            .bind(parent.as_str())
            .fetch_all(&self.pool)
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
            "UPDATE runs SET status = $1, updated_at = $2, completed_at = COALESCE($3, completed_at) \
             WHERE id = $4 AND status = $5",
        )
        .bind(to.as_str())
        .bind(ms(now))
        .bind(completed_at)
        .bind(id.as_str())
        .bind(from.as_str())
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn run_expire_due(&self, now: DateTime<Utc>, limit: u32) -> Result<Vec<RunId>> {
        // The error is the upstream TaskRunError for an expired run, spelled byte for byte
        // as SQLite's json_object writes it (json_build_object would add spaces).
        let ids: Vec<String> = sqlx::query_scalar(
            "WITH due AS MATERIALIZED ( \
               SELECT id FROM runs WHERE status = 'QUEUED' AND expire_at IS NOT NULL AND expire_at <= $1 \
               ORDER BY expire_at LIMIT $2 FOR UPDATE SKIP LOCKED) \
             UPDATE runs SET status = 'EXPIRED', expired_at = $1, completed_at = $1, updated_at = $1, \
             error = '{\"type\":\"STRING_ERROR\",\"raw\":' \
                     || COALESCE(to_json('Run expired because the TTL (' || ttl || ') was reached')::text, 'null') \
                     || '}' \
             WHERE id IN (SELECT id FROM due) AND status = 'QUEUED' \
             RETURNING id",
        )
        .bind(ms(now))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        Ok(ids.into_iter().map(RunId::from_trusted).collect())
    }

    async fn run_promote_due(&self, now: DateTime<Utc>, limit: u32) -> Result<Vec<RunId>> {
        let ids: Vec<String> = sqlx::query_scalar(
            "WITH due AS MATERIALIZED ( \
               SELECT id FROM runs WHERE status = 'DELAYED' AND delay_until <= $1 \
               ORDER BY delay_until LIMIT $2 FOR UPDATE SKIP LOCKED) \
             UPDATE runs SET status = 'QUEUED', updated_at = $1 \
             WHERE id IN (SELECT id FROM due) AND status = 'DELAYED' \
             RETURNING id",
        )
        .bind(ms(now))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        Ok(ids.into_iter().map(RunId::from_trusted).collect())
    }

    async fn run_next_due_at(&self) -> Result<Option<DateTime<Utc>>> {
        let next: Option<i64> = sqlx::query_scalar(
            "SELECT min(t) FROM ( \
               SELECT min(expire_at) AS t FROM runs WHERE status = 'QUEUED' AND expire_at IS NOT NULL \
               UNION ALL \
               SELECT min(delay_until) AS t FROM runs WHERE status = 'DELAYED') AS due",
        )
        .fetch_one(&self.pool)
        .await?;
        opt_time(next)
    }

    async fn attempt_list(&self, run: &RunId) -> Result<Vec<Attempt>> {
        let rows = sqlx::query(
            "SELECT id, run_id, number, status, created_at, updated_at, started_at, completed_at, error \
             FROM attempts WHERE run_id = $1 ORDER BY number",
        )
        .bind(run.as_str())
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(attempt_from_row).collect()
    }

    async fn close(&self) {
        self.pool.close().await;
    }
}
