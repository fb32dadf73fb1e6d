//! The worker protocol over HTTP (`/api/v1/workers/…`, docs/worker-protocol.md).
//!
//! Workers authenticate with their environment's secret key, like every other caller; a
//! worker id of another environment answers 404. Each handler translates the wire shape
//! (`runnel_core::worker`) to one engine call, and renders the engine's answer (domain
//! values: leased runs, typed ids, run statuses) back to the wire.
//!
//! Ids arrive as strings and are parsed here. A worker id that does not parse is answered
//! as an unknown worker (404), after the body's own checks, as the engine orders them; an
//! attempt id that does not parse names no attempt the worker holds, so it is answered as
//! any attempt not held (to cancel; a completion not accepted).

use std::collections::HashSet;

use axum::extract::{Path, State};
use axum::Json;
use runnel_core::run::Packet;
use runnel_core::tenancy::Environment;
use runnel_core::trigger::MAX_DURATION_MAX_SECS;
use runnel_core::view::iso;
use runnel_core::worker::{
    self, AttemptCompletion, AttemptOutcome, CompleteRequest, CompleteResponse, CompletionResult,
    DequeueRequest, DequeueResponse, DequeuedRun, HeartbeatRequest, HeartbeatResponse,
    RegisterRequest, RegisterResponse, StartRequest, StartResponse,
};
use runnel_core::{ApiVersion, AttemptId, WorkerId};
use runnel_engine::{Completed, Completion, Leased, Registered, WorkerError};

use crate::auth::Authenticated;
use crate::error::ApiError;
use crate::extract::{json_body, RawBody};
use crate::state::AppState;

/// Registers a worker and the tasks it serves.
#[utoipa::path(post, path = "/api/v1/workers/register", tag = "workers",
    request_body = RegisterRequest,
    responses((status = 200, body = RegisterResponse), (status = 400, description = "Empty, malformed or out-of-bounds body; the message names the field", body = crate::schemas::ErrorBody), (status = 401, description = "No `Authorization` header (problem+json) or a bad key", content((crate::schemas::ErrorBody = "application/json"), (crate::schemas::ProblemBody = "application/problem+json")))))]
pub async fn register(
    State(state): State<AppState>,
    Authenticated(environment): Authenticated,
    body: RawBody,
) -> Result<Json<RegisterResponse>, ApiError> {
    let request: RegisterRequest = json_body(body, &[])?;
    let registered = state.engine.worker_register(&environment, request).await?;
    Ok(Json(register_response(registered)))
}

/// A registration as the worker receives it: it heartbeats every third of the lease.
fn register_response(registered: Registered) -> RegisterResponse {
    let lease_ms = u64::try_from(registered.lease_timeout.as_millis()).unwrap_or(u64::MAX);
    RegisterResponse {
        worker_id: registered.worker_id.to_string(),
        version: registered.version,
        lease_timeout_ms: lease_ms,
        heartbeat_interval_ms: (lease_ms / 3).max(1),
    }
}

/// Leases queued runs to the worker; a long poll of up to `waitMs` when none is queued.
#[utoipa::path(post, path = "/api/v1/workers/{workerId}/dequeue", tag = "workers",
    params(("workerId" = String, Path, description = "From the registration")),
    request_body = DequeueRequest,
    responses((status = 200, body = DequeueResponse), (status = 400, description = "Empty, malformed or out-of-bounds body; the message names the field", body = crate::schemas::ErrorBody), (status = 401, description = "No `Authorization` header (problem+json) or a bad key", content((crate::schemas::ErrorBody = "application/json"), (crate::schemas::ProblemBody = "application/problem+json"))), (status = 404, description = "Unknown worker, or one of another environment", body = crate::schemas::ErrorBody)))]
pub async fn dequeue(
    State(state): State<AppState>,
    Authenticated(environment): Authenticated,
    Path(worker_id): Path<String>,
    headers: axum::http::HeaderMap,
    body: RawBody,
) -> Result<Json<DequeueResponse>, ApiError> {
    let request: DequeueRequest = json_body(body, &[])?;
    worker::check_max_runs(request.max_runs).map_err(ApiError::BadRequest)?;
    let worker_id = parse_worker_id(&worker_id)?;
    let leased = state
        .engine
        .worker_dequeue(&environment, &worker_id, request.max_runs, request.wait_ms)
        .await?;
    let mut runs = Vec::with_capacity(leased.len());
    for leased in leased {
        // A payload in object storage travels as its storage path, with a GET URL.
        let url =
            crate::packets::packet_url(&state, &environment, Some(&leased.run.payload), &headers)
                .await?;
        let mut run = dequeued_run(leased, &environment);
        run.payload_presigned_url = url;
        runs.push(run);
    }
    Ok(Json(DequeueResponse { runs }))
}

/// Starts held attempts: only run those listed in `started`.
#[utoipa::path(post, path = "/api/v1/workers/{workerId}/start", tag = "workers",
    params(("workerId" = String, Path, description = "From the registration")),
    request_body = StartRequest,
    responses((status = 200, body = StartResponse), (status = 400, description = "Empty, malformed or out-of-bounds body; the message names the field", body = crate::schemas::ErrorBody), (status = 401, description = "No `Authorization` header (problem+json) or a bad key", content((crate::schemas::ErrorBody = "application/json"), (crate::schemas::ProblemBody = "application/problem+json"))), (status = 404, description = "Unknown worker, or one of another environment", body = crate::schemas::ErrorBody)))]
pub async fn start(
    State(state): State<AppState>,
    Authenticated(environment): Authenticated,
    Path(worker_id): Path<String>,
    body: RawBody,
) -> Result<Json<StartResponse>, ApiError> {
    let request: StartRequest = json_body(body, &[])?;
    worker::check_batch(request.attempt_ids.len()).map_err(ApiError::BadRequest)?;
    let worker_id = parse_worker_id(&worker_id)?;
    let (started, cancel) = state
        .engine
        .worker_start(
            &environment,
            &worker_id,
            parse_attempt_ids(&request.attempt_ids),
        )
        .await?;
    Ok(Json(StartResponse {
        started: started.iter().map(AttemptId::to_string).collect(),
        cancel: not_held(request.attempt_ids, &cancel),
    }))
}

/// Extends the leases of held attempts; answers those to stop (a long poll of up to `waitMs`).
#[utoipa::path(post, path = "/api/v1/workers/{workerId}/heartbeat", tag = "workers",
    params(("workerId" = String, Path, description = "From the registration")),
    request_body = HeartbeatRequest,
    responses((status = 200, body = HeartbeatResponse), (status = 400, description = "Empty, malformed or out-of-bounds body; the message names the field", body = crate::schemas::ErrorBody), (status = 401, description = "No `Authorization` header (problem+json) or a bad key", content((crate::schemas::ErrorBody = "application/json"), (crate::schemas::ProblemBody = "application/problem+json"))), (status = 404, description = "Unknown worker, or one of another environment", body = crate::schemas::ErrorBody)))]
pub async fn heartbeat(
    State(state): State<AppState>,
    Authenticated(environment): Authenticated,
    Path(worker_id): Path<String>,
    body: RawBody,
) -> Result<Json<HeartbeatResponse>, ApiError> {
    let request: HeartbeatRequest = json_body(body, &[])?;
    worker::check_batch(request.attempt_ids.len()).map_err(ApiError::BadRequest)?;
    let worker_id = parse_worker_id(&worker_id)?;
    let attempt_ids = parse_attempt_ids(&request.attempt_ids);
    // An id that does not parse is to cancel: the answer is not empty, so it comes at once.
    let wait_ms = if attempt_ids.len() < request.attempt_ids.len() {
        0
    } else {
        request.wait_ms
    };
    let cancel = state
        .engine
        .worker_heartbeat(&environment, &worker_id, attempt_ids, wait_ms)
        .await?;
    Ok(Json(HeartbeatResponse {
        cancel: not_held(request.attempt_ids, &cancel),
    }))
}

/// Reports how attempts ended; `accepted: false` when the worker no longer held one.
#[utoipa::path(post, path = "/api/v1/workers/{workerId}/complete", tag = "workers",
    params(("workerId" = String, Path, description = "From the registration")),
    request_body = CompleteRequest,
    responses((status = 200, body = CompleteResponse), (status = 400, description = "Empty, malformed or out-of-bounds body; the message names the field", body = crate::schemas::ErrorBody), (status = 401, description = "No `Authorization` header (problem+json) or a bad key", content((crate::schemas::ErrorBody = "application/json"), (crate::schemas::ProblemBody = "application/problem+json"))), (status = 404, description = "Unknown worker, or one of another environment", body = crate::schemas::ErrorBody)))]
pub async fn complete(
    State(state): State<AppState>,
    Authenticated(environment): Authenticated,
    Path(worker_id): Path<String>,
    body: RawBody,
) -> Result<Json<CompleteResponse>, ApiError> {
    let request: CompleteRequest = json_body(body, &[])?;
    worker::check_batch(request.completions.len()).map_err(ApiError::BadRequest)?;
    for (i, c) in request.completions.iter().enumerate() {
        match (c.output_type.as_deref(), &c.outcome) {
            (None | Some(Packet::JSON), _) => {}
            (Some(Packet::STORE), AttemptOutcome::Success { output }) if !output.is_string() => {
                return Err(ApiError::BadRequest(format!(
                    "completions[{i}].output: must be a storage path (a string) when outputType is application/store"
                )))
            }
            (Some(Packet::STORE), _) => {}
            (Some(_), _) => {
                return Err(ApiError::BadRequest(format!(
                    "completions[{i}].outputType: must be application/json or application/store"
                )))
            }
        }
    }
    let worker_id = parse_worker_id(&worker_id)?;
    let completions = request
        .completions
        .iter()
        .filter_map(|c| {
            Some(Completion {
                attempt_id: AttemptId::parse(&c.attempt_id)?,
                outcome: c.outcome.clone(),
                output_type: c.output_type.clone(),
            })
        })
        .collect();
    let completed = state
        .engine
        .worker_complete(&environment, &worker_id, completions)
        .await?;
    Ok(Json(CompleteResponse {
        results: completion_results(request.completions, completed),
    }))
}

/// The worker named in the path; one whose id does not parse is unknown (404).
fn parse_worker_id(id: &str) -> Result<WorkerId, ApiError> {
    WorkerId::parse(id)
        .ok_or_else(|| runnel_engine::Error::Worker(WorkerError::UnknownWorker).into())
}

/// The attempt ids of a request that parse; the others name no attempt.
fn parse_attempt_ids(ids: &[String]) -> Vec<AttemptId> {
    ids.iter().filter_map(|id| AttemptId::parse(id)).collect()
}

/// The ids of `requested`, in request order, that the worker must stop: those the engine
/// answered in `cancel`, and those that do not parse (they name no attempt it holds).
fn not_held(requested: Vec<String>, cancel: &[AttemptId]) -> Vec<String> {
    let cancel: HashSet<&AttemptId> = cancel.iter().collect();
    requested
        .into_iter()
        .filter(|id| AttemptId::parse(id).is_none_or(|id| cancel.contains(&id)))
        .collect()
}

/// One result per reported completion, in request order: the engine's `completed` answers
/// the completions whose attempt id parsed, in order; the others are not accepted.
fn completion_results(
    reported: Vec<AttemptCompletion>,
    completed: Vec<Completed>,
) -> Vec<CompletionResult> {
    let mut completed = completed.into_iter();
    reported
        .into_iter()
        .map(|c| {
            let run_status = match AttemptId::parse(&c.attempt_id) {
                Some(_) => completed.next().and_then(|done| done.run_status),
                None => None,
            };
            CompletionResult {
                attempt_id: c.attempt_id,
                accepted: run_status.is_some(),
                run_status: run_status.map(|s| s.public(ApiVersion::Legacy).to_owned()),
            }
        })
        .collect()
}

/// A leased run as the worker receives it (docs/worker-protocol.md, "Dequeue").
fn dequeued_run(leased: Leased, environment: &Environment) -> DequeuedRun {
    let Leased { run, attempt } = leased;
    DequeuedRun {
        run_id: run.id.to_string(),
        attempt_id: attempt.id.to_string(),
        attempt_number: attempt.number,
        task_identifier: run.task_identifier,
        payload: run.payload.to_value().unwrap_or(serde_json::Value::Null),
        payload_type: run.payload.data_type,
        payload_presigned_url: None,
        max_duration_secs: run
            .max_duration_secs
            .filter(|secs| *secs < MAX_DURATION_MAX_SECS),
        machine: run.machine.unwrap_or_default().as_str().to_owned(),
        environment: environment.kind.slug().to_owned(),
        version: run.worker_version.unwrap_or_default(),
        is_test: run.is_test,
        tags: run.tags,
        lease_expires_at: run.lease_expires_at.map(iso).unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{DateTime, Utc};
    use runnel_core::run::{Attempt, AttemptStatus, Packet};
    use runnel_core::trigger::{IdempotencyHeaders, TriggerRequest};
    use runnel_core::{EnvironmentKind, MachinePreset, ProjectId, RunStatus};
    use serde_json::json;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn environment(kind: EnvironmentKind) -> Environment {
        Environment {
            id: runnel_core::EnvironmentId::generate(0),
            project_id: ProjectId::generate(0),
            kind,
        }
    }

    /// A run of `send-email` triggered with `body`, leased to a worker of version
    /// `20261129.1` until `2026-11-29T05:32:44.023Z`, with its first attempt.
    fn leased(environment: &Environment, body: serde_json::Value) -> Leased {
        let now = at("2026-11-29T05:32:14.023Z");
        let request: TriggerRequest = serde_json::from_value(body).unwrap();
        let mut run = request
            .validate("send-email", &IdempotencyHeaders::default(), now)
            .unwrap()
            .into_run(runnel_core::RunId::generate(0), environment.id.clone(), now);
        let worker = WorkerId::generate(0);
        let attempt = Attempt {
            id: AttemptId::generate(0),
            run_id: run.id.clone(),
            number: 1,
            status: AttemptStatus::Pending,
            created_at: now,
            updated_at: now,
            started_at: None,
            completed_at: None,
            error: None,
            worker_id: Some(worker.clone()),
            duration_ms: 0,
            waited_ms: 0,
        };
        run.status = RunStatus::Dequeued;
        run.worker_id = Some(worker);
        run.current_attempt_id = Some(attempt.id.clone());
        run.worker_version = Some("20261129.1".to_owned());
        run.attempt_count = 1;
        run.lease_expires_at = Some(at("2026-11-29T05:32:44.023Z"));
        Leased { run, attempt }
    }

    #[test]
    fn a_leased_run_renders_as_the_worker_protocol_documents_it() {
        let prod = environment(EnvironmentKind::Prod);
        let mut leased = leased(
            &prod,
            json!({"payload": {"to": "ada@example.com"}, "options": {"maxDuration": 300}}),
        );
        leased.run.machine = Some(MachinePreset::Small2x);
        let (run_id, attempt_id) = (leased.run.id.to_string(), leased.attempt.id.to_string());
        let rendered = dequeued_run(leased, &prod);
        assert_eq!(
            serde_json::to_value(&rendered).unwrap(),
            json!({
                "runId": run_id, "attemptId": attempt_id, "attemptNumber": 1,
                "taskIdentifier": "send-email", "payload": {"to": "ada@example.com"},
                "payloadType": "application/json", "maxDurationSecs": 300, "machine": "small-2x",
                "environment": "prod", "version": "20261129.1", "isTest": false, "tags": [],
                "leaseExpiresAt": "2026-11-29T05:32:44.023Z"
            })
        );
    }

    #[test]
    fn rendering_fills_the_defaults_and_decodes_the_payload() {
        let dev = environment(EnvironmentKind::Dev);
        // A superjson payload, no machine, no maxDuration, test run with tags.
        let mut leased = leased(
            &dev,
            json!({
                "payload": "{\"json\":{\"n\":1},\"meta\":{}}",
                "options": {"payloadType": "application/super+json", "tags": ["b", "a"], "test": true}
            }),
        );
        assert_eq!(leased.run.payload.data_type, Packet::SUPER_JSON);
        leased.run.worker_version = None;
        let rendered = dequeued_run(leased.clone(), &dev);
        assert_eq!(rendered.payload, json!({"n": 1}));
        assert_eq!(rendered.payload_type, "application/super+json");
        assert_eq!(rendered.machine, "small-1x");
        assert_eq!(rendered.max_duration_secs, None);
        assert_eq!(rendered.environment, "dev");
        assert_eq!(rendered.version, "");
        assert!(rendered.is_test);
        assert_eq!(rendered.tags, ["a", "b"]);
        let wire = serde_json::to_value(&rendered).unwrap();
        assert!(wire.get("maxDurationSecs").is_none(), "{wire}");

        // No payload: null. The largest maxDuration means no limit: left out.
        leased.run.payload = Packet {
            data: None,
            data_type: Packet::JSON.to_owned(),
        };
        leased.run.max_duration_secs = Some(MAX_DURATION_MAX_SECS);
        let rendered = dequeued_run(leased.clone(), &dev);
        assert_eq!(rendered.payload, serde_json::Value::Null);
        assert_eq!(rendered.max_duration_secs, None);
        leased.run.max_duration_secs = Some(MAX_DURATION_MAX_SECS - 1);
        assert_eq!(
            dequeued_run(leased, &dev).max_duration_secs,
            Some(MAX_DURATION_MAX_SECS - 1)
        );
    }

    #[test]
    fn a_registration_renders_with_a_heartbeat_every_third_of_the_lease() {
        let worker_id = WorkerId::generate(0);
        let registered = |ms| Registered {
            worker_id: worker_id.clone(),
            version: "20261129.1".to_owned(),
            lease_timeout: std::time::Duration::from_millis(ms),
        };
        assert_eq!(
            serde_json::to_value(register_response(registered(30_000))).unwrap(),
            json!({
                "workerId": worker_id.as_str(), "version": "20261129.1",
                "leaseTimeoutMs": 30_000, "heartbeatIntervalMs": 10_000
            })
        );
        assert_eq!(register_response(registered(2)).heartbeat_interval_ms, 1);
    }

    #[test]
    fn ids_that_do_not_parse_are_answered_as_not_held_in_request_order() {
        let held = AttemptId::generate(0);
        let lost = AttemptId::generate(1);
        let requested = vec![
            "garbage".to_owned(),
            held.to_string(),
            lost.to_string(),
            String::new(),
        ];
        assert_eq!(
            parse_attempt_ids(&requested),
            vec![held.clone(), lost.clone()]
        );
        assert_eq!(
            not_held(requested, std::slice::from_ref(&lost)),
            vec!["garbage".to_owned(), lost.to_string(), String::new()]
        );
    }

    #[test]
    fn completion_results_keep_request_order_and_render_the_legacy_status() {
        let (a, b) = (AttemptId::generate(0), AttemptId::generate(1));
        let reported = |id: &str| AttemptCompletion {
            attempt_id: id.to_owned(),
            outcome: runnel_core::worker::AttemptOutcome::Success { output: json!(1) },
            output_type: None,
        };
        let results = completion_results(
            vec![reported(a.as_str()), reported("nope"), reported(b.as_str())],
            vec![
                Completed {
                    attempt_id: a.clone(),
                    run_status: Some(RunStatus::RetryingAfterFailure),
                },
                Completed {
                    attempt_id: b.clone(),
                    run_status: None,
                },
            ],
        );
        assert_eq!(
            serde_json::to_value(results).unwrap(),
            json!([
                {"attemptId": a.as_str(), "accepted": true, "runStatus": "REATTEMPTING"},
                {"attemptId": "nope", "accepted": false},
                {"attemptId": b.as_str(), "accepted": false},
            ])
        );
    }
}
