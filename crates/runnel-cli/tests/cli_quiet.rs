//! The `runnel` binary is quiet at its default log level (`RUST_LOG` unset, as the
//! harness runs it): what it logs does not grow with the number of runs, a PostgreSQL
//! start logs no sqlx notice, and `runnel bench` keeps stdout for its table (or its JSON
//! lines).

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
        .args(["bench", "--quick", "--runs", "20", "--connections", "2"])
        .args(["--worker-concurrency", "2", "--stored-runs", "1500"])
        .stdin(Stdio::null())
        .output()
        .expect("running runnel bench");
    assert!(output.status.success(), "{}", describe(&output));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stdout.starts_with("## runnel bench")
            && stdout.contains("| mode | n | concurrency |")
            && stdout.contains("| server memory |"),
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

/// `runnel bench --quick --json`: stdout holds only JSON lines, one per measurement, with
/// each of the modes once and figures that make sense.
#[test]
fn bench_json_prints_one_line_per_mode() {
    let output = runnel_command()
        .args(["bench", "--quick", "--json"])
        .stdin(Stdio::null())
        .output()
        .expect("running runnel bench");
    assert!(output.status.success(), "{}", describe(&output));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|line| {
            serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}\n{}", describe(&output)))
        })
        .collect();
    let modes: Vec<&str> = lines.iter().filter_map(|l| l["mode"].as_str()).collect();
    let expected = [
        "enqueue_bulk",
        "enqueue_single",
        "concurrent_trigger",
        "process",
        "latency",
        "retrieve",
        "rss",
        "realtime_idle",
        "realtime",
        "rss_stored",
    ];
    assert_eq!(modes, expected, "{}", describe(&output));
    for line in &lines {
        assert_eq!(line["lib"], "runnel", "{line}");
        assert_eq!(line["variant"], "sqlite", "{line}");
        let mode = line["mode"].as_str().unwrap();
        let rated = !matches!(mode, "latency" | "rss" | "rss_stored" | "realtime_idle");
        if rated {
            assert!(line["jobs_per_s"].as_f64().unwrap() > 0.0, "{line}");
            assert!(line["concurrency"].as_u64().unwrap() > 0, "{line}");
        }
        if mode.starts_with("rss") || mode == "realtime_idle" {
            assert!(line["rss_mb"].as_f64().unwrap() > 0.0, "{line}");
        }
        if !mode.starts_with("rss") {
            assert!(line["n"].as_u64().unwrap() > 0, "{line}");
        }
        if let (Some(p50), Some(p99)) = (line["p50_ms"].as_f64(), line["p99_ms"].as_f64()) {
            assert!(p50 <= p99, "{line}");
        }
        let latencies = !matches!(mode, "process" | "rss" | "rss_stored" | "realtime_idle");
        assert_eq!(line["p99_ms"].is_number(), latencies, "{line}");
    }
    let stored = &lines[9];
    assert_eq!(stored["n"], 5000, "{stored}");
}
