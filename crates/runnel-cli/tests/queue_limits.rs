//! Queue concurrency limits held by real `runnel worker` processes (exec mode) attached
//! to the real `runnel serve`. (The queues API itself: crates/runnel-server/tests/queues.rs.)

mod common;

use common::{eventually, TestApp, Worker, SERVICE_TIMEOUT};
use serde_json::json;

/// Start and end times (ns) of each run, from the lines the task command appended.
fn intervals(log: &str) -> Vec<(u128, u128)> {
    let mut starts = std::collections::HashMap::new();
    let mut out = Vec::new();
    for line in log.lines() {
        let mut parts = line.split_whitespace();
        let (Some(what), Some(run), Some(t)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        let t: u128 = t.parse().expect("a time in ns");
        match what {
            "start" => {
                starts.insert(run.to_owned(), t);
            }
            "end" => out.push((starts[run], t)),
            _ => {}
        }
    }
    out
}

#[tokio::test]
async fn two_workers_never_run_more_than_the_queue_limit_at_once() {
    const RUNS: usize = 12;
    let app = TestApp::start();
    let key = app.dev_key.as_str();
    let log = app.dir.path().join("times.log");
    let command = format!(
        r#"slow=echo "start $RUNNEL_RUN_ID $(date +%s%N)" >> {log}; sleep 0.3; echo "end $RUNNEL_RUN_ID $(date +%s%N)" >> {log}; echo '{{}}'"#,
        log = log.display()
    );
    let args = [
        "--task",
        command.as_str(),
        "--concurrency",
        "4",
        "--queue-limit",
        "task/slow=2",
    ];
    let mut workers = [
        Worker::start(&app.server, key, &args),
        Worker::start(&app.server, key, &args),
    ];
    for worker in &mut workers {
        worker.registration();
    }
    let mut ids = Vec::new();
    for _ in 0..RUNS {
        ids.push(app.server.trigger_new(key, "slow", &json!({})).await);
    }
    for id in &ids {
        eventually(
            &format!("run {id} to complete"),
            SERVICE_TIMEOUT * 3,
            || async {
                let run = app.server.run(key, id).await;
                (run["status"] == "COMPLETED").then_some(())
            },
        )
        .await;
    }
    let text = std::fs::read_to_string(&log).expect("the task log");
    let runs = intervals(&text);
    assert_eq!(runs.len(), RUNS, "{text}");
    // The most intervals overlapping at any start.
    let most = runs
        .iter()
        .map(|(start, _)| runs.iter().filter(|(s, e)| s <= start && start < e).count())
        .max()
        .unwrap();
    assert_eq!(most, 2, "at most the limit, and the limit is used:\n{text}");
}
