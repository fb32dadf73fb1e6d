//! The one trigger path: how a trigger request becomes a stored run, whoever asks (a
//! single trigger, replay through it, batch items streamed or one-shot; later schedules
//! and child runs).
//!
//! ```text
//!   requests ──► parents_named (one read per distinct parentRunId)
//!            ──► build_run      (validate, into_run, link to its parent; pure)
//!            ──► place          (PendingVersion or Queued, the declared task queue;
//!                                one read per (task, locked version))
//!            ──► the caller's insert (Store::run_trigger / batch_items_trigger)
//!            ──► after_insert   (queue version-waiting runs a registration served
//!                                meanwhile; wake the timed services and dequeuers)
//! ```
//!
//! Callers differ only in how they insert (one run with its idempotency decision, or
//! a batch's items with the batch's counters) and in what they answer.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use runnel_core::run::Run;
use runnel_core::tenancy::Environment;
use runnel_core::trigger::{IdempotencyHeaders, TriggerError, TriggerRequest};
use runnel_core::{EnvironmentId, QueueName, RunId, RunStatus};

use crate::Engine;

/// The parent a new run hangs under.
#[derive(Debug, Clone, Copy)]
pub(crate) enum ParentLink<'a> {
    /// The batch's own parent, fixed at batch creation (it wins over an item's own).
    Batch(&'a BatchParent),
    /// The run's own `parentRunId`, looked up beforehand ([`Engine::parents_named`]).
    Named(&'a HashMap<RunId, Run>),
}

/// A batch's parent as its runs inherit it.
#[derive(Debug, Clone)]
pub(crate) struct BatchParent {
    pub id: RunId,
    pub root: RunId,
    /// The depth of the batch's runs (the parent's plus one).
    pub depth: u32,
    pub resume: bool,
}

impl Engine {
    /// The runs the requests' own `parentRunId`s name that exist in `environment`, one
    /// read per distinct id. A missing one is refused later, by [`Engine::build_run`].
    pub(crate) async fn parents_named<'a>(
        &self,
        environment: &Environment,
        requests: impl Iterator<Item = &'a TriggerRequest>,
    ) -> Result<HashMap<RunId, Run>, runnel_store::Error> {
        let ids: HashSet<RunId> = requests
            .filter_map(|r| r.options.as_ref()?.parent_run_id.as_deref())
            .filter_map(RunId::parse)
            .collect();
        let mut parents = HashMap::with_capacity(ids.len());
        for id in ids {
            if let Some(run) = self.store.run_get(&environment.id, &id).await? {
                parents.insert(id, run);
            }
        }
        Ok(parents)
    }

    /// Validates `request` as a trigger of `task` and builds its run, linked to its
    /// parent. `origin` names the caller in the warning for options not supported yet.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn build_run(
        &self,
        environment: &Environment,
        task: &str,
        request: TriggerRequest,
        headers: &IdempotencyHeaders,
        parent: ParentLink<'_>,
        now: DateTime<Utc>,
        origin: &'static str,
    ) -> Result<Run, TriggerError> {
        if let Some(options) = &request.options {
            crate::unsupported::warn_once(&options.unsupported_in_use(), origin);
        }
        let valid = request.validate(task, headers, now)?;
        let mut run = valid.into_run(
            RunId::generate(now.timestamp_millis()),
            environment.id.clone(),
            now,
        );
        match parent {
            ParentLink::Batch(parent) => {
                run.parent_run_id = Some(parent.id.clone());
                run.root_run_id = Some(parent.root.clone());
                run.depth = parent.depth;
                run.resume_parent_on_completion = parent.resume;
            }
            ParentLink::Named(parents) => {
                if let Some(id) = run.parent_run_id.clone() {
                    let parent = parents.get(&id).ok_or_else(|| TriggerError::Invalid {
                        field: "options.parentRunId",
                        message: format!("no run {id} in this environment"),
                    })?;
                    run.link_to_parent(parent);
                }
            }
        }
        Ok(run)
    }

    /// Decides where each new run waits: a queued run whose task no registered version
    /// serves waits in `PendingVersion`, and a run without a queue of its own takes the
    /// queue the serving version declared for the task. One read per (task, locked
    /// version) among `runs`.
    pub(crate) async fn place<'a>(
        &self,
        environment: &Environment,
        runs: impl Iterator<Item = &'a mut Run>,
    ) -> Result<(), runnel_store::Error> {
        let mut declared: HashMap<(String, Option<String>), Option<String>> = HashMap::new();
        for run in runs {
            let on_default_queue = run.queue == QueueName::for_task(&run.task_identifier);
            if run.status != RunStatus::Queued && !on_default_queue {
                continue;
            }
            let key = (run.task_identifier.clone(), run.lock_to_version.clone());
            let queue = match declared.get(&key) {
                Some(queue) => queue.clone(),
                None => {
                    let queue = self
                        .task_queue(environment, &key.0, key.1.as_deref())
                        .await?;
                    declared.insert(key, queue.clone());
                    queue
                }
            };
            if run.status == RunStatus::Queued && queue.is_none() {
                run.status = RunStatus::PendingVersion;
            }
            if let Some(queue) = queue {
                if on_default_queue {
                    run.queue = QueueName::from_trusted(queue);
                }
            }
        }
        Ok(())
    }

    /// The queue the latest version serving `task` (at `version` when given) declared for
    /// it; `None` when no version serves it. A served task's queue is remembered until
    /// a worker registers, on this node or another (`Signal::WorkersChanged`).
    async fn task_queue(
        &self,
        environment: &Environment,
        task: &str,
        version: Option<&str>,
    ) -> Result<Option<String>, runnel_store::Error> {
        let key = (
            environment.id.clone(),
            task.to_owned(),
            version.map(str::to_owned),
        );
        let generation = match self.task_queues.recall(&key) {
            Ok(queue) => return Ok(Some(queue)),
            Err(generation) => generation,
        };
        let queue = self
            .store
            .task_queue(&environment.id, task, version)
            .await?;
        if let Some(queue) = &queue {
            self.task_queues.remember(generation, key, queue.clone());
        }
        Ok(queue)
    }

    /// After the insert, for the runs it created: queues the version-waiting ones whose
    /// task a registration committed between [`Engine::place`] and the insert (that
    /// registration queued the waiting runs without them), then wakes the timed
    /// services when a run has a deadline and the dequeuers when any was created.
    pub(crate) async fn after_insert<'a>(
        &self,
        environment: &Environment,
        created: impl Iterator<Item = (&'a Run, &'a RunId)>,
        now: DateTime<Utc>,
    ) -> Result<(), runnel_store::Error> {
        let mut any = false;
        let mut has_deadline = false;
        let mut served: HashMap<(String, Option<String>), bool> = HashMap::new();
        for (run, id) in created {
            any = true;
            self.runs_changed(std::iter::once(id));
            has_deadline |= run.expire_at.is_some() || run.delay_until.is_some();
            if run.status != RunStatus::PendingVersion {
                continue;
            }
            let key = (run.task_identifier.clone(), run.lock_to_version.clone());
            let is_served = match served.get(&key) {
                Some(is_served) => *is_served,
                None => {
                    let is_served = self
                        .store
                        .task_served(&environment.id, &key.0, key.1.as_deref())
                        .await?;
                    served.insert(key, is_served);
                    is_served
                }
            };
            // Promote (`runnel_core::state::promote`): queued once a version serves it.
            if let Ok(change) = runnel_core::state::promote(run, is_served, now) {
                self.store
                    .run_transition(id, change.from, change.to, change.at)
                    .await?;
                self.runs_changed(std::iter::once(id));
            }
        }
        if has_deadline {
            self.wakes.waits_changed();
        }
        if any {
            self.runs_became_available();
        }
        Ok(())
    }
}

/// The queues of served tasks, as triggers read them: one read per (environment, task,
/// locked version) until a worker registers.
///
/// Only served tasks are remembered: a task no version serves is read again at every
/// trigger, so its first registration is seen at once, by every node. A remembered queue
/// changes only when a newer version declares another queue for the task; the node that
/// registers it forgets at once, the others when its `WorkersChanged` signal arrives (a
/// few milliseconds; a trigger racing a registration could place its run either way
/// without the cache too). A read that began before a registration is not remembered
/// after it ([`Known::generation`]).
#[derive(Debug, Default)]
pub(crate) struct TaskQueues {
    known: Mutex<Known>,
}

#[derive(Debug, Default)]
struct Known {
    /// Bumped by every [`TaskQueues::forget`].
    generation: u64,
    queues: HashMap<(EnvironmentId, String, Option<String>), String>,
}

/// Most entries remembered; past it the map starts over (locked versions are the
/// caller's strings, so their number is the caller's too).
const TASK_QUEUES_MAX: usize = 10_000;

impl TaskQueues {
    /// The remembered queue of `key`, or the generation a read of it starts in.
    fn recall(&self, key: &(EnvironmentId, String, Option<String>)) -> Result<String, u64> {
        let known = self.known.lock().expect("task queues");
        known.queues.get(key).cloned().ok_or(known.generation)
    }

    fn remember(
        &self,
        generation: u64,
        key: (EnvironmentId, String, Option<String>),
        queue: String,
    ) {
        let mut known = self.known.lock().expect("task queues");
        if known.generation != generation {
            return;
        }
        if known.queues.len() >= TASK_QUEUES_MAX {
            known.queues.clear();
        }
        known.queues.insert(key, queue);
    }

    /// Forgets every queue: a worker registered.
    pub(crate) fn forget(&self) {
        let mut known = self.known.lock().expect("task queues");
        known.generation += 1;
        known.queues.clear();
    }
}
