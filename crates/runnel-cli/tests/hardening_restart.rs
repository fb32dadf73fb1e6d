//! A server that dies (SIGKILL) while a worker runs attempts and stays down longer than
//! its lease timeout: the worker finishes the attempts meanwhile and keeps their
//! completions until the server is back; the restarted server gives it one lease timeout
//! (the rescuer's start-up grace) to report them. No completed run executes again.
//!
//! Before the fix, the worker gave its completions up a lease timeout after the server
//! went away and the restarted server rescued every lease at once: each run that was
//! running at the kill ran a second time.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{eventually_explained, Server, Worker};
use serde_json::{json, Value};
use tempfile::TempDir;

/// `--lease-timeout` of the server, in seconds.
const LEASE_SECS: u64 = 2;
/// Attempts the worker runs at once; as many runs again wait in the queue at the kill.
const CONCURRENCY: usize = 4;
const RUNS: usize = 2 * CONCURRENCY;
/// How long a run could take end to end on a loaded machine.
const RUN_TIMEOUT: Duration = Duration::from_secs(30);

/// The lines of `path` (none when it does not exist yet).
fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .map(|text| text.lines().map(str::to_owned).collect())
        .unwrap_or_default()
}

/// A free port on 127.0.0.1, so the server can come back where the worker looks for it.
fn free_address() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("binding port 0");
    let address = listener.local_addr().expect("local address").to_string();
    drop(listener);
    address
}

#[tokio::test]
async fn a_server_down_twice_the_lease_timeout_runs_no_completed_run_again() {
    let dir = TempDir::new().unwrap();
    let logs = TempDir::new().unwrap();
    let started = logs.path().join("started");
    let finished = logs.path().join("finished");
    let address = free_address();
    let lease = LEASE_SECS.to_string();
    let serve_args = ["--listen", address.as_str(), "--lease-timeout", &lease];

    let server = Server::start_with(dir.path(), &serve_args);
    let key = server.dev_key().to_owned();
    // Every execution leaves a line: the side effect that must happen once per run.
    let command = format!(
        r#"echo "$RUNNEL_RUN_ID $RUNNEL_ATTEMPT" >> '{}'; sleep 1; echo "$RUNNEL_RUN_ID" >> '{}'; echo '{{"done":true}}'"#,
        started.display(),
        finished.display()
    );
    let concurrency = CONCURRENCY.to_string();
    let mut worker = Worker::start(
        &server,
        &key,
        &[
            "--task",
            &format!("slow={command}"),
            "--concurrency",
            &concurrency,
        ],
    );
    worker.registration();
    let mut ids = Vec::new();
    for _ in 0..RUNS {
        ids.push(server.trigger_new(&key, "slow", &json!({})).await);
    }
    let explain = |worker: &Worker| {
        let worker_log = worker.stderr();
        let started = lines(&started);
        let finished = lines(&finished);
        move || {
            format!("started: {started:?}\nfinished: {finished:?}\n--- worker ---\n{worker_log}")
        }
    };
    eventually_explained(
        "the first attempts to be running",
        RUN_TIMEOUT,
        || async { (lines(&started).len() == CONCURRENCY).then_some(()) },
        explain(&worker),
    )
    .await;

    // The server dies mid-attempt (SIGKILL: no goodbye to anyone).
    let first_log = server.stderr();
    drop(server);
    let killed_at = Instant::now();
    eventually_explained(
        "the running attempts to finish while the server is down",
        RUN_TIMEOUT,
        || async { (lines(&finished).len() == CONCURRENCY).then_some(()) },
        explain(&worker),
    )
    .await;
    // The outage itself is the scenario (twice the lease timeout, so every lease held at
    // the kill ran out), not a wait for something to happen.
    tokio::time::sleep_until((killed_at + Duration::from_secs(2 * LEASE_SECS)).into()).await;
    assert!(worker.is_running(), "{}", worker.stderr());

    let server = Server::start_with(dir.path(), &serve_args);
    let runs: Vec<Value> = eventually_explained(
        "every run to complete",
        RUN_TIMEOUT,
        || async {
            let mut runs = Vec::new();
            for id in &ids {
                runs.push(server.run(&key, id).await);
            }
            runs.iter()
                .all(|run| run["status"] == "COMPLETED")
                .then_some(runs)
        },
        || {
            format!(
                "{}\n--- server before the kill ---\n{first_log}\n--- server after ---\n{}",
                explain(&worker)(),
                server.stderr()
            )
        },
    )
    .await;

    // Each run executed exactly once, as its first and only attempt.
    let mut executions = lines(&started);
    executions.sort();
    let mut want: Vec<String> = ids.iter().map(|id| format!("{id} 1")).collect();
    want.sort();
    assert_eq!(executions, want, "{}", worker.stderr());
    for run in &runs {
        assert_eq!(run["attemptCount"], 1, "{run:#}");
        assert_eq!(run["output"], json!({"done": true}), "{run:#}");
    }
    assert!(
        !server.stderr().contains("rescued a held attempt"),
        "{}",
        server.stderr()
    );
}
