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
//!
//! Triggers are group-committed (`group.rs`): concurrent triggers share one
//! `BEGIN IMMEDIATE … COMMIT` instead of queueing for the writer one by one.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use runnel_core::run::{Attempt, AttemptStatus, Run};
use runnel_core::{AttemptId, EnvironmentId, RunId, WorkerId};
use sqlx::pool::PoolConnection;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

use crate::detach::detached;
use crate::group::{GroupWriter, TriggerGroups};
use crate::prelude::*;
use crate::queues::{admit, Gates, Held, ADMIT_ROUNDS};
use crate::rows::{
    self, attempt_from_row, ms, run_from_row, task_config_from_row, ATTEMPT_COLUMNS,
    NO_MAX_DURATION, RUN_COLUMNS,
};
use crate::sql::{self, Backend};
use crate::statements;
use crate::{
    AttemptSettlement, Claim, Error, Leased, Registered, Result, TriggerOutcome, WorkerRecord,
    WorkerRegistration,
};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

const BUSY_TIMEOUT: Duration = Duration::from_secs(10);
const READER_CONNECTIONS: u32 = 4;

#[derive(Debug, Clone)]
pub struct SqliteStore {
    writer: SqlitePool,
    reader: SqlitePool,
    triggers: TriggerGroups,
}

/// Writes the store's trigger groups (`group.rs`) on the writer connection.
#[derive(Debug)]
struct SqliteTriggers {
    writer: SqlitePool,
}

#[async_trait]
impl GroupWriter for SqliteTriggers {
    async fn write_group(&self, runs: &[&Run], now: DateTime<Utc>) -> Result<Vec<TriggerOutcome>> {
        trigger_group(&self.writer, runs, now).await
    }
}

/// `BEGIN IMMEDIATE` on the writer connection.
///
/// Writes run detached (`detach.rs`), so no caller's cancellation cuts one in half. What
/// is left is a COMMIT or ROLLBACK that fails (`SQLITE_FULL` on a full disk): SQLite may
/// have ended the transaction itself, the ROLLBACK sqlx sends then fails too, and the
/// connection stays marked as inside a transaction, refusing every later `BEGIN`. Such a
/// connection is closed (closing rolls back whatever SQLite still holds) and the pool
/// opens a fresh one, so the node recovers as soon as the cause is gone.
async fn begin_write(writer: &SqlitePool) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>> {
    match writer.begin_with("BEGIN IMMEDIATE").await {
        Err(error) if left_in_transaction(&error) => {
            tracing::warn!(%error, "the SQLite writer connection was left inside a transaction; reopening it");
            let conn = writer.acquire().await?;
            if let Err(error) = conn.close().await {
                tracing::warn!(%error, "closing the wedged SQLite writer connection");
            }
            Ok(writer.begin_with("BEGIN IMMEDIATE").await?)
        }
        begun => Ok(begun?),
    }
}

#[async_trait]
impl Backend for SqliteStore {
    type D = sql::Sqlite;

    async fn reader(&self) -> Result<PoolConnection<sqlx::Sqlite>> {
        Ok(self.reader.acquire().await?)
    }

    async fn writer(&self) -> Result<PoolConnection<sqlx::Sqlite>> {
        Ok(self.writer.acquire().await?)
    }

    async fn begin(&self) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>> {
        begin_write(&self.writer).await
    }

    async fn close_pools(&self) {
        self.reader.close().await;
        self.writer.close().await;
    }

    async fn trigger(&self, run: &Run, now: DateTime<Utc>) -> Result<TriggerOutcome> {
        self.triggers.trigger(run, now).await
    }

    async fn trigger_many(&self, runs: &[Run], now: DateTime<Utc>) -> Result<Vec<TriggerOutcome>> {
        let (writer, runs) = (self.writer.clone(), runs.to_vec());
        detached(async move {
            let runs: Vec<&Run> = runs.iter().collect();
            trigger_group(&writer, &runs, now).await
        })
        .await
    }
}

/// Whether a failed `BEGIN` says the connection is still inside an earlier transaction.
fn left_in_transaction(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::InvalidSavePointStatement => true,
        sqlx::Error::Database(db) => db.message().contains("within a transaction"),
        _ => false,
    }
}

/// Triggers in one transaction: a group of concurrent triggers, or a batch.
async fn trigger_group(
    writer: &SqlitePool,
    runs: &[&Run],
    now: DateTime<Utc>,
) -> Result<Vec<TriggerOutcome>> {
    let mut tx = begin_write(writer).await?;
    let outcomes = crate::batches::trigger_many::<sql::Sqlite>(&mut tx, runs, now).await?;
    tx.commit().await?;
    Ok(outcomes)
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
        let triggers = TriggerGroups::spawn(SqliteTriggers {
            writer: writer.clone(),
        });
        Ok(SqliteStore {
            writer,
            reader,
            triggers,
        })
    }
}

/// `?, ?, …` for an `IN` list of `n` values.
fn placeholders(n: usize) -> String {
    vec!["?"; n].join(", ")
}

async fn runs_where_attempt_in(
    db: impl sqlx::Executor<'_, Database = sqlx::Sqlite>,
    attempt_ids: &[AttemptId],
) -> Result<Vec<Run>> {
    let sql = format!(
        "SELECT {RUN_COLUMNS} FROM runs WHERE current_attempt_id IN ({})",
        placeholders(attempt_ids.len())
    );
    let mut query = sqlx::query(&sql);
    for id in attempt_ids {
        query = query.bind(id.as_str());
    }
    let rows = query.fetch_all(db).await?;
    rows.iter().map(run_from_row).collect()
}

async fn attempts_in(
    db: impl sqlx::Executor<'_, Database = sqlx::Sqlite>,
    attempt_ids: &[AttemptId],
) -> Result<Vec<Attempt>> {
    let sql = format!(
        "SELECT {ATTEMPT_COLUMNS} FROM attempts WHERE id IN ({})",
        placeholders(attempt_ids.len())
    );
    let mut query = sqlx::query(&sql);
    for id in attempt_ids {
        query = query.bind(id.as_str());
    }
    let rows = query.fetch_all(db).await?;
    rows.iter().map(attempt_from_row).collect()
}

/// The oldest queued runs `worker` may take, at most `limit`. Runs of the `gated`
/// queues are left out when their queue is paused or their (queue, key) pair is full.
async fn dequeue_candidates(
    conn: &mut sqlx::SqliteConnection,
    worker: &WorkerRecord,
    gated: &[String],
    limit: u32,
) -> Result<Vec<Run>> {
    let gate = if gated.is_empty() {
        String::new()
    } else {
        format!(
            "AND (queue NOT IN ({}) OR NOT EXISTS (SELECT 1 FROM queues q \
               WHERE q.environment_id = runs.environment_id AND q.name = runs.queue \
               AND (q.paused = 1 OR COALESCE(q.concurrency_limit_override, q.concurrency_limit) <= \
                 (SELECT count(*) FROM runs h WHERE h.environment_id = runs.environment_id \
                  AND h.queue = runs.queue AND h.concurrency_key IS runs.concurrency_key \
                  AND h.status IN ('DEQUEUED', 'EXECUTING'))))) ",
            placeholders(gated.len())
        )
    };
    let sql = format!(
        "SELECT {RUN_COLUMNS} FROM runs WHERE environment_id = ? AND status = 'QUEUED' \
         AND task_identifier IN ({}) AND (lock_to_version IS NULL OR lock_to_version = ?) {gate}\
         ORDER BY queue_ts, id LIMIT ?",
        placeholders(worker.tasks.len())
    );
    let mut query = sqlx::query(&sql).bind(worker.environment_id.as_str());
    for task in &worker.tasks {
        query = query.bind(&task.task_identifier);
    }
    query = query.bind(&worker.version);
    for name in gated {
        query = query.bind(name);
    }
    let rows = query.bind(i64::from(limit)).fetch_all(conn).await?;
    rows.iter().map(run_from_row).collect()
}

/// Held (DEQUEUED or EXECUTING) runs of the `queues` per (queue, concurrency key).
async fn held_counts(
    conn: &mut sqlx::SqliteConnection,
    environment: &EnvironmentId,
    queues: &[String],
) -> Result<Held> {
    let sql = format!(
        "SELECT queue, concurrency_key, count(*) FROM runs WHERE environment_id = ? \
         AND status IN ('DEQUEUED', 'EXECUTING') AND queue IN ({}) GROUP BY queue, concurrency_key",
        placeholders(queues.len())
    );
    let mut query =
        sqlx::query_as::<_, (String, Option<String>, i64)>(&sql).bind(environment.as_str());
    for name in queues {
        query = query.bind(name);
    }
    let rows = query.fetch_all(conn).await?;
    Ok(rows.into_iter().map(|(q, k, n)| ((q, k), n)).collect())
}

/// Leases `runs` to `worker`: each moves to `Dequeued` with a new `Pending` attempt.
async fn lease_runs(
    conn: &mut sqlx::SqliteConnection,
    worker: &WorkerRecord,
    runs: Vec<Run>,
    lease_until: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<Vec<Leased>> {
    let mut leased = Vec::with_capacity(runs.len());
    for run in runs {
        let Leased { run, attempt } = rows::lease(run, worker, lease_until, now);
        sqlx::query(
            "UPDATE runs SET status = 'DEQUEUED', worker_id = ?, worker_version = ?, current_attempt_id = ?, \
             lease_expires_at = ?, expire_at = NULL, attempt_count = ?, max_duration_secs = ?, machine = ?, \
             updated_at = ? WHERE id = ? AND status = 'QUEUED'",
        )
        .bind(worker.id.as_str())
        .bind(&worker.version)
        .bind(attempt.id.as_str())
        .bind(ms(lease_until))
        .bind(i64::from(run.attempt_count))
        .bind(run.max_duration_secs.map(i64::from))
        .bind(run.machine.map(|m| m.as_str()))
        .bind(ms(now))
        .bind(run.id.as_str())
        .execute(&mut *conn)
        .await?;
        sqlx::query(
            "INSERT INTO attempts (id, run_id, number, status, created_at, updated_at, worker_id, duration_ms) \
             VALUES (?, ?, ?, 'PENDING', ?, ?, ?, 0)",
        )
        .bind(attempt.id.as_str())
        .bind(run.id.as_str())
        .bind(i64::from(attempt.number))
        .bind(ms(now))
        .bind(ms(now))
        .bind(worker.id.as_str())
        .execute(&mut *conn)
        .await?;
        leased.push(Leased { run, attempt });
    }
    Ok(leased)
}

/// The multi-statement writes, each run by its trait method on a task of its own
/// (`detach.rs`).
impl SqliteStore {
    async fn write_worker_register(
        &self,
        registration: &WorkerRegistration,
        now: DateTime<Utc>,
    ) -> Result<Registered> {
        let env = registration.environment_id.as_str();
        let mut tx = begin_write(&self.writer).await?;
        let version = match &registration.version {
            Some(version) => version.clone(),
            None => {
                let existing: Vec<String> = sqlx::query_scalar(
                    "SELECT version FROM worker_versions WHERE environment_id = ? AND version LIKE ?",
                )
                .bind(env)
                .bind(rows::version_pattern(now))
                .fetch_all(&mut *tx)
                .await?;
                rows::next_version(now, &existing)
            }
        };
        sqlx::query(
            "INSERT INTO worker_versions (environment_id, version, created_at) VALUES (?, ?, ?) \
             ON CONFLICT DO NOTHING",
        )
        .bind(env)
        .bind(&version)
        .bind(ms(now))
        .execute(&mut *tx)
        .await?;
        for task in &registration.tasks {
            sqlx::query(
                "INSERT INTO worker_tasks (environment_id, task_identifier, version, queue, retry, max_duration_secs, machine) \
                 VALUES (?, ?, ?, ?, ?, ?, ?) \
                 ON CONFLICT (environment_id, task_identifier, version) DO UPDATE SET \
                 queue = excluded.queue, retry = excluded.retry, \
                 max_duration_secs = excluded.max_duration_secs, machine = excluded.machine",
            )
            .bind(env)
            .bind(&task.task_identifier)
            .bind(&version)
            .bind(&task.queue)
            .bind(rows::retry_text(task))
            .bind(task.max_duration_secs.map(i64::from))
            .bind(task.machine.map(|m| m.as_str()))
            .execute(&mut *tx)
            .await?;
        }
        let task_ids: Vec<&str> = registration
            .tasks
            .iter()
            .map(|t| t.task_identifier.as_str())
            .collect();
        sqlx::query(
            "INSERT INTO workers (id, environment_id, name, version, tasks, created_at, last_seen_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(registration.id.as_str())
        .bind(env)
        .bind(&registration.name)
        .bind(&version)
        .bind(serde_json::to_string(&task_ids).expect("strings serialize"))
        .bind(ms(now))
        .bind(ms(now))
        .execute(&mut *tx)
        .await?;
        let mut promoted = Vec::new();
        if !task_ids.is_empty() {
            let sql = format!(
                "UPDATE runs SET status = 'QUEUED', updated_at = ? \
                 WHERE environment_id = ? AND status = 'PENDING_VERSION' AND task_identifier IN ({}) \
                 AND (lock_to_version IS NULL OR lock_to_version = ?) RETURNING id",
                placeholders(task_ids.len())
            );
            let mut query = sqlx::query_scalar::<_, String>(&sql)
                .bind(ms(now))
                .bind(env);
            for task in &task_ids {
                query = query.bind(*task);
            }
            promoted = query.bind(&version).fetch_all(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(Registered {
            version,
            promoted: promoted.into_iter().map(RunId::from_trusted).collect(),
        })
    }

    async fn write_run_dequeue(
        &self,
        worker: &WorkerRecord,
        limit: u32,
        lease_until: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<Vec<Leased>> {
        if worker.tasks.is_empty() || limit == 0 {
            return Ok(Vec::new());
        }
        // Idle workers are woken together and mostly find nothing: look on a reader
        // first, so they do not queue for the one writer connection.
        let probe = format!(
            "SELECT EXISTS (SELECT 1 FROM runs WHERE environment_id = ? AND status = 'QUEUED' \
             AND task_identifier IN ({}))",
            placeholders(worker.tasks.len())
        );
        let mut query = sqlx::query_scalar::<_, bool>(&probe).bind(worker.environment_id.as_str());
        for task in &worker.tasks {
            query = query.bind(&task.task_identifier);
        }
        if !query.fetch_one(&self.reader).await? {
            return Ok(Vec::new());
        }
        let mut tx = begin_write(&self.writer).await?;
        // One writer: the gates and held counts read here cannot change before commit.
        let gates = Gates::from_rows(
            sqlx::query_as(
                "SELECT name, paused, COALESCE(concurrency_limit_override, concurrency_limit) FROM queues \
                 WHERE environment_id = ? AND (paused = 1 OR concurrency_limit IS NOT NULL \
                 OR concurrency_limit_override IS NOT NULL)",
            )
            .bind(worker.environment_id.as_str())
            .fetch_all(&mut *tx)
            .await?,
        );
        let mut leased = Vec::new();
        if gates.is_empty() {
            let runs = dequeue_candidates(&mut tx, worker, &[], limit).await?;
            leased = lease_runs(&mut tx, worker, runs, lease_until, now).await?;
        } else {
            let gated = gates.names();
            let mut held = Held::new();
            for _ in 0..ADMIT_ROUNDS {
                let want = limit as usize - leased.len();
                let candidates = dequeue_candidates(
                    &mut tx,
                    worker,
                    &gated,
                    u32::try_from(want).unwrap_or(limit),
                )
                .await?;
                let limited = gates.limited_among(&candidates);
                if !limited.is_empty() {
                    held = held_counts(&mut tx, &worker.environment_id, &limited).await?;
                }
                let (runs, dropped) = admit(candidates, &gates, &[], &mut held, want);
                leased.extend(lease_runs(&mut tx, worker, runs, lease_until, now).await?);
                if !dropped || leased.len() >= limit as usize {
                    break;
                }
            }
        }
        tx.commit().await?;
        Ok(leased)
    }

    async fn write_attempt_start(
        &self,
        worker: &WorkerId,
        attempt_ids: &[AttemptId],
        lease_until: DateTime<Utc>,
        timeout_grace_ms: i64,
        run_fee_cents: f64,
        now: DateTime<Utc>,
    ) -> Result<Vec<AttemptId>> {
        let mut started = Vec::new();
        if attempt_ids.is_empty() {
            return Ok(started);
        }
        let mut tx = begin_write(&self.writer).await?;
        for attempt in attempt_ids {
            let done = sqlx::query(
                "UPDATE runs SET status = 'EXECUTING', started_at = COALESCE(started_at, ?1), \
                 base_cost_in_cents = CASE WHEN started_at IS NULL THEN ?2 ELSE base_cost_in_cents END, \
                 lease_expires_at = ?3, \
                 timeout_at = CASE WHEN max_duration_secs IS NULL OR max_duration_secs >= ?4 THEN NULL \
                              ELSE ?1 + max_duration_secs * 1000 + ?5 END, \
                 updated_at = ?1 \
                 WHERE current_attempt_id = ?6 AND worker_id = ?7 AND status = 'DEQUEUED'",
            )
            .bind(ms(now))
            .bind(run_fee_cents)
            .bind(ms(lease_until))
            .bind(NO_MAX_DURATION)
            .bind(timeout_grace_ms)
            .bind(attempt.as_str())
            .bind(worker.as_str())
            .execute(&mut *tx)
            .await?;
            if done.rows_affected() == 1 {
                sqlx::query(
                    "UPDATE attempts SET status = 'EXECUTING', started_at = ?, updated_at = ? \
                     WHERE id = ? AND status = 'PENDING'",
                )
                .bind(ms(now))
                .bind(ms(now))
                .bind(attempt.as_str())
                .execute(&mut *tx)
                .await?;
                started.push(attempt.clone());
            }
        }
        tx.commit().await?;
        Ok(started)
    }

    async fn write_attempt_settle(&self, settlements: &[AttemptSettlement]) -> Result<Vec<bool>> {
        let mut applied = Vec::with_capacity(settlements.len());
        if settlements.is_empty() {
            return Ok(applied);
        }
        let mut tx = begin_write(&self.writer).await?;
        for s in settlements {
            let (claim_sql, claim_value) = match &s.claim {
                Claim::Worker(worker) => ("worker_id = ?", ClaimValue::Text(worker.to_string())),
                Claim::LeaseExpired(at) => ("lease_expires_at <= ?", ClaimValue::Time(ms(*at))),
                Claim::TimedOut(at) => ("timeout_at <= ?", ClaimValue::Time(ms(*at))),
            };
            let sql = format!(
                "UPDATE runs SET status = ?, output = ?, output_type = ?, error = ?, \
                 usage_duration_ms = usage_duration_ms + ?, cost_in_cents = cost_in_cents + ?, \
                 failed_attempts = failed_attempts + ?, completed_at = ?, next_attempt_at = ?, \
                 lease_expires_at = NULL, timeout_at = NULL, current_attempt_id = NULL, updated_at = ? \
                 WHERE id = ? AND current_attempt_id = ? AND status IN ('DEQUEUED', 'EXECUTING') AND {claim_sql}"
            );
            let query = sqlx::query(&sql)
                .bind(s.run_status.as_str())
                .bind(s.output.as_ref().and_then(|o| o.data.as_deref()))
                .bind(s.output.as_ref().map(|o| o.data_type.as_str()))
                .bind(s.run_error.as_ref().map(|e| e.to_string()))
                .bind(s.duration_ms)
                .bind(s.cost_in_cents)
                .bind(i64::from(
                    s.spends_attempt && s.attempt_status == AttemptStatus::Failed,
                ))
                .bind(s.run_status.is_final().then_some(ms(s.now)))
                .bind(s.next_attempt_at.map(ms))
                .bind(ms(s.now))
                .bind(s.run_id.as_str())
                .bind(s.attempt_id.as_str());
            let query = match claim_value {
                ClaimValue::Text(text) => query.bind(text),
                ClaimValue::Time(t) => query.bind(t),
            };
            let done = query.execute(&mut *tx).await?.rows_affected() == 1;
            if done {
                sqlx::query(
                    "UPDATE attempts SET status = ?, error = ?, completed_at = ?, updated_at = ?, duration_ms = ? \
                     WHERE id = ?",
                )
                .bind(s.attempt_status.as_str())
                .bind(s.attempt_error.as_ref().map(|e| e.to_string()))
                .bind(ms(s.now))
                .bind(ms(s.now))
                .bind(s.duration_ms)
                .bind(s.attempt_id.as_str())
                .execute(&mut *tx)
                .await?;
            }
            applied.push(done);
        }
        tx.commit().await?;
        Ok(applied)
    }
}

#[async_trait]
impl AttemptStore for SqliteStore {
    async fn attempt_list(&self, run: &RunId) -> Result<Vec<Attempt>> {
        statements::sqlite::attempt_list(&self.reader, run).await
    }

    async fn run_dequeue(
        &self,
        worker: &WorkerRecord,
        limit: u32,
        lease_until: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<Vec<Leased>> {
        let (store, worker) = (self.clone(), worker.clone());
        detached(async move {
            store
                .write_run_dequeue(&worker, limit, lease_until, now)
                .await
        })
        .await
    }

    async fn attempt_start(
        &self,
        worker: &WorkerId,
        attempt_ids: &[AttemptId],
        lease_until: DateTime<Utc>,
        timeout_grace_ms: i64,
        run_fee_cents: f64,
        now: DateTime<Utc>,
    ) -> Result<Vec<AttemptId>> {
        let (store, worker, attempt_ids) = (self.clone(), worker.clone(), attempt_ids.to_vec());
        detached(async move {
            store
                .write_attempt_start(
                    &worker,
                    &attempt_ids,
                    lease_until,
                    timeout_grace_ms,
                    run_fee_cents,
                    now,
                )
                .await
        })
        .await
    }

    async fn attempt_heartbeat(
        &self,
        worker: &WorkerId,
        attempt_ids: &[AttemptId],
        lease_until: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<Vec<AttemptId>> {
        sqlx::query("UPDATE workers SET last_seen_at = ? WHERE id = ?")
            .bind(ms(now))
            .bind(worker.as_str())
            .execute(&self.writer)
            .await?;
        if attempt_ids.is_empty() {
            return Ok(Vec::new());
        }
        let sql = format!(
            "UPDATE runs SET lease_expires_at = ? WHERE worker_id = ? \
             AND status IN ('DEQUEUED', 'EXECUTING') AND current_attempt_id IN ({}) \
             RETURNING current_attempt_id",
            placeholders(attempt_ids.len())
        );
        let mut query = sqlx::query_scalar::<_, String>(&sql)
            .bind(ms(lease_until))
            .bind(worker.as_str());
        for id in attempt_ids {
            query = query.bind(id.as_str());
        }
        let held = query.fetch_all(&self.writer).await?;
        Ok(held.into_iter().map(AttemptId::from_trusted).collect())
    }

    async fn attempts_held(&self, attempt_ids: &[AttemptId]) -> Result<Vec<Leased>> {
        if attempt_ids.is_empty() {
            return Ok(Vec::new());
        }
        let runs = runs_where_attempt_in(&self.reader, attempt_ids).await?;
        let attempts = attempts_in(&self.reader, attempt_ids).await?;
        Ok(rows::pair_leased(runs, attempts))
    }

    async fn attempt_settle(&self, settlements: &[AttemptSettlement]) -> Result<Vec<bool>> {
        let (store, settlements) = (self.clone(), settlements.to_vec());
        detached(async move { store.write_attempt_settle(&settlements).await }).await
    }
}

#[async_trait]
impl WorkerStore for SqliteStore {
    async fn worker_register(
        &self,
        registration: &WorkerRegistration,
        now: DateTime<Utc>,
    ) -> Result<Registered> {
        let (store, registration) = (self.clone(), registration.clone());
        detached(async move { store.write_worker_register(&registration, now).await }).await
    }

    async fn worker_get(&self, id: &WorkerId) -> Result<Option<WorkerRecord>> {
        let row: Option<(String, String, String, String, i64)> = sqlx::query_as(
            "SELECT environment_id, name, version, tasks, created_at FROM workers WHERE id = ?",
        )
        .bind(id.as_str())
        .fetch_optional(&self.reader)
        .await?;
        let Some((environment_id, name, version, tasks, created_at)) = row else {
            return Ok(None);
        };
        let served = rows::task_list(&tasks)?;
        let rows = sqlx::query(
            "SELECT task_identifier, queue, retry, max_duration_secs, machine FROM worker_tasks \
             WHERE environment_id = ? AND version = ? ORDER BY task_identifier",
        )
        .bind(&environment_id)
        .bind(&version)
        .fetch_all(&self.reader)
        .await?;
        let mut configs = Vec::new();
        for row in &rows {
            let config = task_config_from_row(row)?;
            if served.contains(&config.task_identifier) {
                configs.push(config);
            }
        }
        Ok(Some(WorkerRecord {
            id: id.clone(),
            environment_id: EnvironmentId::from_trusted(environment_id),
            name,
            version,
            tasks: configs,
            created_at: rows::time(created_at)?,
        }))
    }

    async fn task_served(
        &self,
        environment: &EnvironmentId,
        task: &str,
        version: Option<&str>,
    ) -> Result<bool> {
        statements::sqlite::task_served(&self.reader, environment, task, version).await
    }

    async fn task_queue(
        &self,
        environment: &EnvironmentId,
        task: &str,
        version: Option<&str>,
    ) -> Result<Option<String>> {
        statements::sqlite::task_queue(&self.reader, environment, task, version).await
    }
}

/// The value a settlement's claim compares with.
enum ClaimValue {
    Text(String),
    Time(i64),
}
