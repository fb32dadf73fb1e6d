//! Waits with a hand-driven clock: a run blocked by a time, a token or a child run, the
//! timer ([`Waiter`]) completing what is due, and the run resuming with the completed
//! waitpoints listed in its new snapshot; a due wait still fires after a restart.

mod common;

use common::{harness, Harness};

use chrono::Duration;
use runnel_core::waitpoint::{ExecutionStatus, TokenStatus, Waitpoint};
use runnel_core::worker::AttemptOutcome;
use runnel_core::{RunId, RunStatus, WaitpointId, WorkerId};
use runnel_engine::runtime::run_pass;
use runnel_engine::services::Waiter;
use runnel_engine::waits::WaitKey;
use runnel_engine::{Clock, Completion, Engine, EngineConfig, Leased};
use serde_json::{json, Value};

impl Harness {
    async fn register(&self, tasks: &[&str]) -> WorkerId {
        let tasks: Vec<Value> = tasks.iter().map(|t| json!({"id": t})).collect();
        self.engine
            .worker_register(
                &self.dev,
                serde_json::from_value(json!({"name": "test", "tasks": tasks})).unwrap(),
            )
            .await
            .unwrap()
            .worker_id
    }

    async fn trigger(&self, task: &str, body: Value) -> RunId {
        self.engine
            .trigger(
                &self.dev,
                task,
                serde_json::from_value(body).unwrap(),
                &Default::default(),
            )
            .await
            .unwrap()
            .id
    }

    /// Dequeues and starts the one queued run of `worker`'s tasks.
    async fn start(&self, worker: &WorkerId) -> Leased {
        let mut runs = self
            .engine
            .worker_dequeue(&self.dev, worker, 1, 0)
            .await
            .unwrap();
        assert_eq!(runs.len(), 1, "one run to lease");
        let run = runs.remove(0);
        self.engine
            .worker_start(&self.dev, worker, vec![run.attempt.id.clone()])
            .await
            .unwrap();
        run
    }

    /// A run of task `t`, executing.
    async fn executing(&self) -> RunId {
        let worker = self.register(&["t"]).await;
        let run = self.trigger("t", json!({})).await;
        assert_eq!(self.start(&worker).await.run.id, run);
        assert_eq!(self.status(&run).await, RunStatus::Executing);
        run
    }

    async fn status(&self, run: &RunId) -> RunStatus {
        self.engine
            .store()
            .run_get(&self.dev.id, run)
            .await
            .unwrap()
            .unwrap()
            .status
    }

    async fn waitpoint(&self, id: &WaitpointId) -> Waitpoint {
        self.engine
            .store()
            .waitpoint_get(&self.dev.id, id)
            .await
            .unwrap()
            .unwrap()
    }

    /// The run's latest snapshot: its status and the waitpoints it resumed past.
    async fn latest(&self, run: &RunId) -> (ExecutionStatus, Vec<WaitpointId>) {
        let snapshot = self
            .engine
            .store()
            .snapshot_latest(run)
            .await
            .unwrap()
            .unwrap();
        (snapshot.status, snapshot.completed_waitpoints)
    }

    async fn waiter_pass(&self, engine: &Engine) -> usize {
        run_pass(&Waiter::new(engine.clone()), self.clock.as_ref())
            .await
            .unwrap()
    }
}

#[tokio::test]
async fn wait_until_blocks_the_run_and_the_waiter_resumes_it_at_its_time() {
    let h = harness().await;
    let run = h.executing().await;
    let until = h.clock.now() + Duration::minutes(10);
    let waitpoint = h
        .engine
        .wait_until(&h.dev, &run, until, WaitKey::default())
        .await
        .unwrap();
    assert_eq!(waitpoint.completes_at, Some(until));
    assert_eq!(h.status(&run).await, RunStatus::WaitingToResume);
    assert_eq!(
        h.latest(&run).await,
        (ExecutionStatus::ExecutingWithWaitpoints, vec![])
    );

    // A minute early, nothing moves.
    h.clock.advance(Duration::minutes(9));
    assert_eq!(h.waiter_pass(&h.engine).await, 0);
    assert_eq!(h.status(&run).await, RunStatus::WaitingToResume);

    h.clock.advance(Duration::minutes(1));
    assert!(h.waiter_pass(&h.engine).await >= 1);
    assert_eq!(h.status(&run).await, RunStatus::Executing);
    assert_eq!(
        h.latest(&run).await,
        (ExecutionStatus::Executing, vec![waitpoint.id.clone()])
    );
    let completed = h.waitpoint(&waitpoint.id).await;
    assert_eq!(completed.completed_at, Some(until));
    assert_eq!(completed.output, None);
}

#[tokio::test]
async fn a_token_that_times_out_resumes_the_run_with_the_timeout_error() {
    let h = harness().await;
    let run = h.executing().await;
    let timeout_at = h.clock.now() + Duration::hours(1);
    let (token, cached) = h
        .engine
        .token_create(&h.dev, Some(timeout_at), vec![], WaitKey::default())
        .await
        .unwrap();
    assert!(!cached);
    h.engine.token_wait(&h.dev, &run, &token.id).await.unwrap();
    assert_eq!(h.status(&run).await, RunStatus::WaitingToResume);

    h.clock.advance(Duration::hours(1));
    h.waiter_pass(&h.engine).await;
    assert_eq!(h.status(&run).await, RunStatus::Executing);
    let token = h.waitpoint(&token.id).await;
    assert_eq!(token.token_status(), TokenStatus::TimedOut);
    assert!(token.output_is_error);
    let output: Value = serde_json::from_str(token.output.as_deref().unwrap()).unwrap();
    assert_eq!(
        output,
        json!({"code": "TRIGGER_WAITPOINT_TIMEOUT",
            "message": "Waitpoint timed out at 2026-03-01T13:00:00.000Z"})
    );
    assert_eq!(
        h.latest(&run).await,
        (ExecutionStatus::Executing, vec![token.id.clone()])
    );
    // Completing it afterwards changes nothing.
    let late = runnel_core::waitpoint::WaitpointOutput {
        output: Some("1".into()),
        output_type: Some("application/json".into()),
        is_error: false,
    };
    assert!(h
        .engine
        .token_complete(&h.dev, &token.id, &late)
        .await
        .unwrap());
    assert_eq!(h.waitpoint(&token.id).await.output, token.output);
}

#[tokio::test]
async fn trigger_and_wait_blocks_the_parent_until_the_child_ends_with_its_output() {
    let h = harness().await;
    let parent = h.executing().await;
    let children = h.register(&["child"]).await;
    let child = h
        .trigger(
            "child",
            json!({"options": {"parentRunId": parent, "resumeParentOnCompletion": true}}),
        )
        .await;
    assert_eq!(h.status(&parent).await, RunStatus::WaitingToResume);

    let leased = h.start(&children).await;
    assert_eq!(leased.run.id, child);
    h.clock.advance(Duration::seconds(5));
    let completed = h
        .engine
        .worker_complete(
            &h.dev,
            &children,
            vec![Completion {
                attempt_id: leased.attempt.id.clone(),
                outcome: AttemptOutcome::Success {
                    output: json!({"answer": 42}),
                },
                output_type: None,
            }],
        )
        .await
        .unwrap();
    assert_eq!(
        completed[0].run_status,
        Some(RunStatus::CompletedSuccessfully)
    );

    assert_eq!(h.status(&parent).await, RunStatus::Executing);
    let (status, waited) = h.latest(&parent).await;
    assert_eq!((status, waited.len()), (ExecutionStatus::Executing, 1));
    let waitpoint = h.waitpoint(&waited[0]).await;
    assert_eq!(waitpoint.completed_by_run, Some(child));
    assert!(!waitpoint.output_is_error);
    let output: Value = serde_json::from_str(waitpoint.output.as_deref().unwrap()).unwrap();
    assert_eq!(output, json!({"answer": 42}));
}

#[tokio::test]
async fn a_due_wait_fires_after_a_restart() {
    let h = harness().await;
    let run = h.executing().await;
    let until = h.clock.now() + Duration::minutes(1);
    let waitpoint = h
        .engine
        .wait_until(&h.dev, &run, until, WaitKey::default())
        .await
        .unwrap();

    // The node stops; another starts over the same store after the time passed.
    h.clock.advance(Duration::minutes(5));
    let restarted = Engine::with_config(
        h.engine.store().clone(),
        h.clock.clone(),
        EngineConfig::default(),
    );
    assert!(h.waiter_pass(&restarted).await >= 1);
    assert_eq!(h.status(&run).await, RunStatus::Executing);
    assert_eq!(
        h.latest(&run).await,
        (ExecutionStatus::Executing, vec![waitpoint.id])
    );
}
