//! The run side of the `trigger.dev dev` CLI protocol (reference
//! `trigger-dev-cli-protocol.md` §2.2, §4): the CLI is a worker whose attempts are named
//! by execution snapshots. Dequeue leases runs as any worker's dequeue does and appends a
//! `PENDING_EXECUTING` snapshot; starting an attempt must name the run's latest snapshot
//! (409 otherwise) and appends `EXECUTING`; a completion settles the attempt through the
//! same state machine as every worker's, with the task process's own retry decision
//! (`RetryHint`), and appends `FINISHED` (or `QUEUED` for a retry through the queue).
//! Waits append their snapshots in [`crate::waits`].
//!
//! The CLI heartbeats every 30 s by default, during waits too, so its leases are longer
//! than a Runnel worker's ([`DEV_LEASE_SECS`]).

use std::sync::Arc;

use chrono::Duration;
use runnel_core::run::{Attempt, Packet, Run};
use runnel_core::state::{self, RetryHint};
use runnel_core::tenancy::Environment;
use runnel_core::waitpoint::{ExecutionStatus, NewSnapshot, Snapshot, Waitpoint};
use runnel_core::worker::{AttemptOutcome, TaskFailure};
use runnel_core::{RunId, RunStatus, SnapshotId, WorkerId};
use runnel_store::{Leased, WorkerRecord};

use crate::workers::attempt_settlement;
use crate::{Engine, Error};

/// How long a dev CLI's hold on an attempt lasts without a heartbeat.
pub const DEV_LEASE_SECS: i64 = 120;

/// Most runs one dev dequeue hands out (upstream's `DEV_DEQUEUE_MAX_RUNS_PER_PULL`).
pub const DEV_DEQUEUE_MAX: u32 = 10;

/// Why a dev protocol call was refused.
#[derive(Debug, thiserror::Error)]
pub enum DevError {
    #[error("Run not found")]
    RunNotFound,
    /// The snapshot named is not the run's latest (409: the CLI retries).
    #[error("Snapshot changed: {0} is not the run's latest snapshot")]
    SnapshotChanged(SnapshotId),
    #[error("{0}")]
    Invalid(String),
}

/// A dequeued run with its `PENDING_EXECUTING` snapshot.
#[derive(Debug, Clone)]
pub struct DevDequeued {
    pub leased: Leased,
    pub snapshot: Snapshot,
}

/// A started attempt.
#[derive(Debug, Clone)]
pub struct DevStarted {
    pub run: Run,
    pub attempt: Attempt,
    pub snapshot: Snapshot,
    pub worker: Arc<WorkerRecord>,
}

/// An attempt's end as the task process reports it.
#[derive(Debug, Clone)]
pub struct DevCompletion {
    /// `Ok(output)` (the serialized output and its type) or `Err` (the failure as Runnel
    /// classifies it, and the `TaskRunError` as sent, stored as the run's error).
    pub result: Result<Packet, (TaskFailure, serde_json::Value)>,
    pub retry: RetryHint,
}

/// What a completion did (`CompleteRunAttemptResult.attemptStatus`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptStatusAfter {
    RunFinished,
    RetryQueued,
}

/// The answer to a completion.
#[derive(Debug, Clone)]
pub struct DevCompleted {
    pub attempt_status: AttemptStatusAfter,
    pub snapshot: Snapshot,
    pub run: Run,
}

/// A run's latest snapshot with the waitpoints it lists.
#[derive(Debug, Clone)]
pub struct DevLatest {
    pub run: Run,
    pub snapshot: Snapshot,
    pub completed: Vec<Waitpoint>,
}

impl Engine {
    pub(crate) fn dev_lease(&self) -> Duration {
        Duration::seconds(DEV_LEASE_SECS)
    }

    /// Leases up to `max` runs to dev worker `worker_id`, each with its
    /// `PENDING_EXECUTING` snapshot. Never waits: the CLI polls.
    pub async fn dev_dequeue(
        &self,
        environment: &Environment,
        worker_id: &WorkerId,
        max: u32,
    ) -> Result<Vec<DevDequeued>, Error> {
        let record = self.worker(environment, worker_id).await?;
        let now = self.clock.now();
        let leased = self
            .store
            .run_dequeue(
                &record,
                max.min(DEV_DEQUEUE_MAX),
                now + self.dev_lease(),
                now,
            )
            .await?;
        let snapshots: Vec<NewSnapshot> = leased
            .iter()
            .map(|l| {
                NewSnapshot::new(
                    &l.run.id,
                    ExecutionStatus::PendingExecuting,
                    "Run was dequeued for execution",
                    Some(l.attempt.number),
                    now,
                )
            })
            .collect();
        self.store.snapshot_append(&snapshots, now).await?;
        self.runs_changed(leased.iter().map(|l| &l.run.id));
        let mut out = Vec::with_capacity(leased.len());
        for l in leased {
            let snapshot = self
                .store
                .snapshot_latest(&l.run.id)
                .await?
                .ok_or_else(|| runnel_store::Error::Corrupt("snapshot just appended".into()))?;
            out.push(DevDequeued {
                leased: l,
                snapshot,
            });
        }
        Ok(out)
    }

    /// A run of `environment`, or [`DevError::RunNotFound`].
    async fn dev_run(&self, environment: &Environment, id: &RunId) -> Result<Run, Error> {
        self.store
            .run_get(&environment.id, id)
            .await?
            .ok_or_else(|| DevError::RunNotFound.into())
    }

    /// Starts the attempt of dequeued run `id`; `snapshot` must be its latest.
    pub async fn dev_start(
        &self,
        environment: &Environment,
        id: &RunId,
        snapshot: &SnapshotId,
    ) -> Result<DevStarted, Error> {
        let run = self.dev_run(environment, id).await?;
        let latest = self.store.snapshot_latest(id).await?;
        if latest.as_ref().map(|s| &s.id) != Some(snapshot) {
            return Err(DevError::SnapshotChanged(snapshot.clone()).into());
        }
        if run.status.is_final() {
            return Err(DevError::Invalid(format!("Run {id} is already finished")).into());
        }
        let (Some(attempt), Some(worker)) = (run.current_attempt_id.clone(), run.worker_id.clone())
        else {
            return Err(DevError::Invalid(format!("Run {id} is not dequeued")).into());
        };
        let record = self.worker(environment, &worker).await?;
        let (started, _) = self
            .dev_start_attempt(environment, &record, attempt.clone())
            .await?;
        if !started {
            return Err(DevError::Invalid(format!("Run {id} is not dequeued")).into());
        }
        let now = self.clock.now();
        let held = self
            .store
            .attempts_held(std::slice::from_ref(&attempt))
            .await?;
        let Some(leased) = held.into_iter().next() else {
            return Err(DevError::Invalid(format!("Run {id} is no longer held")).into());
        };
        let snapshot = NewSnapshot::new(
            id,
            ExecutionStatus::Executing,
            "Attempt started",
            Some(leased.attempt.number),
            now,
        );
        self.store
            .snapshot_append(std::slice::from_ref(&snapshot), now)
            .await?;
        let snapshot = self
            .store
            .snapshot_latest(id)
            .await?
            .ok_or_else(|| runnel_store::Error::Corrupt("snapshot just appended".into()))?;
        Ok(DevStarted {
            run: leased.run,
            attempt: leased.attempt,
            snapshot,
            worker: record,
        })
    }

    /// Starts `attempt` for `record` with the dev lease; whether it started now.
    async fn dev_start_attempt(
        &self,
        environment: &Environment,
        record: &WorkerRecord,
        attempt: runnel_core::AttemptId,
    ) -> Result<(bool, ()), Error> {
        let now = self.clock.now();
        let grace = i64::try_from(self.config.timeout_grace.as_millis()).unwrap_or(i64::MAX);
        let started = self
            .store
            .attempt_start_runs(
                &record.id,
                std::slice::from_ref(&attempt),
                now + self.dev_lease(),
                grace,
                self.config.pricing.run_fee(environment.kind),
                now,
            )
            .await?;
        if !started.is_empty() {
            self.wakes.rescuer.notify_one();
        }
        self.runs_changed(started.iter().map(|(_, run)| run));
        Ok((!started.is_empty(), ()))
    }

    /// Settles the attempt run `id` holds as `completion` says.
    pub async fn dev_complete(
        &self,
        environment: &Environment,
        id: &RunId,
        snapshot: &SnapshotId,
        completion: DevCompletion,
    ) -> Result<DevCompleted, Error> {
        let run = self.dev_run(environment, id).await?;
        let snapshots = self.store.snapshot_list(id).await?;
        if !snapshots.iter().any(|s| &s.id == snapshot) {
            return Err(DevError::Invalid(format!(
                "Snapshot {snapshot} is not a snapshot of run {id}"
            ))
            .into());
        }
        let now = self.clock.now();
        let finished = |run: Run, snapshot: Snapshot| DevCompleted {
            attempt_status: AttemptStatusAfter::RunFinished,
            snapshot,
            run,
        };
        let held = match &run.current_attempt_id {
            Some(attempt) => self
                .store
                .attempts_held(std::slice::from_ref(attempt))
                .await?
                .into_iter()
                .next(),
            None => None,
        };
        let Some(leased) = held else {
            // Ended already (canceled, rescued): the run is finished for the CLI.
            let snapshot = self.dev_finished_snapshot(&run).await?;
            return Ok(finished(run, snapshot));
        };
        let record = match &leased.run.worker_id {
            Some(worker) => self.worker(environment, worker).await?,
            None => return Err(DevError::Invalid(format!("Run {id} is not held")).into()),
        };
        let policy = record
            .task(&leased.run.task_identifier)
            .and_then(|t| t.retry)
            .unwrap_or_default();
        let mut terms = self.terms(environment, &leased.run, &policy);
        terms.retry = completion.retry;
        let (outcome, output, error) = match completion.result {
            Ok(packet) => (
                AttemptOutcome::Success {
                    output: serde_json::Value::Null,
                },
                Some(packet),
                None,
            ),
            Err((failure, error)) => (
                AttemptOutcome::Failure { error: failure },
                None,
                Some(error),
            ),
        };
        let change = state::settle(
            &leased.run,
            &leased.attempt,
            &record.id,
            &outcome,
            &terms,
            &mut rand::rng(),
            now,
        );
        let Ok(mut change) = change else {
            let snapshot = self.dev_finished_snapshot(&run).await?;
            return Ok(finished(run, snapshot));
        };
        if change.to == RunStatus::CompletedSuccessfully {
            change.output = match output.filter(|p| p.data.is_some()) {
                Some(packet) => Some(self.dev_output_settle(environment, packet, &leased).await?),
                None => None,
            };
        }
        if change.error.is_some() {
            change.error = error;
        }
        let Some(settlement) = attempt_settlement(&leased.run, change) else {
            return Err(DevError::Invalid("the attempt did not end".into()).into());
        };
        let applied = self
            .store
            .attempt_settle(std::slice::from_ref(&settlement))
            .await?;
        let run_now = self.dev_run(environment, id).await?;
        if !applied.first().copied().unwrap_or(false) {
            let snapshot = self.dev_finished_snapshot(&run_now).await?;
            return Ok(finished(run_now, snapshot));
        }
        self.after_settle(&settlement);
        let final_ = settlement.run_status.is_final();
        let (status, description, after) = if final_ {
            (
                ExecutionStatus::Finished,
                "Run finished",
                AttemptStatusAfter::RunFinished,
            )
        } else {
            (
                ExecutionStatus::Queued,
                "Attempt failed: the run is queued for its next attempt",
                AttemptStatusAfter::RetryQueued,
            )
        };
        let snapshot = NewSnapshot::new(id, status, description, Some(leased.attempt.number), now);
        self.store
            .snapshot_append(std::slice::from_ref(&snapshot), now)
            .await?;
        let snapshot = self
            .store
            .snapshot_latest(id)
            .await?
            .ok_or_else(|| runnel_store::Error::Corrupt("snapshot just appended".into()))?;
        if final_ {
            self.run_ended(id).await?;
        }
        Ok(DevCompleted {
            attempt_status: after,
            snapshot,
            run: run_now,
        })
    }

    /// The `FINISHED` snapshot of an ended run: its latest when that is one, else a new
    /// one appended now.
    async fn dev_finished_snapshot(&self, run: &Run) -> Result<Snapshot, Error> {
        if let Some(latest) = self.store.snapshot_latest(&run.id).await? {
            if latest.status == ExecutionStatus::Finished || !run.status.is_final() {
                return Ok(latest);
            }
        }
        let now = self.clock.now();
        let snapshot = NewSnapshot::new(
            &run.id,
            ExecutionStatus::Finished,
            format!("Run ended {}", run.status),
            None,
            now,
        );
        self.store
            .snapshot_append(std::slice::from_ref(&snapshot), now)
            .await?;
        Ok(self
            .store
            .snapshot_latest(&run.id)
            .await?
            .ok_or_else(|| runnel_store::Error::Corrupt("snapshot just appended".into()))?)
    }

    /// After a run with snapshots ended outside a completion (a cancel): its history
    /// ends with `FINISHED`, which tells a dev CLI to stop the attempt's process.
    pub(crate) async fn dev_run_ended(&self, id: &RunId) -> Result<(), Error> {
        let Some(latest) = self.store.snapshot_latest(id).await? else {
            return Ok(());
        };
        if latest.status == ExecutionStatus::Finished {
            return Ok(());
        }
        if let Some(run) = self.store.run_get_any(id).await? {
            if run.status.is_final() {
                self.dev_finished_snapshot(&run).await?;
            }
        }
        Ok(())
    }

    /// Extends the lease of run `id`'s attempt (any snapshot of a live run: the CLI's
    /// may lag). Whether the run is still held.
    pub async fn dev_heartbeat(
        &self,
        environment: &Environment,
        id: &RunId,
    ) -> Result<bool, Error> {
        let run = self.dev_run(environment, id).await?;
        let (Some(attempt), Some(worker)) = (run.current_attempt_id, run.worker_id) else {
            return Ok(false);
        };
        let now = self.clock.now();
        let held = self
            .store
            .attempt_heartbeat(
                &worker,
                std::slice::from_ref(&attempt),
                now + self.dev_lease(),
                now,
            )
            .await?;
        Ok(!held.is_empty())
    }

    /// Run `id`'s latest snapshot, with the waitpoints a resume lists.
    pub async fn dev_latest(
        &self,
        environment: &Environment,
        id: &RunId,
    ) -> Result<DevLatest, Error> {
        let run = self.dev_run(environment, id).await?;
        let snapshot = match self.store.snapshot_latest(id).await? {
            Some(snapshot) => snapshot,
            None => return Err(DevError::Invalid(format!("Run {id} has no snapshots")).into()),
        };
        let completed = self
            .store
            .waitpoints_get(&snapshot.completed_waitpoints)
            .await?;
        // In the snapshot's order.
        let completed = snapshot
            .completed_waitpoints
            .iter()
            .filter_map(|id| completed.iter().find(|w| &w.id == id).cloned())
            .collect();
        Ok(DevLatest {
            run,
            snapshot,
            completed,
        })
    }

    /// The dev CLI's watchdog after the CLI died: cancels its runs. How many were live.
    pub async fn dev_disconnect(
        &self,
        environment: &Environment,
        ids: &[RunId],
    ) -> Result<u32, Error> {
        let mut cancelled = 0;
        for id in ids {
            if let Some(run) = self.store.run_get(&environment.id, id).await? {
                if !run.status.is_final() {
                    self.cancel(environment, id).await?;
                    cancelled += 1;
                }
            }
        }
        Ok(cancelled)
    }
}

impl Engine {
    /// A dev attempt's output as stored: one the task process uploaded itself
    /// (`application/store`) must exist; an inline one at or over the offload threshold
    /// is offloaded to `<runId>/output-<attemptId>.json`.
    async fn dev_output_settle(
        &self,
        environment: &Environment,
        packet: Packet,
        leased: &Leased,
    ) -> Result<Packet, Error> {
        if packet.data_type == Packet::STORE {
            let path = packet.data.as_deref().unwrap_or_default();
            runnel_core::packets::path_check(path).map_err(|m| {
                DevError::Invalid(format!("completion.output: the storage path {m}"))
            })?;
            if !self.blobs().exists(environment, path).await? {
                return Err(DevError::Invalid(format!(
                    "completion.output: no object is stored at {path}"
                ))
                .into());
            }
            return Ok(packet);
        }
        let (run, attempt) = (&leased.run.id, &leased.attempt.id);
        Ok(self
            .output_offload(environment, packet, || {
                runnel_core::packets::output_path(run, attempt)
            })
            .await?)
    }
}
