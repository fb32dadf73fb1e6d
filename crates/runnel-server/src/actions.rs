//! Actions on existing runs (contract §2.1 rows 14–19 and 21): replay, reschedule, tags,
//! metadata, result, and idempotency key reset. Cancel lives with the other run
//! endpoints in `runs`.
//!
//! These routes answer with the messages the upstream server uses for each of them
//! (`Run not found`, `Task Run not found`, …) rather than the generic ones; each names
//! its message and [`ApiError::action`] maps the engine's refusal with it.

use axum::extract::{Path, State};
use axum::Json;
use runnel_core::idempotency::MAX_KEY_LEN;
use runnel_core::metadata::MetadataUpdate;
use runnel_core::replay::ReplayRequest;
use runnel_core::run::Packet;
use runnel_core::trigger::validate_task_identifier;
use runnel_core::view::RetrieveRunResponse;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::auth::Authenticated;
use crate::error::ApiError;
use crate::extract::{self, json_body, object_body, CallerApiVersion, RawBody};
use crate::state::AppState;

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
    responses((status = 200, description = "The new run (or, under `idempotencyKey`, the run already holding it)", body = crate::schemas::RunIdBody), (status = 400, description = "Malformed or out-of-bounds body (not a JSON object, an unknown field, a value the trigger refuses, `payloadType` without `payload`), or the run's stored request no longer passes the trigger's checks; the message names the field", body = crate::schemas::ErrorBody), (status = 401, description = "No `Authorization` header (problem+json), a bad key, or a public access token", content((crate::schemas::ErrorBody = "application/json"), (crate::schemas::ProblemBody = "application/problem+json"))), (status = 404, description = "`Run not found`: no such run in the key's environment", body = crate::schemas::ErrorBody), (status = 413, description = "The body is over 3 MiB, or the metadata is over 262144 bytes serialized", body = crate::schemas::ErrorBody), (status = 422, description = "More than 10 tags", body = crate::schemas::ErrorBody)))]
pub(crate) async fn replay(
    State(state): State<AppState>,
    Authenticated(environment): Authenticated,
    Path(raw): Path<String>,
    body: RawBody,
) -> Result<Json<IdBody>, ApiError> {
    let id = extract::run_id(&raw, || ApiError::Missing(RUN_NOT_FOUND.to_owned()))?;
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
        .map_err(|e| ApiError::action(e, RUN_NOT_FOUND))?;
    Ok(Json(IdBody {
        id: triggered.id.to_string(),
    }))
}

/// `POST /api/v1/runs/{runId}/reschedule` `{delay}`: the updated run, as retrieve shows it.
#[utoipa::path(post, path = "/api/v1/runs/{runId}/reschedule", tag = "runs",
    params(("runId" = String, Path, description = "`run_…`")),
    request_body = crate::schemas::RescheduleBody,
    responses((status = 200, description = "The run as `GET /api/v3/runs/{runId}` shows it, with its new `delayedUntil`", body = runnel_core::view::RetrieveRunResponse), (status = 400, description = "`Invalid request body` with the issues (not an object, no `delay` string); `Cannot reschedule a run that is not delayed`; `Invalid delay: …` (not a duration or a date, or not in the future); a body nested too deep", body = crate::schemas::IssuesBody), (status = 401, description = "No `Authorization` header (problem+json), a bad key, or a public access token", content((crate::schemas::ErrorBody = "application/json"), (crate::schemas::ProblemBody = "application/problem+json"))), (status = 404, description = "`Run not found`: no such run in the key's environment", body = crate::schemas::ErrorBody)))]
pub(crate) async fn reschedule(
    State(state): State<AppState>,
    Authenticated(environment): Authenticated,
    CallerApiVersion(version): CallerApiVersion,
    Path(raw): Path<String>,
    headers: axum::http::HeaderMap,
    body: RawBody,
) -> Result<Json<RetrieveRunResponse>, ApiError> {
    let id = extract::run_id(&raw, || ApiError::Missing(RUN_NOT_FOUND.to_owned()))?;
    let body = object_body(body)?;
    let delay = match body.get("delay") {
        Some(Value::String(delay)) => delay.clone(),
        Some(_) => {
            return Err(ApiError::Issues(vec![ApiError::issue(
                &["delay"],
                "Expected a duration string or an ISO 8601 date",
            )]))
        }
        None => {
            return Err(ApiError::Issues(vec![ApiError::issue(
                &["delay"],
                "Required",
            )]))
        }
    };
    let detail = state
        .engine
        .reschedule(&environment, &id, &delay)
        .await
        .map_err(|e| ApiError::action(e, RUN_NOT_FOUND))?;
    let mut response = RetrieveRunResponse::new(&detail, version);
    crate::packets::presign_stored(&state, &environment, &detail.run, &mut response, &headers)
        .await?;
    Ok(Json(response))
}

/// `POST /api/v1/runs/{runId}/tags` `{tags: string | string[]}`.
#[utoipa::path(post, path = "/api/v1/runs/{runId}/tags", tag = "runs",
    params(("runId" = String, Path, description = "`run_…`")),
    request_body = crate::schemas::TagsBody,
    responses((status = 200, description = "`Successfully set N new tags.` or `No new tags to add`; the run's tags become the sorted union", body = crate::schemas::MessageBody), (status = 400, description = "`Invalid request body` with the issues: not a JSON object, no `tags`, a tag not a string, too long or holding NUL; or a body nested too deep (`error` only)", body = crate::schemas::IssuesBody), (status = 401, description = "No `Authorization` header (problem+json) or a bad key", content((crate::schemas::ErrorBody = "application/json"), (crate::schemas::ProblemBody = "application/problem+json"))), (status = 404, description = "`Run not found`: no such run in the key's environment", body = crate::schemas::ErrorBody), (status = 422, description = "The run would have more than 10 tags; none is added", body = crate::schemas::ErrorBody)))]
pub(crate) async fn tags_add(
    State(state): State<AppState>,
    Authenticated(environment): Authenticated,
    Path(raw): Path<String>,
    body: RawBody,
) -> Result<Json<Value>, ApiError> {
    let id = extract::run_id(&raw, || ApiError::Missing(RUN_NOT_FOUND.to_owned()))?;
    let body = object_body(body)?;
    let tags: Vec<String> = match body.get("tags") {
        Some(Value::String(tag)) => vec![tag.clone()],
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, item)| match item {
                Value::String(tag) => Ok(tag.clone()),
                _ => Err(ApiError::Issues(vec![json!({
                    "code": "invalid_type", "expected": "string", "message": "Expected string",
                    "path": ["tags", i],
                })])),
            })
            .collect::<Result<_, _>>()?,
        Some(_) => {
            return Err(ApiError::Issues(vec![ApiError::issue(
                &["tags"],
                "Expected a string or an array of strings",
            )]))
        }
        None => {
            return Err(ApiError::Issues(vec![ApiError::issue(
                &["tags"],
                "Required",
            )]))
        }
    };
    let added = state
        .engine
        .tags_add(&environment, &id, tags)
        .await
        .map_err(|e| ApiError::action(e, RUN_NOT_FOUND))?;
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
    responses((status = 200, description = "The run's new metadata", body = crate::schemas::MetadataBody), (status = 400, description = "Empty, malformed or out-of-bounds body, an invalid or forbidden key, a `$.` path of more than 64 segments, or a result nested more than 64 levels; the message names the field", body = crate::schemas::ErrorBody), (status = 401, description = "No `Authorization` header (problem+json) or a bad key", content((crate::schemas::ErrorBody = "application/json"), (crate::schemas::ProblemBody = "application/problem+json"))), (status = 404, description = "`Task Run not found`: no such run in the key's environment", body = crate::schemas::ErrorBody), (status = 413, description = "The body is over 3 MiB, or the resulting metadata is over 262144 bytes serialized", body = crate::schemas::ErrorBody), (status = 422, description = "`Cannot update metadata for a completed run`: it finished more than an hour ago", body = crate::schemas::ErrorBody), (status = 503, description = "The run kept changing under every compare-and-swap attempt; retry", body = crate::schemas::ErrorBody)))]
pub(crate) async fn metadata_update(
    State(state): State<AppState>,
    Authenticated(environment): Authenticated,
    Path(raw): Path<String>,
    body: RawBody,
) -> Result<Json<Value>, ApiError> {
    let id = extract::run_id(&raw, || ApiError::Missing(TASK_RUN_NOT_FOUND.to_owned()))?;
    let update: MetadataUpdate = json_body(body, &["metadata"])?;
    let metadata = state
        .engine
        .metadata_update(&environment, &id, update)
        .await
        .map_err(|e| ApiError::action(e, TASK_RUN_NOT_FOUND))?;
    Ok(Json(json!({ "metadata": metadata })))
}

/// `GET /api/v1/runs/{runId}/metadata`: the stored packet, unparsed.
#[utoipa::path(get, path = "/api/v1/runs/{runId}/metadata", tag = "runs",
    params(("runId" = String, Path, description = "`run_…`")),
    responses((status = 200, description = "The stored metadata text, not parsed", body = crate::schemas::MetadataTextBody), (status = 401, description = "No `Authorization` header (problem+json) or a bad key", content((crate::schemas::ErrorBody = "application/json"), (crate::schemas::ProblemBody = "application/problem+json"))), (status = 404, description = "`Task Run not found`: no such run in the key's environment", body = crate::schemas::ErrorBody)))]
pub(crate) async fn metadata_get(
    State(state): State<AppState>,
    Authenticated(environment): Authenticated,
    Path(raw): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = extract::run_id(&raw, || ApiError::Missing(TASK_RUN_NOT_FOUND.to_owned()))?;
    let run = state
        .engine
        .run_get(&environment, &id)
        .await?
        .ok_or_else(|| ApiError::Missing(TASK_RUN_NOT_FOUND.to_owned()))?;
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
    /// A GET URL of the output when it is in object storage (`output` is then its
    /// storage path and `outputType` `application/store`).
    #[serde(skip_serializing_if = "Option::is_none")]
    output_presigned_url: Option<String>,
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
    headers: axum::http::HeaderMap,
) -> Result<Json<ExecutionResult>, ApiError> {
    let id = extract::run_id(&raw, || ApiError::Missing(NOT_FINISHED.to_owned()))?;
    let run = state
        .engine
        .run_get(&environment, &id)
        .await?
        .filter(|run| run.status.is_final())
        .ok_or_else(|| ApiError::Missing(NOT_FINISHED.to_owned()))?;
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
    let output_presigned_url = match ok {
        true => {
            crate::packets::packet_url(&state, &environment, run.output.as_ref(), &headers).await?
        }
        false => None,
    };
    Ok(Json(ExecutionResult {
        ok,
        id: run.id.to_string(),
        output,
        output_type,
        output_presigned_url,
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
    request_body = crate::schemas::ResetBody,
    responses((status = 200, description = "The key is cleared from the runs of this environment and task that held it", body = crate::schemas::KeyIdBody), (status = 400, description = "Empty, malformed or out-of-bounds body or key; the message names the field", body = crate::schemas::ErrorBody), (status = 401, description = "No `Authorization` header (problem+json), a bad key, or a public access token", content((crate::schemas::ErrorBody = "application/json"), (crate::schemas::ProblemBody = "application/problem+json"))), (status = 404, description = "`No runs found with idempotency key: K and task: T`; or no route (an empty key)", body = crate::schemas::ErrorBody)))]
pub(crate) async fn idempotency_key_reset(
    State(state): State<AppState>,
    Authenticated(environment): Authenticated,
    Path(key): Path<String>,
    body: RawBody,
) -> Result<Json<IdBody>, ApiError> {
    let body: ResetBody = json_body(body, &[])?;
    // Refused rather than looked up: no run can hold such a key or task, and PostgreSQL
    // refuses NUL in a query parameter outright.
    if key.len() > MAX_KEY_LEN || key.contains('\0') {
        return Err(ApiError::BadRequest(format!(
            "key: must be at most {MAX_KEY_LEN} bytes without NUL"
        )));
    }
    validate_task_identifier(&body.task_identifier)
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    state
        .engine
        .idempotency_key_reset(&environment, &key, &body.task_identifier)
        .await
        .map_err(|e| ApiError::action(e, RUN_NOT_FOUND))?;
    Ok(Json(IdBody { id: key }))
}
