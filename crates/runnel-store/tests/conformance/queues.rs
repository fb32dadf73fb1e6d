//! Queues: declarations, listing, pause and overrides, and concurrency limits at dequeue.

use crate::harness::*;

async fn declare(store: &dyn Store, environment: &Environment, name: &str, limit: Option<u32>) {
    store
        .queue_declare(
            &environment.id,
            &[QueueDeclaration {
                name: name.to_owned(),
                concurrency_limit: Some(limit),
            }],
            at(0),
        )
        .await
        .expect("queue_declare");
}

async fn queue_named(store: &dyn Store, environment: &Environment, name: &str) -> QueueRecord {
    store
        .queue_get(&environment.id, &QueueRef::Name(name.to_owned()))
        .await
        .expect("queue_get")
        .unwrap_or_else(|| panic!("queue {name} is stored"))
}

/// A run of `my-task` on `queue` (with a concurrency key when given), queued at `now`.
fn run_on(queue: &str, key: Option<&str>, environment: &Environment, now: DateTime<Utc>) -> Run {
    let mut options = json!({"queue": {"name": queue}});
    if let Some(key) = key {
        options["concurrencyKey"] = json!(key);
    }
    run_with_options(options, environment, now)
}

/// Dequeues with `dequeuers` workers at once, each until it gets nothing; every lease.
async fn dequeue_concurrently(
    store: &Arc<dyn Store>,
    environment: &Environment,
    dequeuers: usize,
    batch: u32,
) -> Vec<Leased> {
    let mut workers = Vec::new();
    for _ in 0..dequeuers {
        workers.push(serve(&**store, environment, "v1", &["my-task"], at(0)).await);
    }
    let start = Arc::new(Barrier::new(dequeuers));
    let mut tasks = JoinSet::new();
    for worker in workers {
        let store = Arc::clone(store);
        let start = Arc::clone(&start);
        tasks.spawn(async move {
            start.wait().await;
            let mut leased = Vec::new();
            loop {
                let now = at(HOUR);
                let got = store
                    .run_dequeue(&worker, batch, now + Duration::seconds(LEASE_SECS), now)
                    .await
                    .expect("run_dequeue");
                if got.is_empty() {
                    return leased;
                }
                leased.extend(got);
            }
        });
    }
    tasks.join_all().await.into_iter().flatten().collect()
}

pub(crate) async fn queue_declare_creates_queues_and_sets_stated_limits(store: Arc<dyn Store>) {
    let tenancy = bootstrap(&*store).await;
    let referenced = |name: &str| QueueDeclaration {
        name: name.to_owned(),
        concurrency_limit: None,
    };
    store
        .queue_declare(
            &tenancy.dev.id,
            &[
                referenced("task/my-task"),
                QueueDeclaration {
                    name: "emails".into(),
                    concurrency_limit: Some(Some(2)),
                },
            ],
            at(0),
        )
        .await
        .unwrap();
    let task_queue = queue_named(&*store, &tenancy.dev, "task/my-task").await;
    assert!(task_queue.id.as_str().starts_with("queue_"));
    assert_eq!(
        (
            task_queue.kind,
            task_queue.concurrency_limit,
            task_queue.paused
        ),
        (QueueKind::Task, None, false)
    );
    let emails = queue_named(&*store, &tenancy.dev, "emails").await;
    assert_eq!(
        (
            emails.kind,
            emails.concurrency_limit,
            emails.effective_limit()
        ),
        (QueueKind::Custom, Some(2), Some(2))
    );
    assert_eq!(emails.created_at, at(0));

    // Referencing keeps the limit; stating one replaces it; the id stays.
    store
        .queue_declare(&tenancy.dev.id, &[referenced("emails")], at(MINUTE))
        .await
        .unwrap();
    assert_eq!(queue_named(&*store, &tenancy.dev, "emails").await, emails);
    declare(&*store, &tenancy.dev, "emails", None).await;
    let cleared = queue_named(&*store, &tenancy.dev, "emails").await;
    assert_eq!(
        (cleared.id, cleared.concurrency_limit),
        (emails.id.clone(), None)
    );

    // Per environment.
    assert_eq!(
        store
            .queue_get(&tenancy.prod.id, &QueueRef::Name("emails".into()))
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        store
            .queue_get(&tenancy.prod.id, &QueueRef::Id(emails.id.to_string()))
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        store
            .queue_get(&tenancy.dev.id, &QueueRef::Id(emails.id.to_string()))
            .await
            .unwrap()
            .map(|q| q.name),
        Some("emails".to_owned())
    );
}

pub(crate) async fn queue_list_pages_by_name_with_counts(store: Arc<dyn Store>) {
    let tenancy = bootstrap(&*store).await;
    for name in ["c", "a", "task/my-task", "b"] {
        declare(&*store, &tenancy.dev, name, None).await;
    }
    declare(&*store, &tenancy.prod, "elsewhere", None).await;
    let worker = serve(&*store, &tenancy.dev, "v1", &["my-task"], at(0)).await;
    for i in 0..3 {
        create(&*store, &run_on("a", None, &tenancy.dev, at(i)), at(i)).await;
    }
    lease(&*store, &worker, at(MINUTE)).await;

    let (page, total) = store.queue_list(&tenancy.dev.id, 0, 2).await.unwrap();
    assert_eq!(total, 4);
    let names: Vec<(String, u64, u64)> = page
        .iter()
        .map(|q| (q.name.clone(), q.running, q.queued))
        .collect();
    assert_eq!(names, vec![("a".into(), 1, 2), ("b".into(), 0, 0)]);
    let (page, _) = store.queue_list(&tenancy.dev.id, 2, 2).await.unwrap();
    let names: Vec<&str> = page.iter().map(|q| q.name.as_str()).collect();
    assert_eq!(names, vec!["c", "task/my-task"]);
    let (page, total) = store.queue_list(&tenancy.dev.id, 4, 2).await.unwrap();
    assert_eq!((page.len(), total), (0, 4));
}

pub(crate) async fn queue_update_pauses_overrides_and_resets(store: Arc<dyn Store>) {
    let tenancy = bootstrap(&*store).await;
    declare(&*store, &tenancy.dev, "emails", Some(3)).await;
    let by_name = QueueRef::Name("emails".into());
    let update = |change: QueueChange, now: DateTime<Utc>| {
        let store = Arc::clone(&store);
        let env = tenancy.dev.id.clone();
        let by_name = by_name.clone();
        async move {
            store
                .queue_update(&env, &by_name, change, now)
                .await
                .unwrap()
        }
    };
    let paused = update(QueueChange::Pause, at(1)).await.unwrap();
    assert!(paused.paused);
    assert_eq!(paused.updated_at, at(1));
    assert!(!update(QueueChange::Resume, at(2)).await.unwrap().paused);

    let overridden = update(QueueChange::Override(7), at(3)).await.unwrap();
    assert_eq!(
        (
            overridden.concurrency_limit,
            overridden.concurrency_limit_override,
            overridden.overridden_at,
            overridden.effective_limit()
        ),
        (Some(3), Some(7), Some(at(3)), Some(7))
    );
    let zero = update(QueueChange::Override(0), at(4)).await.unwrap();
    assert_eq!(zero.effective_limit(), Some(0));
    let reset = update(QueueChange::ResetOverride, at(5)).await.unwrap();
    assert_eq!(
        (
            reset.concurrency_limit_override,
            reset.overridden_at,
            reset.effective_limit()
        ),
        (None, None, Some(3))
    );

    let missing = store
        .queue_update(
            &tenancy.dev.id,
            &QueueRef::Name("nope".into()),
            QueueChange::Pause,
            at(6),
        )
        .await
        .unwrap();
    assert_eq!(missing, None);
    let foreign = store
        .queue_update(&tenancy.prod.id, &by_name, QueueChange::Pause, at(6))
        .await
        .unwrap();
    assert_eq!(foreign, None, "another environment's queue");
    assert!(!queue_named(&*store, &tenancy.dev, "emails").await.paused);
}

pub(crate) async fn task_queue_is_the_newest_declared_queue_of_the_task(store: Arc<dyn Store>) {
    let tenancy = bootstrap(&*store).await;
    assert_eq!(
        store
            .task_queue(&tenancy.dev.id, "my-task", None)
            .await
            .unwrap(),
        None,
        "not served"
    );
    let on = |queue: &str| TaskConfig {
        queue: queue.to_owned(),
        ..task("my-task")
    };
    register(
        &*store,
        &tenancy.dev,
        Some("v1"),
        vec![on("task/my-task")],
        at(0),
    )
    .await;
    register(
        &*store,
        &tenancy.dev,
        Some("v2"),
        vec![on("emails")],
        at(MINUTE),
    )
    .await;
    let queue = |version: Option<&'static str>| {
        let store = Arc::clone(&store);
        let env = tenancy.dev.id.clone();
        async move { store.task_queue(&env, "my-task", version).await.unwrap() }
    };
    assert_eq!(queue(None).await.as_deref(), Some("emails"));
    assert_eq!(queue(Some("v1")).await.as_deref(), Some("task/my-task"));
    assert_eq!(queue(Some("v3")).await, None);
}

pub(crate) async fn run_dequeue_never_exceeds_the_queue_limit_under_concurrent_dequeuers(
    store: Arc<dyn Store>,
) {
    let tenancy = bootstrap(&*store).await;
    declare(&*store, &tenancy.dev, "emails", Some(3)).await;
    let runs: Vec<Run> = (0..30)
        .map(|i| run_on("emails", None, &tenancy.dev, at(i)))
        .collect();
    for run in &runs {
        create(&*store, run, at(0)).await;
    }
    let leased = dequeue_concurrently(&store, &tenancy.dev, 6, 4).await;
    assert_eq!(
        sorted(ids_of(&leased)),
        sorted(runs[..3].iter().map(|r| r.id.clone()).collect()),
        "the three oldest, once each"
    );
    let queue = queue_named(&*store, &tenancy.dev, "emails").await;
    assert_eq!((queue.running, queue.queued), (3, 27));

    // A held run that ends frees its slot.
    let outcome = store
        .run_cancel(&tenancy.dev.id, &leased[0].run.id, 0.0, at(HOUR))
        .await
        .unwrap();
    assert!(matches!(outcome, CancelOutcome::Canceled { .. }));
    let more = dequeue_concurrently(&store, &tenancy.dev, 4, 4).await;
    assert_eq!(ids_of(&more), vec![runs[3].id.clone()]);
}

pub(crate) async fn run_dequeue_limits_each_concurrency_key_separately_under_concurrent_dequeuers(
    store: Arc<dyn Store>,
) {
    let tenancy = bootstrap(&*store).await;
    declare(&*store, &tenancy.dev, "emails", Some(2)).await;
    let mut runs = Vec::new();
    for i in 0..8 {
        for key in [Some("alice"), Some("bob"), None] {
            runs.push(run_on("emails", key, &tenancy.dev, at(i)));
        }
    }
    for run in &runs {
        create(&*store, run, at(0)).await;
    }
    let leased = dequeue_concurrently(&store, &tenancy.dev, 6, 5).await;
    let mut per_key = std::collections::HashMap::<Option<String>, usize>::new();
    for l in &leased {
        *per_key.entry(l.run.concurrency_key.clone()).or_default() += 1;
    }
    assert_eq!(per_key.get(&Some("alice".to_owned())), Some(&2));
    assert_eq!(per_key.get(&Some("bob".to_owned())), Some(&2));
    assert_eq!(
        per_key.get(&None),
        Some(&2),
        "runs without a key share one copy"
    );
    assert_eq!(leased.len(), 6);
    let expected: Vec<RunId> = runs[..6].iter().map(|r| r.id.clone()).collect();
    assert_eq!(sorted(ids_of(&leased)), sorted(expected), "oldest per key");
}

pub(crate) async fn run_dequeue_a_full_queue_does_not_block_other_queues(store: Arc<dyn Store>) {
    let tenancy = bootstrap(&*store).await;
    declare(&*store, &tenancy.dev, "slow", Some(1)).await;
    declare(&*store, &tenancy.dev, "task/my-task", Some(50)).await;
    // The full queue's runs are the oldest by far, and many.
    let slow: Vec<Run> = (0..40)
        .map(|i| run_on("slow", None, &tenancy.dev, at(i)))
        .collect();
    let fast: Vec<Run> = (0..10)
        .map(|i| queued_run(&tenancy.dev, at(MINUTE + i)))
        .collect();
    let open: Vec<Run> = (0..5)
        .map(|i| run_on("open", None, &tenancy.dev, at(2 * MINUTE + i)))
        .collect();
    for run in slow.iter().chain(&fast).chain(&open) {
        create(&*store, run, at(0)).await;
    }
    let worker = serve(&*store, &tenancy.dev, "v1", &["my-task"], at(0)).await;
    let now = at(HOUR);
    let got = store
        .run_dequeue(&worker, 16, now + Duration::seconds(LEASE_SECS), now)
        .await
        .unwrap();
    let mut expected = vec![slow[0].id.clone()];
    expected.extend(fast.iter().map(|r| r.id.clone()));
    expected.extend(open.iter().map(|r| r.id.clone()));
    assert_eq!(
        ids_of(&got),
        expected,
        "one slow run, then the others in order"
    );
}

pub(crate) async fn run_dequeue_skips_a_paused_queue_until_it_resumes(store: Arc<dyn Store>) {
    let tenancy = bootstrap(&*store).await;
    declare(&*store, &tenancy.dev, "emails", None).await;
    let worker = serve(&*store, &tenancy.dev, "v1", &["my-task"], at(0)).await;
    let held = run_on("emails", None, &tenancy.dev, at(0));
    create(&*store, &held, at(0)).await;
    lease(&*store, &worker, at(1)).await;
    let by_name = QueueRef::Name("emails".into());
    store
        .queue_update(&tenancy.dev.id, &by_name, QueueChange::Pause, at(2))
        .await
        .unwrap();
    let waiting = run_on("emails", None, &tenancy.dev, at(3));
    let other = queued_run(&tenancy.dev, at(4));
    create(&*store, &waiting, at(3)).await;
    create(&*store, &other, at(4)).await;
    let now = at(MINUTE);
    let got = store
        .run_dequeue(&worker, 10, now + Duration::seconds(LEASE_SECS), now)
        .await
        .unwrap();
    assert_eq!(ids_of(&got), vec![other.id.clone()], "other queues go on");
    assert_eq!(
        stored_status(&*store, &held).await,
        RunStatus::Dequeued,
        "a held run stays held"
    );
    let paused = queue_named(&*store, &tenancy.dev, "emails").await;
    assert_eq!((paused.paused, paused.running, paused.queued), (true, 1, 1));

    store
        .queue_update(&tenancy.dev.id, &by_name, QueueChange::Resume, at(MINUTE))
        .await
        .unwrap();
    let got = store
        .run_dequeue(&worker, 10, now + Duration::seconds(LEASE_SECS), now)
        .await
        .unwrap();
    assert_eq!(ids_of(&got), vec![waiting.id.clone()]);
}

pub(crate) async fn run_dequeue_in_a_limited_queue_keeps_priority_and_fifo_order(
    store: Arc<dyn Store>,
) {
    let tenancy = bootstrap(&*store).await;
    declare(&*store, &tenancy.dev, "emails", Some(2)).await;
    let first = run_on("emails", None, &tenancy.dev, at(0));
    let second = run_on("emails", None, &tenancy.dev, at(10));
    let urgent = run_with_options(
        json!({"queue": {"name": "emails"}, "priority": 60}),
        &tenancy.dev,
        at(20),
    );
    for run in [&first, &second, &urgent] {
        create(&*store, run, at(20)).await;
    }
    let worker = serve(&*store, &tenancy.dev, "v1", &["my-task"], at(0)).await;
    let now = at(MINUTE);
    let got = store
        .run_dequeue(&worker, 10, now + Duration::seconds(LEASE_SECS), now)
        .await
        .unwrap();
    assert_eq!(
        ids_of(&got),
        vec![urgent.id.clone(), first.id.clone()],
        "priority first, then the oldest; the limit keeps the rest"
    );
}

pub(crate) async fn run_dequeue_override_wins_over_the_registered_limit_until_reset(
    store: Arc<dyn Store>,
) {
    let tenancy = bootstrap(&*store).await;
    declare(&*store, &tenancy.dev, "emails", Some(1)).await;
    let runs: Vec<Run> = (0..10)
        .map(|i| run_on("emails", None, &tenancy.dev, at(i)))
        .collect();
    for run in &runs {
        create(&*store, run, at(0)).await;
    }
    let worker = serve(&*store, &tenancy.dev, "v1", &["my-task"], at(0)).await;
    let by_name = QueueRef::Name("emails".into());
    let dequeue = || {
        let store = Arc::clone(&store);
        let worker = worker.clone();
        async move {
            let now = at(MINUTE);
            store
                .run_dequeue(&worker, 10, now + Duration::seconds(LEASE_SECS), now)
                .await
                .unwrap()
                .len()
        }
    };
    store
        .queue_update(&tenancy.dev.id, &by_name, QueueChange::Override(0), at(1))
        .await
        .unwrap();
    assert_eq!(dequeue().await, 0, "an override of 0 stops the queue");
    store
        .queue_update(&tenancy.dev.id, &by_name, QueueChange::Override(4), at(2))
        .await
        .unwrap();
    assert_eq!(dequeue().await, 4);
    assert_eq!(dequeue().await, 0);
    // Back to the registered 1: four are held already, so nothing more.
    store
        .queue_update(&tenancy.dev.id, &by_name, QueueChange::ResetOverride, at(3))
        .await
        .unwrap();
    assert_eq!(dequeue().await, 0);
    // A registration stating no limit lifts it.
    declare(&*store, &tenancy.dev, "emails", None).await;
    assert_eq!(dequeue().await, 6);
}
