//! The realtime shape protocol over HTTP (`/realtime/v1/…`), against a server built as
//! `runnel serve` builds it: a snapshot, then live long polls that answer with each
//! change of a watched run; unknown handles; tags, batches, skipped columns; and one
//! environment never seeing another's runs.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use runnel_testkit::{send, Reply, TestApp};
use serde_json::{json, Value};

/// A poll of `path` (which has no query yet) with the protocol's parameters.
async fn poll(app: &TestApp, key: &str, path: &str, query: &[(&str, &str)]) -> Reply {
    send(
        app.server
            .request(Method::GET, path)
            .bearer_auth(key)
            .query(query),
    )
    .await
}

/// The shape's handle and offset from a reply's headers.
fn continuation(reply: &Reply) -> (String, String) {
    let header = |name: &str| {
        reply
            .headers
            .get(name)
            .unwrap_or_else(|| panic!("no {name} header: {reply:?}"))
            .to_str()
            .unwrap()
            .to_owned()
    };
    (header("electric-handle"), header("electric-offset"))
}

/// The change messages of a reply (its last message is the up-to-date marker).
fn changes(reply: &Reply) -> Vec<Value> {
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    let messages = reply.body.as_array().expect("an array of messages").clone();
    assert_eq!(
        messages.last(),
        Some(&json!({"headers": {"control": "up-to-date"}})),
        "{reply:?}"
    );
    messages[..messages.len() - 1].to_vec()
}

/// A live poll from `(handle, offset)`, answered within 10 s.
async fn live(app: &TestApp, key: &str, path: &str, (handle, offset): &(String, String)) -> Reply {
    tokio::time::timeout(
        Duration::from_secs(10),
        poll(
            app,
            key,
            path,
            &[("handle", handle), ("offset", offset), ("live", "true")],
        ),
    )
    .await
    .expect("a live poll answers when a watched run changes")
}

#[tokio::test]
async fn a_run_shape_sends_a_snapshot_then_each_change_in_a_live_poll() {
    let app = TestApp::start();
    let (server, key) = (&app.server, &app.dev_key);
    let worker = server.register_worker(key, &["t"]).await;
    let run = server
        .trigger_new(
            key,
            "t",
            &json!({"payload": {"n": 1}, "options": {"tags": ["rt"]}}),
        )
        .await;
    let path = format!("/realtime/v1/runs/{run}");

    let snapshot = poll(&app, key, &path, &[("offset", "-1")]).await;
    let rows = changes(&snapshot);
    assert_eq!(rows.len(), 1, "{snapshot:?}");
    assert_eq!(rows[0]["headers"]["operation"], "insert");
    assert_eq!(rows[0]["key"], format!("\"public\".\"TaskRun\"/\"{run}\""));
    let row = &rows[0]["value"];
    assert_eq!(row["friendlyId"], run.as_str());
    assert_eq!(row["taskIdentifier"], "t");
    assert_eq!(
        row["status"], "PENDING",
        "queued, as upstream's row names it"
    );
    assert_eq!(row["runTags"], json!(["rt"]));
    assert_eq!(row["payloadType"], "application/json");
    assert_eq!(
        serde_json::from_str::<Value>(row["payload"].as_str().unwrap()).unwrap(),
        json!({"n": 1})
    );
    assert!(
        !row["createdAt"].as_str().unwrap().ends_with('Z'),
        "raw dates have no zone: {row}"
    );
    assert!(snapshot.headers.contains_key("electric-schema"));
    let mut at = continuation(&snapshot);

    // Each step of the run answers the open live poll with the run's new row.
    let pending = tokio::spawn({
        let (app_url, key, path, at) = (server.url.clone(), key.clone(), path.clone(), at.clone());
        async move {
            let api = runnel_testkit::Api::new(app_url);
            send(api.request(Method::GET, &path).bearer_auth(&key).query(&[
                ("handle", at.0.as_str()),
                ("offset", at.1.as_str()),
                ("live", "true"),
            ]))
            .await
        }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !pending.is_finished(),
        "a live poll waits while nothing changes"
    );
    let (_, attempt) = server.dequeue_one(key, &worker).await;
    let reply = tokio::time::timeout(Duration::from_secs(10), pending)
        .await
        .expect("the dequeue answers the live poll")
        .unwrap();
    let rows = changes(&reply);
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["headers"]["operation"], "update");
    assert_eq!(rows[0]["value"]["status"], "DEQUEUED");
    let next = continuation(&reply);
    assert_eq!(next.0, at.0, "the same shape");
    assert_ne!(next.1, at.1, "a later offset");
    at = next;

    let started = server
        .worker_call(key, &worker, "start", &json!({"attemptIds": [attempt]}))
        .await;
    assert_eq!(started.status, StatusCode::OK);
    let reply = live(&app, key, &path, &at).await;
    assert_eq!(changes(&reply)[0]["value"]["status"], "EXECUTING");
    at = continuation(&reply);

    let completed = server
        .worker_call(
            key,
            &worker,
            "complete",
            &json!({"completions": [{"attemptId": attempt, "outcome": "success", "output": {"ok": true}}]}),
        )
        .await;
    assert_eq!(completed.status, StatusCode::OK);
    let reply = live(&app, key, &path, &at).await;
    let row = &changes(&reply)[0]["value"];
    assert_eq!(row["status"], "COMPLETED_SUCCESSFULLY");
    assert_eq!(
        serde_json::from_str::<Value>(row["output"].as_str().unwrap()).unwrap(),
        json!({"ok": true})
    );
    assert!(row["completedAt"].is_string() && row["startedAt"].is_string());
}

#[tokio::test]
async fn an_unknown_handle_must_refetch_and_bad_requests_are_refused() {
    let app = TestApp::start();
    let (server, key) = (&app.server, &app.dev_key);
    let run = server.trigger_new(key, "t", &json!({})).await;
    let path = format!("/realtime/v1/runs/{run}");
    let reply = poll(
        &app,
        key,
        &path,
        &[
            ("handle", "nobody-made-this"),
            ("offset", "3_0"),
            ("live", "true"),
        ],
    )
    .await;
    assert_eq!(reply.status, StatusCode::CONFLICT, "{reply:?}");
    assert_eq!(
        reply.body,
        json!([{"headers": {"control": "must-refetch"}}])
    );
    assert!(reply.headers.contains_key("electric-handle"));

    // A shape's handle is its own: another run's subscription must refetch too.
    let other = server.trigger_new(key, "t", &json!({})).await;
    let snapshot = poll(&app, key, &path, &[("offset", "-1")]).await;
    let (handle, offset) = continuation(&snapshot);
    let reply = poll(
        &app,
        key,
        &format!("/realtime/v1/runs/{other}"),
        &[("handle", &handle), ("offset", &offset)],
    )
    .await;
    assert_eq!(reply.status, StatusCode::CONFLICT, "{reply:?}");
    // …and the first subscription still has it.
    let reply = poll(
        &app,
        key,
        &path,
        &[("handle", &handle), ("offset", &offset)],
    )
    .await;
    assert_eq!(changes(&reply), Vec::<Value>::new(), "nothing new");

    let reply = poll(
        &app,
        key,
        "/realtime/v1/runs",
        &[("tags", "a"), ("createdAt", "soon")],
    )
    .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{reply:?}");
    assert!(reply.body["error"].as_str().unwrap().contains("createdAt"));
    let reply = poll(&app, key, "/realtime/v1/runs", &[("tasks", "t")]).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{reply:?}");
    let reply = poll(
        &app,
        key,
        "/realtime/v1/runs/run_doesnotexist0000000000",
        &[],
    )
    .await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND, "{reply:?}");
    let reply = poll(
        &app,
        key,
        "/realtime/v1/batches/batch_doesnotexist00000000",
        &[],
    )
    .await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND, "{reply:?}");
    let reply = send(app.server.request(Method::GET, &path)).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{reply:?}");
}

#[tokio::test]
async fn a_tag_feed_holds_the_runs_with_every_tag_of_its_environment_only() {
    let app = TestApp::start();
    let (server, dev) = (&app.server, &app.dev_key);
    let prod = app.keys_create("prod");
    let only_a = server
        .trigger_new(dev, "t", &json!({"options": {"tags": ["a"]}}))
        .await;
    let both = server
        .trigger_new(dev, "t", &json!({"options": {"tags": ["a", "b"]}}))
        .await;
    server
        .trigger_new(&prod, "t", &json!({"options": {"tags": ["a", "b"]}}))
        .await;

    let ids = |rows: &[Value]| -> Vec<String> {
        rows.iter()
            .map(|r| r["value"]["id"].as_str().unwrap().to_owned())
            .collect()
    };
    let snapshot = poll(
        &app,
        dev,
        "/realtime/v1/runs",
        &[
            ("tags", "a,b"),
            ("offset", "-1"),
            ("skipColumns", "payload,id"),
        ],
    )
    .await;
    let rows = changes(&snapshot);
    assert_eq!(
        ids(&rows),
        vec![both.clone()],
        "every tag, this environment"
    );
    assert!(rows[0]["value"].get("payload").is_none(), "payload skipped");
    let snapshot_a = poll(
        &app,
        dev,
        "/realtime/v1/runs",
        &[("tags", "a"), ("offset", "-1")],
    )
    .await;
    assert_eq!(
        ids(&changes(&snapshot_a)),
        vec![only_a, both.clone()],
        "oldest first"
    );

    // Live: prod's new run with the tags is not dev's; dev's new one is.
    let at = continuation(&snapshot);
    let pending = tokio::spawn({
        let (url, dev, at) = (server.url.clone(), dev.clone(), at.clone());
        async move {
            let api = runnel_testkit::Api::new(url);
            send(
                api.request(Method::GET, "/realtime/v1/runs")
                    .bearer_auth(&dev)
                    .query(&[
                        ("tags", "a,b"),
                        ("skipColumns", "payload,id"),
                        ("handle", at.0.as_str()),
                        ("offset", at.1.as_str()),
                        ("live", "true"),
                    ]),
            )
            .await
        }
    });
    server
        .trigger_new(&prod, "t", &json!({"options": {"tags": ["b", "a"]}}))
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !pending.is_finished(),
        "another environment's run is not news"
    );
    let newer = server
        .trigger_new(dev, "t", &json!({"options": {"tags": ["b", "a", "c"]}}))
        .await;
    let reply = tokio::time::timeout(Duration::from_secs(10), pending)
        .await
        .expect("dev's new run answers")
        .unwrap();
    let rows = changes(&reply);
    assert_eq!(ids(&rows), vec![newer]);
    assert_eq!(rows[0]["headers"]["operation"], "insert");

    // Prod's key cannot watch dev's run.
    let reply = poll(&app, &prod, &format!("/realtime/v1/runs/{both}"), &[]).await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND, "{reply:?}");
}

#[tokio::test]
async fn browsers_of_any_origin_may_subscribe_and_read_the_protocol_headers() {
    let app = TestApp::start();
    let (server, key) = (&app.server, &app.dev_key);
    let run = server.trigger_new(key, "t", &json!({})).await;
    let path = format!("/realtime/v1/runs/{run}");
    let preflight = server
        .request(Method::OPTIONS, &path)
        .header("origin", "https://app.example")
        .header("access-control-request-method", "GET")
        .header(
            "access-control-request-headers",
            "authorization,x-trigger-electric-version",
        )
        .send()
        .await
        .unwrap();
    assert!(preflight.status().is_success(), "{preflight:?}");
    assert_eq!(preflight.headers()["access-control-allow-origin"], "*");
    let allowed = preflight.headers()["access-control-allow-headers"]
        .to_str()
        .unwrap();
    assert!(allowed.contains("authorization"), "{allowed}");
    let reply = send(
        server
            .request(Method::GET, &path)
            .bearer_auth(key)
            .header("origin", "https://app.example")
            .query(&[("offset", "-1")]),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    assert_eq!(reply.headers["access-control-allow-origin"], "*");
    let exposed = reply.headers["access-control-expose-headers"]
        .to_str()
        .unwrap();
    for header in ["electric-handle", "electric-offset", "electric-schema"] {
        assert!(exposed.contains(header), "{exposed}");
    }
}
