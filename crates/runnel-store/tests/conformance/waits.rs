//! [`WaitStore`]: waitpoints (idempotent create, complete once), a run blocked and
//! resumed by them, what the timer finds due or stranded, the token list, and snapshots.

use runnel_core::waitpoint::{
    ExecutionStatus, NewSnapshot, TokenListQuery, TokenStatus, Waitpoint, WaitpointKind,
    WaitpointOutput,
};
use runnel_core::WaitpointId;
use runnel_store::{BlockOutcome, WaitpointCreated};

use crate::harness::*;

fn token(environment: &Environment, now: DateTime<Utc>) -> Waitpoint {
    let mut waitpoint = Waitpoint::new(WaitpointKind::Manual, environment.id.clone(), now);
    waitpoint.callback_secret = Some("s3cret".to_owned());
    waitpoint
}

fn keyed(
    environment: &Environment,
    key: &str,
    expires_at: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Waitpoint {
    let mut waitpoint = token(environment, now);
    waitpoint.idempotency_key = Some(key.to_owned());
    waitpoint.idempotency_key_expires_at = Some(expires_at);
    waitpoint
}

async fn insert(store: &dyn Store, waitpoint: &Waitpoint) -> Waitpoint {
    match store
        .waitpoint_create(waitpoint, waitpoint.created_at)
        .await
        .expect("waitpoint_create")
    {
        WaitpointCreated::Created(w) => w,
        other => panic!("expected a new waitpoint: {other:?}"),
    }
}

fn data(text: &str) -> WaitpointOutput {
    WaitpointOutput {
        output: Some(text.to_owned()),
        output_type: Some("application/json".to_owned()),
        is_error: false,
    }
}

fn snapshot(run: &RunId, status: ExecutionStatus, now: DateTime<Utc>) -> NewSnapshot {
    NewSnapshot::new(run, status, status.as_str(), Some(1), now)
}

/// A run of `my-task` leased and started at `now`: executing, so it can be blocked.
async fn executing(store: &dyn Store, tenancy: &Tenancy, now: DateTime<Utc>) -> Leased {
    let worker = serve(store, &tenancy.dev, "v1", &["my-task"], now).await;
    create(store, &queued_run(&tenancy.dev, now), now).await;
    lease_and_start(store, &worker, now).await
}

pub(crate) async fn waitpoint_create_round_trips_and_honours_idempotency_keys(
    store: Arc<dyn Store>,
) {
    let tenancy = bootstrap(&*store).await;
    let mut first = keyed(&tenancy.dev, "k", at(100), at(0));
    first.tags = vec!["a".into(), "b".into()];
    first.timeout_at = Some(at(3600));
    first.idempotency_key_user = Some("user-k".into());
    let first = insert(&*store, &first).await;
    assert_eq!(
        store
            .waitpoint_get(&tenancy.dev.id, &first.id)
            .await
            .unwrap(),
        Some(first.clone()),
        "every field round-trips"
    );
    assert_eq!(
        store
            .waitpoint_get(&tenancy.prod.id, &first.id)
            .await
            .unwrap(),
        None,
        "scoped to its environment"
    );

    // A live key answers its holder and inserts nothing.
    let again = keyed(&tenancy.dev, "k", at(200), at(10));
    assert_eq!(
        store.waitpoint_create(&again, at(10)).await.unwrap(),
        WaitpointCreated::Cached(first.clone())
    );
    assert_eq!(
        store
            .waitpoints_get(std::slice::from_ref(&again.id))
            .await
            .unwrap(),
        vec![]
    );
    // Keys are per environment.
    insert(&*store, &keyed(&tenancy.prod, "k", at(200), at(10))).await;

    // An expired key is given up by its holder and taken by the new waitpoint.
    let later = keyed(&tenancy.dev, "k", at(500), at(100));
    let later = insert(&*store, &later).await;
    let holder = store
        .waitpoint_get(&tenancy.dev.id, &first.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(holder.idempotency_key, None);
    assert_eq!(
        store
            .waitpoint_create(&keyed(&tenancy.dev, "k", at(900), at(110)), at(110))
            .await
            .unwrap(),
        WaitpointCreated::Cached(later)
    );
}

pub(crate) async fn waitpoint_complete_completes_once(store: Arc<dyn Store>) {
    let tenancy = bootstrap(&*store).await;
    let waitpoint = insert(&*store, &token(&tenancy.dev, at(0))).await;
    assert_eq!(
        store
            .waitpoint_complete(&waitpoint.id, &data("1"), at(5))
            .await
            .unwrap(),
        Some(vec![])
    );
    assert_eq!(
        store
            .waitpoint_complete(&waitpoint.id, &data("2"), at(6))
            .await
            .unwrap(),
        None,
        "a second completion changes nothing"
    );
    let unknown = WaitpointId::generate(at(0).timestamp_millis());
    assert_eq!(
        store
            .waitpoint_complete(&unknown, &data("3"), at(6))
            .await
            .unwrap(),
        None
    );
    let stored = store
        .waitpoint_get(&tenancy.dev.id, &waitpoint.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (
            stored.completed_at,
            stored.output.as_deref(),
            stored.token_status()
        ),
        (Some(at(5)), Some("1"), TokenStatus::Completed)
    );
}

pub(crate) async fn run_block_waits_until_every_blocker_is_completed(store: Arc<dyn Store>) {
    let tenancy = bootstrap(&*store).await;
    let leased = executing(&*store, &tenancy, at(0)).await;
    let run = &leased.run.id;
    let first = insert(&*store, &token(&tenancy.dev, at(1))).await;
    let second = insert(&*store, &token(&tenancy.dev, at(2))).await;
    let ids = [first.id.clone(), second.id.clone()];

    let blocked = store
        .run_block(
            &tenancy.dev.id,
            run,
            &ids,
            &snapshot(run, ExecutionStatus::ExecutingWithWaitpoints, at(10)),
            at(10),
        )
        .await
        .unwrap();
    let BlockOutcome::Blocked {
        snapshot: Some(appended),
    } = blocked
    else {
        panic!("an executing run is blocked with a snapshot: {blocked:?}");
    };
    assert_eq!(appended.status, ExecutionStatus::ExecutingWithWaitpoints);
    assert_eq!(
        stored_status(&*store, &leased.run).await,
        RunStatus::WaitingToResume
    );
    let mut blockers: Vec<WaitpointId> = store
        .run_blockers(run)
        .await
        .unwrap()
        .into_iter()
        .map(|w| w.id)
        .collect();
    blockers.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    let mut expected = ids.to_vec();
    expected.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    assert_eq!(blockers, expected);

    // Blocking another environment's run, or a run that is not executing, does nothing.
    assert_eq!(
        store
            .run_block(
                &tenancy.prod.id,
                run,
                &ids,
                &snapshot(run, ExecutionStatus::ExecutingWithWaitpoints, at(10)),
                at(10)
            )
            .await
            .unwrap(),
        BlockOutcome::NotFound
    );
    let queued = queued_run(&tenancy.dev, at(3));
    create(&*store, &queued, at(3)).await;
    assert_eq!(
        store
            .run_block(
                &tenancy.dev.id,
                &queued.id,
                &ids,
                &snapshot(&queued.id, ExecutionStatus::ExecutingWithWaitpoints, at(10)),
                at(10)
            )
            .await
            .unwrap(),
        BlockOutcome::NotBlockable(RunStatus::Queued)
    );

    let resume = |now| snapshot(run, ExecutionStatus::Executing, now);
    assert_eq!(
        store
            .run_resume(run, &resume(at(20)), at(50), at(20))
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        store
            .waitpoint_complete(&first.id, &data("1"), at(30))
            .await
            .unwrap(),
        Some(vec![run.clone()])
    );
    assert_eq!(
        store
            .run_resume(run, &resume(at(30)), at(60), at(30))
            .await
            .unwrap(),
        None
    );
    assert_eq!(store.runs_resumable(NO_LIMIT).await.unwrap(), vec![]);
    store
        .waitpoint_complete(&second.id, &data("2"), at(40))
        .await
        .unwrap();
    assert_eq!(
        store.runs_resumable(NO_LIMIT).await.unwrap(),
        vec![run.clone()]
    );

    let resumed = store
        .run_resume(run, &resume(at(70)), at(100), at(70))
        .await
        .unwrap()
        .expect("resumed once nothing is pending");
    assert_eq!(resumed.status, ExecutionStatus::Executing);
    assert_eq!(resumed.completed_waitpoints, ids.to_vec());
    assert_eq!(
        stored_status(&*store, &leased.run).await,
        RunStatus::Executing
    );
    assert_eq!(held(&*store, &leased.run).await.attempt.waited_ms, 60_000);
    assert_eq!(store.run_blockers(run).await.unwrap(), vec![]);
    assert_eq!(store.runs_resumable(NO_LIMIT).await.unwrap(), vec![]);
    // Resuming twice resumes once.
    assert_eq!(
        store
            .run_resume(run, &resume(at(80)), at(100), at(80))
            .await
            .unwrap(),
        None
    );
    let history: Vec<ExecutionStatus> = store
        .snapshot_list(run)
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.status)
        .collect();
    assert_eq!(
        history[history.len() - 2..],
        [
            ExecutionStatus::ExecutingWithWaitpoints,
            ExecutionStatus::Executing
        ]
    );
}

pub(crate) async fn waitpoints_due_next_due_and_stranded(store: Arc<dyn Store>) {
    let tenancy = bootstrap(&*store).await;
    assert_eq!(store.waitpoint_next_due().await.unwrap(), None);
    let mut time = Waitpoint::new(WaitpointKind::Datetime, tenancy.dev.id.clone(), at(0));
    time.completes_at = Some(at(100));
    let time = insert(&*store, &time).await;
    let mut timing_out = token(&tenancy.dev, at(0));
    timing_out.timeout_at = Some(at(50));
    let timing_out = insert(&*store, &timing_out).await;
    insert(&*store, &token(&tenancy.dev, at(0))).await;
    assert_eq!(store.waitpoint_next_due().await.unwrap(), Some(at(50)));

    let due = |now| {
        let store = Arc::clone(&store);
        async move {
            let mut ids: Vec<WaitpointId> = store
                .waitpoints_due(now, NO_LIMIT)
                .await
                .unwrap()
                .into_iter()
                .map(|w| w.id)
                .collect();
            ids.sort_by(|a, b| a.as_str().cmp(b.as_str()));
            ids
        }
    };
    assert_eq!(due(at(49)).await, vec![]);
    assert_eq!(due(at(50)).await, vec![timing_out.id.clone()]);
    let mut both = vec![time.id.clone(), timing_out.id.clone()];
    both.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    assert_eq!(due(at(100)).await, both);
    store
        .waitpoint_complete(&timing_out.id, &WaitpointOutput::timed_out(at(50)), at(50))
        .await
        .unwrap();
    assert_eq!(store.waitpoint_next_due().await.unwrap(), Some(at(100)));
    assert_eq!(due(at(100)).await, vec![time.id.clone()]);

    // RUN waitpoints: one whose run ended, one pointing at no run (old enough to be an
    // orphan), one whose run is still live.
    let ended = queued_run(&tenancy.dev, at(0));
    create(&*store, &ended, at(0)).await;
    walk(&*store, &ended.id, RunStatus::Canceled, at(1)).await;
    let live = queued_run(&tenancy.dev, at(0));
    create(&*store, &live, at(0)).await;
    let child = |run: Option<&RunId>, now| {
        let mut w = Waitpoint::new(WaitpointKind::Run, tenancy.dev.id.clone(), now);
        w.completed_by_run = run.cloned();
        w
    };
    let of_ended = insert(&*store, &child(Some(&ended.id), at(0))).await;
    let orphan = insert(&*store, &child(None, at(0))).await;
    insert(&*store, &child(Some(&live.id), at(0))).await;
    let young = insert(&*store, &child(None, at(20))).await;
    let mut stranded = store.waitpoints_stranded(at(10), NO_LIMIT).await.unwrap();
    stranded.sort_by(|a, b| a.0.as_str().cmp(b.0.as_str()));
    let mut expected = vec![
        (of_ended.id.clone(), Some(ended.id.clone())),
        (orphan.id.clone(), None),
    ];
    expected.sort_by(|a, b| a.0.as_str().cmp(b.0.as_str()));
    assert_eq!(stranded, expected, "{young:?} is too young to be an orphan");
    assert_eq!(
        store.waitpoints_of_run(&ended.id).await.unwrap(),
        vec![of_ended.id.clone()]
    );
    store
        .waitpoint_complete(&of_ended.id, &data("1"), at(30))
        .await
        .unwrap();
    assert_eq!(store.waitpoints_of_run(&ended.id).await.unwrap(), vec![]);
}

pub(crate) async fn token_list_filters_and_pages_newest_first(store: Arc<dyn Store>) {
    let tenancy = bootstrap(&*store).await;
    let mut ids = Vec::new();
    for i in 0..4 {
        let mut w = token(&tenancy.dev, at(i * 10));
        w.tags = vec![if i % 2 == 0 { "even" } else { "odd" }.to_owned()];
        if i == 0 {
            w.idempotency_key = Some("key-0".into());
        }
        if i == 3 {
            w.timeout_at = Some(at(35));
        }
        ids.push(insert(&*store, &w).await.id);
    }
    // Not tokens, or not this environment's: never listed.
    let mut time = Waitpoint::new(WaitpointKind::Datetime, tenancy.dev.id.clone(), at(5));
    time.completes_at = Some(at(500));
    insert(&*store, &time).await;
    insert(&*store, &token(&tenancy.prod, at(5))).await;
    store
        .waitpoint_complete(&ids[1], &data("1"), at(40))
        .await
        .unwrap();
    store
        .waitpoint_complete(&ids[3], &WaitpointOutput::timed_out(at(35)), at(40))
        .await
        .unwrap();

    let list = |query: TokenListQuery| {
        let (store, env) = (Arc::clone(&store), tenancy.dev.id.clone());
        async move {
            store
                .token_list(
                    &env,
                    &TokenListQuery {
                        limit: if query.limit == 0 { 100 } else { query.limit },
                        ..query
                    },
                )
                .await
                .unwrap()
                .into_iter()
                .map(|w| w.id)
                .collect::<Vec<_>>()
        }
    };
    let newest_first: Vec<WaitpointId> = ids.iter().rev().cloned().collect();
    assert_eq!(list(TokenListQuery::default()).await, newest_first);
    let cases = [
        (
            TokenListQuery {
                statuses: vec![TokenStatus::Waiting],
                ..Default::default()
            },
            vec![ids[2].clone(), ids[0].clone()],
        ),
        (
            TokenListQuery {
                statuses: vec![TokenStatus::Completed],
                ..Default::default()
            },
            vec![ids[1].clone()],
        ),
        (
            TokenListQuery {
                statuses: vec![TokenStatus::TimedOut, TokenStatus::Completed],
                ..Default::default()
            },
            vec![ids[3].clone(), ids[1].clone()],
        ),
        (
            TokenListQuery {
                tags: vec!["odd".into()],
                ..Default::default()
            },
            vec![ids[3].clone(), ids[1].clone()],
        ),
        (
            TokenListQuery {
                idempotency_key: Some("key-0".into()),
                ..Default::default()
            },
            vec![ids[0].clone()],
        ),
        (
            TokenListQuery {
                created_from: Some(at(10)),
                created_to: Some(at(20)),
                ..Default::default()
            },
            vec![ids[2].clone(), ids[1].clone()],
        ),
        (
            TokenListQuery {
                limit: 2,
                ..Default::default()
            },
            vec![ids[3].clone(), ids[2].clone()],
        ),
        (
            TokenListQuery {
                after: Some(ids[2].clone()),
                ..Default::default()
            },
            vec![ids[1].clone(), ids[0].clone()],
        ),
        // A page before a cursor comes oldest first, nearest the cursor first.
        (
            TokenListQuery {
                before: Some(ids[1].clone()),
                limit: 1,
                ..Default::default()
            },
            vec![ids[2].clone()],
        ),
    ];
    for (query, expected) in cases {
        let shown = format!("{query:?}");
        assert_eq!(list(query).await, expected, "{shown}");
    }
}

pub(crate) async fn snapshots_append_in_sequence(store: Arc<dyn Store>) {
    let tenancy = bootstrap(&*store).await;
    let run = queued_run(&tenancy.dev, at(0));
    create(&*store, &run, at(0)).await;
    let other = queued_run(&tenancy.dev, at(0));
    create(&*store, &other, at(0)).await;
    assert_eq!(store.snapshot_latest(&run.id).await.unwrap(), None);
    let statuses = [
        ExecutionStatus::Queued,
        ExecutionStatus::PendingExecuting,
        ExecutionStatus::Executing,
    ];
    for (i, status) in statuses.into_iter().enumerate() {
        store
            .snapshot_append(
                &[
                    snapshot(&run.id, status, at(i as i64)),
                    snapshot(&other.id, status, at(i as i64)),
                ],
                at(i as i64),
            )
            .await
            .unwrap();
    }
    let history = store.snapshot_list(&run.id).await.unwrap();
    let seqs: Vec<(i64, ExecutionStatus)> = history.iter().map(|s| (s.seq, s.status)).collect();
    assert_eq!(seqs, [(1, statuses[0]), (2, statuses[1]), (3, statuses[2])]);
    assert!(history
        .iter()
        .all(|s| s.run_id == run.id && s.attempt_number == Some(1)));
    assert_eq!(
        store.snapshot_latest(&run.id).await.unwrap().as_ref(),
        history.last()
    );
    assert_eq!(store.snapshot_list(&other.id).await.unwrap().len(), 3);
}
