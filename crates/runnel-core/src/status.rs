//! Run statuses: the internal set we store, and the two public sets the API speaks.
//!
//! Which public set a response uses depends on the request's `x-trigger-api-version`
//! header ([`ApiVersion`]): the v4 SDK sends `2025-07-16` and gets the current set, every
//! other caller (v3 SDKs, curl) gets the legacy set of the founding document. The SDK
//! rejects a status outside its enum, so the mapping must never leak the other set.
//!
//! The transitions between statuses are the table in [`crate::state::table`], drawn in
//! `docs/state-machine.md`; a run's state with its data is [`crate::state::RunState`].

use std::fmt;
use std::str::FromStr;

/// The status of a run as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RunStatus {
    /// Triggered with a delay in the future; the promoter queues it at `delayUntil`.
    Delayed,
    /// No registered worker version serves the task (or the locked version) yet.
    PendingVersion,
    /// Waiting for a worker to dequeue it; the expirer ends it when its TTL passes.
    Queued,
    /// Leased to a worker that has not started the attempt yet.
    Dequeued,
    /// An attempt is running.
    Executing,
    /// An attempt failed and the next one waits for its backoff.
    RetryingAfterFailure,
    /// Suspended on a wait or a child run.
    WaitingToResume,
    CompletedSuccessfully,
    CompletedWithErrors,
    Canceled,
    Interrupted,
    Crashed,
    SystemFailure,
    Expired,
    TimedOut,
}

impl RunStatus {
    pub const ALL: [RunStatus; 15] = [
        RunStatus::Delayed,
        RunStatus::PendingVersion,
        RunStatus::Queued,
        RunStatus::Dequeued,
        RunStatus::Executing,
        RunStatus::RetryingAfterFailure,
        RunStatus::WaitingToResume,
        RunStatus::CompletedSuccessfully,
        RunStatus::CompletedWithErrors,
        RunStatus::Canceled,
        RunStatus::Interrupted,
        RunStatus::Crashed,
        RunStatus::SystemFailure,
        RunStatus::Expired,
        RunStatus::TimedOut,
    ];

    /// The stored name (also the upstream internal name).
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Delayed => "DELAYED",
            RunStatus::PendingVersion => "PENDING_VERSION",
            RunStatus::Queued => "QUEUED",
            RunStatus::Dequeued => "DEQUEUED",
            RunStatus::Executing => "EXECUTING",
            RunStatus::RetryingAfterFailure => "RETRYING_AFTER_FAILURE",
            RunStatus::WaitingToResume => "WAITING_TO_RESUME",
            RunStatus::CompletedSuccessfully => "COMPLETED_SUCCESSFULLY",
            RunStatus::CompletedWithErrors => "COMPLETED_WITH_ERRORS",
            RunStatus::Canceled => "CANCELED",
            RunStatus::Interrupted => "INTERRUPTED",
            RunStatus::Crashed => "CRASHED",
            RunStatus::SystemFailure => "SYSTEM_FAILURE",
            RunStatus::Expired => "EXPIRED",
            RunStatus::TimedOut => "TIMED_OUT",
        }
    }

    /// Final statuses: nothing moves a run out of them.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            RunStatus::CompletedSuccessfully
                | RunStatus::CompletedWithErrors
                | RunStatus::Canceled
                | RunStatus::Interrupted
                | RunStatus::Crashed
                | RunStatus::SystemFailure
                | RunStatus::Expired
                | RunStatus::TimedOut
        )
    }

    // `can_move_to` is defined next to the transition table it reads
    // (`state/table.rs`), so this file does not depend on the state module.

    /// Final and unsuccessful in a way that frees the run's idempotency key (contract §4.4):
    /// a new trigger with the key creates a new run instead of returning this one.
    /// A canceled run keeps its key.
    pub fn releases_idempotency_key(self) -> bool {
        matches!(
            self,
            RunStatus::CompletedWithErrors
                | RunStatus::Interrupted
                | RunStatus::Crashed
                | RunStatus::SystemFailure
                | RunStatus::TimedOut
                | RunStatus::Expired
        )
    }

    /// The public name for a caller speaking `version`.
    pub fn public(self, version: ApiVersion) -> &'static str {
        use ApiVersion::{Current, Legacy};
        match (self, version) {
            (RunStatus::Delayed, _) => "DELAYED",
            (RunStatus::PendingVersion, Legacy) => "WAITING_FOR_DEPLOY",
            (RunStatus::PendingVersion, Current) => "PENDING_VERSION",
            (RunStatus::Queued, _) => "QUEUED",
            (RunStatus::Dequeued, Legacy) => "EXECUTING",
            (RunStatus::Dequeued, Current) => "DEQUEUED",
            (RunStatus::Executing, _) => "EXECUTING",
            (RunStatus::RetryingAfterFailure, Legacy) => "REATTEMPTING",
            (RunStatus::RetryingAfterFailure, Current) => "EXECUTING",
            (RunStatus::WaitingToResume, Legacy) => "FROZEN",
            (RunStatus::WaitingToResume, Current) => "WAITING",
            (RunStatus::CompletedSuccessfully, _) => "COMPLETED",
            (RunStatus::CompletedWithErrors, _) => "FAILED",
            (RunStatus::Interrupted, Legacy) => "INTERRUPTED",
            (RunStatus::Interrupted, Current) => "FAILED",
            (RunStatus::Canceled, _) => "CANCELED",
            (RunStatus::Crashed, _) => "CRASHED",
            (RunStatus::SystemFailure, _) => "SYSTEM_FAILURE",
            (RunStatus::Expired, _) => "EXPIRED",
            (RunStatus::TimedOut, _) => "TIMED_OUT",
        }
    }

    /// The `is*` booleans of a run response, as the public status implies them.
    pub fn flags(self, version: ApiVersion) -> StatusFlags {
        let public = self.public(version);
        let is_queued = matches!(
            public,
            "QUEUED" | "WAITING_FOR_DEPLOY" | "DELAYED" | "PENDING_VERSION"
        );
        let is_executing = matches!(public, "EXECUTING" | "REATTEMPTING" | "FROZEN" | "DEQUEUED");
        let is_waiting = public == "WAITING";
        // Upstream leaves EXPIRED and TIMED_OUT out of `isCompleted`, so the SDK's
        // `runs.poll` never stops on them. We count every final status as completed on
        // purpose (see docs/state-machine.md).
        let is_completed = self.is_final();
        StatusFlags {
            is_queued,
            is_executing,
            is_waiting,
            is_completed,
            is_success: self == RunStatus::CompletedSuccessfully,
            is_failed: is_completed && self != RunStatus::CompletedSuccessfully,
            is_cancelled: self == RunStatus::Canceled,
        }
    }
}

/// The seven `is*` booleans every run response carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatusFlags {
    pub is_queued: bool,
    pub is_executing: bool,
    pub is_waiting: bool,
    pub is_completed: bool,
    pub is_success: bool,
    pub is_failed: bool,
    pub is_cancelled: bool,
}

impl fmt::Display for RunStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A stored status name that this build does not know.
#[derive(Debug, thiserror::Error)]
#[error("unknown run status {0:?}")]
pub struct UnknownStatus(pub String);

impl FromStr for RunStatus {
    type Err = UnknownStatus;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        RunStatus::ALL
            .into_iter()
            .find(|status| status.as_str() == s)
            .ok_or_else(|| UnknownStatus(s.to_owned()))
    }
}

/// Which public vocabulary a caller speaks, from its `x-trigger-api-version` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ApiVersion {
    /// No header (or an unknown one): v3 SDKs, curl, the founding document.
    #[default]
    Legacy,
    /// `2025-07-16`: the v4 SDK.
    Current,
}

impl ApiVersion {
    pub const CURRENT_HEADER_VALUE: &'static str = "2025-07-16";

    pub fn from_header(value: Option<&str>) -> Self {
        match value {
            Some(v) if v.trim() == Self::CURRENT_HEADER_VALUE => ApiVersion::Current,
            _ => ApiVersion::Legacy,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEGACY_SET: [&str; 14] = [
        "DELAYED",
        "WAITING_FOR_DEPLOY",
        "QUEUED",
        "EXECUTING",
        "REATTEMPTING",
        "FROZEN",
        "COMPLETED",
        "CANCELED",
        "FAILED",
        "CRASHED",
        "INTERRUPTED",
        "SYSTEM_FAILURE",
        "EXPIRED",
        "TIMED_OUT",
    ];
    const CURRENT_SET: [&str; 13] = [
        "PENDING_VERSION",
        "QUEUED",
        "DEQUEUED",
        "EXECUTING",
        "WAITING",
        "COMPLETED",
        "CANCELED",
        "FAILED",
        "CRASHED",
        "SYSTEM_FAILURE",
        "DELAYED",
        "EXPIRED",
        "TIMED_OUT",
    ];

    #[test]
    fn every_status_maps_into_the_callers_set() {
        for status in RunStatus::ALL {
            assert!(
                LEGACY_SET.contains(&status.public(ApiVersion::Legacy)),
                "{status}"
            );
            assert!(
                CURRENT_SET.contains(&status.public(ApiVersion::Current)),
                "{status}"
            );
        }
    }

    #[test]
    fn stored_names_round_trip() {
        for status in RunStatus::ALL {
            assert_eq!(status.as_str().parse::<RunStatus>().unwrap(), status);
        }
        assert!("PENDING".parse::<RunStatus>().is_err());
    }

    #[test]
    fn header_selects_the_vocabulary() {
        assert_eq!(ApiVersion::from_header(None), ApiVersion::Legacy);
        assert_eq!(
            ApiVersion::from_header(Some("2024-01-01")),
            ApiVersion::Legacy
        );
        assert_eq!(
            ApiVersion::from_header(Some("2025-07-16")),
            ApiVersion::Current
        );
    }

    #[test]
    fn flags_follow_the_public_status() {
        let queued = RunStatus::Queued.flags(ApiVersion::Legacy);
        assert!(queued.is_queued && !queued.is_executing && !queued.is_completed);
        let frozen = RunStatus::WaitingToResume.flags(ApiVersion::Legacy);
        assert!(frozen.is_executing && !frozen.is_waiting);
        let waiting = RunStatus::WaitingToResume.flags(ApiVersion::Current);
        assert!(waiting.is_waiting && !waiting.is_executing);
        let done = RunStatus::CompletedSuccessfully.flags(ApiVersion::Current);
        assert!(done.is_completed && done.is_success && !done.is_failed);
        let canceled = RunStatus::Canceled.flags(ApiVersion::Current);
        assert!(canceled.is_completed && canceled.is_failed && canceled.is_cancelled);
        let expired = RunStatus::Expired.flags(ApiVersion::Legacy);
        assert!(expired.is_completed && expired.is_failed && !expired.is_queued);
    }

    #[test]
    fn nothing_leaves_a_final_status() {
        for from in RunStatus::ALL.into_iter().filter(|s| s.is_final()) {
            for to in RunStatus::ALL {
                assert!(!from.can_move_to(to), "{from} -> {to}");
            }
        }
    }

    #[test]
    fn every_live_status_can_be_canceled_and_reaches_a_final_status() {
        for from in RunStatus::ALL.into_iter().filter(|s| !s.is_final()) {
            assert!(from.can_move_to(RunStatus::Canceled), "{from}");
        }
        assert!(RunStatus::Queued.can_move_to(RunStatus::Expired));
        assert!(
            !RunStatus::Delayed.can_move_to(RunStatus::Expired),
            "only queued runs expire"
        );
        assert!(
            !RunStatus::Queued.can_move_to(RunStatus::CompletedSuccessfully),
            "completion needs an attempt"
        );
    }

    proptest::proptest! {
        /// Applying any sequence of allowed moves: once final, the run stays where it is.
        #[test]
        fn final_statuses_absorb(moves in proptest::collection::vec(0usize..15, 0..40)) {
            let mut status = RunStatus::Queued;
            let mut final_seen: Option<RunStatus> = None;
            for m in moves {
                let to = RunStatus::ALL[m];
                if status.can_move_to(to) {
                    status = to;
                }
                if let Some(f) = final_seen {
                    proptest::prop_assert_eq!(status, f);
                }
                if status.is_final() {
                    final_seen = Some(status);
                }
            }
        }
    }

    #[test]
    fn exactly_the_final_statuses_are_completed() {
        for status in RunStatus::ALL {
            for version in [ApiVersion::Legacy, ApiVersion::Current] {
                assert_eq!(
                    status.flags(version).is_completed,
                    status.is_final(),
                    "{status}"
                );
            }
        }
        let finals = RunStatus::ALL.iter().filter(|s| s.is_final()).count();
        assert_eq!(finals, 8);
    }
}
