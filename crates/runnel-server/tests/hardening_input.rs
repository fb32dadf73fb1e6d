//! Hostile JSON input against a server built as `runnel serve` builds it, in the test
//! process (`runnel_testkit::TestApp`) (issue 9, items 1 and 6): deep
//! metadata paths, values nested past the stored-value limit, bodies nested past the
//! body limit, and public token lifetimes. Every refusal is a 4xx naming its limit, the
//! server keeps answering, and whatever was accepted can be read (and replayed) again.
//!
//! Runs on both backends (the deep-path crash killed the process on each; in the test
//! process it would take the test binary down with it).

use reqwest::{Method, StatusCode};
use runnel_testkit::{send, Reply, Server, TestApp};
use serde_json::{json, Value};

/// `runnel_core::nesting::MAX_VALUE_DEPTH`, as docs/api.md states it.
const MAX_VALUE_DEPTH: usize = 64;
/// `runnel_core::nesting::MAX_BODY_DEPTH`, as docs/api.md states it.
const MAX_BODY_DEPTH: usize = 100;

/// `$.a.a…` with `segments` segments.
fn deep_key(segments: usize) -> String {
    format!("${}", ".a".repeat(segments))
}

/// `{"a":{"a":…"leaf"…}}`, `depth` objects deep, as JSON text (any depth).
fn deep_text(depth: usize) -> String {
    "{\"a\":".repeat(depth) + "\"leaf\"" + &"}".repeat(depth)
}

/// [`deep_text`] parsed (the parser takes up to 127 levels).
fn deep(depth: usize) -> Value {
    serde_json::from_str(&deep_text(depth)).expect("within the parser's limit")
}

fn too_deep(field: &str, depth: usize, limit: usize) -> String {
    format!("{field}: nested {depth} levels deep, more than the limit of {limit}")
}

async fn put_metadata(server: &Server, key: &str, run: &str, body: &Value) -> Reply {
    send(
        server
            .request(Method::PUT, &format!("/api/v1/runs/{run}/metadata"))
            .bearer_auth(key)
            .json(body),
    )
    .await
}

/// The stored metadata text (`GET /api/v1/runs/{id}/metadata`).
async fn stored_metadata(server: &Server, key: &str, run: &str) -> Value {
    let reply = send(
        server
            .request(Method::GET, &format!("/api/v1/runs/{run}/metadata"))
            .bearer_auth(key),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    reply.body["metadata"].clone()
}

async fn healthy(server: &Server) {
    let reply = send(server.request(Method::GET, "/healthz")).await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
}

/// `POST path` with a raw body (for text the client's own serializer would refuse).
async fn post_text(server: &Server, key: &str, path: &str, text: String) -> Reply {
    send(
        server
            .request(Method::POST, path)
            .bearer_auth(key)
            .header("content-type", "application/json")
            .body(text),
    )
    .await
}

#[tokio::test]
async fn a_metadata_path_thousands_of_levels_deep_is_refused_and_the_server_lives() {
    let app = TestApp::start();
    let (server, key) = (&app.server, app.dev_key.as_str());
    let run = server.trigger_new(key, "t", &json!({"payload": {}})).await;
    // 7,000 segments in a 14 KB key overflowed the stack and aborted the process; a
    // 2 MB key is the same within the body limit. Parent and root operations take the
    // same paths.
    for segments in [7_000, 1_000_000] {
        for operations in ["operations", "parentOperations", "rootOperations"] {
            let body =
                json!({ operations: [{"type": "set", "key": deep_key(segments), "value": 1}] });
            put_metadata(server, key, &run, &body).await.assert_error(
                StatusCode::BAD_REQUEST,
                &format!(
                    "Invalid metadata key: a path of {segments} segments, more than the limit of {MAX_VALUE_DEPTH}"
                ),
            );
        }
    }
    healthy(server).await;
    assert_eq!(stored_metadata(server, key, &run).await, Value::Null);
    let ok = put_metadata(
        server,
        key,
        &run,
        &json!({"operations": [{"type": "set", "key": "$.still.writable", "value": 1}]}),
    )
    .await;
    assert_eq!(
        (ok.status, ok.body),
        (
            StatusCode::OK,
            json!({"metadata": {"still": {"writable": 1}}})
        )
    );
}

#[tokio::test]
async fn metadata_at_the_depth_limit_is_stored_and_replays_and_one_level_deeper_is_refused() {
    let app = TestApp::start();
    let (server, key) = (&app.server, app.dev_key.as_str());
    let run = server.trigger_new(key, "t", &json!({"payload": 1})).await;

    let at_limit = put_metadata(
        server,
        key,
        &run,
        &json!({"operations": [{"type": "set", "key": deep_key(MAX_VALUE_DEPTH), "value": "leaf"}]}),
    )
    .await;
    assert_eq!(
        (at_limit.status, &at_limit.body),
        (
            StatusCode::OK,
            &json!({ "metadata": deep(MAX_VALUE_DEPTH) })
        )
    );
    let stored = stored_metadata(server, key, &run).await;

    // One level deeper, by every way of writing metadata: refused, nothing changes.
    let deeper = too_deep("metadata", MAX_VALUE_DEPTH + 1, MAX_VALUE_DEPTH);
    let refused = [
        json!({"operations": [{"type": "set", "key": deep_key(MAX_VALUE_DEPTH), "value": {}}]}),
        json!({"operations": [{"type": "append", "key": deep_key(MAX_VALUE_DEPTH), "value": 1}]}),
        json!({"operations": [{"type": "update", "value": deep(MAX_VALUE_DEPTH + 1)}]}),
        json!({"metadata": deep(MAX_VALUE_DEPTH + 1)}),
    ];
    for body in refused {
        put_metadata(server, key, &run, &body)
            .await
            .assert_error(StatusCode::BAD_REQUEST, &deeper);
    }
    // 130 levels, past what the parser reads back, made the run impossible to replay.
    put_metadata(
        server,
        key,
        &run,
        &json!({"operations": [{"type": "set", "key": deep_key(130), "value": 1}]}),
    )
    .await
    .assert_error(
        StatusCode::BAD_REQUEST,
        &format!("Invalid metadata key: a path of 130 segments, more than the limit of {MAX_VALUE_DEPTH}"),
    );
    assert_eq!(stored_metadata(server, key, &run).await, stored);

    let replayed = send(
        server
            .request(Method::POST, &format!("/api/v1/runs/{run}/replay"))
            .bearer_auth(key),
    )
    .await;
    assert_eq!(replayed.status, StatusCode::OK, "{replayed:?}");
    let copy = replayed.run_id();
    assert_eq!(
        server.run(key, &copy).await["metadata"],
        deep(MAX_VALUE_DEPTH)
    );
}

#[tokio::test]
async fn trigger_bodies_payloads_and_metadata_past_their_limits_are_refused() {
    let app = TestApp::start();
    let (server, key) = (&app.server, app.dev_key.as_str());
    let worker = server.register_worker(key, &["t"]).await;

    // At the limit: stored, leased to a worker (whose client parses it three levels
    // further down) and read back.
    let at_limit = deep(MAX_VALUE_DEPTH);
    let run = server
        .trigger_new(
            key,
            "t",
            &json!({"payload": at_limit, "options": {"metadata": at_limit}}),
        )
        .await;
    let dequeued = server
        .worker_call(key, &worker, "dequeue", &json!({"maxRuns": 1}))
        .await;
    assert_eq!(
        dequeued.body["runs"][0]["runId"],
        json!(run),
        "{dequeued:?}"
    );
    assert_eq!(dequeued.body["runs"][0]["payload"], at_limit);
    let body = server.run(key, &run).await;
    assert_eq!(
        (&body["payload"], &body["metadata"]),
        (&at_limit, &at_limit)
    );

    let deeper = deep(MAX_VALUE_DEPTH + 1);
    let refused = [
        (json!({"payload": deeper}), "payload"),
        (json!({"options": {"metadata": deeper}}), "options.metadata"),
        // The v4 SDK sends metadata serialized, with its type.
        (
            json!({"options": {"metadata": deeper.to_string(), "metadataType": "application/json"}}),
            "options.metadata",
        ),
        (
            json!({"payload": json!({"json": deeper}).to_string(), "options": {"payloadType": "application/super+json"}}),
            "payload",
        ),
    ];
    for (request, field) in refused {
        let expected_depth = if field == "payload" && request["payload"].is_string() {
            MAX_VALUE_DEPTH + 2
        } else {
            MAX_VALUE_DEPTH + 1
        };
        server.trigger(key, "t", &request).await.assert_error(
            StatusCode::BAD_REQUEST,
            &too_deep(field, expected_depth, MAX_VALUE_DEPTH),
        );
    }

    // Whole bodies: measured before parsing, at any depth, on every JSON route.
    for depth in [MAX_BODY_DEPTH + 1, 200_000] {
        let text = format!("{{\"payload\":{}}}", deep_text(depth - 1));
        let expected = too_deep("body", depth, MAX_BODY_DEPTH);
        post_text(server, key, "/api/v1/tasks/t/trigger", text.clone())
            .await
            .assert_error(StatusCode::BAD_REQUEST, &expected);
        post_text(
            server,
            key,
            &format!("/api/v1/workers/{worker}/complete"),
            text.clone(),
        )
        .await
        .assert_error(StatusCode::BAD_REQUEST, &expected);
        post_text(server, key, &format!("/api/v1/runs/{run}/tags"), text)
            .await
            .assert_error(StatusCode::BAD_REQUEST, &expected);
    }
    healthy(server).await;
}

/// An output nested past the limit fails its own attempt (it could not be served again);
/// the other completion of the same report still counts.
#[tokio::test]
async fn an_output_past_the_depth_limit_fails_its_attempt_alone() {
    let app = TestApp::start();
    let (server, key) = (&app.server, app.dev_key.as_str());
    let worker = server.register_worker(key, &["t"]).await;
    let once = json!({"payload": 1, "options": {"maxAttempts": 1}});
    let too_deep_run = server.trigger_new(key, "t", &once).await;
    let fine_run = server.trigger_new(key, "t", &once).await;
    let mut attempts = std::collections::HashMap::new();
    for _ in 0..2 {
        let (run, attempt) = server.dequeue_one(key, &worker).await;
        attempts.insert(run, attempt);
    }
    let (deep_attempt, fine_attempt) = (&attempts[&too_deep_run], &attempts[&fine_run]);
    let started = server
        .worker_call(
            key,
            &worker,
            "start",
            &json!({"attemptIds": [deep_attempt, fine_attempt]}),
        )
        .await;
    assert_eq!(started.status, StatusCode::OK, "{started:?}");

    let completed = server
        .worker_call(
            key,
            &worker,
            "complete",
            &json!({"completions": [
                {"attemptId": deep_attempt, "outcome": "success", "output": deep(MAX_VALUE_DEPTH + 1)},
                {"attemptId": fine_attempt, "outcome": "success", "output": deep(MAX_VALUE_DEPTH)},
            ]}),
        )
        .await;
    assert_eq!(completed.status, StatusCode::OK, "{completed:?}");
    assert_eq!(
        completed.body["results"],
        json!([
            {"attemptId": deep_attempt, "accepted": true, "runStatus": "FAILED"},
            {"attemptId": fine_attempt, "accepted": true, "runStatus": "COMPLETED"},
        ]),
        "{completed:?}"
    );
    let failed = server.run(key, &too_deep_run).await;
    assert_eq!(failed["status"], "FAILED", "{failed}");
    assert_eq!(
        failed["error"]["message"],
        json!(format!(
            "output: {}",
            too_deep("x", MAX_VALUE_DEPTH + 1, MAX_VALUE_DEPTH).trim_start_matches("x: ")
        )),
        "{failed}"
    );
    assert!(failed.get("output").is_none_or(Value::is_null), "{failed}");
    let fine = server.run(key, &fine_run).await;
    assert_eq!(fine["status"], "COMPLETED", "{fine}");
    assert_eq!(fine["output"], deep(MAX_VALUE_DEPTH));
}

#[tokio::test]
async fn public_token_lifetimes_are_capped_at_thirty_days() {
    let app = TestApp::start();
    let (server, key) = (&app.server, app.dev_key.as_str());
    let mint = |expiration: Value| {
        send(
            server
                .request(Method::POST, "/api/v1/auth/jwt")
                .bearer_auth(key)
                .json(&json!({"claims": {"scopes": ["read:runs"]}, "expirationTime": expiration})),
        )
    };
    let refusal = "expirationTime: must be at most 2592000 seconds (30 days) from now";
    let far = chrono::Utc::now().timestamp() + 31 * 86_400;
    for expiration in [json!(1e308), json!(far), json!("31d")] {
        mint(expiration)
            .await
            .assert_error(StatusCode::BAD_REQUEST, refusal);
    }
    for expiration in [json!("30d"), json!("1h")] {
        let minted = mint(expiration).await;
        assert_eq!(minted.status, StatusCode::OK, "{minted:?}");
        assert!(minted.body["token"].is_string(), "{minted:?}");
    }
}
