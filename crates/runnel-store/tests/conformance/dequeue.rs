//! Dequeue: order, eligibility, the new pending attempt, concurrent dequeuers.

use crate::harness::*;

/// Leases every run `worker` can take, `limit` per call, until none is left.
async fn dequeue_all(store: &dyn Store, worker: &WorkerRecord, now: DateTime<Utc>) -> Vec<Leased> {
    store
        .run_dequeue(worker, NO_LIMIT, now + Duration::seconds(LEASE_SECS), now)
        .await
        .expect("run_dequeue")
}

pub(crate) async fn run_dequeue_takes_the_oldest_first_and_priority_moves_a_run_ahead(
    store: Arc<dyn Store>,
) {
    let tenancy = bootstrap(&*store).await;
    let worker = serve(&*store, &tenancy.dev, "v1", &["my-task"], at(0)).await;
    let first = queued_run(&tenancy.dev, at(0));
    let second = queued_run(&tenancy.dev, at(1));
    let third = queued_run(&tenancy.dev, at(2));
    // Triggered last, but 10 s of priority puts it before the run triggered 3 s earlier.
    let urgent = run_with_options(json!({"priority": 10}), &tenancy.dev, at(3));
    for run in [&third, &urgent, &first, &second] {
        create(&*store, run, at(3)).await;
    }

    let now = at(MINUTE);
    let lease_until = now + Duration::seconds(LEASE_SECS);
    let batch = store
        .run_dequeue(&worker, 2, lease_until, now)
        .await
        .unwrap();
    assert_eq!(ids_of(&batch), vec![urgent.id.clone(), first.id.clone()]);
    let batch = store
        .run_dequeue(&worker, 10, lease_until, now)
        .await
        .unwrap();
    assert_eq!(ids_of(&batch), vec![second.id.clone(), third.id.clone()]);
    assert!(store
        .run_dequeue(&worker, 10, lease_until, now)
        .await
        .unwrap()
        .is_empty());
}

pub(crate) async fn run_dequeue_leases_only_the_worker_tasks_and_version(store: Arc<dyn Store>) {
    let tenancy = bootstrap(&*store).await;
    let worker = serve(&*store, &tenancy.dev, "v1", &["a"], at(0)).await;
    serve(&*store, &tenancy.dev, "v2", &["a", "b"], at(0)).await;
    let unlocked = run_from("a", json!({}), &tenancy.dev, at(0));
    let locked_here = run_from(
        "a",
        json!({"options": {"lockToVersion": "v1"}}),
        &tenancy.dev,
        at(1),
    );
    let locked_elsewhere = run_from(
        "a",
        json!({"options": {"lockToVersion": "v2"}}),
        &tenancy.dev,
        at(0),
    );
    let other_task = run_from("b", json!({}), &tenancy.dev, at(0));
    let other_env = run_from("a", json!({}), &tenancy.staging, at(0));
    let delayed = run_from(
        "a",
        json!({"options": {"delay": "1s"}}),
        &tenancy.dev,
        at(0),
    );
    let waiting = waiting_run("a", json!({}), &tenancy.dev, at(0));
    let all = [
        &unlocked,
        &locked_here,
        &locked_elsewhere,
        &other_task,
        &other_env,
        &delayed,
        &waiting,
    ];
    for run in all {
        create(&*store, run, at(0)).await;
    }

    let leased = dequeue_all(&*store, &worker, at(MINUTE)).await;
    assert_eq!(
        ids_of(&leased),
        vec![unlocked.id.clone(), locked_here.id.clone()]
    );
    for run in [
        &locked_elsewhere,
        &other_task,
        &other_env,
        &delayed,
        &waiting,
    ] {
        assert_eq!(stored(&*store, run).await, *run, "{} is not leased", run.id);
    }
    let none = store
        .run_dequeue(&worker, 0, at(HOUR), at(MINUTE))
        .await
        .unwrap();
    assert!(none.is_empty(), "a limit of 0 leases nothing");
}

pub(crate) async fn run_dequeue_leases_the_run_with_a_new_pending_attempt(store: Arc<dyn Store>) {
    let tenancy = bootstrap(&*store).await;
    let settings = TaskConfig {
        max_duration_secs: Some(300),
        machine: Some(MachinePreset::Large1x),
        file_path: None,
        scheduled: false,
        ..task("my-task")
    };
    let (worker, _) = register(&*store, &tenancy.dev, Some("v1"), vec![settings], at(0)).await;
    // The trigger leaves maxDuration and machine open and sets a TTL; this run has
    // already had two attempts.
    let mut open = run_with_options(json!({"ttl": "1h"}), &tenancy.dev, at(0));
    open.attempt_count = 2;
    open.failed_attempts = 1;
    let explicit = run_with_options(
        json!({"maxDuration": 60, "machine": "micro"}),
        &tenancy.dev,
        at(1),
    );
    create(&*store, &open, at(0)).await;
    create(&*store, &explicit, at(1)).await;

    let now = at(MINUTE);
    let lease_until = now + Duration::seconds(LEASE_SECS);
    let leased = store
        .run_dequeue(&worker, 10, lease_until, now)
        .await
        .unwrap();
    assert_eq!(ids_of(&leased), vec![open.id.clone(), explicit.id.clone()]);

    for (leased, run, number, max_duration, machine) in [
        (&leased[0], &open, 3, 300, MachinePreset::Large1x),
        (&leased[1], &explicit, 1, 60, MachinePreset::Micro),
    ] {
        let attempt = &leased.attempt;
        assert!(
            attempt.id.as_str().starts_with("attempt_"),
            "{}",
            attempt.id
        );
        assert_eq!(
            *attempt,
            Attempt {
                id: attempt.id.clone(),
                run_id: run.id.clone(),
                number,
                status: AttemptStatus::Pending,
                created_at: now,
                updated_at: now,
                started_at: None,
                completed_at: None,
                error: None,
                worker_id: Some(worker.id.clone()),
                duration_ms: 0,
                waited_ms: 0,
            }
        );
        let mut want = run.clone();
        want.status = RunStatus::Dequeued;
        want.worker_id = Some(worker.id.clone());
        want.worker_version = Some("v1".to_owned());
        want.current_attempt_id = Some(attempt.id.clone());
        want.lease_expires_at = Some(lease_until);
        want.expire_at = None;
        want.attempt_count = number;
        want.max_duration_secs = Some(max_duration);
        want.machine = Some(machine);
        want.updated_at = now;
        assert_eq!(leased.run, want, "the lease as returned");
        assert_eq!(stored(&*store, run).await, want, "the lease as stored");
        assert_eq!(
            store.attempt_list(&run.id).await.unwrap(),
            vec![attempt.clone()]
        );
    }

    // A leased run with a TTL no longer expires.
    assert_eq!(
        store.run_expire_due(at(2 * HOUR), NO_LIMIT).await.unwrap(),
        vec![]
    );
}

/// Workers dequeuing at once (several processes, several server nodes) never lease one
/// run twice, and together they lease every run.
pub(crate) async fn run_dequeue_concurrent_dequeuers_lease_each_run_once(store: Arc<dyn Store>) {
    const RUNS: usize = 60;
    const DEQUEUERS: usize = 6;
    const BATCH: u32 = 3;
    let tenancy = bootstrap(&*store).await;
    let mut workers = Vec::new();
    for _ in 0..DEQUEUERS {
        workers.push(serve(&*store, &tenancy.dev, "v1", &["my-task"], at(0)).await);
    }
    let runs: Vec<Run> = (0..RUNS)
        .map(|i| queued_run(&tenancy.dev, at(i as i64)))
        .collect();
    for run in &runs {
        create(&*store, run, at(0)).await;
    }

    let start = Arc::new(Barrier::new(DEQUEUERS));
    let mut tasks = JoinSet::new();
    for worker in workers {
        let store = Arc::clone(&store);
        let start = Arc::clone(&start);
        tasks.spawn(async move {
            start.wait().await;
            let mut leased = Vec::new();
            loop {
                let now = at(HOUR);
                let batch = store
                    .run_dequeue(&worker, BATCH, now + Duration::seconds(LEASE_SECS), now)
                    .await
                    .expect("run_dequeue");
                if batch.is_empty() {
                    return leased;
                }
                assert!(batch.len() <= BATCH as usize, "{} > {BATCH}", batch.len());
                leased.extend(batch);
            }
        });
    }
    let leased: Vec<Leased> = tasks.join_all().await.into_iter().flatten().collect();
    assert_eq!(
        sorted(ids_of(&leased)),
        sorted(runs.iter().map(|r| r.id.clone()).collect()),
        "every run leased exactly once"
    );
    for l in &leased {
        let run = stored(&*store, &l.run).await;
        assert_eq!(run.status, RunStatus::Dequeued);
        assert_eq!(
            run.worker_id, l.run.worker_id,
            "leased to the worker told so"
        );
        assert_eq!(run.current_attempt_id.as_ref(), Some(&l.attempt.id));
        assert_eq!(
            store.attempt_list(&run.id).await.unwrap(),
            vec![l.attempt.clone()],
            "one attempt per run"
        );
    }
}
