//! The `runnel` binary is quiet at its default log level (`RUST_LOG` unset, as the
//! harness runs it): what it logs does not grow with the number of runs, a PostgreSQL
//! start logs no sqlx notice, and `runnel bench` keeps stdout for its table.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::{describe, eventually, runnel_command, Server};
use serde_json::json;
use tempfile::TempDir;

/// Runs triggered through `runnel dev`: enough that a line per run or attempt would
/// break the bound below many times over.
const RUNS: usize = 20;
/// Most lines `runnel dev` may log from start to stop, whatever it ran: start-up (open
/// file limit, rescuer grace, the worker's registration on both sides) and shutdown.
const DEV_LINES_MAX: usize = 15;

#[tokio::test]
async fn dev_logs_nothing_per_run_or_attempt() {
    let dir = TempDir::new().unwrap();
    let server = Server::start_dev(dir.path(), &["--task", "echo=cat", "--task", "fail=false"]);
    let key = server.dev_key().to_owned();
    let mut ids = Vec::new();
    for i in 0..RUNS {
        // Failures and retries are per-attempt events too.
        let (task, options) = if i % 4 == 0 {
            ("fail", json!({"maxAttempts": 2}))
        } else {
            ("echo", json!({}))
        };
        let body = json!({"payload": {"i": i}, "options": options});
        ids.push(server.trigger_new(&key, task, &body).await);
    }
    for id in &ids {
        eventually("every run ended", Duration::from_secs(60), || async {
            let run = server.run(&key, id).await;
            (run["isCompleted"] == true).then_some(())
        })
        .await;
    }
    let stderr = server.stderr();
    let status = server.terminate();
    assert!(status.success(), "runnel dev exited {status}\n{stderr}");

    for id in &ids {
        assert!(
            !stderr.contains(id.as_str()),
            "a line names run {id}:\n{stderr}"
        );
    }
    for per_attempt in ["attempt succeeded", "attempt failed", "run canceled"] {
        assert!(
            !stderr.contains(per_attempt),
            "{per_attempt:?} logged:\n{stderr}"
        );
    }
    let lines = stderr.lines().count();
    assert!(
        lines <= DEV_LINES_MAX,
        "{lines} lines logged for {RUNS} runs (at most {DEV_LINES_MAX}):\n{stderr}"
    );
}

/// A second start on the same database finds the migrations table there; PostgreSQL's
/// NOTICE about it ("already exists, skipping") must not reach the log.
#[tokio::test]
async fn a_second_postgres_start_logs_no_sqlx_notice() {
    let Some(database) = runnel_testkit::PgTestDatabase::create().await else {
        return;
    };
    let dir = TempDir::new().unwrap();
    for start in ["first", "second"] {
        let server = Server::start_with(dir.path(), &["--database-url", &database.url]);
        let stderr = server.stderr();
        let status = server.terminate();
        assert!(status.success(), "{start} start exited {status}\n{stderr}");
        for noise in ["sqlx", "NOTICE", "already exists"] {
            assert!(
                !stderr.contains(noise),
                "the {start} start logged {noise:?}:\n{stderr}"
            );
        }
    }
    drop(database);
}

/// `runnel bench` with stderr not a terminal: the table alone on stdout, a few phase
/// lines on stderr (no progress bar drawn, no line per run).
#[test]
fn bench_prints_its_table_on_stdout_and_little_on_stderr() {
    let output = runnel_command()
        .args(["bench", "--runs", "20", "--connections", "2"])
        .args(["--worker-concurrency", "2"])
        .stdin(Stdio::null())
        .output()
        .expect("running runnel bench");
    assert!(output.status.success(), "{}", describe(&output));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stdout.starts_with("## runnel bench") && stdout.contains("| metric | value |"),
        "{}",
        describe(&output)
    );
    assert!(
        stderr.lines().count() < 20 && !stderr.contains("attempt succeeded"),
        "{}",
        describe(&output)
    );
    // A progress bar is drawn on a terminal only; its frames would start with a carriage
    // return or an escape sequence.
    assert!(
        !stderr.contains('\r') && !stderr.contains('\u{1b}'),
        "{}",
        describe(&output)
    );
}
