//! Idempotency keys (contract §4.4): what a trigger does when a run already holds its key.
//!
//! Keys are unique per (environment, task, key). Storage finds the run holding the key
//! inside the trigger's transaction and asks [`decide`] what to do; the decision is pure.

use chrono::{DateTime, Utc};

use crate::status::RunStatus;

/// Longest idempotency key accepted.
pub const MAX_KEY_LEN: usize = 2048;
/// How long a key holds when the trigger names no TTL: 30 days.
pub const KEY_TTL_DEFAULT_SECS: u64 = 30 * 24 * 3600;

/// What a trigger with a key does about the run that already holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Return the holder's id with `isCached: true`; create nothing.
    ReturnExisting,
    /// Take the key off the holder (its key expired, or the run failed or expired) and
    /// create a new run that holds it.
    ReleaseAndCreate,
}

/// Decides for a holder in `status` whose key expires at `key_expires_at`.
pub fn decide(
    status: RunStatus,
    key_expires_at: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> Decision {
    let key_expired = key_expires_at.is_some_and(|at| at <= now);
    if key_expired || status.releases_idempotency_key() {
        Decision::ReleaseAndCreate
    } else {
        Decision::ReturnExisting
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Duration;

    #[test]
    fn decision_table() {
        let now = Utc::now();
        let later = Some(now + Duration::hours(1));
        let earlier = Some(now - Duration::seconds(1));
        use Decision::*;
        use RunStatus::*;
        let cases = [
            (Queued, later, ReturnExisting),
            (Delayed, later, ReturnExisting),
            (Executing, later, ReturnExisting),
            (CompletedSuccessfully, later, ReturnExisting),
            (Canceled, later, ReturnExisting),
            (CompletedWithErrors, later, ReleaseAndCreate),
            (Crashed, later, ReleaseAndCreate),
            (SystemFailure, later, ReleaseAndCreate),
            (TimedOut, later, ReleaseAndCreate),
            (Interrupted, later, ReleaseAndCreate),
            (Expired, later, ReleaseAndCreate),
            (Queued, earlier, ReleaseAndCreate),
            (CompletedSuccessfully, earlier, ReleaseAndCreate),
            (Queued, None, ReturnExisting),
        ];
        for (status, expires, want) in cases {
            assert_eq!(decide(status, expires, now), want, "{status} {expires:?}");
        }
    }
}
