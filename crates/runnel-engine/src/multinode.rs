//! Waking long polls on every node: the engine's side of the store's signals
//! ([`runnel_store::multinode`]).
//!
//! When runs become available or held attempts end, the engine wakes its own long polls
//! at once ([`Engine::runs_became_available`], [`Engine::attempts_ended`]) and marks the
//! signal as owed to the other nodes. [`Engine::run_signals`], started next to the
//! runtime services, does the rest:
//!
//! ```text
//!   runs_became_available() ──local wake──▶ dequeuers of this node
//!        └─ owed[RunsAvailable] = true ──▶ publisher ──pg_notify('runnel_runs', node)──┐
//!                                                                                      ▼
//!   dequeuers of node B ◀──local wake── listener of node B ◀─────── LISTEN runnel_runs
//! ```
//!
//! Publishing is coalesced: a flag per signal, so a thousand triggers while one
//! `pg_notify` is on its way cost one more `pg_notify`, not a thousand, and at most one
//! goes out per [`PUBLISH_INTERVAL`]. A node ignores its own signals (they carry its
//! random node id). When the listening connection drops, the listener wakes everything,
//! since signals may have been missed meanwhile; a long poll that misses a signal anyway
//! only waits until its timeout and asks again. On SQLite there is no listener and
//! [`Engine::run_signals`] returns at once: one process, nothing to tell.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration as StdDuration;

use runnel_store::{Signal, SignalListener};
use tokio::sync::{watch, Notify};

use crate::Engine;

/// Shortest time between two publishes of this node: the most a remote poller's wake is
/// delayed by coalescing.
pub const PUBLISH_INTERVAL: StdDuration = StdDuration::from_millis(5);
/// Pause after a store error before listening or publishing again.
const ERROR_BACKOFF: StdDuration = StdDuration::from_secs(1);

/// Signals this node owes the others.
#[derive(Debug)]
pub(crate) struct Outbox {
    /// This node's id in the signals it publishes.
    node: String,
    runs: AtomicBool,
    attempts: AtomicBool,
    workers: AtomicBool,
    /// Runs written on this node, owed to the others' change receivers
    /// ([`crate::changes`]); collected only while a publisher runs (PostgreSQL).
    changes: std::sync::Mutex<OwedChanges>,
    /// Whether a publisher runs: on SQLite nobody takes the changes.
    publishing: AtomicBool,
    /// Wakes the publisher.
    pending: Notify,
}

impl Outbox {
    pub(crate) fn new() -> Outbox {
        Outbox {
            node: format!("node_{:016x}", rand_u64()),
            runs: AtomicBool::new(false),
            attempts: AtomicBool::new(false),
            workers: AtomicBool::new(false),
            changes: std::sync::Mutex::new(OwedChanges::default()),
            publishing: AtomicBool::new(false),
            pending: Notify::new(),
        }
    }

    /// Marks `signal` as owed; wakes the publisher only when it was not owed already.
    pub(crate) fn owe(&self, signal: Signal) {
        let Some(flag) = self.flag(signal) else {
            return;
        };
        if !flag.swap(true, Ordering::AcqRel) {
            self.pending.notify_one();
        }
    }

    /// Marks a written run as owed to the other nodes (when a publisher runs).
    pub(crate) fn owe_change(&self, run: &runnel_core::RunId) {
        if !self.publishing.load(Ordering::Acquire) {
            return;
        }
        let wake = {
            let mut owed = self.changes.lock().unwrap_or_else(|e| e.into_inner());
            if owed.runs.len() >= OWED_CHANGES_MAX {
                owed.missed = true;
            } else {
                owed.runs.push(run.clone());
            }
            owed.runs.len() == 1 || owed.missed
        };
        if wake {
            self.pending.notify_one();
        }
    }

    fn flag(&self, signal: Signal) -> Option<&AtomicBool> {
        match signal {
            Signal::RunsAvailable => Some(&self.runs),
            Signal::AttemptsChanged => Some(&self.attempts),
            Signal::WorkersChanged => Some(&self.workers),
            Signal::RunsChanged => None,
        }
    }

    /// The owed signals, clearing them.
    fn take(&self) -> Vec<Signal> {
        Signal::ALL
            .into_iter()
            .filter(|s| {
                self.flag(*s)
                    .is_some_and(|f| f.swap(false, Ordering::AcqRel))
            })
            .collect()
    }

    /// The owed run changes, clearing them.
    fn take_changes(&self) -> OwedChanges {
        std::mem::take(&mut *self.changes.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// Most run changes owed at once; past it (the database unreachable for long) the
/// others are told that changes were missed instead.
const OWED_CHANGES_MAX: usize = 100_000;

/// Run changes not yet published.
#[derive(Debug, Default)]
struct OwedChanges {
    runs: Vec<runnel_core::RunId>,
    /// Some were dropped past [`OWED_CHANGES_MAX`].
    missed: bool,
}

/// Random bits for the node id, without another dependency: the std hasher's keys are
/// random per process.
fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    hasher.write_u32(std::process::id());
    hasher.finish()
}

impl Engine {
    /// This node's id in the signals it publishes.
    pub fn node_id(&self) -> &str {
        &self.outbox.node
    }

    /// Publishes this node's signals and wakes its long polls on the other nodes'
    /// signals, until `shutdown` turns true. Returns at once on a store with no other
    /// nodes (SQLite).
    pub async fn run_signals(self, mut shutdown: watch::Receiver<bool>) {
        let listener = loop {
            match self.store.signal_listen().await {
                Ok(Some(listener)) => break listener,
                Ok(None) => return,
                Err(error) => {
                    tracing::error!(%error, "could not listen for other nodes' signals");
                    tokio::select! {
                        _ = tokio::time::sleep(ERROR_BACKOFF) => {}
                        _ = shutdown.changed() => return,
                    }
                }
            }
        };
        tracing::debug!(node = self.node_id(), "listening for other nodes' signals");
        self.outbox.publishing.store(true, Ordering::Release);
        tokio::select! {
            _ = self.listen(listener) => {}
            _ = self.publish() => {}
            _ = shutdown.wait_for(|stop| *stop) => {}
        }
    }

    async fn listen(&self, mut listener: Box<dyn SignalListener>) {
        loop {
            match listener.recv().await {
                Ok(Some(announcement)) if announcement.origin == self.outbox.node => {}
                Ok(Some(announcement)) if announcement.signal == Signal::RunsChanged => {
                    if announcement.runs.is_empty() {
                        self.changes.send(crate::changes::RunChange::Missed);
                    }
                    for run in announcement.runs {
                        self.changes.send(crate::changes::RunChange::Run(run));
                    }
                }
                Ok(Some(announcement)) => self.wake_local(announcement.signal),
                Ok(None) => {
                    tracing::warn!("lost the connection listening for other nodes' signals");
                    Signal::ALL.into_iter().for_each(|s| self.wake_local(s));
                }
                Err(error) => {
                    tracing::error!(%error, "listening for other nodes' signals failed");
                    Signal::ALL.into_iter().for_each(|s| self.wake_local(s));
                    tokio::time::sleep(ERROR_BACKOFF).await;
                }
            }
        }
    }

    async fn publish(&self) {
        loop {
            self.outbox.pending.notified().await;
            let signals = self.outbox.take();
            let changes = self.outbox.take_changes();
            if signals.is_empty() && changes.runs.is_empty() && !changes.missed {
                continue;
            }
            if !signals.is_empty() {
                if let Err(error) = self.store.signal_publish(&signals, &self.outbox.node).await {
                    // The other nodes' pollers find the runs when their waits end.
                    tracing::warn!(%error, "could not signal the other nodes");
                    tokio::time::sleep(ERROR_BACKOFF).await;
                }
            }
            if !changes.runs.is_empty() || changes.missed {
                let published = self
                    .store
                    .run_changes_publish(&changes.runs, changes.missed, &self.outbox.node)
                    .await;
                if let Err(error) = published {
                    // Lost changes: the others' receivers are told so on the next publish.
                    tracing::warn!(%error, "could not send run changes to the other nodes");
                    self.outbox
                        .changes
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .missed = true;
                    self.outbox.pending.notify_one();
                    tokio::time::sleep(ERROR_BACKOFF).await;
                }
            }
            tokio::time::sleep(PUBLISH_INTERVAL).await;
        }
    }

    /// Wakes this node's long polls for `signal`, without publishing it again.
    fn wake_local(&self, signal: Signal) {
        match signal {
            Signal::RunsAvailable => self.runs_available.notify_waiters(),
            Signal::AttemptsChanged => self.attempts_changed.notify_waiters(),
            Signal::WorkersChanged => self.task_queues.forget(),
            Signal::RunsChanged => self.changes.send(crate::changes::RunChange::Missed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn owed_signals_coalesce_into_one_wake_of_the_publisher() {
        let outbox = Outbox::new();
        for _ in 0..1000 {
            outbox.owe(Signal::RunsAvailable);
        }
        outbox.owe(Signal::AttemptsChanged);
        // One stored wake for the publisher, however many signals were owed.
        tokio::time::timeout(StdDuration::from_millis(100), outbox.pending.notified())
            .await
            .expect("the publisher is woken");
        assert_eq!(
            outbox.take(),
            vec![Signal::RunsAvailable, Signal::AttemptsChanged]
        );
        assert_eq!(outbox.take(), vec![], "taking clears what was owed");
        assert!(
            tokio::time::timeout(StdDuration::from_millis(50), outbox.pending.notified())
                .await
                .is_err(),
            "no second wake for signals already owed"
        );
        // Owing again after the take wakes it again.
        outbox.owe(Signal::RunsAvailable);
        tokio::time::timeout(StdDuration::from_millis(100), outbox.pending.notified())
            .await
            .expect("woken again");
        assert_eq!(outbox.take(), vec![Signal::RunsAvailable]);
    }

    #[test]
    fn node_ids_differ_between_engines() {
        assert_ne!(Outbox::new().node, Outbox::new().node);
    }
}
