//! Friendly ids: `<prefix>_<body>`, where the body is lowercase base32 (`0-9a-v`) with no
//! underscore, so `split('_')` always yields exactly two parts (the contract requires it).
//!
//! The body starts with the creation time in milliseconds (48 bits), then random bits, so
//! ids of one kind sort by creation time.

use std::fmt;

use rand::RngCore;
use serde::{Deserialize, Serialize};

const ALPHABET: &[u8; 32] = b"0123456789abcdefghijklmnopqrstuv";

/// Encodes 15 bytes (6 of time, 9 random) as 24 base32 characters.
fn time_ordered_body(now_ms: i64) -> String {
    let mut bytes = [0u8; 15];
    let ms = u64::try_from(now_ms).unwrap_or(0);
    bytes[..6].copy_from_slice(&ms.to_be_bytes()[2..]);
    rand::rng().fill_bytes(&mut bytes[6..]);
    let mut out = String::with_capacity(24);
    // 15 bytes = 120 bits = 24 groups of 5 bits.
    let mut acc: u32 = 0;
    let mut bits = 0;
    for b in bytes {
        acc = (acc << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(ALPHABET[((acc >> bits) & 31) as usize] as char);
        }
    }
    out
}

/// Whether `s` is `<prefix>_<body>` with a non-empty lowercase alphanumeric body.
fn is_friendly(s: &str, prefix: &str) -> bool {
    s.strip_prefix(prefix)
        .and_then(|rest| rest.strip_prefix('_'))
        .is_some_and(|body| {
            !body.is_empty()
                && body.len() <= 64
                && body
                    .bytes()
                    .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase())
        })
}

macro_rules! friendly_id {
    ($(#[$doc:meta])* $name:ident, $prefix:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            pub const PREFIX: &'static str = $prefix;

            /// A new, time-ordered id.
            pub fn generate(now_ms: i64) -> Self {
                Self(format!("{}_{}", $prefix, time_ordered_body(now_ms)))
            }

            /// Parses an id received from outside; `None` when it is not of this kind.
            pub fn parse(s: &str) -> Option<Self> {
                is_friendly(s, $prefix).then(|| Self(s.to_owned()))
            }

            /// Wraps an id read back from storage, where it was validated on the way in.
            pub fn from_trusted(s: String) -> Self {
                Self(s)
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

friendly_id!(
    /// A run: `run_…`.
    RunId,
    "run"
);
friendly_id!(
    /// A batch of runs triggered together: `batch_…`.
    BatchId,
    "batch"
);
friendly_id!(
    /// A project: `proj_…` (the project's external reference).
    ProjectId,
    "proj"
);
friendly_id!(
    /// An environment of a project (dev, staging, prod): `env_…`.
    EnvironmentId,
    "env"
);
friendly_id!(
    /// An attempt of a run: `attempt_…`.
    AttemptId,
    "attempt"
);
friendly_id!(
    /// A registered worker process: `worker_…`.
    WorkerId,
    "worker"
);
friendly_id!(
    /// A queue of an environment: `queue_…`.
    QueueId,
    "queue"
);
friendly_id!(
    /// Something a run can wait for (a child run, a time, a token): `waitpoint_…`.
    WaitpointId,
    "waitpoint"
);
friendly_id!(
    /// A cron schedule that triggers runs of a task: `sched_…`.
    ScheduleId,
    "sched"
);
friendly_id!(
    /// One entry of a run's execution history (the dev CLI protocol's unit): `snapshot_…`.
    SnapshotId,
    "snapshot"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_parse_back_and_have_one_underscore() {
        let id = RunId::generate(1_700_000_000_000);
        assert_eq!(id.as_str().len(), "run_".len() + 24);
        assert_eq!(id.as_str().split('_').count(), 2);
        assert_eq!(RunId::parse(id.as_str()), Some(id));
    }

    #[test]
    fn ids_sort_by_creation_time() {
        let earlier = RunId::generate(1_700_000_000_000);
        let later = RunId::generate(1_700_000_000_001);
        assert!(earlier < later);
    }

    #[test]
    fn parse_rejects_other_kinds_and_bad_bodies() {
        for bad in [
            "",
            "run_",
            "run",
            "batch_abc",
            "run_ABC",
            "run_a_b",
            "run_a-b",
            "xrun_abc",
        ] {
            assert_eq!(RunId::parse(bad), None, "{bad:?}");
        }
        assert!(RunId::parse("run_cm1abc").is_some());
    }
}
