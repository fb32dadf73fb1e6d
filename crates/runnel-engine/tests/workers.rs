//! The worker protocol through the engine, over a real SQLite store with a hand-driven
//! clock: registration and versions, dequeue, start, heartbeat and completion; retries
//! and their backoff; how each kind of failure ends a run; cancel; the rescuer and the
//! maxDuration backstop; and the two long polls (which wait on real tokio time).
//!
//! Every retry policy here has `randomize: false`, so backoff delays are exact (1 s,
//! then 2 s) and the tests can step the clock to the millisecond around them.

mod common;

use common::{harness, start, Harness};

use std::borrow::Borrow;
use std::time::{Duration as StdDuration, Instant};

use chrono::{DateTime, Duration, Utc};
use runnel_core::cost::Pricing;
use runnel_core::key::EnvironmentKind;
use runnel_core::run::{Attempt, AttemptStatus, Packet, Run};
use runnel_core::tenancy::Environment;
use runnel_core::trigger::{IdempotencyHeaders, TriggerRequest};
use runnel_core::worker::{AttemptOutcome, FailureKind, TaskFailure};
use runnel_core::{ApiVersion, AttemptId, MachinePreset, RunId, RunStatus, WorkerId};
use runnel_engine::{Completed, Completion, Leased, Registered, WorkerError};
use serde_json::{json, Value};

fn ms(n: i64) -> Duration {
    Duration::milliseconds(n)
}

/// A task `id` whose failures are retried up to `max_attempts` times, without jitter.
fn retried(id: &str, max_attempts: u32) -> Value {
    json!({"id": id, "retry": {"maxAttempts": max_attempts, "randomize": false}})
}

fn failure(kind: FailureKind, message: &str) -> AttemptOutcome {
    AttemptOutcome::Failure {
        error: TaskFailure::new(kind, message),
    }
}

fn success(output: Value) -> AttemptOutcome {
    AttemptOutcome::Success { output }
}

impl Harness {
    fn advance(&self, by: Duration) {
        self.clock.advance(by);
    }

    fn now(&self) -> DateTime<Utc> {
        self.engine.now()
    }

    fn lease_timeout(&self) -> Duration {
        Duration::from_std(self.engine.config().lease_timeout).unwrap()
    }

    async fn register_as(&self, environment: &Environment, body: Value) -> Registered {
        self.engine
            .worker_register(environment, serde_json::from_value(body).unwrap())
            .await
            .unwrap()
    }

    /// Registers a worker (version assigned) serving `tasks`; returns its id.
    async fn register(&self, environment: &Environment, tasks: Value) -> WorkerId {
        let registered = self
            .register_as(environment, json!({"name": "test", "tasks": tasks}))
            .await;
        registered.worker_id
    }

    async fn trigger(&self, environment: &Environment, task: &str, body: Value) -> RunId {
        let request: TriggerRequest = serde_json::from_value(body).unwrap();
        self.engine
            .trigger(environment, task, request, &IdempotencyHeaders::default())
            .await
            .unwrap()
            .id
    }

    /// Everything the worker can lease now (no waiting).
    async fn dequeue(&self, environment: &Environment, worker: &WorkerId) -> Vec<Leased> {
        self.engine
            .worker_dequeue(environment, worker, 10, 0)
            .await
            .unwrap()
    }

    async fn dequeue_one(&self, environment: &Environment, worker: &WorkerId) -> Leased {
        let mut runs = self
            .engine
            .worker_dequeue(environment, worker, 1, 0)
            .await
            .unwrap();
        assert_eq!(runs.len(), 1, "a run to lease");
        runs.remove(0)
    }

    async fn start(&self, environment: &Environment, worker: &WorkerId, attempt: &AttemptId) {
        let (started, cancel) = self
            .engine
            .worker_start(environment, worker, vec![attempt.clone()])
            .await
            .unwrap();
        assert_eq!((started, cancel), (vec![attempt.clone()], vec![]));
    }

    /// Leases one run and starts its attempt.
    async fn lease(&self, environment: &Environment, worker: &WorkerId) -> Leased {
        let run = self.dequeue_one(environment, worker).await;
        self.start(environment, worker, &run.attempt.id).await;
        run
    }

    /// Heartbeats `attempts` (no waiting); returns, sorted, those the worker must stop.
    async fn heartbeat<A: Borrow<AttemptId>>(
        &self,
        environment: &Environment,
        worker: &WorkerId,
        attempts: &[A],
    ) -> Vec<AttemptId> {
        let ids = attempts.iter().map(|a| a.borrow().clone()).collect();
        let mut cancel = self
            .engine
            .worker_heartbeat(environment, worker, ids, 0)
            .await
            .unwrap();
        cancel.sort();
        cancel
    }

    async fn complete(
        &self,
        environment: &Environment,
        worker: &WorkerId,
        attempt: &AttemptId,
        outcome: AttemptOutcome,
    ) -> Completed {
        let mut results = self
            .engine
            .worker_complete(
                environment,
                worker,
                vec![Completion {
                    attempt_id: attempt.clone(),
                    outcome,
                    output_type: None,
                }],
            )
            .await
            .unwrap();
        assert_eq!(results.len(), 1);
        results.remove(0)
    }

    async fn run(&self, environment: &Environment, id: &RunId) -> Run {
        self.engine
            .run_detail(environment, id)
            .await
            .unwrap()
            .unwrap()
            .run
    }

    async fn attempts(&self, environment: &Environment, id: &RunId) -> Vec<Attempt> {
        self.engine
            .run_detail(environment, id)
            .await
            .unwrap()
            .unwrap()
            .attempts
    }

    async fn status(&self, environment: &Environment, id: &RunId) -> RunStatus {
        self.run(environment, id).await.status
    }
}

fn accepted(attempt: &AttemptId, status: RunStatus) -> Completed {
    Completed {
        attempt_id: attempt.clone(),
        run_status: Some(status),
    }
}

fn refused(attempt: &AttemptId) -> Completed {
    Completed {
        attempt_id: attempt.clone(),
        run_status: None,
    }
}

// ---------------------------------------------------------------------------------------
// Success and costs

#[tokio::test]
async fn a_run_completes_with_its_output_times_and_no_cost_in_dev() {
    let h = harness().await;
    let registered = h
        .register_as(&h.dev, json!({"name": "test", "tasks": [{"id": "t"}]}))
        .await;
    assert_eq!(registered.version, "20260301.1");
    let worker = &registered.worker_id;
    let id = h
        .trigger(
            &h.dev,
            "t",
            json!({"payload": {"n": 1}, "options": {"tags": ["a"]}}),
        )
        .await;
    assert_eq!(h.status(&h.dev, &id).await, RunStatus::Queued);

    h.advance(ms(250));
    let dequeued_at = h.now();
    let dequeued = h.dequeue_one(&h.dev, worker).await;
    let Leased {
        run: leased,
        attempt,
    } = &dequeued;
    assert_eq!(leased.id, id);
    assert_eq!(leased.environment_id, h.dev.id);
    assert_eq!(attempt.run_id, id);
    assert_eq!(attempt.number, 1);
    assert_eq!(attempt.status, AttemptStatus::Pending);
    assert_eq!(leased.task_identifier, "t");
    assert_eq!(leased.payload, Packet::json(&json!({"n": 1})));
    assert_eq!(leased.payload.data_type, "application/json");
    assert_eq!(leased.max_duration_secs, None);
    assert_eq!(leased.machine.unwrap_or_default(), MachinePreset::Small1x);
    assert_eq!(leased.worker_version.as_deref(), Some("20260301.1"));
    assert!(!leased.is_test);
    assert_eq!(leased.tags, vec!["a".to_owned()]);
    assert_eq!(
        leased.lease_expires_at,
        Some(dequeued_at + h.lease_timeout())
    );
    assert_eq!(h.status(&h.dev, &id).await, RunStatus::Dequeued);

    h.advance(ms(1_000));
    let started_at = h.now();
    h.start(&h.dev, worker, &dequeued.attempt.id).await;
    assert_eq!(h.status(&h.dev, &id).await, RunStatus::Executing);

    h.advance(ms(2_500));
    let completed_at = h.now();
    let result = h
        .complete(
            &h.dev,
            worker,
            &dequeued.attempt.id,
            success(json!({"ok": true})),
        )
        .await;
    assert_eq!(
        result,
        accepted(&dequeued.attempt.id, RunStatus::CompletedSuccessfully)
    );

    let run = h.run(&h.dev, &id).await;
    assert_eq!(run.status, RunStatus::CompletedSuccessfully);
    assert_eq!(run.output, Some(Packet::json(&json!({"ok": true}))));
    assert_eq!(run.error, None);
    assert_eq!(run.started_at, Some(started_at));
    assert_eq!(run.completed_at, Some(completed_at));
    assert_eq!(run.usage_duration_ms, 2_500);
    assert_eq!(run.cost_in_cents, 0.0, "dev is free");
    assert_eq!(run.base_cost_in_cents, 0.0, "dev is free");
    assert_eq!(run.attempt_count, 1);
    assert_eq!(run.worker_version.as_deref(), Some("20260301.1"));
    assert_eq!(run.current_attempt_id, None);
    assert_eq!(run.lease_expires_at, None);
    assert_eq!(
        h.attempts(&h.dev, &id).await,
        vec![Attempt {
            id: dequeued.attempt.id.clone(),
            run_id: id.clone(),
            number: 1,
            status: AttemptStatus::Completed,
            created_at: dequeued_at,
            updated_at: completed_at,
            started_at: Some(started_at),
            completed_at: Some(completed_at),
            error: None,
            worker_id: Some(worker.clone()),
            duration_ms: 2_500,
            waited_ms: 0,
        }]
    );

    let again = h
        .complete(&h.dev, worker, &dequeued.attempt.id, success(json!(2)))
        .await;
    assert_eq!(
        again,
        refused(&dequeued.attempt.id),
        "an attempt completes once"
    );
    assert_eq!(h.run(&h.dev, &id).await, run);
}

#[tokio::test]
async fn a_prod_run_pays_for_its_compute_time_and_the_run_fee() {
    let h = harness().await;
    let worker = h
        .register(&h.prod, json!([{"id": "t", "machine": "large-1x"}]))
        .await;
    let id = h.trigger(&h.prod, "t", json!({})).await;
    let dequeued = h.lease(&h.prod, &worker).await;
    assert_eq!(dequeued.run.machine, Some(MachinePreset::Large1x));
    assert_eq!(dequeued.run.environment_id, h.prod.id);
    h.advance(ms(2_500));
    let result = h
        .complete(&h.prod, &worker, &dequeued.attempt.id, success(Value::Null))
        .await;
    assert_eq!(
        result,
        accepted(&dequeued.attempt.id, RunStatus::CompletedSuccessfully)
    );

    let pricing = Pricing::default();
    let run = h.run(&h.prod, &id).await;
    assert_eq!(run.status, RunStatus::CompletedSuccessfully);
    assert_eq!(run.output, None, "a null output is no output");
    assert_eq!(run.usage_duration_ms, 2_500);
    let want = pricing.compute_cents(EnvironmentKind::Prod, MachinePreset::Large1x, 2_500);
    assert!(want > 0.0);
    assert_eq!(run.cost_in_cents, want);
    assert_eq!(run.base_cost_in_cents, pricing.run_fee_cents);
    assert!(run.base_cost_in_cents > 0.0);
}

// ---------------------------------------------------------------------------------------
// Failures and retries

#[tokio::test]
async fn a_task_failing_twice_then_succeeding_retries_after_exact_backoffs() {
    let h = harness().await;
    let worker = h.register(&h.dev, json!([retried("t", 3)])).await;
    let id = h.trigger(&h.dev, "t", json!({})).await;

    let mut attempt_ids = Vec::new();
    for (number, message, backoff_ms) in [(1, "first", 1_000), (2, "second", 2_000)] {
        let leased = h.lease(&h.dev, &worker).await;
        assert_eq!(leased.attempt.number, number);
        attempt_ids.push(leased.attempt.id.clone());
        h.advance(ms(100));
        let result = h
            .complete(
                &h.dev,
                &worker,
                &leased.attempt.id,
                failure(FailureKind::TaskFailed, message),
            )
            .await;
        assert_eq!(
            result,
            accepted(&leased.attempt.id, RunStatus::RetryingAfterFailure)
        );

        let run = h.run(&h.dev, &id).await;
        assert_eq!(run.status, RunStatus::RetryingAfterFailure);
        assert_eq!(run.next_attempt_at, Some(h.now() + ms(backoff_ms)));
        assert_eq!(run.failed_attempts, number);
        assert_eq!(run.error, None, "the run has not failed yet");

        h.advance(ms(backoff_ms - 1));
        assert_eq!(h.engine.run_due_transitions().await.unwrap(), 0);
        assert_eq!(h.status(&h.dev, &id).await, RunStatus::RetryingAfterFailure);
        assert!(
            h.dequeue(&h.dev, &worker).await.is_empty(),
            "not before the backoff"
        );
        h.advance(ms(1));
        assert_eq!(h.engine.run_due_transitions().await.unwrap(), 1);
        assert_eq!(h.status(&h.dev, &id).await, RunStatus::Queued);
    }

    let last = h.lease(&h.dev, &worker).await;
    assert_eq!(last.attempt.number, 3);
    attempt_ids.push(last.attempt.id.clone());
    let result = h
        .complete(&h.dev, &worker, &last.attempt.id, success(json!("done")))
        .await;
    assert_eq!(
        result,
        accepted(&last.attempt.id, RunStatus::CompletedSuccessfully)
    );

    let run = h.run(&h.dev, &id).await;
    assert_eq!(run.status, RunStatus::CompletedSuccessfully);
    assert_eq!(run.output, Some(Packet::json(&json!("done"))));
    assert_eq!(run.attempt_count, 3);
    assert_eq!(run.failed_attempts, 2);
    assert_eq!(run.usage_duration_ms, 200);
    let attempts = h.attempts(&h.dev, &id).await;
    let ends: Vec<(AttemptId, u32, AttemptStatus, Option<Value>)> = attempts
        .into_iter()
        .map(|a| (a.id, a.number, a.status, a.error))
        .collect();
    assert_eq!(
        ends,
        vec![
            (
                attempt_ids[0].clone(),
                1,
                AttemptStatus::Failed,
                Some(json!({"message": "first"}))
            ),
            (
                attempt_ids[1].clone(),
                2,
                AttemptStatus::Failed,
                Some(json!({"message": "second"}))
            ),
            (attempt_ids[2].clone(), 3, AttemptStatus::Completed, None),
        ]
    );
}

/// Fails every attempt of a fresh run of `task` and returns the run once it ended,
/// stepping the clock over each backoff.
async fn fail_until_final(
    h: &Harness,
    environment: &Environment,
    worker: &WorkerId,
    id: &RunId,
    kind: FailureKind,
) -> (Run, Vec<Completed>) {
    let mut results = Vec::new();
    for n in 1..=10 {
        let leased = h.lease(environment, worker).await;
        assert_eq!(leased.run.id, *id);
        let result = h
            .complete(
                environment,
                worker,
                &leased.attempt.id,
                failure(kind, &format!("failure {n}")),
            )
            .await;
        assert!(result.run_status.is_some(), "accepted: {result:?}");
        results.push(result);
        let run = h.run(environment, id).await;
        if run.status.is_final() {
            return (run, results);
        }
        assert_eq!(run.status, RunStatus::RetryingAfterFailure);
        h.advance(run.next_attempt_at.unwrap() - h.now());
        assert_eq!(h.engine.run_due_transitions().await.unwrap(), 1);
    }
    panic!("the run never ended");
}

#[tokio::test]
async fn exhausted_retries_end_the_run_with_the_last_error() {
    let h = harness().await;
    let worker = h.register(&h.dev, json!([retried("t", 2)])).await;
    let id = h.trigger(&h.dev, "t", json!({})).await;
    let (run, results) = fail_until_final(&h, &h.dev, &worker, &id, FailureKind::TaskFailed).await;

    let statuses: Vec<_> = results
        .iter()
        .map(|r| r.run_status.unwrap().public(ApiVersion::Legacy))
        .collect();
    assert_eq!(statuses, ["REATTEMPTING", "FAILED"]);
    assert_eq!(run.status, RunStatus::CompletedWithErrors);
    assert_eq!(
        run.error,
        Some(json!({"type": "BUILT_IN_ERROR", "name": "Error", "message": "failure 2"}))
    );
    assert_eq!(run.completed_at, Some(h.now()));
    assert_eq!(run.next_attempt_at, None);
    assert_eq!((run.attempt_count, run.failed_attempts), (2, 2));
    let attempts = h.attempts(&h.dev, &id).await;
    assert!(attempts.iter().all(|a| a.status == AttemptStatus::Failed));
    assert!(h.dequeue(&h.dev, &worker).await.is_empty());
}

#[tokio::test]
async fn the_trigger_max_attempts_overrides_the_task_policy() {
    let h = harness().await;
    let worker = h
        .register(
            &h.dev,
            json!([retried("generous", 5), retried("strict", 1)]),
        )
        .await;

    let fewer = h
        .trigger(&h.dev, "generous", json!({"options": {"maxAttempts": 1}}))
        .await;
    let (run, results) =
        fail_until_final(&h, &h.dev, &worker, &fewer, FailureKind::TaskFailed).await;
    assert_eq!(results.len(), 1, "no retry: the trigger allows one attempt");
    assert_eq!(run.status, RunStatus::CompletedWithErrors);

    let more = h
        .trigger(&h.dev, "strict", json!({"options": {"maxAttempts": 2}}))
        .await;
    let (run, results) =
        fail_until_final(&h, &h.dev, &worker, &more, FailureKind::TaskFailed).await;
    assert_eq!(
        results.len(),
        2,
        "one retry: the trigger allows two attempts"
    );
    assert_eq!(run.status, RunStatus::CompletedWithErrors);
}

#[tokio::test]
async fn a_crash_is_retried_then_ends_the_run_crashed() {
    let h = harness().await;
    let worker = h.register(&h.dev, json!([retried("t", 2)])).await;
    let id = h.trigger(&h.dev, "t", json!({})).await;
    let (run, results) = fail_until_final(&h, &h.dev, &worker, &id, FailureKind::Crashed).await;
    let statuses: Vec<_> = results
        .iter()
        .map(|r| r.run_status.unwrap().public(ApiVersion::Legacy))
        .collect();
    assert_eq!(statuses, ["REATTEMPTING", "CRASHED"]);
    assert_eq!(run.status, RunStatus::Crashed);
    assert_eq!(
        run.error,
        Some(json!({"type": "INTERNAL_ERROR", "code": "TASK_RUN_CRASHED", "message": "failure 2"}))
    );
}

/// Timeouts, our own failures and (in dev) interruptions end the run at once, however
/// many attempts the policy allows.
#[tokio::test]
async fn failures_that_are_never_retried() {
    let cases = [
        (
            FailureKind::MaxDurationExceeded,
            RunStatus::TimedOut,
            "TIMED_OUT",
            "MAX_DURATION_EXCEEDED",
        ),
        (
            FailureKind::SystemFailure,
            RunStatus::SystemFailure,
            "SYSTEM_FAILURE",
            "TASK_RUN_SYSTEM_FAILURE",
        ),
        (
            FailureKind::Interrupted,
            RunStatus::Interrupted,
            "INTERRUPTED",
            "TASK_RUN_INTERRUPTED",
        ),
    ];
    for (kind, status, public, code) in cases {
        let h = harness().await;
        let worker = h.register(&h.dev, json!([retried("t", 10)])).await;
        let id = h.trigger(&h.dev, "t", json!({})).await;
        let (run, results) = fail_until_final(&h, &h.dev, &worker, &id, kind).await;
        assert_eq!(results.len(), 1, "{kind:?} is not retried");
        assert_eq!(
            results[0].run_status.map(|s| s.public(ApiVersion::Legacy)),
            Some(public),
            "{kind:?}"
        );
        assert_eq!(run.status, status, "{kind:?}");
        assert_eq!(
            run.error,
            Some(json!({"type": "INTERNAL_ERROR", "code": code, "message": "failure 1"})),
            "{kind:?}"
        );
        assert_eq!(run.completed_at, Some(h.now()));
        h.advance(Duration::hours(1));
        assert_eq!(h.engine.run_due_transitions().await.unwrap(), 0);
        assert_eq!(h.engine.rescue_due().await.unwrap(), 0);
        assert_eq!(h.run(&h.dev, &id).await, run, "{status} is final");
    }
}

/// A worker stopped by its operator: outside dev the run goes back to the queue and the
/// attempt does not count against maxAttempts.
#[tokio::test]
async fn an_interrupted_prod_attempt_requeues_the_run_without_spending_an_attempt() {
    let h = harness().await;
    let worker = h.register(&h.prod, json!([retried("t", 2)])).await;
    let id = h.trigger(&h.prod, "t", json!({})).await;
    let first = h.lease(&h.prod, &worker).await;
    let result = h
        .complete(
            &h.prod,
            &worker,
            &first.attempt.id,
            failure(FailureKind::Interrupted, "SIGTERM"),
        )
        .await;
    assert_eq!(result, accepted(&first.attempt.id, RunStatus::Queued));
    let run = h.run(&h.prod, &id).await;
    assert_eq!(run.status, RunStatus::Queued);
    assert_eq!(run.failed_attempts, 0);
    assert_eq!(run.error, None);
    assert_eq!(run.next_attempt_at, None);
    let attempts = h.attempts(&h.prod, &id).await;
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0].status, AttemptStatus::Canceled);

    // Queued again at once, as attempt 2; its failure is the first that counts, so the
    // policy's second attempt is still there.
    let second = h.lease(&h.prod, &worker).await;
    assert_eq!(second.attempt.number, 2);
    let result = h
        .complete(
            &h.prod,
            &worker,
            &second.attempt.id,
            failure(FailureKind::TaskFailed, "x"),
        )
        .await;
    assert_eq!(
        result,
        accepted(&second.attempt.id, RunStatus::RetryingAfterFailure)
    );
}

// ---------------------------------------------------------------------------------------
// Cancel

#[tokio::test]
async fn a_canceled_executing_run_stops_its_attempt_and_refuses_the_late_completion() {
    let h = harness().await;
    let worker = h.register(&h.prod, json!([{"id": "t"}])).await;
    let id = h.trigger(&h.prod, "t", json!({})).await;
    let leased = h.lease(&h.prod, &worker).await;
    h.advance(ms(1_000));
    let canceled_at = h.now();
    assert_eq!(
        h.engine.cancel(&h.prod, &id).await.unwrap(),
        Some(id.clone())
    );

    let run = h.run(&h.prod, &id).await;
    assert_eq!(run.status, RunStatus::Canceled);
    assert_eq!(run.completed_at, Some(canceled_at));
    assert_eq!(run.usage_duration_ms, 1_000, "charged up to the cancel");
    let want =
        Pricing::default().compute_cents(EnvironmentKind::Prod, MachinePreset::Small1x, 1_000);
    assert!(
        (run.cost_in_cents - want).abs() < 1e-12,
        "{} != {want}",
        run.cost_in_cents
    );
    let attempts = h.attempts(&h.prod, &id).await;
    assert_eq!(attempts[0].status, AttemptStatus::Canceled);

    assert_eq!(
        h.heartbeat(&h.prod, &worker, &[&leased.attempt.id]).await,
        vec![leased.attempt.id.clone()],
        "the heartbeat tells the worker to stop"
    );
    h.advance(ms(500));
    let late = h
        .complete(&h.prod, &worker, &leased.attempt.id, success(json!(1)))
        .await;
    assert_eq!(late, refused(&leased.attempt.id));
    assert_eq!(h.run(&h.prod, &id).await, run, "the cancel stands");
    assert_eq!(h.attempts(&h.prod, &id).await, attempts);

    // Canceling again, or from another environment, changes nothing.
    assert_eq!(
        h.engine.cancel(&h.prod, &id).await.unwrap(),
        Some(id.clone())
    );
    assert_eq!(h.engine.cancel(&h.dev, &id).await.unwrap(), None);
    assert_eq!(h.run(&h.prod, &id).await, run);
}

#[tokio::test]
async fn a_canceled_leased_run_is_not_started() {
    let h = harness().await;
    let worker = h.register(&h.dev, json!([{"id": "t"}])).await;
    let id = h.trigger(&h.dev, "t", json!({})).await;
    let dequeued = h.dequeue_one(&h.dev, &worker).await;
    h.engine.cancel(&h.dev, &id).await.unwrap();
    let (started, cancel) = h
        .engine
        .worker_start(&h.dev, &worker, vec![dequeued.attempt.id.clone()])
        .await
        .unwrap();
    assert_eq!(
        (started, cancel),
        (vec![], vec![dequeued.attempt.id.clone()])
    );
    let run = h.run(&h.dev, &id).await;
    assert_eq!(run.status, RunStatus::Canceled);
    assert_eq!(run.started_at, None);
}

// ---------------------------------------------------------------------------------------
// Rescuer and maxDuration backstop

#[tokio::test]
async fn the_rescuer_crashes_a_silent_executing_attempt_and_requeues_an_unstarted_one() {
    let h = harness().await;
    let worker = h.register(&h.dev, json!([retried("t", 3)])).await;
    let executing_id = h.trigger(&h.dev, "t", json!({})).await;
    // Runs of one millisecond have no order between them.
    h.advance(ms(1));
    let dequeued_id = h.trigger(&h.dev, "t", json!({})).await;
    let executing = h.lease(&h.dev, &worker).await;
    assert_eq!(executing.run.id, executing_id);
    let dequeued = h.dequeue_one(&h.dev, &worker).await;
    assert_eq!(dequeued.run.id, dequeued_id);

    h.advance(h.lease_timeout() - ms(1));
    assert_eq!(
        h.engine.rescue_due().await.unwrap(),
        0,
        "the leases still hold"
    );
    h.advance(ms(1));
    assert_eq!(h.engine.rescue_due().await.unwrap(), 2);

    let crashed = h.run(&h.dev, &executing_id).await;
    assert_eq!(crashed.status, RunStatus::RetryingAfterFailure);
    assert_eq!(crashed.failed_attempts, 1);
    assert_eq!(crashed.next_attempt_at, Some(h.now() + ms(1_000)));
    assert_eq!(
        crashed.usage_duration_ms,
        h.lease_timeout().num_milliseconds()
    );
    let attempt = &h.attempts(&h.dev, &executing_id).await[0];
    assert_eq!(attempt.status, AttemptStatus::Failed);
    assert_eq!(
        attempt.error,
        Some(
            json!({"message": "Worker stopped heartbeating (lease expired): the attempt crashed"})
        )
    );

    let requeued = h.run(&h.dev, &dequeued_id).await;
    assert_eq!(requeued.status, RunStatus::Queued);
    assert_eq!(
        requeued.failed_attempts, 0,
        "an attempt that never started is not spent"
    );
    assert_eq!(requeued.error, None);
    assert_eq!(
        h.attempts(&h.dev, &dequeued_id).await[0].status,
        AttemptStatus::Canceled
    );

    // The worker hears that both are gone; its late report changes nothing.
    let mut both = vec![executing.attempt.id.clone(), dequeued.attempt.id.clone()];
    both.sort();
    assert_eq!(
        h.heartbeat(
            &h.dev,
            &worker,
            &[&executing.attempt.id, &dequeued.attempt.id]
        )
        .await,
        both
    );
    let late = h
        .complete(&h.dev, &worker, &executing.attempt.id, success(json!(1)))
        .await;
    assert_eq!(late, refused(&executing.attempt.id));
    assert_eq!(h.run(&h.dev, &executing_id).await, crashed);
    assert_eq!(h.engine.rescue_due().await.unwrap(), 0, "rescued once");

    // The unstarted run is available at once; the crashed one after its backoff, as a
    // new attempt.
    let again = h.dequeue(&h.dev, &worker).await;
    assert_eq!(
        again
            .iter()
            .map(|r| (r.run.id.clone(), r.attempt.number))
            .collect::<Vec<_>>(),
        vec![(dequeued_id.clone(), 2)]
    );
    h.advance(ms(1_000));
    assert_eq!(h.engine.run_due_transitions().await.unwrap(), 1);
    let retry = h.dequeue_one(&h.dev, &worker).await;
    assert_eq!(
        (retry.run.id, retry.attempt.number),
        (executing_id.clone(), 2)
    );
}

#[tokio::test]
async fn heartbeats_keep_an_attempt_from_the_rescuer() {
    let h = harness().await;
    let worker = h.register(&h.dev, json!([{"id": "t"}])).await;
    let id = h.trigger(&h.dev, "t", json!({})).await;
    let leased = h.lease(&h.dev, &worker).await;
    let step = h.lease_timeout() * 2 / 3;
    for _ in 0..3 {
        h.advance(step);
        assert_eq!(
            h.heartbeat(&h.dev, &worker, &[&leased.attempt.id]).await,
            Vec::<AttemptId>::new()
        );
        assert_eq!(h.engine.rescue_due().await.unwrap(), 0);
    }
    assert_eq!(h.status(&h.dev, &id).await, RunStatus::Executing);
    h.advance(h.lease_timeout());
    assert_eq!(
        h.engine.rescue_due().await.unwrap(),
        1,
        "heartbeats stopped"
    );
    assert_eq!(h.status(&h.dev, &id).await, RunStatus::RetryingAfterFailure);
}

#[tokio::test]
async fn the_max_duration_backstop_times_out_an_attempt_its_worker_never_stops() {
    let h = harness().await;
    let worker = h
        .register(&h.dev, json!([{"id": "t", "maxDuration": 10}]))
        .await;
    let id = h.trigger(&h.dev, "t", json!({})).await;
    let leased = h.lease(&h.dev, &worker).await;
    assert_eq!(leased.run.max_duration_secs, Some(10));

    // The worker keeps heartbeating, so only the deadline (10 s + grace) can end it.
    let grace = Duration::from_std(h.engine.config().timeout_grace).unwrap();
    let deadline = h.now() + Duration::seconds(10) + grace;
    h.advance(deadline - h.now() - ms(1));
    assert_eq!(
        h.heartbeat(&h.dev, &worker, &[&leased.attempt.id]).await,
        Vec::<AttemptId>::new()
    );
    assert_eq!(h.engine.rescue_due().await.unwrap(), 0);
    h.advance(ms(1));
    assert_eq!(h.engine.rescue_due().await.unwrap(), 1);

    let run = h.run(&h.dev, &id).await;
    assert_eq!(run.status, RunStatus::TimedOut);
    assert_eq!(
        run.error,
        Some(json!({
            "type": "INTERNAL_ERROR",
            "code": "MAX_DURATION_EXCEEDED",
            "message": "Run exceeded maxDuration of 10s and its worker did not stop it",
        }))
    );
    assert_eq!(run.completed_at, Some(deadline));
    assert_eq!(
        run.usage_duration_ms,
        (deadline - start()).num_milliseconds()
    );
    assert_eq!(
        h.heartbeat(&h.dev, &worker, &[&leased.attempt.id]).await,
        vec![leased.attempt.id.clone()]
    );
    let late = h
        .complete(&h.dev, &worker, &leased.attempt.id, success(json!(1)))
        .await;
    assert_eq!(late, refused(&leased.attempt.id));
    assert_eq!(h.run(&h.dev, &id).await, run);
}

// ---------------------------------------------------------------------------------------
// Versions

#[tokio::test]
async fn a_run_waits_for_a_version_serving_its_task_and_registration_queues_it() {
    let h = harness().await;
    let id = h.trigger(&h.dev, "t", json!({})).await;
    assert_eq!(h.status(&h.dev, &id).await, RunStatus::PendingVersion);
    let delayed = h
        .trigger(&h.dev, "t", json!({"options": {"delay": "1s"}}))
        .await;
    h.advance(ms(1_000));
    h.engine.run_due_transitions().await.unwrap();
    assert_eq!(
        h.status(&h.dev, &delayed).await,
        RunStatus::PendingVersion,
        "its delay ended, still no version"
    );
    // A worker of another task or another environment does not serve it.
    h.register(&h.dev, json!([{"id": "other"}])).await;
    h.register(&h.prod, json!([{"id": "t"}])).await;
    assert_eq!(h.status(&h.dev, &id).await, RunStatus::PendingVersion);

    let worker = h.register(&h.dev, json!([{"id": "t"}])).await;
    assert_eq!(h.status(&h.dev, &id).await, RunStatus::Queued);
    assert_eq!(h.status(&h.dev, &delayed).await, RunStatus::Queued);
    let runs = h.dequeue(&h.dev, &worker).await;
    let ids: Vec<_> = runs.iter().map(|r| r.run.id.clone()).collect();
    assert_eq!(ids, vec![id, delayed]);
}

#[tokio::test]
async fn lock_to_version_waits_for_that_exact_version() {
    let h = harness().await;
    let v1 = h
        .register_as(
            &h.dev,
            json!({"name": "a", "version": "v1", "tasks": [{"id": "t"}]}),
        )
        .await
        .worker_id;
    let id = h
        .trigger(&h.dev, "t", json!({"options": {"lockToVersion": "v2"}}))
        .await;
    assert_eq!(h.status(&h.dev, &id).await, RunStatus::PendingVersion);
    h.register_as(
        &h.dev,
        json!({"name": "b", "version": "v3", "tasks": [{"id": "t"}]}),
    )
    .await;
    assert_eq!(h.status(&h.dev, &id).await, RunStatus::PendingVersion);

    let v2 = h
        .register_as(
            &h.dev,
            json!({"name": "c", "version": "v2", "tasks": [{"id": "t"}]}),
        )
        .await;
    assert_eq!(v2.version, "v2");
    assert_eq!(h.status(&h.dev, &id).await, RunStatus::Queued);
    assert!(
        h.dequeue(&h.dev, &v1).await.is_empty(),
        "locked to another version"
    );
    let leased = h.dequeue_one(&h.dev, &v2.worker_id).await;
    assert_eq!(leased.run.id, id);
    assert_eq!(leased.run.worker_version.as_deref(), Some("v2"));

    // Locked to a version that exists: queued at once.
    let direct = h
        .trigger(&h.dev, "t", json!({"options": {"lockToVersion": "v1"}}))
        .await;
    assert_eq!(h.status(&h.dev, &direct).await, RunStatus::Queued);
}

// ---------------------------------------------------------------------------------------
// Long polls (real time: they wait on tokio's clock)

/// Far longer than any test waits, so an answer before it came from a wake-up.
const LONG_WAIT_MS: u64 = 20_000;
/// How long a poll must stay open to show it is waiting.
const HELD: StdDuration = StdDuration::from_millis(200);
/// How soon a woken poll must answer.
const PROMPT: StdDuration = StdDuration::from_secs(5);

#[tokio::test]
async fn a_dequeue_long_poll_answers_as_soon_as_a_run_is_triggered() {
    let h = harness().await;
    let worker = h.register(&h.dev, json!([{"id": "t"}])).await;
    let began = Instant::now();
    let mut poll = tokio::spawn({
        let (engine, dev, worker) = (h.engine.clone(), h.dev.clone(), worker.clone());
        async move { engine.worker_dequeue(&dev, &worker, 10, LONG_WAIT_MS).await }
    });
    assert!(
        tokio::time::timeout(HELD, &mut poll).await.is_err(),
        "nothing queued: the poll waits"
    );

    let id = h.trigger(&h.dev, "t", json!({})).await;
    let runs = tokio::time::timeout(PROMPT, poll)
        .await
        .expect("the trigger wakes the poll")
        .unwrap()
        .unwrap();
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].run.id, id);
    assert!(began.elapsed() < StdDuration::from_millis(LONG_WAIT_MS / 2));
}

#[tokio::test]
async fn a_heartbeat_long_poll_answers_as_soon_as_a_held_run_is_canceled() {
    let h = harness().await;
    let worker = h.register(&h.dev, json!([{"id": "t"}])).await;
    let id = h.trigger(&h.dev, "t", json!({})).await;
    let leased = h.lease(&h.dev, &worker).await;
    let began = Instant::now();
    let mut poll = tokio::spawn({
        let (engine, dev, worker) = (h.engine.clone(), h.dev.clone(), worker.clone());
        let attempts = vec![leased.attempt.id.clone()];
        async move {
            engine
                .worker_heartbeat(&dev, &worker, attempts, LONG_WAIT_MS)
                .await
        }
    });
    assert!(
        tokio::time::timeout(HELD, &mut poll).await.is_err(),
        "the attempt is held: the poll waits"
    );

    h.engine.cancel(&h.dev, &id).await.unwrap();
    let cancel = tokio::time::timeout(PROMPT, poll)
        .await
        .expect("the cancel wakes the poll")
        .unwrap()
        .unwrap();
    assert_eq!(cancel, vec![leased.attempt.id.clone()]);
    assert!(began.elapsed() < StdDuration::from_millis(LONG_WAIT_MS / 2));
}

// ---------------------------------------------------------------------------------------
// Who may act on what

fn is_unknown_worker<T>(result: Result<T, runnel_engine::Error>) -> bool {
    matches!(
        result,
        Err(runnel_engine::Error::Worker(WorkerError::UnknownWorker))
    )
}

#[tokio::test]
async fn a_worker_of_another_environment_is_unknown() {
    let h = harness().await;
    let worker = h.register(&h.dev, json!([{"id": "t"}])).await;
    // A queued prod run the dev worker must not reach.
    h.register(&h.prod, json!([{"id": "t"}])).await;
    let id = h.trigger(&h.prod, "t", json!({})).await;
    let e = &h.engine;
    let ids = || vec![AttemptId::parse("attempt_0000000000000000000000").unwrap()];
    let check = |env: Environment, worker: WorkerId| async move {
        assert!(
            is_unknown_worker(e.worker_dequeue(&env, &worker, 1, 0).await),
            "dequeue {worker}"
        );
        assert!(
            is_unknown_worker(e.worker_start(&env, &worker, ids()).await),
            "start"
        );
        assert!(
            is_unknown_worker(e.worker_heartbeat(&env, &worker, ids(), 0).await),
            "heartbeat"
        );
        let completion = Completion {
            attempt_id: ids()[0].clone(),
            outcome: success(Value::Null),
            output_type: None,
        };
        assert!(
            is_unknown_worker(e.worker_complete(&env, &worker, vec![completion]).await),
            "complete"
        );
    };
    // Before and after the worker is cached by a call from its own environment.
    check(h.prod.clone(), worker.clone()).await;
    assert!(h.dequeue(&h.dev, &worker).await.is_empty());
    check(h.prod.clone(), worker.clone()).await;
    check(
        h.dev.clone(),
        WorkerId::parse("worker_0000000000000000000000").unwrap(),
    )
    .await;
    // An id that is not a worker id does not reach the engine: the server answers it as
    // an unknown worker (runnel-server's tests).
    assert_eq!(h.status(&h.prod, &id).await, RunStatus::Queued);
}

#[tokio::test]
async fn only_the_worker_holding_an_attempt_may_start_extend_or_complete_it() {
    let h = harness().await;
    let holder = h.register(&h.dev, json!([{"id": "t"}])).await;
    let other = h.register(&h.dev, json!([{"id": "t"}])).await;
    let id = h.trigger(&h.dev, "t", json!({})).await;
    let dequeued = h.dequeue_one(&h.dev, &holder).await;
    let attempt = dequeued.attempt.id.clone();

    let (started, cancel) = h
        .engine
        .worker_start(&h.dev, &other, vec![attempt.clone()])
        .await
        .unwrap();
    assert_eq!((started, cancel), (vec![], vec![attempt.clone()]));
    h.start(&h.dev, &holder, &attempt).await;
    // A repeated start (its answer lost) confirms the attempt instead of stopping it,
    // for the holder only.
    let again = h
        .engine
        .worker_start(&h.dev, &holder, vec![attempt.clone()])
        .await
        .unwrap();
    assert_eq!(again, (vec![attempt.clone()], vec![]));
    let stolen = h
        .engine
        .worker_start(&h.dev, &other, vec![attempt.clone()])
        .await
        .unwrap();
    assert_eq!(stolen, (vec![], vec![attempt.clone()]));
    let before = h.run(&h.dev, &id).await;

    h.advance(ms(10_000));
    assert_eq!(
        h.heartbeat(&h.dev, &other, &[&attempt]).await,
        vec![attempt.clone()]
    );
    let result = h
        .complete(&h.dev, &other, &attempt, success(json!("stolen")))
        .await;
    assert_eq!(result, refused(&attempt));
    let nobody = AttemptId::parse("attempt_0000000000000000000000").unwrap();
    let unknown = h
        .complete(&h.dev, &holder, &nobody, success(json!(1)))
        .await;
    assert_eq!(unknown, refused(&nobody));
    assert_eq!(
        h.run(&h.dev, &id).await,
        before,
        "nothing changed, not even the lease"
    );

    let result = h
        .complete(&h.dev, &holder, &attempt, success(json!("mine")))
        .await;
    assert_eq!(result, accepted(&attempt, RunStatus::CompletedSuccessfully));
    assert_eq!(
        h.run(&h.dev, &id).await.output,
        Some(Packet::json(&json!("mine")))
    );
}
