//! What handlers take from a request besides the caller ([`crate::auth`]): JSON bodies
//! under the size and nesting limits, path ids, and the API version header.
//!
//! Every refusal here is an [`ApiError`], so a malformed request answers the same way on
//! every route: a body over its limit is 413 naming the limit, blank or non-JSON text
//! and a body nested deeper than [`MAX_BODY_DEPTH`] are 400, and a typed body that does
//! not fit its shape is a 400 naming the failing field.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::StatusCode;
use runnel_core::nesting::{self, MAX_BODY_DEPTH};
use runnel_core::{ApiVersion, RunId};
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::error::ApiError;
use crate::state::MAX_BODY_BYTES;

/// A body as axum read it: the bytes, or why they could not be read.
pub(crate) type RawBody = Result<Bytes, BytesRejection>;

/// Parses a JSON object body: too large → 413, nested deeper than [`MAX_BODY_DEPTH`] →
/// 400, not JSON → 400 `Invalid JSON`, not an object → 400; then the typed shape, with a 400 naming the failing field
/// (`options.maxAttempts: invalid type: …`).
///
/// `objects` names nested fields (dotted paths) that must be objects when present: serde's
/// derived structs would otherwise also accept arrays, read by position.
pub(crate) fn json_body<T: DeserializeOwned>(
    body: RawBody,
    objects: &[&str],
) -> Result<T, ApiError> {
    let bytes = within(body, MAX_BODY_BYTES)?
        .map_err(|rejection| ApiError::BadRequest(rejection.body_text()))?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::BadRequest("Request body is empty".to_owned()));
    }
    check_body_depth(&bytes)?;
    let value: serde_json::Value = serde_json::from_slice(&bytes)
        .map_err(|_| ApiError::BadRequest("Invalid JSON".to_owned()))?;
    if !value.is_object() {
        return Err(ApiError::BadRequest(
            "body: must be a JSON object".to_owned(),
        ));
    }
    for path in objects {
        let nested = path.split('.').try_fold(&value, |v, part| v.get(part));
        if nested.is_some_and(|v| !v.is_object() && !v.is_null()) {
            return Err(ApiError::BadRequest(format!(
                "{path}: must be a JSON object"
            )));
        }
    }
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        ApiError::BadRequest(format!("{path}: {inner}"))
    })
}

/// A JSON object body of a route that answers like upstream's hand-written ones: a body
/// that is not JSON or not an object is [`ApiError::Issues`]. A body over the limit is a
/// 413 that, unlike [`within`]'s, does not name the limit (kept as these routes have
/// always answered it).
pub(crate) fn object_body(body: RawBody) -> Result<serde_json::Map<String, Value>, ApiError> {
    let bytes = body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge("Request body too large".to_owned())
        } else {
            ApiError::BadRequest(rejection.body_text())
        }
    })?;
    check_body_depth(&bytes)?;
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(ApiError::Issues(vec![ApiError::issue(
            &[],
            "Expected object",
        )])),
        Err(_) => Err(ApiError::Issues(vec![ApiError::issue(&[], "Invalid JSON")])),
    }
}

/// A typed body of a route that answers like upstream's hand-written ones: not an object
/// → [`object_body`]'s issues; a missing field or one of the wrong type → an issue
/// naming it.
pub(crate) fn issues_body<T: DeserializeOwned>(raw: RawBody) -> Result<T, ApiError> {
    let object = object_body(raw)?;
    serde_path_to_error::deserialize(Value::Object(object)).map_err(|e| {
        let path: Vec<String> = e
            .path()
            .to_string()
            .split('.')
            .filter(|p| !p.is_empty() && *p != ".")
            .map(str::to_owned)
            .collect();
        let path: Vec<&str> = path.iter().map(String::as_str).collect();
        ApiError::Issues(vec![ApiError::issue(&path, e.into_inner().to_string())])
    })
}

/// A body over its route's `limit` as a 413 naming that limit; any other outcome is
/// handed back for the reader to judge.
pub(crate) fn within(body: RawBody, limit: usize) -> Result<RawBody, ApiError> {
    match body {
        Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => Err(
            ApiError::PayloadTooLarge(format!("Request body too large (limit {limit} bytes)")),
        ),
        other => Ok(other),
    }
}

/// Refuses a body nested deeper than [`MAX_BODY_DEPTH`], measured on the bytes before
/// the (recursive) parser sees them.
pub(crate) fn check_body_depth(bytes: &[u8]) -> Result<(), ApiError> {
    nesting::check_text(bytes, MAX_BODY_DEPTH)
        .map_err(|e| ApiError::BadRequest(format!("body: {e}")))
}

/// The run id in the path; an unparseable one is as missing as an unknown one, so it is
/// refused with the route's `not_found`.
pub(crate) fn run_id(raw: &str, not_found: impl FnOnce() -> ApiError) -> Result<RunId, ApiError> {
    RunId::parse(raw).ok_or_else(not_found)
}

/// The status vocabulary the caller speaks, from `x-trigger-api-version`.
#[derive(Debug, Clone, Copy)]
pub struct CallerApiVersion(pub ApiVersion);

impl<S: Send + Sync> FromRequestParts<S> for CallerApiVersion {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let value = parts
            .headers
            .get("x-trigger-api-version")
            .and_then(|v| v.to_str().ok());
        Ok(CallerApiVersion(ApiVersion::from_header(value)))
    }
}

/// The URL this server is reached at, as the request names it: its `Host` header, over
/// `https` when `X-Forwarded-Proto` says so (a proxy in front), else `http`. Used for
/// URLs handed back to the caller (a waitpoint token's callback URL).
pub(crate) fn base_url(headers: &axum::http::HeaderMap) -> String {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let host = header("host").unwrap_or("localhost");
    let https = header("x-forwarded-proto")
        .is_some_and(|p| p.split(',').next().is_some_and(|p| p.trim() == "https"));
    format!("{}://{host}", if https { "https" } else { "http" })
}

/// The items of a comma-separated query value, trimmed, without empty ones.
pub(crate) fn comma_list(value: &str) -> Vec<String> {
    value
        .split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
        .map(str::to_owned)
        .collect()
}
