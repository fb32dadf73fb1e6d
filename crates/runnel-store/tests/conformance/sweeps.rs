//! Expirer and promoter: TTL expiry, delay promotion and the next due instant.

use crate::harness::*;

pub(crate) async fn run_expire_due_ends_queued_runs_past_their_ttl(store: Arc<dyn Store>) {
    let tenancy = bootstrap(&*store).await;
    let due = run_with_options(json!({"ttl": "10m"}), &tenancy.dev, at(0));
    let later = run_with_options(json!({"ttl": 1200}), &tenancy.dev, at(0));
    let no_ttl = queued_run(&tenancy.dev, at(0));
    let executing = run_with_options(json!({"ttl": "5m"}), &tenancy.dev, at(0));
    let delayed = run_with_options(json!({"delay": "1m", "ttl": "1m"}), &tenancy.dev, at(0));
    assert_eq!(delayed.status, RunStatus::Delayed);
    for run in [&due, &later, &no_ttl, &executing, &delayed] {
        create(&*store, run, at(0)).await;
    }
    walk(&*store, &executing.id, RunStatus::Executing, at(MINUTE)).await;
    let executing = stored(&*store, &executing).await;

    // Exactly at the deadline counts as due.
    let now = at(10 * MINUTE);
    assert_eq!(
        store.run_expire_due(now, NO_LIMIT).await.unwrap(),
        vec![due.id.clone()]
    );

    let mut want = due.clone();
    want.status = RunStatus::Expired;
    want.expired_at = Some(now);
    want.completed_at = Some(now);
    want.updated_at = now;
    want.error = Some(
        json!({"type": "STRING_ERROR", "raw": "Run expired because the TTL (10m) was reached"}),
    );
    assert_eq!(stored(&*store, &due).await, want);
    assert_eq!(stored(&*store, &later).await, later);
    assert_eq!(stored(&*store, &no_ttl).await, no_ttl);
    assert_eq!(
        stored(&*store, &executing).await,
        executing,
        "only QUEUED runs expire"
    );
    assert_eq!(
        stored(&*store, &delayed).await,
        delayed,
        "only QUEUED runs expire"
    );

    assert_eq!(
        store.run_expire_due(now, NO_LIMIT).await.unwrap(),
        vec![],
        "a run expires once"
    );
    assert_eq!(stored(&*store, &due).await, want);

    let now = at(20 * MINUTE);
    assert_eq!(
        store.run_expire_due(now, NO_LIMIT).await.unwrap(),
        vec![later.id.clone()]
    );
    let expired = stored(&*store, &later).await;
    assert_eq!(
        expired.error,
        Some(
            json!({"type": "STRING_ERROR", "raw": "Run expired because the TTL (20m) was reached"})
        )
    );
    assert_eq!(stored_status(&*store, &no_ttl).await, RunStatus::Queued);
}

pub(crate) async fn run_expire_due_respects_the_limit(store: Arc<dyn Store>) {
    let tenancy = bootstrap(&*store).await;
    let runs: Vec<Run> = ["1m", "2m", "3m"]
        .into_iter()
        .map(|ttl| run_with_options(json!({"ttl": ttl}), &tenancy.dev, at(0)))
        .collect();
    for run in &runs {
        create(&*store, run, at(0)).await;
    }

    let first = store.run_expire_due(at(HOUR), 2).await.unwrap();
    assert_eq!(first.len(), 2, "{first:?}");
    let rest = store.run_expire_due(at(HOUR), 2).await.unwrap();
    assert_eq!(rest.len(), 1, "{rest:?}");
    assert_eq!(store.run_expire_due(at(HOUR), 2).await.unwrap(), vec![]);

    let all: Vec<RunId> = first.into_iter().chain(rest).collect();
    assert_eq!(
        sorted(all),
        sorted(runs.iter().map(|r| r.id.clone()).collect())
    );
    for run in &runs {
        assert_eq!(stored_status(&*store, run).await, RunStatus::Expired);
    }
}

/// Two sweepers (two server nodes) at once: every due run expires exactly once.
pub(crate) async fn run_expire_due_concurrent_sweeps_expire_each_run_once(store: Arc<dyn Store>) {
    const RUNS: usize = 30;
    const SWEEPERS: usize = 3;
    let tenancy = bootstrap(&*store).await;
    let runs: Vec<Run> = (0..RUNS)
        .map(|_| run_with_options(json!({"ttl": "1m"}), &tenancy.dev, at(0)))
        .collect();
    for run in &runs {
        create(&*store, run, at(0)).await;
    }

    let expired = sweep_concurrently(&store, SWEEPERS, |store| async move {
        store.run_expire_due(at(HOUR), 4).await.expect("expire")
    })
    .await;

    assert_eq!(
        expired,
        sorted(runs.iter().map(|r| r.id.clone()).collect()),
        "each run once"
    );
    for run in &runs {
        assert_eq!(stored_status(&*store, run).await, RunStatus::Expired);
    }
}

/// Runs `sweepers` copies of `sweep` at once, each repeating until it finds nothing, and
/// returns every id they reported, sorted (a duplicate means a run moved twice).
async fn sweep_concurrently<F, Fut>(store: &Arc<dyn Store>, sweepers: usize, sweep: F) -> Vec<RunId>
where
    F: Fn(Arc<dyn Store>) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Vec<RunId>> + Send,
{
    let start = Arc::new(Barrier::new(sweepers));
    let mut tasks = JoinSet::new();
    for _ in 0..sweepers {
        let store = Arc::clone(store);
        let start = Arc::clone(&start);
        let sweep = sweep.clone();
        tasks.spawn(async move {
            start.wait().await;
            let mut moved = Vec::new();
            loop {
                let batch = sweep(Arc::clone(&store)).await;
                if batch.is_empty() {
                    return moved;
                }
                moved.extend(batch);
            }
        });
    }
    sorted(tasks.join_all().await.into_iter().flatten().collect())
}

pub(crate) async fn run_promote_due_queues_delayed_runs_whose_delay_ended(store: Arc<dyn Store>) {
    let tenancy = bootstrap(&*store).await;
    // A version serves the task, so the runs are queued rather than left waiting for one.
    serve(&*store, &tenancy.dev, "v1", &["my-task"], at(0)).await;
    let one = run_with_options(json!({"delay": "1m"}), &tenancy.dev, at(0));
    let two = run_with_options(json!({"delay": "2m", "ttl": "5m"}), &tenancy.dev, at(0));
    let ten = run_with_options(json!({"delay": "10m"}), &tenancy.dev, at(0));
    let queued = queued_run(&tenancy.dev, at(0));
    for run in [&one, &two, &ten, &queued] {
        create(&*store, run, at(0)).await;
    }

    // Exactly at `delay_until` counts as due.
    let now = at(2 * MINUTE);
    let promoted = store.run_promote_due(now, NO_LIMIT).await.unwrap();
    assert_eq!(
        sorted(promoted),
        sorted(vec![one.id.clone(), two.id.clone()])
    );
    for run in [&one, &two] {
        let mut want = run.clone();
        want.status = RunStatus::Queued;
        want.updated_at = now;
        assert_eq!(stored(&*store, run).await, want);
    }
    assert_eq!(
        stored(&*store, &ten).await,
        ten,
        "a later delay stays DELAYED"
    );
    assert_eq!(stored(&*store, &queued).await, queued);

    assert_eq!(
        store.run_promote_due(now, NO_LIMIT).await.unwrap(),
        vec![],
        "a run is promoted once"
    );
    assert_eq!(
        store
            .run_promote_due(at(10 * MINUTE), NO_LIMIT)
            .await
            .unwrap(),
        vec![ten.id.clone()]
    );
}

pub(crate) async fn run_promote_due_respects_the_limit(store: Arc<dyn Store>) {
    let tenancy = bootstrap(&*store).await;
    serve(&*store, &tenancy.dev, "v1", &["my-task"], at(0)).await;
    let runs: Vec<Run> = ["1m", "2m", "3m"]
        .into_iter()
        .map(|delay| run_with_options(json!({"delay": delay}), &tenancy.dev, at(0)))
        .collect();
    for run in &runs {
        create(&*store, run, at(0)).await;
    }

    let first = store.run_promote_due(at(HOUR), 2).await.unwrap();
    assert_eq!(first.len(), 2, "{first:?}");
    let rest = store.run_promote_due(at(HOUR), 2).await.unwrap();
    assert_eq!(rest.len(), 1, "{rest:?}");
    assert_eq!(store.run_promote_due(at(HOUR), 2).await.unwrap(), vec![]);

    let all: Vec<RunId> = first.into_iter().chain(rest).collect();
    assert_eq!(
        sorted(all),
        sorted(runs.iter().map(|r| r.id.clone()).collect())
    );
    for run in &runs {
        assert_eq!(stored_status(&*store, run).await, RunStatus::Queued);
    }
}

/// Two promoters (two server nodes) at once: every due run is queued exactly once.
pub(crate) async fn run_promote_due_concurrent_sweeps_promote_each_run_once(store: Arc<dyn Store>) {
    const RUNS: usize = 30;
    const SWEEPERS: usize = 3;
    let tenancy = bootstrap(&*store).await;
    serve(&*store, &tenancy.dev, "v1", &["my-task"], at(0)).await;
    let runs: Vec<Run> = (0..RUNS)
        .map(|_| run_with_options(json!({"delay": "1m"}), &tenancy.dev, at(0)))
        .collect();
    for run in &runs {
        create(&*store, run, at(0)).await;
    }

    let promoted = sweep_concurrently(&store, SWEEPERS, |store| async move {
        store.run_promote_due(at(HOUR), 4).await.expect("promote")
    })
    .await;

    assert_eq!(
        promoted,
        sorted(runs.iter().map(|r| r.id.clone()).collect()),
        "each run once"
    );
    for run in &runs {
        assert_eq!(stored_status(&*store, run).await, RunStatus::Queued);
    }
}

pub(crate) async fn run_next_due_at_is_the_earliest_expiry_or_promotion(store: Arc<dyn Store>) {
    let tenancy = bootstrap(&*store).await;
    assert_eq!(
        store.run_next_due_at(true).await.unwrap(),
        None,
        "empty database"
    );

    create(&*store, &queued_run(&tenancy.dev, at(0)), at(0)).await;
    assert_eq!(
        store.run_next_due_at(true).await.unwrap(),
        None,
        "a run without TTL or delay is never due"
    );

    let ttl_30m = run_with_options(json!({"ttl": "30m"}), &tenancy.dev, at(0));
    create(&*store, &ttl_30m, at(0)).await;
    assert_eq!(
        store.run_next_due_at(true).await.unwrap(),
        Some(at(30 * MINUTE))
    );

    let delay_10m = run_with_options(json!({"delay": "10m"}), &tenancy.staging, at(0));
    create(&*store, &delay_10m, at(0)).await;
    assert_eq!(
        store.run_next_due_at(true).await.unwrap(),
        Some(at(10 * MINUTE))
    );

    // The expiry of a run that is no longer QUEUED is not due.
    let executing = run_with_options(json!({"ttl": "1m"}), &tenancy.dev, at(0));
    create(&*store, &executing, at(0)).await;
    walk(&*store, &executing.id, RunStatus::Executing, at(0)).await;
    assert_eq!(
        store.run_next_due_at(true).await.unwrap(),
        Some(at(10 * MINUTE))
    );

    let ttl_2m = run_with_options(json!({"ttl": "2m"}), &tenancy.prod, at(0));
    create(&*store, &ttl_2m, at(0)).await;
    assert_eq!(
        store.run_next_due_at(true).await.unwrap(),
        Some(at(2 * MINUTE))
    );

    store
        .run_expire_due(at(2 * MINUTE), NO_LIMIT)
        .await
        .unwrap();
    assert_eq!(
        store.run_next_due_at(true).await.unwrap(),
        Some(at(10 * MINUTE))
    );
    store
        .run_promote_due(at(10 * MINUTE), NO_LIMIT)
        .await
        .unwrap();
    assert_eq!(
        store.run_next_due_at(true).await.unwrap(),
        Some(at(30 * MINUTE))
    );
    store
        .run_expire_due(at(30 * MINUTE), NO_LIMIT)
        .await
        .unwrap();
    assert_eq!(store.run_next_due_at(true).await.unwrap(), None);
}
