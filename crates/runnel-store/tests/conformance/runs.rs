//! Runs: insert and read back, conditional transitions along the state machine, children
//! and attempts.

use crate::harness::*;

pub(crate) async fn run_round_trips_every_field_set(store: Arc<dyn Store>) {
    let tenancy = bootstrap(&*store).await;
    let body = json!({
        "payload": r#"{"json":{"to":"ada@example.com"},"meta":{}}"#,
        "context": {"ignored": true},
        "options": {
            "payloadType": "application/super+json",
            "queue": {"name": "emails", "concurrencyLimit": 5},
            "concurrencyKey": 42,
            "idempotencyKey": "5f1d9c2e",
            "idempotencyKeyTTL": "2h",
            "idempotencyKeyOptions": {"key": "welcome-ada", "scope": "global"},
            "delay": "10m",
            "ttl": "1h30m",
            "tags": ["welcome", "email", "email", " "],
            "metadata": r#"{"json":{"step":1},"meta":{}}"#,
            "metadataType": "application/super+json",
            "maxAttempts": 7,
            "maxDuration": 300,
            "machine": "large-2x",
            "priority": 1.5,
            "lockToVersion": "20260101.3",
            "test": true,
        }
    });
    let mut run = run_from("send-email", body, &tenancy.dev, at(0));
    run.status = RunStatus::RetryingAfterFailure;
    run.output = Some(Packet {
        data: Some(r#"{"json":{"sent":true},"meta":{}}"#.to_owned()),
        data_type: Packet::SUPER_JSON.to_owned(),
    });
    run.error = Some(
        json!({"type": "BUILT_IN_ERROR", "name": "Error", "message": "smtp down", "stackTrace": "at send"}),
    );
    run.expired_at = Some(at(3 * HOUR));
    run.worker_version = Some("20260101.4".to_owned());
    run.updated_at = at(2 * HOUR);
    run.started_at = Some(at(11 * MINUTE));
    run.completed_at = Some(at(2 * HOUR));
    run.attempt_count = 3;
    run.usage_duration_ms = 9_000_000_123;
    run.cost_in_cents = 1.25;
    run.base_cost_in_cents = 0.000_25;
    run.depth = 2;
    run.parent_run_id = Some(RunId::generate(at(-MINUTE).timestamp_millis()));
    run.root_run_id = Some(RunId::generate(at(-HOUR).timestamp_millis()));
    run.batch_id = Some(BatchId::from_trusted("batch_abc123".to_owned()));
    run.resume_parent_on_completion = true;
    run.schedule_id = Some("sched_xyz789".to_owned());
    run.worker_id = Some(WorkerId::from_trusted("worker_abc".to_owned()));
    run.current_attempt_id = Some(AttemptId::from_trusted("attempt_abc".to_owned()));
    run.lease_expires_at = Some(at(HOUR));
    run.timeout_at = Some(at(HOUR + MINUTE));
    run.next_attempt_at = Some(at(HOUR + 2 * MINUTE));
    run.failed_attempts = 2;
    assert_every_field_set(&run);

    create(&*store, &run, at(0)).await;
    assert_eq!(stored(&*store, &run).await, run);
}

pub(crate) async fn run_round_trips_every_field_empty(store: Arc<dyn Store>) {
    let tenancy = bootstrap(&*store).await;
    let run = run_from("my-task", json!({}), &tenancy.prod, at(0));
    assert_eq!(run.payload.data, None);

    create(&*store, &run, at(0)).await;
    assert_eq!(stored(&*store, &run).await, run);
}

pub(crate) async fn run_get_is_scoped_to_the_environment(store: Arc<dyn Store>) {
    let tenancy = bootstrap(&*store).await;
    let run = queued_run(&tenancy.dev, at(0));
    create(&*store, &run, at(0)).await;

    assert_eq!(
        store.run_get(&tenancy.dev.id, &run.id).await.unwrap(),
        Some(run.clone())
    );
    assert_eq!(
        store.run_get(&tenancy.staging.id, &run.id).await.unwrap(),
        None
    );
    assert_eq!(
        store.run_get(&tenancy.prod.id, &run.id).await.unwrap(),
        None
    );
    let unknown = RunId::generate(at(0).timestamp_millis());
    assert_eq!(
        store.run_get(&tenancy.dev.id, &unknown).await.unwrap(),
        None
    );
}

pub(crate) async fn run_trigger_refuses_a_duplicate_id(store: Arc<dyn Store>) {
    let tenancy = bootstrap(&*store).await;
    let run = queued_run(&tenancy.dev, at(0));
    create(&*store, &run, at(0)).await;

    let mut again = queued_run(&tenancy.dev, at(MINUTE));
    again.id = run.id.clone();
    assert!(store.run_trigger(&again, at(MINUTE)).await.is_err());
    assert_eq!(stored(&*store, &run).await, run);
}

/// Concurrent triggers, one of which reuses a stored run's id: that one is refused and
/// every other is stored. (SQLite writes concurrent triggers in one transaction: a
/// failing member must not take the others down with it.)
pub(crate) async fn run_trigger_among_concurrent_triggers_fails_alone(store: Arc<dyn Store>) {
    const TRIGGERS: usize = 40;
    const DUPLICATE: usize = 17;
    let tenancy = bootstrap(&*store).await;
    let existing = queued_run(&tenancy.dev, at(0));
    create(&*store, &existing, at(0)).await;
    let mut runs: Vec<Run> = (0..TRIGGERS)
        .map(|_| queued_run(&tenancy.dev, at(MINUTE)))
        .collect();
    runs[DUPLICATE].id = existing.id.clone();

    let done = trigger_concurrently(&store, &runs, at(MINUTE)).await;
    for (position, (run, outcome)) in done.into_iter().enumerate() {
        if position == DUPLICATE {
            assert!(outcome.is_err(), "a duplicate id is refused: {outcome:?}");
        } else {
            assert_eq!(
                outcome.expect("the other triggers succeed"),
                TriggerOutcome::Created(run.id.clone())
            );
            assert_eq!(stored(&*store, &run).await, run);
        }
    }
    assert_eq!(
        stored(&*store, &existing).await,
        existing,
        "the holder of the id is untouched"
    );
}

/// Many concurrent triggers, keyed and not: each gets its own outcome, in the order the
/// keys were taken, and every created run reads back whole.
pub(crate) async fn run_trigger_concurrent_triggers_each_store_their_run(store: Arc<dyn Store>) {
    const TRIGGERS: usize = 60;
    let tenancy = bootstrap(&*store).await;
    // Every third trigger carries a key of its own; the rest have none.
    let runs: Vec<Run> = (0..TRIGGERS)
        .map(|i| {
            if i % 3 == 0 {
                keyed_run("my-task", &format!("own-{i}"), &tenancy.dev, at(0))
            } else {
                queued_run(&tenancy.dev, at(0))
            }
        })
        .collect();
    for (run, outcome) in trigger_concurrently(&store, &runs, at(0)).await {
        assert_eq!(
            outcome.expect("trigger"),
            TriggerOutcome::Created(run.id.clone())
        );
        assert_eq!(stored(&*store, &run).await, run);
    }
    // The keys hold afterwards: a second trigger with one returns its holder.
    let again = keyed_run("my-task", "own-3", &tenancy.dev, at(MINUTE));
    assert_eq!(
        store.run_trigger(&again, at(MINUTE)).await.unwrap(),
        TriggerOutcome::Cached(runs[3].id.clone())
    );
}

// ---------------------------------------------------------------------------------------
// Status transitions

pub(crate) async fn run_transition_is_conditional_on_the_current_status(store: Arc<dyn Store>) {
    let tenancy = bootstrap(&*store).await;
    let run = queued_run(&tenancy.dev, at(0));
    create(&*store, &run, at(0)).await;

    let moved = store
        .run_transition(
            &run.id,
            RunStatus::Executing,
            RunStatus::CompletedSuccessfully,
            at(MINUTE),
        )
        .await
        .unwrap();
    assert!(!moved, "the run is not EXECUTING");
    assert_eq!(
        stored(&*store, &run).await,
        run,
        "a refused transition changes nothing"
    );

    walk(&*store, &run.id, RunStatus::Executing, at(2 * MINUTE)).await;
    let mut want = run.clone();
    want.status = RunStatus::Executing;
    want.updated_at = at(2 * MINUTE);
    assert_eq!(stored(&*store, &run).await, want);

    // The second of two racing actors loses.
    assert!(!store
        .run_transition(
            &run.id,
            RunStatus::Queued,
            RunStatus::Expired,
            at(3 * MINUTE)
        )
        .await
        .unwrap());
    assert_eq!(stored(&*store, &run).await, want);

    let unknown = RunId::generate(at(0).timestamp_millis());
    assert!(!store
        .run_transition(
            &unknown,
            RunStatus::Queued,
            RunStatus::Executing,
            at(MINUTE)
        )
        .await
        .unwrap());
}

/// Nothing leaves a final status, even when the caller names it correctly.
pub(crate) async fn run_transition_never_leaves_a_final_status(store: Arc<dyn Store>) {
    let tenancy = bootstrap(&*store).await;
    for final_status in RunStatus::ALL.into_iter().filter(|s| s.is_final()) {
        let run = queued_run(&tenancy.dev, at(0));
        create(&*store, &run, at(0)).await;
        walk(&*store, &run.id, final_status, at(MINUTE)).await;
        let before = stored(&*store, &run).await;
        for to in RunStatus::ALL {
            assert!(
                !store
                    .run_transition(&run.id, final_status, to, at(HOUR))
                    .await
                    .unwrap(),
                "{final_status} -> {to}"
            );
        }
        assert_eq!(
            stored(&*store, &run).await,
            before,
            "{final_status} is unchanged"
        );
    }
}

pub(crate) async fn run_transition_into_a_final_status_sets_completed_at(store: Arc<dyn Store>) {
    let tenancy = bootstrap(&*store).await;
    for status in RunStatus::ALL
        .into_iter()
        .filter(|s| *s != RunStatus::Queued && *s != RunStatus::Delayed)
    {
        let run = queued_run(&tenancy.dev, at(0));
        create(&*store, &run, at(0)).await;
        walk(&*store, &run.id, status, at(MINUTE)).await;

        let mut want = run.clone();
        want.status = status;
        want.updated_at = at(MINUTE);
        want.completed_at = status.is_final().then_some(at(MINUTE));
        assert_eq!(stored(&*store, &run).await, want, "into {status}");
    }
}

// ---------------------------------------------------------------------------------------
// Children and attempts

pub(crate) async fn run_children_lists_the_runs_of_a_parent(store: Arc<dyn Store>) {
    let tenancy = bootstrap(&*store).await;
    let parent = queued_run(&tenancy.dev, at(0));
    create(&*store, &parent, at(0)).await;
    assert_eq!(store.run_children(&parent.id).await.unwrap(), vec![]);

    let child = |now: DateTime<Utc>| {
        let mut child = queued_run(&tenancy.dev, now);
        child.parent_run_id = Some(parent.id.clone());
        child.root_run_id = Some(parent.id.clone());
        child.depth = 1;
        child.resume_parent_on_completion = true;
        child
    };
    // Inserted newest first, listed oldest first.
    let second = child(at(2 * MINUTE));
    let first = child(at(MINUTE));
    create(&*store, &second, at(2 * MINUTE)).await;
    create(&*store, &first, at(2 * MINUTE)).await;
    create(
        &*store,
        &queued_run(&tenancy.dev, at(3 * MINUTE)),
        at(3 * MINUTE),
    )
    .await;

    assert_eq!(
        store.run_children(&parent.id).await.unwrap(),
        vec![first.clone(), second]
    );
    assert_eq!(store.run_children(&first.id).await.unwrap(), vec![]);
}

pub(crate) async fn attempt_list_is_empty_for_a_run_without_attempts(store: Arc<dyn Store>) {
    let tenancy = bootstrap(&*store).await;
    let run = queued_run(&tenancy.dev, at(0));
    create(&*store, &run, at(0)).await;

    assert_eq!(store.attempt_list(&run.id).await.unwrap(), vec![]);
    let unknown = RunId::generate(at(0).timestamp_millis());
    assert_eq!(store.attempt_list(&unknown).await.unwrap(), vec![]);
}
