//! The run record as stored, and its attempts.

use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::id::{AttemptId, BatchId, EnvironmentId, RunId, WorkerId};
use crate::machine::MachinePreset;
use crate::queue::QueueName;
use crate::status::RunStatus;

/// Data with its serialization type (contract §4.6): payloads, outputs and metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct Packet {
    /// The serialized data; `None` when the task was triggered without a payload.
    pub data: Option<String>,
    /// `application/json`, `application/super+json`, `text/plain`, …
    pub data_type: String,
}

impl Packet {
    pub const JSON: &'static str = "application/json";
    pub const SUPER_JSON: &'static str = "application/super+json";
    pub const TEXT: &'static str = "text/plain";
    pub const STORE: &'static str = "application/store";

    /// A JSON packet holding `value`.
    pub fn json(value: &Value) -> Self {
        Packet {
            data: Some(value.to_string()),
            data_type: Self::JSON.to_owned(),
        }
    }

    /// The packet as the JSON value a response shows: JSON is parsed, superjson is
    /// decoded to its `json` part, anything else is shown as a string. `None` when there
    /// is no data.
    pub fn to_value(&self) -> Option<Value> {
        let data = self.data.as_deref()?;
        Some(match self.data_type.as_str() {
            Self::JSON => {
                serde_json::from_str(data).unwrap_or_else(|_| Value::String(data.to_owned()))
            }
            Self::SUPER_JSON => match serde_json::from_str::<Value>(data) {
                Ok(Value::Object(mut envelope)) => envelope.remove("json").unwrap_or(Value::Null),
                _ => Value::String(data.to_owned()),
            },
            _ => Value::String(data.to_owned()),
        })
    }
}

/// A run as stored. Fields that only exist in some states are `None` outside them.
#[derive(Debug, Clone, PartialEq)]
pub struct Run {
    pub id: RunId,
    pub environment_id: EnvironmentId,
    pub task_identifier: String,
    pub status: RunStatus,
    pub payload: Packet,
    /// Set when the run completed successfully.
    pub output: Option<Packet>,
    /// Set when the run ended in failure: a `TaskRunError` JSON object.
    pub error: Option<Value>,
    /// The key as it is matched (the SDK sends a SHA-256 hex digest).
    pub idempotency_key: Option<String>,
    /// The user's own key and its scope, from `idempotencyKeyOptions`.
    pub idempotency_key_user: Option<String>,
    pub idempotency_key_scope: Option<String>,
    pub idempotency_key_expires_at: Option<DateTime<Utc>>,
    /// Sorted, without duplicates or blanks.
    pub tags: Vec<String>,
    pub metadata: Option<Packet>,
    /// When a delayed run is to be queued.
    pub delay_until: Option<DateTime<Utc>>,
    /// The TTL as the caller gave it (or its string form when given in seconds).
    pub ttl: Option<String>,
    /// When a queued run expires if no worker has started it; derived from `ttl` and the
    /// moment the run was queued.
    pub expire_at: Option<DateTime<Utc>>,
    /// When the expirer ended the run.
    pub expired_at: Option<DateTime<Utc>>,
    pub max_attempts: Option<u32>,
    pub max_duration_secs: Option<u32>,
    pub machine: Option<MachinePreset>,
    /// Ordering offset in milliseconds (contract §4.5).
    pub priority_ms: i32,
    pub is_test: bool,
    pub queue: QueueName,
    pub concurrency_key: Option<String>,
    pub lock_to_version: Option<String>,
    /// The version of the worker that executed the run.
    pub worker_version: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub completed_at: Option<DateTime<Utc>>,
    pub attempt_count: u32,
    /// Compute time summed over attempts, waits excluded.
    pub usage_duration_ms: i64,
    pub cost_in_cents: f64,
    pub base_cost_in_cents: f64,
    pub depth: u32,
    pub parent_run_id: Option<RunId>,
    pub root_run_id: Option<RunId>,
    pub batch_id: Option<BatchId>,
    pub resume_parent_on_completion: bool,
    pub schedule_id: Option<String>,
    /// Dequeue order: when the run was (last) queued minus its priority, in ms.
    pub queue_ts: i64,
    /// The worker the run is (or was last) leased to.
    pub worker_id: Option<WorkerId>,
    /// The attempt a worker holds right now, while the run is dequeued or executing.
    pub current_attempt_id: Option<AttemptId>,
    /// The held attempt is rescued when no heartbeat extends the lease past this.
    pub lease_expires_at: Option<DateTime<Utc>>,
    /// The server's backstop for `maxDuration`: the executing attempt times out here.
    pub timeout_at: Option<DateTime<Utc>>,
    /// When a run waiting after a failed attempt is queued again.
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// Attempts that failed (and so count against `maxAttempts`).
    pub failed_attempts: u32,
}

impl Run {
    /// Makes this run a child of `parent`: one level below it, under the same root (the
    /// parent itself when it has none).
    pub fn link_to_parent(&mut self, parent: &Run) {
        self.parent_run_id = Some(parent.id.clone());
        self.root_run_id = Some(
            parent
                .root_run_id
                .clone()
                .unwrap_or_else(|| parent.id.clone()),
        );
        self.depth = parent.depth.saturating_add(1);
    }

    /// The version a response shows: the executing worker's, else the locked one.
    pub fn version(&self) -> Option<&str> {
        self.worker_version
            .as_deref()
            .or(self.lock_to_version.as_deref())
    }

    /// How the run was triggered, derived from its batch and parent links.
    pub fn trigger_function(&self) -> &'static str {
        match (self.batch_id.is_some(), self.resume_parent_on_completion) {
            (false, false) => "trigger",
            (false, true) => "triggerAndWait",
            (true, false) => "batchTrigger",
            (true, true) => "batchTriggerAndWait",
        }
    }
}

/// The status of one attempt (the v3 attempt vocabulary of the founding document).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptStatus {
    Pending,
    Executing,
    Paused,
    Completed,
    Failed,
    Canceled,
}

impl AttemptStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            AttemptStatus::Pending => "PENDING",
            AttemptStatus::Executing => "EXECUTING",
            AttemptStatus::Paused => "PAUSED",
            AttemptStatus::Completed => "COMPLETED",
            AttemptStatus::Failed => "FAILED",
            AttemptStatus::Canceled => "CANCELED",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            AttemptStatus::Pending,
            AttemptStatus::Executing,
            AttemptStatus::Paused,
            AttemptStatus::Completed,
            AttemptStatus::Failed,
            AttemptStatus::Canceled,
        ]
        .into_iter()
        .find(|a| a.as_str() == s)
    }
}

/// One attempt of a run.
#[derive(Debug, Clone, PartialEq)]
pub struct Attempt {
    pub id: AttemptId,
    pub run_id: RunId,
    pub number: u32,
    pub status: AttemptStatus,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub completed_at: Option<DateTime<Utc>>,
    /// `{message, name?, stackTrace?}` when the attempt failed.
    pub error: Option<Value>,
    /// The worker that held the attempt.
    pub worker_id: Option<WorkerId>,
    /// Compute time of the attempt (start to end, waits excluded), in ms.
    pub duration_ms: i64,
    /// Time the attempt spent blocked on waitpoints so far, in ms: not compute time.
    pub waited_ms: i64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn packets_render_by_type() {
        let cases = [
            (Some(r#"{"a":1}"#), Packet::JSON, Some(json!({"a": 1}))),
            (
                Some(r#"{"json":{"a":1},"meta":{}}"#),
                Packet::SUPER_JSON,
                Some(json!({"a": 1})),
            ),
            (Some("hello"), Packet::TEXT, Some(json!("hello"))),
            (None, Packet::JSON, None),
        ];
        for (data, data_type, want) in cases {
            let packet = Packet {
                data: data.map(str::to_owned),
                data_type: data_type.to_owned(),
            };
            assert_eq!(packet.to_value(), want, "{data:?} {data_type}");
        }
    }
}
