//! The seam between the worker runtime and what runs an attempt.

use async_trait::async_trait;
use runnel_core::worker::{AttemptOutcome, DequeuedRun, FailureKind, TaskDefinition};
use tokio::sync::watch;

use crate::client::Client;
use crate::envvars::EnvVars;

/// Why the runtime wants an attempt to stop before it ends by itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// The run was canceled (or the server no longer leases it to this worker).
    Canceled,
    /// The attempt used up its `maxDuration`.
    TimedOut,
    /// The worker is shutting down and the grace period is over.
    Shutdown,
}

impl StopReason {
    /// What the runtime reports for an attempt it stopped, whatever the executor returned:
    /// nothing for a cancel (the server ended the run when it was canceled), a
    /// `MaxDurationExceeded` failure for a timeout, an `Interrupted` one for a shutdown.
    pub fn report(self, max_duration_secs: Option<u32>) -> Option<AttemptOutcome> {
        match self {
            StopReason::Canceled => None,
            StopReason::TimedOut => Some(AttemptOutcome::failure(
                FailureKind::MaxDurationExceeded,
                match max_duration_secs {
                    Some(secs) => format!("Run exceeded maxDuration of {secs}s"),
                    None => "Run exceeded its maxDuration".to_owned(),
                },
            )),
            StopReason::Shutdown => Some(AttemptOutcome::failure(
                FailureKind::Interrupted,
                "worker stopped during the run",
            )),
        }
    }

    /// The outcome an executor returns for an attempt it stopped. The runtime reports
    /// [`StopReason::report`] instead; this says the same for anyone driving an executor
    /// directly, with a cancel as `Interrupted` (never a retried `TaskFailed`).
    pub fn ending(self) -> AttemptOutcome {
        self.report(None).unwrap_or_else(|| {
            AttemptOutcome::failure(FailureKind::Interrupted, "the run was canceled")
        })
    }
}

/// Handed to [`Executor::execute`] with each attempt: fires when the attempt must stop.
#[derive(Debug, Clone)]
pub struct StopSignal {
    rx: watch::Receiver<Option<StopReason>>,
}

/// The runtime's end of a [`StopSignal`].
#[derive(Debug)]
pub struct StopHandle {
    tx: watch::Sender<Option<StopReason>>,
}

impl StopSignal {
    /// A connected pair: `handle.stop(reason)` makes `signal.stopped()` resolve.
    pub fn channel() -> (StopHandle, StopSignal) {
        let (tx, rx) = watch::channel(None);
        (StopHandle { tx }, StopSignal { rx })
    }

    /// Resolves with the reason once the attempt must stop; never resolves otherwise.
    pub async fn stopped(&mut self) -> StopReason {
        loop {
            if let Some(reason) = *self.rx.borrow_and_update() {
                return reason;
            }
            if self.rx.changed().await.is_err() {
                // The runtime dropped its handle without stopping: never stop.
                std::future::pending::<()>().await;
            }
        }
    }

    /// The reason, if the attempt was told to stop.
    pub fn reason(&self) -> Option<StopReason> {
        *self.rx.borrow()
    }
}

impl StopHandle {
    /// Tells the attempt to stop. The first reason wins.
    pub fn stop(&self, reason: StopReason) {
        self.tx.send_if_modified(|current| {
            if current.is_none() {
                *current = Some(reason);
                true
            } else {
                false
            }
        });
    }

    pub fn reason(&self) -> Option<StopReason> {
        *self.tx.borrow()
    }
}

/// Runs attempts. Implementations must be cheap to share across concurrent attempts.
#[async_trait]
pub trait Executor: Send + Sync + 'static {
    /// The tasks this executor runs, as the worker registers them.
    fn tasks(&self) -> Vec<TaskDefinition>;

    /// Runs one attempt to its end and says how it ended. When `stop` fires, the
    /// executor must end the attempt promptly (killing anything it started) and return;
    /// the runtime then reports the stop reason rather than the returned outcome.
    async fn execute(&self, run: DequeuedRun, stop: StopSignal) -> AttemptOutcome;

    /// [`Executor::execute`] with the worker's client, which the attempt may use to call
    /// the server on its run's behalf (trigger a child and wait for it, wait for a time
    /// or a token): the runtime calls this one. The default forgets the client.
    async fn execute_with(
        &self,
        run: DequeuedRun,
        stop: StopSignal,
        client: &Client,
    ) -> AttemptOutcome {
        let _ = client;
        self.execute(run, stop).await
    }

    /// [`Executor::execute_with`] with the variables of the run's environment (read
    /// by the runtime, in clear): the runtime calls this one. The default forgets them.
    async fn execute_with_env(
        &self,
        run: DequeuedRun,
        stop: StopSignal,
        client: &Client,
        env_vars: EnvVars,
    ) -> AttemptOutcome {
        let _ = env_vars;
        self.execute_with(run, stop, client).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind_of(outcome: &AttemptOutcome) -> Option<FailureKind> {
        match outcome {
            AttemptOutcome::Failure { error } => Some(error.kind),
            AttemptOutcome::Success { .. } => None,
        }
    }

    /// One meaning per stop reason, for the runtime's report and every executor's ending:
    /// a cancel is never reported (and never a retried `TaskFailed`).
    #[test]
    fn each_stop_reason_reports_and_ends_one_way() {
        assert_eq!(StopReason::Canceled.report(Some(5)), None);
        assert_eq!(
            kind_of(&StopReason::Canceled.ending()),
            Some(FailureKind::Interrupted)
        );
        let timed_out = StopReason::TimedOut.report(Some(5)).expect("reported");
        assert_eq!(
            timed_out,
            AttemptOutcome::failure(
                FailureKind::MaxDurationExceeded,
                "Run exceeded maxDuration of 5s"
            )
        );
        assert_eq!(
            kind_of(&StopReason::TimedOut.ending()),
            Some(FailureKind::MaxDurationExceeded)
        );
        for outcome in [
            StopReason::Shutdown.report(None).expect("reported"),
            StopReason::Shutdown.ending(),
        ] {
            assert_eq!(
                outcome,
                AttemptOutcome::failure(FailureKind::Interrupted, "worker stopped during the run")
            );
        }
    }
}
