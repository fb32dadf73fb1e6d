//! Harness for the end-to-end tests of the `runnel` binary: starts it on port 0 in a
//! temporary data directory, reads its address (and, on a first start, the project and
//! the dev key) from stdout, and talks to it over HTTP through the shared harness
//! (`runnel_testkit`: the [`Api`] a [`Server`] derefs to, [`Reply`], [`eventually`],
//! [`redact`], the wire-form assertions, the PostgreSQL databases). Only what needs the
//! binary lives here: spawning `runnel` (serve, dev, worker, keys), its stdout and
//! stderr, signals.
//!
//! Every test owns its server and its database, so tests run in parallel. The child gets
//! an environment without `RUNNEL_*` variables (the user's settings never leak in), is
//! killed when its [`Server`] is dropped, and has its stderr kept so a failed start or a
//! failed assertion can show what it logged. Nothing here sleeps for a fixed time: waits
//! poll with a deadline ([`eventually`]).

// Each test binary uses a different part of the harness.
#![allow(dead_code, unused_imports)]

pub mod backend;

use std::io::{BufRead, BufReader};
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;
use tempfile::TempDir;

pub use runnel_testkit::http::KEY_BODY_LEN;
pub use runnel_testkit::{
    assert_friendly_id, assert_no_nulls, assert_secret_key, eventually, eventually_explained,
    redact, send, timestamp, Api, Reply, CURRENT_API_VERSION, POLL_INTERVAL, SERVICE_TIMEOUT,
};

/// How a start after the first begins the line saying how to get a new dev key.
pub const KEY_HINT_PREFIX: &str = "Lost the dev secret key?";
/// How long a server may take to print its address.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a server may take to exit after SIGTERM.
pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);

/// Stored characters after `tr_<env>_` in a secret key that `keys list` shows.
const KEY_DISPLAY_BODY_LEN: usize = 6;

/// The `runnel` binary with a clean environment: no `RUNNEL_*` variable of the caller's
/// reaches it, and logging is at its default level.
pub fn runnel_command() -> Command {
    without_runnel_env(Command::new(env!("CARGO_BIN_EXE_runnel")))
}

/// Like [`runnel_command`], started through `sh` with its open-file limit, soft and
/// hard, set to `limit` (so the server cannot raise it back).
pub fn runnel_command_with_open_file_limit(limit: u32) -> Command {
    let mut command = without_runnel_env(Command::new("sh"));
    command.args([
        "-c",
        &format!("ulimit -n {limit} && exec \"$0\" \"$@\""),
        env!("CARGO_BIN_EXE_runnel"),
    ]);
    command
}

fn without_runnel_env(mut command: Command) -> Command {
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
        .args(backend::store_args(data_dir))
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

/// What the first start of a server printed.
#[derive(Debug, Clone)]
pub struct Bootstrap {
    /// The whole first line, `Created project proj_… with environments dev, staging, prod.`
    pub project_line: String,
    pub project_id: String,
    pub dev_key: String,
}

/// A running `runnel serve`, reached over HTTP through the [`Api`] it derefs to
/// (`server.trigger(…)`, `server.url`). Killed (SIGKILL) when dropped.
#[derive(Debug)]
pub struct Server {
    child: Child,
    api: Api,
    /// `Some` only when this start created the project.
    pub bootstrap: Option<Bootstrap>,
    /// On a start after the first: the line saying how to get a new dev key.
    pub key_hint: Option<String>,
    stderr: Arc<Mutex<String>>,
    stderr_reader: Option<JoinHandle<()>>,
    /// Stdout lines printed after the address line.
    later_stdout: Receiver<String>,
}

impl Deref for Server {
    type Target = Api;

    fn deref(&self) -> &Api {
        &self.api
    }
}

impl Server {
    /// Starts `runnel serve --listen 127.0.0.1:0 --data-dir <data_dir>` and waits until it
    /// prints its address.
    pub fn start(data_dir: &Path) -> Server {
        Server::start_with(data_dir, &[])
    }

    /// Like [`Server::start`], with more arguments for `serve` (`--database-url …`,
    /// `--lease-timeout 2`).
    pub fn start_with(data_dir: &Path, extra: &[&str]) -> Server {
        Server::spawn("serve", data_dir, extra)
    }

    /// Starts `runnel dev --listen 127.0.0.1:0 --data-dir <data_dir> <extra…>` (server and
    /// exec worker in one process; `extra` carries its `--task NAME=COMMAND`s) and waits
    /// until it prints its address.
    pub fn start_dev(data_dir: &Path, extra: &[&str]) -> Server {
        Server::spawn("dev", data_dir, extra)
    }

    /// Like [`Server::start_with`], with the process's open-file limit (soft and hard)
    /// set to `limit` before `runnel` starts.
    pub fn start_with_open_file_limit(data_dir: &Path, limit: u32, extra: &[&str]) -> Server {
        Server::spawn_command(
            runnel_command_with_open_file_limit(limit),
            "serve",
            data_dir,
            extra,
        )
    }

    /// Like [`Server::start_with`], with variables set in the server's environment
    /// (`AWS_*` for an S3 blob store).
    pub fn start_with_env(data_dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Server {
        let mut command = runnel_command();
        for (name, value) in env {
            command.env(name, value);
        }
        Server::spawn_command(command, "serve", data_dir, extra)
    }

    fn spawn(subcommand: &str, data_dir: &Path, extra: &[&str]) -> Server {
        Server::spawn_command(runnel_command(), subcommand, data_dir, extra)
    }

    /// Starts `<command> <subcommand> --listen 127.0.0.1:0 --data-dir <data_dir> <extra…>`
    /// (`command` is [`runnel_command`] or a variant) and reads what it prints up to its
    /// address.
    fn spawn_command(
        mut command: Command,
        subcommand: &str,
        data_dir: &Path,
        extra: &[&str],
    ) -> Server {
        // RUNNEL_TEST_BACKEND=postgres: a database of this data directory's own, unless
        // the test chose one.
        let store_args = if extra.contains(&"--database-url") {
            Vec::new()
        } else {
            backend::store_args(data_dir)
        };
        // Port 0 unless the test chose an address (to restart a server where its
        // workers look for it).
        let listen: &[&str] = if extra.contains(&"--listen") {
            &[]
        } else {
            &["--listen", "127.0.0.1:0"]
        };
        let mut child = command
            .arg(subcommand)
            .args(listen)
            .arg("--data-dir")
            .arg(data_dir)
            .args(store_args)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawning runnel {subcommand}: {e}"));

        // Both pipes are drained for the child's whole life, so it never blocks on a full
        // pipe however much it logs.
        let (stderr, stderr_reader) = capture_lines(child.stderr.take().expect("piped stderr"));
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
            api: Api::new(String::new()),
            bootstrap: None,
            key_hint: None,
            stderr,
            stderr_reader: Some(stderr_reader),
            later_stdout: lines,
        };
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        let mut before_address = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match server.later_stdout.recv_timeout(left) {
                Ok(line) => match line.strip_prefix("Runnel listening on ") {
                    Some(url) => {
                        server.api = Api::new(url);
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
            [hint] if hint.starts_with(KEY_HINT_PREFIX) => {
                server.key_hint = Some(hint.clone());
                None
            }
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
            "the runnel server {what}\nexit: {status:?}\n--- stderr ---\n{}",
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

    /// Sends `signal` to the process without waiting.
    pub fn signal(&self, signal: Signal) {
        send_signal(self.pid(), signal);
    }

    /// Waits for the process to exit; `None` if it still runs after `timeout`.
    pub fn wait_for_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("waiting for runnel") {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// Waits until the server's log holds `text`; panics (with the log) after `timeout`.
    pub fn wait_for_log(&self, text: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.stderr().contains(text) {
            assert!(
                Instant::now() < deadline,
                "runnel never logged {text:?} within {timeout:?}\n--- stderr ---\n{}",
                self.stderr()
            );
            thread::sleep(POLL_INTERVAL);
        }
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
        TestApp::start_with(&[])
    }

    /// Like [`TestApp::start`], with more arguments for `serve` (`--lease-timeout 2`).
    pub fn start_with(extra: &[&str]) -> TestApp {
        let dir = TempDir::new().expect("creating a temporary data directory");
        let server = Server::start_with(dir.path(), extra);
        let dev_key = server.dev_key().to_owned();
        TestApp {
            server,
            dev_key,
            dir,
        }
    }

    /// Like [`TestApp::start_with`], with environment variables added to the server.
    pub fn start_with_env(extra: &[&str], env: &[(&str, &str)]) -> TestApp {
        let dir = TempDir::new().expect("creating a temporary data directory");
        let server = Server::start_with_env(dir.path(), extra, env);
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

/// Reads `pipe` line by line on a thread of its own until it closes, appending every line
/// to the returned text: a child never blocks on a full pipe, and its output is there
/// for failure messages.
fn capture_lines(
    pipe: impl std::io::Read + Send + 'static,
) -> (Arc<Mutex<String>>, JoinHandle<()>) {
    let text = Arc::new(Mutex::new(String::new()));
    let reader = {
        let text = text.clone();
        thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                let mut all = text.lock().unwrap();
                all.push_str(&line);
                all.push('\n');
            }
        })
    };
    (text, reader)
}

/// Sends `signal` to process `pid`; panics when it cannot be delivered.
pub fn send_signal(pid: u32, signal: Signal) {
    let pid = Pid::from_raw(i32::try_from(pid).expect("pid fits in i32"));
    signal::kill(pid, signal).unwrap_or_else(|e| panic!("sending {signal} to {pid}: {e}"));
}

/// Whether process `pid` no longer runs: it is gone, or a zombie waiting to be reaped.
pub fn process_is_gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        // The state letter follows the command name, which is in parentheses and may
        // itself hold spaces or parentheses.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state == "Z" || state == "X"),
    }
}

/// How long a worker may take to register, or to exit once it should.
pub const WORKER_TIMEOUT: Duration = Duration::from_secs(15);

/// What a worker's registration log line says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    pub worker_id: String,
    /// `YYYYMMDD.N` when the server assigned it, else the worker's `--version`.
    pub version: String,
}

/// A running `runnel worker` (exec mode). Killed (SIGKILL) when dropped.
///
/// Its stderr (the worker's log) is kept for failure messages; its stdout is discarded
/// (the worker prints nothing there).
#[derive(Debug)]
pub struct Worker {
    child: Child,
    stderr: Arc<Mutex<String>>,
    stderr_reader: Option<JoinHandle<()>>,
}

impl Worker {
    /// Starts `runnel worker --api-url <server> --key <key> <args…>`, where `args` holds the
    /// `--task NAME=COMMAND`s and any of `--concurrency N`, `--shutdown-grace S`,
    /// `--max-attempts N`, `--version V`. Does not wait for the registration.
    pub fn start(server: &Server, key: &str, args: &[&str]) -> Worker {
        let mut child = runnel_command()
            .args(["worker", "--api-url", &server.url, "--key", key])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning runnel worker");
        let (stderr, stderr_reader) = capture_lines(child.stderr.take().expect("piped stderr"));
        Worker {
            child,
            stderr,
            stderr_reader: Some(stderr_reader),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the worker logged so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits for the worker's `worker registered` log line and reads its id and version.
    pub fn registration(&mut self) -> Registration {
        let field = |line: &str, name: &str| {
            line.split_whitespace()
                .find_map(|word| word.strip_prefix(name)?.strip_prefix('='))
                .map(str::to_owned)
        };
        let deadline = Instant::now() + WORKER_TIMEOUT;
        loop {
            let log = self.stderr();
            if let Some(line) = log.lines().find(|l| l.contains("worker registered")) {
                if let (Some(worker_id), Some(version)) =
                    (field(line, "worker_id"), field(line, "version"))
                {
                    return Registration { worker_id, version };
                }
                panic!("unexpected registration line {line:?}");
            }
            if let Some(status) = self.child.try_wait().expect("waiting for runnel worker") {
                panic!("runnel worker exited ({status}) before registering\n--- stderr ---\n{log}");
            }
            assert!(
                Instant::now() < deadline,
                "runnel worker did not register within {WORKER_TIMEOUT:?}\n--- stderr ---\n{log}"
            );
            thread::sleep(POLL_INTERVAL);
        }
    }

    /// Sends SIGKILL and reaps the process: the worker gets no chance to report anything.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        self.child.wait().expect("reaping runnel worker");
    }

    /// Sends SIGTERM (a graceful stop) without waiting; see [`Worker::wait`].
    pub fn terminate(&self) {
        send_signal(self.pid(), Signal::SIGTERM);
    }

    /// Waits for the worker to exit; panics (with its log) if it is still running after
    /// `timeout`.
    pub fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("waiting for runnel worker") {
                if let Some(reader) = self.stderr_reader.take() {
                    let _ = reader.join();
                }
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "runnel worker still running after {timeout:?}\n--- stderr ---\n{}",
                self.stderr()
            );
            thread::sleep(POLL_INTERVAL);
        }
    }

    /// Whether the process has not exited yet.
    pub fn is_running(&mut self) -> bool {
        self.child
            .try_wait()
            .expect("waiting for runnel worker")
            .is_none()
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
