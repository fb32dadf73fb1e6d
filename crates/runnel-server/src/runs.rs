//! Run endpoints: trigger (`POST /api/v1/tasks/{task}/trigger`), retrieve
//! (`GET /api/v3/runs/{id}`), cancel (`POST /api/v2/runs/{id}/cancel`), and the health
//! check.

use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use runnel_core::trigger::{IdempotencyHeaders, TriggerRequest};
use runnel_core::view::RetrieveRunResponse;
use serde::Serialize;
use serde_json::json;

use crate::auth::{self, Authenticated, Caller};
use crate::error::ApiError;
use crate::extract::{self, json_body, CallerApiVersion, RawBody};
use crate::state::AppState;

/// How long `/healthz` waits for the store before it answers 503.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(5);

/// 200 when the store reads and writes, else 503, so a load balancer takes the node out.
pub async fn healthz(State(state): State<AppState>) -> impl IntoResponse {
    let problem = match tokio::time::timeout(HEALTH_TIMEOUT, state.engine.health()).await {
        Ok(Ok(())) => return (StatusCode::OK, Json(json!({"status": "ok"}))),
        Ok(Err(error)) => error.to_string(),
        Err(_) => format!("no answer within {HEALTH_TIMEOUT:?}"),
    };
    tracing::warn!(%problem, "health check: the store cannot read and write");
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(json!({"status": "unavailable"})),
    )
}

/// The answer to a trigger.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct TriggerResponse {
    /// The new run, or the one already holding the idempotency key.
    id: String,
    /// True when `id` is a run that already held the idempotency key.
    is_cached: bool,
}

/// Triggers a run; the response also hands over a public access token that reads the
/// run (contract §2.3).
#[utoipa::path(post, path = "/api/v1/tasks/{taskIdentifier}/trigger", tag = "runs",
    params(
        ("taskIdentifier" = String, Path, min_length = 1, max_length = 128, pattern = "^[^\\x00-\\x20\\x7f-\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000]+$", description = "The task: 1 to 128 characters, no whitespace or control characters"),
        ("idempotency-key" = Option<String>, Header, max_length = 2048, pattern = "^[\\x20-\\x7e]*$", description = "Used when `options.idempotencyKey` is absent"),
        ("idempotency-key-ttl" = Option<String>, Header, pattern = "^[\\x20-\\x7e]*$", description = "Used when `options.idempotencyKeyTTL` is absent"),
    ),
    request_body = runnel_core::trigger::TriggerRequest,
    responses((status = 200, description = "The run; `x-trigger-jwt` holds a public access token (one hour) that reads it", body = TriggerResponse, headers(("x-trigger-jwt" = String, description = "A public access token reading the run"), ("x-trigger-jwt-claims" = String, description = "The token's claims as JSON: `{sub, pub, scopes}`"))), (status = 400, description = "Empty, malformed or out-of-bounds body or header; the message names the field", body = crate::schemas::ErrorBody), (status = 401, description = "No `Authorization` header (problem+json), a bad key, a bad or expired public access token, or a one-time token used before", content((crate::schemas::ErrorBody = "application/json"), (crate::schemas::ProblemBody = "application/problem+json"))), (status = 403, description = "A public access token without `trigger:tasks:{taskIdentifier}` (or `trigger:tasks`)", body = crate::schemas::ErrorBody), (status = 404, description = "No route: an empty task identifier", body = crate::schemas::ErrorBody), (status = 413, description = "The body is over 3 MiB, or `options.metadata` is over 262144 bytes serialized", body = crate::schemas::ErrorBody), (status = 422, description = "More than 10 tags, or a payload in object storage (`application/store`, not supported yet)", body = crate::schemas::ErrorBody)))]
pub async fn trigger(
    State(state): State<AppState>,
    caller: Caller,
    Path(task): Path<String>,
    headers: HeaderMap,
    body: RawBody,
) -> Result<(HeaderMap, Json<impl Serialize>), ApiError> {
    // A public access token needs `trigger:tasks:<task>` (or the whole type).
    auth::authorize(&caller, "trigger", &[("tasks", task.as_str())])?;
    let request: TriggerRequest = json_body(
        body,
        &["options", "options.queue", "options.idempotencyKeyOptions"],
    )?;
    // A value that is not visible ASCII is refused rather than taken as absent.
    let header = |name: &str| {
        headers
            .get(name)
            .map(|v| match v.to_str() {
                Ok(text) if text.bytes().all(|b| (0x20..0x7f).contains(&b)) => Ok(text.to_owned()),
                _ => Err(ApiError::BadRequest(format!(
                    "{name}: must be visible ASCII text"
                ))),
            })
            .transpose()
    };
    let idempotency = IdempotencyHeaders {
        key: header("idempotency-key")?,
        ttl: header("idempotency-key-ttl")?,
    };
    let triggered = state
        .engine
        .trigger(caller.environment(), &task, request, &idempotency)
        .await?;
    let id = triggered.id.to_string();
    let scopes = [
        format!("read:runs:{id}"),
        format!("write:inputStreams:{id}"),
    ];
    let token = caller.token_headers(&scopes, state.engine.now());
    Ok((
        token,
        Json(TriggerResponse {
            id,
            is_cached: triggered.is_cached,
        }),
    ))
}

/// Reads a run, with a secret key or a public access token allowed to read it (by run,
/// task or tag; a missing run is 404 before scopes are looked at).
pub async fn retrieve(
    State(state): State<AppState>,
    caller: Caller,
    CallerApiVersion(version): CallerApiVersion,
    Path(run_id): Path<String>,
    headers: axum::http::HeaderMap,
) -> Result<Json<RetrieveRunResponse>, ApiError> {
    let id = extract::run_id(&run_id, || ApiError::NotFound)?;
    let detail = state
        .engine
        .run_detail(caller.environment(), &id)
        .await?
        .ok_or(ApiError::NotFound)?;
    let run = &detail.run;
    auth::authorize(&caller, "read", &auth::run_resources(run))?;
    let mut response = RetrieveRunResponse::new(&detail, version);
    crate::packets::presign_stored(&state, caller.environment(), run, &mut response, &headers)
        .await?;
    Ok(Json(response))
}

#[derive(Debug, Serialize)]
struct RunIdResponse {
    id: String,
}

/// Cancels a live run (an executing attempt is told to stop through its worker's
/// heartbeat); a run that already ended is left alone and answers the same.
#[utoipa::path(post, path = "/api/v2/runs/{runId}/cancel", tag = "runs",
    params(("runId" = String, Path, description = "`run_…`")),
    responses((status = 200, body = crate::schemas::RunIdBody), (status = 401, description = "No `Authorization` header (problem+json) or a bad key", content((crate::schemas::ErrorBody = "application/json"), (crate::schemas::ProblemBody = "application/problem+json"))), (status = 404, description = "No such run in the key's environment", body = crate::schemas::ErrorBody)))]
pub async fn cancel(
    State(state): State<AppState>,
    Authenticated(environment): Authenticated,
    Path(run_id): Path<String>,
) -> Result<Json<impl Serialize>, ApiError> {
    let id = extract::run_id(&run_id, || ApiError::NotFound)?;
    let id = state
        .engine
        .cancel(&environment, &id)
        .await?
        .ok_or(ApiError::NotFound)?;
    Ok(Json(RunIdResponse { id: id.to_string() }))
}
