//! Actions on existing runs, end to end over HTTP against a server built as `runnel
//! serve` builds it, in the test process (`runnel_testkit::TestApp`):
//! replay, reschedule, tags, metadata, result and idempotency key reset (contract §2.1
//! rows 14–19 and 21), including each route's own error bodies.

use chrono::{Duration, Utc};
use reqwest::{Method, StatusCode};
use runnel_testkit::{redact, send, timestamp, Server, TestApp, CURRENT_API_VERSION};
use serde_json::{json, Value};

/// `method path` with the key and, when given, a JSON body.
async fn call(
    server: &Server,
    key: &str,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> runnel_testkit::Reply {
    let mut request = server.request(method, path).bearer_auth(key);
    if let Some(body) = body {
        request = request.json(&body);
    }
    send(request).await
}

#[tokio::test]
async fn replay_triggers_a_new_run_with_the_same_inputs_on_the_latest_version() {
    let app = TestApp::start();
    let (server, key) = (&app.server, app.dev_key.as_str());
    server.register_worker(key, &["t"]).await;
    // Locked to a version that does not exist: the original waits for a deploy.
    let original = server
        .trigger_new(
            key,
            "t",
            &json!({"payload": {"a": 1}, "options": {
                "tags": ["x", "y"], "metadata": {"m": 1}, "test": true,
                "queue": {"name": "q1"}, "concurrencyKey": "ck", "machine": "small-2x",
                "lockToVersion": "20990101.1", "idempotencyKey": "replayed-key",
            }}),
        )
        .await;
    assert_eq!(
        server.run(key, &original).await["status"],
        "WAITING_FOR_DEPLOY"
    );
    assert_eq!(server.cancel(key, &original).await.status, StatusCode::OK);

    let reply = call(
        server,
        key,
        Method::POST,
        &format!("/api/v1/runs/{original}/replay"),
        None,
    )
    .await;
    assert_eq!(
        (reply.status, redact(&reply.body)),
        (StatusCode::OK, json!({"id": "<run id>"})),
        "{reply:?}"
    );
    let replay = reply.run_id();
    assert_ne!(replay, original);
    let run = server.run(key, &replay).await;
    // No version lock: the registered version serves it, so it is queued.
    assert_eq!(run["status"], "QUEUED", "{run}");
    assert_eq!(run["payload"], json!({"a": 1}));
    assert_eq!(run["tags"], json!(["x", "y"]));
    assert_eq!(run["metadata"], json!({"m": 1}));
    assert_eq!(run["isTest"], true);
    assert_eq!(run.get("version"), None, "{run}");
    assert_eq!(run.get("idempotencyKey"), None, "{run}");

    let missing = call(
        server,
        key,
        Method::POST,
        "/api/v1/runs/run_0000000000000000000000aa/replay",
        None,
    )
    .await;
    missing.assert_error(StatusCode::NOT_FOUND, "Run not found");
    // Another environment's key sees no such run either.
    let prod = app.keys_create("prod");
    let foreign = call(
        server,
        &prod,
        Method::POST,
        &format!("/api/v1/runs/{original}/replay"),
        None,
    )
    .await;
    foreign.assert_error(StatusCode::NOT_FOUND, "Run not found");
}

/// How many runs the key's environment holds.
async fn run_count(server: &Server, key: &str) -> usize {
    let reply = call(
        server,
        key,
        Method::GET,
        "/api/v1/runs?page[size]=100",
        None,
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    reply.body["data"].as_array().map_or(0, Vec::len)
}

/// Whether the list narrowed by `filters` shows run `id`.
async fn listed(server: &Server, key: &str, filters: &str, id: &str) -> bool {
    let reply = call(
        server,
        key,
        Method::GET,
        &format!("/api/v1/runs?{filters}"),
        None,
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    reply.body["data"]
        .as_array()
        .is_some_and(|runs| runs.iter().any(|run| run["id"] == id))
}

#[tokio::test]
async fn replay_applies_the_bodys_overrides_and_keeps_the_rest() {
    let app = TestApp::start();
    let (server, key) = (&app.server, app.dev_key.as_str());
    server.register_worker(key, &["t"]).await;
    let original = server
        .trigger_new(
            key,
            "t",
            &json!({"payload": {"a": 1}, "options": {
                "tags": ["x"], "metadata": {"m": 1}, "queue": {"name": "q1"},
                "concurrencyKey": "ck", "machine": "small-2x",
            }}),
        )
        .await;
    let path = format!("/api/v1/runs/{original}/replay");
    let replay = |body: Value| call(server, key, Method::POST, &path, Some(body));

    // Every override the SDK's `ReplayRunRequestBody` has, as the SDK sends them.
    let reply = replay(json!({
        "payload": "{\"json\":{\"b\":2}}", "payloadType": "application/super+json",
        "tags": ["y", "z"], "metadata": {"n": 2}, "queue": "q2", "concurrencyKey": 7,
        "machine": "micro", "delay": "1h", "ttl": "10m", "maxAttempts": 2,
        "maxDuration": 30, "priority": 5, "idempotencyKey": "replay-key",
        "idempotencyKeyTTL": "1h", "region": "eu-central-1",
    }))
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    let run = server.run(key, &reply.run_id()).await;
    assert_eq!(run["status"], "DELAYED", "{run}");
    assert_eq!(run["payload"], json!({"b": 2}));
    assert_eq!(run["tags"], json!(["y", "z"]));
    assert_eq!(run["metadata"], json!({"n": 2}));
    assert_eq!(run["ttl"], "10m");
    assert_eq!(run["idempotencyKey"], "replay-key");
    // Queue and machine are not in the retrieve answer; the list filters on them.
    // (Concurrency key, attempts, duration and priority: runnel-core's replay tests.)
    assert!(
        listed(
            server,
            key,
            "filter[queue]=q2&filter[machine]=micro",
            &reply.run_id()
        )
        .await
    );

    // A version override locks the new run to it (none exists: it waits for a deploy).
    let locked = replay(json!({"version": "20990101.1"})).await;
    let run = server.run(key, &locked.run_id()).await;
    assert_eq!(
        (&run["status"], &run["version"]),
        (&json!("WAITING_FOR_DEPLOY"), &json!("20990101.1"))
    );

    // Only the payload: everything else is the original's.
    let reply = replay(json!({"payload": [1, 2]})).await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    let run = server.run(key, &reply.run_id()).await;
    assert_eq!(run["payload"], json!([1, 2]));
    assert_eq!(run["tags"], json!(["x"]));
    assert_eq!(run["metadata"], json!({"m": 1}));
    assert!(
        listed(
            server,
            key,
            "filter[queue]=q1&filter[machine]=small-2x",
            &reply.run_id()
        )
        .await
    );

    // A bad override is refused as a trigger would refuse it, naming the body's field,
    // and creates nothing.
    let before = run_count(server, key).await;
    let too_many: Vec<String> = (0..11).map(|i| format!("t{i}")).collect();
    for (body, status, message) in [
        (json!({"tags": too_many}), StatusCode::UNPROCESSABLE_ENTITY, "Runs can only have 10 tags, you're trying to set 11."),
        (json!({"machine": "huge"}), StatusCode::BAD_REQUEST, "machine: must be one of micro, small-1x, small-2x, medium-1x, medium-2x, large-1x, large-2x"),
        (json!({"ttl": "soon"}), StatusCode::BAD_REQUEST, "ttl: \"soon\" is not a duration like 10m, 1h42m or 3600s"),
        (json!({"version": "v".repeat(129)}), StatusCode::BAD_REQUEST, "version: must be at most 128 characters"),
        (json!({"queue": "!!"}), StatusCode::BAD_REQUEST, "queue: must contain at least one of a-z, A-Z, 0-9, _, -, /"),
        (json!({"payloadType": "application/json"}), StatusCode::BAD_REQUEST, "payloadType: only allowed with payload"),
        (json!({"payload": "x", "payloadType": "text/plain"}), StatusCode::BAD_REQUEST, "payloadType: must be application/json or application/super+json"),
        (json!({"metadata": {"big": "m".repeat(300_000)}}), StatusCode::PAYLOAD_TOO_LARGE, "Metadata exceeds maximum size of 262144 bytes"),
    ] {
        replay(body.clone()).await.assert_error(status, message);
    }
    for body in [
        json!({"parentRunId": original}),
        json!([]),
        json!({"tags": 5}),
    ] {
        let reply = replay(body.clone()).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{body}: {reply:?}");
    }
    assert_eq!(run_count(server, key).await, before);
}

#[tokio::test]
async fn reschedule_moves_a_delayed_run_and_refuses_others() {
    let app = TestApp::start();
    let (server, key) = (&app.server, app.dev_key.as_str());
    server.register_worker(key, &["t"]).await;
    let delayed = server
        .trigger_new(key, "t", &json!({"options": {"delay": "1h", "ttl": "10m"}}))
        .await;
    let queued = server.trigger_new(key, "t", &json!({})).await;
    let path = format!("/api/v1/runs/{delayed}/reschedule");

    // Timestamps are stored to the millisecond, so the server's "now" can read up to 1 ms
    // earlier than this one.
    let before = Utc::now() - Duration::milliseconds(1);
    let reply = send(
        server
            .request(Method::POST, &path)
            .bearer_auth(key)
            .header("x-trigger-api-version", CURRENT_API_VERSION)
            .json(&json!({"delay": "2h"})),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    let until = timestamp(&reply.body["delayedUntil"]);
    assert!(
        until >= before + Duration::hours(2) && until <= Utc::now() + Duration::hours(2),
        "{reply:?}"
    );
    // The same body as retrieve with that header.
    let retrieved = server.retrieve_as(key, &delayed, CURRENT_API_VERSION).await;
    assert_eq!(reply.body, retrieved.body);
    assert_eq!(reply.body["status"], "DELAYED");

    let date = (Utc::now() + Duration::days(1))
        .format("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string();
    let reply = call(
        server,
        key,
        Method::POST,
        &path,
        Some(json!({"delay": date})),
    )
    .await;
    assert_eq!(
        (reply.status, &reply.body["delayedUntil"]),
        (StatusCode::OK, &json!(date))
    );

    let past = (Utc::now() - Duration::days(1)).to_rfc3339();
    for bad in ["soon", past.as_str()] {
        let reply = call(
            server,
            key,
            Method::POST,
            &path,
            Some(json!({"delay": bad})),
        )
        .await;
        reply.assert_error(StatusCode::BAD_REQUEST, &format!("Invalid delay: {bad}"));
    }
    let reply = call(
        server,
        key,
        Method::POST,
        &format!("/api/v1/runs/{queued}/reschedule"),
        Some(json!({"delay": "1h"})),
    )
    .await;
    reply.assert_error(
        StatusCode::BAD_REQUEST,
        "Cannot reschedule a run that is not delayed",
    );
    let reply = call(server, key, Method::POST, &path, Some(json!({}))).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(reply.body["error"], "Invalid request body", "{reply:?}");
    assert!(reply.body["issues"].is_array(), "{reply:?}");
    let reply = call(
        server,
        key,
        Method::POST,
        "/api/v1/runs/run_0000000000000000000000aa/reschedule",
        Some(json!({"delay": "1h"})),
    )
    .await;
    reply.assert_error(StatusCode::NOT_FOUND, "Run not found");
}

#[tokio::test]
async fn tags_are_added_as_a_sorted_union_of_at_most_ten() {
    let app = TestApp::start();
    let (server, key) = (&app.server, app.dev_key.as_str());
    let id = server
        .trigger_new(key, "t", &json!({"options": {"tags": ["m"]}}))
        .await;
    let path = format!("/api/v1/runs/{id}/tags");
    let add = |tags: Value| {
        call(
            server,
            key,
            Method::POST,
            &path,
            Some(json!({"tags": tags})),
        )
    };

    let reply = add(json!(["b", "a", " ", "m"])).await;
    assert_eq!(
        (reply.status, reply.body),
        (
            StatusCode::OK,
            json!({"message": "Successfully set 2 new tags."})
        )
    );
    let reply = add(json!("a")).await;
    assert_eq!(
        (reply.status, reply.body),
        (StatusCode::OK, json!({"message": "No new tags to add"}))
    );
    assert_eq!(server.run(key, &id).await["tags"], json!(["a", "b", "m"]));

    let reply = add(json!(["c", "d", "e", "f", "g", "h", "i", "j"])).await;
    reply.assert_error(
        StatusCode::UNPROCESSABLE_ENTITY,
        "Runs can only have 10 tags, you're trying to set 11. These tags have not been set: 'c', 'd', 'e', 'f', 'g', 'h', 'i', 'j'.",
    );
    assert_eq!(server.run(key, &id).await["tags"], json!(["a", "b", "m"]));

    for bad in [
        json!({"tags": 5}),
        json!({"tags": [1]}),
        json!({}),
        json!({"tags": "x".repeat(129)}),
    ] {
        let reply = call(server, key, Method::POST, &path, Some(bad.clone())).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{bad}: {reply:?}");
        assert_eq!(
            reply.body["error"], "Invalid request body",
            "{bad}: {reply:?}"
        );
        assert!(
            reply.body["issues"]
                .as_array()
                .is_some_and(|i| !i.is_empty()),
            "{bad}: {reply:?}"
        );
    }
    let reply = call(
        server,
        key,
        Method::POST,
        "/api/v1/runs/run_0000000000000000000000aa/tags",
        Some(json!({"tags": "a"})),
    )
    .await;
    reply.assert_error(StatusCode::NOT_FOUND, "Run not found");
}

#[tokio::test]
async fn metadata_is_replaced_or_operated_on() {
    let app = TestApp::start();
    let (server, key) = (&app.server, app.dev_key.as_str());
    let id = server
        .trigger_new(
            key,
            "t",
            &json!({"options": {"metadata": {"count": 1, "logs": ["a"]}}}),
        )
        .await;
    let path = format!("/api/v1/runs/{id}/metadata");
    let put = |body: Value| call(server, key, Method::PUT, &path, Some(body));

    let reply = put(json!({"operations": [
        {"type": "increment", "key": "count", "value": 2},
        {"type": "append", "key": "logs", "value": "b"},
        {"type": "set", "key": "$.nested.step", "value": "load"},
        {"type": "delete", "key": "missing"},
    ]}))
    .await;
    let want = json!({"count": 3, "logs": ["a", "b"], "nested": {"step": "load"}});
    assert_eq!(
        (reply.status, &reply.body),
        (StatusCode::OK, &json!({ "metadata": want })),
        "{reply:?}"
    );
    assert_eq!(server.run(key, &id).await["metadata"], want);
    let raw = call(server, key, Method::GET, &path, None).await;
    assert_eq!(raw.status, StatusCode::OK);
    assert_eq!(raw.body["metadataType"], "application/json");
    let text = raw.body["metadata"]
        .as_str()
        .expect("the raw stored string");
    assert_eq!(serde_json::from_str::<Value>(text).unwrap(), want);

    // A whole replacement; then operations, which win over `metadata` when both are
    // sent (as upstream); parent and root operations go to the run itself when it has
    // neither.
    let reply = put(json!({"metadata": {"fresh": true}})).await;
    assert_eq!(
        reply.body,
        json!({"metadata": {"fresh": true}}),
        "{reply:?}"
    );
    let reply = put(json!({
        "metadata": {"ignored": true},
        "operations": [{"type": "set", "key": "more", "value": 1}],
        "parentOperations": [{"type": "increment", "key": "viaParent", "value": 1}],
        "rootOperations": [{"type": "increment", "key": "viaParent", "value": 1}],
    }))
    .await;
    assert_eq!(
        reply.body,
        json!({"metadata": {"fresh": true, "more": 1, "viaParent": 2}}),
        "{reply:?}"
    );

    let reply =
        put(json!({"operations": [{"type": "set", "key": "$.__proto__.x", "value": 1}]})).await;
    reply.assert_error(
        StatusCode::BAD_REQUEST,
        "Invalid metadata key: $.__proto__.x",
    );
    let reply = put(json!({"metadata": {"big": "x".repeat(262_144)}})).await;
    reply.assert_error(
        StatusCode::PAYLOAD_TOO_LARGE,
        "Metadata exceeds maximum size of 262144 bytes",
    );
    let reply = put(json!({"operations": [{"type": "frobnicate"}]})).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{reply:?}");
    // Nothing of the refused updates was stored.
    assert_eq!(
        server.run(key, &id).await["metadata"],
        json!({"fresh": true, "more": 1, "viaParent": 2})
    );

    // A run that finished within the hour can still be updated.
    assert_eq!(server.cancel(key, &id).await.status, StatusCode::OK);
    let reply = put(json!({"operations": [{"type": "set", "key": "after", "value": 1}]})).await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");

    for method in [Method::PUT, Method::GET] {
        let body = (method == Method::PUT).then(|| json!({"metadata": {}}));
        let reply = call(
            server,
            key,
            method,
            "/api/v1/runs/run_0000000000000000000000aa/metadata",
            body,
        )
        .await;
        reply.assert_error(StatusCode::NOT_FOUND, "Task Run not found");
    }
}

#[tokio::test]
async fn result_shows_finished_runs_only() {
    let app = TestApp::start();
    let (server, key) = (&app.server, app.dev_key.as_str());
    let worker = server.register_worker(key, &["t"]).await;
    let done = server.trigger_new(key, "t", &json!({})).await;
    server.run_one(key, &worker, json!({"sum": 3})).await;
    let canceled = server.trigger_new(key, "t", &json!({})).await;
    assert_eq!(server.cancel(key, &canceled).await.status, StatusCode::OK);
    let queued = server.trigger_new(key, "t", &json!({})).await;
    let result = |id: String| async move {
        call(
            server,
            key,
            Method::GET,
            &format!("/api/v1/runs/{id}/result"),
            None,
        )
        .await
    };

    let reply = result(done.clone()).await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    let duration = reply.body["usage"]["durationMs"]
        .as_i64()
        .expect("durationMs");
    assert!(duration >= 0);
    assert_eq!(
        reply.body,
        json!({
            "ok": true, "id": done, "output": "{\"sum\":3}", "outputType": "application/json",
            "usage": {"durationMs": duration}, "taskIdentifier": "t",
        })
    );
    let reply = result(canceled.clone()).await;
    assert_eq!(
        (reply.status, reply.body),
        (
            StatusCode::OK,
            json!({
                "ok": false, "id": canceled,
                "error": {"type": "INTERNAL_ERROR", "code": "TASK_RUN_CANCELLED", "message": "Run was canceled"},
                "usage": {"durationMs": 0}, "taskIdentifier": "t",
            })
        )
    );
    for id in [queued, "run_0000000000000000000000aa".to_owned()] {
        result(id).await.assert_error(
            StatusCode::NOT_FOUND,
            "Run either doesn't exist or is not finished",
        );
    }
}

#[tokio::test]
async fn idempotency_key_reset_lets_the_key_create_a_new_run() {
    let app = TestApp::start();
    let (server, key) = (&app.server, app.dev_key.as_str());
    let user_key = "order/42 é";
    let body = json!({"options": {"idempotencyKey": user_key}});
    let trigger = || server.trigger(key, "t", &body);
    let first = trigger().await.assert_new_run();
    assert_eq!(trigger().await.assert_cached_run(), first);
    let path = "/api/v1/idempotencyKeys/order%2F42%20%C3%A9/reset";

    let reply = call(
        server,
        key,
        Method::POST,
        path,
        Some(json!({"taskIdentifier": "other"})),
    )
    .await;
    reply.assert_error(
        StatusCode::NOT_FOUND,
        &format!("No runs found with idempotency key: {user_key} and task: other"),
    );
    assert_eq!(trigger().await.assert_cached_run(), first);

    let reply = call(
        server,
        key,
        Method::POST,
        path,
        Some(json!({"taskIdentifier": "t"})),
    )
    .await;
    assert_eq!(
        (reply.status, reply.body),
        (StatusCode::OK, json!({ "id": user_key }))
    );
    let second = trigger().await.assert_new_run();
    assert_ne!(second, first);
    // The old run no longer shows the key; the new one does.
    assert_eq!(server.run(key, &first).await.get("idempotencyKey"), None);
    assert_eq!(server.run(key, &second).await["idempotencyKey"], user_key);

    // The v4 SDK sends its hash as the key and the user's own key in the options; retrieve
    // shows the user's key until a reset, and no key after it.
    let hashed = json!({"options": {
        "idempotencyKey": "c0ffee",
        "idempotencyKeyOptions": {"key": "order-43", "scope": "global"},
    }});
    let sdk_style = server.trigger(key, "t", &hashed).await.assert_new_run();
    assert_eq!(
        server.run(key, &sdk_style).await["idempotencyKey"],
        "order-43"
    );
    let reply = call(
        server,
        key,
        Method::POST,
        "/api/v1/idempotencyKeys/c0ffee/reset",
        Some(json!({"taskIdentifier": "t"})),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    assert_eq!(
        server.run(key, &sdk_style).await.get("idempotencyKey"),
        None
    );
    assert_ne!(
        server.trigger(key, "t", &hashed).await.assert_new_run(),
        sdk_style
    );

    let reply = call(server, key, Method::POST, path, Some(json!({}))).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{reply:?}");
    let reply = call(
        server,
        key,
        Method::POST,
        path,
        Some(json!({"taskIdentifier": ""})),
    )
    .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{reply:?}");
}
