//! Several nodes on one database: signals and concurrent rescuers.

use crate::harness::*;

/// What node `origin` publishes, every listener on the database receives, in order,
/// its own publisher included. A backend with no other process (SQLite) has no listener
/// and publishing there is harmless.
pub(crate) async fn signals_reach_every_listener_of_the_database(store: Arc<dyn Store>) {
    use runnel_store::{Announcement, Signal};
    let Some(mut first) = store.signal_listen().await.unwrap() else {
        store.signal_publish(&Signal::ALL, "node_a").await.unwrap();
        return;
    };
    let mut second = store
        .signal_listen()
        .await
        .unwrap()
        .expect("a second listener");
    store
        .signal_publish(&[Signal::RunsAvailable], "node_a")
        .await
        .unwrap();
    store.signal_publish(&[], "node_b").await.unwrap();
    store
        .signal_publish(&[Signal::AttemptsChanged, Signal::RunsAvailable], "node_b")
        .await
        .unwrap();
    let expected = [
        (Signal::RunsAvailable, "node_a"),
        (Signal::AttemptsChanged, "node_b"),
        (Signal::RunsAvailable, "node_b"),
    ]
    .map(|(signal, origin)| Announcement {
        signal,
        origin: origin.to_owned(),
        runs: Vec::new(),
    });
    for listener in [&mut first, &mut second] {
        let mut received = Vec::new();
        while received.len() < expected.len() {
            let next = tokio::time::timeout(std::time::Duration::from_secs(5), listener.recv())
                .await
                .unwrap_or_else(|_| panic!("no signal within 5 s; received {received:?}"))
                .unwrap();
            received.push(next.expect("the listening connection stays up"));
        }
        assert_eq!(received, expected);
    }

    // Run changes carry the ids written; `missed` adds one naming none.
    let runs = [
        RunId::generate(1_700_000_000_000),
        RunId::generate(1_700_000_000_001),
    ];
    store
        .run_changes_publish(&runs, true, "node_c")
        .await
        .unwrap();
    for listener in [&mut first, &mut second] {
        let mut received = Vec::new();
        while received.len() < 2 {
            let next = tokio::time::timeout(std::time::Duration::from_secs(5), listener.recv())
                .await
                .unwrap_or_else(|_| panic!("no change within 5 s; received {received:?}"))
                .unwrap()
                .expect("the listening connection stays up");
            received.push(next);
        }
        let expected = [runs.to_vec(), Vec::new()].map(|runs| Announcement {
            signal: Signal::RunsChanged,
            origin: "node_c".to_owned(),
            runs,
        });
        assert_eq!(received, expected);
    }
}

/// The rescuers of several nodes at once: each sees every expired lease, and between
/// them each is settled exactly once.
pub(crate) async fn run_leases_due_concurrent_rescuers_settle_each_lease_once(
    store: Arc<dyn Store>,
) {
    const RUNS: usize = 40;
    const RESCUERS: usize = 4;
    let tenancy = bootstrap(&*store).await;
    let worker = serve(&*store, &tenancy.dev, "v1", &["my-task"], at(0)).await;
    for i in 0..RUNS {
        create(&*store, &queued_run(&tenancy.dev, at(i as i64)), at(0)).await;
    }
    for _ in 0..RUNS {
        lease_and_start(&*store, &worker, at(MINUTE)).await;
    }
    let now = at(HOUR);
    let start = Arc::new(Barrier::new(RESCUERS));
    let mut rescuers = JoinSet::new();
    for _ in 0..RESCUERS {
        let (store, start) = (Arc::clone(&store), Arc::clone(&start));
        rescuers.spawn(async move {
            start.wait().await;
            let due = store
                .run_leases_due(Some(now), now, NO_LIMIT)
                .await
                .unwrap();
            let settlements: Vec<AttemptSettlement> = due
                .iter()
                .map(|leased| AttemptSettlement {
                    run_status: RunStatus::Crashed,
                    attempt_status: AttemptStatus::Failed,
                    output: None,
                    ..succeeded(leased, Claim::LeaseExpired(now), now)
                })
                .collect();
            let applied = store.attempt_settle(&settlements).await.unwrap();
            settlements
                .into_iter()
                .zip(applied)
                .filter(|(_, ok)| *ok)
                .map(|(settlement, _)| settlement.run_id)
                .collect::<Vec<_>>()
        });
    }
    let settled: Vec<RunId> = rescuers.join_all().await.into_iter().flatten().collect();
    let distinct: std::collections::HashSet<&RunId> = settled.iter().collect();
    assert_eq!(
        (settled.len(), distinct.len()),
        (RUNS, RUNS),
        "every lease settled exactly once"
    );
    assert_eq!(
        store
            .run_leases_due(Some(now), now, NO_LIMIT)
            .await
            .unwrap(),
        vec![]
    );
}
