//! Waitpoint tokens (`/api/v1/waitpoints/tokens…`) and the in-task waits
//! (`/engine/v1/runs/{id}/wait/duration`, `…/waitpoints/tokens/{id}/wait`) over HTTP
//! against a real server (`runnel_testkit::TestApp`): the shapes `@trigger.dev/core`
//! parses, the refusals, and a run blocked and resumed by them.

use std::time::Duration;

use chrono::Utc;
use reqwest::{Method, StatusCode};
use runnel_core::status::ApiVersion;
use runnel_testkit::{
    assert_friendly_id, assert_no_nulls, send, timestamp, Reply, Server, TestApp,
};
use serde_json::{json, Value};

const TOKENS: &str = "/api/v1/waitpoints/tokens";
/// A well-formed waitpoint id that names no waitpoint.
const UNKNOWN: &str = "waitpoint_0000000000000000000000";

async fn post(server: &Server, key: &str, path: &str, body: &Value) -> Reply {
    send(
        server
            .request(Method::POST, path)
            .bearer_auth(key)
            .json(body),
    )
    .await
}

async fn get(server: &Server, key: &str, path: &str) -> Reply {
    send(server.request(Method::GET, path).bearer_auth(key)).await
}

/// Creates a token, asserting a new one; returns the whole reply.
async fn create(server: &Server, key: &str, body: &Value) -> Reply {
    let reply = post(server, key, TOKENS, body).await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    reply
}

fn token_id(reply: &Reply) -> String {
    let id = reply.body["id"].as_str().expect("id").to_owned();
    assert_friendly_id(&id, "waitpoint");
    id
}

/// A token item with its timestamps replaced by `"<timestamp>"` (asserting their form)
/// and its callback URL's secret by `"<secret>"` (asserting the URL's shape).
fn redact(server: &Server, item: &Value) -> Value {
    let mut item = item.clone();
    assert_no_nulls(&item);
    let fields = item.as_object_mut().expect("an object");
    for name in [
        "createdAt",
        "completedAt",
        "timeoutAt",
        "idempotencyKeyExpiresAt",
    ] {
        if let Some(value) = fields.get_mut(name) {
            timestamp(value);
            *value = json!("<timestamp>");
        }
    }
    let id = fields["id"].as_str().expect("id").to_owned();
    let url = fields["url"].as_str().expect("url");
    let prefix = format!("{}{TOKENS}/{id}/callback/", server.url);
    let secret = url
        .strip_prefix(&prefix)
        .unwrap_or_else(|| panic!("{url} does not start with {prefix}"));
    assert!(
        secret.len() == 32 && secret.bytes().all(|b| b.is_ascii_alphanumeric()),
        "{url}"
    );
    fields.insert("url".into(), json!("<callback url>"));
    item
}

/// A run of task `t` leased to a worker and started: `EXECUTING`, so it can wait.
async fn executing_run(server: &Server, key: &str) -> String {
    let worker = server.register_worker(key, &["t"]).await;
    let run = server.trigger_new(key, "t", &json!({"payload": 1})).await;
    let (leased, attempt) = server.dequeue_one(key, &worker).await;
    assert_eq!(leased, run);
    let started = server
        .worker_call(key, &worker, "start", &json!({"attemptIds": [attempt]}))
        .await;
    assert_eq!(started.status, StatusCode::OK, "{started:?}");
    assert_eq!(status(server, key, &run).await, "EXECUTING");
    run
}

/// The run's status in the current vocabulary (`WAITING` for a blocked run).
async fn status(server: &Server, key: &str, run: &str) -> String {
    let reply = server
        .retrieve_as(key, run, ApiVersion::CURRENT_HEADER_VALUE)
        .await;
    reply.body["status"].as_str().expect("status").to_owned()
}

async fn eventually_status(server: &Server, key: &str, run: &str, wanted: &str) {
    runnel_testkit::eventually(
        &format!("{run} {wanted}"),
        Duration::from_secs(10),
        || async { (status(server, key, run).await == wanted).then_some(()) },
    )
    .await;
}

#[tokio::test]
async fn a_token_is_created_read_completed_once_and_answers_in_the_sdk_shapes() {
    let app = TestApp::start();
    let (server, key) = (&app.server, app.dev_key.as_str());
    let created = create(
        server,
        key,
        &json!({"timeout": "1h", "tags": ["user:1", "org:2"], "idempotencyKey": "k1", "idempotencyKeyTTL": "1d"}),
    )
    .await;
    let id = token_id(&created);
    assert_eq!(
        redact(server, &json!({"id": id, "url": created.body["url"]})),
        json!({"id": id, "url": "<callback url>"})
    );
    assert_eq!(created.body["isCached"], false);
    // The token that may complete it, for a day.
    let claims: Value = serde_json::from_str(
        created.headers["x-trigger-jwt-claims"]
            .to_str()
            .expect("ASCII"),
    )
    .expect("claims are JSON");
    assert_eq!(claims["scopes"], json!([format!("write:waitpoints:{id}")]));
    assert!(created.headers.contains_key("x-trigger-jwt"));

    let read = get(server, key, &format!("{TOKENS}/{id}")).await;
    assert_eq!(read.status, StatusCode::OK, "{read:?}");
    assert_eq!(
        redact(server, &read.body),
        json!({
            "id": id,
            "url": "<callback url>",
            "status": "WAITING",
            "timeoutAt": "<timestamp>",
            "idempotencyKey": "k1",
            "idempotencyKeyExpiresAt": "<timestamp>",
            "tags": ["user:1", "org:2"],
            "createdAt": "<timestamp>",
        })
    );
    let timeout = timestamp(&read.body["timeoutAt"]) - timestamp(&read.body["createdAt"]);
    // "1h" from the request's arrival; the token's creation is a few ms later.
    let ms = timeout.num_milliseconds();
    assert!((3_599_000..=3_600_000).contains(&ms), "{ms}");

    // The same key finds the same token.
    let again = create(server, key, &json!({"idempotencyKey": "k1"})).await;
    assert_eq!(
        (token_id(&again), &again.body["isCached"]),
        (id.clone(), &json!(true))
    );

    let path = format!("{TOKENS}/{id}/complete");
    let done = post(server, key, &path, &json!({"data": {"approved": true}})).await;
    assert_eq!(
        (done.status, &done.body),
        (StatusCode::OK, &json!({"success": true}))
    );
    // Completing again answers the same and keeps the first data.
    let twice = post(server, key, &path, &json!({"data": "other"})).await;
    assert_eq!(
        (twice.status, &twice.body),
        (StatusCode::OK, &json!({"success": true}))
    );
    let read = get(server, key, &format!("{TOKENS}/{id}")).await;
    assert_eq!(
        redact(server, &read.body),
        json!({
            "id": id,
            "url": "<callback url>",
            "status": "COMPLETED",
            "completedAt": "<timestamp>",
            "timeoutAt": "<timestamp>",
            "idempotencyKey": "k1",
            "idempotencyKeyExpiresAt": "<timestamp>",
            "tags": ["user:1", "org:2"],
            "createdAt": "<timestamp>",
            "output": "{\"approved\":true}",
            "outputType": "application/json",
            "outputIsError": false,
        })
    );
}

#[tokio::test]
async fn a_string_and_no_data_complete_a_token_as_the_sdk_parses_them() {
    let app = TestApp::start();
    let (server, key) = (&app.server, app.dev_key.as_str());
    let text = token_id(&create(server, key, &json!({})).await);
    let empty = token_id(&create(server, key, &json!({})).await);
    post(
        server,
        key,
        &format!("{TOKENS}/{text}/complete"),
        &json!({"data": "yes"}),
    )
    .await;
    post(
        server,
        key,
        &format!("{TOKENS}/{empty}/complete"),
        &json!({}),
    )
    .await;
    let read = get(server, key, &format!("{TOKENS}/{text}")).await;
    assert_eq!(
        (&read.body["output"], &read.body["outputType"]),
        (&json!("\"yes\""), &json!("application/json"))
    );
    let read = get(server, key, &format!("{TOKENS}/{empty}")).await;
    assert_eq!(read.body["status"], "COMPLETED");
    assert_eq!(read.body.get("output"), None, "{read:?}");
}

#[tokio::test]
async fn token_refusals() {
    let app = TestApp::start();
    let (server, key) = (&app.server, app.dev_key.as_str());
    let other_key = app.keys_create("prod");
    let id = token_id(&create(server, key, &json!({})).await);

    let bad_timeout = post(server, key, TOKENS, &json!({"timeout": "soon"})).await;
    bad_timeout.assert_error(
        StatusCode::BAD_REQUEST,
        "timeout: must be a duration like 30s, 1m or 2h30m, or an ISO 8601 date",
    );
    let tags: Vec<String> = (0..11).map(|i| format!("t{i}")).collect();
    post(server, key, TOKENS, &json!({"tags": tags}))
        .await
        .assert_error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Waitpoints can only have 10 tags, you're trying to set 11.",
        );
    let long_key = "k".repeat(2049);
    post(server, key, TOKENS, &json!({"idempotencyKey": long_key}))
        .await
        .assert_error(
            StatusCode::BAD_REQUEST,
            "idempotencyKey: must be at most 2048 characters",
        );
    let big = json!({"tags": "x".repeat(11 * 1024)});
    let too_big = post(server, key, TOKENS, &big).await;
    assert_eq!(too_big.status, StatusCode::PAYLOAD_TOO_LARGE, "{too_big:?}");

    // Another environment's token, an unknown one and no id at all look the same.
    for (caller, token) in [
        (other_key.as_str(), id.as_str()),
        (key, UNKNOWN),
        (key, "nope"),
    ] {
        get(server, caller, &format!("{TOKENS}/{token}"))
            .await
            .assert_error(StatusCode::NOT_FOUND, "Waitpoint not found");
        post(
            server,
            caller,
            &format!("{TOKENS}/{token}/complete"),
            &json!({"data": 1}),
        )
        .await
        .assert_error(StatusCode::NOT_FOUND, "Waitpoint not found");
    }
    let read = get(server, key, &format!("{TOKENS}/{id}")).await;
    assert_eq!(
        read.body["status"], "WAITING",
        "the other environment completed nothing"
    );

    let anonymous = send(server.request(Method::GET, TOKENS)).await;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn the_callback_url_completes_a_token_without_credentials() {
    let app = TestApp::start();
    let (server, key) = (&app.server, app.dev_key.as_str());
    let created = create(server, key, &json!({})).await;
    let (id, url) = (
        token_id(&created),
        created.body["url"].as_str().unwrap().to_owned(),
    );
    let path = url.strip_prefix(&server.url).expect("the server's own URL");

    let wrong = path.replace("/callback/", "/callback/x");
    send(server.request(Method::POST, &wrong).json(&json!({"a": 1})))
        .await
        .assert_error(StatusCode::UNAUTHORIZED, "Invalid URL, hash doesn't match");
    let done = send(
        server
            .request(Method::POST, path)
            .json(&json!({"status": "ok"})),
    )
    .await;
    assert_eq!(
        (done.status, &done.body),
        (StatusCode::OK, &json!({"success": true}))
    );
    let read = get(server, key, &format!("{TOKENS}/{id}")).await;
    assert_eq!(read.body["output"], "{\"status\":\"ok\"}");

    // A body that is not JSON completes it with `{}`.
    let created = create(server, key, &json!({})).await;
    let id = token_id(&created);
    let url = created.body["url"].as_str().unwrap();
    let done = send(
        server
            .request(Method::POST, url.strip_prefix(&server.url).unwrap())
            .header("content-type", "text/plain")
            .body("not json"),
    )
    .await;
    assert_eq!(done.status, StatusCode::OK, "{done:?}");
    let read = get(server, key, &format!("{TOKENS}/{id}")).await;
    assert_eq!(read.body["output"], "{}");
}

#[tokio::test]
async fn the_public_token_handed_out_completes_its_waitpoint_and_no_other() {
    let app = TestApp::start();
    let (server, key) = (&app.server, app.dev_key.as_str());
    let created = create(server, key, &json!({})).await;
    let id = token_id(&created);
    let jwt = created.headers["x-trigger-jwt"]
        .to_str()
        .unwrap()
        .to_owned();
    let other = token_id(&create(server, key, &json!({})).await);

    let refused = post(
        server,
        &jwt,
        &format!("{TOKENS}/{other}/complete"),
        &json!({}),
    )
    .await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN, "{refused:?}");
    // The token completes, and only completes: reading needs the secret key.
    let done = post(
        server,
        &jwt,
        &format!("{TOKENS}/{id}/complete"),
        &json!({"data": 7}),
    )
    .await;
    assert_eq!(
        (done.status, &done.body),
        (StatusCode::OK, &json!({"success": true}))
    );
    let read = get(server, &jwt, &format!("{TOKENS}/{id}")).await;
    assert_eq!(read.status, StatusCode::UNAUTHORIZED, "{read:?}");
    let read = get(server, key, &format!("{TOKENS}/{id}")).await;
    assert_eq!(
        (&read.body["status"], &read.body["output"]),
        (&json!("COMPLETED"), &json!("7"))
    );
}

#[tokio::test]
async fn tokens_list_newest_first_filtered_and_paged() {
    let app = TestApp::start();
    let (server, key) = (&app.server, app.dev_key.as_str());
    let mut ids = Vec::new();
    for i in 0..3 {
        let body = json!({"tags": if i == 0 { "first" } else { "later" }});
        ids.push(token_id(&create(server, key, &body).await));
        // Ids order by creation time in milliseconds.
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    post(
        server,
        key,
        &format!("{TOKENS}/{}/complete", ids[1]),
        &json!({}),
    )
    .await;
    let listed = |reply: &Reply| -> Vec<String> {
        assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
        reply.body["data"]
            .as_array()
            .expect("data")
            .iter()
            .map(|item| item["id"].as_str().unwrap().to_owned())
            .collect()
    };

    let first = get(server, key, &format!("{TOKENS}?page[size]=2")).await;
    assert_eq!(listed(&first), [ids[2].clone(), ids[1].clone()]);
    assert_eq!(first.body["pagination"], json!({"next": ids[1]}));
    // List items carry no output.
    assert_eq!(
        redact(server, &first.body["data"][1]),
        json!({"id": ids[1], "url": "<callback url>", "status": "COMPLETED",
            "completedAt": "<timestamp>", "tags": ["later"], "createdAt": "<timestamp>"})
    );
    let second = get(
        server,
        key,
        &format!("{TOKENS}?page[size]=2&page[after]={}", ids[1]),
    )
    .await;
    assert_eq!(listed(&second), [ids[0].clone()]);
    assert_eq!(second.body["pagination"], json!({"previous": ids[0]}));
    let back = get(
        server,
        key,
        &format!("{TOKENS}?page[size]=2&page[before]={}", ids[0]),
    )
    .await;
    assert_eq!(listed(&back), [ids[2].clone(), ids[1].clone()]);
    assert_eq!(back.body["pagination"], json!({"next": ids[1]}));

    let cases = [
        ("filter[status]=COMPLETED", vec![ids[1].clone()]),
        (
            "filter[status]=WAITING,TIMED_OUT",
            vec![ids[2].clone(), ids[0].clone()],
        ),
        ("filter[tags]=first", vec![ids[0].clone()]),
        (
            "filter[createdAt][period]=1h",
            ids.iter().rev().cloned().collect(),
        ),
        ("filter[createdAt][to]=2000-01-01", vec![]),
    ];
    for (query, expected) in cases {
        let reply = get(server, key, &format!("{TOKENS}?{query}")).await;
        assert_eq!(listed(&reply), expected, "{query}");
    }
    let other_key = app.keys_create("prod");
    assert_eq!(
        listed(&get(server, &other_key, TOKENS).await),
        Vec::<String>::new()
    );

    let bad = get(
        server,
        key,
        &format!("{TOKENS}?page[size]=0&filter[status]=DONE"),
    )
    .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST, "{bad:?}");
    assert_eq!(bad.body["error"], "Query Error");
    let paths: Vec<&Value> = bad.body["details"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| &d["path"][0])
        .collect();
    assert_eq!(paths, [&json!("filter[status]"), &json!("page[size]")]);
    // Text no database column can hold is refused, not a 500.
    let nul = get(
        server,
        key,
        &format!("{TOKENS}?filter[idempotencyKey]=a%00"),
    )
    .await;
    assert_eq!(nul.status, StatusCode::BAD_REQUEST, "{nul:?}");
}

#[tokio::test]
async fn wait_duration_blocks_an_executing_run_until_its_date() {
    let app = TestApp::start();
    let (server, key) = (&app.server, app.dev_key.as_str());
    let run = executing_run(server, key).await;
    let path = format!("/engine/v1/runs/{run}/wait/duration");
    let date = (Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    // The SDK's body may arrive under any content type.
    let reply = send(
        server
            .request(Method::POST, &path)
            .bearer_auth(key)
            .header("content-type", "text/plain")
            .body(json!({"date": date, "idempotencyKey": "w1"}).to_string()),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    let waitpoint = reply.body["waitpoint"]["id"].as_str().unwrap().to_owned();
    assert_friendly_id(&waitpoint, "waitpoint");
    assert_eq!(
        timestamp(&reply.body["waitUntil"]).timestamp(),
        chrono::DateTime::parse_from_rfc3339(&date)
            .unwrap()
            .timestamp()
    );
    assert_eq!(status(server, key, &run).await, "WAITING");
    // The same key is the same wait.
    let again = post(
        server,
        key,
        &path,
        &json!({"date": Utc::now().to_rfc3339(), "idempotencyKey": "w1"}),
    )
    .await;
    assert_eq!(again.body["waitpoint"]["id"], json!(waitpoint));
    assert_eq!(again.body["waitUntil"], reply.body["waitUntil"]);

    // A date already past resumes the run at once.
    let run = executing_run(server, key).await;
    let path = format!("/engine/v1/runs/{run}/wait/duration");
    let past = (Utc::now() - chrono::Duration::seconds(1)).to_rfc3339();
    let reply = post(server, key, &path, &json!({"date": past})).await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    assert_eq!(status(server, key, &run).await, "EXECUTING");

    post(server, key, &path, &json!({"date": "tomorrow"}))
        .await
        .assert_error(StatusCode::BAD_REQUEST, "date: must be an ISO 8601 date");
    post(server, key, &path, &json!({}))
        .await
        .assert_error(StatusCode::BAD_REQUEST, "date: must be an ISO 8601 date");
    let other_key = app.keys_create("prod");
    post(server, &other_key, &path, &json!({"date": past}))
        .await
        .assert_error(StatusCode::NOT_FOUND, "Run not found");
    let queued = server.trigger_new(key, "t", &json!({})).await;
    let reply = post(
        server,
        key,
        &format!("/engine/v1/runs/{queued}/wait/duration"),
        &json!({"date": past}),
    )
    .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{reply:?}");
    let anonymous = send(
        server
            .request(Method::POST, &path)
            .json(&json!({"date": past})),
    )
    .await;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn waiting_for_a_token_blocks_the_run_until_it_is_completed() {
    let app = TestApp::start();
    let (server, key) = (&app.server, app.dev_key.as_str());
    let run = executing_run(server, key).await;
    let token = token_id(&create(server, key, &json!({"timeout": "1h"})).await);
    let path = format!("/engine/v1/runs/{run}/waitpoints/tokens/{token}/wait");
    let waited = send(server.request(Method::POST, &path).bearer_auth(key)).await;
    assert_eq!(
        (waited.status, &waited.body),
        (StatusCode::OK, &json!({"success": true}))
    );
    assert_eq!(status(server, key, &run).await, "WAITING");

    post(
        server,
        key,
        &format!("{TOKENS}/{token}/complete"),
        &json!({"data": {"ok": 1}}),
    )
    .await;
    eventually_status(server, key, &run, "EXECUTING").await;

    // Another environment's token, or no token, is not found; a run that is not
    // executing cannot wait.
    let other_key = app.keys_create("prod");
    let theirs = token_id(&create(server, &other_key, &json!({})).await);
    for waitpoint in [theirs.as_str(), UNKNOWN, "nope"] {
        let path = format!("/engine/v1/runs/{run}/waitpoints/tokens/{waitpoint}/wait");
        send(server.request(Method::POST, &path).bearer_auth(key))
            .await
            .assert_error(StatusCode::NOT_FOUND, "Waitpoint not found");
    }
    let queued = server.trigger_new(key, "t", &json!({})).await;
    let fresh = token_id(&create(server, key, &json!({})).await);
    let path = format!("/engine/v1/runs/{queued}/waitpoints/tokens/{fresh}/wait");
    let refused = send(server.request(Method::POST, &path).bearer_auth(key)).await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST, "{refused:?}");
    assert!(
        refused.body["error"]
            .as_str()
            .unwrap()
            .contains("only an executing run can wait"),
        "{refused:?}"
    );
}
