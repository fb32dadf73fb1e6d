//! Waitpoints and execution snapshots: what a run waits for, and the history of an
//! executing run as the Trigger.dev runtime protocol sees it
//! (`reference/trigger-dev-cli-protocol.md` §4).
//!
//! A waitpoint is `PENDING` until it is completed, once: a `RUN` waitpoint when its
//! child run ends (with the child's output, or its error), a `DATETIME` one when its time
//! comes, a `MANUAL` one (a token) when somebody completes it or it times out. A run
//! blocked by waitpoints is `WaitingToResume` until **all** of them are completed; it
//! then resumes with an `EXECUTING` snapshot listing the completed ones.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::id::{BatchId, RunId, SnapshotId, WaitpointId};

/// What completes a waitpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum WaitpointKind {
    /// A child run ending.
    Run,
    /// A point in time.
    Datetime,
    /// A token, completed by a call (or its timeout).
    Manual,
    /// Every item of a batch ending.
    Batch,
}

impl WaitpointKind {
    pub const ALL: [WaitpointKind; 4] = [
        WaitpointKind::Run,
        WaitpointKind::Datetime,
        WaitpointKind::Manual,
        WaitpointKind::Batch,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            WaitpointKind::Run => "RUN",
            WaitpointKind::Datetime => "DATETIME",
            WaitpointKind::Manual => "MANUAL",
            WaitpointKind::Batch => "BATCH",
        }
    }
}

impl FromStr for WaitpointKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        WaitpointKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| format!("unknown waitpoint type {s:?}"))
    }
}

impl fmt::Display for WaitpointKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A stored waitpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct Waitpoint {
    pub id: WaitpointId,
    pub environment_id: crate::EnvironmentId,
    pub kind: WaitpointKind,
    /// `None` while pending.
    pub completed_at: Option<DateTime<Utc>>,
    /// The key as it is matched, and the user's own.
    pub idempotency_key: Option<String>,
    pub idempotency_key_user: Option<String>,
    pub idempotency_key_expires_at: Option<DateTime<Utc>>,
    /// `RUN`: the child run whose end completes it.
    pub completed_by_run: Option<RunId>,
    /// `RUN` of a batch item: the batch and the item's index.
    pub batch: Option<(BatchId, u32)>,
    /// `DATETIME`: when it completes.
    pub completes_at: Option<DateTime<Utc>>,
    /// `MANUAL`: when it times out, if nobody completes it first.
    pub timeout_at: Option<DateTime<Utc>>,
    /// The serialized output (child output, token data, or an error's JSON).
    pub output: Option<String>,
    pub output_type: Option<String>,
    pub output_is_error: bool,
    pub tags: Vec<String>,
    /// `MANUAL`: the secret in its callback URL (an HTTP POST there completes it).
    pub callback_secret: Option<String>,
    pub created_at: DateTime<Utc>,
}

impl Waitpoint {
    /// A new pending waitpoint of `kind`.
    pub fn new(
        kind: WaitpointKind,
        environment_id: crate::EnvironmentId,
        now: DateTime<Utc>,
    ) -> Self {
        Waitpoint {
            id: WaitpointId::generate(now.timestamp_millis()),
            environment_id,
            kind,
            completed_at: None,
            idempotency_key: None,
            idempotency_key_user: None,
            idempotency_key_expires_at: None,
            completed_by_run: None,
            batch: None,
            completes_at: None,
            timeout_at: None,
            output: None,
            output_type: None,
            output_is_error: false,
            tags: Vec::new(),
            callback_secret: None,
            created_at: now,
        }
    }

    pub fn is_completed(&self) -> bool {
        self.completed_at.is_some()
    }

    /// Whether it was completed by its timeout.
    pub fn timed_out(&self) -> bool {
        self.output_is_error && self.kind == WaitpointKind::Manual && self.timeout_at.is_some()
    }

    /// A token's status as the management API shows it.
    pub fn token_status(&self) -> TokenStatus {
        match self.completed_at {
            None => TokenStatus::Waiting,
            Some(_) if self.timed_out() => TokenStatus::TimedOut,
            Some(_) => TokenStatus::Completed,
        }
    }
}

/// A waitpoint token's status (`filter[status]` of the token list).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TokenStatus {
    Waiting,
    Completed,
    TimedOut,
}

impl TokenStatus {
    pub const ALL: [TokenStatus; 3] = [
        TokenStatus::Waiting,
        TokenStatus::Completed,
        TokenStatus::TimedOut,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TokenStatus::Waiting => "WAITING",
            TokenStatus::Completed => "COMPLETED",
            TokenStatus::TimedOut => "TIMED_OUT",
        }
    }
}

impl FromStr for TokenStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        TokenStatus::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| {
                format!("unknown waitpoint status {s:?} (WAITING, COMPLETED, TIMED_OUT)")
            })
    }
}

/// Which tokens a list asks for: newest first, a page after or before a cursor.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TokenListQuery {
    pub statuses: Vec<TokenStatus>,
    pub idempotency_key: Option<String>,
    /// Tokens carrying any of these tags.
    pub tags: Vec<String>,
    pub created_from: Option<DateTime<Utc>>,
    pub created_to: Option<DateTime<Utc>>,
    /// Older than this token (the next page).
    pub after: Option<WaitpointId>,
    /// Newer than this token (the previous page).
    pub before: Option<WaitpointId>,
    pub limit: u32,
}

/// How a waitpoint is completed.
#[derive(Debug, Clone, PartialEq)]
pub struct WaitpointOutput {
    pub output: Option<String>,
    pub output_type: Option<String>,
    pub is_error: bool,
}

impl WaitpointOutput {
    /// No output (a `DATETIME` waitpoint).
    pub fn none() -> Self {
        WaitpointOutput {
            output: None,
            output_type: None,
            is_error: false,
        }
    }

    /// A token's timeout: the error the SDK turns into a `WaitpointTimeoutError`.
    pub fn timed_out(at: DateTime<Utc>) -> Self {
        WaitpointOutput {
            output: Some(
                json!({
                    "code": "TRIGGER_WAITPOINT_TIMEOUT",
                    "message": format!(
                        "Waitpoint timed out at {}",
                        at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
                    ),
                })
                .to_string(),
            ),
            output_type: Some(crate::run::Packet::JSON.to_owned()),
            is_error: true,
        }
    }

    /// A child run's error (`TaskRunError` JSON) as its waitpoint's output.
    pub fn error(error: &Value) -> Self {
        WaitpointOutput {
            output: Some(error.to_string()),
            output_type: Some(crate::run::Packet::JSON.to_owned()),
            is_error: true,
        }
    }
}

/// The executionStatus of a snapshot (the protocol's `TaskRunExecutionStatus`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ExecutionStatus {
    RunCreated,
    Queued,
    QueuedExecuting,
    PendingExecuting,
    Executing,
    ExecutingWithWaitpoints,
    Suspended,
    PendingCancel,
    Finished,
    Delayed,
}

impl ExecutionStatus {
    pub const ALL: [ExecutionStatus; 10] = [
        ExecutionStatus::RunCreated,
        ExecutionStatus::Queued,
        ExecutionStatus::QueuedExecuting,
        ExecutionStatus::PendingExecuting,
        ExecutionStatus::Executing,
        ExecutionStatus::ExecutingWithWaitpoints,
        ExecutionStatus::Suspended,
        ExecutionStatus::PendingCancel,
        ExecutionStatus::Finished,
        ExecutionStatus::Delayed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ExecutionStatus::RunCreated => "RUN_CREATED",
            ExecutionStatus::Queued => "QUEUED",
            ExecutionStatus::QueuedExecuting => "QUEUED_EXECUTING",
            ExecutionStatus::PendingExecuting => "PENDING_EXECUTING",
            ExecutionStatus::Executing => "EXECUTING",
            ExecutionStatus::ExecutingWithWaitpoints => "EXECUTING_WITH_WAITPOINTS",
            ExecutionStatus::Suspended => "SUSPENDED",
            ExecutionStatus::PendingCancel => "PENDING_CANCEL",
            ExecutionStatus::Finished => "FINISHED",
            ExecutionStatus::Delayed => "DELAYED",
        }
    }
}

impl FromStr for ExecutionStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        ExecutionStatus::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| format!("unknown execution status {s:?}"))
    }
}

impl fmt::Display for ExecutionStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One entry of a run's execution history.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    pub id: SnapshotId,
    pub run_id: RunId,
    /// Position in the run's history, from 1.
    pub seq: i64,
    pub status: ExecutionStatus,
    pub description: String,
    /// The attempt the snapshot belongs to (`None` before the first).
    pub attempt_number: Option<u32>,
    /// On a resume: the waitpoints that were blocking the run, now completed.
    pub completed_waitpoints: Vec<WaitpointId>,
    pub created_at: DateTime<Utc>,
}

/// A snapshot to append to a run's history.
#[derive(Debug, Clone, PartialEq)]
pub struct NewSnapshot {
    pub id: SnapshotId,
    pub run_id: RunId,
    pub status: ExecutionStatus,
    pub description: String,
    pub attempt_number: Option<u32>,
}

impl NewSnapshot {
    pub fn new(
        run_id: &RunId,
        status: ExecutionStatus,
        description: impl Into<String>,
        attempt_number: Option<u32>,
        now: DateTime<Utc>,
    ) -> Self {
        NewSnapshot {
            id: SnapshotId::generate(now.timestamp_millis()),
            run_id: run_id.clone(),
            status,
            description: description.into(),
            attempt_number,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_and_statuses_parse_back() {
        for kind in WaitpointKind::ALL {
            assert_eq!(kind.as_str().parse::<WaitpointKind>().unwrap(), kind);
            assert_eq!(
                serde_json::to_value(kind).unwrap(),
                json!(kind.as_str()),
                "serde and as_str agree"
            );
        }
        for status in ExecutionStatus::ALL {
            assert_eq!(status.as_str().parse::<ExecutionStatus>().unwrap(), status);
            assert_eq!(
                serde_json::to_value(status).unwrap(),
                json!(status.as_str())
            );
        }
        assert!("FROZEN".parse::<ExecutionStatus>().is_err());
    }

    #[test]
    fn a_timed_out_token_carries_the_error_the_sdk_recognizes() {
        let at = "2026-12-03T10:00:00Z".parse().unwrap();
        let out = WaitpointOutput::timed_out(at);
        assert!(out.is_error);
        let v: Value = serde_json::from_str(out.output.as_deref().unwrap()).unwrap();
        assert_eq!(v["code"], "TRIGGER_WAITPOINT_TIMEOUT");
        assert_eq!(
            v["message"],
            "Waitpoint timed out at 2026-12-03T10:00:00.000Z"
        );
    }
}
