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
use runnel_core::run::Run;
use runnel_core::RunStatus;
use sqlx::pool::PoolConnection;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

use crate::admission::{gate_sql, DequeueGate};
use crate::backend::Backend;
use crate::detach::detached;
use crate::group::{GroupWriter, TriggerGroups};
use crate::rows::{run_from_row, RUN_COLUMNS};
use crate::sql::{self, Params};
use crate::{Error, Result, TriggerOutcome, WorkerRecord};

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

    const ONE_WRITER: bool = true;

    /// The oldest queued runs, read as they are: the one writer keeps the gates, the
    /// held counts and the runs from changing before the dequeue commits. One index
    /// range per task (`runs_dequeue`), each cut at `limit`, merged: `task_identifier IN
    /// (…) ORDER BY queue_ts, id` would read and sort every queued run of those tasks
    /// at each dequeue.
    async fn dequeue_candidates(
        &self,
        conn: &mut sqlx::SqliteConnection,
        worker: &WorkerRecord,
        gate: Option<&DequeueGate<'_>>,
        limit: u32,
    ) -> Result<Vec<Run>> {
        let mut p = Params::<sql::Sqlite>::new();
        let environment = p.bind(worker.environment_id.as_str());
        let version = p.bind(&worker.version);
        let limit = p.bind(i64::from(limit));
        let gate = gate.map(|gate| gate_sql(&mut p, gate)).unwrap_or_default();
        let ranges: Vec<String> = worker
            .tasks
            .iter()
            .map(|task| {
                format!(
                    "SELECT id FROM (SELECT id FROM runs WHERE environment_id = {environment} \
                     AND status = {} AND task_identifier = {} \
                     AND (lock_to_version IS NULL OR lock_to_version = {version}) {gate}\
                     ORDER BY queue_ts, id LIMIT {limit})",
                    sql::status(RunStatus::Queued),
                    p.bind(task.task_identifier.as_str()),
                )
            })
            .collect();
        let sql = format!(
            "SELECT {RUN_COLUMNS} FROM runs WHERE id IN ({}) ORDER BY queue_ts, id LIMIT {limit}",
            ranges.join(" UNION ALL "),
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
        // No ping before each acquire (sqlx's default): on a local file it only costs a
        // round trip to the connection's thread, which every statement pays already.
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .test_before_acquire(false)
            .connect_with(options.clone())
            .await?;
        MIGRATOR.run(&writer).await?;
        let reader = SqlitePoolOptions::new()
            .max_connections(READER_CONNECTIONS)
            .test_before_acquire(false)
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
