//! The run engine end to end: the real `runnel serve` and `runnel worker` (exec mode)
//! processes, every run observed over HTTP as a client would see it.
//!
//! Each test owns its server and its workers; the tasks are small shell commands, the
//! only place where anything sleeps (apart from two checks that a long poll is held
//! open). A run is waited for by polling its retrieve endpoint until it is final, then
//! its whole body is compared (ids, timestamps, the assigned version and a positive
//! duration redacted by [`snapshot`] after their shape is checked). A wait that times out
//! shows the last body and every process's log. The worker protocol itself is driven
//! raw where a real worker could not show something (a late completion, a held poll).

mod common;

use std::cell::RefCell;
use std::path::Path;
use std::time::{Duration, Instant};

use chrono::Utc;
use common::{
    assert_friendly_id, assert_no_nulls, describe, eventually, eventually_explained, keys_create,
    process_is_gone, redact, runnel_command, timestamp, Server, TestApp, Worker,
    CURRENT_API_VERSION, SHUTDOWN_TIMEOUT, WORKER_TIMEOUT,
};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use reqwest::StatusCode;
use serde_json::{json, Value};
use tempfile::TempDir;

/// How long a run may take to reach the status a test waits for. The slowest path here
/// (a lease timeout, then a retry's backoff) needs well under half of it.
const RUN_TIMEOUT: Duration = Duration::from_secs(25);
/// Default price of the default machine (`small-1x`), cents per second of compute.
const SMALL_1X_CENTS_PER_SECOND: f64 = 0.00338;
/// Default fee per run (`--run-fee-cents`), charged outside dev.
const RUN_FEE_CENTS: f64 = 0.0025;

/// Everything the server and the workers logged, for failure messages.
fn logs(server: &Server, workers: &[&Worker]) -> String {
    let mut all = format!("--- server stderr ---\n{}", server.stderr());
    for (i, worker) in workers.iter().enumerate() {
        all.push_str(&format!(
            "--- worker {i} (pid {}) stderr ---\n{}",
            worker.pid(),
            worker.stderr()
        ));
    }
    all
}

/// Polls the run until `done` holds for its (legacy) body; returns that body.
async fn wait_run(
    server: &Server,
    key: &str,
    id: &str,
    what: &str,
    workers: &[&Worker],
    done: impl Fn(&Value) -> bool,
) -> Value {
    let last = RefCell::new(Value::Null);
    let (last, done) = (&last, &done);
    eventually_explained(
        &format!("run {id} {what}"),
        RUN_TIMEOUT,
        move || async move {
            let body = server.run(key, id).await;
            let reached = done(&body);
            *last.borrow_mut() = body.clone();
            reached.then_some(body)
        },
        || format!("last seen: {}\n{}", last.borrow(), logs(server, workers)),
    )
    .await
}

/// Waits for the run to end (every final status is `isCompleted`), then asserts it ended
/// as `status`.
async fn final_run(
    server: &Server,
    key: &str,
    id: &str,
    status: &str,
    workers: &[&Worker],
) -> Value {
    let run = wait_run(server, key, id, "to end", workers, |run| {
        run["isCompleted"] == true
    })
    .await;
    assert_eq!(run["status"], status, "{run:#}\n{}", logs(server, workers));
    run
}

/// Waits for the run to show the live `status`; fails at once if it ends instead.
async fn run_reaches(
    server: &Server,
    key: &str,
    id: &str,
    status: &str,
    workers: &[&Worker],
) -> Value {
    let run = wait_run(
        server,
        key,
        id,
        &format!("to be {status}"),
        workers,
        |run| run["status"] == status || run["isCompleted"] == true,
    )
    .await;
    assert_eq!(run["status"], status, "{run:#}\n{}", logs(server, workers));
    run
}

/// Asserts `version` is a version the server assigned: `YYYYMMDD.N` of today (UTC; or
/// yesterday, should the test straddle midnight) with N ≥ 1.
fn assert_assigned_version(version: &str) {
    let (date, n) = version
        .split_once('.')
        .unwrap_or_else(|| panic!("{version:?} is not YYYYMMDD.N"));
    let today = Utc::now().date_naive();
    let yesterday = today.pred_opt().unwrap();
    assert!(
        [today, yesterday]
            .iter()
            .any(|day| day.format("%Y%m%d").to_string() == date),
        "{version:?} is not of today ({today})"
    );
    assert!(
        n.parse::<u32>().is_ok_and(|n| n >= 1),
        "{version:?} has no sequence number"
    );
}

/// A run body prepared for a whole comparison: [`redact`]ed, a server-assigned `version`
/// shown as `"<YYYYMMDD.N>"` and a positive `durationMs` as `"<positive>"`, after each
/// is checked. Also asserts what every run must satisfy: no `null`s, and its times in
/// order (created ≤ started ≤ finished, for the run and each attempt).
fn snapshot(run: &Value) -> Value {
    assert_no_nulls(run);
    let in_order = |earlier: &Value, later: &Value| {
        if !earlier.is_null() && !later.is_null() {
            assert!(
                timestamp(earlier) <= timestamp(later),
                "{earlier} is after {later} in {run:#}"
            );
        }
    };
    in_order(&run["createdAt"], &run["startedAt"]);
    in_order(&run["startedAt"], &run["finishedAt"]);
    for attempt in run["attempts"].as_array().expect("attempts") {
        in_order(&attempt["createdAt"], &attempt["startedAt"]);
        in_order(&attempt["startedAt"], &attempt["completedAt"]);
    }
    assert_eq!(
        run["attemptCount"].as_u64(),
        run["attempts"].as_array().map(|a| a.len() as u64),
        "attemptCount counts the attempts listed: {run:#}"
    );

    let mut shown = redact(run);
    if let Some(version) = run["version"].as_str() {
        if version.len() > 9 && version.as_bytes()[8] == b'.' {
            assert_assigned_version(version);
            shown["version"] = json!("<YYYYMMDD.N>");
        }
    }
    let duration = run["durationMs"]
        .as_u64()
        .unwrap_or_else(|| panic!("durationMs is not a whole number: {run:#}"));
    if duration > 0 {
        shown["durationMs"] = json!("<positive>");
    }
    shown
}

/// The `is*` booleans a run with this legacy status shows.
fn flags(status: &str) -> Value {
    let is_final = !matches!(
        status,
        "DELAYED" | "WAITING_FOR_DEPLOY" | "QUEUED" | "EXECUTING" | "REATTEMPTING" | "FROZEN"
    );
    json!({
        "isQueued": matches!(status, "DELAYED" | "WAITING_FOR_DEPLOY" | "QUEUED"),
        "isExecuting": matches!(status, "EXECUTING" | "REATTEMPTING" | "FROZEN"),
        "isWaiting": false,
        "isCompleted": is_final,
        "isSuccess": status == "COMPLETED",
        "isFailed": is_final && status != "COMPLETED",
        "isCancelled": status == "CANCELED",
    })
}

/// The redacted body of a run of `task` with this legacy status: what every run shows,
/// then `extra`'s fields (payload, output, error, attempts, …). Costs are those of dev
/// (free); `extra` overrides them for other environments.
fn run_body(status: &str, task: &str, extra: Value) -> Value {
    let mut body = json!({
        "id": "<run id>",
        "status": status,
        "taskIdentifier": task,
        "isTest": false,
        "createdAt": "<timestamp>",
        "updatedAt": "<timestamp>",
        "tags": [],
        "costInCents": 0.0,
        "baseCostInCents": 0.0,
        "durationMs": 0,
        "depth": 0,
        "triggerFunction": "trigger",
        "relatedRuns": {"children": []},
        "attemptCount": 0,
        "attempts": [],
    });
    let fields = body.as_object_mut().unwrap();
    fields.extend(flags(status).as_object().unwrap().clone());
    fields.extend(extra.as_object().expect("extra is an object").clone());
    body
}

/// A redacted attempt that ran and ended with `status`.
fn attempt(status: &str) -> Value {
    json!({
        "id": "<attempt id>",
        "status": status,
        "createdAt": "<timestamp>",
        "updatedAt": "<timestamp>",
        "startedAt": "<timestamp>",
        "completedAt": "<timestamp>",
    })
}

/// A redacted attempt that failed with this error message.
fn failed_attempt(message: &str) -> Value {
    stopped_attempt("FAILED", message)
}

/// A redacted attempt that ended with `status` for the reason `message`.
fn stopped_attempt(status: &str, message: &str) -> Value {
    let mut stopped = attempt(status);
    stopped["error"] = json!({ "message": message });
    stopped
}

/// `--task NAME=COMMAND`.
fn task(name: &str, command: &str) -> String {
    format!("{name}={command}")
}

/// Waits for a file the task writes and returns its first line's whitespace-separated
/// words, once it has at least `words` of them.
async fn words_in(path: &Path, words: usize, server: &Server, workers: &[&Worker]) -> Vec<String> {
    eventually_explained(
        &format!("the task to write {}", path.display()),
        RUN_TIMEOUT,
        || async {
            let text = std::fs::read_to_string(path).ok()?;
            let line: Vec<String> = text
                .lines()
                .next()?
                .split_whitespace()
                .map(str::to_owned)
                .collect();
            (line.len() >= words).then_some(line)
        },
        || logs(server, workers),
    )
    .await
}

fn pid_of(word: &str) -> u32 {
    word.parse()
        .unwrap_or_else(|_| panic!("{word:?} is not a pid"))
}

/// SIGKILLs a process group when dropped: tasks orphaned by a killed worker keep running,
/// and must not outlive the test (even a failed one).
struct KillGroupOnDrop(u32);

impl KillGroupOnDrop {
    /// The group is known to be gone: its id may be reused, so leave it alone.
    fn disarm(self) {
        std::mem::forget(self);
    }
}

impl Drop for KillGroupOnDrop {
    fn drop(&mut self) {
        let _ = killpg(Pid::from_raw(self.0 as i32), Signal::SIGKILL);
    }
}

/// Asserts two floats are equal up to rounding.
fn assert_close(actual: f64, expected: f64, what: &str) {
    assert!(
        (actual - expected).abs() <= 1e-9 + expected.abs() * 1e-9,
        "{what}: {actual} is not {expected}"
    );
}

#[tokio::test]
async fn a_run_completes_with_the_output_its_command_printed() {
    let app = TestApp::start();
    let key = &app.dev_key;
    // Prints what it was given: the payload from stdin and the attempt's environment.
    let report = r#"sleep 0.2; printf '{"input":%s,"run":"%s","task":"%s","attempt":%s}' "$(cat)" "$RUNNEL_RUN_ID" "$RUNNEL_TASK" "$RUNNEL_ATTEMPT""#;
    let mut worker = Worker::start(&app.server, key, &["--task", &task("greet", report)]);
    let payload = json!({"to": "ada@example.com", "lines": [1, "two", {"three": true}]});
    let id = app
        .server
        .trigger_new(key, "greet", &json!({ "payload": payload }))
        .await;

    let run = final_run(&app.server, key, &id, "COMPLETED", &[&worker]).await;
    assert_eq!(run["version"], worker.registration().version.as_str());
    assert_eq!(
        snapshot(&run),
        run_body(
            "COMPLETED",
            "greet",
            json!({
                "version": "<YYYYMMDD.N>",
                "startedAt": "<timestamp>",
                "finishedAt": "<timestamp>",
                "durationMs": "<positive>",
                "payload": payload,
                "output": {"input": payload, "run": id, "task": "greet", "attempt": 1},
                "attemptCount": 1,
                "attempts": [attempt("COMPLETED")],
            })
        )
    );
    assert!(run["durationMs"].as_u64().unwrap() >= 200, "{run:#}");
    assert_eq!(run["startedAt"], run["attempts"][0]["startedAt"]);
    assert_eq!(run["finishedAt"], run["attempts"][0]["completedAt"]);
}

/// The command gets the server and the worker's key: with them and its run id it
/// triggers a child of its own run, which the server links to it.
#[tokio::test]
async fn a_task_command_triggers_a_child_of_its_own_run() {
    let app = TestApp::start();
    let key = &app.dev_key;
    let spawn = r#"curl -sf -X POST "$RUNNEL_API_URL/api/v1/tasks/child/trigger" -H "Authorization: Bearer $RUNNEL_SECRET_KEY" -H 'Content-Type: application/json' -d "{\"payload\": 7, \"options\": {\"parentRunId\": \"$RUNNEL_RUN_ID\"}}""#;
    let worker = Worker::start(
        &app.server,
        key,
        &["--task", &task("spawn", spawn), "--task", "child=cat"],
    );
    let parent = app
        .server
        .trigger_new(key, "spawn", &json!({ "payload": null }))
        .await;

    let run = final_run(&app.server, key, &parent, "COMPLETED", &[&worker]).await;
    let child = run["output"]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("{run:#}"));
    let child = final_run(&app.server, key, child, "COMPLETED", &[&worker]).await;
    assert_eq!(child["output"], 7);
    assert_eq!(child["depth"], 1, "{child:#}");
    assert_eq!(child["relatedRuns"]["parent"]["id"], parent.as_str());
}

#[tokio::test]
async fn a_failing_task_is_retried_until_it_succeeds() {
    let app = TestApp::start();
    let key = &app.dev_key;
    let flaky = r#"[ "$RUNNEL_ATTEMPT" -ge 3 ] && echo '{"ok":true}' || { echo "boom $RUNNEL_ATTEMPT" >&2; exit 1; }"#;
    let worker = Worker::start(&app.server, key, &["--task", &task("flaky", flaky)]);
    let id = app.server.trigger_new(key, "flaky", &json!({})).await;

    let run = final_run(&app.server, key, &id, "COMPLETED", &[&worker]).await;
    assert_eq!(
        snapshot(&run),
        run_body(
            "COMPLETED",
            "flaky",
            json!({
                "version": "<YYYYMMDD.N>",
                "startedAt": "<timestamp>",
                "finishedAt": "<timestamp>",
                "durationMs": "<positive>",
                "output": {"ok": true},
                "attemptCount": 3,
                "attempts": [
                    failed_attempt("boom 1"),
                    failed_attempt("boom 2"),
                    attempt("COMPLETED"),
                ],
            })
        )
    );
    // The default policy waits 1 s, then 2 s (each up to twice that, randomized).
    let attempts = run["attempts"].as_array().unwrap();
    for (i, min_backoff_ms) in [(1, 1000), (2, 2000)] {
        let waited =
            timestamp(&attempts[i]["startedAt"]) - timestamp(&attempts[i - 1]["completedAt"]);
        assert!(
            waited.num_milliseconds() >= min_backoff_ms,
            "attempt {} started {waited} after the previous one failed: {run:#}",
            i + 1
        );
    }
    // The run started with its first attempt.
    assert_eq!(run["startedAt"], attempts[0]["startedAt"]);
}

#[tokio::test]
async fn a_task_out_of_attempts_fails_with_its_last_error() {
    let app = TestApp::start();
    let key = &app.dev_key;
    let failing = r#"echo "boom $RUNNEL_ATTEMPT" >&2; exit 1"#;
    let worker = Worker::start(
        &app.server,
        key,
        &["--max-attempts", "2", "--task", &task("doomed", failing)],
    );
    // The worker's policy allows 2 attempts; the trigger's maxAttempts overrides it.
    let by_policy = app.server.trigger_new(key, "doomed", &json!({})).await;
    let by_trigger = app
        .server
        .trigger_new(key, "doomed", &json!({"options": {"maxAttempts": 1}}))
        .await;

    for (id, failures) in [(&by_policy, 2), (&by_trigger, 1)] {
        let run = final_run(&app.server, key, id, "FAILED", &[&worker]).await;
        let attempts: Vec<Value> = (1..=failures)
            .map(|n| failed_attempt(&format!("boom {n}")))
            .collect();
        assert_eq!(
            snapshot(&run),
            run_body(
                "FAILED",
                "doomed",
                json!({
                    "version": "<YYYYMMDD.N>",
                    "startedAt": "<timestamp>",
                    "finishedAt": "<timestamp>",
                    "durationMs": "<positive>",
                    "error": {"message": format!("boom {failures}"), "name": "Error"},
                    "attemptCount": failures,
                    "attempts": attempts,
                })
            ),
            "{failures} attempts"
        );
    }
}

#[tokio::test]
async fn a_task_killed_by_a_signal_crashes_and_a_crash_is_retried() {
    let app = TestApp::start();
    let key = &app.dev_key;
    let suicidal = "echo about to die >&2; kill -9 $$";
    let worker = Worker::start(&app.server, key, &["--task", &task("suicidal", suicidal)]);
    let once = app
        .server
        .trigger_new(key, "suicidal", &json!({"options": {"maxAttempts": 1}}))
        .await;
    let twice = app
        .server
        .trigger_new(key, "suicidal", &json!({"options": {"maxAttempts": 2}}))
        .await;

    let message = "killed by signal 9 (SIGKILL)\nabout to die";
    for (id, attempts) in [(&once, 1), (&twice, 2)] {
        let run = final_run(&app.server, key, id, "CRASHED", &[&worker]).await;
        assert_eq!(
            snapshot(&run),
            run_body(
                "CRASHED",
                "suicidal",
                json!({
                    "version": "<YYYYMMDD.N>",
                    "startedAt": "<timestamp>",
                    "finishedAt": "<timestamp>",
                    "durationMs": "<positive>",
                    "error": {"message": message},
                    "attemptCount": attempts,
                    "attempts": vec![failed_attempt(message); attempts],
                })
            ),
            "{attempts} attempts"
        );
    }
}

#[tokio::test]
async fn a_task_over_its_max_duration_times_out_without_a_retry() {
    let app = TestApp::start();
    let key = &app.dev_key;
    let worker = Worker::start(&app.server, key, &["--task", "sleepy=sleep 30"]);
    let triggered = Instant::now();
    let id = app
        .server
        .trigger_new(key, "sleepy", &json!({"options": {"maxDuration": 5}}))
        .await;

    let run = final_run(&app.server, key, &id, "TIMED_OUT", &[&worker]).await;
    assert!(
        triggered.elapsed() < Duration::from_secs(15),
        "timed out only after {:?}",
        triggered.elapsed()
    );
    let message = "Run exceeded maxDuration of 5s";
    assert_eq!(
        snapshot(&run),
        run_body(
            "TIMED_OUT",
            "sleepy",
            json!({
                "version": "<YYYYMMDD.N>",
                "startedAt": "<timestamp>",
                "finishedAt": "<timestamp>",
                "durationMs": "<positive>",
                "error": {"message": message},
                "attemptCount": 1,
                "attempts": [failed_attempt(message)],
            })
        )
    );
    let duration = run["durationMs"].as_u64().unwrap();
    assert!((5000..15_000).contains(&duration), "durationMs {duration}");
}

#[tokio::test]
async fn a_killed_workers_run_is_rescued_and_finished_by_another_worker() {
    let app = TestApp::start_with(&["--lease-timeout", "2"]);
    let key = &app.dev_key;
    let dir = TempDir::new().unwrap();
    let log = dir.path().join("attempts");
    // Each attempt logs its number, its worker (the parent of the shell's parent, the
    // task guard) and its own pid; the first one then hangs.
    let command = format!(
        r#"echo "$RUNNEL_ATTEMPT $(cut -d' ' -f4 /proc/$PPID/stat) $$" >> '{}'; [ "$RUNNEL_ATTEMPT" -ge 2 ] || sleep 30; echo '{{"rescued":true}}'"#,
        log.display()
    );
    let mut first = Worker::start(&app.server, key, &["--task", &task("fragile", &command)]);
    let id = app.server.trigger_new(key, "fragile", &json!({})).await;
    let line = words_in(&log, 3, &app.server, &[&first]).await;
    assert_eq!(line[..2], ["1".to_owned(), first.pid().to_string()]);
    let orphan = KillGroupOnDrop(pid_of(&line[2]));
    assert_eq!(app.server.run(key, &id).await["status"], "EXECUTING");

    // The worker's machine dies: the worker and its task, without a word to the server.
    first.kill();
    drop(orphan);
    let mut second = Worker::start(&app.server, key, &["--task", &task("fragile", &command)]);

    let run = final_run(&app.server, key, &id, "COMPLETED", &[&first, &second]).await;
    let message = "Worker stopped heartbeating (lease expired): the attempt crashed";
    assert_eq!(
        snapshot(&run),
        run_body(
            "COMPLETED",
            "fragile",
            json!({
                "version": "<YYYYMMDD.N>",
                "startedAt": "<timestamp>",
                "finishedAt": "<timestamp>",
                "durationMs": "<positive>",
                "output": {"rescued": true},
                "attemptCount": 2,
                "attempts": [failed_attempt(message), attempt("COMPLETED")],
            })
        )
    );
    // The second attempt ran on the second worker, whose version the run now shows.
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<Vec<&str>> = text.lines().map(|l| l.split(' ').collect()).collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert_eq!(
        lines[1][..2],
        ["2", second.pid().to_string().as_str()],
        "{text}"
    );
    assert_eq!(run["version"], second.registration().version.as_str());
    // The crashed attempt was rescued only after the lease ran out.
    let attempts = run["attempts"].as_array().unwrap();
    let rescued_after =
        timestamp(&attempts[0]["completedAt"]) - timestamp(&attempts[0]["startedAt"]);
    assert!(rescued_after.num_milliseconds() >= 2000, "{run:#}");
}

#[tokio::test]
async fn a_canceled_run_stops_its_processes() {
    let app = TestApp::start();
    let key = &app.dev_key;
    let dir = TempDir::new().unwrap();
    let pids = dir.path().join("pids");
    // The shell and a background child it waits for.
    let command = format!(r#"sleep 30 & echo "$$ $!" > '{}'; wait"#, pids.display());
    let worker = Worker::start(&app.server, key, &["--task", &task("long", &command)]);
    let id = app.server.trigger_new(key, "long", &json!({})).await;
    let words = words_in(&pids, 2, &app.server, &[&worker]).await;
    let (shell, child) = (pid_of(&words[0]), pid_of(&words[1]));
    let cleanup = KillGroupOnDrop(shell);
    assert!(!process_is_gone(shell) && !process_is_gone(child));
    assert_eq!(app.server.run(key, &id).await["status"], "EXECUTING");

    let reply = app.server.cancel(key, &id).await;
    assert_eq!(
        (reply.status, &reply.body),
        (StatusCode::OK, &json!({ "id": id }))
    );
    let run = final_run(&app.server, key, &id, "CANCELED", &[&worker]).await;
    eventually(
        "the task's processes to be gone",
        Duration::from_secs(5),
        || async { (process_is_gone(shell) && process_is_gone(child)).then_some(()) },
    )
    .await;
    cleanup.disarm();
    assert_eq!(
        snapshot(&run),
        run_body(
            "CANCELED",
            "long",
            json!({
                "version": "<YYYYMMDD.N>",
                "startedAt": "<timestamp>",
                "finishedAt": "<timestamp>",
                "durationMs": "<positive>",
                "attemptCount": 1,
                "error": {"message": "Run was canceled"},
                "attempts": [stopped_attempt("CANCELED", "Run was canceled")],
            })
        )
    );

    // Cancelling again changes nothing and answers the same.
    let again = app.server.cancel(key, &id).await;
    assert_eq!(
        (again.status, &again.body),
        (StatusCode::OK, &json!({ "id": id }))
    );
    assert_eq!(app.server.run(key, &id).await, run);
    // A run that does not exist, or is another environment's, is not found.
    let staging = keys_create(&app.data_dir(), "staging");
    for (key, run_id) in [
        (key.as_str(), "run_00000000000000000000000a"),
        (key.as_str(), "not-a-run"),
        (staging.as_str(), id.as_str()),
    ] {
        app.server
            .cancel(key, run_id)
            .await
            .assert_error(StatusCode::NOT_FOUND, "Not found");
    }
    assert_eq!(app.server.run(&app.dev_key, &id).await, run);
}

#[tokio::test]
async fn a_run_whose_ttl_passes_behind_a_busy_worker_expires_unexecuted() {
    let app = TestApp::start();
    let key = &app.dev_key;
    let dir = TempDir::new().unwrap();
    let ran = dir.path().join("ran");
    let command = format!(r#"echo "$RUNNEL_RUN_ID" >> '{}'; sleep 3"#, ran.display());
    let worker = Worker::start(
        &app.server,
        key,
        &["--concurrency", "1", "--task", &task("busy", &command)],
    );
    let busy = app.server.trigger_new(key, "busy", &json!({})).await;
    run_reaches(&app.server, key, &busy, "EXECUTING", &[&worker]).await;
    let waiting = app
        .server
        .trigger_new(key, "busy", &json!({"options": {"ttl": "1s"}}))
        .await;

    let expired = final_run(&app.server, key, &waiting, "EXPIRED", &[&worker]).await;
    assert_eq!(
        snapshot(&expired),
        run_body(
            "EXPIRED",
            "busy",
            json!({
                "finishedAt": "<timestamp>",
                "expiredAt": "<timestamp>",
                "ttl": "1s",
                "error": {"message": "Run expired because the TTL (1s) was reached"},
            })
        )
    );
    // Once the worker is free it runs nothing more: the expired run never executes.
    final_run(&app.server, key, &busy, "COMPLETED", &[&worker]).await;
    assert_eq!(app.server.run(key, &waiting).await, expired);
    assert_eq!(std::fs::read_to_string(&ran).unwrap(), format!("{busy}\n"));
}

#[tokio::test]
async fn a_missing_command_is_a_system_failure_without_retry() {
    let app = TestApp::start();
    let key = &app.dev_key;
    let worker = Worker::start(
        &app.server,
        key,
        &["--task", "broken=runnel_no_such_command --flag"],
    );
    let id = app.server.trigger_new(key, "broken", &json!({})).await;

    let run = final_run(&app.server, key, &id, "SYSTEM_FAILURE", &[&worker]).await;
    let message = run["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("runnel_no_such_command") && message.contains("not found"),
        "{run:#}"
    );
    let snap = snapshot(&run);
    assert_eq!(
        snap,
        run_body(
            "SYSTEM_FAILURE",
            "broken",
            json!({
                "version": "<YYYYMMDD.N>",
                "startedAt": "<timestamp>",
                "finishedAt": "<timestamp>",
                "durationMs": snap["durationMs"].clone(),
                "error": {"message": message},
                "attemptCount": 1,
                "attempts": [failed_attempt(message)],
            })
        )
    );
}

#[tokio::test]
async fn a_dev_worker_stopped_mid_run_interrupts_it_and_exits() {
    let app = TestApp::start();
    let key = &app.dev_key;
    let dir = TempDir::new().unwrap();
    let pid_file = dir.path().join("pid");
    let command = format!("echo $$ > '{}'; exec sleep 30", pid_file.display());
    let mut worker = Worker::start(
        &app.server,
        key,
        &[
            "--concurrency",
            "1",
            "--shutdown-grace",
            "1",
            "--task",
            &task("endless", &command),
        ],
    );
    let id = app.server.trigger_new(key, "endless", &json!({})).await;
    let sleeper = pid_of(&words_in(&pid_file, 1, &app.server, &[&worker]).await[0]);
    let cleanup = KillGroupOnDrop(sleeper);

    let stopped = Instant::now();
    worker.terminate();
    let run = final_run(&app.server, key, &id, "INTERRUPTED", &[&worker]).await;
    assert!(
        stopped.elapsed() >= Duration::from_secs(1),
        "interrupted before the 1 s grace period ended: {run:#}"
    );
    let status = worker.wait(WORKER_TIMEOUT);
    assert!(status.success(), "{status}\n{}", worker.stderr());
    assert!(process_is_gone(sleeper), "the task survived its worker");
    cleanup.disarm();

    let message = "worker stopped during the run";
    assert_eq!(
        snapshot(&run),
        run_body(
            "INTERRUPTED",
            "endless",
            json!({
                "version": "<YYYYMMDD.N>",
                "startedAt": "<timestamp>",
                "finishedAt": "<timestamp>",
                "durationMs": "<positive>",
                "error": {"message": message},
                "attemptCount": 1,
                "attempts": [failed_attempt(message)],
            })
        )
    );
    // The v4 vocabulary has no INTERRUPTED: it is a failure there.
    let current = app.server.retrieve_as(key, &id, CURRENT_API_VERSION).await;
    assert_eq!(current.body["status"], "FAILED", "{current:?}");
}

#[tokio::test]
async fn a_prod_worker_stopped_mid_run_gives_the_run_back_to_the_queue() {
    let app = TestApp::start();
    let key = &keys_create(&app.data_dir(), "prod");
    let mut first = Worker::start(
        &app.server,
        key,
        &[
            "--concurrency",
            "1",
            "--shutdown-grace",
            "1",
            "--task",
            "job=sleep 30",
        ],
    );
    let id = app
        .server
        .trigger_new(key, "job", &json!({"options": {"maxAttempts": 2}}))
        .await;
    run_reaches(&app.server, key, &id, "EXECUTING", &[&first]).await;

    first.terminate();
    let queued = run_reaches(&app.server, key, &id, "QUEUED", &[&first]).await;
    let status = first.wait(WORKER_TIMEOUT);
    assert!(status.success(), "{status}\n{}", first.stderr());
    // The released attempt is not a failure. Its compute time is paid for.
    let released = stopped_attempt("CANCELED", "worker stopped during the run");
    let snap = snapshot(&queued);
    assert_eq!(
        snap,
        run_body(
            "QUEUED",
            "job",
            json!({
                "version": "<YYYYMMDD.N>",
                "startedAt": "<timestamp>",
                "durationMs": "<positive>",
                "costInCents": snap["costInCents"].clone(),
                "baseCostInCents": RUN_FEE_CENTS,
                "attemptCount": 1,
                "attempts": [released.clone()],
            })
        )
    );
    assert_close(
        queued["costInCents"].as_f64().unwrap(),
        SMALL_1X_CENTS_PER_SECOND * queued["durationMs"].as_f64().unwrap() / 1000.0,
        "costInCents of the released attempt",
    );

    // Nor does it spend the retry budget: of its 2 attempts, the run still has both for
    // the next worker, which fails once and then succeeds.
    let flaky = r#"[ "$RUNNEL_ATTEMPT" -ge 3 ] && echo "{\"attempt\": $RUNNEL_ATTEMPT}" || { echo "boom $RUNNEL_ATTEMPT" >&2; exit 1; }"#;
    let second = Worker::start(&app.server, key, &["--task", &task("job", flaky)]);
    let run = final_run(&app.server, key, &id, "COMPLETED", &[&first, &second]).await;
    let snap = snapshot(&run);
    assert_eq!(
        snap,
        run_body(
            "COMPLETED",
            "job",
            json!({
                "version": "<YYYYMMDD.N>",
                "startedAt": "<timestamp>",
                "finishedAt": "<timestamp>",
                "durationMs": "<positive>",
                "costInCents": snap["costInCents"].clone(),
                "baseCostInCents": RUN_FEE_CENTS,
                "output": {"attempt": 3},
                "attemptCount": 3,
                "attempts": [released, failed_attempt("boom 2"), attempt("COMPLETED")],
            })
        )
    );
    assert!(run["costInCents"].as_f64().unwrap() > 0.0, "{run:#}");
}

#[tokio::test]
async fn a_run_waits_for_deploy_until_a_worker_serves_its_task() {
    let app = TestApp::start();
    let key = &app.dev_key;
    let id = app
        .server
        .trigger_new(key, "later", &json!({"payload": "hi"}))
        .await;
    let waiting = app.server.run(key, &id).await;
    assert_eq!(
        snapshot(&waiting),
        run_body("WAITING_FOR_DEPLOY", "later", json!({"payload": "hi"}))
    );
    let current = app.server.retrieve_as(key, &id, CURRENT_API_VERSION).await;
    assert_eq!(current.body["status"], "PENDING_VERSION", "{current:?}");

    let worker = Worker::start(&app.server, key, &["--task", "later=cat"]);
    let run = final_run(&app.server, key, &id, "COMPLETED", &[&worker]).await;
    assert_eq!(run["output"], "hi");
    assert_eq!(run["attemptCount"], 1);
}

#[tokio::test]
async fn a_run_locked_to_a_version_waits_for_a_worker_of_that_version() {
    let app = TestApp::start();
    let key = &app.dev_key;
    let locked = app
        .server
        .trigger_new(key, "job", &json!({"options": {"lockToVersion": "v2"}}))
        .await;
    let v1 = Worker::start(
        &app.server,
        key,
        &["--version", "v1", "--task", "job=echo from $RUNNEL_VERSION"],
    );
    // v1 is registered and dequeuing: it runs an unlocked run.
    let unlocked = app.server.trigger_new(key, "job", &json!({})).await;
    let done = final_run(&app.server, key, &unlocked, "COMPLETED", &[&v1]).await;
    assert_eq!(
        (&done["version"], &done["output"]),
        (&json!("v1"), &json!("from v1"))
    );
    // The locked run still waits, showing the version it is locked to.
    let waiting = app.server.run(key, &locked).await;
    assert_eq!(
        snapshot(&waiting),
        run_body("WAITING_FOR_DEPLOY", "job", json!({"version": "v2"}))
    );

    let v2 = Worker::start(
        &app.server,
        key,
        &["--version", "v2", "--task", "job=echo from $RUNNEL_VERSION"],
    );
    let run = final_run(&app.server, key, &locked, "COMPLETED", &[&v1, &v2]).await;
    assert_eq!(
        (&run["version"], &run["output"], &run["attemptCount"]),
        (&json!("v2"), &json!("from v2"), &json!(1))
    );
}

#[tokio::test]
async fn prod_runs_cost_their_compute_and_the_run_fee_dev_runs_are_free() {
    let app = TestApp::start();
    let dev = &app.dev_key;
    let prod = &keys_create(&app.data_dir(), "prod");
    let prod_worker = Worker::start(&app.server, prod, &["--task", "work=sleep 1"]);
    let dev_worker = Worker::start(&app.server, dev, &["--task", "work=sleep 1"]);
    let workers = [&prod_worker, &dev_worker];
    let prod_run = app.server.trigger_new(prod, "work", &json!({})).await;
    let dev_run = app.server.trigger_new(dev, "work", &json!({})).await;

    let prod_run = final_run(&app.server, prod, &prod_run, "COMPLETED", &workers).await;
    let dev_run = final_run(&app.server, dev, &dev_run, "COMPLETED", &workers).await;
    for run in [&prod_run, &dev_run] {
        snapshot(run);
        assert!(run["durationMs"].as_u64().unwrap() >= 1000, "{run:#}");
    }
    let duration_ms = prod_run["durationMs"].as_f64().unwrap();
    assert_close(
        prod_run["costInCents"].as_f64().unwrap(),
        SMALL_1X_CENTS_PER_SECOND * duration_ms / 1000.0,
        "prod costInCents",
    );
    assert!(prod_run["costInCents"].as_f64().unwrap() > 0.0);
    assert_close(
        prod_run["baseCostInCents"].as_f64().unwrap(),
        RUN_FEE_CENTS,
        "prod baseCostInCents",
    );
    assert_eq!(
        (&dev_run["costInCents"], &dev_run["baseCostInCents"]),
        (&json!(0.0), &json!(0.0))
    );
}

#[tokio::test]
async fn the_machine_price_flag_sets_the_cost_per_second() {
    let app = TestApp::start_with(&["--machine-price", "small-1x=1"]);
    let prod = &keys_create(&app.data_dir(), "prod");
    let worker = Worker::start(&app.server, prod, &["--task", "work=sleep 1"]);
    let id = app.server.trigger_new(prod, "work", &json!({})).await;

    let run = final_run(&app.server, prod, &id, "COMPLETED", &[&worker]).await;
    snapshot(&run);
    let cost = run["costInCents"].as_f64().unwrap();
    assert!((1.0..3.0).contains(&cost), "a 1 s run cost {cost}: {run:#}");
    assert_close(
        cost,
        run["durationMs"].as_f64().unwrap() / 1000.0,
        "costInCents",
    );
    assert_close(
        run["baseCostInCents"].as_f64().unwrap(),
        RUN_FEE_CENTS,
        "baseCostInCents",
    );
}

/// Runs `runnel <args> --api-url <server> --key <key>` to completion.
fn runnel_client(server: &Server, key: &str, args: &[&str]) -> std::process::Output {
    runnel_command()
        .args(args)
        .args(["--api-url", &server.url, "--key", key])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("running the runnel binary")
}

fn stdout_json(output: &std::process::Output) -> Value {
    serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}", describe(output)))
}

#[tokio::test]
async fn runnel_trigger_waits_for_the_run_and_runs_get_prints_it() {
    let app = TestApp::start();
    let key = &app.dev_key;
    let worker = Worker::start(
        &app.server,
        key,
        &[
            "--max-attempts",
            "1",
            "--task",
            "echo=cat",
            "--task",
            "fail=echo nope >&2; exit 3",
        ],
    );

    let output = runnel_client(
        &app.server,
        key,
        &["trigger", "echo", "--payload", r#"{"n": 21}"#, "--wait"],
    );
    assert!(output.status.success(), "{}", describe(&output));
    let printed = stdout_json(&output);
    assert_eq!(
        (&printed["status"], &printed["output"]),
        (&json!("COMPLETED"), &json!({"n": 21})),
        "{}",
        describe(&output)
    );
    let id = printed["id"].as_str().expect("the run's id").to_owned();
    // It printed the run as the API answers it.
    assert_eq!(printed, app.server.run(key, &id).await);

    let output = runnel_client(&app.server, key, &["runs", "get", &id]);
    assert!(output.status.success(), "{}", describe(&output));
    assert_eq!(stdout_json(&output), app.server.run(key, &id).await);

    // A failed run is printed too, and the exit status says it failed.
    let output = runnel_client(&app.server, key, &["trigger", "fail", "--wait"]);
    assert!(!output.status.success(), "{}", describe(&output));
    let printed = stdout_json(&output);
    assert_eq!(
        (&printed["status"], &printed["error"]["message"]),
        (&json!("FAILED"), &json!("nope")),
        "{}",
        describe(&output)
    );
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("FAILED"),
        "{}",
        describe(&output)
    );

    // Without --wait it prints the new run's id alone.
    let output = runnel_client(&app.server, key, &["trigger", "echo"]);
    assert!(output.status.success(), "{}", describe(&output));
    let stdout = String::from_utf8(output.stdout.clone()).unwrap();
    let id = stdout.strip_suffix('\n').expect("one line");
    assert_friendly_id(id, "run");
    final_run(&app.server, key, id, "COMPLETED", &[&worker]).await;
}

#[tokio::test]
async fn runnel_dev_serves_and_executes_in_one_process() {
    let dir = TempDir::new().unwrap();
    let dev = Server::start_dev(
        dir.path(),
        &["--task", r#"hello=printf '{"hello":%s}' "$(cat)""#],
    );
    let key = dev.dev_key().to_owned();
    let id = dev
        .trigger_new(&key, "hello", &json!({"payload": "world"}))
        .await;
    let run = final_run(&dev, &key, &id, "COMPLETED", &[]).await;
    assert_eq!(run["output"], json!({"hello": "world"}));
    assert_eq!(run["attemptCount"], 1);

    let stopped = Instant::now();
    let status = dev.terminate();
    assert!(status.success(), "runnel dev exited with {status}");
    assert!(
        stopped.elapsed() < SHUTDOWN_TIMEOUT,
        "runnel dev took {:?} to stop",
        stopped.elapsed()
    );
}

#[tokio::test]
async fn a_completion_after_a_cancel_is_refused() {
    let app = TestApp::start();
    let key = &app.dev_key;
    let server = &app.server;
    let worker = server.register_worker(key, &["raw"]).await;
    let id = server.trigger_new(key, "raw", &json!({})).await;

    let (leased, attempt_id) = server.dequeue_one(key, &worker).await;
    assert_eq!(leased, id);
    let started = server
        .worker_call(key, &worker, "start", &json!({"attemptIds": [attempt_id]}))
        .await;
    assert_eq!(
        (started.status, &started.body),
        (
            StatusCode::OK,
            &json!({"started": [attempt_id], "cancel": []})
        )
    );

    assert_eq!(server.cancel(key, &id).await.status, StatusCode::OK);
    let canceled = final_run(server, key, &id, "CANCELED", &[]).await;
    // The worker learns it from its heartbeat...
    let heartbeat = server
        .worker_call(
            key,
            &worker,
            "heartbeat",
            &json!({"attemptIds": [attempt_id], "waitMs": 0}),
        )
        .await;
    assert_eq!(
        (heartbeat.status, &heartbeat.body),
        (StatusCode::OK, &json!({"cancel": [attempt_id]}))
    );
    // ...and a report sent anyway changes nothing.
    let completed = server
        .worker_call(
            key,
            &worker,
            "complete",
            &json!({"completions": [
                {"attemptId": attempt_id, "outcome": "success", "output": {"late": true}},
            ]}),
        )
        .await;
    assert_eq!(
        (completed.status, &completed.body),
        (
            StatusCode::OK,
            &json!({"results": [{"attemptId": attempt_id, "accepted": false}]})
        )
    );
    assert_eq!(server.run(key, &id).await, canceled);
    assert!(canceled.get("output").is_none(), "{canceled:#}");
}

#[tokio::test]
async fn a_waiting_dequeue_answers_as_soon_as_a_run_is_triggered() {
    let app = TestApp::start();
    let key = &app.dev_key;
    let server = &app.server;
    let worker = server.register_worker(key, &["prompt"]).await;

    let long_poll = json!({"maxRuns": 1, "waitMs": 20000});
    let poll = server.worker_call(key, &worker, "dequeue", &long_poll);
    tokio::pin!(poll);
    // With nothing queued the request is held. (Nothing outside the server can tell the
    // moment it starts waiting, so this gives it a moment, and checks it stays pending.)
    tokio::select! {
        reply = &mut poll => panic!("the dequeue answered with nothing queued: {reply:?}"),
        () = tokio::time::sleep(Duration::from_millis(300)) => {}
    }
    // ...and answered the moment a run arrives.
    let id = server
        .trigger_new(key, "prompt", &json!({"payload": {"n": 1}}))
        .await;
    let triggered = Instant::now();
    let reply = poll.await;
    let waited = triggered.elapsed();
    // Well inside the 20 s the poll would otherwise wait (with room for a loaded CI box).
    assert!(
        waited < Duration::from_secs(5),
        "the dequeue answered {waited:?} after the trigger"
    );
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    let runs = reply.body["runs"].as_array().expect("runs");
    assert_eq!(runs.len(), 1, "{reply:?}");
    let run = &runs[0];
    assert_friendly_id(run["attemptId"].as_str().unwrap(), "attempt");
    assert!(timestamp(&run["leaseExpiresAt"]) > Utc::now(), "{run:#}");
    assert_eq!(
        (
            &run["runId"],
            &run["attemptNumber"],
            &run["taskIdentifier"],
            &run["payload"],
            &run["environment"],
        ),
        (
            &json!(id),
            &json!(1),
            &json!("prompt"),
            &json!({"n": 1}),
            &json!("dev")
        )
    );
    let leased = server.run(key, &id).await;
    assert_eq!(
        leased["status"], "EXECUTING",
        "DEQUEUED reads EXECUTING: {leased:#}"
    );
    let current = server.retrieve_as(key, &id, CURRENT_API_VERSION).await;
    assert_eq!(current.body["status"], "DEQUEUED", "{current:?}");
}

#[tokio::test]
async fn the_server_stops_promptly_while_a_worker_long_polls() {
    // The data directory must outlive the server.
    let TestApp {
        server,
        dev_key,
        dir: _data_dir,
    } = TestApp::start();
    let worker = server.register_worker(&dev_key, &["idle"]).await;
    // The longest wait the protocol allows, on a client of its own (the server is
    // consumed by its termination below).
    let poll = common::send(
        reqwest::Client::builder()
            .no_proxy()
            .build()
            .unwrap()
            .post(format!("{}/api/v1/workers/{worker}/dequeue", server.url))
            .bearer_auth(&dev_key)
            .json(&json!({"maxRuns": 1, "waitMs": 30000})),
    );
    tokio::pin!(poll);
    tokio::select! {
        reply = &mut poll => panic!("the dequeue answered with nothing queued: {reply:?}"),
        () = tokio::time::sleep(Duration::from_millis(300)) => {}
    }

    // A held long poll is answered (empty) when the server stops, not waited out.
    let stopping = Instant::now();
    let status = server.terminate();
    let took = stopping.elapsed();
    assert!(status.success(), "runnel serve exited with {status}");
    assert!(
        took < Duration::from_secs(10),
        "runnel serve took {took:?} to stop while a dequeue was held"
    );
    let reply = poll.await;
    assert_eq!(
        (reply.status, &reply.body),
        (StatusCode::OK, &json!({"runs": []}))
    );
}
