//! Idempotency keys: who holds a key, when it is released, under concurrent triggers.

use crate::harness::*;

pub(crate) async fn idempotency_same_key_and_task_returns_the_holder(store: Arc<dyn Store>) {
    let tenancy = bootstrap(&*store).await;
    let holder = keyed_run("my-task", "key-1", &tenancy.dev, at(0));
    create(&*store, &holder, at(0)).await;

    let retry = keyed_run("my-task", "key-1", &tenancy.dev, at(MINUTE));
    assert_eq!(
        store.run_trigger(&retry, at(MINUTE)).await.unwrap(),
        TriggerOutcome::Cached(holder.id.clone())
    );
    assert_eq!(
        store.run_get(&tenancy.dev.id, &retry.id).await.unwrap(),
        None,
        "nothing is inserted"
    );
    assert_eq!(
        stored(&*store, &holder).await,
        holder,
        "the holder is untouched"
    );
}

pub(crate) async fn idempotency_key_is_scoped_to_the_task(store: Arc<dyn Store>) {
    let tenancy = bootstrap(&*store).await;
    let holder = keyed_run("my-task", "key-1", &tenancy.dev, at(0));
    create(&*store, &holder, at(0)).await;

    let other_task = keyed_run("other-task", "key-1", &tenancy.dev, at(MINUTE));
    create(&*store, &other_task, at(MINUTE)).await;

    assert_eq!(stored(&*store, &holder).await, holder);
    assert_eq!(stored(&*store, &other_task).await, other_task);
}

pub(crate) async fn idempotency_key_is_scoped_to_the_environment(store: Arc<dyn Store>) {
    let tenancy = bootstrap(&*store).await;
    let holder = keyed_run("my-task", "key-1", &tenancy.dev, at(0));
    create(&*store, &holder, at(0)).await;

    let staging = keyed_run("my-task", "key-1", &tenancy.staging, at(MINUTE));
    create(&*store, &staging, at(MINUTE)).await;
    assert_eq!(stored(&*store, &holder).await, holder);
    assert_eq!(stored(&*store, &staging).await, staging);

    // Each environment keeps its own holder.
    let dev_retry = keyed_run("my-task", "key-1", &tenancy.dev, at(2 * MINUTE));
    assert_eq!(
        store.run_trigger(&dev_retry, at(2 * MINUTE)).await.unwrap(),
        TriggerOutcome::Cached(holder.id.clone())
    );
    let staging_retry = keyed_run("my-task", "key-1", &tenancy.staging, at(2 * MINUTE));
    assert_eq!(
        store
            .run_trigger(&staging_retry, at(2 * MINUTE))
            .await
            .unwrap(),
        TriggerOutcome::Cached(staging.id.clone())
    );
}

pub(crate) async fn idempotency_failed_holder_releases_the_key(store: Arc<dyn Store>) {
    let tenancy = bootstrap(&*store).await;
    let holder = keyed_run("my-task", "key-1", &tenancy.dev, at(0));
    create(&*store, &holder, at(0)).await;
    walk(
        &*store,
        &holder.id,
        RunStatus::CompletedWithErrors,
        at(MINUTE),
    )
    .await;

    let retry = keyed_run("my-task", "key-1", &tenancy.dev, at(2 * MINUTE));
    create(&*store, &retry, at(2 * MINUTE)).await;

    assert_eq!(
        stored(&*store, &holder).await.idempotency_key,
        None,
        "the failed run gave its key up"
    );
    assert_eq!(
        stored(&*store, &retry).await,
        retry,
        "the new run holds the key"
    );
    let again = keyed_run("my-task", "key-1", &tenancy.dev, at(3 * MINUTE));
    assert_eq!(
        store.run_trigger(&again, at(3 * MINUTE)).await.unwrap(),
        TriggerOutcome::Cached(retry.id.clone())
    );
}

pub(crate) async fn idempotency_expired_key_is_released(store: Arc<dyn Store>) {
    let tenancy = bootstrap(&*store).await;
    let options = json!({"idempotencyKey": "key-1", "idempotencyKeyTTL": "1h"});
    let holder = run_with_options(options.clone(), &tenancy.dev, at(0));
    assert_eq!(holder.idempotency_key_expires_at, Some(at(HOUR)));
    create(&*store, &holder, at(0)).await;

    let just_before = at(HOUR) - Duration::milliseconds(1);
    let early = run_with_options(options.clone(), &tenancy.dev, just_before);
    assert_eq!(
        store.run_trigger(&early, just_before).await.unwrap(),
        TriggerOutcome::Cached(holder.id.clone()),
        "the key still holds a millisecond before it expires"
    );

    // Expiry is inclusive: at `idempotency_key_expires_at` the key is free.
    let late = run_with_options(options, &tenancy.dev, at(HOUR));
    create(&*store, &late, at(HOUR)).await;
    assert_eq!(stored(&*store, &holder).await.idempotency_key, None);
    assert_eq!(
        stored(&*store, &holder).await.status,
        RunStatus::Queued,
        "only the key is released"
    );
    assert_eq!(stored(&*store, &late).await, late);
}

pub(crate) async fn idempotency_canceled_holder_keeps_the_key(store: Arc<dyn Store>) {
    let tenancy = bootstrap(&*store).await;
    let holder = keyed_run("my-task", "key-1", &tenancy.dev, at(0));
    create(&*store, &holder, at(0)).await;
    walk(&*store, &holder.id, RunStatus::Canceled, at(MINUTE)).await;

    let retry = keyed_run("my-task", "key-1", &tenancy.dev, at(2 * MINUTE));
    assert_eq!(
        store.run_trigger(&retry, at(2 * MINUTE)).await.unwrap(),
        TriggerOutcome::Cached(holder.id.clone())
    );
    assert_eq!(
        store.run_get(&tenancy.dev.id, &retry.id).await.unwrap(),
        None
    );
    assert_eq!(
        stored(&*store, &holder).await.idempotency_key.as_deref(),
        Some("key-1")
    );
}

/// For every status a holder can be in, the store does what `releases_idempotency_key`
/// says: hand the key to a new run, or return the holder.
pub(crate) async fn idempotency_follows_the_holder_status(store: Arc<dyn Store>) {
    let tenancy = bootstrap(&*store).await;
    for status in RunStatus::ALL {
        let key = format!("key-{status}");
        let mut holder = keyed_run("my-task", &key, &tenancy.dev, at(0));
        if status == RunStatus::Delayed {
            // No edge leads to DELAYED: such a holder is inserted delayed.
            holder.status = RunStatus::Delayed;
            holder.delay_until = Some(at(HOUR));
        }
        create(&*store, &holder, at(0)).await;
        if status != RunStatus::Queued && status != RunStatus::Delayed {
            walk(&*store, &holder.id, status, at(MINUTE)).await;
        }

        let retry = keyed_run("my-task", &key, &tenancy.dev, at(2 * MINUTE));
        let outcome = store.run_trigger(&retry, at(2 * MINUTE)).await.unwrap();
        let holder_key = stored(&*store, &holder).await.idempotency_key;
        if status.releases_idempotency_key() {
            assert_eq!(
                outcome,
                TriggerOutcome::Created(retry.id.clone()),
                "holder {status}"
            );
            assert_eq!(holder_key, None, "holder {status}");
        } else {
            assert_eq!(
                outcome,
                TriggerOutcome::Cached(holder.id.clone()),
                "holder {status}"
            );
            assert_eq!(holder_key, Some(key), "holder {status}");
        }
    }
}

/// Every round starts its triggers together behind a barrier, so a check-then-insert
/// that is not atomic lets two of them win; several rounds make a lost race likely.
pub(crate) async fn idempotency_holds_under_concurrent_triggers(store: Arc<dyn Store>) {
    const TRIGGERS: usize = 20;
    const ROUNDS: usize = 5;
    let tenancy = bootstrap(&*store).await;
    for round in 0..ROUNDS {
        let key = format!("race-{round}");
        let runs: Vec<Run> = (0..TRIGGERS)
            .map(|_| keyed_run("my-task", &key, &tenancy.dev, at(0)))
            .collect();

        let outcomes: Vec<TriggerOutcome> = trigger_concurrently(&store, &runs, at(0))
            .await
            .into_iter()
            .map(|(_, outcome)| outcome.expect("trigger"))
            .collect();

        let created: Vec<&RunId> = outcomes
            .iter()
            .filter_map(|o| match o {
                TriggerOutcome::Created(id) => Some(id),
                TriggerOutcome::Cached(_) => None,
            })
            .collect();
        assert_eq!(created.len(), 1, "exactly one trigger wins: {outcomes:?}");
        let winner = created[0].clone();
        let cached = outcomes
            .iter()
            .filter(|o| **o == TriggerOutcome::Cached(winner.clone()))
            .count();
        assert_eq!(
            cached,
            TRIGGERS - 1,
            "every other trigger returns the winner: {outcomes:?}"
        );

        for run in &runs {
            let found = store.run_get(&tenancy.dev.id, &run.id).await.unwrap();
            assert_eq!(found.is_some(), run.id == winner, "{} stored", run.id);
        }
    }
}
