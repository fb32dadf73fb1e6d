//! The worker protocol (`/api/v1/workers/…`, docs/worker-protocol.md): the wire shapes a
//! worker and the server exchange, and the pure rules that settle an attempt.
//!
//! ```text
//!   register ─► dequeue (long poll) ─► start ─► heartbeat … ─► complete
//!                 ▲                                               │
//!                 └───────────────────────────────────────────────┘
//! ```
//!
//! Shared by the server (`runnel-server`) and every worker (`runnel-sdk`, `runnel worker`),
//! so both sides compile against one definition.

use rand::Rng;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::key::EnvironmentKind;
use crate::retry::RetryPolicy;
use crate::status::RunStatus;

/// The longest a dequeue or heartbeat long poll is held open.
pub const MAX_WAIT_MS: u64 = 30_000;
/// The most runs one dequeue hands out.
pub const MAX_DEQUEUE_BATCH: u32 = 100;
/// The most completions (or attempt ids) one request carries. Generous: a worker whose
/// completions are stalled keeps heartbeating every attempt it still holds.
pub const MAX_BATCH: usize = 10_000;

/// Checks a dequeue's `maxRuns` (1..=[`MAX_DEQUEUE_BATCH`]); the message names the field.
pub fn check_max_runs(max_runs: u32) -> Result<(), String> {
    if max_runs == 0 || max_runs > MAX_DEQUEUE_BATCH {
        return Err(format!(
            "maxRuns: must be between 1 and {MAX_DEQUEUE_BATCH}"
        ));
    }
    Ok(())
}

/// Checks how many attempt ids (or completions) one request carries (at most
/// [`MAX_BATCH`]).
pub fn check_batch(len: usize) -> Result<(), String> {
    if len > MAX_BATCH {
        return Err(format!("at most {MAX_BATCH} attempts per request"));
    }
    Ok(())
}

/// A task a worker can run, as it declares it at registration.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskDefinition {
    /// The task identifier runs are triggered with (unique within a registration).
    #[cfg_attr(feature = "openapi", schema(min_length = 1, max_length = 128))]
    pub id: String,
    /// The queue; `task/<id>` when absent (which must then be a valid queue name too).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(pattern = "^[A-Za-z0-9_/-]{1,128}$"))]
    pub queue: Option<String>,
    /// Retry policy; the library defaults (3 attempts, 1 s → 60 s, ×2) when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryPolicy>,
    /// Seconds of compute per attempt before it times out (less than 5 counts as 5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    // `MAX_DURATION_MAX_SECS`: utoipa takes only a literal here.
    #[cfg_attr(feature = "openapi", schema(maximum = 2_147_483_647))]
    pub max_duration: Option<u32>,
    /// Machine preset name (`small-1x` when absent); it prices the run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(
        feature = "openapi",
        schema(pattern = "^(micro|small-1x|small-2x|medium-1x|medium-2x|large-1x|large-2x)$")
    )]
    pub machine: Option<String>,
    /// A scheduled task: schedules created through the API may trigger it (they attach
    /// to scheduled tasks only). Implied by `schedule`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub scheduled: bool,
    /// A schedule declared with the task: the server keeps one DECLARATIVE schedule of
    /// the task in sync with each registration (created, changed, or deleted when a
    /// registration lists the task without it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<DeclaredSchedule>,
}

impl TaskDefinition {
    pub fn new(id: impl Into<String>) -> Self {
        TaskDefinition {
            id: id.into(),
            queue: None,
            retry: None,
            max_duration: None,
            machine: None,
            scheduled: false,
            schedule: None,
        }
    }

    /// Whether schedules may trigger the task.
    pub fn is_scheduled(&self) -> bool {
        self.scheduled || self.schedule.is_some()
    }
}

/// A cron schedule declared with its task ([`TaskDefinition::schedule`]).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeclaredSchedule {
    /// A 5-field cron expression (`L` and `#` allowed).
    pub cron: String,
    /// An IANA timezone the expression is read in; UTC when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
    /// Spreads each occurrence over `"30m"`, `"2h"` (at most 24 h) or `"50%"` of the
    /// interval, at an offset stable for the schedule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<String>,
    /// Only in these environments (`DEVELOPMENT`, `STAGING`, `PRODUCTION`, or the slugs
    /// `dev`, `staging`, `prod`); every environment when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environments: Option<Vec<String>>,
}

impl DeclaredSchedule {
    /// Whether the schedule applies in an environment of `kind`.
    pub fn applies_in(&self, kind: EnvironmentKind) -> bool {
        self.environments.as_ref().is_none_or(|envs| {
            envs.iter()
                .any(|e| e == kind.api_type() || e.parse::<EnvironmentKind>().ok() == Some(kind))
        })
    }
}

/// A queue a worker declares at registration: its concurrency limit. Tasks name their
/// queue in [`TaskDefinition::queue`]; listing a queue here sets its registered limit
/// (an operator's override through the queues API still wins).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct QueueDefinition {
    /// A custom name, or `task/<taskId>` for a task's own queue (unique within a
    /// registration).
    #[cfg_attr(feature = "openapi", schema(pattern = "^[A-Za-z0-9_/-]{1,128}$"))]
    pub name: String,
    /// Runs of the queue held by workers at once (0..=100000); absent or null: no limit.
    /// Each concurrency key gets its own copy of the limit.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(maximum = 100_000))]
    pub concurrency_limit: Option<u32>,
}

/// The largest queue concurrency limit (contract §4.5).
pub const MAX_QUEUE_CONCURRENCY: u32 = 100_000;

/// `POST /api/v1/workers/register`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RegisterRequest {
    /// A name for operators (host name, process name): 1 to 256 characters, not all
    /// whitespace (stored trimmed).
    #[cfg_attr(
        feature = "openapi",
        schema(min_length = 1, max_length = 256, pattern = "\\S")
    )]
    pub name: String,
    /// The version this worker serves; the server assigns `YYYYMMDD.N` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(pattern = "^[A-Za-z0-9._-]{1,64}$"))]
    pub version: Option<String>,
    #[cfg_attr(feature = "openapi", schema(min_items = 1))]
    pub tasks: Vec<TaskDefinition>,
    /// Queues with a concurrency limit; optional.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub queues: Vec<QueueDefinition>,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RegisterResponse {
    pub worker_id: String,
    pub version: String,
    /// A held attempt not heartbeaten for this long is rescued by the server.
    pub lease_timeout_ms: u64,
    /// How often the worker should heartbeat (a third of the lease timeout).
    pub heartbeat_interval_ms: u64,
}

/// `POST /api/v1/workers/{workerId}/dequeue`: waits up to `waitMs` for runs.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DequeueRequest {
    /// At most this many runs (1..=100).
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 100))]
    pub max_runs: u32,
    /// Long-poll time when nothing is queued, in ms; 0 answers at once, more than 30000
    /// waits 30000.
    #[serde(default)]
    pub wait_ms: u64,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DequeueResponse {
    pub runs: Vec<DequeuedRun>,
}

/// A run leased to a worker, with everything needed to execute its attempt.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DequeuedRun {
    pub run_id: String,
    pub attempt_id: String,
    /// 1 for the first attempt.
    pub attempt_number: u32,
    pub task_identifier: String,
    /// The payload as JSON (`null` when the run has none).
    pub payload: Value,
    pub payload_type: String,
    /// When the payload is in object storage (`payloadType` `application/store`,
    /// `payload` its storage path): a URL that downloads it (GET, valid 300 s), with the
    /// payload's own content type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_presigned_url: Option<String>,
    /// Seconds of compute this attempt may use, if limited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_duration_secs: Option<u32>,
    pub machine: String,
    pub environment: String,
    pub version: String,
    pub is_test: bool,
    pub tags: Vec<String>,
    /// ISO 8601: the lease ends here unless heartbeaten.
    pub lease_expires_at: String,
}

/// `POST /api/v1/workers/{workerId}/start`: the worker begins these attempts.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StartRequest {
    #[cfg_attr(feature = "openapi", schema(max_items = 10_000))]
    pub attempt_ids: Vec<String>,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StartResponse {
    /// Now executing.
    pub started: Vec<String>,
    /// Not to run: canceled, rescued or not held by this worker.
    pub cancel: Vec<String>,
}

/// `POST /api/v1/workers/{workerId}/heartbeat`: extends the leases of `attemptIds`.
/// With `waitMs` > 0 the reply is held until one of them is canceled or the wait ends.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HeartbeatRequest {
    #[cfg_attr(feature = "openapi", schema(max_items = 10_000))]
    pub attempt_ids: Vec<String>,
    /// Long-poll time in ms; more than 30000 waits 30000.
    #[serde(default)]
    pub wait_ms: u64,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HeartbeatResponse {
    /// Attempts the worker must stop now (their run was canceled, timed out or rescued).
    pub cancel: Vec<String>,
}

/// How an attempt failed, as the worker reports it.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum FailureKind {
    /// The task itself failed (non-zero exit, an error returned). Retried.
    TaskFailed,
    /// The task's process died (a signal, out of memory). Retried; `CRASHED` when out of
    /// attempts.
    Crashed,
    /// The attempt used more than its `maxDuration`. `TIMED_OUT`, not retried.
    MaxDurationExceeded,
    /// The worker could not run the task (unknown task, command not found, unreadable
    /// payload). `SYSTEM_FAILURE`, not retried.
    SystemFailure,
    /// The worker was stopped by its operator. `INTERRUPTED` in dev; elsewhere the run
    /// goes back to the queue without spending an attempt.
    Interrupted,
}

/// A failed attempt's error.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskFailure {
    pub kind: FailureKind,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stack_trace: Option<String>,
}

impl TaskFailure {
    pub fn new(kind: FailureKind, message: impl Into<String>) -> Self {
        TaskFailure {
            kind,
            message: message.into(),
            name: None,
            stack_trace: None,
        }
    }

    /// The attempt's error as a retrieve response lists it: `{message, name?, stackTrace?}`.
    pub fn attempt_error(&self) -> Value {
        let mut error = json!({ "message": self.message });
        if let Some(name) = &self.name {
            error["name"] = json!(name);
        }
        if let Some(stack) = &self.stack_trace {
            error["stackTrace"] = json!(stack);
        }
        error
    }

    /// The run's stored `TaskRunError`: user failures are `BUILT_IN_ERROR`s, everything
    /// the platform detected is an `INTERNAL_ERROR` with the upstream code.
    pub fn run_error(&self) -> Value {
        let code = match self.kind {
            FailureKind::TaskFailed => {
                let mut error = json!({
                    "type": "BUILT_IN_ERROR",
                    "name": self.name.as_deref().unwrap_or("Error"),
                    "message": self.message,
                });
                if let Some(stack) = &self.stack_trace {
                    error["stackTrace"] = json!(stack);
                }
                return error;
            }
            FailureKind::Crashed => "TASK_RUN_CRASHED",
            FailureKind::MaxDurationExceeded => "MAX_DURATION_EXCEEDED",
            FailureKind::SystemFailure => "TASK_RUN_SYSTEM_FAILURE",
            FailureKind::Interrupted => "TASK_RUN_INTERRUPTED",
        };
        json!({ "type": "INTERNAL_ERROR", "code": code, "message": self.message })
    }
}

/// How an attempt ended.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "outcome")]
pub enum AttemptOutcome {
    /// The task succeeded; `output` is its JSON result (`null` for none), nested at most
    /// 64 levels.
    Success {
        #[serde(default)]
        output: Value,
    },
    Failure {
        error: TaskFailure,
    },
}

impl AttemptOutcome {
    /// A failed attempt of `kind` with `message`.
    pub fn failure(kind: FailureKind, message: impl Into<String>) -> Self {
        AttemptOutcome::Failure {
            error: TaskFailure::new(kind, message),
        }
    }
}

/// One attempt's end, as reported to `POST /api/v1/workers/{workerId}/complete`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AttemptCompletion {
    pub attempt_id: String,
    #[serde(flatten)]
    pub outcome: AttemptOutcome,
    /// A success's output type when it is not JSON: `application/store` says `output` is
    /// the storage path of an output the worker uploaded itself (`PUT
    /// /api/v2/packets/{path}`, then the presigned URL). Absent means JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_type: Option<String>,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CompleteRequest {
    #[cfg_attr(feature = "openapi", schema(max_items = 10_000))]
    pub completions: Vec<AttemptCompletion>,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CompleteResponse {
    /// One entry per completion, in request order.
    pub results: Vec<CompletionResult>,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CompletionResult {
    pub attempt_id: String,
    /// False when the attempt was no longer held (canceled, rescued, already completed):
    /// nothing changed.
    pub accepted: bool,
    /// The run's status after the completion (legacy public name), when accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_status: Option<String>,
}

/// What settling an attempt does to its run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settlement {
    /// The run completed successfully.
    Succeeded,
    /// Another attempt runs after `delay_ms`.
    Retry { delay_ms: u64 },
    /// The run ends in this final status.
    Fail(RunStatus),
    /// The attempt does not count: the run goes back to the queue.
    Release,
}

impl Settlement {
    /// Whether the attempt counts against the run's `maxAttempts`.
    pub fn spends_attempt(self) -> bool {
        !matches!(self, Settlement::Release)
    }

    /// The run's status after settling.
    pub fn run_status(self) -> RunStatus {
        match self {
            Settlement::Succeeded => RunStatus::CompletedSuccessfully,
            Settlement::Retry { .. } => RunStatus::RetryingAfterFailure,
            Settlement::Fail(status) => status,
            Settlement::Release => RunStatus::Queued,
        }
    }
}

/// Decides what a failed attempt does to its run (DESIGN §3, contract §4.2): the retry
/// decision that the settle and rescue transitions (`crate::state::settle`,
/// `crate::state::rescue`) build their change on.
///
/// `spent` counts the run's failed attempts including this one; `max_attempts` is the
/// effective limit (trigger option, else the task's policy).
pub fn settle_failure(
    kind: FailureKind,
    environment: EnvironmentKind,
    spent: u32,
    max_attempts: u32,
    policy: &RetryPolicy,
    rng: &mut impl Rng,
) -> Settlement {
    let mut retry_or = |final_status| match policy.next_delay_ms(spent, max_attempts, rng) {
        Some(delay_ms) => Settlement::Retry { delay_ms },
        None => Settlement::Fail(final_status),
    };
    match kind {
        FailureKind::TaskFailed => retry_or(RunStatus::CompletedWithErrors),
        FailureKind::Crashed => retry_or(RunStatus::Crashed),
        FailureKind::MaxDurationExceeded => Settlement::Fail(RunStatus::TimedOut),
        FailureKind::SystemFailure => Settlement::Fail(RunStatus::SystemFailure),
        FailureKind::Interrupted if environment == EnvironmentKind::Dev => {
            Settlement::Fail(RunStatus::Interrupted)
        }
        FailureKind::Interrupted => Settlement::Release,
    }
}

/// The status a run ends in when an attempt failing with `kind` is not retried.
pub fn final_status(kind: FailureKind) -> RunStatus {
    match kind {
        FailureKind::TaskFailed => RunStatus::CompletedWithErrors,
        FailureKind::Crashed => RunStatus::Crashed,
        FailureKind::MaxDurationExceeded => RunStatus::TimedOut,
        FailureKind::SystemFailure => RunStatus::SystemFailure,
        FailureKind::Interrupted => RunStatus::Interrupted,
    }
}

/// A valid version: `YYYYMMDD.N` or any 1..=64 characters of `[A-Za-z0-9._-]`.
pub fn is_valid_version(version: &str) -> bool {
    !version.is_empty()
        && version.len() <= 64
        && version
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn settle(kind: FailureKind, env: EnvironmentKind, spent: u32, max: u32) -> Settlement {
        let policy = RetryPolicy {
            randomize: false,
            ..RetryPolicy::default()
        };
        settle_failure(
            kind,
            env,
            spent,
            max,
            &policy,
            &mut StdRng::seed_from_u64(7),
        )
    }

    #[test]
    fn user_failures_retry_then_fail() {
        use EnvironmentKind::Prod;
        assert_eq!(
            settle(FailureKind::TaskFailed, Prod, 1, 3),
            Settlement::Retry { delay_ms: 1_000 }
        );
        assert_eq!(
            settle(FailureKind::TaskFailed, Prod, 2, 3),
            Settlement::Retry { delay_ms: 2_000 }
        );
        assert_eq!(
            settle(FailureKind::TaskFailed, Prod, 3, 3),
            Settlement::Fail(RunStatus::CompletedWithErrors)
        );
        assert_eq!(
            settle(FailureKind::Crashed, Prod, 1, 1),
            Settlement::Fail(RunStatus::Crashed)
        );
        assert_eq!(
            settle(FailureKind::Crashed, Prod, 1, 2),
            Settlement::Retry { delay_ms: 1_000 }
        );
    }

    #[test]
    fn platform_failures_never_retry() {
        use EnvironmentKind::Prod;
        assert_eq!(
            settle(FailureKind::MaxDurationExceeded, Prod, 1, 10),
            Settlement::Fail(RunStatus::TimedOut)
        );
        assert_eq!(
            settle(FailureKind::SystemFailure, Prod, 1, 10),
            Settlement::Fail(RunStatus::SystemFailure)
        );
    }

    #[test]
    fn interruption_depends_on_environment() {
        assert_eq!(
            settle(FailureKind::Interrupted, EnvironmentKind::Dev, 1, 3),
            Settlement::Fail(RunStatus::Interrupted)
        );
        let released = settle(FailureKind::Interrupted, EnvironmentKind::Prod, 1, 3);
        assert_eq!(released, Settlement::Release);
        assert!(!released.spends_attempt());
        assert_eq!(released.run_status(), RunStatus::Queued);
    }

    #[test]
    fn errors_have_the_upstream_shapes() {
        let mut failure = TaskFailure::new(FailureKind::TaskFailed, "boom");
        failure.stack_trace = Some("at x".into());
        assert_eq!(
            failure.run_error(),
            json!({"type": "BUILT_IN_ERROR", "name": "Error", "message": "boom", "stackTrace": "at x"})
        );
        assert_eq!(
            failure.attempt_error(),
            json!({"message": "boom", "stackTrace": "at x"})
        );
        assert_eq!(
            TaskFailure::new(FailureKind::MaxDurationExceeded, "too long").run_error(),
            json!({"type": "INTERNAL_ERROR", "code": "MAX_DURATION_EXCEEDED", "message": "too long"})
        );
    }

    #[test]
    fn completions_round_trip_on_the_wire() {
        let wire = json!({"attemptId": "attempt_1", "outcome": "failure",
            "error": {"kind": "CRASHED", "message": "killed by SIGKILL"}});
        let c: AttemptCompletion = serde_json::from_value(wire.clone()).unwrap();
        assert_eq!(
            c.outcome,
            AttemptOutcome::Failure {
                error: TaskFailure::new(FailureKind::Crashed, "killed by SIGKILL")
            }
        );
        assert_eq!(serde_json::to_value(&c).unwrap(), wire);
        let ok: AttemptCompletion =
            serde_json::from_value(json!({"attemptId": "a", "outcome": "success"})).unwrap();
        assert_eq!(
            ok.outcome,
            AttemptOutcome::Success {
                output: Value::Null
            }
        );
    }

    #[test]
    fn versions() {
        assert!(is_valid_version("20261129.3"));
        assert!(is_valid_version("v1.2-beta_3"));
        assert!(!is_valid_version(""));
        assert!(!is_valid_version("a b"));
        assert!(!is_valid_version(&"x".repeat(65)));
    }

    proptest! {
        /// Every settlement ends in an edge the state machine has, from `Executing`; a
        /// retry only happens with attempts left, and the run always ends by the cap.
        #[test]
        fn settlements_follow_the_state_machine(
            kind_index in 0usize..5,
            dev: bool,
            spent in 1u32..300,
            max in 1u32..300,
            seed: u64,
        ) {
            let kinds = [FailureKind::TaskFailed, FailureKind::Crashed, FailureKind::MaxDurationExceeded,
                         FailureKind::SystemFailure, FailureKind::Interrupted];
            let env = if dev { EnvironmentKind::Dev } else { EnvironmentKind::Prod };
            let s = settle_failure(kinds[kind_index], env, spent, max, &RetryPolicy::default(), &mut StdRng::seed_from_u64(seed));
            prop_assert!(RunStatus::Executing.can_move_to(s.run_status()));
            prop_assert!(RunStatus::Dequeued.can_move_to(s.run_status()));
            if let Settlement::Retry { delay_ms } = s {
                prop_assert!(spent < max.min(250));
                prop_assert!(delay_ms <= 60_000);
            }
            if spent >= max.min(250) {
                let retried = matches!(s, Settlement::Retry { .. });
                prop_assert!(!retried);
            }
        }
    }
}
