//! Helpers every area shares: the fixed clock, a bootstrapped tenancy, runs to insert,
//! and the worker, lease and settlement steps most areas walk a run through.

pub(crate) use std::any::Any;
pub(crate) use std::sync::Arc;

pub(crate) use chrono::{DateTime, Duration, TimeZone, Utc};
pub(crate) use runnel_core::batch::{
    BatchItemRecord, BatchRecord, BatchStatus, CreateBatchRequest,
};
pub(crate) use runnel_core::key::{EnvironmentKind, PersonalAccessToken, SecretKey};
pub(crate) use runnel_core::retry::RetryPolicy;
pub(crate) use runnel_core::run::{Attempt, AttemptStatus, Packet, Run};
pub(crate) use runnel_core::tenancy::{ApiKeyInfo, Environment, PersonalAccessTokenInfo};
pub(crate) use runnel_core::trigger::{IdempotencyHeaders, TriggerRequest};
pub(crate) use runnel_core::BatchId;
pub(crate) use runnel_core::{AttemptId, MachinePreset, RunId, RunStatus, WorkerId};
pub(crate) use runnel_store::prelude::*;
pub(crate) use runnel_store::{
    AttemptSettlement, CancelOutcome, Claim, Deadline, KeyStanding, Leased, PgStore, QueueChange,
    QueueDeclaration, QueueKind, QueueRecord, QueueRef, Registered, RevokeOutcome, SqliteStore,
    Store, TaskConfig, TriggerOutcome, WorkerRecord, WorkerRegistration,
};
pub(crate) use runnel_store::{
    BatchCreateOutcome, BatchItemOutcome, BatchItemTrigger, BatchItemsOutcome,
};
pub(crate) use runnel_testkit::PgTestDatabase;
pub(crate) use serde_json::{json, Value};
pub(crate) use tokio::sync::Barrier;
pub(crate) use tokio::task::JoinSet;

pub(crate) const MINUTE: i64 = 60;
pub(crate) const HOUR: i64 = 3600;
/// Enough for any batch a test creates.
pub(crate) const NO_LIMIT: u32 = 1000;

/// The master key every key of the suite is sealed under.
pub(crate) fn master_keys() -> &'static runnel_core::secrets::MasterKeys {
    static KEYS: std::sync::LazyLock<runnel_core::secrets::MasterKeys> =
        std::sync::LazyLock::new(runnel_core::secrets::MasterKeys::ephemeral);
    &KEYS
}

/// The suite's fixed clock: 2026-01-02T03:04:05Z plus `secs`.
pub(crate) fn at(secs: i64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap() + Duration::seconds(secs)
}

/// The project's three environments and the key the project was bootstrapped with.
pub(crate) struct Tenancy {
    pub(crate) dev: Environment,
    pub(crate) staging: Environment,
    pub(crate) prod: Environment,
    pub(crate) dev_key: SecretKey,
}

pub(crate) async fn bootstrap(store: &dyn Store) -> Tenancy {
    let dev_key = SecretKey::generate(EnvironmentKind::Dev);
    let bootstrap = store
        .project_bootstrap(&dev_key, crate::harness::master_keys(), at(0))
        .await
        .expect("bootstrap")
        .expect("an empty database bootstraps");
    let environment = |kind: EnvironmentKind| {
        bootstrap
            .environments
            .iter()
            .find(|e| e.kind == kind)
            .cloned()
            .unwrap_or_else(|| panic!("bootstrap created no {kind} environment"))
    };
    Tenancy {
        dev: environment(EnvironmentKind::Dev),
        staging: environment(EnvironmentKind::Staging),
        prod: environment(EnvironmentKind::Prod),
        dev_key,
    }
}

/// The run a trigger of `task` with request `body` creates in `environment` at `now`.
pub(crate) fn run_from(
    task: &str,
    body: Value,
    environment: &Environment,
    now: DateTime<Utc>,
) -> Run {
    let request: TriggerRequest = serde_json::from_value(body).expect("a well-formed trigger body");
    request
        .validate(task, &IdempotencyHeaders::default(), now)
        .expect("a valid trigger")
        .into_run(
            RunId::generate(now.timestamp_millis()),
            environment.id.clone(),
            now,
        )
}

pub(crate) fn queued_run(environment: &Environment, now: DateTime<Utc>) -> Run {
    run_from("my-task", json!({"payload": {"n": 1}}), environment, now)
}

pub(crate) fn run_with_options(
    options: Value,
    environment: &Environment,
    now: DateTime<Utc>,
) -> Run {
    run_from(
        "my-task",
        json!({"payload": {"n": 1}, "options": options}),
        environment,
        now,
    )
}

pub(crate) fn keyed_run(
    task: &str,
    key: &str,
    environment: &Environment,
    now: DateTime<Utc>,
) -> Run {
    run_from(
        task,
        json!({"options": {"idempotencyKey": key}}),
        environment,
        now,
    )
}

/// Triggers `run` and asserts it was inserted.
pub(crate) async fn create(store: &dyn Store, run: &Run, now: DateTime<Utc>) {
    let outcome = store.run_trigger(run, now).await.expect("trigger");
    assert_eq!(
        outcome,
        TriggerOutcome::Created(run.id.clone()),
        "triggering {}",
        run.id
    );
}

/// The stored version of `run`, which must exist.
pub(crate) async fn stored(store: &dyn Store, run: &Run) -> Run {
    store
        .run_get(&run.environment_id, &run.id)
        .await
        .expect("run_get")
        .unwrap_or_else(|| panic!("run {} is not stored", run.id))
}

pub(crate) async fn stored_status(store: &dyn Store, run: &Run) -> RunStatus {
    stored(store, run).await.status
}

/// Ids in a stable order, for comparing sets of ids.
pub(crate) fn sorted(mut ids: Vec<RunId>) -> Vec<RunId> {
    ids.sort();
    ids
}

/// Asserts the test run really sets every optional field, and every other field away
/// from its default, so the round trip covers them all. Destructuring without `..`
/// makes this stop compiling when `Run` gains a field, until the field is added here.
pub(crate) fn assert_every_field_set(run: &Run) {
    let Run {
        id: _,
        environment_id: _,
        task_identifier: _,
        status,
        payload,
        output,
        error,
        idempotency_key,
        idempotency_key_user,
        idempotency_key_scope,
        idempotency_key_expires_at,
        tags,
        metadata,
        delay_until,
        ttl,
        expire_at,
        expired_at,
        max_attempts,
        max_duration_secs,
        machine,
        priority_ms,
        is_test,
        queue: _,
        concurrency_key,
        lock_to_version,
        worker_version,
        created_at,
        updated_at,
        started_at,
        completed_at,
        attempt_count,
        usage_duration_ms,
        cost_in_cents,
        base_cost_in_cents,
        depth,
        parent_run_id,
        root_run_id,
        batch_id,
        resume_parent_on_completion,
        schedule_id,
        queue_ts,
        worker_id,
        current_attempt_id,
        lease_expires_at,
        timeout_at,
        next_attempt_at,
        failed_attempts,
    } = run;
    let checks = [
        ("status", *status != RunStatus::Queued),
        ("payload.data", payload.data.is_some()),
        ("output", output.as_ref().is_some_and(|o| o.data.is_some())),
        ("error", error.is_some()),
        ("idempotency_key", idempotency_key.is_some()),
        ("idempotency_key_user", idempotency_key_user.is_some()),
        ("idempotency_key_scope", idempotency_key_scope.is_some()),
        (
            "idempotency_key_expires_at",
            idempotency_key_expires_at.is_some(),
        ),
        ("tags", tags.len() > 1),
        (
            "metadata",
            metadata.as_ref().is_some_and(|m| m.data.is_some()),
        ),
        ("delay_until", delay_until.is_some()),
        ("ttl", ttl.is_some()),
        ("expire_at", expire_at.is_some()),
        ("expired_at", expired_at.is_some()),
        ("max_attempts", max_attempts.is_some()),
        ("max_duration_secs", max_duration_secs.is_some()),
        ("machine", machine.is_some()),
        ("priority_ms", *priority_ms != 0),
        ("is_test", *is_test),
        ("concurrency_key", concurrency_key.is_some()),
        ("lock_to_version", lock_to_version.is_some()),
        ("worker_version", worker_version.is_some()),
        ("updated_at", updated_at != created_at),
        ("started_at", started_at.is_some()),
        ("completed_at", completed_at.is_some()),
        ("attempt_count", *attempt_count > 0),
        (
            "usage_duration_ms",
            *usage_duration_ms > i64::from(i32::MAX),
        ),
        ("cost_in_cents", *cost_in_cents != 0.0),
        ("base_cost_in_cents", *base_cost_in_cents != 0.0),
        ("depth", *depth > 0),
        ("parent_run_id", parent_run_id.is_some()),
        ("root_run_id", root_run_id.is_some()),
        ("batch_id", batch_id.is_some()),
        ("resume_parent_on_completion", *resume_parent_on_completion),
        ("schedule_id", schedule_id.is_some()),
        ("queue_ts", *queue_ts != created_at.timestamp_millis()),
        ("worker_id", worker_id.is_some()),
        ("current_attempt_id", current_attempt_id.is_some()),
        ("lease_expires_at", lease_expires_at.is_some()),
        ("timeout_at", timeout_at.is_some()),
        ("next_attempt_at", next_attempt_at.is_some()),
        ("failed_attempts", *failed_attempts > 0),
    ];
    for (field, is_set) in checks {
        assert!(is_set, "the round-trip run must set {field}");
    }
}

/// Triggers `runs` at `now` from one task each, started together behind a barrier;
/// each run with its outcome, in the order the runs were given.
pub(crate) async fn trigger_concurrently(
    store: &Arc<dyn Store>,
    runs: &[Run],
    now: DateTime<Utc>,
) -> Vec<(Run, runnel_store::Result<TriggerOutcome>)> {
    let start = Arc::new(Barrier::new(runs.len()));
    let mut triggers = JoinSet::new();
    for (position, run) in runs.iter().cloned().enumerate() {
        let store = Arc::clone(store);
        let start = Arc::clone(&start);
        triggers.spawn(async move {
            start.wait().await;
            let outcome = store.run_trigger(&run, now).await;
            (position, run, outcome)
        });
    }
    let mut done = triggers.join_all().await;
    done.sort_by_key(|(position, _, _)| *position);
    done.into_iter()
        .map(|(_, run, outcome)| (run, outcome))
        .collect()
}

/// The moves that take a queued run to `status` along the state machine's edges.
pub(crate) fn path_from_queued(status: RunStatus) -> Vec<RunStatus> {
    use RunStatus::*;
    match status {
        Queued => vec![],
        Dequeued | Expired | Canceled | PendingVersion => vec![status],
        Executing => vec![Dequeued, Executing],
        Delayed => panic!("no edge leads back to DELAYED"),
        other => vec![Dequeued, Executing, other],
    }
}

/// Moves a queued run to `to` through allowed transitions, all at `now`.
pub(crate) async fn walk(store: &dyn Store, id: &RunId, to: RunStatus, now: DateTime<Utc>) {
    let mut from = RunStatus::Queued;
    for step in path_from_queued(to) {
        assert!(
            store.run_transition(id, from, step, now).await.unwrap(),
            "{from} -> {step}"
        );
        from = step;
    }
}

/// How long a lease lasts in these tests.
pub(crate) const LEASE_SECS: i64 = 30;

/// The `maxDuration` grace these tests start attempts with.
pub(crate) const GRACE_MS: i64 = 5_000;

/// The run fee these tests start attempts with (a binary fraction, so sums are exact).
pub(crate) const FEE: f64 = 0.25;

/// A task as a version serves it, every setting left open.
pub(crate) fn task(id: &str) -> TaskConfig {
    TaskConfig {
        task_identifier: id.to_owned(),
        queue: format!("task/{id}"),
        retry: None,
        max_duration_secs: None,
        machine: None,
        file_path: None,
        scheduled: false,
    }
}

/// Registers a worker of `environment` serving `tasks` in `version` (assigned when
/// `None`); returns the worker as stored and what the registration did.
pub(crate) async fn register(
    store: &dyn Store,
    environment: &Environment,
    version: Option<&str>,
    tasks: Vec<TaskConfig>,
    now: DateTime<Utc>,
) -> (WorkerRecord, Registered) {
    let registration = WorkerRegistration {
        id: WorkerId::generate(now.timestamp_millis()),
        environment_id: environment.id.clone(),
        name: "test-worker".to_owned(),
        version: version.map(str::to_owned),
        tasks,
        schedules: Default::default(),
    };
    let registered = store
        .worker_register(&registration, now)
        .await
        .expect("worker_register");
    let worker = store
        .worker_get(&registration.id)
        .await
        .expect("worker_get")
        .expect("a registered worker is stored");
    (worker, registered)
}

/// A worker of `environment` serving `tasks` (settings left open) in `version`.
pub(crate) async fn serve(
    store: &dyn Store,
    environment: &Environment,
    version: &str,
    tasks: &[&str],
    now: DateTime<Utc>,
) -> WorkerRecord {
    let tasks = tasks.iter().map(|t| task(t)).collect();
    register(store, environment, Some(version), tasks, now)
        .await
        .0
}

/// A run of `task` waiting for a version, as the engine stores it when none serves it.
pub(crate) fn waiting_run(
    task: &str,
    options: Value,
    environment: &Environment,
    now: DateTime<Utc>,
) -> Run {
    let mut run = run_from(task, json!({"options": options}), environment, now);
    run.status = RunStatus::PendingVersion;
    run
}

/// Leases exactly one run to `worker` at `now`.
pub(crate) async fn lease(store: &dyn Store, worker: &WorkerRecord, now: DateTime<Utc>) -> Leased {
    let mut leased = store
        .run_dequeue(worker, 1, now + Duration::seconds(LEASE_SECS), now)
        .await
        .expect("run_dequeue");
    assert_eq!(leased.len(), 1, "one run to lease");
    leased.remove(0)
}

/// Leases one run to `worker` at `now` and starts its attempt at `now`; returns the run
/// and attempt as stored.
pub(crate) async fn lease_and_start(
    store: &dyn Store,
    worker: &WorkerRecord,
    now: DateTime<Utc>,
) -> Leased {
    let leased = lease(store, worker, now).await;
    let started = store
        .attempt_start(
            &worker.id,
            std::slice::from_ref(&leased.attempt.id),
            now + Duration::seconds(LEASE_SECS),
            GRACE_MS,
            FEE,
            now,
        )
        .await
        .expect("attempt_start");
    assert_eq!(started, vec![leased.attempt.id.clone()]);
    held(store, &leased.run).await
}

/// The run as stored, with its latest attempt.
pub(crate) async fn held(store: &dyn Store, run: &Run) -> Leased {
    let run = stored(store, run).await;
    let attempt = store
        .attempt_list(&run.id)
        .await
        .expect("attempt_list")
        .pop()
        .expect("the run has an attempt");
    Leased { run, attempt }
}

pub(crate) fn ids_of(leased: &[Leased]) -> Vec<RunId> {
    leased.iter().map(|l| l.run.id.clone()).collect()
}

/// A successful end of `leased`'s attempt.
pub(crate) fn succeeded(leased: &Leased, claim: Claim, now: DateTime<Utc>) -> AttemptSettlement {
    AttemptSettlement {
        run_id: leased.run.id.clone(),
        attempt_id: leased.attempt.id.clone(),
        claim,
        attempt_status: AttemptStatus::Completed,
        attempt_error: None,
        run_status: RunStatus::CompletedSuccessfully,
        run_error: None,
        output: Some(Packet::json(&json!({"ok": true}))),
        next_attempt_at: None,
        spends_attempt: true,
        duration_ms: 0,
        cost_in_cents: 0.0,
        now,
    }
}

/// A failed attempt of `leased`, retried at `retry_at`.
pub(crate) fn failed(
    leased: &Leased,
    claim: Claim,
    retry_at: DateTime<Utc>,
    now: DateTime<Utc>,
) -> AttemptSettlement {
    AttemptSettlement {
        attempt_status: AttemptStatus::Failed,
        attempt_error: Some(json!({"message": "boom"})),
        run_status: RunStatus::RetryingAfterFailure,
        output: None,
        next_attempt_at: Some(retry_at),
        ..succeeded(leased, claim, now)
    }
}
