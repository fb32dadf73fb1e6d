//! The HTTP client: management calls (trigger, retrieve, cancel, wait) and the worker
//! protocol calls the runtime in [`crate::worker`] is built on.
//!
//! Every call sends `Authorization: Bearer <secret key>` and JSON. A reply outside 2xx
//! becomes [`Error::Http`] with the server's `{"error": …}` message and whatever else the
//! body explains (`details`, `issues`, …); nothing here panics on what a server sends. Long polls (dequeue, heartbeat) get a per-request timeout of their
//! wait plus [`LONG_POLL_MARGIN`], so a held reply is never cut short by the client.

use std::fmt;
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use runnel_core::worker::{
    CompleteRequest, CompleteResponse, DequeueRequest, DequeueResponse, HeartbeatRequest,
    HeartbeatResponse, RegisterRequest, RegisterResponse, StartRequest, StartResponse,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize, Serializer};
use serde_json::Value;

/// Timeout of a request that the server answers at once.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Added to a long poll's wait to get its request timeout: room for the server's own
/// latency after the wait ends.
pub const LONG_POLL_MARGIN: Duration = Duration::from_secs(15);
/// How long establishing a connection may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The most characters of a non-JSON error body kept in [`Error::Http`].
const ERROR_BODY_LIMIT: usize = 512;

/// What a call to the server can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The server answered with a status outside 2xx.
    #[error("server answered {status}: {message}{}", details_text(details.as_ref()))]
    Http {
        status: StatusCode,
        /// The server's `{"error": …}` message (or the body's text, or the status reason).
        message: String,
        /// The rest of a JSON error body, as sent: an object of the fields besides
        /// `error` (`{"details": [{"message", "path"}…]}` of a bad list query,
        /// `{"issues": […]}` of a bad action body, `{"code", "param", …}`). `None` when
        /// the body had nothing more.
        details: Option<Value>,
    },
    /// The request could not be sent or its answer not received (connection refused,
    /// reset, timed out).
    #[error("request failed: {0}")]
    Transport(#[source] reqwest::Error),
    /// The server's answer (or a run's output) did not have the expected shape.
    #[error("could not decode {context}: {source}")]
    Decode {
        /// What was being decoded, e.g. `the answer to POST /api/v1/tasks/hello/trigger`.
        context: String,
        #[source]
        source: serde_json::Error,
    },
    /// The trigger's payload could not be serialized to JSON (nothing was sent).
    #[error("the payload does not serialize to JSON: {0}")]
    Payload(#[source] serde_json::Error),
    /// [`Client::wait_for_completion`] gave up before the run reached a final status.
    #[error("run {run_id} is still {status} after {waited:?}")]
    WaitTimedOut {
        run_id: String,
        /// The last status seen.
        status: RunStatus,
        waited: Duration,
    },
    /// A wait of a [`crate::TaskContext`] could not be made or ended without its result:
    /// the context has no client (it was not made by a [`crate::Worker`]), or the run
    /// ended (was canceled) before its waitpoint completed.
    #[error("cannot wait: {0}")]
    Wait(String),
    /// A packet in object storage (a large payload or output) could not be read: its
    /// content type is not supported or its bytes do not parse as that type.
    #[error("packet {path}: {message}")]
    Packet { path: String, message: String },
}

impl Error {
    /// The HTTP status, when the server answered.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            Error::Http { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// Whether trying again later may succeed: the server could not be reached, was
    /// overloaded or failed on its side. Client errors (bad key, bad request) are not.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Transport(_) => true,
            Error::Http { status, .. } => {
                status.is_server_error()
                    || *status == StatusCode::TOO_MANY_REQUESTS
                    || *status == StatusCode::REQUEST_TIMEOUT
            }
            Error::Decode { .. }
            | Error::Payload(_)
            | Error::WaitTimedOut { .. }
            | Error::Wait(_)
            | Error::Packet { .. } => false,
        }
    }
}

/// A client of one Runnel server, authenticated with one secret key (and so scoped to
/// one environment). Cheap to clone: clones share the connection pool.
///
/// It speaks plain HTTP: the workspace builds `reqwest` without a TLS backend, so an
/// `https://` server needs a `reqwest` client built with one ([`Client::with_http_client`]
/// after enabling a TLS feature of `reqwest`) or a local TLS-terminating proxy.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    /// Without a trailing slash.
    api_url: String,
    secret_key: String,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The secret key stays out of logs.
        f.debug_struct("Client")
            .field("api_url", &self.api_url)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// A client of the server at `api_url` (`http://127.0.0.1:3030`; a trailing slash is
    /// ignored) using `secret_key` (`tr_dev_…`).
    pub fn new(api_url: impl Into<String>, secret_key: impl Into<String>) -> Client {
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .build()
            .unwrap_or_default();
        Client::with_http_client(http, api_url, secret_key)
    }

    /// Like [`Client::new`], with a `reqwest` client configured by the caller (proxies,
    /// TLS roots). Per-request timeouts are still set by this client.
    pub fn with_http_client(
        http: reqwest::Client,
        api_url: impl Into<String>,
        secret_key: impl Into<String>,
    ) -> Client {
        let api_url = api_url.into().trim_end_matches('/').to_owned();
        Client {
            http,
            api_url,
            secret_key: secret_key.into(),
        }
    }

    /// The server's base URL, without a trailing slash.
    pub fn api_url(&self) -> &str {
        &self.api_url
    }

    /// The secret key this client sends: what a task process is handed so that it can
    /// call the server on its run's behalf (exec mode's `RUNNEL_SECRET_KEY`).
    pub fn secret_key(&self) -> &str {
        &self.secret_key
    }

    /// The `reqwest` client, for requests that carry their own authorization (presigned
    /// URLs): they must not send the secret key.
    pub(crate) fn http_client(&self) -> &reqwest::Client {
        &self.http
    }

    /// Triggers a run of `task` with `payload`; answers with the run id.
    ///
    /// A payload whose JSON is [`OFFLOAD_THRESHOLD_BYTES`] or more is
    /// first uploaded to object storage (`PUT /api/v2/packets/trigger/{task}/…`) and the
    /// run triggered with its storage path and `payloadType: application/store`, as the
    /// TypeScript SDK does; the task still receives the payload itself.
    pub async fn trigger<P: Serialize + ?Sized>(
        &self,
        task: &str,
        payload: &P,
        options: TriggerOptions,
    ) -> Result<Triggered, Error> {
        let mut payload = serde_json::to_value(payload).map_err(Error::Payload)?;
        let mut payload_type = None;
        if let Some(bytes) = oversized_json(&payload) {
            let path = format!(
                "trigger/{task}/{}-{:016x}/payload.json",
                chrono::Utc::now().timestamp_millis(),
                rand::random::<u64>()
            );
            payload = Value::String(self.packet_upload(&path, bytes).await?);
            payload_type = Some(STORE_TYPE);
        }
        let body = TriggerBody {
            payload: &payload,
            options: &options,
            payload_type,
        };
        let path = format!("/api/v1/tasks/{}/trigger", segment(task));
        self.call(Method::POST, &path, Some(&body), REQUEST_TIMEOUT)
            .await
    }

    /// Reads a run (`GET /api/v3/runs/{runId}`). An output kept in object storage (the
    /// answer has `outputPresignedUrl` instead of `output`) is downloaded into
    /// [`RunInfo::output`], as the TypeScript SDK's `runs.retrieve` does.
    pub async fn retrieve(&self, run_id: &str) -> Result<RunInfo, Error> {
        let path = format!("/api/v3/runs/{}", segment(run_id));
        let raw: Value = self
            .call(Method::GET, &path, None::<&()>, REQUEST_TIMEOUT)
            .await?;
        let mut run = RunInfo::from_json(raw)?;
        if run.output.is_none() {
            if let Some(url) = run.raw.get("outputPresignedUrl").and_then(Value::as_str) {
                let url = url.to_owned();
                run.output = Some(
                    self.packet_value(&format!("{run_id}/output"), Some(&url))
                        .await?,
                );
            }
        }
        Ok(run)
    }

    /// Cancels a run. Canceling a run that already ended is not an error.
    pub async fn cancel(&self, run_id: &str) -> Result<(), Error> {
        let path = format!("/api/v2/runs/{}/cancel", segment(run_id));
        let _: Value = self
            .call(Method::POST, &path, None::<&()>, REQUEST_TIMEOUT)
            .await?;
        Ok(())
    }

    /// Retrieves the run every `poll_interval` until its status is final
    /// ([`RunStatus::is_final`]); fails with [`Error::WaitTimedOut`] after `timeout`.
    /// A failed retrieve ends the wait with its error.
    pub async fn wait_for_completion(
        &self,
        run_id: &str,
        poll_interval: Duration,
        timeout: Duration,
    ) -> Result<RunInfo, Error> {
        let started = Instant::now();
        loop {
            let run = self.retrieve(run_id).await?;
            if run.status.is_final() {
                return Ok(run);
            }
            let waited = started.elapsed();
            if waited >= timeout {
                return Err(Error::WaitTimedOut {
                    run_id: run_id.to_owned(),
                    status: run.status,
                    waited,
                });
            }
            tokio::time::sleep(poll_interval.min(timeout - waited)).await;
        }
    }

    /// `POST /api/v1/workers/register`.
    pub async fn register(&self, request: &RegisterRequest) -> Result<RegisterResponse, Error> {
        self.call(
            Method::POST,
            "/api/v1/workers/register",
            Some(request),
            REQUEST_TIMEOUT,
        )
        .await
    }

    /// `POST /api/v1/workers/{workerId}/dequeue`: a long poll of up to `request.wait_ms`.
    pub async fn dequeue(
        &self,
        worker_id: &str,
        request: &DequeueRequest,
    ) -> Result<DequeueResponse, Error> {
        let path = format!("/api/v1/workers/{}/dequeue", segment(worker_id));
        let timeout = Duration::from_millis(request.wait_ms) + LONG_POLL_MARGIN;
        self.call(Method::POST, &path, Some(request), timeout).await
    }

    /// `POST /api/v1/workers/{workerId}/start`.
    pub async fn start(
        &self,
        worker_id: &str,
        request: &StartRequest,
    ) -> Result<StartResponse, Error> {
        let path = format!("/api/v1/workers/{}/start", segment(worker_id));
        self.call(Method::POST, &path, Some(request), REQUEST_TIMEOUT)
            .await
    }

    /// `POST /api/v1/workers/{workerId}/heartbeat`: a long poll of up to `request.wait_ms`.
    pub async fn heartbeat(
        &self,
        worker_id: &str,
        request: &HeartbeatRequest,
    ) -> Result<HeartbeatResponse, Error> {
        let path = format!("/api/v1/workers/{}/heartbeat", segment(worker_id));
        let timeout = Duration::from_millis(request.wait_ms) + LONG_POLL_MARGIN;
        self.call(Method::POST, &path, Some(request), timeout).await
    }

    /// `POST /api/v1/workers/{workerId}/complete`.
    pub async fn complete(
        &self,
        worker_id: &str,
        request: &CompleteRequest,
    ) -> Result<CompleteResponse, Error> {
        let path = format!("/api/v1/workers/{}/complete", segment(worker_id));
        self.call(Method::POST, &path, Some(request), REQUEST_TIMEOUT)
            .await
    }

    /// Sends one request and decodes a 2xx JSON answer as `T`.
    pub(crate) async fn call<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
        timeout: Duration,
    ) -> Result<T, Error> {
        let mut request = self.request(method.clone(), path, timeout);
        if let Some(body) = body {
            request = request.json(body);
        }
        self.send(request, method, path).await
    }

    /// A request to `path` with this client's key and `timeout`.
    pub(crate) fn request(
        &self,
        method: Method,
        path: &str,
        timeout: Duration,
    ) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.api_url))
            .bearer_auth(&self.secret_key)
            .timeout(timeout)
    }

    /// Sends `request` (a `method` to `path`) and decodes a 2xx JSON answer as `T`.
    pub(crate) async fn send<T: DeserializeOwned>(
        &self,
        request: reqwest::RequestBuilder,
        method: Method,
        path: &str,
    ) -> Result<T, Error> {
        let response = request.send().await.map_err(Error::Transport)?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(Error::Transport)?;
        if !status.is_success() {
            let (message, details) = error_parts(status, &bytes);
            return Err(Error::Http {
                status,
                message,
                details,
            });
        }
        serde_json::from_slice(&bytes).map_err(|source| Error::Decode {
            context: format!("the answer to {method} {path}"),
            source,
        })
    }
}

/// The message of an error reply and its other fields: `{"error": …, …}` when the body
/// has it, else the body's text (shortened), else the status's reason.
fn error_parts(status: StatusCode, body: &[u8]) -> (String, Option<Value>) {
    if let Ok(Value::Object(mut fields)) = serde_json::from_slice::<Value>(body) {
        if let Some(Value::String(error)) = fields.remove("error") {
            // A problem+json body repeats its message as `detail` and says little else.
            if fields.get("detail").and_then(Value::as_str) == Some(error.as_str()) {
                for echo in ["detail", "title", "status", "type"] {
                    fields.remove(echo);
                }
            }
            let details = (!fields.is_empty()).then_some(Value::Object(fields));
            return (error, details);
        }
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        let reason = status.canonical_reason().unwrap_or("no message");
        return (reason.to_owned(), None);
    }
    (shorten(text), None)
}

fn shorten(text: &str) -> String {
    match text.char_indices().nth(ERROR_BODY_LIMIT) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

/// What [`Error::Http`]'s details add to its message, for people: each issue of a
/// `details` or `issues` list as `message (at path)`, any other field as `name: value`.
/// Empty when there are none.
fn details_text(details: Option<&Value>) -> String {
    let Some(Value::Object(fields)) = details else {
        return String::new();
    };
    let mut parts = Vec::new();
    for (name, value) in fields {
        match value {
            Value::Array(items) if matches!(name.as_str(), "details" | "issues") => {
                parts.extend(items.iter().map(issue_text));
            }
            Value::String(text) => parts.push(format!("{name}: {text}")),
            other => parts.push(format!("{name}: {other}")),
        }
    }
    if parts.is_empty() {
        return String::new();
    }
    shorten(&format!(" ({})", parts.join("; ")))
}

/// One validation issue: `{"message": "…", "path": ["filter[status]"]}` reads
/// `… (at filter[status])`; anything else is shown as JSON.
fn issue_text(issue: &Value) -> String {
    let Some(message) = issue.get("message").and_then(Value::as_str) else {
        return issue.to_string();
    };
    let path: Vec<String> = issue
        .get("path")
        .and_then(Value::as_array)
        .map(|path| {
            path.iter()
                .map(|p| match p {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .collect()
        })
        .unwrap_or_default();
    if path.is_empty() {
        message.to_owned()
    } else {
        format!("{message} at {}", path.join("."))
    }
}

/// Percent-encodes one path segment: ids and task identifiers are placed in URLs as
/// given, so a `/` or space in a task identifier cannot change the route.
pub(crate) fn segment(text: &str) -> String {
    let mut encoded = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            encoded.push(byte as char);
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

struct TriggerBody<'a> {
    payload: &'a Value,
    options: &'a TriggerOptions,
    /// `options.payloadType`: set only for an offloaded payload (`application/store`).
    payload_type: Option<&'static str>,
}

impl Serialize for TriggerBody<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{Error as _, SerializeMap};
        let mut options = serde_json::to_value(self.options).map_err(S::Error::custom)?;
        if let (Some(payload_type), Value::Object(fields)) = (self.payload_type, &mut options) {
            fields.insert(
                "payloadType".to_owned(),
                Value::String(payload_type.to_owned()),
            );
        }
        let mut map = serializer.serialize_map(Some(2))?;
        map.serialize_entry("payload", self.payload)?;
        map.serialize_entry("options", &options)?;
        map.end()
    }
}

/// Options of a trigger (`options` of the trigger body). Everything is optional; what is
/// left `None` (or empty) is not sent, so the task's or server's default applies.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TriggerOptions {
    /// The queue to run in (`task/<id>` when absent).
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "queue_object"
    )]
    pub queue: Option<String>,
    /// Run later: a duration (`30s`, `1h30m`) or an ISO 8601 date.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delay: Option<String>,
    /// Expire the run if it is still queued after this long (`10m`, `3600s`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ttl: Option<String>,
    /// Up to 10 tags.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// Overrides the task's retry policy's number of attempts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
    /// Seconds of compute per attempt.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_duration: Option<u32>,
    /// A second trigger with the same key answers with the first run (`isCached: true`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// How long the idempotency key holds (`1h`, `30d`).
    #[serde(rename = "idempotencyKeyTTL", skip_serializing_if = "Option::is_none")]
    pub idempotency_key_ttl: Option<String>,
    /// Machine preset (`small-1x`, …); it prices the run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub machine: Option<String>,
    /// Only a worker of this version may run it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lock_to_version: Option<String>,
    /// A JSON object attached to the run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Value>,
    /// Seconds of head start over runs queued at the same time.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub priority: Option<f64>,
    /// Runs sharing a key are limited together by the queue's concurrency.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub concurrency_key: Option<String>,
    /// Marks the run as a test run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub test: Option<bool>,
}

/// The wire wants `queue: {"name": …}`; a plain name is nicer to write.
fn queue_object<S: Serializer>(queue: &Option<String>, serializer: S) -> Result<S::Ok, S::Error> {
    #[derive(Serialize)]
    struct Queue<'a> {
        name: &'a str,
    }
    match queue {
        Some(name) => Queue { name }.serialize(serializer),
        None => serializer.serialize_none(),
    }
}

/// The answer to a trigger.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Triggered {
    /// `run_…`
    pub id: String,
    /// True when an idempotency key matched an existing run, which is then `id`.
    pub is_cached: bool,
}

/// A run's public status, in the vocabulary a client without `x-trigger-api-version`
/// gets (the one this client reads).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize)]
#[serde(from = "String")]
pub enum RunStatus {
    Delayed,
    WaitingForDeploy,
    Queued,
    Executing,
    Reattempting,
    Frozen,
    Completed,
    Canceled,
    Failed,
    Crashed,
    Interrupted,
    SystemFailure,
    Expired,
    TimedOut,
    /// A status this SDK does not know yet, kept as sent.
    Other(String),
}

impl RunStatus {
    /// The wire name (`COMPLETED`).
    pub fn as_str(&self) -> &str {
        match self {
            RunStatus::Delayed => "DELAYED",
            RunStatus::WaitingForDeploy => "WAITING_FOR_DEPLOY",
            RunStatus::Queued => "QUEUED",
            RunStatus::Executing => "EXECUTING",
            RunStatus::Reattempting => "REATTEMPTING",
            RunStatus::Frozen => "FROZEN",
            RunStatus::Completed => "COMPLETED",
            RunStatus::Canceled => "CANCELED",
            RunStatus::Failed => "FAILED",
            RunStatus::Crashed => "CRASHED",
            RunStatus::Interrupted => "INTERRUPTED",
            RunStatus::SystemFailure => "SYSTEM_FAILURE",
            RunStatus::Expired => "EXPIRED",
            RunStatus::TimedOut => "TIMED_OUT",
            RunStatus::Other(name) => name,
        }
    }

    /// Whether the run has ended for good. Unlike the run's `isCompleted` (which follows
    /// upstream and leaves them out), `EXPIRED` and `TIMED_OUT` are final here: nothing
    /// leaves them, so waiting on them would never end.
    pub fn is_final(&self) -> bool {
        matches!(
            self,
            RunStatus::Completed
                | RunStatus::Canceled
                | RunStatus::Failed
                | RunStatus::Crashed
                | RunStatus::Interrupted
                | RunStatus::SystemFailure
                | RunStatus::Expired
                | RunStatus::TimedOut
        )
    }
}

impl From<String> for RunStatus {
    fn from(name: String) -> Self {
        match name.as_str() {
            "DELAYED" => RunStatus::Delayed,
            "WAITING_FOR_DEPLOY" => RunStatus::WaitingForDeploy,
            "QUEUED" => RunStatus::Queued,
            "EXECUTING" => RunStatus::Executing,
            "REATTEMPTING" => RunStatus::Reattempting,
            "FROZEN" => RunStatus::Frozen,
            "COMPLETED" => RunStatus::Completed,
            "CANCELED" => RunStatus::Canceled,
            "FAILED" => RunStatus::Failed,
            "CRASHED" => RunStatus::Crashed,
            "INTERRUPTED" => RunStatus::Interrupted,
            "SYSTEM_FAILURE" => RunStatus::SystemFailure,
            "EXPIRED" => RunStatus::Expired,
            "TIMED_OUT" => RunStatus::TimedOut,
            _ => RunStatus::Other(name),
        }
    }
}

impl fmt::Display for RunStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A retrieved run: the fields most callers need, typed, and the whole body in `raw`.
#[derive(Debug, Clone, PartialEq)]
pub struct RunInfo {
    /// `run_…`
    pub id: String,
    pub status: RunStatus,
    pub task_identifier: String,
    /// The run's output JSON, once it succeeded.
    pub output: Option<Value>,
    /// The run's error (`{message, name?, stackTrace?}`), once it failed.
    pub error: Option<Value>,
    pub is_completed: bool,
    pub is_success: bool,
    pub is_failed: bool,
    pub attempt_count: u32,
    /// Compute time over all attempts.
    pub duration_ms: u64,
    pub cost_in_cents: f64,
    /// The worker version that ran it (or the locked version).
    pub version: Option<String>,
    /// The whole response body.
    pub raw: Value,
}

impl RunInfo {
    /// Reads the typed fields out of a retrieve body.
    pub fn from_json(raw: Value) -> Result<RunInfo, Error> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Fields {
            id: String,
            status: RunStatus,
            task_identifier: String,
            #[serde(default)]
            output: Option<Value>,
            #[serde(default)]
            error: Option<Value>,
            #[serde(default)]
            is_completed: bool,
            #[serde(default)]
            is_success: bool,
            #[serde(default)]
            is_failed: bool,
            #[serde(default)]
            attempt_count: u32,
            #[serde(default)]
            duration_ms: f64,
            #[serde(default)]
            cost_in_cents: f64,
            #[serde(default)]
            version: Option<String>,
        }
        let fields = Fields::deserialize(&raw).map_err(|source| Error::Decode {
            context: "a run".to_owned(),
            source,
        })?;
        Ok(RunInfo {
            id: fields.id,
            status: fields.status,
            task_identifier: fields.task_identifier,
            output: fields.output,
            error: fields.error,
            is_completed: fields.is_completed,
            is_success: fields.is_success,
            is_failed: fields.is_failed,
            attempt_count: fields.attempt_count,
            duration_ms: fields.duration_ms.max(0.0).round() as u64,
            cost_in_cents: fields.cost_in_cents,
            version: fields.version,
            raw,
        })
    }

    /// The output decoded as `T`; a run without output decodes from `null` (so
    /// `Option<T>` reads it as `None`).
    pub fn output_as<T: DeserializeOwned>(&self) -> Result<T, Error> {
        let output = self.output.as_ref().unwrap_or(&Value::Null);
        T::deserialize(output).map_err(|source| Error::Decode {
            context: format!("the output of run {}", self.id),
            source,
        })
    }

    /// The error's `message`, when the run failed with one.
    pub fn error_message(&self) -> Option<&str> {
        self.error.as_ref()?.get("message")?.as_str()
    }
}

/// A payload or output whose JSON serialization is this many bytes or more (512 KiB) is
/// offloaded to object storage instead of travelling inline (the `packets` module).
pub const OFFLOAD_THRESHOLD_BYTES: usize = 512 * 1024;
/// The payload/output type of a packet in object storage; the value is its storage path.
pub const STORE_TYPE: &str = "application/store";

/// The JSON of `value` when it must be offloaded (at least [`OFFLOAD_THRESHOLD_BYTES`]).
pub(crate) fn oversized_json(value: &Value) -> Option<Vec<u8>> {
    let bytes = serde_json::to_vec(value).ok()?;
    (bytes.len() >= OFFLOAD_THRESHOLD_BYTES).then_some(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn trigger_options_send_only_what_is_set() {
        assert_eq!(
            serde_json::to_value(TriggerOptions::default()).unwrap(),
            json!({})
        );
        let options = TriggerOptions {
            queue: Some("emails".into()),
            tags: vec!["a".into()],
            max_attempts: Some(2),
            idempotency_key: Some("k".into()),
            idempotency_key_ttl: Some("1h".into()),
            lock_to_version: Some("v1".into()),
            ..TriggerOptions::default()
        };
        assert_eq!(
            serde_json::to_value(options).unwrap(),
            json!({"queue": {"name": "emails"}, "tags": ["a"], "maxAttempts": 2,
                   "idempotencyKey": "k", "idempotencyKeyTTL": "1h", "lockToVersion": "v1"})
        );
    }

    #[test]
    fn an_offloaded_payload_is_sent_with_its_payload_type_among_the_options() {
        let options = TriggerOptions {
            tags: vec!["a".into()],
            ..TriggerOptions::default()
        };
        let path = json!("packets/trigger/t/1-2/payload.json");
        let body = TriggerBody {
            payload: &path,
            options: &options,
            payload_type: Some(STORE_TYPE),
        };
        assert_eq!(
            serde_json::to_value(&body).unwrap(),
            json!({"payload": "packets/trigger/t/1-2/payload.json",
                   "options": {"tags": ["a"], "payloadType": "application/store"}})
        );
        let inline = json!({"x": 1});
        let body = TriggerBody {
            payload: &inline,
            options: &TriggerOptions::default(),
            payload_type: None,
        };
        assert_eq!(
            serde_json::to_value(&body).unwrap(),
            json!({"payload": {"x": 1}, "options": {}})
        );
    }

    #[test]
    fn run_info_reads_the_main_fields() {
        let raw = json!({"id": "run_1", "status": "COMPLETED", "taskIdentifier": "hello",
            "output": {"greeting": "hi"}, "isCompleted": true, "isSuccess": true, "isFailed": false,
            "attemptCount": 1, "durationMs": 12, "costInCents": 0, "version": "20260101.1",
            "attempts": []});
        let run = RunInfo::from_json(raw.clone()).unwrap();
        assert_eq!(run.status, RunStatus::Completed);
        assert!(run.status.is_final());
        assert_eq!(run.attempt_count, 1);
        assert_eq!(run.duration_ms, 12);
        assert_eq!(run.version.as_deref(), Some("20260101.1"));
        assert_eq!(run.raw, raw);
        #[derive(Deserialize, Debug, PartialEq)]
        struct Out {
            greeting: String,
        }
        assert_eq!(
            run.output_as::<Out>().unwrap(),
            Out {
                greeting: "hi".into()
            }
        );
        assert!(run.output_as::<u32>().is_err());

        let queued = RunInfo::from_json(
            json!({"id": "run_2", "status": "SOMETHING_NEW", "taskIdentifier": "t"}),
        )
        .unwrap();
        assert_eq!(queued.status, RunStatus::Other("SOMETHING_NEW".into()));
        assert!(!queued.status.is_final());
        assert_eq!(queued.output_as::<Option<u32>>().unwrap(), None);
        assert!(RunInfo::from_json(json!({"id": 3})).is_err());
    }

    #[test]
    fn error_messages_come_from_the_body() {
        let status = StatusCode::NOT_FOUND;
        let message = |body: &[u8]| error_parts(status, body).0;
        assert_eq!(
            error_parts(status, br#"{"error":"Not found"}"#),
            ("Not found".to_owned(), None)
        );
        assert_eq!(message(b"  plain text \n"), "plain text");
        assert_eq!(message(b""), "Not Found");
        assert_eq!(message(br#"{"error": 3}"#), r#"{"error": 3}"#);
        let long = "x".repeat(2 * ERROR_BODY_LIMIT);
        assert_eq!(
            message(long.as_bytes()).chars().count(),
            ERROR_BODY_LIMIT + 1
        );
    }

    /// Every error body shape the server sends, and what `Display` makes of it.
    #[test]
    fn error_details_are_kept_and_shown() {
        let shown = |status: StatusCode, body: Value| {
            let (message, details) = error_parts(status, body.to_string().as_bytes());
            let error = Error::Http {
                status,
                message,
                details: details.clone(),
            };
            (error.to_string(), details)
        };
        let bad = StatusCode::BAD_REQUEST;
        let query = json!({"error": "Query Error", "details": [
            {"code": "custom", "message": "Invalid status values: FOO, bar", "path": ["filter[status]"]},
            {"code": "custom", "message": "Invalid limit", "path": ["page[size]"]}]});
        assert_eq!(
            shown(bad, query.clone()),
            (
                "server answered 400 Bad Request: Query Error (Invalid status values: FOO, bar \
                 at filter[status]; Invalid limit at page[size])"
                    .to_owned(),
                Some(json!({"details": query["details"]}))
            )
        );
        let issues = json!({"error": "Invalid request body", "issues": [
            {"code": "invalid_type", "message": "Required", "path": ["delay"]}, "odd"]});
        assert_eq!(
            shown(bad, issues).0,
            r#"server answered 400 Bad Request: Invalid request body (Required at delay; "odd")"#
        );
        let forbidden = json!({"error": "Unauthorized", "code": "unauthorized",
            "param": "access_token", "type": "authorization"});
        assert_eq!(
            shown(StatusCode::FORBIDDEN, forbidden).0,
            "server answered 403 Forbidden: Unauthorized (code: unauthorized; \
             param: access_token; type: authorization)"
        );
        let problem = json!({"title": "Unauthorized", "status": 401, "type": "https://x",
            "detail": "No authorization header provided", "error": "No authorization header provided"});
        assert_eq!(
            shown(StatusCode::UNAUTHORIZED, problem),
            (
                "server answered 401 Unauthorized: No authorization header provided".to_owned(),
                None
            )
        );
        assert_eq!(
            shown(StatusCode::NOT_FOUND, json!({"error": "Not found"})).0,
            "server answered 404 Not Found: Not found"
        );
    }

    #[test]
    fn path_segments_are_encoded() {
        assert_eq!(segment("run_abc-1.2~"), "run_abc-1.2~");
        assert_eq!(segment("a/b c"), "a%2Fb%20c");
        assert_eq!(segment("é"), "%C3%A9");
    }

    #[test]
    fn transient_errors() {
        let http = |status| Error::Http {
            status,
            message: String::new(),
            details: None,
        };
        assert!(http(StatusCode::BAD_GATEWAY).is_transient());
        assert!(http(StatusCode::TOO_MANY_REQUESTS).is_transient());
        assert!(!http(StatusCode::UNAUTHORIZED).is_transient());
        assert_eq!(
            http(StatusCode::UNAUTHORIZED).status(),
            Some(StatusCode::UNAUTHORIZED)
        );
    }

    #[test]
    fn debug_hides_the_key() {
        let client = Client::new("http://127.0.0.1:3030/", "tr_dev_secret");
        assert_eq!(client.api_url(), "http://127.0.0.1:3030");
        assert!(!format!("{client:?}").contains("secret"));
    }
}
