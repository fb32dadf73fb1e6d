//! OTLP/HTTP ingest (`POST /otel/v1/traces`, `/otel/v1/logs`, `/otel/v1/metrics`): what a
//! `trigger.dev` task process exports about its run (reference
//! `trigger-dev-cli-protocol.md` §5).
//!
//! The task process sends no `Authorization` header (the guard only looks at `/api`), so
//! nothing is trusted but the run ids the records name: each log record and span is
//! attributed to a run ([`run_of`]), and the store keeps only the events of runs that
//! exist, in the run's own environment (`runnel_store::events`). The rest is dropped
//! quietly, counted in a debug log: a failed export only ever shows inside the task
//! process, and must not make it retry.
//!
//! Bodies are OTLP JSON (what the 4.8.3 task process sends, `Content-Type:
//! application/json`) or protobuf (`application/x-protobuf`), decoded into the
//! `opentelemetry-proto` message types. A body that does not decode is 400 with a JSON
//! error; a good one is 200 with an empty export response in the request's encoding
//! (`{}`, or zero protobuf bytes).
//!
//! Attribution, first match wins:
//! 1. the record's attribute `$metadata.ctx.run.id` (the task context the SDK stamps on
//!    every span and log record it makes during a run), else `ctx.run.id` (the attempt
//!    span's own), else the same keys among the resource's attributes;
//! 2. a span of the same request that names a run: a log record's span, a span's parent;
//! 3. the trace: when the spans of the request that name a run and share the record's
//!    trace id all name the same run.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::header::{CONTENT_ENCODING, CONTENT_TYPE};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::trace::v1::span::Event as SpanEvent;
use prost::Message;
use runnel_core::RunId;
use runnel_engine::events::{EventKind, NewRunEvent};
use serde::de::DeserializeOwned;
use serde_json::{json, Map, Value};

use crate::error::ApiError;
use crate::state::AppState;

/// The attribute the SDK's task context puts on every span and log record of a run.
pub const RUN_ID_METADATA: &str = "$metadata.ctx.run.id";
/// The run id as the attempt span (and the resource, when set) carries it.
pub const RUN_ID: &str = "ctx.run.id";
/// Marks the early copy of a span still running; `$span.span_id` names the real span.
const SPAN_PARTIAL: &str = "$span.partial";
const SPAN_PARTIAL_OF: &str = "$span.span_id";
/// OTLP's error status code of a span.
const STATUS_ERROR: i64 = 2;

/// How a request's body is encoded; the response uses the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Encoding {
    Json,
    Protobuf,
}

impl Encoding {
    /// Protobuf when the content type says so; JSON otherwise (the OTLP/HTTP JSON the
    /// task process sends, and any body that does not name its type).
    fn of(headers: &HeaderMap) -> Result<Encoding, ApiError> {
        if let Some(encoding) = headers.get(CONTENT_ENCODING) {
            if !encoding.as_bytes().eq_ignore_ascii_case(b"identity") {
                return Err(ApiError::UnsupportedMediaType(format!(
                    "Content-Encoding {} is not supported; send OTLP uncompressed",
                    String::from_utf8_lossy(encoding.as_bytes())
                )));
            }
        }
        let content_type = headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_ascii_lowercase();
        Ok(if content_type.starts_with("application/x-protobuf") {
            Encoding::Protobuf
        } else {
            Encoding::Json
        })
    }

    fn decode<T: Message + Default + DeserializeOwned>(self, body: &[u8]) -> Result<T, ApiError> {
        match self {
            Encoding::Protobuf => T::decode(body)
                .map_err(|e| ApiError::BadRequest(format!("invalid OTLP protobuf body: {e}"))),
            Encoding::Json => serde_json::from_slice(body)
                .map_err(|e| ApiError::BadRequest(format!("invalid OTLP JSON body: {e}"))),
        }
    }

    /// The 200 answer: the empty export response `empty` in this encoding.
    fn answer<T: Message>(self, empty: T) -> Response {
        match self {
            Encoding::Json => (
                StatusCode::OK,
                [(CONTENT_TYPE, HeaderValue::from_static("application/json"))],
                "{}",
            )
                .into_response(),
            Encoding::Protobuf => (
                StatusCode::OK,
                [(
                    CONTENT_TYPE,
                    HeaderValue::from_static("application/x-protobuf"),
                )],
                empty.encode_to_vec(),
            )
                .into_response(),
        }
    }
}

/// `POST /otel/v1/traces`: stores the spans of existing runs.
pub(crate) async fn traces(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let encoding = Encoding::of(&headers)?;
    let request: ExportTraceServiceRequest = encoding.decode(&body)?;
    let (events, unattributed) = span_events(&request);
    store(&state, "spans", events, unattributed).await?;
    Ok(encoding.answer(ExportTraceServiceResponse::default()))
}

/// `POST /otel/v1/logs`: stores the log records of existing runs.
pub(crate) async fn logs(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let encoding = Encoding::of(&headers)?;
    let request: ExportLogsServiceRequest = encoding.decode(&body)?;
    let (events, unattributed) = log_events(&request);
    store(&state, "log records", events, unattributed).await?;
    Ok(encoding.answer(ExportLogsServiceResponse::default()))
}

/// `POST /otel/v1/metrics`: accepted and dropped. The task process exports host and
/// Node.js runtime metrics every 30 s; nothing in Runnel reads them yet, so the body is
/// only checked to be an OTLP metrics request (a bad one is 400, like the other signals).
pub(crate) async fn metrics(headers: HeaderMap, body: Bytes) -> Result<Response, ApiError> {
    let encoding = Encoding::of(&headers)?;
    let _: ExportMetricsServiceRequest = encoding.decode(&body)?;
    Ok(encoding.answer(ExportMetricsServiceResponse::default()))
}

async fn store(
    state: &AppState,
    what: &str,
    events: Vec<NewRunEvent>,
    unattributed: usize,
) -> Result<(), ApiError> {
    let received = events.len();
    let stored = if events.is_empty() {
        0
    } else {
        state.engine.run_events_ingest(&events).await?
    };
    tracing::debug!(
        what,
        received = received + unattributed,
        unattributed,
        stored,
        "otlp export ingested (the rest named no run, a missing run, or a run at its cap)"
    );
    Ok(())
}

/// An attribute value as JSON: strings, booleans and numbers as themselves, arrays and
/// key-value lists as arrays and objects, bytes as lowercase hex.
fn any_value_json(value: Option<&AnyValue>) -> Value {
    match value.and_then(|v| v.value.as_ref()) {
        None => Value::Null,
        Some(any_value::Value::StringValue(s)) => json!(s),
        Some(any_value::Value::BoolValue(b)) => json!(b),
        Some(any_value::Value::IntValue(n)) => json!(n),
        Some(any_value::Value::DoubleValue(x)) => json!(x),
        Some(any_value::Value::ArrayValue(array)) => Value::Array(
            array
                .values
                .iter()
                .map(|v| any_value_json(Some(v)))
                .collect(),
        ),
        Some(any_value::Value::KvlistValue(list)) => Value::Object(attributes_json(&list.values)),
        Some(any_value::Value::BytesValue(bytes)) => json!(hex(bytes)),
        #[allow(unreachable_patterns)]
        Some(_) => Value::Null,
    }
}

fn attributes_json(attributes: &[KeyValue]) -> Map<String, Value> {
    attributes
        .iter()
        .map(|kv| (kv.key.clone(), any_value_json(kv.value.as_ref())))
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The run a record's attributes (or its resource's) name, when it is a run id.
fn named_run(attributes: &Map<String, Value>, resource: &Map<String, Value>) -> Option<RunId> {
    [attributes, resource]
        .into_iter()
        .flat_map(|map| [map.get(RUN_ID_METADATA), map.get(RUN_ID)])
        .flatten()
        .find_map(|value| value.as_str().and_then(RunId::parse))
}

/// Which run the spans of one request belong to, by span and by trace, for the records
/// that name none themselves.
#[derive(Debug, Default)]
struct Links {
    by_span: HashMap<String, RunId>,
    /// `None`: spans of several runs share the trace (a `triggerAndWait` child's spans
    /// join its parent's trace), so the trace alone says nothing.
    by_trace: HashMap<String, Option<RunId>>,
}

impl Links {
    fn add(&mut self, trace_id: &str, span_id: &str, run: &RunId) {
        if !span_id.is_empty() {
            self.by_span.insert(span_id.to_owned(), run.clone());
        }
        if !trace_id.is_empty() {
            self.by_trace
                .entry(trace_id.to_owned())
                .and_modify(|known| {
                    if known.as_ref() != Some(run) {
                        *known = None;
                    }
                })
                .or_insert_with(|| Some(run.clone()));
        }
    }

    /// The run of span `span_id`, else the one run of trace `trace_id`.
    fn run_of(&self, trace_id: &str, span_id: Option<&str>) -> Option<RunId> {
        span_id
            .and_then(|span| self.by_span.get(span).cloned())
            .or_else(|| self.by_trace.get(trace_id).cloned().flatten())
    }
}

/// The run a record belongs to (the module doc's order).
fn run_of(
    named: Option<RunId>,
    links: &Links,
    trace_id: &str,
    linked_span: Option<&str>,
) -> Option<RunId> {
    named.or_else(|| links.run_of(trace_id, linked_span))
}

/// A log level of the record's severity: the SDK's `logger.log` says `log`; otherwise
/// the OTLP severity number's range (1–4 TRACE, 5–8 DEBUG, 9–12 INFO, 13–16 WARN,
/// 17–24 ERROR), else its text.
fn log_level(severity_number: i32, severity_text: &str) -> String {
    if severity_text.eq_ignore_ascii_case("log") {
        return "LOG".to_owned();
    }
    match severity_number {
        1..=4 => "TRACE",
        5..=8 => "DEBUG",
        9..=12 => "INFO",
        13..=16 => "WARN",
        17..=24 => "ERROR",
        _ => match severity_text.to_ascii_lowercase().as_str() {
            "trace" => "TRACE",
            "debug" => "DEBUG",
            "warn" | "warning" => "WARN",
            "error" | "fatal" => "ERROR",
            _ => "INFO",
        },
    }
    .to_owned()
}

/// A log record's message: its body's text (other bodies as JSON).
fn log_message(body: Option<&AnyValue>) -> String {
    match any_value_json(body) {
        Value::String(text) => text,
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn nanos(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn span_events_json(events: &[SpanEvent]) -> Value {
    Value::Array(
        events
            .iter()
            .map(|event| {
                json!({
                    "name": event.name,
                    "timeUnixNano": nanos(event.time_unix_nano),
                    "attributes": attributes_json(&event.attributes),
                })
            })
            .collect(),
    )
}

/// The spans of an export request as events of the runs they belong to, and how many
/// belong to none.
fn span_events(request: &ExportTraceServiceRequest) -> (Vec<NewRunEvent>, usize) {
    struct Pending {
        named: Option<RunId>,
        event: NewRunEvent,
    }
    let mut links = Links::default();
    let mut pending = Vec::new();
    for resource_spans in &request.resource_spans {
        let resource = resource_spans
            .resource
            .as_ref()
            .map(|r| attributes_json(&r.attributes))
            .unwrap_or_default();
        for span in resource_spans.scope_spans.iter().flat_map(|s| &s.spans) {
            let attributes = attributes_json(&span.attributes);
            let trace_id = hex(&span.trace_id);
            let own_id = hex(&span.span_id);
            let partial = attributes.get(SPAN_PARTIAL) == Some(&Value::Bool(true));
            // A partial copy stands for the real span: stored under its id.
            let span_id = match attributes.get(SPAN_PARTIAL_OF).and_then(Value::as_str) {
                Some(real) if partial => real.to_owned(),
                _ => own_id,
            };
            let named = named_run(&attributes, &resource);
            if let Some(run) = &named {
                links.add(&trace_id, &span_id, run);
            }
            let start_ns = nanos(span.start_time_unix_nano);
            let end_ns = nanos(span.end_time_unix_nano).max(start_ns);
            let status_code = span.status.as_ref().map_or(0, |s| i64::from(s.code));
            let parent_span_id = Some(hex(&span.parent_span_id)).filter(|p| !p.is_empty());
            pending.push(Pending {
                named,
                event: NewRunEvent {
                    // Replaced below by the run the span belongs to.
                    run_id: RunId::from_trusted(String::new()),
                    kind: if partial {
                        EventKind::PartialSpan
                    } else {
                        EventKind::Span
                    },
                    trace_id,
                    span_id,
                    parent_span_id,
                    name: span.name.clone(),
                    level: if status_code == STATUS_ERROR {
                        "ERROR"
                    } else {
                        "TRACE"
                    }
                    .to_owned(),
                    start_ns,
                    duration_ns: end_ns - start_ns,
                    status_code,
                    attributes: Value::Object(attributes),
                    events: Some(span_events_json(&span.events)),
                },
            });
        }
    }
    let total = pending.len();
    let events: Vec<NewRunEvent> = pending
        .into_iter()
        .filter_map(|Pending { named, mut event }| {
            event.run_id = run_of(
                named,
                &links,
                &event.trace_id,
                event.parent_span_id.as_deref(),
            )?;
            Some(event)
        })
        .collect();
    let unattributed = total - events.len();
    (events, unattributed)
}

/// The log records of an export request as events of the runs they belong to, and how
/// many belong to none.
fn log_events(request: &ExportLogsServiceRequest) -> (Vec<NewRunEvent>, usize) {
    // Logs link to spans of other requests only through their own attributes, which
    // the SDK always sets; a request of logs has no spans to link through.
    let links = Links::default();
    let mut events = Vec::new();
    let mut total = 0;
    for resource_logs in &request.resource_logs {
        let resource = resource_logs
            .resource
            .as_ref()
            .map(|r| attributes_json(&r.attributes))
            .unwrap_or_default();
        for record in resource_logs.scope_logs.iter().flat_map(|s| &s.log_records) {
            total += 1;
            let attributes = attributes_json(&record.attributes);
            let trace_id = hex(&record.trace_id);
            let span_id = hex(&record.span_id);
            let Some(run_id) = run_of(
                named_run(&attributes, &resource),
                &links,
                &trace_id,
                Some(&span_id),
            ) else {
                continue;
            };
            let time = if record.time_unix_nano != 0 {
                record.time_unix_nano
            } else {
                record.observed_time_unix_nano
            };
            let level = log_level(record.severity_number, &record.severity_text);
            events.push(NewRunEvent {
                run_id,
                kind: EventKind::Log,
                trace_id,
                span_id,
                parent_span_id: None,
                name: log_message(record.body.as_ref()),
                status_code: if level == "ERROR" { STATUS_ERROR } else { 0 },
                level,
                start_ns: nanos(time),
                duration_ns: 0,
                attributes: Value::Object(attributes),
                events: None,
            });
        }
    }
    let unattributed = total - events.len();
    (events, unattributed)
}

#[cfg(test)]
mod tests {
    use super::*;

    const RUN: &str = "run_cmf0u3ej2000a0ds6d6b3ww1x";
    const OTHER: &str = "run_cmf0u3ej2000b0ds6d6b3ww1y";

    fn spans(body: Value) -> (Vec<NewRunEvent>, usize) {
        span_events(&serde_json::from_value(body).expect("an OTLP JSON trace request"))
    }

    fn span(span_id: &str, parent: Option<&str>, trace: &str, attributes: Value) -> Value {
        let mut span = json!({
            "traceId": trace, "spanId": span_id, "name": format!("span {span_id}"),
            "kind": 1, "startTimeUnixNano": "1767322245000000000",
            "endTimeUnixNano": "1767322246500000000",
            "attributes": attributes, "status": {"code": 0},
        });
        if let Some(parent) = parent {
            span["parentSpanId"] = json!(parent);
        }
        span
    }

    fn attr(key: &str, value: &str) -> Value {
        json!({"key": key, "value": {"stringValue": value}})
    }

    const T1: &str = "0af7651916cd43dd8448eb211c80319c";
    const T2: &str = "1af7651916cd43dd8448eb211c80319c";

    #[test]
    fn spans_are_attributed_by_their_attributes_then_by_parent_then_by_trace() {
        let (events, unattributed) = spans(json!({"resourceSpans": [{
            "resource": {"attributes": [attr("ctx.environment.id", "env_1")]},
            "scopeSpans": [{"scope": {"name": "trigger.dev"}, "spans": [
                span("00f067aa0ba902b7", None, T1, json!([attr(RUN_ID, RUN)])),
                span("10f067aa0ba902b7", Some("00f067aa0ba902b7"), T1,
                     json!([attr(RUN_ID_METADATA, RUN)])),
                // No run of its own: its parent's.
                span("20f067aa0ba902b7", Some("10f067aa0ba902b7"), T1, json!([])),
                // No run, unknown parent, a trace of one run: that run's.
                span("30f067aa0ba902b7", Some("ffffffffffffffff"), T1, json!([])),
                // A trace shared by two runs says nothing.
                span("40f067aa0ba902b7", None, T2, json!([attr(RUN_ID_METADATA, RUN)])),
                span("50f067aa0ba902b7", None, T2, json!([attr(RUN_ID_METADATA, OTHER)])),
                span("60f067aa0ba902b7", Some("eeeeeeeeeeeeeeee"), T2, json!([])),
                // Not a run id at all.
                span("70f067aa0ba902b7", None, "", json!([attr(RUN_ID, "nonsense")])),
            ]}],
        }]}));
        let got: Vec<(&str, &str)> = events
            .iter()
            .map(|e| (e.span_id.as_str(), e.run_id.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("00f067aa0ba902b7", RUN),
                ("10f067aa0ba902b7", RUN),
                ("20f067aa0ba902b7", RUN),
                ("30f067aa0ba902b7", RUN),
                ("40f067aa0ba902b7", RUN),
                ("50f067aa0ba902b7", OTHER),
            ]
        );
        assert_eq!(unattributed, 2);
        assert_eq!(events[0].duration_ns, 1_500_000_000);
        assert_eq!(
            events[1].parent_span_id.as_deref(),
            Some("00f067aa0ba902b7")
        );
        assert_eq!(events[0].parent_span_id, None);
    }

    #[test]
    fn a_partial_span_is_stored_under_the_real_span_id() {
        let partial = json!([
            attr(RUN_ID_METADATA, RUN),
            {"key": SPAN_PARTIAL, "value": {"boolValue": true}},
            attr(SPAN_PARTIAL_OF, "abcdef0123456789"),
        ]);
        let (events, _) = spans(json!({"resourceSpans": [{"scopeSpans": [{"spans": [
            span("0000000000000001", None, T1, partial),
        ]}]}]}));
        assert_eq!(events[0].kind, EventKind::PartialSpan);
        assert_eq!(events[0].span_id, "abcdef0123456789");
    }

    #[test]
    fn log_records_take_level_message_time_and_run_from_the_sdk_attributes() {
        let request: ExportLogsServiceRequest = serde_json::from_value(json!({"resourceLogs": [{
            "resource": {"attributes": [attr("service.name", "trigger.dev")]},
            "scopeLogs": [{"scope": {"name": "trigger.dev"}, "logRecords": [
                {"timeUnixNano": "1767322245123000000", "observedTimeUnixNano": "1767322245124000000",
                 "severityNumber": 9, "severityText": "info", "body": {"stringValue": "hello"},
                 "attributes": [attr(RUN_ID_METADATA, RUN), {"key": "n", "value": {"intValue": "3"}}],
                 "traceId": T1, "spanId": "00f067aa0ba902b7", "droppedAttributesCount": 0},
                {"timeUnixNano": "1767322245200000000", "severityNumber": 13, "severityText": "warn",
                 "body": {"stringValue": "careful"}, "attributes": [attr(RUN_ID_METADATA, RUN)]},
                {"observedTimeUnixNano": "1767322245300000000", "severityNumber": 17,
                 "severityText": "error", "body": {"kvlistValue": {"values": [attr("a", "b")]}},
                 "attributes": [attr(RUN_ID_METADATA, RUN)]},
                {"timeUnixNano": "1767322245400000000", "severityNumber": 9, "severityText": "log",
                 "body": {"stringValue": "plain"}, "attributes": [attr(RUN_ID_METADATA, RUN)]},
                {"timeUnixNano": "1767322245500000000", "severityNumber": 9,
                 "body": {"stringValue": "whose?"}, "attributes": []},
            ]}],
        }]}))
        .expect("an OTLP JSON logs request");
        let (events, unattributed) = log_events(&request);
        assert_eq!(unattributed, 1);
        let got: Vec<(&str, &str, i64)> = events
            .iter()
            .map(|e| (e.level.as_str(), e.name.as_str(), e.start_ns))
            .collect();
        assert_eq!(
            got,
            [
                ("INFO", "hello", 1_767_322_245_123_000_000),
                ("WARN", "careful", 1_767_322_245_200_000_000),
                ("ERROR", r#"{"a":"b"}"#, 1_767_322_245_300_000_000),
                ("LOG", "plain", 1_767_322_245_400_000_000),
            ]
        );
        assert_eq!(events[0].attributes["n"], json!(3));
        assert_eq!(events[0].span_id, "00f067aa0ba902b7");
        assert_eq!(events[2].status_code, STATUS_ERROR);
        assert!(events.iter().all(|e| e.run_id.as_str() == RUN));
    }
}
