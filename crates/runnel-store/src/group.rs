//! Group commit for triggers: concurrent [`crate::RunStore::run_trigger`] calls written in one
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

    /// One run on its own (a failed group's runs, one by one): a group of one unless
    /// the backend has a cheaper way.
    async fn write_one(&self, run: &Run, now: DateTime<Utc>) -> Result<TriggerOutcome> {
        let mut outcomes = self.write_group(&[run], now).await?;
        Ok(outcomes.pop().expect("one outcome per run"))
    }
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

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::sync::{Arc, Mutex};

    use runnel_core::trigger::{IdempotencyHeaders, TriggerRequest};
    use runnel_core::{EnvironmentId, RunId};
    use tokio::sync::Barrier;
    use tokio::task::JoinSet;

    use super::*;

    fn run() -> Run {
        let now = DateTime::from_timestamp_millis(0).unwrap();
        let request: TriggerRequest = serde_json::from_value(serde_json::json!({})).unwrap();
        request
            .validate("t", &IdempotencyHeaders::default(), now)
            .unwrap()
            .into_run(RunId::generate(0), EnvironmentId::generate(0), now)
    }

    /// Records what it was asked to write; a group holding a `poisoned` run fails, and
    /// so does writing that run alone.
    #[derive(Debug, Default)]
    struct Recorder {
        groups: Mutex<Vec<usize>>,
        singles: Mutex<Vec<RunId>>,
        poisoned: HashSet<RunId>,
    }

    fn refused() -> Error {
        Error::Corrupt("poisoned".to_owned())
    }

    #[async_trait]
    impl GroupWriter for Arc<Recorder> {
        async fn write_group(
            &self,
            runs: &[&Run],
            _now: DateTime<Utc>,
        ) -> Result<Vec<TriggerOutcome>> {
            self.groups.lock().unwrap().push(runs.len());
            if runs.iter().any(|r| self.poisoned.contains(&r.id)) {
                return Err(refused());
            }
            Ok(runs
                .iter()
                .map(|r| TriggerOutcome::Created(r.id.clone()))
                .collect())
        }

        async fn write_one(&self, run: &Run, _now: DateTime<Utc>) -> Result<TriggerOutcome> {
            self.singles.lock().unwrap().push(run.id.clone());
            if self.poisoned.contains(&run.id) {
                return Err(refused());
            }
            Ok(TriggerOutcome::Created(run.id.clone()))
        }
    }

    /// Triggers `runs` from one task each, all started together.
    async fn trigger_all(
        groups: &TriggerGroups,
        runs: &[Run],
    ) -> Vec<(RunId, Result<TriggerOutcome>)> {
        let start = Arc::new(Barrier::new(runs.len()));
        let mut tasks = JoinSet::new();
        for run in runs.iter().cloned() {
            let groups = groups.clone();
            let start = Arc::clone(&start);
            tasks.spawn(async move {
                start.wait().await;
                let outcome = groups.trigger(&run, Utc::now()).await;
                (run.id, outcome)
            });
        }
        tasks.join_all().await
    }

    #[tokio::test]
    async fn a_lone_trigger_is_written_at_once_as_a_group_of_one() {
        let recorder = Arc::new(Recorder::default());
        let groups = TriggerGroups::spawn(Arc::clone(&recorder));
        let run = run();
        let outcome = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            groups.trigger(&run, Utc::now()),
        )
        .await
        .expect("nothing waits for a group to fill");
        assert_eq!(outcome.unwrap(), TriggerOutcome::Created(run.id));
        assert_eq!(*recorder.groups.lock().unwrap(), vec![1]);
    }

    #[tokio::test]
    async fn concurrent_triggers_share_groups_and_each_gets_its_outcome() {
        let recorder = Arc::new(Recorder::default());
        let groups = TriggerGroups::spawn(Arc::clone(&recorder));
        let runs: Vec<Run> = (0..100).map(|_| run()).collect();
        for (id, outcome) in trigger_all(&groups, &runs).await {
            assert_eq!(outcome.unwrap(), TriggerOutcome::Created(id));
        }
        let sizes = recorder.groups.lock().unwrap().clone();
        assert_eq!(
            sizes.iter().sum::<usize>(),
            100,
            "each run written once: {sizes:?}"
        );
        assert!(
            sizes.len() < 100,
            "triggers waiting together are written together: {sizes:?}"
        );
        assert!(recorder.singles.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_failed_group_is_written_again_run_by_run_and_only_the_faulty_one_fails() {
        let runs: Vec<Run> = (0..50).map(|_| run()).collect();
        let poisoned = runs[7].id.clone();
        let recorder = Arc::new(Recorder {
            poisoned: HashSet::from([poisoned.clone()]),
            ..Recorder::default()
        });
        let groups = TriggerGroups::spawn(Arc::clone(&recorder));
        for (id, outcome) in trigger_all(&groups, &runs).await {
            if id == poisoned {
                assert!(outcome.is_err());
            } else {
                assert_eq!(outcome.unwrap(), TriggerOutcome::Created(id));
            }
        }
        let singles = recorder.singles.lock().unwrap().clone();
        assert!(
            singles.contains(&poisoned),
            "the failed group was retried run by run: {singles:?}"
        );
    }
}
