//! Run events (the OTLP ingest's log lines and spans): attribution to existing runs,
//! partial spans, time order and paging, the per-run cap.

use runnel_store::{
    EventCursor, EventKind, NewRunEvent, RunEvent, RunEventQuery, RUN_EVENTS_MAX_PER_RUN,
};

use crate::harness::*;

const SECOND_NS: i64 = 1_000_000_000;

fn event(run: &RunId, kind: EventKind, span_id: &str, name: &str, start_s: i64) -> NewRunEvent {
    NewRunEvent {
        run_id: run.clone(),
        kind,
        trace_id: "0af7651916cd43dd8448eb211c80319c".to_owned(),
        span_id: span_id.to_owned(),
        parent_span_id: (kind != EventKind::Log).then(|| "b7ad6b7169203331".to_owned()),
        name: name.to_owned(),
        level: if kind == EventKind::Log {
            "INFO"
        } else {
            "TRACE"
        }
        .to_owned(),
        start_ns: at(start_s).timestamp_nanos_opt().unwrap() + 123,
        duration_ns: if kind == EventKind::Span {
            2 * SECOND_NS
        } else {
            0
        },
        status_code: 0,
        attributes: json!({"$metadata.ctx.run.id": run.as_str(), "user": {"n": 1}}),
        events: (kind != EventKind::Log).then(|| json!([{"name": "e", "timeUnixNano": 5}])),
    }
}

fn log(run: &RunId, name: &str, start_s: i64) -> NewRunEvent {
    event(run, EventKind::Log, "00f067aa0ba902b7", name, start_s)
}

fn all() -> RunEventQuery {
    RunEventQuery {
        kinds: Vec::new(),
        after: None,
        limit: 100_000,
    }
}

async fn list(
    store: &dyn Store,
    environment: &Environment,
    run: &RunId,
    query: &RunEventQuery,
) -> Vec<RunEvent> {
    store
        .run_event_list(&environment.id, run, query)
        .await
        .expect("run_event_list")
}

fn names(events: &[RunEvent]) -> Vec<&str> {
    events.iter().map(|e| e.event.name.as_str()).collect()
}

pub(crate) async fn run_event_insert_stores_events_of_existing_runs_in_their_environment(
    store: Arc<dyn Store>,
) {
    let tenancy = bootstrap(&*store).await;
    let dev_run = queued_run(&tenancy.dev, at(0));
    let prod_run = queued_run(&tenancy.prod, at(0));
    create(&*store, &dev_run, at(0)).await;
    create(&*store, &prod_run, at(0)).await;
    let missing = RunId::generate(at(0).timestamp_millis());
    let events = [
        log(&dev_run.id, "dev line", 1),
        log(&missing, "nobody's line", 1),
        log(&prod_run.id, "prod line", 1),
        event(
            &dev_run.id,
            EventKind::Span,
            "a1a1a1a1a1a1a1a1",
            "dev span",
            0,
        ),
    ];
    let written = store
        .run_event_insert(&events, at(10))
        .await
        .expect("run_event_insert");
    assert_eq!(written, 3, "the missing run's line is dropped");

    let got = list(&*store, &tenancy.dev, &dev_run.id, &all()).await;
    assert_eq!(names(&got), ["dev span", "dev line"], "time order");
    // Every field round-trips; the environment is the run's.
    assert_eq!(got[1].event, events[0]);
    assert_eq!(got[0].event, events[3]);
    assert_eq!(got[1].environment_id, tenancy.dev.id);
    assert_eq!(got[1].received_at, at(10));
    assert!(got[0].seq > 0 && got[1].seq > 0);

    assert_eq!(
        names(&list(&*store, &tenancy.prod, &prod_run.id, &all()).await),
        ["prod line"]
    );
    // Another environment's run reads as nothing.
    assert!(list(&*store, &tenancy.prod, &dev_run.id, &all())
        .await
        .is_empty());
    assert!(list(&*store, &tenancy.dev, &missing, &all())
        .await
        .is_empty());
}

pub(crate) async fn run_event_insert_replaces_a_partial_span_with_the_ended_one(
    store: Arc<dyn Store>,
) {
    let tenancy = bootstrap(&*store).await;
    let run = queued_run(&tenancy.dev, at(0));
    create(&*store, &run, at(0)).await;
    let span = "c3c3c3c3c3c3c3c3";
    let partial = event(&run.id, EventKind::PartialSpan, span, "running", 1);
    let ended = event(&run.id, EventKind::Span, span, "ended", 1);
    store
        .run_event_insert(std::slice::from_ref(&partial), at(1))
        .await
        .unwrap();
    // A second copy replaces the first; the ended span replaces the copies.
    store
        .run_event_insert(std::slice::from_ref(&partial), at(2))
        .await
        .unwrap();
    store
        .run_event_insert(std::slice::from_ref(&ended), at(3))
        .await
        .unwrap();
    // A copy arriving late, and the span again, change nothing.
    store
        .run_event_insert(std::slice::from_ref(&partial), at(4))
        .await
        .unwrap();
    let mut again = ended.clone();
    again.name = "ended again".to_owned();
    store.run_event_insert(&[again], at(5)).await.unwrap();

    let got = list(&*store, &tenancy.dev, &run.id, &all()).await;
    assert_eq!(got.len(), 1, "one row per span");
    assert_eq!(got[0].event, ended);
    assert_eq!(got[0].received_at, at(3));

    // A copy and its span in one request: the span wins, whatever the order.
    let other = "d4d4d4d4d4d4d4d4";
    let written = store
        .run_event_insert(
            &[
                event(&run.id, EventKind::Span, other, "other ended", 2),
                event(&run.id, EventKind::PartialSpan, other, "other running", 2),
            ],
            at(6),
        )
        .await
        .unwrap();
    assert_eq!(written, 1);
    let got = list(&*store, &tenancy.dev, &run.id, &all()).await;
    assert_eq!(names(&got), ["ended", "other ended"]);

    // The same span id in two runs is two spans; log lines in a span never merge.
    let second = queued_run(&tenancy.dev, at(0));
    create(&*store, &second, at(0)).await;
    store
        .run_event_insert(
            &[
                event(&second.id, EventKind::Span, span, "second run's", 1),
                event(&second.id, EventKind::Log, span, "line 1", 2),
                event(&second.id, EventKind::Log, span, "line 2", 3),
            ],
            at(7),
        )
        .await
        .unwrap();
    assert_eq!(
        names(&list(&*store, &tenancy.dev, &second.id, &all()).await),
        ["second run's", "line 1", "line 2"]
    );
}

pub(crate) async fn run_event_list_pages_in_time_order_by_kind(store: Arc<dyn Store>) {
    let tenancy = bootstrap(&*store).await;
    let run = queued_run(&tenancy.dev, at(0));
    create(&*store, &run, at(0)).await;
    // Arrival order is not time order; two lines share a start time.
    let events = [
        log(&run.id, "t3", 3),
        log(&run.id, "t1", 1),
        event(&run.id, EventKind::Span, "e5e5e5e5e5e5e5e5", "span t2", 2),
        log(&run.id, "t4 first", 4),
        log(&run.id, "t0", 0),
    ];
    store.run_event_insert(&events, at(10)).await.unwrap();
    // Arrived later, same time: after the first.
    store
        .run_event_insert(&[log(&run.id, "t4 second", 4)], at(10))
        .await
        .unwrap();

    let mut walked = Vec::new();
    let mut after: Option<EventCursor> = None;
    loop {
        let page = list(
            &*store,
            &tenancy.dev,
            &run.id,
            &RunEventQuery {
                kinds: vec![EventKind::Log],
                after,
                limit: 2,
            },
        )
        .await;
        let Some(last) = page.last() else { break };
        after = Some(last.cursor());
        walked.extend(page.iter().map(|e| e.event.name.clone()));
    }
    assert_eq!(walked, ["t0", "t1", "t3", "t4 first", "t4 second"]);

    // Lines that arrive later after the cursor are found by the next read.
    store
        .run_event_insert(&[log(&run.id, "t5", 5)], at(11))
        .await
        .unwrap();
    let rest = list(
        &*store,
        &tenancy.dev,
        &run.id,
        &RunEventQuery {
            kinds: vec![EventKind::Log],
            after,
            limit: 10,
        },
    )
    .await;
    assert_eq!(names(&rest), ["t5"]);

    let spans = list(
        &*store,
        &tenancy.dev,
        &run.id,
        &RunEventQuery {
            kinds: vec![EventKind::Span, EventKind::PartialSpan],
            after: None,
            limit: 10,
        },
    )
    .await;
    assert_eq!(names(&spans), ["span t2"]);
}

pub(crate) async fn run_event_insert_stops_at_the_cap_per_run(store: Arc<dyn Store>) {
    let tenancy = bootstrap(&*store).await;
    let chatty = queued_run(&tenancy.dev, at(0));
    let quiet = queued_run(&tenancy.dev, at(0));
    create(&*store, &chatty, at(0)).await;
    create(&*store, &quiet, at(0)).await;
    let cap = usize::try_from(RUN_EVENTS_MAX_PER_RUN).unwrap();
    // A running span's copy, stored before the cap is reached.
    let span = "f6f6f6f6f6f6f6f6";
    store
        .run_event_insert(
            &[event(
                &chatty.id,
                EventKind::PartialSpan,
                span,
                "running",
                0,
            )],
            at(1),
        )
        .await
        .unwrap();
    let lines: Vec<NewRunEvent> = (1..cap)
        .map(|i| log(&chatty.id, &format!("line {i}"), 1))
        .collect();
    store.run_event_insert(&lines, at(2)).await.unwrap();
    // At the cap: the chatty run's new lines are dropped, the quiet run's are not, and
    // the running span still ends (it adds no row).
    let written = store
        .run_event_insert(
            &[
                log(&chatty.id, "one too many", 2),
                log(&quiet.id, "quiet line", 2),
                event(&chatty.id, EventKind::Span, span, "ended", 0),
            ],
            at(3),
        )
        .await
        .unwrap();
    assert_eq!(written, 2);
    let got = list(&*store, &tenancy.dev, &chatty.id, &all()).await;
    assert_eq!(got.len(), cap);
    assert_eq!(got[0].event.name, "ended");
    assert!(!names(&got).contains(&"one too many"));
    assert_eq!(
        names(&list(&*store, &tenancy.dev, &quiet.id, &all()).await),
        ["quiet line"]
    );
}
