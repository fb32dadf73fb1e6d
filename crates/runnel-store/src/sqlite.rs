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
use runnel_core::run::{Attempt, Packet, Run};
use runnel_core::{AttemptId, EnvironmentId, QueueId, RunId, RunStatus};
use sqlx::pool::PoolConnection;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

use crate::attempts::{gate_sql, DequeueGate};
use crate::detach::detached;
use crate::group::{GroupWriter, TriggerGroups};
use crate::prelude::*;
use crate::rows::{
    self, attempt_from_row, ms, run_from_row, run_status, ATTEMPT_COLUMNS, RUN_COLUMNS,
};
use crate::sql::{self, Backend, Params};
use crate::statements;
use crate::{
    CancelOutcome, Deadline, Error, Leased, QueueChange, QueueDeclaration, QueueKind, QueueRecord,
    QueueRef, Result, TriggerOutcome, WorkerRecord,
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

    const ONE_WRITER: bool = true;

    /// The oldest queued runs, read as they are: the one writer keeps the gates, the
    /// held counts and the runs from changing before the dequeue commits.
    async fn dequeue_candidates(
        &self,
        conn: &mut sqlx::SqliteConnection,
        worker: &WorkerRecord,
        gate: Option<&DequeueGate<'_>>,
        limit: u32,
    ) -> Result<Vec<Run>> {
        let mut p = Params::<sql::Sqlite>::new();
        let sql = format!(
            "SELECT {RUN_COLUMNS} FROM runs WHERE environment_id = {} AND status = {} \
             AND task_identifier {} AND (lock_to_version IS NULL OR lock_to_version = {}) {}\
             ORDER BY queue_ts, id LIMIT {}",
            p.bind(worker.environment_id.as_str()),
            sql::status(RunStatus::Queued),
            p.list(worker.tasks.iter().map(|t| t.task_identifier.as_str())),
            p.bind(&worker.version),
            gate.map(|gate| gate_sql(&mut p, gate)).unwrap_or_default(),
            p.bind(i64::from(limit)),
        );
        let rows = p.fetch_all(conn, &sql).await?;
        rows.iter().map(run_from_row).collect()
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
    let outcomes = crate::batches::sqlite::trigger_many(&mut tx, runs, now).await?;
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

/// Whether a registered version serves `task` (the locked version when there is one).
const SERVED: &str =
    "EXISTS (SELECT 1 FROM worker_tasks w WHERE w.environment_id = runs.environment_id \
     AND w.task_identifier = runs.task_identifier \
     AND (runs.lock_to_version IS NULL OR w.version = runs.lock_to_version))";

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

/// The multi-statement writes, each run by its trait method on a task of its own
/// (`detach.rs`).
impl SqliteStore {
    async fn write_run_cancel(
        &self,
        environment: &EnvironmentId,
        id: &RunId,
        cents_per_ms: f64,
        now: DateTime<Utc>,
    ) -> Result<CancelOutcome> {
        let mut tx = begin_write(&self.writer).await?;
        let row: Option<(String, Option<String>)> = sqlx::query_as(
            "SELECT status, current_attempt_id FROM runs WHERE id = ? AND environment_id = ?",
        )
        .bind(id.as_str())
        .bind(environment.as_str())
        .fetch_optional(&mut *tx)
        .await?;
        let Some((status, attempt)) = row else {
            return Ok(CancelOutcome::NotFound);
        };
        let status = run_status(&status)?;
        if status.is_final() {
            return Ok(CancelOutcome::AlreadyFinal(status));
        }
        let started_at: Option<i64> = match &attempt {
            Some(attempt) => sqlx::query_scalar("SELECT started_at FROM attempts WHERE id = ?")
                .bind(attempt.as_str())
                .fetch_optional(&mut *tx)
                .await?
                .flatten(),
            None => None,
        };
        let duration_ms = started_at.map_or(0, |t| (ms(now) - t).max(0));
        sqlx::query(
            "UPDATE runs SET status = 'CANCELED', completed_at = ?1, updated_at = ?1, error = ?2, \
             usage_duration_ms = usage_duration_ms + ?3, cost_in_cents = cost_in_cents + ?4, \
             lease_expires_at = NULL, timeout_at = NULL, next_attempt_at = NULL, current_attempt_id = NULL \
             WHERE id = ?5 AND status = ?6",
        )
        .bind(ms(now))
        .bind(rows::canceled_error().to_string())
        .bind(duration_ms)
        .bind(duration_ms as f64 * cents_per_ms)
        .bind(id.as_str())
        .bind(status.as_str())
        .execute(&mut *tx)
        .await?;
        if let Some(attempt) = &attempt {
            sqlx::query(
                "UPDATE attempts SET status = 'CANCELED', completed_at = ?1, updated_at = ?1, duration_ms = ?2, \
                 error = ?3 WHERE id = ?4 AND status IN ('PENDING', 'EXECUTING')",
            )
            .bind(ms(now))
            .bind(duration_ms)
            .bind(serde_json::json!({"message": "Run was canceled"}).to_string())
            .bind(attempt.as_str())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(CancelOutcome::Canceled {
            attempt: attempt.map(AttemptId::from_trusted),
        })
    }

    async fn write_batch_create(
        &self,
        batch: &runnel_core::batch::BatchRecord,
        now: DateTime<Utc>,
    ) -> Result<crate::BatchCreateOutcome> {
        let mut tx = begin_write(&self.writer).await?;
        let outcome = crate::batches::sqlite::batch_create(&mut tx, batch, now).await?;
        tx.commit().await?;
        Ok(outcome)
    }

    async fn write_batch_items_trigger(
        &self,
        environment: &EnvironmentId,
        id: &runnel_core::BatchId,
        items: &[crate::BatchItemTrigger],
        now: DateTime<Utc>,
    ) -> Result<crate::BatchItemsOutcome> {
        let mut tx = begin_write(&self.writer).await?;
        let outcome =
            crate::batches::sqlite::items_trigger(&mut tx, environment, id, items, now).await?;
        tx.commit().await?;
        Ok(outcome)
    }

    async fn write_queue_declare(
        &self,
        environment: &EnvironmentId,
        declarations: &[QueueDeclaration],
        now: DateTime<Utc>,
    ) -> Result<()> {
        if declarations.is_empty() {
            return Ok(());
        }
        let mut tx = begin_write(&self.writer).await?;
        for d in declarations {
            sqlx::query(
                "INSERT INTO queues (id, environment_id, name, type, concurrency_limit, paused, created_at, updated_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, 0, ?6, ?6) \
                 ON CONFLICT (environment_id, name) DO UPDATE SET \
                 concurrency_limit = CASE WHEN ?7 THEN excluded.concurrency_limit ELSE queues.concurrency_limit END, \
                 updated_at = CASE WHEN ?7 THEN excluded.updated_at ELSE queues.updated_at END",
            )
            .bind(QueueId::generate(ms(now)).as_str())
            .bind(environment.as_str())
            .bind(&d.name)
            .bind(QueueKind::of(&d.name).as_str())
            .bind(d.concurrency_limit.flatten().map(i64::from))
            .bind(ms(now))
            .bind(d.concurrency_limit.is_some())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

#[async_trait]
impl RunStore for SqliteStore {
    async fn run_trigger(&self, run: &Run, now: DateTime<Utc>) -> Result<TriggerOutcome> {
        self.triggers.trigger(run, now).await
    }

    async fn run_trigger_many(
        &self,
        runs: &[Run],
        now: DateTime<Utc>,
    ) -> Result<Vec<TriggerOutcome>> {
        let (writer, runs) = (self.writer.clone(), runs.to_vec());
        detached(async move {
            let runs: Vec<&Run> = runs.iter().collect();
            trigger_group(&writer, &runs, now).await
        })
        .await
    }

    async fn run_get(&self, environment: &EnvironmentId, id: &RunId) -> Result<Option<Run>> {
        statements::sqlite::run_get(&self.reader, environment, id).await
    }

    async fn run_children(&self, parent: &RunId) -> Result<Vec<Run>> {
        statements::sqlite::run_children(&self.reader, parent).await
    }

    async fn run_transition(
        &self,
        id: &RunId,
        from: RunStatus,
        to: RunStatus,
        now: DateTime<Utc>,
    ) -> Result<bool> {
        statements::sqlite::run_transition(&self.writer, id, from, to, now).await
    }

    async fn run_list(&self, query: &runnel_core::list::RunListQuery) -> Result<Vec<Run>> {
        statements::sqlite::run_list(&self.reader, query).await
    }

    async fn run_descendants_live(
        &self,
        environment: &EnvironmentId,
        parent: &RunId,
    ) -> Result<Vec<RunId>> {
        statements::sqlite::run_descendants_live(&self.reader, environment, parent).await
    }

    async fn run_reschedule(
        &self,
        environment: &EnvironmentId,
        id: &RunId,
        delay_until: DateTime<Utc>,
        expire_at: Option<DateTime<Utc>>,
        queue_ts: i64,
        now: DateTime<Utc>,
    ) -> Result<bool> {
        statements::sqlite::run_reschedule(
            &self.writer,
            environment,
            id,
            delay_until,
            expire_at,
            queue_ts,
            now,
        )
        .await
    }

    async fn run_tags_replace(
        &self,
        environment: &EnvironmentId,
        id: &RunId,
        expected: &[String],
        tags: &[String],
        now: DateTime<Utc>,
    ) -> Result<bool> {
        statements::sqlite::run_tags_replace(&self.writer, environment, id, expected, tags, now)
            .await
    }

    async fn run_metadata_replace(
        &self,
        environment: &EnvironmentId,
        id: &RunId,
        expected: Option<&Packet>,
        metadata: &Packet,
        now: DateTime<Utc>,
    ) -> Result<bool> {
        statements::sqlite::run_metadata_replace(
            &self.writer,
            environment,
            id,
            expected,
            metadata,
            now,
        )
        .await
    }

    async fn idempotency_key_reset(
        &self,
        environment: &EnvironmentId,
        task: &str,
        key: &str,
        now: DateTime<Utc>,
    ) -> Result<u64> {
        statements::sqlite::idempotency_key_reset(&self.writer, environment, task, key, now).await
    }

    async fn run_cancel(
        &self,
        environment: &EnvironmentId,
        id: &RunId,
        cents_per_ms: f64,
        now: DateTime<Utc>,
    ) -> Result<CancelOutcome> {
        let (store, environment, id) = (self.clone(), environment.clone(), id.clone());
        detached(async move {
            store
                .write_run_cancel(&environment, &id, cents_per_ms, now)
                .await
        })
        .await
    }
}

#[async_trait]
impl SweepStore for SqliteStore {
    async fn run_expire_due(&self, now: DateTime<Utc>, limit: u32) -> Result<Vec<RunId>> {
        // The error is the upstream TaskRunError for an expired run.
        let ids: Vec<String> = sqlx::query_scalar(
            "UPDATE runs SET status = 'EXPIRED', expired_at = ?1, completed_at = ?1, updated_at = ?1, \
             error = json_object('type', 'STRING_ERROR', 'raw', 'Run expired because the TTL (' || ttl || ') was reached') \
             WHERE id IN (SELECT id FROM runs WHERE status IN ('QUEUED', 'PENDING_VERSION') \
                          AND expire_at IS NOT NULL AND expire_at <= ?1 ORDER BY expire_at LIMIT ?2) \
             AND status IN ('QUEUED', 'PENDING_VERSION') \
             RETURNING id",
        )
        .bind(ms(now))
        .bind(i64::from(limit))
        .fetch_all(&self.writer)
        .await?;
        Ok(ids.into_iter().map(RunId::from_trusted).collect())
    }

    async fn run_promote_due(&self, now: DateTime<Utc>, limit: u32) -> Result<Vec<RunId>> {
        let delayed = format!(
            "UPDATE runs SET status = CASE WHEN {SERVED} THEN 'QUEUED' ELSE 'PENDING_VERSION' END, \
             queue_ts = delay_until - priority_ms, updated_at = ?1 \
             WHERE id IN (SELECT id FROM runs WHERE status = 'DELAYED' AND delay_until <= ?1 \
                          ORDER BY delay_until LIMIT ?2) \
             AND status = 'DELAYED' \
             RETURNING id"
        );
        let served = format!(
            "UPDATE runs SET status = 'QUEUED', updated_at = ?1 \
             WHERE id IN (SELECT id FROM runs WHERE status = 'PENDING_VERSION' AND {SERVED} LIMIT ?2) \
             AND status = 'PENDING_VERSION' \
             RETURNING id"
        );
        let mut ids: Vec<String> = Vec::new();
        for sql in [delayed.as_str(), served.as_str()] {
            let moved: Vec<String> = sqlx::query_scalar(sql)
                .bind(ms(now))
                .bind(i64::from(limit))
                .fetch_all(&self.writer)
                .await?;
            ids.extend(moved);
        }
        Ok(ids.into_iter().map(RunId::from_trusted).collect())
    }

    async fn run_requeue_due(&self, now: DateTime<Utc>, limit: u32) -> Result<Vec<RunId>> {
        let sql = "UPDATE runs SET status = 'QUEUED', queue_ts = next_attempt_at - priority_ms, \
             next_attempt_at = NULL, updated_at = ?1 \
             WHERE id IN (SELECT id FROM runs WHERE status = 'RETRYING_AFTER_FAILURE' AND next_attempt_at <= ?1 \
                          ORDER BY next_attempt_at LIMIT ?2) \
             AND status = 'RETRYING_AFTER_FAILURE' \
             RETURNING id";
        let ids: Vec<String> = sqlx::query_scalar(sql)
            .bind(ms(now))
            .bind(i64::from(limit))
            .fetch_all(&self.writer)
            .await?;
        Ok(ids.into_iter().map(RunId::from_trusted).collect())
    }

    async fn run_next_deadline(&self, kind: Deadline) -> Result<Option<DateTime<Utc>>> {
        statements::sqlite::run_next_deadline(&self.reader, kind).await
    }

    async fn run_next_due_at(&self, with_leases: bool) -> Result<Option<DateTime<Utc>>> {
        statements::sqlite::run_next_due_at(&self.reader, with_leases).await
    }

    async fn run_leases_due(
        &self,
        leases_expired_by: Option<DateTime<Utc>>,
        timed_out_by: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<Leased>> {
        let runs = statements::sqlite::run_leases_due(
            &self.reader,
            leases_expired_by,
            timed_out_by,
            limit,
        )
        .await?;
        let ids: Vec<AttemptId> = runs
            .iter()
            .filter_map(|r| r.current_attempt_id.clone())
            .collect();
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let attempts = attempts_in(&self.reader, &ids).await?;
        Ok(rows::pair_leased(runs, attempts))
    }
}

#[async_trait]
impl QueueStore for SqliteStore {
    async fn queue_declare(
        &self,
        environment: &EnvironmentId,
        declarations: &[QueueDeclaration],
        now: DateTime<Utc>,
    ) -> Result<()> {
        let (store, environment, declarations) =
            (self.clone(), environment.clone(), declarations.to_vec());
        detached(async move {
            store
                .write_queue_declare(&environment, &declarations, now)
                .await
        })
        .await
    }

    async fn queue_list(
        &self,
        environment: &EnvironmentId,
        offset: u64,
        limit: u32,
    ) -> Result<(Vec<QueueRecord>, u64)> {
        statements::sqlite::queue_list(&self.reader, environment, offset, limit).await
    }

    async fn queue_get(
        &self,
        environment: &EnvironmentId,
        queue: &QueueRef,
    ) -> Result<Option<QueueRecord>> {
        statements::sqlite::queue_get(&self.reader, environment, queue).await
    }

    async fn queue_update(
        &self,
        environment: &EnvironmentId,
        queue: &QueueRef,
        change: QueueChange,
        now: DateTime<Utc>,
    ) -> Result<Option<QueueRecord>> {
        statements::sqlite::queue_update(&self.writer, environment, queue, change, now).await
    }
}

#[async_trait]
impl BatchStore for SqliteStore {
    async fn batch_create(
        &self,
        batch: &runnel_core::batch::BatchRecord,
        now: DateTime<Utc>,
    ) -> Result<crate::BatchCreateOutcome> {
        let (store, batch) = (self.clone(), batch.clone());
        detached(async move { store.write_batch_create(&batch, now).await }).await
    }

    async fn batch_get(
        &self,
        environment: &EnvironmentId,
        id: &runnel_core::BatchId,
    ) -> Result<Option<runnel_core::batch::BatchRecord>> {
        statements::sqlite::batch_get(&self.reader, environment, id).await
    }

    async fn batch_item_list(
        &self,
        id: &runnel_core::BatchId,
    ) -> Result<Vec<runnel_core::batch::BatchItemRecord>> {
        statements::sqlite::batch_item_list(&self.reader, id).await
    }

    async fn batch_items_trigger(
        &self,
        environment: &EnvironmentId,
        id: &runnel_core::BatchId,
        items: &[crate::BatchItemTrigger],
        now: DateTime<Utc>,
    ) -> Result<crate::BatchItemsOutcome> {
        let (store, environment, id, items) = (
            self.clone(),
            environment.clone(),
            id.clone(),
            items.to_vec(),
        );
        detached(async move {
            store
                .write_batch_items_trigger(&environment, &id, &items, now)
                .await
        })
        .await
    }
}
