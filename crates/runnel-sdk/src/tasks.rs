//! Typed tasks: async Rust functions registered under task identifiers, run by the worker
//! runtime through the [`Executor`] seam.
//!
//! A task takes a payload type `P` (decoded from the run's JSON payload) and returns
//! `Result<O, E>`: `Ok` becomes the run's output (serialized), `Err` a failed attempt whose
//! message is `E`'s `Display` (retried per the task's policy). Each attempt runs in its
//! own tokio task, so a panic fails only that attempt (as `Crashed`) and a stop request
//! can abort it wherever it is awaiting.
//!
//! ```text
//!   payload JSON ──decode P──► handler(P) ──Ok(O)──► output JSON        (Success)
//!        │ fails                  │ Err(E) ───────► message = E        (TaskFailed)
//!        ▼                        │ panic ────────► panic message      (Crashed)
//!   SystemFailure                 └ stop ─────────► aborted; the runtime reports why
//! ```

use std::any::Any;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use runnel_core::retry::RetryPolicy;
use runnel_core::worker::{AttemptOutcome, DequeuedRun, FailureKind, TaskDefinition};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use crate::client::Client;
use crate::envvars::EnvVars;
use crate::executor::{Executor, StopSignal};

/// After aborting a stopped task, how long to wait for its future to be dropped (so what
/// it holds is released before the attempt is reported). A task blocking a thread without
/// yielding cannot be aborted; it is then left behind.
const ABORT_WAIT: Duration = Duration::from_secs(1);

/// What a task knows about the attempt it runs in, and its way to wait: trigger a child
/// and wait for its result, wait for a time or a token (see [`crate::waits`]). The waits
/// need the worker's client, which a context made by a [`crate::Worker`] has.
#[derive(Debug, Clone)]
pub struct TaskContext {
    pub run_id: String,
    pub attempt_id: String,
    /// 1 for the first attempt.
    pub attempt_number: u32,
    pub task_identifier: String,
    /// The worker version running it.
    pub version: String,
    pub environment: String,
    pub machine: String,
    pub is_test: bool,
    pub tags: Vec<String>,
    /// The worker's client: what the waits call the server with.
    pub(crate) client: Option<Client>,
    /// The variables of the run's environment ([`TaskContext::env_var`]).
    pub(crate) env_vars: EnvVars,
}

/// Every field but the client (compared by its server only).
impl PartialEq for TaskContext {
    fn eq(&self, other: &Self) -> bool {
        self.run_id == other.run_id
            && self.attempt_id == other.attempt_id
            && self.attempt_number == other.attempt_number
            && self.task_identifier == other.task_identifier
            && self.version == other.version
            && self.environment == other.environment
            && self.machine == other.machine
            && self.is_test == other.is_test
            && self.tags == other.tags
            && self.env_vars == other.env_vars
            && self.client.as_ref().map(Client::api_url)
                == other.client.as_ref().map(Client::api_url)
    }
}

impl TaskContext {
    /// The context of `run`'s attempt; `client` is what its waits call the server with.
    pub fn new(run: &DequeuedRun, client: Option<Client>) -> TaskContext {
        TaskContext {
            client,
            run_id: run.run_id.clone(),
            attempt_id: run.attempt_id.clone(),
            attempt_number: run.attempt_number,
            task_identifier: run.task_identifier.clone(),
            version: run.version.clone(),
            environment: run.environment.clone(),
            machine: run.machine.clone(),
            is_test: run.is_test,
            tags: run.tags.clone(),
            env_vars: EnvVars::default(),
        }
    }

    /// This context with the variables of the run's environment.
    pub fn with_env_vars(mut self, env_vars: EnvVars) -> TaskContext {
        self.env_vars = env_vars;
        self
    }

    /// The value of the environment variable `name` set for the run's environment
    /// (`runnel envvars set`, the env var API), as it was when the attempt started.
    /// Only the environment's own variables: the worker's process environment is
    /// `std::env::var`'s.
    pub fn env_var(&self, name: &str) -> Option<&str> {
        self.env_vars.get(name).map(String::as_str)
    }

    /// Every variable of the run's environment, by name.
    pub fn env_vars(&self) -> &BTreeMap<String, String> {
        &self.env_vars
    }
}

/// A task's definition with builder methods: what the worker declares at registration.
/// `"hello".into()` gives a task with every default.
#[derive(Debug, Clone, PartialEq)]
pub struct Task {
    definition: TaskDefinition,
}

impl Task {
    pub fn new(id: impl Into<String>) -> Task {
        Task {
            definition: TaskDefinition::new(id),
        }
    }

    /// The retry policy of failed attempts.
    pub fn retry(mut self, policy: RetryPolicy) -> Task {
        self.definition.retry = Some(policy);
        self
    }

    /// The number of attempts, keeping the rest of the retry policy (the library default
    /// unless [`Task::retry`] set one).
    pub fn max_attempts(mut self, attempts: u32) -> Task {
        let mut policy = self.definition.retry.unwrap_or_default();
        policy.max_attempts = attempts;
        self.definition.retry = Some(policy);
        self
    }

    /// Compute time per attempt before it is stopped and the run ends `TIMED_OUT`;
    /// whole seconds, rounded up. The server refuses a registration below 5 s.
    pub fn max_duration(mut self, limit: Duration) -> Task {
        let secs = limit.as_secs() + u64::from(limit.subsec_nanos() > 0);
        self.definition.max_duration = Some(u32::try_from(secs).unwrap_or(u32::MAX));
        self
    }

    /// The machine preset (`small-1x` when not set); it prices the run.
    pub fn machine(mut self, machine: impl Into<String>) -> Task {
        self.definition.machine = Some(machine.into());
        self
    }

    /// The queue (`task/<id>` when not set).
    pub fn queue(mut self, queue: impl Into<String>) -> Task {
        self.definition.queue = Some(queue.into());
        self
    }

    /// A scheduled task: schedules created through the API (`runnel schedules create`,
    /// the SDK's `schedules.create`) may trigger it. Its runs get the schedule's payload
    /// (`scheduleId`, `type`, `timestamp`, `lastTimestamp`, `externalId`, `timezone`,
    /// `upcoming`).
    pub fn scheduled(mut self) -> Task {
        self.definition.scheduled = true;
        self
    }

    /// A scheduled task with a schedule of its own: `cron` (5 fields) in UTC. The server
    /// keeps this DECLARATIVE schedule in sync with each registration.
    pub fn cron(self, cron: impl Into<String>) -> Task {
        self.cron_in(cron, None::<String>)
    }

    /// [`Task::cron`] read in an IANA `timezone` (`Europe/London`), following its
    /// daylight saving changes.
    pub fn cron_in(mut self, cron: impl Into<String>, timezone: Option<impl Into<String>>) -> Task {
        self.definition.scheduled = true;
        self.definition.schedule = Some(runnel_core::worker::DeclaredSchedule {
            cron: cron.into(),
            timezone: timezone.map(Into::into),
            window: None,
            environments: None,
        });
        self
    }

    pub fn definition(&self) -> &TaskDefinition {
        &self.definition
    }
}

impl From<&str> for Task {
    fn from(id: &str) -> Task {
        Task::new(id)
    }
}

impl From<String> for Task {
    fn from(id: String) -> Task {
        Task::new(id)
    }
}

impl From<TaskDefinition> for Task {
    fn from(definition: TaskDefinition) -> Task {
        Task { definition }
    }
}

impl From<Task> for TaskDefinition {
    fn from(task: Task) -> TaskDefinition {
        task.definition
    }
}

/// How an attempt of a task ended, before it became an [`AttemptOutcome`].
enum Ending {
    Output(Value),
    /// The payload did not decode as the task's type.
    BadPayload(String),
    /// The handler returned `Err` (or an output that does not serialize).
    Failed(String),
}

type BoxFuture = Pin<Box<dyn Future<Output = Ending> + Send>>;
type Handler = Arc<dyn Fn(Value, TaskContext) -> BoxFuture + Send + Sync>;

struct Entry {
    definition: TaskDefinition,
    handler: Handler,
}

/// A set of typed tasks; an [`Executor`] for [`crate::Worker`].
///
/// ```
/// use runnel_sdk::{Task, Tasks};
/// use std::time::Duration;
///
/// let tasks = Tasks::new()
///     .task("double", |n: i64| async move { Ok::<_, String>(n * 2) })
///     .task(
///         Task::new("fetch").max_attempts(5).max_duration(Duration::from_secs(60)),
///         |url: String| async move {
///             if url.starts_with("https://") { Ok(url.len()) } else { Err(format!("not https: {url}")) }
///         },
///     );
/// assert_eq!(tasks.len(), 2);
/// ```
#[derive(Default)]
pub struct Tasks {
    entries: HashMap<String, Entry>,
    /// Identifiers in the order they were added, so registration is deterministic.
    order: Vec<String>,
}

impl fmt::Debug for Tasks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tasks").field("tasks", &self.order).finish()
    }
}

impl Tasks {
    pub fn new() -> Tasks {
        Tasks::default()
    }

    /// Adds a task: `handler` gets the payload decoded as `P`.
    ///
    /// # Panics
    /// When a task with the same identifier was already added.
    pub fn task<P, O, E, F, Fut>(self, task: impl Into<Task>, handler: F) -> Tasks
    where
        P: DeserializeOwned + Send + 'static,
        O: Serialize + Send + 'static,
        E: fmt::Display + Send + 'static,
        F: Fn(P) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<O, E>> + Send + 'static,
    {
        self.task_with_context(task, move |payload: P, _context| handler(payload))
    }

    /// Like [`Tasks::task`], for handlers that also want the attempt's [`TaskContext`]
    /// (run id, attempt number, tags, …).
    ///
    /// # Panics
    /// When a task with the same identifier was already added.
    pub fn task_with_context<P, O, E, F, Fut>(mut self, task: impl Into<Task>, handler: F) -> Tasks
    where
        P: DeserializeOwned + Send + 'static,
        O: Serialize + Send + 'static,
        E: fmt::Display + Send + 'static,
        F: Fn(P, TaskContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<O, E>> + Send + 'static,
    {
        let definition = TaskDefinition::from(task.into());
        let id = definition.id.clone();
        assert!(
            !self.entries.contains_key(&id),
            "task {id:?} is defined twice"
        );
        let handler: Handler = Arc::new(move |payload: Value, context: TaskContext| {
            // Decoding happens here, before the task is spawned, so the future below only
            // exists for a readable payload.
            let payload = match P::deserialize(payload) {
                Ok(payload) => payload,
                Err(error) => {
                    let message = format!(
                        "the payload is not a valid {}: {error}",
                        std::any::type_name::<P>()
                    );
                    return Box::pin(async move { Ending::BadPayload(message) }) as BoxFuture;
                }
            };
            let running = handler(payload, context);
            Box::pin(async move {
                match running.await {
                    Ok(output) => match serde_json::to_value(output) {
                        Ok(output) => Ending::Output(output),
                        Err(error) => {
                            Ending::Failed(format!("the task's output does not serialize: {error}"))
                        }
                    },
                    Err(error) => Ending::Failed(error.to_string()),
                }
            })
        });
        self.order.push(id.clone());
        self.entries.insert(
            id,
            Entry {
                definition,
                handler,
            },
        );
        self
    }

    /// The number of tasks.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }
}

#[async_trait]
impl Executor for Tasks {
    fn tasks(&self) -> Vec<TaskDefinition> {
        self.order
            .iter()
            .map(|id| self.entries[id].definition.clone())
            .collect()
    }

    async fn execute(&self, run: DequeuedRun, stop: StopSignal) -> AttemptOutcome {
        self.attempt(run, stop, None, EnvVars::default()).await
    }

    async fn execute_with(
        &self,
        run: DequeuedRun,
        stop: StopSignal,
        client: &Client,
    ) -> AttemptOutcome {
        self.attempt(run, stop, Some(client.clone()), EnvVars::default())
            .await
    }

    async fn execute_with_env(
        &self,
        run: DequeuedRun,
        stop: StopSignal,
        client: &Client,
        env_vars: EnvVars,
    ) -> AttemptOutcome {
        self.attempt(run, stop, Some(client.clone()), env_vars)
            .await
    }
}

impl Tasks {
    /// One attempt; its context carries `client` for the task's waits.
    async fn attempt(
        &self,
        run: DequeuedRun,
        mut stop: StopSignal,
        client: Option<Client>,
        env_vars: EnvVars,
    ) -> AttemptOutcome {
        let Some(entry) = self.entries.get(&run.task_identifier) else {
            return AttemptOutcome::failure(
                FailureKind::SystemFailure,
                format!(
                    "task {:?} is not defined in this worker",
                    run.task_identifier
                ),
            );
        };
        let context = TaskContext::new(&run, client).with_env_vars(env_vars);
        let mut running = tokio::spawn((entry.handler)(run.payload, context));
        let joined = tokio::select! {
            joined = &mut running => joined,
            reason = stop.stopped() => {
                running.abort();
                let _ = tokio::time::timeout(ABORT_WAIT, running).await;
                return reason.ending();
            }
        };
        match joined {
            Ok(Ending::Output(output)) => AttemptOutcome::Success { output },
            Ok(Ending::BadPayload(message)) => {
                AttemptOutcome::failure(FailureKind::SystemFailure, message)
            }
            Ok(Ending::Failed(message)) => {
                AttemptOutcome::failure(FailureKind::TaskFailed, message)
            }
            Err(error) if error.is_panic() => AttemptOutcome::failure(
                FailureKind::Crashed,
                format!("the task panicked: {}", panic_message(error.into_panic())),
            ),
            // Only an abort cancels the task, and only the stop branch aborts it.
            Err(_) => AttemptOutcome::failure(FailureKind::Crashed, "the task was cancelled"),
        }
    }
}

/// The text a panic was raised with (`panic!("…")` payloads are `&str` or `String`).
pub(crate) fn panic_message(payload: Box<dyn Any + Send>) -> String {
    match payload.downcast::<String>() {
        Ok(message) => *message,
        Err(payload) => match payload.downcast::<&'static str>() {
            Ok(message) => (*message).to_owned(),
            Err(_) => "a non-text panic payload".to_owned(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::executor::StopReason;
    use serde::Deserialize;
    use serde_json::json;
    use std::sync::atomic::{AtomicBool, Ordering};

    #[derive(Deserialize)]
    struct Hello {
        name: String,
    }

    fn run(task: &str, payload: Value) -> DequeuedRun {
        DequeuedRun {
            payload_presigned_url: None,
            run_id: "run_1".into(),
            attempt_id: "attempt_1".into(),
            attempt_number: 2,
            task_identifier: task.into(),
            payload,
            payload_type: "application/json".into(),
            max_duration_secs: None,
            machine: "small-1x".into(),
            environment: "dev".into(),
            version: "20260101.1".into(),
            is_test: false,
            tags: vec!["t".into()],
            lease_expires_at: "2026-01-01T00:00:00.000Z".into(),
        }
    }

    fn tasks() -> Tasks {
        Tasks::new()
            .task("hello", |p: Hello| async move {
                Ok::<_, String>(json!({ "greeting": format!("Hello, {}!", p.name) }))
            })
            .task("fail", |_: Value| async move {
                Err::<(), _>(std::io::Error::other("disk on fire"))
            })
            .task("panic", |_: Value| async move {
                if true {
                    panic!("boom {}", 42);
                }
                Ok::<(), String>(())
            })
            .task_with_context(Task::new("ctx").max_attempts(4), |_: (), ctx| async move {
                Ok::<_, String>(ctx.attempt_number)
            })
    }

    async fn execute(task: &str, payload: Value) -> AttemptOutcome {
        let (_handle, signal) = StopSignal::channel();
        tasks().execute(run(task, payload), signal).await
    }

    fn failed(kind: FailureKind, message: &str) -> AttemptOutcome {
        AttemptOutcome::failure(kind, message)
    }

    #[tokio::test]
    async fn success_serializes_the_output() {
        assert_eq!(
            execute("hello", json!({"name": "Ada"})).await,
            AttemptOutcome::Success {
                output: json!({"greeting": "Hello, Ada!"})
            }
        );
        assert_eq!(
            execute("ctx", Value::Null).await,
            AttemptOutcome::Success { output: json!(2) }
        );
    }

    #[tokio::test]
    async fn an_unreadable_payload_is_a_system_failure() {
        let outcome = execute("hello", json!({"nom": "Ada"})).await;
        let AttemptOutcome::Failure { error } = outcome else {
            panic!("{outcome:?}")
        };
        assert_eq!(error.kind, FailureKind::SystemFailure);
        assert!(error.message.contains("missing field `name`"), "{error:?}");
    }

    #[tokio::test]
    async fn an_error_fails_the_attempt_with_its_message() {
        assert_eq!(
            execute("fail", Value::Null).await,
            failed(FailureKind::TaskFailed, "disk on fire")
        );
    }

    #[tokio::test]
    async fn a_panic_crashes_the_attempt() {
        assert_eq!(
            execute("panic", Value::Null).await,
            failed(FailureKind::Crashed, "the task panicked: boom 42")
        );
    }

    #[tokio::test]
    async fn an_unknown_task_is_a_system_failure() {
        assert_eq!(
            execute("nope", Value::Null).await,
            failed(
                FailureKind::SystemFailure,
                "task \"nope\" is not defined in this worker"
            )
        );
    }

    /// Sets its flag when dropped: proves an aborted task's future was dropped.
    struct DropFlag(Arc<AtomicBool>);

    impl Drop for DropFlag {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn stop_aborts_a_long_task() {
        let dropped = Arc::new(AtomicBool::new(false));
        let (entered_tx, entered_rx) = tokio::sync::oneshot::channel();
        let entered_tx = std::sync::Mutex::new(Some(entered_tx));
        let flag = dropped.clone();
        let tasks = Tasks::new().task("sleep", move |_: ()| {
            let guard = DropFlag(flag.clone());
            let entered = entered_tx.lock().unwrap().take();
            async move {
                let _guard = guard;
                if let Some(entered) = entered {
                    let _ = entered.send(());
                }
                tokio::time::sleep(Duration::from_secs(3600)).await;
                Ok::<_, String>("never")
            }
        });
        let (handle, signal) = StopSignal::channel();
        let execution =
            tokio::spawn(async move { tasks.execute(run("sleep", Value::Null), signal).await });
        entered_rx.await.unwrap();
        assert!(!dropped.load(Ordering::SeqCst));
        handle.stop(StopReason::Shutdown);
        let outcome = execution.await.unwrap();
        assert_eq!(
            outcome,
            failed(FailureKind::Interrupted, "worker stopped during the run")
        );
        assert!(
            dropped.load(Ordering::SeqCst),
            "the task's future was dropped"
        );
    }

    #[test]
    fn definitions_keep_their_order_and_options() {
        let tasks = tasks().task(
            Task::new("slow")
                .max_duration(Duration::from_millis(1_500))
                .machine("small-2x")
                .queue("q")
                .retry(RetryPolicy {
                    max_attempts: 1,
                    ..RetryPolicy::default()
                }),
            |_: ()| async { Ok::<_, String>(()) },
        );
        let ids: Vec<String> = tasks.tasks().into_iter().map(|d| d.id).collect();
        assert_eq!(ids, ["hello", "fail", "panic", "ctx", "slow"]);
        let slow = &tasks.tasks()[4];
        assert_eq!(slow.max_duration, Some(2));
        assert_eq!(slow.machine.as_deref(), Some("small-2x"));
        assert_eq!(slow.queue.as_deref(), Some("q"));
        assert_eq!(slow.retry.unwrap().max_attempts, 1);
        assert_eq!(tasks.tasks()[3].retry.unwrap().max_attempts, 4);
        assert_eq!(tasks.tasks()[0], TaskDefinition::new("hello"));
    }

    #[test]
    #[should_panic(expected = "task \"hello\" is defined twice")]
    fn a_task_is_defined_once() {
        let _ = tasks().task("hello", |_: ()| async { Ok::<_, String>(()) });
    }

    #[test]
    fn panic_messages() {
        assert_eq!(panic_message(Box::new("static")), "static");
        assert_eq!(panic_message(Box::new(String::from("owned"))), "owned");
        assert_eq!(panic_message(Box::new(7)), "a non-text panic payload");
    }
}
