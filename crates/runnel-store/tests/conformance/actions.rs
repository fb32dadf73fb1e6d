//! Run actions: live descendants, reschedule, compare-and-swap of tags and metadata,
//! idempotency key reset.

use crate::harness::*;

/// A queued run of `environment` one level below `parent`.
fn child_of(parent: &Run, environment: &Environment, now: DateTime<Utc>) -> Run {
    Run {
        parent_run_id: Some(parent.id.clone()),
        root_run_id: Some(
            parent
                .root_run_id
                .clone()
                .unwrap_or_else(|| parent.id.clone()),
        ),
        depth: parent.depth + 1,
        ..queued_run(environment, now)
    }
}

pub(crate) async fn run_descendants_live_walks_the_live_subtree_of_the_environment(
    store: Arc<dyn Store>,
) {
    let tenancy = bootstrap(&*store).await;
    let dev = &tenancy.dev;
    let parent = queued_run(dev, at(0));
    let live_child = child_of(&parent, dev, at(1));
    let final_child = child_of(&parent, dev, at(2));
    let grandchild = child_of(&live_child, dev, at(3));
    let under_final = child_of(&final_child, dev, at(4));
    let unrelated = queued_run(dev, at(5));
    for run in [
        &parent,
        &live_child,
        &final_child,
        &grandchild,
        &under_final,
        &unrelated,
    ] {
        create(&*store, run, at(0)).await;
    }
    let canceled = store
        .run_cancel(&dev.id, &final_child.id, 0.0, at(10))
        .await
        .unwrap();
    assert_eq!(canceled, CancelOutcome::Canceled { attempt: None });

    let live = store
        .run_descendants_live(&dev.id, &parent.id)
        .await
        .unwrap();
    // Shallowest first; the canceled child is left out, its live child is not.
    assert_eq!(
        live,
        vec![
            live_child.id.clone(),
            grandchild.id.clone(),
            under_final.id.clone()
        ]
    );
    assert_eq!(
        store
            .run_descendants_live(&dev.id, &grandchild.id)
            .await
            .unwrap(),
        Vec::<RunId>::new()
    );
    assert_eq!(
        store
            .run_descendants_live(&tenancy.prod.id, &parent.id)
            .await
            .unwrap(),
        Vec::<RunId>::new(),
        "another environment sees no descendants"
    );
}

pub(crate) async fn run_reschedule_moves_only_delayed_runs(store: Arc<dyn Store>) {
    let tenancy = bootstrap(&*store).await;
    let delayed = run_with_options(json!({"delay": "1h", "ttl": "10m"}), &tenancy.dev, at(0));
    let queued = queued_run(&tenancy.dev, at(0));
    create(&*store, &delayed, at(0)).await;
    create(&*store, &queued, at(0)).await;
    let until = at(2 * HOUR);
    let expire_at = Some(until + Duration::minutes(10));
    let queue_ts = until.timestamp_millis();

    for environment in [&tenancy.staging, &tenancy.prod] {
        assert!(!store
            .run_reschedule(
                &environment.id,
                &delayed.id,
                until,
                expire_at,
                queue_ts,
                at(5)
            )
            .await
            .unwrap());
    }
    let queued_before = stored(&*store, &queued).await;
    assert!(!store
        .run_reschedule(
            &tenancy.dev.id,
            &queued.id,
            until,
            expire_at,
            queue_ts,
            at(5)
        )
        .await
        .unwrap());
    assert_eq!(stored(&*store, &queued).await, queued_before);

    assert!(store
        .run_reschedule(
            &tenancy.dev.id,
            &delayed.id,
            until,
            expire_at,
            queue_ts,
            at(5)
        )
        .await
        .unwrap());
    assert_eq!(
        stored(&*store, &delayed).await,
        Run {
            delay_until: Some(until),
            expire_at,
            queue_ts,
            updated_at: at(5),
            ..delayed.clone()
        }
    );
    // The promoter follows the new delay: nothing is due at the old one.
    assert!(store
        .run_promote_due(at(HOUR + 1), NO_LIMIT)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        store.run_promote_due(until, NO_LIMIT).await.unwrap(),
        vec![delayed.id.clone()]
    );
}

pub(crate) async fn run_tags_replace_is_a_compare_and_swap(store: Arc<dyn Store>) {
    let tenancy = bootstrap(&*store).await;
    let run = run_with_options(json!({"tags": ["a"]}), &tenancy.dev, at(0));
    create(&*store, &run, at(0)).await;
    let strings = |items: &[&str]| items.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    let (a, ab, ac, az) = (
        strings(&["a"]),
        strings(&["a", "b"]),
        strings(&["a", "c"]),
        strings(&["a", "z"]),
    );

    assert!(!store
        .run_tags_replace(&tenancy.prod.id, &run.id, &a, &az, at(1))
        .await
        .unwrap());
    assert!(store
        .run_tags_replace(&tenancy.dev.id, &run.id, &a, &ab, at(2))
        .await
        .unwrap());
    // A writer that read before the first swap loses.
    assert!(!store
        .run_tags_replace(&tenancy.dev.id, &run.id, &a, &ac, at(3))
        .await
        .unwrap());
    assert_eq!(
        stored(&*store, &run).await,
        Run {
            tags: ab,
            updated_at: at(2),
            ..run.clone()
        }
    );
}

pub(crate) async fn run_metadata_replace_is_a_compare_and_swap(store: Arc<dyn Store>) {
    let tenancy = bootstrap(&*store).await;
    let run = queued_run(&tenancy.dev, at(0));
    create(&*store, &run, at(0)).await;
    let first = Packet::json(&json!({"step": 1}));
    let second = Packet::json(&json!({"step": 2}));
    let stale = Packet::json(&json!({"step": 0}));

    assert!(!store
        .run_metadata_replace(&tenancy.staging.id, &run.id, None, &first, at(1))
        .await
        .unwrap());
    assert!(store
        .run_metadata_replace(&tenancy.dev.id, &run.id, None, &first, at(1))
        .await
        .unwrap());
    assert!(!store
        .run_metadata_replace(&tenancy.dev.id, &run.id, None, &second, at(2))
        .await
        .unwrap());
    assert!(!store
        .run_metadata_replace(&tenancy.dev.id, &run.id, Some(&stale), &second, at(2))
        .await
        .unwrap());
    assert!(store
        .run_metadata_replace(&tenancy.dev.id, &run.id, Some(&first), &second, at(3))
        .await
        .unwrap());
    assert_eq!(
        stored(&*store, &run).await,
        Run {
            metadata: Some(second),
            updated_at: at(3),
            ..run.clone()
        }
    );
}

pub(crate) async fn idempotency_key_reset_releases_the_key_of_that_task_and_environment(
    store: Arc<dyn Store>,
) {
    let tenancy = bootstrap(&*store).await;
    let holder = keyed_run("my-task", "k1", &tenancy.dev, at(0));
    let other_task = keyed_run("other-task", "k1", &tenancy.dev, at(0));
    create(&*store, &holder, at(0)).await;
    create(&*store, &other_task, at(0)).await;

    for (environment, task, key) in [
        (&tenancy.prod, "my-task", "k1"),
        (&tenancy.dev, "my-task", "k2"),
        (&tenancy.dev, "third-task", "k1"),
    ] {
        let released = store
            .idempotency_key_reset(&environment.id, task, key, at(1))
            .await
            .unwrap();
        assert_eq!(released, 0, "{} {task} {key}", environment.kind);
    }
    assert_eq!(
        store
            .idempotency_key_reset(&tenancy.dev.id, "my-task", "k1", at(2))
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        stored(&*store, &holder).await,
        Run {
            idempotency_key: None,
            idempotency_key_expires_at: None,
            updated_at: at(2),
            ..holder.clone()
        }
    );
    assert_eq!(stored(&*store, &other_task).await, other_task);
    // The next trigger with the key creates a run instead of returning the old one.
    let again = keyed_run("my-task", "k1", &tenancy.dev, at(3));
    create(&*store, &again, at(3)).await;
}
