//! Connections: how `runnel serve` accepts, times out and caps them.
//!
//! A server that keeps every connection for as long as its peer likes can be taken down
//! without a single request: idle sockets, a head sent one byte at a time (slowloris) or a
//! body that never finishes each hold a file descriptor, and once the process runs out of
//! them `accept` fails for everyone, `/healthz` included. So every connection is served
//! by hyper's HTTP/1 connection under three clocks, none of which runs while a handler
//! works on a request (a worker's dequeue long poll is never cut):
//!
//! ```text
//!  accept ──► waiting for a head ──(head complete)──► handler runs ──► response sent ─┐
//!               │  header-read timeout (hyper):            │ body-read timeout          │
//!               │  the head must be complete in time        │ (tower-http): longest      │
//!               │  idle timeout (here): no request          │ pause between two pieces   │
//!               │  in flight for that long → closed         │ of the body                │
//!               └───────────────────────────────◄─────────── keep-alive ◄───────────────┘
//! ```
//!
//! hyper's header clock starts as soon as a connection waits for a head: at its opening
//! and again after each response, so it also bounds how long a kept-alive connection
//! may sit idle; the idle timeout is the shorter, separate bound for that.
//!
//! The cap: at most `max_connections` are open at once, a number kept below the process's
//! open-file limit (see [`FileLimit::connections`]). When a connection arrives at the cap
//! it takes the place of the oldest *idle* one (no request in flight: one that has only
//! sent part of a head counts as idle); when every open connection has a request in
//! flight it is closed at once. Either way the accept loop never stalls on a full
//! descriptor table, and a client with a request to make gets through a flood of idle
//! sockets. While evicted connections finish closing, at most
//! [`EVICTIONS_IN_FLIGHT_MAX`] more than the cap are open.
//!
//! Shutdown: the listener closes, every connection is asked to finish (hyper's graceful
//! shutdown closes idle ones now and busy ones after their response), and [`serve`]
//! returns once all have closed.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::header::CONNECTION;
use axum::http::HeaderValue;
use axum::response::{IntoResponse, Response};
use axum::Router;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use nix::sys::resource::{getrlimit, setrlimit, Resource};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, Notify};
use tokio::time::Instant;
use tower_http::timeout::{TimeoutBody, TimeoutError};
use tower_service::Service;

use crate::error::ApiError;

/// Seconds a request head may take to arrive in full (hyper's own default).
pub const HEADER_READ_TIMEOUT_DEFAULT: Duration = Duration::from_secs(30);
/// Seconds a connection may stay open with no request in flight.
pub const IDLE_TIMEOUT_DEFAULT: Duration = Duration::from_secs(20);
/// Longest pause between two pieces of a request body.
pub const BODY_READ_TIMEOUT_DEFAULT: Duration = Duration::from_secs(30);
/// Most connections open at once, unless the open-file limit allows fewer.
pub const MAX_CONNECTIONS_DEFAULT: u32 = 10_000;
/// File descriptors the connection cap leaves to everything else: database connections
/// and files, exec-mode pipes, logs, and connections still closing after an eviction.
pub const FILE_RESERVE: u64 = 256;
/// Evicted connections that may still be closing while new ones take their place.
pub const EVICTIONS_IN_FLIGHT_MAX: usize = 64;
/// Pause after an `accept` error other than a peer giving up (e.g. no descriptor left),
/// so the loop does not spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// The clocks and the cap every connection is served under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub body_read_timeout: Duration,
    pub max_connections: usize,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            header_read_timeout: HEADER_READ_TIMEOUT_DEFAULT,
            idle_timeout: IDLE_TIMEOUT_DEFAULT,
            body_read_timeout: BODY_READ_TIMEOUT_DEFAULT,
            max_connections: MAX_CONNECTIONS_DEFAULT as usize,
        }
    }
}

/// The process's open-file limit (`RLIMIT_NOFILE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileLimit {
    /// The limit in force before [`FileLimit::raise`].
    pub soft_before: u64,
    /// The limit in force.
    pub soft: u64,
    /// The most the soft limit may be raised to.
    pub hard: u64,
}

impl FileLimit {
    /// Raises the soft open-file limit to the hard one; when the system refuses (a hard
    /// limit of "unlimited" on some systems), the soft limit stays as it was.
    pub fn raise() -> Result<FileLimit, nix::Error> {
        let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
        let mut limit = FileLimit {
            soft_before: soft,
            soft,
            hard,
        };
        if soft < hard {
            match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                Ok(()) => limit.soft = hard,
                Err(error) => {
                    tracing::warn!(%error, soft, hard, "could not raise the open file limit");
                }
            }
        }
        Ok(limit)
    }

    /// The most connections that fit under the soft limit: all of it but
    /// [`FILE_RESERVE`], and never more than half of a small limit.
    pub fn connections(&self) -> usize {
        let fit = self.soft.saturating_sub(FILE_RESERVE).max(self.soft / 2);
        usize::try_from(fit).unwrap_or(usize::MAX)
    }
}

/// Serves `router` on `listener` under `limits` until `shutdown` resolves, then stops
/// accepting and returns once every connection has finished its request and closed.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let registry = Arc::new(Registry::new(limits.max_connections));
    let (stop, stopping) = watch::channel(false);
    // Every connection task holds a sender; `recv` answers `None` once all are gone.
    let (open_tx, mut all_closed) = mpsc::channel::<()>(1);
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        let stream = match accepted {
            Ok((stream, _peer)) => stream,
            Err(error) if is_peer_error(&error) => continue,
            Err(error) => {
                tracing::error!(%error, "accept error");
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                continue;
            }
        };
        let Some(slot) = Registry::admit(&registry).await else {
            // Dropping the stream closes it: refused fast, the loop goes on.
            continue;
        };
        let connection = Connection {
            router: router.clone(),
            limits,
            slot,
            stopping: stopping.clone(),
            _open: open_tx.clone(),
        };
        tokio::spawn(connection.run(stream));
    }
    drop(listener);
    let _ = stop.send(true);
    drop(open_tx);
    let _ = all_closed.recv().await;
    Ok(())
}

/// Errors of one connection that never reached us (the peer reset or gave up while it
/// waited in the backlog); nothing to log.
fn is_peer_error(error: &std::io::Error) -> bool {
    use std::io::ErrorKind;
    matches!(
        error.kind(),
        ErrorKind::ConnectionRefused | ErrorKind::ConnectionAborted | ErrorKind::ConnectionReset
    )
}

/// The open connections, oldest first, for the cap and its evictions.
#[derive(Debug)]
struct Registry {
    cap: usize,
    state: Mutex<RegistryState>,
    /// An evicted connection closed.
    eviction_done: Notify,
    /// When the cap was last reported, so a flood logs one line per interval.
    last_report: Mutex<Option<Instant>>,
}

#[derive(Debug, Default)]
struct RegistryState {
    next_id: u64,
    open: BTreeMap<u64, Arc<Activity>>,
    /// Connections told to close that have not closed yet.
    evicting: usize,
}

/// How often reaching the cap is logged at most.
const CAP_REPORT_INTERVAL: Duration = Duration::from_secs(10);

impl Registry {
    fn new(cap: usize) -> Registry {
        Registry {
            cap: cap.max(1),
            state: Mutex::new(RegistryState::default()),
            eviction_done: Notify::new(),
            last_report: Mutex::new(None),
        }
    }

    /// A place for a new connection: free, or freed by evicting the oldest idle
    /// connection; `None` when the new one must be closed.
    async fn admit(registry: &Arc<Registry>) -> Option<Slot> {
        loop {
            match Registry::try_admit(registry) {
                Admission::Open(slot) => return Some(slot),
                Admission::Refused => return None,
                // A burst of arrivals outran the evicted connections' tasks: wait for
                // one to close rather than refuse a connection there is room for.
                Admission::Wait => registry.eviction_done.notified().await,
            }
        }
    }

    fn try_admit(registry: &Arc<Registry>) -> Admission {
        let mut state = registry.state.lock().expect("connection registry lock");
        if state.open.len() >= registry.cap {
            let victim = state.open.values().find(|a| a.is_evictable()).cloned();
            registry.report_cap(state.open.len(), victim.is_some());
            let Some(victim) = victim else {
                return Admission::Refused;
            };
            if state.evicting >= EVICTIONS_IN_FLIGHT_MAX {
                return Admission::Wait;
            }
            victim.evict();
            state.evicting += 1;
        }
        let id = state.next_id;
        state.next_id += 1;
        let activity = Arc::new(Activity::new());
        state.open.insert(id, activity.clone());
        Admission::Open(Slot {
            registry: registry.clone(),
            id,
            activity,
        })
    }

    fn report_cap(&self, open: usize, evicted: bool) {
        let mut last = self.last_report.lock().expect("cap report lock");
        if last.is_some_and(|at| at.elapsed() < CAP_REPORT_INTERVAL) {
            return;
        }
        *last = Some(Instant::now());
        if evicted {
            tracing::warn!(
                open,
                max_connections = self.cap,
                "connection cap reached: closing the oldest idle connections to make room"
            );
        } else {
            tracing::warn!(
                open,
                max_connections = self.cap,
                "connection cap reached with every connection busy: refusing new connections"
            );
        }
    }
}

/// What [`Registry::try_admit`] decided.
#[derive(Debug)]
enum Admission {
    Open(Slot),
    /// At the cap with every connection busy.
    Refused,
    /// At the cap with [`EVICTIONS_IN_FLIGHT_MAX`] evicted connections still closing.
    Wait,
}

/// A connection's place in the [`Registry`], given back when dropped.
#[derive(Debug)]
struct Slot {
    registry: Arc<Registry>,
    id: u64,
    activity: Arc<Activity>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut state = self
            .registry
            .state
            .lock()
            .expect("connection registry lock");
        if let Some(activity) = state.open.remove(&self.id) {
            if activity.state().evicted {
                state.evicting -= 1;
                self.registry.eviction_done.notify_one();
            }
        }
    }
}

/// What a connection is doing, shared by its task, its requests and the registry.
#[derive(Debug)]
struct Activity {
    state: Mutex<ActivityState>,
    /// A request started or finished.
    changed: Notify,
    /// The registry wants the connection closed now.
    evict: Notify,
}

#[derive(Debug)]
struct ActivityState {
    in_flight: usize,
    /// When the last request finished (or the connection opened).
    idle_since: Instant,
    evicted: bool,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            state: Mutex::new(ActivityState {
                in_flight: 0,
                idle_since: Instant::now(),
                evicted: false,
            }),
            changed: Notify::new(),
            evict: Notify::new(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, ActivityState> {
        self.state.lock().expect("connection activity lock")
    }

    fn is_evictable(&self) -> bool {
        let state = self.state();
        state.in_flight == 0 && !state.evicted
    }

    fn evict(&self) {
        self.state().evicted = true;
        self.evict.notify_one();
    }

    /// When the idle timeout closes the connection, if nothing is in flight.
    fn idle_deadline(&self, idle_timeout: Duration) -> Option<Instant> {
        let state = self.state();
        (state.in_flight == 0).then(|| state.idle_since + idle_timeout)
    }

    fn request_started(self: &Arc<Self>) -> InFlight {
        self.state().in_flight += 1;
        self.changed.notify_one();
        InFlight(self.clone())
    }
}

/// A request in flight on its connection; dropped when its response has been sent (or
/// abandoned), which starts the connection's idle clock.
#[derive(Debug)]
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        {
            let mut state = self.0.state();
            state.in_flight -= 1;
            if state.in_flight == 0 {
                state.idle_since = Instant::now();
            }
        }
        self.0.changed.notify_one();
    }
}

/// One accepted connection and what it is served with.
struct Connection {
    router: Router,
    limits: ConnectionLimits,
    slot: Slot,
    stopping: watch::Receiver<bool>,
    /// Held until the connection closes (see [`serve`]).
    _open: mpsc::Sender<()>,
}

impl Connection {
    async fn run(mut self, stream: TcpStream) {
        let activity = self.slot.activity.clone();
        let service = Requests {
            router: self.router.clone(),
            activity: activity.clone(),
            body_read_timeout: self.limits.body_read_timeout,
        };
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(self.limits.header_read_timeout);
        let connection = builder.serve_connection(TokioIo::new(stream), service);
        tokio::pin!(connection);
        let mut closing = false;
        loop {
            let idle_deadline = if closing {
                None
            } else {
                activity.idle_deadline(self.limits.idle_timeout)
            };
            tokio::select! {
                result = connection.as_mut() => {
                    if let Err(error) = result {
                        tracing::debug!(%error, "connection closed on an error");
                    }
                    break;
                }
                () = activity.evict.notified() => {
                    tracing::debug!("idle connection evicted to make room");
                    break;
                }
                _ = self.stopping.wait_for(|stop| *stop), if !closing => {
                    connection.as_mut().graceful_shutdown();
                    closing = true;
                }
                () = sleep_until(idle_deadline) => {
                    tracing::debug!("idle connection timed out");
                    connection.as_mut().graceful_shutdown();
                    closing = true;
                }
                () = activity.changed.notified() => {}
            }
        }
    }
}

/// Sleeps until `deadline`, or forever without one.
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// The router as hyper calls it on one connection: counts the requests in flight and
/// puts the body-read clock on every request body.
#[derive(Clone)]
struct Requests {
    router: Router,
    activity: Arc<Activity>,
    body_read_timeout: Duration,
}

impl hyper::service::Service<hyper::Request<Incoming>> for Requests {
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn call(&self, request: hyper::Request<Incoming>) -> Self::Future {
        let in_flight = self.activity.request_started();
        let timeout = self.body_read_timeout;
        let timed_out = Arc::new(AtomicBool::new(false));
        let request: Request = request.map(|body| {
            Body::new(Watched {
                body: Box::pin(TimeoutBody::new(timeout, body)),
                timed_out: timed_out.clone(),
            })
        });
        let mut router = self.router.clone();
        Box::pin(async move {
            let mut response = match router.call(request).await {
                Ok(response) => response,
                Err(never) => match never {},
            };
            // Whatever the handler made of its failed read, the client hears why; the
            // rest of the body is not coming, so the connection closes.
            if timed_out.load(Ordering::Relaxed) {
                response = ApiError::RequestTimeout(format!(
                    "Request body stalled for more than {} s (--body-read-timeout)",
                    timeout.as_secs()
                ))
                .into_response();
                response
                    .headers_mut()
                    .insert(CONNECTION, HeaderValue::from_static("close"));
            }
            Ok(response.map(|body| Body::new(Tracked { body, in_flight })))
        })
    }
}

/// A request body under the body-read clock that remembers whether the clock ran out.
struct Watched {
    /// Boxed: the clock inside is not `Unpin`.
    body: Pin<Box<TimeoutBody<Incoming>>>,
    timed_out: Arc<AtomicBool>,
}

impl http_body::Body for Watched {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        let frame = this.body.as_mut().poll_frame(cx);
        if let Poll::Ready(Some(Err(error))) = &frame {
            if error.is::<TimeoutError>() {
                this.timed_out.store(true, Ordering::Relaxed);
            }
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// A response body that keeps its request in flight until hyper has sent it.
struct Tracked {
    body: Body,
    in_flight: InFlight,
}

impl http_body::Body for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl std::fmt::Debug for Tracked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracked")
            .field("in_flight", &self.in_flight)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_leave_the_reserve_or_half_of_a_small_limit() {
        for (soft, fit) in [(1024, 768), (20_000, 19_744), (256, 128), (100, 50)] {
            let limit = FileLimit {
                soft_before: soft,
                soft,
                hard: soft,
            };
            assert_eq!(limit.connections(), fit, "soft limit {soft}");
        }
    }

    #[test]
    fn at_the_cap_the_oldest_idle_connection_makes_room_and_busy_ones_never_do() {
        let registry = Arc::new(Registry::new(2));
        let admit = || match Registry::try_admit(&registry) {
            Admission::Open(slot) => Some(slot),
            Admission::Refused => None,
            Admission::Wait => panic!("no eviction is pending"),
        };
        let first = admit().unwrap();
        let second = admit().unwrap();
        let _busy = first.activity.request_started();
        // The first is busy: the second, idle, is evicted for the third.
        let third = admit().unwrap();
        assert!(second.activity.state().evicted);
        assert!(!first.activity.state().evicted);
        let _busy_third = third.activity.request_started();
        // Every connection left is busy (the evicted one is closing): refused.
        assert!(admit().is_none());
        drop(second);
        assert!(admit().is_none());
        let state = registry.state.lock().unwrap();
        assert_eq!((state.open.len(), state.evicting), (2, 0));
    }
}
