//! Runnel's Rust SDK: a [`Client`] for the management API (trigger, retrieve, cancel,
//! wait) and a [`Worker`] runtime that executes runs through the worker protocol.
//!
//! The runtime ([`worker`]) owns the protocol: registration, the long-poll dequeue loop,
//! heartbeats, `maxDuration`, cancellation and graceful shutdown. What an attempt *does*
//! is an [`Executor`]: typed async functions ([`Tasks`]) or, in the `runnel worker`
//! binary, a shell command per run.
//!
//! ```no_run
//! use std::sync::Arc;
//! use std::time::Duration;
//!
//! use runnel_sdk::{Client, Task, Tasks, TriggerOptions, Worker, WorkerOptions};
//! use serde::Deserialize;
//!
//! #[derive(Deserialize)]
//! struct Hello {
//!     name: String,
//! }
//!
//! # async fn example() -> Result<(), runnel_sdk::Error> {
//! let client = Client::new("http://127.0.0.1:3030", "tr_dev_…");
//!
//! // A worker serving one task, until Ctrl-C.
//! let tasks = Tasks::new().task(
//!     Task::new("hello").max_attempts(2),
//!     |payload: Hello| async move { Ok::<_, String>(format!("Hello, {}!", payload.name)) },
//! );
//! let worker = Worker::new(client.clone(), WorkerOptions::new("example"));
//! let ctrl_c = async {
//!     let _ = tokio::signal::ctrl_c().await;
//! };
//! tokio::spawn(worker.run(Arc::new(tasks), ctrl_c));
//!
//! // Elsewhere: trigger a run and wait for its output.
//! let run = client
//!     .trigger("hello", &serde_json::json!({"name": "Ada"}), TriggerOptions::default())
//!     .await?;
//! let done = client
//!     .wait_for_completion(&run.id, Duration::from_millis(200), Duration::from_secs(60))
//!     .await?;
//! let greeting: String = done.output_as()?;
//! println!("{greeting}");
//! # Ok(())
//! # }
//! ```

pub mod client;
pub mod events;
pub mod executor;
pub mod list;
pub mod tasks;
pub mod worker;

pub use client::{Client, Error, RunInfo, RunStatus, TriggerOptions, Triggered};
pub use events::{RunEvent, RunEventPage, RunEventsOptions};
pub use executor::{Executor, StopHandle, StopReason, StopSignal};
pub use list::{RunListOptions, RunPage};
pub use reqwest::StatusCode;
pub use runnel_core::retry::RetryPolicy;
pub use runnel_core::worker::{
    AttemptOutcome, DequeuedRun, FailureKind, TaskDefinition, TaskFailure,
};
pub use tasks::{Task, TaskContext, Tasks};
pub use worker::{RegisteredWorker, Worker, WorkerOptions, WorkerSummary};
