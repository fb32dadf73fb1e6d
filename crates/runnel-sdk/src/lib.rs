//! Runnel's Rust SDK: a client for the management API (trigger, retrieve) and a worker
//! runtime that executes runs through the worker protocol (docs/worker-protocol.md).
//!
//! The runtime ([`worker`]) owns the protocol: registration, the long-poll dequeue loop,
//! heartbeats, `maxDuration`, cancellation and graceful shutdown. What an attempt *does*
//! is an [`Executor`]: typed async functions ([`tasks`]) or, in the `runnel worker`
//! binary, a shell command per run.

pub mod executor;

pub use executor::{Executor, StopReason, StopSignal};
pub use runnel_core::worker::{
    AttemptOutcome, DequeuedRun, FailureKind, TaskDefinition, TaskFailure,
};
