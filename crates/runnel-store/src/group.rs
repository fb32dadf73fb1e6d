//! Group commit for triggers: concurrent [`crate::Store::run_trigger`] calls written in one
//! transaction.
//!
//! A backend hands each trigger to [`TriggerGroups::trigger`]; one task takes every
//! trigger waiting at that moment (at most [`GROUP_MAX`]) and writes them with the
//! backend's [`GroupWriter::write_group`], the multi-row trigger of the batch endpoints,
//! which decides idempotency keys in arrival order. Nothing waits for a group to fill: a
//! lone trigger is written at once, and the triggers arriving while a group commits form
//! the next one. Each trigger's outcome goes back to its caller.
//!
//! If a group's write fails (a duplicate run id, say), every trigger of the group is
//! written again on its own ([`GroupWriter::write_one`]), so only the faulty one sees the
//! error. A trigger is acknowledged only once its group has committed, so a crash loses
//! only triggers nobody was told were stored.
//!
//! Why: on SQLite every statement is a round trip to the connection's own thread, and
//! on PostgreSQL one over the socket; a trigger written alone pays a transaction's
//! statements by itself, in a group it shares them (docs/BENCHMARKS.md).

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use runnel_core::run::Run;
use tokio::sync::{mpsc, oneshot};

use crate::{Error, Result, TriggerOutcome};

/// Most triggers written in one group.
pub(crate) const GROUP_MAX: usize = 256;
/// Triggers waiting for the group writer before callers wait to hand theirs over.
const QUEUE: usize = 4096;

/// How a backend writes triggers.
#[async_trait]
pub(crate) trait GroupWriter: Send + Sync + 'static {
    /// All of `runs` in one transaction, one outcome per run in order, or nothing.
    async fn write_group(&self, runs: &[&Run], now: DateTime<Utc>) -> Result<Vec<TriggerOutcome>>;

    /// One run on its own (a failed group's runs, one by one).
    async fn write_one(&self, run: &Run, now: DateTime<Utc>) -> Result<TriggerOutcome>;
}

/// The handle a store keeps; cloning it shares the one writer task.
#[derive(Debug, Clone)]
pub(crate) struct TriggerGroups {
    jobs: mpsc::Sender<Job>,
}

#[derive(Debug)]
struct Job {
    run: Run,
    now: DateTime<Utc>,
    reply: oneshot::Sender<Result<TriggerOutcome>>,
}

impl TriggerGroups {
    /// Starts the writer task (on the current tokio runtime); it ends when the last
    /// handle is dropped.
    pub(crate) fn spawn(writer: impl GroupWriter) -> TriggerGroups {
        let (jobs, queue) = mpsc::channel(QUEUE);
        tokio::spawn(write_groups(writer, queue));
        TriggerGroups { jobs }
    }

    /// Writes `run` with whatever other triggers are waiting, and returns its outcome.
    pub(crate) async fn trigger(&self, run: &Run, now: DateTime<Utc>) -> Result<TriggerOutcome> {
        let (reply, outcome) = oneshot::channel();
        let job = Job {
            run: run.clone(),
            now,
            reply,
        };
        // The writer task only stops with the runtime: the store is going away.
        let stopped = || Error::Database(sqlx::Error::PoolClosed);
        self.jobs.send(job).await.map_err(|_| stopped())?;
        outcome.await.map_err(|_| stopped())?
    }
}

async fn write_groups(writer: impl GroupWriter, mut queue: mpsc::Receiver<Job>) {
    let mut group = Vec::with_capacity(GROUP_MAX);
    while queue.recv_many(&mut group, GROUP_MAX).await > 0 {
        let runs: Vec<&Run> = group.iter().map(|job| &job.run).collect();
        // Every trigger of the group is decided at the latest of their instants (a few
        // milliseconds apart at most), as if they had queued for the writer.
        let now = group
            .iter()
            .map(|job| job.now)
            .max()
            .expect("a group is never empty");
        match writer.write_group(&runs, now).await {
            Ok(outcomes) => {
                for (job, outcome) in group.drain(..).zip(outcomes) {
                    let _ = job.reply.send(Ok(outcome));
                }
            }
            Err(error) if group.len() == 1 => {
                let job = group.pop().expect("one job");
                let _ = job.reply.send(Err(error));
            }
            Err(_) => {
                for job in group.drain(..) {
                    let outcome = writer.write_one(&job.run, job.now).await;
                    let _ = job.reply.send(outcome);
                }
            }
        }
    }
}
