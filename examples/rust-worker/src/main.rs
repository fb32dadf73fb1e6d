//! A Runnel worker written with `runnel-sdk`: it serves the tasks `hello` and `add` until
//! Ctrl-C. With the argument `trigger [NAME]`, it instead triggers `hello` and prints the
//! greeting once a worker has run it.
//!
//! Configuration comes from the environment: `RUNNEL_API_URL` (default
//! `http://127.0.0.1:3030`) and `RUNNEL_SECRET_KEY` (a `tr_dev_…` key).

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use runnel_sdk::{Client, Task, Tasks, TriggerOptions, Worker, WorkerOptions};
use serde::{Deserialize, Serialize};

const API_URL_DEFAULT: &str = "http://127.0.0.1:3030";
/// How long `trigger` waits for a worker to run the task.
const WAIT_TIMEOUT: Duration = Duration::from_secs(60);
const POLL_INTERVAL: Duration = Duration::from_millis(250);

#[derive(Debug, Serialize, Deserialize)]
struct HelloPayload {
    name: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct Greeting {
    greeting: String,
}

#[derive(Debug, Deserialize)]
struct AddPayload {
    numbers: Vec<f64>,
}

#[derive(Debug, Serialize)]
struct Sum {
    sum: f64,
}

/// The tasks this worker serves.
fn tasks() -> Tasks {
    Tasks::new()
        .task("hello", |payload: HelloPayload| async move {
            Ok::<_, String>(Greeting {
                greeting: format!("Hello, {}!", payload.name),
            })
        })
        .task(
            // An empty list is the caller's mistake: retrying would not help.
            Task::new("add").max_attempts(1),
            |payload: AddPayload| async move {
                if payload.numbers.is_empty() {
                    return Err("nothing to add: `numbers` is empty");
                }
                Ok(Sum {
                    sum: payload.numbers.iter().sum(),
                })
            },
        )
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();

    let api_url = std::env::var("RUNNEL_API_URL").unwrap_or_else(|_| API_URL_DEFAULT.into());
    let secret_key = std::env::var("RUNNEL_SECRET_KEY")
        .context("set RUNNEL_SECRET_KEY to a secret key (tr_dev_…)")?;
    let client = Client::new(api_url, secret_key);

    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        None => work(client).await,
        Some("trigger") => {
            let name = args.get(1).map_or("world", String::as_str);
            trigger(&client, name).await
        }
        Some(other) => {
            bail!("unknown argument {other:?}; usage: runnel-example-worker [trigger [NAME]]")
        }
    }
}

/// Serves the tasks until Ctrl-C, then lets running attempts finish.
async fn work(client: Client) -> anyhow::Result<()> {
    let worker = Worker::new(client, WorkerOptions::new("rust-example-worker"));
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let summary = worker.run(Arc::new(tasks()), ctrl_c).await?;
    eprintln!(
        "stopped: {} succeeded, {} failed, {} interrupted, {} canceled",
        summary.succeeded, summary.failed, summary.interrupted, summary.canceled
    );
    Ok(())
}

/// Triggers `hello` and prints its greeting.
async fn trigger(client: &Client, name: &str) -> anyhow::Result<()> {
    let payload = HelloPayload { name: name.into() };
    let run = client
        .trigger("hello", &payload, TriggerOptions::default())
        .await?;
    eprintln!("triggered {}; waiting for a worker to run it", run.id);
    let done = client
        .wait_for_completion(&run.id, POLL_INTERVAL, WAIT_TIMEOUT)
        .await?;
    if !done.is_success {
        bail!(
            "run {} ended {}: {}",
            done.id,
            done.status,
            done.error_message().unwrap_or("no error message")
        );
    }
    let greeting: Greeting = done.output_as()?;
    println!("{}", greeting.greeting);
    Ok(())
}
