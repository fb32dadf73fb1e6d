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

use std::future::Future;
use std::str::FromStr;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use runnel_core::run::{Attempt, AttemptStatus, Run};
use runnel_core::{AttemptId, EnvironmentId, RunId, WorkerId};
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions};

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
        write: &'w (dyn Fn() -> sql::KeyedWrite<'w, T> + Send + Sync),
    ) -> Result<T> {
        key_race_rounds(what, write).await
    }
}

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

/// The oldest queued runs `worker` may take, at most `limit`, locked (`SKIP LOCKED`:
/// dequeues at once, on any node, take different runs instead of waiting on each
/// other's rows). One index range per task (LATERAL), merged: `task_identifier = ANY(…)
/// ORDER BY queue_ts` would make PostgreSQL 15 read through every queued run of the
/// environment, other tasks' backlogs included. Up to `limit` runs per task are locked,
/// the oldest `limit` taken. With `gates` = (gated, excluded): runs of the `gated`
/// queues are left out when their queue is paused or their (queue, key) pair is full,
/// and runs of the `excluded` queues always.
async fn dequeue_candidates(
    conn: &mut PgConnection,
    worker: &WorkerRecord,
    task_ids: &[&str],
    gates: Option<(&[String], &[String])>,
    limit: u32,
) -> Result<Vec<Run>> {
    let gate = if gates.is_none() {
        ""
    } else {
        "AND queue <> ALL($6::text[]) AND (queue <> ALL($5::text[]) OR NOT EXISTS (SELECT 1 FROM queues q \
           WHERE q.environment_id = runs.environment_id AND q.name = runs.queue \
           AND (q.paused OR COALESCE(q.concurrency_limit_override, q.concurrency_limit) <= \
             (SELECT count(*) FROM runs h WHERE h.environment_id = runs.environment_id \
              AND h.queue = runs.queue AND h.concurrency_key IS NOT DISTINCT FROM runs.concurrency_key \
              AND h.status IN ('DEQUEUED', 'EXECUTING'))))) "
    };
    let sql = format!(
        "SELECT {RUN_COLUMNS} FROM unnest($2::text[]) AS wanted(task) \
         CROSS JOIN LATERAL ( \
           SELECT * FROM runs WHERE environment_id = $1 AND status = 'QUEUED' \
           AND task_identifier = wanted.task AND (lock_to_version IS NULL OR lock_to_version = $3) {gate}\
           ORDER BY queue_ts, id COLLATE \"C\" LIMIT $4 FOR UPDATE SKIP LOCKED) AS due \
         ORDER BY queue_ts, id COLLATE \"C\" LIMIT $4"
    );
    let mut query = sqlx::query(&sql)
        .bind(worker.environment_id.as_str())
        .bind(task_ids)
        .bind(&worker.version)
        .bind(i64::from(limit));
    if let Some((gated, excluded)) = gates {
        query = query.bind(gated).bind(excluded);
    }
    let rows = query.fetch_all(conn).await?;
    rows.iter().map(run_from_row).collect()
}

/// Held (DEQUEUED or EXECUTING) runs of the `queues` per (queue, concurrency key).
async fn held_counts(
    conn: &mut PgConnection,
    environment: &EnvironmentId,
    queues: &[String],
) -> Result<Held> {
    if queues.is_empty() {
        return Ok(Held::new());
    }
    let rows: Vec<(String, Option<String>, i64)> = sqlx::query_as(
        "SELECT queue, concurrency_key, count(*) FROM runs WHERE environment_id = $1 \
         AND status IN ('DEQUEUED', 'EXECUTING') AND queue = ANY($2) GROUP BY queue, concurrency_key",
    )
    .bind(environment.as_str())
    .bind(queues)
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().map(|(q, k, n)| ((q, k), n)).collect())
}

/// Leases `runs` (locked by the caller) to `worker`: two statements for the whole
/// batch, whatever its size; the rows are locked already, so these only write.
async fn lease_runs(
    conn: &mut PgConnection,
    worker: &WorkerRecord,
    runs: Vec<Run>,
    lease_until: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<Vec<Leased>> {
    let leased: Vec<Leased> = runs
        .into_iter()
        .map(|run| rows::lease(run, worker, lease_until, now))
        .collect();
    if leased.is_empty() {
        return Ok(leased);
    }
    let column = |f: fn(&Leased) -> Option<i64>| leased.iter().map(f).collect::<Vec<_>>();
    let run_ids: Vec<&str> = leased.iter().map(|l| l.run.id.as_str()).collect();
    let attempt_ids: Vec<&str> = leased.iter().map(|l| l.attempt.id.as_str()).collect();
    let machines: Vec<Option<&str>> = leased
        .iter()
        .map(|l| l.run.machine.map(|m| m.as_str()))
        .collect();
    sqlx::query(
        "UPDATE runs AS r SET status = 'DEQUEUED', worker_id = $1, worker_version = $2, \
         current_attempt_id = v.attempt_id, lease_expires_at = $3, expire_at = NULL, \
         attempt_count = v.attempt_count, max_duration_secs = v.max_duration_secs, machine = v.machine, \
         updated_at = $4 \
         FROM unnest($5::text[], $6::text[], $7::bigint[], $8::bigint[], $9::text[]) \
           AS v(id, attempt_id, attempt_count, max_duration_secs, machine) \
         WHERE r.id = v.id AND r.status = 'QUEUED'",
    )
    .bind(worker.id.as_str())
    .bind(&worker.version)
    .bind(ms(lease_until))
    .bind(ms(now))
    .bind(&run_ids)
    .bind(&attempt_ids)
    .bind(column(|l| Some(i64::from(l.run.attempt_count))))
    .bind(column(|l| l.run.max_duration_secs.map(i64::from)))
    .bind(&machines)
    .execute(&mut *conn)
    .await?;
    sqlx::query(
        "INSERT INTO attempts (id, run_id, number, status, created_at, updated_at, worker_id, duration_ms) \
         SELECT a.id, a.run_id, a.number, 'PENDING', $1, $1, $2, 0 \
         FROM unnest($3::text[], $4::text[], $5::bigint[]) AS a(id, run_id, number)",
    )
    .bind(ms(now))
    .bind(worker.id.as_str())
    .bind(&attempt_ids)
    .bind(&run_ids)
    .bind(column(|l| Some(i64::from(l.attempt.number))))
    .execute(&mut *conn)
    .await?;
    Ok(leased)
}

#[async_trait]
impl AttemptStore for PgStore {
    async fn attempt_list(&self, run: &RunId) -> Result<Vec<Attempt>> {
        statements::postgres::attempt_list(&self.pool, run).await
    }

    async fn run_dequeue(
        &self,
        worker: &WorkerRecord,
        limit: u32,
        lease_until: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<Vec<Leased>> {
        if worker.tasks.is_empty() || limit == 0 {
            return Ok(Vec::new());
        }
        let task_ids: Vec<&str> = worker
            .tasks
            .iter()
            .map(|t| t.task_identifier.as_str())
            .collect();
        let mut tx = self.pool.begin().await?;
        let gates = Gates::from_rows(
            sqlx::query_as(
                "SELECT name, paused, COALESCE(concurrency_limit_override, concurrency_limit) FROM queues \
                 WHERE environment_id = $1 AND (paused OR concurrency_limit IS NOT NULL \
                 OR concurrency_limit_override IS NOT NULL)",
            )
            .bind(worker.environment_id.as_str())
            .fetch_all(&mut *tx)
            .await?,
        );
        let mut leased = Vec::new();
        if gates.is_empty() {
            let runs = dequeue_candidates(&mut tx, worker, &task_ids, None, limit).await?;
            leased = lease_runs(&mut tx, worker, runs, lease_until, now).await?;
        } else {
            // Each limited queue this worker may lease from is counted and leased
            // under a transaction-scoped advisory lock (see `crate::queues`), taken in
            // name order before any of its runs is picked: dequeues of one limited
            // queue take turns, so none of them locks runs another then cannot count
            // in, and the oldest runs go first. A limited queue that had no run for
            // this worker when looked at is left out until the next dequeue.
            let limited: Vec<String> = gates.limits.keys().cloned().collect();
            let mut relevant: Vec<String> = if limited.is_empty() {
                Vec::new()
            } else {
                sqlx::query_scalar(
                    "SELECT name FROM unnest($2::text[]) AS l(name) WHERE EXISTS ( \
                       SELECT 1 FROM runs WHERE environment_id = $1 AND status = 'QUEUED' \
                       AND queue = l.name AND task_identifier = ANY($3))",
                )
                .bind(worker.environment_id.as_str())
                .bind(&limited)
                .bind(&task_ids)
                .fetch_all(&mut *tx)
                .await?
            };
            relevant.sort();
            for name in &relevant {
                sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
                    .bind(format!("{}/{name}", worker.environment_id))
                    .execute(&mut *tx)
                    .await?;
            }
            let excluded: Vec<String> = limited
                .into_iter()
                .filter(|name| !relevant.contains(name))
                .collect();
            let gated = gates.names();
            for _ in 0..ADMIT_ROUNDS {
                let want = limit as usize - leased.len();
                let candidates = dequeue_candidates(
                    &mut tx,
                    worker,
                    &task_ids,
                    Some((&gated, &excluded)),
                    u32::try_from(want).unwrap_or(limit),
                )
                .await?;
                let counted = gates.limited_among(&candidates);
                let mut held = held_counts(&mut tx, &worker.environment_id, &counted).await?;
                let (runs, dropped) = admit(candidates, &gates, &excluded, &mut held, want);
                leased.extend(lease_runs(&mut tx, worker, runs, lease_until, now).await?);
                if !dropped || leased.len() >= limit as usize {
                    break;
                }
            }
        }
        if leased.is_empty() {
            return Ok(leased);
        }
        tx.commit().await?;
        Ok(leased)
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
        if attempt_ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut tx = self.pool.begin().await?;
        // Locks its runs in id order (see the module doc).
        let started: Vec<String> = sqlx::query_scalar(
            "WITH held AS MATERIALIZED ( \
               SELECT id FROM runs WHERE current_attempt_id = ANY($6) AND worker_id = $7 \
               AND status = 'DEQUEUED' ORDER BY id COLLATE \"C\" FOR UPDATE) \
             UPDATE runs SET status = 'EXECUTING', started_at = COALESCE(started_at, $1), \
             base_cost_in_cents = CASE WHEN started_at IS NULL THEN $2 ELSE base_cost_in_cents END, \
             lease_expires_at = $3, \
             timeout_at = CASE WHEN max_duration_secs IS NULL OR max_duration_secs >= $4 THEN NULL \
                          ELSE $1 + max_duration_secs * 1000 + $5 END, \
             updated_at = $1 \
             WHERE id IN (SELECT id FROM held) \
             AND current_attempt_id = ANY($6) AND worker_id = $7 AND status = 'DEQUEUED' \
             RETURNING current_attempt_id",
        )
        .bind(ms(now))
        .bind(run_fee_cents)
        .bind(ms(lease_until))
        .bind(NO_MAX_DURATION)
        .bind(timeout_grace_ms)
        .bind(id_texts(attempt_ids))
        .bind(worker.as_str())
        .fetch_all(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE attempts SET status = 'EXECUTING', started_at = $1, updated_at = $1 \
             WHERE id = ANY($2) AND status = 'PENDING'",
        )
        .bind(ms(now))
        .bind(&started)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(started.into_iter().map(AttemptId::from_trusted).collect())
    }

    async fn attempt_heartbeat(
        &self,
        worker: &WorkerId,
        attempt_ids: &[AttemptId],
        lease_until: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<Vec<AttemptId>> {
        sqlx::query("UPDATE workers SET last_seen_at = $1 WHERE id = $2")
            .bind(ms(now))
            .bind(worker.as_str())
            .execute(&self.pool)
            .await?;
        if attempt_ids.is_empty() {
            return Ok(Vec::new());
        }
        // Locks its runs in id order (see the module doc).
        let held: Vec<String> = sqlx::query_scalar(
            "WITH held AS MATERIALIZED ( \
               SELECT id FROM runs WHERE worker_id = $2 AND status IN ('DEQUEUED', 'EXECUTING') \
               AND current_attempt_id = ANY($3) ORDER BY id COLLATE \"C\" FOR UPDATE) \
             UPDATE runs SET lease_expires_at = $1 WHERE id IN (SELECT id FROM held) \
             AND worker_id = $2 AND status IN ('DEQUEUED', 'EXECUTING') AND current_attempt_id = ANY($3) \
             RETURNING current_attempt_id",
        )
        .bind(ms(lease_until))
        .bind(worker.as_str())
        .bind(id_texts(attempt_ids))
        .fetch_all(&self.pool)
        .await?;
        Ok(held.into_iter().map(AttemptId::from_trusted).collect())
    }

    async fn attempts_held(&self, attempt_ids: &[AttemptId]) -> Result<Vec<Leased>> {
        if attempt_ids.is_empty() {
            return Ok(Vec::new());
        }
        let sql = format!("SELECT {RUN_COLUMNS} FROM runs WHERE current_attempt_id = ANY($1)");
        let rows = sqlx::query(&sql)
            .bind(id_texts(attempt_ids))
            .fetch_all(&self.pool)
            .await?;
        let runs = rows.iter().map(run_from_row).collect::<Result<Vec<_>>>()?;
        let attempts = attempts_in(&self.pool, attempt_ids).await?;
        Ok(rows::pair_leased(runs, attempts))
    }

    async fn attempt_settle(&self, settlements: &[AttemptSettlement]) -> Result<Vec<bool>> {
        let mut applied = vec![false; settlements.len()];
        if settlements.is_empty() {
            return Ok(applied);
        }
        // Locks the runs in id order, whatever order the batch came in (see the module doc).
        let mut order: Vec<usize> = (0..settlements.len()).collect();
        order.sort_by(|a, b| {
            settlements[*a]
                .run_id
                .as_str()
                .cmp(settlements[*b].run_id.as_str())
        });
        let mut tx = self.pool.begin().await?;
        for i in order {
            let s = &settlements[i];
            let claim_sql = match &s.claim {
                Claim::Worker(_) => "worker_id = $13",
                Claim::LeaseExpired(_) => "lease_expires_at <= $13",
                Claim::TimedOut(_) => "timeout_at <= $13",
            };
            let sql = format!(
                "UPDATE runs SET status = $1, output = $2, output_type = $3, error = $4, \
                 usage_duration_ms = usage_duration_ms + $5, cost_in_cents = cost_in_cents + $6, \
                 failed_attempts = failed_attempts + $7, completed_at = $8, next_attempt_at = $9, \
                 lease_expires_at = NULL, timeout_at = NULL, current_attempt_id = NULL, updated_at = $10 \
                 WHERE id = $11 AND current_attempt_id = $12 AND status IN ('DEQUEUED', 'EXECUTING') AND {claim_sql}"
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
            let query = match &s.claim {
                Claim::Worker(worker) => query.bind(worker.to_string()),
                Claim::LeaseExpired(at) | Claim::TimedOut(at) => query.bind(ms(*at)),
            };
            let done = query.execute(&mut *tx).await?.rows_affected() == 1;
            if done {
                sqlx::query(
                    "UPDATE attempts SET status = $1, error = $2, completed_at = $3, updated_at = $3, duration_ms = $4 \
                     WHERE id = $5",
                )
                .bind(s.attempt_status.as_str())
                .bind(s.attempt_error.as_ref().map(|e| e.to_string()))
                .bind(ms(s.now))
                .bind(s.duration_ms)
                .bind(s.attempt_id.as_str())
                .execute(&mut *tx)
                .await?;
            }
            applied[i] = done;
        }
        tx.commit().await?;
        Ok(applied)
    }
}

#[async_trait]
impl WorkerStore for PgStore {
    async fn worker_register(
        &self,
        registration: &WorkerRegistration,
        now: DateTime<Utc>,
    ) -> Result<Registered> {
        let env = registration.environment_id.as_str();
        let mut tx = self.pool.begin().await?;
        // Registrations of one environment take turns, so two never pick one version.
        sqlx::query("SELECT id FROM environments WHERE id = $1 FOR UPDATE")
            .bind(env)
            .execute(&mut *tx)
            .await?;
        let version = match &registration.version {
            Some(version) => version.clone(),
            None => {
                let existing: Vec<String> = sqlx::query_scalar(
                    "SELECT version FROM worker_versions WHERE environment_id = $1 AND version LIKE $2",
                )
                .bind(env)
                .bind(rows::version_pattern(now))
                .fetch_all(&mut *tx)
                .await?;
                rows::next_version(now, &existing)
            }
        };
        sqlx::query(
            "INSERT INTO worker_versions (environment_id, version, created_at) VALUES ($1, $2, $3) \
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
                 VALUES ($1, $2, $3, $4, $5, $6, $7) \
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
        let task_ids: Vec<String> = registration
            .tasks
            .iter()
            .map(|t| t.task_identifier.clone())
            .collect();
        sqlx::query(
            "INSERT INTO workers (id, environment_id, name, version, tasks, created_at, last_seen_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $6)",
        )
        .bind(registration.id.as_str())
        .bind(env)
        .bind(&registration.name)
        .bind(&version)
        .bind(serde_json::to_string(&task_ids).expect("strings serialize"))
        .bind(ms(now))
        .execute(&mut *tx)
        .await?;
        let promoted: Vec<String> = sqlx::query_scalar(
            "UPDATE runs SET status = 'QUEUED', updated_at = $1 \
             WHERE environment_id = $2 AND status = 'PENDING_VERSION' AND task_identifier = ANY($3) \
             AND (lock_to_version IS NULL OR lock_to_version = $4) RETURNING id",
        )
        .bind(ms(now))
        .bind(env)
        .bind(&task_ids)
        .bind(&version)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Registered {
            version,
            promoted: promoted.into_iter().map(RunId::from_trusted).collect(),
        })
    }

    async fn worker_get(&self, id: &WorkerId) -> Result<Option<WorkerRecord>> {
        let row: Option<(String, String, String, String, i64)> = sqlx::query_as(
            "SELECT environment_id, name, version, tasks, created_at FROM workers WHERE id = $1",
        )
        .bind(id.as_str())
        .fetch_optional(&self.pool)
        .await?;
        let Some((environment_id, name, version, tasks, created_at)) = row else {
            return Ok(None);
        };
        let served = rows::task_list(&tasks)?;
        let rows = sqlx::query(
            "SELECT task_identifier, queue, retry, max_duration_secs, machine FROM worker_tasks \
             WHERE environment_id = $1 AND version = $2 AND task_identifier = ANY($3) \
             ORDER BY task_identifier COLLATE \"C\"",
        )
        .bind(&environment_id)
        .bind(&version)
        .bind(&served)
        .fetch_all(&self.pool)
        .await?;
        let tasks = rows
            .iter()
            .map(task_config_from_row)
            .collect::<Result<Vec<_>>>()?;
        Ok(Some(WorkerRecord {
            id: id.clone(),
            environment_id: EnvironmentId::from_trusted(environment_id),
            name,
            version,
            tasks,
            created_at: rows::time(created_at)?,
        }))
    }

    async fn task_served(
        &self,
        environment: &EnvironmentId,
        task: &str,
        version: Option<&str>,
    ) -> Result<bool> {
        statements::postgres::task_served(&self.pool, environment, task, version).await
    }

    async fn task_queue(
        &self,
        environment: &EnvironmentId,
        task: &str,
        version: Option<&str>,
    ) -> Result<Option<String>> {
        statements::postgres::task_queue(&self.pool, environment, task, version).await
    }
}
