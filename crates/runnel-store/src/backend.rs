//! The [`Backend`] trait: where a store's reads and writes go, and the few things the two
//! backends do their own way. Every area's statements are written once against it
//! (`impl<B: Backend> RunStore for B` and so on).

use std::future::Future;
use std::pin::Pin;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use runnel_core::run::Run;
use sqlx::pool::PoolConnection;

use crate::admission::{DequeueGate, Gates};
use crate::sql::{Conn, Db, Dialect};
use crate::{Result, TriggerOutcome, WorkerRecord};

/// A write transaction run by [`Backend::retry_key_race`], owning its borrows.
pub(crate) type KeyedWrite<'w, T> = Pin<Box<dyn Future<Output = Result<T>> + Send + 'w>>;

/// A store backend: its dialect, and where reads and writes go. Every area's statements
/// are written once against this trait (`impl<B: Backend> RunStore for B` and so on).
#[async_trait]
pub(crate) trait Backend: Clone + Send + Sync + std::fmt::Debug + 'static {
    type D: Dialect;

    /// A connection to read on (SQLite: the reader pool, never blocking the writer).
    async fn reader(&self) -> Result<PoolConnection<Db<Self::D>>>;

    /// A connection for a write of one statement, atomic on its own (SQLite: the one
    /// writer connection).
    async fn writer(&self) -> Result<PoolConnection<Db<Self::D>>>;

    /// A write transaction (SQLite: `BEGIN IMMEDIATE` on the writer, recovering a
    /// connection a failed COMMIT left wedged). Multi-statement writes run detached
    /// (`detach.rs`), so no caller going away cuts one in half.
    async fn begin(&self) -> Result<sqlx::Transaction<'static, Db<Self::D>>>;

    /// Holds back a second node bootstrapping the same empty database until this
    /// transaction ends (PostgreSQL: a transaction-scoped advisory lock). SQLite's writer
    /// already serializes it.
    async fn serialize_bootstrap(&self, conn: &mut Conn<Self::D>) -> Result<()> {
        let _ = conn;
        Ok(())
    }

    /// Tells every node sharing this database that `signals` happened on node `origin`
    /// (PostgreSQL: NOTIFY). Nobody else shares a SQLite file's server.
    async fn publish(&self, signals: &[crate::Signal], origin: &str) -> Result<()> {
        let _ = (signals, origin);
        Ok(())
    }

    /// Tells the other nodes these runs were written (`missed`: and that some were
    /// dropped); nothing to do where there is nobody else (SQLite).
    async fn publish_changes(
        &self,
        runs: &[runnel_core::RunId],
        missed: bool,
        origin: &str,
    ) -> Result<()> {
        let _ = (runs, missed, origin);
        Ok(())
    }

    /// A listener on a connection of its own for the signals every node publishes;
    /// `None` where there is nobody else (SQLite).
    async fn listen(&self) -> Result<Option<Box<dyn crate::SignalListener>>> {
        Ok(None)
    }

    /// Closes the pools: waits for connections in use, then checkpoints and closes.
    async fn close_pools(&self);

    /// Inserts one run ([`crate::RunStore::run_trigger`]) through the backend's
    /// group-commit writer (`group.rs`): the transaction a group shares, and how it
    /// settles idempotency keys (PostgreSQL locks the key's holder and runs again when a
    /// concurrent trigger takes the key first), are the backend's own.
    async fn trigger(&self, run: &Run, now: DateTime<Utc>) -> Result<TriggerOutcome>;

    /// Inserts `runs` in one transaction ([`crate::RunStore::run_trigger_many`]), with the
    /// backend's own idempotency handling as [`Backend::trigger`].
    async fn trigger_many(&self, runs: &[Run], now: DateTime<Utc>) -> Result<Vec<TriggerOutcome>>;

    /// Runs `write`, one write transaction that inserts runs or a batch under their
    /// idempotency keys, again while a concurrent writer takes one of its keys first
    /// (PostgreSQL: the unique index refuses the insert after the holder look-up found
    /// nothing to lock; see postgres.rs), a bounded number of rounds. `what` names the
    /// write in logs. SQLite's one writer cannot lose that race: `write` runs once.
    async fn retry_key_race<'w, T: Send + 'w>(
        &'w self,
        what: &'w str,
        write: &'w (dyn Fn() -> KeyedWrite<'w, T> + Send + Sync),
    ) -> Result<T> {
        let _ = what;
        write().await
    }

    /// Whether every write queues for one connection (SQLite). A write that mostly finds
    /// nothing to do (the dequeue of idle workers, woken together) then looks on a reader
    /// first, so it does not queue for the writer in vain.
    const ONE_WRITER: bool = false;

    /// The oldest queued runs `worker` may take (its tasks; its version or unlocked),
    /// at most `limit`, by `queue_ts, id`, with `gate` applied when the environment has
    /// gated queues (`attempts::gate_sql`). What the selection may rely on differs:
    /// SQLite's one writer already keeps concurrent dequeues apart; PostgreSQL locks the
    /// runs it picks `FOR UPDATE SKIP LOCKED` and reads one index range per task.
    async fn dequeue_candidates(
        &self,
        conn: &mut Conn<Self::D>,
        worker: &WorkerRecord,
        gate: Option<&DequeueGate<'_>>,
        limit: u32,
    ) -> Result<Vec<Run>>;

    /// Before a dequeue over gated queues picks runs: makes the dequeues of one limited
    /// queue take turns, and returns the limited queues left out of this dequeue
    /// (`queues.rs`). SQLite's one writer already makes them take turns: none left out.
    async fn dequeue_lock_queues(
        &self,
        conn: &mut Conn<Self::D>,
        worker: &WorkerRecord,
        gates: &Gates,
    ) -> Result<Vec<String>> {
        let _ = (conn, worker, gates);
        Ok(Vec::new())
    }
}
