//! Batch trigger end to end over HTTP against a server built as `runnel serve` builds
//! it, in the test process (`runnel_testkit::TestApp`): the SDK's two-phase batch
//! (`POST /api/v3/batches`, NDJSON items), the one-shot `POST /api/v1/tasks/batch` and
//! batch retrieve (`GET /api/v1|v2/batches/{id}`).

use std::time::Instant;

use reqwest::header::CONTENT_TYPE;
use reqwest::{Method, StatusCode};
use runnel_testkit::{assert_friendly_id, redact, send, timestamp, Reply, TestApp};
use serde_json::{json, Value};

const NDJSON: &str = "application/x-ndjson";

/// `POST /api/v3/batches` with `body`.
async fn create(app: &TestApp, key: &str, body: &Value) -> Reply {
    send(
        app.server
            .request(Method::POST, "/api/v3/batches")
            .bearer_auth(key)
            .json(body),
    )
    .await
}

/// Creates a batch of `run_count` runs and returns its id.
async fn create_new(app: &TestApp, run_count: u32) -> String {
    let reply = create(app, &app.dev_key, &json!({"runCount": run_count})).await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{reply:?}");
    let id = batch_id(&reply);
    assert_eq!(
        reply.body,
        json!({"id": id, "runCount": run_count, "isCached": false})
    );
    id
}

fn batch_id(reply: &Reply) -> String {
    let id = reply.body["id"]
        .as_str()
        .unwrap_or_else(|| panic!("no id in {reply:?}"));
    assert_friendly_id(id, "batch");
    id.to_owned()
}

/// NDJSON lines for `items`.
fn ndjson(items: &[Value]) -> String {
    items.iter().map(|item| format!("{item}\n")).collect()
}

/// `POST /api/v3/batches/{id}/items` with `body` as `content_type`.
async fn items_as(app: &TestApp, key: &str, id: &str, content_type: &str, body: String) -> Reply {
    send(
        app.server
            .request(Method::POST, &format!("/api/v3/batches/{id}/items"))
            .bearer_auth(key)
            .header(CONTENT_TYPE, content_type)
            .body(body),
    )
    .await
}

async fn items(app: &TestApp, id: &str, lines: &[Value]) -> Reply {
    items_as(app, &app.dev_key, id, NDJSON, ndjson(lines)).await
}

/// An item of task `task` at `index` with payload `{"i": index}`.
fn item(index: u32, task: &str) -> Value {
    json!({"index": index, "task": task, "payload": {"i": index}})
}

async fn retrieve(app: &TestApp, key: &str, version: &str, id: &str) -> Reply {
    send(
        app.server
            .request(Method::GET, &format!("/api/{version}/batches/{id}"))
            .bearer_auth(key),
    )
    .await
}

/// `redact` for a body whose top-level `id` is a batch id (it expects run ids there).
fn redact_batch(body: &Value) -> Value {
    let mut body = body.clone();
    let id = body
        .as_object_mut()
        .and_then(|fields| fields.remove("id"))
        .expect("a body with an id");
    assert_friendly_id(id.as_str().expect("a string id"), "batch");
    let mut redacted = redact(&body);
    redacted["id"] = json!("<batch id>");
    redacted
}

/// A batch body with its id and run ids checked against `id` and `runs`, then redacted.
fn redacted_batch(body: &Value, id: &str, runs: &[String]) -> Value {
    assert_eq!(body["id"], json!(id));
    assert_eq!(body["runs"], json!(runs), "run ids in index order");
    let mut body = body.clone();
    body["runs"] = json!(runs.len());
    for field in ["processingCompletedAt"] {
        if let Some(value) = body.get(field) {
            timestamp(value);
            body[field] = json!("<timestamp>");
        }
    }
    redact_batch(&body)
}

#[tokio::test]
async fn two_phase_batch_dedups_indexes_seals_and_retrieves_in_index_order() {
    let app = TestApp::start();
    app.server
        .register_worker(&app.dev_key, &["batch-task"])
        .await;
    let id = create_new(&app, 3).await;

    // A first stream missing index 1: accepted, not sealed, the SDK is told what is missing.
    let reply = items(&app, &id, &[item(2, "batch-task"), item(0, "batch-task")]).await;
    assert_eq!(
        (reply.status, &reply.body),
        (
            StatusCode::OK,
            &json!({"id": id, "itemsAccepted": 2, "itemsDeduplicated": 0, "sealed": false,
                    "enqueuedCount": 2, "expectedCount": 3})
        ),
        "{reply:?}"
    );
    let pending = retrieve(&app, &app.dev_key, "v2", &id).await;
    assert_eq!(pending.status, StatusCode::OK, "{pending:?}");
    assert_eq!(pending.body["status"], json!("PENDING"));
    assert_eq!(pending.body["runs"].as_array().map(Vec::len), Some(2));

    // The SDK retries the whole stream: only index 1 is new, and the batch seals.
    let all = [
        item(0, "batch-task"),
        item(1, "batch-task"),
        item(2, "batch-task"),
    ];
    let reply = items(&app, &id, &all).await;
    assert_eq!(
        (reply.status, &reply.body),
        (
            StatusCode::OK,
            &json!({"id": id, "itemsAccepted": 1, "itemsDeduplicated": 2, "sealed": true})
        ),
        "{reply:?}"
    );
    items(&app, &id, &all).await.assert_error(
        StatusCode::UNPROCESSABLE_ENTITY,
        &format!("Batch {id} is already sealed and cannot accept more items"),
    );

    let v2 = retrieve(&app, &app.dev_key, "v2", &id).await;
    assert_eq!(v2.status, StatusCode::OK, "{v2:?}");
    let runs: Vec<String> = v2.body["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        redacted_batch(&v2.body, &id, &runs),
        json!({
            "id": "<batch id>", "status": "COMPLETED", "createdAt": "<timestamp>",
            "updatedAt": "<timestamp>", "processingCompletedAt": "<timestamp>", "runCount": 3,
            "runs": 3, "processing": {"completedAt": "<timestamp>", "errors": []}
        })
    );
    let v1 = retrieve(&app, &app.dev_key, "v1", &id).await;
    assert_eq!(
        redacted_batch(&v1.body, &id, &runs),
        json!({
            "id": "<batch id>", "status": "COMPLETED", "createdAt": "<timestamp>",
            "updatedAt": "<timestamp>", "runCount": 3, "runs": 3
        })
    );
    for (index, run_id) in runs.iter().enumerate() {
        let run = app.server.run(&app.dev_key, run_id).await;
        assert_eq!(
            (
                &run["batchId"],
                &run["triggerFunction"],
                &run["payload"],
                &run["status"]
            ),
            (
                &json!(id),
                &json!("batchTrigger"),
                &json!({"i": index}),
                &json!("QUEUED")
            ),
            "run {index}"
        );
    }

    // Another environment sees nothing.
    let prod = app.keys_create("prod");
    for version in ["v1", "v2"] {
        retrieve(&app, &prod, version, &id)
            .await
            .assert_error(StatusCode::NOT_FOUND, "Not found");
    }
    items_as(&app, &prod, &id, NDJSON, ndjson(&[item(0, "batch-task")]))
        .await
        .assert_error(
            StatusCode::UNPROCESSABLE_ENTITY,
            &format!("Batch {id} not found"),
        );
}

#[tokio::test]
async fn batch_create_validates_and_honours_its_idempotency_key() {
    let app = TestApp::start();
    for count in [0, -1, 1001] {
        create(&app, &app.dev_key, &json!({"runCount": count}))
            .await
            .assert_error(
                StatusCode::BAD_REQUEST,
                "runCount: must be between 1 and 1000",
            );
    }
    let body = json!({
        "runCount": 2, "idempotencyKey": "a".repeat(64),
        "idempotencyKeyOptions": {"key": "nightly", "scope": "global"}
    });
    let first = create(&app, &app.dev_key, &body).await;
    assert_eq!(first.status, StatusCode::ACCEPTED, "{first:?}");
    let id = batch_id(&first);
    assert_eq!(
        first.body,
        json!({"id": id, "runCount": 2, "isCached": false, "idempotencyKey": "nightly"})
    );
    let again = create(&app, &app.dev_key, &body).await;
    assert_eq!(
        (again.status, &again.body),
        (
            StatusCode::ACCEPTED,
            &json!({"id": id, "runCount": 2, "isCached": true, "idempotencyKey": "nightly"})
        )
    );
    let prod = app.keys_create("prod");
    let other_env = create(&app, &prod, &body).await;
    assert_eq!(other_env.body["isCached"], json!(false), "{other_env:?}");
    assert_ne!(batch_id(&other_env), id);

    let too_large = json!({"runCount": 1, "taskIdentifiers": ["x".repeat(140_000)]});
    create(&app, &app.dev_key, &too_large).await.assert_error(
        StatusCode::PAYLOAD_TOO_LARGE,
        "Request body too large (limit 131072 bytes)",
    );
}

#[tokio::test]
async fn batch_items_refuses_bad_requests_before_storing_anything() {
    let app = TestApp::start();
    let id = create_new(&app, 2).await;
    let good = ndjson(&[item(0, "t")]);
    items_as(&app, &app.dev_key, &id, "application/json", good.clone())
        .await
        .assert_error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Content-Type must be application/x-ndjson or application/ndjson",
        );
    let reply = items_as(
        &app,
        &app.dev_key,
        &id,
        NDJSON,
        format!("{good}{{not json\n"),
    )
    .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{reply:?}");
    assert!(
        reply.body["error"]
            .as_str()
            .unwrap()
            .starts_with("Invalid JSON at line 2"),
        "{reply:?}"
    );
    items_as(
        &app,
        &app.dev_key,
        &id,
        NDJSON,
        ndjson(&[item(0, "t"), item(2, "t")]),
    )
    .await
    .assert_error(
        StatusCode::UNPROCESSABLE_ENTITY,
        "Item index 2 exceeds batch runCount 2",
    );
    let reply = items_as(
        &app,
        &app.dev_key,
        &id,
        NDJSON,
        ndjson(&[json!({"index": 0})]),
    )
    .await;
    assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY, "{reply:?}");
    items_as(&app, &app.dev_key, "batch_nope", NDJSON, good.clone())
        .await
        .assert_error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Batch batch_nope not found",
        );
    // Ids that are no batch ids answer as unknown ones do.
    for unknown in ["not-a-batch", "batch_NOPE", "run_abc", "batch_"] {
        items_as(&app, &app.dev_key, unknown, NDJSON, good.clone())
            .await
            .assert_error(
                StatusCode::UNPROCESSABLE_ENTITY,
                &format!("Batch {unknown} not found"),
            );
        for version in ["v1", "v2"] {
            retrieve(&app, &app.dev_key, version, unknown)
                .await
                .assert_error(StatusCode::NOT_FOUND, "Not found");
        }
    }
    let get = send(
        app.server
            .request(Method::GET, &format!("/api/v3/batches/{id}/items"))
            .bearer_auth(&app.dev_key),
    )
    .await;
    assert_eq!(get.status, StatusCode::METHOD_NOT_ALLOWED, "{get:?}");

    // None of the refused requests stored an index: the application/ndjson spelling works
    // and both items are new.
    let reply = items_as(
        &app,
        &app.dev_key,
        &id,
        "application/ndjson",
        ndjson(&[item(0, "t"), item(1, "t")]),
    )
    .await;
    assert_eq!(
        reply.body,
        json!({"id": id, "itemsAccepted": 2, "itemsDeduplicated": 0, "sealed": true})
    );
}

#[tokio::test]
async fn refused_item_is_a_processing_error_and_runs_follow_trigger_rules() {
    let app = TestApp::start();
    let id = create_new(&app, 4).await;
    let eleven_tags: Vec<String> = (0..11).map(|i| format!("tag-{i:02}")).collect();
    let lines = [
        item(0, "no-worker"),
        json!({"index": 1, "task": "no-worker", "options": {"tags": eleven_tags}}),
        json!({"index": 2, "task": "no-worker", "options": {"delay": "1h", "idempotencyKey": "k2"}}),
        json!({"index": 3, "task": "no-worker", "options": {"idempotencyKey": "k2"}}),
    ];
    let reply = items(&app, &id, &lines).await;
    assert_eq!(
        reply.body,
        json!({"id": id, "itemsAccepted": 4, "itemsDeduplicated": 0, "sealed": true}),
        "{reply:?}"
    );
    let batch = retrieve(&app, &app.dev_key, "v2", &id).await.body;
    assert_eq!(
        batch["processing"]["errors"],
        json!([{"index": 1, "taskIdentifier": "no-worker",
                "error": "Runs can only have 10 tags, you're trying to set 11."}])
    );
    let runs = batch["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 3, "{batch}");
    assert_eq!(
        runs[1], runs[2],
        "index 3 returned index 2's run under their key"
    );
    let first = app
        .server
        .run(&app.dev_key, runs[0].as_str().unwrap())
        .await;
    assert_eq!(
        first["status"],
        json!("WAITING_FOR_DEPLOY"),
        "no worker serves the task"
    );
    let delayed = app
        .server
        .run(&app.dev_key, runs[1].as_str().unwrap())
        .await;
    assert_eq!(delayed["status"], json!("DELAYED"));
}

#[tokio::test]
async fn one_shot_batch_triggers_every_item_in_one_request() {
    let app = TestApp::start();
    app.server.register_worker(&app.dev_key, &["a", "b"]).await;
    let request = || {
        app.server
            .request(Method::POST, "/api/v1/tasks/batch")
            .bearer_auth(&app.dev_key)
    };
    let body = json!({"items": [
        {"task": "a", "payload": {"n": 1}},
        {"task": "b", "payload": {"n": 2}, "options": {"idempotencyKey": "b-key"}},
        {"task": "b", "payload": {"n": 3}, "options": {"idempotencyKey": "b-key"}},
    ]});
    let reply = send(request().header("idempotency-key", "whole").json(&body)).await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{reply:?}");
    let id = batch_id(&reply);
    let runs = reply.body["runs"].clone();
    assert_eq!(
        redact_batch(&reply.body),
        json!({"id": "<batch id>", "isCached": false, "idempotencyKey": "whole", "runs": [
            {"id": "<run id>", "taskIdentifier": "a", "isCached": false},
            {"id": "<run id>", "taskIdentifier": "b", "isCached": false, "idempotencyKey": "b-key"},
            {"id": "<run id>", "taskIdentifier": "b", "isCached": true, "idempotencyKey": "b-key"},
        ]})
    );
    assert_eq!(runs[1]["id"], runs[2]["id"]);
    let run = app
        .server
        .run(&app.dev_key, runs[0]["id"].as_str().unwrap())
        .await;
    assert_eq!(
        (&run["batchId"], &run["status"], &run["payload"]),
        (&json!(id), &json!("QUEUED"), &json!({"n": 1}))
    );
    let batch = retrieve(&app, &app.dev_key, "v2", &id).await.body;
    assert_eq!(batch["status"], json!("COMPLETED"));
    assert_eq!(batch["runCount"], json!(3));

    // The same batch key answers the same batch.
    let again = send(request().header("idempotency-key", "whole").json(&body)).await;
    assert_eq!(again.status, StatusCode::ACCEPTED);
    assert_eq!(
        (&again.body["id"], &again.body["isCached"]),
        (&json!(id), &json!(true))
    );

    let too_many: Vec<Value> = (0..501).map(|_| json!({"task": "a"})).collect();
    send(request().json(&json!({"items": too_many})))
        .await
        .assert_error(
            StatusCode::BAD_REQUEST,
            "items: must hold 1 to 500 items, got 501",
        );
    send(
        request()
            .json(&json!({"items": [{"task": "a"}, {"task": "a", "options": {"maxAttempts": 0}}]})),
    )
    .await
    .assert_error(
        StatusCode::BAD_REQUEST,
        "items[1]: options.maxAttempts: must be at least 1",
    );
}

/// A full batch of 1,000 items in one items request (one multi-row insert) over HTTP.
#[tokio::test]
async fn thousand_item_batch_in_one_request() {
    let app = TestApp::start();
    app.server.register_worker(&app.dev_key, &["bulk"]).await;
    let id = create_new(&app, 1000).await;
    let lines: Vec<Value> = (0..1000).map(|i| item(i, "bulk")).collect();
    let started = Instant::now();
    let reply = items(&app, &id, &lines).await;
    eprintln!(
        "1000 batch items over HTTP (SQLite): {:?}",
        started.elapsed()
    );
    assert_eq!(
        reply.body,
        json!({"id": id, "itemsAccepted": 1000, "itemsDeduplicated": 0, "sealed": true}),
        "{reply:?}"
    );
    let batch = retrieve(&app, &app.dev_key, "v2", &id).await.body;
    let runs = batch["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 1000);
    let last = app
        .server
        .run(&app.dev_key, runs[999].as_str().unwrap())
        .await;
    assert_eq!(last["payload"], json!({"i": 999}));
}

/// A batch triggered from inside a run (`parentRunId`, `resumeParentOnCompletion`): its
/// runs hang under the parent, which waits for them, and say `batchTriggerAndWait`.
#[tokio::test]
async fn batch_runs_hang_under_the_parent_run() {
    let app = TestApp::start();
    let parent = app
        .server
        .trigger_new(&app.dev_key, "parent", &json!({}))
        .await;
    // Only an executing run can wait for a batch.
    let worker = app.server.register_worker(&app.dev_key, &["parent"]).await;
    let (leased, attempt) = app.server.dequeue_one(&app.dev_key, &worker).await;
    assert_eq!(leased, parent);
    let started = app
        .server
        .worker_call(
            &app.dev_key,
            &worker,
            "start",
            &json!({"attemptIds": [attempt]}),
        )
        .await;
    assert_eq!(started.status, StatusCode::OK, "{started:?}");
    let reply = create(
        &app,
        &app.dev_key,
        &json!({"runCount": 1, "parentRunId": parent, "resumeParentOnCompletion": true}),
    )
    .await;
    let id = batch_id(&reply);
    let reply = items(&app, &id, &[item(0, "child")]).await;
    assert_eq!(reply.body["sealed"], json!(true), "{reply:?}");
    let runs = retrieve(&app, &app.dev_key, "v2", &id).await.body["runs"].clone();
    let child = app
        .server
        .run(&app.dev_key, runs[0].as_str().unwrap())
        .await;
    assert_eq!(
        (
            &child["depth"],
            &child["triggerFunction"],
            &child["relatedRuns"]["parent"]["id"],
            &child["relatedRuns"]["root"]["id"]
        ),
        (
            &json!(1),
            &json!("batchTriggerAndWait"),
            &json!(parent),
            &json!(parent)
        ),
        "{child}"
    );
    let parent_body = app.server.run(&app.dev_key, &parent).await;
    assert_eq!(
        parent_body["relatedRuns"]["children"][0]["id"], runs[0],
        "{parent_body}"
    );
    assert_eq!(parent_body["status"], "FROZEN", "{parent_body}");
}
