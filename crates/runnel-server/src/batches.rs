//! Batch endpoints (contract §2.1 rows 2, 3, 5, 7, 8): the SDK's two-phase batch
//! (`POST /api/v3/batches`, then `POST /api/v3/batches/{id}/items` as NDJSON), the
//! one-shot `POST /api/v1/tasks/batch`, and batch retrieve (`GET /api/v1|v2/batches/{id}`).
//!
//! Creates answer 202, as upstream does (contract §8). The items route follows upstream's
//! statuses: 415 for a body that is not NDJSON, 400 for a line that is not JSON, 422 for
//! a line that is not an item, an index outside the batch, a sealed batch or a batch
//! that is not the environment's. It reads its body as it arrives and stores it in
//! chunks, so a request holds one chunk in memory whatever its size; a ceiling on the
//! uploads of one environment in progress at once ([`BatchUploads`], 429 past it)
//! bounds what an environment's uploads hold together.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use http_body_util::BodyExt;
use runnel_core::batch::{BatchRecord, CreateBatchRequest, ItemLines, OneShotBatchRequest};
use runnel_core::view::iso;
use runnel_core::BatchId;
use runnel_engine::batches::BatchDetail;
use runnel_engine::BatchError;
use serde::Serialize;

use crate::auth::{self, Authenticated, Caller, UnspentCaller};
use crate::extract::{json_body, within, RawBody};
pub use crate::uploads::{BatchUploads, BATCH_UPLOADS_PER_ENVIRONMENT_DEFAULT};

use crate::error::ApiError;
use crate::state::AppState;

/// Largest NDJSON items body: a full batch of 1,000 items of up to 64 KiB each.
pub const MAX_ITEMS_BODY_BYTES: usize = 64 * 1024 * 1024;
/// Items after which an items request stores what it has read (one read of the body is
/// parsed whole first, so a chunk may hold a few more).
pub const ITEMS_CHUNK_MAX_ITEMS: usize = 100;
/// Body bytes after which the items read so far are stored (a single longer line is
/// stored alone).
pub const ITEMS_CHUNK_MAX_BYTES: usize = 1024 * 1024;
/// Largest one-shot batch body (`BATCH_TASK_PAYLOAD_MAXIMUM_SIZE`).
pub const MAX_ONE_SHOT_BODY_BYTES: usize = 1_000_000;

fn idempotency_header(headers: &HeaderMap) -> Option<String> {
    headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct CreateBatchResponse {
    id: String,
    run_count: u32,
    is_cached: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    idempotency_key: Option<String>,
}

/// `POST /api/v3/batches`: phase 1 of the SDK's batch trigger.
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    body: RawBody,
) -> Result<impl IntoResponse, ApiError> {
    let body = within(body, runnel_core::batch::MAX_CREATE_BODY_BYTES)?;
    let request: CreateBatchRequest = json_body(body, &["idempotencyKeyOptions"])?;
    // A token: every task it names (each item is checked again as it arrives).
    auth::authorize_batch(
        &caller,
        request
            .task_identifiers
            .as_ref()
            .filter(|tasks| !tasks.is_empty())
            .map(|tasks| tasks.iter().map(String::as_str)),
    )?;
    let created = state
        .engine
        .batch_create(caller.environment(), request, idempotency_header(&headers))
        .await?;
    // A one-time token streams the items of the batch it created.
    auth::spent_on(&state, &caller, &format!("batch:{}", created.batch.id)).await?;
    // A token that reads the batch and the runs it will hold (contract §2.3).
    let scopes = [format!("read:batch:{}", created.batch.id)];
    let token = caller.token_headers(&scopes, state.engine.now());
    Ok((
        StatusCode::ACCEPTED,
        token,
        Json(CreateBatchResponse {
            id: created.batch.id.to_string(),
            run_count: created.batch.run_count,
            is_cached: created.is_cached,
            idempotency_key: created.batch.public_idempotency_key().map(str::to_owned),
        }),
    ))
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct StreamBatchItemsResponse {
    id: String,
    items_accepted: u32,
    items_deduplicated: u32,
    sealed: bool,
    /// Only while indexes are missing, so the SDK knows to send the stream again.
    #[serde(skip_serializing_if = "Option::is_none")]
    enqueued_count: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    expected_count: Option<u32>,
}

/// `POST /api/v3/batches/{batchId}/items`: phase 2, one item per NDJSON line, read and
/// stored as it arrives: a chunk of about [`ITEMS_CHUNK_MAX_ITEMS`] items (or the items
/// of about [`ITEMS_CHUNK_MAX_BYTES`]) per store call.
pub async fn items(
    State(state): State<AppState>,
    UnspentCaller(caller): UnspentCaller,
    Path(batch_id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    // A one-time token: its one use, or the batch its one use created.
    auth::spend(&state, &caller, Some(&format!("batch:{batch_id}"))).await?;
    let environment = caller.environment().clone();
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !content_type.contains("application/x-ndjson")
        && !content_type.contains("application/ndjson")
    {
        return Err(ApiError::UnsupportedMediaType(
            "Content-Type must be application/x-ndjson or application/ndjson".to_owned(),
        ));
    }
    let too_large = || {
        ApiError::PayloadTooLarge(format!(
            "Request body too large (limit {MAX_ITEMS_BODY_BYTES} bytes)"
        ))
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|length| length > MAX_ITEMS_BODY_BYTES as u64) {
        return Err(too_large());
    }
    let _upload = state.batch_uploads.start(&environment.id)?;
    // An id that is no batch id names no batch: answered as an unknown one.
    let batch_id = BatchId::parse(&batch_id).ok_or(BatchError::NotFound(batch_id))?;
    let mut upload = state
        .engine
        .batch_items_open(&environment, &batch_id)
        .await?;
    let mut lines = ItemLines::new(upload.run_count());
    let mut chunk = Vec::new();
    let mut chunk_bytes = 0;
    let mut received = 0;
    let mut body = body;
    while let Some(frame) = body.frame().await {
        let frame = frame
            .map_err(|e| ApiError::BadRequest(format!("Failed to read the request body: {e}")))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        received += data.len();
        if received > MAX_ITEMS_BODY_BYTES {
            return Err(too_large());
        }
        lines.push(&data, &mut chunk).map_err(BatchError::Request)?;
        auth::authorize_batch(&caller, Some(chunk.iter().map(|line| line.task.as_str())))?;
        chunk_bytes += data.len();
        if chunk.len() >= ITEMS_CHUNK_MAX_ITEMS
            || (chunk_bytes >= ITEMS_CHUNK_MAX_BYTES && !chunk.is_empty())
        {
            let full = std::mem::take(&mut chunk);
            state
                .engine
                .batch_items_write(&environment, &mut upload, full)
                .await?;
            chunk_bytes = 0;
        }
    }
    lines.finish(&mut chunk).map_err(BatchError::Request)?;
    auth::authorize_batch(&caller, Some(chunk.iter().map(|line| line.task.as_str())))?;
    state
        .engine
        .batch_items_write(&environment, &mut upload, chunk)
        .await?;
    let accepted = state
        .engine
        .batch_items_finish(&environment, upload)
        .await?;
    let missing = !accepted.sealed;
    Ok(Json(StreamBatchItemsResponse {
        id: accepted.id.to_string(),
        items_accepted: accepted.items_accepted,
        items_deduplicated: accepted.items_deduplicated,
        sealed: accepted.sealed,
        enqueued_count: missing.then_some(accepted.received),
        expected_count: missing.then_some(accepted.expected),
    })
    .into_response())
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct OneShotRunResponse {
    id: String,
    task_identifier: String,
    is_cached: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    idempotency_key: Option<String>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct OneShotResponse {
    id: String,
    is_cached: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    idempotency_key: Option<String>,
    runs: Vec<OneShotRunResponse>,
}

/// `POST /api/v1/tasks/batch`: every run of a batch in one request.
pub async fn one_shot(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    body: RawBody,
) -> Result<impl IntoResponse, ApiError> {
    let request: OneShotBatchRequest = json_body(within(body, MAX_ONE_SHOT_BODY_BYTES)?, &[])?;
    auth::authorize_batch(
        &caller,
        Some(request.items.iter().map(|item| item.task.as_str())),
    )?;
    let environment = caller.environment().clone();
    let batch = state
        .engine
        .batch_trigger_one_shot(&environment, request, idempotency_header(&headers))
        .await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(OneShotResponse {
            id: batch.batch.id.to_string(),
            is_cached: batch.is_cached,
            idempotency_key: batch.batch.public_idempotency_key().map(str::to_owned),
            runs: batch
                .runs
                .into_iter()
                .map(|run| OneShotRunResponse {
                    id: run.id.to_string(),
                    task_identifier: run.task_identifier,
                    is_cached: run.is_cached,
                    idempotency_key: run.idempotency_key,
                })
                .collect(),
        }),
    ))
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct BatchErrorItem {
    index: u32,
    task_identifier: String,
    error: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Processing {
    #[serde(skip_serializing_if = "Option::is_none")]
    completed_at: Option<String>,
    errors: Vec<BatchErrorItem>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct RetrieveBatchV2Response {
    id: String,
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    idempotency_key: Option<String>,
    created_at: String,
    updated_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    processing_completed_at: Option<String>,
    run_count: u32,
    runs: Vec<String>,
    processing: Processing,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct RetrieveBatchV1Response {
    id: String,
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    idempotency_key: Option<String>,
    created_at: String,
    updated_at: String,
    run_count: u32,
    runs: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    errors: Vec<BatchErrorItem>,
}

/// The run ids in index order (an item returned under an idempotency key shows the
/// run it returned) and the items that created no run.
fn runs_and_errors(detail: BatchDetail) -> (BatchRecord, Vec<String>, Vec<BatchErrorItem>) {
    let mut runs = Vec::with_capacity(detail.items.len());
    let mut errors = Vec::new();
    for item in detail.items {
        match (item.run_id, item.error) {
            (Some(run), _) => runs.push(run.to_string()),
            (None, error) => errors.push(BatchErrorItem {
                index: item.index,
                task_identifier: item.task_identifier,
                error: error.unwrap_or_default(),
            }),
        }
    }
    (detail.batch, runs, errors)
}

async fn detail(
    state: &AppState,
    environment: &runnel_core::tenancy::Environment,
    batch_id: &str,
) -> Result<BatchDetail, ApiError> {
    // An id that is no batch id names no batch.
    let batch_id = BatchId::parse(batch_id).ok_or(ApiError::NotFound)?;
    state
        .engine
        .batch_detail(environment, &batch_id)
        .await?
        .ok_or(ApiError::NotFound)
}

/// `GET /api/v2/batches/{batchId}` (what the SDK's `batch.retrieve` calls).
pub async fn retrieve_v2(
    State(state): State<AppState>,
    Authenticated(environment): Authenticated,
    Path(batch_id): Path<String>,
) -> Result<Json<impl Serialize>, ApiError> {
    let (batch, runs, errors) = runs_and_errors(detail(&state, &environment, &batch_id).await?);
    Ok(Json(RetrieveBatchV2Response {
        id: batch.id.to_string(),
        status: batch.status.as_str(),
        idempotency_key: batch.public_idempotency_key().map(str::to_owned),
        created_at: iso(batch.created_at),
        updated_at: iso(batch.updated_at),
        processing_completed_at: batch.processing_completed_at.map(iso),
        run_count: batch.run_count,
        runs,
        processing: Processing {
            completed_at: batch.processing_completed_at.map(iso),
            errors,
        },
    }))
}

/// `GET /api/v1/batches/{batchId}`.
pub async fn retrieve_v1(
    State(state): State<AppState>,
    Authenticated(environment): Authenticated,
    Path(batch_id): Path<String>,
) -> Result<Json<impl Serialize>, ApiError> {
    let (batch, runs, errors) = runs_and_errors(detail(&state, &environment, &batch_id).await?);
    Ok(Json(RetrieveBatchV1Response {
        id: batch.id.to_string(),
        status: batch.status.as_str(),
        idempotency_key: batch.public_idempotency_key().map(str::to_owned),
        created_at: iso(batch.created_at),
        updated_at: iso(batch.updated_at),
        run_count: batch.run_count,
        runs,
        errors,
    }))
}
