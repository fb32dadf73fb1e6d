//! The trigger request (contract §2.2) and its validation: parse once at the edge into a
//! [`ValidTrigger`], then build the [`Run`] to store.
//!
//! Where the contract lets the upstream server silently ignore bad input we mostly say
//! so instead (a 400 naming the field); the exceptions are kept for SDK parity and are
//! listed in docs/api.md: a `delay` date in the past queues at once, and an
//! `idempotencyKeyTTL` not of the form `^\d+[smhd]$` falls back to the default.

use chrono::{DateTime, Duration, Utc};
use serde::Deserialize;
use serde_json::Value;

use crate::duration::{format_duration_secs, parse_duration_secs, parse_idempotency_ttl_secs};
use crate::id::{EnvironmentId, RunId};
use crate::idempotency::{KEY_TTL_DEFAULT_SECS, MAX_KEY_LEN};
use crate::machine::MachinePreset;
use crate::nesting::{self, MAX_VALUE_DEPTH};
use crate::queue::QueueName;
use crate::run::{Packet, Run};
use crate::status::RunStatus;
use crate::tags::{MAX_TAGS, MAX_TAG_LEN};

/// Serialized metadata limit: 256 KiB.
pub const MAX_METADATA_BYTES: usize = 262_144;
pub const MAX_DURATION_MIN_SECS: u32 = 5;
/// The longest `maxDuration`; a run or task at this value has no limit (contract §4.5).
pub const MAX_DURATION_MAX_SECS: u32 = 2_147_483_647;
/// Hard cap on attempts (upstream `MAX_TASK_RUN_ATTEMPTS`).
pub const MAX_ATTEMPTS_CAP: u32 = 250;
pub const MAX_QUEUE_NAME_LEN: usize = QueueName::MAX_LEN;
pub const MAX_TASK_IDENTIFIER_LEN: usize = 128;
pub const MAX_CONTENT_TYPE_LEN: usize = 128;
/// The largest `priority`, in seconds either way: it is stored as whole milliseconds in a
/// 32-bit integer (about 24.8 days).
pub const MAX_PRIORITY_SECS: f64 = i32::MAX as f64 / 1000.0;

/// `POST /api/v1/tasks/{taskIdentifier}/trigger` body.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TriggerRequest {
    /// Any JSON (nested at most 64 levels); text when `options.payloadType` is not
    /// `application/json` (superjson text for `application/super+json`).
    #[serde(default)]
    pub payload: Option<Value>,
    /// Accepted for compatibility; not used.
    #[serde(default)]
    pub context: Option<Value>,
    #[serde(default)]
    pub options: Option<TriggerOptions>,
}

/// The `options` object. Polymorphic fields stay `Value` until validation.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TriggerOptions {
    /// The payload's content type; `application/store` says `payload` is the storage path
    /// of an object uploaded beforehand (`PUT /api/v2/packets/…`).
    #[cfg_attr(
        feature = "openapi",
        schema(min_length = 1, max_length = 128, pattern = "^[^\\u0000]*$")
    )]
    pub payload_type: Option<String>,
    pub queue: Option<QueueOption>,
    #[cfg_attr(feature = "openapi", schema(schema_with = crate::openapi::concurrency_key))]
    pub concurrency_key: Option<Value>,
    /// At most 2048 bytes; empty means none. The `idempotency-key` header is read when
    /// absent.
    #[cfg_attr(
        feature = "openapi",
        schema(max_length = 2048, pattern = "^[^\\u0000]*$")
    )]
    pub idempotency_key: Option<String>,
    /// `^\d+[smhd]$`; anything else means the default, 30 days.
    #[serde(rename = "idempotencyKeyTTL")]
    pub idempotency_key_ttl: Option<String>,
    pub idempotency_key_options: Option<IdempotencyKeyOptions>,
    #[cfg_attr(feature = "openapi", schema(schema_with = crate::openapi::delay))]
    pub delay: Option<Value>,
    #[cfg_attr(feature = "openapi", schema(schema_with = crate::openapi::ttl))]
    pub ttl: Option<Value>,
    #[cfg_attr(feature = "openapi", schema(schema_with = crate::openapi::tags_or_null))]
    pub tags: Option<Value>,
    #[cfg_attr(feature = "openapi", schema(schema_with = crate::openapi::trigger_metadata))]
    pub metadata: Option<Value>,
    #[cfg_attr(feature = "openapi", schema(pattern = "^[^\\u0000]*$"))]
    pub metadata_type: Option<String>,
    /// Counted at most 250.
    #[cfg_attr(feature = "openapi", schema(minimum = 1))]
    pub max_attempts: Option<i64>,
    /// Seconds, rounded and clamped to 5..=2147483647.
    pub max_duration: Option<f64>,
    #[cfg_attr(
        feature = "openapi",
        schema(pattern = "^(micro|small-1x|small-2x|medium-1x|medium-2x|large-1x|large-2x)$")
    )]
    pub machine: Option<String>,
    /// Seconds ahead of other runs in the queue (negative: behind), rounded to whole
    /// milliseconds; at most 2147483.647 either way.
    #[cfg_attr(
        feature = "openapi",
        schema(minimum = -2147483.647, maximum = 2147483.647)
    )]
    pub priority: Option<f64>,
    /// A worker version; blank means none.
    #[cfg_attr(
        feature = "openapi",
        schema(max_length = 128, pattern = "^[^\\u0000]*$")
    )]
    pub lock_to_version: Option<String>,
    pub test: Option<bool>,
    /// The run this one is triggered from: the new run becomes its child (`depth`,
    /// `relatedRuns`). It must be a run of the same environment (else 400).
    #[cfg_attr(feature = "openapi", schema(pattern = "^run_[0-9a-z]{1,64}$"))]
    pub parent_run_id: Option<String>,
    /// Stored (the run shows as `triggerAndWait`), but the parent is not made to wait
    /// yet: accepted and ignored, logged once at warn.
    pub resume_parent_on_completion: Option<bool>,
    /// Not supported yet: accepted and ignored, logged once at warn.
    pub region: Option<String>,
    /// Not supported yet: accepted and ignored, logged once at warn.
    pub debounce: Option<serde_json::Map<String, Value>>,
    /// Named concurrency limits; not supported yet: accepted and ignored, logged once at
    /// warn.
    pub concurrency: Option<Vec<Value>>,
    /// Not supported yet: accepted and ignored, logged once at warn.
    pub bulk_action_id: Option<String>,
}

impl TriggerOptions {
    /// The options this server accepts but does not honour yet, by wire name, when a
    /// request sets them to something other than their default (`false`, empty).
    pub fn unsupported_in_use(&self) -> Vec<&'static str> {
        let mut used = Vec::new();
        if self.region.as_deref().is_some_and(|r| !r.is_empty()) {
            used.push("region");
        }
        if self.debounce.as_ref().is_some_and(|d| !d.is_empty()) {
            used.push("debounce");
        }
        if self.concurrency.as_ref().is_some_and(|c| !c.is_empty()) {
            used.push("concurrency");
        }
        if self
            .bulk_action_id
            .as_deref()
            .is_some_and(|b| !b.is_empty())
        {
            used.push("bulkActionId");
        }
        used
    }
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct QueueOption {
    /// Kept: `[A-Za-z0-9_/-]`, the first 128 of them; at least one is needed.
    #[cfg_attr(feature = "openapi", schema(pattern = "[A-Za-z0-9_/-]"))]
    pub name: String,
    /// Deprecated upstream and ignored by v4; accepted so old clients still parse.
    pub concurrency_limit: Option<i64>,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Deserialize)]
pub struct IdempotencyKeyOptions {
    /// The key as the caller gave it, before scoping: at most 2048 bytes.
    #[cfg_attr(
        feature = "openapi",
        schema(max_length = 2048, pattern = "^[^\\u0000]*$")
    )]
    pub key: String,
    #[cfg_attr(feature = "openapi", schema(pattern = "^(run|attempt|global)$"))]
    pub scope: Option<String>,
}

/// Why a trigger was refused; the server maps each to its HTTP status.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TriggerError {
    /// Malformed input (400), naming the field.
    #[error("{field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
    /// More than [`MAX_TAGS`] tags (422, the contract's message).
    #[error("Runs can only have {MAX_TAGS} tags, you're trying to set {0}.")]
    TooManyTags(usize),
    /// Metadata over [`MAX_METADATA_BYTES`] (413, the contract's message).
    #[error("Metadata exceeds maximum size of {MAX_METADATA_BYTES} bytes")]
    MetadataTooLarge,
    /// Valid input this server cannot honour yet (422).
    #[error("{0}")]
    Unsupported(String),
    /// `payloadType` `application/store` naming a path where nothing is stored (422).
    #[error("payload: no object is stored at {0} (upload it first: PUT /api/v2/packets/{0})")]
    NotStored(String),
}

fn invalid(field: &'static str, message: impl Into<String>) -> TriggerError {
    TriggerError::Invalid {
        field,
        message: message.into(),
    }
}

/// Where the idempotency key came from outside the body.
#[derive(Debug, Default, Clone)]
pub struct IdempotencyHeaders {
    /// `idempotency-key`
    pub key: Option<String>,
    /// `idempotency-key-ttl`
    pub ttl: Option<String>,
}

/// An idempotency key the new run will hold.
#[derive(Debug, Clone, PartialEq)]
pub struct IdempotencyClaim {
    pub key: String,
    pub user_key: Option<String>,
    pub scope: Option<String>,
    pub expires_at: DateTime<Utc>,
}

/// A trigger that passed validation.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidTrigger {
    pub task_identifier: String,
    pub payload: Packet,
    pub tags: Vec<String>,
    pub metadata: Option<Packet>,
    pub idempotency: Option<IdempotencyClaim>,
    pub delay_until: Option<DateTime<Utc>>,
    pub ttl: Option<Ttl>,
    pub max_attempts: Option<u32>,
    pub max_duration_secs: Option<u32>,
    pub machine: Option<MachinePreset>,
    pub priority_ms: i32,
    pub is_test: bool,
    pub queue: String,
    pub concurrency_key: Option<String>,
    pub lock_to_version: Option<String>,
    /// The run named by `parentRunId`; the engine checks it exists and links the two.
    pub parent_run_id: Option<RunId>,
    pub resume_parent_on_completion: bool,
}

/// A time-to-live: the string echoed back and its length.
#[derive(Debug, Clone, PartialEq)]
pub struct Ttl {
    pub display: String,
    pub secs: u64,
}

/// Checks a task identifier taken from the path.
pub fn validate_task_identifier(task: &str) -> Result<(), TriggerError> {
    if task.is_empty() || task.chars().count() > MAX_TASK_IDENTIFIER_LEN {
        return Err(invalid(
            "taskIdentifier",
            format!("must be 1 to {MAX_TASK_IDENTIFIER_LEN} characters"),
        ));
    }
    if task.chars().any(|c| c.is_whitespace() || c.is_control()) {
        // Control characters include NUL.
        return Err(invalid("taskIdentifier", "must not contain whitespace"));
    }
    Ok(())
}

/// Refuses text holding U+0000: no backend can store it in a text column (PostgreSQL
/// refuses it outright), so it is bad input rather than a 500.
fn no_nul(field: &'static str, value: Option<&str>) -> Result<(), TriggerError> {
    if value.is_some_and(|v| v.contains('\0')) {
        return Err(invalid(field, "must not contain NUL characters"));
    }
    Ok(())
}

impl TriggerRequest {
    /// Validates the request for `task` at `now`.
    pub fn validate(
        self,
        task: &str,
        headers: &IdempotencyHeaders,
        now: DateTime<Utc>,
    ) -> Result<ValidTrigger, TriggerError> {
        validate_task_identifier(task)?;
        let o = self.options.unwrap_or_default();
        let raw_payload = o.payload_type.as_deref().is_some_and(|t| t != Packet::JSON);
        if let (true, Some(Value::String(text))) = (raw_payload, &self.payload) {
            no_nul("payload", Some(text))?;
        }
        no_nul("options.idempotencyKey", o.idempotency_key.as_deref())?;
        no_nul("idempotency-key", headers.key.as_deref())?;
        no_nul("options.lockToVersion", o.lock_to_version.as_deref())?;
        no_nul("options.payloadType", o.payload_type.as_deref())?;
        no_nul("options.metadataType", o.metadata_type.as_deref())?;
        if let Some(Value::String(text)) = &o.metadata {
            no_nul("options.metadata", Some(text))?;
        }
        if let Some(Value::String(key)) = &o.concurrency_key {
            no_nul("options.concurrencyKey", Some(key))?;
        }
        if let Some(options) = &o.idempotency_key_options {
            no_nul("options.idempotencyKeyOptions.key", Some(&options.key))?;
        }
        let payload = payload_packet(self.payload, o.payload_type)?;
        let tags = tags(o.tags)?;
        let metadata = metadata_packet(o.metadata, o.metadata_type)?;
        let idempotency = idempotency(
            o.idempotency_key.or_else(|| headers.key.clone()),
            o.idempotency_key_ttl.or_else(|| headers.ttl.clone()),
            o.idempotency_key_options,
            now,
        )?;
        let delay_until = delay(o.delay, now)?;
        let ttl = ttl(o.ttl)?;
        let max_attempts = match o.max_attempts {
            None => None,
            Some(n) if n < 1 => return Err(invalid("options.maxAttempts", "must be at least 1")),
            Some(n) => Some(u32::try_from(n).unwrap_or(u32::MAX).min(MAX_ATTEMPTS_CAP)),
        };
        let max_duration_secs = o.max_duration.map(|secs| {
            // Clamped, not refused: the contract's range is 5..2147483647.
            secs.round().clamp(
                f64::from(MAX_DURATION_MIN_SECS),
                f64::from(MAX_DURATION_MAX_SECS),
            ) as u32
        });
        let machine = o
            .machine
            .map(|name| {
                name.parse::<MachinePreset>().map_err(|_| {
                    let names: Vec<_> = MachinePreset::ALL.iter().map(|m| m.as_str()).collect();
                    invalid(
                        "options.machine",
                        format!("must be one of {}", names.join(", ")),
                    )
                })
            })
            .transpose()?;
        let priority_ms = match o.priority {
            None => 0,
            // Rounded to whole milliseconds, as stored; beyond the range refused rather
            // than clamped, so two far-apart priorities never silently become equal.
            Some(secs) if secs.abs() <= MAX_PRIORITY_SECS => (secs * 1000.0).round() as i32,
            Some(_) => {
                return Err(invalid(
                    "options.priority",
                    format!("must be between -{MAX_PRIORITY_SECS} and {MAX_PRIORITY_SECS} seconds"),
                ))
            }
        };
        let queue = match o.queue {
            None => QueueName::for_task(task).into_string(),
            Some(q) => queue_name(&q.name)?,
        };
        let concurrency_key = match o.concurrency_key {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if s.is_empty() => None,
            Some(Value::String(s)) => Some(s),
            Some(Value::Number(n)) => Some(n.to_string()),
            Some(_) => {
                return Err(invalid(
                    "options.concurrencyKey",
                    "must be a string or a number",
                ))
            }
        };
        // Length first: a long blank version is refused like any other long one.
        let lock_to_version = match o.lock_to_version {
            Some(v) if v.len() > 128 => {
                return Err(invalid(
                    "options.lockToVersion",
                    "must be at most 128 characters",
                ))
            }
            Some(v) if v.trim().is_empty() => None,
            other => other,
        };
        let parent_run_id = match o.parent_run_id {
            None => None,
            Some(id) => Some(
                RunId::parse(&id)
                    .ok_or_else(|| invalid("options.parentRunId", "must be a run id (run_…)"))?,
            ),
        };
        Ok(ValidTrigger {
            task_identifier: task.to_owned(),
            payload,
            tags,
            metadata,
            idempotency,
            delay_until,
            ttl,
            max_attempts,
            max_duration_secs,
            machine,
            priority_ms,
            is_test: o.test.unwrap_or(false),
            queue,
            concurrency_key,
            lock_to_version,
            resume_parent_on_completion: parent_run_id.is_some()
                && o.resume_parent_on_completion == Some(true),
            parent_run_id,
        })
    }
}

fn payload_packet(
    payload: Option<Value>,
    payload_type: Option<String>,
) -> Result<Packet, TriggerError> {
    let data_type = payload_type.unwrap_or_else(|| Packet::JSON.to_owned());
    if data_type.is_empty() || data_type.len() > MAX_CONTENT_TYPE_LEN {
        return Err(invalid(
            "options.payloadType",
            format!("must be 1 to {MAX_CONTENT_TYPE_LEN} characters"),
        ));
    }
    if data_type == Packet::JSON {
        if let Some(value) = &payload {
            nesting::check_value(value, MAX_VALUE_DEPTH)
                .map_err(|e| invalid("payload", e.to_string()))?;
        }
        return Ok(Packet {
            data: payload.map(|v| v.to_string()),
            data_type,
        });
    }
    if data_type == Packet::STORE {
        // The payload is the storage path of an object uploaded beforehand (`PUT
        // /api/v2/packets/…`); the engine checks that it exists.
        return match payload {
            Some(Value::String(path)) => {
                crate::packets::path_check(&path).map_err(|m| invalid("payload", m))?;
                Ok(Packet {
                    data: Some(path),
                    data_type,
                })
            }
            _ => Err(invalid(
                "payload",
                "must be a storage path (a string) when payloadType is application/store",
            )),
        };
    }
    match payload {
        None => Ok(Packet {
            data: None,
            data_type,
        }),
        Some(Value::String(s)) => {
            if data_type == Packet::SUPER_JSON {
                nesting::check_text(s.as_bytes(), MAX_VALUE_DEPTH)
                    .map_err(|e| invalid("payload", e.to_string()))?;
            }
            if data_type == Packet::SUPER_JSON && serde_json::from_str::<Value>(&s).is_err() {
                return Err(invalid(
                    "payload",
                    "must be superjson text when payloadType is application/super+json",
                ));
            }
            Ok(Packet {
                data: Some(s),
                data_type,
            })
        }
        Some(_) => Err(invalid(
            "payload",
            format!("must be a string when payloadType is {data_type}"),
        )),
    }
}

fn tags(value: Option<Value>) -> Result<Vec<String>, TriggerError> {
    let raw: Vec<String> = match value {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => vec![s],
        Some(Value::Array(items)) => items
            .into_iter()
            .map(|item| match item {
                Value::String(s) => Ok(s),
                _ => Err(invalid("options.tags", "each tag must be a string")),
            })
            .collect::<Result<_, _>>()?,
        Some(_) => {
            return Err(invalid(
                "options.tags",
                "must be a string or an array of strings",
            ))
        }
    };
    let mut tags: Vec<String> = Vec::with_capacity(raw.len());
    for tag in raw {
        no_nul("options.tags", Some(&tag))?;
        if tag.chars().count() > MAX_TAG_LEN {
            return Err(invalid(
                "options.tags",
                format!("each tag must be at most {MAX_TAG_LEN} characters"),
            ));
        }
        if !tag.trim().is_empty() {
            tags.push(tag);
        }
    }
    tags.sort();
    tags.dedup();
    if tags.len() > MAX_TAGS {
        return Err(TriggerError::TooManyTags(tags.len()));
    }
    Ok(tags)
}

fn metadata_packet(
    value: Option<Value>,
    metadata_type: Option<String>,
) -> Result<Option<Packet>, TriggerError> {
    let data_type = metadata_type.unwrap_or_else(|| Packet::JSON.to_owned());
    let too_deep = |e: nesting::TooDeep| invalid("options.metadata", e.to_string());
    let data = match value {
        None | Some(Value::Null) => return Ok(None),
        Some(object @ Value::Object(_)) => {
            nesting::check_value(&object, MAX_VALUE_DEPTH).map_err(too_deep)?;
            object.to_string()
        }
        // The v4 SDK sends metadata already serialized, with its type alongside; what is
        // stored must parse again (a replay re-reads it), so its depth is checked first.
        Some(Value::String(text)) => {
            if data_type == Packet::JSON || data_type == Packet::SUPER_JSON {
                nesting::check_text(text.as_bytes(), MAX_VALUE_DEPTH).map_err(too_deep)?;
            }
            if data_type == Packet::JSON
                && !matches!(serde_json::from_str::<Value>(&text), Ok(Value::Object(_)))
            {
                return Err(invalid("options.metadata", "must be a JSON object"));
            }
            text
        }
        Some(_) => return Err(invalid("options.metadata", "must be a JSON object")),
    };
    if data.len() > MAX_METADATA_BYTES {
        return Err(TriggerError::MetadataTooLarge);
    }
    Ok(Some(Packet {
        data: Some(data),
        data_type,
    }))
}

fn idempotency(
    key: Option<String>,
    ttl: Option<String>,
    options: Option<IdempotencyKeyOptions>,
    now: DateTime<Utc>,
) -> Result<Option<IdempotencyClaim>, TriggerError> {
    // The options are checked even without a key, so a bad one is refused the same way
    // whatever else the request holds.
    if let Some(o) = &options {
        if o.key.len() > MAX_KEY_LEN {
            return Err(invalid(
                "options.idempotencyKeyOptions.key",
                format!("must be at most {MAX_KEY_LEN} characters"),
            ));
        }
        if let Some(scope) = o.scope.as_deref() {
            if !matches!(scope, "run" | "attempt" | "global") {
                return Err(invalid(
                    "options.idempotencyKeyOptions.scope",
                    "must be one of run, attempt, global",
                ));
            }
        }
    }
    let Some(key) = key.filter(|k| !k.is_empty()) else {
        return Ok(None);
    };
    if key.len() > MAX_KEY_LEN {
        return Err(invalid(
            "options.idempotencyKey",
            format!("must be at most {MAX_KEY_LEN} characters"),
        ));
    }
    let ttl_secs = ttl
        .as_deref()
        .and_then(parse_idempotency_ttl_secs)
        .unwrap_or(KEY_TTL_DEFAULT_SECS);
    let (user_key, scope) = match options {
        Some(o) => (Some(o.key), o.scope),
        None => (None, None),
    };
    Ok(Some(IdempotencyClaim {
        key,
        user_key,
        scope,
        expires_at: now + seconds(ttl_secs),
    }))
}

/// Seconds as a chrono duration, saturating far beyond any real date.
fn seconds(secs: u64) -> Duration {
    Duration::seconds(
        i64::try_from(secs)
            .unwrap_or(i64::MAX)
            .min(100 * 365 * 86400),
    )
}

fn delay(value: Option<Value>, now: DateTime<Utc>) -> Result<Option<DateTime<Utc>>, TriggerError> {
    let until = match value {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::String(s)) => {
            if let Some(secs) = parse_duration_secs(&s) {
                now + seconds(secs)
            } else if let Ok(date) = DateTime::parse_from_rfc3339(&s) {
                date.with_timezone(&Utc)
            } else {
                return Err(invalid(
                    "options.delay",
                    format!("{s:?} is neither a duration (like 30s, 1h30m) nor an ISO 8601 date"),
                ));
            }
        }
        Some(Value::Number(n)) => n
            .as_f64()
            .and_then(|ms| DateTime::from_timestamp_millis(ms as i64))
            .ok_or_else(|| invalid("options.delay", "is not a valid timestamp"))?,
        Some(_) => {
            return Err(invalid(
                "options.delay",
                "must be a duration string or a date",
            ))
        }
    };
    // A date that has already passed queues the run at once, as upstream does.
    Ok((until > now).then_some(until))
}

fn ttl(value: Option<Value>) -> Result<Option<Ttl>, TriggerError> {
    let ttl = match value {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::String(s)) => {
            let secs = parse_duration_secs(&s).ok_or_else(|| {
                invalid(
                    "options.ttl",
                    format!("{s:?} is not a duration like 10m, 1h42m or 3600s"),
                )
            })?;
            Ttl { display: s, secs }
        }
        Some(Value::Number(n)) => {
            let secs = n.as_u64().ok_or_else(|| {
                invalid(
                    "options.ttl",
                    "must be a whole number of seconds, 0 or more",
                )
            })?;
            Ttl {
                display: format_duration_secs(secs),
                secs,
            }
        }
        Some(_) => {
            return Err(invalid(
                "options.ttl",
                "must be a duration string or a number of seconds",
            ))
        }
    };
    // Zero means "no TTL".
    Ok((ttl.secs > 0).then_some(ttl))
}

/// Keeps `[a-zA-Z0-9_\-/]` (upstream sanitizes rather than refuses), at most 128 chars.
fn queue_name(name: &str) -> Result<String, TriggerError> {
    let clean: String = name
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '/'))
        .take(MAX_QUEUE_NAME_LEN)
        .collect();
    if clean.is_empty() {
        return Err(invalid(
            "options.queue.name",
            "must contain at least one of a-z, A-Z, 0-9, _, -, /",
        ));
    }
    Ok(clean)
}

impl ValidTrigger {
    /// The run this trigger creates in `environment` at `now`.
    pub fn into_run(self, id: RunId, environment_id: EnvironmentId, now: DateTime<Utc>) -> Run {
        let status = if self.delay_until.is_some() {
            RunStatus::Delayed
        } else {
            RunStatus::Queued
        };
        // The TTL clock starts when the run is queued: now, or at the end of its delay.
        let queued_at = self.delay_until.unwrap_or(now);
        let expire_at = self.ttl.as_ref().map(|ttl| queued_at + seconds(ttl.secs));
        let (
            idempotency_key,
            idempotency_key_user,
            idempotency_key_scope,
            idempotency_key_expires_at,
        ) = match self.idempotency {
            Some(c) => (Some(c.key), c.user_key, c.scope, Some(c.expires_at)),
            None => (None, None, None, None),
        };
        Run {
            id,
            environment_id,
            task_identifier: self.task_identifier,
            status,
            payload: self.payload,
            output: None,
            error: None,
            idempotency_key,
            idempotency_key_user,
            idempotency_key_scope,
            idempotency_key_expires_at,
            tags: self.tags,
            metadata: self.metadata,
            delay_until: self.delay_until,
            ttl: self.ttl.map(|t| t.display),
            expire_at,
            expired_at: None,
            max_attempts: self.max_attempts,
            max_duration_secs: self.max_duration_secs,
            machine: self.machine,
            priority_ms: self.priority_ms,
            is_test: self.is_test,
            // Built by `QueueName::for_task` or sanitized by `queue_name`: valid.
            queue: QueueName::from_trusted(self.queue),
            concurrency_key: self.concurrency_key,
            lock_to_version: self.lock_to_version,
            worker_version: None,
            created_at: now,
            updated_at: now,
            started_at: None,
            completed_at: None,
            attempt_count: 0,
            usage_duration_ms: 0,
            cost_in_cents: 0.0,
            base_cost_in_cents: 0.0,
            depth: 0,
            // Root and depth come from the parent run, once the engine has read it
            // ([`Run::link_to_parent`]).
            parent_run_id: self.parent_run_id,
            root_run_id: None,
            batch_id: None,
            resume_parent_on_completion: self.resume_parent_on_completion,
            schedule_id: None,
            queue_ts: queued_at.timestamp_millis() - i64::from(self.priority_ms),
            worker_id: None,
            current_attempt_id: None,
            lease_expires_at: None,
            timeout_at: None,
            next_attempt_at: None,
            failed_attempts: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-01-02T03:04:05Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    fn validate(body: Value) -> Result<ValidTrigger, TriggerError> {
        let request: TriggerRequest = serde_json::from_value(body).unwrap();
        request.validate("my-task", &IdempotencyHeaders::default(), now())
    }

    fn field_of(result: Result<ValidTrigger, TriggerError>) -> &'static str {
        match result {
            Err(TriggerError::Invalid { field, .. }) => field,
            other => panic!("expected a field error, got {other:?}"),
        }
    }

    #[test]
    fn minimal_trigger_queues_on_the_task_queue() {
        let t = validate(json!({"payload": {"n": 1}})).unwrap();
        assert_eq!(t.payload, Packet::json(&json!({"n": 1})));
        assert_eq!(t.queue, "task/my-task");
        let run = t.into_run(RunId::generate(0), EnvironmentId::generate(0), now());
        assert_eq!(run.status, RunStatus::Queued);
        assert_eq!(run.expire_at, None);
    }

    #[test]
    fn tags_are_trimmed_of_blanks_sorted_and_limited() {
        let t = validate(json!({"options": {"tags": ["b", " ", "a", "b"]}})).unwrap();
        assert_eq!(t.tags, vec!["a", "b"]);
        assert_eq!(
            validate(json!({"options": {"tags": "solo"}})).unwrap().tags,
            vec!["solo"]
        );
        let eleven: Vec<String> = (0..11).map(|i| format!("t{i}")).collect();
        assert_eq!(
            validate(json!({"options": {"tags": eleven}})),
            Err(TriggerError::TooManyTags(11))
        );
        assert_eq!(
            field_of(validate(json!({"options": {"tags": ["x".repeat(129)]}}))),
            "options.tags"
        );
        assert_eq!(
            field_of(validate(json!({"options": {"tags": [1]}}))),
            "options.tags"
        );
    }

    #[test]
    fn delay_accepts_durations_and_future_dates_and_ignores_past_dates() {
        let t = validate(json!({"options": {"delay": "1h"}})).unwrap();
        assert_eq!(t.delay_until, Some(now() + Duration::hours(1)));
        let t = validate(json!({"options": {"delay": "2026-01-03T00:00:00Z"}})).unwrap();
        assert_eq!(
            t.delay_until.unwrap().to_rfc3339(),
            "2026-01-03T00:00:00+00:00"
        );
        let t = validate(json!({"options": {"delay": "2020-01-01T00:00:00Z"}})).unwrap();
        assert_eq!(t.delay_until, None);
        assert_eq!(
            field_of(validate(json!({"options": {"delay": "soon"}}))),
            "options.delay"
        );
    }

    #[test]
    fn delayed_run_ttl_counts_from_the_end_of_the_delay() {
        let t = validate(json!({"options": {"delay": "1h", "ttl": "10m"}})).unwrap();
        let run = t.into_run(RunId::generate(0), EnvironmentId::generate(0), now());
        assert_eq!(run.status, RunStatus::Delayed);
        assert_eq!(run.expire_at, Some(now() + Duration::minutes(70)));
    }

    #[test]
    fn ttl_is_echoed_as_a_string() {
        let cases = [
            (json!("1h42m"), Some("1h42m")),
            (json!(3600), Some("1h")),
            (json!(0), None),
            (json!("0s"), None),
        ];
        for (ttl, want) in cases {
            let t = validate(json!({"options": {"ttl": ttl}})).unwrap();
            assert_eq!(t.ttl.map(|t| t.display).as_deref(), want, "{ttl}");
        }
        assert_eq!(
            field_of(validate(json!({"options": {"ttl": "forever"}}))),
            "options.ttl"
        );
        assert_eq!(
            field_of(validate(json!({"options": {"ttl": -1}}))),
            "options.ttl"
        );
    }

    #[test]
    fn numeric_options_are_clamped_or_refused() {
        let t =
            validate(json!({"options": {"maxDuration": 1, "priority": 1.5, "maxAttempts": 999}}))
                .unwrap();
        assert_eq!(t.max_duration_secs, Some(5));
        assert_eq!(t.priority_ms, 1500);
        assert_eq!(t.max_attempts, Some(250));
        let t = validate(json!({"options": {"maxDuration": 1e12}})).unwrap();
        assert_eq!(t.max_duration_secs, Some(2_147_483_647));
        assert_eq!(
            field_of(validate(json!({"options": {"maxAttempts": 0}}))),
            "options.maxAttempts"
        );
        let t = validate(json!({"options": {"priority": -2147483.647}})).unwrap();
        assert_eq!(t.priority_ms, i32::MIN + 1);
        let t = validate(json!({"options": {"priority": 0.0004}})).unwrap();
        assert_eq!(t.priority_ms, 0);
        for priority in [2147483.648, -2147483.648, 1e300] {
            let Err(TriggerError::Invalid { field, message }) =
                validate(json!({"options": {"priority": priority}}))
            else {
                panic!("priority {priority} was accepted");
            };
            assert_eq!(
                (field, message.as_str()),
                (
                    "options.priority",
                    "must be between -2147483.647 and 2147483.647 seconds"
                )
            );
        }
        assert_eq!(
            field_of(validate(json!({"options": {"machine": "huge"}}))),
            "options.machine"
        );
    }

    #[test]
    fn idempotency_key_from_body_or_header_with_ttl() {
        let t = validate(json!({"options": {"idempotencyKey": "k", "idempotencyKeyTTL": "5s"}}))
            .unwrap();
        let claim = t.idempotency.unwrap();
        assert_eq!(claim.key, "k");
        assert_eq!(claim.expires_at, now() + Duration::seconds(5));
        let t = validate(json!({"options": {"idempotencyKey": "k", "idempotencyKeyTTL": "bogus"}}))
            .unwrap();
        assert_eq!(
            t.idempotency.unwrap().expires_at,
            now() + Duration::days(30)
        );

        let headers = IdempotencyHeaders {
            key: Some("from-header".into()),
            ttl: Some("1h".into()),
        };
        let t = TriggerRequest::default()
            .validate("t", &headers, now())
            .unwrap();
        let claim = t.idempotency.unwrap();
        assert_eq!(claim.key, "from-header");
        assert_eq!(claim.expires_at, now() + Duration::hours(1));

        let long = "k".repeat(2049);
        assert_eq!(
            field_of(validate(json!({"options": {"idempotencyKey": long}}))),
            "options.idempotencyKey"
        );
    }

    /// Bounds the OpenAPI document states hold whatever else the request holds: the
    /// idempotency key options without a key, a long blank version.
    #[test]
    fn stated_bounds_hold_without_the_fields_they_go_with() {
        let long = "k".repeat(MAX_KEY_LEN + 1);
        assert_eq!(
            field_of(validate(
                json!({"options": {"idempotencyKeyOptions": {"key": long}}})
            )),
            "options.idempotencyKeyOptions.key"
        );
        assert_eq!(
            field_of(validate(
                json!({"options": {"idempotencyKeyOptions": {"key": "k", "scope": "forever"}}})
            )),
            "options.idempotencyKeyOptions.scope"
        );
        assert_eq!(
            field_of(validate(
                json!({"options": {"lockToVersion": " ".repeat(129)}})
            )),
            "options.lockToVersion"
        );
        let blank = validate(json!({"options": {"lockToVersion": " ".repeat(128)}})).unwrap();
        assert_eq!(blank.lock_to_version, None);
    }

    #[test]
    fn payload_types() {
        let t = validate(json!({"payload": "{\"json\":{\"a\":1}}", "options": {"payloadType": "application/super+json"}})).unwrap();
        assert_eq!(t.payload.to_value(), Some(json!({"a": 1})));
        assert_eq!(
            field_of(validate(
                json!({"payload": {"a": 1}, "options": {"payloadType": "text/plain"}})
            )),
            "payload"
        );
        let stored = validate(
            json!({"payload": "p/x.json", "options": {"payloadType": "application/store"}}),
        )
        .unwrap();
        assert_eq!(stored.payload.data.as_deref(), Some("p/x.json"));
        assert_eq!(stored.payload.data_type, Packet::STORE);
        for bad in [json!("../x"), json!("a//b"), json!({"a": 1}), json!(null)] {
            assert_eq!(
                field_of(validate(
                    json!({"payload": bad, "options": {"payloadType": "application/store"}})
                )),
                "payload"
            );
        }
    }

    #[test]
    fn metadata_limits() {
        let t = validate(json!({"options": {"metadata": {"a": 1}}})).unwrap();
        assert_eq!(t.metadata.unwrap().to_value(), Some(json!({"a": 1})));
        let t = validate(
            json!({"options": {"metadata": "{\"b\":2}", "metadataType": "application/json"}}),
        )
        .unwrap();
        assert_eq!(t.metadata.unwrap().to_value(), Some(json!({"b": 2})));
        let big = "x".repeat(MAX_METADATA_BYTES);
        assert_eq!(
            validate(json!({"options": {"metadata": {"big": big}}})),
            Err(TriggerError::MetadataTooLarge)
        );
        assert_eq!(
            field_of(validate(json!({"options": {"metadata": [1]}}))),
            "options.metadata"
        );
    }

    #[test]
    fn payloads_and_metadata_nest_at_most_the_value_limit() {
        /// `{"a":{"a":…1…}}`, `depth` objects deep.
        fn deep(depth: usize) -> Value {
            let text = "{\"a\":".repeat(depth) + "1" + &"}".repeat(depth);
            serde_json::from_str(&text).unwrap()
        }
        let limit = MAX_VALUE_DEPTH;
        let too_deep = format!(
            "nested {} levels deep, more than the limit of {limit}",
            limit + 1
        );
        let accepted = [
            json!({"payload": deep(limit)}),
            json!({"options": {"metadata": deep(limit)}}),
            json!({"options": {"metadata": deep(limit).to_string()}}),
        ];
        for body in accepted {
            assert!(validate(body.clone()).is_ok(), "{body}");
        }
        let refused = [
            (json!({"payload": deep(limit + 1)}), "payload"),
            (
                json!({"payload": json!({"json": deep(limit)}).to_string(),
                       "options": {"payloadType": "application/super+json"}}),
                "payload",
            ),
            (
                json!({"options": {"metadata": deep(limit + 1)}}),
                "options.metadata",
            ),
            (
                json!({"options": {"metadata": deep(limit + 1).to_string()}}),
                "options.metadata",
            ),
        ];
        for (body, field) in refused {
            assert_eq!(
                validate(body.clone()),
                Err(TriggerError::Invalid {
                    field,
                    message: too_deep.clone()
                }),
                "{body}"
            );
        }
    }

    #[test]
    fn queue_names_are_sanitized() {
        let t = validate(json!({"options": {"queue": {"name": "emails high!"}}})).unwrap();
        assert_eq!(t.queue, "emailshigh");
        assert_eq!(
            field_of(validate(json!({"options": {"queue": {"name": "!!"}}}))),
            "options.queue.name"
        );
    }

    #[test]
    fn nul_characters_are_refused_wherever_text_is_stored_raw() {
        let nul = "a\u{0}b";
        let cases = [
            (
                json!({"payload": nul, "options": {"payloadType": "text/plain"}}),
                "payload",
            ),
            (
                json!({"options": {"idempotencyKey": nul}}),
                "options.idempotencyKey",
            ),
            (json!({"options": {"tags": [nul]}}), "options.tags"),
            (
                json!({"options": {"concurrencyKey": nul}}),
                "options.concurrencyKey",
            ),
            (
                json!({"options": {"lockToVersion": nul}}),
                "options.lockToVersion",
            ),
        ];
        for (body, field) in cases {
            assert_eq!(field_of(validate(body)), field);
        }
        // Inside JSON it is escaped, so it is fine.
        assert!(validate(json!({"payload": {"s": nul}})).is_ok());
        assert!(validate(json!({"payload": nul})).is_ok());
        assert!(validate_task_identifier(nul).is_err());
    }

    #[test]
    fn task_identifier_rules() {
        assert!(validate_task_identifier("email/send-welcome").is_ok());
        assert!(validate_task_identifier("").is_err());
        assert!(validate_task_identifier("has space").is_err());
        assert!(validate_task_identifier(&"t".repeat(129)).is_err());
    }
}
