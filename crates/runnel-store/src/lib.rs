//! Runnel's memory: the [`Store`] traits and their two backends. The only place SQL is
//! written.
//!
//! Every state change is a conditional write ("set status to Y if it is still X"), so two
//! actors racing on one run (an expirer and a worker, two server nodes) can never both
//! win. Time is always passed in (`now`), never read from the wall clock here, so tests
//! fix it. Decisions (what an idempotency key match means, which statuses are final)
//! come from `runnel-core`; the store only carries them out atomically.
//!
//! Backends, both passing one conformance suite (`tests/conformance/`, one module per area):
//!
//! - [`sqlite::SqliteStore`], the embedded default: one file, one writer connection.
//! - [`postgres::PgStore`], for several server nodes sharing one database: a connection
//!   pool, row locks (`FOR UPDATE`, `SKIP LOCKED`) where SQLite relies on its single
//!   writer.
//!
//! The two schemas (`migrations/sqlite`, `migrations/postgres`) have the same tables,
//! columns and indexes, and times are milliseconds since the epoch in both, so the
//! row mapping (`rows`) is shared and a record reads back identically from either.
//!
//! [`Store`] is the sum of one narrow trait per area, and each area is written once, as
//! `impl<B: Backend> AreaStore for B` (`backend.rs`: where reads and writes go, how a
//! write begins) over the dialect seam of `sql.rs` (placeholders, lists, lock suffixes,
//! byte collation):
//!
//! | trait | module | what |
//! |---|---|---|
//! | [`NodeStore`] | `node.rs` | health check, signals between nodes, closing |
//! | [`KeyStore`] | `keys.rs` | project, environments, secret keys, personal access tokens |
//! | [`RunStore`] | `runs.rs`, `list.rs` | trigger, read, list, the management API's changes |
//! | [`SweepStore`] | `sweeps.rs` | what the timed services look for and move |
//! | [`AttemptStore`] | `attempts.rs` | dequeue, start, heartbeat, settlement |
//! | [`WorkerStore`] | `workers.rs` | registration, versions, served tasks |
//! | [`QueueStore`] | `queues.rs` | declarations, limits, pause (a dequeue's admission under them: `admission.rs`) |
//! | [`BatchStore`] | `batches.rs` | batches, items, the multi-row trigger |
//! | [`WaitStore`] | `waits.rs` | waitpoints, what blocks a run, execution snapshots |
//! | [`EventStore`] | `events.rs` | a run's log lines and spans (OTLP ingest) |
//! | [`EnvVarStore`] | `envvars.rs` | environment variables, values sealed |
//! | [`ScheduleStore`] | `schedules.rs` | cron schedules and the swaps that fire each occurrence once |
//! | [`SecretStore`] | `secrets.rs` | values sealed under the master key (key ids, rotation), one-time tokens' uses |
//!
//! `sqlite.rs` and `postgres.rs` keep only how they connect and what truly differs:
//! the group-commit writer's transactions and PostgreSQL's idempotency-key race, the
//! dequeue's candidate selection and limited-queue locks, the bootstrap lock, NOTIFY.
//! Status values appear in SQL only as literals rendered from the enums
//! (`sql::status`), never hand-written.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use runnel_core::key::{EnvironmentKind, PersonalAccessToken, SecretKey};
use runnel_core::retry::RetryPolicy;
use runnel_core::run::{Attempt, AttemptStatus, Packet, Run};
use runnel_core::secrets::MasterKeys;
use runnel_core::tenancy::{ApiKeyInfo, Environment, PersonalAccessTokenInfo, Project};
use runnel_core::{AttemptId, EnvironmentId, MachinePreset, ProjectId, RunId, RunStatus, WorkerId};
use serde_json::Value;

mod admission;
mod attempts;
mod backend;
mod batches;
mod detach;
pub mod envvars;
pub mod events;
mod group;
mod keys;
mod list;
pub mod multinode;
mod node;
pub mod postgres;
pub mod queues;
mod rows;
mod runs;
pub mod schedules;
pub mod secrets;
mod sql;
pub mod sqlite;
mod sweeps;
mod waits;
mod workers;

pub use batches::{BatchCreateOutcome, BatchItemOutcome, BatchItemTrigger, BatchItemsOutcome};
pub use envvars::{EnvVarImport, EnvVarRecord, EnvVarStore, EnvVarWrite};
pub use events::{
    EventCursor, EventKind, EventStore, NewRunEvent, RunEvent, RunEventQuery,
    RUN_EVENTS_MAX_PER_RUN,
};
pub use multinode::{Announcement, Signal, SignalListener};
pub use postgres::PgStore;
pub use queues::{QueueChange, QueueDeclaration, QueueKind, QueueRecord, QueueRef};
pub use schedules::{
    DeclaredSync, DeclaredWrite, ScheduleClaim, ScheduleRecord, ScheduleRef, ScheduleStore,
    ScheduleWrite,
};
pub use secrets::{
    PublicTokenUse, Resealed, SealedColumn, SealedCount, SecretStore, SEALED_COLUMNS,
};
pub use sqlite::SqliteStore;
pub use waits::{BlockOutcome, WaitStore, WaitpointCreated};

/// A storage failure. Callers map it to a 500 and log it; it never reaches a client.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("stored data is invalid: {0}")]
    Corrupt(String),
    #[error("unsupported database url {0:?} (expected sqlite://, postgres:// or a file path)")]
    UnsupportedUrl(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What a trigger did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TriggerOutcome {
    /// The run was inserted.
    Created(RunId),
    /// Another run already holds the idempotency key; nothing was inserted.
    Cached(RunId),
}

/// Where a key [`KeyStore::api_key_ensure`] was asked for stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyStanding {
    /// Stored and not revoked (stored by this call or an earlier one).
    Live,
    /// Stored once and revoked since; it stays revoked.
    Revoked,
}

/// A live key found by its hash ([`KeyStore::api_key_find`]).
#[derive(Debug, Clone, PartialEq)]
pub struct FoundKey {
    pub environment: Environment,
    /// Its row holds the key sealed under a master key.
    pub sealed: bool,
}

/// A live key of an environment ([`KeyStore::api_keys_live`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveKey {
    /// Hex SHA-256 of the key.
    pub hash: String,
    /// The key sealed under a master key (context `api_key:<hash>`); `None` for a key
    /// stored before sealing existed that has not authenticated since.
    pub sealed: Option<String>,
}

/// What `api_key_revoke` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RevokeOutcome {
    Revoked {
        prefix: String,
    },
    NotFound,
    /// The prefix matches several live keys; nothing was revoked.
    Ambiguous {
        matches: usize,
    },
}

/// What the first start of a server created.
#[derive(Debug, Clone, PartialEq)]
pub struct Bootstrap {
    pub project: Project,
    pub environments: Vec<Environment>,
}

/// A task as a registered version serves it.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskConfig {
    pub task_identifier: String,
    pub queue: String,
    pub retry: Option<RetryPolicy>,
    pub max_duration_secs: Option<u32>,
    pub machine: Option<MachinePreset>,
    /// The task's source file in its project, when the worker says (a Trigger.dev
    /// manifest's `filePath`, shown to the task as `ctx.task.filePath`).
    pub file_path: Option<String>,
    /// A scheduled task: imperative schedules may attach to it.
    pub scheduled: bool,
}

/// A worker as it registers.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerRegistration {
    pub id: WorkerId,
    pub environment_id: EnvironmentId,
    pub name: String,
    /// `None`: the store assigns the next `YYYYMMDD.N` of `now`'s date.
    pub version: Option<String>,
    pub tasks: Vec<TaskConfig>,
    /// The declarative schedules this registration keeps in sync (in its transaction).
    pub schedules: DeclaredSync,
}

/// What a registration did.
#[derive(Debug, Clone, PartialEq)]
pub struct Registered {
    pub version: String,
    /// Runs that were waiting for a version serving their task and are now queued.
    pub promoted: Vec<RunId>,
}

/// A registered worker.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerRecord {
    pub id: WorkerId,
    pub environment_id: EnvironmentId,
    pub name: String,
    pub version: String,
    pub tasks: Vec<TaskConfig>,
    pub created_at: DateTime<Utc>,
}

impl WorkerRecord {
    pub fn task(&self, task_identifier: &str) -> Option<&TaskConfig> {
        self.tasks
            .iter()
            .find(|t| t.task_identifier == task_identifier)
    }
}

/// A run with the attempt that is (or was last) held on it.
#[derive(Debug, Clone, PartialEq)]
pub struct Leased {
    pub run: Run,
    pub attempt: Attempt,
}

/// A kind of deadline a runtime service waits for ([`SweepStore::run_next_deadline`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deadline {
    /// A delayed run's `delayUntil` (the promoter).
    DelayEnd,
    /// A queued or version-waiting run's TTL (the expirer).
    Ttl,
    /// A failed run's next attempt (the retry requeuer).
    NextAttempt,
    /// A held attempt's lease (the rescuer).
    LeaseEnd,
    /// An executing attempt's `maxDuration` deadline plus grace (the rescuer).
    MaxDuration,
}

/// Whose claim on an attempt a settlement relies on; the store settles only when the
/// claim still holds, so a late completion never overwrites a rescue and vice versa.
#[derive(Debug, Clone, PartialEq)]
pub enum Claim {
    /// The worker that holds the attempt reports its end.
    Worker(WorkerId),
    /// The rescuer: the lease ran out at or before this time.
    LeaseExpired(DateTime<Utc>),
    /// The backstop: the attempt passed its `maxDuration` deadline at or before this time.
    TimedOut(DateTime<Utc>),
}

/// The end of a held attempt, as the engine decided it.
#[derive(Debug, Clone, PartialEq)]
pub struct AttemptSettlement {
    pub run_id: RunId,
    pub attempt_id: AttemptId,
    pub claim: Claim,
    pub attempt_status: AttemptStatus,
    pub attempt_error: Option<Value>,
    /// Must be an edge of the state machine from the run's current status.
    pub run_status: RunStatus,
    /// Stored when the run ends in failure.
    pub run_error: Option<Value>,
    pub output: Option<Packet>,
    /// When the run waits for its next attempt (`RetryingAfterFailure`).
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// Whether the attempt counts against `maxAttempts`.
    pub spends_attempt: bool,
    /// Compute time of the attempt, added to the run's.
    pub duration_ms: i64,
    /// Its cost, added to the run's.
    pub cost_in_cents: f64,
    pub now: DateTime<Utc>,
}

/// What a cancel did.
#[derive(Debug, Clone, PartialEq)]
pub enum CancelOutcome {
    /// The run is now canceled; `attempt` is the attempt a worker held, which it must stop.
    Canceled {
        attempt: Option<AttemptId>,
    },
    /// The run had already ended; nothing changed.
    AlreadyFinal(RunStatus),
    NotFound,
}

/// Everything a store does: the area traits together. The engine holds an `Arc<dyn Store>`;
/// bring the area traits into scope with `use runnel_store::prelude::*`.
pub trait Store:
    NodeStore
    + KeyStore
    + RunStore
    + SweepStore
    + AttemptStore
    + WorkerStore
    + QueueStore
    + BatchStore
    + WaitStore
    + EventStore
    + EnvVarStore
    + SecretStore
    + ScheduleStore
    + Send
    + Sync
    + std::fmt::Debug
{
}

impl<T> Store for T where
    T: NodeStore
        + KeyStore
        + RunStore
        + SweepStore
        + AttemptStore
        + WorkerStore
        + QueueStore
        + BatchStore
        + WaitStore
        + EventStore
        + EnvVarStore
        + SecretStore
        + ScheduleStore
        + Send
        + Sync
        + std::fmt::Debug
{
}

/// The store's traits, for calling them on an `Arc<dyn Store>`.
pub mod prelude {
    pub use crate::{
        AttemptStore, BatchStore, EnvVarStore, EventStore, KeyStore, NodeStore, QueueStore,
        RunStore, ScheduleStore, SecretStore, Store, SweepStore, WaitStore, WorkerStore,
    };
}

/// What a server node needs of its database besides data: a health check, signals
/// between the nodes sharing it, and closing.
#[async_trait]
pub trait NodeStore: Send + Sync {
    /// Whether this node can serve: a trivial read, then a trivial write through the path
    /// every write takes (on SQLite the one writer connection, so a connection a failed
    /// COMMIT left wedged, a full disk or a read-only file all fail it). `/healthz`
    /// answers 503 when it fails.
    async fn health(&self, now: DateTime<Utc>) -> Result<()>;

    /// Tells every node sharing this database that `signals` happened on node `origin`
    /// (one round trip). Nothing to tell on a single-process backend (SQLite).
    async fn signal_publish(&self, signals: &[Signal], origin: &str) -> Result<()> {
        let _ = (signals, origin);
        Ok(())
    }

    /// Tells every node sharing this database that node `origin` wrote `runs`
    /// ([`Signal::RunsChanged`]); with `missed`, that it dropped some (receivers read
    /// everything again). Nothing to tell on a single-process backend (SQLite).
    async fn run_changes_publish(
        &self,
        runs: &[runnel_core::RunId],
        missed: bool,
        origin: &str,
    ) -> Result<()> {
        let _ = (runs, missed, origin);
        Ok(())
    }

    /// A listener receiving the signals every node publishes, on a connection of its
    /// own; `None` on a single-process backend (SQLite), where there is nobody else.
    async fn signal_listen(&self) -> Result<Option<Box<dyn SignalListener>>> {
        Ok(None)
    }

    /// Closes the pools: waits for connections in use, then checkpoints and closes.
    async fn close(&self);
}

/// The project, its environments and their secret keys, and the personal access tokens
/// of the `trigger.dev` CLI.
#[async_trait]
pub trait KeyStore: Send + Sync {
    /// On an empty database: creates the project, its environments and `dev_key` in one
    /// transaction and returns them. When a project exists, changes nothing and returns
    /// `None` (so the key is never stored).
    ///
    /// Every key this store inserts is also stored sealed under `keys`' current master
    /// key (context `api_key:<hash>`, [`secrets::api_key_context`]).
    async fn project_bootstrap(
        &self,
        dev_key: &SecretKey,
        keys: &MasterKeys,
        now: DateTime<Utc>,
    ) -> Result<Option<Bootstrap>>;

    async fn project_get(&self) -> Result<Option<Project>>;

    async fn environment_get(&self, kind: EnvironmentKind) -> Result<Option<Environment>>;

    /// Stores a new key (hashed, and sealed under `keys`) for `environment`.
    async fn api_key_insert(
        &self,
        key: &SecretKey,
        environment: &EnvironmentId,
        keys: &MasterKeys,
        now: DateTime<Utc>,
    ) -> Result<()>;

    /// A live (not revoked) key with this hash: its environment, and whether it is
    /// stored sealed (a key stored before sealing existed is not, until
    /// [`KeyStore::api_key_seal_missing`]).
    async fn api_key_find(&self, key_hash: &str) -> Result<Option<FoundKey>>;

    /// The environment of a live (not revoked) key with this hash.
    async fn api_key_authenticate(&self, key_hash: &str) -> Result<Option<Environment>> {
        Ok(self.api_key_find(key_hash).await?.map(|k| k.environment))
    }

    /// Stores `key` sealed under `keys` when its row has no sealed value yet (a key
    /// stored before sealing existed); says whether it did. A conditional update: a
    /// concurrent seal of the same key leaves the first one.
    async fn api_key_seal_missing(&self, key: &SecretKey, keys: &MasterKeys) -> Result<bool>;

    /// All keys, oldest first.
    async fn api_key_list(&self) -> Result<Vec<ApiKeyInfo>>;

    /// Revokes the one live secret key or personal access token whose display prefix
    /// starts with `prefix` (both kinds are searched; a prefix matching one of each is
    /// ambiguous).
    async fn api_key_revoke(&self, prefix: &str, now: DateTime<Utc>) -> Result<RevokeOutcome>;

    /// Stores `key` (hashed) for `environment` unless a key with its hash is already
    /// stored, and says where it stands. Idempotent, and safe when several callers (on
    /// several nodes) ensure one key at once: for a key derived again and again from the
    /// same personal access token. A revoked key is not revived.
    /// A row stored before sealing existed gets its sealed value here.
    async fn api_key_ensure(
        &self,
        key: &SecretKey,
        environment: &EnvironmentId,
        keys: &MasterKeys,
        now: DateTime<Utc>,
    ) -> Result<KeyStanding>;

    /// Stores a new personal access token (hashed) for `project`.
    async fn pat_insert(
        &self,
        token: &PersonalAccessToken,
        project: &ProjectId,
        now: DateTime<Utc>,
    ) -> Result<()>;

    /// The project of a live (not revoked) personal access token with this hash.
    async fn pat_authenticate(&self, token_hash: &str) -> Result<Option<Project>>;

    /// All personal access tokens, oldest first.
    async fn pat_list(&self) -> Result<Vec<PersonalAccessTokenInfo>>;

    /// Environment `id` and its live (not revoked) keys, oldest first: hash and sealed
    /// key, the secrets a public access token of that environment may be signed with.
    /// `None` when there is no such environment; an environment whose keys are all
    /// revoked has none.
    async fn api_keys_live(
        &self,
        environment: &EnvironmentId,
    ) -> Result<Option<(Environment, Vec<LiveKey>)>>;
}

/// Runs: triggering, reading, listing, and the changes the management API makes.
#[async_trait]
pub trait RunStore: Send + Sync {
    /// Inserts `run`, honouring its idempotency key atomically: when another run of the
    /// same environment and task holds the key, `runnel_core::idempotency::decide` says
    /// whether to return that run or release its key and insert this one.
    async fn run_trigger(&self, run: &Run, now: DateTime<Utc>) -> Result<TriggerOutcome>;

    /// Inserts `runs` with one multi-row insert in one transaction (chunked to the
    /// backend's bind-parameter limit), honouring each run's idempotency key as
    /// [`RunStore::run_trigger`] does; two runs of the call with the same key behave as two
    /// triggers in a row. One outcome per run, in order.
    async fn run_trigger_many(
        &self,
        runs: &[Run],
        now: DateTime<Utc>,
    ) -> Result<Vec<TriggerOutcome>>;

    /// A run of `environment`; `None` when missing or in another environment.
    async fn run_get(&self, environment: &EnvironmentId, id: &RunId) -> Result<Option<Run>>;

    /// A run of any environment (for the engine's own bookkeeping, never a caller's read).
    async fn run_get_any(&self, id: &RunId) -> Result<Option<Run>>;

    /// The runs triggered by `parent`, oldest first.
    async fn run_children(&self, parent: &RunId) -> Result<Vec<Run>>;

    /// Conditional transition: moves the run to `to` only if it is still `from` and the
    /// state machine has that edge (`RunStatus::can_move_to`). Entering a final status
    /// sets `completed_at`. Returns whether the run moved.
    async fn run_transition(
        &self,
        id: &RunId,
        from: RunStatus,
        to: RunStatus,
        now: DateTime<Utc>,
    ) -> Result<bool>;

    /// Runs of `query.environment_id` matching its filter and window, beyond its cursor,
    /// at most `query.limit`, nearest the cursor first: newest first, or oldest first
    /// when paging toward newer runs (`runnel_core::list::RunListQuery`). Served by an
    /// index range on `(environment_id, created_at, id)`, so a page costs the same
    /// however many runs exist.
    async fn run_list(&self, query: &runnel_core::list::RunListQuery) -> Result<Vec<Run>>;

    /// The live (non-final) runs of `environment` below `parent`: its children, their
    /// children and so on, shallowest first. Cancel uses it to end a run's subtree.
    async fn run_descendants_live(
        &self,
        environment: &EnvironmentId,
        parent: &RunId,
    ) -> Result<Vec<RunId>>;

    /// Moves a delayed run's delay: sets `delay_until`, `expire_at` (the TTL clock starts
    /// at the end of the delay) and `queue_ts`, only while the run is still `Delayed`.
    /// Returns whether it changed.
    async fn run_reschedule(
        &self,
        environment: &EnvironmentId,
        id: &RunId,
        delay_until: DateTime<Utc>,
        expire_at: Option<DateTime<Utc>>,
        queue_ts: i64,
        now: DateTime<Utc>,
    ) -> Result<bool>;

    /// Compare-and-swap of a run's tags: stores `tags` only if the stored ones are still
    /// `expected`. Returns whether it changed (false also when the run is missing).
    async fn run_tags_replace(
        &self,
        environment: &EnvironmentId,
        id: &RunId,
        expected: &[String],
        tags: &[String],
        now: DateTime<Utc>,
    ) -> Result<bool>;

    /// Compare-and-swap of a run's metadata: stores `metadata` only if the stored packet
    /// is still `expected` (data and type). Returns whether it changed.
    async fn run_metadata_replace(
        &self,
        environment: &EnvironmentId,
        id: &RunId,
        expected: Option<&Packet>,
        metadata: &Packet,
        now: DateTime<Utc>,
    ) -> Result<bool>;

    /// Clears the idempotency key `key` from the runs of `environment` and `task` holding
    /// it, so the next trigger with that key creates a new run. Returns how many runs
    /// released it.
    async fn idempotency_key_reset(
        &self,
        environment: &EnvironmentId,
        task: &str,
        key: &str,
        now: DateTime<Utc>,
    ) -> Result<u64>;

    /// Cancels a live run of `environment` (with `TASK_RUN_CANCELLED`), ending its held
    /// attempt; the attempt's compute time so far is charged at `cents_per_ms`.
    async fn run_cancel(
        &self,
        environment: &EnvironmentId,
        id: &RunId,
        cents_per_ms: f64,
        now: DateTime<Utc>,
    ) -> Result<CancelOutcome>;
}

/// What the timed services (`runnel-engine/src/services/`) look for and move: due
/// delays, TTLs, retries and leases.
#[async_trait]
pub trait SweepStore: Send + Sync {
    /// Expires up to `limit` queued (or version-waiting) runs whose TTL deadline is at or
    /// before `now`.
    async fn run_expire_due(&self, now: DateTime<Utc>, limit: u32) -> Result<Vec<RunId>>;

    /// Moves up to `limit` delayed runs past `delayUntil` at `now` (to `Queued`, or
    /// `PendingVersion` when no version serves them), and up to `limit` `PendingVersion`
    /// runs that a registered version now serves (to `Queued`).
    async fn run_promote_due(&self, now: DateTime<Utc>, limit: u32) -> Result<Vec<RunId>>;

    /// Moves up to `limit` runs waiting to retry whose `next_attempt_at` is at or before
    /// `now` back to `Queued`.
    async fn run_requeue_due(&self, now: DateTime<Utc>, limit: u32) -> Result<Vec<RunId>>;

    /// The earliest deadline of this kind any run has, if any.
    async fn run_next_deadline(&self, kind: Deadline) -> Result<Option<DateTime<Utc>>>;

    /// The earliest moment the runtime services have work (a delay, TTL, retry, lease or
    /// maxDuration deadline), if any. Lease ends count only `with_leases` (not during the
    /// rescuer's start-up grace, which holds them back).
    async fn run_next_due_at(&self, with_leases: bool) -> Result<Option<DateTime<Utc>>>;

    /// Up to `limit` held runs whose lease ran out by `leases_expired_by` (none when it
    /// is `None`: the rescuer's start-up grace) or whose attempt passed its `maxDuration`
    /// deadline by `timed_out_by`.
    async fn run_leases_due(
        &self,
        leases_expired_by: Option<DateTime<Utc>>,
        timed_out_by: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<Leased>>;
}

/// A run's attempts as workers hold them: dequeue, start, heartbeat, settlement.
#[async_trait]
pub trait AttemptStore: Send + Sync {
    /// The attempts of a run, by number.
    async fn attempt_list(&self, run: &RunId) -> Result<Vec<Attempt>>;

    /// Leases up to `limit` queued runs of the tasks `worker` serves (its version, or
    /// unlocked), oldest `queue_ts` first: each moves to `Dequeued` with a new `Pending`
    /// attempt, the worker's version and a lease until `lease_until`. Settings the
    /// trigger left open (maxDuration, machine) are taken from the worker's task.
    async fn run_dequeue(
        &self,
        worker: &WorkerRecord,
        limit: u32,
        lease_until: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<Vec<Leased>>;

    /// Starts the attempts `worker` holds among `attempt_ids`: run `Dequeued` →
    /// `Executing` (first start sets `started_at` and charges `run_fee_cents`), attempt
    /// `Pending` → `Executing`, and a `maxDuration` deadline `timeout_grace_ms` after the
    /// limit. Returns the ids that started.
    async fn attempt_start(
        &self,
        worker: &WorkerId,
        attempt_ids: &[AttemptId],
        lease_until: DateTime<Utc>,
        timeout_grace_ms: i64,
        run_fee_cents: f64,
        now: DateTime<Utc>,
    ) -> Result<Vec<AttemptId>> {
        Ok(self
            .attempt_start_runs(
                worker,
                attempt_ids,
                lease_until,
                timeout_grace_ms,
                run_fee_cents,
                now,
            )
            .await?
            .into_iter()
            .map(|(attempt, _)| attempt)
            .collect())
    }

    /// [`AttemptStore::attempt_start`], returning each started attempt with its run.
    async fn attempt_start_runs(
        &self,
        worker: &WorkerId,
        attempt_ids: &[AttemptId],
        lease_until: DateTime<Utc>,
        timeout_grace_ms: i64,
        run_fee_cents: f64,
        now: DateTime<Utc>,
    ) -> Result<Vec<(AttemptId, RunId)>>;

    /// Extends to `lease_until` the leases `worker` still holds among `attempt_ids`, and
    /// returns those ids; the others are no longer the worker's to run.
    async fn attempt_heartbeat(
        &self,
        worker: &WorkerId,
        attempt_ids: &[AttemptId],
        lease_until: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<Vec<AttemptId>>;

    /// The runs whose current attempt is one of `attempt_ids`, with that attempt.
    async fn attempts_held(&self, attempt_ids: &[AttemptId]) -> Result<Vec<Leased>>;

    /// Applies settlements in one transaction; each applies only if its attempt is still
    /// the run's current one, the run is `Dequeued` or `Executing`, and its claim holds.
    /// Returns, per settlement, whether it applied.
    async fn attempt_settle(&self, settlements: &[AttemptSettlement]) -> Result<Vec<bool>>;
}

/// Registered workers and the versions and tasks they serve.
#[async_trait]
pub trait WorkerStore: Send + Sync {
    /// Registers a worker: assigns the version when it has none, records the tasks the
    /// version serves and queues the runs that were waiting for such a version.
    async fn worker_register(
        &self,
        registration: &WorkerRegistration,
        now: DateTime<Utc>,
    ) -> Result<Registered>;

    async fn worker_get(&self, id: &WorkerId) -> Result<Option<WorkerRecord>>;

    /// Whether a registered version of `environment` serves `task` (`version` itself,
    /// when given).
    async fn task_served(
        &self,
        environment: &EnvironmentId,
        task: &str,
        version: Option<&str>,
    ) -> Result<bool>;

    /// The queue the newest registered version serving `task` (`version` itself, when
    /// given) declared for it; `None` when no version serves it.
    async fn task_queue(
        &self,
        environment: &EnvironmentId,
        task: &str,
        version: Option<&str>,
    ) -> Result<Option<String>>;
}

/// Named queues: declarations, limits, pausing.
#[async_trait]
pub trait QueueStore: Send + Sync {
    /// Creates the declared queues that are missing and sets the registered limit of
    /// those whose declaration states one (see [`QueueDeclaration`]).
    async fn queue_declare(
        &self,
        environment: &EnvironmentId,
        declarations: &[QueueDeclaration],
        now: DateTime<Utc>,
    ) -> Result<()>;

    /// A page of the environment's queues by name, with the total count.
    async fn queue_list(
        &self,
        environment: &EnvironmentId,
        offset: u64,
        limit: u32,
    ) -> Result<(Vec<QueueRecord>, u64)>;

    /// One queue of `environment`, with its counts.
    async fn queue_get(
        &self,
        environment: &EnvironmentId,
        queue: &QueueRef,
    ) -> Result<Option<QueueRecord>>;

    /// Pauses, resumes, overrides or resets a queue's limit; returns it as it is after,
    /// or `None` when it does not exist.
    async fn queue_update(
        &self,
        environment: &EnvironmentId,
        queue: &QueueRef,
        change: QueueChange,
        now: DateTime<Utc>,
    ) -> Result<Option<QueueRecord>>;
}

/// Batches and their items.
#[async_trait]
pub trait BatchStore: Send + Sync {
    /// Stores a new batch. When a batch of the same environment holds its idempotency
    /// key (not expired), returns that batch instead; an expired holder gives the key up.
    async fn batch_create(
        &self,
        batch: &runnel_core::batch::BatchRecord,
        now: DateTime<Utc>,
    ) -> Result<BatchCreateOutcome>;

    /// A batch of `environment`; `None` when missing or in another environment.
    async fn batch_get(
        &self,
        environment: &EnvironmentId,
        id: &runnel_core::BatchId,
    ) -> Result<Option<runnel_core::batch::BatchRecord>>;

    /// The items of a batch that have arrived, by index.
    async fn batch_item_list(
        &self,
        id: &runnel_core::BatchId,
    ) -> Result<Vec<runnel_core::batch::BatchItemRecord>>;

    /// Records the items of a batch of `environment` whose index has not arrived yet and
    /// triggers their runs as [`RunStore::run_trigger_many`] does, in one transaction that
    /// holds the batch row, so two calls with overlapping indexes record each index
    /// once. Seals the batch (status `COMPLETED`) when its last missing index arrives.
    async fn batch_items_trigger(
        &self,
        environment: &EnvironmentId,
        id: &runnel_core::BatchId,
        items: &[BatchItemTrigger],
        now: DateTime<Utc>,
    ) -> Result<BatchItemsOutcome>;
}
