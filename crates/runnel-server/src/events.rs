//! A run's log lines and spans, read back (docs/api.md, "Run events and trace"):
//!
//! - `GET /api/v1/runs/{runId}/events`: every event in time order (`runs.listEvents`,
//!   which the SDK passes through unparsed), or a page of them with `page[size]` /
//!   `page[after]`, optionally `filter[kind]=log|span` (what `runnel runs logs` reads);
//! - `GET /api/v1/runs/{runId}/trace`: the span tree as `@trigger.dev/core` 4.8.3's
//!   `RetrieveRunTraceResponseBody` parses it (`runs.retrieveTrace`), or with
//!   `page[size]` / `page[after]` the flat pages of `RetrieveRunTracePageResponseBody`.
//!
//! Both are scoped to the key's environment: another environment's run is 404 like a
//! missing one. The trace's root is the run itself (the task process never exports the
//! run's span; its attempt spans name it as their parent): the run's task, times and
//! status, with every stored span and log line below it, a log line under the span it
//! was logged in.

use std::collections::HashMap;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::Json;
use chrono::{DateTime, SecondsFormat, Utc};
use runnel_core::list::QueryIssue;
use runnel_core::run::Run;
use runnel_core::{RunId, RunStatus};
use runnel_engine::events::{
    EventCursor, EventKind, RunEvent, RunEventQuery, RUN_EVENTS_MAX_PER_RUN,
};
use serde::Serialize;
use serde_json::{json, Map, Value};

use crate::auth::Authenticated;
use crate::error::ApiError;
use crate::extract;
use crate::state::AppState;

const RUN_NOT_FOUND: &str = "Run not found";

/// Most events one read returns: every event a run can hold (the cap, plus the one
/// export request that may pass it).
pub const EVENTS_READ_MAX: u32 = 2 * RUN_EVENTS_MAX_PER_RUN as u32;

type RawQuery = Result<Query<Vec<(String, String)>>, QueryRejection>;

/// The paging and filter of an events or trace read.
#[derive(Debug, Default)]
struct Paging {
    size: Option<u32>,
    after: Option<EventCursor>,
    kinds: Vec<EventKind>,
}

impl Paging {
    fn is_paged(&self) -> bool {
        self.size.is_some() || self.after.is_some()
    }

    fn parse(query: RawQuery, with_kinds: bool) -> Result<Paging, ApiError> {
        let issue = |key: &str, message: String| {
            ApiError::Query(vec![QueryIssue {
                code: "custom",
                message,
                path: vec![key.to_owned()],
            }])
        };
        let Query(pairs) = query.map_err(|rejection| issue("query", rejection.body_text()))?;
        let mut paging = Paging::default();
        for (key, value) in pairs {
            match key.as_str() {
                "page[size]" => match value.parse::<u32>() {
                    Ok(size) if (1..=EVENTS_READ_MAX).contains(&size) => paging.size = Some(size),
                    _ => {
                        return Err(issue(
                            &key,
                            format!("Expected an integer from 1 to {EVENTS_READ_MAX}"),
                        ))
                    }
                },
                "page[after]" => {
                    paging.after = Some(value.parse().map_err(|e: String| issue(&key, e))?)
                }
                "filter[kind]" if with_kinds => {
                    for kind in value.split(',') {
                        match kind.trim() {
                            "log" => paging.kinds.push(EventKind::Log),
                            "span" => paging
                                .kinds
                                .extend([EventKind::Span, EventKind::PartialSpan]),
                            other => {
                                return Err(issue(
                                    &key,
                                    format!("Unknown kind {other:?}: expected log or span"),
                                ))
                            }
                        }
                    }
                }
                // Other parameters are ignored, as the list endpoint's unknown ones are.
                _ => {}
            }
        }
        Ok(paging)
    }
}

/// Finds the run of the caller's environment and reads its events.
async fn run_and_events(
    state: &AppState,
    environment: &runnel_core::tenancy::Environment,
    raw: &str,
    query: &RunEventQuery,
) -> Result<(Run, Vec<RunEvent>), ApiError> {
    let not_found = || ApiError::Missing(RUN_NOT_FOUND.to_owned());
    let id: RunId = extract::run_id(raw, not_found)?;
    let run = state
        .engine
        .run_get(environment, &id)
        .await?
        .ok_or_else(not_found)?;
    let events = state.engine.run_events(environment, &id, query).await?;
    Ok((run, events))
}

fn iso(ns: i64) -> String {
    DateTime::<Utc>::from_timestamp_nanos(ns).to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

fn ms(ns: i64) -> f64 {
    ns as f64 / 1_000_000.0
}

/// The attributes worth showing: not the SDK's own (`$…`) nor the task context
/// (`ctx.…`), which every record repeats.
fn properties(attributes: &Value) -> Map<String, Value> {
    match attributes {
        Value::Object(map) => map
            .iter()
            .filter(|(key, _)| !key.starts_with('$') && !key.starts_with("ctx."))
            .map(|(key, value)| (key.clone(), value.clone()))
            .collect(),
        _ => Map::new(),
    }
}

fn context<'a>(attributes: &'a Value, key: &str) -> Option<&'a Value> {
    attributes
        .get(format!("$metadata.{key}"))
        .or_else(|| attributes.get(key))
}

/// A span's events as the SDK's `SpanEvent`s: `{name, time, properties}`, an exception's
/// `exception.*` attributes gathered as `properties.exception`.
fn span_events(events: Option<&Value>) -> Vec<Value> {
    let Some(Value::Array(events)) = events else {
        return Vec::new();
    };
    events
        .iter()
        .map(|event| {
            let attributes = event["attributes"].as_object().cloned().unwrap_or_default();
            let mut properties = Map::new();
            let mut exception = Map::new();
            for (key, value) in attributes {
                match key.strip_prefix("exception.") {
                    Some(field) => {
                        exception.insert(field.to_owned(), value);
                    }
                    None => {
                        properties.insert(key, value);
                    }
                }
            }
            if !exception.is_empty() {
                properties.insert("exception".to_owned(), Value::Object(exception));
            }
            json!({
                "name": event["name"],
                "time": iso(event["timeUnixNano"].as_i64().unwrap_or(0)),
                "properties": properties,
            })
        })
        .collect()
}

/// Where the run stands for its events: when it ended (`None`: still going) and how.
struct RunEnd {
    completed_at: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
}

impl RunEnd {
    fn of(run: &Run, now: DateTime<Utc>) -> RunEnd {
        RunEnd {
            completed_at: run
                .status
                .is_final()
                .then(|| run.completed_at.unwrap_or(run.updated_at)),
            now,
        }
    }

    /// A partial span (still running when last reported) lasts until the run ended, or
    /// until now.
    fn duration_ns(&self, event: &RunEvent) -> i64 {
        if event.event.kind != EventKind::PartialSpan {
            return event.event.duration_ns;
        }
        let end = self.completed_at.unwrap_or(self.now);
        end.timestamp_nanos_opt()
            .map_or(0, |end| (end - event.event.start_ns).max(0))
    }
}

/// One event of `GET …/events`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EventView {
    /// Where a page ending with this event continues (`page[after]`).
    pub cursor: String,
    /// `LOG` or `SPAN`.
    pub kind: &'static str,
    pub run_id: String,
    pub trace_id: String,
    /// A span's id; a log line's: the span it was logged in (empty when none).
    pub span_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent_id: Option<String>,
    pub message: String,
    pub level: String,
    /// ISO 8601, with the nanoseconds OTLP gave.
    pub start_time: String,
    /// Milliseconds.
    pub duration: f64,
    pub is_error: bool,
    pub is_partial: bool,
    pub is_cancelled: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempt_number: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub task_slug: Option<String>,
    pub properties: Map<String, Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub events: Option<Vec<Value>>,
}

impl EventView {
    fn new(event: &RunEvent, end: &RunEnd) -> EventView {
        let e = &event.event;
        let is_span = e.kind.is_span();
        EventView {
            cursor: event.cursor().to_string(),
            kind: if is_span { "SPAN" } else { "LOG" },
            run_id: e.run_id.to_string(),
            trace_id: e.trace_id.clone(),
            span_id: e.span_id.clone(),
            parent_id: e.parent_span_id.clone(),
            message: e.name.clone(),
            level: e.level.clone(),
            start_time: iso(e.start_ns),
            duration: ms(end.duration_ns(event)),
            is_error: e.status_code == 2,
            is_partial: e.kind == EventKind::PartialSpan,
            is_cancelled: false,
            attempt_number: context(&e.attributes, "ctx.attempt.number").and_then(Value::as_i64),
            task_slug: context(&e.attributes, "ctx.task.id")
                .and_then(Value::as_str)
                .map(str::to_owned),
            properties: properties(&e.attributes),
            events: is_span.then(|| span_events(e.events.as_ref())),
        }
    }
}

/// `GET /api/v1/runs/{runId}/events`: `{events, pagination: {next?}}` (module doc).
pub(crate) async fn list(
    State(state): State<AppState>,
    Authenticated(environment): Authenticated,
    Path(raw): Path<String>,
    query: RawQuery,
) -> Result<Json<Value>, ApiError> {
    let paging = Paging::parse(query, true)?;
    let limit = paging.size.unwrap_or(EVENTS_READ_MAX);
    let read = RunEventQuery {
        kinds: paging.kinds.clone(),
        after: paging.after,
        limit,
    };
    let (run, events) = run_and_events(&state, &environment, &raw, &read).await?;
    let end = RunEnd::of(&run, state.engine.now());
    let next = (paging.is_paged() && events.len() == limit as usize)
        .then(|| events.last().map(|e| e.cursor().to_string()))
        .flatten();
    let views: Vec<EventView> = events.iter().map(|e| EventView::new(e, &end)).collect();
    let mut pagination = Map::new();
    if let Some(next) = next {
        pagination.insert("next".to_owned(), json!(next));
    }
    Ok(Json(json!({"events": views, "pagination": pagination})))
}

/// A span of the trace tree (`RetrieveRunTraceSpan`).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct TraceSpan {
    id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    parent_id: Option<String>,
    run_id: String,
    data: SpanData,
    children: Vec<TraceSpan>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct SpanData {
    message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    task_slug: Option<String>,
    events: Vec<Value>,
    start_time: String,
    /// Milliseconds.
    duration: f64,
    is_error: bool,
    is_partial: bool,
    is_cancelled: bool,
    level: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    worker_version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    queue_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    machine_preset: Option<String>,
    properties: Map<String, Value>,
}

/// The id of the trace node of an event: a span's own; a log line's, made up (it has
/// none of its own).
fn node_id(event: &RunEvent) -> String {
    if event.event.kind.is_span() {
        event.event.span_id.clone()
    } else {
        format!("log_{}", event.seq)
    }
}

/// The node an event hangs under: a span's parent, a log line's span.
fn node_parent(event: &RunEvent) -> Option<&str> {
    if event.event.kind.is_span() {
        event.event.parent_span_id.as_deref()
    } else {
        Some(event.event.span_id.as_str()).filter(|s| !s.is_empty())
    }
}

/// The id of the root (the run): the parent the top spans share when they all name
/// one (the run's span, which the task process does not export), else the run id.
fn root_id(run: &Run, events: &[RunEvent]) -> String {
    let ids: std::collections::HashSet<String> = events.iter().map(node_id).collect();
    let mut parents = events
        .iter()
        .filter(|e| e.event.kind.is_span())
        .filter_map(node_parent)
        .filter(|parent| !ids.contains(*parent));
    match parents.next() {
        Some(first) if parents.all(|p| p == first) => first.to_owned(),
        _ => run.id.to_string(),
    }
}

/// The run as the trace's root span.
fn root_data(run: &Run, end: &RunEnd) -> SpanData {
    let finished = end.completed_at.unwrap_or(end.now);
    SpanData {
        message: run.task_identifier.clone(),
        task_slug: Some(run.task_identifier.clone()),
        events: Vec::new(),
        start_time: run.created_at.to_rfc3339_opts(SecondsFormat::AutoSi, true),
        duration: (finished - run.created_at)
            .num_microseconds()
            .unwrap_or(0)
            .max(0) as f64
            / 1000.0,
        is_error: run.status.is_final()
            && !matches!(
                run.status,
                RunStatus::CompletedSuccessfully | RunStatus::Canceled
            ),
        is_partial: !run.status.is_final(),
        is_cancelled: run.status == RunStatus::Canceled,
        level: "TRACE".to_owned(),
        worker_version: run.worker_version.clone(),
        queue_name: Some(run.queue.as_str().to_owned()),
        machine_preset: run.machine.map(|m| m.as_str().to_owned()),
        properties: Map::new(),
    }
}

fn span_data(event: &RunEvent, end: &RunEnd) -> SpanData {
    let view = EventView::new(event, end);
    SpanData {
        message: view.message,
        task_slug: view.task_slug,
        events: view.events.unwrap_or_default(),
        start_time: view.start_time,
        duration: view.duration,
        is_error: view.is_error,
        is_partial: view.is_partial,
        is_cancelled: false,
        level: view.level,
        worker_version: context(&event.event.attributes, "worker.version")
            .and_then(Value::as_str)
            .map(str::to_owned),
        queue_name: context(&event.event.attributes, "ctx.queue.name")
            .and_then(Value::as_str)
            .map(str::to_owned),
        machine_preset: None,
        properties: view.properties,
    }
}

/// The tree of `events` under the run's root.
fn trace_tree(run: &Run, events: &[RunEvent], end: &RunEnd) -> TraceSpan {
    let root = root_id(run, events);
    let ids: HashMap<String, usize> = events
        .iter()
        .enumerate()
        .map(|(i, e)| (node_id(e), i))
        .collect();
    // children[i] for event i; the root's are the events whose parent is not stored.
    let mut children: Vec<Vec<usize>> = vec![Vec::new(); events.len()];
    let mut top = Vec::new();
    for (i, event) in events.iter().enumerate() {
        match node_parent(event).and_then(|p| ids.get(p)) {
            Some(&parent) if parent != i => children[parent].push(i),
            _ => top.push(i),
        }
    }
    // Built leaves first, so no recursion however deep the spans nest: a node is
    // finished once every node below it is.
    let mut built: Vec<Option<TraceSpan>> = (0..events.len()).map(|_| None).collect();
    let mut stack: Vec<(usize, bool)> = top.iter().rev().map(|&i| (i, false)).collect();
    while let Some((i, expanded)) = stack.pop() {
        if expanded {
            let kids = children[i]
                .iter()
                .filter_map(|&c| built[c].take())
                .collect();
            let event = &events[i];
            built[i] = Some(TraceSpan {
                id: node_id(event),
                parent_id: Some(node_parent(event).unwrap_or(&root).to_owned()),
                run_id: event.event.run_id.to_string(),
                data: span_data(event, end),
                children: kids,
            });
        } else {
            stack.push((i, true));
            stack.extend(children[i].iter().rev().map(|&c| (c, false)));
        }
    }
    TraceSpan {
        id: root,
        parent_id: None,
        run_id: run.id.to_string(),
        data: root_data(run, end),
        children: top.iter().filter_map(|&i| built[i].take()).collect(),
    }
}

/// `GET /api/v1/runs/{runId}/trace`: the span tree, or a flat page (module doc).
pub(crate) async fn trace(
    State(state): State<AppState>,
    Authenticated(environment): Authenticated,
    Path(raw): Path<String>,
    query: RawQuery,
) -> Result<Json<Value>, ApiError> {
    let paging = Paging::parse(query, false)?;
    let limit = paging.size.unwrap_or(EVENTS_READ_MAX);
    let read = RunEventQuery {
        // The tree shows log lines too; pages are spans only, as upstream's.
        kinds: if paging.is_paged() {
            vec![EventKind::Span, EventKind::PartialSpan]
        } else {
            Vec::new()
        },
        after: paging.after,
        limit,
    };
    let (run, events) = run_and_events(&state, &environment, &raw, &read).await?;
    let end = RunEnd::of(&run, state.engine.now());
    let trace_id = events
        .iter()
        .map(|e| e.event.trace_id.as_str())
        .find(|t| !t.is_empty())
        .unwrap_or("")
        .to_owned();
    if !paging.is_paged() {
        let root = trace_tree(&run, &events, &end);
        return Ok(Json(
            json!({"trace": {"traceId": trace_id, "rootSpan": root}}),
        ));
    }
    let root = root_id(&run, &events);
    let mut data = Vec::new();
    if paging.after.is_none() {
        let root_data = root_data(&run, &end);
        data.push(json!({
            "id": root, "runId": run.id.as_str(), "message": root_data.message,
            "startTime": root_data.start_time, "duration": root_data.duration,
            "isError": root_data.is_error, "isPartial": root_data.is_partial,
            "isCancelled": root_data.is_cancelled, "level": root_data.level,
        }));
    }
    for event in &events {
        let view = EventView::new(event, &end);
        let mut span = json!({
            "id": node_id(event),
            "parentId": node_parent(event).unwrap_or(&root),
            "runId": view.run_id, "message": view.message, "startTime": view.start_time,
            "duration": view.duration, "isError": view.is_error,
            "isPartial": view.is_partial, "isCancelled": view.is_cancelled,
            "level": view.level,
        });
        if let Some(attempt) = view.attempt_number {
            span["attemptNumber"] = json!(attempt);
        }
        data.push(span);
    }
    let mut pagination = Map::new();
    if events.len() == limit as usize {
        if let Some(last) = events.last() {
            pagination.insert("next".to_owned(), json!(last.cursor().to_string()));
        }
    }
    Ok(Json(
        json!({"data": data, "attemptFailures": [], "pagination": pagination}),
    ))
}
