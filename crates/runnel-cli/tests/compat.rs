//! The compatibility suite: the official `@trigger.dev/sdk` from npm (pinned in
//! `compat/package-lock.json`) against the real `runnel serve` and a real `runnel worker`.
//!
//! Each test here runs one file of `compat/tests/` with `node --test`, against its own
//! server (embedded SQLite) and a prod-key exec worker serving the tasks the files use.
//! The SDK is configured the way a user configures it: `TRIGGER_API_URL` and
//! `TRIGGER_SECRET_KEY`. The suite needs Node.js and `npm ci --prefix compat` (the README's
//! test command and `.ci/run` do it); without them the tests fail, never skip.

mod common;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{keys_create, Server, Worker};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use runnel_testkit::S3Server;
use tempfile::TempDir;

/// The version the worker registers, so tests can lock runs to it.
const WORKER_VERSION: &str = "20260101.1";
/// Longest a file of the suite may take.
const FILE_TIMEOUT: Duration = Duration::from_secs(240);

fn compat_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../compat")
}

/// Runs `compat/tests/<file>` against a fresh server and worker; panics with the node
/// output and both processes' logs unless every test in it passes.
fn run_compat_file(file: &str) {
    run_compat_file_with(file, false, &[], &[]);
}

/// [`run_compat_file`] with more: with `revocable`, the file also gets a second prod key,
/// the binary and the store flags, to revoke that key (`RUNNEL_COMPAT_*`, auth.test.mjs);
/// `serve_args` and `serve_env` start the server with more `serve` arguments and
/// environment variables (`--blob-url s3://…` with its `AWS_*` variables).
pub fn run_compat_file_with(
    file: &str,
    revocable: bool,
    serve_args: &[&str],
    serve_env: &[(&str, &str)],
) {
    run_compat_file_full(file, revocable, serve_args, serve_env, &[]);
}

/// [`run_compat_file_with`], with variables for the node side too.
fn run_compat_file_full(
    file: &str,
    revocable: bool,
    serve_args: &[&str],
    serve_env: &[(&str, &str)],
    node_env: &[(&str, &str)],
) {
    let dir = compat_dir();
    assert!(
        dir.join("node_modules/@trigger.dev/sdk/package.json")
            .exists(),
        "the compatibility suite needs the SDK installed: run `npm ci --prefix compat` first"
    );
    let data = TempDir::new().expect("a temporary data directory");
    let server = Server::start_with_env(data.path(), serve_args, serve_env);
    let key = keys_create(data.path(), "prod");
    let mut worker = Worker::start(
        &server,
        &key,
        &[
            "--version",
            WORKER_VERSION,
            "--concurrency",
            "8",
            "--task",
            "compat-echo=cat",
            "--task",
            r#"compat-env=printf %s "$COMPAT_GREETING""#,
            "--task",
            "compat-scheduled=cat",
            "--task",
            "compat-slow=sleep 1.5; cat",
            "--scheduled",
            "compat-scheduled",
        ],
    );
    worker.registration();

    let mut node = Command::new("node");
    if revocable {
        let mut store_args = vec!["--data-dir".to_owned(), data.path().display().to_string()];
        store_args.extend(common::backend::store_args(data.path()));
        node.env(
            "RUNNEL_COMPAT_REVOCABLE_KEY",
            keys_create(data.path(), "prod"),
        )
        .env("RUNNEL_COMPAT_BIN", env!("CARGO_BIN_EXE_runnel"))
        .env(
            "RUNNEL_COMPAT_STORE_ARGS",
            serde_json::to_string(&store_args).unwrap(),
        );
    }
    node.envs(node_env.iter().copied());
    let child = node
        .args(["--test", "--test-concurrency=1", "--test-reporter=spec"])
        .arg(format!("tests/{file}"))
        .current_dir(&dir)
        .env("TRIGGER_API_URL", &server.url)
        .env("TRIGGER_SECRET_KEY", &key)
        .env("RUNNEL_COMPAT_WORKER_VERSION", WORKER_VERSION)
        .env_remove("TRIGGER_ACCESS_TOKEN")
        .env_remove("TRIGGER_VERSION")
        .env_remove("TRIGGER_PREVIEW_BRANCH")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running node (the compatibility suite needs Node.js 20 or newer)");
    // Read both pipes to the end on another thread (node may print more than a pipe
    // holds), and kill node if the file hangs.
    let pid = child.id();
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = done_tx.send(child.wait_with_output());
    });
    let output = match done_rx.recv_timeout(FILE_TIMEOUT) {
        Ok(output) => output.expect("node's output"),
        Err(_) => {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
            let output = done_rx.recv().expect("node exits").expect("node's output");
            panic!(
                "compat/tests/{file} did not finish within {FILE_TIMEOUT:?}\n{}\n--- server ---\n{}",
                String::from_utf8_lossy(&output.stdout),
                server.stderr()
            );
        }
    };
    // Shown with --nocapture, and by the test harness when the test fails.
    println!("{}", String::from_utf8_lossy(&output.stdout));
    assert!(
        output.status.success(),
        "compat/tests/{file} failed ({:?})\n--- node stdout ---\n{}\n--- node stderr ---\n{}\n--- server ---\n{}\n--- worker ---\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
        server.stderr(),
        worker.stderr(),
    );
}

#[test]
fn sdk_trigger_and_retrieve() {
    run_compat_file("trigger.test.mjs");
}

#[test]
fn sdk_public_tokens_signed_by_the_sdk() {
    run_compat_file_with("auth.test.mjs", true, &[], &[]);
}

#[test]
fn sdk_errors() {
    run_compat_file("errors.test.mjs");
}

#[test]
fn sdk_batch_trigger() {
    run_compat_file("batch.test.mjs");
}

#[test]
fn sdk_runs_management() {
    run_compat_file("runs.test.mjs");
}

#[test]
fn sdk_runs_list() {
    run_compat_file("list.test.mjs");
}

#[test]
fn sdk_queues() {
    run_compat_file("queues.test.mjs");
}

/// The SDK's realtime subscriptions: a run's every status, a tag's runs, a batch's runs,
/// and a public token's scopes.
#[test]
fn sdk_realtime_subscriptions() {
    run_compat_file("realtime.test.mjs");
}

#[test]
fn sdk_envvars() {
    run_compat_file("envvars.test.mjs");
}

/// Schedules through the SDK, and one real occurrence firing a run of the worker's
/// scheduled task (waits for the next minute boundary).
#[test]
fn sdk_schedules() {
    run_compat_file("schedules.test.mjs");
}

#[test]
fn sdk_large_payloads_and_outputs() {
    run_compat_file("packets.test.mjs");
}

/// The packets file again with the server's object storage on a real S3-compatible server
/// (loopback, signatures checked): the SDK's own uploads go to S3-presigned URLs.
#[test]
fn sdk_large_payloads_and_outputs_on_s3() {
    let s3 = S3Server::start();
    let blob_url = s3.blob_url("compat");
    run_compat_file_with(
        "packets.test.mjs",
        false,
        &["--blob-url", &blob_url],
        &s3.env(),
    );
    let keys = s3.object_keys();
    assert!(
        keys.iter().any(|key| key.starts_with("compat/")),
        "nothing landed in the bucket: {keys:?}"
    );
}

/// Through a worker, on S3: a 2 MiB payload the SDK uploaded reaches the exec worker
/// (`cat`), whose 2 MiB output runs.retrieve reads through its S3-presigned URL.
#[test]
fn sdk_worker_payloads_and_outputs_on_s3() {
    let s3 = S3Server::start();
    let blob_url = s3.blob_url("compat");
    run_compat_file_full(
        "packets_s3.test.mjs",
        false,
        &["--blob-url", &blob_url],
        &s3.env(),
        &[("RUNNEL_COMPAT_S3_ENDPOINT", &s3.endpoint)],
    );
    let keys = s3.object_keys();
    assert!(
        keys.iter()
            .any(|key| key.starts_with("compat/") && key.contains("output-")),
        "no output landed in the bucket: {keys:?}"
    );
}
