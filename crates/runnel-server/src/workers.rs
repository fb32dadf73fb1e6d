//! The worker protocol over HTTP (`/api/v1/workers/…`, docs/worker-protocol.md).
//!
//! Workers authenticate with their environment's secret key, like every other caller; a
//! worker id of another environment answers 404. Each handler translates the wire shape
//! (`runnel_core::worker`) to one engine call.

use axum::extract::{Path, State};
use axum::Json;
use runnel_core::worker::{
    CompleteRequest, CompleteResponse, DequeueRequest, DequeueResponse, HeartbeatRequest,
    HeartbeatResponse, RegisterRequest, RegisterResponse, StartRequest, StartResponse,
};

use crate::auth::Authenticated;
use crate::error::ApiError;
use crate::extract::{json_body, RawBody};
use crate::state::AppState;

/// Registers a worker and the tasks it serves.
#[utoipa::path(post, path = "/api/v1/workers/register", tag = "workers",
    request_body = RegisterRequest,
    responses((status = 200, body = RegisterResponse), (status = 400, description = "Empty, malformed or out-of-bounds body; the message names the field", body = crate::schemas::ErrorBody), (status = 401, description = "No `Authorization` header (problem+json) or a bad key", content((crate::schemas::ErrorBody = "application/json"), (crate::schemas::ProblemBody = "application/problem+json")))))]
pub async fn register(
    State(state): State<AppState>,
    Authenticated(environment): Authenticated,
    body: RawBody,
) -> Result<Json<RegisterResponse>, ApiError> {
    let request: RegisterRequest = json_body(body, &[])?;
    Ok(Json(
        state.engine.worker_register(&environment, request).await?,
    ))
}

/// Leases queued runs to the worker; a long poll of up to `waitMs` when none is queued.
#[utoipa::path(post, path = "/api/v1/workers/{workerId}/dequeue", tag = "workers",
    params(("workerId" = String, Path, description = "From the registration")),
    request_body = DequeueRequest,
    responses((status = 200, body = DequeueResponse), (status = 400, description = "Empty, malformed or out-of-bounds body; the message names the field", body = crate::schemas::ErrorBody), (status = 401, description = "No `Authorization` header (problem+json) or a bad key", content((crate::schemas::ErrorBody = "application/json"), (crate::schemas::ProblemBody = "application/problem+json"))), (status = 404, description = "Unknown worker, or one of another environment", body = crate::schemas::ErrorBody)))]
pub async fn dequeue(
    State(state): State<AppState>,
    Authenticated(environment): Authenticated,
    Path(worker_id): Path<String>,
    body: RawBody,
) -> Result<Json<DequeueResponse>, ApiError> {
    let request: DequeueRequest = json_body(body, &[])?;
    let runs = state
        .engine
        .worker_dequeue(&environment, &worker_id, request.max_runs, request.wait_ms)
        .await?;
    Ok(Json(DequeueResponse { runs }))
}

/// Starts held attempts: only run those listed in `started`.
#[utoipa::path(post, path = "/api/v1/workers/{workerId}/start", tag = "workers",
    params(("workerId" = String, Path, description = "From the registration")),
    request_body = StartRequest,
    responses((status = 200, body = StartResponse), (status = 400, description = "Empty, malformed or out-of-bounds body; the message names the field", body = crate::schemas::ErrorBody), (status = 401, description = "No `Authorization` header (problem+json) or a bad key", content((crate::schemas::ErrorBody = "application/json"), (crate::schemas::ProblemBody = "application/problem+json"))), (status = 404, description = "Unknown worker, or one of another environment", body = crate::schemas::ErrorBody)))]
pub async fn start(
    State(state): State<AppState>,
    Authenticated(environment): Authenticated,
    Path(worker_id): Path<String>,
    body: RawBody,
) -> Result<Json<StartResponse>, ApiError> {
    let request: StartRequest = json_body(body, &[])?;
    let (started, cancel) = state
        .engine
        .worker_start(&environment, &worker_id, request.attempt_ids)
        .await?;
    Ok(Json(StartResponse { started, cancel }))
}

/// Extends the leases of held attempts; answers those to stop (a long poll of up to `waitMs`).
#[utoipa::path(post, path = "/api/v1/workers/{workerId}/heartbeat", tag = "workers",
    params(("workerId" = String, Path, description = "From the registration")),
    request_body = HeartbeatRequest,
    responses((status = 200, body = HeartbeatResponse), (status = 400, description = "Empty, malformed or out-of-bounds body; the message names the field", body = crate::schemas::ErrorBody), (status = 401, description = "No `Authorization` header (problem+json) or a bad key", content((crate::schemas::ErrorBody = "application/json"), (crate::schemas::ProblemBody = "application/problem+json"))), (status = 404, description = "Unknown worker, or one of another environment", body = crate::schemas::ErrorBody)))]
pub async fn heartbeat(
    State(state): State<AppState>,
    Authenticated(environment): Authenticated,
    Path(worker_id): Path<String>,
    body: RawBody,
) -> Result<Json<HeartbeatResponse>, ApiError> {
    let request: HeartbeatRequest = json_body(body, &[])?;
    let cancel = state
        .engine
        .worker_heartbeat(
            &environment,
            &worker_id,
            request.attempt_ids,
            request.wait_ms,
        )
        .await?;
    Ok(Json(HeartbeatResponse { cancel }))
}

/// Reports how attempts ended; `accepted: false` when the worker no longer held one.
#[utoipa::path(post, path = "/api/v1/workers/{workerId}/complete", tag = "workers",
    params(("workerId" = String, Path, description = "From the registration")),
    request_body = CompleteRequest,
    responses((status = 200, body = CompleteResponse), (status = 400, description = "Empty, malformed or out-of-bounds body; the message names the field", body = crate::schemas::ErrorBody), (status = 401, description = "No `Authorization` header (problem+json) or a bad key", content((crate::schemas::ErrorBody = "application/json"), (crate::schemas::ProblemBody = "application/problem+json"))), (status = 404, description = "Unknown worker, or one of another environment", body = crate::schemas::ErrorBody)))]
pub async fn complete(
    State(state): State<AppState>,
    Authenticated(environment): Authenticated,
    Path(worker_id): Path<String>,
    body: RawBody,
) -> Result<Json<CompleteResponse>, ApiError> {
    let request: CompleteRequest = json_body(body, &[])?;
    let results = state
        .engine
        .worker_complete(&environment, &worker_id, request.completions)
        .await?;
    Ok(Json(CompleteResponse { results }))
}
