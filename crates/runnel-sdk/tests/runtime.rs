//! The worker runtime against an in-process fake of the worker protocol: dequeue,
//! start, heartbeat-borne cancels, `maxDuration`, retries after server errors (a
//! completion is retried until the server answers, keeping its slot meanwhile) and the
//! shutdown rules, each observed from the server's side.
//!
//! The fake keeps everything in one locked state and wakes long polls (and the tests'
//! waits) through one `Notify`; tests wait on those signals, never on fixed sleeps.

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use runnel_core::worker::{
    AttemptCompletion, CompleteRequest, CompleteResponse, CompletionResult, DequeueRequest,
    DequeueResponse, HeartbeatRequest, HeartbeatResponse, RegisterRequest, RegisterResponse,
    StartRequest, StartResponse,
};
use runnel_sdk::worker::STOP_NOW_REPORT_WITHIN;
use runnel_sdk::{
    AttemptOutcome, Client, DequeuedRun, Error, FailureKind, Task, Tasks, Worker, WorkerOptions,
    WorkerSummary,
};
use serde_json::{json, Value};
use tokio::sync::{oneshot, Notify};
use tokio::time::Instant;

const KEY: &str = "tr_dev_fakefakefakefakefakefake";
/// Generous: these tests run beside other builds on a small machine.
const DEADLINE: Duration = Duration::from_secs(20);

#[derive(Default)]
struct FakeState {
    queue: VecDeque<DequeuedRun>,
    canceled: HashSet<String>,
    /// Attempts the worker asked to start, in order.
    started: Vec<String>,
    completions: Vec<AttemptCompletion>,
    registrations: Vec<RegisterRequest>,
    /// Answer this many dequeues with 503 first.
    failing_dequeues: u32,
    /// Answer this many completion requests with 503 first.
    failing_completes: u32,
    /// Completion requests received, answered or not.
    complete_requests: usize,
    dequeues_in_flight: usize,
    dequeue_requests: Vec<DequeueRequest>,
    heartbeats: Vec<HeartbeatRequest>,
    /// Answer dequeues at once with nothing, as a stopping server does.
    stopping: bool,
    /// Object storage: path -> (content type, bytes), served at `/blob/{path}`.
    packets: HashMap<String, (String, Vec<u8>)>,
    /// Refuse presigned uploads (503).
    refuse_uploads: bool,
}

struct Fake {
    state: Mutex<FakeState>,
    changed: Notify,
    heartbeat_interval_ms: u64,
    /// The fake's own base URL, for the presigned URLs it hands out.
    url: String,
}

type Reply<T> = Result<Json<T>, (StatusCode, Json<Value>)>;

impl Fake {
    fn update<T>(&self, change: impl FnOnce(&mut FakeState) -> T) -> T {
        let value = change(&mut self.state.lock().unwrap());
        self.changed.notify_waiters();
        value
    }

    fn read<T>(&self, read: impl FnOnce(&FakeState) -> T) -> T {
        read(&self.state.lock().unwrap())
    }

    /// Waits until `ready` answers `Some`, or until `deadline` (then `None`).
    async fn wait_for<T>(
        &self,
        deadline: Instant,
        mut ready: impl FnMut(&mut FakeState) -> Option<T>,
    ) -> Option<T> {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(value) = ready(&mut self.state.lock().unwrap()) {
                return Some(value);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return None;
            }
        }
    }

    /// A test's wait: panics with `what` after [`DEADLINE`].
    async fn expect<T>(&self, what: &str, ready: impl FnMut(&mut FakeState) -> Option<T>) -> T {
        match self.wait_for(Instant::now() + DEADLINE, ready).await {
            Some(value) => value,
            None => panic!("timed out waiting for {what}"),
        }
    }

    fn push(&self, run: DequeuedRun) {
        self.update(|state| state.queue.push_back(run));
    }

    fn cancel(&self, attempt_id: &str) {
        self.update(|state| state.canceled.insert(attempt_id.to_owned()));
    }

    fn completions(&self) -> Vec<AttemptCompletion> {
        self.read(|state| state.completions.clone())
    }

    async fn expect_completions(&self, count: usize) -> Vec<AttemptCompletion> {
        self.expect(&format!("{count} completions"), |state| {
            (state.completions.len() >= count).then(|| state.completions.clone())
        })
        .await
    }
}

fn authorized(headers: &HeaderMap) -> Result<(), (StatusCode, Json<Value>)> {
    let expected = format!("Bearer {KEY}");
    match headers.get("authorization").and_then(|v| v.to_str().ok()) {
        Some(value) if value == expected => Ok(()),
        _ => Err((
            StatusCode::UNAUTHORIZED,
            Json(json!({"error": "Invalid API Key"})),
        )),
    }
}

async fn register(
    State(fake): State<Arc<Fake>>,
    headers: HeaderMap,
    Json(request): Json<RegisterRequest>,
) -> Reply<RegisterResponse> {
    authorized(&headers)?;
    let version = request
        .version
        .clone()
        .unwrap_or_else(|| "20260101.1".into());
    fake.update(|state| state.registrations.push(request));
    Ok(Json(RegisterResponse {
        worker_id: "worker_1".into(),
        version,
        lease_timeout_ms: 3 * fake.heartbeat_interval_ms,
        heartbeat_interval_ms: fake.heartbeat_interval_ms,
    }))
}

async fn dequeue(
    State(fake): State<Arc<Fake>>,
    Path(worker_id): Path<String>,
    headers: HeaderMap,
    Json(request): Json<DequeueRequest>,
) -> Reply<DequeueResponse> {
    authorized(&headers)?;
    assert_eq!(worker_id, "worker_1");
    let failing = fake.update(|state| {
        state.dequeue_requests.push(request.clone());
        if state.failing_dequeues > 0 {
            state.failing_dequeues -= 1;
            true
        } else {
            state.dequeues_in_flight += 1;
            false
        }
    });
    if failing {
        return Err((
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"error": "restarting"})),
        ));
    }
    let wait = if fake.read(|state| state.stopping) {
        Duration::ZERO
    } else {
        Duration::from_millis(request.wait_ms)
    };
    let deadline = Instant::now() + wait;
    let runs = fake
        .wait_for(deadline, |state| {
            let take = state.queue.len().min(request.max_runs as usize);
            (take > 0).then(|| state.queue.drain(..take).collect::<Vec<_>>())
        })
        .await
        .unwrap_or_default();
    fake.update(|state| state.dequeues_in_flight -= 1);
    Ok(Json(DequeueResponse { runs }))
}

async fn start(
    State(fake): State<Arc<Fake>>,
    headers: HeaderMap,
    Json(request): Json<StartRequest>,
) -> Reply<StartResponse> {
    authorized(&headers)?;
    let (started, cancel) = fake.update(|state| {
        state.started.extend(request.attempt_ids.iter().cloned());
        request
            .attempt_ids
            .iter()
            .cloned()
            .partition(|id| !state.canceled.contains(id))
    });
    Ok(Json(StartResponse { started, cancel }))
}

async fn heartbeat(
    State(fake): State<Arc<Fake>>,
    headers: HeaderMap,
    Json(request): Json<HeartbeatRequest>,
) -> Reply<HeartbeatResponse> {
    authorized(&headers)?;
    fake.update(|state| state.heartbeats.push(request.clone()));
    let deadline = Instant::now() + Duration::from_millis(request.wait_ms);
    let cancel = fake
        .wait_for(deadline, |state| {
            let cancel: Vec<String> = request
                .attempt_ids
                .iter()
                .filter(|id| state.canceled.contains(*id))
                .cloned()
                .collect();
            (!cancel.is_empty()).then_some(cancel)
        })
        .await
        .unwrap_or_default();
    Ok(Json(HeartbeatResponse { cancel }))
}

async fn complete(
    State(fake): State<Arc<Fake>>,
    headers: HeaderMap,
    Json(request): Json<CompleteRequest>,
) -> Reply<CompleteResponse> {
    authorized(&headers)?;
    let failing = fake.update(|state| {
        state.complete_requests += 1;
        if state.failing_completes > 0 {
            state.failing_completes -= 1;
            true
        } else {
            false
        }
    });
    if failing {
        return Err((
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"error": "restarting"})),
        ));
    }
    let results = fake.update(|state| {
        request
            .completions
            .into_iter()
            .map(|completion| {
                let accepted = !state.canceled.contains(&completion.attempt_id);
                let result = CompletionResult {
                    attempt_id: completion.attempt_id.clone(),
                    accepted,
                    run_status: None,
                };
                if accepted {
                    state.completions.push(completion);
                }
                result
            })
            .collect()
    });
    Ok(Json(CompleteResponse { results }))
}

/// `PUT /api/v2/packets/{path}`: where to upload, and the storage path to report.
async fn packet_upload_url(
    State(fake): State<Arc<Fake>>,
    Path(path): Path<String>,
    headers: HeaderMap,
) -> Reply<Value> {
    authorized(&headers)?;
    Ok(Json(json!({
        "presignedUrl": format!("{}/blob/{path}?sig=ok", fake.url),
        "storagePath": format!("stored/{path}"),
    })))
}

/// `GET /api/v1/packets/{path}`: where to download from.
async fn packet_download_url(
    State(fake): State<Arc<Fake>>,
    Path(path): Path<String>,
    headers: HeaderMap,
) -> Reply<Value> {
    authorized(&headers)?;
    Ok(Json(
        json!({"presignedUrl": format!("{}/blob/{path}?sig=ok", fake.url)}),
    ))
}

/// A presigned URL carries its own authorization: a secret key sent along is refused,
/// as S3 refuses a request signed twice.
fn presigned_only(headers: &HeaderMap) -> Result<(), (StatusCode, Json<Value>)> {
    match headers.get("authorization") {
        Some(_) => Err((
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "a presigned URL takes no Authorization header"})),
        )),
        None => Ok(()),
    }
}

async fn blob_put(
    State(fake): State<Arc<Fake>>,
    Path(path): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<StatusCode, (StatusCode, Json<Value>)> {
    presigned_only(&headers)?;
    if fake.read(|state| state.refuse_uploads) {
        return Err((
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"error": "slow down"})),
        ));
    }
    let content_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let path = format!("stored/{path}");
    fake.update(|state| state.packets.insert(path, (content_type, body.to_vec())));
    Ok(StatusCode::OK)
}

async fn blob_get(
    State(fake): State<Arc<Fake>>,
    Path(path): Path<String>,
    headers: HeaderMap,
) -> Result<([(&'static str, String); 1], Vec<u8>), (StatusCode, Json<Value>)> {
    presigned_only(&headers)?;
    match fake.read(|state| state.packets.get(&path).cloned()) {
        Some((content_type, bytes)) => Ok(([("content-type", content_type)], bytes)),
        None => Err((
            StatusCode::NOT_FOUND,
            Json(json!({"error": "no such packet"})),
        )),
    }
}

/// Starts the fake on a free port; answers it and its base URL.
async fn start_fake(heartbeat_interval_ms: u64) -> (Arc<Fake>, String) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let fake = Arc::new(Fake {
        state: Mutex::new(FakeState::default()),
        changed: Notify::new(),
        heartbeat_interval_ms,
        url: url.clone(),
    });
    let app = Router::new()
        .route("/api/v1/workers/register", post(register))
        .route("/api/v1/workers/{worker_id}/dequeue", post(dequeue))
        .route("/api/v1/workers/{worker_id}/start", post(start))
        .route("/api/v1/workers/{worker_id}/heartbeat", post(heartbeat))
        .route("/api/v1/workers/{worker_id}/complete", post(complete))
        .route("/api/v2/packets/{*path}", put(packet_upload_url))
        .route("/api/v1/packets/{*path}", get(packet_download_url))
        .route("/blob/{*path}", put(blob_put).get(blob_get))
        .with_state(fake.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (fake, url)
}

fn run(n: u32, task: &str, payload: Value) -> DequeuedRun {
    DequeuedRun {
        payload_presigned_url: None,
        run_id: format!("run_{n}"),
        attempt_id: format!("attempt_{n}"),
        attempt_number: 1,
        task_identifier: task.into(),
        payload,
        payload_type: "application/json".into(),
        max_duration_secs: None,
        machine: "small-1x".into(),
        environment: "dev".into(),
        version: "20260101.1".into(),
        is_test: false,
        tags: vec![],
        lease_expires_at: "2026-01-01T00:00:00.000Z".into(),
    }
}

/// Signals fired by the `block` task: `entered` when an attempt begins, `dropped` when
/// its future is dropped (finished or aborted).
#[derive(Default)]
struct Probe {
    entered: Notify,
    entered_count: Mutex<usize>,
    dropped: AtomicBool,
}

impl Probe {
    async fn wait_entered(&self, count: usize) {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let notified = self.entered.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if *self.entered_count.lock().unwrap() >= count {
                return;
            }
            assert!(
                tokio::time::timeout_at(deadline, notified).await.is_ok(),
                "no attempt entered"
            );
        }
    }
}

struct DropFlag(Arc<Probe>);

impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.dropped.store(true, Ordering::SeqCst);
    }
}

/// `hello` greets, `fail` errs, `block` waits for `ms` milliseconds (forever if absent).
fn tasks(probe: Arc<Probe>) -> Tasks {
    Tasks::new()
        .task("hello", |name: String| async move {
            Ok::<_, String>(format!("Hello, {name}!"))
        })
        .task(Task::new("fail").max_attempts(1), |_: Value| async move {
            Err::<(), _>("no luck")
        })
        .task("block", move |payload: Value| {
            let guard = DropFlag(probe.clone());
            *probe.entered_count.lock().unwrap() += 1;
            probe.entered.notify_waiters();
            async move {
                let _guard = guard;
                match payload["ms"].as_u64() {
                    Some(ms) => tokio::time::sleep(Duration::from_millis(ms)).await,
                    None => std::future::pending().await,
                }
                Ok::<_, String>("unblocked")
            }
        })
}

fn options(concurrency: usize) -> WorkerOptions {
    WorkerOptions {
        name: "test-worker".into(),
        version: None,
        concurrency,
        shutdown_grace: Duration::from_secs(10),
        dequeue_wait: Duration::from_millis(500),
    }
}

/// A worker running in the background, stopped through `shutdown` (and cut short
/// through `stop_now`).
struct Running {
    shutdown: Option<oneshot::Sender<()>>,
    stop_now: Option<oneshot::Sender<()>>,
    done: tokio::task::JoinHandle<Result<WorkerSummary, Error>>,
}

impl Running {
    fn spawn(url: &str, options: WorkerOptions, tasks: Tasks) -> Running {
        let (shutdown, stopped) = oneshot::channel::<()>();
        let (stop_now, stopped_now) = oneshot::channel::<()>();
        let worker = Worker::new(Client::new(url, KEY), options);
        let done = tokio::spawn(worker.run_until(
            Arc::new(tasks),
            async move {
                let _ = stopped.await;
            },
            async move {
                // Dropped unsent: never.
                if stopped_now.await.is_err() {
                    std::future::pending::<()>().await;
                }
            },
        ));
        Running {
            shutdown: Some(shutdown),
            stop_now: Some(stop_now),
            done,
        }
    }

    fn begin_shutdown(&mut self) {
        let _ = self.shutdown.take().expect("shut down once").send(());
    }

    fn stop_now(&mut self) {
        let _ = self.stop_now.take().expect("stopped now once").send(());
    }

    async fn stop(mut self) -> WorkerSummary {
        if self.shutdown.is_some() {
            self.begin_shutdown();
        }
        self.finish().await
    }

    async fn finish(self) -> WorkerSummary {
        tokio::time::timeout(DEADLINE, self.done)
            .await
            .expect("the worker stopped in time")
            .expect("the worker task did not panic")
            .expect("the worker ran")
    }
}

fn success(output: Value) -> AttemptOutcome {
    AttemptOutcome::Success { output }
}

fn failure_of(completion: &AttemptCompletion) -> (FailureKind, &str) {
    match &completion.outcome {
        AttemptOutcome::Failure { error } => (error.kind, error.message.as_str()),
        other => panic!("not a failure: {other:?}"),
    }
}

async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(DEADLINE, future)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

#[tokio::test]
async fn runs_are_executed_and_reported() {
    let (fake, url) = start_fake(1_000).await;
    let worker = Running::spawn(&url, options(2), tasks(Arc::default()));
    fake.push(run(1, "hello", json!("Ada")));
    fake.push(run(2, "fail", Value::Null));
    fake.push(run(3, "hello", json!(7)));
    fake.push(run(4, "nope", Value::Null));
    let mut completions = fake.expect_completions(4).await;
    completions.sort_by(|a, b| a.attempt_id.cmp(&b.attempt_id));
    assert_eq!(completions[0].outcome, success(json!("Hello, Ada!")));
    assert_eq!(
        failure_of(&completions[1]),
        (FailureKind::TaskFailed, "no luck")
    );
    let (kind, message) = failure_of(&completions[2]);
    assert_eq!(kind, FailureKind::SystemFailure);
    assert!(message.contains("invalid type: integer `7`"), "{message}");
    assert_eq!(
        failure_of(&completions[3]),
        (
            FailureKind::SystemFailure,
            "task \"nope\" is not registered by this worker"
        )
    );

    let summary = worker.stop().await;
    assert_eq!(
        summary,
        WorkerSummary {
            worker_id: Some("worker_1".into()),
            version: Some("20260101.1".into()),
            succeeded: 1,
            failed: 3,
            interrupted: 0,
            canceled: 0,
        }
    );
    fake.read(|state| {
        let registration = &state.registrations[0];
        assert_eq!(registration.name, "test-worker");
        let ids: Vec<&str> = registration.tasks.iter().map(|t| t.id.as_str()).collect();
        assert_eq!(ids, ["hello", "fail", "block"]);
        assert_eq!(registration.tasks[1].retry.unwrap().max_attempts, 1);
        assert!(state
            .dequeue_requests
            .iter()
            .all(|r| (1..=2).contains(&r.max_runs) && r.wait_ms == 500));
        assert_eq!(state.dequeues_in_flight, 0, "no dequeue was abandoned");
    });
}

#[tokio::test]
async fn concurrency_limits_attempts_and_dequeues() {
    let (fake, url) = start_fake(1_000).await;
    let probe = Arc::new(Probe::default());
    let worker = Running::spawn(&url, options(2), tasks(probe.clone()));
    for n in 1..=3 {
        fake.push(run(n, "block", json!({})));
    }
    probe.wait_entered(2).await;
    // Both slots are taken: the worker must not ask for more runs.
    fake.expect("the queue to hold the third run", |state| {
        (state.queue.len() == 1 && state.dequeues_in_flight == 0).then_some(())
    })
    .await;
    assert_eq!(*probe.entered_count.lock().unwrap(), 2);
    fake.cancel("attempt_1");
    probe.wait_entered(3).await;
    fake.read(|state| {
        assert!(state.dequeue_requests.iter().all(|r| r.max_runs <= 2));
    });
    fake.cancel("attempt_2");
    fake.cancel("attempt_3");
    let summary = worker.stop().await;
    assert_eq!(summary.canceled, 3);
    assert!(
        fake.completions().is_empty(),
        "canceled attempts are not reported"
    );
}

#[tokio::test]
async fn a_canceled_attempt_is_stopped_and_not_reported() {
    let (fake, url) = start_fake(1_000).await;
    let probe = Arc::new(Probe::default());
    let worker = Running::spawn(&url, options(1), tasks(probe.clone()));
    fake.push(run(1, "block", json!({})));
    probe.wait_entered(1).await;
    // The heartbeat long poll carries the attempt.
    fake.expect("a heartbeat with the attempt", |state| {
        state
            .heartbeats
            .iter()
            .any(|h| h.attempt_ids == ["attempt_1"] && h.wait_ms == 1_000)
            .then_some(())
    })
    .await;
    let canceled_at = Instant::now();
    fake.cancel("attempt_1");
    within("the canceled task to be dropped", async {
        while !probe.dropped.load(Ordering::SeqCst) {
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert!(
        canceled_at.elapsed() < Duration::from_millis(900),
        "the cancel came through the held heartbeat, not the next one"
    );
    // The slot is free again.
    fake.push(run(2, "hello", json!("Bo")));
    let completions = fake.expect_completions(1).await;
    assert_eq!(completions[0].attempt_id, "attempt_2");
    let summary = worker.stop().await;
    assert_eq!((summary.canceled, summary.succeeded), (1, 1));
    assert_eq!(fake.completions().len(), 1);
}

#[tokio::test]
async fn a_cancel_reaches_an_attempt_started_during_a_heartbeat() {
    // A long interval: waiting for the next regular heartbeat would take seconds.
    let (fake, url) = start_fake(10_000).await;
    let probe = Arc::new(Probe::default());
    let worker = Running::spawn(&url, options(2), tasks(probe.clone()));
    fake.push(run(1, "block", json!({})));
    probe.wait_entered(1).await;
    fake.expect("a heartbeat holding attempt_1", |state| {
        state
            .heartbeats
            .iter()
            .any(|h| h.attempt_ids == ["attempt_1"])
            .then_some(())
    })
    .await;
    fake.push(run(2, "block", json!({})));
    probe.wait_entered(2).await;
    let canceled_at = Instant::now();
    fake.cancel("attempt_2");
    within("the canceled task to be dropped", async {
        while !probe.dropped.load(Ordering::SeqCst) {
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert!(
        canceled_at.elapsed() < Duration::from_secs(3),
        "the heartbeat was renewed to cover the new attempt"
    );
    fake.cancel("attempt_1");
    let summary = worker.stop().await;
    assert_eq!(summary.canceled, 2);
}

#[tokio::test]
async fn an_attempt_canceled_before_it_starts_is_not_run() {
    let (fake, url) = start_fake(1_000).await;
    let probe = Arc::new(Probe::default());
    fake.cancel("attempt_1");
    fake.push(run(1, "block", json!({})));
    fake.push(run(2, "hello", json!("Cy")));
    let worker = Running::spawn(&url, options(4), tasks(probe.clone()));
    let completions = fake.expect_completions(1).await;
    assert_eq!(completions[0].attempt_id, "attempt_2");
    let summary = worker.stop().await;
    assert_eq!(*probe.entered_count.lock().unwrap(), 0);
    assert_eq!((summary.succeeded, summary.canceled), (1, 0));
    fake.read(|state| assert_eq!(state.started, ["attempt_1", "attempt_2"]));
}

#[tokio::test]
async fn max_duration_stops_the_attempt_as_timed_out() {
    let (fake, url) = start_fake(1_000).await;
    let probe = Arc::new(Probe::default());
    let worker = Running::spawn(&url, options(1), tasks(probe.clone()));
    let mut limited = run(1, "block", json!({}));
    limited.max_duration_secs = Some(1);
    fake.push(limited);
    let completions = fake.expect_completions(1).await;
    assert_eq!(
        failure_of(&completions[0]),
        (
            FailureKind::MaxDurationExceeded,
            "Run exceeded maxDuration of 1s"
        )
    );
    assert!(probe.dropped.load(Ordering::SeqCst));
    let summary = worker.stop().await;
    assert_eq!(summary.failed, 1);
}

#[tokio::test]
async fn shutdown_lets_running_attempts_finish_within_the_grace() {
    let (fake, url) = start_fake(1_000).await;
    let probe = Arc::new(Probe::default());
    let mut worker = Running::spawn(&url, options(1), tasks(probe.clone()));
    fake.push(run(1, "block", json!({"ms": 300})));
    probe.wait_entered(1).await;
    worker.begin_shutdown();
    // No new run is taken once shutdown began.
    fake.push(run(2, "hello", json!("late")));
    let summary = worker.finish().await;
    assert_eq!(summary.succeeded, 1);
    assert_eq!(fake.completions()[0].outcome, success(json!("unblocked")));
    fake.read(|state| {
        assert_eq!(state.queue.len(), 1, "the late run stays queued");
        assert_eq!(state.dequeues_in_flight, 0);
    });
}

#[tokio::test]
async fn attempts_still_running_after_the_grace_are_interrupted() {
    let (fake, url) = start_fake(1_000).await;
    let probe = Arc::new(Probe::default());
    let mut worker = Running::spawn(
        &url,
        WorkerOptions {
            shutdown_grace: Duration::from_millis(200),
            ..options(1)
        },
        tasks(probe.clone()),
    );
    fake.push(run(1, "block", json!({})));
    probe.wait_entered(1).await;
    worker.begin_shutdown();
    let summary = worker.finish().await;
    assert_eq!(summary.interrupted, 1);
    assert!(probe.dropped.load(Ordering::SeqCst));
    assert_eq!(
        failure_of(&fake.completions()[0]),
        (FailureKind::Interrupted, "worker stopped during the run")
    );
}

#[tokio::test]
async fn shutdown_finishes_the_dequeue_in_flight_and_runs_what_it_brings() {
    let (fake, url) = start_fake(1_000).await;
    let mut worker = Running::spawn(
        &url,
        WorkerOptions {
            dequeue_wait: Duration::from_secs(10),
            ..options(1)
        },
        tasks(Arc::default()),
    );
    fake.expect("a dequeue in flight", |state| {
        (state.dequeues_in_flight == 1).then_some(())
    })
    .await;
    worker.begin_shutdown();
    // The runs this dequeue brings are leased to the worker: it must run them.
    fake.push(run(1, "hello", json!("in flight")));
    let summary = worker.finish().await;
    assert_eq!(summary.succeeded, 1);
    assert_eq!(
        fake.completions()[0].outcome,
        success(json!("Hello, in flight!"))
    );
    fake.read(|state| {
        assert_eq!(state.dequeue_requests.len(), 1, "no dequeue after shutdown");
        assert_eq!(state.dequeues_in_flight, 0);
    });
}

#[tokio::test]
async fn server_errors_are_retried() {
    let (fake, url) = start_fake(1_000).await;
    fake.update(|state| state.failing_dequeues = 2);
    let worker = Running::spawn(&url, options(1), tasks(Arc::default()));
    fake.push(run(1, "hello", json!("again")));
    let completions = fake.expect_completions(1).await;
    assert_eq!(completions[0].outcome, success(json!("Hello, again!")));
    worker.stop().await;
    fake.read(|state| assert!(state.dequeue_requests.len() >= 3));
}

#[tokio::test]
async fn a_refused_registration_ends_the_run_with_the_server_message() {
    let (_fake, url) = start_fake(1_000).await;
    let worker = Worker::new(Client::new(&url, "tr_dev_wrong"), options(1));
    let error = worker
        .run(Arc::new(tasks(Arc::default())), std::future::pending())
        .await
        .unwrap_err();
    assert_eq!(error.status(), Some(StatusCode::UNAUTHORIZED));
    assert_eq!(
        error.to_string(),
        "server answered 401 Unauthorized: Invalid API Key"
    );
}

#[tokio::test]
async fn shutdown_before_registration_returns_an_empty_summary() {
    // Nothing listens on this port: registration keeps failing and is retried.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let worker = Worker::new(Client::new(&url, KEY), options(1));
    let summary = within(
        "the worker to stop",
        worker.run(
            Arc::new(tasks(Arc::default())),
            tokio::time::sleep(Duration::from_millis(300)),
        ),
    )
    .await
    .unwrap();
    assert_eq!(summary, WorkerSummary::default());
}

#[tokio::test]
async fn a_completion_is_retried_past_the_lease_timeout_and_keeps_its_slot_meanwhile() {
    // A lease of 300 ms: the old worker gave a completion up after that long.
    let (fake, url) = start_fake(100).await;
    const FAILURES: u32 = 12;
    fake.update(|state| state.failing_completes = FAILURES);
    let worker = Running::spawn(&url, options(1), tasks(Arc::default()));
    fake.push(run(1, "hello", json!("patient")));
    fake.expect("the first failed completion", |state| {
        (state.complete_requests >= 1).then_some(())
    })
    .await;
    let dequeues_then = fake.read(|state| state.dequeue_requests.len());
    fake.push(run(2, "hello", json!("waiting")));
    let completions = fake.expect_completions(1).await;
    assert_eq!(completions[0].attempt_id, "attempt_1");
    assert_eq!(completions[0].outcome, success(json!("Hello, patient!")));
    fake.read(|state| {
        assert_eq!(state.complete_requests, FAILURES as usize + 1);
        assert_eq!(
            state.dequeue_requests.len(),
            dequeues_then,
            "no dequeue while the only slot waits for its completion"
        );
        assert!(
            state
                .heartbeats
                .iter()
                .filter(|h| h.attempt_ids == ["attempt_1"])
                .count()
                >= 2,
            "the attempt stays held (heartbeated) while its completion is pending"
        );
    });
    // The slot is free again once the server answered.
    let completions = fake.expect_completions(2).await;
    assert_eq!(completions[1].attempt_id, "attempt_2");
    let summary = worker.stop().await;
    assert_eq!(summary.succeeded, 2);
}

#[tokio::test]
async fn shutdown_gives_up_a_completion_the_server_never_answers_after_the_grace() {
    let (fake, url) = start_fake(100).await;
    fake.update(|state| state.failing_completes = u32::MAX);
    // Longer than the dequeue wait (500 ms), which a shutdown also waits out.
    let grace = Duration::from_millis(1_500);
    let mut worker = Running::spawn(
        &url,
        WorkerOptions {
            shutdown_grace: grace,
            ..options(1)
        },
        tasks(Arc::default()),
    );
    fake.push(run(1, "hello", json!("lost")));
    fake.expect("a failed completion", |state| {
        (state.complete_requests >= 1).then_some(())
    })
    .await;
    let began = Instant::now();
    worker.begin_shutdown();
    let summary = worker.finish().await;
    let took = began.elapsed();
    assert!(
        took >= grace && took < grace + Duration::from_secs(2),
        "the worker stopped {took:?} after shutdown began (grace {grace:?})"
    );
    assert_eq!(summary.succeeded, 1);
    assert!(fake.completions().is_empty());
    assert!(
        fake.read(|state| state.complete_requests) >= 2,
        "retried until the grace ended"
    );
}

#[tokio::test]
async fn stop_now_interrupts_running_attempts_at_once_and_reports_them() {
    let (fake, url) = start_fake(1_000).await;
    let probe = Arc::new(Probe::default());
    // A grace far longer than the test: only the stop-now can end it.
    let mut worker = Running::spawn(
        &url,
        WorkerOptions {
            shutdown_grace: Duration::from_secs(600),
            ..options(2)
        },
        tasks(probe.clone()),
    );
    fake.push(run(1, "block", json!({})));
    probe.wait_entered(1).await;
    worker.begin_shutdown();
    let stopped_at = Instant::now();
    worker.stop_now();
    let summary = worker.finish().await;
    assert!(
        stopped_at.elapsed() < STOP_NOW_REPORT_WITHIN,
        "took {:?}",
        stopped_at.elapsed()
    );
    assert_eq!(summary.interrupted, 1);
    assert!(probe.dropped.load(Ordering::SeqCst));
    assert_eq!(
        failure_of(&fake.completions()[0]),
        (FailureKind::Interrupted, "worker stopped during the run")
    );
}

#[tokio::test]
async fn stop_now_drops_the_dequeue_in_flight() {
    let (fake, url) = start_fake(1_000).await;
    let mut worker = Running::spawn(
        &url,
        WorkerOptions {
            dequeue_wait: Duration::from_secs(20),
            ..options(1)
        },
        tasks(Arc::default()),
    );
    fake.expect("a dequeue in flight", |state| {
        (state.dequeues_in_flight == 1).then_some(())
    })
    .await;
    worker.begin_shutdown();
    let stopped_at = Instant::now();
    worker.stop_now();
    let summary = worker.finish().await;
    assert!(
        stopped_at.elapsed() < Duration::from_secs(1),
        "waited {:?} for a 20 s long poll",
        stopped_at.elapsed()
    );
    assert_eq!(summary.succeeded + summary.failed + summary.interrupted, 0);
}

#[tokio::test]
async fn an_early_empty_dequeue_is_not_repeated_at_once() {
    let (fake, url) = start_fake(1_000).await;
    fake.update(|state| state.stopping = true);
    let started = Instant::now();
    let worker = Running::spawn(
        &url,
        WorkerOptions {
            dequeue_wait: Duration::from_secs(10),
            ..options(1)
        },
        tasks(Arc::default()),
    );
    fake.expect("four dequeues", |state| {
        (state.dequeue_requests.len() >= 4).then_some(())
    })
    .await;
    // Backoff from 100-200 ms, doubling: three pauses take at least 675 ms. Without
    // them, four dequeues of a server answering at once take a few milliseconds.
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "four dequeues in {:?}: the worker spins on a stopping server",
        started.elapsed()
    );
    worker.stop().await;
}

/// A run whose payload is in object storage at `path` (`application/store`).
fn stored_run(n: u32, task: &str, path: &str, presigned_url: Option<String>) -> DequeuedRun {
    DequeuedRun {
        payload_type: "application/store".into(),
        payload_presigned_url: presigned_url,
        ..run(n, task, json!(path))
    }
}

#[tokio::test]
async fn stored_payloads_are_downloaded_and_large_outputs_uploaded() {
    let (fake, url) = start_fake(1_000).await;
    let big = "x".repeat(runnel_sdk::packets::OFFLOAD_THRESHOLD_BYTES);
    fake.update(|state| {
        // superjson (the TypeScript SDK's default), reached through GET /api/v1/packets
        state.packets.insert(
            "run_1/payload.json".into(),
            (
                "application/super+json".into(),
                br#"{"json":"Ada","meta":{}}"#.to_vec(),
            ),
        );
        // plain JSON, reached through the dequeued run's presigned URL
        state.packets.insert(
            "run_2/payload.json".into(),
            (
                "application/json".into(),
                format!("{{\"text\":\"{big}\"}}").into_bytes(),
            ),
        );
    });
    let tasks = Tasks::new()
        .task("hello", |name: String| async move {
            Ok::<_, String>(format!("Hello, {name}!"))
        })
        .task("shout", |payload: Value| async move {
            Ok::<_, String>(json!({"loud": payload["text"].as_str().unwrap().to_uppercase()}))
        });
    let worker = Running::spawn(&url, options(2), tasks);
    fake.push(stored_run(1, "hello", "run_1/payload.json", None));
    fake.push(stored_run(
        2,
        "shout",
        "run_2/payload.json",
        Some(format!("{url}/blob/run_2/payload.json")),
    ));
    let mut completions = fake.expect_completions(2).await;
    completions.sort_by(|a, b| a.attempt_id.cmp(&b.attempt_id));
    worker.stop().await;

    // small output: inline, as JSON
    assert_eq!(completions[0].outcome, success(json!("Hello, Ada!")));
    assert_eq!(completions[0].output_type, None);
    // large output: uploaded (with its content type), reported by its storage path
    assert_eq!(
        completions[1].outcome,
        success(json!("stored/run_2/output-attempt_2.json"))
    );
    assert_eq!(
        completions[1].output_type.as_deref(),
        Some("application/store")
    );
    let (content_type, bytes) = fake
        .read(|state| {
            state
                .packets
                .get("stored/run_2/output-attempt_2.json")
                .cloned()
        })
        .expect("the output was uploaded");
    assert_eq!(content_type, "application/json");
    assert_eq!(
        serde_json::from_slice::<Value>(&bytes).unwrap(),
        json!({"loud": big.to_uppercase()})
    );
}

#[tokio::test]
async fn a_failed_download_or_upload_fails_the_attempt_to_be_retried() {
    let (fake, url) = start_fake(1_000).await;
    fake.update(|state| state.refuse_uploads = true);
    let big = "y".repeat(runnel_sdk::packets::OFFLOAD_THRESHOLD_BYTES);
    let tasks = Tasks::new()
        .task("hello", |name: String| async move {
            Ok::<_, String>(format!("Hello, {name}!"))
        })
        .task("big", move |_: Value| {
            let big = big.clone();
            async move { Ok::<_, String>(big) }
        });
    let worker = Running::spawn(&url, options(2), tasks);
    fake.push(stored_run(1, "hello", "run_1/missing.json", None));
    fake.push(run(2, "big", Value::Null));
    let mut completions = fake.expect_completions(2).await;
    completions.sort_by(|a, b| a.attempt_id.cmp(&b.attempt_id));
    worker.stop().await;

    let (kind, message) = failure_of(&completions[0]);
    assert_eq!(kind, FailureKind::TaskFailed);
    assert!(
        message.contains("could not download the payload") && message.contains("404"),
        "{message}"
    );
    let (kind, message) = failure_of(&completions[1]);
    assert_eq!(kind, FailureKind::TaskFailed);
    assert!(
        message.contains("could not be uploaded") && message.contains("503"),
        "{message}"
    );
    assert_eq!(completions[1].output_type, None);
}
