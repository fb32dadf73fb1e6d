//! Bodies that exist only to be described in the OpenAPI document (`openapi.rs`):
//! the error shapes every route answers, and the requests and answers that handlers read
//! or write by hand (`serde_json::Value`, `json!`). Handlers name them in their
//! `#[utoipa::path]` annotations; nothing here is parsed or sent.

use serde::Serialize;
use utoipa::ToSchema;

/// Every error body: `{"error": "<message>"}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: String,
}

/// The 401 answered before routing when an `/api` request has no `Authorization`
/// header (as upstream's middleware does).
#[derive(Debug, Serialize, ToSchema)]
pub struct ProblemBody {
    pub title: String,
    pub status: u16,
    #[serde(rename = "type")]
    pub kind: String,
    pub detail: String,
    pub error: String,
}

/// The answer to a cancel.
#[derive(Debug, Serialize, ToSchema)]
pub struct RunIdBody {
    pub id: String,
}

/// The answer to a metadata update: the run's new metadata.
#[derive(Debug, Serialize, ToSchema)]
pub struct MetadataBody {
    pub metadata: serde_json::Map<String, serde_json::Value>,
}

/// The answer to a metadata read: the stored text as is (`null` when none was set).
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MetadataTextBody {
    #[schema(required = true)]
    pub metadata: Option<String>,
    /// `application/json` unless the trigger stored another type.
    pub metadata_type: String,
}

/// `POST /api/v1/runs/{runId}/tags` body (read by hand in `actions::tags_add`).
#[derive(Debug, Serialize, ToSchema)]
pub struct TagsBody {
    #[schema(schema_with = runnel_core::openapi::tags)]
    pub tags: serde_json::Value,
}

/// A message-only answer (`{"message": "Successfully set 2 new tags."}`).
#[derive(Debug, Serialize, ToSchema)]
pub struct MessageBody {
    pub message: String,
}

/// A 400 of the routes that answer like upstream's hand-written ones: `{"error":
/// "Invalid request body", "issues": [...]}`; a body nested too deep has only `error`.
#[derive(Debug, Serialize, ToSchema)]
pub struct IssuesBody {
    pub error: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub issues: Option<Vec<Issue>>,
}

/// What is wrong with one field.
#[derive(Debug, Serialize, ToSchema)]
pub struct Issue {
    /// `custom`, or `invalid_type` (with `expected`).
    pub code: String,
    pub message: String,
    /// Where: keys and array indexes from the body's root (empty for the body itself).
    pub path: Vec<IssuePathSegment>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub expected: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub enum IssuePathSegment {
    Key(String),
    Index(u64),
}

/// `POST /api/v1/runs/{runId}/reschedule` body (read by hand in `actions::reschedule`).
#[derive(Debug, Serialize, ToSchema)]
pub struct RescheduleBody {
    #[schema(schema_with = runnel_core::openapi::delay_string)]
    pub delay: String,
}

/// `POST /api/v1/idempotencyKeys/{key}/reset` body.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResetBody {
    /// The task whose runs hold the key: 1 to 128 characters, no whitespace or control
    /// characters.
    #[schema(
        min_length = 1,
        max_length = 128,
        pattern = "^[^\\x00-\\x20\\x7f-\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000]+$"
    )]
    pub task_identifier: String,
}

/// The answer to an idempotency key reset: the key.
#[derive(Debug, Serialize, ToSchema)]
pub struct KeyIdBody {
    pub id: String,
}

/// `POST /api/v1/auth/jwt` body.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CreateTokenBody {
    #[schema(nullable = true)]
    pub claims: Option<TokenClaims>,
    #[schema(schema_with = runnel_core::openapi::expiration_time)]
    pub expiration_time: Option<serde_json::Value>,
}

/// The scopes a minted token grants (`read:runs:<id>`, `read:tasks:<id>`, …).
#[derive(Debug, Serialize, ToSchema)]
pub struct TokenClaims {
    #[serde(default)]
    pub scopes: Vec<String>,
}

/// A minted token.
#[derive(Debug, Serialize, ToSchema)]
pub struct TokenBody {
    pub token: String,
}
