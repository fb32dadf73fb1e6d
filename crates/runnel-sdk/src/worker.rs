//! The worker runtime: drives the worker protocol for an [`Executor`].
//!
//! ```text
//!              register (tasks, version)
//!                         │
//!   ┌─────── dequeue loop ▼─────────────┐     heartbeat loop            reporter
//!   │ wait for a free slot              │     long poll with the held   batches completions
//!   │ long-poll dequeue (maxRuns = free)│     attempt ids; `cancel` ──► as they arrive,
//!   │ start (one request)               │     stop(Canceled)            retries transient
//!   │ spawn one attempt task per started│                               failures
//!   └──────────────┬────────────────────┘          ▲                        ▲
//!                  ▼                                │ held set               │ completion
//!   attempt task: hold ─► execute ◄─ stop (cancel, maxDuration, shutdown) ──┘
//! ```
//!
//! Invariants:
//! - A dequeue request, once sent, is always awaited: its runs are leased to this worker,
//!   and dropping the request would leave them with nobody until their lease expires.
//!   Shutdown therefore waits for the dequeue in flight (at most `dequeue_wait`) and runs
//!   what it brought. The one exception is a stop-now ([`Worker::run_until`]): it drops
//!   the dequeue in flight at once (and a start still unanswered
//!   [`STOP_NOW_REPORT_WITHIN`] later), and the server puts those runs back in the queue
//!   when their leases run out (nothing is lost, it only waits).
//! - An attempt is *held* from just before it is spawned until its completion was sent
//!   (or it was canceled): every heartbeat carries the held ids, so the server keeps their
//!   leases alive while they run and while their completion is on its way.
//! - A stopped attempt is reported by its stop reason, never by what the executor
//!   returned after the stop; a canceled one is not reported at all (the server already
//!   ended it).
//!
//! - A finished attempt keeps its concurrency slot, and stays held (heartbeated), until
//!   the server has answered its completion: a worker whose reports are stuck takes no
//!   new work beyond its concurrency.
//!
//! - An attempt's payload in object storage is downloaded before its task starts, and a
//!   success's output of [`crate::packets::OFFLOAD_THRESHOLD_BYTES`] or more is uploaded before it is
//!   reported ([`crate::packets`]); both run inside the attempt, under its stop race.
//!
//! Failures: errors talking to the server are retried with a capped, jittered backoff;
//! only a refused registration ends [`Worker::run`] with an error. Completions, starts
//! and heartbeats are retried until the server answers, however long it is away: a
//! restarted server gives live workers one lease timeout before it rescues their leases
//! (its start-up grace), and the retry delay is capped well under that
//! (a quarter of the lease timeout, at most 5 s), so a worker that finished while the server was down gets its work
//! accepted instead of seeing it run again. Only a shutdown bounds them: once it
//! begins, completions (and a start) still unanswered when the shutdown grace is over
//! are dropped and logged; the server rescues those runs when their leases run out,
//! and they may run again.
//!
//! Shutdown has two steps. `shutdown` resolving stops the dequeues and gives running
//! attempts the grace period; `stop_now` resolving (a second Ctrl-C) stops them at once,
//! reports them as interrupted (the server ends an interrupted dev run `Interrupted` and
//! puts any other back in the queue without counting the attempt) and returns within
//! [`STOP_NOW_REPORT_WITHIN`].

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use rand::Rng;
use runnel_core::worker::{
    AttemptCompletion, AttemptOutcome, CompleteRequest, DequeueRequest, DequeuedRun, FailureKind,
    HeartbeatRequest, QueueDefinition, RegisterRequest, RegisterResponse, StartRequest,
    TaskFailure, MAX_BATCH, MAX_DEQUEUE_BATCH, MAX_WAIT_MS,
};
use serde_json::Value;
use tokio::sync::{mpsc, watch, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::{JoinError, JoinHandle, JoinSet};
use tokio::time::Instant;
use tracing::{debug, error, info, warn, Instrument};

use crate::client::{Client, Error};
use crate::envvars::EnvVarsCache;
use crate::executor::{Executor, StopHandle, StopReason, StopSignal};
use crate::packets::{oversized_json, STORE_TYPE};
use crate::tasks::panic_message;

/// Attempts run at once when [`WorkerOptions`] does not say.
pub const CONCURRENCY_DEFAULT: usize = 10;
/// How long running attempts may finish after shutdown begins.
pub const SHUTDOWN_GRACE_DEFAULT: Duration = Duration::from_secs(30);
/// How long one dequeue long poll waits for runs. A run arriving meanwhile is answered at
/// once, so this does not delay runs; it bounds how long a shutdown of an idle worker
/// waits for the dequeue in flight (which must not be dropped), against one request per
/// wait while idle.
pub const DEQUEUE_WAIT_DEFAULT: Duration = Duration::from_secs(5);
/// First delay before retrying a failed call; it doubles up to the cap ([`retry_cap`]).
const BACKOFF_MIN: Duration = Duration::from_millis(200);
/// The longest delay between two retries: a restarted server is found within this.
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// The retry delay is capped at this fraction of the lease timeout, so a restarted
/// server hears from its live workers well within its start-up grace (one lease timeout).
const BACKOFF_LEASE_DIVISOR: u32 = 4;
/// How long an executor has to return after being told to stop, before the runtime
/// abandons it and reports the stop anyway.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// After a stop-now (see [`Worker::run_until`]), how long the worker may still take to
/// report the attempts it interrupted (and to end a dequeue or start in flight) before it
/// gives up on them; the server rescues what was not reported once its leases run out.
pub const STOP_NOW_REPORT_WITHIN: Duration = Duration::from_secs(2);
/// A heartbeat in flight is replaced to cover a newly started attempt (so its cancel
/// arrives fast), but not sooner than this after it was sent: under a stream of short
/// attempts, heartbeats stay a few per second.
const HEARTBEAT_RESTART_MIN: Duration = Duration::from_millis(200);
/// Lower bound of the heartbeat interval, whatever the server says.
const HEARTBEAT_INTERVAL_MIN: Duration = Duration::from_millis(200);

/// How a [`Worker`] runs.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerOptions {
    /// A name for operators (shown by the server); defaults to host name and process id.
    pub name: String,
    /// The version this worker serves; the server assigns `YYYYMMDD.N` when `None`.
    pub version: Option<String>,
    /// The most attempts running at once (at least 1).
    pub concurrency: usize,
    /// After shutdown begins, how long running attempts may finish before they are
    /// stopped and reported as interrupted. It also bounds the retries of completions
    /// (and a start) the server has not answered: past it they are dropped and logged.
    pub shutdown_grace: Duration,
    /// How long one dequeue long poll waits (at most 30 s). Shorter makes shutdown
    /// faster when idle, at the price of more requests.
    pub dequeue_wait: Duration,
}

impl WorkerOptions {
    /// Defaults with this name.
    pub fn new(name: impl Into<String>) -> WorkerOptions {
        WorkerOptions {
            name: name.into(),
            ..WorkerOptions::default()
        }
    }
}

impl Default for WorkerOptions {
    fn default() -> Self {
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "worker".to_owned());
        WorkerOptions {
            name: format!("{host}-{}", std::process::id()),
            version: None,
            concurrency: CONCURRENCY_DEFAULT,
            shutdown_grace: SHUTDOWN_GRACE_DEFAULT,
            dequeue_wait: DEQUEUE_WAIT_DEFAULT,
        }
    }
}

/// What a worker did, returned when it stops.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkerSummary {
    /// `None` when shutdown came before the server accepted the registration.
    pub worker_id: Option<String>,
    pub version: Option<String>,
    /// Attempts reported as succeeded.
    pub succeeded: u64,
    /// Attempts reported as failed (task errors, crashes, timeouts, system failures).
    pub failed: u64,
    /// Attempts stopped by the shutdown and reported as interrupted.
    pub interrupted: u64,
    /// Attempts stopped because the server canceled them (not reported).
    pub canceled: u64,
}

/// Runs attempts from a Runnel server with an [`Executor`] until shut down.
#[derive(Debug)]
pub struct Worker {
    client: Client,
    options: WorkerOptions,
    queues: Vec<QueueDefinition>,
}

impl Worker {
    pub fn new(client: Client, options: WorkerOptions) -> Worker {
        Worker {
            client,
            options,
            queues: Vec::new(),
        }
    }

    /// Declares queues with a concurrency limit at registration (tasks name theirs with
    /// [`crate::tasks::Task::queue`]; a task's own queue is `task/<id>`).
    pub fn with_queues(mut self, queues: Vec<QueueDefinition>) -> Worker {
        self.queues = queues;
        self
    }

    /// Registers the executor's tasks, then executes runs until `shutdown` resolves (e.g.
    /// on Ctrl-C); returns once every attempt has ended and been reported.
    ///
    /// Fails only when the server refuses the registration (bad key, invalid task
    /// definition); connection problems are retried. A shutdown before the registration
    /// succeeded returns an empty summary.
    pub async fn run<E, S>(self, executor: Arc<E>, shutdown: S) -> Result<WorkerSummary, Error>
    where
        E: Executor + ?Sized,
        S: Future<Output = ()>,
    {
        self.run_until(executor, shutdown, std::future::pending())
            .await
    }

    /// Like [`Worker::run`], with a second future that ends the shutdown early (a second
    /// Ctrl-C): once `stop_now` resolves, running attempts are stopped at once and
    /// reported as interrupted, and the worker returns within
    /// [`STOP_NOW_REPORT_WITHIN`] whatever the server does.
    pub async fn run_until<E, S, N>(
        self,
        executor: Arc<E>,
        shutdown: S,
        stop_now: N,
    ) -> Result<WorkerSummary, Error>
    where
        E: Executor + ?Sized,
        S: Future<Output = ()>,
        N: Future<Output = ()>,
    {
        tokio::pin!(shutdown);
        // Dropping a registration in flight is harmless: nothing is leased to a worker
        // that never dequeued.
        let registered = tokio::select! {
            registered = self.register(executor) => registered?,
            () = &mut shutdown => return Ok(WorkerSummary::default()),
        };
        Ok(registered.run_until(shutdown, stop_now).await)
    }

    /// Registers the executor's tasks (retrying connection problems and server errors
    /// until the server answers), without executing anything yet: for callers that want
    /// the worker id and version, or to know runs of these tasks are now queued, before
    /// [`RegisteredWorker::run`].
    pub async fn register<E>(self, executor: Arc<E>) -> Result<RegisteredWorker<E>, Error>
    where
        E: Executor + ?Sized,
    {
        let Worker {
            client,
            options,
            queues,
        } = self;
        let request = RegisterRequest {
            name: options.name.clone(),
            version: options.version.clone(),
            tasks: executor.tasks(),
            queues,
        };
        let mut backoff = Backoff::new(BACKOFF_MAX);
        let registration = loop {
            match client.register(&request).await {
                Ok(registration) => break registration,
                Err(error) if error.is_transient() => {
                    let delay = backoff.next_delay();
                    warn!(%error, retry_in = ?delay, "could not register; retrying");
                    tokio::time::sleep(delay).await;
                }
                Err(error) => return Err(error),
            }
        };
        info!(
            worker_id = %registration.worker_id,
            version = %registration.version,
            tasks = request.tasks.len(),
            concurrency = options.concurrency,
            "worker registered"
        );
        Ok(RegisteredWorker {
            client,
            options,
            known: request.tasks.into_iter().map(|task| task.id).collect(),
            executor,
            registration,
        })
    }
}

/// A worker the server accepted, ready to execute runs.
pub struct RegisteredWorker<E: ?Sized> {
    client: Client,
    options: WorkerOptions,
    /// The registered task identifiers.
    known: HashSet<String>,
    executor: Arc<E>,
    registration: RegisterResponse,
}

impl<E: ?Sized> fmt::Debug for RegisteredWorker<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegisteredWorker")
            .field("registration", &self.registration)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl<E: Executor + ?Sized> RegisteredWorker<E> {
    pub fn worker_id(&self) -> &str {
        &self.registration.worker_id
    }

    /// The version the server registered (the one asked for, or `YYYYMMDD.N`).
    pub fn version(&self) -> &str {
        &self.registration.version
    }

    /// Executes runs until `shutdown` resolves; returns once every attempt has ended
    /// and been reported.
    pub async fn run<S: Future<Output = ()>>(self, shutdown: S) -> WorkerSummary {
        self.run_until(shutdown, std::future::pending()).await
    }

    /// Like [`RegisteredWorker::run`], with a second future that ends the shutdown early
    /// (see [`Worker::run_until`]). A `stop_now` that resolves first also begins the
    /// shutdown.
    pub async fn run_until<S, N>(self, shutdown: S, stop_now: N) -> WorkerSummary
    where
        S: Future<Output = ()>,
        N: Future<Output = ()>,
    {
        let (phase_tx, phase) = watch::channel(Phase::Running);
        let phases = async move {
            tokio::pin!(shutdown, stop_now);
            tokio::select! {
                () = &mut shutdown => {
                    phase_tx.send_replace(Phase::Graceful);
                    stop_now.await;
                }
                () = &mut stop_now => {}
            }
            phase_tx.send_replace(Phase::Now);
            std::future::pending::<Infallible>().await
        };
        tokio::select! {
            summary = self.drive(phase) => summary,
            never = phases => match never {},
        }
    }

    async fn drive(self, phase: watch::Receiver<Phase>) -> WorkerSummary {
        let RegisteredWorker {
            client,
            options,
            known,
            executor,
            registration,
        } = self;
        let known = Arc::new(known);
        let RegisterResponse {
            worker_id,
            version,
            lease_timeout_ms,
            heartbeat_interval_ms,
        } = registration;

        let shared = Arc::new(Shared {
            client,
            worker_id: worker_id.clone(),
            held: Mutex::new(Held::default()),
            added: Notify::new(),
            counts: Counts::default(),
            retry_cap: retry_cap(Duration::from_millis(lease_timeout_ms)),
            give_up_at: watch::channel(None).0,
            env_vars: EnvVarsCache::new(),
        });
        let heartbeat_interval = Duration::from_millis(heartbeat_interval_ms)
            .clamp(HEARTBEAT_INTERVAL_MIN, Duration::from_millis(MAX_WAIT_MS));
        let heartbeats = AbortOnDrop(tokio::spawn(
            heartbeat_loop(shared.clone(), heartbeat_interval).in_current_span(),
        ));
        let (completions, pending) = mpsc::unbounded_channel();
        let reporter = AbortOnDrop(tokio::spawn(
            report_loop(shared.clone(), pending).in_current_span(),
        ));

        let slots = Arc::new(Semaphore::new(options.concurrency.max(1)));
        let wait_ms = u64::try_from(options.dequeue_wait.as_millis())
            .unwrap_or(MAX_WAIT_MS)
            .min(MAX_WAIT_MS);
        let mut attempts = JoinSet::new();
        let mut backoff = Backoff::new(shared.retry_cap);
        let begin_shutdown = || shared.begin_shutdown(options.shutdown_grace);
        loop {
            while let Some(ended) = attempts.try_join_next() {
                log_attempt_task_end(ended);
            }
            let first = tokio::select! {
                biased;
                () = reached(&phase, Phase::Graceful) => {
                    begin_shutdown();
                    None
                }
                permit = slots.clone().acquire_owned() => permit.ok(),
            };
            let Some(first) = first else {
                break;
            };
            let mut permits = vec![first];
            while permits.len() < MAX_DEQUEUE_BATCH as usize {
                match slots.clone().try_acquire_owned() {
                    Ok(permit) => permits.push(permit),
                    Err(_) => break,
                }
            }
            let request = DequeueRequest {
                max_runs: permits.len() as u32,
                wait_ms,
            };
            let dequeue = shared.client.dequeue(&worker_id, &request);
            tokio::pin!(dequeue);
            let mut stopping = false;
            let sent_at = Instant::now();
            let reply = tokio::select! {
                reply = &mut dequeue => reply,
                () = reached(&phase, Phase::Graceful) => {
                    stopping = true;
                    begin_shutdown();
                    info!(
                        at_most = ?options.dequeue_wait,
                        "shutting down: waiting for the dequeue in flight"
                    );
                    // Not even the stop-now bound: an idle long poll would use all of it.
                    tokio::select! {
                        reply = &mut dequeue => reply,
                        () = reached(&phase, Phase::Now) => {
                            shared.stop_now();
                            warn!(
                                "stopping now: the dequeue in flight is dropped; runs it \
                                 leased go back to the queue when their leases run out"
                            );
                            break;
                        }
                    }
                }
            };
            match reply {
                Ok(reply) if reply.runs.is_empty() => {
                    drop(permits);
                    // A stopping server answers long polls at once; asking again at once
                    // would spin until it is gone.
                    if !stopping && sent_at.elapsed() < options.dequeue_wait / 2 {
                        tokio::select! {
                            () = tokio::time::sleep(backoff.next_delay()) => {}
                            () = reached(&phase, Phase::Graceful) => {
                                begin_shutdown();
                                break;
                            }
                        }
                    } else {
                        backoff.reset();
                    }
                }
                Ok(reply) => {
                    backoff.reset();
                    let start = start_runs(
                        &shared,
                        &executor,
                        &known,
                        &completions,
                        &mut attempts,
                        reply.runs,
                        permits,
                    );
                    tokio::pin!(start);
                    // A start retried while the server is away must not hold up a
                    // shutdown beyond its grace, nor a stop-now beyond its bound.
                    let started = !stopping
                        && tokio::select! {
                            () = &mut start => true,
                            () = reached(&phase, Phase::Graceful) => {
                                stopping = true;
                                begin_shutdown();
                                false
                            }
                        };
                    if !started
                        && until_stop_now_deadline(&shared, &phase, start)
                            .await
                            .is_none()
                    {
                        warn!(
                            "stopping now: the start in flight is dropped; the server \
                             rescues its runs when their leases run out"
                        );
                    }
                }
                Err(error) => {
                    drop(permits);
                    if stopping {
                        warn!(%error, "dequeue failed");
                        break;
                    }
                    let delay = backoff.next_delay();
                    warn!(%error, retry_in = ?delay, "dequeue failed; retrying");
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        () = reached(&phase, Phase::Graceful) => {
                            begin_shutdown();
                            break;
                        }
                    }
                }
            }
            if stopping {
                break;
            }
        }

        // Shutdown: no more dequeues. Running attempts get the grace period.
        if !attempts.is_empty() {
            info!(
                running = attempts.len(),
                grace = ?options.shutdown_grace,
                "shutting down: waiting for running attempts"
            );
        }
        let drained = tokio::select! {
            drained = tokio::time::timeout(options.shutdown_grace, drain(&mut attempts)) => {
                drained.is_ok()
            }
            () = reached(&phase, Phase::Now) => false,
        };
        if !drained {
            let stopped = shared.held().stop_all(StopReason::Shutdown);
            if *phase.borrow() == Phase::Now {
                warn!(stopped, "stopping now: interrupting the running attempts");
            } else {
                warn!(
                    stopped,
                    "shutdown grace period over: stopping the remaining attempts"
                );
            }
            if until_stop_now_deadline(&shared, &phase, drain(&mut attempts))
                .await
                .is_none()
            {
                warn!(
                    running = attempts.len(),
                    "stopping now: abandoning attempts whose executor did not return"
                );
                attempts.abort_all();
            }
        }
        // Every attempt task has ended; the reporter ends once it sent what they queued,
        // or once the shutdown grace (or the stop-now bound) is over (see
        // `until_answered`).
        drop(completions);
        match until_stop_now_deadline(&shared, &phase, reporter).await {
            Some(Ok(())) => {}
            Some(Err(error)) => error!(%error, "the completion reporter failed"),
            None => warn!(
                "stopping now: completions not yet answered are dropped; the server \
                 rescues their runs when their leases run out"
            ),
        }
        drop(heartbeats);

        let counts = &shared.counts;
        let summary = WorkerSummary {
            worker_id: Some(worker_id),
            version: Some(version),
            succeeded: counts.succeeded.load(Ordering::Relaxed),
            failed: counts.failed.load(Ordering::Relaxed),
            interrupted: counts.interrupted.load(Ordering::Relaxed),
            canceled: counts.canceled.load(Ordering::Relaxed),
        };
        info!(
            succeeded = summary.succeeded,
            failed = summary.failed,
            interrupted = summary.interrupted,
            canceled = summary.canceled,
            "worker stopped"
        );
        summary
    }
}

/// State shared by the dequeue loop, the attempt tasks, the heartbeat loop and the
/// reporter.
struct Shared {
    client: Client,
    worker_id: String,
    held: Mutex<Held>,
    /// Signaled when an attempt becomes held, so the heartbeat loop covers it quickly.
    added: Notify,
    counts: Counts,
    /// The longest delay between two retries of a call.
    retry_cap: Duration,
    /// `None` while running: calls are retried until the server answers. Once shutdown
    /// begins, the end of its grace: unanswered calls are given up then.
    give_up_at: watch::Sender<Option<Instant>>,
    /// The environment's variables, read again every few seconds (`envvars.rs`).
    env_vars: EnvVarsCache,
}

impl Shared {
    fn held(&self) -> MutexGuard<'_, Held> {
        // A panic while holding this lock cannot leave the map inconsistent (every
        // operation is a single insert, remove or read), so a poisoned lock is still usable.
        self.held
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn hold(&self, attempt_id: &str, handle: Arc<StopHandle>) {
        self.held().insert(attempt_id, handle);
        self.added.notify_one();
    }

    /// Ends the shutdown now: every held attempt (and any started later) is stopped, and
    /// retries give up within [`STOP_NOW_REPORT_WITHIN`].
    fn stop_now(&self) {
        let give_up_at = Instant::now() + STOP_NOW_REPORT_WITHIN;
        self.give_up_at.send_if_modified(|current| match *current {
            Some(current) if current <= give_up_at => false,
            _ => {
                *current = Some(give_up_at);
                true
            }
        });
        self.held().stop_now();
    }

    /// Bounds every retry from now on by the shutdown grace (the first call counts).
    fn begin_shutdown(&self, grace: Duration) {
        self.give_up_at.send_if_modified(|give_up_at| {
            if give_up_at.is_some() {
                return false;
            }
            *give_up_at = Some(Instant::now() + grace);
            true
        });
    }
}

/// The attempts this worker holds, with their stop handles.
#[derive(Default)]
struct Held {
    attempts: HashMap<String, Arc<StopHandle>>,
    /// Counts insertions, so the heartbeat loop can tell whether its poll covers them all.
    generation: u64,
    /// Set by a stop-now: an attempt held from then on is stopped as it is inserted.
    stopping_now: bool,
}

impl Held {
    fn insert(&mut self, attempt_id: &str, handle: Arc<StopHandle>) {
        if self.stopping_now {
            handle.stop(StopReason::Shutdown);
        }
        self.attempts.insert(attempt_id.to_owned(), handle);
        self.generation += 1;
    }

    fn remove(&mut self, attempt_id: &str) {
        self.attempts.remove(attempt_id);
    }

    /// The ids to heartbeat, and the generation they reflect. Canceled attempts are left
    /// out: the server already ended them, and naming them would only make it answer
    /// `cancel` again at once.
    fn heartbeat_ids(&self) -> (Vec<String>, u64) {
        let mut ids: Vec<String> = self
            .attempts
            .iter()
            .filter(|(_, handle)| handle.reason() != Some(StopReason::Canceled))
            .map(|(id, _)| id.clone())
            .collect();
        ids.sort_unstable();
        (ids, self.generation)
    }

    fn stop(&self, attempt_id: &str, reason: StopReason) -> bool {
        match self.attempts.get(attempt_id) {
            Some(handle) => {
                handle.stop(reason);
                true
            }
            None => false,
        }
    }

    /// Stops every held attempt, and every one held from now on, as a shutdown.
    fn stop_now(&mut self) {
        self.stopping_now = true;
        self.stop_all(StopReason::Shutdown);
    }

    /// Stops every held attempt; answers how many.
    fn stop_all(&self, reason: StopReason) -> usize {
        for handle in self.attempts.values() {
            handle.stop(reason);
        }
        self.attempts.len()
    }
}

#[derive(Default)]
struct Counts {
    succeeded: AtomicU64,
    failed: AtomicU64,
    interrupted: AtomicU64,
    canceled: AtomicU64,
}

/// Starts the dequeued attempts in one request and spawns a task for each one the server
/// started. Runs not started (canceled meanwhile) are left alone, and their slots freed.
async fn start_runs<E: Executor + ?Sized>(
    shared: &Arc<Shared>,
    executor: &Arc<E>,
    known: &Arc<HashSet<String>>,
    completions: &mpsc::UnboundedSender<Pending>,
    attempts: &mut JoinSet<()>,
    mut runs: Vec<DequeuedRun>,
    permits: Vec<OwnedSemaphorePermit>,
) {
    if runs.len() > permits.len() {
        // The server broke `maxRuns`; running the extra ones would break `concurrency`.
        // Leaving them unstarted lets the server rescue them.
        error!(
            asked = permits.len(),
            got = runs.len(),
            "the server sent more runs than asked for; leaving the extra ones unstarted"
        );
        runs.truncate(permits.len());
    }
    let request = StartRequest {
        attempt_ids: runs.iter().map(|run| run.attempt_id.clone()).collect(),
    };
    let reply = until_answered("start", shared, || {
        shared.client.start(&shared.worker_id, &request)
    })
    .await;
    let reply = match reply {
        Ok(reply) => reply,
        Err(error) => {
            error!(
                %error,
                attempts = request.attempt_ids.len(),
                "could not start dequeued attempts; the server will rescue them"
            );
            return;
        }
    };
    for attempt_id in &reply.cancel {
        debug!(%attempt_id, "the server canceled the attempt before it started");
    }
    let started: HashSet<&str> = reply.started.iter().map(String::as_str).collect();
    for (run, permit) in runs.into_iter().zip(permits) {
        if !started.contains(run.attempt_id.as_str()) {
            continue;
        }
        let (handle, signal) = StopSignal::channel();
        let handle = Arc::new(handle);
        shared.hold(&run.attempt_id, handle.clone());
        let span = tracing::info_span!(
            "attempt",
            run_id = %run.run_id,
            attempt_id = %run.attempt_id,
            task = %run.task_identifier,
        );
        let attempt = Attempt {
            shared: shared.clone(),
            known: known.clone(),
            completions: completions.clone(),
            handle,
            signal,
            permit,
        };
        attempts.spawn(attempt.run(executor.clone(), run).instrument(span));
    }
}

/// One started attempt: everything its task needs.
struct Attempt {
    shared: Arc<Shared>,
    known: Arc<HashSet<String>>,
    completions: mpsc::UnboundedSender<Pending>,
    handle: Arc<StopHandle>,
    signal: StopSignal,
    /// The concurrency slot: freed when a canceled attempt ends, else handed on with the
    /// completion and freed once the server answered it.
    permit: OwnedSemaphorePermit,
}

/// A completion on its way to the server, with the concurrency slot it keeps taken.
struct Pending {
    completion: AttemptCompletion,
    permit: OwnedSemaphorePermit,
}

impl Attempt {
    async fn run<E: Executor + ?Sized>(self, executor: Arc<E>, run: DequeuedRun) {
        let attempt_id = run.attempt_id.clone();
        let max_duration = run.max_duration_secs;
        debug!(attempt = run.attempt_number, "attempt started");
        let (outcome, output_type) = if self.known.contains(&run.task_identifier) {
            match self.execute(executor, run).await {
                Some((outcome, output_type)) => (Some(outcome), output_type),
                None => (None, None),
            }
        } else {
            let outcome = Some(AttemptOutcome::Failure {
                error: TaskFailure::new(
                    FailureKind::SystemFailure,
                    format!(
                        "task {:?} is not registered by this worker",
                        run.task_identifier
                    ),
                ),
            });
            (outcome, None)
        };
        // The stop reason, not what the executor returned after it, decides the report.
        let (outcome, output_type) = match self.handle.reason() {
            Some(reason) => (reason.report(max_duration), None),
            None => (outcome, output_type),
        };
        let counts = &self.shared.counts;
        let Some(outcome) = outcome else {
            debug!("attempt canceled");
            counts.canceled.fetch_add(1, Ordering::Relaxed);
            self.shared.held().remove(&attempt_id);
            return;
        };
        match &outcome {
            AttemptOutcome::Success { .. } => {
                debug!("attempt succeeded");
                counts.succeeded.fetch_add(1, Ordering::Relaxed);
            }
            AttemptOutcome::Failure { error } => {
                debug!(kind = ?error.kind, message = %error.message, "attempt failed");
                let count = if error.kind == FailureKind::Interrupted {
                    &counts.interrupted
                } else {
                    &counts.failed
                };
                count.fetch_add(1, Ordering::Relaxed);
            }
        }
        let pending = Pending {
            completion: AttemptCompletion {
                attempt_id: attempt_id.clone(),
                outcome,
                output_type,
            },
            permit: self.permit,
        };
        if self.completions.send(pending).is_err() {
            // Only possible if the reporter died; the server rescues the run.
            error!("the completion reporter is gone; the attempt is not reported");
            self.shared.held().remove(&attempt_id);
        }
    }

    /// Runs the executor, racing it against `maxDuration` and stop requests. `None` when
    /// it had to be abandoned after a stop (the stop reason is then reported). A payload
    /// in object storage is downloaded first and a large output uploaded after (see
    /// [`crate::packets`]), within the same race; the second value is the completion's
    /// `outputType` (`application/store` for an uploaded output).
    async fn execute<E: Executor + ?Sized>(
        &self,
        executor: Arc<E>,
        run: DequeuedRun,
    ) -> Option<(AttemptOutcome, Option<String>)> {
        let limit = run
            .max_duration_secs
            .map(|secs| Duration::from_secs(u64::from(secs)));
        let env_vars = match self.shared.env_vars.get(&self.shared.client).await {
            Ok(env_vars) => env_vars,
            Err(error) => {
                return Some((
                    AttemptOutcome::failure(
                        FailureKind::TaskFailed,
                        format!("could not read the environment's variables: {error}"),
                    ),
                    None,
                ))
            }
        };
        let signal = self.signal.clone();
        let client = self.shared.client.clone();
        let mut execution = AbortOnDrop(tokio::spawn(
            async move {
                let (run_id, attempt_id) = (run.run_id.clone(), run.attempt_id.clone());
                let run = match load_payload(&client, run).await {
                    Ok(run) => run,
                    Err(failure) => return (failure, None),
                };
                let outcome = executor
                    .execute_with_env(run, signal, &client, env_vars)
                    .await;
                store_output(&client, &run_id, &attempt_id, outcome).await
            }
            .in_current_span(),
        ));
        let mut watcher = self.signal.clone();
        let ended = tokio::select! {
            ended = &mut execution => Some(ended),
            () = sleep_for(limit) => {
                self.handle.stop(StopReason::TimedOut);
                None
            }
            _ = watcher.stopped() => None,
        };
        let ended = match ended {
            Some(ended) => ended,
            None => match tokio::time::timeout(STOP_TIMEOUT, &mut execution).await {
                Ok(ended) => ended,
                Err(_) => {
                    warn!(
                        after = ?STOP_TIMEOUT,
                        "the executor did not return after being stopped; abandoning it"
                    );
                    return None;
                }
            },
        };
        match ended {
            Ok(ended) => Some(ended),
            Err(error) if error.is_panic() => Some((
                AttemptOutcome::failure(
                    FailureKind::Crashed,
                    format!(
                        "the executor panicked: {}",
                        panic_message(error.into_panic())
                    ),
                ),
                None,
            )),
            Err(_) => Some((
                AttemptOutcome::failure(FailureKind::Crashed, "the executor was cancelled"),
                None,
            )),
        }
    }
}

/// The run with its payload in hand: a payload in object storage (`application/store`,
/// the payload its storage path) is downloaded, from `payloadPresignedUrl` or else
/// through `GET /api/v1/packets/{path}`, and decoded by its content type; the task then
/// sees it as `application/json`. A failed download fails the attempt (`TaskFailed`, so
/// it is retried) before the task starts.
async fn load_payload(
    client: &Client,
    mut run: DequeuedRun,
) -> Result<DequeuedRun, AttemptOutcome> {
    if run.payload_type != STORE_TYPE {
        return Ok(run);
    }
    let Some(path) = run.payload.as_str().map(str::to_owned) else {
        return Err(AttemptOutcome::failure(
            FailureKind::SystemFailure,
            "the payload type is application/store but the payload is not a storage path",
        ));
    };
    match client
        .packet_value(&path, run.payload_presigned_url.as_deref())
        .await
    {
        Ok(payload) => {
            debug!(packet = %path, "payload downloaded from object storage");
            run.payload = payload;
            run.payload_type = "application/json".to_owned();
            run.payload_presigned_url = None;
            Ok(run)
        }
        Err(error) => Err(AttemptOutcome::failure(
            FailureKind::TaskFailed,
            format!("could not download the payload from object storage: {error}"),
        )),
    }
}

/// A success whose output's JSON is [`crate::packets::OFFLOAD_THRESHOLD_BYTES`] or more is uploaded to
/// `{runId}/output-{attemptId}.json` and reported by its storage path with the output
/// type `application/store`. If the upload fails the attempt fails (`TaskFailed`,
/// retried): sending the output inline instead would put a large value where the server
/// keeps only small ones.
async fn store_output(
    client: &Client,
    run_id: &str,
    attempt_id: &str,
    outcome: AttemptOutcome,
) -> (AttemptOutcome, Option<String>) {
    let AttemptOutcome::Success { output } = &outcome else {
        return (outcome, None);
    };
    let Some(bytes) = oversized_json(output) else {
        return (outcome, None);
    };
    let size = bytes.len();
    let path = format!("{run_id}/output-{attempt_id}.json");
    match client.packet_upload(&path, bytes).await {
        Ok(storage_path) => {
            debug!(packet = %storage_path, size, "output uploaded to object storage");
            (
                AttemptOutcome::Success {
                    output: Value::String(storage_path),
                },
                Some(STORE_TYPE.to_owned()),
            )
        }
        Err(error) => (
            AttemptOutcome::failure(
                FailureKind::TaskFailed,
                format!(
                    "the output ({size} bytes) could not be uploaded to object storage: {error}"
                ),
            ),
            None,
        ),
    }
}

/// Sends completions as they come: whatever queued up while the previous request was in
/// flight goes in the next one, so batching adds no waiting. A batch is retried until
/// the server answers it (or the shutdown grace is over); its attempts stay held, and
/// their slots taken, until then.
async fn report_loop(shared: Arc<Shared>, mut pending: mpsc::UnboundedReceiver<Pending>) {
    while let Some(first) = pending.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match pending.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        let ids: Vec<String> = batch
            .iter()
            .map(|pending| pending.completion.attempt_id.clone())
            .collect();
        let (completions, permits): (Vec<_>, Vec<_>) = batch
            .into_iter()
            .map(|pending| (pending.completion, pending.permit))
            .unzip();
        let request = CompleteRequest { completions };
        let reply = until_answered("complete", &shared, || {
            shared.client.complete(&shared.worker_id, &request)
        })
        .await;
        match reply {
            Ok(reply) => {
                for result in reply.results {
                    if result.accepted {
                        debug!(
                            attempt_id = %result.attempt_id,
                            run_status = result.run_status.as_deref().unwrap_or(""),
                            "completion accepted"
                        );
                    } else {
                        debug!(
                            attempt_id = %result.attempt_id,
                            "completion not accepted: the server no longer leased the attempt"
                        );
                    }
                }
            }
            Err(error) => error!(
                %error,
                attempts = ?ids,
                "could not report completions; the server will rescue their runs once \
                 their leases run out, and they may run again"
            ),
        }
        let mut held = shared.held();
        for id in &ids {
            held.remove(id);
        }
        drop(held);
        drop(permits);
    }
}

/// Keeps the held attempts' leases alive and stops the ones the server cancels.
///
/// Each heartbeat is a long poll of one interval, so it doubles as the cancel channel: the
/// server answers early when one of the attempts is canceled. An attempt started while a
/// poll is in flight is not covered by it, so the poll is replaced (dropping a heartbeat is
/// harmless: it only extended leases, and a pending cancel is answered again by the next).
async fn heartbeat_loop(shared: Arc<Shared>, interval: Duration) {
    let interval_ms = u64::try_from(interval.as_millis()).unwrap_or(MAX_WAIT_MS);
    let mut backoff = Backoff::new(shared.retry_cap);
    loop {
        let (attempt_ids, generation) = shared.held().heartbeat_ids();
        if attempt_ids.is_empty() {
            shared.added.notified().await;
            continue;
        }
        let sent_at = Instant::now();
        let request = HeartbeatRequest {
            attempt_ids,
            wait_ms: interval_ms,
        };
        let heartbeat = shared.client.heartbeat(&shared.worker_id, &request);
        tokio::pin!(heartbeat);
        let reply = loop {
            tokio::select! {
                reply = &mut heartbeat => break Some(reply),
                () = shared.added.notified() => {
                    if shared.held().generation == generation {
                        continue;
                    }
                    tokio::select! {
                        reply = &mut heartbeat => break Some(reply),
                        () = tokio::time::sleep_until(sent_at + HEARTBEAT_RESTART_MIN) => break None,
                    }
                }
            }
        };
        let next_at = match reply {
            // Replaced to cover a new attempt.
            None => continue,
            Some(Ok(reply)) => {
                backoff.reset();
                let held = shared.held();
                for attempt_id in &reply.cancel {
                    if held.stop(attempt_id, StopReason::Canceled) {
                        debug!(%attempt_id, "the server canceled the attempt");
                    }
                }
                if reply.cancel.is_empty() {
                    // A reply before the interval without cancels should not happen, but
                    // must not turn this loop into a busy one.
                    sent_at + interval
                } else {
                    Instant::now()
                }
            }
            Some(Err(error)) => {
                let delay = backoff.next_delay();
                warn!(%error, retry_in = ?delay, "heartbeat failed");
                Instant::now() + delay
            }
        };
        tokio::select! {
            () = tokio::time::sleep_until(next_at) => {}
            () = shared.added.notified() => {}
        }
    }
}

/// Calls `call` until the server answers (success or a refusal that retrying cannot
/// change). Transient failures (the server unreachable, a 5xx, a 429) are retried with a
/// capped, jittered backoff: forever while the worker runs, and until the end of the
/// shutdown grace once a shutdown began (with one last try then).
async fn until_answered<T, F, Fut>(what: &str, shared: &Shared, mut call: F) -> Result<T, Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Error>>,
{
    let mut give_up_at = shared.give_up_at.subscribe();
    let mut backoff = Backoff::new(shared.retry_cap);
    let first_failure = Instant::now();
    loop {
        let error = match call().await {
            Ok(value) => return Ok(value),
            Err(error) if error.is_transient() => error,
            Err(error) => return Err(error),
        };
        let mut retry_at = Instant::now() + backoff.next_delay();
        if let Some(give_up_at) = *give_up_at.borrow_and_update() {
            if Instant::now() >= give_up_at {
                return Err(error);
            }
            retry_at = retry_at.min(give_up_at);
        }
        warn!(
            %error,
            retry_in = ?retry_at.saturating_duration_since(Instant::now()),
            failing_for = ?first_failure.elapsed(),
            "{what} failed; retrying until the server answers"
        );
        tokio::select! {
            () = tokio::time::sleep_until(retry_at) => {}
            // A shutdown began: its deadline may come before `retry_at`.
            Ok(()) = give_up_at.changed() => {}
        }
    }
}

/// The longest delay between two retries for a server whose lease timeout is
/// `lease_timeout`: a quarter of it, between [`BACKOFF_MIN`] and [`BACKOFF_MAX`].
pub(crate) fn retry_cap(lease_timeout: Duration) -> Duration {
    (lease_timeout / BACKOFF_LEASE_DIVISOR).clamp(BACKOFF_MIN, BACKOFF_MAX)
}

/// Exponential delays from [`BACKOFF_MIN`] up to a cap, each drawn at random from its
/// upper half, so workers that lost the same server do not all come back at once.
struct Backoff {
    next: Duration,
    cap: Duration,
}

impl Backoff {
    fn new(cap: Duration) -> Backoff {
        let cap = cap.max(BACKOFF_MIN);
        Backoff {
            next: BACKOFF_MIN,
            cap,
        }
    }

    fn next_delay(&mut self) -> Duration {
        let ceiling = self.next;
        self.next = (self.next * 2).min(self.cap);
        rand::rng().random_range(ceiling / 2..=ceiling)
    }

    fn reset(&mut self) {
        self.next = BACKOFF_MIN;
    }
}

/// A spawned task that is aborted when its handle is dropped, so nothing the runtime
/// spawned outlives a dropped [`Worker::run`] future.
struct AbortOnDrop<T>(JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl<T> Future for AbortOnDrop<T> {
    type Output = Result<T, JoinError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0).poll(cx)
    }
}

/// How far the shutdown of [`RegisteredWorker::run_until`] has gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    Running,
    /// `shutdown` resolved: no more dequeues, running attempts get the grace period.
    Graceful,
    /// `stop_now` resolved: attempts are stopped and the last reports are bounded.
    Now,
}

/// Resolves once the shutdown reached `at_least`.
async fn reached(phase: &watch::Receiver<Phase>, at_least: Phase) {
    let mut phase = phase.clone();
    // The sender lives as long as the worker runs, so this only ends by reaching it.
    let _ = phase.wait_for(|phase| *phase >= at_least).await;
}

/// Awaits `work`; once a stop-now came, only until the shutdown's give-up time (at most
/// [`STOP_NOW_REPORT_WITHIN`] later). `None` when it had to be dropped.
async fn until_stop_now_deadline<F: Future>(
    shared: &Shared,
    phase: &watch::Receiver<Phase>,
    work: F,
) -> Option<F::Output> {
    tokio::pin!(work);
    tokio::select! {
        biased;
        output = &mut work => return Some(output),
        () = reached(phase, Phase::Now) => {}
    }
    shared.stop_now();
    let deadline = shared
        .give_up_at
        .borrow()
        .unwrap_or_else(|| Instant::now() + STOP_NOW_REPORT_WITHIN);
    tokio::time::timeout_at(deadline, work).await.ok()
}

async fn drain(attempts: &mut JoinSet<()>) {
    while let Some(ended) = attempts.join_next().await {
        log_attempt_task_end(ended);
    }
}

fn log_attempt_task_end(ended: Result<(), JoinError>) {
    if let Err(error) = ended {
        // The executor runs in its own task; this is a bug in the runtime itself.
        error!(%error, "an attempt task failed");
    }
}

/// Sleeps for `limit`, or forever without one.
async fn sleep_for(limit: Option<Duration>) {
    match limit {
        Some(limit) => tokio::time::sleep(limit).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_up_to_its_cap_and_never_past_it() {
        let cap = Duration::from_secs(2);
        let mut backoff = Backoff::new(cap);
        let mut ceiling = BACKOFF_MIN;
        for _ in 0..64 {
            let delay = backoff.next_delay();
            assert!(
                (ceiling / 2..=ceiling).contains(&delay),
                "{delay:?} outside {:?}..={ceiling:?}",
                ceiling / 2
            );
            ceiling = (ceiling * 2).min(cap);
        }
        backoff.reset();
        assert!(backoff.next_delay() <= BACKOFF_MIN);
    }

    #[test]
    fn the_retry_cap_is_a_quarter_of_the_lease_within_bounds() {
        let cases = [
            (Duration::from_millis(100), BACKOFF_MIN),
            (Duration::from_secs(2), Duration::from_millis(500)),
            (Duration::from_secs(8), Duration::from_secs(2)),
            (Duration::from_secs(30), BACKOFF_MAX),
            (Duration::from_secs(3600), BACKOFF_MAX),
        ];
        for (lease, cap) in cases {
            assert_eq!(retry_cap(lease), cap, "lease {lease:?}");
        }
    }
}
