//! A run's attempts as workers hold them ([`AttemptStore`]): dequeue, start, heartbeat,
//! settlement, written once for both backends.
//!
//! - **Dequeue** reads the environment's gated queues, picks candidates, counts the
//!   held runs of the limited queues among them, admits what the limits allow
//!   ([`admit`]) and leases it, in one write transaction (the flow is drawn in
//!   `queues.rs`). Picking is the backend's ([`Backend::dequeue_candidates`]): SQLite's
//!   one writer keeps concurrent dequeues apart by itself, PostgreSQL locks what it
//!   picks `FOR UPDATE SKIP LOCKED` and first locks the limited queues it leases from
//!   ([`Backend::dequeue_lock_queues`]).
//! - **Statements and batches that lock several runs and wait** (`attempt_start`,
//!   `attempt_heartbeat`, `attempt_settle`) lock them in run id order
//!   ([`Dialect::COLLATE_BYTES`], the byte order Rust sorts strings in). A worker's
//!   heartbeat or completions and the rescuer's batch over the same runs then queue
//!   behind each other; locked in the order they arrived, they deadlock (PostgreSQL
//!   aborts one of them). On SQLite the locks are empty: its one writer serializes them.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use runnel_core::run::{Attempt, AttemptStatus, Run};
use runnel_core::{AttemptId, EnvironmentId, RunId, RunStatus, WorkerId};

use crate::admission::{admit, DequeueGate, Gates, Held, ADMIT_ROUNDS};
use crate::backend::Backend;
use crate::detach::detached;
use crate::rows::{
    self, attempt_from_row, ms, run_from_row, Columns, ATTEMPT_COLUMNS, NO_MAX_DURATION,
    RUN_COLUMNS,
};
use crate::sql::{attempt_status, status, statuses, Conn, Dialect, Params, TableColumn};
use crate::{AttemptSettlement, AttemptStore, Claim, Leased, Result, WorkerRecord};

/// The statuses of a run a worker holds.
const HELD: [RunStatus; 2] = [RunStatus::Dequeued, RunStatus::Executing];

/// The statuses of a run whose attempt a worker holds: the held ones, and waiting on
/// waitpoints (the attempt's process stays alive and heartbeats). A waiting run holds no
/// slot of its queue's limit.
const HOLDING: [RunStatus; 3] = [
    RunStatus::Dequeued,
    RunStatus::Executing,
    RunStatus::WaitingToResume,
];

/// How many settlements one statement applies: 17 values each, within SQLite's default
/// limit of 32,766 bind parameters (PostgreSQL binds one array per column). A complete
/// request holds at most `MAX_BATCH` (10,000) completions.
const SETTLE_CHUNK: usize = 1000;

/// How many runs one lease statement writes: 5 values each, well within both databases'
/// bind-parameter limits. A dequeue batch (at most `MAX_DEQUEUE_BATCH`) is one chunk.
const LEASE_CHUNK: usize = 1000;

#[async_trait]
impl<B: Backend> AttemptStore for B {
    async fn attempt_list(&self, run: &RunId) -> Result<Vec<Attempt>> {
        let mut conn = self.reader().await?;
        let sql =
            format!("SELECT {ATTEMPT_COLUMNS} FROM attempts WHERE run_id = $1 ORDER BY number");
        let rows = Params::<B::D>::new()
            .with(run.as_str())
            .fetch_all(&mut conn, &sql)
            .await?;
        rows.iter().map(attempt_from_row).collect()
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
        // Idle workers are woken together and mostly find nothing: with one writer, look
        // on a reader first, so they do not queue for the writer connection.
        if B::ONE_WRITER && !queued_for::<B::D>(&mut *self.reader().await?, worker).await? {
            return Ok(Vec::new());
        }
        let (store, worker) = (self.clone(), worker.clone());
        detached(async move {
            let mut tx = store.begin().await?;
            let leased = dequeue(&store, &mut tx, &worker, limit, lease_until, now).await?;
            if leased.is_empty() {
                // Nothing written: the transaction rolls back as it drops, letting go of
                // whatever it locked.
                return Ok(leased);
            }
            tx.commit().await?;
            Ok(leased)
        })
        .await
    }

    async fn attempt_start_runs(
        &self,
        worker: &WorkerId,
        attempt_ids: &[AttemptId],
        lease_until: DateTime<Utc>,
        timeout_grace_ms: i64,
        run_fee_cents: f64,
        now: DateTime<Utc>,
    ) -> Result<Vec<(AttemptId, RunId)>> {
        if attempt_ids.is_empty() {
            return Ok(Vec::new());
        }
        let (store, worker, attempt_ids) = (self.clone(), worker.clone(), attempt_ids.to_vec());
        detached(async move {
            let mut tx = store.begin().await?;
            let mut p = Params::<B::D>::new();
            let (at, fee, lease) = (
                p.bind(ms(now)),
                p.bind(run_fee_cents),
                p.bind(ms(lease_until)),
            );
            let (no_max, grace) = (p.bind(NO_MAX_DURATION), p.bind(timeout_grace_ms));
            let ids = p.list(attempt_ids.iter().map(AttemptId::as_str));
            let holder = p.bind(worker.as_str());
            let dequeued = status(RunStatus::Dequeued);
            // Locks its runs in id order (see the module doc).
            let sql = format!(
                "WITH held AS MATERIALIZED ( \
                   SELECT id FROM runs WHERE current_attempt_id {ids} AND worker_id = {holder} \
                   AND status = {dequeued} ORDER BY id{}{}) \
                 UPDATE runs SET status = {}, started_at = COALESCE(started_at, {at}), \
                 base_cost_in_cents = CASE WHEN started_at IS NULL THEN {fee} ELSE base_cost_in_cents END, \
                 lease_expires_at = {lease}, \
                 timeout_at = CASE WHEN max_duration_secs IS NULL OR max_duration_secs >= {no_max} THEN NULL \
                              ELSE {at} + max_duration_secs * 1000 + {grace} END, \
                 updated_at = {at} \
                 WHERE id IN (SELECT id FROM held) \
                 AND current_attempt_id {ids} AND worker_id = {holder} AND status = {dequeued} \
                 RETURNING current_attempt_id, id",
                B::D::COLLATE_BYTES,
                B::D::FOR_UPDATE,
                status(RunStatus::Executing),
            );
            let rows = p.fetch_all(&mut tx, &sql).await?;
            let mut runs = rows
                .iter()
                .map(|row| Ok((row.text("current_attempt_id")?, row.text("id")?)))
                .collect::<sqlx::Result<HashMap<String, String>>>()?;
            let mut started: HashSet<String> = runs.keys().cloned().collect();
            if !started.is_empty() {
                let mut p = Params::<B::D>::new();
                let at = p.bind(ms(now));
                let sql = format!(
                    "UPDATE attempts SET status = {}, started_at = {at}, updated_at = {at} \
                     WHERE id {} AND status = {}",
                    attempt_status(AttemptStatus::Executing),
                    p.list(started.iter().map(String::as_str)),
                    attempt_status(AttemptStatus::Pending),
                );
                p.execute(&mut tx, &sql).await?;
            }
            tx.commit().await?;
            Ok(in_order(attempt_ids, &mut started)
                .into_iter()
                .filter_map(|attempt| {
                    let run = RunId::from_trusted(runs.remove(attempt.as_str())?);
                    Some((attempt, run))
                })
                .collect())
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
        let mut conn = self.writer().await?;
        Params::<B::D>::new()
            .with(ms(now))
            .with(worker.as_str())
            .execute(
                &mut conn,
                "UPDATE workers SET last_seen_at = $1 WHERE id = $2",
            )
            .await?;
        if attempt_ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut p = Params::<B::D>::new();
        let (lease, holder) = (p.bind(ms(lease_until)), p.bind(worker.as_str()));
        let ids = p.list(attempt_ids.iter().map(AttemptId::as_str));
        let held = statuses(&HOLDING);
        // Locks its runs in id order (see the module doc).
        let sql = format!(
            "WITH held AS MATERIALIZED ( \
               SELECT id FROM runs WHERE worker_id = {holder} AND status IN {held} \
               AND current_attempt_id {ids} ORDER BY id{}{}) \
             UPDATE runs SET lease_expires_at = {lease} WHERE id IN (SELECT id FROM held) \
             AND worker_id = {holder} AND status IN {held} AND current_attempt_id {ids} \
             RETURNING current_attempt_id",
            B::D::COLLATE_BYTES,
            B::D::FOR_UPDATE,
        );
        let rows = p.fetch_all(&mut conn, &sql).await?;
        let mut extended = rows
            .iter()
            .map(|row| row.text("current_attempt_id"))
            .collect::<sqlx::Result<HashSet<String>>>()?;
        Ok(in_order(attempt_ids.to_vec(), &mut extended))
    }

    async fn attempts_held(&self, attempt_ids: &[AttemptId]) -> Result<Vec<Leased>> {
        if attempt_ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut conn = self.reader().await?;
        let mut p = Params::<B::D>::new();
        let sql = format!(
            "SELECT {RUN_COLUMNS} FROM runs WHERE current_attempt_id {}",
            p.list(attempt_ids.iter().map(AttemptId::as_str))
        );
        let rows = p.fetch_all(&mut conn, &sql).await?;
        let runs = rows.iter().map(run_from_row).collect::<Result<Vec<_>>>()?;
        let attempts = attempts_in::<B::D>(&mut conn, attempt_ids).await?;
        Ok(rows::pair_leased(runs, attempts))
    }

    async fn attempt_settle(&self, settlements: &[AttemptSettlement]) -> Result<Vec<bool>> {
        if settlements.is_empty() {
            return Ok(Vec::new());
        }
        let (store, settlements) = (self.clone(), settlements.to_vec());
        detached(async move {
            let mut tx = store.begin().await?;
            let applied = settle_all::<B::D>(&mut tx, &settlements).await?;
            tx.commit().await?;
            Ok(applied)
        })
        .await
    }
}

/// The attempts with these ids, in no particular order.
pub(crate) async fn attempts_in<D: Dialect>(
    conn: &mut Conn<D>,
    attempt_ids: &[AttemptId],
) -> Result<Vec<Attempt>> {
    let mut p = Params::<D>::new();
    let sql = format!(
        "SELECT {ATTEMPT_COLUMNS} FROM attempts WHERE id {}",
        p.list(attempt_ids.iter().map(AttemptId::as_str))
    );
    let rows = p.fetch_all(conn, &sql).await?;
    rows.iter().map(attempt_from_row).collect()
}

/// The ids of `asked` found in `found`, in the order asked, each once.
fn in_order(asked: Vec<AttemptId>, found: &mut HashSet<String>) -> Vec<AttemptId> {
    asked
        .into_iter()
        .filter(|id| found.remove(id.as_str()))
        .collect()
}

/// Whether any run waits for one of the tasks `worker` serves (the probe before a dequeue
/// on a backend with one writer).
async fn queued_for<D: Dialect>(conn: &mut Conn<D>, worker: &WorkerRecord) -> Result<bool> {
    let mut p = Params::<D>::new();
    let sql = format!(
        "SELECT EXISTS (SELECT 1 FROM runs WHERE environment_id = {} AND status = {} \
         AND task_identifier {}) AS queued",
        p.bind(worker.environment_id.as_str()),
        status(RunStatus::Queued),
        p.list(worker.tasks.iter().map(|t| t.task_identifier.as_str())),
    );
    Ok(p.fetch_one(conn, &sql).await?.flag("queued")?)
}

/// Picks, admits and leases up to `limit` runs for `worker` inside the transaction
/// `conn` is in.
async fn dequeue<B: Backend>(
    store: &B,
    conn: &mut Conn<B::D>,
    worker: &WorkerRecord,
    limit: u32,
    lease_until: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<Vec<Leased>> {
    let gates = gates::<B::D>(conn, &worker.environment_id).await?;
    if gates.is_empty() {
        let runs = store.dequeue_candidates(conn, worker, None, limit).await?;
        return lease::<B::D>(conn, worker, runs, lease_until, now).await;
    }
    let excluded = store.dequeue_lock_queues(conn, worker, &gates).await?;
    let gated = gates.names();
    let gate = DequeueGate {
        gated: &gated,
        excluded: &excluded,
    };
    let mut leased = Vec::new();
    for _ in 0..ADMIT_ROUNDS {
        let want = limit as usize - leased.len();
        let candidates = store
            .dequeue_candidates(
                conn,
                worker,
                Some(&gate),
                u32::try_from(want).unwrap_or(limit),
            )
            .await?;
        let counted = gates.limited_among(&candidates);
        let mut held = held_counts::<B::D>(conn, &worker.environment_id, &counted).await?;
        let (runs, dropped) = admit(candidates, &gates, &excluded, &mut held, want);
        leased.extend(lease::<B::D>(conn, worker, runs, lease_until, now).await?);
        if !dropped || leased.len() >= limit as usize {
            break;
        }
    }
    Ok(leased)
}

/// The gated (paused or limited) queues of an environment.
async fn gates<D: Dialect>(conn: &mut Conn<D>, environment: &EnvironmentId) -> Result<Gates> {
    // Spelled as the `queues_gated` partial index is.
    let sql = format!(
        "SELECT name, paused, COALESCE(concurrency_limit_override, concurrency_limit) AS effective_limit \
         FROM queues WHERE environment_id = $1 AND (paused = {} OR concurrency_limit IS NOT NULL \
         OR concurrency_limit_override IS NOT NULL)",
        D::TRUE
    );
    let rows = Params::<D>::new()
        .with(environment.as_str())
        .fetch_all(conn, &sql)
        .await?;
    let rows = rows
        .iter()
        .map(|row| {
            Ok((
                row.text("name")?,
                row.flag("paused")?,
                row.opt_int("effective_limit")?,
            ))
        })
        .collect::<sqlx::Result<Vec<_>>>()?;
    Ok(Gates::from_rows(rows))
}

/// Held (DEQUEUED or EXECUTING) runs of the `queues` per (queue, concurrency key).
async fn held_counts<D: Dialect>(
    conn: &mut Conn<D>,
    environment: &EnvironmentId,
    queues: &[String],
) -> Result<Held> {
    if queues.is_empty() {
        return Ok(Held::new());
    }
    let mut p = Params::<D>::new();
    let sql = format!(
        "SELECT queue, concurrency_key, count(*) AS held FROM runs WHERE environment_id = {} \
         AND status IN {} AND queue {} GROUP BY queue, concurrency_key",
        p.bind(environment.as_str()),
        statuses(&HELD),
        p.list(queues.iter().map(String::as_str)),
    );
    let rows = p.fetch_all(conn, &sql).await?;
    rows.iter()
        .map(|row| {
            Ok((
                (row.text("queue")?, row.opt_text("concurrency_key")?),
                row.int("held")?,
            ))
        })
        .collect()
}

/// Leases `runs` (picked in this transaction) to `worker`: each moves to `Dequeued` with
/// a new `Pending` attempt ([`rows::lease`]). Two statements for the whole batch,
/// whatever its size; on PostgreSQL the rows are locked already, so these only write.
async fn lease<D: Dialect>(
    conn: &mut Conn<D>,
    worker: &WorkerRecord,
    runs: Vec<Run>,
    lease_until: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<Vec<Leased>> {
    let leased: Vec<Leased> = runs
        .into_iter()
        .map(|run| rows::lease(run, worker, lease_until, now))
        .collect();
    for chunk in leased.chunks(LEASE_CHUNK) {
        let text = |value: fn(&Leased) -> Option<&str>| {
            TableColumn::Texts(chunk.iter().map(|l| value(l).map(Cow::Borrowed)).collect())
        };
        let int = |value: fn(&Leased) -> Option<i64>| {
            TableColumn::Ints(chunk.iter().map(value).collect())
        };
        let mut p = Params::<D>::new();
        let values = p.table(vec![
            text(|l| Some(l.run.id.as_str())),
            text(|l| Some(l.attempt.id.as_str())),
            int(|l| Some(i64::from(l.run.attempt_count))),
            int(|l| l.run.max_duration_secs.map(i64::from)),
            text(|l| l.run.machine.map(|m| m.as_str())),
        ]);
        let (holder, version) = (p.bind(worker.id.as_str()), p.bind(&worker.version));
        let (lease, at) = (p.bind(ms(lease_until)), p.bind(ms(now)));
        let sql = format!(
            "WITH v (id, attempt_id, attempt_count, max_duration_secs, machine) AS ({values}) \
             UPDATE runs SET status = {}, worker_id = {holder}, worker_version = {version}, \
             current_attempt_id = v.attempt_id, lease_expires_at = {lease}, expire_at = NULL, \
             attempt_count = v.attempt_count, max_duration_secs = v.max_duration_secs, \
             machine = v.machine, updated_at = {at} \
             FROM v WHERE runs.id = v.id AND runs.status = {}",
            status(RunStatus::Dequeued),
            status(RunStatus::Queued),
        );
        p.execute(conn, &sql).await?;

        let mut p = Params::<D>::new();
        let values = p.table(vec![
            text(|l| Some(l.attempt.id.as_str())),
            text(|l| Some(l.run.id.as_str())),
            int(|l| Some(i64::from(l.attempt.number))),
        ]);
        let (at, holder) = (p.bind(ms(now)), p.bind(worker.id.as_str()));
        let sql = format!(
            "WITH a (id, run_id, number) AS ({values}) \
             INSERT INTO attempts (id, run_id, number, status, created_at, updated_at, worker_id, duration_ms) \
             SELECT id, run_id, number, {}, {at}, {at}, {holder}, 0 FROM a",
            attempt_status(AttemptStatus::Pending),
        );
        p.execute(conn, &sql).await?;
    }
    Ok(leased)
}

/// Applies `settlements` inside the caller's transaction; one flag per settlement, in
/// order, saying whether it applied.
///
/// A batch whose runs are all distinct (what a worker's complete request holds) is
/// applied two statements per chunk, whatever its size ([`settle_chunk`]); one that
/// names a run twice is applied one settlement at a time, in run id order, so the second
/// settlement of a run sees what the first did.
async fn settle_all<D: Dialect>(
    conn: &mut Conn<D>,
    settlements: &[AttemptSettlement],
) -> Result<Vec<bool>> {
    let runs: HashSet<&str> = settlements.iter().map(|s| s.run_id.as_str()).collect();
    if runs.len() == settlements.len() && settlements.len() > 1 {
        let mut applied = Vec::with_capacity(settlements.len());
        for chunk in settlements.chunks(SETTLE_CHUNK) {
            applied.extend(settle_chunk::<D>(conn, chunk).await?);
        }
        return Ok(applied);
    }
    // Locks the runs in id order, whatever order the batch came in (see the module
    // doc); settlements of one run keep theirs.
    let mut order: Vec<usize> = (0..settlements.len()).collect();
    order.sort_by(|a, b| {
        settlements[*a]
            .run_id
            .as_str()
            .cmp(settlements[*b].run_id.as_str())
    });
    let mut applied = vec![false; settlements.len()];
    for i in order {
        applied[i] = settle::<D>(conn, &settlements[i]).await?;
    }
    Ok(applied)
}

/// Applies settlements of distinct runs: one `UPDATE` of their runs (each only if its
/// attempt is still current, the run held and the claim true, as [`settle`] checks),
/// locking them in id order, then one `UPDATE` of the attempts of those that applied.
async fn settle_chunk<D: Dialect>(
    conn: &mut Conn<D>,
    chunk: &[AttemptSettlement],
) -> Result<Vec<bool>> {
    let text = |value: &dyn Fn(&AttemptSettlement) -> Option<Cow<'_, str>>| {
        TableColumn::Texts(chunk.iter().map(value).collect())
    };
    let int = |value: &dyn Fn(&AttemptSettlement) -> Option<i64>| {
        TableColumn::Ints(chunk.iter().map(value).collect())
    };
    let json = |value: Option<&serde_json::Value>| value.map(|v| Cow::Owned(v.to_string()));
    // Every value is in the table, which comes first in the text: bound in order.
    let mut p = Params::<D>::sequential();
    let values = p.table(vec![
        text(&|s| Some(s.run_id.as_str().into())),
        text(&|s| Some(s.attempt_id.as_str().into())),
        text(&|s| Some(s.run_status.as_str().into())),
        text(&|s| {
            s.output
                .as_ref()
                .and_then(|o| o.data.as_deref())
                .map(Cow::Borrowed)
        }),
        text(&|s| {
            s.output
                .as_ref()
                .map(|o| Cow::Borrowed(o.data_type.as_str()))
        }),
        text(&|s| json(s.run_error.as_ref())),
        int(&|s| Some(s.duration_ms)),
        TableColumn::Reals(chunk.iter().map(|s| s.cost_in_cents).collect()),
        int(&|s| {
            Some(i64::from(
                s.spends_attempt && s.attempt_status == AttemptStatus::Failed,
            ))
        }),
        int(&|s| s.run_status.is_final().then_some(ms(s.now))),
        int(&|s| s.next_attempt_at.map(ms)),
        int(&|s| Some(ms(s.now))),
        text(&|s| match &s.claim {
            Claim::Worker(worker) => Some(worker.as_str().into()),
            _ => None,
        }),
        int(&|s| match s.claim {
            Claim::LeaseExpired(at) => Some(ms(at)),
            _ => None,
        }),
        int(&|s| match s.claim {
            Claim::TimedOut(at) => Some(ms(at)),
            _ => None,
        }),
    ]);
    let holding = statuses(&HOLDING);
    let sql = format!(
        "WITH v (id, attempt_id, status, output, output_type, error, duration_ms, cost, failed, \
                 completed_at, next_attempt_at, at, claim_worker, claim_lease, claim_timeout) \
             AS ({values}), \
         held AS MATERIALIZED ( \
           SELECT id FROM runs WHERE id IN (SELECT id FROM v) AND status IN {holding} \
           ORDER BY id{}{}) \
         UPDATE runs SET status = v.status, output = v.output, output_type = v.output_type, \
         error = v.error, usage_duration_ms = usage_duration_ms + v.duration_ms, \
         cost_in_cents = cost_in_cents + v.cost, failed_attempts = failed_attempts + v.failed, \
         completed_at = v.completed_at, next_attempt_at = v.next_attempt_at, \
         lease_expires_at = NULL, timeout_at = NULL, current_attempt_id = NULL, updated_at = v.at \
         FROM v WHERE runs.id = v.id AND runs.id IN (SELECT id FROM held) \
         AND runs.current_attempt_id = v.attempt_id AND runs.status IN {holding} \
         AND (v.claim_worker IS NULL OR runs.worker_id = v.claim_worker) \
         AND (v.claim_lease IS NULL OR runs.lease_expires_at <= v.claim_lease) \
         AND (v.claim_timeout IS NULL OR runs.timeout_at <= v.claim_timeout) \
         RETURNING runs.id",
        D::COLLATE_BYTES,
        D::FOR_UPDATE,
    );
    let rows = p.fetch_all(conn, &sql).await?;
    let mut done = rows
        .iter()
        .map(|row| row.text("id"))
        .collect::<sqlx::Result<HashSet<String>>>()?;
    let applied: Vec<bool> = chunk
        .iter()
        .map(|s| done.contains(s.run_id.as_str()))
        .collect();
    let settled: Vec<&AttemptSettlement> = chunk
        .iter()
        .filter(|s| done.remove(s.run_id.as_str()))
        .collect();
    if settled.is_empty() {
        return Ok(applied);
    }
    let mut p = Params::<D>::sequential();
    let values = p.table(vec![
        TableColumn::Texts(
            settled
                .iter()
                .map(|s| Some(s.attempt_id.as_str().into()))
                .collect(),
        ),
        TableColumn::Texts(
            settled
                .iter()
                .map(|s| Some(s.attempt_status.as_str().into()))
                .collect(),
        ),
        TableColumn::Texts(
            settled
                .iter()
                .map(|s| json(s.attempt_error.as_ref()))
                .collect(),
        ),
        TableColumn::Ints(settled.iter().map(|s| Some(ms(s.now))).collect()),
        TableColumn::Ints(settled.iter().map(|s| Some(s.duration_ms)).collect()),
    ]);
    let sql = format!(
        "WITH a (id, status, error, at, duration_ms) AS ({values}) \
         UPDATE attempts SET status = a.status, error = a.error, completed_at = a.at, \
         updated_at = a.at, duration_ms = a.duration_ms FROM a WHERE attempts.id = a.id"
    );
    p.execute(conn, &sql).await?;
    Ok(applied)
}

/// Applies one settlement if its attempt is still the run's current one, the run is held
/// and the claim holds; returns whether it applied.
async fn settle<D: Dialect>(conn: &mut Conn<D>, s: &AttemptSettlement) -> Result<bool> {
    let mut p = Params::<D>::new();
    let claim = match &s.claim {
        Claim::Worker(worker) => format!("worker_id = {}", p.bind(worker.as_str())),
        Claim::LeaseExpired(at) => format!("lease_expires_at <= {}", p.bind(ms(*at))),
        Claim::TimedOut(at) => format!("timeout_at <= {}", p.bind(ms(*at))),
    };
    let failed = s.spends_attempt && s.attempt_status == AttemptStatus::Failed;
    let sql = format!(
        "UPDATE runs SET status = {}, output = {}, output_type = {}, error = {}, \
         usage_duration_ms = usage_duration_ms + {}, cost_in_cents = cost_in_cents + {}, \
         failed_attempts = failed_attempts + {}, completed_at = {}, next_attempt_at = {}, \
         lease_expires_at = NULL, timeout_at = NULL, current_attempt_id = NULL, updated_at = {} \
         WHERE id = {} AND current_attempt_id = {} AND status IN {} AND {claim}",
        p.bind(s.run_status.as_str()),
        p.bind(s.output.as_ref().and_then(|o| o.data.as_deref())),
        p.bind(s.output.as_ref().map(|o| o.data_type.as_str())),
        p.bind(s.run_error.as_ref().map(|e| e.to_string())),
        p.bind(s.duration_ms),
        p.bind(s.cost_in_cents),
        p.bind(i64::from(failed)),
        p.bind(s.run_status.is_final().then_some(ms(s.now))),
        p.bind(s.next_attempt_at.map(ms)),
        p.bind(ms(s.now)),
        p.bind(s.run_id.as_str()),
        p.bind(s.attempt_id.as_str()),
        statuses(&HOLDING),
    );
    let done = p.execute(conn, &sql).await? == 1;
    if done {
        Params::<D>::new()
            .with(s.attempt_status.as_str())
            .with(s.attempt_error.as_ref().map(|e| e.to_string()))
            .with(ms(s.now))
            .with(s.duration_ms)
            .with(s.attempt_id.as_str())
            .execute(
                conn,
                "UPDATE attempts SET status = $1, error = $2, completed_at = $3, updated_at = $3, \
                 duration_ms = $4 WHERE id = $5",
            )
            .await?;
    }
    Ok(done)
}
