//! What the timed services look for and move ([`SweepStore`]), written once for both
//! backends.
//!
//! Each sweep (expire, promote, requeue) is one set-based `UPDATE … RETURNING` on the
//! writer. The due rows are picked by a `MATERIALIZED` CTE with `FOR UPDATE SKIP
//! LOCKED` ([`Dialect::FOR_UPDATE`], [`Dialect::SKIP_LOCKED`]; empty on SQLite, whose one
//! writer needs no lock):
//!
//! - `SKIP LOCKED`: two PostgreSQL nodes sweeping at once split the work instead of
//!   queueing on the same rows.
//! - `MATERIALIZED`: written inline as `WHERE id IN (SELECT … LIMIT n FOR UPDATE SKIP
//!   LOCKED)`, the planner may make the pick the inner side of a nested-loop semi-join
//!   and rescan it once per candidate row, and a rescan can pick other rows, so more
//!   than `n` runs move. The CTE runs once.
//!
//! The `UPDATE` re-checks the status it expects, so a run another actor moved meanwhile
//! (a dequeue, a cancel) stays as that actor left it.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use runnel_core::{AttemptId, RunId, RunStatus};

use crate::attempts::attempts_in;
use crate::backend::Backend;
use crate::rows::{ms, pair_leased, run_from_row, Columns, RUN_COLUMNS};
use crate::sql::{status, statuses, Conn, Dialect, Params};
use crate::{Deadline, Leased, Result, SweepStore};

/// Whether a registered version serves the run's task (its locked version when set).
const SERVED: &str =
    "EXISTS (SELECT 1 FROM worker_tasks w WHERE w.environment_id = runs.environment_id \
     AND w.task_identifier = runs.task_identifier \
     AND (runs.lock_to_version IS NULL OR w.version = runs.lock_to_version))";

/// The statuses whose runs expire by their TTL.
const WAITING: [RunStatus; 2] = [RunStatus::Queued, RunStatus::PendingVersion];

/// The statuses of a run an attempt holds.
/// Runs whose attempt a worker holds (and whose lease the rescuer watches): waiting on
/// waitpoints too, since the attempt's process stays alive and heartbeats.
const HELD: [RunStatus; 3] = [
    RunStatus::Dequeued,
    RunStatus::Executing,
    RunStatus::WaitingToResume,
];

#[async_trait]
impl<B: Backend> SweepStore for B {
    async fn run_expire_due(&self, now: DateTime<Utc>, limit: u32) -> Result<Vec<RunId>> {
        // The error is the upstream TaskRunError for an expired run, spelled byte for byte
        // as SQLite's `json_object('type', 'STRING_ERROR', 'raw', …)` writes it (no spaces;
        // PostgreSQL's json_build_object would add some).
        let raw = B::D::json_quote("'Run expired because the TTL (' || ttl || ') was reached'");
        let sql = format!(
            "WITH due AS MATERIALIZED ( \
               SELECT id FROM runs WHERE status IN {waiting} \
               AND expire_at IS NOT NULL AND expire_at <= $1 \
               ORDER BY expire_at LIMIT $2{}{}) \
             UPDATE runs SET status = {}, expired_at = $1, completed_at = $1, updated_at = $1, \
             error = '{{\"type\":\"STRING_ERROR\",\"raw\":' || COALESCE({raw}, 'null') || '}}' \
             WHERE id IN (SELECT id FROM due) AND status IN {waiting} \
             RETURNING id",
            B::D::FOR_UPDATE,
            B::D::SKIP_LOCKED,
            status(RunStatus::Expired),
            waiting = statuses(&WAITING),
        );
        let mut conn = self.writer().await?;
        sweep::<B::D>(&mut conn, &sql, now, limit).await
    }

    async fn run_promote_due(&self, now: DateTime<Utc>, limit: u32) -> Result<Vec<RunId>> {
        let (delayed, pending, queued) = (
            status(RunStatus::Delayed),
            status(RunStatus::PendingVersion),
            status(RunStatus::Queued),
        );
        let lock = format!("{}{}", B::D::FOR_UPDATE, B::D::SKIP_LOCKED);
        let delayed_due = format!(
            "WITH due AS MATERIALIZED ( \
               SELECT id FROM runs WHERE status = {delayed} AND delay_until <= $1 \
               ORDER BY delay_until LIMIT $2{lock}) \
             UPDATE runs SET status = CASE WHEN {SERVED} THEN {queued} ELSE {pending} END, \
             queue_ts = delay_until - priority_ms, updated_at = $1 \
             WHERE id IN (SELECT id FROM due) AND status = {delayed} \
             RETURNING id"
        );
        let served = format!(
            "WITH due AS MATERIALIZED ( \
               SELECT id FROM runs WHERE status = {pending} AND {SERVED} \
               LIMIT $2{lock}) \
             UPDATE runs SET status = {queued}, updated_at = $1 \
             WHERE id IN (SELECT id FROM due) AND status = {pending} \
             RETURNING id"
        );
        let mut conn = self.writer().await?;
        let mut ids = sweep::<B::D>(&mut conn, &delayed_due, now, limit).await?;
        ids.extend(sweep::<B::D>(&mut conn, &served, now, limit).await?);
        Ok(ids)
    }

    async fn run_requeue_due(&self, now: DateTime<Utc>, limit: u32) -> Result<Vec<RunId>> {
        let retrying = status(RunStatus::RetryingAfterFailure);
        let sql = format!(
            "WITH due AS MATERIALIZED ( \
               SELECT id FROM runs WHERE status = {retrying} AND next_attempt_at <= $1 \
               ORDER BY next_attempt_at LIMIT $2{}{}) \
             UPDATE runs SET status = {}, queue_ts = next_attempt_at - priority_ms, \
             next_attempt_at = NULL, updated_at = $1 \
             WHERE id IN (SELECT id FROM due) AND status = {retrying} \
             RETURNING id",
            B::D::FOR_UPDATE,
            B::D::SKIP_LOCKED,
            status(RunStatus::Queued),
        );
        let mut conn = self.writer().await?;
        sweep::<B::D>(&mut conn, &sql, now, limit).await
    }

    /// The earliest deadline of `kind`: each kind is the `min` of one column over the
    /// runs in the status that waits for it.
    async fn run_next_deadline(&self, kind: Deadline) -> Result<Option<DateTime<Utc>>> {
        let sql = match kind {
            Deadline::DelayEnd => format!(
                "SELECT min(delay_until) AS t FROM runs WHERE status = {}",
                status(RunStatus::Delayed)
            ),
            Deadline::Ttl => format!(
                "SELECT min(expire_at) AS t FROM runs WHERE status IN {} AND expire_at IS NOT NULL",
                statuses(&WAITING)
            ),
            Deadline::NextAttempt => format!(
                "SELECT min(next_attempt_at) AS t FROM runs WHERE status = {}",
                status(RunStatus::RetryingAfterFailure)
            ),
            Deadline::LeaseEnd => format!(
                "SELECT min(lease_expires_at) AS t FROM runs WHERE status IN {}",
                statuses(&HELD)
            ),
            Deadline::MaxDuration => format!(
                "SELECT min(timeout_at) AS t FROM runs WHERE status = {} AND timeout_at IS NOT NULL",
                status(RunStatus::Executing)
            ),
        };
        let mut conn = self.reader().await?;
        let row = Params::<B::D>::new().fetch_one(&mut conn, &sql).await?;
        row.opt_time("t")
    }

    /// The earliest instant at which a periodic service has something to do; lease
    /// ends count only `with_leases`.
    async fn run_next_due_at(&self, with_leases: bool) -> Result<Option<DateTime<Utc>>> {
        let sql = format!(
            "SELECT min(t) AS t FROM ( \
               SELECT min(expire_at) AS t FROM runs \
               WHERE status IN {} AND expire_at IS NOT NULL \
               UNION ALL \
               SELECT min(delay_until) AS t FROM runs WHERE status = {} \
               UNION ALL \
               SELECT min(next_attempt_at) AS t FROM runs WHERE status = {} \
               UNION ALL \
               SELECT min(lease_expires_at) AS t FROM runs WHERE $1 AND status IN {} \
               UNION ALL \
               SELECT min(timeout_at) AS t FROM runs WHERE status = {} AND timeout_at IS NOT NULL \
             ) AS due",
            statuses(&WAITING),
            status(RunStatus::Delayed),
            status(RunStatus::RetryingAfterFailure),
            statuses(&HELD),
            status(RunStatus::Executing),
        );
        let mut conn = self.reader().await?;
        let row = Params::<B::D>::new()
            .with(with_leases)
            .fetch_one(&mut conn, &sql)
            .await?;
        row.opt_time("t")
    }

    /// Held runs whose lease ran out by `leases_expired_by` (none when `None`: a NULL
    /// matches no lease, only deadlines are looked at) or whose `maxDuration` deadline
    /// passed by `timed_out_by`; at most `limit`, each with its current attempt.
    async fn run_leases_due(
        &self,
        leases_expired_by: Option<DateTime<Utc>>,
        timed_out_by: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<Leased>> {
        let sql = format!(
            "SELECT {RUN_COLUMNS} FROM runs WHERE id IN ( \
               SELECT id FROM runs WHERE status IN {} AND lease_expires_at <= $1 \
               UNION \
               SELECT id FROM runs WHERE status = {} AND timeout_at IS NOT NULL AND timeout_at <= $2) \
             LIMIT $3",
            statuses(&HELD),
            status(RunStatus::Executing),
        );
        let mut conn = self.reader().await?;
        let rows = Params::<B::D>::new()
            .with(leases_expired_by.map(ms))
            .with(ms(timed_out_by))
            .with(i64::from(limit))
            .fetch_all(&mut conn, &sql)
            .await?;
        let runs = rows.iter().map(run_from_row).collect::<Result<Vec<_>>>()?;
        let ids: Vec<AttemptId> = runs
            .iter()
            .filter_map(|r| r.current_attempt_id.clone())
            .collect();
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let attempts = attempts_in::<B::D>(&mut conn, &ids).await?;
        Ok(pair_leased(runs, attempts))
    }
}

/// Runs a sweep (`$1` = now, `$2` = limit) and returns the ids it moved.
async fn sweep<D: Dialect>(
    conn: &mut Conn<D>,
    sql: &str,
    now: DateTime<Utc>,
    limit: u32,
) -> Result<Vec<RunId>> {
    let rows = Params::<D>::new()
        .with(ms(now))
        .with(i64::from(limit))
        .fetch_all(conn, sql)
        .await?;
    rows.iter()
        .map(|row| Ok(RunId::from_trusted(row.text("id")?)))
        .collect()
}
