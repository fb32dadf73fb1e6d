//! Run listing: filters, order, cursors in both directions, environment scope.

use crate::harness::*;
use runnel_core::list::{Cursor, Direction, RunFilter, RunListQuery, RunPage};

/// `run_list` and the ids it returned, in order.
async fn listed_runs(store: &dyn Store, query: &RunListQuery) -> Vec<RunId> {
    store
        .run_list(query)
        .await
        .expect("run_list")
        .into_iter()
        .map(|run| run.id)
        .collect()
}

fn ids(runs: &[&Run]) -> Vec<RunId> {
    runs.iter().map(|run| run.id.clone()).collect()
}

/// A run of `task` in `environment` created at `now` with trigger `options`, stored.
async fn create_listed(
    store: &dyn Store,
    task: &str,
    options: Value,
    environment: &Environment,
    now: DateTime<Utc>,
) -> Run {
    let run = run_from(task, json!({"options": options}), environment, now);
    create(store, &run, now).await;
    run
}

pub(crate) async fn run_list_filters_each_select_their_runs(store: Arc<dyn Store>) {
    let tenancy = bootstrap(&*store).await;
    let env = &tenancy.dev;
    let plain = create_listed(&*store, "a", json!({}), env, at(0)).await;
    let tagged = create_listed(&*store, "a", json!({"tags": ["x", "y"]}), env, at(1)).await;
    let other_task = create_listed(&*store, "b", json!({"tags": ["z"]}), env, at(2)).await;
    let custom_queue =
        create_listed(&*store, "a", json!({"queue": {"name": "q1"}}), env, at(3)).await;
    let large = create_listed(&*store, "a", json!({"machine": "large-1x"}), env, at(4)).await;
    let test = create_listed(&*store, "a", json!({"test": true}), env, at(5)).await;
    let locked = create_listed(
        &*store,
        "a",
        json!({"lockToVersion": "20260101.2"}),
        env,
        at(6),
    )
    .await;
    let mut done = run_from("a", json!({}), env, at(7));
    done.status = RunStatus::CompletedSuccessfully;
    done.worker_version = Some("20260101.1".to_owned());
    done.schedule_id = Some("sched_1".to_owned());
    create(&*store, &done, at(7)).await;
    let mut failed = run_from("a", json!({}), env, at(8));
    failed.status = RunStatus::CompletedWithErrors;
    failed.batch_id = Some(BatchId::from_trusted("batch_1".to_owned()));
    create(&*store, &failed, at(8)).await;

    let query = |filter: RunFilter| RunListQuery {
        filter,
        ..RunListQuery::newest(env.id.clone(), NO_LIMIT)
    };
    let cases: Vec<(&str, RunFilter, Vec<RunId>)> = vec![
        (
            "none",
            RunFilter::default(),
            ids(&[
                &failed,
                &done,
                &locked,
                &test,
                &large,
                &custom_queue,
                &other_task,
                &tagged,
                &plain,
            ]),
        ),
        (
            "status",
            RunFilter {
                statuses: vec![
                    RunStatus::CompletedSuccessfully,
                    RunStatus::CompletedWithErrors,
                ],
                ..RunFilter::default()
            },
            ids(&[&failed, &done]),
        ),
        (
            "task",
            RunFilter {
                task_identifiers: vec!["b".into()],
                ..RunFilter::default()
            },
            ids(&[&other_task]),
        ),
        (
            "tags: any of them",
            RunFilter {
                tags: vec!["y".into(), "z".into(), "nope".into()],
                ..RunFilter::default()
            },
            ids(&[&other_task, &tagged]),
        ),
        (
            "queue",
            RunFilter {
                queues: vec!["q1".into(), "task/b".into()],
                ..RunFilter::default()
            },
            ids(&[&custom_queue, &other_task]),
        ),
        (
            "machine",
            RunFilter {
                machines: vec![MachinePreset::Large1x],
                ..RunFilter::default()
            },
            ids(&[&large]),
        ),
        (
            "version: the worker's, else the locked one",
            RunFilter {
                versions: vec!["20260101.1".into(), "20260101.2".into()],
                ..RunFilter::default()
            },
            ids(&[&done, &locked]),
        ),
        (
            "isTest",
            RunFilter {
                is_test: Some(true),
                ..RunFilter::default()
            },
            ids(&[&test]),
        ),
        (
            "schedule",
            RunFilter {
                schedule_id: Some("sched_1".into()),
                ..RunFilter::default()
            },
            ids(&[&done]),
        ),
        (
            "batch",
            RunFilter {
                batch_id: Some("batch_1".into()),
                ..RunFilter::default()
            },
            ids(&[&failed]),
        ),
        (
            "filters combine",
            RunFilter {
                task_identifiers: vec!["a".into()],
                tags: vec!["x".into(), "z".into()],
                ..RunFilter::default()
            },
            ids(&[&tagged]),
        ),
    ];
    for (what, filter, want) in cases {
        assert_eq!(listed_runs(&*store, &query(filter)).await, want, "{what}");
    }
    let not_test = listed_runs(
        &*store,
        &query(RunFilter {
            is_test: Some(false),
            ..RunFilter::default()
        }),
    )
    .await;
    assert_eq!(not_test.len(), 8);
    assert!(!not_test.contains(&test.id));

    // The createdAt window is inclusive at both ends.
    let window = RunListQuery {
        created_from: Some(at(2)),
        created_to: Some(at(4)),
        ..RunListQuery::newest(env.id.clone(), NO_LIMIT)
    };
    assert_eq!(
        listed_runs(&*store, &window).await,
        ids(&[&large, &custom_queue, &other_task])
    );
    // A listed run reads back whole.
    let all = store.run_list(&query(RunFilter::default())).await.unwrap();
    assert_eq!(all.last(), Some(&plain));
}

pub(crate) async fn run_list_orders_newest_first_and_respects_the_limit(store: Arc<dyn Store>) {
    let tenancy = bootstrap(&*store).await;
    let env = &tenancy.dev;
    let older = create_listed(&*store, "a", json!({}), env, at(0)).await;
    // Two runs created in the same millisecond: ordered by id, greatest first.
    let mut twins = [
        create_listed(&*store, "a", json!({}), env, at(5)).await,
        create_listed(&*store, "a", json!({}), env, at(5)).await,
    ];
    twins.sort_by(|x, y| y.id.cmp(&x.id));
    let newest = create_listed(&*store, "a", json!({}), env, at(9)).await;

    assert_eq!(
        listed_runs(&*store, &RunListQuery::newest(env.id.clone(), NO_LIMIT)).await,
        ids(&[&newest, &twins[0], &twins[1], &older])
    );
    assert_eq!(
        listed_runs(&*store, &RunListQuery::newest(env.id.clone(), 2)).await,
        ids(&[&newest, &twins[0]])
    );
    // A cursor on the first twin continues with the second.
    let after_twin = RunListQuery {
        page: Some((Direction::Older, Cursor::of(&twins[0]))),
        ..RunListQuery::newest(env.id.clone(), NO_LIMIT)
    };
    assert_eq!(
        listed_runs(&*store, &after_twin).await,
        ids(&[&twins[1], &older])
    );
}

/// Pages through every run with `page_size`, forward from the newest, triggering a new
/// (newer) run between two fetches; returns the ids in the order seen, and the cursor
/// of the first page's first run.
async fn run_list_walk_forward(
    store: &dyn Store,
    env: &Environment,
    page_size: u32,
    mut new_run_at: i64,
) -> (Vec<RunId>, Vec<Run>) {
    let mut seen = Vec::new();
    let mut added = Vec::new();
    let mut cursor = None;
    let mut pages = 0;
    loop {
        let query = RunListQuery {
            page: cursor.clone().map(|c| (Direction::Older, c)),
            ..RunListQuery::newest(env.id.clone(), page_size + 1)
        };
        let rows = store.run_list(&query).await.expect("run_list");
        let page = RunPage::from_slice(rows, page_size, query.page.as_ref().map(|(d, _)| *d));
        assert!(page.runs.len() <= page_size as usize);
        seen.extend(page.runs.iter().map(|r| r.id.clone()));
        pages += 1;
        assert!(pages < 100, "the walk does not end");
        added.push(create_listed(store, "a", json!({}), env, at(new_run_at)).await);
        new_run_at += 1;
        match page.next {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    (seen, added)
}

pub(crate) async fn run_list_cursor_walk_neither_skips_nor_repeats_while_runs_are_added(
    store: Arc<dyn Store>,
) {
    let tenancy = bootstrap(&*store).await;
    let env = &tenancy.dev;
    let mut runs = Vec::new();
    for i in 0..7 {
        runs.push(create_listed(&*store, "a", json!({}), env, at(i)).await);
    }
    // Ties on created_at are broken by id.
    for _ in 0..3 {
        runs.push(create_listed(&*store, "a", json!({}), env, at(3)).await);
    }
    runs.sort_by(|x, y| (y.created_at, &y.id).cmp(&(x.created_at, &x.id)));
    let all = RunListQuery::newest(env.id.clone(), NO_LIMIT);
    assert_eq!(
        listed_runs(&*store, &all).await,
        ids(&runs.iter().collect::<Vec<_>>())
    );

    for (walk, page_size) in [1u32, 3, 4, 10, 11, 40].into_iter().enumerate() {
        // Every run that exists when the walk starts (runs earlier walks added included).
        let want = listed_runs(&*store, &all).await;
        let (seen, added) =
            run_list_walk_forward(&*store, env, page_size, 1000 * (walk as i64 + 1)).await;
        assert_eq!(
            seen, want,
            "page size {page_size}: every run once, newest first"
        );
        // The runs added during the walk are there for a fresh first page.
        let mut newest_first: Vec<RunId> = added.iter().rev().map(|r| r.id.clone()).collect();
        newest_first.truncate(2);
        assert_eq!(
            listed_runs(&*store, &RunListQuery::newest(env.id.clone(), 2)).await,
            newest_first
        );
    }
}

pub(crate) async fn run_list_pages_backward_from_a_cursor(store: Arc<dyn Store>) {
    let tenancy = bootstrap(&*store).await;
    let env = &tenancy.dev;
    let mut runs = Vec::new();
    for i in 0..6 {
        runs.push(create_listed(&*store, "a", json!({}), env, at(i)).await);
    }
    let newer_than = |run: &Run, limit: u32| RunListQuery {
        page: Some((Direction::Newer, Cursor::of(run))),
        ..RunListQuery::newest(env.id.clone(), limit)
    };
    // Nearest the cursor first: the store returns oldest first when paging backward.
    assert_eq!(
        listed_runs(&*store, &newer_than(&runs[2], 2)).await,
        ids(&[&runs[3], &runs[4]])
    );
    let rows = store.run_list(&newer_than(&runs[2], 3)).await.unwrap();
    let page = RunPage::from_slice(rows, 2, Some(Direction::Newer));
    assert_eq!(
        ids(&page.runs.iter().collect::<Vec<_>>()),
        ids(&[&runs[4], &runs[3]])
    );
    assert_eq!(page.previous, Some(Cursor::of(&runs[4])));
    assert_eq!(page.next, Some(Cursor::of(&runs[3])));

    // A run triggered after the cursor was handed out shows up walking backward.
    let new = create_listed(&*store, "a", json!({}), env, at(60)).await;
    assert_eq!(
        listed_runs(&*store, &newer_than(&runs[4], NO_LIMIT)).await,
        ids(&[&runs[5], &new])
    );
    // …and not walking forward from a cursor handed out before it.
    let older_than = RunListQuery {
        page: Some((Direction::Older, Cursor::of(&runs[5]))),
        ..RunListQuery::newest(env.id.clone(), NO_LIMIT)
    };
    assert_eq!(
        listed_runs(&*store, &older_than).await,
        ids(&[&runs[4], &runs[3], &runs[2], &runs[1], &runs[0]])
    );
    // Filters and windows apply backward too.
    let filtered = RunListQuery {
        filter: RunFilter {
            statuses: vec![RunStatus::Canceled],
            ..RunFilter::default()
        },
        ..newer_than(&runs[0], NO_LIMIT)
    };
    assert_eq!(listed_runs(&*store, &filtered).await, Vec::<RunId>::new());
}

pub(crate) async fn run_list_is_scoped_to_the_environment(store: Arc<dyn Store>) {
    let tenancy = bootstrap(&*store).await;
    let dev = create_listed(&*store, "a", json!({"tags": ["t"]}), &tenancy.dev, at(0)).await;
    let prod = create_listed(&*store, "a", json!({"tags": ["t"]}), &tenancy.prod, at(1)).await;
    let in_env = |env: &Environment| RunListQuery {
        filter: RunFilter {
            tags: vec!["t".into()],
            ..RunFilter::default()
        },
        ..RunListQuery::newest(env.id.clone(), NO_LIMIT)
    };
    assert_eq!(
        listed_runs(&*store, &in_env(&tenancy.dev)).await,
        ids(&[&dev])
    );
    assert_eq!(
        listed_runs(&*store, &in_env(&tenancy.prod)).await,
        ids(&[&prod])
    );
    assert_eq!(
        listed_runs(&*store, &in_env(&tenancy.staging)).await,
        Vec::<RunId>::new()
    );
    // A cursor from another environment's run positions, never leaks, the list.
    let crossing = RunListQuery {
        page: Some((Direction::Newer, Cursor::of(&dev))),
        ..in_env(&tenancy.dev)
    };
    assert_eq!(listed_runs(&*store, &crossing).await, Vec::<RunId>::new());
}
