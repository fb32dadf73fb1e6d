//! Wire shapes of runs (contract §3): what `GET /api/v3/runs/{id}` answers.
//!
//! An optional field that is unknown is left out of the JSON, never `null`: the SDK's
//! schemas reject `null` there, and a `null` date parses as 1970.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use serde_json::Value;

use crate::id::BatchId;
use crate::run::{Attempt, Run};
use crate::status::ApiVersion;

/// Timestamps go out as ISO 8601 with milliseconds, in UTC (`2026-01-02T03:04:05.678Z`).
pub fn iso(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// The fields a run response shares with its related runs.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CommonRunFields {
    pub id: String,
    pub status: &'static str,
    pub task_identifier: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(nullable = false))]
    pub idempotency_key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(nullable = false))]
    pub version: Option<String>,
    pub is_queued: bool,
    pub is_executing: bool,
    pub is_waiting: bool,
    pub is_completed: bool,
    pub is_success: bool,
    pub is_failed: bool,
    pub is_cancelled: bool,
    pub is_test: bool,
    pub created_at: String,
    pub updated_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(nullable = false))]
    pub started_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(nullable = false))]
    pub finished_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(nullable = false))]
    pub delayed_until: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(nullable = false))]
    pub ttl: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(nullable = false))]
    pub expired_at: Option<String>,
    pub tags: Vec<String>,
    pub cost_in_cents: f64,
    pub base_cost_in_cents: f64,
    pub duration_ms: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(nullable = false))]
    pub metadata: Option<Value>,
    pub depth: u32,
    pub trigger_function: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(nullable = false))]
    pub batch_id: Option<String>,
}

impl CommonRunFields {
    pub fn new(run: &Run, version: ApiVersion) -> Self {
        let flags = run.status.flags(version);
        CommonRunFields {
            id: run.id.to_string(),
            status: run.status.public(version),
            task_identifier: run.task_identifier.clone(),
            // The user's own key when the SDK told us it, else the key as matched. A
            // scheduled run's key is the server's own (one run per occurrence): not shown.
            idempotency_key: run.idempotency_key_user.clone().or_else(|| {
                run.idempotency_key
                    .clone()
                    .filter(|_| run.schedule_id.is_none())
            }),
            version: run.version().map(str::to_owned),
            is_queued: flags.is_queued,
            is_executing: flags.is_executing,
            is_waiting: flags.is_waiting,
            is_completed: flags.is_completed,
            is_success: flags.is_success,
            is_failed: flags.is_failed,
            is_cancelled: flags.is_cancelled,
            is_test: run.is_test,
            created_at: iso(run.created_at),
            updated_at: iso(run.updated_at),
            started_at: run.started_at.map(iso),
            finished_at: run.completed_at.map(iso),
            delayed_until: run.delay_until.map(iso),
            ttl: run.ttl.clone(),
            expired_at: run.expired_at.map(iso),
            tags: run.tags.clone(),
            cost_in_cents: run.cost_in_cents,
            base_cost_in_cents: run.base_cost_in_cents,
            duration_ms: run.usage_duration_ms,
            metadata: run.metadata.as_ref().and_then(|m| m.to_value()),
            depth: run.depth,
            trigger_function: run.trigger_function(),
            batch_id: run.batch_id.as_ref().map(BatchId::to_string),
        }
    }
}

/// One entry of `attempts` (the v3 attempt shape of the founding document).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AttemptView {
    pub id: String,
    pub status: &'static str,
    pub created_at: String,
    pub updated_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(nullable = false))]
    pub started_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(nullable = false))]
    pub completed_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(nullable = false))]
    pub error: Option<Value>,
}

impl From<&Attempt> for AttemptView {
    fn from(a: &Attempt) -> Self {
        AttemptView {
            id: a.id.to_string(),
            status: a.status.as_str(),
            created_at: iso(a.created_at),
            updated_at: iso(a.updated_at),
            started_at: a.started_at.map(iso),
            completed_at: a.completed_at.map(iso),
            error: a.error.clone(),
        }
    }
}

/// The run's root, parent and children, in the shape they share.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize)]
pub struct RelatedRuns {
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(nullable = false))]
    pub root: Option<CommonRunFields>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(nullable = false))]
    pub parent: Option<CommonRunFields>,
    pub children: Vec<CommonRunFields>,
}

/// `RetrieveRunResponse` (contract §3.1).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RetrieveRunResponse {
    #[serde(flatten)]
    pub common: CommonRunFields,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(nullable = false))]
    pub payload: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(nullable = false))]
    pub output: Option<Value>,
    /// A GET URL of the payload when it is in object storage (then `payload` is absent).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(nullable = false))]
    pub payload_presigned_url: Option<String>,
    /// A GET URL of the output when it is in object storage (then `output` is absent).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(nullable = false))]
    pub output_presigned_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(nullable = false))]
    pub error: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(nullable = false))]
    pub schedule: Option<Value>,
    pub related_runs: RelatedRuns,
    pub attempt_count: u32,
    pub attempts: Vec<AttemptView>,
}

/// Everything a retrieve response is built from.
#[derive(Debug, Clone)]
pub struct RunDetail {
    pub run: Run,
    pub attempts: Vec<Attempt>,
    pub root: Option<Run>,
    pub parent: Option<Run>,
    pub children: Vec<Run>,
    /// The schedule that triggered the run (`{id, externalId?, deduplicationKey?,
    /// generator}`), when one did and still exists.
    pub schedule: Option<Value>,
}

impl RetrieveRunResponse {
    pub fn new(detail: &RunDetail, version: ApiVersion) -> Self {
        let run = &detail.run;
        RetrieveRunResponse {
            common: CommonRunFields::new(run, version),
            payload: run.payload.to_value(),
            output: run.output.as_ref().and_then(|o| o.to_value()),
            payload_presigned_url: None,
            output_presigned_url: None,
            error: run.error.as_ref().map(public_error),
            schedule: detail.schedule.clone(),
            related_runs: RelatedRuns {
                root: detail
                    .root
                    .as_ref()
                    .map(|r| CommonRunFields::new(r, version)),
                parent: detail
                    .parent
                    .as_ref()
                    .map(|r| CommonRunFields::new(r, version)),
                children: detail
                    .children
                    .iter()
                    .map(|r| CommonRunFields::new(r, version))
                    .collect(),
            },
            attempt_count: run.attempt_count,
            attempts: detail.attempts.iter().map(AttemptView::from).collect(),
        }
    }
}

/// A stored `TaskRunError` as the response shows it: `{message, name?, stackTrace?}`.
fn public_error(error: &Value) -> Value {
    let field = |name: &str| error.get(name).and_then(Value::as_str).map(str::to_owned);
    let message = match error.get("type").and_then(Value::as_str) {
        Some("STRING_ERROR") | Some("CUSTOM_ERROR") => field("raw"),
        Some("INTERNAL_ERROR") => {
            let code = field("code").unwrap_or_default();
            Some(field("message").unwrap_or_else(|| format!("internal error ({code})")))
        }
        _ => field("message"),
    };
    let mut out = serde_json::Map::new();
    out.insert("message".into(), Value::String(message.unwrap_or_default()));
    if let Some(name) = field("name") {
        out.insert("name".into(), Value::String(name));
    }
    if let Some(stack) = field("stackTrace") {
        out.insert("stackTrace".into(), Value::String(stack));
    }
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::{EnvironmentId, RunId};
    use crate::trigger::{IdempotencyHeaders, TriggerRequest};
    use serde_json::json;

    #[test]
    fn optional_fields_are_absent_not_null() {
        let now = DateTime::parse_from_rfc3339("2026-01-02T03:04:05.678Z")
            .unwrap()
            .with_timezone(&Utc);
        let request: TriggerRequest = serde_json::from_value(json!({"payload": {"a": 1}})).unwrap();
        let run = request
            .validate("t", &IdempotencyHeaders::default(), now)
            .unwrap()
            .into_run(
                RunId::from_trusted("run_x".into()),
                EnvironmentId::generate(0),
                now,
            );
        let detail = RunDetail {
            run,
            attempts: vec![],
            root: None,
            parent: None,
            children: vec![],
            schedule: None,
        };
        let body =
            serde_json::to_value(RetrieveRunResponse::new(&detail, ApiVersion::Legacy)).unwrap();
        let text = body.to_string();
        assert!(!text.contains("null"), "{text}");
        assert_eq!(body["createdAt"], "2026-01-02T03:04:05.678Z");
        assert_eq!(body["relatedRuns"], json!({"children": []}));
        assert_eq!(body["attempts"], json!([]));
        for absent in [
            "startedAt",
            "finishedAt",
            "output",
            "version",
            "idempotencyKey",
            "ttl",
            "schedule",
        ] {
            assert!(body.get(absent).is_none(), "{absent}");
        }
    }

    #[test]
    fn errors_are_shown_as_message_name_stack() {
        assert_eq!(
            public_error(&json!({"type": "STRING_ERROR", "raw": "boom"})),
            json!({"message": "boom"})
        );
        assert_eq!(
            public_error(
                &json!({"type": "BUILT_IN_ERROR", "name": "Error", "message": "m", "stackTrace": "s"})
            ),
            json!({"message": "m", "name": "Error", "stackTrace": "s"})
        );
        assert_eq!(
            public_error(&json!({"type": "INTERNAL_ERROR", "code": "MAX_DURATION_EXCEEDED"})),
            json!({"message": "internal error (MAX_DURATION_EXCEEDED)"})
        );
    }
}
