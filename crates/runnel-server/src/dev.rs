//! The run side of the `trigger.dev dev` CLI protocol over HTTP (reference
//! `trigger-dev-cli-protocol.md` §2.2.5-§2.2.13): background-worker registration from a
//! task manifest, dequeue, attempt start and completion named by execution snapshots,
//! heartbeats, the latest snapshot, debug logs and the watchdog's disconnect. The
//! engine's `dev` module decides; this module translates the CLI's shapes, which its zod
//! schemas parse strictly (optional fields are omitted, never `null`; enums are closed).
//!
//! The CLI's engine calls send JSON as `text/plain`, so bodies are parsed whatever their
//! content type. Only the dev environment's keys may use these routes (403 otherwise).

use std::collections::HashMap;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use runnel_core::metadata::MetadataUpdate;
use runnel_core::retry::RetryPolicy;
use runnel_core::run::{Packet, Run};
use runnel_core::state::RetryHint;
use runnel_core::tenancy::Environment;
use runnel_core::view::iso;
use runnel_core::waitpoint::{Snapshot, Waitpoint, WaitpointKind};
use runnel_core::worker::{
    DeclaredSchedule, FailureKind, QueueDefinition, RegisterRequest, TaskDefinition, TaskFailure,
};
use runnel_core::{MachinePreset, RunId, RunStatus, SnapshotId, WorkerId};
use runnel_engine::dev::{AttemptStatusAfter, DevCompletion, DevStarted};
use serde_json::{json, Map, Value};

use crate::auth::Authenticated;
use crate::devboot::require_dev;
use crate::error::ApiError;
use crate::extract::{json_body, RawBody};
use crate::state::AppState;

fn run_id(raw: &str) -> Result<RunId, ApiError> {
    RunId::parse(raw).ok_or_else(|| ApiError::Missing("Run not found".into()))
}

fn snapshot_id(raw: &str) -> Result<SnapshotId, ApiError> {
    SnapshotId::parse(raw)
        .ok_or_else(|| ApiError::BadRequest(format!("{raw:?} is not a snapshot id")))
}

/// `TaskRunStatus`, the engine-level status the protocol's run metadata carries.
fn task_run_status(status: RunStatus) -> &'static str {
    match status {
        RunStatus::Queued => "PENDING",
        other => other.as_str(),
    }
}

/// A machine preset as the protocol describes it: name, vCPUs, GB of memory, price.
fn machine(preset: Option<MachinePreset>, cents_per_ms: f64) -> Value {
    let preset = preset.unwrap_or_default();
    let (cpu, memory) = match preset.as_str() {
        "micro" => (0.25, 0.25),
        "small-1x" => (0.5, 0.5),
        "small-2x" => (1.0, 1.0),
        "medium-1x" => (1.0, 2.0),
        "medium-2x" => (2.0, 4.0),
        "large-1x" => (4.0, 8.0),
        _ => (8.0, 16.0),
    };
    json!({"name": preset.as_str(), "cpu": cpu, "memory": memory, "centsPerMs": cents_per_ms})
}

fn snapshot_json(snapshot: &Snapshot) -> Value {
    json!({
        "id": snapshot.id.as_str(),
        "friendlyId": snapshot.id.as_str(),
        "executionStatus": snapshot.status.as_str(),
        "description": snapshot.description,
        "createdAt": iso(snapshot.created_at),
    })
}

fn run_metadata(run: &Run, attempt_number: Option<u32>) -> Value {
    let mut out = json!({
        "id": run.id.as_str(),
        "friendlyId": run.id.as_str(),
        "status": task_run_status(run.status),
    });
    if let Some(n) = attempt_number {
        out["attemptNumber"] = json!(n);
    }
    out
}

/// A completed waitpoint as the task runtime matches it to its waiting call (§4.2).
fn completed_waitpoint(w: &Waitpoint) -> Value {
    let mut out = json!({
        "id": w.id.as_str(),
        "friendlyId": w.id.as_str(),
        "type": w.kind.as_str(),
        "completedAt": iso(w.completed_at.unwrap_or(w.created_at)),
        "outputIsError": w.output_is_error,
    });
    if let Some(key) = &w
        .idempotency_key_user
        .as_ref()
        .or(w.idempotency_key.as_ref())
    {
        out["idempotencyKey"] = json!(key);
    }
    if let Some(output) = &w.output {
        out["output"] = json!(output);
    }
    if let Some(output_type) = &w.output_type {
        out["outputType"] = json!(output_type);
    }
    match w.kind {
        WaitpointKind::Run => {
            if let Some(run) = &w.completed_by_run {
                let mut by = json!({"id": run.as_str(), "friendlyId": run.as_str()});
                if let Some((batch, index)) = &w.batch {
                    by["batch"] = json!({"id": batch.as_str(), "friendlyId": batch.as_str()});
                    out["index"] = json!(index);
                }
                out["completedByTaskRun"] = by;
            }
        }
        WaitpointKind::Datetime => {
            if let Some(at) = w.completes_at {
                out["completedAfter"] = json!(iso(at));
            }
        }
        _ => {}
    }
    out
}

/// `POST /api/v1/projects/{ref}/background-workers`: a task manifest becomes a version
/// with its tasks and their settings; the tasks' declared schedules (`schedules.task`
/// with a `cron`) become the environment's DECLARATIVE schedules, in sync with this
/// manifest (the whole project: schedules of tasks it no longer declares go).
pub async fn register(
    State(state): State<AppState>,
    Authenticated(environment): Authenticated,
    Path(_project): Path<String>,
    body: RawBody,
) -> Result<Json<Value>, ApiError> {
    let body: Value = json_body(body, &["metadata"])?;
    let metadata = body.get("metadata").cloned().unwrap_or(Value::Null);
    let content_hash = metadata
        .get("contentHash")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    let Some(manifest_tasks) = metadata.get("tasks").and_then(Value::as_array) else {
        return Err(ApiError::BadRequest("metadata.tasks: required".into()));
    };
    let mut tasks = Vec::with_capacity(manifest_tasks.len());
    let mut queues: Vec<QueueDefinition> = Vec::new();
    let mut sources = HashMap::new();
    for (i, task) in manifest_tasks.iter().enumerate() {
        let field = |f: &str| format!("metadata.tasks[{i}].{f}");
        let id = task
            .get("id")
            .and_then(Value::as_str)
            .ok_or_else(|| ApiError::BadRequest(format!("{}: required", field("id"))))?;
        if let Some(path) = task.get("filePath").and_then(Value::as_str) {
            sources.insert(id.to_owned(), path.to_owned());
        }
        let queue = task.get("queue");
        let queue_name = queue
            .and_then(|q| q.get("name"))
            .and_then(Value::as_str)
            .map(str::to_owned);
        if let Some(limit) = queue
            .and_then(|q| q.get("concurrencyLimit"))
            .and_then(Value::as_u64)
        {
            let name = queue_name
                .clone()
                .unwrap_or_else(|| runnel_core::QueueName::for_task(id).into_string());
            if !queues.iter().any(|q| q.name == name) {
                queues.push(QueueDefinition {
                    name,
                    concurrency_limit: Some(u32::try_from(limit).unwrap_or(u32::MAX)),
                });
            }
        }
        let retry = task.get("retry").filter(|r| r.is_object()).map(|r| {
            let d = RetryPolicy::default();
            let num = |k: &str| r.get(k).and_then(Value::as_f64);
            RetryPolicy {
                max_attempts: num("maxAttempts").map_or(d.max_attempts, |n| n.max(1.0) as u32),
                factor: num("factor").unwrap_or(d.factor),
                min_timeout_in_ms: num("minTimeoutInMs").map_or(d.min_timeout_in_ms, |n| n as u64),
                max_timeout_in_ms: num("maxTimeoutInMs").map_or(d.max_timeout_in_ms, |n| n as u64),
                randomize: r
                    .get("randomize")
                    .and_then(Value::as_bool)
                    .unwrap_or(d.randomize),
            }
        });
        tasks.push(TaskDefinition {
            id: id.to_owned(),
            queue: queue_name,
            retry,
            max_duration: task
                .get("maxDuration")
                .and_then(Value::as_u64)
                .map(|s| u32::try_from(s).unwrap_or(u32::MAX)),
            machine: task
                .get("machine")
                .and_then(|m| m.get("preset"))
                .and_then(Value::as_str)
                .map(str::to_owned),
            scheduled: task.get("triggerSource").and_then(Value::as_str) == Some("schedule"),
            schedule: declared_schedule(task.get("schedule"), &field)?,
        });
    }
    for queue in metadata
        .get("queues")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let Some(name) = queue.get("name").and_then(Value::as_str) {
            let limit = queue.get("concurrencyLimit").and_then(Value::as_u64);
            if !queues.iter().any(|q| q.name == name) {
                queues.push(QueueDefinition {
                    name: name.to_owned(),
                    concurrency_limit: limit.map(|l| u32::try_from(l).unwrap_or(u32::MAX)),
                });
            }
        }
    }
    let request = RegisterRequest {
        name: format!(
            "trigger.dev dev {}",
            &content_hash[..content_hash.len().min(12)]
        ),
        version: None,
        tasks,
        queues,
    };
    let registered = state
        .engine
        .worker_register_with_sources(&environment, request, &sources, true)
        .await?;
    Ok(Json(json!({
        "id": registered.worker_id.as_str(),
        "version": registered.version,
        "contentHash": content_hash,
    })))
}

/// A manifest task's `schedule` (`{cron, timezone, environments?, window?}`).
fn declared_schedule(
    schedule: Option<&Value>,
    field: &dyn Fn(&str) -> String,
) -> Result<Option<DeclaredSchedule>, ApiError> {
    let Some(schedule) = schedule.filter(|s| !s.is_null()) else {
        return Ok(None);
    };
    let text = |key: &str| schedule.get(key).and_then(Value::as_str).map(str::to_owned);
    let cron = text("cron")
        .ok_or_else(|| ApiError::BadRequest(format!("{}: required", field("schedule.cron"))))?;
    let environments = schedule
        .get("environments")
        .and_then(Value::as_array)
        .map(|envs| {
            envs.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        });
    Ok(Some(DeclaredSchedule {
        cron,
        timezone: text("timezone"),
        window: text("window"),
        environments,
    }))
}

/// `POST /engine/v1/dev/dequeue`: up to 10 runs for the CLI's current worker.
pub async fn dequeue(
    State(state): State<AppState>,
    Authenticated(environment): Authenticated,
    body: RawBody,
) -> Result<Json<Value>, ApiError> {
    require_dev(&environment)?;
    let body: Value = json_body(body, &[])?;
    let worker = body
        .get("currentWorker")
        .and_then(Value::as_str)
        .and_then(WorkerId::parse)
        .ok_or_else(|| ApiError::BadRequest("currentWorker: must be a worker id".into()))?;
    let dequeued = state
        .engine
        .dev_dequeue(&environment, &worker, runnel_engine::dev::DEV_DEQUEUE_MAX)
        .await?;
    let mut messages = Vec::with_capacity(dequeued.len());
    for d in dequeued {
        let run = &d.leased.run;
        let cents = state
            .engine
            .config()
            .pricing
            .cents_per_ms(environment.kind, run.machine.unwrap_or_default());
        messages.push(json!({
            "version": "1",
            "snapshot": snapshot_json(&d.snapshot),
            "dequeuedAt": iso(d.snapshot.created_at),
            "completedWaitpoints": [],
            "backgroundWorker": {
                "id": worker.as_str(),
                "friendlyId": worker.as_str(),
                "version": run.worker_version.clone().unwrap_or_default(),
            },
            "deployment": {},
            "run": {
                "id": run.id.as_str(),
                "friendlyId": run.id.as_str(),
                "isTest": run.is_test,
                "machine": machine(run.machine, cents),
                "attemptNumber": d.leased.attempt.number,
                "masterQueue": run.queue.as_str(),
                "traceContext": {},
            },
            "environment": {"id": environment.id.as_str(), "type": "DEVELOPMENT"},
            "organization": {"id": environment.project_id.as_str()},
            "project": {"id": environment.project_id.as_str()},
        }));
    }
    Ok(Json(json!({ "dequeuedMessages": messages })))
}

/// `POST /engine/v1/dev/runs/{run}/snapshots/{snapshot}/attempts/start`.
pub async fn start(
    State(state): State<AppState>,
    Authenticated(environment): Authenticated,
    Path((run, snapshot)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    require_dev(&environment)?;
    let (run, snapshot) = (run_id(&run)?, snapshot_id(&snapshot)?);
    let started = state
        .engine
        .dev_start(&environment, &run, &snapshot)
        .await?;
    let base = crate::devboot::base_url(&headers)?;
    let execution = execution(&state, &environment, &started);
    // The environment's variables, then the platform's own, which win on a conflict.
    let mut env_vars = state.engine.env_vars_resolved(&environment).await?;
    env_vars.extend([
        (
            "TRIGGER_OTEL_EXPORTER_OTLP_ENDPOINT".to_owned(),
            format!("{base}/otel"),
        ),
        ("TRIGGER_API_URL".to_owned(), base.clone()),
        (
            "TRIGGER_MACHINE_PRESET".to_owned(),
            started.run.machine.unwrap_or_default().as_str().to_owned(),
        ),
    ]);
    Ok(Json(json!({
        "run": run_metadata(&started.run, Some(started.attempt.number)),
        "snapshot": snapshot_json(&started.snapshot),
        "execution": execution,
        "envVars": env_vars,
    })))
}

/// The `TaskRunExecution` a task process runs (§3.1).
fn execution(state: &AppState, environment: &Environment, started: &DevStarted) -> Value {
    let run = &started.run;
    let task = started.worker.task(&run.task_identifier);
    let cents = state
        .engine
        .config()
        .pricing
        .cents_per_ms(environment.kind, run.machine.unwrap_or_default());
    let mut r = json!({
        "id": run.id.as_str(),
        "payload": run.payload.data.clone().unwrap_or_default(),
        "payloadType": run.payload.data_type,
        "tags": run.tags,
        "isTest": run.is_test,
        "isReplay": false,
        "createdAt": iso(run.created_at),
        "startedAt": iso(run.started_at.unwrap_or(run.created_at)),
        "durationMs": run.usage_duration_ms,
        "costInCents": run.cost_in_cents,
        "baseCostInCents": run.base_cost_in_cents,
        "traceContext": {},
    });
    let max_attempts = run
        .max_attempts
        .or_else(|| task.and_then(|t| t.retry).map(|p| p.max_attempts))
        .unwrap_or(RetryPolicy::default().max_attempts);
    r["maxAttempts"] = json!(max_attempts);
    if let Some(key) = &run.idempotency_key_user {
        r["idempotencyKey"] = json!(key);
    }
    if let Some(scope) = &run.idempotency_key_scope {
        r["idempotencyKeyScope"] = json!(scope);
    }
    if let Some(version) = &run.worker_version {
        r["version"] = json!(version);
    }
    if let Some(secs) = run
        .max_duration_secs
        .filter(|s| *s < runnel_core::trigger::MAX_DURATION_MAX_SECS)
    {
        r["maxDuration"] = json!(secs);
    }
    if let Some(metadata) = run
        .metadata
        .as_ref()
        .filter(|m| m.data_type == Packet::JSON)
        .and_then(|m| m.data.as_deref())
        .and_then(|d| serde_json::from_str::<Value>(d).ok())
        .filter(Value::is_object)
    {
        r["metadata"] = metadata;
    }
    if let Some(parent) = &run.parent_run_id {
        r["parentTaskRunId"] = json!(parent.as_str());
    }
    if let Some(root) = &run.root_run_id {
        r["rootTaskRunId"] = json!(root.as_str());
    }
    if run.priority_ms > 0 {
        r["priority"] = json!(run.priority_ms / 1000);
    }
    let mut t = json!({
        "id": run.task_identifier,
        "filePath": task.and_then(|t| t.file_path.clone()).unwrap_or_default(),
    });
    if task.is_none() {
        t["filePath"] = json!("");
    }
    let project = environment.project_id.as_str();
    let mut out = json!({
        "attempt": {
            "number": started.attempt.number,
            "startedAt": iso(started.attempt.started_at.unwrap_or(started.attempt.created_at)),
            "id": started.attempt.id.as_str(),
            "status": "EXECUTING",
        },
        "run": r,
        "task": t,
        "queue": {"id": run.queue.as_str(), "name": run.queue.as_str()},
        "environment": {"id": environment.id.as_str(), "slug": environment.kind.slug(), "type": "DEVELOPMENT"},
        "organization": {"id": project, "slug": "runnel", "name": "Runnel"},
        "project": {"id": project, "ref": project, "slug": project, "name": "Runnel"},
        "machine": machine(run.machine, cents),
    });
    if let Some(batch) = &run.batch_id {
        out["batch"] = json!({"id": batch.as_str()});
    }
    out
}

/// How Runnel classifies a `TaskRunError` the task process reports, and its message.
fn failure_of(error: &Value) -> TaskFailure {
    let kind = match error.get("type").and_then(Value::as_str) {
        Some("INTERNAL_ERROR") => match error.get("code").and_then(Value::as_str).unwrap_or("") {
            "MAX_DURATION_EXCEEDED" => FailureKind::MaxDurationExceeded,
            "TASK_PROCESS_EXITED_WITH_NON_ZERO_CODE"
            | "TASK_PROCESS_OOM_KILLED"
            | "TASK_PROCESS_MAYBE_OOM_KILLED"
            | "TASK_PROCESS_SIGKILL_TIMEOUT"
            | "TASK_PROCESS_SIGTERM"
            | "GRACEFUL_EXIT_TIMEOUT"
            | "TASK_RUN_CRASHED" => FailureKind::Crashed,
            "COULD_NOT_FIND_EXECUTOR"
            | "COULD_NOT_FIND_TASK"
            | "COULD_NOT_IMPORT_TASK"
            | "CONFIGURED_INCORRECTLY"
            | "TASK_ALREADY_RUNNING" => FailureKind::SystemFailure,
            _ => FailureKind::TaskFailed,
        },
        _ => FailureKind::TaskFailed,
    };
    let text = |k: &str| error.get(k).and_then(Value::as_str).map(str::to_owned);
    let message = text("message")
        .or_else(|| text("raw"))
        .or_else(|| text("code"))
        .unwrap_or_else(|| error.to_string());
    TaskFailure {
        kind,
        message,
        name: text("name"),
        stack_trace: text("stackTrace"),
    }
}

/// The metadata operations a completion flushed (`flushedMetadata`), as an update.
fn flushed_metadata(flushed: &Value) -> Option<MetadataUpdate> {
    let data = flushed.get("data")?.as_str()?;
    let parsed: Value = serde_json::from_str(data).ok()?;
    let body = match flushed.get("dataType").and_then(Value::as_str) {
        Some(Packet::SUPER_JSON) => parsed.get("json")?.clone(),
        _ => parsed,
    };
    serde_json::from_value(body).ok()
}

/// `POST /engine/v1/dev/runs/{run}/snapshots/{snapshot}/attempts/complete`.
pub async fn complete(
    State(state): State<AppState>,
    Authenticated(environment): Authenticated,
    Path((run, snapshot)): Path<(String, String)>,
    body: RawBody,
) -> Result<Json<Value>, ApiError> {
    require_dev(&environment)?;
    let (run, snapshot) = (run_id(&run)?, snapshot_id(&snapshot)?);
    let body: Value = json_body(body, &["completion"])?;
    let completion = body
        .get("completion")
        .filter(|c| c.is_object())
        .ok_or_else(|| ApiError::BadRequest("completion: required".into()))?;
    if let Some(update) = completion.get("flushedMetadata").and_then(flushed_metadata) {
        let has_ops = update.operations.as_ref().is_some_and(|o| !o.is_empty())
            || !update.parent_operations.is_empty()
            || !update.root_operations.is_empty();
        if has_ops {
            if let Err(e) = state
                .engine
                .metadata_update(&environment, &run, update)
                .await
            {
                tracing::debug!(run = %run, error = %e, "flushed metadata not applied");
            }
        }
    }
    let ok = completion
        .get("ok")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let result = if ok {
        Ok(Packet {
            data: completion
                .get("output")
                .and_then(Value::as_str)
                .map(str::to_owned),
            data_type: completion
                .get("outputType")
                .and_then(Value::as_str)
                .unwrap_or(Packet::JSON)
                .to_owned(),
        })
    } else {
        let error = completion
            .get("error")
            .cloned()
            .unwrap_or_else(|| json!({"type": "STRING_ERROR", "raw": "Unknown error"}));
        Err((failure_of(&error), error))
    };
    let retry = match completion
        .get("retry")
        .and_then(|r| r.get("delay"))
        .and_then(Value::as_f64)
    {
        Some(delay) if !ok => RetryHint::After {
            delay_ms: delay.max(0.0) as u64,
        },
        _ => RetryHint::Never,
    };
    let completed = state
        .engine
        .dev_complete(
            &environment,
            &run,
            &snapshot,
            DevCompletion { result, retry },
        )
        .await?;
    let attempt_status = match completed.attempt_status {
        AttemptStatusAfter::RunFinished => "RUN_FINISHED",
        AttemptStatusAfter::RetryQueued => "RETRY_QUEUED",
    };
    Ok(Json(json!({
        "result": {
            "attemptStatus": attempt_status,
            "snapshot": snapshot_json(&completed.snapshot),
            "run": run_metadata(&completed.run, completed.snapshot.attempt_number.or(Some(completed.run.attempt_count))),
        }
    })))
}

/// `POST /engine/v1/dev/runs/{run}/snapshots/{snapshot}/heartbeat`: any snapshot of a
/// live run extends its lease.
pub async fn heartbeat(
    State(state): State<AppState>,
    Authenticated(environment): Authenticated,
    Path((run, _snapshot)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    require_dev(&environment)?;
    let run = run_id(&run)?;
    let held = state.engine.dev_heartbeat(&environment, &run).await?;
    Ok(Json(json!({ "ok": held })))
}

/// `GET /engine/v1/dev/runs/{run}/snapshots/latest`.
pub async fn latest(
    State(state): State<AppState>,
    Authenticated(environment): Authenticated,
    Path(run): Path<String>,
) -> Result<Json<Value>, ApiError> {
    require_dev(&environment)?;
    latest_execution(&state, &environment, &run).await
}

/// `GET /engine/v1/runs/{run}/snapshots/latest`: the same answer as [`latest`], for
/// any environment's key. A Runnel worker's task that waits (a child, a batch, a time,
/// a token) polls it to learn that its run resumed and what its waitpoints completed
/// with.
pub async fn run_latest(
    State(state): State<AppState>,
    Authenticated(environment): Authenticated,
    Path(run): Path<String>,
) -> Result<Json<Value>, ApiError> {
    latest_execution(&state, &environment, &run).await
}

/// `{execution: {version, snapshot, run, completedWaitpoints, batch?}}` of run `run`'s
/// latest snapshot.
async fn latest_execution(
    state: &AppState,
    environment: &Environment,
    run: &str,
) -> Result<Json<Value>, ApiError> {
    let run = run_id(run)?;
    let latest = state.engine.dev_latest(environment, &run).await?;
    let completed: Vec<Value> = latest.completed.iter().map(completed_waitpoint).collect();
    let mut execution = json!({
        "version": "1",
        "snapshot": snapshot_json(&latest.snapshot),
        "run": run_metadata(&latest.run, latest.snapshot.attempt_number),
        "completedWaitpoints": completed,
    });
    if let Some(batch) = &latest.run.batch_id {
        execution["batch"] = json!({"id": batch.as_str(), "friendlyId": batch.as_str()});
    }
    Ok(Json(json!({ "execution": execution })))
}

/// `POST /engine/v1/dev/runs/{run}/logs/debug`: the CLI's own diagnostics, logged at
/// debug and dropped.
pub async fn debug_log(
    Authenticated(environment): Authenticated,
    Path(run): Path<String>,
    body: RawBody,
) -> Result<impl IntoResponse, ApiError> {
    require_dev(&environment)?;
    if let Ok(body) = json_body::<Map<String, Value>>(body, &[]) {
        let message = body.get("message").and_then(Value::as_str).unwrap_or("");
        tracing::debug!(run = %run, message, "dev CLI");
    }
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /engine/v1/dev/disconnect`: the CLI died; its watchdog names its runs, which
/// are canceled.
pub async fn disconnect(
    State(state): State<AppState>,
    Authenticated(environment): Authenticated,
    body: RawBody,
) -> Result<Json<Value>, ApiError> {
    require_dev(&environment)?;
    let body: Value = json_body(body, &[])?;
    let ids: Vec<RunId> = body
        .get("runFriendlyIds")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .filter_map(RunId::parse)
        .take(1000)
        .collect();
    let cancelled = state.engine.dev_disconnect(&environment, &ids).await?;
    Ok(Json(json!({ "cancelled": cancelled })))
}
