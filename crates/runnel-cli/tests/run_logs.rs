//! `runnel runs logs RUN_ID [--follow]` against the real `runnel serve`: the log lines a
//! task process exported over OTLP (`POST /otel/v1/logs`, shaped as `trigger.dev` 4.8.3
//! sends them), printed with their times and levels, oldest first.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::{describe, runnel_command, send, Server, TestApp};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

/// 2026-01-02T03:04:05Z in nanoseconds.
const T0: u64 = 1_767_323_045_000_000_000;
const MS: u64 = 1_000_000;

/// A `logger.<level>(message, {count})` record of `run`, `at_ms` after T0.
fn record(run: &str, at_ms: u64, (number, text): (i32, &str), message: &str) -> Value {
    let attr = |key: &str, value: Value| json!({"key": key, "value": value});
    json!({
        "timeUnixNano": (T0 + at_ms * MS).to_string(),
        "observedTimeUnixNano": (T0 + at_ms * MS).to_string(),
        "severityNumber": number, "severityText": text, "body": {"stringValue": message},
        "attributes": [
            attr("count", json!({"intValue": "3"})),
            attr("$style.icon", json!({"stringValue": "info"})),
            attr("$metadata.ctx.run.id", json!({"stringValue": run})),
            attr("$metadata.ctx.attempt.number", json!({"intValue": "1"})),
            attr("$metadata.ctx.task.id", json!({"stringValue": "hello"})),
        ],
        "traceId": "5b8efff798038103d269b633813fc60c", "spanId": "bbb19b7ec3c1b174",
    })
}

/// Exports log records as the task process does: OTLP JSON, no `Authorization`.
async fn export(server: &Server, records: Vec<Value>) {
    let body = json!({"resourceLogs": [{
        "resource": {"attributes": [
            {"key": "service.name", "value": {"stringValue": "trigger.dev"}},
            {"key": "ctx.environment.type", "value": {"stringValue": "DEVELOPMENT"}},
        ]},
        "scopeLogs": [{"scope": {"name": "trigger.dev"}, "logRecords": records}],
    }]});
    let reply = send(
        server
            .request(Method::POST, "/otel/v1/logs")
            .header("content-type", "application/json")
            .body(body.to_string()),
    )
    .await;
    assert_eq!((reply.status, &reply.body), (StatusCode::OK, &json!({})));
}

fn runs_logs(server: &Server, key: &str, args: &[&str]) -> Output {
    runnel_command()
        .args(["runs", "logs"])
        .args(args)
        .args(["--api-url", &server.url, "--key", key])
        .stdin(Stdio::null())
        .output()
        .expect("running the runnel binary")
}

#[tokio::test]
async fn runs_logs_prints_a_runs_lines_oldest_first_with_time_and_level() {
    let app = TestApp::start();
    let (server, key) = (&app.server, app.dev_key.as_str());
    let run = server.trigger_new(key, "hello", &json!({})).await;
    // Exported out of order, as concurrent exports can arrive.
    export(server, vec![record(&run, 40, (13, "warn"), "careful")]).await;
    export(
        server,
        vec![
            record(&run, 20, (9, "info"), "Hello, world!"),
            record(&run, 60, (17, "error"), "it broke"),
        ],
    )
    .await;

    let output = runs_logs(server, key, &[&run]);
    assert!(output.status.success(), "{}", describe(&output));
    assert_eq!(
        String::from_utf8(output.stdout).unwrap(),
        "2026-01-02 03:04:05.020 INFO  Hello, world! count=3\n\
         2026-01-02 03:04:05.040 WARN  careful count=3\n\
         2026-01-02 03:04:05.060 ERROR it broke count=3\n"
    );

    // Another environment's key does not see the run.
    let prod = common::keys_create(&app.data_dir(), "prod");
    let output = runs_logs(server, &prod, &[&run]);
    assert!(!output.status.success(), "{}", describe(&output));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("no run"),
        "{}",
        describe(&output)
    );
}

#[tokio::test]
async fn runs_logs_follow_prints_new_lines_until_the_run_ends() {
    let app = TestApp::start();
    let (server, key) = (&app.server, app.dev_key.as_str());
    let run = server.trigger_new(key, "hello", &json!({})).await;
    export(server, vec![record(&run, 10, (9, "info"), "first")]).await;

    let mut child = runnel_command()
        .args(["runs", "logs", &run, "--follow"])
        .args(["--api-url", &server.url, "--key", key])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting runnel runs logs --follow");
    let (lines, received) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    let next_line = || {
        received
            .recv_timeout(Duration::from_secs(20))
            .expect("a line within 20 s")
    };
    assert!(next_line().ends_with("INFO  first count=3"));

    export(server, vec![record(&run, 20, (13, "warn"), "second")]).await;
    assert!(next_line().ends_with("WARN  second count=3"));

    // The run ends; a line exported late, with an earlier time than the last one
    // printed, is still printed before the command exits.
    export(server, vec![record(&run, 15, (9, "info"), "late")]).await;
    assert_eq!(server.cancel(key, &run).await.status, StatusCode::OK);
    let mut exited = None;
    for _ in 0..200 {
        if let Some(status) = child.try_wait().unwrap() {
            exited = Some(status);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let Some(status) = exited else {
        child.kill().ok();
        panic!("runs logs --follow did not exit within 20 s of the run's end");
    };
    assert!(status.success(), "{status}");
    let rest: Vec<String> = received.iter().collect();
    assert_eq!(rest.len(), 1, "{rest:?}");
    assert!(rest[0].ends_with("INFO  late count=3"), "{rest:?}");
}
