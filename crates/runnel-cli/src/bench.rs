//! `runnel bench`: the project's own benchmark (DESIGN §6), in the phases the peer
//! benchmarks use (issue 15), so a side-by-side is mechanical. It starts a real
//! `runnel serve` as a child process on a scratch database, drives it over HTTP from this
//! process and prints one markdown table, or with `--json` one JSON line per measurement.
//!
//! ```text
//!   runnel bench ──spawn──► runnel serve --listen 127.0.0.1:0 (temp dir, or a fresh PG db)
//!        │  reads "Runnel listening on http://ADDR" and the dev key from its stdout
//!        │  registers `bench-queued` (never executed) and the in-process SDK worker for
//!        │  `bench-noop`, which does not run yet: runs of both tasks are QUEUED
//!        │
//!   enqueue_bulk        N runs of bench-noop, streamed batches of 1,000 (v3 batches API)
//!   enqueue_single      2,000 triggers of bench-queued, each awaited before the next
//!   concurrent_trigger  N triggers of bench-queued from C clients
//!   process             the worker starts (concurrency W) and drains the N bulk runs;
//!                       the clock stops when the server has the last one COMPLETED
//!   latency             200 runs triggered 10 ms apart into the idle queue:
//!                       trigger→start from the server's startedAt − createdAt
//!   retrieve            N retrieves of the concurrent_trigger runs from C clients
//!   rss                 the server's peak (VmHWM)
//!   rss_stored          more bulk batches of bench-queued until --stored-runs are
//!                       stored, 2,000 retrieves, then VmRSS and VmHWM again
//!        │
//!   SIGTERM; the PG database is dropped
//! ```
//!
//! The worker registers before enqueue_bulk so that `process` measures dequeue, execute
//! and complete alone, against a full queue; the single and concurrent triggers go to the
//! other task so `process` drains exactly the bulk runs. Client, worker and server share
//! the machine, so the figures are what one box does with everything on it: the table's
//! CPU column says how busy each side was.
//!
//! Failures: `process` and `latency` fail when no attempt ran for [`STALL_TIMEOUT`] or
//! when a run read back is not COMPLETED; failed triggers, batches and retrieves are
//! counted and reported, not fatal. The child is killed when this process gives up on it
//! (`kill_on_drop`), including on errors, and the scratch PostgreSQL database is dropped
//! even when a phase failed. The server's own warnings (it runs with `RUST_LOG=warn`)
//! are printed at the end, on stderr.
//!
//! Output: the table, or the JSON lines, alone on stdout; on stderr a line per phase and,
//! when stderr is a terminal, a progress bar of the phase's requests or runs.

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

/// Runs of enqueue_bulk (and process), triggers of concurrent_trigger, retrieves of
/// retrieve.
const RUNS_DEFAULT: u64 = 20_000;
const RUNS_QUICK: u64 = 500;
/// Triggers of enqueue_single, one at a time.
const SINGLES_DEFAULT: usize = 2_000;
const SINGLES_QUICK: usize = 100;
/// Runs of the latency phase, triggered one at a time.
const LATENCY_RUNS_DEFAULT: usize = 200;
const LATENCY_RUNS_QUICK: usize = 50;
/// Pause after each trigger of the latency phase: long enough for the run to start, so
/// each one finds the queue empty and the worker waiting.
const LATENCY_GAP: Duration = Duration::from_millis(10);
/// Runs stored for the rss_stored reading.
const STORED_RUNS_DEFAULT: u64 = 1_000_000;
const STORED_RUNS_QUICK: u64 = 5_000;
/// Retrieves between filling the table and the rss_stored reading, so the reading
/// includes what serving reads against the big table costs.
const STORED_RETRIEVES_DEFAULT: usize = 2_000;
const STORED_RETRIEVES_QUICK: usize = 200;
/// Realtime subscriptions open at once in the realtime phase.
const SUBSCRIPTIONS_DEFAULT: u64 = 1_000;
const SUBSCRIPTIONS_QUICK: u64 = 50;
/// How long the realtime phase holds its subscriptions idle while it reads the server's
/// processor use.
const SUBSCRIPTIONS_IDLE: Duration = Duration::from_secs(3);
/// Concurrent HTTP clients.
const CONNECTIONS_DEFAULT: u64 = 32;
/// Attempts the in-process worker runs at once.
const WORKER_CONCURRENCY_DEFAULT: u64 = 24;
/// Runs per streamed batch: the most one batch holds.
const BATCH_SIZE: usize = runnel_core::batch::MAX_RUN_COUNT as usize;
/// Batch uploads at once in enqueue_bulk (at most `--connections`): a few, as a
/// producer that enqueues in bulk would run.
const BULK_UPLOADS: usize = 4;
/// Batch uploads at once while filling the table for rss_stored (at most
/// `--connections`): as fast as the server takes them, below its per-environment
/// ceiling of uploads in progress (16 by default, 429 past it).
const STORED_UPLOADS: usize = 8;
/// The task of enqueue_single, concurrent_trigger and the rss_stored fill: registered,
/// never executed.
const QUEUED_TASK: &str = "bench-queued";
/// The no-op task of enqueue_bulk, process and latency.
const NOOP_TASK: &str = "bench-noop";
/// How long the server may take to print its address (migrations run first).
const SERVER_START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the server gets to stop after SIGTERM before it is killed.
const SERVER_STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// process and latency give up when no run completed for this long.
const STALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Timeout of one benchmark request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Lines of the server's log shown when it fails to start.
const LOG_TAIL_LINES: usize = 20;

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Runs of enqueue_bulk (drained by process), triggers of concurrent_trigger and
    /// retrieves of retrieve [default: 20000; 500 with --quick].
    #[arg(long, value_parser = clap::value_parser!(u64).range(2..=10_000_000))]
    runs: Option<u64>,
    /// Concurrent HTTP clients.
    #[arg(long, default_value_t = CONNECTIONS_DEFAULT, value_parser = clap::value_parser!(u64).range(1..=4096))]
    connections: u64,
    /// Attempts the in-process worker runs at once in process and latency.
    #[arg(long, default_value_t = WORKER_CONCURRENCY_DEFAULT, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    worker_concurrency: u64,
    /// Runs stored when memory is read the second time (rss_stored) [default: 1000000;
    /// 5000 with --quick].
    #[arg(long, value_parser = clap::value_parser!(u64).range(0..=100_000_000))]
    stored_runs: Option<u64>,
    /// Realtime subscriptions held open at once in the realtime phase, one per queued
    /// run [default: 1000; 50 with --quick].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    subscriptions: Option<u64>,
    /// Every phase small (500 runs, 100 single triggers, 50 latency runs, 5,000 stored
    /// runs): a smoke test that takes seconds.
    #[arg(long)]
    quick: bool,
    /// One JSON object per line on stdout, one per measurement, instead of the table.
    #[arg(long)]
    json: bool,
    /// A PostgreSQL server to benchmark against, `postgres://user@host:5432/db`: a fresh
    /// database `runnel_bench_…` is created next to `db` and dropped afterwards. Without
    /// it the server uses SQLite in a temporary directory.
    #[arg(long)]
    database_url: Option<String>,
}

pub async fn run(args: BenchArgs) -> Result<()> {
    let (runs, singles, latency_runs, stored_runs, stored_retrieves) = if args.quick {
        (
            RUNS_QUICK,
            SINGLES_QUICK,
            LATENCY_RUNS_QUICK,
            STORED_RUNS_QUICK,
            STORED_RETRIEVES_QUICK,
        )
    } else {
        (
            RUNS_DEFAULT,
            SINGLES_DEFAULT,
            LATENCY_RUNS_DEFAULT,
            STORED_RUNS_DEFAULT,
            STORED_RETRIEVES_DEFAULT,
        )
    };
    let settings = Settings {
        runs: usize::try_from(args.runs.unwrap_or(runs)).context("--runs is too large")?,
        singles,
        latency_runs,
        stored_runs: usize::try_from(args.stored_runs.unwrap_or(stored_runs))
            .context("--stored-runs is too large")?,
        stored_retrieves,
        connections: usize::try_from(args.connections).context("--connections is too large")?,
        worker_concurrency: usize::try_from(args.worker_concurrency)
            .context("--worker-concurrency is too large")?,
        subscriptions: usize::try_from(args.subscriptions.unwrap_or(if args.quick {
            SUBSCRIPTIONS_QUICK
        } else {
            SUBSCRIPTIONS_DEFAULT
        }))
        .context("--subscriptions is too large")?,
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
    let variant = if scratch.is_some() {
        "postgres"
    } else {
        "sqlite"
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
    if args.json {
        for line in report.json_lines(variant) {
            println!("{line}");
        }
        // The lines have no room for failures; say them where the progress goes.
        for failure in report.failures() {
            eprintln!("{failure}");
        }
    } else {
        print!("{}", report.render(&settings, &backend));
    }
    Ok(())
}

/// The benchmark's shape, from the flags.
struct Settings {
    runs: usize,
    singles: usize,
    latency_runs: usize,
    stored_runs: usize,
    stored_retrieves: usize,
    connections: usize,
    worker_concurrency: usize,
    subscriptions: usize,
}

/// Starts the server, runs every phase against it and stops it.
async fn bench_server(settings: &Settings, store_flags: &[String], log: &Path) -> Result<Report> {
    let server = ServerProcess::start(store_flags, log).await?;
    let measured = measure(settings, &server).await;
    server.stop().await;
    // Warnings and errors the server logged (RUST_LOG=warn) say what went wrong under load.
    let logged = log_tail(log);
    if !logged.is_empty() {
        eprintln!("the server logged (last {LOG_TAIL_LINES} lines):\n{logged}");
    }
    measured
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

    // The no-op worker registers now and runs from `process` on: the bulk runs wait
    // QUEUED for it, and `process` starts against a full queue.
    let progress = Arc::new(Progress {
        executed: AtomicU64::new(0),
        target: AtomicU64::new(u64::MAX),
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

    let uploads = settings.connections.min(BULK_UPLOADS);
    eprintln!(
        "enqueue_bulk: {} runs in batches of {BATCH_SIZE}, {uploads} uploads at once",
        settings.runs
    );
    let (enqueue_bulk, batch_ids) = enqueue_batches(
        &api,
        &cpu,
        "enqueue_bulk",
        NOOP_TASK,
        settings.runs,
        uploads,
    )
    .await?;
    let Some(bulk_runs) = enqueue_bulk.n.filter(|n| *n > 0) else {
        bail!(
            "no batch succeeded: {}",
            enqueue_bulk
                .first_error
                .as_deref()
                .unwrap_or("no error recorded")
        );
    };

    eprintln!(
        "enqueue_single: {} triggers, one at a time",
        settings.singles
    );
    let mark = cpu.sample();
    let api1 = api.clone();
    let singles = drive("triggered", settings.singles, 1, move |i| {
        let api = api1.clone();
        async move { api.trigger(QUEUED_TASK, i).await }
    })
    .await?;
    let enqueue_single = singles.measurement("enqueue_single", 1, cpu.since(mark));

    eprintln!(
        "concurrent_trigger: {} triggers from {} clients",
        settings.runs, settings.connections
    );
    let mark = cpu.sample();
    let api2 = api.clone();
    let triggered = drive("triggered", settings.runs, settings.connections, move |i| {
        let api = api2.clone();
        async move { api.trigger(QUEUED_TASK, i).await }
    })
    .await?;
    let concurrent_trigger =
        triggered.measurement("concurrent_trigger", settings.connections, cpu.since(mark));
    let ids: Vec<String> = triggered.results.into_iter().map(|(_, id)| id).collect();
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

    eprintln!(
        "process: draining {bulk_runs} runs at worker concurrency {}",
        settings.worker_concurrency
    );
    progress.target.store(bulk_runs as u64, Ordering::SeqCst);
    let mark = cpu.sample();
    let started = Instant::now();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let worker = tokio::spawn(registered.run(async {
        let _ = stopped.await;
    }));
    progress.wait_for_target(bulk_runs as u64).await?;
    // The task ran; the run counts once the server recorded its completion.
    let last = progress.last_run()?;
    api.wait_completed(&last).await?;
    let elapsed = started.elapsed();
    let process = Measurement {
        concurrency: Some(settings.worker_concurrency),
        n: Some(bulk_runs),
        rate: Some(bulk_runs as f64 / elapsed.as_secs_f64()),
        cpu: Some(cpu.since(mark)),
        ..Measurement::new("process")
    };
    eprintln!("process: reading the {bulk_runs} runs back");
    let mut bulk_ids = Vec::with_capacity(bulk_runs);
    for batch in &batch_ids {
        bulk_ids.extend(api.batch_runs(batch).await?);
    }
    start_latencies(&api, settings.connections, Arc::new(bulk_ids)).await?;

    eprintln!(
        "latency: {} runs triggered {LATENCY_GAP:?} apart",
        settings.latency_runs
    );
    let target = progress.executed.load(Ordering::SeqCst) + settings.latency_runs as u64;
    progress.target.store(target, Ordering::SeqCst);
    let mark = cpu.sample();
    let mut latency_ids = Vec::with_capacity(settings.latency_runs);
    let bar = progress_bar("triggered", settings.latency_runs);
    for i in 0..settings.latency_runs {
        latency_ids.push(api.trigger(NOOP_TASK, i).await?);
        bar.inc(1);
        tokio::time::sleep(LATENCY_GAP).await;
    }
    bar.finish_and_clear();
    progress.wait_for_target(target).await?;
    let last = progress.last_run()?;
    api.wait_completed(&last).await?;
    let latency_cpu = cpu.since(mark);
    let _ = stop.send(());
    let summary = worker.await.context("the bench worker panicked")?;
    let latency = Measurement {
        concurrency: Some(1),
        n: Some(latency_ids.len()),
        latency: Some(start_latencies(&api, settings.connections, Arc::new(latency_ids)).await?),
        cpu: Some(latency_cpu),
        ..Measurement::new("latency")
    };

    eprintln!(
        "retrieve: {} retrieves from {} clients",
        ids.len(),
        settings.connections
    );
    let mark = cpu.sample();
    let ids = Arc::new(ids);
    let (api3, ids3) = (api.clone(), ids.clone());
    let retrieved = drive("retrieved", ids.len(), settings.connections, move |i| {
        let (api, ids) = (api3.clone(), ids3.clone());
        async move { api.retrieve_bytes(&ids[i]).await }
    })
    .await?;
    let retrieve = retrieved.measurement("retrieve", settings.connections, cpu.since(mark));

    let rss = Measurement {
        memory: server.memory(),
        ..Measurement::new("rss")
    };

    let (realtime, realtime_idle) = subscriptions(settings, server, &api, &cpu, &ids).await?;

    let stored = [
        &enqueue_bulk,
        &enqueue_single,
        &concurrent_trigger,
        &latency,
    ]
    .iter()
    .filter_map(|m| m.n)
    .sum::<usize>();
    let fill_runs = settings.stored_runs.saturating_sub(stored);
    let uploads = settings.connections.min(STORED_UPLOADS);
    eprintln!(
        "rss_stored: {fill_runs} more runs in batches of {BATCH_SIZE}, {uploads} uploads at once, to store {}",
        stored + fill_runs
    );
    let (fill, _) =
        enqueue_batches(&api, &cpu, "stored_fill", QUEUED_TASK, fill_runs, uploads).await?;
    let stored = stored + fill.n.unwrap_or(0);
    eprintln!(
        "rss_stored: {} runs stored; {} retrieves from {} clients",
        stored, settings.stored_retrieves, settings.connections
    );
    let (api4, ids4) = (api.clone(), ids.clone());
    let reread = drive(
        "retrieved",
        settings.stored_retrieves,
        settings.connections,
        move |i| {
            let (api, ids) = (api4.clone(), ids4.clone());
            async move { api.retrieve_bytes(&ids[i % ids.len()]).await }
        },
    )
    .await?;
    let rss_stored = Measurement {
        n: Some(stored),
        memory: server.memory(),
        errors: reread.errors,
        first_error: reread.first_error,
        ..Measurement::new("rss_stored")
    };

    Ok(Report {
        measurements: vec![
            enqueue_bulk,
            enqueue_single,
            concurrent_trigger,
            process,
            latency,
            retrieve,
            rss,
            realtime_idle,
            realtime,
            rss_stored,
        ],
        fill,
        failed_attempts: summary.failed + summary.interrupted,
    })
}

/// The realtime phase: one subscription per queued run in `ids` (the SDK's
/// `subscribeToRun`: a snapshot, then a live long poll), all held at once; the server's
/// memory and processor use while they wait idle (`realtime_idle`), then every run is
/// canceled and each subscription's answer timed from its run's cancel (`realtime`:
/// cancel → the subscriber hears of it).
async fn subscriptions(
    settings: &Settings,
    server: &ServerProcess,
    api: &Api,
    cpu: &CpuMeter,
    ids: &Arc<Vec<String>>,
) -> Result<(Measurement, Measurement)> {
    let n = settings.subscriptions.min(ids.len());
    let before = server.memory();
    eprintln!("realtime: {n} subscriptions, one per queued run");
    let (api1, ids1) = (api.clone(), ids.clone());
    let opened = drive("subscribed", n, settings.connections, move |i| {
        let (api, ids) = (api1.clone(), ids1.clone());
        async move { api.subscribe(&ids[i]).await }
    })
    .await?;
    if let Some(error) = &opened.first_error {
        anyhow::bail!(
            "realtime: {} subscriptions failed; the first: {error}",
            opened.errors
        );
    }
    let mut handles: Vec<(usize, (String, String))> = opened.results;
    handles.sort_by_key(|(i, _)| *i);
    let mut polls = tokio::task::JoinSet::new();
    for (i, (handle, offset)) in handles {
        let api = api.clone();
        let id = ids[i].clone();
        polls.spawn(async move {
            let status = api.live_poll(&id, &handle, &offset).await;
            (i, status, Instant::now())
        });
    }
    // Every poll reaches the server and waits, then the server is left alone.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mark = cpu.sample();
    tokio::time::sleep(SUBSCRIPTIONS_IDLE).await;
    let idle = Measurement {
        n: Some(n),
        concurrency: Some(n),
        memory: server.memory(),
        cpu: Some(cpu.since(mark)),
        ..Measurement::new("realtime_idle")
    };
    if let (Some(before), Some(held)) = (before, idle.memory) {
        eprintln!(
            "realtime: {n} subscriptions held: server RSS {:.1} → {:.1} MiB ({:+.1} KiB each)",
            before.rss_kib as f64 / 1024.0,
            held.rss_kib as f64 / 1024.0,
            (held.rss_kib as f64 - before.rss_kib as f64) / n.max(1) as f64,
        );
    }
    let canceled_at = Arc::new(Mutex::new(vec![None; n]));
    let (api2, ids2, marks) = (api.clone(), ids.clone(), canceled_at.clone());
    let mark = cpu.sample();
    let started = Instant::now();
    let canceled = drive("canceled", n, settings.connections, move |i| {
        let (api, ids, marks) = (api2.clone(), ids2.clone(), marks.clone());
        async move {
            let at = Instant::now();
            api.cancel(&ids[i]).await?;
            marks.lock().expect("cancel marks")[i] = Some(at);
            Ok(())
        }
    })
    .await?;
    let mut latencies = Vec::with_capacity(n);
    let mut errors = canceled.errors;
    let mut first_error = canceled.first_error;
    while let Some(joined) = polls.join_next().await {
        let (i, status, answered) = joined.context("a subscription task panicked")?;
        match status {
            Ok(status) if status == "CANCELED" => {
                if let Some(at) = canceled_at.lock().expect("cancel marks")[i] {
                    latencies.push(answered.saturating_duration_since(at));
                }
            }
            Ok(status) => {
                errors += 1;
                first_error.get_or_insert(format!("a subscription heard {status}, not CANCELED"));
            }
            Err(error) => {
                errors += 1;
                first_error.get_or_insert(format!("{error:#}"));
            }
        }
    }
    let elapsed = started.elapsed().as_secs_f64().max(1e-9);
    let realtime = Measurement {
        n: Some(n),
        concurrency: Some(n),
        rate: Some(latencies.len() as f64 / elapsed),
        latency: Some(Percentiles::of(latencies)),
        cpu: Some(cpu.since(mark)),
        errors,
        first_error,
        ..Measurement::new("realtime")
    };
    Ok((realtime, idle))
}

/// Creates `runs` runs of `task` in streamed batches of [`BATCH_SIZE`], `uploads` at
/// once; answers the measurement (`n` = runs created, the rate in runs per second, the
/// latencies per batch) and the ids of the batches created.
async fn enqueue_batches(
    api: &Api,
    cpu: &CpuMeter,
    mode: &'static str,
    task: &'static str,
    runs: usize,
    uploads: usize,
) -> Result<(Measurement, Vec<String>)> {
    let mark = cpu.sample();
    let api = api.clone();
    let driven = drive("batches", runs.div_ceil(BATCH_SIZE), uploads, move |i| {
        let api = api.clone();
        let first = i * BATCH_SIZE;
        let size = BATCH_SIZE.min(runs - first);
        async move {
            let id = api.batch_stream(task, first, size).await?;
            Ok::<_, anyhow::Error>((id, size))
        }
    })
    .await?;
    let created: usize = driven.results.iter().map(|(_, (_, size))| size).sum();
    let measurement = Measurement {
        concurrency: Some(uploads),
        n: Some(created),
        rate: Some(created as f64 / driven.elapsed.as_secs_f64()),
        latency: Some(Percentiles::of(driven.latencies.clone())),
        cpu: Some(cpu.since(mark)),
        errors: driven.errors,
        first_error: driven.first_error.clone(),
        ..Measurement::new(mode)
    };
    let ids = driven.results.into_iter().map(|(_, (id, _))| id).collect();
    Ok((measurement, ids))
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

    /// The run the most recent attempt belonged to.
    fn last_run(&self) -> Result<String> {
        self.last_run
            .lock()
            .expect("progress lock")
            .clone()
            .context("no run executed")
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
/// API gives them). Every run must be COMPLETED: one still finishing (its attempt ran
/// but the completion is in flight) is waited for.
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
            let mut run = api.retrieve_json(&ids[i]).await?;
            if run["status"] != "COMPLETED" {
                api.wait_completed(&ids[i]).await?;
                run = api.retrieve_json(&ids[i]).await?;
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

    /// Creates runs `first..first + size` of `task` as one streamed batch, the SDK's
    /// way: `POST /api/v3/batches`, then its items as one NDJSON body. Checks that the
    /// batch took every item and sealed; answers its id.
    async fn batch_stream(&self, task: &str, first: usize, size: usize) -> Result<String> {
        let response = self
            .http
            .post(format!("{}/api/v3/batches", self.url))
            .bearer_auth(&self.key)
            .json(&json!({ "runCount": size }))
            .send()
            .await?;
        let created = json_reply(response).await?;
        let id = created["id"]
            .as_str()
            .context("the batch create answer has no id")?
            .to_owned();
        let mut items = String::with_capacity(size * 96);
        for index in 0..size {
            let _ = writeln!(
                items,
                r#"{{"index":{index},"task":"{task}","payload":{{"n":{}}},"options":{{"tags":["bench"]}}}}"#,
                first + index
            );
        }
        let response = self
            .http
            .post(format!("{}/api/v3/batches/{id}/items", self.url))
            .bearer_auth(&self.key)
            .header(reqwest::header::CONTENT_TYPE, "application/x-ndjson")
            .body(items)
            .send()
            .await?;
        let reply = json_reply(response).await?;
        if reply["sealed"] != true || reply["itemsAccepted"].as_u64() != Some(size as u64) {
            bail!("batch {id} did not take its {size} items: {reply}");
        }
        Ok(id)
    }

    /// The run ids of a batch, in index order.
    async fn batch_runs(&self, batch_id: &str) -> Result<Vec<String>> {
        let response = self
            .http
            .get(format!("{}/api/v1/batches/{batch_id}", self.url))
            .bearer_auth(&self.key)
            .send()
            .await?;
        let batch = json_reply(response).await?;
        let runs = batch["runs"]
            .as_array()
            .with_context(|| format!("batch {batch_id} lists no runs: {batch}"))?;
        runs.iter()
            .map(|id| {
                id.as_str()
                    .map(str::to_owned)
                    .context("a batch run id is not a string")
            })
            .collect()
    }

    /// Reads a run without decoding it (what a client that forwards it pays).
    /// Opens a realtime subscription of `run_id` (its snapshot); answers its handle and
    /// offset.
    async fn subscribe(&self, run_id: &str) -> Result<(String, String)> {
        let response = self
            .http
            .get(format!("{}/realtime/v1/runs/{run_id}?offset=-1", self.url))
            .bearer_auth(&self.key)
            .send()
            .await?;
        let header = |name: &str| -> Result<String> {
            Ok(response
                .headers()
                .get(name)
                .with_context(|| format!("no {name} in the snapshot's answer"))?
                .to_str()?
                .to_owned())
        };
        let continuation = (header("electric-handle")?, header("electric-offset")?);
        json_reply(response).await?;
        Ok(continuation)
    }

    /// A live poll of a subscription; answers the status its first change carries.
    async fn live_poll(&self, run_id: &str, handle: &str, offset: &str) -> Result<String> {
        let response = self
            .http
            .get(format!("{}/realtime/v1/runs/{run_id}", self.url))
            .query(&[("handle", handle), ("offset", offset), ("live", "true")])
            .bearer_auth(&self.key)
            .send()
            .await?;
        let body = json_reply(response).await?;
        body.get(0)
            .and_then(|m| m["value"]["status"].as_str())
            .map(str::to_owned)
            .context("the live poll ended with no change")
    }

    async fn cancel(&self, run_id: &str) -> Result<()> {
        let response = self
            .http
            .post(format!("{}/api/v2/runs/{run_id}/cancel", self.url))
            .bearer_auth(&self.key)
            .send()
            .await?;
        json_reply(response).await?;
        Ok(())
    }

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
    /// The phase as a measurement: `n` successful requests, their rate and latencies.
    fn measurement(&self, mode: &'static str, concurrency: usize, cpu: CpuUse) -> Measurement {
        let ok = self.results.len();
        Measurement {
            concurrency: Some(concurrency),
            n: Some(ok),
            rate: Some(ok as f64 / self.elapsed.as_secs_f64()),
            latency: Some(Percentiles::of(self.latencies.clone())),
            cpu: Some(cpu),
            errors: self.errors,
            first_error: self.first_error.clone(),
            ..Measurement::new(mode)
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

/// The server's memory, in KiB.
#[derive(Debug, Clone, Copy)]
struct Memory {
    rss_kib: u64,
    peak_kib: u64,
}

/// One line of the output: a phase, or a memory reading. A field is `None` where it
/// does not apply to the mode (no rate for latency, only memory for rss).
struct Measurement {
    /// The issue's name of the phase (`enqueue_bulk`, …, `rss_stored`).
    mode: &'static str,
    /// Clients, batch uploads or worker slots at once.
    concurrency: Option<usize>,
    /// Runs created, drained or measured; requests for retrieve; runs stored for
    /// rss_stored.
    n: Option<usize>,
    /// Runs (retrieve: requests) per second.
    rate: Option<f64>,
    /// Per request (per batch for enqueue_bulk); trigger→start for latency.
    latency: Option<Percentiles>,
    memory: Option<Memory>,
    cpu: Option<CpuUse>,
    errors: usize,
    first_error: Option<String>,
}

impl Measurement {
    fn new(mode: &'static str) -> Measurement {
        Measurement {
            mode,
            concurrency: None,
            n: None,
            rate: None,
            latency: None,
            memory: None,
            cpu: None,
            errors: 0,
            first_error: None,
        }
    }

    /// `{"lib":"runnel","variant":…,"mode":…,…}` with the fields that apply, in the
    /// issue's order. rss gives the peak (VmHWM) as `rss_mb`; rss_stored gives the
    /// resident size with the runs stored (VmRSS) as `rss_mb` and the peak as `peak_mb`.
    fn json_line(&self, variant: &str) -> String {
        let mut fields: Vec<(&str, Value)> = vec![
            ("lib", json!("runnel")),
            ("variant", json!(variant)),
            ("mode", json!(self.mode)),
        ];
        if let Some(concurrency) = self.concurrency {
            fields.push(("concurrency", json!(concurrency)));
        }
        if let Some(n) = self.n {
            fields.push(("n", json!(n)));
        }
        if let Some(rate) = self.rate {
            fields.push(("jobs_per_s", json!(round(rate, 1))));
        }
        if let Some(latency) = self.latency {
            let ms = |d: Duration| json!(round(d.as_secs_f64() * 1000.0, 3));
            fields.push(("p50_ms", ms(latency.p50)));
            fields.push(("p99_ms", ms(latency.p99)));
        }
        if let Some(memory) = self.memory {
            let mb = |kib: u64| json!(round(kib as f64 / 1024.0, 1));
            if self.mode == "rss" {
                fields.push(("rss_mb", mb(memory.peak_kib)));
            } else {
                fields.push(("rss_mb", mb(memory.rss_kib)));
                fields.push(("peak_mb", mb(memory.peak_kib)));
            }
        }
        let body: Vec<String> = fields
            .into_iter()
            .map(|(name, value)| format!("\"{name}\":{value}"))
            .collect();
        format!("{{{}}}", body.join(","))
    }
}

fn round(value: f64, decimals: i32) -> f64 {
    let scale = 10f64.powi(decimals);
    (value * scale).round() / scale
}

struct Report {
    /// The issue's phases and memory readings, in the order they ran.
    measurements: Vec<Measurement>,
    /// The bulk batches that filled the table for rss_stored: in the table, not a JSON
    /// line (the peers have no such phase).
    fill: Measurement,
    failed_attempts: u64,
}

impl Report {
    fn json_lines(&self, variant: &str) -> Vec<String> {
        self.measurements
            .iter()
            .map(|m| m.json_line(variant))
            .collect()
    }

    /// A sentence per phase that had failed requests, and one for failed attempts.
    fn failures(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .measurements
            .iter()
            .chain(std::iter::once(&self.fill))
            .filter_map(|m| {
                let error = m.first_error.as_ref()?;
                Some(format!(
                    "{} {} requests failed; the first: {error}",
                    m.errors, m.mode
                ))
            })
            .collect();
        if self.failed_attempts > 0 {
            out.push(format!(
                "{} attempts of the no-op task failed",
                self.failed_attempts
            ));
        }
        out
    }

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
        let _ = writeln!(
            out,
            "| mode | n | concurrency | rate | p50 / p99 | cores busy, server + bench |\n|---|---|---|---|---|---|"
        );
        let phases = self
            .measurements
            .iter()
            .chain(std::iter::once(&self.fill))
            .filter(|m| m.memory.is_none());
        for m in phases {
            let (what, unit) = match m.mode {
                "enqueue_bulk" => (
                    format!(
                        "enqueue_bulk ({} runs per batch; latency per batch)",
                        group(BATCH_SIZE as f64)
                    ),
                    "runs/s",
                ),
                "enqueue_single" => ("enqueue_single (one at a time)".to_owned(), "runs/s"),
                "process" => (
                    "process (worker start → last COMPLETED)".to_owned(),
                    "runs/s",
                ),
                "latency" => (
                    format!("latency (trigger→start, {LATENCY_GAP:?} apart)"),
                    "",
                ),
                "retrieve" => ("retrieve".to_owned(), "req/s"),
                "stored_fill" => (
                    "stored_fill (batches filling the table for rss_stored)".to_owned(),
                    "runs/s",
                ),
                other => (other.to_owned(), "runs/s"),
            };
            let dash = || "–".to_owned();
            let _ = writeln!(
                out,
                "| {what} | {} | {} | {} | {} | {} |",
                m.n.map_or_else(dash, |n| group(n as f64)),
                m.concurrency.map_or_else(dash, |c| c.to_string()),
                m.rate
                    .map_or_else(dash, |rate| format!("{} {unit}", group(rate))),
                m.latency.map_or_else(dash, pair),
                m.cpu.map_or_else(dash, |cpu| cpu.to_string()),
            );
        }
        let _ = writeln!(
            out,
            "\n| server memory | VmRSS | VmHWM (peak) |\n|---|---|---|"
        );
        for m in self.measurements.iter().filter(|m| m.memory.is_some()) {
            let what = match (m.mode, m.n) {
                ("realtime_idle", Some(n)) => format!(
                    "realtime_idle ({} subscriptions held; server cores busy {})",
                    group(n as f64),
                    m.cpu
                        .map_or_else(|| "–".to_owned(), |c| format!("{:.2}", c.server)),
                ),
                (_, Some(n)) => format!("{} ({} runs stored)", m.mode, group(n as f64)),
                (_, None) => format!("{} (after the load phases)", m.mode),
            };
            let (rss, peak) = m.memory.map_or_else(
                || ("unreadable".to_owned(), "unreadable".to_owned()),
                |memory| {
                    (
                        format!("{} MiB", memory.rss_kib / 1024),
                        format!("{} MiB", memory.peak_kib / 1024),
                    )
                },
            );
            let _ = writeln!(out, "| {what} | {rss} | {peak} |");
        }
        let errors: usize = self
            .measurements
            .iter()
            .chain(std::iter::once(&self.fill))
            .map(|m| m.errors)
            .sum();
        let _ = writeln!(
            out,
            "\nFailed requests: {errors}; failed attempts: {}.",
            self.failed_attempts
        );
        for failure in self.failures() {
            let _ = writeln!(out, "\n{failure}");
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
        // Profiling aids (docs/BENCHMARKS.md): the server's log filter, and a log file
        // that outlives the temporary directory.
        let log = &std::env::var_os("RUNNEL_BENCH_SERVER_LOG_FILE")
            .map_or_else(|| log.to_path_buf(), PathBuf::from);
        let filter = std::env::var("RUNNEL_BENCH_SERVER_LOG").unwrap_or_else(|_| "warn".to_owned());
        let log_file =
            std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let mut child = tokio::process::Command::new(exe)
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(store_flags)
            // The flags say where the data goes; these would compete with them.
            .env_remove("RUNNEL_DATABASE_URL")
            .env_remove("RUNNEL_DATA_DIR")
            .env("RUST_LOG", filter)
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
