//! Workers: registration, versions, and the tasks a version serves.

use crate::harness::*;

pub(crate) async fn worker_register_assigns_dated_versions_and_keeps_given_ones(
    store: Arc<dyn Store>,
) {
    let tenancy = bootstrap(&*store).await;
    let assign = |environment: Environment, now: DateTime<Utc>| {
        let store = Arc::clone(&store);
        async move {
            register(&*store, &environment, None, vec![task("a")], now)
                .await
                .1
                .version
        }
    };
    // at(0) is 2026-01-02.
    assert_eq!(assign(tenancy.dev.clone(), at(0)).await, "20260102.1");
    assert_eq!(assign(tenancy.dev.clone(), at(MINUTE)).await, "20260102.2");

    let (worker, registered) = register(
        &*store,
        &tenancy.dev,
        Some("v1.0"),
        vec![task("a")],
        at(2 * MINUTE),
    )
    .await;
    assert_eq!(
        registered,
        Registered {
            version: "v1.0".to_owned(),
            promoted: vec![]
        }
    );
    assert_eq!(
        worker,
        WorkerRecord {
            id: worker.id.clone(),
            environment_id: tenancy.dev.id.clone(),
            name: "test-worker".to_owned(),
            version: "v1.0".to_owned(),
            tasks: vec![task("a")],
            created_at: at(2 * MINUTE),
        }
    );
    // Re-registering an assigned version keeps it and does not use up a number.
    let again = register(
        &*store,
        &tenancy.dev,
        Some("20260102.1"),
        vec![task("a")],
        at(3 * MINUTE),
    )
    .await;
    assert_eq!(again.1.version, "20260102.1");
    assert_eq!(again.0.version, "20260102.1");
    assert_eq!(
        assign(tenancy.dev.clone(), at(4 * MINUTE)).await,
        "20260102.3"
    );

    // Numbers are per environment and per date.
    assert_eq!(assign(tenancy.staging.clone(), at(0)).await, "20260102.1");
    assert_eq!(
        assign(tenancy.dev.clone(), at(24 * HOUR)).await,
        "20260103.1"
    );
}

/// Registrations at once (several workers starting on several nodes) never share an
/// assigned version.
pub(crate) async fn worker_register_concurrent_registrations_get_distinct_versions(
    store: Arc<dyn Store>,
) {
    const WORKERS: usize = 6;
    let tenancy = bootstrap(&*store).await;
    let start = Arc::new(Barrier::new(WORKERS));
    let mut tasks = JoinSet::new();
    for _ in 0..WORKERS {
        let store = Arc::clone(&store);
        let start = Arc::clone(&start);
        let dev = tenancy.dev.clone();
        tasks.spawn(async move {
            start.wait().await;
            register(&*store, &dev, None, vec![task("a")], at(0))
                .await
                .1
                .version
        });
    }
    let mut versions = tasks.join_all().await;
    versions.sort();
    let want: Vec<String> = (1..=WORKERS).map(|n| format!("20260102.{n}")).collect();
    assert_eq!(versions, want);
}

pub(crate) async fn worker_register_again_upserts_the_tasks_of_a_version(store: Arc<dyn Store>) {
    let tenancy = bootstrap(&*store).await;
    let first_a = TaskConfig {
        retry: Some(RetryPolicy {
            max_attempts: 5,
            factor: 3.0,
            min_timeout_in_ms: 100,
            max_timeout_in_ms: 900,
            randomize: false,
        }),
        max_duration_secs: Some(60),
        machine: Some(MachinePreset::Micro),
        file_path: None,
        scheduled: false,
        queue: "shared".to_owned(),
        ..task("a")
    };
    let (first, _) = register(
        &*store,
        &tenancy.dev,
        Some("v1"),
        vec![first_a.clone(), task("b")],
        at(0),
    )
    .await;
    assert_eq!(first.tasks, vec![first_a, task("b")]);

    let second_a = TaskConfig {
        max_duration_secs: Some(120),
        machine: Some(MachinePreset::Large1x),
        file_path: None,
        scheduled: false,
        ..task("a")
    };
    let (second, registered) = register(
        &*store,
        &tenancy.dev,
        Some("v1"),
        vec![second_a.clone()],
        at(MINUTE),
    )
    .await;
    assert_eq!(registered.version, "v1");
    assert_eq!(second.tasks, vec![second_a.clone()]);
    // The version's settings changed for every worker of it.
    let first_again = store.worker_get(&first.id).await.unwrap().unwrap();
    assert_eq!(first_again.tasks, vec![second_a, task("b")]);
}

pub(crate) async fn worker_get_returns_only_the_worker_tasks(store: Arc<dyn Store>) {
    let tenancy = bootstrap(&*store).await;
    let one = serve(&*store, &tenancy.dev, "v1", &["b", "a"], at(0)).await;
    let two = serve(&*store, &tenancy.dev, "v1", &["c", "b"], at(0)).await;
    let other_env = serve(&*store, &tenancy.prod, "v1", &["d"], at(0)).await;
    // Listed by task identifier.
    assert_eq!(one.tasks, vec![task("a"), task("b")]);
    assert_eq!(two.tasks, vec![task("b"), task("c")]);
    assert_eq!(other_env.tasks, vec![task("d")]);
    assert_eq!(other_env.environment_id, tenancy.prod.id);
    assert_eq!(
        store.worker_get(&one.id).await.unwrap(),
        Some(one.clone()),
        "a worker reads back the same"
    );
    let unknown = WorkerId::generate(at(0).timestamp_millis());
    assert_eq!(store.worker_get(&unknown).await.unwrap(), None);
}

pub(crate) async fn task_served_by_any_version_or_the_named_one(store: Arc<dyn Store>) {
    let tenancy = bootstrap(&*store).await;
    let served = |environment: &Environment, task: &'static str, version: Option<&'static str>| {
        let store = Arc::clone(&store);
        let environment = environment.id.clone();
        async move {
            store
                .task_served(&environment, task, version)
                .await
                .unwrap()
        }
    };
    assert!(!served(&tenancy.dev, "a", None).await, "nothing registered");
    serve(&*store, &tenancy.dev, "v1", &["a"], at(0)).await;
    assert!(served(&tenancy.dev, "a", None).await);
    assert!(served(&tenancy.dev, "a", Some("v1")).await);
    assert!(!served(&tenancy.dev, "a", Some("v2")).await);
    assert!(!served(&tenancy.dev, "b", None).await);
    assert!(!served(&tenancy.staging, "a", None).await);
    assert!(!served(&tenancy.staging, "a", Some("v1")).await);
}

pub(crate) async fn worker_register_queues_the_waiting_runs_of_its_tasks(store: Arc<dyn Store>) {
    let tenancy = bootstrap(&*store).await;
    let unlocked = waiting_run("a", json!({}), &tenancy.dev, at(0));
    let locked_v1 = waiting_run("a", json!({"lockToVersion": "v1"}), &tenancy.dev, at(0));
    let locked_v2 = waiting_run("a", json!({"lockToVersion": "v2"}), &tenancy.dev, at(0));
    let other_task = waiting_run("b", json!({}), &tenancy.dev, at(0));
    let other_env = waiting_run("a", json!({}), &tenancy.staging, at(0));
    let delayed = run_from(
        "a",
        json!({"options": {"delay": "1h"}}),
        &tenancy.dev,
        at(0),
    );
    let all = [
        &unlocked,
        &locked_v1,
        &locked_v2,
        &other_task,
        &other_env,
        &delayed,
    ];
    for run in all {
        create(&*store, run, at(0)).await;
    }

    let now = at(MINUTE);
    let (_, registered) = register(&*store, &tenancy.dev, Some("v1"), vec![task("a")], now).await;
    assert_eq!(
        sorted(registered.promoted),
        sorted(vec![unlocked.id.clone(), locked_v1.id.clone()])
    );
    for run in [&unlocked, &locked_v1] {
        let mut want = run.clone();
        want.status = RunStatus::Queued;
        want.updated_at = now;
        assert_eq!(stored(&*store, run).await, want);
    }
    for run in [&locked_v2, &other_task, &other_env, &delayed] {
        assert_eq!(stored(&*store, run).await, *run, "{} waits", run.id);
    }

    let (_, registered) = register(&*store, &tenancy.dev, Some("v2"), vec![task("a")], now).await;
    assert_eq!(registered.promoted, vec![locked_v2.id.clone()]);
    assert_eq!(stored_status(&*store, &locked_v2).await, RunStatus::Queued);
    assert_eq!(stored(&*store, &other_task).await, other_task);
}
