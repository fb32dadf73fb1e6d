//! The client side of the HTTP tests: an [`Api`] at a base URL (an in-process server's,
//! or a spawned `runnel serve`'s) with the requests the suites make, the [`Reply`] they
//! read back, polling with a deadline ([`eventually`]) and the assertions on the wire
//! forms (ids, keys, timestamps, no nulls) that whole-body comparisons rely on
//! ([`redact`]).
//!
//! Nothing here sleeps for a fixed time: waits poll with a deadline.

use std::future::Future;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use reqwest::header::HeaderMap;
use reqwest::{Method, RequestBuilder, StatusCode};
use serde_json::{json, Value};

/// Deadline for things the runtime services do on their own (expiring a 1 s TTL).
pub const SERVICE_TIMEOUT: Duration = Duration::from_secs(10);
/// Between two probes of [`eventually`].
pub const POLL_INTERVAL: Duration = Duration::from_millis(25);
/// The `x-trigger-api-version` the v4 SDK sends (current status vocabulary).
pub const CURRENT_API_VERSION: &str = "2025-07-16";
/// Characters after `tr_<env>_` in a secret key.
pub const KEY_BODY_LEN: usize = 24;

/// A server's HTTP API at a base URL, with the requests the tests make.
#[derive(Debug, Clone)]
pub struct Api {
    /// `http://127.0.0.1:<port>`
    pub url: String,
    client: reqwest::Client,
}

impl Api {
    /// The API of the server at `url` (`http://127.0.0.1:<port>`), through a client that
    /// bypasses any proxy and gives up on a request after 30 s.
    pub fn new(url: impl Into<String>) -> Api {
        Api {
            url: url.into(),
            client: reqwest::Client::builder()
                .no_proxy()
                .timeout(Duration::from_secs(30))
                .build()
                .expect("building the HTTP client"),
        }
    }

    /// A request to `path` on this server.
    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.client.request(method, format!("{}{path}", self.url))
    }

    /// `POST /api/v1/tasks/{task}/trigger` with a JSON body.
    pub async fn trigger(&self, key: &str, task: &str, body: &Value) -> Reply {
        send(self.trigger_request(key, task).json(body)).await
    }

    /// A trigger request without a body yet.
    pub fn trigger_request(&self, key: &str, task: &str) -> RequestBuilder {
        self.request(Method::POST, &format!("/api/v1/tasks/{task}/trigger"))
            .bearer_auth(key)
    }

    /// Triggers and asserts a new run was created; returns its id.
    pub async fn trigger_new(&self, key: &str, task: &str, body: &Value) -> String {
        let reply = self.trigger(key, task, body).await;
        reply.assert_new_run()
    }

    /// `GET /api/v3/runs/{id}` without `x-trigger-api-version` (legacy statuses).
    pub async fn retrieve(&self, key: &str, run_id: &str) -> Reply {
        send(
            self.request(Method::GET, &format!("/api/v3/runs/{run_id}"))
                .bearer_auth(key),
        )
        .await
    }

    /// `GET /api/v3/runs/{id}` with `x-trigger-api-version: <version>`.
    pub async fn retrieve_as(&self, key: &str, run_id: &str, version: &str) -> Reply {
        send(
            self.request(Method::GET, &format!("/api/v3/runs/{run_id}"))
                .bearer_auth(key)
                .header("x-trigger-api-version", version),
        )
        .await
    }

    /// Retrieves a run that must exist; returns its body.
    pub async fn run(&self, key: &str, run_id: &str) -> Value {
        let reply = self.retrieve(key, run_id).await;
        assert_eq!(reply.status, StatusCode::OK, "retrieve {run_id}: {reply:?}");
        reply.body
    }

    /// Polls the run until its legacy status is `status`; returns that body.
    pub async fn wait_for_status(&self, key: &str, run_id: &str, status: &str) -> Value {
        eventually(
            &format!("run {run_id} to become {status}"),
            SERVICE_TIMEOUT,
            || async {
                let body = self.run(key, run_id).await;
                (body["status"] == status).then_some(body)
            },
        )
        .await
    }

    /// Registers a worker serving `tasks` through the worker API
    /// (`POST /api/v1/workers/register`) and returns its id. A worker that never dequeues
    /// leaves the runs of its tasks `QUEUED` instead of `WAITING_FOR_DEPLOY`.
    pub async fn register_worker(&self, key: &str, tasks: &[&str]) -> String {
        let tasks: Vec<Value> = tasks.iter().map(|task| json!({ "id": task })).collect();
        let reply = self
            .register_worker_as(key, &json!({"name": "t", "tasks": tasks}))
            .await;
        assert_eq!(reply.status, StatusCode::OK, "register: {reply:?}");
        let id = reply.body["workerId"]
            .as_str()
            .unwrap_or_else(|| panic!("no workerId in {reply:?}"));
        assert_friendly_id(id, "worker");
        id.to_owned()
    }

    /// `POST /api/v1/workers/register` with this body.
    pub async fn register_worker_as(&self, key: &str, body: &Value) -> Reply {
        send(
            self.request(Method::POST, "/api/v1/workers/register")
                .bearer_auth(key)
                .json(body),
        )
        .await
    }

    /// `POST /api/v1/workers/{worker_id}/{operation}` (`dequeue`, `start`, `heartbeat`,
    /// `complete`) with a JSON body.
    pub async fn worker_call(
        &self,
        key: &str,
        worker_id: &str,
        operation: &str,
        body: &Value,
    ) -> Reply {
        send(
            self.request(
                Method::POST,
                &format!("/api/v1/workers/{worker_id}/{operation}"),
            )
            .bearer_auth(key)
            .json(body),
        )
        .await
    }

    /// Leases one queued run to `worker_id` (a dequeue waiting up to 5 s); returns its
    /// run id and attempt id.
    pub async fn dequeue_one(&self, key: &str, worker_id: &str) -> (String, String) {
        let dequeued = self
            .worker_call(
                key,
                worker_id,
                "dequeue",
                &json!({"maxRuns": 1, "waitMs": 5000}),
            )
            .await;
        assert_eq!(dequeued.status, StatusCode::OK, "{dequeued:?}");
        let leased = &dequeued.body["runs"][0];
        match (leased["runId"].as_str(), leased["attemptId"].as_str()) {
            (Some(run), Some(attempt)) => (run.to_owned(), attempt.to_owned()),
            _ => panic!("nothing dequeued: {dequeued:?}"),
        }
    }

    /// Leases one queued run to `worker_id`, starts its attempt and completes it with
    /// `output`, asserting each step and that the run is `COMPLETED`; returns the run id.
    pub async fn run_one(&self, key: &str, worker_id: &str, output: Value) -> String {
        let (run, attempt) = self.dequeue_one(key, worker_id).await;
        let started = self
            .worker_call(key, worker_id, "start", &json!({"attemptIds": [attempt]}))
            .await;
        assert_eq!(started.status, StatusCode::OK, "start: {started:?}");
        let completed = self
            .worker_call(
                key,
                worker_id,
                "complete",
                &json!({"completions": [{"attemptId": attempt, "outcome": "success", "output": output}]}),
            )
            .await;
        assert_eq!(
            completed.body,
            json!({"results": [{"attemptId": attempt, "accepted": true, "runStatus": "COMPLETED"}]}),
            "complete: {completed:?}"
        );
        run
    }

    /// `POST /api/v2/runs/{id}/cancel`.
    pub async fn cancel(&self, key: &str, run_id: &str) -> Reply {
        send(
            self.request(Method::POST, &format!("/api/v2/runs/{run_id}/cancel"))
                .bearer_auth(key),
        )
        .await
    }
}

/// A response: status, headers and the body parsed as JSON.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Value,
}

impl Reply {
    /// Asserts this is a trigger's `200 {"id": "run_…", "isCached": false}`; returns the id.
    pub fn assert_new_run(&self) -> String {
        assert_eq!(self.status, StatusCode::OK, "trigger: {self:?}");
        assert_eq!(
            redact(&self.body),
            json!({"id": "<run id>", "isCached": false}),
            "trigger: {self:?}"
        );
        self.run_id()
    }

    /// Asserts this is a trigger's `200 {"id": "run_…", "isCached": true}`; returns the id.
    pub fn assert_cached_run(&self) -> String {
        assert_eq!(self.status, StatusCode::OK, "trigger: {self:?}");
        assert_eq!(
            redact(&self.body),
            json!({"id": "<run id>", "isCached": true}),
            "trigger: {self:?}"
        );
        self.run_id()
    }

    pub fn run_id(&self) -> String {
        self.body["id"]
            .as_str()
            .unwrap_or_else(|| panic!("no id in {self:?}"))
            .to_owned()
    }

    /// Asserts an error reply: this status, exactly `{"error": message}`, and
    /// `x-should-retry: false` (so the SDK fails fast instead of retrying).
    pub fn assert_error(&self, status: StatusCode, message: &str) {
        assert_eq!(
            (self.status, &self.body),
            (status, &json!({ "error": message })),
            "{self:?}"
        );
        assert_eq!(
            self.headers
                .get("x-should-retry")
                .and_then(|v| v.to_str().ok()),
            Some("false"),
            "{self:?}"
        );
    }
}

/// Sends a request and parses the body as JSON (panicking with the text when it is not).
pub async fn send(request: RequestBuilder) -> Reply {
    let response = request.send().await.expect("sending the request");
    let status = response.status();
    let headers = response.headers().clone();
    let text = response.text().await.expect("reading the response body");
    let body = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{status}: body is not JSON ({e}): {text:?}"));
    Reply {
        status,
        headers,
        body,
    }
}

/// Polls `probe` every few milliseconds until it returns `Some`, for at most `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    eventually_explained(what, timeout, probe, String::new).await
}

/// Like [`eventually`]; a timeout's panic message adds what `explain` returns then (the
/// last state seen, the logs of the processes involved).
pub async fn eventually_explained<T, F, Fut>(
    what: &str,
    timeout: Duration,
    mut probe: F,
    explain: impl FnOnce() -> String,
) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        if Instant::now() >= deadline {
            panic!(
                "timed out after {timeout:?} waiting for {what}\n{}",
                explain()
            );
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Fields whose values are timestamps wherever they appear.
const TIMESTAMP_FIELDS: [&str; 7] = [
    "createdAt",
    "updatedAt",
    "startedAt",
    "finishedAt",
    "delayedUntil",
    "expiredAt",
    "completedAt",
];

/// A copy of `value` with run ids replaced by `"<run id>"`, attempt ids by
/// `"<attempt id>"` and timestamps by `"<timestamp>"`, after asserting each has the
/// documented shape, so whole bodies can be compared. Applies to every `id` and
/// timestamp field at any depth.
pub fn redact(value: &Value) -> Value {
    match value {
        Value::Object(fields) => fields
            .iter()
            .map(|(name, field)| {
                let redacted = if name == "id" {
                    let id = field
                        .as_str()
                        .unwrap_or_else(|| panic!("id is not a string: {field}"));
                    if id.starts_with("attempt_") {
                        assert_friendly_id(id, "attempt");
                        json!("<attempt id>")
                    } else {
                        assert_friendly_id(id, "run");
                        json!("<run id>")
                    }
                } else if TIMESTAMP_FIELDS.contains(&name.as_str()) {
                    timestamp(field);
                    json!("<timestamp>")
                } else {
                    redact(field)
                };
                (name.clone(), redacted)
            })
            .collect(),
        Value::Array(items) => items.iter().map(redact).collect(),
        other => other.clone(),
    }
}

/// Asserts `id` is `<prefix>_` + 24 lowercase base32 characters (`0-9a-v`), the ids
/// this server generates.
pub fn assert_friendly_id(id: &str, prefix: &str) {
    let body = id
        .strip_prefix(prefix)
        .and_then(|rest| rest.strip_prefix('_'))
        .unwrap_or_else(|| panic!("{id:?} does not start with {prefix}_"));
    assert!(
        body.len() == 24 && body.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'v')),
        "{id:?} is not {prefix}_ + 24 of [0-9a-v]"
    );
}

/// Parses a response timestamp, asserting the wire form: RFC 3339, UTC written `Z`,
/// exactly three fractional digits (`2026-01-02T03:04:05.678Z`).
pub fn timestamp(value: &Value) -> DateTime<Utc> {
    let text = value
        .as_str()
        .unwrap_or_else(|| panic!("timestamp is not a string: {value}"));
    let bytes = text.as_bytes();
    assert!(
        bytes.len() == 24
            && bytes[19] == b'.'
            && bytes[20..23].iter().all(u8::is_ascii_digit)
            && bytes[23] == b'Z',
        "{text:?} is not YYYY-MM-DDTHH:MM:SS.mmmZ"
    );
    DateTime::parse_from_rfc3339(text)
        .unwrap_or_else(|e| panic!("{text:?} is not RFC 3339: {e}"))
        .with_timezone(&Utc)
}

/// Asserts no `null` appears anywhere in `value`: optional fields are left out instead.
pub fn assert_no_nulls(value: &Value) {
    fn walk(value: &Value, path: &str) {
        match value {
            Value::Null => panic!("null at {path}"),
            Value::Object(fields) => {
                for (name, field) in fields {
                    walk(field, &format!("{path}.{name}"));
                }
            }
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    walk(item, &format!("{path}[{i}]"));
                }
            }
            _ => {}
        }
    }
    walk(value, "$");
}

/// Asserts `key` is `tr_<tag>_` followed by 24 ASCII letters and digits.
pub fn assert_secret_key(key: &str, tag: &str) {
    let body = key
        .strip_prefix("tr_")
        .and_then(|rest| rest.strip_prefix(tag))
        .and_then(|rest| rest.strip_prefix('_'))
        .unwrap_or_else(|| panic!("{key:?} does not start with tr_{tag}_"));
    assert!(
        body.len() == KEY_BODY_LEN && body.bytes().all(|b| b.is_ascii_alphanumeric()),
        "{key:?} is not tr_{tag}_ + 24 of [0-9A-Za-z]"
    );
}
