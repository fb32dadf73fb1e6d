//! `runnel`: the one binary. `serve` runs the server, `worker` executes runs with shell
//! commands, `dev` is both in one process, `trigger` and `runs` talk to a server, `keys`
//! manages secret keys and personal access tokens.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use runnel_core::cost::{MachinePrice, Pricing};
use runnel_core::key::{EnvironmentKind, PersonalAccessToken, SecretKey};
use runnel_engine::{BlobConfig, BlobLocation, Blobs, Clock, Engine, EngineConfig, SystemClock};
use runnel_sdk::client::TriggerOptions;
use runnel_sdk::worker::WorkerOptions;
use runnel_sdk::{Client, Worker};
use runnel_server::connections::{self, ConnectionLimits, FileLimit};
use runnel_server::AppState;
use runnel_store::{PgStore, RevokeOutcome, SqliteStore, Store};
use tokio::sync::watch;

mod bench;
mod envvars;
mod exec;
mod exec_schedules;
mod guard;
mod master_key;
mod runs;
mod schedules;
mod trigger;

/// Default address `runnel serve` listens on.
const LISTEN_DEFAULT: &str = "127.0.0.1:3030";
/// Default directory for the embedded database (and, later, blobs).
const DATA_DIR_DEFAULT: &str = ".runnel";
/// The SQLite file inside the data directory.
const DATABASE_FILE: &str = "runnel.db";

#[derive(Debug, Parser)]
#[command(
    name = "runnel",
    version,
    about = "Background task runs, self-hosted, Trigger.dev-compatible API"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server (API and runtime services).
    Serve(ServeArgs),
    /// Execute runs: each attempt runs a shell command (payload on stdin, output on stdout).
    Worker(WorkerArgs),
    /// Serve and execute in one process: the one-command start on a laptop.
    Dev(Box<DevArgs>),
    /// Trigger a run of TASK and print its id (or, with --wait, the finished run).
    Trigger(TriggerArgs),
    /// Read, list, cancel and replay runs.
    #[command(subcommand)]
    Runs(RunsCommand),
    /// Create, list and revoke secret API keys and personal access tokens.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// List, set and remove the environment variables of the key's environment (what
    /// its tasks see).
    #[command(subcommand)]
    Envvars(EnvvarsCommand),
    /// List, create and remove the cron schedules of the key's environment.
    #[command(subcommand)]
    Schedules(SchedulesCommand),
    /// Benchmark a fresh server on this machine: enqueue, process, latency, retrieve, memory.
    Bench(bench::BenchArgs),
    /// Internal: runs one exec attempt's command so that it dies with its worker.
    #[command(name = guard::SUBCOMMAND, hide = true)]
    TaskGuard(TaskGuardArgs),
}

#[derive(Debug, Args)]
struct TaskGuardArgs {
    /// The program and its arguments, after `--`.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
    command: Vec<std::ffi::OsString>,
}

/// Where the database is: an explicit URL, or the SQLite file in the data directory.
#[derive(Debug, Args)]
struct StoreArgs {
    /// Directory for the embedded SQLite database.
    #[arg(long, env = "RUNNEL_DATA_DIR", default_value = DATA_DIR_DEFAULT)]
    data_dir: PathBuf,
    /// Database URL: `postgres://user@host/db` (several nodes may share it) or
    /// `sqlite://path/to/file.db`; overrides --data-dir.
    #[arg(long, env = "RUNNEL_DATABASE_URL")]
    database_url: Option<String>,
    /// PostgreSQL only: connections in this process's pool (one more is held for
    /// LISTEN). Every node opens its own pool, so nodes × (this + 1) must stay under the
    /// server's `max_connections`.
    #[arg(long, env = "RUNNEL_DATABASE_MAX_CONNECTIONS", default_value_t = runnel_store::postgres::MAX_CONNECTIONS_DEFAULT, value_parser = clap::value_parser!(u32).range(1..=1000))]
    database_max_connections: u32,
}

impl StoreArgs {
    /// The flags that point another `runnel` command at this database, as typed (empty for
    /// the default data directory). A database URL is shown without its password.
    fn command_line(&self) -> String {
        match &self.database_url {
            Some(url) => format!(" --database-url {}", shell_quote(&redact_password(url))),
            None => self.data_dir_flag(),
        }
    }

    /// ` --data-dir DIR` unless it is the default directory.
    fn data_dir_flag(&self) -> String {
        if self.data_dir == std::path::Path::new(DATA_DIR_DEFAULT) {
            return String::new();
        }
        format!(
            " --data-dir {}",
            shell_quote(&self.data_dir.display().to_string())
        )
    }

    /// [`Self::command_line`] for a command that also needs the master key: with a
    /// database URL and the key in the data directory's `master.key`, the data directory
    /// too.
    fn command_line_with_key(&self, key: &master_key::MasterKeyArgs) -> String {
        match &self.database_url {
            Some(_) if !key.is_given() => {
                format!("{}{}", self.command_line(), self.data_dir_flag())
            }
            _ => self.command_line(),
        }
    }
}

/// `postgres://user:secret@host/db` → `postgres://user:***@host/db`.
fn redact_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let Some((userinfo, host)) = rest.split_once('@') else {
        return url.to_owned();
    };
    match userinfo.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_owned(),
    }
}

/// Single-quotes `s` for a POSIX shell when it holds anything but plain path characters.
fn shell_quote(s: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "/._-:@=,+".contains(c);
    if !s.is_empty() && s.chars().all(plain) {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, env = "RUNNEL_LISTEN", default_value = LISTEN_DEFAULT)]
    listen: SocketAddr,
    #[command(flatten)]
    store: StoreArgs,
    #[command(flatten)]
    master_key: master_key::MasterKeyArgs,
    #[command(flatten)]
    engine: EngineArgs,
    #[command(flatten)]
    blobs: BlobArgs,
    /// Per-environment API rate limit as MAX/REFILL/INTERVAL, e.g. `750/250/10s` (a
    /// bucket of 750 requests refilled by 250 every 10 s; limits are per node). Off when unset.
    #[arg(long, env = "RUNNEL_RATE_LIMIT", value_name = "MAX/REFILL/INTERVAL")]
    rate_limit: Option<runnel_server::rate_limit::RateLimit>,
    /// Batch item uploads (`POST /api/v3/batches/{id}/items`) one environment may have in
    /// progress at once; more answer 429.
    #[arg(long, env = "RUNNEL_BATCH_UPLOADS_PER_ENVIRONMENT", value_name = "N", default_value_t = runnel_server::batches::BATCH_UPLOADS_PER_ENVIRONMENT_DEFAULT as u32, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    batch_uploads_per_environment: u32,
    #[command(flatten)]
    connections: ConnectionArgs,
    /// Answer the legacy, browser-free `npx trigger.dev login` with a new personal access
    /// token for anyone who asks: only where everyone who can reach the server may use it.
    #[arg(long, env = "RUNNEL_TRIGGER_LOGIN_AUTO_APPROVE")]
    trigger_login_auto_approve: bool,
}

/// How long connections may take and how many may be open (see
/// `runnel_server::connections`).
#[derive(Debug, Clone, Args)]
struct ConnectionArgs {
    /// Seconds a request's head may take to arrive in full, counted from when the
    /// connection starts waiting for it (its opening, or the previous response).
    #[arg(long, env = "RUNNEL_HEADER_READ_TIMEOUT", value_name = "SECS", default_value_t = connections::HEADER_READ_TIMEOUT_DEFAULT.as_secs(), value_parser = clap::value_parser!(u64).range(1..=3600))]
    header_read_timeout: u64,
    /// Seconds a connection may stay open with no request in flight (keep it below
    /// --header-read-timeout, whose clock also runs while a connection waits).
    #[arg(long, env = "RUNNEL_IDLE_TIMEOUT", value_name = "SECS", default_value_t = connections::IDLE_TIMEOUT_DEFAULT.as_secs(), value_parser = clap::value_parser!(u64).range(1..=3600))]
    idle_timeout: u64,
    /// Longest pause, in seconds, between two pieces of a request body.
    #[arg(long, env = "RUNNEL_BODY_READ_TIMEOUT", value_name = "SECS", default_value_t = connections::BODY_READ_TIMEOUT_DEFAULT.as_secs(), value_parser = clap::value_parser!(u64).range(1..=3600))]
    body_read_timeout: u64,
    /// Most connections open at once; lowered at start to fit under the open-file
    /// limit. At the cap a new connection replaces the oldest idle one, or is closed.
    #[arg(long, env = "RUNNEL_MAX_CONNECTIONS", value_name = "N", default_value_t = connections::MAX_CONNECTIONS_DEFAULT, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    max_connections: u32,
}

impl ConnectionArgs {
    /// Raises the open-file limit as far as allowed, logs it, and fits the cap under it.
    fn limits(&self) -> Result<ConnectionLimits> {
        let files = FileLimit::raise().context("reading the open file limit")?;
        let fit = files.connections();
        let requested = usize::try_from(self.max_connections).unwrap_or(usize::MAX);
        let max_connections = requested.min(fit);
        tracing::info!(
            soft_before = files.soft_before,
            soft = files.soft,
            hard = files.hard,
            max_connections,
            "open file limit"
        );
        if max_connections < requested {
            tracing::info!(
                requested,
                max_connections,
                "connection cap lowered to stay below the open file limit"
            );
        }
        if self.idle_timeout >= self.header_read_timeout {
            tracing::warn!(
                idle_timeout = self.idle_timeout,
                header_read_timeout = self.header_read_timeout,
                "--idle-timeout is not below --header-read-timeout: idle connections close at the header-read timeout"
            );
        }
        Ok(ConnectionLimits {
            header_read_timeout: Duration::from_secs(self.header_read_timeout),
            idle_timeout: Duration::from_secs(self.idle_timeout),
            body_read_timeout: Duration::from_secs(self.body_read_timeout),
            max_connections,
        })
    }
}

/// How the run engine behaves.
#[derive(Debug, Clone, Args)]
struct EngineArgs {
    /// Seconds without a heartbeat after which a worker's attempt is rescued.
    #[arg(long, env = "RUNNEL_LEASE_TIMEOUT", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    lease_timeout: u64,
    /// Price of a machine preset in cents per second of compute, e.g. `small-1x=0.00338`
    /// (repeatable; unset presets keep Trigger.dev's cloud prices). Dev runs are free.
    #[arg(
        long = "machine-price",
        value_name = "PRESET=CENTS",
        env = "RUNNEL_MACHINE_PRICES",
        value_delimiter = ','
    )]
    machine_prices: Vec<MachinePrice>,
    /// Fee charged per run in cents when its first attempt starts (dev runs are free).
    #[arg(long, env = "RUNNEL_RUN_FEE_CENTS", default_value_t = 0.0025, value_parser = parse_cents)]
    run_fee_cents: f64,
}

impl EngineArgs {
    fn config(&self) -> Result<EngineConfig> {
        let mut pricing = Pricing::default();
        for price in &self.machine_prices {
            pricing.set_price(price.machine, price.cents_per_second);
        }
        pricing.run_fee_cents = self.run_fee_cents;
        Ok(EngineConfig {
            lease_timeout: Duration::from_secs(self.lease_timeout),
            pricing,
            ..EngineConfig::default()
        })
    }
}

/// Where large payloads and outputs are stored (see `runnel_engine::blobs`).
#[derive(Debug, Clone, Args)]
struct BlobArgs {
    /// Object storage for payloads and outputs over --blob-offload-threshold:
    /// `s3://bucket/prefix` (credentials, region and endpoint from the standard AWS_*
    /// variables: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION, AWS_ENDPOINT_URL,
    /// AWS_ALLOW_HTTP) or a local directory. Default: `<data-dir>/blobs`. Several nodes
    /// need a store they all reach: S3, or one directory they share.
    #[arg(long, env = "RUNNEL_BLOB_URL", value_name = "URL")]
    blob_url: Option<String>,
    /// Inline payloads and outputs of at least this many bytes are moved to object
    /// storage; retrieve then answers presigned URLs.
    #[arg(long, env = "RUNNEL_BLOB_OFFLOAD_THRESHOLD", value_name = "BYTES", default_value_t = runnel_engine::blobs::OFFLOAD_THRESHOLD_DEFAULT as u64, value_parser = clap::value_parser!(u64).range(1..=(1 << 40)))]
    blob_offload_threshold: u64,
    /// Largest object accepted through a local store's presigned upload URL (413 beyond).
    #[arg(long, env = "RUNNEL_BLOB_MAX_BYTES", value_name = "BYTES", default_value_t = runnel_engine::blobs::MAX_BYTES_DEFAULT, value_parser = clap::value_parser!(u64).range(1..=(1 << 40)))]
    blob_max_bytes: u64,
    /// Seconds a presigned URL stays valid.
    #[arg(long, env = "RUNNEL_BLOB_URL_TTL", value_name = "SECS", default_value_t = runnel_engine::blobs::URL_TTL_DEFAULT.as_secs(), value_parser = clap::value_parser!(u64).range(1..=604_800))]
    blob_url_ttl: u64,
}

impl BlobArgs {
    fn config(&self, store: &StoreArgs) -> Result<BlobConfig> {
        let location = BlobLocation::parse(self.blob_url.as_deref(), store.data_dir.join("blobs"))?;
        Ok(BlobConfig {
            location,
            offload_threshold: usize::try_from(self.blob_offload_threshold).unwrap_or(usize::MAX),
            url_ttl: Duration::from_secs(self.blob_url_ttl),
            max_bytes: self.blob_max_bytes,
        })
    }
}

/// Where the server is and the key to use.
#[derive(Debug, Clone, Args)]
struct ApiArgs {
    /// The server's base URL.
    #[arg(long, env = "RUNNEL_API_URL", default_value = "http://127.0.0.1:3030")]
    api_url: String,
    /// A secret key (`tr_dev_…`, `tr_prod_…`); it picks the environment.
    #[arg(long, env = "RUNNEL_SECRET_KEY", hide_env_values = true)]
    key: String,
}

impl ApiArgs {
    /// A client of the server with the key.
    fn client(&self) -> Client {
        Client::new(self.api_url.trim_end_matches('/'), self.key.clone())
    }
}

/// The tasks an exec worker serves and how it runs them.
#[derive(Debug, Clone, Args)]
struct ExecArgs {
    /// A task and the command that runs it, `NAME=COMMAND` (repeatable). The command
    /// runs with `sh -c`.
    #[arg(long = "task", value_name = "NAME=COMMAND", required = true, value_parser = exec::parse_task_spec)]
    tasks: Vec<(String, String)>,
    /// Attempts running at once.
    #[arg(long, env = "RUNNEL_CONCURRENCY", default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=1000))]
    concurrency: u32,
    /// The version this worker serves (the server assigns `YYYYMMDD.N` when absent).
    #[arg(long, env = "RUNNEL_VERSION")]
    version: Option<String>,
    /// On SIGINT/SIGTERM, seconds running attempts get to finish before they are
    /// interrupted (0 to 86400); completions the server has not answered are retried
    /// until then.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(0..=SHUTDOWN_GRACE_MAX_SECS))]
    shutdown_grace: u64,
    /// Attempts per run for every task, 1 to 250 (the default policy's 3 when absent).
    #[arg(long, value_parser = max_attempts_range())]
    max_attempts: Option<u32>,
    /// Seconds of compute per attempt for every task, 5 to 2147483647.
    #[arg(long, value_parser = max_duration_range())]
    max_duration: Option<u32>,
    /// Machine preset of every task (prices its runs).
    #[arg(long)]
    machine: Option<String>,
    /// A name for operators; host name and process id when absent.
    #[arg(long)]
    name: Option<String>,
    /// A queue's concurrency limit, `QUEUE=N` with N from 0 to 100000 (repeatable); a
    /// task's own queue is `task/<name>`.
    #[arg(long = "queue-limit", value_name = "QUEUE=N", value_parser = parse_queue_limit)]
    queue_limits: Vec<(String, u32)>,
    /// Make task NAME a scheduled task (repeatable): schedules created through the API
    /// (`runnel schedules create`, the SDK's `schedules.create`) may then trigger it.
    #[arg(long = "scheduled", value_name = "NAME")]
    scheduled: Vec<String>,
    /// Declare a cron schedule with task NAME, `NAME=EXPR` (repeatable, one per task;
    /// 5 fields: minute hour day-of-month month day-of-week). Implies --scheduled NAME.
    /// The server keeps one DECLARATIVE schedule of the task in sync with this worker's
    /// registration: a worker started without the flag removes it.
    #[arg(long = "cron", value_name = "NAME=EXPR", value_parser = parse_cron_spec)]
    crons: Vec<(String, String)>,
    /// The IANA timezone NAME's --cron is read in, `NAME=TZ` (UTC when absent).
    #[arg(long = "cron-timezone", value_name = "NAME=TZ", value_parser = parse_cron_timezone)]
    cron_timezones: Vec<(String, String)>,
    /// Spread each occurrence of NAME's --cron over a window, `NAME=WINDOW`: `30m`, `2h`
    /// (at most 24h) or `50%` of the interval, at an offset stable for the schedule.
    #[arg(long = "cron-window", value_name = "NAME=WINDOW", value_parser = parse_cron_window)]
    cron_windows: Vec<(String, String)>,
}

fn parse_cron_spec(spec: &str) -> Result<(String, String), String> {
    exec_schedules::parse_named(spec, "EXPR")
}

fn parse_cron_timezone(spec: &str) -> Result<(String, String), String> {
    exec_schedules::parse_named(spec, "TZ")
}

fn parse_cron_window(spec: &str) -> Result<(String, String), String> {
    exec_schedules::parse_named(spec, "WINDOW")
}

/// Most seconds `--shutdown-grace` may give.
const SHUTDOWN_GRACE_MAX_SECS: u64 = 86_400;

/// `--max-attempts`: the server's bounds (it would cap a trigger's larger value at 250
/// and refuse a worker's).
fn max_attempts_range() -> clap::builder::RangedI64ValueParser<u32> {
    clap::value_parser!(u32).range(1..=i64::from(runnel_core::trigger::MAX_ATTEMPTS_CAP))
}

/// `--max-duration`: the server's bounds (it would raise a smaller value to 5).
fn max_duration_range() -> clap::builder::RangedI64ValueParser<u32> {
    clap::value_parser!(u32).range(
        i64::from(runnel_core::trigger::MAX_DURATION_MIN_SECS)
            ..=i64::from(runnel_core::trigger::MAX_DURATION_MAX_SECS),
    )
}

/// A non-negative, finite amount of cents.
fn parse_cents(text: &str) -> Result<f64, String> {
    text.trim()
        .parse::<f64>()
        .ok()
        .filter(|cents| cents.is_finite() && *cents >= 0.0)
        .ok_or_else(|| format!("{text:?} is not a non-negative number of cents"))
}

fn parse_queue_limit(spec: &str) -> Result<(String, u32), String> {
    let (queue, limit) = spec
        .rsplit_once('=')
        .ok_or_else(|| format!("expected QUEUE=N, got {spec:?}"))?;
    let max = runnel_core::worker::MAX_QUEUE_CONCURRENCY;
    let limit = limit
        .parse::<u32>()
        .ok()
        .filter(|limit| *limit <= max)
        .ok_or_else(|| {
            format!("limit of {queue:?}: {limit:?} is not a whole number from 0 to {max}")
        })?;
    if queue.is_empty() {
        return Err("queue name is empty".into());
    }
    Ok((queue.to_owned(), limit))
}

#[derive(Debug, Args)]
struct WorkerArgs {
    #[command(flatten)]
    api: ApiArgs,
    #[command(flatten)]
    exec: ExecArgs,
}

#[derive(Debug, Args)]
struct DevArgs {
    #[command(flatten)]
    serve: ServeArgs,
    #[command(flatten)]
    exec: ExecArgs,
}

#[derive(Debug, Args)]
struct TriggerArgs {
    /// The task identifier.
    task: String,
    /// The payload, as JSON.
    #[arg(long, default_value = "null")]
    payload: String,
    /// Wait for the run to end and print it; exit 1 unless it completed. Says on stderr
    /// what the run waits for.
    #[arg(long)]
    wait: bool,
    /// With --wait: stop waiting after this long (`90`, `30s`, `5m`, `1h30m`) and exit 124;
    /// the run goes on. Unbounded when absent.
    #[arg(long, alias = "wait-timeout", value_name = "DURATION", requires = "wait", value_parser = trigger::parse_timeout)]
    timeout: Option<Duration>,
    /// Run later: `30s`, `1h30m` or an ISO 8601 date.
    #[arg(long)]
    delay: Option<String>,
    /// Expire the run if it is still queued after this long.
    #[arg(long)]
    ttl: Option<String>,
    /// A tag (repeatable).
    #[arg(long = "tag")]
    tags: Vec<String>,
    #[arg(long)]
    idempotency_key: Option<String>,
    /// Attempts of the run, 1 to 250 (the task's policy when absent).
    #[arg(long, value_parser = max_attempts_range())]
    max_attempts: Option<u32>,
    /// Seconds of compute per attempt, 5 to 2147483647.
    #[arg(long, value_parser = max_duration_range())]
    max_duration: Option<u32>,
    #[arg(long)]
    machine: Option<String>,
    #[arg(long)]
    queue: Option<String>,
    #[command(flatten)]
    api: ApiArgs,
}

#[derive(Debug, Subcommand)]
enum RunsCommand {
    /// Print a run as the API returns it.
    Get {
        /// `run_…`
        id: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// List the runs of the key's environment, newest first (the last 7 days).
    Ls {
        /// Only runs with this public status (repeatable or comma-separated; QUEUED,
        /// EXECUTING, COMPLETED, FAILED, … in either status vocabulary).
        #[arg(long = "status", value_delimiter = ',')]
        statuses: Vec<String>,
        /// Only runs of this task (repeatable or comma-separated).
        #[arg(long = "task", value_delimiter = ',')]
        tasks: Vec<String>,
        /// Only runs with this tag (repeatable or comma-separated; any of them).
        #[arg(long = "tag", value_delimiter = ',')]
        tags: Vec<String>,
        /// Runs per page, 1 to 100.
        #[arg(long, default_value_t = 25, value_parser = clap::value_parser!(u32).range(1..=i64::from(runnel_core::list::PAGE_SIZE_MAX)))]
        limit: u32,
        /// Continue after this cursor (printed under a page that has more).
        #[arg(long)]
        after: Option<String>,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Cancel a run (a run that already ended is left alone).
    Cancel {
        /// `run_…`
        id: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Replay a run: trigger a new run like it, and print the new run's id.
    Replay {
        /// `run_…`
        id: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Print a run's log lines (what its task logged), oldest first: time, level,
    /// message and fields.
    Logs {
        /// `run_…`
        id: String,
        /// Keep printing new lines until the run ends.
        #[arg(long, short = 'f')]
        follow: bool,
        #[command(flatten)]
        api: ApiArgs,
    },
}

#[derive(Debug, Subcommand)]
enum EnvvarsCommand {
    /// List the variables: name, whether secret, value (secret values redacted).
    Ls {
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Set a variable (`NAME=VALUE`), or every variable of a dotenv file (--from-file).
    Set {
        /// `NAME=VALUE`; the name is letters, digits and underscores.
        #[arg(value_name = "NAME=VALUE", value_parser = envvars::parse_assignment, required_unless_present = "from_file", conflicts_with = "from_file")]
        assignment: Option<(String, String)>,
        /// A dotenv file whose variables are set all at once (all or nothing).
        #[arg(long, value_name = "FILE")]
        from_file: Option<PathBuf>,
        /// With --from-file: replace variables already set (else a name already set
        /// refuses the whole file).
        #[arg(long = "override", requires = "from_file")]
        override_existing: bool,
        /// Mark the variable secret: its value is never shown again (tasks still get it).
        #[arg(long)]
        secret: bool,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Remove a variable.
    Rm {
        name: String,
        #[command(flatten)]
        api: ApiArgs,
    },
}

#[derive(Debug, Subcommand)]
enum SchedulesCommand {
    /// List the schedules: id, type, task, cron, timezone, next run, active and key.
    Ls {
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Create a schedule of a scheduled task (a worker's `--scheduled NAME`); with the
    /// key of an existing schedule, update that one instead (same id).
    Create {
        /// The task it triggers; it must be a scheduled task of the key's environment.
        #[arg(long)]
        task: String,
        /// 5 fields: minute hour day-of-month month day-of-week (`0 9 * * 1-5`).
        #[arg(long)]
        cron: String,
        /// The IANA timezone the cron is read in (UTC when absent).
        #[arg(long)]
        timezone: Option<String>,
        /// The deduplication key, unique in the environment. Default: `<task>-<creation
        /// time in ms>`, so each create without it makes a new schedule.
        #[arg(long)]
        dedup_key: Option<String>,
        /// Your own id for it, passed to each run's payload as `externalId`.
        #[arg(long)]
        external_id: Option<String>,
        /// Spread each occurrence over `30m`, `2h` (at most 24h) or `50%` of the interval.
        #[arg(long)]
        window: Option<String>,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Remove a schedule by id (`sched_…`) or deduplication key. A declarative schedule
    /// goes when its task stops declaring it.
    Rm {
        /// `sched_…` or a deduplication key.
        schedule: String,
        #[command(flatten)]
        api: ApiArgs,
    },
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Create a secret key (or, with --pat, a personal access token) and print it (alone)
    /// on stdout.
    Create {
        /// Environment of the key: dev, staging or prod.
        #[arg(long, required_unless_present = "pat", conflicts_with = "pat")]
        env: Option<EnvironmentKind>,
        /// Create a personal access token (`tr_pat_…`) instead: what `npx trigger.dev dev`
        /// logs in with (TRIGGER_ACCESS_TOKEN); it reaches every environment.
        #[arg(long)]
        pat: bool,
        #[command(flatten)]
        store: StoreArgs,
        /// The key is stored sealed under the server's master key: the same one.
        #[command(flatten)]
        master_key: master_key::MasterKeyArgs,
    },
    /// List keys and personal access tokens (ENV `pat`): prefix, environment, creation and
    /// revocation time. Never the secret.
    List {
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Revoke the key or personal access token whose prefix (as `keys list` shows it)
    /// starts with PREFIX.
    Revoke {
        prefix: String,
        #[command(flatten)]
        store: StoreArgs,
    },
}

fn main() -> Result<()> {
    let command = Cli::parse().command;
    // The guard starts once per attempt: no runtime, no logging, just the command.
    if let Command::TaskGuard(args) = &command {
        guard::run(&args.command);
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(run(command))
}

async fn run(command: Command) -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match command {
        Command::Serve(args) => serve(args).await,
        Command::Worker(args) => worker(args).await,
        Command::Dev(args) => dev(*args).await,
        Command::Trigger(args) => trigger(args).await,
        Command::Runs(command) => runs(command).await,
        Command::Envvars(command) => envvars_command(command).await,
        Command::Schedules(command) => schedules_command(command).await,
        Command::Keys(command) => keys(command).await,
        Command::Bench(args) => bench::run(args).await,
        Command::TaskGuard(args) => guard::run(&args.command),
    }
}

async fn open_store(args: &StoreArgs) -> Result<Arc<dyn Store>> {
    let store = match &args.database_url {
        Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
            let store = PgStore::connect_with(url, args.database_max_connections)
                .await
                .context("connecting to PostgreSQL")?;
            return Ok(Arc::new(store));
        }
        Some(url) => SqliteStore::open_url(url)
            .await
            .with_context(|| format!("opening database {url}"))?,
        None => {
            std::fs::create_dir_all(&args.data_dir)
                .with_context(|| format!("creating data directory {}", args.data_dir.display()))?;
            let path = args.data_dir.join(DATABASE_FILE);
            SqliteStore::open(&path)
                .await
                .with_context(|| format!("opening database {}", path.display()))?
        }
    };
    Ok(Arc::new(store))
}

/// Opens the database a server already created, for `keys`: only `serve` and `dev`
/// create one, so a wrong `--data-dir` is said, not answered with an empty new database.
async fn open_existing_store(args: &StoreArgs) -> Result<Arc<dyn Store>> {
    let missing = |what: String| {
        anyhow::anyhow!(
            "no Runnel database in {what}: `runnel keys` works on the database of a server. \
             Point it there with --data-dir DIR (or RUNNEL_DATA_DIR, or --database-url), \
             or start `runnel serve` (or `runnel dev`) in this directory first"
        )
    };
    match &args.database_url {
        None => {
            let path = args.data_dir.join(DATABASE_FILE);
            if !path.is_file() {
                return Err(missing(format!(
                    "{} (there is no {})",
                    args.data_dir.display(),
                    path.display()
                )));
            }
        }
        Some(url) if url.starts_with("sqlite:") || !url.contains("://") => {
            let path = if url.starts_with("sqlite:") {
                let options =
                    <sqlx::sqlite::SqliteConnectOptions as std::str::FromStr>::from_str(url)
                        .with_context(|| format!("reading database URL {url}"))?;
                options.get_filename().to_path_buf()
            } else {
                PathBuf::from(url)
            };
            if !path.is_file() {
                return Err(missing(format!("{url} (there is no {})", path.display())));
            }
        }
        Some(_) => {}
    }
    let store = open_store(args).await?;
    if store.environment_get(EnvironmentKind::Dev).await?.is_none() {
        store.close().await;
        let place = match &args.database_url {
            Some(url) => url.clone(),
            None => args.data_dir.display().to_string(),
        };
        return Err(missing(format!(
            "{place} (the database has no project yet)"
        )));
    }
    Ok(store)
}

/// A server running in this process.
struct RunningServer {
    addr: SocketAddr,
    /// This start created the project.
    first_start: bool,
    store: Arc<dyn Store>,
    engine: Engine,
    shutdown: watch::Sender<bool>,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
    services: tokio::task::JoinHandle<()>,
    signals: tokio::task::JoinHandle<()>,
}

impl RunningServer {
    /// Opens the store (creating the project on first start), binds and serves.
    async fn start(args: &ServeArgs) -> Result<Self> {
        let mut config = args.engine.config()?;
        config.master_keys = args.master_key.load(&args.store.data_dir, true)?;
        config.blobs = Blobs::new(args.blobs.config(&args.store)?, &config.master_keys)?;
        let limits = args.connections.limits()?;
        let store = open_store(&args.store).await?;
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let engine = Engine::with_config(store.clone(), clock.clone(), config);
        // Refuses values sealed under a key this server lacks; re-seals a rotation's.
        if let Err(error) = engine.master_keys_prepare().await {
            store.close().await;
            return Err(anyhow::Error::new(error).context("checking the master key"));
        }
        let dev_key = SecretKey::generate(EnvironmentKind::Dev);
        let bootstrap = store
            .project_bootstrap(&dev_key, engine.master_keys(), clock.now())
            .await?;
        let first_start = bootstrap.is_some();
        if let Some(bootstrap) = bootstrap {
            let kinds: Vec<_> = bootstrap
                .environments
                .iter()
                .map(|e| e.kind.slug())
                .collect();
            println!(
                "Created project {} with environments {}.",
                bootstrap.project.id,
                kinds.join(", ")
            );
            println!("Dev secret key (shown once, keep it): {}", dev_key.expose());
        } else {
            println!(
                "Lost the dev secret key? `runnel keys create --env dev{}` prints a new one \
                 (`runnel keys list` shows the keys, `runnel keys revoke PREFIX` revokes one).",
                args.store.command_line_with_key(&args.master_key)
            );
        }
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("binding {}", args.listen))?;
        let addr = listener.local_addr()?;
        println!("Runnel listening on http://{addr}");

        let (shutdown, shutdown_rx) = watch::channel(false);
        let services = tokio::spawn(engine.clone().run_services(shutdown_rx.clone()));
        // Other nodes on the same PostgreSQL database wake this one's long polls.
        let signals = tokio::spawn(engine.clone().run_signals(shutdown_rx.clone()));
        let mut http_shutdown = shutdown_rx;
        let server = tokio::spawn(runnel_server::serve(
            listener,
            AppState {
                engine: engine.clone(),
                rate_limiter: args
                    .rate_limit
                    .map(runnel_server::rate_limit::RateLimiter::new),
                batch_uploads: runnel_server::batches::BatchUploads::new(
                    args.batch_uploads_per_environment as usize,
                ),
                dev: runnel_server::devboot::DevState::new(args.trigger_login_auto_approve),
                realtime: Default::default(),
            },
            limits,
            async move {
                let _ = http_shutdown.wait_for(|stop| *stop).await;
            },
        ));
        Ok(RunningServer {
            addr,
            first_start,
            store,
            engine,
            shutdown,
            server,
            services,
            signals,
        })
    }

    /// Stops accepting, lets in-flight requests finish (or, once `now` resolves, drops
    /// them), stops the services, closes the store.
    async fn stop(self, now: impl std::future::Future<Output = ()>) -> Result<()> {
        tracing::info!("shutting down: finishing in-flight requests");
        // Workers' long polls would otherwise hold the graceful shutdown for their wait.
        self.engine.stop_long_polls();
        let _ = self.shutdown.send(true);
        let mut server = self.server;
        tokio::select! {
            biased;
            served = &mut server => served.context("server task")??,
            () = now => {
                tracing::warn!("stopping now: closing the connections still open");
                server.abort();
            }
        }
        self.services.await.context("services task")?;
        self.signals.await.context("signals task")?;
        self.store.close().await;
        tracing::info!("stopped");
        Ok(())
    }
}

async fn serve(args: ServeArgs) -> Result<()> {
    let signals = StopSignals::install()?;
    let server = RunningServer::start(&args).await?;
    signals.reached(StopRequest::Graceful).await;
    server.stop(signals.reached(StopRequest::Now)).await
}

/// The executor and worker settings `runnel worker` and `runnel dev` share.
fn exec_worker(exec: &ExecArgs, client: Client) -> Result<(Worker, Arc<exec::ExecExecutor>)> {
    let executor = exec::ExecExecutor::new(
        exec.tasks.clone(),
        exec::ExecTaskSettings {
            max_attempts: exec.max_attempts,
            max_duration: exec.max_duration,
            machine: exec.machine.clone(),
        },
    )
    .map_err(anyhow::Error::msg)?;
    let schedules = exec_schedules::TaskSchedules::from_flags(
        executor.task_names(),
        &exec.scheduled,
        &exec.crons,
        &exec.cron_timezones,
        &exec.cron_windows,
    )
    .map_err(anyhow::Error::msg)?;
    let executor = executor.with_schedules(schedules);
    // Linux: every command runs under `runnel task-guard`, so it dies with this process.
    // `/proc/self/exe` still starts this very binary after it was replaced or deleted on
    // disk (an upgrade while the worker runs), where its path would start another or none.
    #[cfg(target_os = "linux")]
    let executor = executor.with_task_guard(match PathBuf::from("/proc/self/exe") {
        own if own.exists() => own,
        _ => std::env::current_exe().context("finding this binary to run the task guard")?,
    });
    let mut options = match &exec.name {
        Some(name) => WorkerOptions::new(name.clone()),
        None => WorkerOptions::default(),
    };
    options.version = exec.version.clone();
    options.concurrency = exec.concurrency as usize;
    options.shutdown_grace = Duration::from_secs(exec.shutdown_grace);
    let queues = exec
        .queue_limits
        .iter()
        .map(|(name, limit)| runnel_core::worker::QueueDefinition {
            name: name.clone(),
            concurrency_limit: Some(*limit),
        })
        .collect();
    Ok((
        Worker::new(client, options).with_queues(queues),
        Arc::new(executor),
    ))
}

async fn worker(args: WorkerArgs) -> Result<()> {
    let signals = StopSignals::install()?;
    let client = Client::new(args.api.api_url.trim_end_matches('/'), args.api.key);
    let (worker, executor) = exec_worker(&args.exec, client)?;
    let _announce = announce_stop(&signals, &executor, &args.exec, None);
    // The worker logs its summary ("worker stopped") itself.
    worker
        .run_until(
            executor,
            signals.reached(StopRequest::Graceful),
            signals.reached(StopRequest::Now),
        )
        .await?;
    Ok(())
}

/// At the first signal, tells the operator what the stop waits for and how to cut it
/// short; in `dev`, also ends the in-process server's long polls, so the worker's dequeue
/// in flight answers at once instead of at the end of its wait.
fn announce_stop(
    signals: &StopSignals,
    executor: &Arc<exec::ExecExecutor>,
    exec: &ExecArgs,
    engine: Option<Engine>,
) -> AbortOnDrop {
    let signals = signals.clone();
    let executor = executor.clone();
    let grace = exec.shutdown_grace;
    AbortOnDrop(tokio::spawn(async move {
        signals.reached(StopRequest::Graceful).await;
        if let Some(engine) = engine {
            engine.stop_long_polls();
        }
        match executor.running() {
            0 => eprintln!("stopping; press Ctrl-C again to stop now"),
            running => eprintln!(
                "stopping: waiting up to {grace}s for {running} running attempt{}; press Ctrl-C again to stop now",
                if running == 1 { "" } else { "s" }
            ),
        }
    }))
}

/// A spawned task aborted when dropped.
#[derive(Debug)]
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn dev(args: DevArgs) -> Result<()> {
    let signals = StopSignals::install()?;
    let server = RunningServer::start(&args.serve).await?;
    // The in-process worker gets a key of its own, revoked when `dev` stops: the dev key
    // printed at the first start is stored hashed, so it cannot be read back.
    let environment = server
        .store
        .environment_get(EnvironmentKind::Dev)
        .await?
        .context("the dev environment is missing")?;
    let key = SecretKey::generate(EnvironmentKind::Dev);
    server
        .store
        .api_key_insert(
            &key,
            &environment.id,
            server.engine.master_keys(),
            SystemClock.now(),
        )
        .await?;
    let mut addr = server.addr;
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let url = format!("http://{addr}");
    announce_trigger_dev(&server, &url, &args.serve.store).await?;
    let client = Client::new(url, key.expose());
    let outcome = match exec_worker(&args.exec, client) {
        Ok((worker, executor)) => {
            let _announce =
                announce_stop(&signals, &executor, &args.exec, Some(server.engine.clone()));
            // The in-process server records what the worker reports, also after a
            // second signal: it stops only once the worker has.
            worker
                .run_until(
                    executor,
                    signals.reached(StopRequest::Graceful),
                    signals.reached(StopRequest::Now),
                )
                .await
                .map_err(anyhow::Error::from)
        }
        Err(e) => Err(e),
    };
    if let Err(error) = server
        .store
        .api_key_revoke(&key.display_prefix(), SystemClock.now())
        .await
    {
        tracing::warn!(%error, "could not revoke the dev worker's key");
    }
    server.stop(signals.reached(StopRequest::Now)).await?;
    outcome?;
    Ok(())
}

/// After the address: how to point `npx trigger.dev dev` at this server (TypeScript
/// tasks). The first start creates a personal access token and prints it, like the dev
/// key (shown once); later starts put the command that prints a new one in its place.
async fn announce_trigger_dev(server: &RunningServer, url: &str, store: &StoreArgs) -> Result<()> {
    let project = server
        .store
        .project_get()
        .await?
        .context("the project is missing")?;
    let token = if server.first_start {
        let token = PersonalAccessToken::generate();
        server
            .store
            .pat_insert(&token, &project.id, SystemClock.now())
            .await?;
        println!(
            "Personal access token for `npx trigger.dev dev` (shown once, keep it): {}",
            token.expose()
        );
        token.expose().to_owned()
    } else {
        format!("\"$(runnel keys create --pat{})\"", store.command_line())
    };
    println!(
        "TypeScript tasks: export these, then run `npx trigger.dev dev` in your trigger.dev \
         project (TRIGGER_PROJECT_REF overrides `project` in trigger.config.ts):"
    );
    println!(
        "  export TRIGGER_API_URL={url} TRIGGER_ACCESS_TOKEN={token} TRIGGER_PROJECT_REF={}",
        project.id
    );
    Ok(())
}

async fn trigger(args: TriggerArgs) -> Result<()> {
    let payload: serde_json::Value =
        serde_json::from_str(&args.payload).context("--payload is not valid JSON")?;
    let client = Client::new(args.api.api_url.trim_end_matches('/'), args.api.key);
    let options = TriggerOptions {
        queue: args.queue,
        delay: args.delay,
        ttl: args.ttl,
        tags: args.tags,
        max_attempts: args.max_attempts,
        max_duration: args.max_duration,
        idempotency_key: args.idempotency_key,
        machine: args.machine,
        ..TriggerOptions::default()
    };
    let request = trigger::Trigger {
        task: args.task,
        payload,
        options,
        wait: args.wait.then_some(args.timeout),
    };
    trigger::run(&client, request).await
}

async fn envvars_command(command: EnvvarsCommand) -> Result<()> {
    let client = ApiArgs::client;
    match command {
        EnvvarsCommand::Ls { api } => envvars::ls(&client(&api)).await,
        EnvvarsCommand::Set {
            assignment,
            from_file,
            override_existing,
            secret,
            api,
        } => {
            envvars::set(
                &client(&api),
                assignment,
                from_file.as_deref(),
                secret,
                override_existing,
            )
            .await
        }
        EnvvarsCommand::Rm { name, api } => envvars::rm(&client(&api), &name).await,
    }
}

async fn schedules_command(command: SchedulesCommand) -> Result<()> {
    let client = ApiArgs::client;
    match command {
        SchedulesCommand::Ls { api } => schedules::ls(&client(&api)).await,
        SchedulesCommand::Create {
            task,
            cron,
            timezone,
            dedup_key,
            external_id,
            window,
            api,
        } => {
            let args = schedules::CreateArgs {
                task,
                cron,
                timezone,
                dedup_key,
                external_id,
                window,
            };
            schedules::create(&client(&api), args).await
        }
        SchedulesCommand::Rm { schedule, api } => schedules::rm(&client(&api), &schedule).await,
    }
}

async fn runs(command: RunsCommand) -> Result<()> {
    match command {
        RunsCommand::Get { id, api } => {
            let client = api.client();
            let run = client.retrieve(&id).await?;
            println!("{}", serde_json::to_string_pretty(&run.raw)?);
        }
        RunsCommand::Ls {
            statuses,
            tasks,
            tags,
            limit,
            after,
            api,
        } => {
            let client = api.client();
            let options = runnel_sdk::RunListOptions {
                statuses,
                tasks,
                tags,
                limit: Some(limit),
                after,
                before: None,
            };
            runs::ls(&client, &options).await?;
        }
        RunsCommand::Cancel { id, api } => {
            let client = api.client();
            runs::cancel(&client, &id).await?;
        }
        RunsCommand::Replay { id, api } => {
            let client = api.client();
            runs::replay(&client, &id).await?;
        }
        RunsCommand::Logs { id, follow, api } => {
            let client = api.client();
            runs::logs(&client, &id, follow).await?;
        }
    }
    Ok(())
}

/// How far SIGINT and SIGTERM have asked this process to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum StopRequest {
    Running,
    /// The first signal: stop taking work, let running attempts finish (the grace).
    Graceful,
    /// The second: interrupt running attempts now, report them, exit.
    Now,
}

/// SIGINT (Ctrl-C) and SIGTERM, counted: the first asks for a graceful stop, the second
/// for an immediate one, and a third exits at once without reporting anything. The
/// handlers are installed before the process says it listens, so a signal sent as soon
/// as it does never meets the default action (death without a clean stop).
#[derive(Debug, Clone)]
struct StopSignals(watch::Receiver<StopRequest>);

impl StopSignals {
    fn install() -> Result<StopSignals> {
        use tokio::signal::unix::{signal, SignalKind};
        let mut interrupt =
            signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
        let mut terminate =
            signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
        let (requests, request) = watch::channel(StopRequest::Running);
        tokio::spawn(async move {
            for next in [StopRequest::Graceful, StopRequest::Now] {
                tokio::select! {
                    _ = interrupt.recv() => {}
                    _ = terminate.recv() => {}
                }
                requests.send_replace(next);
            }
            tokio::select! {
                _ = interrupt.recv() => {}
                _ = terminate.recv() => {}
            }
            eprintln!("stopping: third signal, exiting without waiting");
            std::process::exit(130);
        });
        Ok(StopSignals(request))
    }

    /// Resolves once the signals asked for `at_least`.
    async fn reached(&self, at_least: StopRequest) {
        let mut request = self.0.clone();
        // The sender lives for the whole process, so this only ends by reaching it.
        let _ = request.wait_for(|request| *request >= at_least).await;
    }
}

async fn keys(command: KeysCommand) -> Result<()> {
    let now = SystemClock.now();
    match command {
        KeysCommand::Create {
            env,
            pat,
            store: store_args,
            master_key,
        } => {
            let store = open_existing_store(&store_args).await?;
            // The server's master key: refused when the database holds values sealed
            // under another (the server would then refuse to start on what this seals).
            let keys = master_key.load(&store_args.data_dir, false)?;
            let counts = store.sealed_key_ids().await?;
            runnel_engine::secrets::check(&counts, &keys).context("checking the master key")?;
            let secret = if pat {
                let project = store
                    .project_get()
                    .await?
                    .context("no project yet: start `runnel serve` once to create it")?;
                let token = PersonalAccessToken::generate();
                store.pat_insert(&token, &project.id, now).await?;
                token.expose().to_owned()
            } else {
                let env = env.context("--env or --pat is required")?;
                let environment = store
                    .environment_get(env)
                    .await?
                    .context("no project yet: start `runnel serve` once to create it")?;
                let key = SecretKey::generate(env);
                store
                    .api_key_insert(&key, &environment.id, &keys, now)
                    .await?;
                key.expose().to_owned()
            };
            store.close().await;
            println!("{secret}");
        }
        KeysCommand::List { store } => {
            let store = open_existing_store(&store).await?;
            let keys = store.api_key_list().await?;
            let tokens = store.pat_list().await?;
            store.close().await;
            // Keys, then tokens, each oldest first; merged by creation time (stable, so
            // a key and a token created at the same instant keep that order).
            let mut rows: Vec<_> = keys
                .into_iter()
                .map(|k| (k.created_at, k.prefix, k.environment.slug(), k.revoked_at))
                .chain(
                    tokens
                        .into_iter()
                        .map(|t| (t.created_at, t.prefix, "pat", t.revoked_at)),
                )
                .collect();
            rows.sort_by_key(|row| row.0);
            println!("{:<16} {:<8} {:<25} REVOKED", "PREFIX", "ENV", "CREATED");
            for (created_at, prefix, env, revoked_at) in rows {
                println!(
                    "{:<16} {:<8} {:<25} {}",
                    prefix,
                    env,
                    runnel_core::view::iso(created_at),
                    revoked_at
                        .map(runnel_core::view::iso)
                        .unwrap_or_else(|| "-".to_owned())
                );
            }
        }
        KeysCommand::Revoke { prefix, store } => {
            let store = open_existing_store(&store).await?;
            let outcome = store.api_key_revoke(&prefix, now).await?;
            store.close().await;
            match outcome {
                RevokeOutcome::Revoked { prefix } => println!("revoked {prefix}"),
                RevokeOutcome::NotFound => bail!("no live key starts with {prefix:?}"),
                RevokeOutcome::Ambiguous { matches } => {
                    bail!("{matches} live keys start with {prefix:?}; give more of the prefix")
                }
            }
        }
    }
    Ok(())
}
