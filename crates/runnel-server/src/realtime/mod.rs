//! Realtime subscriptions: `GET /realtime/v1/runs/{runId}`, `/realtime/v1/runs?tags=…`
//! and `/realtime/v1/batches/{batchId}`, in the "shape" long-poll protocol the SDK's
//! client (`@electric-sql/client`'s `ShapeStream`, under `runs.subscribeToRun`,
//! `subscribeToRunsWithTag`, `subscribeToBatch` and the React hooks) speaks.
//!
//! The protocol, as this server answers it:
//!
//! ```text
//!  GET …?offset=-1                    200 [insert row…, up-to-date]   electric-handle: H
//!                                         (the snapshot)               electric-offset: 0_0
//!  GET …?offset=0_0&handle=H&live=true  held until a watched run changes (≤ 20 s), then
//!                                     200 [update row…, up-to-date]   electric-offset: 1_0
//!                                     or, with nothing new, 200 [up-to-date] (same offset)
//!  GET …?handle=<unknown>&offset=…    409 [must-refetch]              electric-handle: H2
//! ```
//!
//! A shape (one subscription) lives in this node's memory between its long polls: its
//! filter, the fingerprint of each row it sent, and an inbox, which buffers the changed
//! runs it concerns between two polls. One dispatcher per node holds the engine's run
//! feed ([`runnel_engine::changes`], which reads each changed run once) while shapes
//! exist, and drops each run into the inboxes of the shapes it concerns, found by run id
//! or among the tag and batch shapes of its environment: a change wakes its own
//! subscribers only, and a shape costs no database read while nothing it watches
//! changes. A poll turns its inbox into rows and compares fingerprints. A shape not polled for
//! [`SHAPE_IDLE`] is dropped; a poll that names an unknown handle (dropped, made by
//! another node, or before a restart) gets `409 must-refetch` and the client starts
//! again from a snapshot (the SDK then yields each run once more).
//!
//! Rows have the columns of the SDK's `SubscribeRunRawShape`: the run as upstream's
//! database row (`status` is the internal name, `PENDING` for queued; dates without a
//! zone), `payload`/`output`/`metadata` as packets, which the SDK parses (and fetches,
//! for offloaded ones, through `/api/v1/packets`). `skipColumns` leaves columns out
//! (not the ones the SDK requires). The tag feed holds the runs carrying every tag
//! given and created within `createdAt` (default `24h`, as upstream), at most
//! [`SNAPSHOT_MAX`] of the newest in its snapshot.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use chrono::{DateTime, Utc};
use runnel_core::duration::parse_duration_secs;
use runnel_core::list::{CreatedWindow, Direction, PageCursor, RunFilter, RunListRequest};
use runnel_core::run::{Packet, Run};
use runnel_core::tenancy::Environment;
use runnel_core::{BatchId, RunStatus};
use runnel_engine::changes::RunUpdate;
use serde_json::{json, Map, Value};
use tower_http::cors::{AllowHeaders, AllowOrigin, CorsLayer};

use crate::auth::{self, Caller};
use crate::error::ApiError;
use crate::extract;
use crate::state::AppState;

pub(crate) mod shapes;

use shapes::{Filter, Inbox, Shape, Taken};
pub use shapes::{Shapes, SHAPE_IDLE};

/// Longest a live poll is held when nothing changes.
pub const LIVE_WAIT: Duration = Duration::from_secs(20);
/// Most subscriptions one environment holds on a node at once; a new one past it is 429.
pub const SHAPES_PER_ENVIRONMENT: usize = 10_000;
/// Most runs in the snapshot of a tag or batch feed (the newest).
pub const SNAPSHOT_MAX: usize = 1_000;
/// Columns a subscription cannot skip: the SDK requires them.
const RESERVED_COLUMNS: [&str; 6] = [
    "id",
    "taskIdentifier",
    "friendlyId",
    "status",
    "createdAt",
    "updatedAt",
];
/// The tag feed's `createdAt` when none is given.
const CREATED_AT_DEFAULT: &str = "24h";
/// Column types the client parses; the other columns are sent as JSON values.
const SCHEMA: &str = r#"{"id":{"type":"text"},"friendlyId":{"type":"text"},"taskIdentifier":{"type":"text"},"status":{"type":"text"}}"#;

/// The three routes, open to scripts of any origin (the React hooks subscribe from the
/// browser with a public token; no cookie is involved).
pub fn routes() -> Router<AppState> {
    let cors = CorsLayer::new()
        .allow_origin(AllowOrigin::any())
        .allow_methods([Method::GET])
        .allow_headers(AllowHeaders::mirror_request())
        .expose_headers(EXPOSED.map(HeaderName::from_static))
        .max_age(Duration::from_secs(3600));
    // An explicit OPTIONS route, so preflights pass through the layer (the app's
    // method-not-allowed fallback is not layered).
    let preflight = || async { StatusCode::NO_CONTENT };
    Router::new()
        .route("/realtime/v1/runs", get(runs).options(preflight))
        .route("/realtime/v1/runs/{run_id}", get(run).options(preflight))
        .route(
            "/realtime/v1/batches/{batch_id}",
            get(batch).options(preflight),
        )
        .layer(cors)
}

/// The protocol's response headers, readable by a browser's script.
const EXPOSED: [&str; 5] = [
    "electric-handle",
    "electric-offset",
    "electric-schema",
    "electric-cursor",
    "electric-up-to-date",
];

/// `GET /realtime/v1/runs/{runId}`.
pub async fn run(
    State(state): State<AppState>,
    caller: Caller,
    Path(run_id): Path<String>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let id = extract::run_id(&run_id, || ApiError::NotFound)?;
    let run = state
        .engine
        .run_get(caller.environment(), &id)
        .await?
        .ok_or(ApiError::NotFound)?;
    auth::authorize(&caller, "read", &auth::run_resources(&run))?;
    serve(&state, &caller, Filter::Run(id), &params).await
}

/// `GET /realtime/v1/runs?tags=a,b&createdAt=1h`.
pub async fn runs(
    State(state): State<AppState>,
    caller: Caller,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let tags: Vec<String> = params
        .get("tags")
        .map(|t| extract::comma_list(t))
        .unwrap_or_default();
    let mut resources: Vec<(&str, &str)> = tags.iter().map(|t| ("tags", t.as_str())).collect();
    // `read:runs` covers every run's feed, as upstream's super scopes.
    resources.push(("runs", "*"));
    auth::authorize(&caller, "read", &resources)?;
    let created_at = params
        .get("createdAt")
        .map(String::as_str)
        .unwrap_or(CREATED_AT_DEFAULT);
    let secs = parse_duration_secs(created_at).ok_or_else(|| {
        ApiError::BadRequest(format!(
            "createdAt: expected a period such as 30s, 15m, 2h or 7d, got {created_at:?}"
        ))
    })?;
    let secs = i64::try_from(secs).unwrap_or(i64::MAX).min(3650 * 86_400);
    let created_after = state.engine.now() - chrono::Duration::seconds(secs);
    // Reserved search parameters beyond these are refused rather than ignored.
    if let Some(tasks) = params.get("tasks") {
        return Err(ApiError::BadRequest(format!(
            "tasks: filtering realtime runs by task is not supported yet (got {tasks:?}); \
             filter by tags"
        )));
    }
    let filter = Filter::Tags {
        tags,
        created_after,
    };
    serve(&state, &caller, filter, &params).await
}

/// `GET /realtime/v1/batches/{batchId}`.
pub async fn batch(
    State(state): State<AppState>,
    caller: Caller,
    Path(batch_id): Path<String>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let id = BatchId::parse(&batch_id).ok_or(ApiError::NotFound)?;
    state
        .engine
        .batch_detail(caller.environment(), &id)
        .await?
        .ok_or(ApiError::NotFound)?;
    auth::authorize(&caller, "read", &[("batch", id.as_str()), ("runs", "*")])?;
    serve(&state, &caller, Filter::Batch(id), &params).await
}

async fn serve(
    state: &AppState,
    caller: &Caller,
    filter: Filter,
    params: &HashMap<String, String>,
) -> Result<Response, ApiError> {
    let environment = caller.environment();
    let offset = params.get("offset").map(String::as_str).unwrap_or("-1");
    let live = params.get("live").is_some_and(|v| v == "true");
    // The request's columns to skip, and a public token's own (`realtime.skipColumns`).
    let mut skip: Vec<String> = params
        .get("skipColumns")
        .map(|s| extract::comma_list(s))
        .unwrap_or_default();
    if let Caller::PublicToken(token) = caller {
        skip.extend(token.skip_columns.iter().cloned());
    }
    skip.retain(|c| !RESERVED_COLUMNS.contains(&c.as_str()));
    skip.sort();
    skip.dedup();
    let handle = params.get("handle").filter(|h| !h.is_empty());
    if offset == "-1" || handle.is_none() {
        return snapshot(state, environment, filter, skip).await;
    }
    let handle = handle.cloned().unwrap_or_default();
    let shape = match state.realtime.take(&handle) {
        Some(shape)
            if shape.environment.id == environment.id
                && shape.filter.same_subscription(&filter) =>
        {
            shape
        }
        other => {
            if let Some(shape) = other {
                // Another subscription's handle: leave it as it was.
                state.realtime.put(handle, shape);
            }
            return Ok(must_refetch());
        }
    };
    let mut taken = Taken {
        shapes: state.realtime.clone(),
        handle,
        shape: Some(shape),
    };
    let shape = taken.shape.as_mut().expect("just taken");
    let mut messages = pending_changes(state, shape).await?;
    if messages.is_empty() && live {
        let deadline = tokio::time::Instant::now() + LIVE_WAIT;
        let stopping = state.engine.stopping();
        tokio::pin!(stopping);
        let inbox = Arc::clone(&shape.inbox);
        while messages.is_empty() {
            // Registered before the inbox is read, so an update between is not slept on.
            let arrived = inbox.arrived.notified();
            tokio::pin!(arrived);
            arrived.as_mut().enable();
            messages = pending_changes(state, shape).await?;
            if !messages.is_empty() {
                break;
            }
            tokio::select! {
                _ = arrived => {}
                _ = tokio::time::sleep_until(deadline) => break,
                _ = &mut stopping => break,
            }
        }
    }
    if !messages.is_empty() {
        shape.offset += 1;
    }
    let offset = shape.offset;
    let handle = taken.handle.clone();
    drop(taken);
    Ok(respond(&handle, offset, messages))
}

/// A new shape: its rows now, and its handle.
async fn snapshot(
    state: &AppState,
    environment: &Environment,
    filter: Filter,
    skip: Vec<String>,
) -> Result<Response, ApiError> {
    if state.realtime.held_by(&environment.id) >= SHAPES_PER_ENVIRONMENT {
        return Err(ApiError::TooManyRequests(format!(
            "Too many realtime subscriptions: this environment holds {SHAPES_PER_ENVIRONMENT} \
             on this server; a subscription not polled for {} s ends",
            SHAPE_IDLE.as_secs()
        )));
    }
    // Listen before reading: a change between the read and the first poll is buffered.
    let inbox = Arc::new(Inbox::default());
    let registration =
        state
            .realtime
            .dispatch
            .register(&state.engine, &environment.id, &filter, &inbox);
    let mut shape = Shape {
        environment: environment.clone(),
        filter,
        skip,
        sent: HashMap::new(),
        inbox,
        _registration: registration,
        offset: 0,
        polled: Instant::now(),
    };
    let runs = read_all(state, &shape).await?;
    let mut messages = Vec::with_capacity(runs.len() + 1);
    for run in &runs {
        messages.extend(diff(&mut shape, run));
    }
    let handle = new_handle();
    state.realtime.put(handle.clone(), shape);
    Ok(respond(&handle, 0, messages))
}

/// Every run the shape's filter selects, as stored now.
async fn read_all(state: &AppState, shape: &Shape) -> Result<Vec<Run>, ApiError> {
    let environment = &shape.environment;
    let (filter, created) = match &shape.filter {
        Filter::Run(id) => {
            return Ok(state
                .engine
                .run_get(environment, id)
                .await?
                .into_iter()
                .collect())
        }
        Filter::Tags {
            tags,
            created_after,
        } => (
            RunFilter {
                // The list selects runs with any of these; the shape keeps those with all.
                tags: tags.clone(),
                ..RunFilter::default()
            },
            CreatedWindow {
                from: Some(*created_after),
                ..CreatedWindow::default()
            },
        ),
        Filter::Batch(id) => (
            RunFilter {
                batch_id: Some(id.as_str().to_owned()),
                ..RunFilter::default()
            },
            CreatedWindow {
                from: Some(DateTime::<Utc>::UNIX_EPOCH),
                ..CreatedWindow::default()
            },
        ),
    };
    let mut request = RunListRequest {
        filter,
        created,
        page_size: runnel_core::list::PAGE_SIZE_MAX,
        page: None,
    };
    let mut runs = Vec::new();
    loop {
        let page = state.engine.run_list(environment, &request).await?;
        runs.extend(
            page.runs
                .into_iter()
                .filter(|run| shape.filter.matches(run)),
        );
        match page.next {
            Some(next) if runs.len() < SNAPSHOT_MAX => {
                request.page = Some((Direction::Older, PageCursor::Keyset(next)));
            }
            _ => break,
        }
    }
    runs.truncate(SNAPSHOT_MAX);
    // Oldest first, as rows arrive in a table.
    runs.reverse();
    Ok(runs)
}

/// The rows of the updates the shape's inbox holds, without waiting.
async fn pending_changes(state: &AppState, shape: &mut Shape) -> Result<Vec<Value>, ApiError> {
    let queue = shape.inbox.take();
    let mut messages = Vec::new();
    if queue.missed {
        messages.extend(changes_from(state, shape, RunUpdate::Missed).await?);
    }
    for run in queue.runs {
        messages.extend(changes_from(state, shape, RunUpdate::Run(run)).await?);
    }
    Ok(messages)
}

/// The rows one update changes for this shape.
async fn changes_from(
    state: &AppState,
    shape: &mut Shape,
    update: RunUpdate,
) -> Result<Vec<Value>, ApiError> {
    match update {
        RunUpdate::Run(run) => {
            if run.environment_id != shape.environment.id || !shape.filter.matches(&run) {
                return Ok(Vec::new());
            }
            Ok(diff(shape, &run).into_iter().collect())
        }
        RunUpdate::Missed => {
            let runs = read_all(state, shape).await?;
            Ok(runs.iter().filter_map(|run| diff(shape, run)).collect())
        }
    }
}

/// The change message for `run` if its row differs from the one last sent.
fn diff(shape: &mut Shape, run: &Run) -> Option<Value> {
    let value = row(run, &shape.skip);
    let fingerprint = fingerprint(&value);
    let operation = match shape.sent.get(&run.id) {
        Some((previous, _)) if *previous == fingerprint => return None,
        // A read older than the row sent (the feed read it before a snapshot did): the
        // change that made the newer row brings it again.
        Some((_, sent_at)) if run.updated_at < *sent_at => return None,
        Some(_) => "update",
        None => "insert",
    };
    shape
        .sent
        .insert(run.id.clone(), (fingerprint, run.updated_at));
    Some(json!({
        "key": format!("\"public\".\"TaskRun\"/\"{}\"", run.id),
        "value": value,
        "headers": { "operation": operation, "relation": ["public", "TaskRun"] },
    }))
}

fn fingerprint(value: &Value) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    value.to_string().hash(&mut hasher);
    hasher.finish()
}

/// The run as upstream's database row, the columns the SDK reads.
fn row(run: &Run, skip: &[String]) -> Value {
    let mut row = Map::new();
    let mut put = |column: &str, value: Value| {
        if !skip.iter().any(|s| s == column) {
            row.insert(column.to_owned(), value);
        }
    };
    put("id", json!(run.id.as_str()));
    put("friendlyId", json!(run.id.as_str()));
    put("taskIdentifier", json!(run.task_identifier));
    put("status", json!(db_status(run.status)));
    put("createdAt", json!(date(run.created_at)));
    put("updatedAt", json!(date(run.updated_at)));
    put("startedAt", json!(run.started_at.map(date)));
    put("delayUntil", json!(run.delay_until.map(date)));
    put("queuedAt", json!(queued_at(run).map(date)));
    put("expiredAt", json!(run.expired_at.map(date)));
    put("completedAt", json!(run.completed_at.map(date)));
    put("idempotencyKey", json!(run.idempotency_key_user));
    put("isTest", json!(run.is_test));
    put("usageDurationMs", json!(run.usage_duration_ms));
    put("costInCents", json!(run.cost_in_cents));
    put("baseCostInCents", json!(run.base_cost_in_cents));
    put("ttl", json!(run.ttl));
    let (payload, payload_type) = packet(Some(&run.payload));
    put("payload", payload);
    put("payloadType", payload_type);
    let (output, output_type) = packet(run.output.as_ref());
    put("output", output);
    put("outputType", output_type);
    let (metadata, metadata_type) = packet(run.metadata.as_ref());
    put("metadata", metadata);
    put("metadataType", metadata_type);
    put("runTags", json!(run.tags));
    put(
        "error",
        run.error.as_ref().map_or(Value::Null, task_run_error),
    );
    put("realtimeStreams", json!([]));
    Value::Object(row)
}

fn packet(packet: Option<&Packet>) -> (Value, Value) {
    match packet {
        Some(packet) => (json!(packet.data), json!(packet.data_type)),
        None => (Value::Null, Value::Null),
    }
}

/// The status as upstream's database names it (the SDK maps it to the public one).
fn db_status(status: RunStatus) -> &'static str {
    match status {
        RunStatus::Queued => "PENDING",
        other => other.as_str(),
    }
}

/// When the run entered its queue: not yet while delayed or waiting for a version.
fn queued_at(run: &Run) -> Option<DateTime<Utc>> {
    match run.status {
        RunStatus::Delayed | RunStatus::PendingVersion => None,
        _ => Some(run.delay_until.unwrap_or(run.created_at)),
    }
}

/// A zone-less UTC timestamp, as the SDK expects a raw row's dates.
fn date(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%dT%H:%M:%S%.3f").to_string()
}

/// The stored error as one of the SDK's `TaskRunError` forms: one already in a form
/// the SDK accepts is kept; anything else becomes a `BUILT_IN_ERROR` with its name,
/// message and stack.
fn task_run_error(error: &Value) -> Value {
    let kind = error.get("type").and_then(Value::as_str);
    let text = |key: &str| error.get(key).and_then(Value::as_str);
    match kind {
        Some("BUILT_IN_ERROR") if text("name").is_some() && text("message").is_some() => {
            let mut error = error.clone();
            if text("stackTrace").is_none() {
                error["stackTrace"] = json!("");
            }
            error
        }
        Some("CUSTOM_ERROR" | "STRING_ERROR") if text("raw").is_some() => error.clone(),
        _ => json!({
            "type": "BUILT_IN_ERROR",
            "name": text("name").or_else(|| text("code")).unwrap_or("Error"),
            "message": text("message")
                .map(str::to_owned)
                .or_else(|| text("raw").map(str::to_owned))
                .unwrap_or_else(|| error.to_string()),
            "stackTrace": text("stackTrace").unwrap_or(""),
        }),
    }
}

fn respond(handle: &str, offset: u64, mut messages: Vec<Value>) -> Response {
    messages.push(json!({ "headers": { "control": "up-to-date" } }));
    let mut response = (StatusCode::OK, Value::Array(messages).to_string()).into_response();
    let headers = response.headers_mut();
    headers.insert(
        axum::http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(
        axum::http::header::CACHE_CONTROL,
        HeaderValue::from_static("no-store"),
    );
    insert(headers, "electric-handle", handle);
    insert(headers, "electric-offset", &format!("{offset}_0"));
    insert(headers, "electric-schema", SCHEMA);
    insert(headers, "electric-cursor", &cursor());
    insert(headers, "electric-up-to-date", "");
    response
}

fn must_refetch() -> Response {
    let mut response = (
        StatusCode::CONFLICT,
        json!([{ "headers": { "control": "must-refetch" } }]).to_string(),
    )
        .into_response();
    let headers = response.headers_mut();
    headers.insert(
        axum::http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    insert(headers, "electric-handle", &new_handle());
    response
}

fn insert(headers: &mut HeaderMap, name: &'static str, value: &str) {
    if let Ok(value) = HeaderValue::from_str(value) {
        headers.insert(name, value);
    }
}

/// Changes every [`LIVE_WAIT`], as the live requests' cache buster.
fn cursor() -> String {
    let secs = Utc::now().timestamp();
    (secs / LIVE_WAIT.as_secs() as i64).to_string()
}

fn new_handle() -> String {
    format!(
        "{:016x}{:016x}",
        rand::random::<u64>(),
        rand::random::<u64>()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_errors_become_forms_the_sdk_accepts() {
        let built_in = json!({"type": "BUILT_IN_ERROR", "name": "TypeError", "message": "x", "stackTrace": "at"});
        assert_eq!(task_run_error(&built_in), built_in);
        let plain = json!({"message": "boom", "name": "Error", "stackTrace": "at f"});
        assert_eq!(
            task_run_error(&plain),
            json!({"type": "BUILT_IN_ERROR", "name": "Error", "message": "boom", "stackTrace": "at f"})
        );
        let internal = json!({"type": "INTERNAL_ERROR", "code": "TASK_RUN_CANCELLED"});
        assert_eq!(task_run_error(&internal)["name"], "TASK_RUN_CANCELLED");
        assert_eq!(task_run_error(&internal)["type"], "BUILT_IN_ERROR");
    }

    #[test]
    fn dates_have_no_zone_and_queued_is_pending() {
        let at = DateTime::parse_from_rfc3339("2026-12-04T05:06:07.089Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(date(at), "2026-12-04T05:06:07.089");
        assert_eq!(db_status(RunStatus::Queued), "PENDING");
        assert_eq!(
            db_status(RunStatus::CompletedSuccessfully),
            "COMPLETED_SUCCESSFULLY"
        );
    }
}
