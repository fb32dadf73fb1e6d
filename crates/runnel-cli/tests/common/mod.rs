//! Harness for the end-to-end tests: starts the real `runnel` binary on port 0 in a
//! temporary data directory, reads its address (and, on a first start, the project and
//! the dev key) from stdout, and talks to it over HTTP.
//!
//! Every test owns its server and its database, so tests run in parallel. The child gets
//! an environment without `RUNNEL_*` variables (the user's settings never leak in), is
//! killed when its [`Server`] is dropped, and has its stderr kept so a failed start or a
//! failed assertion can show what it logged. Nothing here sleeps for a fixed time: waits
//! poll with a deadline ([`eventually`]).

// Each test binary uses a different part of the harness.
#![allow(dead_code)]

use std::future::Future;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use reqwest::header::HeaderMap;
use reqwest::{Method, RequestBuilder, StatusCode};
use serde_json::{json, Value};
use tempfile::TempDir;

/// How long a server may take to print its address.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a server may take to exit after SIGTERM.
pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);
/// Deadline for things the runtime services do on their own (expiring a 1 s TTL).
pub const SERVICE_TIMEOUT: Duration = Duration::from_secs(10);
/// Between two probes of [`eventually`].
const POLL_INTERVAL: Duration = Duration::from_millis(25);
/// The `x-trigger-api-version` the v4 SDK sends (current status vocabulary).
pub const CURRENT_API_VERSION: &str = "2025-07-16";

/// Stored characters after `tr_<env>_` in a secret key that `keys list` shows.
const KEY_DISPLAY_BODY_LEN: usize = 6;
/// Characters after `tr_<env>_` in a secret key.
const KEY_BODY_LEN: usize = 24;

/// The `runnel` binary with a clean environment: no `RUNNEL_*` variable of the caller's
/// reaches it, and logging is at its default level.
pub fn runnel_command() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_runnel"));
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("RUNNEL_") {
            command.env_remove(name);
        }
    }
    command.env_remove("RUST_LOG");
    command
}

/// Runs `runnel <args> --data-dir <data_dir>` to completion.
pub fn runnel(data_dir: &Path, args: &[&str]) -> Output {
    runnel_command()
        .args(args)
        .arg("--data-dir")
        .arg(data_dir)
        .stdin(Stdio::null())
        .output()
        .expect("running the runnel binary")
}

/// Renders an [`Output`] for assertion messages.
pub fn describe(output: &Output) -> String {
    format!(
        "{}\n--- stdout ---\n{}--- stderr ---\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// `runnel keys create --env <env>`: asserts it succeeded and printed exactly one line,
/// and returns that line (the key).
pub fn keys_create(data_dir: &Path, env: &str) -> String {
    let output = runnel(data_dir, &["keys", "create", "--env", env]);
    assert!(
        output.status.success(),
        "keys create: {}",
        describe(&output)
    );
    let stdout = String::from_utf8(output.stdout.clone()).expect("utf-8 stdout");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines.len(),
        1,
        "keys create prints the key alone: {}",
        describe(&output)
    );
    assert!(stdout.ends_with('\n'), "{stdout:?}");
    lines[0].to_owned()
}

/// `runnel keys create --env <env> <store_args…>` (e.g. `--database-url …`): returns the key.
pub fn keys_create_with(store_args: &[&str], env: &str) -> String {
    let output = runnel_command()
        .args(["keys", "create", "--env", env])
        .args(store_args)
        .stdin(Stdio::null())
        .output()
        .expect("running the runnel binary");
    assert!(
        output.status.success(),
        "keys create: {}",
        describe(&output)
    );
    String::from_utf8(output.stdout).unwrap().trim().to_owned()
}

/// The part of a secret key that `keys list` shows and `keys revoke` takes.
pub fn key_prefix(key: &str) -> &str {
    &key[..key.len() - KEY_BODY_LEN + KEY_DISPLAY_BODY_LEN]
}

/// Asserts `key` is `tr_<tag>_` followed by 24 ASCII letters and digits.
pub fn assert_secret_key(key: &str, tag: &str) {
    let body = key
        .strip_prefix("tr_")
        .and_then(|rest| rest.strip_prefix(tag))
        .and_then(|rest| rest.strip_prefix('_'))
        .unwrap_or_else(|| panic!("{key:?} does not start with tr_{tag}_"));
    assert!(
        body.len() == KEY_BODY_LEN && body.bytes().all(|b| b.is_ascii_alphanumeric()),
        "{key:?} is not tr_{tag}_ + 24 of [0-9A-Za-z]"
    );
}

/// What the first start of a server printed.
#[derive(Debug, Clone)]
pub struct Bootstrap {
    /// The whole first line, `Created project proj_… with environments dev, staging, prod.`
    pub project_line: String,
    pub project_id: String,
    pub dev_key: String,
}

/// A running `runnel serve`. Killed (SIGKILL) when dropped.
#[derive(Debug)]
pub struct Server {
    child: Child,
    /// `http://127.0.0.1:<port>`
    pub url: String,
    /// `Some` only when this start created the project.
    pub bootstrap: Option<Bootstrap>,
    stderr: Arc<Mutex<String>>,
    stderr_reader: Option<JoinHandle<()>>,
    /// Stdout lines printed after the address line.
    later_stdout: Receiver<String>,
    client: reqwest::Client,
}

impl Server {
    /// Starts `runnel serve --listen 127.0.0.1:0 --data-dir <data_dir>` and waits until it
    /// prints its address.
    pub fn start(data_dir: &Path) -> Server {
        Server::start_with(data_dir, &[])
    }

    /// Like [`Server::start`], with more arguments for `serve` (`--database-url …`).
    pub fn start_with(data_dir: &Path, extra: &[&str]) -> Server {
        let mut child = runnel_command()
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning runnel serve");

        // Both pipes are drained for the child's whole life, so it never blocks on a full
        // pipe however much it logs.
        let stderr = Arc::new(Mutex::new(String::new()));
        let stderr_reader = {
            let pipe = child.stderr.take().expect("piped stderr");
            let stderr = stderr.clone();
            thread::spawn(move || {
                for line in BufReader::new(pipe).lines() {
                    let Ok(line) = line else { break };
                    let mut all = stderr.lock().unwrap();
                    all.push_str(&line);
                    all.push('\n');
                }
            })
        };
        let (line_tx, lines) = mpsc::channel();
        {
            let pipe = child.stdout.take().expect("piped stdout");
            thread::spawn(move || {
                for line in BufReader::new(pipe).lines() {
                    let Ok(line) = line else { break };
                    if line_tx.send(line).is_err() {
                        break;
                    }
                }
            });
        }

        let mut server = Server {
            child,
            url: String::new(),
            bootstrap: None,
            stderr,
            stderr_reader: Some(stderr_reader),
            later_stdout: lines,
            client: reqwest::Client::builder()
                .no_proxy()
                .timeout(Duration::from_secs(30))
                .build()
                .expect("building the HTTP client"),
        };
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        let mut before_address = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match server.later_stdout.recv_timeout(left) {
                Ok(line) => match line.strip_prefix("Runnel listening on ") {
                    Some(url) => {
                        server.url = url.to_owned();
                        break;
                    }
                    None => before_address.push(line),
                },
                Err(RecvTimeoutError::Timeout) => server.fail_start(&format!(
                    "printed no address within {STARTUP_TIMEOUT:?}; stdout so far: {before_address:?}"
                )),
                Err(RecvTimeoutError::Disconnected) => server.fail_start(&format!(
                    "closed stdout before printing its address; stdout: {before_address:?}"
                )),
            }
        }
        assert!(
            server.url.starts_with("http://127.0.0.1:") && !server.url.ends_with(":0"),
            "unexpected address line: {:?}",
            server.url
        );
        server.bootstrap = match before_address.as_slice() {
            [] => None,
            [project_line, key_line] => Some(parse_bootstrap(project_line, key_line)),
            other => server.fail_start(&format!("unexpected stdout before the address: {other:?}")),
        };
        server
    }

    /// Kills the child and panics with its exit status and everything it logged.
    fn fail_start(&mut self, what: &str) -> ! {
        let _ = self.child.kill();
        let status = self.child.wait();
        if let Some(reader) = self.stderr_reader.take() {
            let _ = reader.join();
        }
        panic!(
            "runnel serve {what}\nexit: {status:?}\n--- stderr ---\n{}",
            self.stderr()
        );
    }

    /// The dev key printed on the first start.
    pub fn dev_key(&self) -> &str {
        &self
            .bootstrap
            .as_ref()
            .expect("this start created the project and printed the dev key")
            .dev_key
    }

    /// Everything the server logged so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Stdout lines printed after the address line, so far.
    pub fn later_stdout(&self) -> Vec<String> {
        self.later_stdout.try_iter().collect()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM and waits for the process to exit; panics (with the server's log) if
    /// it is still running after [`SHUTDOWN_TIMEOUT`].
    pub fn terminate(mut self) -> ExitStatus {
        let sent = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .expect("running kill");
        assert!(sent.success(), "kill -TERM failed: {sent}");
        let deadline = Instant::now() + SHUTDOWN_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().expect("waiting for runnel serve") {
                return status;
            }
            if Instant::now() >= deadline {
                panic!(
                    "runnel serve still running {SHUTDOWN_TIMEOUT:?} after SIGTERM\n--- stderr ---\n{}",
                    self.stderr()
                );
            }
            thread::sleep(POLL_INTERVAL);
        }
    }

    /// A request to `path` on this server.
    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.client.request(method, format!("{}{path}", self.url))
    }

    /// `POST /api/v1/tasks/{task}/trigger` with a JSON body.
    pub async fn trigger(&self, key: &str, task: &str, body: &Value) -> Reply {
        send(self.trigger_request(key, task).json(body)).await
    }

    /// A trigger request without a body yet.
    pub fn trigger_request(&self, key: &str, task: &str) -> RequestBuilder {
        self.request(Method::POST, &format!("/api/v1/tasks/{task}/trigger"))
            .bearer_auth(key)
    }

    /// Triggers and asserts a new run was created; returns its id.
    pub async fn trigger_new(&self, key: &str, task: &str, body: &Value) -> String {
        let reply = self.trigger(key, task, body).await;
        reply.assert_new_run()
    }

    /// `GET /api/v3/runs/{id}` without `x-trigger-api-version` (legacy statuses).
    pub async fn retrieve(&self, key: &str, run_id: &str) -> Reply {
        send(
            self.request(Method::GET, &format!("/api/v3/runs/{run_id}"))
                .bearer_auth(key),
        )
        .await
    }

    /// `GET /api/v3/runs/{id}` with `x-trigger-api-version: <version>`.
    pub async fn retrieve_as(&self, key: &str, run_id: &str, version: &str) -> Reply {
        send(
            self.request(Method::GET, &format!("/api/v3/runs/{run_id}"))
                .bearer_auth(key)
                .header("x-trigger-api-version", version),
        )
        .await
    }

    /// Retrieves a run that must exist; returns its body.
    pub async fn run(&self, key: &str, run_id: &str) -> Value {
        let reply = self.retrieve(key, run_id).await;
        assert_eq!(reply.status, StatusCode::OK, "retrieve {run_id}: {reply:?}");
        reply.body
    }

    /// Polls the run until its legacy status is `status`; returns that body.
    pub async fn wait_for_status(&self, key: &str, run_id: &str, status: &str) -> Value {
        eventually(
            &format!("run {run_id} to become {status}"),
            SERVICE_TIMEOUT,
            || async {
                let body = self.run(key, run_id).await;
                (body["status"] == status).then_some(body)
            },
        )
        .await
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn parse_bootstrap(project_line: &str, key_line: &str) -> Bootstrap {
    let project_id = project_line
        .strip_prefix("Created project ")
        .and_then(|rest| rest.strip_suffix(" with environments dev, staging, prod."))
        .unwrap_or_else(|| panic!("unexpected project line {project_line:?}"));
    assert_friendly_id(project_id, "proj");
    let dev_key = key_line
        .strip_prefix("Dev secret key (shown once, keep it): ")
        .unwrap_or_else(|| panic!("unexpected key line {key_line:?}"));
    assert_secret_key(dev_key, "dev");
    Bootstrap {
        project_line: project_line.to_owned(),
        project_id: project_id.to_owned(),
        dev_key: dev_key.to_owned(),
    }
}

/// A fresh data directory with a server started on it (which created the project).
#[derive(Debug)]
pub struct TestApp {
    pub server: Server,
    /// The dev key the first start printed.
    pub dev_key: String,
    // Dropped after `server` (fields drop in order), so the server never loses its files.
    pub dir: TempDir,
}

impl TestApp {
    pub fn start() -> TestApp {
        let dir = TempDir::new().expect("creating a temporary data directory");
        let server = Server::start(dir.path());
        let dev_key = server.dev_key().to_owned();
        TestApp {
            server,
            dev_key,
            dir,
        }
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().to_owned()
    }
}

/// A response: status, headers and the body parsed as JSON.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Value,
}

impl Reply {
    /// Asserts this is a trigger's `200 {"id": "run_…", "isCached": false}`; returns the id.
    pub fn assert_new_run(&self) -> String {
        assert_eq!(self.status, StatusCode::OK, "trigger: {self:?}");
        assert_eq!(
            redact(&self.body),
            json!({"id": "<run id>", "isCached": false}),
            "trigger: {self:?}"
        );
        self.run_id()
    }

    /// Asserts this is a trigger's `200 {"id": "run_…", "isCached": true}`; returns the id.
    pub fn assert_cached_run(&self) -> String {
        assert_eq!(self.status, StatusCode::OK, "trigger: {self:?}");
        assert_eq!(
            redact(&self.body),
            json!({"id": "<run id>", "isCached": true}),
            "trigger: {self:?}"
        );
        self.run_id()
    }

    pub fn run_id(&self) -> String {
        self.body["id"]
            .as_str()
            .unwrap_or_else(|| panic!("no id in {self:?}"))
            .to_owned()
    }

    /// Asserts an error reply: this status, exactly `{"error": message}`, and
    /// `x-should-retry: false` (so the SDK fails fast instead of retrying).
    pub fn assert_error(&self, status: StatusCode, message: &str) {
        assert_eq!(
            (self.status, &self.body),
            (status, &json!({ "error": message })),
            "{self:?}"
        );
        assert_eq!(
            self.headers
                .get("x-should-retry")
                .and_then(|v| v.to_str().ok()),
            Some("false"),
            "{self:?}"
        );
    }
}

/// Sends a request and parses the body as JSON (panicking with the text when it is not).
pub async fn send(request: RequestBuilder) -> Reply {
    let response = request.send().await.expect("sending the request");
    let status = response.status();
    let headers = response.headers().clone();
    let text = response.text().await.expect("reading the response body");
    let body = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{status}: body is not JSON ({e}): {text:?}"));
    Reply {
        status,
        headers,
        body,
    }
}

/// Polls `probe` every few milliseconds until it returns `Some`, for at most `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Fields whose values are timestamps wherever they appear.
const TIMESTAMP_FIELDS: [&str; 7] = [
    "createdAt",
    "updatedAt",
    "startedAt",
    "finishedAt",
    "delayedUntil",
    "expiredAt",
    "completedAt",
];

/// A copy of `value` with run ids replaced by `"<run id>"` and timestamps by
/// `"<timestamp>"`, after asserting each has the documented shape, so whole bodies can
/// be compared. Applies to every `id` and timestamp field at any depth.
pub fn redact(value: &Value) -> Value {
    match value {
        Value::Object(fields) => fields
            .iter()
            .map(|(name, field)| {
                let redacted = if name == "id" {
                    let id = field
                        .as_str()
                        .unwrap_or_else(|| panic!("id is not a string: {field}"));
                    assert_friendly_id(id, "run");
                    json!("<run id>")
                } else if TIMESTAMP_FIELDS.contains(&name.as_str()) {
                    timestamp(field);
                    json!("<timestamp>")
                } else {
                    redact(field)
                };
                (name.clone(), redacted)
            })
            .collect(),
        Value::Array(items) => items.iter().map(redact).collect(),
        other => other.clone(),
    }
}

/// Asserts `id` is `<prefix>_` + 24 lowercase base32 characters (`0-9a-v`), the ids
/// this server generates.
pub fn assert_friendly_id(id: &str, prefix: &str) {
    let body = id
        .strip_prefix(prefix)
        .and_then(|rest| rest.strip_prefix('_'))
        .unwrap_or_else(|| panic!("{id:?} does not start with {prefix}_"));
    assert!(
        body.len() == 24 && body.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'v')),
        "{id:?} is not {prefix}_ + 24 of [0-9a-v]"
    );
}

/// Parses a response timestamp, asserting the wire form: RFC 3339, UTC written `Z`,
/// exactly three fractional digits (`2026-01-02T03:04:05.678Z`).
pub fn timestamp(value: &Value) -> DateTime<Utc> {
    let text = value
        .as_str()
        .unwrap_or_else(|| panic!("timestamp is not a string: {value}"));
    let bytes = text.as_bytes();
    assert!(
        bytes.len() == 24
            && bytes[19] == b'.'
            && bytes[20..23].iter().all(u8::is_ascii_digit)
            && bytes[23] == b'Z',
        "{text:?} is not YYYY-MM-DDTHH:MM:SS.mmmZ"
    );
    DateTime::parse_from_rfc3339(text)
        .unwrap_or_else(|e| panic!("{text:?} is not RFC 3339: {e}"))
        .with_timezone(&Utc)
}

/// Asserts no `null` appears anywhere in `value`: optional fields are left out instead.
pub fn assert_no_nulls(value: &Value) {
    fn walk(value: &Value, path: &str) {
        match value {
            Value::Null => panic!("null at {path}"),
            Value::Object(fields) => {
                for (name, field) in fields {
                    walk(field, &format!("{path}.{name}"));
                }
            }
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    walk(item, &format!("{path}[{i}]"));
                }
            }
            _ => {}
        }
    }
    walk(value, "$");
}
