//! Run changes: what realtime subscriptions and the dashboard's live views are fed from.
//!
//! Every engine operation that writes a run (trigger, dequeue, start, complete, retry,
//! wait, resume, cancel, expire, reschedule, tags, metadata, …) reports the runs it
//! changed with [`Engine::runs_changed`]. Receivers from [`Engine::run_changes`] get
//! them as [`RunChange::Run`] and read the runs again themselves: a change carries no
//! state, so a reader never sees an older row than the store holds.
//!
//! With PostgreSQL the ids also go to the other nodes (coalesced, through the
//! `runnel_run_changes` notification, [`crate::multinode`]), so a subscriber on node B
//! sees a run that node A completed. When changes may have been missed (a receiver fell
//! more than [`CHANNEL_CAPACITY`] changes behind, or the listening connection dropped),
//! receivers get [`RunChange::Missed`] and should read everything they watch again.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use futures_util::StreamExt;
use runnel_core::run::Run;
use runnel_core::RunId;
use tokio::sync::broadcast;

use crate::Engine;

/// Changes a receiver may fall behind by before it is told [`RunChange::Missed`].
pub const CHANNEL_CAPACITY: usize = 16_384;

/// One change, as a receiver sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunChange {
    /// This run was written: read it again.
    Run(RunId),
    /// Changes may have been lost: read everything watched again.
    Missed,
}

/// A receiver of run changes ([`Engine::run_changes`]).
#[derive(Debug)]
pub struct RunChanges {
    receiver: broadcast::Receiver<RunChange>,
}

impl RunChanges {
    /// The next change; `None` once the engine is gone.
    pub async fn recv(&mut self) -> Option<RunChange> {
        match self.receiver.recv().await {
            Ok(change) => Some(change),
            Err(broadcast::error::RecvError::Lagged(_)) => Some(RunChange::Missed),
            Err(broadcast::error::RecvError::Closed) => None,
        }
    }

    /// A change already waiting, without waiting for one.
    pub fn try_recv(&mut self) -> Option<RunChange> {
        match self.receiver.try_recv() {
            Ok(change) => Some(change),
            Err(broadcast::error::TryRecvError::Lagged(_)) => Some(RunChange::Missed),
            Err(_) => None,
        }
    }
}

/// The node's fan-out of run changes.
#[derive(Debug)]
pub(crate) struct ChangeHub {
    sender: broadcast::Sender<RunChange>,
}

impl ChangeHub {
    pub(crate) fn new() -> ChangeHub {
        ChangeHub {
            sender: broadcast::channel(CHANNEL_CAPACITY).0,
        }
    }

    /// Tells this node's receivers (none listening is fine).
    pub(crate) fn send(&self, change: RunChange) {
        let _ = self.sender.send(change);
    }

    /// How many receivers are open on this node.
    pub(crate) fn receivers(&self) -> usize {
        self.sender.receiver_count()
    }
}

impl Engine {
    /// A new receiver of every run change from now on (this node's and, with
    /// PostgreSQL, the other nodes').
    pub fn run_changes(&self) -> RunChanges {
        RunChanges {
            receiver: self.changes.sender.subscribe(),
        }
    }

    /// Reports runs this node wrote: to this node's receivers at once, and owed to the
    /// other nodes ([`crate::multinode`]).
    pub fn runs_changed<'a>(&self, runs: impl IntoIterator<Item = &'a RunId>) {
        let local = self.changes.receivers() > 0;
        for run in runs {
            if local {
                self.changes.send(RunChange::Run(run.clone()));
            }
            self.outbox.owe_change(run);
        }
    }
}

/// A run as the feed read it after a change ([`Engine::run_feed`]).
#[derive(Debug, Clone)]
pub enum RunUpdate {
    /// The run as stored right after one of its changes (any environment: receivers
    /// filter by [`runnel_core::run::Run::environment_id`]).
    Run(Arc<Run>),
    /// Updates may have been lost: read everything watched again.
    Missed,
}

/// A receiver of [`RunUpdate`]s ([`Engine::run_feed`]).
#[derive(Debug)]
pub struct RunFeed {
    receiver: broadcast::Receiver<RunUpdate>,
}

impl RunFeed {
    /// The next update; `None` once the engine is gone.
    pub async fn recv(&mut self) -> Option<RunUpdate> {
        match self.receiver.recv().await {
            Ok(update) => Some(update),
            Err(broadcast::error::RecvError::Lagged(_)) => Some(RunUpdate::Missed),
            Err(broadcast::error::RecvError::Closed) => None,
        }
    }

    /// An update already waiting, without waiting for one.
    pub fn try_recv(&mut self) -> Option<RunUpdate> {
        match self.receiver.try_recv() {
            Ok(update) => Some(update),
            Err(broadcast::error::TryRecvError::Lagged(_)) => Some(RunUpdate::Missed),
            Err(_) => None,
        }
    }
}

/// Runs a feed receiver may fall behind by before it is told [`RunUpdate::Missed`]. The
/// runs stay in memory until every receiver has read them (an idle subscription keeps
/// at most this many), so the bound is smaller than the id channel's.
pub const FEED_CAPACITY: usize = 4_096;

/// Runs read per round of the feed's reader at most.
const FEED_READ_BATCH: usize = 256;
/// Changed runs the feed's reader reads at once.
const FEED_READS_AT_ONCE: usize = 8;
/// How often an idle reader checks whether anybody still listens.
const FEED_IDLE_CHECK: std::time::Duration = std::time::Duration::from_secs(10);

/// The node's one reader of changed runs: whatever the number of receivers, each
/// change is read from the store once.
#[derive(Debug)]
pub(crate) struct Feed {
    sender: broadcast::Sender<RunUpdate>,
    /// Whether the reader task runs.
    running: AtomicBool,
}

impl Feed {
    pub(crate) fn new() -> Feed {
        Feed {
            sender: broadcast::channel(FEED_CAPACITY).0,
            running: AtomicBool::new(false),
        }
    }
}

impl Engine {
    /// A new receiver of runs as they change, read once per change on this node for all
    /// receivers (the realtime subscriptions and the dashboard's live views). The reader
    /// runs while receivers are open.
    pub fn run_feed(&self) -> RunFeed {
        let receiver = self.feed.sender.subscribe();
        if !self.feed.running.swap(true, Ordering::AcqRel) {
            let engine = self.clone();
            tokio::spawn(async move { engine.feed_reader().await });
        }
        RunFeed { receiver }
    }

    async fn feed_reader(self) {
        let mut changes = self.run_changes();
        loop {
            if self.feed.sender.receiver_count() == 0 {
                self.feed.running.store(false, Ordering::Release);
                // A receiver that subscribed meanwhile may have found the flag still set.
                if self.feed.sender.receiver_count() == 0
                    || self.feed.running.swap(true, Ordering::AcqRel)
                {
                    return;
                }
            }
            let first = tokio::select! {
                change = changes.recv() => change,
                _ = tokio::time::sleep(FEED_IDLE_CHECK) => continue,
            };
            let Some(first) = first else { return };
            let mut ids = Vec::new();
            let mut missed = false;
            let mut next = Some(first);
            while let Some(change) = next.take() {
                match change {
                    RunChange::Run(id) => {
                        if !ids.contains(&id) {
                            ids.push(id);
                        }
                    }
                    RunChange::Missed => missed = true,
                }
                if ids.len() < FEED_READ_BATCH {
                    next = changes.try_recv();
                }
            }
            if missed {
                let _ = self.feed.sender.send(RunUpdate::Missed);
            }
            if *self.stopping.borrow() {
                // The store may be closing: the subscriptions end with the server.
                self.feed.running.store(false, Ordering::Release);
                return;
            }
            // Several reads at once (in order): on PostgreSQL each is a round trip.
            let store = &self.store;
            let mut reads = futures_util::stream::iter(ids)
                .map(|id| async move {
                    let read = store.run_get_any(&id).await;
                    (id, read)
                })
                .buffered(FEED_READS_AT_ONCE);
            while let Some((id, read)) = reads.next().await {
                match read {
                    Ok(Some(run)) => {
                        let _ = self.feed.sender.send(RunUpdate::Run(Arc::new(run)));
                    }
                    Ok(None) => {}
                    Err(_) if *self.stopping.borrow() => {
                        // The store closed under a stopping server.
                        self.feed.running.store(false, Ordering::Release);
                        return;
                    }
                    Err(error) => {
                        // The rest of this round is lost too: receivers read everything again.
                        tracing::warn!(%error, run = %id, "could not read a changed run");
                        let _ = self.feed.sender.send(RunUpdate::Missed);
                        break;
                    }
                }
            }
        }
    }
}
