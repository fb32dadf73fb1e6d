//! Engine actions over a real SQLite store with a hand-driven clock: cancel's cascade to
//! child runs, the metadata edit window after completion, and updates that race.

mod common;

use common::{harness, Harness};

use std::sync::Arc;

use chrono::Duration;
use runnel_core::metadata::MetadataUpdate;
use runnel_core::run::Run;
use runnel_core::trigger::{IdempotencyHeaders, TriggerRequest};
use runnel_core::{RunId, RunStatus};
use runnel_engine::ActionError;
use serde_json::{json, Value};

impl Harness {
    async fn trigger(&self, body: Value) -> RunId {
        let request: TriggerRequest = serde_json::from_value(body).unwrap();
        self.engine
            .trigger(&self.dev, "t", request, &IdempotencyHeaders::default())
            .await
            .unwrap()
            .id
    }

    async fn run(&self, id: &RunId) -> Run {
        self.engine
            .store()
            .run_get(&self.dev.id, id)
            .await
            .unwrap()
            .unwrap()
    }

    /// Stores a run below `parent` (the API cannot create child runs yet).
    async fn child(&self, parent: &RunId) -> RunId {
        let parent = self.run(parent).await;
        let now = self.engine.now();
        let child = Run {
            id: RunId::generate(now.timestamp_millis()),
            parent_run_id: Some(parent.id.clone()),
            root_run_id: Some(parent.root_run_id.clone().unwrap_or(parent.id.clone())),
            depth: parent.depth + 1,
            idempotency_key: None,
            ..parent
        };
        self.engine.store().run_trigger(&child, now).await.unwrap();
        child.id
    }
}

#[tokio::test]
async fn cancel_cascades_to_live_descendants_only() {
    let h = harness().await;
    let parent = h.trigger(json!({})).await;
    let child = h.child(&parent).await;
    let grandchild = h.child(&child).await;
    let finished_child = h.child(&parent).await;
    assert!(h
        .engine
        .store()
        .run_transition(
            &finished_child,
            RunStatus::PendingVersion,
            RunStatus::Expired,
            h.engine.now()
        )
        .await
        .unwrap());
    let sibling = h.trigger(json!({})).await;

    h.clock.advance(Duration::seconds(5));
    assert_eq!(
        h.engine.cancel(&h.dev, &parent).await.unwrap(),
        Some(parent.clone())
    );
    for id in [&parent, &child, &grandchild] {
        let run = h.run(id).await;
        assert_eq!(run.status, RunStatus::Canceled, "{id}");
        assert_eq!(run.completed_at, Some(h.engine.now()), "{id}");
    }
    assert_eq!(h.run(&finished_child).await.status, RunStatus::Expired);
    assert_eq!(h.run(&sibling).await.status, RunStatus::PendingVersion);
}

#[tokio::test]
async fn metadata_of_a_run_finished_over_an_hour_ago_is_closed() {
    let h = harness().await;
    let id = h.trigger(json!({})).await;
    h.engine.cancel(&h.dev, &id).await.unwrap();
    let update = |n: i64| -> MetadataUpdate {
        serde_json::from_value(json!({"operations": [{"type": "set", "key": "n", "value": n}]}))
            .unwrap()
    };
    h.clock.advance(Duration::minutes(60));
    let metadata = h
        .engine
        .metadata_update(&h.dev, &id, update(1))
        .await
        .unwrap();
    assert_eq!(Value::Object(metadata), json!({"n": 1}));
    h.clock.advance(Duration::milliseconds(1));
    let refused = h.engine.metadata_update(&h.dev, &id, update(2)).await;
    assert!(
        matches!(refused, Err(ActionError::MetadataClosed)),
        "{refused:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_increments_and_tag_additions_are_never_lost() {
    let h = Arc::new(harness().await);
    let id = h.trigger(json!({})).await;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..8 {
        let h = Arc::clone(&h);
        let id = id.clone();
        tasks.spawn(async move {
            let update: MetadataUpdate = serde_json::from_value(
                json!({"operations": [{"type": "increment", "key": "count", "value": 1}]}),
            )
            .unwrap();
            h.engine.metadata_update(&h.dev, &id, update).await.unwrap();
            h.engine
                .tags_add(&h.dev, &id, vec![format!("tag{i}")])
                .await
                .unwrap();
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    let run = h.run(&id).await;
    assert_eq!(
        run.metadata.and_then(|m| m.to_value()),
        Some(json!({"count": 8}))
    );
    let want: Vec<String> = (0..8).map(|i| format!("tag{i}")).collect();
    assert_eq!(run.tags, want);
}
