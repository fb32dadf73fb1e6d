//! Attempts: start, heartbeat, settlement and cancel, each conditional on its claim.

use crate::harness::*;

pub(crate) async fn attempt_start_starts_only_the_holder_pending_attempt(store: Arc<dyn Store>) {
    let tenancy = bootstrap(&*store).await;
    let holder = serve(&*store, &tenancy.dev, "v1", &["my-task"], at(0)).await;
    let stranger = serve(&*store, &tenancy.dev, "v1", &["my-task"], at(0)).await;
    let run = run_with_options(json!({"maxDuration": 60}), &tenancy.dev, at(0));
    create(&*store, &run, at(0)).await;
    let leased = lease(&*store, &holder, at(0)).await;
    let ids = vec![leased.attempt.id.clone()];

    let now = at(MINUTE);
    let lease_until = now + Duration::seconds(LEASE_SECS);
    let refused = store
        .attempt_start(&stranger.id, &ids, lease_until, GRACE_MS, FEE, now)
        .await
        .unwrap();
    assert_eq!(refused, Vec::<AttemptId>::new(), "not the holder");
    assert_eq!(
        held(&*store, &run).await,
        leased,
        "a refused start changes nothing"
    );

    let unknown = AttemptId::from_trusted("attempt_0000000000000000000000".to_owned());
    let started = store
        .attempt_start(
            &holder.id,
            &[unknown, ids[0].clone()],
            lease_until,
            GRACE_MS,
            FEE,
            now,
        )
        .await
        .unwrap();
    assert_eq!(started, ids);
    let mut want = leased.clone();
    want.run.status = RunStatus::Executing;
    want.run.started_at = Some(now);
    want.run.base_cost_in_cents = FEE;
    want.run.lease_expires_at = Some(lease_until);
    want.run.timeout_at = Some(now + Duration::seconds(60) + Duration::milliseconds(GRACE_MS));
    want.run.updated_at = now;
    want.attempt.status = AttemptStatus::Executing;
    want.attempt.started_at = Some(now);
    want.attempt.updated_at = now;
    assert_eq!(held(&*store, &run).await, want);

    let again = store
        .attempt_start(&holder.id, &ids, at(HOUR), GRACE_MS, FEE, at(2 * MINUTE))
        .await
        .unwrap();
    assert_eq!(again, Vec::<AttemptId>::new(), "only a DEQUEUED run starts");
    assert_eq!(held(&*store, &run).await, want);
}

/// The run's `started_at` and per-run fee come from its first attempt; each attempt gets
/// its own `maxDuration` deadline.
pub(crate) async fn attempt_start_sets_started_at_and_the_fee_once(store: Arc<dyn Store>) {
    let tenancy = bootstrap(&*store).await;
    let worker = serve(&*store, &tenancy.dev, "v1", &["my-task"], at(0)).await;
    let run = run_with_options(json!({"maxDuration": 60}), &tenancy.dev, at(0));
    create(&*store, &run, at(0)).await;
    let first = lease_and_start(&*store, &worker, at(10)).await;
    let retry_at = at(MINUTE);
    let applied = store
        .attempt_settle(&[failed(
            &first,
            Claim::Worker(worker.id.clone()),
            retry_at,
            at(20),
        )])
        .await
        .unwrap();
    assert_eq!(applied, vec![true]);
    store.run_requeue_due(retry_at, NO_LIMIT).await.unwrap();

    let second = lease(&*store, &worker, at(2 * MINUTE)).await;
    assert_eq!(second.attempt.number, 2);
    let now = at(3 * MINUTE);
    store
        .attempt_start(
            &worker.id,
            std::slice::from_ref(&second.attempt.id),
            now + Duration::seconds(LEASE_SECS),
            GRACE_MS,
            FEE * 2.0,
            now,
        )
        .await
        .unwrap();
    let after = held(&*store, &run).await;
    assert_eq!(after.run.started_at, Some(at(10)), "the first start");
    assert_eq!(after.run.base_cost_in_cents, FEE, "charged once");
    assert_eq!(
        after.run.timeout_at,
        Some(now + Duration::seconds(60) + Duration::milliseconds(GRACE_MS))
    );
    assert_eq!(after.attempt.started_at, Some(now));
}

pub(crate) async fn attempt_start_without_a_max_duration_sets_no_deadline(store: Arc<dyn Store>) {
    let tenancy = bootstrap(&*store).await;
    let worker = serve(&*store, &tenancy.dev, "v1", &["my-task"], at(0)).await;
    let unlimited = run_with_options(json!({"maxDuration": 2147483647}), &tenancy.dev, at(0));
    let open = queued_run(&tenancy.dev, at(1));
    create(&*store, &unlimited, at(0)).await;
    create(&*store, &open, at(1)).await;
    for run in [&unlimited, &open] {
        let started = lease_and_start(&*store, &worker, at(MINUTE)).await;
        assert_eq!(started.run.id, run.id);
        assert_eq!(started.run.status, RunStatus::Executing);
        assert_eq!(started.run.timeout_at, None, "{:?}", run.max_duration_secs);
    }
}

pub(crate) async fn attempt_heartbeat_extends_only_the_leases_a_worker_holds(
    store: Arc<dyn Store>,
) {
    let tenancy = bootstrap(&*store).await;
    let holder = serve(&*store, &tenancy.dev, "v1", &["my-task"], at(0)).await;
    let stranger = serve(&*store, &tenancy.dev, "v1", &["my-task"], at(0)).await;
    let runs: Vec<Run> = (0..3).map(|i| queued_run(&tenancy.dev, at(i))).collect();
    for run in &runs {
        create(&*store, run, at(0)).await;
    }
    let dequeued = lease(&*store, &holder, at(10)).await;
    let executing = lease_and_start(&*store, &holder, at(10)).await;
    let theirs = lease(&*store, &stranger, at(10)).await;
    let before_theirs = held(&*store, &theirs.run).await;

    let now = at(20);
    let lease_until = at(20 + LEASE_SECS);
    let mut extended = store
        .attempt_heartbeat(
            &holder.id,
            &[
                dequeued.attempt.id.clone(),
                executing.attempt.id.clone(),
                theirs.attempt.id.clone(),
                AttemptId::from_trusted("attempt_0000000000000000000000".to_owned()),
            ],
            lease_until,
            now,
        )
        .await
        .unwrap();
    extended.sort();
    let mut want = vec![dequeued.attempt.id.clone(), executing.attempt.id.clone()];
    want.sort();
    assert_eq!(extended, want);
    for leased in [&dequeued, &executing] {
        let run = stored(&*store, &leased.run).await;
        assert_eq!(run.lease_expires_at, Some(lease_until));
        assert_eq!(run.status, leased.run.status, "a heartbeat moves no run");
    }
    assert_eq!(
        held(&*store, &theirs.run).await,
        before_theirs,
        "not the holder's"
    );

    // A run canceled under the worker is no longer held.
    store
        .run_cancel(&tenancy.dev.id, &executing.run.id, 0.0, at(25))
        .await
        .unwrap();
    let extended = store
        .attempt_heartbeat(
            &holder.id,
            &[dequeued.attempt.id.clone(), executing.attempt.id.clone()],
            at(60),
            at(30),
        )
        .await
        .unwrap();
    assert_eq!(extended, vec![dequeued.attempt.id.clone()]);
    assert!(store
        .attempt_heartbeat(&holder.id, &[], at(60), at(30))
        .await
        .unwrap()
        .is_empty());
}

// ---------------------------------------------------------------------------------------
// Settlement and cancel

pub(crate) async fn attempt_settle_applies_only_while_the_claim_holds(store: Arc<dyn Store>) {
    let tenancy = bootstrap(&*store).await;
    let holder = serve(&*store, &tenancy.dev, "v1", &["my-task"], at(0)).await;
    let stranger = serve(&*store, &tenancy.dev, "v1", &["my-task"], at(0)).await;
    let runs: Vec<Run> = (0..4)
        .map(|i| run_with_options(json!({"maxDuration": 60}), &tenancy.dev, at(i)))
        .collect();
    for run in &runs {
        create(&*store, run, at(0)).await;
    }
    // Started at 10 s: the lease runs out at 40 s, maxDuration (+ grace) at 75 s.
    let mut started = Vec::new();
    for _ in 0..3 {
        started.push(lease_and_start(&*store, &holder, at(10)).await);
    }
    let lease_end = at(10 + LEASE_SECS);
    let deadline = at(10 + 60) + Duration::milliseconds(GRACE_MS);
    assert_eq!(started[0].run.lease_expires_at, Some(lease_end));
    assert_eq!(started[0].run.timeout_at, Some(deadline));
    let dequeued = lease(&*store, &holder, at(10)).await;

    let now = at(MINUTE);
    let ms = Duration::milliseconds(1);
    let mut wrong_attempt = succeeded(&started[0], Claim::Worker(holder.id.clone()), now);
    wrong_attempt.attempt_id = dequeued.attempt.id.clone();
    let refused = [
        succeeded(&started[0], Claim::Worker(stranger.id.clone()), now),
        succeeded(&started[0], Claim::LeaseExpired(lease_end - ms), now),
        succeeded(&started[0], Claim::TimedOut(deadline - ms), now),
        wrong_attempt,
        // A run that never started has no maxDuration deadline.
        succeeded(&dequeued, Claim::TimedOut(at(HOUR)), now),
    ];
    assert_eq!(
        store.attempt_settle(&refused).await.unwrap(),
        vec![false; refused.len()]
    );
    for leased in started.iter().chain([&dequeued]) {
        assert_eq!(held(&*store, &leased.run).await, *leased, "nothing changed");
    }

    let accepted = [
        succeeded(&started[0], Claim::LeaseExpired(lease_end), now),
        succeeded(&started[1], Claim::TimedOut(deadline), now),
        succeeded(&started[2], Claim::Worker(holder.id.clone()), now),
    ];
    assert_eq!(
        store.attempt_settle(&accepted).await.unwrap(),
        vec![true, true, true]
    );
    let mut settled = Vec::new();
    for leased in &started {
        let after = held(&*store, &leased.run).await;
        assert_eq!(after.run.status, RunStatus::CompletedSuccessfully);
        assert_eq!(after.attempt.status, AttemptStatus::Completed);
        settled.push(after);
    }
    assert_eq!(
        store.attempt_settle(&accepted).await.unwrap(),
        vec![false, false, false],
        "an attempt settles once"
    );
    for after in &settled {
        assert_eq!(held(&*store, &after.run).await, *after);
    }
    assert_eq!(store.attempt_settle(&[]).await.unwrap(), Vec::<bool>::new());
}

/// Each settlement adds its compute time and cost; only a failed attempt that spends an
/// attempt counts against `maxAttempts`.
pub(crate) async fn attempt_settle_adds_usage_and_counts_spent_failures(store: Arc<dyn Store>) {
    let tenancy = bootstrap(&*store).await;
    let worker = serve(&*store, &tenancy.dev, "v1", &["my-task"], at(0)).await;
    let run = queued_run(&tenancy.dev, at(0));
    create(&*store, &run, at(0)).await;
    let claim = || Claim::Worker(worker.id.clone());

    // (attempt status, run status, spends an attempt, failures counted after)
    let steps = [
        (
            AttemptStatus::Failed,
            RunStatus::RetryingAfterFailure,
            true,
            1,
        ),
        (AttemptStatus::Canceled, RunStatus::Queued, false, 1),
        (AttemptStatus::Failed, RunStatus::Queued, false, 1),
        (
            AttemptStatus::Failed,
            RunStatus::RetryingAfterFailure,
            true,
            2,
        ),
        (
            AttemptStatus::Completed,
            RunStatus::CompletedSuccessfully,
            true,
            2,
        ),
    ];
    let mut t = 0;
    for (n, (attempt_status, run_status, spends_attempt, failures)) in steps.into_iter().enumerate()
    {
        t += MINUTE;
        store.run_requeue_due(at(t), NO_LIMIT).await.unwrap();
        let before = lease_and_start(&*store, &worker, at(t)).await;
        assert_eq!(before.attempt.number, n as u32 + 1);
        let now = at(t + 2);
        let retry_at = at(t + 30);
        let settlement = AttemptSettlement {
            attempt_status,
            run_status,
            spends_attempt,
            attempt_error: (attempt_status != AttemptStatus::Completed)
                .then(|| json!({"message": format!("attempt {}", n + 1)})),
            run_error: None,
            output: (run_status == RunStatus::CompletedSuccessfully)
                .then(|| Packet::json(&json!({"n": n}))),
            next_attempt_at: (run_status == RunStatus::RetryingAfterFailure).then_some(retry_at),
            duration_ms: 1500,
            cost_in_cents: 0.5,
            ..succeeded(&before, claim(), now)
        };
        assert_eq!(
            store
                .attempt_settle(std::slice::from_ref(&settlement))
                .await
                .unwrap(),
            vec![true]
        );

        let mut want = before.clone();
        want.run.status = run_status;
        want.run.output = settlement.output.clone();
        want.run.usage_duration_ms += 1500;
        want.run.cost_in_cents += 0.5;
        want.run.failed_attempts = failures;
        want.run.completed_at = run_status.is_final().then_some(now);
        want.run.next_attempt_at = settlement.next_attempt_at;
        want.run.lease_expires_at = None;
        want.run.timeout_at = None;
        want.run.current_attempt_id = None;
        want.run.updated_at = now;
        want.attempt.status = attempt_status;
        want.attempt.error = settlement.attempt_error.clone();
        want.attempt.completed_at = Some(now);
        want.attempt.updated_at = now;
        want.attempt.duration_ms = 1500;
        assert_eq!(held(&*store, &run).await, want, "step {}", n + 1);
        t += MINUTE;
    }
    let done = stored(&*store, &run).await;
    assert_eq!(done.usage_duration_ms, 5 * 1500);
    assert_eq!(done.cost_in_cents, 2.5);
    assert_eq!(done.attempt_count, 5);
    let statuses: Vec<AttemptStatus> = store
        .attempt_list(&run.id)
        .await
        .unwrap()
        .into_iter()
        .map(|a| a.status)
        .collect();
    assert_eq!(
        statuses,
        steps.iter().map(|s| s.0).collect::<Vec<_>>(),
        "every attempt kept its end"
    );
}

pub(crate) async fn attempt_settle_after_run_cancel_is_refused(store: Arc<dyn Store>) {
    let tenancy = bootstrap(&*store).await;
    let worker = serve(&*store, &tenancy.dev, "v1", &["my-task"], at(0)).await;
    let run = run_with_options(json!({"maxDuration": 600}), &tenancy.dev, at(0));
    create(&*store, &run, at(0)).await;
    let started = lease_and_start(&*store, &worker, at(10)).await;

    let now = at(70);
    let outcome = store
        .run_cancel(&tenancy.dev.id, &run.id, 0.5, now)
        .await
        .unwrap();
    assert_eq!(
        outcome,
        CancelOutcome::Canceled {
            attempt: Some(started.attempt.id.clone())
        }
    );
    let mut want = started.clone();
    want.run.status = RunStatus::Canceled;
    want.run.completed_at = Some(now);
    want.run.updated_at = now;
    want.run.error = Some(json!({
        "type": "INTERNAL_ERROR",
        "code": "TASK_RUN_CANCELLED",
        "message": "Run was canceled",
    }));
    want.run.usage_duration_ms = 60_000;
    want.run.cost_in_cents = 30_000.0;
    want.run.lease_expires_at = None;
    want.run.timeout_at = None;
    want.run.current_attempt_id = None;
    want.attempt.status = AttemptStatus::Canceled;
    want.attempt.completed_at = Some(now);
    want.attempt.updated_at = now;
    want.attempt.duration_ms = 60_000;
    want.attempt.error = Some(json!({"message": "Run was canceled"}));
    let canceled = held(&*store, &run).await;
    assert_eq!(canceled, want);

    let late = succeeded(&started, Claim::Worker(worker.id.clone()), at(80));
    assert_eq!(store.attempt_settle(&[late]).await.unwrap(), vec![false]);
    assert_eq!(held(&*store, &run).await, canceled, "the cancel stands");
    let rescue = succeeded(&started, Claim::LeaseExpired(at(HOUR)), at(HOUR));
    assert_eq!(store.attempt_settle(&[rescue]).await.unwrap(), vec![false]);
    assert_eq!(
        store
            .run_leases_due(Some(at(HOUR)), at(HOUR), NO_LIMIT)
            .await
            .unwrap(),
        vec![],
        "nothing left to rescue"
    );
}

pub(crate) async fn run_cancel_ends_live_runs_and_leaves_final_or_foreign_ones(
    store: Arc<dyn Store>,
) {
    let tenancy = bootstrap(&*store).await;
    let worker = serve(&*store, &tenancy.dev, "v1", &["my-task"], at(0)).await;
    let queued = queued_run(&tenancy.dev, at(0));
    let retrying = queued_run(&tenancy.dev, at(1));
    let completed = queued_run(&tenancy.dev, at(2));
    for run in [&queued, &retrying, &completed] {
        create(&*store, run, at(0)).await;
    }
    // `retrying` waits for its next attempt, `completed` succeeded.
    let first = lease_and_start(&*store, &worker, at(10)).await;
    let second = lease_and_start(&*store, &worker, at(10)).await;
    let third = lease_and_start(&*store, &worker, at(10)).await;
    assert_eq!(
        [&first.run.id, &second.run.id, &third.run.id],
        [&queued.id, &retrying.id, &completed.id]
    );
    // `queued` goes back to the queue (released).
    let release = AttemptSettlement {
        attempt_status: AttemptStatus::Canceled,
        run_status: RunStatus::Queued,
        spends_attempt: false,
        output: None,
        ..succeeded(&first, Claim::Worker(worker.id.clone()), at(20))
    };
    let settled = store
        .attempt_settle(&[
            release,
            failed(&second, Claim::Worker(worker.id.clone()), at(HOUR), at(20)),
            succeeded(&third, Claim::Worker(worker.id.clone()), at(20)),
        ])
        .await
        .unwrap();
    assert_eq!(settled, vec![true, true, true]);
    let completed_before = held(&*store, &completed).await;

    let outcome = store
        .run_cancel(&tenancy.dev.id, &completed.id, 1.0, at(30))
        .await
        .unwrap();
    assert_eq!(
        outcome,
        CancelOutcome::AlreadyFinal(RunStatus::CompletedSuccessfully)
    );
    assert_eq!(held(&*store, &completed).await, completed_before);

    let queued_before = stored(&*store, &queued).await;
    for environment in [&tenancy.staging, &tenancy.prod] {
        let outcome = store
            .run_cancel(&environment.id, &queued.id, 1.0, at(30))
            .await
            .unwrap();
        assert_eq!(outcome, CancelOutcome::NotFound, "{}", environment.kind);
    }
    assert_eq!(stored(&*store, &queued).await, queued_before);
    let unknown = RunId::generate(at(0).timestamp_millis());
    assert_eq!(
        store
            .run_cancel(&tenancy.dev.id, &unknown, 1.0, at(30))
            .await
            .unwrap(),
        CancelOutcome::NotFound
    );

    for run in [&queued, &retrying] {
        let before = stored(&*store, run).await;
        let outcome = store
            .run_cancel(&tenancy.dev.id, &run.id, 1.0, at(30))
            .await
            .unwrap();
        assert_eq!(outcome, CancelOutcome::Canceled { attempt: None });
        let mut want = before.clone();
        want.status = RunStatus::Canceled;
        want.completed_at = Some(at(30));
        want.updated_at = at(30);
        want.next_attempt_at = None;
        want.error = Some(json!({
            "type": "INTERNAL_ERROR",
            "code": "TASK_RUN_CANCELLED",
            "message": "Run was canceled",
        }));
        assert_eq!(
            stored(&*store, run).await,
            want,
            "no attempt held, nothing charged"
        );
    }
    assert_eq!(
        store.run_requeue_due(at(HOUR), NO_LIMIT).await.unwrap(),
        vec![],
        "a canceled retry is not queued again"
    );
    assert_eq!(
        store
            .run_cancel(&tenancy.dev.id, &queued.id, 1.0, at(40))
            .await
            .unwrap(),
        CancelOutcome::AlreadyFinal(RunStatus::Canceled)
    );
}

/// A worker's completions arrive as one batch: each applies or not on its own (the claim,
/// the current attempt), and what applied adds its time and cost and ends its attempt.
pub(crate) async fn attempt_settle_of_a_batch_decides_each_settlement_on_its_own(
    store: Arc<dyn Store>,
) {
    let tenancy = bootstrap(&*store).await;
    let worker = serve(&*store, &tenancy.dev, "v1", &["my-task"], at(0)).await;
    let stranger = serve(&*store, &tenancy.dev, "v1", &["my-task"], at(0)).await;
    let runs: Vec<Run> = (0..4).map(|i| queued_run(&tenancy.dev, at(i))).collect();
    for run in &runs {
        create(&*store, run, at(0)).await;
    }
    let mut leased = Vec::new();
    for _ in &runs {
        leased.push(lease_and_start(&*store, &worker, at(10)).await);
    }
    let mine = || Claim::Worker(worker.id.clone());
    let batch = vec![
        // Another worker does not hold it.
        succeeded(&leased[0], Claim::Worker(stranger.id.clone()), at(20)),
        AttemptSettlement {
            duration_ms: 7,
            cost_in_cents: 0.25,
            ..failed(&leased[1], mine(), at(HOUR), at(20))
        },
        // Its lease has not run out at 15.
        succeeded(&leased[2], Claim::LeaseExpired(at(15)), at(20)),
        AttemptSettlement {
            duration_ms: 11,
            cost_in_cents: 0.5,
            ..succeeded(&leased[3], mine(), at(20))
        },
    ];
    let before: Vec<Leased> = {
        let mut before = Vec::new();
        for run in &runs {
            before.push(held(&*store, run).await);
        }
        before
    };
    assert_eq!(
        store.attempt_settle(&batch).await.unwrap(),
        vec![false, true, false, true]
    );
    for i in [0, 2] {
        assert_eq!(
            held(&*store, &runs[i]).await,
            before[i],
            "run {i} unchanged"
        );
    }
    let retrying = held(&*store, &runs[1]).await;
    assert_eq!(retrying.run.status, RunStatus::RetryingAfterFailure);
    assert_eq!(retrying.run.next_attempt_at, Some(at(HOUR)));
    assert_eq!(
        retrying.run.failed_attempts,
        before[1].run.failed_attempts + 1
    );
    assert_eq!(
        retrying.run.usage_duration_ms,
        before[1].run.usage_duration_ms + 7
    );
    assert_eq!(
        retrying.run.cost_in_cents,
        before[1].run.cost_in_cents + 0.25
    );
    assert_eq!(retrying.run.current_attempt_id, None);
    assert_eq!(retrying.attempt.status, AttemptStatus::Failed);
    assert_eq!(retrying.attempt.error, Some(json!({"message": "boom"})));
    assert_eq!(retrying.attempt.completed_at, Some(at(20)));
    let done = held(&*store, &runs[3]).await;
    assert_eq!(done.run.status, RunStatus::CompletedSuccessfully);
    assert_eq!(done.run.completed_at, Some(at(20)));
    assert_eq!(done.run.output, Some(Packet::json(&json!({"ok": true}))));
    assert_eq!(
        done.run.usage_duration_ms,
        before[3].run.usage_duration_ms + 11
    );
    assert_eq!(done.run.cost_in_cents, before[3].run.cost_in_cents + 0.5);
    assert_eq!(done.attempt.status, AttemptStatus::Completed);
    assert_eq!(done.attempt.duration_ms, 11);
    // Reported again (a retried request): nothing applies twice.
    assert_eq!(
        store.attempt_settle(&batch).await.unwrap(),
        vec![false, false, false, false]
    );
    assert_eq!(held(&*store, &runs[3]).await, done);
}
