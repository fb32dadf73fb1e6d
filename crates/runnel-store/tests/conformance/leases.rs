//! Rescuer, promoter and expirer over leases and retries, and the races between them.

use crate::harness::*;

pub(crate) async fn run_leases_due_finds_expired_leases_and_passed_deadlines_only(
    store: Arc<dyn Store>,
) {
    let tenancy = bootstrap(&*store).await;
    let worker = serve(&*store, &tenancy.dev, "v1", &["my-task"], at(0)).await;
    let dequeued = queued_run(&tenancy.dev, at(0));
    let limited = run_with_options(json!({"maxDuration": 10}), &tenancy.dev, at(1));
    let executing = queued_run(&tenancy.dev, at(2));
    let retrying = queued_run(&tenancy.dev, at(3));
    let queued = queued_run(&tenancy.dev, at(4));
    for run in [&dequeued, &limited, &executing, &retrying, &queued] {
        create(&*store, run, at(0)).await;
    }
    // Leased at 0 s: lease until 30 s. Started at 20 s: lease until 50 s, and the
    // limited run's deadline at 20 + 10 + 5 = 35 s.
    lease(&*store, &worker, at(0)).await;
    let mut others = Vec::new();
    for _ in 0..3 {
        let leased = lease(&*store, &worker, at(0)).await;
        store
            .attempt_start(
                &worker.id,
                std::slice::from_ref(&leased.attempt.id),
                at(20 + LEASE_SECS),
                GRACE_MS,
                FEE,
                at(20),
            )
            .await
            .unwrap();
        others.push(held(&*store, &leased.run).await);
    }
    store
        .attempt_settle(&[failed(
            &others[2],
            Claim::Worker(worker.id.clone()),
            at(1),
            at(20),
        )])
        .await
        .unwrap();

    let due_at = |now: DateTime<Utc>| {
        let store = Arc::clone(&store);
        async move {
            let mut due = store
                .run_leases_due(Some(now), now, NO_LIMIT)
                .await
                .unwrap();
            due.sort_by(|a, b| a.run.id.cmp(&b.run.id));
            due
        }
    };
    assert_eq!(due_at(at(29)).await, vec![]);
    let want_dequeued = held(&*store, &dequeued).await;
    assert_eq!(due_at(at(30)).await, vec![want_dequeued.clone()]);
    let want_limited = held(&*store, &limited).await;
    assert_eq!(
        due_at(at(35)).await,
        vec![want_dequeued.clone(), want_limited.clone()],
        "the maxDuration deadline passed, the lease did not"
    );
    let want_executing = held(&*store, &executing).await;
    assert_eq!(
        due_at(at(HOUR)).await,
        vec![want_dequeued, want_limited, want_executing],
        "a retrying or queued run holds no lease"
    );
    assert_eq!(
        store
            .run_leases_due(Some(at(HOUR)), at(HOUR), 2)
            .await
            .unwrap()
            .len(),
        2
    );
    // The rescuer's start-up grace: no lease counts, deadlines still do.
    assert_eq!(
        store
            .run_leases_due(None, at(HOUR), NO_LIMIT)
            .await
            .unwrap(),
        vec![held(&*store, &limited).await]
    );
}

/// A lease that ran out but was not rescued yet (the rescuer's start-up grace) is still
/// its worker's: a heartbeat renews it, a completion settles it.
pub(crate) async fn an_expired_lease_not_yet_rescued_takes_its_worker_heartbeat_and_completion(
    store: Arc<dyn Store>,
) {
    let tenancy = bootstrap(&*store).await;
    let worker = serve(&*store, &tenancy.dev, "v1", &["my-task"], at(0)).await;
    let runs: Vec<Run> = (0..2).map(|i| queued_run(&tenancy.dev, at(i))).collect();
    for run in &runs {
        create(&*store, run, at(0)).await;
    }
    // Both leases run out at 30 s; the worker speaks again at 100 s.
    let renewed = lease_and_start(&*store, &worker, at(0)).await;
    let completed = lease_and_start(&*store, &worker, at(0)).await;
    let now = at(100);
    assert_eq!(
        store
            .attempt_heartbeat(
                &worker.id,
                std::slice::from_ref(&renewed.attempt.id),
                now + Duration::seconds(LEASE_SECS),
                now,
            )
            .await
            .unwrap(),
        vec![renewed.attempt.id.clone()]
    );
    assert_eq!(
        stored(&*store, &renewed.run).await.lease_expires_at,
        Some(now + Duration::seconds(LEASE_SECS))
    );
    let settled = succeeded(&completed, Claim::Worker(worker.id.clone()), now);
    assert_eq!(store.attempt_settle(&[settled]).await.unwrap(), vec![true]);
    assert_eq!(
        stored(&*store, &completed.run).await.status,
        RunStatus::CompletedSuccessfully
    );
    assert_eq!(
        store
            .run_leases_due(Some(now), now, NO_LIMIT)
            .await
            .unwrap(),
        vec![],
        "nothing is left for the rescuer"
    );
}

pub(crate) async fn run_requeue_due_requeues_retrying_runs_at_their_next_attempt(
    store: Arc<dyn Store>,
) {
    let tenancy = bootstrap(&*store).await;
    let worker = serve(&*store, &tenancy.dev, "v1", &["my-task"], at(0)).await;
    let run = run_with_options(json!({"priority": 5}), &tenancy.dev, at(0));
    create(&*store, &run, at(0)).await;
    let started = lease_and_start(&*store, &worker, at(10)).await;
    let retry_at = at(10 * MINUTE);
    store
        .attempt_settle(&[failed(
            &started,
            Claim::Worker(worker.id.clone()),
            retry_at,
            at(20),
        )])
        .await
        .unwrap();
    let waiting = stored(&*store, &run).await;
    assert_eq!(waiting.status, RunStatus::RetryingAfterFailure);
    assert_eq!(waiting.next_attempt_at, Some(retry_at));

    assert_eq!(
        store
            .run_requeue_due(retry_at - Duration::milliseconds(1), NO_LIMIT)
            .await
            .unwrap(),
        vec![]
    );
    assert!(store
        .run_dequeue(&worker, 10, at(HOUR), retry_at)
        .await
        .unwrap()
        .is_empty());
    let now = retry_at + Duration::seconds(3);
    assert_eq!(
        store.run_requeue_due(now, NO_LIMIT).await.unwrap(),
        vec![run.id.clone()]
    );
    let mut want = waiting.clone();
    want.status = RunStatus::Queued;
    // Queued again as of its retry time, less its priority.
    want.queue_ts = retry_at.timestamp_millis() - 5_000;
    want.next_attempt_at = None;
    want.updated_at = now;
    assert_eq!(stored(&*store, &run).await, want);
    assert_eq!(lease(&*store, &worker, now).await.attempt.number, 2);
}

pub(crate) async fn run_promote_due_leaves_delayed_runs_waiting_for_a_version_that_serves_them(
    store: Arc<dyn Store>,
) {
    let tenancy = bootstrap(&*store).await;
    serve(&*store, &tenancy.dev, "v1", &["served"], at(0)).await;
    let options = |extra: Value| {
        let mut options = json!({"delay": "1m", "priority": 2});
        options
            .as_object_mut()
            .unwrap()
            .extend(extra.as_object().cloned().unwrap_or_default());
        options
    };
    let served = run_from(
        "served",
        json!({"options": options(json!({}))}),
        &tenancy.dev,
        at(0),
    );
    let unserved = run_from(
        "unserved",
        json!({"options": options(json!({}))}),
        &tenancy.dev,
        at(0),
    );
    let locked_elsewhere = run_from(
        "served",
        json!({"options": options(json!({"lockToVersion": "v9"}))}),
        &tenancy.dev,
        at(0),
    );
    let other_env = run_from(
        "served",
        json!({"options": options(json!({}))}),
        &tenancy.staging,
        at(0),
    );
    for run in [&served, &unserved, &locked_elsewhere, &other_env] {
        create(&*store, run, at(0)).await;
    }

    let now = at(MINUTE);
    let promoted = store.run_promote_due(now, NO_LIMIT).await.unwrap();
    assert_eq!(
        sorted(promoted),
        sorted(vec![
            served.id.clone(),
            unserved.id.clone(),
            locked_elsewhere.id.clone(),
            other_env.id.clone()
        ])
    );
    for (run, status) in [
        (&served, RunStatus::Queued),
        (&unserved, RunStatus::PendingVersion),
        (&locked_elsewhere, RunStatus::PendingVersion),
        (&other_env, RunStatus::PendingVersion),
    ] {
        let mut want = run.clone();
        want.status = status;
        want.queue_ts = at(MINUTE).timestamp_millis() - 2_000;
        want.updated_at = now;
        assert_eq!(stored(&*store, run).await, want, "{}", run.task_identifier);
    }
}

/// A run that went to wait for a version while that version was registering (the
/// engine's check and the insert are not one transaction) is queued by the sweep.
pub(crate) async fn run_promote_due_queues_waiting_runs_a_version_now_serves(
    store: Arc<dyn Store>,
) {
    let tenancy = bootstrap(&*store).await;
    serve(&*store, &tenancy.dev, "v1", &["a"], at(0)).await;
    let raced = waiting_run("a", json!({}), &tenancy.dev, at(0));
    let locked_here = waiting_run("a", json!({"lockToVersion": "v1"}), &tenancy.dev, at(0));
    let locked_elsewhere = waiting_run("a", json!({"lockToVersion": "v2"}), &tenancy.dev, at(0));
    let unserved = waiting_run("b", json!({}), &tenancy.dev, at(0));
    let other_env = waiting_run("a", json!({}), &tenancy.prod, at(0));
    for run in [
        &raced,
        &locked_here,
        &locked_elsewhere,
        &unserved,
        &other_env,
    ] {
        create(&*store, run, at(0)).await;
    }

    let now = at(5);
    assert_eq!(
        sorted(store.run_promote_due(now, NO_LIMIT).await.unwrap()),
        sorted(vec![raced.id.clone(), locked_here.id.clone()])
    );
    for run in [&raced, &locked_here] {
        let mut want = run.clone();
        want.status = RunStatus::Queued;
        want.updated_at = now;
        assert_eq!(stored(&*store, run).await, want);
    }
    for run in [&locked_elsewhere, &unserved, &other_env] {
        assert_eq!(stored(&*store, run).await, *run);
    }
    assert_eq!(store.run_promote_due(now, NO_LIMIT).await.unwrap(), vec![]);
}

pub(crate) async fn run_expire_due_expires_runs_waiting_for_a_version(store: Arc<dyn Store>) {
    let tenancy = bootstrap(&*store).await;
    let waiting = waiting_run("a", json!({"ttl": "10m"}), &tenancy.dev, at(0));
    let no_ttl = waiting_run("a", json!({}), &tenancy.dev, at(0));
    create(&*store, &waiting, at(0)).await;
    create(&*store, &no_ttl, at(0)).await;
    assert_eq!(
        store.run_next_due_at(true).await.unwrap(),
        Some(at(10 * MINUTE))
    );

    assert_eq!(
        store
            .run_expire_due(at(10 * MINUTE) - Duration::milliseconds(1), NO_LIMIT)
            .await
            .unwrap(),
        vec![]
    );
    let now = at(10 * MINUTE);
    assert_eq!(
        store.run_expire_due(now, NO_LIMIT).await.unwrap(),
        vec![waiting.id.clone()]
    );
    let mut want = waiting.clone();
    want.status = RunStatus::Expired;
    want.expired_at = Some(now);
    want.completed_at = Some(now);
    want.updated_at = now;
    want.error = Some(
        json!({"type": "STRING_ERROR", "raw": "Run expired because the TTL (10m) was reached"}),
    );
    assert_eq!(stored(&*store, &waiting).await, want);
    assert_eq!(stored(&*store, &no_ttl).await, no_ttl);
}

pub(crate) async fn run_next_due_at_includes_retry_lease_and_timeout_deadlines(
    store: Arc<dyn Store>,
) {
    let tenancy = bootstrap(&*store).await;
    let worker = serve(&*store, &tenancy.dev, "v1", &["my-task"], at(0)).await;
    let run = run_with_options(json!({"maxDuration": 5}), &tenancy.dev, at(0));
    create(&*store, &run, at(0)).await;
    assert_eq!(store.run_next_due_at(true).await.unwrap(), None);

    let leased = lease(&*store, &worker, at(0)).await;
    assert_eq!(
        store.run_next_due_at(true).await.unwrap(),
        Some(at(LEASE_SECS)),
        "the lease"
    );
    assert_eq!(
        store.run_next_due_at(false).await.unwrap(),
        None,
        "leases left out (the rescuer's start-up grace)"
    );
    store
        .attempt_start(
            &worker.id,
            std::slice::from_ref(&leased.attempt.id),
            at(2 + LEASE_SECS),
            GRACE_MS,
            FEE,
            at(2),
        )
        .await
        .unwrap();
    assert_eq!(
        store.run_next_due_at(true).await.unwrap(),
        Some(at(2 + 5) + Duration::milliseconds(GRACE_MS)),
        "the maxDuration deadline comes before the lease"
    );
    assert_eq!(
        store.run_next_due_at(false).await.unwrap(),
        Some(at(2 + 5) + Duration::milliseconds(GRACE_MS)),
        "a deadline counts without leases too"
    );
    let started = held(&*store, &run).await;
    store
        .attempt_settle(&[failed(
            &started,
            Claim::Worker(worker.id.clone()),
            at(HOUR),
            at(3),
        )])
        .await
        .unwrap();
    assert_eq!(
        store.run_next_due_at(true).await.unwrap(),
        Some(at(HOUR)),
        "the retry; the lease and deadline ended with the attempt"
    );
    let ttl = run_with_options(json!({"ttl": "30m"}), &tenancy.dev, at(0));
    create(&*store, &ttl, at(0)).await;
    assert_eq!(
        store.run_next_due_at(true).await.unwrap(),
        Some(at(30 * MINUTE))
    );
}

pub(crate) async fn run_next_deadline_is_the_earliest_of_its_own_kind_only(store: Arc<dyn Store>) {
    let tenancy = bootstrap(&*store).await;
    let worker = serve(&*store, &tenancy.dev, "v1", &["my-task"], at(0)).await;
    let next = |kind| {
        let store = Arc::clone(&store);
        async move { store.run_next_deadline(kind).await.unwrap() }
    };
    let kinds = [
        Deadline::DelayEnd,
        Deadline::Ttl,
        Deadline::NextAttempt,
        Deadline::LeaseEnd,
        Deadline::MaxDuration,
    ];
    for kind in kinds {
        assert_eq!(next(kind).await, None, "{kind:?} in an empty database");
    }
    let executing = run_with_options(json!({"maxDuration": 5}), &tenancy.dev, at(0));
    create(&*store, &executing, at(0)).await;
    let leased = lease(&*store, &worker, at(0)).await;
    store
        .attempt_start(
            &worker.id,
            std::slice::from_ref(&leased.attempt.id),
            at(2 + LEASE_SECS),
            GRACE_MS,
            FEE,
            at(2),
        )
        .await
        .unwrap();
    let retrying = run_with_options(json!({}), &tenancy.dev, at(1));
    create(&*store, &retrying, at(1)).await;
    let failing = lease_and_start(&*store, &worker, at(3)).await;
    store
        .attempt_settle(&[failed(
            &failing,
            Claim::Worker(worker.id.clone()),
            at(HOUR),
            at(4),
        )])
        .await
        .unwrap();
    create(
        &*store,
        &run_with_options(json!({"delay": "10m"}), &tenancy.dev, at(0)),
        at(0),
    )
    .await;
    create(
        &*store,
        &run_with_options(json!({"ttl": "30m"}), &tenancy.dev, at(0)),
        at(0),
    )
    .await;

    assert_eq!(next(Deadline::DelayEnd).await, Some(at(10 * MINUTE)));
    assert_eq!(next(Deadline::Ttl).await, Some(at(30 * MINUTE)));
    assert_eq!(next(Deadline::NextAttempt).await, Some(at(HOUR)));
    assert_eq!(next(Deadline::LeaseEnd).await, Some(at(2 + LEASE_SECS)));
    assert_eq!(
        next(Deadline::MaxDuration).await,
        Some(at(2 + 5) + Duration::milliseconds(GRACE_MS))
    );
}

pub(crate) async fn run_promote_due_leaves_retrying_runs_to_run_requeue_due(store: Arc<dyn Store>) {
    let tenancy = bootstrap(&*store).await;
    let worker = serve(&*store, &tenancy.dev, "v1", &["my-task"], at(0)).await;
    let run = queued_run(&tenancy.dev, at(0));
    create(&*store, &run, at(0)).await;
    let started = lease_and_start(&*store, &worker, at(10)).await;
    store
        .attempt_settle(&[failed(
            &started,
            Claim::Worker(worker.id.clone()),
            at(MINUTE),
            at(20),
        )])
        .await
        .unwrap();
    assert_eq!(
        store.run_promote_due(at(HOUR), NO_LIMIT).await.unwrap(),
        vec![]
    );
    assert_eq!(
        stored(&*store, &run).await.status,
        RunStatus::RetryingAfterFailure
    );
    assert_eq!(
        store.run_requeue_due(at(HOUR), NO_LIMIT).await.unwrap(),
        vec![run.id.clone()]
    );
}

/// A worker's completions, the rescuer and cancels racing on the same runs (three server
/// nodes at once): for every run exactly one of them wins, and the stored run shows it.
/// The worker and the rescuer settle batches in opposite orders, which must not deadlock.
pub(crate) async fn attempt_settle_and_run_cancel_racing_settle_each_run_once(
    store: Arc<dyn Store>,
) {
    const RUNS: usize = 48;
    const COMPLETION_BATCH: usize = RUNS / 2;
    // Which racer gets ahead differs from round to round.
    const ROUNDS: usize = 3;
    let tenancy = bootstrap(&*store).await;
    let worker = serve(&*store, &tenancy.dev, "v1", &["my-task"], at(0)).await;
    for round in 0..ROUNDS {
        let runs: Vec<Run> = (0..RUNS)
            .map(|i| queued_run(&tenancy.dev, at((round * RUNS + i) as i64)))
            .collect();
        for run in &runs {
            create(&*store, run, at(0)).await;
        }
        let mut held_runs = Vec::new();
        for _ in 0..RUNS {
            held_runs.push(lease_and_start(&*store, &worker, at(MINUTE)).await);
        }
        // Every lease has run out, so the rescuer's claim holds as much as the worker's.
        let now = at(HOUR);
        let completions: Vec<AttemptSettlement> = held_runs
            .iter()
            .map(|leased| succeeded(leased, Claim::Worker(worker.id.clone()), now))
            .collect();
        let rescues: Vec<AttemptSettlement> = held_runs
            .iter()
            .map(|leased| AttemptSettlement {
                run_status: RunStatus::Crashed,
                attempt_status: AttemptStatus::Failed,
                output: None,
                ..succeeded(leased, Claim::LeaseExpired(now), now)
            })
            .collect();

        let start = Arc::new(Barrier::new(3));
        // The worker reports, last run first, in batches.
        let completer = tokio::spawn({
            let (store, start) = (Arc::clone(&store), Arc::clone(&start));
            async move {
                start.wait().await;
                let mut won = vec![false; completions.len()];
                let indexes: Vec<usize> = (0..completions.len()).rev().collect();
                for chunk in indexes.chunks(COMPLETION_BATCH) {
                    let batch: Vec<AttemptSettlement> =
                        chunk.iter().map(|i| completions[*i].clone()).collect();
                    let applied = store.attempt_settle(&batch).await.expect("complete");
                    for (i, ok) in chunk.iter().zip(applied) {
                        won[*i] = ok;
                    }
                }
                won
            }
        });
        // The rescuer settles everything in one batch, first run first.
        let rescuer = tokio::spawn({
            let (store, start) = (Arc::clone(&store), Arc::clone(&start));
            async move {
                start.wait().await;
                store.attempt_settle(&rescues).await.expect("rescue")
            }
        });
        // Cancels arrive one by one, from the middle out.
        let canceler = tokio::spawn({
            let (store, start) = (Arc::clone(&store), Arc::clone(&start));
            let environment = tenancy.dev.id.clone();
            let targets: Vec<(RunId, AttemptId)> = held_runs
                .iter()
                .map(|l| (l.run.id.clone(), l.attempt.id.clone()))
                .collect();
            async move {
                start.wait().await;
                let mut won = vec![false; targets.len()];
                let half = targets.len() / 2;
                for i in (half..targets.len()).chain(0..half) {
                    let (run, attempt) = &targets[i];
                    let outcome = store
                        .run_cancel(&environment, run, 0.0, now)
                        .await
                        .expect("cancel");
                    won[i] = match outcome {
                        CancelOutcome::Canceled { attempt: held } => {
                            assert_eq!(held.as_ref(), Some(attempt));
                            true
                        }
                        CancelOutcome::AlreadyFinal(_) => false,
                        CancelOutcome::NotFound => panic!("the run exists"),
                    };
                }
                won
            }
        });
        let completed = completer.await.unwrap();
        let rescued = rescuer.await.unwrap();
        let canceled = canceler.await.unwrap();

        for (i, leased) in held_runs.iter().enumerate() {
            let winners = [completed[i], rescued[i], canceled[i]];
            assert_eq!(
                winners.iter().filter(|w| **w).count(),
                1,
                "round {round}, run {i}: completed, rescued, canceled = {winners:?}"
            );
            let want = match winners {
                [true, _, _] => (RunStatus::CompletedSuccessfully, AttemptStatus::Completed),
                [_, true, _] => (RunStatus::Crashed, AttemptStatus::Failed),
                _ => (RunStatus::Canceled, AttemptStatus::Canceled),
            };
            let after = held(&*store, &leased.run).await;
            assert_eq!(
                (after.run.status, after.attempt.status),
                want,
                "round {round}, run {i}"
            );
        }
    }
}

/// A worker heartbeating and starting its attempts while the rescuer settles the same
/// runs in one batch (their leases ran out): nothing deadlocks, and each run is either
/// rescued or kept by the worker, never both.
pub(crate) async fn attempt_heartbeat_and_start_racing_the_rescuer_settle_each_run_once(
    store: Arc<dyn Store>,
) {
    const RUNS: usize = 48;
    const ROUNDS: usize = 3;
    let tenancy = bootstrap(&*store).await;
    let worker = serve(&*store, &tenancy.dev, "v1", &["my-task"], at(0)).await;
    for round in 0..ROUNDS {
        let runs: Vec<Run> = (0..RUNS)
            .map(|i| queued_run(&tenancy.dev, at((round * RUNS + i) as i64)))
            .collect();
        // Stored newest first, so the table's order is not the ids' order.
        for run in runs.iter().rev() {
            create(&*store, run, at(0)).await;
        }
        // Every other run is started; all the leases have run out by `now`.
        let mut held_runs = Vec::new();
        for i in 0..RUNS {
            held_runs.push(if i % 2 == 0 {
                lease_and_start(&*store, &worker, at(MINUTE)).await
            } else {
                lease(&*store, &worker, at(MINUTE)).await
            });
        }
        let now = at(HOUR);
        let rescues: Vec<AttemptSettlement> = held_runs
            .iter()
            .map(|leased| match leased.run.status {
                RunStatus::Executing => AttemptSettlement {
                    run_status: RunStatus::Crashed,
                    attempt_status: AttemptStatus::Failed,
                    output: None,
                    ..succeeded(leased, Claim::LeaseExpired(now), now)
                },
                _ => AttemptSettlement {
                    run_status: RunStatus::Queued,
                    attempt_status: AttemptStatus::Canceled,
                    spends_attempt: false,
                    output: None,
                    ..succeeded(leased, Claim::LeaseExpired(now), now)
                },
            })
            .collect();
        let all: Vec<AttemptId> = held_runs
            .iter()
            .rev()
            .map(|l| l.attempt.id.clone())
            .collect();
        let unstarted: Vec<AttemptId> = held_runs
            .iter()
            .rev()
            .filter(|l| l.run.status == RunStatus::Dequeued)
            .map(|l| l.attempt.id.clone())
            .collect();

        let start = Arc::new(Barrier::new(3));
        let lease_until = now + Duration::seconds(LEASE_SECS);
        let heartbeat = tokio::spawn({
            let (store, start, worker) =
                (Arc::clone(&store), Arc::clone(&start), worker.id.clone());
            async move {
                start.wait().await;
                store
                    .attempt_heartbeat(&worker, &all, lease_until, now)
                    .await
                    .expect("heartbeat")
            }
        });
        let starter = tokio::spawn({
            let (store, start, worker) =
                (Arc::clone(&store), Arc::clone(&start), worker.id.clone());
            async move {
                start.wait().await;
                store
                    .attempt_start(&worker, &unstarted, lease_until, GRACE_MS, FEE, now)
                    .await
                    .expect("start")
            }
        });
        let rescuer = tokio::spawn({
            let (store, start) = (Arc::clone(&store), Arc::clone(&start));
            async move {
                start.wait().await;
                store.attempt_settle(&rescues).await.expect("rescue")
            }
        });
        let extended = heartbeat.await.unwrap();
        let started = starter.await.unwrap();
        let rescued = rescuer.await.unwrap();

        for (i, leased) in held_runs.iter().enumerate() {
            let kept =
                extended.contains(&leased.attempt.id) || started.contains(&leased.attempt.id);
            assert_ne!(
                kept, rescued[i],
                "round {round}, run {i}: kept {kept}, rescued {}",
                rescued[i]
            );
            let status = stored_status(&*store, &leased.run).await;
            let want = match (rescued[i], leased.run.status) {
                (false, _) => vec![RunStatus::Dequeued, RunStatus::Executing],
                (true, RunStatus::Executing) => vec![RunStatus::Crashed],
                (true, _) => vec![RunStatus::Queued],
            };
            assert!(want.contains(&status), "round {round}, run {i}: {status}");
        }
        // Requeued runs of this round must not be leased in the next one.
        for run in &runs {
            store
                .run_cancel(&tenancy.dev.id, &run.id, 0.0, now)
                .await
                .unwrap();
        }
    }
}
