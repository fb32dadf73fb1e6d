//! Runnel's Rust SDK: a [`Client`] for the management API (trigger, retrieve, cancel,
//! wait) and a [`Worker`] runtime that executes runs through the worker protocol.
//!
//! The runtime ([`worker`]) owns the protocol: registration, the long-poll dequeue loop,
//! heartbeats, `maxDuration`, cancellation and graceful shutdown. What an attempt *does*
//! is an [`Executor`]: typed async functions ([`Tasks`]) or, in the `runnel worker`
//! binary, a shell command per run.
//!
//! A task registered with [`Tasks::task_with_context`] can wait through its
//! [`TaskContext`] ([`waits`]): `trigger_and_wait` a child run, `batch_trigger_and_wait`
//! several, `wait_for` / `wait_until` a time, `wait_for_token` a token made with
//! [`Client::create_token`]. The run waits on the server meanwhile (`WAITING`, no compute
//! time) while the task's future awaits, polling the run's latest snapshot every
//! [`waits::WAIT_POLL_INTERVAL`].
//!
//! A task with a schedule ([`Task::cron`], or [`Task::scheduled`] for schedules created
//! through the API) takes a [`ScheduledPayload`] ([`scheduled`]): the occurrence's time,
//! the schedule's id and type, the next occurrences.
//!
//! ```no_run
//! use runnel_sdk::{TaskContext, Tasks, TriggerOptions};
//! use std::time::Duration;
//!
//! let tasks = Tasks::new().task_with_context("parent", |n: i64, ctx: TaskContext| async move {
//!     let child = ctx.trigger_and_wait("double", &n, TriggerOptions::default()).await?;
//!     ctx.wait_for(Duration::from_secs(10)).await?;
//!     child.output_as::<i64>()
//! });
//! ```
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
pub mod envvars;
pub mod events;
pub mod executor;
pub mod list;
pub mod packets;
pub mod scheduled;
pub mod schedules;
pub mod tasks;
pub mod waits;
pub mod worker;

pub use client::{Client, Error, RunInfo, RunStatus, TriggerOptions, Triggered};
pub use envvars::{EnvVar, EnvVars, Whoami, ENV_VARS_CACHE_TTL};
pub use events::{RunEvent, RunEventPage, RunEventsOptions};
pub use executor::{Executor, StopHandle, StopReason, StopSignal};
pub use list::{RunListOptions, RunPage};
pub use reqwest::StatusCode;
pub use runnel_core::retry::RetryPolicy;
pub use runnel_core::schedule::ScheduleKind;
pub use runnel_core::worker::{
    AttemptOutcome, DequeuedRun, FailureKind, TaskDefinition, TaskFailure,
};
pub use scheduled::ScheduledPayload;
pub use tasks::{Task, TaskContext, Tasks};
pub use waits::{BatchItem, ChildResult, Token, TokenResult};
pub use worker::{RegisteredWorker, Worker, WorkerOptions, WorkerSummary};
