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

use std::str::FromStr;
use std::sync::LazyLock;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use runnel_core::idempotency::{self, Decision};
use runnel_core::run::{Attempt, Packet, Run};
use runnel_core::{AttemptId, EnvironmentId, QueueId, RunId, RunStatus};
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions};

use crate::attempts::{gate_sql, DequeueGate};
use crate::group::{GroupWriter, TriggerGroups};
use crate::prelude::*;
use crate::queues::Gates;
use crate::rows::{
    self, attempt_from_row, ms, opt_time, run_from_row, run_status, ATTEMPT_COLUMNS, RUN_COLUMNS,
};
use crate::sql::{self, Backend, Params};
use crate::statements;
use crate::{
    CancelOutcome, Deadline, Error, Leased, QueueChange, QueueDeclaration, QueueKind, QueueRecord,
    QueueRef, Result, TriggerOutcome, WorkerRecord,
};

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
}

async fn insert_run(conn: &mut PgConnection, run: &Run) -> Result<(), sqlx::Error> {
    rows::bind_run(sqlx::query(&INSERT_RUN), run)
        .execute(conn)
        .await?;
    Ok(())
}

/// Whether a registered version serves the run's task (its locked version when set).
const SERVED: &str =
    "EXISTS (SELECT 1 FROM worker_tasks w WHERE w.environment_id = runs.environment_id \
     AND w.task_identifier = runs.task_identifier \
     AND (runs.lock_to_version IS NULL OR w.version = runs.lock_to_version))";

async fn attempts_in(
    db: impl sqlx::Executor<'_, Database = sqlx::Postgres>,
    attempt_ids: &[AttemptId],
) -> Result<Vec<Attempt>> {
    let sql = format!("SELECT {ATTEMPT_COLUMNS} FROM attempts WHERE id = ANY($1)");
    let rows = sqlx::query(&sql)
        .bind(id_texts(attempt_ids))
        .fetch_all(db)
        .await?;
    rows.iter().map(attempt_from_row).collect()
}

/// Attempt ids as a `text[]` parameter.
fn id_texts(ids: &[AttemptId]) -> Vec<&str> {
    ids.iter().map(AttemptId::as_str).collect()
}

/// Whether `e` is a concurrent trigger having taken the idempotency key first (and not,
/// say, a duplicate run id).
fn is_idempotency_race(e: &Error) -> bool {
    matches!(e, Error::Database(sqlx::Error::Database(db))
        if db.is_unique_violation() && db.constraint() == Some(IDEMPOTENCY_INDEX))
}

/// One round of a keyed trigger, in its own transaction: lock the holder, decide,
/// insert. Fails with the unique violation when a concurrent trigger inserted first.
async fn trigger_keyed_once(
    pool: &PgPool,
    run: &Run,
    key: &str,
    now: DateTime<Utc>,
) -> Result<TriggerOutcome> {
    let mut tx = pool.begin().await?;
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

/// One trigger in transactions of its own: an unkeyed run is one `INSERT`; a keyed one
/// goes round again while concurrent triggers take its key first.
async fn trigger_alone(pool: &PgPool, run: &Run, now: DateTime<Utc>) -> Result<TriggerOutcome> {
    let Some(key) = &run.idempotency_key else {
        let mut conn = pool.acquire().await?;
        insert_run(&mut conn, run).await?;
        return Ok(TriggerOutcome::Created(run.id.clone()));
    };
    let mut round = 1;
    loop {
        match trigger_keyed_once(pool, run, key, now).await {
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

/// Many triggers in one transaction (the batch endpoints, and a group of concurrent
/// triggers), run again while a concurrent trigger takes one of their keys first.
async fn trigger_together(
    pool: &PgPool,
    runs: &[&Run],
    now: DateTime<Utc>,
) -> Result<Vec<TriggerOutcome>> {
    let mut round = 1;
    loop {
        let mut tx = pool.begin().await?;
        match crate::batches::postgres::trigger_many(&mut tx, runs, now).await {
            Err(e) if is_idempotency_race(&e) && round < TRIGGER_ROUNDS => {
                tracing::debug!(
                    round,
                    "idempotency key of a multi-row trigger taken concurrently"
                );
                round += 1;
            }
            Err(e) => return Err(e),
            Ok(outcomes) => {
                tx.commit().await?;
                return Ok(outcomes);
            }
        }
    }
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

#[async_trait]
impl RunStore for PgStore {
    async fn run_trigger(&self, run: &Run, now: DateTime<Utc>) -> Result<TriggerOutcome> {
        self.triggers.trigger(run, now).await
    }

    async fn run_trigger_many(
        &self,
        runs: &[Run],
        now: DateTime<Utc>,
    ) -> Result<Vec<TriggerOutcome>> {
        let runs: Vec<&Run> = runs.iter().collect();
        trigger_together(&self.pool, &runs, now).await
    }

    async fn run_get(&self, environment: &EnvironmentId, id: &RunId) -> Result<Option<Run>> {
        statements::postgres::run_get(&self.pool, environment, id).await
    }

    async fn run_children(&self, parent: &RunId) -> Result<Vec<Run>> {
        statements::postgres::run_children(&self.pool, parent).await
    }

    async fn run_transition(
        &self,
        id: &RunId,
        from: RunStatus,
        to: RunStatus,
        now: DateTime<Utc>,
    ) -> Result<bool> {
        statements::postgres::run_transition(&self.pool, id, from, to, now).await
    }

    async fn run_list(&self, query: &runnel_core::list::RunListQuery) -> Result<Vec<Run>> {
        statements::postgres::run_list(&self.pool, query).await
    }

    async fn run_descendants_live(
        &self,
        environment: &EnvironmentId,
        parent: &RunId,
    ) -> Result<Vec<RunId>> {
        statements::postgres::run_descendants_live(&self.pool, environment, parent).await
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
        statements::postgres::run_reschedule(
            &self.pool,
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
        statements::postgres::run_tags_replace(&self.pool, environment, id, expected, tags, now)
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
        statements::postgres::run_metadata_replace(
            &self.pool,
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
        statements::postgres::idempotency_key_reset(&self.pool, environment, task, key, now).await
    }

    async fn run_cancel(
        &self,
        environment: &EnvironmentId,
        id: &RunId,
        cents_per_ms: f64,
        now: DateTime<Utc>,
    ) -> Result<CancelOutcome> {
        let mut tx = self.pool.begin().await?;
        let row: Option<(String, Option<String>)> = sqlx::query_as(
            "SELECT status, current_attempt_id FROM runs WHERE id = $1 AND environment_id = $2 FOR UPDATE",
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
            Some(attempt) => sqlx::query_scalar("SELECT started_at FROM attempts WHERE id = $1")
                .bind(attempt)
                .fetch_optional(&mut *tx)
                .await?
                .flatten(),
            None => None,
        };
        let duration_ms = started_at.map_or(0, |t| (ms(now) - t).max(0));
        sqlx::query(
            "UPDATE runs SET status = 'CANCELED', completed_at = $1, updated_at = $1, error = $2, \
             usage_duration_ms = usage_duration_ms + $3, cost_in_cents = cost_in_cents + $4, \
             lease_expires_at = NULL, timeout_at = NULL, next_attempt_at = NULL, current_attempt_id = NULL \
             WHERE id = $5 AND status = $6",
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
                "UPDATE attempts SET status = 'CANCELED', completed_at = $1, updated_at = $1, duration_ms = $2, \
                 error = $3 WHERE id = $4 AND status IN ('PENDING', 'EXECUTING')",
            )
            .bind(ms(now))
            .bind(duration_ms)
            .bind(serde_json::json!({"message": "Run was canceled"}).to_string())
            .bind(attempt)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(CancelOutcome::Canceled {
            attempt: attempt.map(AttemptId::from_trusted),
        })
    }
}

#[async_trait]
impl SweepStore for PgStore {
    async fn run_expire_due(&self, now: DateTime<Utc>, limit: u32) -> Result<Vec<RunId>> {
        // The error is the upstream TaskRunError for an expired run, spelled byte for byte
        // as SQLite's json_object writes it (json_build_object would add spaces).
        let ids: Vec<String> = sqlx::query_scalar(
            "WITH due AS MATERIALIZED ( \
               SELECT id FROM runs WHERE status IN ('QUEUED', 'PENDING_VERSION') \
               AND expire_at IS NOT NULL AND expire_at <= $1 \
               ORDER BY expire_at LIMIT $2 FOR UPDATE SKIP LOCKED) \
             UPDATE runs SET status = 'EXPIRED', expired_at = $1, completed_at = $1, updated_at = $1, \
             error = '{\"type\":\"STRING_ERROR\",\"raw\":' \
                     || COALESCE(to_json('Run expired because the TTL (' || ttl || ') was reached')::text, 'null') \
                     || '}' \
             WHERE id IN (SELECT id FROM due) AND status IN ('QUEUED', 'PENDING_VERSION') \
             RETURNING id",
        )
        .bind(ms(now))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        Ok(ids.into_iter().map(RunId::from_trusted).collect())
    }

    async fn run_promote_due(&self, now: DateTime<Utc>, limit: u32) -> Result<Vec<RunId>> {
        let delayed = format!(
            "WITH due AS MATERIALIZED ( \
               SELECT id FROM runs WHERE status = 'DELAYED' AND delay_until <= $1 \
               ORDER BY delay_until LIMIT $2 FOR UPDATE SKIP LOCKED) \
             UPDATE runs SET status = CASE WHEN {SERVED} THEN 'QUEUED' ELSE 'PENDING_VERSION' END, \
             queue_ts = delay_until - priority_ms, updated_at = $1 \
             WHERE id IN (SELECT id FROM due) AND status = 'DELAYED' \
             RETURNING id"
        );
        let served = format!(
            "WITH due AS MATERIALIZED ( \
               SELECT id FROM runs WHERE status = 'PENDING_VERSION' AND {SERVED} \
               LIMIT $2 FOR UPDATE SKIP LOCKED) \
             UPDATE runs SET status = 'QUEUED', updated_at = $1 \
             WHERE id IN (SELECT id FROM due) AND status = 'PENDING_VERSION' \
             RETURNING id"
        );
        let mut ids: Vec<String> = Vec::new();
        for sql in [delayed.as_str(), served.as_str()] {
            let moved: Vec<String> = sqlx::query_scalar(sql)
                .bind(ms(now))
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await?;
            ids.extend(moved);
        }
        Ok(ids.into_iter().map(RunId::from_trusted).collect())
    }

    async fn run_requeue_due(&self, now: DateTime<Utc>, limit: u32) -> Result<Vec<RunId>> {
        let sql = "WITH due AS MATERIALIZED ( \
               SELECT id FROM runs WHERE status = 'RETRYING_AFTER_FAILURE' AND next_attempt_at <= $1 \
               ORDER BY next_attempt_at LIMIT $2 FOR UPDATE SKIP LOCKED) \
             UPDATE runs SET status = 'QUEUED', queue_ts = next_attempt_at - priority_ms, \
             next_attempt_at = NULL, updated_at = $1 \
             WHERE id IN (SELECT id FROM due) AND status = 'RETRYING_AFTER_FAILURE' \
             RETURNING id";
        let ids: Vec<String> = sqlx::query_scalar(sql)
            .bind(ms(now))
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
        Ok(ids.into_iter().map(RunId::from_trusted).collect())
    }

    async fn run_next_deadline(&self, kind: Deadline) -> Result<Option<DateTime<Utc>>> {
        statements::postgres::run_next_deadline(&self.pool, kind).await
    }

    async fn run_next_due_at(&self, with_leases: bool) -> Result<Option<DateTime<Utc>>> {
        statements::postgres::run_next_due_at(&self.pool, with_leases).await
    }

    async fn run_leases_due(
        &self,
        leases_expired_by: Option<DateTime<Utc>>,
        timed_out_by: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<Leased>> {
        let runs = statements::postgres::run_leases_due(
            &self.pool,
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
        let attempts = attempts_in(&self.pool, &ids).await?;
        Ok(rows::pair_leased(runs, attempts))
    }
}

#[async_trait]
impl QueueStore for PgStore {
    async fn queue_declare(
        &self,
        environment: &EnvironmentId,
        declarations: &[QueueDeclaration],
        now: DateTime<Utc>,
    ) -> Result<()> {
        if declarations.is_empty() {
            return Ok(());
        }
        let ids: Vec<String> = declarations
            .iter()
            .map(|_| QueueId::generate(ms(now)).to_string())
            .collect();
        let names: Vec<&str> = declarations.iter().map(|d| d.name.as_str()).collect();
        let kinds: Vec<&str> = declarations
            .iter()
            .map(|d| QueueKind::of(&d.name).as_str())
            .collect();
        let limits: Vec<Option<i64>> = declarations
            .iter()
            .map(|d| d.concurrency_limit.flatten().map(i64::from))
            .collect();
        let states: Vec<bool> = declarations
            .iter()
            .map(|d| d.concurrency_limit.is_some())
            .collect();
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO queues (id, environment_id, name, type, concurrency_limit, paused, created_at, updated_at) \
             SELECT d.id, $1, d.name, d.type, d.lim, FALSE, $2, $2 \
             FROM unnest($3::text[], $4::text[], $5::text[], $6::bigint[]) AS d(id, name, type, lim) \
             ON CONFLICT (environment_id, name) DO NOTHING",
        )
        .bind(environment.as_str())
        .bind(ms(now))
        .bind(&ids)
        .bind(&names)
        .bind(&kinds)
        .bind(&limits)
        .execute(&mut *tx)
        .await?;
        // Declarations that state a limit replace the registered one.
        sqlx::query(
            "UPDATE queues AS q SET concurrency_limit = d.lim, updated_at = $2 \
             FROM unnest($3::text[], $4::bigint[], $5::boolean[]) AS d(name, lim, states) \
             WHERE q.environment_id = $1 AND q.name = d.name AND d.states",
        )
        .bind(environment.as_str())
        .bind(ms(now))
        .bind(&names)
        .bind(&limits)
        .bind(&states)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn queue_list(
        &self,
        environment: &EnvironmentId,
        offset: u64,
        limit: u32,
    ) -> Result<(Vec<QueueRecord>, u64)> {
        statements::postgres::queue_list(&self.pool, environment, offset, limit).await
    }

    async fn queue_get(
        &self,
        environment: &EnvironmentId,
        queue: &QueueRef,
    ) -> Result<Option<QueueRecord>> {
        statements::postgres::queue_get(&self.pool, environment, queue).await
    }

    async fn queue_update(
        &self,
        environment: &EnvironmentId,
        queue: &QueueRef,
        change: QueueChange,
        now: DateTime<Utc>,
    ) -> Result<Option<QueueRecord>> {
        statements::postgres::queue_update(&self.pool, environment, queue, change, now).await
    }
}

#[async_trait]
impl BatchStore for PgStore {
    async fn batch_create(
        &self,
        batch: &runnel_core::batch::BatchRecord,
        now: DateTime<Utc>,
    ) -> Result<crate::BatchCreateOutcome> {
        let mut round = 1;
        loop {
            let mut tx = self.pool.begin().await?;
            match crate::batches::postgres::batch_create(&mut tx, batch, now).await {
                Err(Error::Database(sqlx::Error::Database(db)))
                    if db.is_unique_violation()
                        && db.constraint()
                            == Some(crate::batches::postgres::BATCH_IDEMPOTENCY_INDEX)
                        && round < TRIGGER_ROUNDS =>
                {
                    // A concurrent create took the key first: look again for it.
                    round += 1;
                }
                Err(e) => return Err(e),
                Ok(outcome) => {
                    tx.commit().await?;
                    return Ok(outcome);
                }
            }
        }
    }

    async fn batch_get(
        &self,
        environment: &EnvironmentId,
        id: &runnel_core::BatchId,
    ) -> Result<Option<runnel_core::batch::BatchRecord>> {
        statements::postgres::batch_get(&self.pool, environment, id).await
    }

    async fn batch_item_list(
        &self,
        id: &runnel_core::BatchId,
    ) -> Result<Vec<runnel_core::batch::BatchItemRecord>> {
        statements::postgres::batch_item_list(&self.pool, id).await
    }

    async fn batch_items_trigger(
        &self,
        environment: &EnvironmentId,
        id: &runnel_core::BatchId,
        items: &[crate::BatchItemTrigger],
        now: DateTime<Utc>,
    ) -> Result<crate::BatchItemsOutcome> {
        let mut round = 1;
        loop {
            let mut tx = self.pool.begin().await?;
            match crate::batches::postgres::items_trigger(&mut tx, environment, id, items, now)
                .await
            {
                Err(e) if is_idempotency_race(&e) && round < TRIGGER_ROUNDS => {
                    tracing::debug!(batch = %id, round, "idempotency key of a batch item taken concurrently");
                    round += 1;
                }
                Err(e) => return Err(e),
                Ok(outcome) => {
                    tx.commit().await?;
                    return Ok(outcome);
                }
            }
        }
    }
}
