//! `Engine::run_list` over a real SQLite store with a hand-driven clock: the default
//! 7-day window and `period` move with the clock, bare run ids work as cursors, and a
//! page's cursors lead to its neighbours.

mod common;

use common::{harness, start, Harness};

use chrono::Duration;
use runnel_core::list::{Direction, PageCursor, RunListRequest};
use runnel_core::trigger::{IdempotencyHeaders, TriggerRequest};
use runnel_core::RunId;
use runnel_engine::list::ListError;
use serde_json::json;

impl Harness {
    /// Triggers a run of `t` now, then moves the clock one second on.
    async fn trigger(&self) -> RunId {
        let request: TriggerRequest = serde_json::from_value(json!({})).unwrap();
        let triggered = self
            .engine
            .trigger(&self.dev, "t", request, &IdempotencyHeaders::default())
            .await
            .unwrap();
        self.clock.advance(Duration::seconds(1));
        triggered.id
    }

    async fn list(&self, query: &[(&str, &str)]) -> Vec<RunId> {
        let pairs: Vec<(String, String)> = query
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let request = RunListRequest::parse(&pairs).unwrap();
        let page = self.engine.run_list(&self.dev, &request).await.unwrap();
        page.runs.into_iter().map(|run| run.id).collect()
    }
}

#[tokio::test]
async fn the_default_window_is_the_last_seven_days_of_the_clock() {
    let h = harness().await;
    let old = h.trigger().await;
    h.clock.advance(Duration::days(6));
    let recent = h.trigger().await;
    assert_eq!(h.list(&[]).await, vec![recent.clone(), old.clone()]);

    h.clock.advance(Duration::days(2));
    assert_eq!(h.list(&[]).await, vec![recent.clone()], "old is 8 days old");
    assert_eq!(
        h.list(&[("filter[createdAt][period]", "30d")]).await,
        vec![recent.clone(), old.clone()]
    );
    assert_eq!(
        h.list(&[("filter[createdAt][period]", "1d")]).await,
        Vec::<RunId>::new()
    );
    // An explicit bound replaces the default window.
    let from = (start() - Duration::days(1)).timestamp_millis().to_string();
    assert_eq!(
        h.list(&[("filter[createdAt][from]", &from)]).await,
        vec![recent, old]
    );
}

#[tokio::test]
async fn cursors_lead_to_the_neighbouring_pages_and_bare_run_ids_are_cursors() {
    let h = harness().await;
    let mut runs = Vec::new();
    for _ in 0..5 {
        runs.push(h.trigger().await);
    }
    runs.reverse();

    let first = RunListRequest {
        page_size: 2,
        ..RunListRequest::default()
    };
    let page = h.engine.run_list(&h.dev, &first).await.unwrap();
    assert_eq!(
        page.runs.iter().map(|r| &r.id).collect::<Vec<_>>(),
        [&runs[0], &runs[1]]
    );
    assert_eq!(page.previous, None);
    let second = RunListRequest {
        page: Some((Direction::Older, PageCursor::Keyset(page.next.unwrap()))),
        ..first.clone()
    };
    let page = h.engine.run_list(&h.dev, &second).await.unwrap();
    assert_eq!(
        page.runs.iter().map(|r| &r.id).collect::<Vec<_>>(),
        [&runs[2], &runs[3]]
    );
    let back = RunListRequest {
        page: Some((Direction::Newer, PageCursor::Keyset(page.previous.unwrap()))),
        ..first.clone()
    };
    let page = h.engine.run_list(&h.dev, &back).await.unwrap();
    assert_eq!(
        page.runs.iter().map(|r| &r.id).collect::<Vec<_>>(),
        [&runs[0], &runs[1]]
    );
    assert_eq!(page.previous, None, "back on the first page");

    assert_eq!(
        h.list(&[("page[before]", runs[2].as_str())]).await,
        vec![runs[0].clone(), runs[1].clone()]
    );
    let unknown = RunListRequest {
        page: Some((
            Direction::Older,
            PageCursor::Run(RunId::parse("run_unknown").unwrap()),
        )),
        ..first
    };
    match h.engine.run_list(&h.dev, &unknown).await {
        Err(ListError::Query(issues)) => {
            assert_eq!(issues[0].path, ["page[after]"]);
            assert_eq!(issues[0].message, "Invalid cursor");
        }
        other => panic!("expected a query error, got {other:?}"),
    }
}
