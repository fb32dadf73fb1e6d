//! Ids in worker requests that do not parse (issue 11, item 5): the server parses the path's
//! worker id and the body's attempt ids before the engine sees them, and an id that is not
//! one answers exactly as an unknown one does: a worker id after the body's own checks
//! (400 before 404), an attempt id as an attempt the worker does not hold.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use runnel_testkit::{Server, TestApp};
use serde_json::{json, Value};

/// A well-formed worker id that names no worker.
const UNKNOWN_WORKER: &str = "worker_0000000000000000000000";
/// A well-formed attempt id that names no attempt.
const UNKNOWN_ATTEMPT: &str = "attempt_0000000000000000000000";
/// Path segments that are no worker id.
const NOT_WORKER_IDS: [&str; 4] = ["not-a-worker-id", "worker_ABC", "worker_", "run_abc"];

fn calls() -> Vec<(&'static str, Value)> {
    vec![
        ("dequeue", json!({"maxRuns": 1})),
        ("start", json!({"attemptIds": [UNKNOWN_ATTEMPT]})),
        ("heartbeat", json!({"attemptIds": [UNKNOWN_ATTEMPT]})),
        (
            "complete",
            json!({"completions": [{"attemptId": UNKNOWN_ATTEMPT, "outcome": "success", "output": 1}]}),
        ),
        // The body's own checks come first, for an unknown worker as for any other.
        ("dequeue", json!({"maxRuns": 0})),
        ("dequeue", json!({"maxRuns": 101})),
        (
            "start",
            json!({"attemptIds": vec![UNKNOWN_ATTEMPT; 10_001]}),
        ),
        ("heartbeat", json!({"attemptIds": vec!["x"; 10_001]})),
        ("start", json!({"attemptIds": "nope"})),
    ]
}

async fn same_answer(server: &Server, key: &str, worker: &str, operation: &str, body: &Value) {
    let want = server
        .worker_call(key, UNKNOWN_WORKER, operation, body)
        .await;
    let got = server.worker_call(key, worker, operation, body).await;
    assert_eq!(
        (got.status, &got.body),
        (want.status, &want.body),
        "{worker} {operation}"
    );
}

#[tokio::test]
async fn a_worker_id_that_does_not_parse_answers_as_an_unknown_worker() {
    let app = TestApp::start();
    let (server, key) = (&app.server, app.dev_key.as_str());
    let unknown = server
        .worker_call(key, UNKNOWN_WORKER, "dequeue", &json!({"maxRuns": 1}))
        .await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND, "{unknown:?}");
    let invalid = server
        .worker_call(key, UNKNOWN_WORKER, "dequeue", &json!({"maxRuns": 0}))
        .await;
    assert_eq!(invalid.status, StatusCode::BAD_REQUEST, "{invalid:?}");
    for worker in NOT_WORKER_IDS {
        for (operation, body) in calls() {
            same_answer(server, key, worker, operation, &body).await;
        }
    }
}

#[tokio::test]
async fn attempt_ids_that_do_not_parse_answer_as_attempts_not_held() {
    let app = TestApp::start();
    let (server, key) = (&app.server, app.dev_key.as_str());
    let worker = server.register_worker(key, &["t"]).await;
    server.trigger_new(key, "t", &json!({})).await;
    let (_, attempt) = server.dequeue_one(key, &worker).await;

    let started = server
        .worker_call(
            key,
            &worker,
            "start",
            &json!({"attemptIds": ["garbage", attempt, UNKNOWN_ATTEMPT, "attempt_X"]}),
        )
        .await;
    assert_eq!(started.status, StatusCode::OK, "{started:?}");
    assert_eq!(
        started.body,
        json!({"started": [attempt], "cancel": ["garbage", UNKNOWN_ATTEMPT, "attempt_X"]})
    );

    // Not held: the answer is to stop it, at once, however long the worker would wait.
    let began = Instant::now();
    let heartbeat = server
        .worker_call(
            key,
            &worker,
            "heartbeat",
            &json!({"attemptIds": [attempt, "garbage"], "waitMs": 20_000}),
        )
        .await;
    assert_eq!(heartbeat.status, StatusCode::OK, "{heartbeat:?}");
    assert_eq!(heartbeat.body, json!({"cancel": ["garbage"]}));
    assert!(
        began.elapsed() < Duration::from_secs(10),
        "answered at once"
    );

    let completed = server
        .worker_call(
            key,
            &worker,
            "complete",
            &json!({"completions": [
                {"attemptId": "garbage", "outcome": "success", "output": 1},
                {"attemptId": UNKNOWN_ATTEMPT, "outcome": "success", "output": 1},
                {"attemptId": attempt, "outcome": "success", "output": 1},
                {"attemptId": "", "outcome": "failure", "error": {"kind": "TASK_FAILED", "message": "m"}},
            ]}),
        )
        .await;
    assert_eq!(completed.status, StatusCode::OK, "{completed:?}");
    assert_eq!(
        completed.body,
        json!({"results": [
            {"attemptId": "garbage", "accepted": false},
            {"attemptId": UNKNOWN_ATTEMPT, "accepted": false},
            {"attemptId": attempt, "accepted": true, "runStatus": "COMPLETED"},
            {"attemptId": "", "accepted": false},
        ]})
    );
}
