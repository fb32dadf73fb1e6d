//! Runs: triggering, reading, listing and the management API's changes ([`RunStore`]),
//! written once for both backends.
//!
//! Reads go to [`Backend::reader`]; each change of one run is a single conditional
//! `UPDATE … WHERE <expected state>` on [`Backend::writer`], atomic on both engines, so of
//! two racing actors exactly one wins. Triggers are the backend's own
//! ([`Backend::trigger`], [`Backend::trigger_many`]): they go through its group-commit
//! writer (`group.rs`) and, on PostgreSQL, the idempotency race.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use runnel_core::list::RunListQuery;
use runnel_core::run::{AttemptStatus, Packet, Run};
use runnel_core::state::{self, Charge};
use runnel_core::{AttemptId, EnvironmentId, RunId, RunStatus};

use crate::backend::Backend;
use crate::detach::detached;
use crate::list::run_list_sql;
use crate::rows::{ms, opt_time, run_from_row, run_status, Columns, RUN_COLUMNS};
use crate::sql::{attempt_status, attempt_statuses, status, statuses, Dialect, Params};
use crate::{CancelOutcome, Result, RunStore, TriggerOutcome};

#[async_trait]
impl<B: Backend> RunStore for B {
    async fn run_trigger(&self, run: &Run, now: DateTime<Utc>) -> Result<TriggerOutcome> {
        self.trigger(run, now).await
    }

    async fn run_trigger_many(
        &self,
        runs: &[Run],
        now: DateTime<Utc>,
    ) -> Result<Vec<TriggerOutcome>> {
        self.trigger_many(runs, now).await
    }

    async fn run_get(&self, environment: &EnvironmentId, id: &RunId) -> Result<Option<Run>> {
        let mut conn = self.reader().await?;
        let sql = format!("SELECT {RUN_COLUMNS} FROM runs WHERE id = $1 AND environment_id = $2");
        let row = Params::<B::D>::new()
            .with(id.as_str())
            .with(environment.as_str())
            .fetch_optional(&mut conn, &sql)
            .await?;
        row.as_ref().map(run_from_row).transpose()
    }

    async fn run_get_any(&self, id: &RunId) -> Result<Option<Run>> {
        let mut conn = self.reader().await?;
        let sql = format!("SELECT {RUN_COLUMNS} FROM runs WHERE id = $1");
        let row = Params::<B::D>::new()
            .with(id.as_str())
            .fetch_optional(&mut conn, &sql)
            .await?;
        row.as_ref().map(run_from_row).transpose()
    }

    /// The direct children of `parent`, oldest first (ties by id).
    async fn run_children(&self, parent: &RunId) -> Result<Vec<Run>> {
        let mut conn = self.reader().await?;
        let sql = format!(
            "SELECT {RUN_COLUMNS} FROM runs WHERE parent_run_id = $1 ORDER BY created_at, id{}",
            B::D::COLLATE_BYTES
        );
        let rows = Params::<B::D>::new()
            .with(parent.as_str())
            .fetch_all(&mut conn, &sql)
            .await?;
        rows.iter().map(run_from_row).collect()
    }

    /// Moves `id` from `from` to `to` if it is still in `from`: one conditional
    /// `UPDATE`, so of two racing actors exactly one wins.
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
        let mut conn = self.writer().await?;
        let done = Params::<B::D>::new()
            .with(to.as_str())
            .with(ms(now))
            .with(to.is_final().then_some(ms(now)))
            .with(id.as_str())
            .with(from.as_str())
            .execute(
                &mut conn,
                "UPDATE runs SET status = $1, updated_at = $2, completed_at = COALESCE($3, completed_at) \
                 WHERE id = $4 AND status = $5",
            )
            .await?;
        Ok(done == 1)
    }

    async fn run_list(&self, query: &RunListQuery) -> Result<Vec<Run>> {
        let mut conn = self.reader().await?;
        let mut p = Params::<B::D>::new();
        let sql = run_list_sql(query, &mut p);
        let rows = p.fetch_all(&mut conn, &sql).await?;
        rows.iter().map(run_from_row).collect()
    }

    /// The runs below `parent` (children, their children, …) that have not ended,
    /// shallowest first.
    async fn run_descendants_live(
        &self,
        environment: &EnvironmentId,
        parent: &RunId,
    ) -> Result<Vec<RunId>> {
        let mut conn = self.reader().await?;
        let finals: Vec<RunStatus> = RunStatus::ALL
            .into_iter()
            .filter(|s| s.is_final())
            .collect();
        // UNION (not UNION ALL) also ends the walk should parent links ever form a cycle.
        // The walk carries the columns the answer filters and sorts by, so nothing joins
        // `runs` again: with a join, SQLite's planner drove it from the environment's
        // index and read every run of the environment at each cancel.
        let sql = format!(
            "WITH RECURSIVE tree(id, environment_id, status, depth, created_at) AS ( \
               SELECT id, environment_id, status, depth, created_at FROM runs \
               WHERE parent_run_id = $1 \
               UNION \
               SELECT r.id, r.environment_id, r.status, r.depth, r.created_at \
               FROM runs r JOIN tree t ON r.parent_run_id = t.id) \
             SELECT id FROM tree WHERE environment_id = $2 AND status NOT IN {} \
             ORDER BY depth, created_at, id{}",
            statuses(&finals),
            B::D::COLLATE_BYTES
        );
        let rows = Params::<B::D>::new()
            .with(parent.as_str())
            .with(environment.as_str())
            .fetch_all(&mut conn, &sql)
            .await?;
        rows.iter()
            .map(|row| Ok(RunId::from_trusted(row.text("id")?)))
            .collect()
    }

    /// Moves a DELAYED run's `delayUntil` (and what follows from it); false when the
    /// run is not DELAYED (any more).
    async fn run_reschedule(
        &self,
        environment: &EnvironmentId,
        id: &RunId,
        delay_until: DateTime<Utc>,
        expire_at: Option<DateTime<Utc>>,
        queue_ts: i64,
        now: DateTime<Utc>,
    ) -> Result<bool> {
        let mut conn = self.writer().await?;
        let sql = format!(
            "UPDATE runs SET delay_until = $1, expire_at = $2, queue_ts = $3, updated_at = $4 \
             WHERE id = $5 AND environment_id = $6 AND status = {}",
            status(RunStatus::Delayed)
        );
        let done = Params::<B::D>::new()
            .with(ms(delay_until))
            .with(expire_at.map(ms))
            .with(queue_ts)
            .with(ms(now))
            .with(id.as_str())
            .with(environment.as_str())
            .execute(&mut conn, &sql)
            .await?;
        Ok(done == 1)
    }

    /// Compare-and-swap of a run's tags: false when they are no longer `expected`.
    async fn run_tags_replace(
        &self,
        environment: &EnvironmentId,
        id: &RunId,
        expected: &[String],
        tags: &[String],
        now: DateTime<Utc>,
    ) -> Result<bool> {
        let text = |t: &[String]| serde_json::to_string(t).expect("a list of strings serializes");
        let mut conn = self.writer().await?;
        let done = Params::<B::D>::new()
            .with(text(tags))
            .with(ms(now))
            .with(id.as_str())
            .with(environment.as_str())
            .with(text(expected))
            .execute(
                &mut conn,
                "UPDATE runs SET tags = $1, updated_at = $2 \
                 WHERE id = $3 AND environment_id = $4 AND tags = $5",
            )
            .await?;
        Ok(done == 1)
    }

    /// Compare-and-swap of a run's metadata: false when it is no longer `expected`.
    async fn run_metadata_replace(
        &self,
        environment: &EnvironmentId,
        id: &RunId,
        expected: Option<&Packet>,
        metadata: &Packet,
        now: DateTime<Utc>,
    ) -> Result<bool> {
        let mut conn = self.writer().await?;
        let done = Params::<B::D>::new()
            .with(metadata.data.as_deref())
            .with(metadata.data_type.as_str())
            .with(ms(now))
            .with(id.as_str())
            .with(environment.as_str())
            .with(expected.and_then(|m| m.data.as_deref()))
            .with(expected.map(|m| m.data_type.as_str()))
            .execute(
                &mut conn,
                "UPDATE runs SET metadata = $1, metadata_type = $2, updated_at = $3 \
                 WHERE id = $4 AND environment_id = $5 \
                 AND metadata IS NOT DISTINCT FROM $6 AND metadata_type IS NOT DISTINCT FROM $7",
            )
            .await?;
        Ok(done == 1)
    }

    /// Releases the key from every run of `task` holding it (the user's own key too, so
    /// retrieve no longer shows a key the run does not hold); how many were released.
    async fn idempotency_key_reset(
        &self,
        environment: &EnvironmentId,
        task: &str,
        key: &str,
        now: DateTime<Utc>,
    ) -> Result<u64> {
        let mut conn = self.writer().await?;
        let released = Params::<B::D>::new()
            .with(ms(now))
            .with(environment.as_str())
            .with(task)
            .with(key)
            .execute(
                &mut conn,
                "UPDATE runs SET idempotency_key = NULL, idempotency_key_user = NULL, \
                 idempotency_key_expires_at = NULL, updated_at = $1 \
                 WHERE environment_id = $2 AND task_identifier = $3 AND idempotency_key = $4",
            )
            .await?;
        Ok(released)
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
            let mut tx = store.begin().await?;
            // The row lock holds a settlement of the same run off until the cancel commits
            // (SQLite's one writer already does).
            let sql = format!(
                "SELECT status, current_attempt_id FROM runs WHERE id = $1 AND environment_id = $2{}",
                B::D::FOR_UPDATE
            );
            let row = Params::<B::D>::new()
                .with(id.as_str())
                .with(environment.as_str())
                .fetch_optional(&mut tx, &sql)
                .await?;
            let Some(row) = row else {
                return Ok(CancelOutcome::NotFound);
            };
            let current = run_status(&row.text("status")?)?;
            if current.is_final() {
                return Ok(CancelOutcome::AlreadyFinal(current));
            }
            let attempt = row.opt_text("current_attempt_id")?;
            let started_at = match &attempt {
                Some(attempt) => Params::<B::D>::new()
                    .with(attempt.as_str())
                    .fetch_optional(&mut tx, "SELECT started_at FROM attempts WHERE id = $1")
                    .await?
                    .map(|row| row.opt_int("started_at"))
                    .transpose()?
                    .flatten(),
                None => None,
            };
            let Charge {
                duration_ms,
                cost_in_cents,
            } = state::charge(opt_time(started_at)?, now, cents_per_ms);
            let sql = format!(
                "UPDATE runs SET status = {}, completed_at = $1, updated_at = $1, error = $2, \
                 usage_duration_ms = usage_duration_ms + $3, cost_in_cents = cost_in_cents + $4, \
                 lease_expires_at = NULL, timeout_at = NULL, next_attempt_at = NULL, current_attempt_id = NULL \
                 WHERE id = $5 AND status = $6",
                status(RunStatus::Canceled)
            );
            Params::<B::D>::new()
                .with(ms(now))
                .with(state::canceled_error().to_string())
                .with(duration_ms)
                .with(cost_in_cents)
                .with(id.as_str())
                .with(current.as_str())
                .execute(&mut tx, &sql)
                .await?;
            if let Some(attempt) = &attempt {
                let sql = format!(
                    "UPDATE attempts SET status = {}, completed_at = $1, updated_at = $1, duration_ms = $2, \
                     error = $3 WHERE id = $4 AND status IN {}",
                    attempt_status(AttemptStatus::Canceled),
                    attempt_statuses(&[AttemptStatus::Pending, AttemptStatus::Executing])
                );
                Params::<B::D>::new()
                    .with(ms(now))
                    .with(duration_ms)
                    .with(serde_json::json!({"message": "Run was canceled"}).to_string())
                    .with(attempt.as_str())
                    .execute(&mut tx, &sql)
                    .await?;
            }
            tx.commit().await?;
            Ok(CancelOutcome::Canceled {
                attempt: attempt.map(AttemptId::from_trusted),
            })
        })
        .await
    }
}
