//! Cron schedules: imperative schedules by deduplication key, the compare-and-swap that
//! claims an occurrence and the settle that clears it, what is due, and the declarative
//! schedules each registration keeps in sync in its own transaction.

use runnel_core::schedule::ScheduleKind;
use runnel_core::ScheduleId;
use runnel_store::{
    DeclaredSync, DeclaredWrite, ScheduleClaim, ScheduleRecord, ScheduleRef, ScheduleWrite,
};

use crate::harness::*;

/// An imperative schedule of `task` in `environment` under `key`, every minute in UTC,
/// whose next occurrence is `next` (nominal, effective).
fn imperative(
    environment: &Environment,
    key: &str,
    task: &str,
    next: Option<(DateTime<Utc>, DateTime<Utc>)>,
    now: DateTime<Utc>,
) -> ScheduleWrite {
    ScheduleWrite {
        id: ScheduleId::generate(now.timestamp_millis()),
        environment_id: environment.id.clone(),
        task_identifier: task.to_owned(),
        deduplication_key: key.to_owned(),
        external_id: None,
        cron: "* * * * *".to_owned(),
        timezone: "UTC".to_owned(),
        window: None,
        next,
    }
}

/// Creates an imperative schedule (see [`imperative`]) firing at `next` without a window.
async fn create_schedule(
    store: &dyn Store,
    environment: &Environment,
    key: &str,
    next: DateTime<Utc>,
    now: DateTime<Utc>,
) -> ScheduleRecord {
    store
        .schedule_upsert(
            &imperative(environment, key, "my-task", Some((next, next)), now),
            now,
        )
        .await
        .expect("schedule_upsert")
}

async fn get(store: &dyn Store, environment: &Environment, id: &ScheduleId) -> ScheduleRecord {
    store
        .schedule_get(&environment.id, &ScheduleRef::Id(id.clone()))
        .await
        .expect("schedule_get")
        .unwrap_or_else(|| panic!("schedule {id} is stored"))
}

/// A declarative schedule of a task: `cron` in UTC, next occurrence `next`.
fn declared(cron: &str, next: DateTime<Utc>, now: DateTime<Utc>) -> DeclaredWrite {
    DeclaredWrite {
        id: ScheduleId::generate(now.timestamp_millis()),
        cron: cron.to_owned(),
        timezone: "UTC".to_owned(),
        window: None,
        next: Some((next, next)),
    }
}

/// A scheduled task as a version serves it.
fn scheduled_task(id: &str) -> TaskConfig {
    TaskConfig {
        scheduled: true,
        ..task(id)
    }
}

/// Registers a version of `environment` serving `tasks` and syncing `schedules`.
async fn register_declaring(
    store: &dyn Store,
    environment: &Environment,
    tasks: Vec<TaskConfig>,
    schedules: DeclaredSync,
    now: DateTime<Utc>,
) {
    let registration = WorkerRegistration {
        id: WorkerId::generate(now.timestamp_millis()),
        environment_id: environment.id.clone(),
        name: "test-worker".to_owned(),
        version: None,
        tasks,
        schedules,
    };
    store
        .worker_register(&registration, now)
        .await
        .expect("worker_register");
}

/// The environment's declarative schedule of `task`, if any.
async fn declared_of(
    store: &dyn Store,
    environment: &Environment,
    task: &str,
) -> Option<ScheduleRecord> {
    let (all, _) = store
        .schedule_list(&environment.id, 0, 100)
        .await
        .expect("schedule_list");
    let mut found = all
        .into_iter()
        .filter(|s| s.kind == ScheduleKind::Declarative && s.task_identifier == task);
    let first = found.next();
    assert!(
        found.next().is_none(),
        "at most one declarative schedule per task"
    );
    first
}

pub(crate) async fn schedule_upsert_creates_then_updates_by_key_keeping_id_and_active(
    store: Arc<dyn Store>,
) {
    let tenancy = bootstrap(&*store).await;
    let write = ScheduleWrite {
        external_id: Some("user-1".to_owned()),
        window: Some("30m".to_owned()),
        timezone: "Europe/London".to_owned(),
        ..imperative(
            &tenancy.dev,
            "nightly",
            "my-task",
            Some((at(HOUR), at(HOUR + 90))),
            at(0),
        )
    };
    let created = store.schedule_upsert(&write, at(0)).await.unwrap();
    assert_eq!(
        created,
        ScheduleRecord {
            id: write.id.clone(),
            environment_id: tenancy.dev.id.clone(),
            task_identifier: "my-task".to_owned(),
            kind: ScheduleKind::Imperative,
            active: true,
            deduplication_key: Some("nightly".to_owned()),
            external_id: Some("user-1".to_owned()),
            cron: "* * * * *".to_owned(),
            timezone: "Europe/London".to_owned(),
            window: Some("30m".to_owned()),
            next_run_at: Some(at(HOUR)),
            next_fire_at: Some(at(HOUR + 90)),
            last_run_at: None,
            pending_run_at: None,
            pending_last_at: None,
            created_at: at(0),
            updated_at: at(0),
        }
    );
    assert_eq!(get(&*store, &tenancy.dev, &created.id).await, created);

    // Deactivated, then upserted again under the same key with new settings and a new
    // id: the row keeps its id and stays inactive; the settings change.
    store
        .schedule_set_active(&tenancy.dev.id, &created.id, false, None, at(1))
        .await
        .unwrap()
        .unwrap();
    let again = ScheduleWrite {
        cron: "0 * * * *".to_owned(),
        task_identifier: "other-task".to_owned(),
        external_id: None,
        window: None,
        timezone: "UTC".to_owned(),
        ..imperative(
            &tenancy.dev,
            "nightly",
            "other-task",
            Some((at(2 * HOUR), at(2 * HOUR))),
            at(MINUTE),
        )
    };
    assert_ne!(again.id, created.id);
    let updated = store.schedule_upsert(&again, at(MINUTE)).await.unwrap();
    assert_eq!(
        updated,
        ScheduleRecord {
            active: false,
            task_identifier: "other-task".to_owned(),
            external_id: None,
            cron: "0 * * * *".to_owned(),
            timezone: "UTC".to_owned(),
            window: None,
            next_run_at: Some(at(2 * HOUR)),
            next_fire_at: Some(at(2 * HOUR)),
            updated_at: at(MINUTE),
            ..created.clone()
        }
    );
    let (all, count) = store.schedule_list(&tenancy.dev.id, 0, 10).await.unwrap();
    assert_eq!((all, count), (vec![updated], 1));

    // The same key in another environment is another schedule.
    let prod = store
        .schedule_upsert(
            &imperative(&tenancy.prod, "nightly", "my-task", None, at(2 * MINUTE)),
            at(2 * MINUTE),
        )
        .await
        .unwrap();
    assert_ne!(prod.id, created.id);
    assert_eq!(prod.environment_id, tenancy.prod.id);
    assert_eq!(
        store.schedule_list(&tenancy.dev.id, 0, 10).await.unwrap().1,
        1
    );
}

pub(crate) async fn schedule_get_by_id_or_key_only_in_its_environment(store: Arc<dyn Store>) {
    let tenancy = bootstrap(&*store).await;
    let record = create_schedule(&*store, &tenancy.dev, "k1", at(MINUTE), at(0)).await;
    let by_id = ScheduleRef::Id(record.id.clone());
    let by_key = ScheduleRef::Key("k1".to_owned());
    for reference in [&by_id, &by_key] {
        assert_eq!(
            store
                .schedule_get(&tenancy.dev.id, reference)
                .await
                .unwrap(),
            Some(record.clone()),
            "{reference:?}"
        );
        assert_eq!(
            store
                .schedule_get(&tenancy.prod.id, reference)
                .await
                .unwrap(),
            None,
            "{reference:?} from another environment"
        );
    }
    assert_eq!(
        store
            .schedule_get(&tenancy.dev.id, &ScheduleRef::Key("k2".to_owned()))
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        store
            .schedule_get(
                &tenancy.dev.id,
                &ScheduleRef::Id(ScheduleId::generate(at(0).timestamp_millis()))
            )
            .await
            .unwrap(),
        None
    );
    // `ScheduleRef::parse` tells an id from a key.
    assert_eq!(ScheduleRef::parse(record.id.as_str()), by_id);
    assert_eq!(ScheduleRef::parse("k1"), by_key);
}

pub(crate) async fn schedule_list_pages_oldest_first_with_the_count(store: Arc<dyn Store>) {
    let tenancy = bootstrap(&*store).await;
    let mut created = Vec::new();
    // Created out of key order, so the order is by creation, not by key.
    for (i, key) in ["c", "a", "e", "b", "d"].iter().enumerate() {
        let now = at(i as i64);
        created.push(create_schedule(&*store, &tenancy.dev, key, at(HOUR), now).await);
    }
    create_schedule(&*store, &tenancy.prod, "elsewhere", at(HOUR), at(0)).await;
    let ids = |records: &[ScheduleRecord]| records.iter().map(|r| r.id.clone()).collect::<Vec<_>>();

    let (all, count) = store.schedule_list(&tenancy.dev.id, 0, 100).await.unwrap();
    assert_eq!(all, created);
    assert_eq!(count, 5);
    let (page, count) = store.schedule_list(&tenancy.dev.id, 0, 2).await.unwrap();
    assert_eq!((ids(&page), count), (ids(&created[0..2]), 5));
    let (page, count) = store.schedule_list(&tenancy.dev.id, 2, 2).await.unwrap();
    assert_eq!((ids(&page), count), (ids(&created[2..4]), 5));
    let (page, count) = store.schedule_list(&tenancy.dev.id, 4, 2).await.unwrap();
    assert_eq!((ids(&page), count), (ids(&created[4..5]), 5));
    let (page, count) = store.schedule_list(&tenancy.dev.id, 10, 2).await.unwrap();
    assert_eq!((page, count), (vec![], 5));
    let (page, count) = store
        .schedule_list(&tenancy.staging.id, 0, 2)
        .await
        .unwrap();
    assert_eq!((page, count), (vec![], 0));
}

pub(crate) async fn schedule_update_changes_imperative_schedules_only(store: Arc<dyn Store>) {
    let tenancy = bootstrap(&*store).await;
    let record = create_schedule(&*store, &tenancy.dev, "k1", at(MINUTE), at(0)).await;
    let change = ScheduleWrite {
        cron: "*/5 * * * *".to_owned(),
        timezone: "Asia/Tokyo".to_owned(),
        window: Some("10%".to_owned()),
        external_id: Some("ext".to_owned()),
        // The key and id of an update are ignored: the row keeps its own.
        ..imperative(
            &tenancy.dev,
            "ignored",
            "task-2",
            Some((at(5 * MINUTE), at(5 * MINUTE + 7))),
            at(30),
        )
    };
    let updated = store
        .schedule_update(&tenancy.dev.id, &record.id, &change, at(30))
        .await
        .unwrap();
    let expected = ScheduleRecord {
        task_identifier: "task-2".to_owned(),
        cron: "*/5 * * * *".to_owned(),
        timezone: "Asia/Tokyo".to_owned(),
        window: Some("10%".to_owned()),
        external_id: Some("ext".to_owned()),
        next_run_at: Some(at(5 * MINUTE)),
        next_fire_at: Some(at(5 * MINUTE + 7)),
        updated_at: at(30),
        ..record.clone()
    };
    assert_eq!(updated, Some(expected.clone()));
    assert_eq!(get(&*store, &tenancy.dev, &record.id).await, expected);

    // Not from another environment, not an unknown id.
    assert_eq!(
        store
            .schedule_update(&tenancy.prod.id, &record.id, &change, at(31))
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        store
            .schedule_update(&tenancy.dev.id, &change.id, &change, at(31))
            .await
            .unwrap(),
        None
    );

    // A declarative schedule is its task's: update refuses it and leaves it as it was.
    register_declaring(
        &*store,
        &tenancy.dev,
        vec![scheduled_task("nightly")],
        DeclaredSync {
            tasks: vec![(
                "nightly".to_owned(),
                Some(declared("0 0 * * *", at(HOUR), at(0))),
            )],
            prune_unlisted: false,
        },
        at(0),
    )
    .await;
    let declarative = declared_of(&*store, &tenancy.dev, "nightly")
        .await
        .expect("the registration created the declarative schedule");
    assert_eq!(
        store
            .schedule_update(&tenancy.dev.id, &declarative.id, &change, at(40))
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        get(&*store, &tenancy.dev, &declarative.id).await,
        declarative
    );
}

pub(crate) async fn schedule_delete_removes_the_schedule_once(store: Arc<dyn Store>) {
    let tenancy = bootstrap(&*store).await;
    let kept = create_schedule(&*store, &tenancy.dev, "kept", at(MINUTE), at(0)).await;
    let gone = create_schedule(&*store, &tenancy.dev, "gone", at(MINUTE), at(1)).await;
    assert!(!store
        .schedule_delete(&tenancy.prod.id, &gone.id)
        .await
        .unwrap());
    assert!(store
        .schedule_delete(&tenancy.dev.id, &gone.id)
        .await
        .unwrap());
    assert!(!store
        .schedule_delete(&tenancy.dev.id, &gone.id)
        .await
        .unwrap());
    assert_eq!(
        store
            .schedule_get(&tenancy.dev.id, &ScheduleRef::Key("gone".to_owned()))
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        store.schedule_list(&tenancy.dev.id, 0, 10).await.unwrap(),
        (vec![kept], 1)
    );
    // The key is free again.
    let back = create_schedule(&*store, &tenancy.dev, "gone", at(MINUTE), at(2)).await;
    assert_ne!(back.id, gone.id);
}

pub(crate) async fn schedule_set_active_moves_next_only_when_activating(store: Arc<dyn Store>) {
    let tenancy = bootstrap(&*store).await;
    let record = create_schedule(&*store, &tenancy.dev, "k", at(MINUTE), at(0)).await;

    // Deactivating keeps the stored next occurrence whatever `next` says.
    let off = store
        .schedule_set_active(
            &tenancy.dev.id,
            &record.id,
            false,
            Some((at(HOUR), at(HOUR))),
            at(10),
        )
        .await
        .unwrap();
    let expected_off = ScheduleRecord {
        active: false,
        updated_at: at(10),
        ..record.clone()
    };
    assert_eq!(off, Some(expected_off.clone()));
    assert_eq!(get(&*store, &tenancy.dev, &record.id).await, expected_off);

    // Activating sets the next occurrence from now.
    let on = store
        .schedule_set_active(
            &tenancy.dev.id,
            &record.id,
            true,
            Some((at(3 * MINUTE), at(3 * MINUTE + 5))),
            at(2 * MINUTE + 30),
        )
        .await
        .unwrap();
    assert_eq!(
        on,
        Some(ScheduleRecord {
            active: true,
            next_run_at: Some(at(3 * MINUTE)),
            next_fire_at: Some(at(3 * MINUTE + 5)),
            updated_at: at(2 * MINUTE + 30),
            ..record.clone()
        })
    );
    assert_eq!(
        store
            .schedule_set_active(&tenancy.prod.id, &record.id, false, None, at(200))
            .await
            .unwrap(),
        None,
        "not from another environment"
    );
    assert!(get(&*store, &tenancy.dev, &record.id).await.active);
}

pub(crate) async fn schedule_next_due_and_due_see_active_and_pending_schedules(
    store: Arc<dyn Store>,
) {
    let tenancy = bootstrap(&*store).await;
    assert_eq!(store.schedule_next_due().await.unwrap(), None);
    assert_eq!(store.schedule_due(at(HOUR), 10).await.unwrap(), vec![]);

    // An inactive schedule is never due.
    let inactive = create_schedule(&*store, &tenancy.dev, "inactive", at(10), at(0)).await;
    store
        .schedule_set_active(&tenancy.dev.id, &inactive.id, false, None, at(0))
        .await
        .unwrap();
    assert_eq!(store.schedule_next_due().await.unwrap(), None);

    // A windowed one is due at its effective time, not its nominal one.
    let windowed = store
        .schedule_upsert(
            &imperative(
                &tenancy.dev,
                "windowed",
                "my-task",
                Some((at(100), at(130))),
                at(0),
            ),
            at(0),
        )
        .await
        .unwrap();
    assert_eq!(store.schedule_next_due().await.unwrap(), Some(at(130)));
    assert_eq!(store.schedule_due(at(129), 10).await.unwrap(), vec![]);
    let early = create_schedule(&*store, &tenancy.prod, "early", at(60), at(0)).await;
    let later = create_schedule(&*store, &tenancy.dev, "later", at(1000), at(0)).await;
    assert_eq!(store.schedule_next_due().await.unwrap(), Some(at(60)));

    // A pending occurrence counts as due at once, even before every next occurrence, and
    // comes first.
    let pending = create_schedule(&*store, &tenancy.dev, "pending", at(20), at(0)).await;
    assert!(store
        .schedule_claim(
            &ScheduleClaim {
                id: pending.id.clone(),
                expected_next: at(20),
                fire: at(20),
                next: Some((at(5000), at(5000))),
            },
            at(21),
        )
        .await
        .unwrap());
    assert_eq!(store.schedule_next_due().await.unwrap(), Some(at(20)));
    let ids = |records: Vec<ScheduleRecord>| records.into_iter().map(|r| r.id).collect::<Vec<_>>();
    assert_eq!(
        ids(store.schedule_due(at(130), 10).await.unwrap()),
        vec![pending.id.clone(), early.id.clone(), windowed.id.clone()]
    );
    assert_eq!(
        ids(store.schedule_due(at(130), 2).await.unwrap()),
        vec![pending.id.clone(), early.id.clone()]
    );
    assert_eq!(
        ids(store.schedule_due(at(130), 1).await.unwrap()),
        vec![pending.id.clone()]
    );
    assert_eq!(
        ids(store.schedule_due(at(1000), 10).await.unwrap()),
        vec![
            pending.id.clone(),
            early.id.clone(),
            windowed.id.clone(),
            later.id.clone()
        ]
    );
    // Pending first even before its next occurrence is due, and listed once.
    assert_eq!(
        ids(store.schedule_due(at(30), 10).await.unwrap()),
        vec![pending.id.clone()]
    );

    store.schedule_settle(&pending.id, at(20)).await.unwrap();
    assert_eq!(store.schedule_next_due().await.unwrap(), Some(at(60)));
    assert_eq!(
        ids(store.schedule_due(at(10_000), 10).await.unwrap()),
        vec![
            early.id.clone(),
            windowed.id.clone(),
            later.id.clone(),
            pending.id.clone()
        ]
    );
}

pub(crate) async fn schedule_claim_is_a_compare_and_swap(store: Arc<dyn Store>) {
    let tenancy = bootstrap(&*store).await;
    let record = create_schedule(&*store, &tenancy.dev, "k", at(MINUTE), at(0)).await;
    let first = ScheduleClaim {
        id: record.id.clone(),
        expected_next: at(MINUTE),
        fire: at(MINUTE),
        next: Some((at(2 * MINUTE), at(2 * MINUTE + 3))),
    };
    assert!(store.schedule_claim(&first, at(MINUTE + 1)).await.unwrap());
    let claimed = ScheduleRecord {
        last_run_at: Some(at(MINUTE)),
        pending_run_at: Some(at(MINUTE)),
        pending_last_at: None,
        next_run_at: Some(at(2 * MINUTE)),
        next_fire_at: Some(at(2 * MINUTE + 3)),
        updated_at: at(MINUTE + 1),
        ..record.clone()
    };
    assert_eq!(get(&*store, &tenancy.dev, &record.id).await, claimed);

    // The same claim again (a second node that read the same row) loses.
    assert!(!store.schedule_claim(&first, at(MINUTE + 2)).await.unwrap());
    // So does the next occurrence while this one is pending.
    let second = ScheduleClaim {
        id: record.id.clone(),
        expected_next: at(2 * MINUTE),
        fire: at(2 * MINUTE),
        next: Some((at(3 * MINUTE), at(3 * MINUTE))),
    };
    assert!(!store.schedule_claim(&second, at(2 * MINUTE)).await.unwrap());
    assert_eq!(get(&*store, &tenancy.dev, &record.id).await, claimed);

    // Settled, a node that read the row before the first claim still loses: the swap
    // is on the next occurrence it read, not only on the pending one.
    store.schedule_settle(&record.id, at(MINUTE)).await.unwrap();
    assert!(!store.schedule_claim(&first, at(MINUTE + 3)).await.unwrap());
    assert_eq!(
        get(&*store, &tenancy.dev, &record.id).await,
        ScheduleRecord {
            pending_run_at: None,
            ..claimed.clone()
        }
    );
    // The next occurrence claims; its pending `lastTimestamp` is the previous one.
    assert!(store.schedule_claim(&second, at(2 * MINUTE)).await.unwrap());
    let claimed_again = get(&*store, &tenancy.dev, &record.id).await;
    assert_eq!(
        claimed_again,
        ScheduleRecord {
            last_run_at: Some(at(2 * MINUTE)),
            pending_run_at: Some(at(2 * MINUTE)),
            pending_last_at: Some(at(MINUTE)),
            next_run_at: Some(at(3 * MINUTE)),
            next_fire_at: Some(at(3 * MINUTE)),
            updated_at: at(2 * MINUTE),
            ..record.clone()
        }
    );
    store
        .schedule_settle(&record.id, at(2 * MINUTE))
        .await
        .unwrap();

    // A claim whose expression has no later date leaves no next occurrence.
    let last = ScheduleClaim {
        id: record.id.clone(),
        expected_next: at(3 * MINUTE),
        fire: at(3 * MINUTE),
        next: None,
    };
    assert!(store.schedule_claim(&last, at(3 * MINUTE)).await.unwrap());
    let ended = get(&*store, &tenancy.dev, &record.id).await;
    assert_eq!((ended.next_run_at, ended.next_fire_at), (None, None));
    store
        .schedule_settle(&record.id, at(3 * MINUTE))
        .await
        .unwrap();

    // An inactive schedule does not claim, nor a deleted one.
    let other = create_schedule(&*store, &tenancy.dev, "other", at(MINUTE), at(0)).await;
    let claim = ScheduleClaim {
        id: other.id.clone(),
        expected_next: at(MINUTE),
        fire: at(MINUTE),
        next: Some((at(2 * MINUTE), at(2 * MINUTE))),
    };
    store
        .schedule_set_active(&tenancy.dev.id, &other.id, false, None, at(1))
        .await
        .unwrap();
    assert!(!store.schedule_claim(&claim, at(MINUTE)).await.unwrap());
    store
        .schedule_set_active(
            &tenancy.dev.id,
            &other.id,
            true,
            Some((at(MINUTE), at(MINUTE))),
            at(2),
        )
        .await
        .unwrap();
    store
        .schedule_delete(&tenancy.dev.id, &other.id)
        .await
        .unwrap();
    assert!(!store.schedule_claim(&claim, at(MINUTE)).await.unwrap());
}

/// Nodes claiming the same occurrence at once: exactly one wins.
pub(crate) async fn schedule_claim_concurrent_claims_of_one_occurrence_win_once(
    store: Arc<dyn Store>,
) {
    const NODES: usize = 8;
    const OCCURRENCES: i64 = 5;
    let tenancy = bootstrap(&*store).await;
    let record = create_schedule(&*store, &tenancy.dev, "k", at(MINUTE), at(0)).await;
    for n in 1..=OCCURRENCES {
        let claim = ScheduleClaim {
            id: record.id.clone(),
            expected_next: at(n * MINUTE),
            fire: at(n * MINUTE),
            next: Some(((at((n + 1) * MINUTE)), at((n + 1) * MINUTE))),
        };
        let start = Arc::new(Barrier::new(NODES));
        let mut nodes = JoinSet::new();
        for _ in 0..NODES {
            let store = Arc::clone(&store);
            let start = Arc::clone(&start);
            let claim = claim.clone();
            nodes.spawn(async move {
                start.wait().await;
                store.schedule_claim(&claim, at(n * MINUTE)).await.unwrap()
            });
        }
        let won = nodes.join_all().await.into_iter().filter(|w| *w).count();
        assert_eq!(won, 1, "occurrence {n}");
        store
            .schedule_settle(&record.id, at(n * MINUTE))
            .await
            .unwrap();
    }
    let done = get(&*store, &tenancy.dev, &record.id).await;
    assert_eq!(done.last_run_at, Some(at(OCCURRENCES * MINUTE)));
    assert_eq!(done.next_run_at, Some(at((OCCURRENCES + 1) * MINUTE)));
}

pub(crate) async fn schedule_settle_clears_only_the_matching_pending(store: Arc<dyn Store>) {
    let tenancy = bootstrap(&*store).await;
    let record = create_schedule(&*store, &tenancy.dev, "k", at(MINUTE), at(0)).await;
    // Two occurrences claimed, so the pending one has a `lastTimestamp`.
    for n in 1..=2 {
        assert!(store
            .schedule_claim(
                &ScheduleClaim {
                    id: record.id.clone(),
                    expected_next: at(n * MINUTE),
                    fire: at(n * MINUTE),
                    next: Some((at((n + 1) * MINUTE), at((n + 1) * MINUTE))),
                },
                at(n * MINUTE),
            )
            .await
            .unwrap());
        if n == 1 {
            store.schedule_settle(&record.id, at(MINUTE)).await.unwrap();
        }
    }
    let pending = get(&*store, &tenancy.dev, &record.id).await;
    assert_eq!(pending.pending_run_at, Some(at(2 * MINUTE)));
    assert_eq!(pending.pending_last_at, Some(at(MINUTE)));

    // Settling another occurrence (a late node's, already settled) changes nothing.
    store.schedule_settle(&record.id, at(MINUTE)).await.unwrap();
    store
        .schedule_settle(&record.id, at(3 * MINUTE))
        .await
        .unwrap();
    assert_eq!(get(&*store, &tenancy.dev, &record.id).await, pending);

    store
        .schedule_settle(&record.id, at(2 * MINUTE))
        .await
        .unwrap();
    assert_eq!(
        get(&*store, &tenancy.dev, &record.id).await,
        ScheduleRecord {
            pending_run_at: None,
            pending_last_at: None,
            ..pending.clone()
        }
    );
    // Settling twice is harmless.
    store
        .schedule_settle(&record.id, at(2 * MINUTE))
        .await
        .unwrap();
    assert_eq!(
        get(&*store, &tenancy.dev, &record.id).await.last_run_at,
        Some(at(2 * MINUTE))
    );
}

pub(crate) async fn worker_register_syncs_the_declarative_schedules_it_lists(
    store: Arc<dyn Store>,
) {
    let tenancy = bootstrap(&*store).await;
    let sync = |declared: Option<DeclaredWrite>| DeclaredSync {
        tasks: vec![("nightly".to_owned(), declared)],
        prune_unlisted: false,
    };
    let first = declared("0 0 * * *", at(HOUR), at(0));
    register_declaring(
        &*store,
        &tenancy.dev,
        vec![scheduled_task("nightly")],
        sync(Some(first.clone())),
        at(0),
    )
    .await;
    let created = declared_of(&*store, &tenancy.dev, "nightly")
        .await
        .expect("the registration creates the declarative schedule");
    assert_eq!(
        created,
        ScheduleRecord {
            id: first.id.clone(),
            environment_id: tenancy.dev.id.clone(),
            task_identifier: "nightly".to_owned(),
            kind: ScheduleKind::Declarative,
            active: true,
            deduplication_key: None,
            external_id: None,
            cron: "0 0 * * *".to_owned(),
            timezone: "UTC".to_owned(),
            window: None,
            next_run_at: Some(at(HOUR)),
            next_fire_at: Some(at(HOUR)),
            last_run_at: None,
            pending_run_at: None,
            pending_last_at: None,
            created_at: at(0),
            updated_at: at(0),
        }
    );
    assert_eq!(declared_of(&*store, &tenancy.prod, "nightly").await, None);

    // An occurrence fires: the stored next occurrence moves on.
    assert!(store
        .schedule_claim(
            &ScheduleClaim {
                id: created.id.clone(),
                expected_next: at(HOUR),
                fire: at(HOUR),
                next: Some((at(25 * HOUR), at(25 * HOUR))),
            },
            at(HOUR),
        )
        .await
        .unwrap());
    store.schedule_settle(&created.id, at(HOUR)).await.unwrap();
    let fired = get(&*store, &tenancy.dev, &created.id).await;

    // The same settings again (a restart of the worker, after missed occurrences): the
    // stored next occurrence stays, whatever this registration computed.
    register_declaring(
        &*store,
        &tenancy.dev,
        vec![scheduled_task("nightly")],
        sync(Some(declared("0 0 * * *", at(49 * HOUR), at(48 * HOUR)))),
        at(48 * HOUR),
    )
    .await;
    assert_eq!(
        declared_of(&*store, &tenancy.dev, "nightly").await,
        Some(fired.clone())
    );

    // A changed cron replaces the next occurrence, and keeps the schedule's id.
    register_declaring(
        &*store,
        &tenancy.dev,
        vec![scheduled_task("nightly")],
        sync(Some(declared("0 12 * * *", at(60 * HOUR), at(50 * HOUR)))),
        at(50 * HOUR),
    )
    .await;
    assert_eq!(
        declared_of(&*store, &tenancy.dev, "nightly").await,
        Some(ScheduleRecord {
            cron: "0 12 * * *".to_owned(),
            next_run_at: Some(at(60 * HOUR)),
            next_fire_at: Some(at(60 * HOUR)),
            updated_at: at(50 * HOUR),
            ..fired.clone()
        })
    );
    // So does a changed timezone or window.
    let moved = DeclaredWrite {
        timezone: "Europe/Paris".to_owned(),
        window: Some("1h".to_owned()),
        next: Some((at(70 * HOUR), at(70 * HOUR + 600))),
        ..declared("0 12 * * *", at(0), at(51 * HOUR))
    };
    register_declaring(
        &*store,
        &tenancy.dev,
        vec![scheduled_task("nightly")],
        sync(Some(moved)),
        at(51 * HOUR),
    )
    .await;
    let now_stored = declared_of(&*store, &tenancy.dev, "nightly").await.unwrap();
    assert_eq!(
        (
            now_stored.id.clone(),
            now_stored.timezone.as_str(),
            now_stored.window.as_deref(),
            now_stored.next_run_at,
            now_stored.next_fire_at
        ),
        (
            created.id.clone(),
            "Europe/Paris",
            Some("1h"),
            Some(at(70 * HOUR)),
            Some(at(70 * HOUR + 600))
        )
    );

    // Listed without a schedule: the declarative schedule goes.
    register_declaring(
        &*store,
        &tenancy.dev,
        vec![scheduled_task("nightly")],
        sync(None),
        at(52 * HOUR),
    )
    .await;
    assert_eq!(declared_of(&*store, &tenancy.dev, "nightly").await, None);
    assert_eq!(store.schedule_next_due().await.unwrap(), None);
}

pub(crate) async fn worker_register_prunes_unlisted_declarative_schedules_only(
    store: Arc<dyn Store>,
) {
    let tenancy = bootstrap(&*store).await;
    // Schedule ids are unique across environments: each registration makes its own.
    let both = || DeclaredSync {
        tasks: vec![
            ("a".to_owned(), Some(declared("0 * * * *", at(HOUR), at(0)))),
            ("b".to_owned(), Some(declared("0 * * * *", at(HOUR), at(0)))),
        ],
        prune_unlisted: false,
    };
    for environment in [&tenancy.dev, &tenancy.prod] {
        register_declaring(
            &*store,
            environment,
            vec![scheduled_task("a"), scheduled_task("b")],
            both(),
            at(0),
        )
        .await;
    }
    // An imperative schedule on `b` (a task the next registration does not list).
    let imperative_b = store
        .schedule_upsert(
            &imperative(&tenancy.dev, "mine", "b", Some((at(HOUR), at(HOUR))), at(1)),
            at(1),
        )
        .await
        .unwrap();

    // A registration of `a` alone that is not the whole project keeps `b`'s.
    register_declaring(
        &*store,
        &tenancy.dev,
        vec![scheduled_task("a")],
        DeclaredSync {
            tasks: vec![("a".to_owned(), Some(declared("0 * * * *", at(HOUR), at(2))))],
            prune_unlisted: false,
        },
        at(2),
    )
    .await;
    assert!(declared_of(&*store, &tenancy.dev, "b").await.is_some());

    // The whole project, `a` alone: `b`'s declarative schedule goes, the imperative one
    // and the other environment's stay.
    let a_before = declared_of(&*store, &tenancy.dev, "a").await.unwrap();
    register_declaring(
        &*store,
        &tenancy.dev,
        vec![scheduled_task("a")],
        DeclaredSync {
            tasks: vec![("a".to_owned(), Some(declared("0 * * * *", at(HOUR), at(3))))],
            prune_unlisted: true,
        },
        at(3),
    )
    .await;
    assert_eq!(declared_of(&*store, &tenancy.dev, "b").await, None);
    assert_eq!(
        declared_of(&*store, &tenancy.dev, "a").await,
        Some(a_before)
    );
    assert_eq!(
        get(&*store, &tenancy.dev, &imperative_b.id).await,
        imperative_b
    );
    assert!(declared_of(&*store, &tenancy.prod, "b").await.is_some());
    assert!(declared_of(&*store, &tenancy.prod, "a").await.is_some());

    // The whole project with no schedule at all: every declarative one goes.
    register_declaring(
        &*store,
        &tenancy.dev,
        vec![task("c")],
        DeclaredSync {
            tasks: vec![],
            prune_unlisted: true,
        },
        at(4),
    )
    .await;
    let (left, count) = store.schedule_list(&tenancy.dev.id, 0, 10).await.unwrap();
    assert_eq!((left, count), (vec![imperative_b], 1));
    assert_eq!(
        store
            .schedule_list(&tenancy.prod.id, 0, 10)
            .await
            .unwrap()
            .1,
        2
    );
}

pub(crate) async fn task_scheduled_follows_the_latest_version(store: Arc<dyn Store>) {
    let tenancy = bootstrap(&*store).await;
    let scheduled = |store: Arc<dyn Store>, environment: Environment, task: &'static str| async move {
        store.task_scheduled(&environment.id, task).await.unwrap()
    };
    assert_eq!(
        scheduled(Arc::clone(&store), tenancy.dev.clone(), "a").await,
        None
    );
    register(
        &*store,
        &tenancy.dev,
        Some("v1"),
        vec![scheduled_task("a"), task("b")],
        at(0),
    )
    .await;
    assert_eq!(
        scheduled(Arc::clone(&store), tenancy.dev.clone(), "a").await,
        Some(true)
    );
    assert_eq!(
        scheduled(Arc::clone(&store), tenancy.dev.clone(), "b").await,
        Some(false)
    );
    assert_eq!(
        scheduled(Arc::clone(&store), tenancy.dev.clone(), "unknown").await,
        None
    );
    assert_eq!(
        scheduled(Arc::clone(&store), tenancy.prod.clone(), "a").await,
        None,
        "another environment's task"
    );

    // A later version that no longer schedules `a`, and schedules `b`.
    register(
        &*store,
        &tenancy.dev,
        Some("v2"),
        vec![task("a"), scheduled_task("b")],
        at(MINUTE),
    )
    .await;
    assert_eq!(
        scheduled(Arc::clone(&store), tenancy.dev.clone(), "a").await,
        Some(false)
    );
    assert_eq!(
        scheduled(Arc::clone(&store), tenancy.dev.clone(), "b").await,
        Some(true)
    );

    // A version that does not list `a` at all: `a`'s latest listing (v2) still answers.
    register(
        &*store,
        &tenancy.dev,
        Some("v3"),
        vec![task("b")],
        at(2 * MINUTE),
    )
    .await;
    assert_eq!(
        scheduled(Arc::clone(&store), tenancy.dev.clone(), "a").await,
        Some(false)
    );
    assert_eq!(
        scheduled(Arc::clone(&store), tenancy.dev.clone(), "b").await,
        Some(false)
    );
}
