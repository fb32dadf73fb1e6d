//! The one place where failures become HTTP responses: every engine and core refusal
//! maps to an [`ApiError`] here, and every `ApiError` to its status and body.
//!
//! Bodies are `{"error": "..."}` with the contract's statuses (§1.4); a scope refusal
//! adds upstream's `code`/`param`/`type`, a bad query its `details`, a hand-written
//! route's bad body its `issues`. A 500 carries a generic message; its cause is logged,
//! never sent.

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use runnel_core::batch::BatchRequestError;
use runnel_core::metadata::MetadataError;
use runnel_core::tags::TagsError;
use runnel_core::trigger::TriggerError;
use runnel_engine::list::ListError;
use runnel_engine::{ActionError, BatchError};
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
    /// A credential that is valid but may not do this, in the route's words (a non-dev
    /// key on a dev-only route, a derived key that was revoked): 403 `{"error": …}`.
    #[error("{0}")]
    Refused(String),
    /// A missing resource, or one of another environment: the two look the same.
    #[error("Not found")]
    NotFound,
    /// [`ApiError::NotFound`] in the words of the route (`Run not found`, `Task Run not
    /// found`), as the upstream server answers it.
    #[error("{0}")]
    Missing(String),
    #[error("Method not allowed")]
    MethodNotAllowed,
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// The request body stopped arriving (the body-read timeout).
    #[error("{0}")]
    RequestTimeout(String),
    /// A limit on concurrent work was reached; trying again later can succeed.
    #[error("{0}")]
    TooManyRequests(String),
    #[error("{0}")]
    Unprocessable(String),
    /// The request names a state that changed meanwhile (a stale snapshot): 409, which
    /// the dev CLI retries.
    #[error("{0}")]
    Conflict(String),
    /// The request may pass if tried again shortly (a lost race, every time).
    #[error("{0}")]
    Unavailable(String),
    /// A body refused by a route that answers like upstream's hand-written ones: 400
    /// `{"error":"Invalid request body","issues":[…]}`, each issue zod-like
    /// (`{code, message, path}`).
    #[error("Invalid request body")]
    Issues(Vec<Value>),
    /// Environment variables refused one by one (contract §2 rows 30 and 34): 400
    /// `{"error": …, "variableErrors": [{key, error}]}`.
    #[error("{error}")]
    Variables {
        error: String,
        variable_errors: Vec<(String, String)>,
    },
    /// A query string that failed validation: 400 `{"error":"Query Error","details":[…]}`.
    #[error("Query Error")]
    Query(Vec<runnel_core::list::QueryIssue>),
    /// A failure of the store (or another the caller cannot act on): 500.
    #[error(transparent)]
    Internal(runnel_engine::Error),
}

impl From<runnel_engine::Error> for ApiError {
    fn from(e: runnel_engine::Error) -> Self {
        match e {
            runnel_engine::Error::Trigger(e) => e.into(),
            e @ runnel_engine::Error::Store(_) => ApiError::Internal(e),
            runnel_engine::Error::EnvVars(e) => e.into(),
            runnel_engine::Error::Blob(e) => e.into(),
            runnel_engine::Error::Schedule(e) => {
                use runnel_engine::schedules::ScheduleApiError;
                match e {
                    ScheduleApiError::NotFound => ApiError::Missing(e.to_string()),
                    ScheduleApiError::Invalid(_) | ScheduleApiError::Declarative(_) => {
                        ApiError::Unprocessable(e.to_string())
                    }
                }
            }
            runnel_engine::Error::Worker(runnel_engine::WorkerError::UnknownWorker) => {
                ApiError::NotFound
            }
            runnel_engine::Error::Worker(e @ runnel_engine::WorkerError::Invalid(_)) => {
                ApiError::BadRequest(e.to_string())
            }
            runnel_engine::Error::Wait(e) => {
                use runnel_engine::waits::WaitError;
                let message = e.to_string();
                match e {
                    WaitError::RunNotFound(_) => ApiError::Missing("Run not found".into()),
                    WaitError::WaitpointNotFound(_) => {
                        ApiError::Missing("Waitpoint not found".into())
                    }
                    WaitError::NotExecuting { .. } | WaitError::Invalid(_) => {
                        ApiError::BadRequest(message)
                    }
                }
            }
            runnel_engine::Error::Dev(e) => {
                use runnel_engine::dev::DevError;
                let message = e.to_string();
                match e {
                    DevError::RunNotFound => ApiError::Missing("Run not found".into()),
                    DevError::SnapshotChanged(_) => ApiError::Conflict(message),
                    DevError::Invalid(_) => ApiError::BadRequest(message),
                }
            }
        }
    }
}

impl From<TriggerError> for ApiError {
    fn from(e: TriggerError) -> Self {
        let message = e.to_string();
        match e {
            TriggerError::Invalid { .. } => ApiError::BadRequest(message),
            TriggerError::TooManyTags(_)
            | TriggerError::Unsupported(_)
            | TriggerError::NotStored(_) => ApiError::Unprocessable(message),
            TriggerError::MetadataTooLarge => ApiError::PayloadTooLarge(message),
        }
    }
}

impl From<runnel_engine::BlobError> for ApiError {
    fn from(e: runnel_engine::BlobError) -> Self {
        match e {
            runnel_engine::BlobError::InvalidPath(_) => ApiError::BadRequest(e.to_string()),
            e => ApiError::Internal(runnel_engine::Error::Blob(e)),
        }
    }
}

impl From<ListError> for ApiError {
    fn from(e: ListError) -> Self {
        match e {
            ListError::Query(issues) => ApiError::Query(issues),
            ListError::Store(e) => ApiError::Internal(e.into()),
        }
    }
}

impl From<BatchError> for ApiError {
    fn from(e: BatchError) -> Self {
        let message = e.to_string();
        match e {
            BatchError::Request(BatchRequestError::Invalid(_)) => ApiError::BadRequest(message),
            BatchError::Request(BatchRequestError::Unprocessable(_))
            | BatchError::NotFound(_)
            | BatchError::Sealed(_) => ApiError::Unprocessable(message),
            // The status of the item's own refusal, with the message naming the item.
            BatchError::Item { error, .. } => match error {
                TriggerError::Invalid { .. } => ApiError::BadRequest(message),
                TriggerError::TooManyTags(_)
                | TriggerError::Unsupported(_)
                | TriggerError::NotStored(_) => ApiError::Unprocessable(message),
                TriggerError::MetadataTooLarge => ApiError::PayloadTooLarge(message),
            },
            BatchError::Store(e) => ApiError::Internal(e.into()),
            BatchError::Blob(e) => e.into(),
        }
    }
}

impl ApiError {
    /// One issue of [`ApiError::Issues`]: `{code: "custom", message, path}`.
    pub fn issue(path: &[&str], message: impl Into<String>) -> Value {
        json!({"code": "custom", "message": message.into(), "path": path})
    }

    /// An action's refusal, as its route answers it; `not_found` is the route's own 404
    /// message.
    pub fn action(error: ActionError, not_found: &str) -> Self {
        let message = error.to_string();
        match error {
            ActionError::NotFound => ApiError::Missing(not_found.to_owned()),
            ActionError::NotDelayed | ActionError::InvalidDelay(_) | ActionError::Replay(_) => {
                ApiError::BadRequest(message)
            }
            ActionError::Tags(TagsError::Invalid) => {
                ApiError::Issues(vec![ApiError::issue(&["tags"], message)])
            }
            ActionError::Tags(TagsError::TooMany { .. }) | ActionError::MetadataClosed => {
                ApiError::Unprocessable(message)
            }
            ActionError::Metadata(MetadataError::TooLarge) => ApiError::PayloadTooLarge(message),
            ActionError::Metadata(_) => ApiError::BadRequest(message),
            ActionError::NoKeyHolder { .. } => ApiError::Missing(message),
            ActionError::Contended => ApiError::Unavailable(message),
            ActionError::Engine(e) => e.into(),
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_)
            | ApiError::Query(_)
            | ApiError::Issues(_)
            | ApiError::Variables { .. } => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden | ApiError::Refused(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound | ApiError::Missing(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::TooManyRequests(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
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
            ApiError::Issues(issues) => json!({ "error": message, "issues": issues }),
            ApiError::Variables {
                variable_errors, ..
            } => {
                let errors: Vec<Value> = variable_errors
                    .iter()
                    .map(|(key, error)| json!({"key": key, "error": error}))
                    .collect();
                json!({ "error": message, "variableErrors": errors })
            }
            _ => json!({ "error": message }),
        };
        json_error(status, body)
    }
}

/// An error response with a JSON `body`; a 4xx also says `x-should-retry: false`, except
/// the two that a later try can pass (408 a stalled body, 429 a busy limit), which the
/// SDK retries by default.
fn json_error(status: StatusCode, body: Value) -> Response {
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

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    async fn answer(error: ApiError) -> (StatusCode, Option<String>, Value) {
        let response = error.into_response();
        let status = response.status();
        let retry = response
            .headers()
            .get("x-should-retry")
            .map(|v| v.to_str().unwrap().to_owned());
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        (status, retry, serde_json::from_slice(&bytes).unwrap())
    }

    /// Each action refusal answers as the action routes always have: the route's own 404
    /// text, upstream's issues for a bad tag, and a 503 the SDK may retry.
    #[tokio::test]
    async fn action_refusals_answer_with_the_routes_messages() {
        let no = Some("false".to_owned());
        for (error, expected) in [
            (
                ActionError::NotFound,
                (
                    StatusCode::NOT_FOUND,
                    no.clone(),
                    json!({"error": "Task Run not found"}),
                ),
            ),
            (
                ActionError::NotDelayed,
                (
                    StatusCode::BAD_REQUEST,
                    no.clone(),
                    json!({"error": "Cannot reschedule a run that is not delayed"}),
                ),
            ),
            (
                ActionError::Tags(TagsError::Invalid),
                (
                    StatusCode::BAD_REQUEST,
                    no.clone(),
                    json!({"error": "Invalid request body", "issues": [{
                        "code": "custom", "path": ["tags"],
                        "message": "tags: each tag must be 1 to 128 characters without NUL",
                    }]}),
                ),
            ),
            (
                ActionError::MetadataClosed,
                (
                    StatusCode::UNPROCESSABLE_ENTITY,
                    no.clone(),
                    json!({"error": "Cannot update metadata for a completed run"}),
                ),
            ),
            (
                ActionError::Metadata(MetadataError::TooLarge),
                (
                    StatusCode::PAYLOAD_TOO_LARGE,
                    no.clone(),
                    json!({"error": MetadataError::TooLarge.to_string()}),
                ),
            ),
            (
                ActionError::NoKeyHolder {
                    key: "k".to_owned(),
                    task: "t".to_owned(),
                },
                (
                    StatusCode::NOT_FOUND,
                    no.clone(),
                    json!({"error": "No runs found with idempotency key: k and task: t"}),
                ),
            ),
            (
                ActionError::Contended,
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    None,
                    json!({"error": "The run is being updated concurrently, retry shortly"}),
                ),
            ),
        ] {
            let name = format!("{error:?}");
            assert_eq!(
                answer(ApiError::action(error, "Task Run not found")).await,
                expected,
                "{name}"
            );
        }
    }
}
