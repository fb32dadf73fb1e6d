//! Worker operations: register, dequeue (long poll), start, heartbeat (long poll),
//! complete, and cancel. (The rescuer, which settles attempts whose worker went
//! silent, is a runtime service: `services::rescuer`.)
//!
//! `runnel_core::state` decides each transition (settle, cancel) as a `Change`; the
//! engine turns it into the store's input and the store applies it as a conditional
//! update. A worker's claim on an attempt is checked by the store at the moment it
//! writes, so a completion that arrives after a cancel, a rescue or a timeout changes
//! nothing and is answered `accepted: false`.
//!
//! Long polls wait on [`tokio::sync::Notify`]s the engine fires when runs become
//! available (trigger, promotion, registration, release) or when held attempts end
//! (cancel, rescue): no polling interval on these paths.

use runnel_core::secrets::MasterKeys;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration as StdDuration;

use chrono::{DateTime, Duration, Utc};
use runnel_core::cost::Pricing;
use runnel_core::nesting;
use runnel_core::retry::RetryPolicy;
use runnel_core::run::{Packet, Run};
use runnel_core::state::{self, Change, Terms};
use runnel_core::tenancy::Environment;
use runnel_core::trigger::MAX_DURATION_MAX_SECS;
use runnel_core::worker::{self, AttemptOutcome, FailureKind, RegisterRequest, TaskFailure};
use runnel_core::{AttemptId, MachinePreset, QueueName, RunId, RunStatus, WorkerId};
pub use runnel_store::Leased;
use runnel_store::{
    AttemptSettlement, CancelOutcome, Claim, TaskConfig, WorkerRecord, WorkerRegistration,
};
use tokio::sync::Notify;

use crate::{Engine, Error};

/// Settings of the run engine.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// A held attempt whose worker stops heartbeating is rescued after this long.
    pub lease_timeout: StdDuration,
    /// How long past `maxDuration` the server waits for the worker to report the
    /// timeout before it times the attempt out itself.
    pub timeout_grace: StdDuration,
    pub pricing: Pricing,
    /// The keys secrets at rest are sealed under ([`runnel_core::secrets`]); the default
    /// is a random key that lives as long as the process.
    pub master_keys: MasterKeys,
    /// Object storage for large payloads and outputs ([`crate::blobs`]); the default
    /// keeps them in memory.
    pub blobs: crate::Blobs,
}

impl Default for EngineConfig {
    fn default() -> Self {
        let master_keys = MasterKeys::ephemeral();
        EngineConfig {
            lease_timeout: StdDuration::from_secs(30),
            timeout_grace: StdDuration::from_secs(5),
            pricing: Pricing::default(),
            blobs: crate::Blobs::in_memory(&master_keys),
            master_keys,
        }
    }
}

/// A registered worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registered {
    pub worker_id: WorkerId,
    /// The version it serves: its own, or the one the server assigned (`YYYYMMDD.N`).
    pub version: String,
    /// A held attempt not heartbeaten for this long is rescued.
    pub lease_timeout: StdDuration,
}

/// How one attempt ended, as its worker reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    pub attempt_id: AttemptId,
    pub outcome: AttemptOutcome,
    /// `Some("application/store")`: a success's `output` is the storage path (a string)
    /// of an output the worker uploaded itself. `None` is JSON.
    pub output_type: Option<String>,
}

/// What a reported [`Completion`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completed {
    pub attempt_id: AttemptId,
    /// The run's status after the completion; `None` when it was not accepted (the worker
    /// no longer held the attempt: canceled, rescued, already completed): nothing changed.
    pub run_status: Option<RunStatus>,
}

/// Why a worker request was refused.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("{0}")]
    Invalid(String),
    /// An unknown worker, or one of another environment.
    #[error("Worker not found")]
    UnknownWorker,
}

/// Waits for `notify` (registered before `check` runs, so nothing is missed) until
/// `check` returns something non-empty or `deadline` passes.
/// A server that is stopping answers at once (`stopping`).
async fn long_poll<T, F, Fut>(
    notify: &Notify,
    stopping: &tokio::sync::watch::Sender<bool>,
    deadline: tokio::time::Instant,
    mut check: F,
) -> Result<Vec<T>, Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Vec<T>, Error>>,
{
    let mut stop = stopping.subscribe();
    loop {
        let notified = notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let found = check().await?;
        if !found.is_empty() || tokio::time::Instant::now() >= deadline || *stop.borrow() {
            return Ok(found);
        }
        tokio::select! {
            _ = &mut notified => {}
            _ = tokio::time::sleep_until(deadline) => {}
            _ = stop.wait_for(|stopping| *stopping) => {}
        }
    }
}

fn millis(d: StdDuration) -> Duration {
    Duration::milliseconds(i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn wait_deadline(wait_ms: u64) -> tokio::time::Instant {
    tokio::time::Instant::now() + StdDuration::from_millis(wait_ms.min(worker::MAX_WAIT_MS))
}

impl Engine {
    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    fn lease_until(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        now + millis(self.config.lease_timeout)
    }

    /// Wakes dequeuers, of this node and (see [`crate::multinode`]) of the others: runs
    /// may be available.
    pub(crate) fn runs_became_available(&self) {
        self.runs_available.notify_waiters();
        self.outbox.owe(runnel_store::Signal::RunsAvailable);
    }

    /// Wakes heartbeats, of this node and of the others: held attempts may have ended.
    pub(crate) fn attempts_ended(&self) {
        self.attempts_changed.notify_waiters();
        self.outbox.owe(runnel_store::Signal::AttemptsChanged);
    }

    /// Registers a worker of `environment` and queues the runs that waited for it.
    pub async fn worker_register(
        &self,
        environment: &Environment,
        request: RegisterRequest,
    ) -> Result<Registered, Error> {
        self.worker_register_with_sources(environment, request, &HashMap::new(), false)
            .await
    }

    /// [`Engine::worker_register`], with each task's source file (`sources`, by task id:
    /// a Trigger.dev manifest's `filePath`).
    ///
    /// `whole_project`: the registration lists every task of the project (a
    /// `trigger.dev` manifest), so the declarative schedules of tasks it does not list
    /// are deleted; otherwise only the listed tasks' schedules are synced.
    pub async fn worker_register_with_sources(
        &self,
        environment: &Environment,
        request: RegisterRequest,
        sources: &HashMap<String, String>,
        whole_project: bool,
    ) -> Result<Registered, Error> {
        let invalid = |m: String| Error::Worker(WorkerError::Invalid(m));
        // Characters, not bytes, as the OpenAPI document's `maxLength` counts them.
        let name = request.name.trim();
        if name.is_empty() || request.name.chars().count() > 256 {
            return Err(invalid(
                "name: must be 1 to 256 characters, not all whitespace".into(),
            ));
        }
        if let Some(version) = &request.version {
            if !worker::is_valid_version(version) {
                return Err(invalid(
                    "version: must be 1 to 64 characters of A-Z a-z 0-9 . _ -".into(),
                ));
            }
        }
        if request.tasks.is_empty() {
            return Err(invalid(
                "tasks: a worker must serve at least one task".into(),
            ));
        }
        let mut seen = HashSet::new();
        let mut tasks = Vec::with_capacity(request.tasks.len());
        for (i, task) in request.tasks.iter().enumerate() {
            let field = |f: &str| format!("tasks[{i}].{f}");
            if task.id.is_empty() || task.id.chars().count() > 128 {
                return Err(invalid(format!(
                    "{}: must be 1 to 128 characters",
                    field("id")
                )));
            }
            if !seen.insert(task.id.clone()) {
                return Err(invalid(format!(
                    "{}: {:?} is listed twice",
                    field("id"),
                    task.id
                )));
            }
            if task
                .max_duration
                .is_some_and(|secs| secs > MAX_DURATION_MAX_SECS)
            {
                return Err(invalid(format!(
                    "{}: must be at most {MAX_DURATION_MAX_SECS}",
                    field("maxDuration")
                )));
            }
            if let Some(retry) = &task.retry {
                retry
                    .validate()
                    .map_err(|e| invalid(format!("tasks[{i}].{e}")))?;
            }

            let machine = task
                .machine
                .as_deref()
                .map(|m| m.parse::<MachinePreset>())
                .transpose()
                .map_err(|e| invalid(format!("{}: {e}", field("machine"))))?;
            tasks.push(TaskConfig {
                task_identifier: task.id.clone(),
                queue: task
                    .queue
                    .clone()
                    .unwrap_or_else(|| QueueName::for_task(&task.id).into_string()),
                retry: task.retry,
                // Clamped like a trigger's `maxDuration` (contract §5: 5..2147483647 s).
                max_duration_secs: task.max_duration.map(|secs| secs.max(5)),
                machine,
                file_path: sources.get(&task.id).cloned(),
                scheduled: task.is_scheduled(),
            });
        }
        let declarations = self.queue_declarations(&tasks, &request.queues)?;
        let now = self.clock.now();
        let schedules = self
            .declared_sync(environment, &request.tasks, whole_project, now)
            .map_err(invalid)?;
        let declared = schedules.tasks.iter().filter(|(_, d)| d.is_some()).count();
        let registration = WorkerRegistration {
            id: WorkerId::generate(now.timestamp_millis()),
            environment_id: environment.id.clone(),
            name: name.to_owned(),
            version: request.version,
            tasks,
            schedules,
        };
        let registered = self.store.worker_register(&registration, now).await?;
        self.runs_changed(&registered.promoted);
        // After the commit: a trigger reading the task's queue from now on sees it.
        self.task_queues.forget();
        self.outbox.owe(runnel_store::Signal::WorkersChanged);
        self.store
            .queue_declare(&environment.id, &declarations, now)
            .await?;
        // A changed limit may let waiting runs start.
        self.runs_became_available();
        if declared > 0 || whole_project {
            self.wakes.scheduler.notify_one();
        }
        tracing::info!(
            worker = %registration.id,
            version = %registered.version,
            env = %environment.kind,
            tasks = registration.tasks.len(),
            queued = registered.promoted.len(),
            "worker registered"
        );
        Ok(Registered {
            worker_id: registration.id,
            version: registered.version,
            lease_timeout: self.config.lease_timeout,
        })
    }

    /// The worker `id` of `environment` (cached: a registration never changes).
    pub(crate) async fn worker(
        &self,
        environment: &Environment,
        id: &WorkerId,
    ) -> Result<Arc<WorkerRecord>, Error> {
        let unknown = || Error::Worker(WorkerError::UnknownWorker);
        let cached = self.workers.lock().expect("worker cache").get(id).cloned();
        let record = match cached {
            Some(record) => record,
            None => {
                let record = Arc::new(self.store.worker_get(id).await?.ok_or_else(unknown)?);
                self.workers
                    .lock()
                    .expect("worker cache")
                    .insert(id.clone(), record.clone());
                record
            }
        };
        if record.environment_id != environment.id {
            return Err(unknown());
        }
        Ok(record)
    }

    /// Leases up to `max_runs` runs to the worker, waiting up to `wait_ms` for some:
    /// each run with the new attempt it holds.
    pub async fn worker_dequeue(
        &self,
        environment: &Environment,
        worker_id: &WorkerId,
        max_runs: u32,
        wait_ms: u64,
    ) -> Result<Vec<Leased>, Error> {
        worker::check_max_runs(max_runs).map_err(|m| Error::Worker(WorkerError::Invalid(m)))?;
        let record = self.worker(environment, worker_id).await?;
        let deadline = wait_deadline(wait_ms);
        let leased = long_poll(&self.runs_available, &self.stopping, deadline, || async {
            let now = self.clock.now();
            Ok(self
                .store
                .run_dequeue(&record, max_runs, self.lease_until(now), now)
                .await?)
        })
        .await?;
        self.runs_changed(leased.iter().map(|l| &l.run.id));
        Ok(leased)
    }

    /// Starts the attempts; returns (started, to cancel).
    pub async fn worker_start(
        &self,
        environment: &Environment,
        worker_id: &WorkerId,
        attempt_ids: Vec<AttemptId>,
    ) -> Result<(Vec<AttemptId>, Vec<AttemptId>), Error> {
        check_batch(&attempt_ids)?;
        let record = self.worker(environment, worker_id).await?;
        let now = self.clock.now();
        let grace = i64::try_from(self.config.timeout_grace.as_millis()).unwrap_or(i64::MAX);
        let started = self
            .store
            .attempt_start_runs(
                &record.id,
                &attempt_ids,
                self.lease_until(now),
                grace,
                self.config.pricing.run_fee(environment.kind),
                now,
            )
            .await?;
        if !started.is_empty() {
            // A maxDuration deadline may now be the rescuer's earliest.
            self.wakes.rescuer.notify_one();
        }
        self.runs_changed(started.iter().map(|(_, run)| run));
        let mut started: Vec<AttemptId> = started.into_iter().map(|(a, _)| a).collect();
        if started.len() < attempt_ids.len() {
            // A repeated start (the worker retried a request whose answer it lost) must
            // not tell it to stop attempts it already runs.
            let rest: Vec<AttemptId> = attempt_ids
                .iter()
                .filter(|a| !started.contains(a))
                .cloned()
                .collect();
            for leased in self.store.attempts_held(&rest).await? {
                if leased.run.status == RunStatus::Executing
                    && leased.run.worker_id.as_ref() == Some(&record.id)
                {
                    started.push(leased.attempt.id);
                }
            }
        }
        let started_set: HashSet<&AttemptId> = started.iter().collect();
        let cancel = attempt_ids
            .iter()
            .filter(|a| !started_set.contains(a))
            .cloned()
            .collect();
        Ok((started, cancel))
    }

    /// Extends the leases of the held attempts; returns those the worker must stop,
    /// waiting up to `wait_ms` for one to appear.
    pub async fn worker_heartbeat(
        &self,
        environment: &Environment,
        worker_id: &WorkerId,
        attempt_ids: Vec<AttemptId>,
        wait_ms: u64,
    ) -> Result<Vec<AttemptId>, Error> {
        check_batch(&attempt_ids)?;
        let record = self.worker(environment, worker_id).await?;
        let deadline = wait_deadline(wait_ms);
        let ids = &attempt_ids;
        long_poll(&self.attempts_changed, &self.stopping, deadline, || async {
            let now = self.clock.now();
            let held = self
                .store
                .attempt_heartbeat(&record.id, ids, self.lease_until(now), now)
                .await?;
            let held: HashSet<AttemptId> = held.into_iter().collect();
            Ok(ids
                .iter()
                .filter(|a| !held.contains(*a))
                .cloned()
                .collect::<Vec<_>>())
        })
        .await
    }

    /// Settles reported attempts; each is accepted only while the worker still holds it.
    pub async fn worker_complete(
        &self,
        environment: &Environment,
        worker_id: &WorkerId,
        completions: Vec<Completion>,
    ) -> Result<Vec<Completed>, Error> {
        check_batch(&completions)?;
        let ids: Vec<AttemptId> = completions.iter().map(|c| c.attempt_id.clone()).collect();
        let mut checked = Vec::with_capacity(completions.len());
        for completion in completions {
            checked.push(
                self.stored_output_checked(environment, storable_outcome(completion))
                    .await?,
            );
        }
        let completions = checked;
        let record = self.worker(environment, worker_id).await?;
        let held = self.store.attempts_held(&ids).await?;
        let now = self.clock.now();
        let mut settlements = Vec::new();
        let mut index = Vec::new();
        for (i, completion) in completions.iter().enumerate() {
            let Some(leased) = held.iter().find(|l| l.attempt.id == completion.attempt_id) else {
                continue;
            };
            if leased.run.environment_id != environment.id {
                continue;
            }
            let policy = record
                .task(&leased.run.task_identifier)
                .and_then(|t| t.retry)
                .unwrap_or_default();
            // Refused (another worker holds it, or it is no longer held): not accepted.
            let Ok(mut change) = state::settle(
                &leased.run,
                &leased.attempt,
                &record.id,
                &completion.outcome,
                &self.terms(environment, &leased.run, &policy),
                &mut rand::rng(),
                now,
            ) else {
                continue;
            };
            if let Some(output) = change.output.take() {
                change.output = Some(
                    self.output_settle(environment, output, completion, &leased.run.id)
                        .await?,
                );
            }
            let Some(settlement) = attempt_settlement(&leased.run, change) else {
                continue;
            };
            index.push(i);
            settlements.push(settlement);
        }
        let applied = self.store.attempt_settle(&settlements).await?;
        let applied_copy = applied.clone();
        let mut results: Vec<Completed> = completions
            .into_iter()
            .map(|c| Completed {
                attempt_id: c.attempt_id,
                run_status: None,
            })
            .collect();
        for ((i, settlement), ok) in index.iter().zip(&settlements).zip(applied) {
            if ok {
                results[*i].run_status = Some(settlement.run_status);
                self.after_settle(settlement);
            }
        }
        // A child a parent waits for: its end completes the parent's waitpoint.
        for (settlement, ok) in settlements.iter().zip(applied_copy) {
            let waited_for = held
                .iter()
                .any(|l| l.run.id == settlement.run_id && l.run.resume_parent_on_completion);
            if ok && waited_for && settlement.run_status.is_final() {
                self.run_ended(&settlement.run_id).await?;
            }
        }
        Ok(results)
    }

    /// Logs a settled attempt and wakes whoever can act on its result.
    pub(crate) fn after_settle(&self, settlement: &AttemptSettlement) {
        self.runs_changed(std::iter::once(&settlement.run_id));
        tracing::debug!(
            run = %settlement.run_id,
            attempt = %settlement.attempt_id,
            status = %settlement.run_status,
            "attempt settled"
        );
        // The run no longer holds a slot of its queue's concurrency limit (and may be
        // queued again): a dequeuer waiting on a full queue can go on.
        self.runs_became_available();
        if settlement.run_status == RunStatus::RetryingAfterFailure {
            self.wakes.requeuer.notify_one();
        }
    }

    /// The terms on which attempts of `run` in `environment` end: the task's retry
    /// `policy` and the price of the run's machine there.
    pub(crate) fn terms<'a>(
        &self,
        environment: &Environment,
        run: &Run,
        policy: &'a RetryPolicy,
    ) -> Terms<'a> {
        Terms {
            environment: environment.kind,
            policy,
            cents_per_ms: self.cents_per_ms(environment, run),
            retry: state::RetryHint::Policy,
        }
    }

    /// The price of one ms of compute of `run` in `environment`.
    pub(crate) fn cents_per_ms(&self, environment: &Environment, run: &Run) -> f64 {
        self.config
            .pricing
            .cents_per_ms(environment.kind, run.machine.unwrap_or_default())
    }

    /// Cancels a run of `environment`. `None` when it does not exist there; a run that
    /// already ended is left as it is.
    pub async fn cancel(
        &self,
        environment: &Environment,
        id: &RunId,
    ) -> Result<Option<RunId>, Error> {
        let Some(run) = self.store.run_get(&environment.id, id).await? else {
            return Ok(None);
        };
        let Ok(change) = state::cancel(&run, self.clock.now()) else {
            // Already ended: left as it is.
            return Ok(Some(run.id));
        };
        match self
            .store
            .run_cancel(
                &environment.id,
                id,
                self.cents_per_ms(environment, &run),
                change.at,
            )
            .await?
        {
            CancelOutcome::Canceled { attempt } => {
                self.runs_changed(std::iter::once(id));
                tracing::debug!(run = %id, attempt = attempt.as_ref().map_or("-", AttemptId::as_str), "run canceled");
                if attempt.is_some() {
                    self.attempts_ended();
                    // Its queue has a free slot again.
                    self.runs_became_available();
                }
                // A dev CLI running it sees FINISHED and stops its process; a parent
                // waiting for it resumes with the cancel as the child's error.
                self.dev_run_ended(id).await?;
                self.run_ended(id).await?;
                self.cancel_descendants(environment, id).await?;
                Ok(Some(run.id))
            }
            CancelOutcome::AlreadyFinal(_) => Ok(Some(run.id)),
            CancelOutcome::NotFound => Ok(None),
        }
    }

    pub(crate) async fn environments(&self) -> Result<Vec<Environment>, Error> {
        let mut environments = Vec::new();
        for kind in runnel_core::EnvironmentKind::ALL {
            environments.extend(self.store.environment_get(kind).await?);
        }
        Ok(environments)
    }
}

/// The store's input for a change that ends a held attempt (settle, rescue); `None` for
/// one that does not.
pub(crate) fn attempt_settlement(run: &Run, change: Change) -> Option<AttemptSettlement> {
    let end = change.attempt?;
    let claim = match end.claim? {
        state::Claim::Worker(worker) => Claim::Worker(worker),
        state::Claim::LeaseExpired(at) => Claim::LeaseExpired(at),
        state::Claim::TimedOut(at) => Claim::TimedOut(at),
    };
    let charge = end.charge.unwrap_or_default();
    Some(AttemptSettlement {
        run_id: run.id.clone(),
        attempt_id: end.attempt,
        claim,
        attempt_status: end.status,
        attempt_error: end.error,
        run_status: change.to,
        run_error: change.error,
        output: change.output,
        next_attempt_at: change.next_attempt_at,
        spends_attempt: end.spends_attempt,
        duration_ms: charge.duration_ms,
        cost_in_cents: charge.cost_in_cents,
        now: change.at,
    })
}

fn check_batch<T>(ids: &[T]) -> Result<(), Error> {
    worker::check_batch(ids.len()).map_err(|m| Error::Worker(WorkerError::Invalid(m)))
}

/// A success whose output could not be handed out again fails its attempt instead.
///
/// Stored outputs are served again (retrieve, result) and must parse again, so they nest
/// at most [`nesting::MAX_VALUE_DEPTH`] levels. One such output fails only its own
/// attempt (as the task's failure, retried by its policy): refusing the whole report
/// would drop the other attempts a worker reported with it.
fn storable_outcome(completion: Completion) -> Completion {
    let AttemptOutcome::Success { output } = &completion.outcome else {
        return completion;
    };
    match nesting::check_value(output, nesting::MAX_VALUE_DEPTH) {
        Ok(()) => completion,
        Err(too_deep) => Completion {
            attempt_id: completion.attempt_id,
            outcome: AttemptOutcome::Failure {
                error: TaskFailure::new(FailureKind::TaskFailed, format!("output: {too_deep}")),
            },
            output_type: None,
        },
    }
}

impl Engine {
    /// A success whose output the worker stored itself (`outputType`
    /// `application/store`) must name an object that exists; otherwise its attempt fails
    /// (as [`storable_outcome`] does), naming the path.
    async fn stored_output_checked(
        &self,
        environment: &Environment,
        completion: Completion,
    ) -> Result<Completion, Error> {
        if completion.output_type.as_deref() != Some(Packet::STORE) {
            return Ok(completion);
        }
        let AttemptOutcome::Success { output } = &completion.outcome else {
            return Ok(completion);
        };
        let refused = match output.as_str() {
            None => Some(
                "output: must be a storage path (a string) when outputType is application/store"
                    .to_owned(),
            ),
            Some(path) => match runnel_core::packets::path_check(path) {
                Err(m) => Some(format!("output: the storage path {m}")),
                Ok(()) if !self.blobs().exists(environment, path).await? => {
                    Some(format!("output: no object is stored at {path}"))
                }
                Ok(()) => None,
            },
        };
        Ok(match refused {
            None => completion,
            Some(message) => Completion {
                attempt_id: completion.attempt_id,
                outcome: AttemptOutcome::Failure {
                    error: TaskFailure::new(FailureKind::TaskFailed, message),
                },
                output_type: None,
            },
        })
    }

    /// The output a success stores: the worker's own storage path as is, else the JSON
    /// output, offloaded to `<runId>/output-<attemptId>.json` when at or over the
    /// threshold.
    async fn output_settle(
        &self,
        environment: &Environment,
        output: Packet,
        completion: &Completion,
        run: &RunId,
    ) -> Result<Packet, Error> {
        if completion.output_type.as_deref() == Some(Packet::STORE) {
            if let AttemptOutcome::Success {
                output: serde_json::Value::String(path),
            } = &completion.outcome
            {
                return Ok(Packet {
                    data: Some(path.clone()),
                    data_type: Packet::STORE.to_owned(),
                });
            }
        }
        Ok(self
            .output_offload(environment, output, || {
                runnel_core::packets::output_path(run, &completion.attempt_id)
            })
            .await?)
    }
}
