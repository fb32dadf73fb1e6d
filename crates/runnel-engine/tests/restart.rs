//! The rescuer's start-up grace, with a hand-driven clock: a server that was down longer
//! than the lease timeout restarts (a new engine over the same store), and for one lease
//! timeout it lets live workers heartbeat and complete the attempts whose leases ran out
//! meanwhile; only what is still silent after that is rescued. `maxDuration` deadlines
//! are not held back.

mod common;

use common::harness;

use chrono::Duration;
use runnel_core::tenancy::Environment;
use runnel_core::worker::AttemptOutcome;
use runnel_core::{AttemptId, RunId, RunStatus, WorkerId};
use runnel_engine::{Completed, Completion, Engine, EngineConfig, Leased};
use serde_json::{json, Value};

async fn register(engine: &Engine, environment: &Environment, tasks: Value) -> WorkerId {
    engine
        .worker_register(
            environment,
            serde_json::from_value(json!({"name": "test", "tasks": tasks})).unwrap(),
        )
        .await
        .unwrap()
        .worker_id
}

async fn trigger(engine: &Engine, environment: &Environment, task: &str) -> RunId {
    engine
        .trigger(
            environment,
            task,
            serde_json::from_value(json!({})).unwrap(),
            &Default::default(),
        )
        .await
        .unwrap()
        .id
}

/// Dequeues and starts one run.
async fn lease_and_start(engine: &Engine, environment: &Environment, worker: &WorkerId) -> Leased {
    let mut runs = engine
        .worker_dequeue(environment, worker, 1, 0)
        .await
        .unwrap();
    assert_eq!(runs.len(), 1, "one run to lease");
    let run = runs.remove(0);
    let (started, _) = engine
        .worker_start(environment, worker, vec![run.attempt.id.clone()])
        .await
        .unwrap();
    assert_eq!(started, vec![run.attempt.id.clone()]);
    run
}

async fn complete(
    engine: &Engine,
    environment: &Environment,
    worker: &WorkerId,
    attempt_id: &AttemptId,
) -> Completed {
    let completion = Completion {
        attempt_id: attempt_id.clone(),
        outcome: AttemptOutcome::Success {
            output: json!("done"),
        },
        output_type: None,
    };
    engine
        .worker_complete(environment, worker, vec![completion])
        .await
        .unwrap()
        .remove(0)
}

async fn status(engine: &Engine, environment: &Environment, id: &RunId) -> RunStatus {
    engine
        .store()
        .run_get(&environment.id, id)
        .await
        .unwrap()
        .unwrap()
        .status
}

#[tokio::test]
async fn after_a_restart_live_workers_report_within_one_lease_timeout_before_any_rescue() {
    let h = harness().await;
    let lease_timeout = Duration::from_std(EngineConfig::default().lease_timeout).unwrap();
    let worker = register(&h.engine, &h.dev, json!([{"id": "t"}])).await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(trigger(&h.engine, &h.dev, "t").await);
        // Runs of one millisecond have no order between them.
        h.clock.advance(Duration::milliseconds(1));
    }
    let [finished, renewed, _silent] = [
        lease_and_start(&h.engine, &h.dev, &worker).await,
        lease_and_start(&h.engine, &h.dev, &worker).await,
        lease_and_start(&h.engine, &h.dev, &worker).await,
    ];

    // The server is down for three lease timeouts, then a new node starts.
    h.clock.advance(lease_timeout * 3);
    let restarted = Engine::with_config(
        h.engine.store().clone(),
        h.clock.clone(),
        EngineConfig::default(),
    );
    assert!(restarted.in_start_up_grace(restarted.now()));
    assert_eq!(
        restarted.rescue_due().await.unwrap(),
        0,
        "every lease ran out, none is rescued at start"
    );

    // Within the grace, the worker reports one attempt and heartbeats another.
    h.clock.advance(lease_timeout / 2);
    assert_eq!(
        complete(&restarted, &h.dev, &worker, &finished.attempt.id).await,
        Completed {
            attempt_id: finished.attempt.id.clone(),
            run_status: Some(RunStatus::CompletedSuccessfully),
        }
    );
    let to_stop = restarted
        .worker_heartbeat(&h.dev, &worker, vec![renewed.attempt.id.clone()], 0)
        .await
        .unwrap();
    assert_eq!(
        to_stop,
        Vec::<AttemptId>::new(),
        "the lease is the worker's"
    );
    assert_eq!(restarted.rescue_due().await.unwrap(), 0);

    // The grace ends: only the silent attempt is rescued; the renewed lease holds.
    h.clock
        .advance(lease_timeout / 2 - Duration::milliseconds(1));
    assert_eq!(restarted.rescue_due().await.unwrap(), 0);
    h.clock.advance(Duration::milliseconds(1));
    assert!(!restarted.in_start_up_grace(restarted.now()));
    assert_eq!(restarted.rescue_due().await.unwrap(), 1);
    assert_eq!(
        status(&restarted, &h.dev, &ids[0]).await,
        RunStatus::CompletedSuccessfully
    );
    assert_eq!(
        status(&restarted, &h.dev, &ids[1]).await,
        RunStatus::Executing
    );
    assert_eq!(
        status(&restarted, &h.dev, &ids[2]).await,
        RunStatus::RetryingAfterFailure,
        "the silent attempt crashed"
    );
}

#[tokio::test]
async fn the_start_up_grace_does_not_hold_back_a_max_duration_timeout() {
    let h = harness().await;
    let worker = register(&h.engine, &h.dev, json!([{"id": "t", "maxDuration": 10}])).await;
    let id = trigger(&h.engine, &h.dev, "t").await;
    let leased = lease_and_start(&h.engine, &h.dev, &worker).await;
    // Down past the deadline (10 s + the timeout grace), yet shorter than the lease.
    h.clock.advance(Duration::seconds(20));
    let restarted = Engine::with_config(
        h.engine.store().clone(),
        h.clock.clone(),
        EngineConfig::default(),
    );
    assert!(restarted.in_start_up_grace(restarted.now()));
    assert_eq!(restarted.rescue_due().await.unwrap(), 1);
    assert_eq!(status(&restarted, &h.dev, &id).await, RunStatus::TimedOut);
    assert!(complete(&restarted, &h.dev, &worker, &leased.attempt.id)
        .await
        .run_status
        .is_none());
}

#[tokio::test]
async fn a_first_start_holds_back_leases_for_one_lease_timeout_too() {
    // The grace counts from the engine's start. A lease this node granted lasts one
    // lease timeout, so it cannot run out within the grace: rescues of attempts whose
    // worker died while this node ran are not delayed.
    let h = harness().await;
    let lease_timeout = Duration::from_std(EngineConfig::default().lease_timeout).unwrap();
    assert_eq!(
        h.engine.start_up_grace_until(),
        h.engine.now() + lease_timeout
    );
    let worker = register(&h.engine, &h.dev, json!([{"id": "t"}])).await;
    let id = trigger(&h.engine, &h.dev, "t").await;
    lease_and_start(&h.engine, &h.dev, &worker).await;
    h.clock.advance(lease_timeout);
    assert_eq!(h.engine.rescue_due().await.unwrap(), 1);
    assert_eq!(
        status(&h.engine, &h.dev, &id).await,
        RunStatus::RetryingAfterFailure
    );
}

#[tokio::test]
async fn a_restarted_node_rescues_more_than_a_batch_of_leases_with_each_task_s_retry_policy() {
    // The new node has none of the worker's records cached: the rescuer reads them from
    // the store, and settles every batch the pass finds, however many.
    let h = harness().await;
    let lease_timeout = Duration::from_std(EngineConfig::default().lease_timeout).unwrap();
    let worker = register(
        &h.engine,
        &h.dev,
        json!([
            {"id": "once", "retry": {"maxAttempts": 1}},
            {"id": "thrice", "retry": {"maxAttempts": 3, "randomize": false}},
        ]),
    )
    .await;
    let mut ids = Vec::new();
    for n in 0..450 {
        let task = if n % 2 == 0 { "once" } else { "thrice" };
        ids.push((task, trigger(&h.engine, &h.dev, task).await));
        h.clock.advance(Duration::milliseconds(1));
    }
    for _ in &ids {
        lease_and_start(&h.engine, &h.dev, &worker).await;
    }

    h.clock.advance(lease_timeout * 3);
    let restarted = Engine::with_config(
        h.engine.store().clone(),
        h.clock.clone(),
        EngineConfig::default(),
    );
    h.clock.advance(lease_timeout);
    assert!(!restarted.in_start_up_grace(restarted.now()));
    assert_eq!(restarted.rescue_due().await.unwrap(), 450);
    for (task, id) in &ids {
        let want = if *task == "once" {
            RunStatus::Crashed
        } else {
            RunStatus::RetryingAfterFailure
        };
        assert_eq!(status(&restarted, &h.dev, id).await, want, "{task}");
    }
    assert_eq!(restarted.rescue_due().await.unwrap(), 0, "rescued once");
}
