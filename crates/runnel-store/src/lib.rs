//! Runnel's memory: the [`Store`] trait and its backends. The only place SQL is written.
//!
//! Every state change is a conditional write ("set status to Y if it is still X"), so two
//! actors racing on one run (an expirer and a worker, two server nodes) can never both
//! win. Time is always passed in (`now`), never read from the wall clock here, so tests
//! fix it. Decisions (what an idempotency key match means, which statuses are final)
//! come from `runnel-core`; the store only carries them out atomically.
//!
//! Backends, both passing one conformance suite (`tests/conformance.rs`):
//!
//! - [`sqlite::SqliteStore`], the embedded default: one file, one writer connection.
//! - [`postgres::PgStore`], for several server nodes sharing one database: a connection
//!   pool, row locks (`FOR UPDATE`, `SKIP LOCKED`) where SQLite relies on its single
//!   writer.
//!
//! The two schemas (`migrations/sqlite`, `migrations/postgres`) have the same tables,
//! columns and indexes, and times are milliseconds since the epoch in both, so the
//! row mapping (`rows`) is shared and a record reads back identically from either.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use runnel_core::key::{EnvironmentKind, SecretKey};
use runnel_core::run::{Attempt, Run};
use runnel_core::tenancy::{ApiKeyInfo, Environment, Project};
use runnel_core::{EnvironmentId, RunId, RunStatus};

pub mod postgres;
mod rows;
pub mod sqlite;

pub use postgres::PgStore;
pub use sqlite::SqliteStore;

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

#[async_trait]
pub trait Store: Send + Sync + std::fmt::Debug {
    /// Cheap round trip proving the database answers.
    async fn ping(&self) -> Result<()>;

    /// On an empty database: creates the project, its environments and `dev_key` in one
    /// transaction and returns them. When a project exists, changes nothing and returns
    /// `None` (so the key is never stored).
    async fn project_bootstrap(
        &self,
        dev_key: &SecretKey,
        now: DateTime<Utc>,
    ) -> Result<Option<Bootstrap>>;

    async fn project_get(&self) -> Result<Option<Project>>;

    async fn environment_get(&self, kind: EnvironmentKind) -> Result<Option<Environment>>;

    /// Stores a new key (hashed) for `environment`.
    async fn api_key_insert(
        &self,
        key: &SecretKey,
        environment: &EnvironmentId,
        now: DateTime<Utc>,
    ) -> Result<()>;

    /// The environment of a live (not revoked) key with this hash.
    async fn api_key_authenticate(&self, key_hash: &str) -> Result<Option<Environment>>;

    /// All keys, oldest first.
    async fn api_key_list(&self) -> Result<Vec<ApiKeyInfo>>;

    /// Revokes the one live key whose display prefix starts with `prefix`.
    async fn api_key_revoke(&self, prefix: &str, now: DateTime<Utc>) -> Result<RevokeOutcome>;

    /// Inserts `run`, honouring its idempotency key atomically: when another run of the
    /// same environment and task holds the key, `runnel_core::idempotency::decide` says
    /// whether to return that run or release its key and insert this one.
    async fn run_trigger(&self, run: &Run, now: DateTime<Utc>) -> Result<TriggerOutcome>;

    /// A run of `environment`; `None` when missing or in another environment.
    async fn run_get(&self, environment: &EnvironmentId, id: &RunId) -> Result<Option<Run>>;

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

    /// Expires up to `limit` queued runs whose TTL deadline is at or before `now`.
    async fn run_expire_due(&self, now: DateTime<Utc>, limit: u32) -> Result<Vec<RunId>>;

    /// Queues up to `limit` delayed runs whose delay ended at or before `now`.
    async fn run_promote_due(&self, now: DateTime<Utc>, limit: u32) -> Result<Vec<RunId>>;

    /// The earliest moment the expirer or the promoter has work, if any.
    async fn run_next_due_at(&self) -> Result<Option<DateTime<Utc>>>;

    /// The attempts of a run, by number.
    async fn attempt_list(&self, run: &RunId) -> Result<Vec<Attempt>>;

    /// Closes the pools: waits for connections in use, then checkpoints and closes.
    async fn close(&self);
}
