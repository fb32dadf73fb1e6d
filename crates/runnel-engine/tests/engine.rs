//! Engine operations over a real SQLite store with a hand-driven clock: triggers,
//! idempotency across the run's life, and the promoter/expirer pass.

mod common;

use common::{start, Harness};

use chrono::Duration;
use runnel_core::trigger::{IdempotencyHeaders, TriggerError, TriggerRequest};
use runnel_core::RunStatus;
use serde_json::{json, Value};

async fn harness() -> Harness {
    let harness = common::harness().await;
    // A worker serves the tasks these tests trigger, so their runs are queued (not
    // waiting for a version).
    harness
        .engine
        .worker_register(
            &harness.dev,
            serde_json::from_value(
                json!({"name": "test", "tasks": [{"id": "charge"}, {"id": "t"}]}),
            )
            .unwrap(),
        )
        .await
        .unwrap();
    harness
}

fn request(body: Value) -> TriggerRequest {
    serde_json::from_value(body).unwrap()
}

impl Harness {
    async fn trigger(&self, task: &str, body: Value) -> runnel_engine::Triggered {
        self.engine
            .trigger(
                &self.dev,
                task,
                request(body),
                &IdempotencyHeaders::default(),
            )
            .await
            .unwrap()
    }

    async fn status(&self, id: &runnel_core::RunId) -> RunStatus {
        self.engine
            .run_detail(&self.dev, id)
            .await
            .unwrap()
            .unwrap()
            .run
            .status
    }
}

#[tokio::test]
async fn a_failed_keyed_run_frees_its_key_and_a_completed_one_keeps_it() {
    let h = harness().await;
    let body = json!({"payload": 1, "options": {"idempotencyKey": "order-7"}});
    let first = h.trigger("charge", body.clone()).await;
    assert!(!first.is_cached);
    assert_eq!(h.trigger("charge", body.clone()).await.id, first.id);

    // The run fails (the way the engine will move it once workers exist).
    let store = h.engine.store();
    let now = h.engine.now();
    for (from, to) in [
        (RunStatus::Queued, RunStatus::Dequeued),
        (RunStatus::Dequeued, RunStatus::Executing),
        (RunStatus::Executing, RunStatus::CompletedWithErrors),
    ] {
        assert!(store
            .run_transition(&first.id, from, to, now)
            .await
            .unwrap());
    }
    let second = h.trigger("charge", body.clone()).await;
    assert!(!second.is_cached, "a failed holder frees the key");
    assert_ne!(second.id, first.id);
    let old = h
        .engine
        .run_detail(&h.dev, &first.id)
        .await
        .unwrap()
        .unwrap()
        .run;
    assert_eq!(old.idempotency_key, None, "the old run gave its key up");

    // A successful holder keeps it.
    for (from, to) in [
        (RunStatus::Queued, RunStatus::Dequeued),
        (RunStatus::Dequeued, RunStatus::Executing),
        (RunStatus::Executing, RunStatus::CompletedSuccessfully),
    ] {
        assert!(store
            .run_transition(&second.id, from, to, now)
            .await
            .unwrap());
    }
    let third = h.trigger("charge", body).await;
    assert!(third.is_cached);
    assert_eq!(third.id, second.id);
}

#[tokio::test]
async fn the_key_ttl_bounds_deduplication() {
    let h = harness().await;
    let body = json!({"options": {"idempotencyKey": "k", "idempotencyKeyTTL": "10s"}});
    let first = h.trigger("t", body.clone()).await;
    h.clock.advance(Duration::seconds(9));
    assert!(h.trigger("t", body.clone()).await.is_cached);
    h.clock.advance(Duration::seconds(1));
    let after = h.trigger("t", body).await;
    assert!(!after.is_cached);
    assert_ne!(after.id, first.id);
}

#[tokio::test]
async fn the_pass_expires_queued_runs_at_their_ttl_and_then_the_key_is_free() {
    let h = harness().await;
    let body = json!({"options": {"ttl": "30s", "idempotencyKey": "once"}});
    let run = h.trigger("t", body.clone()).await;
    let untimed = h.trigger("t", json!({})).await;

    h.clock.advance(Duration::seconds(29));
    assert_eq!(h.engine.run_due_transitions().await.unwrap(), 0);
    assert_eq!(h.status(&run.id).await, RunStatus::Queued);

    h.clock.advance(Duration::seconds(1));
    assert_eq!(h.engine.run_due_transitions().await.unwrap(), 1);
    let detail = h.engine.run_detail(&h.dev, &run.id).await.unwrap().unwrap();
    assert_eq!(detail.run.status, RunStatus::Expired);
    assert_eq!(detail.run.expired_at, Some(start() + Duration::seconds(30)));
    assert_eq!(
        detail.run.error,
        Some(
            json!({"type": "STRING_ERROR", "raw": "Run expired because the TTL (30s) was reached"})
        )
    );
    assert_eq!(
        h.status(&untimed.id).await,
        RunStatus::Queued,
        "no TTL, no expiry"
    );

    let again = h.trigger("t", body).await;
    assert!(!again.is_cached, "an expired holder frees the key");
}

#[tokio::test]
async fn delayed_runs_are_queued_at_their_time_and_their_ttl_starts_then() {
    let h = harness().await;
    let run = h
        .trigger("t", json!({"options": {"delay": "1m", "ttl": "10s"}}))
        .await;
    assert_eq!(h.status(&run.id).await, RunStatus::Delayed);

    h.clock.advance(Duration::seconds(59));
    h.engine.run_due_transitions().await.unwrap();
    assert_eq!(h.status(&run.id).await, RunStatus::Delayed);

    h.clock.advance(Duration::seconds(1));
    h.engine.run_due_transitions().await.unwrap();
    assert_eq!(h.status(&run.id).await, RunStatus::Queued);

    // Not expired at 9 s after queueing, expired at 10 s.
    h.clock.advance(Duration::seconds(9));
    h.engine.run_due_transitions().await.unwrap();
    assert_eq!(h.status(&run.id).await, RunStatus::Queued);
    h.clock.advance(Duration::seconds(1));
    h.engine.run_due_transitions().await.unwrap();
    assert_eq!(h.status(&run.id).await, RunStatus::Expired);
}

#[tokio::test]
async fn invalid_triggers_store_nothing() {
    let h = harness().await;
    let bad = request(
        json!({"options": {"idempotencyKey": "k", "tags": (0..11).map(|i| i.to_string()).collect::<Vec<_>>()}}),
    );
    let err = h
        .engine
        .trigger(&h.dev, "t", bad, &IdempotencyHeaders::default())
        .await
        .unwrap_err();
    assert!(matches!(
        err,
        runnel_engine::Error::Trigger(TriggerError::TooManyTags(11))
    ));
    assert!(
        !h.trigger("t", json!({"options": {"idempotencyKey": "k"}}))
            .await
            .is_cached
    );
}
