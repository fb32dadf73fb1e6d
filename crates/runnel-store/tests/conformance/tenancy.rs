//! Health and tenancy: the health probe, writes cut off by their caller, project bootstrap.

use crate::harness::*;

pub(crate) async fn health_reads_and_writes(store: Arc<dyn Store>) {
    // On an empty database too: a node answers before anything is bootstrapped.
    store
        .health(at(0))
        .await
        .expect("health on an empty database");
    bootstrap(&*store).await;
    store.health(at(1)).await.expect("health");
    store
        .health(at(2))
        .await
        .expect("health again (the row is overwritten)");
}

/// Callers that stop waiting part-way through their writes (a client gone, a timeout):
/// every write still works afterwards. On SQLite, a transaction cut after its `BEGIN`
/// used to leave the one writer connection refusing every later write.
pub(crate) async fn writes_cut_off_by_their_caller_leave_the_store_usable(store: Arc<dyn Store>) {
    let tenancy = bootstrap(&*store).await;
    let worker = serve(&*store, &tenancy.dev, "v1", &["my-task"], at(1)).await;
    let runs: Vec<Run> = (0..60).map(|_| queued_run(&tenancy.dev, at(2))).collect();
    for run in &runs {
        create(&*store, run, at(2)).await;
    }
    let declarations = vec![QueueDeclaration {
        name: "custom".to_owned(),
        concurrency_limit: Some(Some(3)),
    }];
    // Cut each write at a different point: before, inside and after its transaction.
    for round in 0..1000u64 {
        let cut = std::time::Duration::from_micros((round * 7) % 400);
        let now = at(10 + round as i64);
        let _ = tokio::time::timeout(
            cut,
            store.queue_declare(&tenancy.dev.id, &declarations, now),
        )
        .await;
        let _ = tokio::time::timeout(
            cut,
            store.run_dequeue(&worker, 1, now + Duration::seconds(LEASE_SECS), now),
        )
        .await;
        let _ = tokio::time::timeout(cut, store.api_key_revoke("tr_dev_none", now)).await;
        let run = &runs[round as usize % runs.len()];
        let _ =
            tokio::time::timeout(cut, store.run_cancel(&tenancy.dev.id, &run.id, 0.0, now)).await;
    }
    let later = at(1000);
    store
        .health(later)
        .await
        .expect("health after the cut writes");
    store
        .queue_declare(&tenancy.dev.id, &declarations, later)
        .await
        .expect("queue_declare after the cut writes");
    create(&*store, &queued_run(&tenancy.dev, later), later).await;
    store
        .run_dequeue(
            &worker,
            NO_LIMIT,
            later + Duration::seconds(LEASE_SECS),
            later,
        )
        .await
        .expect("run_dequeue after the cut writes");
    let outcome = store
        .run_cancel(&tenancy.dev.id, &runs[0].id, 0.0, later)
        .await
        .expect("run_cancel after the cut writes");
    assert!(
        matches!(
            outcome,
            CancelOutcome::Canceled { .. } | CancelOutcome::AlreadyFinal(_)
        ),
        "{outcome:?}"
    );
}

pub(crate) async fn project_bootstrap_creates_project_environments_and_dev_key(
    store: Arc<dyn Store>,
) {
    assert_eq!(store.project_get().await.unwrap(), None);
    assert_eq!(
        store.environment_get(EnvironmentKind::Dev).await.unwrap(),
        None
    );

    let dev_key = SecretKey::generate(EnvironmentKind::Dev);
    let bootstrap = store
        .project_bootstrap(&dev_key, crate::harness::master_keys(), at(0))
        .await
        .unwrap()
        .expect("first bootstrap");

    assert_eq!(bootstrap.project.created_at, at(0));
    assert_eq!(
        store.project_get().await.unwrap(),
        Some(bootstrap.project.clone())
    );
    assert_eq!(bootstrap.environments.len(), 3);
    for kind in EnvironmentKind::ALL {
        let of_kind: Vec<&Environment> = bootstrap
            .environments
            .iter()
            .filter(|e| e.kind == kind)
            .collect();
        assert_eq!(of_kind.len(), 1, "one {kind} environment");
        assert_eq!(of_kind[0].project_id, bootstrap.project.id);
        assert_eq!(
            store.environment_get(kind).await.unwrap().as_ref(),
            Some(of_kind[0])
        );
    }
    let mut ids: Vec<&str> = bootstrap
        .environments
        .iter()
        .map(|e| e.id.as_str())
        .collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 3, "environment ids are distinct");

    let dev = store.environment_get(EnvironmentKind::Dev).await.unwrap();
    assert_eq!(
        store.api_key_authenticate(&dev_key.hash()).await.unwrap(),
        dev
    );
    assert_eq!(
        store.api_key_list().await.unwrap(),
        vec![ApiKeyInfo {
            prefix: dev_key.display_prefix(),
            environment: EnvironmentKind::Dev,
            created_at: at(0),
            revoked_at: None,
        }]
    );
}

pub(crate) async fn project_bootstrap_runs_once_and_drops_the_second_key(store: Arc<dyn Store>) {
    let tenancy = bootstrap(&*store).await;
    let project = store.project_get().await.unwrap();
    let keys = store.api_key_list().await.unwrap();

    let second_key = SecretKey::generate(EnvironmentKind::Dev);
    assert_eq!(
        store
            .project_bootstrap(&second_key, crate::harness::master_keys(), at(MINUTE))
            .await
            .unwrap(),
        None
    );

    assert_eq!(store.project_get().await.unwrap(), project);
    assert_eq!(
        store.environment_get(EnvironmentKind::Dev).await.unwrap(),
        Some(tenancy.dev.clone())
    );
    assert_eq!(
        store
            .api_key_authenticate(&second_key.hash())
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        store
            .api_key_authenticate(&tenancy.dev_key.hash())
            .await
            .unwrap(),
        Some(tenancy.dev)
    );
    assert_eq!(store.api_key_list().await.unwrap(), keys);
}

/// Several nodes starting at once on an empty database create one project between them.
pub(crate) async fn project_bootstrap_creates_one_project_under_concurrent_bootstraps(
    store: Arc<dyn Store>,
) {
    const NODES: usize = 4;
    let start = Arc::new(Barrier::new(NODES));
    let mut bootstraps = JoinSet::new();
    for _ in 0..NODES {
        let store = Arc::clone(&store);
        let start = Arc::clone(&start);
        bootstraps.spawn(async move {
            let key = SecretKey::generate(EnvironmentKind::Dev);
            start.wait().await;
            let bootstrap = store
                .project_bootstrap(&key, crate::harness::master_keys(), at(0))
                .await
                .expect("bootstrap");
            (key, bootstrap)
        });
    }
    let outcomes = bootstraps.join_all().await;

    let created: Vec<_> = outcomes
        .iter()
        .filter_map(|(key, bootstrap)| Some((key, bootstrap.as_ref()?)))
        .collect();
    assert_eq!(
        created.len(),
        1,
        "exactly one bootstrap creates the project"
    );
    let (winner_key, bootstrap) = created[0];
    assert_eq!(
        store.project_get().await.unwrap(),
        Some(bootstrap.project.clone())
    );
    assert_eq!(
        store.api_key_list().await.unwrap(),
        vec![ApiKeyInfo {
            prefix: winner_key.display_prefix(),
            environment: EnvironmentKind::Dev,
            created_at: at(0),
            revoked_at: None,
        }],
        "only the winner's key is stored"
    );
    for kind in EnvironmentKind::ALL {
        let environment = bootstrap.environments.iter().find(|e| e.kind == kind);
        assert_eq!(
            store.environment_get(kind).await.unwrap().as_ref(),
            environment
        );
    }
}
