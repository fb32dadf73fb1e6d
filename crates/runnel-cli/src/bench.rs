//! `runnel bench`: the project's own benchmark (DESIGN §6). It starts a real `runnel serve`
//! as a child process on a scratch database, drives it over HTTP from this process and
//! prints one markdown table.
//!
//! ```text
//!   runnel bench ──spawn──► runnel serve --listen 127.0.0.1:0 (temp dir, or a fresh PG db)
//!        │  reads "Runnel listening on http://ADDR" and the dev key from its stdout
//!        │
//!   1 trigger    N runs of `bench-queued` (a registered worker serves it, so they stay QUEUED)
//!   2 retrieve   N retrieves of those runs
//!   3 end to end an in-process SDK worker runs `bench-noop`; N/2 runs are triggered while
//!                it works; the clock stops when the last one is COMPLETED on the server
//!   4 idle       runs triggered one at a time while the worker waits: dispatch latency
//!        │
//!   server RSS (VmRSS, VmHWM) from /proc, then SIGTERM; the PG database is dropped
//! ```
//!
//! Phases 1–3 use `--connections` clients pulling indices from one counter over one
//! keep-alive `reqwest` pool. Client, worker and server share the machine, so the figures
//! are what one box does with everything on it: the CPU rows say how busy each side was.
//! Phase 3 runs with phase 1's queued runs still in the table, as a busy installation
//! would have them.
//!
//! Failures: a phase fails when no attempt ran for [`STALL_TIMEOUT`] or when a run read
//! back is not COMPLETED; failed triggers and retrieves are counted and reported, not
//! fatal. The child is killed when this process gives up on it (`kill_on_drop`),
//! including on errors, and the scratch PostgreSQL database is dropped even when a phase
//! failed. The server's own warnings (it runs with `RUST_LOG=warn`) are printed at the end.
//!
//! Output: the table alone on stdout; on stderr a line per phase and, when stderr is a
//! terminal, a progress bar of the phase's requests or runs.

use std::fmt::Write as _;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use runnel_core::worker::{RegisterRequest, TaskDefinition};
use runnel_sdk::{Client, TaskContext, Tasks, Worker, WorkerOptions};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::Notify;
use tokio::task::JoinSet;

/// Runs triggered in phase 1 (and retrieved in phase 2); phase 3 uses half as many.
const RUNS_DEFAULT: u64 = 20_000;
/// Concurrent HTTP clients.
const CONNECTIONS_DEFAULT: u64 = 32;
/// Attempts the in-process worker runs at once.
const WORKER_CONCURRENCY_DEFAULT: u64 = 64;
/// Runs of phase 4, triggered one at a time.
const IDLE_RUNS: usize = 200;
/// Pause between two triggers of phase 4: long enough for the previous run to start.
const IDLE_GAP: Duration = Duration::from_millis(5);
/// The task of phases 1 and 2: registered, never executed.
const QUEUED_TASK: &str = "bench-queued";
/// The no-op task of phases 3 and 4.
const NOOP_TASK: &str = "bench-noop";
/// How long the server may take to print its address (migrations run first).
const SERVER_START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the server gets to stop after SIGTERM before it is killed.
const SERVER_STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Phase 3 gives up when no run completed for this long.
const STALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Runs per request in the batch trigger phase (the one-shot endpoint's maximum).
const BATCH_SIZE: usize = 500;
/// Timeout of one benchmark request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Lines of the server's log shown when it fails to start.
const LOG_TAIL_LINES: usize = 20;

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Runs to trigger (and retrieve); the end-to-end phase uses half as many.
    #[arg(long, default_value_t = RUNS_DEFAULT, value_parser = clap::value_parser!(u64).range(2..=10_000_000))]
    runs: u64,
    /// Concurrent HTTP clients.
    #[arg(long, default_value_t = CONNECTIONS_DEFAULT, value_parser = clap::value_parser!(u64).range(1..=4096))]
    connections: u64,
    /// Attempts the in-process worker runs at once.
    #[arg(long, default_value_t = WORKER_CONCURRENCY_DEFAULT, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    worker_concurrency: u64,
    /// A PostgreSQL server to benchmark against, `postgres://user@host:5432/db`: a fresh
    /// database `runnel_bench_…` is created next to `db` and dropped afterwards. Without
    /// it the server uses SQLite in a temporary directory.
    #[arg(long)]
    database_url: Option<String>,
}

pub async fn run(args: BenchArgs) -> Result<()> {
    let settings = Settings {
        runs: usize::try_from(args.runs).context("--runs is too large")?,
        connections: usize::try_from(args.connections).context("--connections is too large")?,
        worker_concurrency: usize::try_from(args.worker_concurrency)
            .context("--worker-concurrency is too large")?,
    };
    let dir = tempfile::Builder::new()
        .prefix("runnel-bench-")
        .tempdir()
        .context("creating a temporary directory")?;
    let (backend, scratch) = match &args.database_url {
        None => ("SQLite (temporary directory)".to_owned(), None),
        Some(url) => {
            let scratch = ScratchDatabase::create(url).await?;
            (
                format!("PostgreSQL ({})", scratch.server_version),
                Some(scratch),
            )
        }
    };
    let store_flags = match &scratch {
        None => vec![
            "--data-dir".to_owned(),
            dir.path().join("data").display().to_string(),
        ],
        // The data directory still holds the server's master key.
        Some(scratch) => vec![
            "--database-url".to_owned(),
            scratch.url.clone(),
            "--data-dir".to_owned(),
            dir.path().join("data").display().to_string(),
        ],
    };
    let outcome = bench_server(&settings, &store_flags, &dir.path().join("server.log")).await;
    if let Some(scratch) = scratch {
        if let Err(error) = scratch.drop_database().await {
            tracing::warn!(database = %scratch.name, error = %format!("{error:#}"), "could not drop the scratch database");
        }
    }
    let report = outcome?;
    print!("{}", report.render(&settings, &backend));
    Ok(())
}

/// The benchmark's shape, from the flags.
struct Settings {
    runs: usize,
    connections: usize,
    worker_concurrency: usize,
}

/// Starts the server, runs every phase against it, reads its memory and stops it.
async fn bench_server(settings: &Settings, store_flags: &[String], log: &Path) -> Result<Report> {
    let server = ServerProcess::start(store_flags, log).await?;
    let measured = measure(settings, &server).await;
    let memory = server.memory();
    server.stop().await;
    // Warnings and errors the server logged (RUST_LOG=warn) say what went wrong under load.
    let logged = log_tail(log);
    if !logged.is_empty() {
        eprintln!("the server logged (last {LOG_TAIL_LINES} lines):\n{logged}");
    }
    let mut report = measured?;
    report.memory = memory;
    Ok(report)
}

async fn measure(settings: &Settings, server: &ServerProcess) -> Result<Report> {
    let http = reqwest::Client::builder()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(settings.connections)
        .timeout(REQUEST_TIMEOUT)
        .build()
        .context("building the HTTP client")?;
    let api = Api {
        http,
        url: server.url.clone(),
        key: server.key.clone(),
    };
    let cpu = CpuMeter::new(server.pid);
    let sdk = Client::new(server.url.clone(), server.key.clone());

    // A registered version that serves the task, so its runs are QUEUED rather than
    // waiting for a deploy; nothing dequeues them.
    sdk.register(&RegisterRequest {
        name: "runnel-bench-queued".to_owned(),
        version: None,
        tasks: vec![TaskDefinition::new(QUEUED_TASK)],
        queues: Vec::new(),
    })
    .await
    .context("registering the queued task")?;

    eprintln!("phase 1: triggering {} runs", settings.runs);
    let mark = cpu.sample();
    let api1 = api.clone();
    let triggered = drive("triggered", settings.runs, settings.connections, move |i| {
        let api = api1.clone();
        async move { api.trigger(QUEUED_TASK, i).await }
    })
    .await?;
    let trigger = triggered.summary(cpu.since(mark));
    let ids: Vec<String> = triggered.results.iter().map(|(_, id)| id.clone()).collect();
    let Some(first) = ids.first() else {
        bail!(
            "no trigger succeeded: {}",
            triggered
                .first_error
                .as_deref()
                .unwrap_or("no error recorded")
        );
    };
    let first_run = api.retrieve_json(first).await?;
    if first_run["status"] != "QUEUED" {
        bail!(
            "a triggered run is {} instead of QUEUED",
            first_run["status"]
        );
    }

    eprintln!("phase 2: retrieving {} runs", ids.len());
    let mark = cpu.sample();
    let ids = Arc::new(ids);
    let (api2, ids2) = (api.clone(), ids.clone());
    let retrieved = drive("retrieved", ids.len(), settings.connections, move |i| {
        let (api, ids) = (api2.clone(), ids2.clone());
        async move { api.retrieve_bytes(&ids[i]).await }
    })
    .await?;
    let retrieve = retrieved.summary(cpu.since(mark));

    let requests = settings.runs.div_ceil(BATCH_SIZE);
    eprintln!(
        "phase 2b: batch-triggering {} runs, {BATCH_SIZE} per request",
        requests * BATCH_SIZE
    );
    let mark = cpu.sample();
    let api3 = api.clone();
    let batched = drive("requests", requests, settings.connections, move |i| {
        let api = api3.clone();
        async move { api.batch_trigger(QUEUED_TASK, i, BATCH_SIZE).await }
    })
    .await?;
    let batch_trigger = batched.summary(cpu.since(mark));

    let end_to_end = end_to_end(settings, &api, &sdk, &cpu).await?;
    Ok(Report {
        trigger,
        retrieve,
        batch_trigger,
        end_to_end,
        memory: None,
    })
}

/// Phases 3 and 4: the in-process worker executes no-op runs.
async fn end_to_end(
    settings: &Settings,
    api: &Api,
    sdk: &Client,
    cpu: &CpuMeter,
) -> Result<EndToEnd> {
    let runs = settings.runs / 2;
    let progress = Arc::new(Progress {
        executed: AtomicU64::new(0),
        target: AtomicU64::new(runs as u64),
        last_run: Mutex::new(None),
        reached: Notify::new(),
    });
    let counted = progress.clone();
    let tasks =
        Tasks::new().task_with_context(NOOP_TASK, move |_payload: Value, context: TaskContext| {
            counted.executed_one(context.run_id);
            async { Ok::<_, String>(serde_json::json!({})) }
        });
    let options = WorkerOptions {
        concurrency: settings.worker_concurrency,
        // Only bounds how long the final shutdown waits for an idle long poll.
        dequeue_wait: Duration::from_secs(1),
        shutdown_grace: Duration::from_secs(10),
        ..WorkerOptions::new("runnel-bench")
    };
    let registered = Worker::new(sdk.clone(), options)
        .register(Arc::new(tasks))
        .await
        .context("registering the bench worker")?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let worker = tokio::spawn(registered.run(async {
        let _ = stopped.await;
    }));

    eprintln!(
        "phase 3: {runs} no-op runs end to end (worker concurrency {})",
        settings.worker_concurrency
    );
    let mark = cpu.sample();
    let started = Instant::now();
    let api3 = api.clone();
    let triggered = drive("triggered", runs, settings.connections, move |i| {
        let api = api3.clone();
        async move { api.trigger(NOOP_TASK, i).await }
    })
    .await?;
    let trigger_elapsed = started.elapsed();
    let ok = triggered.results.len();
    progress.target.store(ok as u64, Ordering::SeqCst);
    progress.wait_for_target(ok as u64).await?;
    // The task ran; the run counts once the server recorded its completion.
    let last = progress
        .last_run
        .lock()
        .expect("progress lock")
        .clone()
        .context("no run executed")?;
    api.wait_completed(&last).await?;
    let elapsed = started.elapsed();
    let cpu_used = cpu.since(mark);

    eprintln!("phase 4: {IDLE_RUNS} runs triggered one at a time");
    let target = progress.executed.load(Ordering::SeqCst) + IDLE_RUNS as u64;
    progress.target.store(target, Ordering::SeqCst);
    let mut idle_ids = Vec::with_capacity(IDLE_RUNS);
    let bar = progress_bar("triggered", IDLE_RUNS);
    for i in 0..IDLE_RUNS {
        idle_ids.push(api.trigger(NOOP_TASK, i).await?);
        bar.inc(1);
        tokio::time::sleep(IDLE_GAP).await;
    }
    bar.finish_and_clear();
    progress.wait_for_target(target).await?;
    let last = progress
        .last_run
        .lock()
        .expect("progress lock")
        .clone()
        .context("no run executed")?;
    api.wait_completed(&last).await?;

    let _ = stop.send(());
    let summary = worker.await.context("the bench worker panicked")?;

    eprintln!("reading the {ok} end-to-end runs back");
    let backlog_ids: Arc<Vec<String>> =
        Arc::new(triggered.results.into_iter().map(|(_, id)| id).collect());
    let backlog = start_latencies(api, settings.connections, backlog_ids).await?;
    let idle = start_latencies(api, settings.connections, Arc::new(idle_ids)).await?;
    Ok(EndToEnd {
        runs: ok,
        trigger_errors: triggered.errors,
        trigger_rate: ok as f64 / trigger_elapsed.as_secs_f64(),
        elapsed,
        cpu: cpu_used,
        backlog,
        idle,
        failed_attempts: summary.failed + summary.interrupted,
    })
}

/// What the no-op task saw, shared with the bench.
struct Progress {
    executed: AtomicU64,
    /// `reached` fires when `executed` gets here.
    target: AtomicU64,
    /// The run the most recent attempt belonged to.
    last_run: Mutex<Option<String>>,
    reached: Notify,
}

impl Progress {
    fn executed_one(&self, run_id: String) {
        *self.last_run.lock().expect("progress lock") = Some(run_id);
        let executed = self.executed.fetch_add(1, Ordering::SeqCst) + 1;
        if executed >= self.target.load(Ordering::SeqCst) {
            self.reached.notify_one();
        }
    }

    /// Waits until `target` attempts ran; fails when none ran for [`STALL_TIMEOUT`].
    async fn wait_for_target(&self, target: u64) -> Result<()> {
        let mut seen = self.executed.load(Ordering::SeqCst);
        let mut last_progress = Instant::now();
        let bar = progress_bar("executed", usize::try_from(target).unwrap_or(usize::MAX));
        loop {
            bar.set_position(self.executed.load(Ordering::SeqCst));
            if self.executed.load(Ordering::SeqCst) >= target {
                bar.finish_and_clear();
                return Ok(());
            }
            let _ = tokio::time::timeout(Duration::from_millis(500), self.reached.notified()).await;
            let now = self.executed.load(Ordering::SeqCst);
            if now != seen {
                seen = now;
                last_progress = Instant::now();
            } else if last_progress.elapsed() > STALL_TIMEOUT {
                bail!("the worker stalled: {now} of {target} attempts ran");
            }
        }
    }
}

/// Retrieves `ids` and measures `startedAt − createdAt` of each (milliseconds, as the
/// API gives them). Every run must be COMPLETED.
async fn start_latencies(
    api: &Api,
    connections: usize,
    ids: Arc<Vec<String>>,
) -> Result<Percentiles> {
    let api = api.clone();
    let read = ids.clone();
    let outcome = drive("read", ids.len(), connections, move |i| {
        let (api, ids) = (api.clone(), read.clone());
        async move {
            let run = api.retrieve_json(&ids[i]).await?;
            if run["status"] != "COMPLETED" {
                bail!("run {} is {} instead of COMPLETED", ids[i], run["status"]);
            }
            let time = |field: &str| {
                run[field]
                    .as_str()
                    .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                    .with_context(|| format!("run {} has no valid {field}", ids[i]))
            };
            let waited = time("startedAt")? - time("createdAt")?;
            Ok(waited.to_std().unwrap_or_default())
        }
    })
    .await?;
    if outcome.errors > 0 {
        bail!(
            "{} of {} runs could not be read back as completed: {}",
            outcome.errors,
            ids.len(),
            outcome.first_error.unwrap_or_default()
        );
    }
    let waits: Vec<Duration> = outcome.results.into_iter().map(|(_, wait)| wait).collect();
    Ok(Percentiles::of(waits))
}

/// The benchmark's HTTP calls, with the bench's own pool (not the SDK's).
#[derive(Clone)]
struct Api {
    http: reqwest::Client,
    url: String,
    key: String,
}

impl Api {
    /// Triggers one run of `task`; answers its id.
    async fn trigger(&self, task: &str, n: usize) -> Result<String> {
        let body = format!(r#"{{"payload":{{"n":{n}}},"options":{{"tags":["bench"]}}}}"#);
        let response = self
            .http
            .post(format!("{}/api/v1/tasks/{task}/trigger", self.url))
            .bearer_auth(&self.key)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await?;
        let reply: Value = json_reply(response).await?;
        reply["id"]
            .as_str()
            .map(str::to_owned)
            .context("the trigger answer has no id")
    }

    /// Triggers `size` runs of `task` in one `POST /api/v1/tasks/batch`; checks that
    /// every one was created.
    async fn batch_trigger(&self, task: &str, n: usize, size: usize) -> Result<()> {
        let items: Vec<Value> = (0..size)
            .map(|i| json!({"task": task, "payload": {"n": n * size + i}, "options": {"tags": ["bench"]}}))
            .collect();
        let response = self
            .http
            .post(format!("{}/api/v1/tasks/batch", self.url))
            .bearer_auth(&self.key)
            .json(&json!({ "items": items }))
            .send()
            .await?;
        let reply: Value = json_reply(response).await?;
        let created = reply["runs"].as_array().map_or(0, Vec::len);
        if created != size {
            bail!("the batch created {created} runs instead of {size}: {reply}");
        }
        Ok(())
    }

    /// Reads a run without decoding it (what a client that forwards it pays).
    async fn retrieve_bytes(&self, run_id: &str) -> Result<()> {
        let response = self
            .http
            .get(format!("{}/api/v3/runs/{run_id}", self.url))
            .bearer_auth(&self.key)
            .send()
            .await?;
        let status = response.status();
        let body = response.bytes().await?;
        if !status.is_success() {
            bail!("{status}: {}", String::from_utf8_lossy(&body));
        }
        Ok(())
    }

    async fn retrieve_json(&self, run_id: &str) -> Result<Value> {
        let response = self
            .http
            .get(format!("{}/api/v3/runs/{run_id}", self.url))
            .bearer_auth(&self.key)
            .send()
            .await?;
        json_reply(response).await
    }

    /// Polls the run until the server says COMPLETED.
    async fn wait_completed(&self, run_id: &str) -> Result<()> {
        let started = Instant::now();
        loop {
            let run = self.retrieve_json(run_id).await?;
            match run["status"].as_str() {
                Some("COMPLETED") => return Ok(()),
                Some("QUEUED" | "DEQUEUED" | "EXECUTING" | "REATTEMPTING") | None => {}
                Some(other) => bail!("run {run_id} ended {other}"),
            }
            if started.elapsed() > STALL_TIMEOUT {
                bail!(
                    "run {run_id} is still {} after {STALL_TIMEOUT:?}",
                    run["status"]
                );
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}

async fn json_reply(response: reqwest::Response) -> Result<Value> {
    let status = response.status();
    let body = response.bytes().await?;
    if !status.is_success() {
        bail!("{status}: {}", String::from_utf8_lossy(&body));
    }
    serde_json::from_slice(&body).context("the answer is not JSON")
}

/// What one concurrent phase produced.
struct Driven<T> {
    elapsed: Duration,
    /// Of the successful requests.
    latencies: Vec<Duration>,
    /// `(index, value)` of each success, in index order.
    results: Vec<(usize, T)>,
    errors: usize,
    first_error: Option<String>,
}

impl<T> Driven<T> {
    fn summary(&self, cpu: CpuUse) -> Phase {
        Phase {
            ok: self.results.len(),
            errors: self.errors,
            first_error: self.first_error.clone(),
            rate: self.results.len() as f64 / self.elapsed.as_secs_f64(),
            latency: Percentiles::of(self.latencies.clone()),
            cpu,
        }
    }
}

/// A bar of `len` steps on stderr, labelled `what`; drawn only when stderr is a terminal,
/// so a redirected stderr gets the phase lines alone.
fn progress_bar(what: &'static str, len: usize) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(
        Some(u64::try_from(len).unwrap_or(u64::MAX)),
        ProgressDrawTarget::stderr(),
    );
    let style = ProgressStyle::with_template(
        "  [{bar:40}] {pos}/{len} {msg} ({per_sec}, {elapsed_precise})",
    )
    .map(|style| style.progress_chars("=> "))
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar.set_message(what);
    bar
}

/// Runs `op(0..count)` with `connections` tasks pulling the next index from one counter;
/// a progress bar counts the finished operations as `what`.
async fn drive<T, F, Fut>(
    what: &'static str,
    count: usize,
    connections: usize,
    op: F,
) -> Result<Driven<T>>
where
    T: Send + 'static,
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<T>> + Send + 'static,
{
    struct Share<T> {
        latencies: Vec<Duration>,
        results: Vec<(usize, T)>,
        errors: usize,
        first_error: Option<String>,
    }
    let op = Arc::new(op);
    let next = Arc::new(AtomicUsize::new(0));
    let bar = progress_bar(what, count);
    let started = Instant::now();
    let mut clients = JoinSet::new();
    for _ in 0..connections.clamp(1, count.max(1)) {
        let (op, next, bar) = (op.clone(), next.clone(), bar.clone());
        clients.spawn(async move {
            let mut share = Share {
                latencies: Vec::new(),
                results: Vec::new(),
                errors: 0,
                first_error: None,
            };
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count {
                    break share;
                }
                let sent = Instant::now();
                let outcome = op(i).await;
                let latency = sent.elapsed();
                bar.inc(1);
                match outcome {
                    Ok(value) => {
                        share.latencies.push(latency);
                        share.results.push((i, value));
                    }
                    Err(error) => {
                        share.errors += 1;
                        share
                            .first_error
                            .get_or_insert_with(|| format!("{error:#}"));
                    }
                }
            }
        });
    }
    let mut driven = Driven {
        elapsed: Duration::ZERO,
        latencies: Vec::with_capacity(count),
        results: Vec::with_capacity(count),
        errors: 0,
        first_error: None,
    };
    while let Some(share) = clients.join_next().await {
        let share = share.context("a benchmark client panicked")?;
        driven.latencies.extend(share.latencies);
        driven.results.extend(share.results);
        driven.errors += share.errors;
        if driven.first_error.is_none() {
            driven.first_error = share.first_error;
        }
    }
    driven.elapsed = started.elapsed();
    bar.finish_and_clear();
    driven.results.sort_unstable_by_key(|(i, _)| *i);
    Ok(driven)
}

/// p50 and p99 by nearest rank.
#[derive(Debug, Clone, Copy, Default)]
struct Percentiles {
    p50: Duration,
    p99: Duration,
}

impl Percentiles {
    fn of(mut samples: Vec<Duration>) -> Percentiles {
        if samples.is_empty() {
            return Percentiles::default();
        }
        samples.sort_unstable();
        let rank = |p: f64| {
            let index = (p * samples.len() as f64).ceil() as usize;
            samples[index.clamp(1, samples.len()) - 1]
        };
        Percentiles {
            p50: rank(0.50),
            p99: rank(0.99),
        }
    }
}

/// A concurrent request phase.
struct Phase {
    ok: usize,
    errors: usize,
    first_error: Option<String>,
    /// Successful requests per second.
    rate: f64,
    latency: Percentiles,
    cpu: CpuUse,
}

/// Phases 3 and 4.
struct EndToEnd {
    runs: usize,
    trigger_errors: usize,
    /// Triggers per second while the worker was busy.
    trigger_rate: f64,
    /// First trigger to the last run COMPLETED.
    elapsed: Duration,
    cpu: CpuUse,
    /// `startedAt − createdAt` of phase 3's runs, triggered faster than they run.
    backlog: Percentiles,
    /// The same for phase 4's runs, triggered one at a time.
    idle: Percentiles,
    failed_attempts: u64,
}

/// The server's memory at the end, in KiB.
#[derive(Debug, Clone, Copy)]
struct Memory {
    rss_kib: u64,
    peak_kib: u64,
}

struct Report {
    trigger: Phase,
    retrieve: Phase,
    /// One request per [`BATCH_SIZE`] runs.
    batch_trigger: Phase,
    end_to_end: EndToEnd,
    memory: Option<Memory>,
}

impl Report {
    fn render(&self, settings: &Settings, backend: &str) -> String {
        let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
        let mut out = String::new();
        let _ = writeln!(out, "## runnel bench\n");
        let _ = writeln!(
            out,
            "runnel {} · {backend} · {cores} cores · {} runs · {} connections · worker concurrency {}\n",
            env!("CARGO_PKG_VERSION"),
            group(settings.runs as f64),
            settings.connections,
            settings.worker_concurrency,
        );
        let e2e = &self.end_to_end;
        let mut rows: Vec<(String, String)> = vec![
            (
                "trigger".into(),
                format!("{} runs/s", group(self.trigger.rate)),
            ),
            (
                "trigger latency p50 / p99".into(),
                pair(self.trigger.latency),
            ),
            (
                "retrieve".into(),
                format!("{} req/s", group(self.retrieve.rate)),
            ),
            (
                "retrieve latency p50 / p99".into(),
                pair(self.retrieve.latency),
            ),
            (
                format!("batch trigger ({BATCH_SIZE} runs per request)"),
                format!(
                    "{} runs/s",
                    group(self.batch_trigger.rate * BATCH_SIZE as f64)
                ),
            ),
            (
                "batch trigger latency p50 / p99 (per request)".into(),
                pair(self.batch_trigger.latency),
            ),
            (
                format!(
                    "end-to-end no-op runs ({} runs, first trigger → last COMPLETED)",
                    group(e2e.runs as f64)
                ),
                format!(
                    "{} runs/s ({:.2} s)",
                    group(e2e.runs as f64 / e2e.elapsed.as_secs_f64()),
                    e2e.elapsed.as_secs_f64()
                ),
            ),
            (
                "trigger while the worker runs".into(),
                format!("{} runs/s", group(e2e.trigger_rate)),
            ),
            (
                "trigger→start p50 / p99, backlog (end-to-end runs)".into(),
                pair(e2e.backlog),
            ),
            (
                format!("trigger→start p50 / p99, idle ({IDLE_RUNS} runs one at a time)"),
                pair(e2e.idle),
            ),
        ];
        if let Some(memory) = self.memory {
            rows.push((
                "server RSS at the end / peak (VmRSS / VmHWM)".into(),
                format!("{} / {} MiB", memory.rss_kib / 1024, memory.peak_kib / 1024),
            ));
        }
        rows.push((
            "CPU cores busy, server + bench incl. worker (trigger / retrieve / end to end)".into(),
            format!("{} / {} / {}", self.trigger.cpu, self.retrieve.cpu, e2e.cpu),
        ));
        let errors = self.trigger.errors
            + self.retrieve.errors
            + self.batch_trigger.errors
            + e2e.trigger_errors;
        rows.push((
            "failed requests / failed attempts".into(),
            format!("{errors} / {}", e2e.failed_attempts),
        ));
        let _ = writeln!(out, "| metric | value |\n|---|---|");
        for (metric, value) in rows {
            let _ = writeln!(out, "| {metric} | {value} |");
        }
        for (name, phase) in [
            ("trigger", &self.trigger),
            ("retrieve", &self.retrieve),
            ("batch trigger", &self.batch_trigger),
        ] {
            if let Some(error) = &phase.first_error {
                let _ = writeln!(
                    out,
                    "\n{} of {} {name} requests failed; the first: {error}",
                    phase.errors,
                    phase.errors + phase.ok
                );
            }
        }
        out
    }
}

fn pair(p: Percentiles) -> String {
    format!("{} / {}", millis(p.p50), millis(p.p99))
}

fn millis(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1000.0;
    if ms < 10.0 {
        format!("{ms:.1} ms")
    } else {
        format!("{ms:.0} ms")
    }
}

/// `12345.6` → `12,346`.
fn group(value: f64) -> String {
    let digits = format!("{:.0}", value.max(0.0));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The `runnel serve` child.
struct ServerProcess {
    child: tokio::process::Child,
    pid: u32,
    /// `http://127.0.0.1:PORT`
    url: String,
    /// The dev secret key the server printed at its first start.
    key: String,
}

impl ServerProcess {
    /// Spawns `runnel serve` and waits for its address and dev key on stdout.
    async fn start(store_flags: &[String], log: &Path) -> Result<ServerProcess> {
        let exe = std::env::current_exe().context("locating the runnel executable")?;
        let log_file =
            std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let mut child = tokio::process::Command::new(exe)
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(store_flags)
            // The flags say where the data goes; these would compete with them.
            .env_remove("RUNNEL_DATABASE_URL")
            .env_remove("RUNNEL_DATA_DIR")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log_file)
            .kill_on_drop(true)
            .spawn()
            .context("starting runnel serve")?;
        let pid = child.id().context("runnel serve exited at once")?;
        let stdout = child.stdout.take().context("no stdout from runnel serve")?;
        let mut lines = BufReader::new(stdout).lines();
        let (mut url, mut key) = (None, None);
        let read = async {
            while url.is_none() || key.is_none() {
                let Some(line) = lines.next_line().await? else {
                    bail!("runnel serve exited before it was ready");
                };
                if let Some(addr) = line.strip_prefix("Runnel listening on ") {
                    url = Some(addr.trim().to_owned());
                } else if let Some((_, secret)) = line.split_once("keep it): ") {
                    key = Some(secret.trim().to_owned());
                }
            }
            Ok(())
        };
        let ready = match tokio::time::timeout(SERVER_START_TIMEOUT, read).await {
            Ok(ready) => ready,
            Err(_) => Err(anyhow::anyhow!(
                "runnel serve did not start within {SERVER_START_TIMEOUT:?}"
            )),
        };
        if let Err(error) = ready {
            return Err(error.context(format!("server log:\n{}", log_tail(log))));
        }
        // Keep reading, so the server never writes into a closed pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(ServerProcess {
            child,
            pid,
            url: url.expect("read above"),
            key: key.expect("read above"),
        })
    }

    /// VmRSS and VmHWM from `/proc/<pid>/status`.
    fn memory(&self) -> Option<Memory> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid)).ok()?;
        let field = |name: &str| {
            status
                .lines()
                .find_map(|line| line.strip_prefix(name))
                .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        };
        Some(Memory {
            rss_kib: field("VmRSS:")?,
            peak_kib: field("VmHWM:")?,
        })
    }

    /// SIGTERM (a graceful stop), then SIGKILL after [`SERVER_STOP_TIMEOUT`].
    async fn stop(mut self) {
        let pid = nix::unistd::Pid::from_raw(self.pid as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        match tokio::time::timeout(SERVER_STOP_TIMEOUT, self.child.wait()).await {
            Ok(Ok(status)) if !status.success() => {
                tracing::warn!(%status, "runnel serve ended badly");
            }
            Ok(_) => {}
            Err(_) => {
                tracing::warn!("runnel serve did not stop after SIGTERM; killing it");
                let _ = self.child.kill().await;
            }
        }
    }
}

fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
}

/// A database of its own on the given PostgreSQL server, dropped at the end.
struct ScratchDatabase {
    /// The URL given: the database the scratch one is created from and dropped from.
    admin_url: String,
    name: String,
    url: String,
    server_version: String,
}

impl ScratchDatabase {
    async fn create(admin_url: &str) -> Result<ScratchDatabase> {
        use sqlx::Connection as _;
        if !(admin_url.starts_with("postgres://") || admin_url.starts_with("postgresql://")) {
            bail!(
                "--database-url must be a postgres:// URL (SQLite runs in a temporary directory)"
            );
        }
        let mut url = reqwest::Url::parse(admin_url).context("--database-url is not a URL")?;
        let unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let name = format!("runnel_bench_{unix}_{}", std::process::id());
        let mut admin = sqlx::PgConnection::connect(admin_url)
            .await
            .context("connecting to PostgreSQL")?;
        let server_version: String = sqlx::query_scalar("SHOW server_version")
            .fetch_one(&mut admin)
            .await
            .context("reading the PostgreSQL version")?;
        sqlx::raw_sql(&format!("CREATE DATABASE \"{name}\""))
            .execute(&mut admin)
            .await
            .with_context(|| format!("creating database {name}"))?;
        let _ = admin.close().await;
        url.set_path(&format!("/{name}"));
        let major = server_version
            .split_whitespace()
            .next()
            .unwrap_or("")
            .to_owned();
        Ok(ScratchDatabase {
            admin_url: admin_url.to_owned(),
            name,
            url: url.to_string(),
            server_version: major,
        })
    }

    async fn drop_database(&self) -> Result<()> {
        use sqlx::Connection as _;
        let mut admin = sqlx::PgConnection::connect(&self.admin_url).await?;
        // FORCE: a server that had to be killed may leave connections behind.
        sqlx::raw_sql(&format!(
            "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
            self.name
        ))
        .execute(&mut admin)
        .await?;
        let _ = admin.close().await;
        Ok(())
    }
}

/// CPU time of the server child and of this process, from `/proc/<pid>/stat`.
struct CpuMeter {
    server: PathBuf,
}

/// CPU time used by the server and by the bench itself over a phase, as busy cores.
#[derive(Debug, Clone, Copy)]
struct CpuUse {
    server: f64,
    bench: f64,
}

impl std::fmt::Display for CpuUse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:.1} + {:.1}", self.server, self.bench)
    }
}

#[derive(Debug, Clone, Copy)]
struct CpuMark {
    at: Instant,
    server: Duration,
    bench: Duration,
}

impl CpuMeter {
    fn new(server_pid: u32) -> CpuMeter {
        CpuMeter {
            server: PathBuf::from(format!("/proc/{server_pid}/stat")),
        }
    }

    fn sample(&self) -> CpuMark {
        CpuMark {
            at: Instant::now(),
            server: cpu_time(&self.server),
            bench: cpu_time(Path::new("/proc/self/stat")),
        }
    }

    fn since(&self, mark: CpuMark) -> CpuUse {
        let now = self.sample();
        let wall = now.at.duration_since(mark.at).as_secs_f64().max(1e-9);
        CpuUse {
            server: now.server.saturating_sub(mark.server).as_secs_f64() / wall,
            bench: now.bench.saturating_sub(mark.bench).as_secs_f64() / wall,
        }
    }
}

/// utime + stime of a process (zero when unreadable). `/proc` counts in USER_HZ ticks,
/// which is 100 per second on Linux.
fn cpu_time(stat: &Path) -> Duration {
    let Ok(text) = std::fs::read_to_string(stat) else {
        return Duration::ZERO;
    };
    // Fields after the command name, which is in parentheses and may hold spaces:
    // state is field 3, utime 14 and stime 15.
    let Some((_, rest)) = text.rsplit_once(')') else {
        return Duration::ZERO;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |index: usize| {
        fields
            .get(index)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Duration::from_millis((ticks(11) + ticks(12)) * 10)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_by_nearest_rank() {
        let samples: Vec<Duration> = (1..=100).rev().map(Duration::from_millis).collect();
        let p = Percentiles::of(samples);
        assert_eq!(p.p50, Duration::from_millis(50));
        assert_eq!(p.p99, Duration::from_millis(99));
        let one = Percentiles::of(vec![Duration::from_millis(7)]);
        assert_eq!(
            (one.p50, one.p99),
            (Duration::from_millis(7), Duration::from_millis(7))
        );
        assert_eq!(Percentiles::of(Vec::new()).p99, Duration::ZERO);
    }

    #[test]
    fn groups_thousands() {
        for (value, text) in [
            (0.0, "0"),
            (999.4, "999"),
            (1000.0, "1,000"),
            (1234567.0, "1,234,567"),
        ] {
            assert_eq!(group(value), text);
        }
    }
}
