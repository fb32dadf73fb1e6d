//! The run's state as data, and the transitions between states.
//!
//! A stored [`Run`] keeps flat columns (`status`, `current_attempt_id`, `lease_expires_at`,
//! `next_attempt_at`, …), most of which mean something in one status only. [`Run::state`]
//! reads them as a [`RunState`]: one variant per status, carrying exactly the data that
//! status has (a leased run has an attempt, a worker and a lease end; a retrying one has
//! the time of its next attempt). [`RunState::status`] renders it back to its
//! [`RunStatus`].
//!
//! Each transition is a pure function here, deciding from the run (its state) and `now`
//! the [`Change`] to apply: from which status, to which status, and the fields it sets
//! (the store applies a change as one conditional update, so of two racing actors exactly
//! one wins). Which status may move to which, and by which transition, is the table in
//! [`table`]; `docs/state-machine.md` draws it and is tested against it.
//!
//! | transition | function | applied by |
//! |---|---|---|
//! | settle (the worker reports an attempt's end) | [`settle`] | `Store::attempt_settle` |
//! | rescue (lease ran out, `maxDuration` passed) | [`rescue`] | `Store::attempt_settle` |
//! | cancel | [`cancel`] | `Store::run_cancel` |
//! | expire (TTL passed while waiting to start) | [`expire`] | `Store::run_expire_due` |
//! | promote (delay ended, a version serves it) | [`promote`] | `Store::run_promote_due`, `Store::worker_register` |
//! | requeue (backoff ended) | [`requeue`] | `Store::run_requeue_due` |
//!
//! Trigger, dequeue and start happen inside one store statement each and have no
//! function here; their edges are in the table all the same. An attempt's compute time
//! and its price are computed in one place, [`charge`].
//!
//! # `WAITING`: waitpoints and execution snapshots
//!
//! Built as the dev CLI protocol's §4 describes ("Waits, resume, retries"), with the
//! waitpoints and snapshots themselves in [`crate::waitpoint`]:
//!
//! - **Waitpoints.** [`RunState::WaitingToResume`] carries the attempt that waits, its
//!   worker and its lease: the worker's process stays alive through the wait and keeps
//!   heartbeating (nothing is checkpointed), so a waiting attempt can also end or be
//!   rescued. Blocking ([`Transition::Wait`]) and resuming ([`Transition::Resume`], once
//!   **all** blocking waitpoints are completed) are single conditional statements in the
//!   store (`WaitStore::run_block`, `WaitStore::run_resume`), driven by the engine's
//!   `waits.rs`; they have no pure function here yet.
//! - **Execution snapshots.** A run served by the dev CLI, and any run that waits, keeps
//!   an ordered list of snapshots whose last is "latest"; starting an attempt must name
//!   it. Snapshots are appended by the engine beside the change they record (not yet
//!   inside every [`Change`]), and Runnel's own workers' hot path appends none.
//! - **Immediate retries.** [`Transition::RetryImmediately`] (`RetryingAfterFailure` →
//!   `Executing`, upstream's `RETRY_IMMEDIATELY`) is reserved for a short backoff that
//!   keeps the worker's process; [`settle`] would decide it next to the queued retry.

pub mod table;
mod transitions;

use chrono::{DateTime, Utc};

use crate::id::{AttemptId, RunId, WorkerId};
use crate::run::Run;
use crate::status::RunStatus;

pub use table::{Edge, Transition, EDGES};
pub(crate) use transitions::cost_of;
pub use transitions::{
    cancel, canceled_error, charge, expire, expired_error, promote, requeue, rescue, settle,
    AttemptEnd, Change, Charge, Claim, Refused, RetryHint, Terms,
};

/// A run's state: its status with the data that status has.
#[derive(Debug, Clone, PartialEq)]
pub enum RunState {
    /// Triggered with a delay; promoted at `until`.
    Delayed {
        until: DateTime<Utc>,
    },
    /// No registered version serves the task yet; expires at `expire_at` if it has a TTL.
    PendingVersion {
        expire_at: Option<DateTime<Utc>>,
    },
    /// Waiting for a worker; expires at `expire_at` if it has a TTL.
    Queued {
        expire_at: Option<DateTime<Utc>>,
    },
    /// Leased to `worker`, which has not started `attempt` yet.
    Dequeued {
        attempt: AttemptId,
        worker: WorkerId,
        lease_expires_at: DateTime<Utc>,
    },
    /// `worker` runs `attempt`; the server times it out at `timeout_at` (its
    /// `maxDuration`, plus grace) if it has one.
    Executing {
        attempt: AttemptId,
        worker: WorkerId,
        lease_expires_at: DateTime<Utc>,
        timeout_at: Option<DateTime<Utc>>,
    },
    /// An attempt failed; the run is queued again at `next_attempt_at`.
    RetryingAfterFailure {
        next_attempt_at: DateTime<Utc>,
    },
    /// `worker`'s `attempt` is blocked by waitpoints (a child run, a time, a token):
    /// its process stays alive (the dev model: nothing is checkpointed) and keeps
    /// heartbeating, so the lease still runs; compute time stops until every blocking
    /// waitpoint is completed and the run resumes executing.
    WaitingToResume {
        attempt: AttemptId,
        worker: WorkerId,
        lease_expires_at: DateTime<Utc>,
    },
    CompletedSuccessfully {
        completed_at: DateTime<Utc>,
    },
    CompletedWithErrors {
        completed_at: DateTime<Utc>,
    },
    Canceled {
        completed_at: DateTime<Utc>,
    },
    Interrupted {
        completed_at: DateTime<Utc>,
    },
    Crashed {
        completed_at: DateTime<Utc>,
    },
    SystemFailure {
        completed_at: DateTime<Utc>,
    },
    Expired {
        completed_at: DateTime<Utc>,
    },
    TimedOut {
        completed_at: DateTime<Utc>,
    },
}

impl RunState {
    /// The stored status this state renders as.
    pub fn status(&self) -> RunStatus {
        match self {
            RunState::Delayed { .. } => RunStatus::Delayed,
            RunState::PendingVersion { .. } => RunStatus::PendingVersion,
            RunState::Queued { .. } => RunStatus::Queued,
            RunState::Dequeued { .. } => RunStatus::Dequeued,
            RunState::Executing { .. } => RunStatus::Executing,
            RunState::RetryingAfterFailure { .. } => RunStatus::RetryingAfterFailure,
            RunState::WaitingToResume { .. } => RunStatus::WaitingToResume,
            RunState::CompletedSuccessfully { .. } => RunStatus::CompletedSuccessfully,
            RunState::CompletedWithErrors { .. } => RunStatus::CompletedWithErrors,
            RunState::Canceled { .. } => RunStatus::Canceled,
            RunState::Interrupted { .. } => RunStatus::Interrupted,
            RunState::Crashed { .. } => RunStatus::Crashed,
            RunState::SystemFailure { .. } => RunStatus::SystemFailure,
            RunState::Expired { .. } => RunStatus::Expired,
            RunState::TimedOut { .. } => RunStatus::TimedOut,
        }
    }

    /// The attempt a worker holds and the worker, in the leased states.
    pub fn held(&self) -> Option<(&AttemptId, &WorkerId)> {
        match self {
            RunState::Dequeued {
                attempt, worker, ..
            }
            | RunState::Executing {
                attempt, worker, ..
            }
            | RunState::WaitingToResume {
                attempt, worker, ..
            } => Some((attempt, worker)),
            _ => None,
        }
    }

    /// When the run ended, in the final states.
    pub fn completed_at(&self) -> Option<DateTime<Utc>> {
        match self {
            RunState::CompletedSuccessfully { completed_at }
            | RunState::CompletedWithErrors { completed_at }
            | RunState::Canceled { completed_at }
            | RunState::Interrupted { completed_at }
            | RunState::Crashed { completed_at }
            | RunState::SystemFailure { completed_at }
            | RunState::Expired { completed_at }
            | RunState::TimedOut { completed_at } => Some(*completed_at),
            _ => None,
        }
    }
}

/// A stored run whose columns do not make a state: its status needs a field it lacks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("run {run} is {status} but has no {missing}")]
pub struct StateError {
    pub run: RunId,
    pub status: RunStatus,
    pub missing: &'static str,
}

impl Run {
    /// The run's state, read from its columns.
    pub fn state(&self) -> Result<RunState, StateError> {
        let missing = |missing| StateError {
            run: self.id.clone(),
            status: self.status,
            missing,
        };
        let completed_at = || self.completed_at.ok_or_else(|| missing("completed_at"));
        let held = || -> Result<_, StateError> {
            Ok((
                self.current_attempt_id
                    .clone()
                    .ok_or_else(|| missing("current_attempt_id"))?,
                self.worker_id.clone().ok_or_else(|| missing("worker_id"))?,
                self.lease_expires_at
                    .ok_or_else(|| missing("lease_expires_at"))?,
            ))
        };
        Ok(match self.status {
            RunStatus::Delayed => RunState::Delayed {
                until: self.delay_until.ok_or_else(|| missing("delay_until"))?,
            },
            RunStatus::PendingVersion => RunState::PendingVersion {
                expire_at: self.expire_at,
            },
            RunStatus::Queued => RunState::Queued {
                expire_at: self.expire_at,
            },
            RunStatus::Dequeued => {
                let (attempt, worker, lease_expires_at) = held()?;
                RunState::Dequeued {
                    attempt,
                    worker,
                    lease_expires_at,
                }
            }
            RunStatus::Executing => {
                let (attempt, worker, lease_expires_at) = held()?;
                RunState::Executing {
                    attempt,
                    worker,
                    lease_expires_at,
                    timeout_at: self.timeout_at,
                }
            }
            RunStatus::RetryingAfterFailure => RunState::RetryingAfterFailure {
                next_attempt_at: self
                    .next_attempt_at
                    .ok_or_else(|| missing("next_attempt_at"))?,
            },
            RunStatus::WaitingToResume => {
                let (attempt, worker, lease_expires_at) = held()?;
                RunState::WaitingToResume {
                    attempt,
                    worker,
                    lease_expires_at,
                }
            }
            RunStatus::CompletedSuccessfully => RunState::CompletedSuccessfully {
                completed_at: completed_at()?,
            },
            RunStatus::CompletedWithErrors => RunState::CompletedWithErrors {
                completed_at: completed_at()?,
            },
            RunStatus::Canceled => RunState::Canceled {
                completed_at: completed_at()?,
            },
            RunStatus::Interrupted => RunState::Interrupted {
                completed_at: completed_at()?,
            },
            RunStatus::Crashed => RunState::Crashed {
                completed_at: completed_at()?,
            },
            RunStatus::SystemFailure => RunState::SystemFailure {
                completed_at: completed_at()?,
            },
            RunStatus::Expired => RunState::Expired {
                completed_at: completed_at()?,
            },
            RunStatus::TimedOut => RunState::TimedOut {
                completed_at: completed_at()?,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::transitions::tests::{attempt, run_in, t, worker};
    use super::*;

    #[test]
    fn every_status_reads_as_a_state_that_renders_it_back() {
        for status in RunStatus::ALL {
            let state = run_in(status).state().unwrap();
            assert_eq!(state.status(), status);
            assert_eq!(
                state.completed_at().is_some(),
                status.is_final(),
                "{status}"
            );
            assert_eq!(
                state.held().is_some(),
                matches!(
                    status,
                    RunStatus::Dequeued | RunStatus::Executing | RunStatus::WaitingToResume
                ),
                "{status}"
            );
        }
    }

    #[test]
    fn a_state_carries_the_columns_of_its_status() {
        assert_eq!(
            run_in(RunStatus::Executing).state().unwrap(),
            RunState::Executing {
                attempt: attempt().id,
                worker: worker(),
                lease_expires_at: t(30),
                timeout_at: Some(t(60)),
            }
        );
        assert_eq!(
            run_in(RunStatus::RetryingAfterFailure).state().unwrap(),
            RunState::RetryingAfterFailure {
                next_attempt_at: t(20)
            }
        );
        assert_eq!(
            run_in(RunStatus::Delayed).state().unwrap(),
            RunState::Delayed { until: t(5) }
        );
        assert_eq!(
            run_in(RunStatus::Queued).state().unwrap(),
            RunState::Queued {
                expire_at: Some(t(600))
            }
        );
        assert_eq!(
            run_in(RunStatus::Crashed).state().unwrap(),
            RunState::Crashed {
                completed_at: t(40)
            }
        );
    }

    #[test]
    fn a_status_without_its_data_is_no_state() {
        let mut run = run_in(RunStatus::Dequeued);
        run.lease_expires_at = None;
        let err = run.state().unwrap_err();
        assert_eq!(
            (err.status, err.missing),
            (RunStatus::Dequeued, "lease_expires_at")
        );
        let mut run = run_in(RunStatus::Canceled);
        run.completed_at = None;
        assert_eq!(run.state().unwrap_err().missing, "completed_at");
        let mut run = run_in(RunStatus::RetryingAfterFailure);
        run.next_attempt_at = None;
        assert_eq!(run.state().unwrap_err().missing, "next_attempt_at");
    }
}
