//! The queues API (`/api/v1/queues…`) over HTTP against a server built as `runnel serve`
//! builds it, in the test process (`runnel_testkit::TestApp`): what registrations
//! declare, pause/resume and override/reset as a client sees them. (Real `runnel worker`
//! processes held to a queue's limit: crates/runnel-cli/tests/queue_limits.rs.)

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use runnel_testkit::{send, Server, TestApp};
use serde_json::{json, Value};

/// `body` with every queue id replaced by `"<queue id>"` (asserting its shape) and every
/// `overriddenAt` by `"<timestamp>"`.
fn redact_queue(value: &Value) -> Value {
    match value {
        Value::Object(fields) => fields
            .iter()
            .map(|(name, field)| {
                let redacted = match name.as_str() {
                    "id" => {
                        runnel_testkit::assert_friendly_id(field.as_str().expect("id"), "queue");
                        json!("<queue id>")
                    }
                    "overriddenAt" if !field.is_null() => {
                        runnel_testkit::timestamp(field);
                        json!("<timestamp>")
                    }
                    _ => redact_queue(field),
                };
                (name.clone(), redacted)
            })
            .collect(),
        Value::Array(items) => items.iter().map(redact_queue).collect(),
        other => other.clone(),
    }
}

/// A `QueueItem` as this server answers it, the id and override time redacted.
fn item(
    name: &str,
    kind: &str,
    running: u64,
    queued: u64,
    paused: bool,
    (base, override_limit): (Option<u32>, Option<u32>),
) -> Value {
    let current = override_limit.or(base);
    json!({
        "id": "<queue id>",
        "name": name,
        "type": kind,
        "running": running,
        "queued": queued,
        "paused": paused,
        "concurrencyLimit": current,
        "concurrency": {
            "current": current,
            "base": base,
            "override": override_limit,
            "overriddenAt": if override_limit.is_some() { json!("<timestamp>") } else { Value::Null },
            "overriddenBy": null,
        },
        "releaseConcurrencyOnWaitpoint": false,
    })
}

async fn get(server: &Server, key: &str, path: &str) -> runnel_testkit::Reply {
    send(server.request(Method::GET, path).bearer_auth(key)).await
}

async fn post(server: &Server, key: &str, path: &str, body: &Value) -> runnel_testkit::Reply {
    send(
        server
            .request(Method::POST, path)
            .bearer_auth(key)
            .json(body),
    )
    .await
}

#[tokio::test]
async fn registered_queues_are_listed_retrieved_paused_and_overridden() {
    let app = TestApp::start();
    let (server, key) = (&app.server, app.dev_key.as_str());
    let registered = server
        .register_worker_as(
            key,
            &json!({
                "name": "w",
                "tasks": [{"id": "hello"}, {"id": "mail", "queue": "team/emails"}],
                "queues": [{"name": "team/emails", "concurrencyLimit": 2}],
            }),
        )
        .await;
    assert_eq!(registered.status, StatusCode::OK, "{registered:?}");
    // A trigger without `queue` runs on the queue its task declared.
    server.trigger_new(key, "mail", &json!({})).await;

    let list = get(server, key, "/api/v1/queues").await;
    assert_eq!(list.status, StatusCode::OK, "{list:?}");
    assert_eq!(
        redact_queue(&list.body),
        json!({
            // By stored name: `task/hello` sorts before `team/emails`.
            "data": [
                item("hello", "task", 0, 0, false, (None, None)),
                item("team/emails", "custom", 0, 1, false, (Some(2), None)),
            ],
            "pagination": {"currentPage": 1, "totalPages": 1, "count": 2},
        })
    );
    let page = get(server, key, "/api/v1/queues?page=2&perPage=1").await;
    assert_eq!(
        redact_queue(&page.body),
        json!({
            "data": [item("team/emails", "custom", 0, 1, false, (Some(2), None))],
            "pagination": {"currentPage": 2, "totalPages": 2, "count": 2},
        })
    );
    get(server, key, "/api/v1/queues?perPage=0")
        .await
        .assert_error(
            StatusCode::BAD_REQUEST,
            "perPage: must be a positive integer",
        );

    // By name (`/` encoded) and by id.
    let emails = get(server, key, "/api/v1/queues/team%2Femails?type=custom").await;
    assert_eq!(emails.status, StatusCode::OK, "{emails:?}");
    let id = emails.body["id"].as_str().unwrap().to_owned();
    let by_id = get(server, key, &format!("/api/v1/queues/{id}")).await;
    assert_eq!(by_id.body, emails.body);
    let hello = get(server, key, "/api/v1/queues/hello?type=task").await;
    assert_eq!(
        redact_queue(&hello.body),
        item("hello", "task", 0, 0, false, (None, None))
    );
    let missing = get(server, key, "/api/v1/queues/nope?type=custom").await;
    assert_eq!(
        (missing.status, missing.body),
        (StatusCode::NOT_FOUND, json!({"error": "queue-not-found"}))
    );
    // A final refusal: the SDK retries a 4xx unless told not to.
    assert_eq!(missing.headers["x-should-retry"], "false");
    get(server, key, "/api/v1/queues/hello?type=bogus")
        .await
        .assert_error(
            StatusCode::BAD_REQUEST,
            "type: expected one of id, task, custom, got \"bogus\"",
        );

    // Another environment sees none of them.
    let prod = app.keys_create("prod");
    let foreign = get(server, &prod, &format!("/api/v1/queues/{id}")).await;
    assert_eq!(foreign.status, StatusCode::NOT_FOUND);
    let empty = get(server, &prod, "/api/v1/queues").await;
    assert_eq!(
        empty.body,
        json!({"data": [], "pagination": {"currentPage": 1, "totalPages": 0, "count": 0}})
    );

    let path = format!("/api/v1/queues/{id}");
    let paused = post(
        server,
        key,
        &format!("{path}/pause"),
        &json!({"action": "pause"}),
    )
    .await;
    assert_eq!(
        redact_queue(&paused.body),
        item("team/emails", "custom", 0, 1, true, (Some(2), None))
    );
    let resumed = post(
        server,
        key,
        "/api/v1/queues/hello/pause",
        &json!({"type": "task", "action": "resume"}),
    )
    .await;
    assert_eq!(
        redact_queue(&resumed.body),
        item("hello", "task", 0, 0, false, (None, None))
    );
    post(
        server,
        key,
        &format!("{path}/pause"),
        &json!({"action": "stop"}),
    )
    .await
    .assert_error(
        StatusCode::BAD_REQUEST,
        "action: unknown variant `stop`, expected `pause` or `resume`",
    );

    let overridden = post(
        server,
        key,
        &format!("{path}/concurrency/override"),
        &json!({"concurrencyLimit": 5}),
    )
    .await;
    assert_eq!(
        redact_queue(&overridden.body),
        item("team/emails", "custom", 0, 1, true, (Some(2), Some(5)))
    );
    for (body, message) in [
        (
            json!({"concurrencyLimit": 100_001}),
            "concurrencyLimit: must be between 0 and 100000",
        ),
        (
            json!({"concurrencyLimit": -1}),
            "concurrencyLimit: must be between 0 and 100000",
        ),
        (
            json!({"percent": 50}),
            "percent: not supported; give concurrencyLimit",
        ),
        (json!({}), "concurrencyLimit: required"),
    ] {
        post(server, key, &format!("{path}/concurrency/override"), &body)
            .await
            .assert_error(StatusCode::BAD_REQUEST, message);
    }
    let reset = send(
        server
            .request(Method::POST, &format!("{path}/concurrency/reset"))
            .bearer_auth(key),
    )
    .await;
    assert_eq!(
        redact_queue(&reset.body),
        item("team/emails", "custom", 0, 1, true, (Some(2), None))
    );
    post(
        server,
        key,
        &format!("{path}/concurrency/reset"),
        &json!({}),
    )
    .await
    .assert_error(
        StatusCode::BAD_REQUEST,
        "Queue concurrency limit is not overridden",
    );
    let missing = post(
        server,
        key,
        "/api/v1/queues/nope/pause",
        &json!({"type": "custom", "action": "pause"}),
    )
    .await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_registration_with_a_bad_queue_is_refused() {
    let app = TestApp::start();
    let (server, key) = (&app.server, app.dev_key.as_str());
    for (body, message) in [
        (
            json!({"name": "w", "tasks": [{"id": "t"}], "queues": [{"name": "a b"}]}),
            "queues[0].name: must be 1 to 128 characters of A-Z a-z 0-9 _ - /",
        ),
        (
            json!({"name": "w", "tasks": [{"id": "t"}], "queues": [{"name": "q", "concurrencyLimit": 100_001}]}),
            "queues[0].concurrencyLimit: must be between 0 and 100000",
        ),
        (
            json!({"name": "w", "tasks": [{"id": "t", "queue": "no!"}]}),
            "tasks[0].queue: must be 1 to 128 characters of A-Z a-z 0-9 _ - /",
        ),
    ] {
        server
            .register_worker_as(key, &body)
            .await
            .assert_error(StatusCode::BAD_REQUEST, message);
    }
}

#[tokio::test]
async fn resuming_a_paused_queue_wakes_a_waiting_dequeue() {
    let app = TestApp::start();
    let (server, key) = (&app.server, app.dev_key.as_str());
    let worker = server.register_worker(key, &["t"]).await;
    let pause = |action: &'static str| async move {
        let body = json!({"type": "task", "action": action});
        post(server, key, "/api/v1/queues/t/pause", &body).await
    };
    assert_eq!(pause("pause").await.status, StatusCode::OK);
    let run = server.trigger_new(key, "t", &json!({})).await;
    let now = server
        .worker_call(key, &worker, "dequeue", &json!({"maxRuns": 5, "waitMs": 0}))
        .await;
    assert_eq!(now.body["runs"], json!([]), "a paused queue leases nothing");

    let started = Instant::now();
    let long_poll = json!({"maxRuns": 5, "waitMs": 20_000});
    let (waited, resumed) = tokio::join!(
        server.worker_call(key, &worker, "dequeue", &long_poll),
        async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            pause("resume").await
        }
    );
    assert_eq!(resumed.status, StatusCode::OK);
    assert_eq!(waited.body["runs"][0]["runId"], run.as_str(), "{waited:?}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "woken by the resume, not by the poll's end: {:?}",
        started.elapsed()
    );
}
