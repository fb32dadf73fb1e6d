//! Packets in object storage (contract §4.6, §2 rows 46-47): the routes that hand out
//! presigned URLs, and the local store's own URL route.
//!
//! - `PUT /api/v2/packets/{path}` → `{presignedUrl, storagePath}` (a PUT URL; the SDK
//!   uploads a large payload there, then triggers with `payloadType: application/store`
//!   and `payload: storagePath`). `PUT /api/v1/packets/{path}` is the same without
//!   `storagePath`.
//! - `GET /api/v1/packets/{path}` → `{presignedUrl}` (a GET URL).
//! - `GET /api/v1/runs/{runId}/packets/{payload|output}` → `{presignedUrl}` for the
//!   run's stored packet (404 when it is inline); a token reading the run may ask.
//! - `GET|PUT /blobs/{key}?expires=…&signature=…`: the local store's URLs
//!   ([`runnel_engine::blobs`]), outside `/api` (the signature is the credential). Both
//!   directions stream; a PUT over the size cap is 413 and leaves nothing stored.
//!
//! Paths are relative to the caller's environment; every key lives under that
//! environment's prefix, so one environment's key can neither presign into nor read
//! another's packets.

use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use runnel_core::run::{Packet, Run};
use runnel_core::tenancy::Environment;
use runnel_engine::blobs::{PutError, UrlRefused};
use runnel_engine::BlobMethod;
use serde::Serialize;

use crate::auth::{self, Authenticated, Caller};
use crate::error::ApiError;
use crate::extract::{self, base_url};
use crate::state::AppState;

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PresignedUpload {
    /// A PUT URL, valid 300 s by default.
    pub presigned_url: String,
    /// The path to trigger with (`payloadType: application/store`).
    pub storage_path: String,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PresignedUrl {
    pub presigned_url: String,
}

/// A presigned URL for `path` of `environment`.
pub(crate) async fn presign(
    state: &AppState,
    method: BlobMethod,
    environment: &Environment,
    path: &str,
    headers: &HeaderMap,
) -> Result<String, ApiError> {
    Ok(state
        .engine
        .blobs()
        .presign(
            method,
            environment,
            path,
            &base_url(headers),
            state.engine.now(),
        )
        .await?)
}

/// The GET URL of a run's stored packet; `None` when it is inline (or absent).
pub(crate) async fn packet_url(
    state: &AppState,
    environment: &Environment,
    packet: Option<&Packet>,
    headers: &HeaderMap,
) -> Result<Option<String>, ApiError> {
    match packet {
        Some(Packet {
            data: Some(path),
            data_type,
        }) if data_type == Packet::STORE => Ok(Some(
            presign(state, BlobMethod::Get, environment, path, headers).await?,
        )),
        _ => Ok(None),
    }
}

/// `PUT /api/v2/packets/{path}`: a presigned PUT URL and the storage path to trigger with.
#[utoipa::path(put, path = "/api/v2/packets/{path}", tag = "packets",
    params(("path" = String, Path, description = "The packet's path in the environment, e.g. `trigger/my-task/1700000000-x/payload.json`")),
    responses((status = 200, body = PresignedUpload), (status = 400, description = "A path that is empty, over 1024 bytes, or has `..`, empty segments or control characters", body = crate::schemas::ErrorBody), (status = 401, description = "No `Authorization` header (problem+json), a bad key, or a public access token", body = crate::schemas::ErrorBody)))]
pub async fn upload_v2(
    State(state): State<AppState>,
    Authenticated(environment): Authenticated,
    Path(path): Path<String>,
    headers: HeaderMap,
) -> Result<Json<PresignedUpload>, ApiError> {
    let presigned_url = presign(&state, BlobMethod::Put, &environment, &path, &headers).await?;
    Ok(Json(PresignedUpload {
        presigned_url,
        storage_path: path,
    }))
}

/// `PUT /api/v1/packets/{path}`: a presigned PUT URL.
#[utoipa::path(put, path = "/api/v1/packets/{path}", tag = "packets",
    params(("path" = String, Path, description = "The packet's path in the environment")),
    responses((status = 200, body = PresignedUrl), (status = 400, description = "A bad path", body = crate::schemas::ErrorBody), (status = 401, description = "No `Authorization` header (problem+json), a bad key, or a public access token", body = crate::schemas::ErrorBody)))]
pub async fn upload_v1(
    State(state): State<AppState>,
    Authenticated(environment): Authenticated,
    Path(path): Path<String>,
    headers: HeaderMap,
) -> Result<Json<PresignedUrl>, ApiError> {
    let presigned_url = presign(&state, BlobMethod::Put, &environment, &path, &headers).await?;
    Ok(Json(PresignedUrl { presigned_url }))
}

/// `GET /api/v1/packets/{path}`: a presigned GET URL (a token needs `read:packets`).
#[utoipa::path(get, path = "/api/v1/packets/{path}", tag = "packets",
    params(("path" = String, Path, description = "The packet's path in the environment")),
    responses((status = 200, body = PresignedUrl), (status = 400, description = "A bad path", body = crate::schemas::ErrorBody), (status = 401, description = "No `Authorization` header (problem+json) or a bad credential", body = crate::schemas::ErrorBody), (status = 403, description = "A token without a scope reading packets", body = crate::schemas::ErrorBody)))]
pub async fn download(
    State(state): State<AppState>,
    caller: Caller,
    Path(path): Path<String>,
    headers: HeaderMap,
) -> Result<Json<PresignedUrl>, ApiError> {
    auth::authorize(&caller, "read", &[("packets", path.as_str())])?;
    let presigned_url = presign(
        &state,
        BlobMethod::Get,
        caller.environment(),
        &path,
        &headers,
    )
    .await?;
    Ok(Json(PresignedUrl { presigned_url }))
}

/// `GET /api/v1/runs/{runId}/packets/{payload|output}`: a GET URL for the run's stored
/// packet; 404 when the run does not exist or that packet is not in object storage.
#[utoipa::path(get, path = "/api/v1/runs/{runId}/packets/{field}", tag = "packets",
    params(("runId" = String, Path, description = "The run"), ("field" = String, Path, description = "`payload` or `output`")),
    responses((status = 200, body = PresignedUrl), (status = 401, description = "No `Authorization` header (problem+json) or a bad credential", body = crate::schemas::ErrorBody), (status = 403, description = "A token that cannot read the run", body = crate::schemas::ErrorBody), (status = 404, description = "No such run, an unknown field, or a packet that is not stored", body = crate::schemas::ErrorBody)))]
pub async fn run_packet(
    State(state): State<AppState>,
    caller: Caller,
    Path((run_id, field)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Json<PresignedUrl>, ApiError> {
    let id = extract::run_id(&run_id, || ApiError::Missing("Run not found".into()))?;
    let run = state
        .engine
        .run_get(caller.environment(), &id)
        .await?
        .ok_or_else(|| ApiError::Missing("Run not found".into()))?;
    auth::authorize(&caller, "read", &auth::run_resources(&run))?;
    let packet = match field.as_str() {
        "payload" => Some(&run.payload),
        "output" => run.output.as_ref(),
        _ => return Err(ApiError::Missing(format!("Unknown packet {field}"))),
    };
    let url = packet_url(&state, caller.environment(), packet, &headers)
        .await?
        .ok_or_else(|| ApiError::Missing(format!("The run's {field} is not stored")))?;
    Ok(Json(PresignedUrl { presigned_url: url }))
}

/// `expires` and `signature` of a local URL's query.
fn url_params(query: Option<&str>) -> Result<(i64, String), ApiError> {
    let (mut expires, mut signature) = (None, None);
    for pair in query.unwrap_or_default().split('&') {
        match pair.split_once('=') {
            Some(("expires", v)) => expires = v.parse::<i64>().ok(),
            Some(("signature", v)) => signature = Some(v.to_owned()),
            _ => {}
        }
    }
    match (expires, signature) {
        (Some(expires), Some(signature)) => Ok((expires, signature)),
        _ => Err(ApiError::Refused(
            "the URL needs its expires and signature parameters".into(),
        )),
    }
}

fn refused(e: UrlRefused) -> ApiError {
    match e {
        UrlRefused::NotLocal => ApiError::NotFound,
        e => ApiError::Refused(e.to_string()),
    }
}

/// `GET /blobs/{key}`: streams a stored object, with the content type it was put with.
pub async fn blob_get(
    State(state): State<AppState>,
    Path(key): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let (expires, signature) = url_params(query.as_deref())?;
    let blobs = state.engine.blobs();
    let key = blobs
        .url_check(
            BlobMethod::Get,
            &key,
            expires,
            &signature,
            state.engine.now(),
        )
        .map_err(refused)?;
    let read = blobs.get_stream(&key).await?.ok_or(ApiError::NotFound)?;
    let mut response = Body::from_stream(read.body).into_response();
    let headers = response.headers_mut();
    headers.insert(CONTENT_LENGTH, HeaderValue::from(read.size));
    // The type is the uploader's: never let a browser sniff or run it on this origin.
    headers.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        "content-security-policy",
        HeaderValue::from_static("sandbox; default-src 'none'"),
    );
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_str(&read.content_type)
            .unwrap_or(HeaderValue::from_static("application/octet-stream")),
    );
    Ok(response)
}

/// `PUT /blobs/{key}`: streams the body into the object, at most the configured size
/// (413 beyond, nothing stored), keeping its `Content-Type`.
pub async fn blob_put(
    State(state): State<AppState>,
    Path(key): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let (expires, signature) = url_params(query.as_deref())?;
    let blobs = state.engine.blobs();
    let key = blobs
        .url_check(
            BlobMethod::Put,
            &key,
            expires,
            &signature,
            state.engine.now(),
        )
        .map_err(refused)?;
    let max = blobs.config().max_bytes;
    let too_large = || ApiError::PayloadTooLarge(format!("the body is over {max} bytes"));
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max) {
        return Err(too_large());
    }
    let content_type = headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok());
    match blobs
        .put_stream(&key, content_type, body.into_data_stream())
        .await
    {
        Ok(_) => Ok(StatusCode::OK.into_response()),
        Err(PutError::TooLarge(_)) => Err(too_large()),
        Err(PutError::Body(message)) => Err(ApiError::BadRequest(format!("body: {message}"))),
        Err(PutError::Blob(e)) => Err(e.into()),
    }
}

/// A retrieve response for `run`: its stored payload and output become GET URLs in place
/// of the values.
pub(crate) async fn presign_stored(
    state: &AppState,
    environment: &Environment,
    run: &Run,
    response: &mut runnel_core::view::RetrieveRunResponse,
    headers: &HeaderMap,
) -> Result<(), ApiError> {
    if let Some(url) = packet_url(state, environment, Some(&run.payload), headers).await? {
        response.payload = None;
        response.payload_presigned_url = Some(url);
    }
    if let Some(url) = packet_url(state, environment, run.output.as_ref(), headers).await? {
        response.output = None;
        response.output_presigned_url = Some(url);
    }
    Ok(())
}
