//! The acceptance test of `trigger.dev dev` on Runnel: the official CLI (`trigger.dev`
//! 4.8.3, with `@trigger.dev/sdk` 4.8.3, both pinned in `compat/package-lock.json`) runs
//! the TypeScript tasks of the fixture project `compat/trigger-project` against the real
//! `runnel serve`, on SQLite, and on PostgreSQL with `RUNNEL_TEST_BACKEND=postgres`.
//!
//! The CLI logs in with a personal access token from `runnel keys create --pat`, gets the
//! environment's secret key from `GET /api/v1/projects/{ref}/dev` as it does, bundles and
//! registers the project, and executes the runs the test triggers over HTTP. The runs
//! prove, each through what a user sees on retrieve (`GET /api/v3/runs/{id}`, v4
//! statuses) and `runnel runs logs`:
//!
//! - a task's output;
//! - its `logger` lines in `runnel runs logs` and its `metadata.set` values on retrieve;
//! - retries per the task's `retry` settings (fails twice then succeeds; always fails and
//!   stops after `maxAttempts`);
//! - `triggerAndWait` returning the child's output;
//! - `batchTriggerAndWait` with one failing item;
//! - `wait.for` of 10 s: the run is `WAITING` meanwhile, its `durationMs` leaves the wait
//!   out, its `logger` lines and `metadata.set` values are visible;
//! - waitpoint tokens completed through the management API, through the token's callback
//!   URL, and one that times out;
//! - cancelling a waiting parent cancels its waiting child;
//! - restarting the server while runs wait (on a duration and on a token) loses nothing:
//!   they resume and complete, and the CLI goes on taking new runs;
//! - `schedules.task` with a `cron`: the manifest's schedule becomes a DECLARATIVE
//!   schedule that triggers a run every minute; the task gets the superjson payload with
//!   its dates revived, and retrieve shows the run's `schedule`.
//!
//! The scenarios run concurrently in one dev session, each to its own end (the test lists
//! which passed); the restart comes last. The CLI's
//! whole output (`--log-level debug`, which says why it drops a run) goes to a file; a
//! failing test prints its end and the server's log, and leaves the whole file in
//! `target/tmp/`.
//!
//! Needs Node.js and `npm ci --prefix compat` (the README's test command and `.ci/run` do
//! it); without them the test fails, never skips.

mod common;

use std::fs::{self, File};
use std::future::Future;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::{backend, describe, process_is_gone, runnel, runnel_command, Api, Server};
use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tempfile::TempDir;
use tokio::sync::oneshot;

/// The v4 SDK's API version: retrieve answers with `WAITING`, `COMPLETED`, `FAILED`, ….
const API_VERSION: &str = "2025-07-16";
/// How long the CLI may take from start to its registered worker (bundling included).
const CLI_READY_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a run may take to get where a scenario waits for it. The CLI notices a
/// resumed run within 5 s even without a push, and the longest wait is 12 s; but every
/// attempt starts a task process, which takes 15 s and more on a loaded two-core machine
/// running a dozen at once, and the flaky task makes three attempts.
const RUN_TIMEOUT: Duration = Duration::from_secs(150);
/// How long the every-minute schedule may take to trigger its first run, from the start
/// of its scenario (right after the CLI registered the project): up to a minute to the
/// next whole minute, and the scheduler's own latency.
const SCHEDULE_TIMEOUT: Duration = Duration::from_secs(80);
/// Between two retrieves of the same run.
const POLL: Duration = Duration::from_millis(250);
/// How long the CLI may take to exit after SIGTERM before it is killed.
const CLI_STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Lines of each log a failing test prints.
const LOG_TAIL_LINES: usize = 250;

fn compat_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../compat")
        .canonicalize()
        .expect("the compat directory")
}

/// A free port on 127.0.0.1, so a restarted server comes back where the CLI looks.
fn free_address() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("binding port 0");
    let address = listener.local_addr().expect("local address").to_string();
    drop(listener);
    address
}

/// `runnel keys create --pat`: a personal access token, printed alone.
fn create_pat(data_dir: &Path) -> String {
    let output = runnel(data_dir, &["keys", "create", "--pat"]);
    assert!(
        output.status.success(),
        "keys create --pat: {}",
        describe(&output)
    );
    let stdout = String::from_utf8(output.stdout.clone()).expect("utf-8 stdout");
    let pat = stdout.trim();
    assert!(
        pat.starts_with("tr_pat_") && !pat.contains(char::is_whitespace),
        "keys create --pat prints the token alone: {}",
        describe(&output)
    );
    pat.to_owned()
}

/// The last `n` lines of `text`.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// What the CLI repeats every second or so while the server offers no socket.io endpoint
/// or presence stream: each such entry (a line, or a block up to its closing `}`) is left
/// out of the output a failing test prints.
const CLI_NOISE: &[&str] = &[
    "Presence connection",
    "Attempting reconnection",
    "[DevSupervisor] Connection error",
    "[DevSupervisor] Socket connections",
    "[DevSupervisor] dequeueRuns. No latest worker",
];

/// The last `n` lines of the CLI's output without its periodic noise.
fn cli_tail(output: &str, n: usize) -> String {
    let mut kept = Vec::new();
    let mut skipping_block = false;
    for line in output.lines() {
        if skipping_block {
            skipping_block = line != "}";
            continue;
        }
        if CLI_NOISE.iter().any(|noise| line.starts_with(noise)) {
            skipping_block = line.ends_with('{');
            continue;
        }
        kept.push(line);
    }
    tail(&kept.join("\n"), n)
}

/// A copy of the fixture project laid out as in the repository (the project next to the
/// lockfile and `node_modules` it is installed by), so the CLI writes its `.trigger/`
/// into the copy, and a home directory of its own for the CLI's config.
struct Workspace {
    dir: TempDir,
}

impl Workspace {
    fn new() -> Workspace {
        let compat = compat_dir();
        assert!(
            compat
                .join("node_modules/trigger.dev/dist/esm/index.js")
                .exists(),
            "the test needs the trigger.dev CLI installed: run `npm ci --prefix compat` first"
        );
        let dir = TempDir::new().expect("a temporary directory");
        copy_dir(
            &compat.join("trigger-project"),
            &dir.path().join("trigger-project"),
        );
        // The CLI looks for a lockfile above the project to find its workspace.
        fs::copy(
            compat.join("package-lock.json"),
            dir.path().join("package-lock.json"),
        )
        .expect("copying the lockfile");
        std::os::unix::fs::symlink(compat.join("node_modules"), dir.path().join("node_modules"))
            .expect("linking node_modules");
        fs::create_dir(dir.path().join("home")).expect("a home directory");
        Workspace { dir }
    }

    fn project(&self) -> PathBuf {
        self.dir.path().join("trigger-project")
    }

    fn home(&self) -> PathBuf {
        self.dir.path().join("home")
    }

    fn cli_log(&self) -> PathBuf {
        self.dir.path().join("cli.log")
    }
}

/// Copies the files of `from` into `to`, leaving out what the CLI or npm write there.
fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).expect("creating a directory");
    for entry in fs::read_dir(from).expect("reading the fixture") {
        let entry = entry.expect("a directory entry");
        let name = entry.file_name();
        if name == ".trigger" || name == "node_modules" {
            continue;
        }
        let path = entry.path();
        if entry.file_type().expect("a file type").is_dir() {
            copy_dir(&path, &to.join(&name));
        } else {
            fs::copy(&path, to.join(&name)).expect("copying a fixture file");
        }
    }
}

/// A running `trigger.dev dev`, in a process group of its own (with the task processes
/// it forks). Stopped when dropped: SIGTERM (the CLI stops its runs and its watchdog),
/// then SIGKILL to the group, then the detached watchdog if it is still there.
struct DevCli {
    child: Child,
    project: PathBuf,
    log: PathBuf,
}

impl DevCli {
    fn start(workspace: &Workspace, api_url: &str, pat: &str, project_ref: &str) -> DevCli {
        let log = workspace.cli_log();
        let out = File::create(&log).expect("creating the CLI log");
        let err = out.try_clone().expect("cloning the log handle");
        let home = workspace.home();
        let mut command = Command::new("node");
        for (name, _) in std::env::vars_os() {
            let name = name.to_string_lossy().into_owned();
            if name.starts_with("TRIGGER_") || name.starts_with("RUNNEL_") || name == "CI" {
                command.env_remove(name);
            }
        }
        command
            .arg(compat_dir().join("node_modules/trigger.dev/dist/esm/index.js"))
            .args([
                "dev",
                "--skip-update-check",
                "--skip-platform-notifications",
                "--skip-mcp-install",
                "--skip-rules-install",
                "--log-level",
                "debug",
            ])
            .current_dir(workspace.project())
            .env("TRIGGER_API_URL", api_url)
            .env("TRIGGER_ACCESS_TOKEN", pat)
            .env("TRIGGER_PROJECT_REF", project_ref)
            .env("HOME", &home)
            .env("XDG_CONFIG_HOME", home.join(".config"))
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0);
        let child = command
            .spawn()
            .expect("running node (the test needs Node.js 20 or newer)");
        DevCli {
            child,
            project: workspace.project(),
            log,
        }
    }

    /// Everything the CLI printed so far.
    fn output(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits for the CLI's "Local worker ready" line (the project is bundled, indexed and
    /// registered); panics if it exits, fails to build or register, or takes too long
    /// (the [`Session`] it belongs to prints its output then).
    fn wait_ready(&mut self) {
        let deadline = Instant::now() + CLI_READY_TIMEOUT;
        loop {
            let output = self.output();
            if output.contains("Local worker ready") {
                return;
            }
            // The CLI keeps running (and rebuilding on changes) after a failed build or
            // registration: nothing will come of waiting.
            assert!(
                !output.contains("Build failed"),
                "trigger.dev dev could not build or register the project (its output is below)"
            );
            if let Some(status) = self.child.try_wait().expect("waiting for the CLI") {
                panic!(
                    "trigger.dev dev exited ({status}) before its worker was ready (its output is below)"
                );
            }
            assert!(
                Instant::now() < deadline,
                "trigger.dev dev had no worker ready within {CLI_READY_TIMEOUT:?} (its output is below)"
            );
            thread::sleep(POLL);
        }
    }

    fn stop(&mut self) {
        let group = Pid::from_raw(-(self.child.id() as i32));
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = signal::kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM);
            let deadline = Instant::now() + CLI_STOP_TIMEOUT;
            while Instant::now() < deadline && self.child.try_wait().ok().flatten().is_none() {
                thread::sleep(Duration::from_millis(50));
            }
        }
        // Task processes left behind, and the CLI itself if SIGTERM was not enough.
        let _ = signal::kill(group, Signal::SIGKILL);
        let _ = self.child.wait();
        // The watchdog runs detached (a session of its own); it leaves its pid here.
        if let Ok(text) = fs::read_to_string(self.project.join(".trigger/watchdog.pid")) {
            if let Some(pid) = text
                .trim()
                .strip_prefix("trigger-watchdog:")
                .and_then(|pid| pid.parse::<u32>().ok())
            {
                if !process_is_gone(pid) {
                    let _ = signal::kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
                }
            }
        }
    }
}

impl Drop for DevCli {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The server and the CLI of one test, shared by the scenarios. When the test fails,
/// dropping it prints the end of both logs and keeps the CLI's whole output in
/// `target/tmp/`.
struct Session {
    /// The server's API; the same across a restart (same address).
    api: Api,
    /// `None` only while it restarts.
    server: Mutex<Option<Server>>,
    cli: Mutex<DevCli>,
    /// The secret key of the dev environment, as the CLI got it.
    key: String,
    data_dir: PathBuf,
    address: String,
    /// Server logs of the starts before a restart.
    earlier_server_logs: Mutex<String>,
}

impl Session {
    /// The server's log since its first start.
    fn server_log(&self) -> String {
        let mut log = self.earlier_server_logs.lock().unwrap().clone();
        if let Some(server) = self.server.lock().unwrap().as_ref() {
            log.push_str(&server.stderr());
        }
        log
    }

    /// `GET /api/v3/runs/{id}` with the v4 API version; the run must exist.
    async fn retrieve(&self, run_id: &str) -> Value {
        let reply = self.api.retrieve_as(&self.key, run_id, API_VERSION).await;
        assert_eq!(reply.status, StatusCode::OK, "retrieve {run_id}: {reply:?}");
        reply.body
    }

    async fn trigger(&self, task: &str, payload: Value) -> String {
        self.api
            .trigger_new(&self.key, task, &json!({ "payload": payload }))
            .await
    }

    /// Polls `run_id` until `done` holds for its body; returns that body and every status
    /// seen on the way. Panics with the last body if the run ends without `done` holding,
    /// or after [`RUN_TIMEOUT`].
    async fn poll(
        &self,
        run_id: &str,
        what: &str,
        done: impl Fn(&Value) -> bool,
    ) -> (Value, Vec<String>) {
        let deadline = Instant::now() + RUN_TIMEOUT;
        let mut seen: Vec<String> = Vec::new();
        loop {
            let body = self.retrieve(run_id).await;
            let status = body["status"].as_str().unwrap_or("?").to_owned();
            if seen.last() != Some(&status) {
                seen.push(status);
            }
            if done(&body) {
                return (body, seen);
            }
            // A final run changes no more: say so now rather than at the deadline.
            assert!(
                body["isCompleted"] != true,
                "{what}: run {run_id} ended {} instead; statuses seen {seen:?}; last body {body:#}",
                body["status"]
            );
            assert!(
                Instant::now() < deadline,
                "{what}: run {run_id} not there within {RUN_TIMEOUT:?}; statuses seen {seen:?}; last body {body:#}"
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// `GET /api/v1/runs` with `query` (the dev key): the runs listed, newest first.
    async fn list_runs(&self, query: &[(&str, &str)]) -> Vec<Value> {
        let reply = common::send(
            self.api
                .request(Method::GET, "/api/v1/runs")
                .query(query)
                .bearer_auth(&self.key),
        )
        .await;
        assert_eq!(reply.status, StatusCode::OK, "list {query:?}: {reply:?}");
        reply.body["data"]
            .as_array()
            .unwrap_or_else(|| panic!("list {query:?}: no data in {reply:?}"))
            .clone()
    }

    /// Polls until the run is final (completed, failed, canceled, crashed, …).
    async fn finished(&self, run_id: &str, what: &str) -> (Value, Vec<String>) {
        self.poll(run_id, what, |body| body["isCompleted"] == true)
            .await
    }

    /// Polls until the run is `WAITING`.
    async fn waiting(&self, run_id: &str, what: &str) -> Value {
        self.poll(run_id, what, |body| body["status"] == "WAITING")
            .await
            .0
    }

    /// `runnel runs logs RUN_ID`: its stdout, once it holds every one of `texts`.
    async fn logs_containing(&self, run_id: &str, texts: &[&str]) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let url = self.api.url.clone();
            let key = self.key.clone();
            let id = run_id.to_owned();
            let output = tokio::task::spawn_blocking(move || {
                runnel_command()
                    .args(["runs", "logs", &id, "--api-url", &url, "--key", &key])
                    .stdin(Stdio::null())
                    .output()
                    .expect("running runnel runs logs")
            })
            .await
            .expect("the runs logs thread");
            let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
            if output.status.success() && texts.iter().all(|text| stdout.contains(text)) {
                return stdout;
            }
            assert!(
                Instant::now() < deadline,
                "runnel runs logs {run_id} never showed {texts:?}: {}",
                describe(&output)
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Stops the server (SIGTERM, as a restart does) and starts it again at the same
    /// address on the same data.
    fn restart_server(&self) {
        let mut slot = self.server.lock().unwrap();
        let server = slot.take().expect("a running server");
        self.earlier_server_logs
            .lock()
            .unwrap()
            .push_str(&server.stderr());
        let status = server.terminate();
        assert!(status.success(), "runnel serve exited with {status}");
        *slot = Some(Server::start_with(
            &self.data_dir,
            &["--listen", &self.address],
        ));
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if !thread::panicking() {
            return;
        }
        let mut cli = self.cli.lock().unwrap_or_else(|e| e.into_inner());
        cli.stop();
        let output = cli.output();
        let kept = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("trigger_dev-{:?}-cli.log", backend::backend()));
        let _ = fs::write(&kept, &output);
        let server_log = self.server_log();
        eprintln!(
            "--- trigger.dev dev, last {LOG_TAIL_LINES} lines but the reconnection noise (all of it in {}) ---\n{}\n--- runnel serve, last {LOG_TAIL_LINES} lines ---\n{}",
            kept.display(),
            cli_tail(&output, LOG_TAIL_LINES),
            tail(&server_log, LOG_TAIL_LINES),
        );
    }
}

/// Milliseconds between two RFC 3339 timestamps of a run.
fn millis_between(run: &Value, from: &str, to: &str) -> i64 {
    let at = |field: &str| common::timestamp(&run[field]).timestamp_millis();
    at(to) - at(from)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trigger_dev_runs_the_fixture_project() {
    let started = Instant::now();
    let data = TempDir::new().expect("a data directory");
    let address = free_address();
    let server = Server::start_with(data.path(), &["--listen", &address]);
    let project_ref = server
        .bootstrap
        .as_ref()
        .expect("the first start creates the project")
        .project_id
        .clone();
    let pat = create_pat(data.path());

    // The environment's secret key, the way the CLI gets it.
    let reply = common::send(
        server
            .request(Method::GET, &format!("/api/v1/projects/{project_ref}/dev"))
            .bearer_auth(&pat),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    let key = reply.body["apiKey"]
        .as_str()
        .unwrap_or_else(|| panic!("no apiKey in {reply:?}"))
        .to_owned();
    assert_eq!(reply.body["apiUrl"], json!(server.url), "{reply:?}");

    let workspace = Workspace::new();
    let mut cli = DevCli::start(&workspace, &server.url, &pat, &project_ref);
    let api = Api::new(server.url.clone());
    let ready = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| cli.wait_ready()));
    let session = Arc::new(Session {
        api,
        server: Mutex::new(Some(server)),
        cli: Mutex::new(cli),
        key,
        data_dir: data.path().to_owned(),
        address,
        earlier_server_logs: Mutex::new(String::new()),
    });
    if let Err(panic) = ready {
        // Dropped while panicking: the session prints both logs.
        let _session = session;
        std::panic::resume_unwind(panic);
    }
    eprintln!("trigger.dev dev ready after {:?}", started.elapsed());

    // Every scenario runs to its own end, so one failure does not hide the others.
    let marker = format!("m{}", std::process::id());
    let mut results = run_scenarios(
        &session,
        vec![
            (
                "a task's output on retrieve",
                Box::pin(output_on_retrieve(session.clone())),
            ),
            (
                "logger lines in runs logs, metadata.set on retrieve",
                Box::pin(logs_and_metadata(session.clone())),
            ),
            (
                "retries per the task's settings",
                Box::pin(retries(session.clone())),
            ),
            (
                "triggerAndWait returns the child's output",
                Box::pin(trigger_and_wait(session.clone())),
            ),
            (
                "batchTriggerAndWait with a failing item",
                Box::pin(batch_trigger_and_wait(session.clone())),
            ),
            (
                "wait.for 10 s: WAITING, durationMs, logs, metadata",
                Box::pin(wait_for(session.clone(), marker.clone())),
            ),
            (
                "a token completed through the API",
                Box::pin(token_completed_through_the_api(session.clone())),
            ),
            (
                "a token completed through its callback URL",
                Box::pin(token_completed_through_its_callback(session.clone())),
            ),
            (
                "a token timing out",
                Box::pin(token_timing_out(session.clone())),
            ),
            (
                "cancelling a waiting parent cancels its child",
                Box::pin(cancelling_a_waiting_parent(session.clone())),
            ),
            (
                "a declarative schedule triggers its task every minute",
                Box::pin(a_declarative_schedule_fires(session.clone())),
            ),
            (
                "an imperative schedule attaches to a scheduled task and fires",
                Box::pin(an_imperative_schedule_fires(session.clone())),
            ),
        ],
    )
    .await;
    eprintln!("concurrent scenarios done after {:?}", started.elapsed());
    // The server restarts (SIGTERM, then a new process on the same data and address) once
    // runs wait on a duration and on a token, or once that scenario has failed.
    let (ready_tx, ready_rx) = oneshot::channel();
    let (restarted_tx, restarted_rx) = oneshot::channel();
    let waiting = tokio::spawn(waiting_across_a_restart(
        session.clone(),
        marker,
        ready_tx,
        restarted_rx,
    ));
    let _ = ready_rx.await;
    let restarting = session.clone();
    tokio::task::spawn_blocking(move || restarting.restart_server())
        .await
        .unwrap_or_else(|error| std::panic::resume_unwind(error.into_panic()));
    let _ = restarted_tx.send(());
    eprintln!("server restarted after {:?}", started.elapsed());
    results.extend(
        run_scenarios(
            &session,
            vec![
                (
                    "runs waiting across a server restart resume",
                    Box::pin(async move {
                        if let Err(error) = waiting.await {
                            std::panic::resume_unwind(error.into_panic());
                        }
                    }),
                ),
                (
                    "the CLI takes a new run after the restart",
                    Box::pin(a_new_run_after_the_restart(session.clone())),
                ),
            ],
        )
        .await,
    );
    eprintln!("whole test took {:?}", started.elapsed());

    let failed: Vec<&String> = results.iter().filter(|r| r.starts_with("FAIL")).collect();
    eprintln!("{}", results.join("\n"));
    assert!(
        failed.is_empty(),
        "{} of {} scenarios failed:\n{}",
        failed.len(),
        results.len(),
        results.join("\n")
    );
}

type Scenario = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Runs `scenarios` concurrently, each on a task of its own; returns a line per scenario,
/// `ok   <name>` or `FAIL <name>: <panic message>`.
async fn run_scenarios(_session: &Arc<Session>, scenarios: Vec<(&str, Scenario)>) -> Vec<String> {
    let handles: Vec<_> = scenarios
        .into_iter()
        .map(|(name, scenario)| (name.to_owned(), tokio::spawn(scenario)))
        .collect();
    let mut results = Vec::new();
    for (name, handle) in handles {
        results.push(match handle.await {
            Ok(()) => format!("ok   {name}"),
            Err(error) => {
                let message = match error.try_into_panic() {
                    Ok(panic) => panic
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                        .unwrap_or_default(),
                    Err(error) => error.to_string(),
                };
                // The first lines say what failed; the bodies follow in the log above.
                let short: Vec<&str> = message.lines().take(12).collect();
                format!("FAIL {name}: {}", short.join("\n     "))
            }
        });
    }
    results
}

/// A task's return value is its run's output.
async fn output_on_retrieve(s: Arc<Session>) {
    let s = &*s;
    let id = s.trigger("fixture-hello", json!({"name": "runnel"})).await;
    let (run, _) = s.finished(&id, "fixture-hello").await;
    assert_eq!(run["status"], "COMPLETED", "{run:#}");
    assert_eq!(
        run["output"],
        json!({"greeting": "hello runnel"}),
        "{run:#}"
    );
    assert_eq!(run["attemptCount"], 1, "{run:#}");
}

/// What a task logs (`logger.info`) is in `runnel runs logs`, and what it sets
/// (`metadata.set`) is on retrieve.
async fn logs_and_metadata(s: Arc<Session>) {
    let s = &*s;
    let id = s.trigger("fixture-hello", json!({"name": "logs"})).await;
    let (run, _) = s.finished(&id, "fixture-hello").await;
    assert_eq!(run["status"], "COMPLETED", "{run:#}");
    assert_eq!(run["metadata"], json!({"greeted": "logs"}), "{run:#}");
    s.logs_containing(&id, &["greeting logs"]).await;
}

/// A task that fails twice with `maxAttempts: 3` completes on its third attempt; one that
/// always fails with `maxAttempts: 2` fails after its second.
async fn retries(s: Arc<Session>) {
    let s = &*s;
    let flaky = s.trigger("fixture-flaky", json!({})).await;
    let always = s.trigger("fixture-always-fails", json!({})).await;
    let (run, _) = s.finished(&flaky, "fixture-flaky").await;
    assert_eq!(run["status"], "COMPLETED", "{run:#}");
    assert_eq!(run["output"], json!({"attempts": 3}), "{run:#}");
    assert_eq!(run["attemptCount"], 3, "{run:#}");

    let (run, _) = s.finished(&always, "fixture-always-fails").await;
    assert_eq!(run["status"], "FAILED", "{run:#}");
    assert_eq!(run["attemptCount"], 2, "{run:#}");
    let message = run["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("always fails (attempt 2)"),
        "the last attempt's error: {run:#}"
    );
}

/// `triggerAndWait` returns the child's output to the parent.
async fn trigger_and_wait(s: Arc<Session>) {
    let s = &*s;
    let id = s.trigger("fixture-parent", json!({"n": 21})).await;
    let (run, _) = s.finished(&id, "fixture-parent").await;
    assert_eq!(run["status"], "COMPLETED", "{run:#}");
    assert_eq!(
        run["output"]["childOutput"],
        json!({"doubled": 42}),
        "{run:#}"
    );
    let child_id = run["output"]["childRunId"]
        .as_str()
        .expect("the child's id");
    let children: Vec<&Value> = run["relatedRuns"]["children"]
        .as_array()
        .map(|c| c.iter().map(|child| &child["id"]).collect())
        .unwrap_or_default();
    assert_eq!(children, vec![&json!(child_id)], "{run:#}");
    let child = s.retrieve(child_id).await;
    assert_eq!(child["status"], "COMPLETED", "{child:#}");
    assert_eq!(child["output"], json!({"doubled": 42}), "{child:#}");
    assert_eq!(child["relatedRuns"]["parent"]["id"], json!(id), "{child:#}");
}

/// `batchTriggerAndWait` over three items, the second of which fails without retrying,
/// gives the parent each item's result in order.
async fn batch_trigger_and_wait(s: Arc<Session>) {
    let s = &*s;
    let id = s.trigger("fixture-batch-parent", json!({})).await;
    let (run, _) = s.finished(&id, "fixture-batch-parent").await;
    assert_eq!(run["status"], "COMPLETED", "{run:#}");
    let items = run["output"]["items"].as_array().expect("items");
    assert_eq!(items.len(), 3, "{run:#}");
    assert_eq!(items[0]["ok"], true, "{run:#}");
    assert_eq!(items[0]["output"], json!({"squared": 1}), "{run:#}");
    assert_eq!(items[1]["ok"], false, "{run:#}");
    let error = items[1]["error"].as_str().unwrap_or_default();
    assert!(error.contains("item 2 failed on purpose"), "{run:#}");
    assert_eq!(items[2]["ok"], true, "{run:#}");
    assert_eq!(items[2]["output"], json!({"squared": 9}), "{run:#}");

    let failed_id = items[1]["id"].as_str().expect("the failed item's run id");
    let failed = s.retrieve(failed_id).await;
    assert_eq!(failed["status"], "FAILED", "{failed:#}");
    assert_eq!(failed["attemptCount"], 1, "{failed:#}");
    assert_eq!(failed["batchId"], run["output"]["batchId"], "{failed:#}");
}

/// `wait.for` 10 s: the run is `WAITING` (with the metadata set before the wait) while it
/// waits, its `durationMs` leaves the wait out (not the task process's start), and its
/// logger lines are in `runnel runs logs`.
async fn wait_for(s: Arc<Session>, marker: String) {
    let (s, marker) = (&*s, marker.as_str());
    let id = s
        .trigger("fixture-wait", json!({"seconds": 10, "marker": marker}))
        .await;
    let run = s.waiting(&id, "fixture-wait to wait").await;
    let waiting = s
        .poll(&id, "fixture-wait's metadata while it waits", |body| {
            body["metadata"]["phase"] == "waiting" || body["status"] != "WAITING"
        })
        .await
        .0;
    assert_eq!(
        waiting["status"], "WAITING",
        "metadata.set before the wait: {waiting:#} (first seen waiting: {run:#})"
    );
    assert_eq!(waiting["isWaiting"], true, "{waiting:#}");

    let (run, _) = s.finished(&id, "fixture-wait").await;
    assert_eq!(run["status"], "COMPLETED", "{run:#}");
    assert!(
        run["output"]["waitedMs"].as_i64().unwrap_or_default() >= 10_000,
        "{run:#}"
    );
    assert_eq!(run["metadata"]["phase"], "done", "{run:#}");
    assert_eq!(
        run["metadata"]["waitedMs"], run["output"]["waitedMs"],
        "{run:#}"
    );
    let elapsed = millis_between(&run, "startedAt", "finishedAt");
    assert!(elapsed >= 10_000, "{run:#}");
    // The server counts the wait from when the SDK's call reaches it to the date the SDK
    // computed before the call, so a little under 10 s; what is left is the task's compute
    // (a slow task process start included).
    let duration = run["durationMs"].as_i64().expect("durationMs");
    assert!(
        duration > 0 && elapsed - duration >= 8_000,
        "durationMs leaves the 10 s wait out ({elapsed} ms from start to finish): {run:#}"
    );

    let logs = s
        .logs_containing(
            &id,
            &[
                &format!("before the wait {marker}"),
                &format!("after the wait {marker}"),
            ],
        )
        .await;
    let before = logs.find(&format!("before the wait {marker}")).unwrap();
    let after = logs.find(&format!("after the wait {marker}")).unwrap();
    assert!(before < after, "log lines in order: {logs}");
}

/// Starts `fixture-token` and waits until it waits on its token; returns the run id and
/// the token's id and callback URL (from the run's metadata).
async fn token_run(s: &Session, payload: Value) -> (String, String, String) {
    let id = s.trigger("fixture-token", payload).await;
    let (run, _) = s
        .poll(
            &id,
            "fixture-token to wait with its token in metadata",
            |body| body["status"] == "WAITING" && body["metadata"]["tokenUrl"].is_string(),
        )
        .await;
    assert_eq!(run["status"], "WAITING", "{run:#}");
    let token = run["metadata"]["tokenId"]
        .as_str()
        .expect("tokenId")
        .to_owned();
    let url = run["metadata"]["tokenUrl"]
        .as_str()
        .expect("tokenUrl")
        .to_owned();
    assert!(token.starts_with("waitpoint_"), "{run:#}");
    (id, token, url)
}

/// A token completed with `POST /api/v1/waitpoints/tokens/{id}/complete` resumes its run
/// with the data.
async fn token_completed_through_the_api(s: Arc<Session>) {
    let s = &*s;
    let (id, token, _) = token_run(s, json!({})).await;
    let reply = common::send(
        s.api
            .request(
                Method::POST,
                &format!("/api/v1/waitpoints/tokens/{token}/complete"),
            )
            .bearer_auth(&s.key)
            .json(&json!({"data": {"approved": true, "by": "api"}})),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    assert_eq!(reply.body, json!({"success": true}), "{reply:?}");
    let (run, _) = s.finished(&id, "fixture-token completed by the API").await;
    assert_eq!(run["status"], "COMPLETED", "{run:#}");
    assert_eq!(
        run["output"],
        json!({"tokenId": token, "ok": true, "output": {"approved": true, "by": "api"}}),
        "{run:#}"
    );
}

/// A token completed by POSTing to its callback URL (no key: the URL is the secret)
/// resumes its run with the posted body.
async fn token_completed_through_its_callback(s: Arc<Session>) {
    let s = &*s;
    let (id, token, url) = token_run(s, json!({})).await;
    assert!(url.starts_with(&s.api.url), "callback URL {url}");
    let reply = common::send(
        reqwest::Client::builder()
            .no_proxy()
            .build()
            .unwrap()
            .post(&url)
            .json(&json!({"approved": true, "by": "callback"})),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    let (run, _) = s
        .finished(&id, "fixture-token completed by its callback")
        .await;
    assert_eq!(run["status"], "COMPLETED", "{run:#}");
    assert_eq!(
        run["output"],
        json!({"tokenId": token, "ok": true, "output": {"approved": true, "by": "callback"}}),
        "{run:#}"
    );
}

/// A token nobody completes times out: the wait returns a timeout error to the task.
async fn token_timing_out(s: Arc<Session>) {
    let s = &*s;
    let id = s.trigger("fixture-token", json!({"timeout": "3s"})).await;
    let (run, _) = s.finished(&id, "fixture-token timing out").await;
    assert_eq!(run["status"], "COMPLETED", "{run:#}");
    assert_eq!(run["output"]["ok"], false, "{run:#}");
    assert_eq!(run["output"]["timedOut"], true, "{run:#}");
    assert_eq!(
        run["output"]["tokenId"], run["metadata"]["tokenId"],
        "{run:#}"
    );
}

/// Cancelling a parent that waits on a waiting child cancels both.
async fn cancelling_a_waiting_parent(s: Arc<Session>) {
    let s = &*s;
    let id = s.trigger("fixture-cancel-parent", json!({})).await;
    let (parent, _) = s
        .poll(&id, "fixture-cancel-parent to wait on its child", |body| {
            body["status"] == "WAITING"
                && body["relatedRuns"]["children"]
                    .as_array()
                    .is_some_and(|c| c.len() == 1 && c[0]["status"] == "WAITING")
        })
        .await;
    let child = parent["relatedRuns"]["children"][0]["id"]
        .as_str()
        .expect("the child's id")
        .to_owned();
    let reply = s.api.cancel(&s.key, &id).await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    let (parent, _) = s.finished(&id, "the canceled parent").await;
    assert_eq!(parent["status"], "CANCELED", "{parent:#}");
    let (child, _) = s.finished(&child, "the canceled parent's child").await;
    assert_eq!(child["status"], "CANCELED", "{child:#}");
}

/// Runs waiting on a duration and on a token when the server restarts resume and
/// complete. Says `ready` once both wait (or drops it on failing first), then waits for
/// `restarted`.
async fn waiting_across_a_restart(
    session: Arc<Session>,
    marker: String,
    ready: oneshot::Sender<()>,
    restarted: oneshot::Receiver<()>,
) {
    let s = &*session;
    let restart_marker = format!("{marker}-restart");
    let waiter = s
        .trigger(
            "fixture-wait",
            json!({"seconds": 12, "marker": restart_marker}),
        )
        .await;
    let (tokened, token, _) = token_run(s, json!({})).await;
    s.waiting(&waiter, "fixture-wait before the restart").await;
    let _ = ready.send(());
    restarted.await.expect("the server restarted");

    let reply = common::send(
        s.api
            .request(
                Method::POST,
                &format!("/api/v1/waitpoints/tokens/{token}/complete"),
            )
            .bearer_auth(&s.key)
            .json(&json!({"data": {"approved": true, "by": "after the restart"}})),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    let (run, _) = s
        .finished(&tokened, "the token run after the restart")
        .await;
    assert_eq!(run["status"], "COMPLETED", "{run:#}");
    assert_eq!(
        run["output"]["output"],
        json!({"approved": true, "by": "after the restart"}),
        "{run:#}"
    );
    let (run, _) = s
        .finished(&waiter, "the waiting run after the restart")
        .await;
    assert_eq!(run["status"], "COMPLETED", "{run:#}");
    assert!(
        run["output"]["waitedMs"].as_i64().unwrap_or_default() >= 12_000,
        "{run:#}"
    );
    assert_eq!(run["metadata"]["phase"], "done", "{run:#}");
    // The line logged before the restart is still there.
    s.logs_containing(
        &waiter,
        &[
            &format!("before the wait {restart_marker}"),
            &format!("after the wait {restart_marker}"),
        ],
    )
    .await;
}

/// The CLI, connected across the restart, takes a new run from the restarted server.
async fn a_new_run_after_the_restart(s: Arc<Session>) {
    let s = &*s;
    let id = s.trigger("fixture-hello", json!({"name": "again"})).await;
    let (run, _) = s.finished(&id, "a new run after the restart").await;
    assert_eq!(run["status"], "COMPLETED", "{run:#}");
    assert_eq!(run["output"], json!({"greeting": "hello again"}), "{run:#}");
}

/// `fixture-every-minute` (`schedules.task` with `cron: "* * * * *"`) gets a run within
/// about a minute of the registration, without anyone triggering it: the manifest's
/// schedule became a DECLARATIVE schedule of the dev environment. The task receives the
/// superjson payload with `timestamp` revived as a `Date` at a whole minute; retrieve
/// shows the schedule that triggered the run, and the run list filters by it.
async fn a_declarative_schedule_fires(s: Arc<Session>) {
    let s = &*s;
    const TASK: &str = "fixture-every-minute";
    let deadline = Instant::now() + SCHEDULE_TIMEOUT;
    let first = loop {
        let runs = s.list_runs(&[("filter[taskIdentifier]", TASK)]).await;
        // Newest first: the oldest is the first occurrence.
        if let Some(run) = runs.last() {
            break run["id"].as_str().expect("a listed run's id").to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "no run of {TASK} within {SCHEDULE_TIMEOUT:?} of the registration"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    };

    let (run, _) = s.finished(&first, TASK).await;
    assert_eq!(run["status"], "COMPLETED", "{run:#}");
    let output = &run["output"];
    let schedule_id = output["scheduleId"].as_str().unwrap_or_default().to_owned();
    common::assert_friendly_id(&schedule_id, "sched");
    assert_eq!(
        *output,
        json!({
            "scheduleId": schedule_id,
            "type": "DECLARATIVE",
            "timestamp": output["timestamp"],
            "isDate": true,
            "upcoming": runnel_core::schedule::UPCOMING,
            "timezone": "UTC",
        }),
        "{run:#}"
    );
    let occurrence = common::timestamp(&output["timestamp"]);
    assert_eq!(
        occurrence.timestamp_millis() % 60_000,
        0,
        "the occurrence is at a whole minute: {run:#}"
    );

    let description = runnel_core::schedule::Cron::parse("* * * * *")
        .expect("a valid cron")
        .description();
    assert_eq!(
        run["schedule"],
        json!({
            "id": schedule_id,
            "generator": {"type": "CRON", "expression": "* * * * *", "description": description},
        }),
        "{run:#}"
    );

    let listed = s.list_runs(&[("filter[schedule]", &schedule_id)]).await;
    assert!(
        listed.iter().any(|r| r["id"] == json!(first)),
        "filter[schedule]={schedule_id} lists {first}: {listed:#?}"
    );
    assert!(
        listed.iter().all(|r| r["taskIdentifier"] == TASK),
        "filter[schedule]={schedule_id} lists only that schedule's runs: {listed:#?}"
    );
}

/// `GET /api/v1/schedules` with the dev key: every schedule (one page of 100).
async fn list_schedules(s: &Session) -> Vec<Value> {
    let reply = common::send(
        s.api
            .request(Method::GET, "/api/v1/schedules")
            .query(&[("perPage", "100")])
            .bearer_auth(&s.key),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "list schedules: {reply:?}");
    reply.body["data"].as_array().cloned().unwrap_or_default()
}

/// The manifest's `schedules.task` without a cron takes a schedule created through the
/// API (and the one with a cron shows as DECLARATIVE, in the dev environment); the
/// imperative schedule's run gets its type and external id.
async fn an_imperative_schedule_fires(s: Arc<Session>) {
    let s = &*s;
    let schedules = list_schedules(s).await;
    let declared = schedules
        .iter()
        .find(|x| x["task"] == "fixture-every-minute")
        .unwrap_or_else(|| panic!("the declared schedule is listed: {schedules:#?}"));
    assert_eq!(declared["type"], "DECLARATIVE", "{declared:#}");
    assert_eq!(declared["active"], true, "{declared:#}");
    assert_eq!(
        declared["environments"][0]["type"], "DEVELOPMENT",
        "{declared:#}"
    );

    // A plain task is not scheduled: refused, naming it.
    let refused = common::send(
        s.api
            .request(Method::POST, "/api/v1/schedules")
            .bearer_auth(&s.key)
            .json(&json!({"task": "fixture-hello", "cron": "* * * * *", "deduplicationKey": "no"})),
    )
    .await;
    assert_eq!(
        refused.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{refused:?}"
    );

    const TASK: &str = "fixture-scheduled";
    let created = common::send(
        s.api
            .request(Method::POST, "/api/v1/schedules")
            .bearer_auth(&s.key)
            .json(&json!({
                "task": TASK,
                "cron": "* * * * *",
                "deduplicationKey": "trigger-dev-imperative",
                "externalId": "user_42",
                "timezone": "Europe/London",
            })),
    )
    .await;
    assert_eq!(created.status, StatusCode::OK, "create: {created:?}");
    assert_eq!(created.body["type"], "IMPERATIVE", "{created:?}");
    let schedule_id = created.body["id"].as_str().unwrap_or_default().to_owned();

    let deadline = Instant::now() + SCHEDULE_TIMEOUT;
    let first = loop {
        let runs = s.list_runs(&[("filter[schedule]", &schedule_id)]).await;
        if let Some(run) = runs.last() {
            break run["id"].as_str().expect("a listed run's id").to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "no run of {schedule_id} within {SCHEDULE_TIMEOUT:?}"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    let (run, _) = s.finished(&first, TASK).await;
    assert_eq!(run["status"], "COMPLETED", "{run:#}");
    assert_eq!(run["taskIdentifier"], TASK, "{run:#}");
    assert_eq!(run["output"]["type"], "IMPERATIVE", "{run:#}");
    assert_eq!(run["output"]["externalId"], "user_42", "{run:#}");
    assert_eq!(run["output"]["timezone"], "Europe/London", "{run:#}");
    assert_eq!(run["schedule"]["id"], json!(schedule_id), "{run:#}");
    assert_eq!(run["schedule"]["externalId"], "user_42", "{run:#}");
    assert_eq!(
        run["schedule"]["deduplicationKey"], "trigger-dev-imperative",
        "{run:#}"
    );

    // Deleted, it fires no more and the run no longer names it.
    let deleted = common::send(
        s.api
            .request(Method::DELETE, &format!("/api/v1/schedules/{schedule_id}"))
            .bearer_auth(&s.key),
    )
    .await;
    assert_eq!(deleted.status, StatusCode::OK, "delete: {deleted:?}");
    assert!(
        !list_schedules(s)
            .await
            .iter()
            .any(|x| x["id"] == json!(schedule_id)),
        "a deleted schedule is not listed"
    );
}
