//! The one place where failures become HTTP responses.
//!
//! Bodies are `{"error": "..."}` with the contract's statuses (§1.4). A 500 carries a
//! generic message; its cause is logged, never sent.

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use runnel_core::trigger::TriggerError;
use serde_json::{json, Value};

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(&'static str),
    /// A public access token whose scopes do not cover the request (contract §1.4).
    #[error("Unauthorized")]
    Forbidden,
    /// A missing resource, or one of another environment: the two look the same.
    #[error("Not found")]
    NotFound,
    #[error("Method not allowed")]
    MethodNotAllowed,
    #[error("{0}")]
    PayloadTooLarge(String),
    /// The request body stopped arriving (the body-read timeout).
    #[error("{0}")]
    RequestTimeout(String),
    /// A limit on concurrent work was reached; trying again later can succeed.
    #[error("{0}")]
    TooManyRequests(String),
    #[error("{0}")]
    Unprocessable(String),
    /// A query string that failed validation: 400 `{"error":"Query Error","details":[…]}`.
    #[error("Query Error")]
    Query(Vec<runnel_core::list::QueryIssue>),
    #[error(transparent)]
    Internal(#[from] runnel_store::Error),
}

impl From<runnel_engine::Error> for ApiError {
    fn from(e: runnel_engine::Error) -> Self {
        match e {
            runnel_engine::Error::Trigger(e) => e.into(),
            runnel_engine::Error::Store(e) => ApiError::Internal(e),
            runnel_engine::Error::Worker(runnel_engine::WorkerError::UnknownWorker) => {
                ApiError::NotFound
            }
            runnel_engine::Error::Worker(e @ runnel_engine::WorkerError::Invalid(_)) => {
                ApiError::BadRequest(e.to_string())
            }
        }
    }
}

impl From<TriggerError> for ApiError {
    fn from(e: TriggerError) -> Self {
        let message = e.to_string();
        match e {
            TriggerError::Invalid { .. } => ApiError::BadRequest(message),
            TriggerError::TooManyTags(_) | TriggerError::Unsupported(_) => {
                ApiError::Unprocessable(message)
            }
            TriggerError::MetadataTooLarge => ApiError::PayloadTooLarge(message),
        }
    }
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) | ApiError::Query(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden => StatusCode::FORBIDDEN,
            ApiError::NotFound => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::TooManyRequests(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let message = match &self {
            ApiError::Internal(cause) => {
                tracing::error!(error = %cause, "request failed");
                "Internal Server Error".to_owned()
            }
            other => other.to_string(),
        };
        let body = match &self {
            ApiError::Forbidden => json!({
                "error": message, "code": "unauthorized", "param": "access_token", "type": "authorization"
            }),
            ApiError::Query(details) => json!({ "error": message, "details": details }),
            _ => json!({ "error": message }),
        };
        json_error(status, body)
    }
}

/// An error response with a JSON `body`; a 4xx also says `x-should-retry: false`, except
/// the two that a later try can pass (408 a stalled body, 429 a busy limit), which the
/// SDK retries by default.
pub(crate) fn json_error(status: StatusCode, body: Value) -> Response {
    let mut response = (status, Json(body)).into_response();
    let transient = matches!(
        status,
        StatusCode::REQUEST_TIMEOUT | StatusCode::TOO_MANY_REQUESTS
    );
    if status.is_client_error() && !transient {
        forbid_retry(&mut response);
    }
    response
}

/// Marks a refusal as final: the official SDK retries a 4xx that does not say otherwise
/// (contract §1.4), and ours do not change on a retry (a run is readable as soon as its
/// trigger answered).
pub(crate) fn forbid_retry(response: &mut Response) {
    response
        .headers_mut()
        .insert("x-should-retry", HeaderValue::from_static("false"));
}
