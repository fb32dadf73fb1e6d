//! Batches: many runs in one call, batch creation and item triggering.

use crate::harness::*;

fn batch_record(
    environment: &Environment,
    run_count: u32,
    key: Option<&str>,
    now: DateTime<Utc>,
) -> BatchRecord {
    let request: CreateBatchRequest = serde_json::from_value(json!({
        "runCount": run_count,
        "idempotencyKey": key,
    }))
    .expect("a well-formed batch body");
    request
        .into_record(
            BatchId::generate(now.timestamp_millis()),
            environment.id.clone(),
            None,
            now,
        )
        .expect("a valid batch")
}

async fn create_batch(store: &dyn Store, batch: &BatchRecord, now: DateTime<Utc>) {
    assert_eq!(
        store.batch_create(batch, now).await.expect("batch create"),
        BatchCreateOutcome::Created(batch.clone())
    );
}

/// An item of `batch` at `index` whose run is a trigger of `task` with `body`.
fn batch_item(
    batch: &BatchRecord,
    index: u32,
    task: &str,
    body: Value,
    environment: &Environment,
    now: DateTime<Utc>,
) -> BatchItemTrigger {
    let mut run = run_from(task, body, environment, now);
    run.batch_id = Some(batch.id.clone());
    BatchItemTrigger {
        index,
        task_identifier: task.to_owned(),
        run: Ok(run),
    }
}

fn item_run(item: &BatchItemTrigger) -> &Run {
    item.run.as_ref().expect("an item with a run")
}

pub(crate) async fn run_trigger_many_inserts_a_thousand_runs_in_one_call(store: Arc<dyn Store>) {
    let tenancy = bootstrap(&*store).await;
    let runs: Vec<Run> = (0..1000)
        .map(|n| {
            let mut run = run_from(
                "bulk-task",
                json!({"payload": {"n": n}, "options": {"tags": ["bulk"], "priority": n % 7}}),
                &tenancy.dev,
                at(0),
            );
            run.batch_id = Some(BatchId::from_trusted("batch_bulk".to_owned()));
            run
        })
        .collect();
    let started = std::time::Instant::now();
    let outcomes = store
        .run_trigger_many(&runs, at(0))
        .await
        .expect("trigger many");
    eprintln!("run_trigger_many: 1000 runs in {:?}", started.elapsed());
    let want: Vec<TriggerOutcome> = runs
        .iter()
        .map(|r| TriggerOutcome::Created(r.id.clone()))
        .collect();
    assert_eq!(outcomes, want);
    for run in &runs {
        assert_eq!(&stored(&*store, run).await, run, "every field round-trips");
    }
    assert_eq!(store.run_trigger_many(&[], at(0)).await.unwrap(), vec![]);
}

pub(crate) async fn run_trigger_many_honours_idempotency_keys_in_order(store: Arc<dyn Store>) {
    let tenancy = bootstrap(&*store).await;
    let live = keyed_run("my-task", "live", &tenancy.dev, at(0));
    create(&*store, &live, at(0)).await;
    let failed = keyed_run("my-task", "failed", &tenancy.dev, at(0));
    create(&*store, &failed, at(0)).await;
    walk(
        &*store,
        &failed.id,
        RunStatus::CompletedWithErrors,
        at(MINUTE),
    )
    .await;

    let now = at(2 * MINUTE);
    let runs = vec![
        keyed_run("my-task", "live", &tenancy.dev, now), // the live holder answers
        keyed_run("my-task", "failed", &tenancy.dev, now), // takes the failed run's key
        keyed_run("my-task", "new", &tenancy.dev, now),  // first of its key
        keyed_run("my-task", "new", &tenancy.dev, now),  // returns the one before
        keyed_run("other-task", "live", &tenancy.dev, now), // keys are per task
        queued_run(&tenancy.dev, now),
    ];
    let outcomes = store
        .run_trigger_many(&runs, now)
        .await
        .expect("trigger many");
    assert_eq!(
        outcomes,
        vec![
            TriggerOutcome::Cached(live.id.clone()),
            TriggerOutcome::Created(runs[1].id.clone()),
            TriggerOutcome::Created(runs[2].id.clone()),
            TriggerOutcome::Cached(runs[2].id.clone()),
            TriggerOutcome::Created(runs[4].id.clone()),
            TriggerOutcome::Created(runs[5].id.clone()),
        ]
    );
    assert_eq!(
        stored(&*store, &failed).await.idempotency_key,
        None,
        "the failed holder gave its key up"
    );
    for (i, run) in runs.iter().enumerate() {
        let found = store.run_get(&tenancy.dev.id, &run.id).await.unwrap();
        assert_eq!(found.is_some(), ![0, 3].contains(&i), "run {i} stored");
    }
    // The key of the new run now answers a single trigger too.
    let again = keyed_run("my-task", "new", &tenancy.dev, at(3 * MINUTE));
    assert_eq!(
        store.run_trigger(&again, at(3 * MINUTE)).await.unwrap(),
        TriggerOutcome::Cached(runs[2].id.clone())
    );
}

pub(crate) async fn batch_create_returns_the_live_holder_of_its_key(store: Arc<dyn Store>) {
    let tenancy = bootstrap(&*store).await;
    let first = batch_record(&tenancy.dev, 3, Some("k"), at(0));
    create_batch(&*store, &first, at(0)).await;
    assert_eq!(
        store.batch_get(&tenancy.dev.id, &first.id).await.unwrap(),
        Some(first.clone())
    );
    assert_eq!(
        store.batch_get(&tenancy.prod.id, &first.id).await.unwrap(),
        None,
        "scoped to the environment"
    );

    let again = batch_record(&tenancy.dev, 5, Some("k"), at(MINUTE));
    assert_eq!(
        store.batch_create(&again, at(MINUTE)).await.unwrap(),
        BatchCreateOutcome::Cached(first.clone())
    );
    assert_eq!(
        store.batch_get(&tenancy.dev.id, &again.id).await.unwrap(),
        None
    );

    let other_env = batch_record(&tenancy.prod, 1, Some("k"), at(MINUTE));
    create_batch(&*store, &other_env, at(MINUTE)).await;
    let unkeyed = batch_record(&tenancy.dev, 1, None, at(MINUTE));
    create_batch(&*store, &unkeyed, at(MINUTE)).await;

    // Past its 30-day expiry the key moves to the new batch.
    let later = at(31 * 24 * 3600);
    let after_expiry = batch_record(&tenancy.dev, 2, Some("k"), later);
    create_batch(&*store, &after_expiry, later).await;
    let old = store
        .batch_get(&tenancy.dev.id, &first.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(old.idempotency_key, None);
}

pub(crate) async fn batch_items_trigger_dedups_by_index_and_seals(store: Arc<dyn Store>) {
    let tenancy = bootstrap(&*store).await;
    let batch = batch_record(&tenancy.dev, 3, None, at(0));
    create_batch(&*store, &batch, at(0)).await;
    let now = at(MINUTE);
    let first = vec![
        batch_item(
            &batch,
            0,
            "my-task",
            json!({"payload": {"i": 0}}),
            &tenancy.dev,
            now,
        ),
        batch_item(
            &batch,
            1,
            "my-task",
            json!({"payload": {"i": 1}}),
            &tenancy.dev,
            now,
        ),
        batch_item(
            &batch,
            1,
            "my-task",
            json!({"payload": {"dup": true}}),
            &tenancy.dev,
            now,
        ),
    ];
    let BatchItemsOutcome::Applied {
        items,
        batch: after,
    } = store
        .batch_items_trigger(&tenancy.dev.id, &batch.id, &first, now)
        .await
        .unwrap()
    else {
        panic!("applied")
    };
    assert_eq!(
        items,
        vec![
            BatchItemOutcome::Triggered(TriggerOutcome::Created(item_run(&first[0]).id.clone())),
            BatchItemOutcome::Triggered(TriggerOutcome::Created(item_run(&first[1]).id.clone())),
            BatchItemOutcome::Duplicate,
        ]
    );
    assert_eq!(
        (after.items_received, after.sealed_at, after.status),
        (2, None, BatchStatus::Pending)
    );
    assert_eq!(
        store
            .run_get(&tenancy.dev.id, &item_run(&first[2]).id)
            .await
            .unwrap(),
        None
    );

    // The stream sent again, now complete; index 2's trigger was refused.
    let later = at(2 * MINUTE);
    let mut second = vec![
        batch_item(&batch, 0, "my-task", json!({}), &tenancy.dev, later),
        batch_item(&batch, 1, "my-task", json!({}), &tenancy.dev, later),
    ];
    second.push(BatchItemTrigger {
        index: 2,
        task_identifier: "my-task".to_owned(),
        run: Err("too many tags".to_owned()),
    });
    let BatchItemsOutcome::Applied {
        items,
        batch: sealed,
    } = store
        .batch_items_trigger(&tenancy.dev.id, &batch.id, &second, later)
        .await
        .unwrap()
    else {
        panic!("applied")
    };
    assert_eq!(
        items,
        vec![
            BatchItemOutcome::Duplicate,
            BatchItemOutcome::Duplicate,
            BatchItemOutcome::Failed
        ]
    );
    let mut want = batch.clone();
    want.items_received = 3;
    want.status = BatchStatus::Completed;
    want.updated_at = later;
    want.sealed_at = Some(later);
    want.processing_completed_at = Some(later);
    assert_eq!(sealed, want);
    assert_eq!(
        store.batch_get(&tenancy.dev.id, &batch.id).await.unwrap(),
        Some(want.clone())
    );
    assert_eq!(
        store.batch_item_list(&batch.id).await.unwrap(),
        vec![
            BatchItemRecord {
                index: 0,
                task_identifier: "my-task".into(),
                run_id: Some(item_run(&first[0]).id.clone()),
                error: None
            },
            BatchItemRecord {
                index: 1,
                task_identifier: "my-task".into(),
                run_id: Some(item_run(&first[1]).id.clone()),
                error: None
            },
            BatchItemRecord {
                index: 2,
                task_identifier: "my-task".into(),
                run_id: None,
                error: Some("too many tags".into())
            },
        ]
    );
    assert_eq!(
        stored(&*store, item_run(&first[0])).await.batch_id,
        Some(batch.id.clone())
    );

    // Sealed: nothing more goes in; other environments do not see the batch.
    let third = vec![batch_item(
        &batch,
        2,
        "my-task",
        json!({}),
        &tenancy.dev,
        later,
    )];
    assert_eq!(
        store
            .batch_items_trigger(&tenancy.dev.id, &batch.id, &third, later)
            .await
            .unwrap(),
        BatchItemsOutcome::Sealed(want)
    );
    assert_eq!(
        store
            .run_get(&tenancy.dev.id, &item_run(&third[0]).id)
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        store
            .batch_items_trigger(&tenancy.prod.id, &batch.id, &third, later)
            .await
            .unwrap(),
        BatchItemsOutcome::NotFound
    );
}

pub(crate) async fn batch_items_trigger_honours_idempotency_keys(store: Arc<dyn Store>) {
    let tenancy = bootstrap(&*store).await;
    let holder = keyed_run("my-task", "item-key", &tenancy.dev, at(0));
    create(&*store, &holder, at(0)).await;
    let batch = batch_record(&tenancy.dev, 3, None, at(0));
    create_batch(&*store, &batch, at(0)).await;
    let items = vec![
        batch_item(
            &batch,
            0,
            "my-task",
            json!({"options": {"idempotencyKey": "item-key"}}),
            &tenancy.dev,
            at(1),
        ),
        batch_item(
            &batch,
            1,
            "my-task",
            json!({"options": {"idempotencyKey": "fresh"}}),
            &tenancy.dev,
            at(1),
        ),
        batch_item(
            &batch,
            2,
            "my-task",
            json!({"options": {"idempotencyKey": "fresh"}}),
            &tenancy.dev,
            at(1),
        ),
    ];
    let BatchItemsOutcome::Applied {
        items: outcomes,
        batch: after,
    } = store
        .batch_items_trigger(&tenancy.dev.id, &batch.id, &items, at(1))
        .await
        .unwrap()
    else {
        panic!("applied")
    };
    let fresh = item_run(&items[1]).id.clone();
    assert_eq!(
        outcomes,
        vec![
            BatchItemOutcome::Triggered(TriggerOutcome::Cached(holder.id.clone())),
            BatchItemOutcome::Triggered(TriggerOutcome::Created(fresh.clone())),
            BatchItemOutcome::Triggered(TriggerOutcome::Cached(fresh.clone())),
        ]
    );
    assert!(after.sealed());
    let runs: Vec<Option<String>> = store
        .batch_item_list(&batch.id)
        .await
        .unwrap()
        .into_iter()
        .map(|i| i.run_id.map(|id| id.to_string()))
        .collect();
    assert_eq!(
        runs,
        vec![
            Some(holder.id.to_string()),
            Some(fresh.to_string()),
            Some(fresh.to_string())
        ]
    );
    assert_eq!(
        store
            .run_get(&tenancy.dev.id, &item_run(&items[0]).id)
            .await
            .unwrap(),
        None
    );
}

pub(crate) async fn batch_items_trigger_concurrent_overlapping_calls_record_each_index_once(
    store: Arc<dyn Store>,
) {
    const CALLS: u32 = 6;
    const RUNS: u32 = 120;
    let tenancy = bootstrap(&*store).await;
    let batch = batch_record(&tenancy.dev, RUNS, None, at(0));
    create_batch(&*store, &batch, at(0)).await;
    // Call c sends indexes [c*15, c*15+45): every index is in 1 to 3 calls, and the
    // calls together cover them all.
    let calls: Vec<Vec<BatchItemTrigger>> = (0..CALLS)
        .map(|c| {
            (c * 15..(c * 15 + 45).min(RUNS))
                .chain(if c == CALLS - 1 { 90..RUNS } else { 0..0 })
                .map(|i| {
                    batch_item(
                        &batch,
                        i,
                        "my-task",
                        json!({"payload": i}),
                        &tenancy.dev,
                        at(1),
                    )
                })
                .collect()
        })
        .collect();
    let start = Arc::new(Barrier::new(CALLS as usize));
    let mut tasks = JoinSet::new();
    for items in calls.clone() {
        let store = Arc::clone(&store);
        let start = Arc::clone(&start);
        let id = batch.id.clone();
        let env = tenancy.dev.id.clone();
        tasks.spawn(async move {
            start.wait().await;
            let outcome = store
                .batch_items_trigger(&env, &id, &items, at(1))
                .await
                .expect("items");
            (items, outcome)
        });
    }
    let mut created = std::collections::HashMap::new();
    let mut sealed_calls = 0;
    for (items, outcome) in tasks.join_all().await {
        let outcomes = match outcome {
            BatchItemsOutcome::Applied { items, batch } => {
                sealed_calls += usize::from(batch.sealed());
                items
            }
            BatchItemsOutcome::Sealed(_) => continue,
            BatchItemsOutcome::NotFound => panic!("the batch exists"),
        };
        for (item, outcome) in items.iter().zip(outcomes) {
            if let BatchItemOutcome::Triggered(TriggerOutcome::Created(id)) = outcome {
                assert!(
                    created.insert(item.index, id).is_none(),
                    "index {} created twice",
                    item.index
                );
            }
        }
    }
    assert_eq!(created.len(), RUNS as usize, "every index created once");
    assert_eq!(sealed_calls, 1, "exactly one call seals the batch");
    let list = store.batch_item_list(&batch.id).await.unwrap();
    assert_eq!(list.len(), RUNS as usize);
    for item in list {
        let id = created[&item.index].clone();
        assert_eq!(item.run_id, Some(id.clone()));
        assert!(store.run_get(&tenancy.dev.id, &id).await.unwrap().is_some());
    }
}
