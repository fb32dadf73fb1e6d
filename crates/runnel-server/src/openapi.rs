//! The OpenAPI document of the worker protocol (docs/worker-protocol.md), derived from
//! the wire types in `runnel_core::worker` and the handlers' annotations, and served at
//! `GET /api/openapi.json`. `docs/openapi.json` is this document, committed; a test
//! fails when the two drift apart.

use axum::Json;
use runnel_core::retry::RetryPolicy;
use runnel_core::worker::{
    AttemptCompletion, AttemptOutcome, CompleteRequest, CompleteResponse, CompletionResult,
    DequeueRequest, DequeueResponse, DequeuedRun, FailureKind, HeartbeatRequest, HeartbeatResponse,
    QueueDefinition, RegisterRequest, RegisterResponse, StartRequest, StartResponse,
    TaskDefinition, TaskFailure,
};
use serde::Serialize;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

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

#[derive(Debug, OpenApi)]
#[openapi(
    info(
        title = "Runnel worker protocol",
        description = "How workers register, lease runs, heartbeat and report attempts. See docs/worker-protocol.md. Every bound the server enforces on these bodies is stated here, except the rules JSON Schema cannot say: task ids and queue names unique within a registration, a task without `queue` needs an id that makes a valid `task/<id>` queue name, `retry.minTimeoutInMs` at most `retry.maxTimeoutInMs`, a body nested at most 100 levels and an `output` at most 64 (docs/api.md, Nesting limits).",
    ),
    paths(
        crate::workers::register,
        crate::workers::dequeue,
        crate::workers::start,
        crate::workers::heartbeat,
        crate::workers::complete,
        crate::runs::cancel,
    ),
    components(schemas(
        RegisterRequest, RegisterResponse, TaskDefinition, QueueDefinition, RetryPolicy,
        DequeueRequest, DequeueResponse, DequeuedRun,
        StartRequest, StartResponse, HeartbeatRequest, HeartbeatResponse,
        CompleteRequest, CompleteResponse, CompletionResult, AttemptCompletion, AttemptOutcome,
        TaskFailure, FailureKind, ErrorBody, ProblemBody, RunIdBody,
    )),
    modifiers(&SecretKeyAuth, &TransportAnswers),
    security(("secret_key" = [])),
    tags((name = "workers", description = "The worker protocol"), (name = "runs", description = "Run management")),
)]
pub struct ApiDoc;

/// Every call takes `Authorization: Bearer <secret key>`.
#[derive(Debug)]
struct SecretKeyAuth;

impl Modify for SecretKeyAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "secret_key",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("A secret key, `tr_dev_…`, `tr_stg_…` or `tr_prod_…`; it picks the environment."))
                    .build(),
            ),
        );
    }
}

/// Answers any operation may give before its handler decides: a body over the size
/// limit (413), a body that stalls past `--body-read-timeout` (408), and the opt-in rate
/// limit (429, problem+json as upstream).
#[derive(Debug)]
struct TransportAnswers;

impl Modify for TransportAnswers {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::{ContentBuilder, PathItem, Ref, ResponseBuilder};
        let answer = |description: &str, content_type: &str, schema: &str| {
            ResponseBuilder::new()
                .description(description)
                .content(
                    content_type,
                    ContentBuilder::new()
                        .schema(Some(Ref::from_schema_name(schema)))
                        .build(),
                )
                .build()
        };
        let answers = [
            (
                "408",
                answer(
                    "The request body paused longer than the server's --body-read-timeout; the connection closes.",
                    "application/json",
                    "ErrorBody",
                ),
            ),
            (
                "413",
                answer(
                    "The request body is larger than 3 MiB.",
                    "application/json",
                    "ErrorBody",
                ),
            ),
            (
                "429",
                answer(
                    "The environment's rate limit is spent (only with --rate-limit).",
                    "application/problem+json",
                    "ProblemBody",
                ),
            ),
        ];
        for item in openapi.paths.paths.values_mut() {
            let PathItem {
                get,
                post,
                put,
                delete,
                patch,
                ..
            } = item;
            for operation in [get, post, put, delete, patch].into_iter().flatten() {
                for (status, response) in &answers {
                    operation
                        .responses
                        .responses
                        .entry((*status).to_owned())
                        .or_insert_with(|| response.clone().into());
                }
            }
        }
    }
}

/// The document as JSON, pretty-printed (what `docs/openapi.json` holds).
pub fn document() -> String {
    ApiDoc::openapi()
        .to_pretty_json()
        .expect("the OpenAPI document serializes")
}

pub async fn serve() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The committed copy is the generated document. To refresh it after changing the
    /// protocol: `RUNNEL_WRITE_OPENAPI=1 cargo test -p runnel-server openapi`.
    #[test]
    fn committed_openapi_document_is_current() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/openapi.json");
        let generated = document() + "\n";
        if std::env::var_os("RUNNEL_WRITE_OPENAPI").is_some() {
            std::fs::write(path, &generated).unwrap();
        }
        let committed = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            committed == generated,
            "docs/openapi.json is stale: run RUNNEL_WRITE_OPENAPI=1 cargo test -p runnel-server openapi"
        );
    }

    #[test]
    fn the_document_describes_every_worker_call() {
        let doc: serde_json::Value = serde_json::from_str(&document()).unwrap();
        for path in [
            "/api/v1/workers/register",
            "/api/v1/workers/{workerId}/dequeue",
            "/api/v1/workers/{workerId}/start",
            "/api/v1/workers/{workerId}/heartbeat",
            "/api/v1/workers/{workerId}/complete",
            "/api/v2/runs/{runId}/cancel",
        ] {
            assert!(doc["paths"][path]["post"].is_object(), "{path} missing");
        }
        // Bounds the server enforces, and the 401 every call may answer.
        let schemas = &doc["components"]["schemas"];
        let max_runs = &schemas["DequeueRequest"]["properties"]["maxRuns"];
        assert_eq!(
            (&max_runs["minimum"], &max_runs["maximum"]),
            (&json!(1), &json!(100))
        );
        let name = &schemas["RegisterRequest"]["properties"]["name"];
        assert_eq!(
            (&name["minLength"], &name["maxLength"]),
            (&json!(1), &json!(256))
        );
        for (path, item) in doc["paths"].as_object().unwrap() {
            let post = &item["post"];
            let unauthorized = &post["responses"]["401"]["content"];
            assert!(
                unauthorized["application/problem+json"].is_object()
                    && unauthorized["application/json"].is_object(),
                "{path}: 401 responses"
            );
            if post["requestBody"].is_object() {
                assert!(post["responses"]["400"].is_object(), "{path}: 400 response");
            }
            for status in ["408", "413", "429"] {
                assert!(
                    post["responses"][status].is_object(),
                    "{path}: {status} response"
                );
            }
        }
        let kinds = &doc["components"]["schemas"]["FailureKind"]["enum"];
        assert_eq!(
            kinds,
            &serde_json::json!([
                "TASK_FAILED",
                "CRASHED",
                "MAX_DURATION_EXCEEDED",
                "SYSTEM_FAILURE",
                "INTERRUPTED"
            ])
        );
    }
}
