//! What the `runnel` binary says when something is refused, end to end: a command the
//! server refuses prints the server's message and its details on stderr and exits
//! non-zero; a flag outside its range is refused by the command line itself, naming the
//! range, before anything starts; and a trigger option the server would have to clamp
//! (a `priority` beyond what it stores) is a 400 naming the limit.

mod common;

use std::process::{Output, Stdio};

use common::{describe, runnel_command, TestApp};
use reqwest::StatusCode;
use serde_json::json;

/// Runs `runnel <args>` against `app`'s server with its dev key, to completion.
fn runnel_against(app: &TestApp, args: &[&str]) -> Output {
    runnel_command()
        .args(args)
        .args(["--api-url", &app.server.url, "--key", &app.dev_key])
        .env_remove("RUST_BACKTRACE")
        .env_remove("RUST_LIB_BACKTRACE")
        .stdin(Stdio::null())
        .output()
        .expect("running the runnel binary")
}

/// Asserts `output` failed and its stderr holds every one of `expected`.
fn assert_refused(output: &Output, expected: &[&str]) {
    assert!(!output.status.success(), "{}", describe(output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    for text in expected {
        assert!(
            stderr.contains(text),
            "stderr lacks {text:?}: {}",
            describe(output)
        );
    }
}

#[tokio::test]
async fn runs_ls_prints_the_servers_query_details() {
    let app = TestApp::start();
    let output = runnel_against(&app, &["runs", "ls", "--status", "bogus,FOO"]);
    // The message alone ("Query Error") says nothing; the details say what is wrong.
    assert_refused(
        &output,
        &[
            "400 Bad Request: Query Error",
            "Invalid status values: bogus, FOO at filter[status]",
        ],
    );
    assert!(output.stdout.is_empty(), "{}", describe(&output));
}

#[tokio::test]
async fn every_command_prints_the_servers_message() {
    let app = TestApp::start();
    let missing = "run_0000000000000000000000000";
    for (args, expected) in [
        (
            &["trigger", "hello", "--ttl", "forever"][..],
            r#"400 Bad Request: options.ttl: "forever" is not a duration like 10m, 1h42m or 3600s"#,
        ),
        (
            &["trigger", "hello", "--delay", "someday"][..],
            "400 Bad Request: options.delay:",
        ),
        (&["runs", "get", missing][..], "404 Not Found: Not found"),
        (&["runs", "cancel", missing][..], "404 Not Found: Not found"),
        (
            &["runs", "replay", missing][..],
            "404 Not Found: Run not found",
        ),
    ] {
        let output = runnel_against(&app, args);
        assert_refused(&output, &[expected]);
    }
}

#[tokio::test]
async fn a_refused_worker_start_prints_the_servers_message() {
    let app = TestApp::start();
    let output = runnel_command()
        .args(["worker", "--api-url", &app.server.url])
        .args(["--key", "tr_dev_000000000000000000000000"])
        .args(["--task", "hello=cat"])
        .stdin(Stdio::null())
        .output()
        .expect("running runnel worker");
    assert_refused(&output, &["401 Unauthorized: Invalid API Key"]);
}

/// Every numeric flag outside its range: clap refuses it (exit 2) and names the range,
/// before anything is started or sent (no server is running).
#[test]
fn flags_outside_their_range_are_refused_naming_the_range() {
    let api = ["--api-url", "http://127.0.0.1:9", "--key", "tr_dev_x"];
    let task = ["--task", "hello=cat"];
    let cases: &[(&[&str], &str)] = &[
        (&["worker", "--max-duration", "2"], "5..=2147483647"),
        (
            &["worker", "--max-duration", "2147483648"],
            "5..=2147483647",
        ),
        (&["worker", "--max-attempts", "0"], "1..=250"),
        (&["worker", "--max-attempts", "251"], "1..=250"),
        (&["worker", "--shutdown-grace", "86401"], "0..=86400"),
        (&["worker", "--concurrency", "0"], "1..=1000"),
        (&["worker", "--queue-limit", "q=100001"], "from 0 to 100000"),
        (
            &["trigger", "hello", "--max-duration", "4"],
            "5..=2147483647",
        ),
        (&["trigger", "hello", "--max-attempts", "251"], "1..=250"),
        (
            &["trigger", "hello", "--wait", "--timeout", "0"],
            "at least 1s",
        ),
        (
            &["trigger", "hello", "--wait", "--timeout", "366d"],
            "31536000",
        ),
        (&["runs", "ls", "--limit", "101"], "1..=100"),
        (&["runs", "ls", "--limit", "0"], "1..=100"),
        (
            &["serve", "--run-fee-cents=-1"],
            "non-negative number of cents",
        ),
        (&["serve", "--lease-timeout", "0"], "1..=3600"),
        (&["serve", "--blob-url-ttl", "0"], "1..=604800"),
        (
            &["serve", "--blob-offload-threshold", "0"],
            "1..=1099511627776",
        ),
        (&["serve", "--blob-max-bytes", "0"], "1..=1099511627776"),
        (&["bench", "--runs", "1"], "2..=10000000"),
    ];
    for (args, range) in cases {
        let mut command = runnel_command();
        command.args(*args);
        match args[0] {
            "worker" => command.args(api).args(task),
            "trigger" | "runs" => command.args(api),
            _ => &mut command,
        };
        let output = command
            .stdin(Stdio::null())
            .output()
            .expect("running the runnel binary");
        assert_eq!(
            output.status.code(),
            Some(2),
            "{args:?}: {}",
            describe(&output)
        );
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains("invalid value") && stderr.contains(range),
            "{args:?} should name {range:?}: {}",
            describe(&output)
        );
    }
}

/// `priority` is stored as whole milliseconds in 32 bits: beyond that it is refused,
/// naming the limit, rather than clamped (two far-apart priorities would become equal).
#[tokio::test]
async fn a_priority_beyond_what_is_stored_is_refused_naming_the_limit() {
    let app = TestApp::start();
    for priority in [2_147_483.648, -1e12] {
        let reply = app
            .server
            .trigger(
                &app.dev_key,
                "hello",
                &json!({"options": {"priority": priority}}),
            )
            .await;
        reply.assert_error(
            StatusCode::BAD_REQUEST,
            "options.priority: must be between -2147483.647 and 2147483.647 seconds",
        );
    }
    let edge = app
        .server
        .trigger_new(
            &app.dev_key,
            "hello",
            &json!({"options": {"priority": -2_147_483.647}}),
        )
        .await;
    assert!(edge.starts_with("run_"), "{edge}");
}

/// A blob store URL the server cannot use stops `serve` at start, naming it, before it
/// listens.
#[test]
fn an_unusable_blob_url_is_refused_at_start() {
    let dir = tempfile::TempDir::new().unwrap();
    for (url, expected) in [
        (
            "gs://bucket/x",
            "--blob-url gs://bucket/x: unsupported scheme",
        ),
        ("s3://", "--blob-url s3://: no bucket"),
    ] {
        let output = runnel_command()
            .args(["serve", "--listen", "127.0.0.1:0", "--blob-url", url])
            .arg("--data-dir")
            .arg(dir.path())
            .stdin(Stdio::null())
            .output()
            .expect("running the runnel binary");
        assert!(!output.status.success(), "{}", describe(&output));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(expected), "{url}: {}", describe(&output));
        assert!(
            !String::from_utf8_lossy(&output.stdout).contains("listening"),
            "{}",
            describe(&output)
        );
    }
}
