//! Exec mode: `runnel worker --task NAME=COMMAND …` runs one shell command per attempt, so
//! tasks can be written in any language (DESIGN §1).
//!
//! What the command sees (`sh -c COMMAND`):
//! - stdin: the run's payload as JSON (`null` when it has none), then end of input; a
//!   superjson payload (`application/super+json`, e.g. a scheduled run's) is its `json`
//!   part, plain JSON with dates as ISO 8601 strings (the worker protocol decodes it);
//! - environment: the worker's, then the variables of the run's environment (`runnel
//!   envvars set`, the env var API; read by the worker runtime, at most
//!   `runnel_sdk::ENV_VARS_CACHE_TTL` old), then `RUNNEL_RUN_ID`, `RUNNEL_TASK`, `RUNNEL_ATTEMPT` (1 for
//!   the first attempt), `RUNNEL_ATTEMPT_ID`, `RUNNEL_ENVIRONMENT` and `RUNNEL_VERSION`;
//!   under the worker runtime also `RUNNEL_API_URL` and `RUNNEL_SECRET_KEY`: the server
//!   and the worker's own key, which is its environment's secret key, so the command can
//!   call the API, e.g. trigger a child of its own run (`options.parentRunId` =
//!   `$RUNNEL_RUN_ID`). The same two are set as `TRIGGER_API_URL` and
//!   `TRIGGER_SECRET_KEY`, which Trigger.dev's SDK reads (`tasks.trigger` from a Node
//!   command). Anything the command runs can read the key: serve only trusted commands.
//!   Each later layer wins over the one before on a name they share, so a stored
//!   variable never overrides what the platform sets (`RUNNEL_*`, the two `TRIGGER_*`);
//! - stdout is the output: JSON as is, other text as a JSON string (one trailing newline
//!   trimmed), nothing (or only whitespace) as `null`; at most [`STDOUT_LIMIT_DEFAULT`];
//! - a payload in object storage (`application/store`) is downloaded by the worker
//!   runtime first, so stdin always carries the payload's JSON itself; an output whose
//!   JSON is 512 KiB or more (`runnel_sdk::packets::OFFLOAD_THRESHOLD_BYTES`) is uploaded
//!   to object storage by the runtime and reported by its storage path (see
//!   docs/worker-protocol.md, Large payloads and outputs);
//! - stderr is the log: every line goes to the worker's log with the run id, and the last
//!   [`STDERR_TAIL_LINES`] lines explain a failure.
//!
//! How the command's end becomes the attempt's outcome:
//!
//! ```text
//!   exit 0                  → Success, output from stdout
//!   exit 126 / 127          → SystemFailure (could not be run / not found; never retried)
//!   exit N (any other)      → TaskFailed, the stderr tail or "exited with code N"
//!   killed by a signal      → Crashed, "killed by signal 9 (SIGKILL)" and the stderr tail
//!   stdout over the limit   → TaskFailed (the command is killed)
//!   sh cannot be started    → SystemFailure
//!   stop fired              → the group is killed; the runtime reports the stop reason
//! ```
//!
//! Invariant: every attempt runs in a process group of its own, and by the time `execute`
//! returns (or its future is dropped) the whole group has been sent SIGKILL. That is what
//! makes a cancel or a timeout stop background children too, and it keeps a command whose
//! children still hold its pipes open after it exited from hanging the worker: the pipes get
//! [`PIPE_GRACE_AFTER_EXIT`], then the group is killed. Only a process that leaves the group
//! on purpose (`setsid`) escapes.
//!
//! The group also dies with the worker process, however it ends (SIGKILL included), when
//! the executor has a task guard ([`ExecExecutor::with_task_guard`], which `runnel worker`
//! and `runnel dev` set on Linux): the group's leader is then `runnel task-guard -- sh -c
//! COMMAND` (guard.rs), which kills the group when its parent dies and otherwise ends
//! exactly as the shell did, so the table above holds unchanged. Without one (unit tests,
//! other systems) the shell leads the group, and a SIGKILLed worker leaves it running.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use nix::errno::Errno;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use runnel_core::retry::RetryPolicy;
use runnel_sdk::{
    AttemptOutcome, Client, DequeuedRun, EnvVars, Executor, FailureKind, StopSignal, TaskDefinition,
};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{ChildStdin, Command};
use tokio::sync::watch;

/// The most stdout an attempt may print: its output is held in memory and sent to the server.
pub const STDOUT_LIMIT_DEFAULT: usize = 16 * 1024 * 1024;
/// How many of the last stderr lines a failure message keeps.
pub const STDERR_TAIL_LINES: usize = 20;
/// Longer stderr lines are split: one runaway line must not grow without bound.
const STDERR_LINE_MAX: u64 = 16 * 1024;
/// How long the pipes may stay open after the command exited before its group is killed.
pub const PIPE_GRACE_AFTER_EXIT: Duration = Duration::from_millis(500);
/// The longest task name `--task` accepts.
pub const TASK_NAME_MAX: usize = 128;
/// The shell that runs each command.
const SHELL_DEFAULT: &str = "sh";

/// Splits a `--task NAME=COMMAND` argument at its first `=`.
///
/// The name becomes the task identifier runs are triggered with, so it is held to
/// `[A-Za-z0-9_\-/.:]{1,128}`; the command is passed to `sh -c` as written.
pub fn parse_task_spec(spec: &str) -> Result<(String, String), String> {
    let Some((name, command)) = spec.split_once('=') else {
        return Err(format!("invalid task {spec:?}: expected NAME=COMMAND"));
    };
    if name.is_empty() {
        return Err(format!(
            "invalid task {spec:?}: the name before '=' is empty"
        ));
    }
    if name.chars().count() > TASK_NAME_MAX {
        return Err(format!(
            "invalid task name {name:?}: longer than {TASK_NAME_MAX} characters"
        ));
    }
    if let Some(bad) = name.chars().find(|c| !is_task_name_char(*c)) {
        return Err(format!(
            "invalid task name {name:?}: {bad:?} is not allowed (use letters, digits and _ - / . :)"
        ));
    }
    if command.trim().is_empty() {
        return Err(format!(
            "invalid task {spec:?}: the command after '=' is empty"
        ));
    }
    Ok((name.to_owned(), command.to_owned()))
}

fn is_task_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '/' | '.' | ':')
}

/// Settings `runnel worker` applies to every task it serves (its `--max-attempts`,
/// `--max-duration` and `--machine` flags).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecTaskSettings {
    /// Attempts per run; the server's default retry policy when `None`.
    pub max_attempts: Option<u32>,
    /// Seconds of compute per attempt.
    pub max_duration: Option<u32>,
    /// Machine preset name; it prices the runs.
    pub machine: Option<String>,
}

/// Runs each attempt as a shell command (see the module doc for the contract).
#[derive(Debug)]
pub struct ExecExecutor {
    tasks: Vec<ExecTask>,
    settings: ExecTaskSettings,
    /// `sh` in production; tests point it elsewhere to see a spawn failure.
    shell: String,
    /// [`STDOUT_LIMIT_DEFAULT`] in production; tests lower it.
    stdout_limit: usize,
    /// Commands running now (what a stopping worker tells the operator it waits for).
    running: AtomicUsize,
    /// `runnel` itself, to start each command under `runnel task-guard` (see guard.rs);
    /// `None` starts the shell directly (unit tests, where the binary is a test harness,
    /// and systems other than Linux).
    task_guard: Option<PathBuf>,
    /// Which tasks are scheduled tasks and the cron each declares (`--scheduled`,
    /// `--cron`).
    schedules: crate::exec_schedules::TaskSchedules,
}

#[derive(Debug)]
struct ExecTask {
    name: String,
    command: String,
}

impl ExecExecutor {
    /// An executor serving `specs` (as [`parse_task_spec`] returns them). A task named twice
    /// is refused rather than silently shadowed, and so is an empty list.
    pub fn new(
        specs: impl IntoIterator<Item = (String, String)>,
        settings: ExecTaskSettings,
    ) -> Result<Self, String> {
        let mut seen = HashSet::new();
        let mut tasks = Vec::new();
        for (name, command) in specs {
            if !seen.insert(name.clone()) {
                return Err(format!("task {name} is given more than once"));
            }
            tasks.push(ExecTask { name, command });
        }
        if tasks.is_empty() {
            return Err("no task to serve: give at least one --task NAME=COMMAND".to_owned());
        }
        Ok(ExecExecutor {
            tasks,
            settings,
            shell: SHELL_DEFAULT.to_owned(),
            stdout_limit: STDOUT_LIMIT_DEFAULT,
            running: AtomicUsize::new(0),
            task_guard: None,
            schedules: crate::exec_schedules::TaskSchedules::default(),
        })
    }

    /// The names of the tasks served, in the order given.
    pub fn task_names(&self) -> impl Iterator<Item = &str> {
        self.tasks.iter().map(|task| task.name.as_str())
    }

    /// Registers the tasks as `schedules` says: scheduled tasks, declared crons.
    pub fn with_schedules(mut self, schedules: crate::exec_schedules::TaskSchedules) -> Self {
        self.schedules = schedules;
        self
    }

    /// Starts every command under `program task-guard` (`program` being the `runnel`
    /// binary), so the commands die with this process even when it is SIGKILLed.
    pub fn with_task_guard(mut self, program: PathBuf) -> Self {
        self.task_guard = Some(program);
        self
    }

    /// How many commands are running now.
    pub fn running(&self) -> usize {
        self.running.load(Ordering::Relaxed)
    }

    fn task(&self, name: &str) -> Option<&ExecTask> {
        self.tasks.iter().find(|task| task.name == name)
    }

    fn command(
        &self,
        task: &ExecTask,
        run: &DequeuedRun,
        client: Option<&Client>,
        env_vars: &BTreeMap<String, String>,
    ) -> Command {
        let mut command = match &self.task_guard {
            Some(program) => {
                let mut command = Command::new(program);
                command.args([crate::guard::SUBCOMMAND, "--", &self.shell]);
                command
            }
            None => Command::new(&self.shell),
        };
        // The environment's variables first: every variable set below (the guard's, the
        // platform's `RUNNEL_*` and `TRIGGER_*`) wins over one of the same name.
        command.envs(env_vars);
        if self.task_guard.is_some() {
            command.env(crate::guard::PARENT_ENV, std::process::id().to_string());
        }
        command
            .arg("-c")
            .arg(&task.command)
            .env("RUNNEL_RUN_ID", &run.run_id)
            .env("RUNNEL_TASK", &run.task_identifier)
            .env("RUNNEL_ATTEMPT", run.attempt_number.to_string())
            .env("RUNNEL_ATTEMPT_ID", &run.attempt_id)
            .env("RUNNEL_ENVIRONMENT", &run.environment)
            .env("RUNNEL_VERSION", &run.version);
        if let Some(client) = client {
            // The worker's own key: the task may call the server on its run's behalf
            // (trigger a child with `parentRunId=$RUNNEL_RUN_ID`), as Trigger.dev's
            // SDK does with the `TRIGGER_` names.
            for (url, key) in [
                ("RUNNEL_API_URL", "RUNNEL_SECRET_KEY"),
                ("TRIGGER_API_URL", "TRIGGER_SECRET_KEY"),
            ] {
                command
                    .env(url, client.api_url())
                    .env(key, client.secret_key());
            }
        }
        command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // The group lets one killpg reach the command's children as well.
            .process_group(0)
            .kill_on_drop(true);
        command
    }
}

#[async_trait]
impl Executor for ExecExecutor {
    fn tasks(&self) -> Vec<TaskDefinition> {
        self.tasks
            .iter()
            .map(|task| {
                let mut definition = TaskDefinition {
                    retry: self.settings.max_attempts.map(|max_attempts| RetryPolicy {
                        max_attempts,
                        ..RetryPolicy::default()
                    }),
                    max_duration: self.settings.max_duration,
                    machine: self.settings.machine.clone(),
                    ..TaskDefinition::new(task.name.clone())
                };
                self.schedules.apply(&mut definition);
                definition
            })
            .collect()
    }

    async fn execute(&self, run: DequeuedRun, stop: StopSignal) -> AttemptOutcome {
        self.attempt(run, stop, None, &BTreeMap::new()).await
    }

    async fn execute_with(
        &self,
        run: DequeuedRun,
        stop: StopSignal,
        client: &Client,
    ) -> AttemptOutcome {
        self.attempt(run, stop, Some(client), &BTreeMap::new())
            .await
    }

    async fn execute_with_env(
        &self,
        run: DequeuedRun,
        stop: StopSignal,
        client: &Client,
        env_vars: EnvVars,
    ) -> AttemptOutcome {
        self.attempt(run, stop, Some(client), &env_vars).await
    }
}

impl ExecExecutor {
    /// One attempt; with `client`, the command also gets the server's URL and key, and
    /// `env_vars` (its environment's variables) below the platform's own.
    async fn attempt(
        &self,
        run: DequeuedRun,
        mut stop: StopSignal,
        client: Option<&Client>,
        env_vars: &BTreeMap<String, String>,
    ) -> AttemptOutcome {
        let Some(task) = self.task(&run.task_identifier) else {
            return AttemptOutcome::failure(
                FailureKind::SystemFailure,
                format!("task {} is not served by this worker", run.task_identifier),
            );
        };
        if let Some(reason) = stop.reason() {
            return reason.ending();
        }
        let payload = match serde_json::to_vec(&run.payload) {
            Ok(payload) => payload,
            Err(error) => {
                return AttemptOutcome::failure(
                    FailureKind::SystemFailure,
                    format!("could not serialize the payload: {error}"),
                )
            }
        };

        self.running.fetch_add(1, Ordering::Relaxed);
        let _running = Running(&self.running);
        let mut child = match self.command(task, &run, client, env_vars).spawn() {
            Ok(child) => child,
            Err(error) => {
                return AttemptOutcome::failure(
                    FailureKind::SystemFailure,
                    format!("could not start {}: {error}", self.shell),
                )
            }
        };
        // With `process_group(0)` the child's pid is its group's id.
        let Some(group) = child
            .id()
            .and_then(|pid| i32::try_from(pid).ok())
            .map(|pid| ProcessGroup(Pid::from_raw(pid)))
        else {
            return AttemptOutcome::failure(
                FailureKind::SystemFailure,
                "the command's process id is unknown",
            );
        };
        let _kill_group_on_return = KillOnDrop(group);
        let (Some(stdin), Some(stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            return AttemptOutcome::failure(
                FailureKind::SystemFailure,
                "the command's pipes are missing",
            );
        };

        // The payload is written on its own task: a command that never reads its stdin must
        // not block the output from being read.
        let stdin_task = tokio::spawn(write_stdin(stdin, payload));
        let (quit_tx, quit_rx) = watch::channel(false);
        let limit = self.stdout_limit;
        let run_id = run.run_id.clone();
        let mut io_task = tokio::spawn(async move {
            tokio::join!(
                read_stdout(stdout, limit, group, quit_rx.clone()),
                read_stderr(stderr, run_id, quit_rx),
            )
        });
        let finish_io = |quit_tx: &watch::Sender<bool>| {
            stdin_task.abort();
            // Unread output is dropped: whoever still wrote it has just been killed.
            let _ = quit_tx.send(true);
        };

        let status = tokio::select! {
            status = child.wait() => status,
            reason = stop.stopped() => {
                group.kill();
                if let Err(error) = child.wait().await {
                    tracing::warn!(run = %run.run_id, %error, "could not reap the killed command");
                }
                finish_io(&quit_tx);
                let _ = io_task.await;
                return reason.ending();
            }
        };
        let status = match status {
            Ok(status) => status,
            Err(error) => {
                group.kill();
                finish_io(&quit_tx);
                let _ = io_task.await;
                return AttemptOutcome::failure(
                    FailureKind::SystemFailure,
                    format!("could not wait for the command: {error}"),
                );
            }
        };

        let io = match tokio::time::timeout(PIPE_GRACE_AFTER_EXIT, &mut io_task).await {
            Ok(io) => io,
            Err(_elapsed) => {
                tracing::warn!(
                    run = %run.run_id,
                    "the command exited but processes it started still hold its output open; killing them"
                );
                group.kill();
                finish_io(&quit_tx);
                io_task.await
            }
        };
        finish_io(&quit_tx);
        match io {
            Ok((Ok(stdout), stderr_tail)) => outcome_of_exit(status, &stdout, &stderr_tail),
            Ok((Err(StdoutOverflow { limit }), _)) => AttemptOutcome::failure(
                FailureKind::TaskFailed,
                format!(
                    "stdout exceeded the limit of {limit} bytes; the command was killed \
                     (print large results to a file or an object store instead)"
                ),
            ),
            Err(error) => AttemptOutcome::failure(
                FailureKind::SystemFailure,
                format!("reading the command's output failed: {error}"),
            ),
        }
    }
}

/// A command's process group, by the id of its leader.
#[derive(Debug, Clone, Copy)]
struct ProcessGroup(Pid);

impl ProcessGroup {
    /// SIGKILLs every process still in the group; a group already gone is fine.
    fn kill(self) {
        match killpg(self.0, Signal::SIGKILL) {
            Ok(()) | Err(Errno::ESRCH) => {}
            Err(error) => {
                tracing::warn!(pgid = %self.0, %error, "could not kill the command's process group")
            }
        }
    }
}

/// Counts a command as running until `execute` ends (or its future is dropped).
#[derive(Debug)]
struct Running<'a>(&'a AtomicUsize);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Kills the group however `execute` ends, including when its future is dropped.
#[derive(Debug)]
struct KillOnDrop(ProcessGroup);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        self.0.kill();
    }
}

/// Stdout grew past the limit.
#[derive(Debug)]
struct StdoutOverflow {
    limit: usize,
}

async fn write_stdin(mut stdin: ChildStdin, payload: Vec<u8>) {
    // A command that ignores its input closes the pipe early: that is not an error.
    if let Err(error) = stdin.write_all(&payload).await {
        if error.kind() != std::io::ErrorKind::BrokenPipe {
            tracing::debug!(%error, "could not write the payload to the command");
        }
    }
    // Dropping `stdin` closes the pipe, so the command sees the end of its input.
}

/// Reads stdout to its end or until `quit`; past `limit` bytes the group is killed so the
/// command stops producing.
async fn read_stdout(
    mut stdout: impl AsyncRead + Unpin,
    limit: usize,
    group: ProcessGroup,
    mut quit: watch::Receiver<bool>,
) -> Result<Vec<u8>, StdoutOverflow> {
    let mut output = Vec::new();
    let mut chunk = vec![0; 64 * 1024];
    loop {
        // Biased: what is already in the pipe is read before a quit is noticed.
        let read = tokio::select! {
            biased;
            read = stdout.read(&mut chunk) => read,
            _ = quit.wait_for(|quit| *quit) => break,
        };
        match read {
            Ok(0) => break,
            Ok(n) if output.len() + n > limit => {
                group.kill();
                return Err(StdoutOverflow { limit });
            }
            Ok(n) => output.extend_from_slice(&chunk[..n]),
            Err(error) => {
                tracing::debug!(%error, "could not read the command's stdout");
                break;
            }
        }
    }
    Ok(output)
}

/// Logs each stderr line under the run's id and keeps the last non-blank ones.
async fn read_stderr(
    stderr: impl AsyncRead + Unpin,
    run_id: String,
    mut quit: watch::Receiver<bool>,
) -> VecDeque<String> {
    let mut reader = BufReader::new(stderr);
    let mut tail = VecDeque::with_capacity(STDERR_TAIL_LINES);
    let mut line = Vec::new();
    loop {
        line.clear();
        let mut capped = (&mut reader).take(STDERR_LINE_MAX);
        let read = tokio::select! {
            biased;
            read = capped.read_until(b'\n', &mut line) => read,
            _ = quit.wait_for(|quit| *quit) => break,
        };
        match read {
            Ok(0) => break,
            Ok(_) => {}
            Err(error) => {
                tracing::debug!(%error, "could not read the command's stderr");
                break;
            }
        }
        let text = String::from_utf8_lossy(&line);
        let text = text.trim_end_matches(['\n', '\r']);
        tracing::info!(run = %run_id, "{text}");
        if text.trim().is_empty() {
            continue;
        }
        if tail.len() == STDERR_TAIL_LINES {
            tail.pop_front();
        }
        tail.push_back(text.to_owned());
    }
    tail
}

fn outcome_of_exit(
    status: ExitStatus,
    stdout: &[u8],
    stderr_tail: &VecDeque<String>,
) -> AttemptOutcome {
    let tail = Vec::from_iter(stderr_tail.iter().map(String::as_str)).join("\n");
    let tail_or = |fallback: String| {
        if tail.is_empty() {
            fallback
        } else {
            tail.clone()
        }
    };
    match (status.code(), status.signal()) {
        (Some(0), _) => AttemptOutcome::Success {
            output: output_of(stdout),
        },
        (Some(code @ (126 | 127)), _) => AttemptOutcome::failure(
            FailureKind::SystemFailure,
            tail_or(format!("command could not be run (exit {code})")),
        ),
        (Some(code), _) => AttemptOutcome::failure(
            FailureKind::TaskFailed,
            tail_or(format!("exited with code {code}")),
        ),
        (None, Some(signal)) => {
            let name = Signal::try_from(signal).map_or("unknown signal", Signal::as_str);
            let mut message = format!("killed by signal {signal} ({name})");
            if !tail.is_empty() {
                message.push('\n');
                message.push_str(&tail);
            }
            AttemptOutcome::failure(FailureKind::Crashed, message)
        }
        (None, None) => AttemptOutcome::failure(
            FailureKind::Crashed,
            tail_or(format!("ended without an exit code ({status})")),
        ),
    }
}

/// Stdout as the run's output: JSON when it parses, else the text as a JSON string.
fn output_of(stdout: &[u8]) -> Value {
    if stdout.iter().all(u8::is_ascii_whitespace) {
        return Value::Null;
    }
    if let Ok(json) = serde_json::from_slice(stdout) {
        return json;
    }
    let text = String::from_utf8_lossy(stdout);
    let text = match text.strip_suffix('\n') {
        Some(line) => line.strip_suffix('\r').unwrap_or(line),
        None => &text,
    };
    Value::String(text.to_owned())
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Instant;

    use serde_json::json;

    use super::*;
    use runnel_sdk::StopReason;

    const TASK: &str = "demo/task";

    fn executor(command: &str) -> ExecExecutor {
        ExecExecutor::new(
            [(TASK.to_owned(), command.to_owned())],
            ExecTaskSettings::default(),
        )
        .unwrap()
    }

    fn dequeued(task: &str, payload: Value) -> DequeuedRun {
        DequeuedRun {
            payload_presigned_url: None,
            run_id: "run_abc".into(),
            attempt_id: "attempt_xyz".into(),
            attempt_number: 2,
            task_identifier: task.into(),
            payload,
            payload_type: "application/json".into(),
            max_duration_secs: None,
            machine: "small-1x".into(),
            environment: "dev".into(),
            version: "20260101.1".into(),
            is_test: false,
            tags: vec![],
            lease_expires_at: "2026-01-01T00:00:00Z".into(),
        }
    }

    /// Runs `command` as the one task, with a stop that never fires.
    async fn run_with(command: &str, payload: Value) -> AttemptOutcome {
        let (_handle, stop) = StopSignal::channel();
        executor(command)
            .execute(dequeued(TASK, payload), stop)
            .await
    }

    async fn run(command: &str) -> AttemptOutcome {
        run_with(command, Value::Null).await
    }

    fn success(output: Value) -> AttemptOutcome {
        AttemptOutcome::Success { output }
    }

    /// Gone or a zombie: either way it runs no more.
    fn is_dead(pid: i32) -> bool {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => true,
            Ok(stat) => stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.trim_start().chars().next())
                .is_some_and(|state| matches!(state, 'Z' | 'X')),
        }
    }

    /// SIGKILL is delivered asynchronously: allow the kernel a moment to finish it.
    async fn dies_soon(pid: i32) -> bool {
        let deadline = Instant::now() + Duration::from_secs(1);
        while Instant::now() < deadline {
            if is_dead(pid) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        false
    }

    async fn pid_from(path: &Path) -> i32 {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(text) = std::fs::read_to_string(path) {
                if let Ok(pid) = text.trim().parse() {
                    return pid;
                }
            }
            assert!(
                Instant::now() < deadline,
                "the command never wrote {path:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[test]
    fn task_specs() {
        let ok = |name: &str, command: &str| Ok((name.to_owned(), command.to_owned()));
        assert_eq!(parse_task_spec("hello=echo hi"), ok("hello", "echo hi"));
        assert_eq!(
            parse_task_spec("a-b_c/d.e:f=python3 x.py --n=3"),
            ok("a-b_c/d.e:f", "python3 x.py --n=3")
        );
        assert_eq!(
            parse_task_spec(&format!("{}=true", "n".repeat(128))),
            ok(&"n".repeat(128), "true")
        );
        let refused = [
            ("no equals sign", "expected NAME=COMMAND"),
            ("=echo", "the name before '=' is empty"),
            ("name=", "the command after '=' is empty"),
            ("name=   ", "the command after '=' is empty"),
            ("bad name=true", "' ' is not allowed"),
            ("café=true", "'é' is not allowed"),
        ];
        for (spec, reason) in refused {
            let error = parse_task_spec(spec).unwrap_err();
            assert!(error.contains(reason), "{spec:?} gave {error:?}");
        }
        let long = parse_task_spec(&format!("{}=true", "n".repeat(129))).unwrap_err();
        assert!(long.contains("longer than 128 characters"), "{long}");
    }

    #[test]
    fn tasks_carry_the_worker_settings() {
        let specs = [
            ("a".to_owned(), "true".to_owned()),
            ("b".into(), "false".into()),
        ];
        let plain = ExecExecutor::new(specs.clone(), ExecTaskSettings::default()).unwrap();
        assert_eq!(
            plain.tasks(),
            vec![TaskDefinition::new("a"), TaskDefinition::new("b")]
        );

        let settings = ExecTaskSettings {
            max_attempts: Some(5),
            max_duration: Some(60),
            machine: Some("large-1x".into()),
        };
        let tuned = ExecExecutor::new(specs, settings).unwrap();
        let expected = TaskDefinition {
            retry: Some(RetryPolicy {
                max_attempts: 5,
                ..RetryPolicy::default()
            }),
            max_duration: Some(60),
            machine: Some("large-1x".into()),
            ..TaskDefinition::new("a")
        };
        assert_eq!(tuned.tasks()[0], expected);
        assert_eq!(tuned.tasks()[1].id, "b");
    }

    #[test]
    fn duplicate_or_no_tasks_are_refused() {
        let twice = [
            ("a".to_owned(), "true".to_owned()),
            ("a".into(), "false".into()),
        ];
        let error = ExecExecutor::new(twice, ExecTaskSettings::default()).unwrap_err();
        assert_eq!(error, "task a is given more than once");
        assert!(ExecExecutor::new([], ExecTaskSettings::default()).is_err());
    }

    #[tokio::test]
    async fn json_stdout_is_the_output() {
        assert_eq!(
            run(r#"echo '{"ok": true, "n": [1, 2]}'"#).await,
            success(json!({"ok": true, "n": [1, 2]}))
        );
        assert_eq!(run("echo 42").await, success(json!(42)));
    }

    #[tokio::test]
    async fn other_stdout_is_a_string() {
        assert_eq!(run("echo hello world").await, success(json!("hello world")));
        // Only one trailing newline goes.
        assert_eq!(
            run(r"printf 'two\nlines\n\n'").await,
            success(json!("two\nlines\n"))
        );
    }

    #[tokio::test]
    async fn empty_stdout_is_null() {
        assert_eq!(run("true").await, success(Value::Null));
        assert_eq!(run("echo").await, success(Value::Null));
    }

    #[tokio::test]
    async fn the_payload_arrives_on_stdin() {
        let payload = json!({"user": "ada", "items": [1, 2, 3]});
        assert_eq!(run_with("cat", payload.clone()).await, success(payload));
        assert_eq!(run("cat").await, success(Value::Null));
    }

    #[tokio::test]
    async fn a_command_ignoring_a_large_payload_does_not_block() {
        // Far more than a pipe buffer, never read.
        let payload = json!("x".repeat(1024 * 1024));
        assert_eq!(run_with("echo done", payload).await, success(json!("done")));
    }

    #[tokio::test]
    async fn the_attempt_is_described_in_the_environment() {
        let outcome = run(
            r#"printf '%s %s %s %s %s %s' "$RUNNEL_RUN_ID" "$RUNNEL_TASK" "$RUNNEL_ATTEMPT" \
               "$RUNNEL_ATTEMPT_ID" "$RUNNEL_ENVIRONMENT" "$RUNNEL_VERSION""#,
        )
        .await;
        assert_eq!(
            outcome,
            success(json!("run_abc demo/task 2 attempt_xyz dev 20260101.1"))
        );
        // The worker's own environment is inherited.
        let path = std::env::var("PATH").unwrap();
        assert_eq!(run(r#"printf %s "$PATH""#).await, success(json!(path)));
    }

    #[tokio::test]
    async fn under_a_worker_the_command_gets_the_server_and_its_key() {
        let command = r#"printf '%s %s %s %s' "$RUNNEL_API_URL" "$RUNNEL_SECRET_KEY" \
                           "$TRIGGER_API_URL" "$TRIGGER_SECRET_KEY""#;
        let client = Client::new("http://runnel.test:3030/", "tr_dev_worker");
        let (_handle, stop) = StopSignal::channel();
        let outcome = executor(command)
            .execute_with(dequeued(TASK, Value::Null), stop, &client)
            .await;
        assert_eq!(
            outcome,
            success(json!(
                "http://runnel.test:3030 tr_dev_worker http://runnel.test:3030 tr_dev_worker"
            ))
        );
        // Without a worker's client (an executor driven directly) they are not set.
        let bare = r#"printf %s "${RUNNEL_SECRET_KEY-unset}""#;
        if std::env::var_os("RUNNEL_SECRET_KEY").is_none() {
            assert_eq!(run(bare).await, success(json!("unset")));
        }
    }

    #[tokio::test]
    async fn the_environment_variables_come_below_the_platform_ones() {
        let client = Client::new("http://runnel.test:3030/", "tr_dev_worker");
        let vars: EnvVars = std::sync::Arc::new(BTreeMap::from(
            [
                ("GREETING", "hello there"),
                ("RUNNEL_RUN_ID", "spoofed"),
                ("TRIGGER_SECRET_KEY", "spoofed"),
            ]
            .map(|(k, v)| (k.to_owned(), v.to_owned())),
        ));
        let (_handle, stop) = StopSignal::channel();
        let command = r#"printf '%s|%s|%s' "$GREETING" "$RUNNEL_RUN_ID" "$TRIGGER_SECRET_KEY""#;
        let outcome = executor(command)
            .execute_with_env(dequeued(TASK, Value::Null), stop, &client, vars)
            .await;
        assert_eq!(outcome, success(json!("hello there|run_abc|tr_dev_worker")));
    }

    #[tokio::test]
    async fn a_non_zero_exit_fails_with_the_last_stderr_lines() {
        let outcome = run("for i in $(seq 1 30); do echo line $i >&2; echo; done; exit 3").await;
        let last_lines = Vec::from_iter((11..=30).map(|i| format!("line {i}"))).join("\n");
        assert_eq!(
            outcome,
            AttemptOutcome::failure(FailureKind::TaskFailed, last_lines),
            "blank lines are skipped and only the last 20 are kept"
        );
        assert_eq!(
            run("echo partial; exit 4").await,
            AttemptOutcome::failure(FailureKind::TaskFailed, "exited with code 4")
        );
    }

    #[tokio::test]
    async fn a_command_that_cannot_run_is_a_system_failure() {
        let AttemptOutcome::Failure { error } = run("runnel_no_such_command_here --x").await else {
            panic!("a missing command succeeded");
        };
        assert_eq!(error.kind, FailureKind::SystemFailure);
        assert!(
            error.message.contains("runnel_no_such_command_here")
                && error.message.contains("not found"),
            "{}",
            error.message
        );
        assert_eq!(
            run("exit 126").await,
            AttemptOutcome::failure(
                FailureKind::SystemFailure,
                "command could not be run (exit 126)"
            )
        );
    }

    #[tokio::test]
    async fn a_shell_that_cannot_start_is_a_system_failure() {
        let mut executor = executor("true");
        executor.shell = "/nonexistent/runnel-test-shell".into();
        let (_handle, stop) = StopSignal::channel();
        let AttemptOutcome::Failure { error } =
            executor.execute(dequeued(TASK, Value::Null), stop).await
        else {
            panic!("ran without a shell");
        };
        assert_eq!(error.kind, FailureKind::SystemFailure);
        assert!(
            error
                .message
                .starts_with("could not start /nonexistent/runnel-test-shell: "),
            "{}",
            error.message
        );
    }

    #[tokio::test]
    async fn an_unknown_task_is_a_system_failure() {
        let (_handle, stop) = StopSignal::channel();
        let outcome = executor("true")
            .execute(dequeued("other", Value::Null), stop)
            .await;
        assert_eq!(
            outcome,
            AttemptOutcome::failure(
                FailureKind::SystemFailure,
                "task other is not served by this worker"
            )
        );
    }

    #[tokio::test]
    async fn a_signal_is_a_crash() {
        assert_eq!(
            run("echo about to die >&2; kill -9 $$").await,
            AttemptOutcome::failure(
                FailureKind::Crashed,
                "killed by signal 9 (SIGKILL)\nabout to die"
            )
        );
        assert_eq!(
            run("kill -TERM $$").await,
            AttemptOutcome::failure(FailureKind::Crashed, "killed by signal 15 (SIGTERM)")
        );
    }

    #[tokio::test]
    async fn stop_kills_the_whole_group_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("pid");
        let command = format!("sleep 30 & echo $! > '{}'; wait", pidfile.display());
        let executor = executor(&command);
        let (handle, stop) = StopSignal::channel();
        let attempt =
            tokio::spawn(async move { executor.execute(dequeued(TASK, Value::Null), stop).await });
        let sleeper = pid_from(&pidfile).await;
        assert!(!is_dead(sleeper), "the background sleep should be running");

        let stopped_at = Instant::now();
        handle.stop(StopReason::Canceled);
        let outcome = attempt.await.unwrap();
        assert!(
            stopped_at.elapsed() < Duration::from_secs(1),
            "execute took {:?} to return after the stop",
            stopped_at.elapsed()
        );
        assert!(matches!(outcome, AttemptOutcome::Failure { .. }));
        assert!(
            dies_soon(sleeper).await,
            "the grandchild {sleeper} survived"
        );
    }

    #[tokio::test]
    async fn dropping_the_attempt_kills_the_group() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("pid");
        let command = format!("sleep 30 & echo $! > '{}'; wait", pidfile.display());
        let executor = executor(&command);
        let attempt = tokio::spawn(async move {
            let (_handle, stop) = StopSignal::channel();
            executor.execute(dequeued(TASK, Value::Null), stop).await
        });
        let sleeper = pid_from(&pidfile).await;
        attempt.abort();
        assert!(attempt.await.unwrap_err().is_cancelled());
        assert!(
            dies_soon(sleeper).await,
            "the grandchild {sleeper} survived"
        );
    }

    #[tokio::test]
    async fn children_holding_the_pipes_open_do_not_hang_the_attempt() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("pid");
        // The background sleep inherits stdout and stderr and outlives the shell.
        let command = format!(
            r#"sleep 30 & echo $! > '{}'; echo '{{"done": true}}'; echo bye >&2"#,
            pidfile.display()
        );
        let started = Instant::now();
        let outcome = tokio::time::timeout(Duration::from_secs(10), run(&command))
            .await
            .expect("the attempt hung on the inherited pipes");
        assert_eq!(outcome, success(json!({"done": true})));
        assert!(started.elapsed() < Duration::from_secs(5));
        let sleeper = pid_from(&pidfile).await;
        assert!(
            dies_soon(sleeper).await,
            "the leftover child {sleeper} survived"
        );
    }

    #[tokio::test]
    async fn too_much_stdout_fails_and_kills_the_command() {
        let mut executor = executor("yes");
        executor.stdout_limit = 1024 * 1024;
        let (_handle, stop) = StopSignal::channel();
        let outcome = tokio::time::timeout(
            Duration::from_secs(10),
            executor.execute(dequeued(TASK, Value::Null), stop),
        )
        .await
        .expect("an endless stdout hung the attempt");
        let AttemptOutcome::Failure { error } = outcome else {
            panic!("an oversized stdout succeeded");
        };
        assert_eq!(error.kind, FailureKind::TaskFailed);
        assert!(
            error
                .message
                .starts_with("stdout exceeded the limit of 1048576 bytes"),
            "{}",
            error.message
        );
    }

    #[test]
    fn stdout_mapping() {
        let cases: [(&[u8], Value); 7] = [
            (b"", Value::Null),
            (b" \n\t\n", Value::Null),
            (b"{\"a\":1}\n", json!({"a": 1})),
            (b"\"quoted\"", json!("quoted")),
            (b"plain\r\n", json!("plain")),
            (b"1 2", json!("1 2")),
            (b"bad \xff byte", json!("bad \u{fffd} byte")),
        ];
        for (stdout, expected) in cases {
            assert_eq!(output_of(stdout), expected, "{stdout:?}");
        }
    }
}
