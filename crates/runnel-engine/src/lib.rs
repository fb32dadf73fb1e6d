//! Runnel's orchestration: the operations the API calls (trigger, retrieve, cancel, the
//! worker protocol in [`workers`]) and the runtime services that move runs by time
//! (promoter, expirer, retry requeuer, rescuer: [`services`]), all over a [`Store`].
//!
//! The engine decides nothing about run semantics itself (that is `runnel-core`) and
//! remembers nothing (that is the store); it sequences the two and reads time from the
//! [`Clock`] it was given, so tests control it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use runnel_core::run::Run;
use runnel_core::tenancy::Environment;
use runnel_core::trigger::{IdempotencyHeaders, TriggerError, TriggerRequest};
use runnel_core::view::RunDetail;
use runnel_core::{EnvironmentId, RunId, WorkerId};
use runnel_store::{Store, TriggerOutcome, WorkerRecord};
use tokio::sync::Notify;

pub mod actions;
pub mod batches;
pub mod blobs;
pub mod changes;
pub mod clock;
pub mod dev;
pub mod devboot;
pub mod envvars;
pub mod events;
pub mod list;
pub mod multinode;
pub mod queues;
pub mod runtime;
pub mod schedules;
pub mod secrets;
pub mod services;
mod trigger;
mod unsupported;
pub mod waits;
pub mod workers;

pub use actions::ActionError;
pub use batches::BatchError;
pub use blobs::{BlobConfig, BlobError, BlobLocation, BlobMethod, Blobs};
pub use clock::{Clock, ManualClock, SystemClock};
pub use workers::{Completed, Completion, EngineConfig, Leased, Registered, WorkerError};

/// Why an engine operation failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Trigger(#[from] TriggerError),
    #[error(transparent)]
    Worker(#[from] WorkerError),
    #[error(transparent)]
    Wait(#[from] waits::WaitError),
    #[error(transparent)]
    Dev(#[from] dev::DevError),
    #[error(transparent)]
    EnvVars(#[from] envvars::EnvVarsError),
    #[error(transparent)]
    Schedule(#[from] schedules::ScheduleApiError),
    #[error(transparent)]
    Store(#[from] runnel_store::Error),
    /// Object storage failed (500).
    #[error(transparent)]
    Blob(#[from] blobs::BlobError),
}

/// The answer to a trigger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Triggered {
    pub id: RunId,
    /// An idempotency key matched an existing run; nothing new was created.
    pub is_cached: bool,
}

#[derive(Debug, Clone)]
pub struct Engine {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    config: Arc<EngineConfig>,
    /// Wakes a runtime service when a run gets a deadline it waits for ([`runtime`]).
    wakes: Arc<runtime::Wakes>,
    /// Wakes long-polling dequeuers when runs may have become available.
    runs_available: Arc<Notify>,
    /// Wakes long-polling heartbeats when held attempts may have ended.
    attempts_changed: Arc<Notify>,
    /// Registered workers by id. A worker's task list never changes; its version's task
    /// settings (retry, maxDuration) are read once, so re-registering a version with new
    /// settings only reaches workers this node loads afterwards.
    workers: Arc<Mutex<HashMap<WorkerId, Arc<WorkerRecord>>>>,
    /// The queue each served task's runs go to, as read by triggers ([`trigger`]).
    task_queues: Arc<trigger::TaskQueues>,
    /// Turns true when the server stops: open long polls answer at once.
    stopping: Arc<tokio::sync::watch::Sender<bool>>,
    /// This node's fan-out of run changes ([`changes`]).
    changes: Arc<changes::ChangeHub>,
    /// This node's one reader of changed runs ([`changes::RunFeed`]).
    feed: Arc<changes::Feed>,
    /// Wakes owed to the long polls of other nodes ([`multinode`]).
    outbox: Arc<multinode::Outbox>,
    /// When this engine was made (the node started): the rescuer's start-up grace runs
    /// one lease timeout from here ([`runtime`]).
    started_at: DateTime<Utc>,
}

impl Engine {
    pub fn new(store: Arc<dyn Store>, clock: Arc<dyn Clock>) -> Self {
        Self::with_config(store, clock, EngineConfig::default())
    }

    /// The keys secrets at rest are sealed under.
    pub fn master_keys(&self) -> &runnel_core::secrets::MasterKeys {
        &self.config.master_keys
    }

    pub fn with_config(store: Arc<dyn Store>, clock: Arc<dyn Clock>, config: EngineConfig) -> Self {
        let started_at = clock.now();
        Engine {
            started_at,
            store,
            clock,
            config: Arc::new(config),
            wakes: Arc::new(runtime::Wakes::default()),
            runs_available: Arc::new(Notify::new()),
            attempts_changed: Arc::new(Notify::new()),
            workers: Arc::new(Mutex::new(HashMap::new())),
            task_queues: Arc::new(trigger::TaskQueues::default()),
            stopping: Arc::new(tokio::sync::watch::channel(false).0),
            outbox: Arc::new(multinode::Outbox::new()),
            changes: Arc::new(changes::ChangeHub::new()),
            feed: Arc::new(changes::Feed::new()),
        }
    }

    /// Ends every open long poll (they answer with nothing) and refuses to hold new ones,
    /// so a stopping server does not wait out its workers' polls.
    pub fn stop_long_polls(&self) {
        self.stopping.send_replace(true);
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    pub fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    /// Whether this node can serve: its store reads and writes ([`Store::health`]).
    pub async fn health(&self) -> Result<(), runnel_store::Error> {
        self.store.health(self.clock.now()).await
    }

    /// Validates and stores a trigger of `task` in `environment`.
    pub async fn trigger(
        &self,
        environment: &Environment,
        task: &str,
        request: TriggerRequest,
        headers: &IdempotencyHeaders,
    ) -> Result<Triggered, Error> {
        let now = self.clock.now();
        let parents = self
            .parents_named(environment, std::iter::once(&request))
            .await?;
        let mut run = self.build_run(
            environment,
            task,
            request,
            headers,
            trigger::ParentLink::Named(&parents),
            now,
            "trigger",
        )?;
        self.payload_settle(environment, &mut run).await??;
        self.place(environment, std::iter::once(&mut run)).await?;
        // `triggerAndWait`: the parent waits for the child before the child exists.
        let waitpoint = match (&run.parent_run_id, run.resume_parent_on_completion) {
            (Some(parent), true) => Some(self.block_on_child(environment, parent, &run.id).await?),
            _ => None,
        };
        Ok(match self.store.run_trigger(&run, now).await? {
            TriggerOutcome::Created(id) => {
                self.after_insert(environment, std::iter::once((&run, &id)), now)
                    .await?;
                tracing::debug!(run = %id, task, env = %environment.kind, "run triggered");
                Triggered {
                    id,
                    is_cached: false,
                }
            }
            TriggerOutcome::Cached(id) => {
                if let Some(waitpoint) = &waitpoint {
                    self.wait_for_cached(waitpoint, &id).await?;
                }
                Triggered {
                    id,
                    is_cached: true,
                }
            }
        })
    }

    /// A run of `environment` as stored; `None` when it does not exist there.
    pub async fn run_get(
        &self,
        environment: &Environment,
        id: &RunId,
    ) -> Result<Option<Run>, Error> {
        Ok(self.store.run_get(&environment.id, id).await?)
    }

    /// The environment of `key` when it is live; `None` for a key that is unknown or
    /// revoked. A key stored before keys were sealed is sealed now, at its first use
    /// ([`secrets`]), so the tokens the SDK signs with it verify from then on.
    pub async fn api_key_authenticate(
        &self,
        key: &runnel_core::key::SecretKey,
    ) -> Result<Option<Environment>, Error> {
        let Some(found) = self.store.api_key_find(&key.hash()).await? else {
            return Ok(None);
        };
        if !found.sealed
            && self
                .store
                .api_key_seal_missing(key, self.master_keys())
                .await?
        {
            tracing::info!(
                key = %key.display_prefix(),
                "sealed a secret key stored before keys were sealed (at its first use since)"
            );
        }
        Ok(Some(found.environment))
    }

    /// An environment and its live secret keys (hash, and the key itself when it is
    /// stored sealed and opens here), which sign its public access tokens; `None` when
    /// the environment does not exist.
    pub async fn api_key_secrets(
        &self,
        environment: &EnvironmentId,
    ) -> Result<Option<(Environment, Vec<secrets::KeySecret>)>, Error> {
        let Some((environment, live)) = self.store.api_keys_live(environment).await? else {
            return Ok(None);
        };
        let keys = live
            .into_iter()
            .map(|key| secrets::KeySecret::open(key, self.master_keys()))
            .collect();
        Ok(Some((environment, keys)))
    }

    /// Every secret key of the project (prefixes, never the keys), oldest first: what
    /// `runnel keys list` and the dashboard's keys page show.
    pub async fn api_key_list(&self) -> Result<Vec<runnel_core::tenancy::ApiKeyInfo>, Error> {
        Ok(self.store.api_key_list().await?)
    }

    /// A run of `environment` with what its response shows (attempts, related runs);
    /// `None` when it does not exist there.
    pub async fn run_detail(
        &self,
        environment: &Environment,
        id: &RunId,
    ) -> Result<Option<RunDetail>, Error> {
        let Some(run) = self.store.run_get(&environment.id, id).await? else {
            return Ok(None);
        };
        let attempts = self.store.attempt_list(&run.id).await?;
        let children = self.store.run_children(&run.id).await?;
        let parent = match &run.parent_run_id {
            Some(parent) => self.store.run_get(&environment.id, parent).await?,
            None => None,
        };
        let root = match &run.root_run_id {
            Some(root) if Some(root) != run.parent_run_id.as_ref() => {
                self.store.run_get(&environment.id, root).await?
            }
            Some(_) => parent.clone(),
            None => None,
        };
        let schedule = self
            .schedule_of_run(environment, run.schedule_id.as_deref())
            .await?;
        Ok(Some(RunDetail {
            run,
            attempts,
            root,
            parent,
            children,
            schedule,
        }))
    }
}
