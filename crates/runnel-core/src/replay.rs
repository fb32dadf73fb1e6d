//! Replay (contract §4.3): the trigger request that recreates a run, with the overrides
//! the SDK's `runs.replay(id, {payload, tags, …})` sends (`ReplayRunRequestBody`).
//!
//! A replay is an ordinary trigger: [`replay_request`] builds one from the original run
//! and the overrides, and the trigger's own validation judges the result, so every
//! override has the trigger's limits. Its refusals name trigger fields
//! (`options.tags`); [`body_field`] renames them to the replay body's (`tags`).

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::run::{Packet, Run};
use crate::trigger::{QueueOption, TriggerOptions, TriggerRequest};

/// `POST /api/v1/runs/{runId}/replay` body: each field, when given, replaces the original
/// run's value; an empty body replays the run as it was.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReplayRequest {
    /// The new payload: any JSON (nested at most 64 levels), or superjson text when
    /// `payloadType` is `application/super+json`. Absent or `null`: the original's.
    pub payload: Option<Value>,
    /// How `payload` is encoded; only with `payload`.
    #[cfg_attr(
        feature = "openapi",
        schema(pattern = "^(application/json|application/super\\+json)$")
    )]
    pub payload_type: Option<String>,
    /// The new metadata (replaces the original's whole), nested at most 64 levels and at
    /// most 262144 bytes serialized (else 413).
    pub metadata: Option<Map<String, Value>>,
    #[cfg_attr(feature = "openapi", schema(schema_with = crate::openapi::tags_or_null))]
    pub tags: Option<Value>,
    /// A queue name: `[A-Za-z0-9_/-]` are kept, the first 128 of them; at least one is
    /// needed.
    #[cfg_attr(feature = "openapi", schema(pattern = "[A-Za-z0-9_/-]"))]
    pub queue: Option<String>,
    #[cfg_attr(feature = "openapi", schema(schema_with = crate::openapi::concurrency_key))]
    pub concurrency_key: Option<Value>,
    #[cfg_attr(
        feature = "openapi",
        schema(pattern = "^(micro|small-1x|small-2x|medium-1x|medium-2x|large-1x|large-2x)$")
    )]
    pub machine: Option<String>,
    /// Locks the new run to this worker version; `latest` or blank means none (the
    /// default: a replay runs on the latest version).
    #[cfg_attr(
        feature = "openapi",
        schema(max_length = 128, pattern = "^[^\\u0000]*$")
    )]
    pub version: Option<String>,
    /// Not supported yet: accepted and ignored, logged once at warn.
    pub region: Option<String>,
    #[cfg_attr(feature = "openapi", schema(schema_with = crate::openapi::delay))]
    pub delay: Option<Value>,
    #[cfg_attr(feature = "openapi", schema(schema_with = crate::openapi::ttl))]
    pub ttl: Option<Value>,
    /// At most 2048 bytes; empty means none.
    #[cfg_attr(
        feature = "openapi",
        schema(max_length = 2048, pattern = "^[^\\u0000]*$")
    )]
    pub idempotency_key: Option<String>,
    /// `^\d+[smhd]$`; anything else means the default, 30 days.
    #[serde(rename = "idempotencyKeyTTL")]
    pub idempotency_key_ttl: Option<String>,
    /// Counted at most 250.
    #[cfg_attr(feature = "openapi", schema(minimum = 1))]
    pub max_attempts: Option<i64>,
    /// Seconds, rounded and clamped to 5..=2147483647.
    pub max_duration: Option<f64>,
    /// Seconds ahead of other runs in the queue (negative: behind).
    pub priority: Option<f64>,
}

impl ReplayRequest {
    /// The options this server accepts but does not honour yet, by wire name, when set.
    pub fn unsupported_in_use(&self) -> Vec<&'static str> {
        if self.region.as_deref().is_some_and(|r| !r.is_empty()) {
            vec!["region"]
        } else {
            Vec::new()
        }
    }
}

/// Why a replay body was refused before any trigger check.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ReplayError {
    #[error("payloadType: only allowed with payload")]
    PayloadTypeWithoutPayload,
    #[error("payloadType: must be application/json or application/super+json")]
    PayloadType,
}

/// The trigger request that recreates `run` with `overrides` applied (contract §4.3):
/// the original's payload and its type, tags, metadata, queue, concurrency key, machine
/// and test flag unless overridden; no version lock, idempotency key, delay, TTL or
/// attempt limits unless the overrides set them.
pub fn replay_request(run: &Run, overrides: ReplayRequest) -> Result<TriggerRequest, ReplayError> {
    let (payload, payload_type) = match overrides.payload {
        Some(payload) => {
            let payload_type = match overrides.payload_type {
                None => None,
                Some(t) if t == Packet::JSON || t == Packet::SUPER_JSON => Some(t),
                Some(_) => return Err(ReplayError::PayloadType),
            };
            (Some(payload), payload_type)
        }
        None if overrides.payload_type.is_some() => {
            return Err(ReplayError::PayloadTypeWithoutPayload)
        }
        None => original_payload(&run.payload),
    };
    let (metadata, metadata_type) = match overrides.metadata {
        Some(map) => (Some(Value::Object(map)), None),
        None => match &run.metadata {
            Some(Packet {
                data: Some(data),
                data_type,
            }) => (Some(Value::String(data.clone())), Some(data_type.clone())),
            _ => (None, None),
        },
    };
    let tags = overrides
        .tags
        .unwrap_or_else(|| Value::Array(run.tags.iter().cloned().map(Value::String).collect()));
    let concurrency_key = overrides
        .concurrency_key
        .or_else(|| run.concurrency_key.clone().map(Value::String));
    let lock_to_version = overrides.version.filter(|v| v != "latest");
    Ok(TriggerRequest {
        payload,
        context: None,
        options: Some(TriggerOptions {
            payload_type,
            queue: Some(QueueOption {
                name: overrides.queue.unwrap_or_else(|| run.queue.to_string()),
                concurrency_limit: None,
            }),
            concurrency_key,
            idempotency_key: overrides.idempotency_key,
            idempotency_key_ttl: overrides.idempotency_key_ttl,
            delay: overrides.delay,
            ttl: overrides.ttl,
            tags: Some(tags),
            metadata,
            metadata_type,
            max_attempts: overrides.max_attempts,
            max_duration: overrides.max_duration,
            machine: overrides
                .machine
                .or_else(|| run.machine.map(|m| m.as_str().to_owned())),
            priority: overrides.priority,
            lock_to_version,
            test: Some(run.is_test),
            ..TriggerOptions::default()
        }),
    })
}

/// The original payload as a trigger sends it: JSON as a value, anything else as text
/// with its type.
fn original_payload(packet: &Packet) -> (Option<Value>, Option<String>) {
    if packet.data_type == Packet::JSON {
        let value = packet
            .data
            .as_deref()
            .map(|d| serde_json::from_str(d).unwrap_or_else(|_| Value::String(d.to_owned())));
        (value, None)
    } else {
        (
            packet.data.clone().map(Value::String),
            Some(packet.data_type.clone()),
        )
    }
}

/// The replay body's name for a field a trigger refusal names.
pub fn body_field(trigger_field: &'static str) -> &'static str {
    match trigger_field {
        "options.lockToVersion" => "version",
        "options.queue.name" => "queue",
        other => other.strip_prefix("options.").unwrap_or(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::{EnvironmentId, RunId};
    use crate::trigger::{IdempotencyHeaders, TriggerError, ValidTrigger};
    use chrono::{DateTime, Utc};
    use serde_json::json;

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-01-02T03:04:05Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    fn original() -> Run {
        let request: TriggerRequest = serde_json::from_value(json!({
            "payload": {"a": 1},
            "options": {"tags": ["x"], "metadata": {"m": 1}, "queue": {"name": "q1"},
                "concurrencyKey": "ck", "machine": "small-2x", "test": true,
                "lockToVersion": "20990101.1", "idempotencyKey": "k", "ttl": "1h",
                "maxAttempts": 7},
        }))
        .unwrap();
        request
            .validate("t", &IdempotencyHeaders::default(), now())
            .unwrap()
            .into_run(RunId::generate(0), EnvironmentId::generate(0), now())
    }

    fn replay(body: Value) -> Result<ValidTrigger, TriggerError> {
        let overrides: ReplayRequest = serde_json::from_value(body).unwrap();
        replay_request(&original(), overrides).unwrap().validate(
            "t",
            &IdempotencyHeaders::default(),
            now(),
        )
    }

    #[test]
    fn without_overrides_the_original_inputs_come_back_without_lock_key_or_limits() {
        let t = replay(json!({})).unwrap();
        assert_eq!(t.payload, Packet::json(&json!({"a": 1})));
        assert_eq!(t.tags, vec!["x"]);
        assert_eq!(t.metadata.unwrap().to_value(), Some(json!({"m": 1})));
        assert_eq!(t.queue, "q1");
        assert_eq!(t.concurrency_key.as_deref(), Some("ck"));
        assert_eq!(t.machine.map(|m| m.as_str()), Some("small-2x"));
        assert!(t.is_test);
        assert_eq!(
            (t.lock_to_version, t.idempotency, t.ttl, t.max_attempts),
            (None, None, None, None)
        );
    }

    #[test]
    fn overrides_replace_the_original_values() {
        let t = replay(json!({
            "payload": "{\"json\":{\"b\":2}}", "payloadType": "application/super+json",
            "tags": ["y", "z"], "metadata": {"n": 2}, "queue": "q2", "concurrencyKey": 5,
            "machine": "micro", "version": "20260101.1", "delay": "1h", "ttl": 60,
            "idempotencyKey": "again", "maxAttempts": 2, "maxDuration": 30, "priority": 1,
        }))
        .unwrap();
        assert_eq!(t.payload.to_value(), Some(json!({"b": 2})));
        assert_eq!(t.payload.data_type, Packet::SUPER_JSON);
        assert_eq!(t.tags, vec!["y", "z"]);
        assert_eq!(t.metadata.unwrap().to_value(), Some(json!({"n": 2})));
        assert_eq!(t.queue, "q2");
        assert_eq!(t.concurrency_key.as_deref(), Some("5"));
        assert_eq!(t.machine.map(|m| m.as_str()), Some("micro"));
        assert_eq!(t.lock_to_version.as_deref(), Some("20260101.1"));
        assert!(t.delay_until.is_some());
        assert_eq!(t.ttl.map(|t| t.secs), Some(60));
        assert_eq!(t.idempotency.map(|i| i.key).as_deref(), Some("again"));
        assert_eq!(
            (t.max_attempts, t.max_duration_secs, t.priority_ms),
            (Some(2), Some(30), 1000)
        );
        // `latest` is no lock at all.
        assert_eq!(
            replay(json!({"version": "latest"}))
                .unwrap()
                .lock_to_version,
            None
        );
    }

    #[test]
    fn bad_overrides_are_refused_with_the_triggers_checks() {
        let too_many: Vec<String> = (0..11).map(|i| format!("t{i}")).collect();
        assert_eq!(
            replay(json!({"tags": too_many})).unwrap_err(),
            TriggerError::TooManyTags(11)
        );
        for (body, field) in [
            (json!({"machine": "huge"}), "options.machine"),
            (json!({"ttl": "soon"}), "options.ttl"),
            (json!({"maxAttempts": 0}), "options.maxAttempts"),
            (json!({"queue": "!!"}), "options.queue.name"),
        ] {
            match replay(body.clone()) {
                Err(TriggerError::Invalid { field: f, .. }) => assert_eq!(f, field, "{body}"),
                other => panic!("{body}: {other:?}"),
            }
        }
        let overrides: ReplayRequest =
            serde_json::from_value(json!({"payloadType": "application/json"})).unwrap();
        assert_eq!(
            replay_request(&original(), overrides).unwrap_err(),
            ReplayError::PayloadTypeWithoutPayload
        );
        assert!(serde_json::from_value::<ReplayRequest>(json!({"nope": 1})).is_err());
    }

    #[test]
    fn trigger_fields_are_renamed_to_the_replay_bodys() {
        assert_eq!(body_field("options.tags"), "tags");
        assert_eq!(body_field("options.lockToVersion"), "version");
        assert_eq!(body_field("options.queue.name"), "queue");
        assert_eq!(body_field("payload"), "payload");
    }
}
