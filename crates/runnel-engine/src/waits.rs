//! Waits: a run blocked by waitpoints (a child run, a batch's runs, a time, a token)
//! until every one is completed, then resumed (DESIGN §3; the dev CLI protocol's §4).
//!
//! - **Block.** A `triggerAndWait` child (the trigger with `resumeParentOnCompletion`),
//!   each item of a `batchTriggerAndWait` batch, `wait.for`/`wait.until` and
//!   `wait.forToken` create (or find, by idempotency key) a waitpoint and block the
//!   calling run with it: the run is `WaitingToResume` and its attempt's compute time
//!   stops. A child's waitpoint is made and blocks the parent *before* the child is
//!   inserted, so a parent never runs on past a child it did not wait for.
//! - **Complete.** A waitpoint completes once: a child's end (its output, or its error),
//!   the timer ([`crate::services::Waiter`]) for a time or a token's timeout, or a call
//!   for a token. Each completion tries to resume the runs it blocked.
//! - **Resume.** When none of a run's blockers is pending, the run executes again with a
//!   new `EXECUTING` snapshot listing the completed waitpoints: that is what the worker's
//!   runtime reads to hand each waiting call its result.
//!
//! Nothing here is lost to a crash: waitpoints, blockers and snapshots are rows, the
//! timer reads its deadlines from the database after a restart, and its passes complete
//! what the engine's own completions missed.

use chrono::{DateTime, Utc};
use runnel_core::run::Packet;
use runnel_core::tenancy::Environment;
use runnel_core::waitpoint::{
    ExecutionStatus, NewSnapshot, Snapshot, TokenListQuery, Waitpoint, WaitpointKind,
    WaitpointOutput,
};
use runnel_core::{BatchId, RunId, RunStatus, WaitpointId};
use runnel_store::{BlockOutcome, WaitpointCreated};

use crate::{Engine, Error};

/// Why a wait was refused.
#[derive(Debug, thiserror::Error)]
pub enum WaitError {
    #[error("Run {0} not found")]
    RunNotFound(RunId),
    #[error("Waitpoint {0} not found")]
    WaitpointNotFound(WaitpointId),
    /// Only an executing (or already waiting) run can wait.
    #[error("Run {run} is {status}; only an executing run can wait")]
    NotExecuting { run: RunId, status: RunStatus },
    #[error("{0}")]
    Invalid(String),
}

/// Idempotency of a wait or a token: the key as matched, the user's own, its expiry.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WaitKey {
    pub key: Option<String>,
    pub user_key: Option<String>,
    pub expires_at: Option<DateTime<Utc>>,
}

impl Engine {
    /// Blocks `run` with the existing waitpoints `ids`, then resumes it at once if they
    /// are all completed already (an idempotency key that found a completed one).
    pub(crate) async fn block(
        &self,
        environment: &Environment,
        run: &RunId,
        ids: &[WaitpointId],
    ) -> Result<(), Error> {
        let now = self.clock.now();
        let attempt = self.snapshot_attempt(run).await?;
        let snapshot = NewSnapshot::new(
            run,
            ExecutionStatus::ExecutingWithWaitpoints,
            "Run is waiting for waitpoints",
            attempt,
            now,
        );
        match self
            .store
            .run_block(&environment.id, run, ids, &snapshot, now)
            .await?
        {
            BlockOutcome::Blocked { .. } => self.runs_changed(std::iter::once(run)),
            BlockOutcome::NotFound => return Err(WaitError::RunNotFound(run.clone()).into()),
            BlockOutcome::NotBlockable(status) => {
                return Err(WaitError::NotExecuting {
                    run: run.clone(),
                    status,
                }
                .into())
            }
        }
        tracing::debug!(run = %run, waitpoints = ids.len(), "run waits");
        self.resume(run).await?;
        Ok(())
    }

    /// The attempt number `run`'s latest snapshot belongs to: the one a new snapshot
    /// of the same attempt carries.
    async fn snapshot_attempt(&self, run: &RunId) -> Result<Option<u32>, Error> {
        Ok(self
            .store
            .snapshot_latest(run)
            .await?
            .and_then(|s| s.attempt_number))
    }

    /// Resumes `run` if it waits and none of its blockers is pending: the new `EXECUTING`
    /// snapshot, listing the waitpoints it resumed past.
    pub(crate) async fn resume(&self, run: &RunId) -> Result<Option<Snapshot>, Error> {
        let now = self.clock.now();
        let attempt = self.snapshot_attempt(run).await?;
        let snapshot = NewSnapshot::new(
            run,
            ExecutionStatus::Executing,
            "Run was resumed: its waitpoints are completed",
            attempt,
            now,
        );
        let resumed = self
            .store
            .run_resume(run, &snapshot, now + self.dev_lease(), now)
            .await?;
        if let Some(snapshot) = &resumed {
            self.runs_changed(std::iter::once(run));
            tracing::debug!(run = %run, waitpoints = snapshot.completed_waitpoints.len(), "run resumed");
        }
        Ok(resumed)
    }

    /// Completes waitpoint `id` with `output` (once), and resumes the runs it unblocked.
    /// Returns whether this call completed it.
    pub(crate) async fn complete_waitpoint(
        &self,
        id: &WaitpointId,
        output: &WaitpointOutput,
    ) -> Result<bool, Error> {
        let now = self.clock.now();
        let Some(blocked) = self.store.waitpoint_complete(id, output, now).await? else {
            return Ok(false);
        };
        tracing::debug!(waitpoint = %id, blocked = blocked.len(), "waitpoint completed");
        for run in &blocked {
            self.resume(run).await?;
        }
        Ok(true)
    }

    /// What a run's end completes its `RUN` waitpoints with: its output, or its error.
    pub(crate) async fn run_outcome(&self, id: &RunId) -> Result<WaitpointOutput, Error> {
        let run = self.store.run_get_any(id).await?;
        Ok(match run {
            Some(run) if run.status == RunStatus::CompletedSuccessfully => {
                let packet = run.output.unwrap_or_else(|| Packet {
                    data: None,
                    data_type: Packet::JSON.to_owned(),
                });
                WaitpointOutput {
                    output: packet.data,
                    output_type: Some(packet.data_type),
                    is_error: false,
                }
            }
            Some(run) => WaitpointOutput::error(&run.error.unwrap_or_else(|| {
                serde_json::json!({
                    "type": "INTERNAL_ERROR",
                    "code": "TASK_RUN_SYSTEM_FAILURE",
                    "message": format!("Run ended {}", run.status),
                })
            })),
            None => WaitpointOutput::error(&serde_json::json!({
                "type": "INTERNAL_ERROR",
                "code": "TASK_RUN_SYSTEM_FAILURE",
                "message": "The child run does not exist",
            })),
        })
    }

    /// After `run` ended: completes the waitpoints its end completes (its parent's
    /// `triggerAndWait`), resuming the parent.
    pub(crate) async fn run_ended(&self, run: &RunId) -> Result<(), Error> {
        let waitpoints = self.store.waitpoints_of_run(run).await?;
        if waitpoints.is_empty() {
            return Ok(());
        }
        let output = self.run_outcome(run).await?;
        for waitpoint in &waitpoints {
            self.complete_waitpoint(waitpoint, &output).await?;
        }
        Ok(())
    }

    /// Before a child with `resumeParentOnCompletion` is inserted: its `RUN` waitpoint,
    /// blocking `parent`.
    pub(crate) async fn block_on_child(
        &self,
        environment: &Environment,
        parent: &RunId,
        child: &RunId,
    ) -> Result<WaitpointId, Error> {
        let now = self.clock.now();
        let mut waitpoint = Waitpoint::new(WaitpointKind::Run, environment.id.clone(), now);
        waitpoint.completed_by_run = Some(child.clone());
        let id = self
            .store
            .waitpoint_create(&waitpoint, now)
            .await?
            .waitpoint()
            .id
            .clone();
        self.block(environment, parent, std::slice::from_ref(&id))
            .await?;
        Ok(id)
    }

    /// When a trigger with `resumeParentOnCompletion` found its idempotency key taken:
    /// the parent waits for the run holding it instead (completed at once if it ended).
    pub(crate) async fn wait_for_cached(
        &self,
        waitpoint: &WaitpointId,
        run: &RunId,
    ) -> Result<(), Error> {
        self.store.waitpoint_set_run(waitpoint, run).await?;
        let ended = self
            .store
            .run_get_any(run)
            .await?
            .is_some_and(|r| r.status.is_final());
        if ended {
            self.run_ended(run).await?;
        }
        Ok(())
    }

    /// A new `batchTriggerAndWait` batch: one `RUN` waitpoint per item (pointed at its
    /// run when the item arrives), all blocking `parent`.
    pub(crate) async fn block_on_batch(
        &self,
        environment: &Environment,
        parent: &RunId,
        batch: &BatchId,
        run_count: u32,
    ) -> Result<(), Error> {
        let now = self.clock.now();
        let mut ids = Vec::with_capacity(run_count as usize);
        for index in 0..run_count {
            let mut waitpoint = Waitpoint::new(WaitpointKind::Run, environment.id.clone(), now);
            waitpoint.batch = Some((batch.clone(), index));
            ids.push(
                self.store
                    .waitpoint_create(&waitpoint, now)
                    .await?
                    .waitpoint()
                    .id
                    .clone(),
            );
        }
        self.block(environment, parent, &ids).await
    }

    /// An item of a waited-for batch arrived: its waitpoint now waits for `run` (or, when
    /// the item was refused, completes with `error`).
    pub(crate) async fn batch_item_arrived(
        &self,
        batch: &BatchId,
        index: u32,
        run: Result<&RunId, &str>,
    ) -> Result<(), Error> {
        let Some(waitpoint) = self.store.waitpoint_of_batch_item(batch, index).await? else {
            return Ok(());
        };
        match run {
            Ok(run) => self.wait_for_cached(&waitpoint, run).await,
            Err(error) => {
                let output = WaitpointOutput::error(&serde_json::json!({
                    "type": "STRING_ERROR",
                    "raw": error,
                }));
                self.complete_waitpoint(&waitpoint, &output).await?;
                Ok(())
            }
        }
    }

    /// `wait.for` / `wait.until`: blocks executing `run` until `until`.
    pub async fn wait_until(
        &self,
        environment: &Environment,
        run: &RunId,
        until: DateTime<Utc>,
        key: WaitKey,
    ) -> Result<Waitpoint, Error> {
        let now = self.clock.now();
        let mut waitpoint = Waitpoint::new(WaitpointKind::Datetime, environment.id.clone(), now);
        waitpoint.completes_at = Some(until);
        waitpoint.idempotency_key = key.key;
        waitpoint.idempotency_key_user = key.user_key;
        waitpoint.idempotency_key_expires_at = key.expires_at;
        let waitpoint = match self.store.waitpoint_create(&waitpoint, now).await? {
            WaitpointCreated::Created(w) | WaitpointCreated::Cached(w) => w,
        };
        self.block(environment, run, std::slice::from_ref(&waitpoint.id))
            .await?;
        // A date already past is completed here, and the run resumed, before the answer;
        // the waiter is woken only for a future date (woken for a past one, it could
        // complete the waitpoint first and leave the run resuming after the answer).
        if until <= now {
            self.complete_waitpoint(&waitpoint.id, &WaitpointOutput::none())
                .await?;
        } else {
            self.wakes.waiter.notify_one();
        }
        Ok(waitpoint)
    }

    /// `wait.createToken`: a new token (or the live one holding the idempotency key;
    /// `true` when cached).
    pub async fn token_create(
        &self,
        environment: &Environment,
        timeout_at: Option<DateTime<Utc>>,
        tags: Vec<String>,
        key: WaitKey,
    ) -> Result<(Waitpoint, bool), Error> {
        let now = self.clock.now();
        let mut waitpoint = Waitpoint::new(WaitpointKind::Manual, environment.id.clone(), now);
        waitpoint.timeout_at = timeout_at;
        waitpoint.tags = tags;
        waitpoint.idempotency_key = key.key;
        waitpoint.idempotency_key_user = key.user_key;
        waitpoint.idempotency_key_expires_at = key.expires_at;
        waitpoint.callback_secret = Some(crate::waits::callback_secret());
        let created = self.store.waitpoint_create(&waitpoint, now).await?;
        if timeout_at.is_some() {
            self.wakes.waiter.notify_one();
        }
        Ok(match created {
            WaitpointCreated::Created(w) => (w, false),
            WaitpointCreated::Cached(w) => (w, true),
        })
    }

    /// `wait.forToken`: blocks executing `run` with token `id` of its environment.
    pub async fn token_wait(
        &self,
        environment: &Environment,
        run: &RunId,
        id: &WaitpointId,
    ) -> Result<(), Error> {
        let token = self
            .store
            .waitpoint_get(&environment.id, id)
            .await?
            .filter(|w| w.kind == WaitpointKind::Manual)
            .ok_or_else(|| WaitError::WaitpointNotFound(id.clone()))?;
        self.block(environment, run, std::slice::from_ref(&token.id))
            .await
    }

    /// A token of `environment` (any waitpoint kind answers only as a token when it is
    /// one).
    pub async fn token_get(
        &self,
        environment: &Environment,
        id: &WaitpointId,
    ) -> Result<Option<Waitpoint>, Error> {
        Ok(self
            .store
            .waitpoint_get(&environment.id, id)
            .await?
            .filter(|w| w.kind == WaitpointKind::Manual))
    }

    /// Completes token `id` of `environment` with `output` (a no-op when it is already
    /// completed); `false` when there is no such token.
    pub async fn token_complete(
        &self,
        environment: &Environment,
        id: &WaitpointId,
        output: &WaitpointOutput,
    ) -> Result<bool, Error> {
        if self.token_get(environment, id).await?.is_none() {
            return Ok(false);
        }
        self.complete_waitpoint(id, output).await?;
        Ok(true)
    }

    /// The token `id` when `secret` is its callback URL's secret (any environment: the
    /// URL is the credential).
    pub async fn token_by_callback(
        &self,
        id: &WaitpointId,
        secret: &str,
    ) -> Result<Option<Waitpoint>, Error> {
        let found = self.store.waitpoints_get(std::slice::from_ref(id)).await?;
        Ok(found.into_iter().find(|w| {
            w.kind == WaitpointKind::Manual
                && w.callback_secret
                    .as_deref()
                    .is_some_and(|s| constant_time_eq(s.as_bytes(), secret.as_bytes()))
        }))
    }

    /// Tokens of `environment` matching `query`, in the store's order for it (newest
    /// first; oldest first for a `before` page).
    pub async fn token_list(
        &self,
        environment: &Environment,
        query: &TokenListQuery,
    ) -> Result<Vec<Waitpoint>, Error> {
        Ok(self.store.token_list(&environment.id, query).await?)
    }

    /// Completes a token found by its callback URL.
    pub async fn token_complete_by_callback(
        &self,
        token: &Waitpoint,
        output: &WaitpointOutput,
    ) -> Result<(), Error> {
        self.complete_waitpoint(&token.id, output).await?;
        Ok(())
    }
}

/// A fresh secret for a token's callback URL: 32 random alphanumerics.
pub(crate) fn callback_secret() -> String {
    use rand::distr::{Alphanumeric, SampleString};
    Alphanumeric.sample_string(&mut rand::rng(), 32)
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
