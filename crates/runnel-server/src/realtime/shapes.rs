//! The shapes a node holds between their polls, and the dispatcher that hands each
//! changed run to the shapes it concerns (see the parent module for the protocol).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use runnel_core::run::Run;
use runnel_core::tenancy::Environment;
use runnel_core::{BatchId, EnvironmentId, RunId};
use runnel_engine::changes::{RunFeed, RunUpdate};

/// A shape not polled for this long is forgotten (a client polls again as soon as an
/// answer arrives, and a live poll is held at most [`LIVE_WAIT`]).
pub const SHAPE_IDLE: Duration = Duration::from_secs(60);
/// How often idle shapes are looked for.
const SWEEP_EVERY: Duration = Duration::from_secs(15);
/// The shapes this node serves, between their polls.
#[derive(Debug, Clone, Default)]
pub struct Shapes {
    pub(super) inner: Arc<Mutex<HashMap<String, Shape>>>,
    /// Whether the task dropping idle shapes runs.
    pub(super) sweeping: Arc<std::sync::atomic::AtomicBool>,
    /// Hands each changed run to the shapes it concerns.
    pub(crate) dispatch: Arc<Dispatch>,
}

/// Most updates waiting in one shape's inbox; past it the shape reads everything again.
pub(super) const INBOX_MAX: usize = 1_024;

/// What the dispatcher leaves for one shape: the changed runs it concerns, or that
/// some were missed.
#[derive(Debug, Default)]
pub(crate) struct Inbox {
    queue: Mutex<InboxQueue>,
    pub(crate) arrived: tokio::sync::Notify,
}

#[derive(Debug, Default)]
pub(crate) struct InboxQueue {
    pub(crate) runs: Vec<Arc<Run>>,
    pub(crate) missed: bool,
}

impl Inbox {
    pub(super) fn push(&self, run: &Arc<Run>) {
        {
            let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
            if queue.runs.len() >= INBOX_MAX {
                queue.runs.clear();
                queue.missed = true;
            } else {
                queue.runs.push(Arc::clone(run));
            }
        }
        self.arrived.notify_one();
    }

    pub(super) fn miss(&self) {
        {
            let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
            queue.runs.clear();
            queue.missed = true;
        }
        self.arrived.notify_one();
    }

    pub(crate) fn take(&self) -> InboxQueue {
        std::mem::take(&mut *self.queue.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// The node's one receiver of the engine's run feed for all realtime shapes: each update
/// goes to the inboxes of the shapes it concerns (looked up by run id, or among the
/// tag and batch shapes of the run's environment), so a change wakes its own
/// subscribers only, however many are open. The feed is held only while shapes exist,
/// so a node without subscriptions reads no changed runs.
#[derive(Debug, Default)]
pub(crate) struct Dispatch {
    pub(super) index: Mutex<Index>,
    /// The feed receiver for the task to take, when it was (re)opened.
    pub(super) opened: Mutex<Option<RunFeed>>,
    pub(super) reopened: tokio::sync::Notify,
    pub(super) started: std::sync::atomic::AtomicBool,
}

#[derive(Debug, Default)]
pub(super) struct Index {
    pub(super) next: u64,
    /// Whether a feed receiver is open (in `opened` or held by the task).
    pub(super) listening: bool,
    pub(super) by_run: HashMap<RunId, Vec<(u64, Arc<Inbox>)>>,
    pub(super) by_environment: HashMap<EnvironmentId, Vec<(u64, Filter, Arc<Inbox>)>>,
}

impl Index {
    pub(super) fn is_empty(&self) -> bool {
        self.by_run.is_empty() && self.by_environment.is_empty()
    }
}

/// A shape's place in the dispatcher; leaves it when dropped.
#[derive(Debug)]
pub(crate) struct Registration {
    dispatch: Arc<Dispatch>,
    id: u64,
    environment: EnvironmentId,
    /// The runs watched by id; none for a tag or batch shape (in `by_environment`).
    runs: Vec<RunId>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut index = self.dispatch.lock();
        for run in &self.runs {
            if let Some(list) = index.by_run.get_mut(run) {
                list.retain(|(id, _)| *id != self.id);
                if list.is_empty() {
                    index.by_run.remove(run);
                }
            }
        }
        if let Some(list) = index.by_environment.get_mut(&self.environment) {
            list.retain(|(id, _, _)| *id != self.id);
            if list.is_empty() {
                index.by_environment.remove(&self.environment);
            }
        }
    }
}

impl Dispatch {
    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, Index> {
        self.index.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a shape; from now on the runs it concerns reach `inbox`.
    pub(super) fn register(
        self: &Arc<Self>,
        engine: &runnel_engine::Engine,
        environment: &EnvironmentId,
        filter: &Filter,
        inbox: &Arc<Inbox>,
    ) -> Registration {
        match filter {
            Filter::Run(run) => {
                self.register_with(engine, environment, std::slice::from_ref(run), None, inbox)
            }
            _ => self.register_with(engine, environment, &[], Some(filter), inbox),
        }
    }

    /// Adds a watcher of `runs` (their ids; the caller checks their environment): from
    /// now on their changes reach `inbox` (the dashboard's live statuses).
    pub(crate) fn register_runs(
        self: &Arc<Self>,
        engine: &runnel_engine::Engine,
        environment: &EnvironmentId,
        runs: &[RunId],
        inbox: &Arc<Inbox>,
    ) -> Registration {
        self.register_with(engine, environment, runs, None, inbox)
    }

    fn register_with(
        self: &Arc<Self>,
        engine: &runnel_engine::Engine,
        environment: &EnvironmentId,
        runs: &[RunId],
        feed: Option<&Filter>,
        inbox: &Arc<Inbox>,
    ) -> Registration {
        let mut index = self.lock();
        index.next += 1;
        let id = index.next;
        for run in runs {
            index
                .by_run
                .entry(run.clone())
                .or_default()
                .push((id, Arc::clone(inbox)));
        }
        if let Some(filter) = feed {
            index
                .by_environment
                .entry(environment.clone())
                .or_default()
                .push((id, filter.clone(), Arc::clone(inbox)));
        }
        if !index.listening {
            // Opened before the caller reads its snapshot: no change is lost between.
            index.listening = true;
            *self.opened.lock().unwrap_or_else(|e| e.into_inner()) = Some(engine.run_feed());
            self.reopened.notify_one();
        }
        drop(index);
        if !self.started.swap(true, std::sync::atomic::Ordering::AcqRel) {
            let dispatch = Arc::downgrade(self);
            tokio::spawn(async move { Dispatch::run(dispatch).await });
        }
        Registration {
            dispatch: Arc::clone(self),
            id,
            environment: environment.clone(),
            runs: runs.to_vec(),
        }
    }

    /// Hands out the feed's updates while shapes exist; closes the feed when none does.
    pub(super) async fn run(dispatch: std::sync::Weak<Dispatch>) {
        loop {
            let Some(this) = dispatch.upgrade() else {
                return;
            };
            let opened = this.opened.lock().unwrap_or_else(|e| e.into_inner()).take();
            let Some(mut feed) = opened else {
                // (A registration meanwhile left a permit: this returns at once.)
                tokio::select! {
                    _ = this.reopened.notified() => {}
                    _ = tokio::time::sleep(SWEEP_EVERY) => {}
                }
                continue;
            };
            loop {
                let update = tokio::select! {
                    update = feed.recv() => update,
                    _ = tokio::time::sleep(SWEEP_EVERY) => None,
                };
                let mut index = this.lock();
                if index.is_empty() {
                    // Nobody listens: let the engine stop reading changed runs.
                    index.listening = false;
                    break;
                }
                match update {
                    Some(RunUpdate::Run(run)) => {
                        if let Some(list) = index.by_run.get(&run.id) {
                            list.iter().for_each(|(_, inbox)| inbox.push(&run));
                        }
                        if let Some(list) = index.by_environment.get(&run.environment_id) {
                            list.iter()
                                .filter(|(_, filter, _)| filter.matches(&run))
                                .for_each(|(_, _, inbox)| inbox.push(&run));
                        }
                    }
                    Some(RunUpdate::Missed) => {
                        let all = index.by_run.values().flatten().map(|(_, inbox)| inbox);
                        let feeds = index.by_environment.values().flatten().map(|(_, _, i)| i);
                        all.chain(feeds).for_each(|inbox| inbox.miss());
                    }
                    None => {}
                }
                drop(index);
            }
        }
    }
}

impl Shapes {
    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Shape>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How many shapes this node holds.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether this node holds no shape.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many shapes of `environment` wait for their next poll on this node.
    pub(super) fn held_by(&self, environment: &EnvironmentId) -> usize {
        self.lock()
            .values()
            .filter(|shape| shape.environment.id == *environment)
            .count()
    }

    pub(super) fn take(&self, handle: &str) -> Option<Shape> {
        self.lock().remove(handle)
    }

    pub(super) fn put(&self, handle: String, mut shape: Shape) {
        shape.polled = Instant::now();
        self.lock().insert(handle, shape);
        if !self
            .sweeping
            .swap(true, std::sync::atomic::Ordering::AcqRel)
        {
            // Drops the shapes of clients that went away, with their feed receivers
            // (which keep unread runs in memory and the feed reading); ends with the app.
            let shapes = Arc::downgrade(&self.inner);
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(SWEEP_EVERY).await;
                    let Some(shapes) = shapes.upgrade() else {
                        return;
                    };
                    shapes
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .retain(|_, s| s.polled.elapsed() < SHAPE_IDLE);
                }
            });
        }
    }
}

/// What a subscription watches.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Filter {
    Run(RunId),
    Tags {
        tags: Vec<String>,
        created_after: DateTime<Utc>,
    },
    Batch(BatchId),
}

impl Filter {
    /// Whether a poll's filter names this shape's subscription: the tag feed's
    /// `createdAt` bound is the one fixed when its shape was made.
    pub(super) fn same_subscription(&self, other: &Filter) -> bool {
        match (self, other) {
            (Filter::Tags { tags, .. }, Filter::Tags { tags: others, .. }) => tags == others,
            _ => self == other,
        }
    }

    pub(super) fn matches(&self, run: &Run) -> bool {
        match self {
            Filter::Run(id) => run.id == *id,
            Filter::Tags {
                tags,
                created_after,
            } => run.created_at > *created_after && tags.iter().all(|t| run.tags.contains(t)),
            Filter::Batch(id) => run.batch_id.as_ref() == Some(id),
        }
    }
}

/// One subscription between its polls.
#[derive(Debug)]
pub(super) struct Shape {
    pub(super) environment: Environment,
    pub(super) filter: Filter,
    pub(super) skip: Vec<String>,
    /// The fingerprint of the row last sent, and the run's `updated_at` then, per run.
    pub(super) sent: HashMap<RunId, (u64, DateTime<Utc>)>,
    pub(super) inbox: Arc<Inbox>,
    /// Keeps the inbox in the dispatcher while the shape lives.
    pub(super) _registration: Registration,
    /// Responses that carried changes so far: the offset's first part.
    pub(super) offset: u64,
    pub(super) polled: Instant,
}

/// A shape taken out of [`Shapes`] for one poll; goes back when the poll ends, also
/// when the client goes away mid-poll (the handler's future is dropped).
pub(super) struct Taken {
    pub(super) shapes: Shapes,
    pub(super) handle: String,
    pub(super) shape: Option<Shape>,
}

impl Drop for Taken {
    fn drop(&mut self) {
        if let Some(shape) = self.shape.take() {
            self.shapes.put(std::mem::take(&mut self.handle), shape);
        }
    }
}
