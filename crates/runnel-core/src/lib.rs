//! Runnel's domain: the types every other crate speaks in.
//!
//! This crate decides and never waits: it holds ids, the run status set and its public
//! mappings, the run's state as data and its transitions (`state`), duration parsing, the
//! trigger request and its validation, API keys and the idempotency rules. It performs no
//! IO (no tokio, no database); callers pass `now` in.

pub mod batch;
pub mod cost;
pub mod duration;
pub mod envvars;
pub mod id;
pub mod idempotency;
pub mod key;
pub mod list;
pub mod machine;
pub mod metadata;
pub mod nesting;
#[cfg(feature = "openapi")]
pub mod openapi;
pub mod packets;
pub mod queue;
pub mod replay;
pub mod retry;
pub mod run;
pub mod schedule;
pub mod secrets;
pub mod state;
pub mod status;
pub mod tags;
pub mod tenancy;
pub mod trigger;
pub mod view;
pub mod waitpoint;
pub mod worker;

pub use id::{
    AttemptId, BatchId, EnvironmentId, ProjectId, QueueId, RunId, ScheduleId, SnapshotId,
    WaitpointId, WorkerId,
};
pub use key::{EnvironmentKind, PersonalAccessToken, SecretKey};
pub use machine::MachinePreset;
pub use queue::QueueName;
pub use status::{ApiVersion, RunStatus};
