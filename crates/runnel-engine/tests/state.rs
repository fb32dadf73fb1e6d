//! The store applies each transition as `runnel_core::state` decides it: for every
//! transition the engine takes (the sweeps included, which the store runs in bulk), the
//! run read back after it is what the core function's `Change` says, and every stored
//! run reads as a `RunState`.

mod common;

use common::{harness, Harness};

use chrono::Duration;
use rand::rngs::StdRng;
use rand::SeedableRng;
use runnel_core::retry::RetryPolicy;
use runnel_core::run::{AttemptStatus, Run};
use runnel_core::state::{self, Change, RunState, Terms};
use runnel_core::tenancy::Environment;
use runnel_core::trigger::{IdempotencyHeaders, TriggerRequest};
use runnel_core::worker::{AttemptOutcome, FailureKind};
use runnel_core::{AttemptId, RunId, RunStatus, WorkerId};
use runnel_engine::Completion;
use serde_json::{json, Value};

const POLICY: RetryPolicy = RetryPolicy {
    max_attempts: 3,
    factor: 2.0,
    min_timeout_in_ms: 1_000,
    max_timeout_in_ms: 60_000,
    randomize: false,
};

impl Harness {
    async fn trigger(&self, body: Value) -> RunId {
        let request: TriggerRequest = serde_json::from_value(body).unwrap();
        self.engine
            .trigger(&self.dev, "t", request, &IdempotencyHeaders::default())
            .await
            .unwrap()
            .id
    }

    async fn run(&self, id: &RunId) -> Run {
        let run = self
            .engine
            .store()
            .run_get(&self.dev.id, id)
            .await
            .unwrap()
            .unwrap();
        run.state().expect("every stored run reads as a state");
        run
    }

    async fn register(&self) -> WorkerId {
        let body = json!({"name": "w", "tasks": [{"id": "t", "retry": POLICY}]});
        self.engine
            .worker_register(&self.dev, serde_json::from_value(body).unwrap())
            .await
            .unwrap()
            .worker_id
    }

    /// Leases the one queued run to `worker` and starts it; returns its attempt.
    async fn lease(&self, worker: &WorkerId) -> AttemptId {
        let runs = self
            .engine
            .worker_dequeue(&self.dev, worker, 1, 0)
            .await
            .unwrap();
        let attempt = runs[0].attempt.id.clone();
        self.engine
            .worker_start(&self.dev, worker, vec![attempt.clone()])
            .await
            .unwrap();
        attempt
    }

    fn terms<'a>(&self, environment: &Environment, policy: &'a RetryPolicy) -> Terms<'a> {
        Terms {
            environment: environment.kind,
            policy,
            cents_per_ms: 0.0,
            retry: runnel_core::state::RetryHint::Policy,
        }
    }
}

/// The fields a change sets, as the run read back shows them.
fn assert_applied(change: &Change, after: &Run) {
    assert_eq!(after.status, change.to, "{change:?}");
    assert_eq!(after.updated_at, change.at);
    if let Some(completed_at) = change.completed_at {
        assert_eq!(after.completed_at, Some(completed_at));
    }
    if let Some(error) = &change.error {
        assert_eq!(after.error.as_ref(), Some(error));
    }
    if let Some(expired_at) = change.expired_at {
        assert_eq!(after.expired_at, Some(expired_at));
    }
    if let Some(queue_ts) = change.queue_ts {
        assert_eq!(after.queue_ts, queue_ts);
    }
    assert_eq!(after.next_attempt_at, change.next_attempt_at);
}

#[tokio::test]
async fn the_sweeps_apply_expire_and_promote_as_core_decides() {
    let h = harness().await;
    let queued = h.trigger(json!({"options": {"ttl": "30s"}})).await;
    let delayed = h
        .trigger(json!({"options": {"delay": "10s", "priority": 2}}))
        .await;
    let (queued_before, delayed_before) = (h.run(&queued).await, h.run(&delayed).await);
    assert!(matches!(
        delayed_before.state().unwrap(),
        RunState::Delayed { .. }
    ));

    h.clock.advance(Duration::seconds(10));
    let now = h.engine.now();
    let served = h
        .engine
        .store()
        .task_served(&h.dev.id, "t", None)
        .await
        .unwrap();
    let promoted = state::promote(&delayed_before, served, now).unwrap();
    assert!(
        state::expire(&queued_before, now).is_err(),
        "not due at 10 s"
    );
    h.engine.run_due_transitions().await.unwrap();
    assert_applied(&promoted, &h.run(&delayed).await);
    assert_eq!(h.run(&queued).await.status, queued_before.status);

    h.clock.advance(Duration::seconds(20));
    let expired = state::expire(&queued_before, h.engine.now()).unwrap();
    h.engine.run_due_transitions().await.unwrap();
    let after = h.run(&queued).await;
    assert_applied(&expired, &after);
    assert_eq!(
        after.state().unwrap(),
        RunState::Expired {
            completed_at: h.engine.now()
        }
    );
}

#[tokio::test]
async fn settle_requeue_rescue_and_cancel_apply_as_core_decides() {
    let h = harness().await;
    let worker = h.register().await;
    let id = h.trigger(json!({})).await;
    let attempt = h.lease(&worker).await;
    h.clock.advance(Duration::seconds(2));

    // Settle: a failed attempt with attempts left retries after 1 s.
    let before = h.run(&id).await;
    let held = h
        .engine
        .store()
        .attempts_held(std::slice::from_ref(&attempt))
        .await
        .unwrap();
    let outcome = AttemptOutcome::failure(FailureKind::TaskFailed, "boom");
    let settled = state::settle(
        &before,
        &held[0].attempt,
        before.worker_id.as_ref().unwrap(),
        &outcome,
        &h.terms(&h.dev, &POLICY),
        &mut StdRng::seed_from_u64(1),
        h.engine.now(),
    )
    .unwrap();
    let results = h
        .engine
        .worker_complete(
            &h.dev,
            &worker,
            vec![Completion {
                attempt_id: attempt.clone(),
                outcome,
                output_type: None,
            }],
        )
        .await
        .unwrap();
    assert!(results[0].run_status.is_some(), "accepted");
    let after = h.run(&id).await;
    assert_applied(&settled, &after);
    assert_eq!(after.usage_duration_ms, 2_000);
    assert_eq!(
        after.state().unwrap(),
        RunState::RetryingAfterFailure {
            next_attempt_at: h.engine.now() + Duration::seconds(1)
        }
    );

    // Requeue, once the backoff ends.
    h.clock.advance(Duration::seconds(1));
    let requeued = state::requeue(&after, h.engine.now()).unwrap();
    h.engine.run_due_transitions().await.unwrap();
    assert_applied(&requeued, &h.run(&id).await);

    // Rescue: the second attempt's lease runs out; it crashes and retries after 2 s.
    let attempt = h.lease(&worker).await;
    h.clock
        .advance(Duration::from_std(h.engine.config().lease_timeout).unwrap());
    let before = h.run(&id).await;
    let held = h
        .engine
        .store()
        .attempts_held(std::slice::from_ref(&attempt))
        .await
        .unwrap();
    let rescued = state::rescue(
        &before,
        &held[0].attempt,
        &h.terms(&h.dev, &POLICY),
        &mut StdRng::seed_from_u64(1),
        h.engine.now(),
    )
    .unwrap();
    assert_eq!(rescued.to, RunStatus::RetryingAfterFailure);
    assert_eq!(h.engine.rescue_due().await.unwrap(), 1);
    let after = h.run(&id).await;
    assert_applied(&rescued, &after);
    assert_eq!(after.failed_attempts, 2);
    let attempts = h
        .engine
        .run_detail(&h.dev, &id)
        .await
        .unwrap()
        .unwrap()
        .attempts;
    let second = attempts.iter().find(|a| a.id == attempt).unwrap();
    let end = rescued.attempt.as_ref().unwrap();
    assert_eq!(second.status, end.status);
    assert_eq!(second.status, AttemptStatus::Failed);
    assert_eq!(second.error, end.error);

    // Cancel, while it waits for its third attempt.
    let before = h.run(&id).await;
    let canceled = state::cancel(&before, h.engine.now()).unwrap();
    h.engine.cancel(&h.dev, &id).await.unwrap();
    let after = h.run(&id).await;
    assert_applied(&canceled, &after);
    assert!(
        state::cancel(&after, h.engine.now()).is_err(),
        "nothing leaves Canceled"
    );
}
