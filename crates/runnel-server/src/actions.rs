//! Actions on existing runs (contract §2.1 rows 14–19 and 21): replay, reschedule, tags,
//! metadata, result, and idempotency key reset. Cancel lives with the other run
//! endpoints in `runs`.
//!
//! These routes answer with the messages the upstream server uses for each of them
//! (`Run not found`, `Task Run not found`, …) rather than the generic ones of
//! [`ApiError`], so their failures are mapped here; anything unexpected still goes
//! through [`ApiError`] and its single 500 path.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use runnel_core::idempotency::MAX_KEY_LEN;
use runnel_core::metadata::{MetadataError, MetadataUpdate};
use runnel_core::replay::ReplayRequest;
use runnel_core::run::Packet;
use runnel_core::tags::TagsError;
use runnel_core::trigger::validate_task_identifier;
use runnel_core::view::RetrieveRunResponse;
use runnel_core::RunId;
use runnel_engine::ActionError;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::auth::{Authenticated, CallerApiVersion};
use crate::error::json_error;
use crate::runs::json_body;
use crate::{ApiError, AppState};

/// A failed action, as its route answers it.
#[derive(Debug)]
pub(crate) enum Failure {
    /// `{"error": message}` with `status`.
    Message(StatusCode, String),
    /// 400 `{"error":"Invalid request body","issues":[…]}` (hand-written upstream routes).
    Issues(Vec<Value>),
    Api(ApiError),
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let (status, body) = match self {
            Failure::Api(error) => return error.into_response(),
            Failure::Message(status, message) => (status, json!({ "error": message })),
            Failure::Issues(issues) => (
                StatusCode::BAD_REQUEST,
                json!({"error": "Invalid request body", "issues": issues}),
            ),
        };
        json_error(status, body)
    }
}

impl From<ApiError> for Failure {
    fn from(e: ApiError) -> Self {
        Failure::Api(e)
    }
}

fn message(status: StatusCode, message: impl Into<String>) -> Failure {
    Failure::Message(status, message.into())
}

/// One zod-like issue: `{code, message, path}`.
fn issue(path: &[&str], text: impl Into<String>) -> Value {
    json!({"code": "custom", "message": text.into(), "path": path})
}

/// Maps an engine refusal; `not_found` is the route's own 404 message.
fn failure(error: ActionError, not_found: &str) -> Failure {
    let text = error.to_string();
    match error {
        ActionError::NotFound => message(StatusCode::NOT_FOUND, not_found),
        ActionError::NotDelayed | ActionError::InvalidDelay(_) | ActionError::Replay(_) => {
            message(StatusCode::BAD_REQUEST, text)
        }
        ActionError::Tags(TagsError::Invalid) => Failure::Issues(vec![issue(&["tags"], text)]),
        ActionError::Tags(TagsError::TooMany { .. }) | ActionError::MetadataClosed => {
            message(StatusCode::UNPROCESSABLE_ENTITY, text)
        }
        ActionError::Metadata(MetadataError::TooLarge) => {
            message(StatusCode::PAYLOAD_TOO_LARGE, text)
        }
        ActionError::Metadata(_) => message(StatusCode::BAD_REQUEST, text),
        ActionError::NoKeyHolder { .. } => message(StatusCode::NOT_FOUND, text),
        ActionError::Contended => message(StatusCode::SERVICE_UNAVAILABLE, text),
        ActionError::Engine(e) => Failure::Api(e.into()),
    }
}

/// The run id in the path; an unparseable one is as missing as an unknown one.
fn run_id(raw: &str, not_found: &str) -> Result<RunId, Failure> {
    RunId::parse(raw).ok_or_else(|| message(StatusCode::NOT_FOUND, not_found))
}

/// A JSON object body, or the `Invalid request body` issues of a hand-written route.
fn object_body(
    body: Result<Bytes, BytesRejection>,
) -> Result<serde_json::Map<String, Value>, Failure> {
    let bytes = body.map_err(|r| {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            message(StatusCode::PAYLOAD_TOO_LARGE, "Request body too large")
        } else {
            message(StatusCode::BAD_REQUEST, r.body_text())
        }
    })?;
    crate::runs::check_body_depth(&bytes)?;
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(Failure::Issues(vec![issue(&[], "Expected object")])),
        Err(_) => Err(Failure::Issues(vec![issue(&[], "Invalid JSON")])),
    }
}

#[derive(Debug, Serialize)]
pub(crate) struct IdBody {
    id: String,
}

const RUN_NOT_FOUND: &str = "Run not found";

/// `POST /api/v1/runs/{runId}/replay`: a new run like this one, on the latest version,
/// with the body's overrides (`runs.replay(id, {payload, tags, …})`) applied.
#[utoipa::path(post, path = "/api/v1/runs/{runId}/replay", tag = "runs",
    params(("runId" = String, Path, description = "`run_…`")),
    request_body(content = runnel_core::replay::ReplayRequest, description = "Optional: an empty body replays the run as it was; each field given replaces the original's value"),
    responses((status = 200, description = "The new run (or, under `idempotencyKey`, the run already holding it)", body = crate::openapi::RunIdBody), (status = 400, description = "Malformed or out-of-bounds body (not a JSON object, an unknown field, a value the trigger refuses, `payloadType` without `payload`), or the run's stored request no longer passes the trigger's checks; the message names the field", body = crate::openapi::ErrorBody), (status = 401, description = "No `Authorization` header (problem+json), a bad key, or a public access token", content((crate::openapi::ErrorBody = "application/json"), (crate::openapi::ProblemBody = "application/problem+json"))), (status = 404, description = "`Run not found`: no such run in the key's environment", body = crate::openapi::ErrorBody), (status = 413, description = "The body is over 3 MiB, or the metadata is over 262144 bytes serialized", body = crate::openapi::ErrorBody), (status = 422, description = "More than 10 tags", body = crate::openapi::ErrorBody)))]
pub(crate) async fn replay(
    State(state): State<AppState>,
    Authenticated(environment): Authenticated,
    Path(raw): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<IdBody>, Failure> {
    let id = run_id(&raw, RUN_NOT_FOUND)?;
    // No body at all (the SDK's `runs.replay(id)`) means no overrides.
    let empty = matches!(&body, Ok(bytes) if bytes.is_empty());
    let overrides: ReplayRequest = if empty {
        ReplayRequest::default()
    } else {
        json_body(body, &[])?
    };
    let triggered = state
        .engine
        .replay(&environment, &id, overrides)
        .await
        .map_err(|e| failure(e, RUN_NOT_FOUND))?;
    Ok(Json(IdBody {
        id: triggered.id.to_string(),
    }))
}

/// `POST /api/v1/runs/{runId}/reschedule` `{delay}`: the updated run, as retrieve shows it.
#[utoipa::path(post, path = "/api/v1/runs/{runId}/reschedule", tag = "runs",
    params(("runId" = String, Path, description = "`run_…`")),
    request_body = crate::openapi::RescheduleBody,
    responses((status = 200, description = "The run as `GET /api/v3/runs/{runId}` shows it, with its new `delayedUntil`", body = runnel_core::view::RetrieveRunResponse), (status = 400, description = "`Invalid request body` with the issues (not an object, no `delay` string); `Cannot reschedule a run that is not delayed`; `Invalid delay: …` (not a duration or a date, or not in the future); a body nested too deep", body = crate::openapi::IssuesBody), (status = 401, description = "No `Authorization` header (problem+json), a bad key, or a public access token", content((crate::openapi::ErrorBody = "application/json"), (crate::openapi::ProblemBody = "application/problem+json"))), (status = 404, description = "`Run not found`: no such run in the key's environment", body = crate::openapi::ErrorBody)))]
pub(crate) async fn reschedule(
    State(state): State<AppState>,
    Authenticated(environment): Authenticated,
    CallerApiVersion(version): CallerApiVersion,
    Path(raw): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<RetrieveRunResponse>, Failure> {
    let id = run_id(&raw, RUN_NOT_FOUND)?;
    let body = object_body(body)?;
    let delay = match body.get("delay") {
        Some(Value::String(delay)) => delay.clone(),
        Some(_) => {
            return Err(Failure::Issues(vec![issue(
                &["delay"],
                "Expected a duration string or an ISO 8601 date",
            )]))
        }
        None => return Err(Failure::Issues(vec![issue(&["delay"], "Required")])),
    };
    let detail = state
        .engine
        .reschedule(&environment, &id, &delay)
        .await
        .map_err(|e| failure(e, RUN_NOT_FOUND))?;
    Ok(Json(RetrieveRunResponse::new(&detail, version)))
}

/// `POST /api/v1/runs/{runId}/tags` `{tags: string | string[]}`.
#[utoipa::path(post, path = "/api/v1/runs/{runId}/tags", tag = "runs",
    params(("runId" = String, Path, description = "`run_…`")),
    request_body = crate::openapi::TagsBody,
    responses((status = 200, description = "`Successfully set N new tags.` or `No new tags to add`; the run's tags become the sorted union", body = crate::openapi::MessageBody), (status = 400, description = "`Invalid request body` with the issues: not a JSON object, no `tags`, a tag not a string, too long or holding NUL; or a body nested too deep (`error` only)", body = crate::openapi::IssuesBody), (status = 401, description = "No `Authorization` header (problem+json) or a bad key", content((crate::openapi::ErrorBody = "application/json"), (crate::openapi::ProblemBody = "application/problem+json"))), (status = 404, description = "`Run not found`: no such run in the key's environment", body = crate::openapi::ErrorBody), (status = 422, description = "The run would have more than 10 tags; none is added", body = crate::openapi::ErrorBody)))]
pub(crate) async fn tags_add(
    State(state): State<AppState>,
    Authenticated(environment): Authenticated,
    Path(raw): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, Failure> {
    let id = run_id(&raw, RUN_NOT_FOUND)?;
    let body = object_body(body)?;
    let tags: Vec<String> = match body.get("tags") {
        Some(Value::String(tag)) => vec![tag.clone()],
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, item)| match item {
                Value::String(tag) => Ok(tag.clone()),
                _ => Err(Failure::Issues(vec![json!({
                    "code": "invalid_type", "expected": "string", "message": "Expected string",
                    "path": ["tags", i],
                })])),
            })
            .collect::<Result<_, _>>()?,
        Some(_) => {
            return Err(Failure::Issues(vec![issue(
                &["tags"],
                "Expected a string or an array of strings",
            )]))
        }
        None => return Err(Failure::Issues(vec![issue(&["tags"], "Required")])),
    };
    let added = state
        .engine
        .tags_add(&environment, &id, tags)
        .await
        .map_err(|e| failure(e, RUN_NOT_FOUND))?;
    Ok(Json(if added == 0 {
        json!({"message": "No new tags to add"})
    } else {
        json!({"message": format!("Successfully set {added} new tags.")})
    }))
}

const TASK_RUN_NOT_FOUND: &str = "Task Run not found";

/// `PUT /api/v1/runs/{runId}/metadata`: replaces and/or operates on the run's metadata.
#[utoipa::path(put, path = "/api/v1/runs/{runId}/metadata", tag = "runs",
    params(("runId" = String, Path, description = "`run_…`")),
    request_body = MetadataUpdate,
    responses((status = 200, description = "The run's new metadata", body = crate::openapi::MetadataBody), (status = 400, description = "Empty, malformed or out-of-bounds body, an invalid or forbidden key, a `$.` path of more than 64 segments, or a result nested more than 64 levels; the message names the field", body = crate::openapi::ErrorBody), (status = 401, description = "No `Authorization` header (problem+json) or a bad key", content((crate::openapi::ErrorBody = "application/json"), (crate::openapi::ProblemBody = "application/problem+json"))), (status = 404, description = "`Task Run not found`: no such run in the key's environment", body = crate::openapi::ErrorBody), (status = 413, description = "The body is over 3 MiB, or the resulting metadata is over 262144 bytes serialized", body = crate::openapi::ErrorBody), (status = 422, description = "`Cannot update metadata for a completed run`: it finished more than an hour ago", body = crate::openapi::ErrorBody), (status = 503, description = "The run kept changing under every compare-and-swap attempt; retry", body = crate::openapi::ErrorBody)))]
pub(crate) async fn metadata_update(
    State(state): State<AppState>,
    Authenticated(environment): Authenticated,
    Path(raw): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, Failure> {
    let id = run_id(&raw, TASK_RUN_NOT_FOUND)?;
    let update: MetadataUpdate = json_body(body, &["metadata"])?;
    let metadata = state
        .engine
        .metadata_update(&environment, &id, update)
        .await
        .map_err(|e| failure(e, TASK_RUN_NOT_FOUND))?;
    Ok(Json(json!({ "metadata": metadata })))
}

/// `GET /api/v1/runs/{runId}/metadata`: the stored packet, unparsed.
#[utoipa::path(get, path = "/api/v1/runs/{runId}/metadata", tag = "runs",
    params(("runId" = String, Path, description = "`run_…`")),
    responses((status = 200, description = "The stored metadata text, not parsed", body = crate::openapi::MetadataTextBody), (status = 401, description = "No `Authorization` header (problem+json) or a bad key", content((crate::openapi::ErrorBody = "application/json"), (crate::openapi::ProblemBody = "application/problem+json"))), (status = 404, description = "`Task Run not found`: no such run in the key's environment", body = crate::openapi::ErrorBody)))]
pub(crate) async fn metadata_get(
    State(state): State<AppState>,
    Authenticated(environment): Authenticated,
    Path(raw): Path<String>,
) -> Result<Json<Value>, Failure> {
    let id = run_id(&raw, TASK_RUN_NOT_FOUND)?;
    let run = state
        .engine
        .store()
        .run_get(&environment.id, &id)
        .await
        .map_err(ApiError::from)?
        .ok_or_else(|| message(StatusCode::NOT_FOUND, TASK_RUN_NOT_FOUND))?;
    let (data, data_type) = match run.metadata {
        Some(packet) => (packet.data, packet.data_type),
        None => (None, Packet::JSON.to_owned()),
    };
    Ok(Json(json!({"metadata": data, "metadataType": data_type})))
}

/// `TaskRunExecutionResult` (contract §3.4).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ExecutionResult {
    ok: bool,
    id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    output: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    output_type: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<Value>,
    usage: Usage,
    task_identifier: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Usage {
    duration_ms: i64,
}

const NOT_FINISHED: &str = "Run either doesn't exist or is not finished";

/// `GET /api/v1/runs/{runId}/result`: how a finished run ended.
pub(crate) async fn result(
    State(state): State<AppState>,
    Authenticated(environment): Authenticated,
    Path(raw): Path<String>,
) -> Result<Json<ExecutionResult>, Failure> {
    let id = run_id(&raw, NOT_FINISHED)?;
    let run = state
        .engine
        .store()
        .run_get(&environment.id, &id)
        .await
        .map_err(ApiError::from)?
        .filter(|run| run.status.is_final())
        .ok_or_else(|| message(StatusCode::NOT_FOUND, NOT_FINISHED))?;
    let ok = run.status == runnel_core::RunStatus::CompletedSuccessfully;
    let (output, output_type, error) = if ok {
        let output = run.output.as_ref();
        (
            output.and_then(|o| o.data.clone()),
            Some(output.map_or_else(|| Packet::JSON.to_owned(), |o| o.data_type.clone())),
            None,
        )
    } else {
        let error = run.error.clone().unwrap_or_else(|| {
            json!({"type": "STRING_ERROR", "raw": format!("Run ended with status {}", run.status.as_str())})
        });
        (None, None, Some(error))
    };
    Ok(Json(ExecutionResult {
        ok,
        id: run.id.to_string(),
        output,
        output_type,
        error,
        usage: Usage {
            duration_ms: run.usage_duration_ms,
        },
        task_identifier: run.task_identifier,
    }))
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ResetBody {
    task_identifier: String,
}

/// `POST /api/v1/idempotencyKeys/{key}/reset` `{taskIdentifier}`.
#[utoipa::path(post, path = "/api/v1/idempotencyKeys/{key}/reset", tag = "runs",
    params(("key" = String, Path, min_length = 1, max_length = 2048, pattern = "^[^\\u0000]*$", description = "The idempotency key as the trigger gave it (URL-encoded): at most 2048 bytes, no NUL")),
    request_body = crate::openapi::ResetBody,
    responses((status = 200, description = "The key is cleared from the runs of this environment and task that held it", body = crate::openapi::KeyIdBody), (status = 400, description = "Empty, malformed or out-of-bounds body or key; the message names the field", body = crate::openapi::ErrorBody), (status = 401, description = "No `Authorization` header (problem+json), a bad key, or a public access token", content((crate::openapi::ErrorBody = "application/json"), (crate::openapi::ProblemBody = "application/problem+json"))), (status = 404, description = "`No runs found with idempotency key: K and task: T`; or no route (an empty key)", body = crate::openapi::ErrorBody)))]
pub(crate) async fn idempotency_key_reset(
    State(state): State<AppState>,
    Authenticated(environment): Authenticated,
    Path(key): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<IdBody>, Failure> {
    let body: ResetBody = json_body(body, &[])?;
    // Refused rather than looked up: no run can hold such a key or task, and PostgreSQL
    // refuses NUL in a query parameter outright.
    if key.len() > MAX_KEY_LEN || key.contains('\0') {
        return Err(message(
            StatusCode::BAD_REQUEST,
            format!("key: must be at most {MAX_KEY_LEN} bytes without NUL"),
        ));
    }
    validate_task_identifier(&body.task_identifier)
        .map_err(|e| message(StatusCode::BAD_REQUEST, e.to_string()))?;
    state
        .engine
        .idempotency_key_reset(&environment, &key, &body.task_identifier)
        .await
        .map_err(|e| failure(e, RUN_NOT_FOUND))?;
    Ok(Json(IdBody { id: key }))
}
