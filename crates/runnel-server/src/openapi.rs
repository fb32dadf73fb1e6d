//! The OpenAPI document of the worker protocol (docs/worker-protocol.md) and of the run
//! management calls that take untrusted input (docs/api.md), derived from the wire types
//! in `runnel_core` and the handlers' annotations, and served at `GET /api/openapi.json`.
//! `docs/openapi.json` is this document, committed; a test fails when the two drift
//! apart.
//!
//! Why it must be exact: `scripts/fuzz-api` generates requests from it, valid ones and
//! ones that break it, and fails on a 5xx, on an answer it does not list and on a broken
//! request the server accepts. So every bound stated here is one the server enforces,
//! and every answer a handler gives is listed.

use axum::Json;
use runnel_core::metadata::{MetadataUpdate, Operation};
use runnel_core::retry::RetryPolicy;
use runnel_core::trigger::{IdempotencyKeyOptions, QueueOption, TriggerOptions, TriggerRequest};
use runnel_core::view::{AttemptView, CommonRunFields, RelatedRuns, RetrieveRunResponse};
use runnel_core::worker::{
    AttemptCompletion, AttemptOutcome, CompleteRequest, CompleteResponse, CompletionResult,
    DequeueRequest, DequeueResponse, DequeuedRun, FailureKind, HeartbeatRequest, HeartbeatResponse,
    QueueDefinition, RegisterRequest, RegisterResponse, StartRequest, StartResponse,
    TaskDefinition, TaskFailure,
};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::schemas::{
    CreateTokenBody, ErrorBody, Issue, IssuePathSegment, IssuesBody, KeyIdBody, MessageBody,
    MetadataBody, MetadataTextBody, ProblemBody, RescheduleBody, ResetBody, RunIdBody, TagsBody,
    TokenBody, TokenClaims,
};

#[derive(Debug, OpenApi)]
#[openapi(
    info(
        title = "Runnel API",
        description = "The worker protocol (how workers register, lease runs, heartbeat and report attempts; docs/worker-protocol.md) and the run management calls that take untrusted input (docs/api.md). Every bound the server enforces is stated here, except the rules JSON Schema cannot say:\n\
\n\
- any body: nested at most 100 levels;\n\
- register: task ids and queue names unique within a registration, a task without `queue` needs an id that makes a valid `task/<id>` queue name, `retry.minTimeoutInMs` at most `retry.maxTimeoutInMs`;\n\
- complete: an `output` nested at most 64 levels (deeper fails that attempt);\n\
- trigger: `payload` nested at most 64 levels, and text when `options.payloadType` is not `application/json` (superjson text that parses for `application/super+json`); `options.metadata` as text must hold a JSON object when `metadataType` is `application/json`; idempotency keys and `lockToVersion` are bounded in bytes (the stated lengths are the most characters that can fit); a `ttl` or `delay` duration must not overflow;\n\
- reschedule: only a `DELAYED` run, and `delay` must end in the future; jwt: a numeric `expirationTime` must be in the future and at most 30 days ahead;\n\
- metadata: a `$.` key of at most 64 segments, well formed (`$.a.b[0]`), with no segment `__proto__`, `constructor` or `prototype` (nor such a plain key or `update` key); when `operations` is present `metadata` is ignored; the result nested at most 64 levels and at most 262144 bytes serialized (else 413).\n\
\n\
See docs/api.md, Nesting limits.",
    ),
    paths(
        crate::workers::register,
        crate::workers::dequeue,
        crate::workers::start,
        crate::workers::heartbeat,
        crate::workers::complete,
        crate::runs::cancel,
        crate::actions::metadata_update,
        crate::actions::metadata_get,
        crate::actions::tags_add,
        crate::runs::trigger,
        crate::actions::reschedule,
        crate::actions::replay,
        crate::actions::idempotency_key_reset,
        crate::tokens::create,
    ),
    components(schemas(
        RegisterRequest, RegisterResponse, TaskDefinition, QueueDefinition, RetryPolicy,
        DequeueRequest, DequeueResponse, DequeuedRun,
        StartRequest, StartResponse, HeartbeatRequest, HeartbeatResponse,
        CompleteRequest, CompleteResponse, CompletionResult, AttemptCompletion, AttemptOutcome,
        TaskFailure, FailureKind, ErrorBody, ProblemBody, RunIdBody,
        MetadataUpdate, Operation, MetadataBody, MetadataTextBody,
        TagsBody, MessageBody, IssuesBody, Issue, IssuePathSegment,
        TriggerRequest, TriggerOptions, QueueOption, IdempotencyKeyOptions,
        crate::runs::TriggerResponse,
        RescheduleBody, RetrieveRunResponse, CommonRunFields, RelatedRuns, AttemptView,
        ResetBody, KeyIdBody, CreateTokenBody, TokenClaims, TokenBody,
    )),
    modifiers(&SecretKeyAuth, &TransportAnswers, &OptionalBodies),
    security(("secret_key" = [])),
    tags((name = "workers", description = "The worker protocol"), (name = "runs", description = "Run management"), (name = "auth", description = "Public access tokens")),
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

/// Operations whose body may be left out. utoipa marks a body optional only by making
/// its schema nullable, which would say that a `null` body is accepted (it is not).
#[derive(Debug)]
struct OptionalBodies;

/// The POST operations whose body may be left out.
const OPTIONAL_BODIES: &[&str] = &["/api/v1/auth/jwt", "/api/v1/runs/{runId}/replay"];

impl Modify for OptionalBodies {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::Required;
        for path in OPTIONAL_BODIES {
            let body = openapi
                .paths
                .paths
                .get_mut(*path)
                .and_then(|item| item.post.as_mut())
                .and_then(|operation| operation.request_body.as_mut());
            if let Some(body) = body {
                body.required = Some(Required::False);
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
    fn the_document_describes_every_call_with_its_bounds() {
        let doc: serde_json::Value = serde_json::from_str(&document()).unwrap();
        for (method, path) in [
            ("post", "/api/v1/workers/register"),
            ("post", "/api/v1/workers/{workerId}/dequeue"),
            ("post", "/api/v1/workers/{workerId}/start"),
            ("post", "/api/v1/workers/{workerId}/heartbeat"),
            ("post", "/api/v1/workers/{workerId}/complete"),
            ("post", "/api/v2/runs/{runId}/cancel"),
            ("put", "/api/v1/runs/{runId}/metadata"),
            ("get", "/api/v1/runs/{runId}/metadata"),
            ("post", "/api/v1/runs/{runId}/tags"),
            ("post", "/api/v1/tasks/{taskIdentifier}/trigger"),
            ("post", "/api/v1/runs/{runId}/reschedule"),
            ("post", "/api/v1/runs/{runId}/replay"),
            ("post", "/api/v1/idempotencyKeys/{key}/reset"),
            ("post", "/api/v1/auth/jwt"),
        ] {
            assert!(
                doc["paths"][path][method].is_object(),
                "{method} {path} missing"
            );
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
            for (method, operation) in item.as_object().unwrap() {
                let responses = &operation["responses"];
                let unauthorized = &responses["401"]["content"];
                assert!(
                    unauthorized["application/problem+json"].is_object()
                        && unauthorized["application/json"].is_object(),
                    "{method} {path}: 401 responses"
                );
                if operation["requestBody"].is_object() {
                    assert!(
                        responses["400"].is_object(),
                        "{method} {path}: 400 response"
                    );
                }
                for status in ["408", "413", "429"] {
                    assert!(
                        responses[status].is_object(),
                        "{method} {path}: {status} response"
                    );
                }
            }
        }
        // Metadata: the operation types, and the answers past the handler's own checks.
        let types: Vec<&serde_json::Value> = schemas["Operation"]["oneOf"]
            .as_array()
            .unwrap()
            .iter()
            .map(|variant| &variant["properties"]["type"]["enum"][0])
            .collect();
        assert_eq!(
            types,
            ["update", "set", "delete", "append", "remove", "increment"]
        );
        let put = &doc["paths"]["/api/v1/runs/{runId}/metadata"]["put"]["responses"];
        for status in ["200", "400", "404", "413", "422", "503"] {
            assert!(put[status].is_object(), "metadata PUT: {status} response");
        }
        // Tags: one or many, each at most 128 characters without NUL.
        let tags = &schemas["TagsBody"]["properties"]["tags"]["oneOf"];
        for tag in [&tags[0], &tags[1]["items"]] {
            assert_eq!(
                (&tag["maxLength"], &tag["pattern"]),
                (&json!(128), &json!("^[^\\u0000]*$"))
            );
        }
        // Trigger: the options' bounds, and the task identifier's.
        let options = &schemas["TriggerOptions"]["properties"];
        assert_eq!(options["maxAttempts"]["minimum"], json!(1));
        assert_eq!(options["idempotencyKey"]["maxLength"], json!(2048));
        assert_eq!(options["lockToVersion"]["maxLength"], json!(128));
        assert_eq!(
            (
                &options["payloadType"]["minLength"],
                &options["payloadType"]["maxLength"]
            ),
            (&json!(1), &json!(128))
        );
        assert_eq!(options["ttl"]["oneOf"][1]["minimum"], json!(0));
        let scope = &schemas["IdempotencyKeyOptions"]["properties"]["scope"]["pattern"];
        assert_eq!(scope, &json!("^(run|attempt|global)$"));
        let trigger = &doc["paths"]["/api/v1/tasks/{taskIdentifier}/trigger"]["post"];
        let task = &trigger["parameters"][0]["schema"];
        assert_eq!(
            (&task["minLength"], &task["maxLength"]),
            (&json!(1), &json!(128))
        );
        for status in ["200", "400", "413", "422"] {
            assert!(
                trigger["responses"][status].is_object(),
                "trigger: {status} response"
            );
        }
        // Reset: the key and the task as bounded as a trigger's; jwt: the body optional.
        let reset = &doc["paths"]["/api/v1/idempotencyKeys/{key}/reset"]["post"];
        assert_eq!(reset["parameters"][0]["schema"]["maxLength"], json!(2048));
        let task = &schemas["ResetBody"]["properties"]["taskIdentifier"];
        assert_eq!(
            (&task["minLength"], &task["maxLength"]),
            (&json!(1), &json!(128))
        );
        let jwt = &doc["paths"]["/api/v1/auth/jwt"]["post"];
        assert_eq!(jwt["requestBody"]["required"], json!(false));
        let expiration = &schemas["CreateTokenBody"]["properties"]["expirationTime"]["oneOf"];
        assert_eq!(expiration[1]["maxLength"], json!(100));
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
