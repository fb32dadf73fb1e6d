//! The PostgreSQL backend, for several server nodes sharing one database.
//!
//! One connection pool ([`PgStore::connect_with`]); every node runs the migrations on
//! start, and sqlx's migrator holds a session advisory lock while it does, so nodes
//! starting together apply each migration once. Where the SQLite backend gets atomicity
//! for free from its single writer connection, this one takes row locks. The statements
//! are written once, in the area modules (`sweeps.rs`, `attempts.rs`, `batches.rs`…),
//! with this dialect's lock suffixes; this file keeps what only PostgreSQL does (the
//! dequeue's per-task index ranges, limited-queue advisory locks, the bootstrap lock,
//! the idempotency-key race loop, NOTIFY). Why each lock, in one place:
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
//! - **Statements and batches that lock several runs and wait** (`attempt_start`,
//!   `attempt_heartbeat`, `attempt_settle`) lock them in run id order (`COLLATE "C"`,
//!   the byte order Rust sorts strings in). A worker's heartbeat or completions and the
//!   rescuer's batch over the same runs then queue behind each other; locked in the
//!   order they arrived, they deadlock (PostgreSQL aborts one of them).
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
//! Concurrent triggers of one node are group-committed (`group.rs`): a group is one
//! multi-row trigger, which locks its keys' holders `FOR UPDATE` and, when it loses the
//! insert race above, rolls back and runs again as a whole; the diagram is the path of a
//! trigger written alone (a group of one, or a failed group's triggers one by one).
//!
//! Every failure is a [`crate::Error`]; nothing is retried except the idempotency race.

use std::future::Future;
use std::str::FromStr;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use runnel_core::run::Run;
use runnel_core::RunStatus;
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions};

use crate::admission::Gates;
use crate::admission::{gate_sql, DequeueGate};
use crate::backend::Backend;
use crate::group::{GroupWriter, TriggerGroups};
use crate::rows::{run_from_row, RUN_COLUMNS};
use crate::sql::{self, Params};
use crate::{Error, Result, TriggerOutcome, WorkerRecord};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// Pool size of [`PgStore::connect`].
pub const MAX_CONNECTIONS_DEFAULT: u32 = 10;

/// How many times a trigger looks for the key's holder again after losing the insert
/// race to a concurrent trigger with the same key.
pub const TRIGGER_ROUNDS: usize = 5;

/// The unique index that guards idempotency keys (migrations/postgres/0001_init.sql).
const IDEMPOTENCY_INDEX: &str = "runs_by_idempotency_key";

/// The unique index that guards batch idempotency keys (migration 0005).
const BATCH_IDEMPOTENCY_INDEX: &str = "batches_by_idempotency_key";

/// Advisory lock key serializing `project_bootstrap` across nodes ("runnel" + 1).
const BOOTSTRAP_LOCK_KEY: i64 = 0x7275_6e6e_656c_0001;

#[derive(Debug, Clone)]
pub struct PgStore {
    pool: PgPool,
    triggers: TriggerGroups,
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
        // NOTICEs (a second start's "relation \"_sqlx_migrations\" already exists,
        // skipping") would reach the log through sqlx at info on every start: warnings
        // and errors still come through.
        let options =
            PgConnectOptions::from_str(url)?.options([("client_min_messages", "warning")]);
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .connect_with(options)
            .await?;
        MIGRATOR.run(&pool).await?;
        let triggers = TriggerGroups::spawn(PgTriggers { pool: pool.clone() });
        Ok(PgStore { pool, triggers })
    }
}

#[async_trait]
impl Backend for PgStore {
    type D = sql::Postgres;

    async fn reader(&self) -> Result<PoolConnection<sqlx::Postgres>> {
        Ok(self.pool.acquire().await?)
    }

    async fn writer(&self) -> Result<PoolConnection<sqlx::Postgres>> {
        Ok(self.pool.acquire().await?)
    }

    async fn begin(&self) -> Result<sqlx::Transaction<'static, sqlx::Postgres>> {
        Ok(self.pool.begin().await?)
    }

    async fn publish(&self, signals: &[crate::Signal], origin: &str) -> Result<()> {
        crate::multinode::pg_publish(&self.pool, signals, origin).await
    }

    async fn publish_changes(
        &self,
        runs: &[runnel_core::RunId],
        missed: bool,
        origin: &str,
    ) -> Result<()> {
        crate::multinode::pg_publish_changes(&self.pool, runs, missed, origin).await
    }

    async fn listen(&self) -> Result<Option<Box<dyn crate::SignalListener>>> {
        let listener = crate::multinode::pg_listen(&self.pool).await?;
        Ok(Some(Box::new(listener)))
    }

    async fn close_pools(&self) {
        self.pool.close().await;
    }

    async fn serialize_bootstrap(&self, conn: &mut PgConnection) -> Result<()> {
        // Held until commit: a second node waits here, then sees the first's project.
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(BOOTSTRAP_LOCK_KEY)
            .execute(conn)
            .await?;
        Ok(())
    }

    /// The oldest queued runs `worker` may take, at most `limit`, locked (`SKIP LOCKED`:
    /// dequeues at once, on any node, take different runs instead of waiting on each
    /// other's rows). One index range per task (LATERAL), merged: `task_identifier = ANY(…)
    /// ORDER BY queue_ts` would make PostgreSQL 15 read through every queued run of the
    /// environment, other tasks' backlogs included. Up to `limit` runs per task are locked,
    /// the oldest `limit` taken.
    async fn dequeue_candidates(
        &self,
        conn: &mut PgConnection,
        worker: &WorkerRecord,
        gate: Option<&DequeueGate<'_>>,
        limit: u32,
    ) -> Result<Vec<Run>> {
        let mut p = Params::<sql::Postgres>::new();
        let tasks = p.bind(sql::Value::Texts(
            worker
                .tasks
                .iter()
                .map(|t| t.task_identifier.as_str().into())
                .collect(),
        ));
        let environment = p.bind(worker.environment_id.as_str());
        let version = p.bind(&worker.version);
        let limit = p.bind(i64::from(limit));
        let gate = gate.map(|gate| gate_sql(&mut p, gate)).unwrap_or_default();
        let sql = format!(
            "SELECT {RUN_COLUMNS} FROM unnest({tasks}::text[]) AS wanted(task) \
             CROSS JOIN LATERAL ( \
               SELECT * FROM runs WHERE environment_id = {environment} AND status = {} \
               AND task_identifier = wanted.task \
               AND (lock_to_version IS NULL OR lock_to_version = {version}) {gate}\
               ORDER BY queue_ts, id COLLATE \"C\" LIMIT {limit} FOR UPDATE SKIP LOCKED) AS due \
             ORDER BY queue_ts, id COLLATE \"C\" LIMIT {limit}",
            sql::status(RunStatus::Queued),
        );
        let rows = p.fetch_all(conn, &sql).await?;
        rows.iter().map(run_from_row).collect()
    }

    async fn dequeue_lock_queues(
        &self,
        conn: &mut PgConnection,
        worker: &WorkerRecord,
        gates: &Gates,
    ) -> Result<Vec<String>> {
        // Each limited queue this worker may lease from is counted and leased
        // under a transaction-scoped advisory lock (see `crate::queues`), taken in
        // name order before any of its runs is picked: dequeues of one limited
        // queue take turns, so none of them locks runs another then cannot count
        // in, and the oldest runs go first. A limited queue that had no run for
        // this worker when looked at is left out until the next dequeue.
        let limited: Vec<String> = gates.limits.keys().cloned().collect();
        if limited.is_empty() {
            return Ok(Vec::new());
        }
        let task_ids: Vec<&str> = worker
            .tasks
            .iter()
            .map(|t| t.task_identifier.as_str())
            .collect();
        let sql = format!(
            "SELECT name FROM unnest($2::text[]) AS l(name) WHERE EXISTS ( \
               SELECT 1 FROM runs WHERE environment_id = $1 AND status = {} \
               AND queue = l.name AND task_identifier = ANY($3))",
            sql::status(RunStatus::Queued)
        );
        let mut relevant: Vec<String> = sqlx::query_scalar(&sql)
            .bind(worker.environment_id.as_str())
            .bind(&limited)
            .bind(&task_ids)
            .fetch_all(&mut *conn)
            .await?;
        relevant.sort();
        for name in &relevant {
            sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
                .bind(format!("{}/{name}", worker.environment_id))
                .execute(&mut *conn)
                .await?;
        }
        Ok(limited
            .into_iter()
            .filter(|name| !relevant.contains(name))
            .collect())
    }

    async fn trigger(&self, run: &Run, now: DateTime<Utc>) -> Result<TriggerOutcome> {
        self.triggers.trigger(run, now).await
    }

    async fn trigger_many(&self, runs: &[Run], now: DateTime<Utc>) -> Result<Vec<TriggerOutcome>> {
        let runs: Vec<&Run> = runs.iter().collect();
        trigger_together(&self.pool, &runs, now).await
    }

    async fn retry_key_race<'w, T: Send + 'w>(
        &'w self,
        what: &'w str,
        write: &'w (dyn Fn() -> crate::backend::KeyedWrite<'w, T> + Send + Sync),
    ) -> Result<T> {
        key_race_rounds(what, write).await
    }
}

/// Whether `e` is a concurrent writer having taken an idempotency key first (and not,
/// say, a duplicate run id).
fn is_idempotency_race(e: &Error) -> bool {
    matches!(e, Error::Database(sqlx::Error::Database(db))
        if db.is_unique_violation()
            && matches!(db.constraint(), Some(IDEMPOTENCY_INDEX | BATCH_IDEMPOTENCY_INDEX)))
}

/// Runs `write`, one transaction, again while a concurrent writer takes one of its
/// idempotency keys first (the unique violation of the diagram above; the transaction
/// was rolled back when it dropped), at most [`TRIGGER_ROUNDS`] times. `what` names the
/// write in logs.
async fn key_race_rounds<T, F, W>(what: &str, write: F) -> Result<T>
where
    F: Fn() -> W,
    W: Future<Output = Result<T>>,
{
    let mut round = 1;
    loop {
        match write().await {
            Err(e) if is_idempotency_race(&e) && round < TRIGGER_ROUNDS => {
                tracing::debug!(what, round, "idempotency key taken by a concurrent writer");
                round += 1;
            }
            Err(e) => {
                if is_idempotency_race(&e) {
                    tracing::warn!(
                        what,
                        rounds = round,
                        "idempotency key still contended, giving up"
                    );
                }
                return Err(e);
            }
            Ok(outcome) => return Ok(outcome),
        }
    }
}

/// One trigger in transactions of its own: an unkeyed run is one `INSERT`; a keyed one
/// is a multi-row trigger of one run, going round again while concurrent triggers take
/// its key first.
async fn trigger_alone(pool: &PgPool, run: &Run, now: DateTime<Utc>) -> Result<TriggerOutcome> {
    if run.idempotency_key.is_none() {
        let mut conn = pool.acquire().await?;
        crate::batches::insert_runs::<sql::Postgres>(&mut conn, &[run]).await?;
        return Ok(TriggerOutcome::Created(run.id.clone()));
    }
    let write = || async {
        let mut tx = pool.begin().await?;
        let mut outcomes =
            crate::batches::trigger_many::<sql::Postgres>(&mut tx, &[run], now).await?;
        tx.commit().await?;
        Ok(outcomes.pop().expect("one outcome per run"))
    };
    key_race_rounds(run.id.as_str(), write).await
}

/// Many triggers in one transaction (the batch endpoints, and a group of concurrent
/// triggers), run again while a concurrent trigger takes one of their keys first.
async fn trigger_together(
    pool: &PgPool,
    runs: &[&Run],
    now: DateTime<Utc>,
) -> Result<Vec<TriggerOutcome>> {
    let write = || async {
        let mut tx = pool.begin().await?;
        let outcomes = crate::batches::trigger_many::<sql::Postgres>(&mut tx, runs, now).await?;
        tx.commit().await?;
        Ok(outcomes)
    };
    key_race_rounds("a multi-row trigger", write).await
}

/// Writes the store's trigger groups (`group.rs`).
#[derive(Debug)]
struct PgTriggers {
    pool: PgPool,
}

#[async_trait]
impl GroupWriter for PgTriggers {
    async fn write_group(&self, runs: &[&Run], now: DateTime<Utc>) -> Result<Vec<TriggerOutcome>> {
        trigger_together(&self.pool, runs, now).await
    }

    async fn write_one(&self, run: &Run, now: DateTime<Utc>) -> Result<TriggerOutcome> {
        trigger_alone(&self.pool, run, now).await
    }
}
