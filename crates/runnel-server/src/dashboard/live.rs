//! Live run statuses: `GET /dashboard/events?run=<id>&run=<id>…`, a server-sent event
//! stream sending `event: run` with `{"id", "status", "updatedAt"}` (v4 public status)
//! whenever one of the watched runs changes.
//!
//! The stream registers its run ids with the realtime dispatcher
//! ([`crate::realtime::shapes`]: the node's one reader of the engine's run feed, each
//! changed run read once per node; a change wakes only the streams and subscriptions
//! that watch it) *before* it first reads the runs, so no change between the page's
//! render and the stream's start is lost. It sends each watched run's current status
//! once (read with the session's environment), then each update of a watched run that
//! belongs to the session's environment (a run of another environment is never sent),
//! when its status or update time moved. When its inbox says updates were dropped, every
//! watched run is read again. At most [`MAX_RUNS`] ids are watched per stream; a comment
//! every [`KEEP_ALIVE`] keeps proxies from closing it; it ends when the server stops (the
//! browser reconnects on its own).

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use chrono::{DateTime, Utc};
use futures_util::{Stream, StreamExt};
use runnel_core::run::Run;
use runnel_core::tenancy::Environment;
use runnel_core::view::iso;
use runnel_core::{ApiVersion, RunId};
use runnel_engine::Engine;
use serde_json::json;

use super::session::Session;
use crate::realtime::shapes::{Inbox, Registration};
use crate::state::AppState;

/// Most run ids one stream watches (the rest of the query is ignored).
pub(crate) const MAX_RUNS: usize = 200;
/// Between two keep-alive comments.
pub(crate) const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// The watched runs of one stream and what it last sent of each.
struct Watch {
    engine: Engine,
    environment: Environment,
    ids: Vec<RunId>,
    sent: HashMap<RunId, (&'static str, DateTime<Utc>)>,
    pending: VecDeque<Event>,
    /// Where the realtime dispatcher leaves the watched runs' changes.
    inbox: std::sync::Arc<Inbox>,
    /// Keeps the inbox registered while the stream lives.
    _registration: Registration,
    started: bool,
}

impl Watch {
    /// Queues an event for `run` when it changed since the last one sent.
    fn offer(&mut self, run: &Run) {
        let status = run.status.public(ApiVersion::Current);
        let seen = (status, run.updated_at);
        if self.sent.get(&run.id) == Some(&seen) {
            return;
        }
        self.sent.insert(run.id.clone(), seen);
        let data =
            json!({"id": run.id.as_str(), "status": status, "updatedAt": iso(run.updated_at)});
        self.pending
            .push_back(Event::default().event("run").data(data.to_string()));
    }

    /// Reads every watched run of the session's environment again.
    async fn read_all(&mut self) {
        for id in self.ids.clone() {
            match self.engine.run_get(&self.environment, &id).await {
                Ok(Some(run)) => self.offer(&run),
                Ok(None) => {}
                Err(error) => {
                    tracing::warn!(%error, run = %id, "dashboard events: reading a run failed");
                }
            }
        }
    }

    /// The next event to send; `None` when the feed ends.
    async fn next(mut self) -> Option<(Event, Watch)> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Some((event, self));
            }
            if !self.started {
                self.started = true;
                self.read_all().await;
                continue;
            }
            let inbox = std::sync::Arc::clone(&self.inbox);
            let arrived = inbox.arrived.notified();
            tokio::pin!(arrived);
            // Registered before the inbox is read, so a change between is not slept on.
            arrived.as_mut().enable();
            let queue = self.inbox.take();
            if queue.missed {
                self.read_all().await;
            }
            for run in &queue.runs {
                if run.environment_id == self.environment.id {
                    self.offer(run);
                }
            }
            if self.pending.is_empty() {
                arrived.await;
            }
        }
    }
}

/// The watched ids of the query: `run=` values that are run ids, once each, at most
/// [`MAX_RUNS`].
fn watched(pairs: &[(String, String)]) -> Vec<RunId> {
    let mut ids: Vec<RunId> = Vec::new();
    for (key, value) in pairs {
        if ids.len() == MAX_RUNS {
            break;
        }
        if key != "run" {
            continue;
        }
        if let Some(id) = RunId::parse(value) {
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
    }
    ids
}

/// `GET /dashboard/events`.
pub(crate) async fn events(
    State(state): State<AppState>,
    session: Session,
    Query(pairs): Query<Vec<(String, String)>>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    // Subscribed before the first read (see the module doc).
    let ids = watched(&pairs);
    // Registered before the first read: a change between is in the inbox.
    let inbox = std::sync::Arc::new(Inbox::default());
    let registration =
        state
            .realtime
            .dispatch
            .register_runs(&state.engine, &session.environment.id, &ids, &inbox);
    let watch = Watch {
        engine: state.engine.clone(),
        environment: session.environment,
        ids,
        sent: HashMap::new(),
        pending: VecDeque::new(),
        inbox,
        _registration: registration,
        started: false,
    };
    let events = futures_util::stream::unfold(watch, Watch::next)
        .map(Ok)
        .take_until(state.engine.stopping());
    Sse::new(events).keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_watched_ids_are_run_ids_once_each_and_capped() {
        let id = |n: usize| format!("run_{n:024}");
        let mut pairs = vec![
            ("run".to_owned(), id(1)),
            ("run".to_owned(), "not-a-run".to_owned()),
            ("other".to_owned(), id(2)),
            ("run".to_owned(), id(1)),
        ];
        let got = watched(&pairs);
        assert_eq!(got.len(), 1, "{got:?}");
        pairs.extend((0..MAX_RUNS + 10).map(|n| ("run".to_owned(), id(n + 10))));
        assert_eq!(watched(&pairs).len(), MAX_RUNS);
    }
}
