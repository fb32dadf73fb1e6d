//! The HTTP API end to end: a server built as `runnel serve` builds it, in the test
//! process on port 0 (`runnel_testkit::TestApp`), spoken to over HTTP.
//!
//! Response bodies are compared whole, with run ids and timestamps redacted after their
//! shape is checked ([`runnel_testkit::redact`]). What a test cannot see in a body (that a
//! rejected request stored nothing) it proves through idempotency keys: a later valid
//! trigger with the same key must create a run, not return a cached one.

use chrono::{Duration, Utc};
use reqwest::header::{ALLOW, AUTHORIZATION, CONTENT_TYPE};
use reqwest::{Method, StatusCode};
use runnel_testkit::{
    assert_friendly_id, assert_no_nulls, eventually, redact, send, timestamp, TestApp,
    CURRENT_API_VERSION, SERVICE_TIMEOUT,
};
use serde_json::{json, Value};

/// The `is*` booleans of a run that is waiting in a queue (QUEUED or DELAYED).
fn queued_flags() -> Value {
    json!({
        "isQueued": true,
        "isExecuting": false,
        "isWaiting": false,
        "isCompleted": false,
        "isSuccess": false,
        "isFailed": false,
        "isCancelled": false,
    })
}

/// `base` with every field of `extra` added (both must be objects).
fn merged(base: Value, extra: Value) -> Value {
    let (Value::Object(mut base), Value::Object(extra)) = (base, extra) else {
        panic!("merged takes two objects");
    };
    base.extend(extra);
    Value::Object(base)
}

#[tokio::test]
async fn healthz_answers_ok_without_a_key() {
    let app = TestApp::start();
    let reply = send(app.server.request(Method::GET, "/healthz")).await;
    assert_eq!(
        (reply.status, reply.body),
        (StatusCode::OK, json!({"status": "ok"}))
    );
}

#[tokio::test]
async fn minimal_trigger_is_retrievable_as_a_queued_run() {
    let app = TestApp::start();
    // A registered worker serves the task, so the run is queued; it never dequeues, so
    // the run stays queued.
    app.server
        .register_worker(&app.dev_key, &["hello-task"])
        .await;
    let before = Utc::now();
    let id = app
        .server
        .trigger_new(
            &app.dev_key,
            "hello-task",
            &json!({"payload": {"hello": "world"}}),
        )
        .await;

    let body = app.server.run(&app.dev_key, &id).await;
    assert_no_nulls(&body);
    assert_eq!(body["id"], id.as_str());
    let created = timestamp(&body["createdAt"]);
    assert!(
        created >= before - Duration::seconds(1) && created <= Utc::now() + Duration::seconds(1),
        "createdAt {created} is not the time of the trigger"
    );
    assert_eq!(body["updatedAt"], body["createdAt"]);
    assert_eq!(
        redact(&body),
        merged(
            json!({
                "id": "<run id>",
                "status": "QUEUED",
                "taskIdentifier": "hello-task",
                "isTest": false,
                "createdAt": "<timestamp>",
                "updatedAt": "<timestamp>",
                "tags": [],
                "costInCents": 0.0,
                "baseCostInCents": 0.0,
                "durationMs": 0,
                "depth": 0,
                "triggerFunction": "trigger",
                "payload": {"hello": "world"},
                "relatedRuns": {"children": []},
                "attemptCount": 0,
                "attempts": [],
            }),
            queued_flags()
        )
    );
}

#[tokio::test]
async fn trigger_with_every_option_is_reflected_by_retrieve() {
    let app = TestApp::start();
    let payload = json!({
        "to": "ada@example.com",
        "subject": "héllo ✓",
        "attempt": 1.5,
        "lines": [1, "two", {"three": true}],
    });
    let metadata = json!({"source": "signup", "step": 2, "nested": {"flags": [true, false]}});
    let reply = app
        .server
        .trigger(
            &app.dev_key,
            "send-email",
            &json!({
                "payload": payload,
                "options": {
                    "tags": ["zeta", " ", "alpha", "zeta", "mid"],
                    "metadata": metadata,
                    "idempotencyKey": "9f2c1c0e6b0d4e59a1b2c3d4e5f60718",
                    "idempotencyKeyOptions": {"key": "welcome-ada", "scope": "global"},
                    "delay": "1h",
                    "ttl": 3600,
                    "maxAttempts": 3,
                    "maxDuration": 300,
                    "machine": "large-1x",
                    "priority": 10,
                    "test": true,
                    "queue": {"name": "emails"},
                    "concurrencyKey": "user-42",
                    "lockToVersion": "20240523.1",
                },
            }),
        )
        .await;
    let id = reply.assert_new_run();

    let body = app.server.run(&app.dev_key, &id).await;
    assert_no_nulls(&body);
    // The delay counts from the moment of the trigger, which is also createdAt.
    assert_eq!(
        timestamp(&body["delayedUntil"]) - timestamp(&body["createdAt"]),
        Duration::hours(1),
        "{body}"
    );
    assert!(
        (timestamp(&body["delayedUntil"]) - (Utc::now() + Duration::hours(1))).abs()
            < Duration::seconds(10)
    );
    assert_eq!(
        redact(&body),
        merged(
            json!({
                "id": "<run id>",
                "status": "DELAYED",
                "taskIdentifier": "send-email",
                "idempotencyKey": "welcome-ada",
                "version": "20240523.1",
                "isTest": true,
                "createdAt": "<timestamp>",
                "updatedAt": "<timestamp>",
                "delayedUntil": "<timestamp>",
                "ttl": "1h",
                "tags": ["alpha", "mid", "zeta"],
                "costInCents": 0.0,
                "baseCostInCents": 0.0,
                "durationMs": 0,
                "metadata": metadata,
                "depth": 0,
                "triggerFunction": "trigger",
                "payload": payload,
                "relatedRuns": {"children": []},
                "attemptCount": 0,
                "attempts": [],
            }),
            queued_flags()
        )
    );
}

#[tokio::test]
async fn queued_and_delayed_runs_read_the_same_in_both_status_vocabularies() {
    let app = TestApp::start();
    let key = &app.dev_key;
    app.server.register_worker(key, &["t"]).await;
    let queued = app.server.trigger_new(key, "t", &json!({})).await;
    let delayed = app
        .server
        .trigger_new(key, "t", &json!({"options": {"delay": "10m"}}))
        .await;

    for (id, status) in [(&queued, "QUEUED"), (&delayed, "DELAYED")] {
        let legacy = app.server.retrieve(key, id).await;
        let current = app.server.retrieve_as(key, id, CURRENT_API_VERSION).await;
        let unknown_version = app.server.retrieve_as(key, id, "2024-01-01").await;
        assert_eq!(legacy.status, StatusCode::OK, "{legacy:?}");
        assert_eq!(legacy.body["status"], status, "{legacy:?}");
        for field in queued_flags().as_object().unwrap().keys() {
            assert_eq!(
                legacy.body[field],
                queued_flags()[field],
                "{field} of {status}"
            );
        }
        // Both vocabularies name these two statuses alike, so the bodies are identical.
        assert_eq!(current.body, legacy.body, "{status}");
        assert_eq!(unknown_version.body, legacy.body, "{status}");
    }
}

#[tokio::test]
async fn a_run_no_worker_serves_waits_for_deploy_in_both_vocabularies() {
    let app = TestApp::start();
    let key = &app.dev_key;
    let id = app
        .server
        .trigger_new(key, "undeployed", &json!({"payload": 1}))
        .await;

    let legacy = app.server.run(key, &id).await;
    assert_no_nulls(&legacy);
    assert_eq!(
        redact(&legacy),
        merged(
            json!({
                "id": "<run id>",
                "status": "WAITING_FOR_DEPLOY",
                "taskIdentifier": "undeployed",
                "isTest": false,
                "createdAt": "<timestamp>",
                "updatedAt": "<timestamp>",
                "tags": [],
                "costInCents": 0.0,
                "baseCostInCents": 0.0,
                "durationMs": 0,
                "depth": 0,
                "triggerFunction": "trigger",
                "payload": 1,
                "relatedRuns": {"children": []},
                "attemptCount": 0,
                "attempts": [],
            }),
            queued_flags()
        )
    );
    // The v4 SDK's name for the same status; nothing else differs.
    let current = app.server.retrieve_as(key, &id, CURRENT_API_VERSION).await;
    assert_eq!(
        current.body,
        merged(legacy.clone(), json!({"status": "PENDING_VERSION"}))
    );

    // A worker of another task changes nothing; one serving the task queues the run.
    app.server.register_worker(key, &["other"]).await;
    assert_eq!(app.server.run(key, &id).await, legacy);
    app.server.register_worker(key, &["undeployed"]).await;
    let queued = app.server.run(key, &id).await;
    assert_eq!(queued["status"], "QUEUED", "{queued}");
    assert!(timestamp(&queued["updatedAt"]) >= timestamp(&legacy["updatedAt"]));
}

#[tokio::test]
async fn a_run_whose_ttl_passes_while_queued_expires_in_both_vocabularies() {
    let app = TestApp::start();
    let key = &app.dev_key;
    app.server.register_worker(key, &["t"]).await;
    let id = app
        .server
        .trigger_new(key, "t", &json!({"payload": 7, "options": {"ttl": "1s"}}))
        .await;

    let body = app.server.wait_for_status(key, &id, "EXPIRED").await;
    assert_no_nulls(&body);
    let created = timestamp(&body["createdAt"]);
    let expired = timestamp(&body["expiredAt"]);
    assert!(
        expired >= created + Duration::seconds(1),
        "expired at {expired}, before its TTL from {created} passed"
    );
    assert_eq!(body["finishedAt"], body["expiredAt"]);
    assert_eq!(body["updatedAt"], body["expiredAt"]);
    assert_eq!(
        redact(&body),
        json!({
            "id": "<run id>",
            "status": "EXPIRED",
            "taskIdentifier": "t",
            // Every final status counts as completed here (docs/state-machine.md), unlike
            // upstream, so the SDK's `runs.poll` stops on an expired run.
            "isQueued": false,
            "isExecuting": false,
            "isWaiting": false,
            "isCompleted": true,
            "isSuccess": false,
            "isFailed": true,
            "isCancelled": false,
            "isTest": false,
            "createdAt": "<timestamp>",
            "updatedAt": "<timestamp>",
            "finishedAt": "<timestamp>",
            "ttl": "1s",
            "expiredAt": "<timestamp>",
            "tags": [],
            "costInCents": 0.0,
            "baseCostInCents": 0.0,
            "durationMs": 0,
            "depth": 0,
            "triggerFunction": "trigger",
            "payload": 7,
            "error": {"message": "Run expired because the TTL (1s) was reached"},
            "relatedRuns": {"children": []},
            "attemptCount": 0,
            "attempts": [],
        })
    );
    let current = app.server.retrieve_as(key, &id, CURRENT_API_VERSION).await;
    assert_eq!(current.body, body, "EXPIRED is in both vocabularies");
}

#[tokio::test]
async fn lenient_inputs_are_normalised_as_upstream_does() {
    let app = TestApp::start();
    app.server.register_worker(&app.dev_key, &["t"]).await;
    let id = app
        .server
        .trigger_new(
            &app.dev_key,
            "t",
            &json!({
                "payload": "just text",
                "context": {"ignored": true},
                "options": {
                    "tags": "solo",
                    "ttl": 0,
                    "delay": "2020-01-01T00:00:00Z",
                    "concurrencyKey": 42,
                    "queue": {"name": "emails high!", "concurrencyLimit": 5},
                    "lockToVersion": "  ",
                    "test": false,
                },
            }),
        )
        .await;
    let body = app.server.run(&app.dev_key, &id).await;
    assert_no_nulls(&body);
    // A single tag is a list of one; `ttl: 0` is no TTL; a past delay queues at once;
    // a blank version lock is no lock (a lock to a version no worker has would leave the
    // run waiting for a deploy).
    assert_eq!(
        redact(&body),
        merged(
            json!({
                "id": "<run id>",
                "status": "QUEUED",
                "taskIdentifier": "t",
                "isTest": false,
                "createdAt": "<timestamp>",
                "updatedAt": "<timestamp>",
                "tags": ["solo"],
                "costInCents": 0.0,
                "baseCostInCents": 0.0,
                "durationMs": 0,
                "depth": 0,
                "triggerFunction": "trigger",
                "payload": "just text",
                "relatedRuns": {"children": []},
                "attemptCount": 0,
                "attempts": [],
            }),
            queued_flags()
        )
    );
}

#[tokio::test]
async fn a_delayed_run_is_queued_at_its_time_and_its_ttl_counts_from_then() {
    let app = TestApp::start();
    let key = &app.dev_key;
    app.server.register_worker(key, &["t"]).await;
    let id = app
        .server
        .trigger_new(key, "t", &json!({"options": {"delay": "1s", "ttl": "1s"}}))
        .await;
    let delayed = app.server.run(key, &id).await;
    assert_eq!(delayed["status"], "DELAYED");
    let delayed_until = timestamp(&delayed["delayedUntil"]);

    let queued = app.server.wait_for_status(key, &id, "QUEUED").await;
    assert_eq!(queued["delayedUntil"], delayed["delayedUntil"]);
    assert!(timestamp(&queued["updatedAt"]) >= delayed_until, "{queued}");
    assert_eq!(
        (queued["isQueued"].clone(), queued["isCompleted"].clone()),
        (json!(true), json!(false))
    );

    let expired = app.server.wait_for_status(key, &id, "EXPIRED").await;
    assert!(
        timestamp(&expired["expiredAt"]) >= delayed_until + Duration::seconds(1),
        "the TTL ran from the trigger, not from the end of the delay: {expired}"
    );
}

#[tokio::test]
async fn concurrent_triggers_with_one_idempotency_key_create_one_run() {
    let app = TestApp::start();
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let url = format!("{}/api/v1/tasks/t/trigger", app.server.url);
    let mut triggers = tokio::task::JoinSet::new();
    for i in 0..16 {
        let request = client
            .post(&url)
            .bearer_auth(&app.dev_key)
            .json(&json!({"payload": i, "options": {"idempotencyKey": "race"}}));
        triggers.spawn(send(request));
    }
    let mut created = Vec::new();
    let mut cached = Vec::new();
    while let Some(reply) = triggers.join_next().await {
        let reply = reply.expect("trigger task");
        assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
        if reply.body["isCached"] == true {
            cached.push(reply.assert_cached_run());
        } else {
            created.push(reply.assert_new_run());
        }
    }
    assert_eq!(created.len(), 1, "created {created:?}");
    assert_eq!(cached.len(), 15);
    assert!(cached.iter().all(|id| *id == created[0]), "{cached:?}");
}

#[tokio::test]
async fn the_same_idempotency_key_returns_the_same_run_cached() {
    let app = TestApp::start();
    let key = &app.dev_key;
    let first = app
        .server
        .trigger_new(
            key,
            "charge",
            &json!({"payload": {"n": 1}, "options": {"idempotencyKey": "order-1"}}),
        )
        .await;
    let before = app.server.run(key, &first).await;
    assert_eq!(before["idempotencyKey"], "order-1");

    let again = app
        .server
        .trigger(
            key,
            "charge",
            &json!({"payload": {"n": 2}, "options": {"idempotencyKey": "order-1"}}),
        )
        .await;
    assert_eq!(again.assert_cached_run(), first);
    // Nothing about the run changed: the second payload was not stored anywhere.
    assert_eq!(app.server.run(key, &first).await, before);

    // A new key is a new run, so the cache is keyed, not global.
    let other = app
        .server
        .trigger_new(
            key,
            "charge",
            &json!({"options": {"idempotencyKey": "order-2"}}),
        )
        .await;
    assert_ne!(other, first);
}

#[tokio::test]
async fn the_idempotency_key_header_works_and_the_body_key_wins() {
    let app = TestApp::start();
    let key = &app.dev_key;
    let by_header = send(
        app.server
            .trigger_request(key, "charge")
            .header("idempotency-key", "from-header")
            .json(&json!({"payload": 1})),
    )
    .await
    .assert_new_run();
    assert_eq!(
        app.server.run(key, &by_header).await["idempotencyKey"],
        "from-header"
    );
    let again = send(
        app.server
            .trigger_request(key, "charge")
            .header("idempotency-key", "from-header")
            .json(&json!({"payload": 2})),
    )
    .await;
    assert_eq!(again.assert_cached_run(), by_header);
    // The header's key also matches a body key with the same value.
    let as_body = app
        .server
        .trigger(
            key,
            "charge",
            &json!({"options": {"idempotencyKey": "from-header"}}),
        )
        .await;
    assert_eq!(as_body.assert_cached_run(), by_header);

    // With both, the body's key is the one used.
    let both = send(
        app.server
            .trigger_request(key, "charge")
            .header("idempotency-key", "from-header")
            .json(&json!({"options": {"idempotencyKey": "from-body"}})),
    )
    .await
    .assert_new_run();
    assert_ne!(both, by_header);
    assert_eq!(
        app.server.run(key, &both).await["idempotencyKey"],
        "from-body"
    );
}

#[tokio::test]
async fn an_idempotency_key_is_scoped_to_its_task() {
    let app = TestApp::start();
    let key = &app.dev_key;
    let body = json!({"options": {"idempotencyKey": "shared"}});
    let on_a = app.server.trigger_new(key, "task-a", &body).await;
    let on_b = app.server.trigger_new(key, "task-b", &body).await;
    assert_ne!(on_a, on_b);
    assert_eq!(app.server.run(key, &on_b).await["taskIdentifier"], "task-b");
    // Each task keeps its own run for the key.
    assert_eq!(
        app.server
            .trigger(key, "task-a", &body)
            .await
            .assert_cached_run(),
        on_a
    );
    assert_eq!(
        app.server
            .trigger(key, "task-b", &body)
            .await
            .assert_cached_run(),
        on_b
    );
}

#[tokio::test]
async fn an_expired_run_releases_its_idempotency_key() {
    let app = TestApp::start();
    let key = &app.dev_key;
    app.server.register_worker(key, &["report"]).await;
    let body = json!({"options": {"idempotencyKey": "nightly", "ttl": "1s"}});
    let first = app.server.trigger_new(key, "report", &body).await;
    // Still queued: the key holds.
    assert_eq!(
        app.server
            .trigger(key, "report", &body)
            .await
            .assert_cached_run(),
        first
    );

    let expired = app.server.wait_for_status(key, &first, "EXPIRED").await;
    timestamp(&expired["expiredAt"]);
    let message = expired["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("TTL (1s)"), "{expired}");

    let second = app.server.trigger_new(key, "report", &body).await;
    assert_ne!(second, first);
    assert_eq!(
        app.server.run(key, &second).await["idempotencyKey"],
        "nightly"
    );
    // The key moved: the expired run no longer shows it, and it now returns the new run.
    let old = app.server.run(key, &first).await;
    assert_eq!(old["status"], "EXPIRED");
    assert!(old.get("idempotencyKey").is_none(), "{old}");
    assert_eq!(
        app.server
            .trigger(
                key,
                "report",
                &json!({"options": {"idempotencyKey": "nightly"}})
            )
            .await
            .assert_cached_run(),
        second
    );
}

#[tokio::test]
async fn an_idempotency_key_ttl_lets_the_key_expire() {
    let app = TestApp::start();
    let key = &app.dev_key;
    app.server.register_worker(key, &["sync"]).await;
    // The TTL from the body, and from the `idempotency-key-ttl` header.
    let by_body = json!({"options": {"idempotencyKey": "k-body", "idempotencyKeyTTL": "2s"}});
    let with_header = || {
        app.server
            .trigger_request(key, "sync")
            .header("idempotency-key", "k-header")
            .header("idempotency-key-ttl", "2s")
            .json(&json!({}))
    };
    let started = std::time::Instant::now();
    let first_body = app.server.trigger_new(key, "sync", &by_body).await;
    let first_header = send(with_header()).await.assert_new_run();
    assert_eq!(
        app.server
            .trigger(key, "sync", &by_body)
            .await
            .assert_cached_run(),
        first_body
    );
    assert_eq!(send(with_header()).await.assert_cached_run(), first_header);

    let second_body = eventually("the body key's TTL to pass", SERVICE_TIMEOUT, || async {
        let reply = app.server.trigger(key, "sync", &by_body).await;
        assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
        (reply.body["isCached"] == false).then(|| reply.assert_new_run())
    })
    .await;
    assert!(
        started.elapsed() >= std::time::Duration::from_millis(1900),
        "the key was released after {:?}, before its 2s TTL",
        started.elapsed()
    );
    assert_ne!(second_body, first_body);
    let second_header = eventually("the header key's TTL to pass", SERVICE_TIMEOUT, || async {
        let reply = send(with_header()).await;
        assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
        (reply.body["isCached"] == false).then(|| reply.assert_new_run())
    })
    .await;
    assert_ne!(second_header, first_header);
    // The run whose key lapsed is still there, still queued.
    assert_eq!(app.server.run(key, &first_body).await["status"], "QUEUED");
}

#[tokio::test]
async fn a_request_without_a_valid_key_is_401() {
    let app = TestApp::start();
    let run = app.server.trigger_new(&app.dev_key, "t", &json!({})).await;
    let retrieve = format!("/api/v3/runs/{run}");
    let trigger = "/api/v1/tasks/t/trigger";

    for (method, path) in [(Method::GET, retrieve.as_str()), (Method::POST, trigger)] {
        // The body is application/problem+json (tests/auth.rs checks it whole).
        let reply = send(app.server.request(method.clone(), path).json(&json!({}))).await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{reply:?}");
        assert_eq!(reply.body["error"], "No authorization header provided");

        let well_formed_unknown = "tr_dev_AbCdEfGhIjKlMnOpQrStUvWx";
        let wrong_kind = format!("pk_dev_{}", &app.dev_key[7..]);
        let reply = send(
            app.server
                .request(method.clone(), path)
                .bearer_auth(&wrong_kind)
                .json(&json!({})),
        )
        .await;
        reply.assert_error(
            StatusCode::UNAUTHORIZED,
            "Public API keys are not allowed for this request",
        );
        for header in [
            format!("Bearer {well_formed_unknown}"),
            "Bearer not-a-key".to_owned(),
            format!("Bearer {}x", app.dev_key),
            // The right key, but not as a bearer token.
            format!("Basic {}", app.dev_key),
            app.dev_key.clone(),
        ] {
            let reply = send(
                app.server
                    .request(method.clone(), path)
                    .header(AUTHORIZATION, &header)
                    .json(&json!({})),
            )
            .await;
            reply.assert_error(StatusCode::UNAUTHORIZED, "Invalid API Key");
        }
    }
    // The refused triggers created nothing; the one run is still readable with the key.
    assert_eq!(app.server.run(&app.dev_key, &run).await["id"], run.as_str());
}

#[tokio::test]
async fn a_run_is_invisible_to_other_environments() {
    let app = TestApp::start();
    let dev = &app.dev_key;
    let staging = app.keys_create("staging");
    runnel_testkit::assert_secret_key(&staging, "stg");

    // Workers are per environment too: dev's worker does not serve staging's runs.
    app.server.register_worker(dev, &["t"]).await;
    let body = json!({"payload": {"env": "dev"}, "options": {"idempotencyKey": "shared"}});
    let dev_run = app.server.trigger_new(dev, "t", &body).await;
    assert_eq!(app.server.run(dev, &dev_run).await["status"], "QUEUED");

    let other_env = app.server.retrieve(&staging, &dev_run).await;
    let missing = app
        .server
        .retrieve(&staging, "run_0000000000000000000000000")
        .await;
    let missing_well_formed = app
        .server
        .retrieve(&staging, "run_00000000000000000000000a")
        .await;
    let malformed = app.server.retrieve(&staging, "not-a-run").await;
    for reply in [&other_env, &missing, &missing_well_formed, &malformed] {
        reply.assert_error(StatusCode::NOT_FOUND, "Not found");
    }

    // Staging has its own runs, and its own idempotency keys.
    let staging_run = app
        .server
        .trigger_new(
            &staging,
            "t",
            &json!({"payload": {"env": "staging"}, "options": {"idempotencyKey": "shared"}}),
        )
        .await;
    assert_ne!(staging_run, dev_run);
    let seen = app.server.run(&staging, &staging_run).await;
    assert_eq!(
        (&seen["id"], &seen["status"], &seen["payload"]),
        (
            &json!(staging_run),
            &json!("WAITING_FOR_DEPLOY"),
            &json!({"env": "staging"})
        )
    );
    app.server.register_worker(&staging, &["t"]).await;
    assert_eq!(
        app.server.run(&staging, &staging_run).await["status"],
        "QUEUED"
    );
    app.server
        .retrieve(dev, &staging_run)
        .await
        .assert_error(StatusCode::NOT_FOUND, "Not found");
    // And dev still sees its own run, untouched.
    assert_eq!(
        app.server.run(dev, &dev_run).await["payload"],
        json!({"env": "dev"})
    );
}

/// A trigger body the server must refuse, and how.
struct Refused {
    what: &'static str,
    body: Vec<u8>,
    status: StatusCode,
    error: String,
}

fn refused(
    what: &'static str,
    body: impl Into<Vec<u8>>,
    status: StatusCode,
    error: &str,
) -> Refused {
    Refused {
        what,
        body: body.into(),
        status,
        error: error.to_owned(),
    }
}

fn json_bytes(value: Value) -> Vec<u8> {
    serde_json::to_vec(&value).unwrap()
}

#[tokio::test]
async fn a_refused_trigger_says_why_and_stores_nothing() {
    let app = TestApp::start();
    let key = &app.dev_key;
    let eleven_tags: Vec<String> = (0..11).map(|i| format!("tag-{i:02}")).collect();
    let three_mib = 3 * 1024 * 1024;
    let cases = [
        refused("malformed JSON", "{\"payload\": ", StatusCode::BAD_REQUEST, "Invalid JSON"),
        refused("not JSON at all", "payload=1", StatusCode::BAD_REQUEST, "Invalid JSON"),
        refused("empty body", "", StatusCode::BAD_REQUEST, "Request body is empty"),
        refused(
            "wrong type",
            json_bytes(json!({"options": {"maxAttempts": "x"}})),
            StatusCode::BAD_REQUEST,
            "options.maxAttempts: invalid type: string \"x\", expected i64",
        ),
        refused(
            "bad ttl",
            json_bytes(json!({"options": {"ttl": "forever"}})),
            StatusCode::BAD_REQUEST,
            "options.ttl: \"forever\" is not a duration like 10m, 1h42m or 3600s",
        ),
        refused(
            "negative ttl",
            json_bytes(json!({"options": {"ttl": -5}})),
            StatusCode::BAD_REQUEST,
            "options.ttl: must be a whole number of seconds, 0 or more",
        ),
        refused(
            "bad delay",
            json_bytes(json!({"options": {"delay": "soon"}})),
            StatusCode::BAD_REQUEST,
            "options.delay: \"soon\" is neither a duration (like 30s, 1h30m) nor an ISO 8601 date",
        ),
        refused(
            "bad machine",
            json_bytes(json!({"options": {"machine": "huge"}})),
            StatusCode::BAD_REQUEST,
            "options.machine: must be one of micro, small-1x, small-2x, medium-1x, medium-2x, large-1x, large-2x",
        ),
        refused(
            "tag too long",
            json_bytes(json!({"options": {"tags": ["ok", "x".repeat(129)]}})),
            StatusCode::BAD_REQUEST,
            "options.tags: each tag must be at most 128 characters",
        ),
        refused(
            "idempotency key too long",
            json_bytes(json!({"options": {"idempotencyKey": "k".repeat(2049)}})),
            StatusCode::BAD_REQUEST,
            "options.idempotencyKey: must be at most 2048 characters",
        ),
        refused(
            "eleven tags",
            json_bytes(json!({"options": {"tags": eleven_tags}})),
            StatusCode::UNPROCESSABLE_ENTITY,
            "Runs can only have 10 tags, you're trying to set 11.",
        ),
        refused(
            "metadata over 256 KiB",
            json_bytes(json!({"options": {"metadata": {"big": "m".repeat(262_144)}}})),
            StatusCode::PAYLOAD_TOO_LARGE,
            "Metadata exceeds maximum size of 262144 bytes",
        ),
        refused(
            "body over 3 MiB",
            json_bytes(json!({"payload": "p".repeat(three_mib)})),
            StatusCode::PAYLOAD_TOO_LARGE,
            "Request body too large (limit 3145728 bytes)",
        ),
    ];

    for (i, case) in cases.iter().enumerate() {
        let idempotency_key = format!("refused-{i}");
        let reply = send(
            app.server
                .trigger_request(key, "t")
                .header(CONTENT_TYPE, "application/json")
                .header("idempotency-key", &idempotency_key)
                .body(case.body.clone()),
        )
        .await;
        assert_eq!(
            (reply.status, &reply.body),
            (case.status, &json!({ "error": case.error })),
            "{}",
            case.what
        );
        reply.assert_error(case.status, &case.error);

        // Had the refused request stored a run, it would hold the key and come back cached.
        let proof = send(
            app.server
                .trigger_request(key, "t")
                .header("idempotency-key", &idempotency_key)
                .json(&json!({})),
        )
        .await;
        assert_eq!(
            redact(&proof.body),
            json!({"id": "<run id>", "isCached": false}),
            "{}: a run already held its idempotency key",
            case.what
        );
    }
}

/// Sends each body with its own idempotency key and asserts a 400 whose error names the
/// body, then proves no run took the key.
async fn assert_refused_as_not_an_object(app: &TestApp, bodies: &[&str]) {
    for (i, body) in bodies.iter().enumerate() {
        let idempotency_key = format!("not-an-object-{i}");
        let reply = send(
            app.server
                .trigger_request(&app.dev_key, "t")
                .header(CONTENT_TYPE, "application/json")
                .header("idempotency-key", &idempotency_key)
                .body(body.to_string()),
        )
        .await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{body}: {reply:?}");
        let error = reply.body["error"].as_str().unwrap_or_default();
        assert!(error.starts_with("body: "), "{body}: {reply:?}");
        reply.assert_error(StatusCode::BAD_REQUEST, error);
        let proof = send(
            app.server
                .trigger_request(&app.dev_key, "t")
                .header("idempotency-key", &idempotency_key)
                .json(&json!({})),
        )
        .await;
        assert_eq!(
            redact(&proof.body),
            json!({"id": "<run id>", "isCached": false}),
            "{body}: a run already held its idempotency key"
        );
    }
}

#[tokio::test]
async fn a_body_that_is_a_json_scalar_is_refused() {
    let app = TestApp::start();
    assert_refused_as_not_an_object(&app, &["null", "1", "\"text\"", "true"]).await;
}

#[tokio::test]
async fn a_body_that_is_a_json_array_is_refused() {
    let app = TestApp::start();
    assert_refused_as_not_an_object(
        &app,
        &[
            "[]",
            "[{\"from\": \"array\"}]",
            "[{\"n\": 1}, null, {\"tags\": [\"x\"]}]",
        ],
    )
    .await;
}

#[tokio::test]
async fn nested_options_given_as_arrays_are_refused() {
    let app = TestApp::start();
    for (body, field) in [
        (json!({"options": [null, null, null, ["x"]]}), "options"),
        (json!({"options": {"queue": ["emails"]}}), "options.queue"),
        (
            json!({"options": {"idempotencyKey": "k", "idempotencyKeyOptions": ["k", "run"]}}),
            "options.idempotencyKeyOptions",
        ),
    ] {
        let reply = send(
            app.server
                .trigger_request(&app.dev_key, "t")
                .header("idempotency-key", "nested")
                .json(&body),
        )
        .await;
        reply.assert_error(
            StatusCode::BAD_REQUEST,
            &format!("{field}: must be a JSON object"),
        );
    }
    let proof = send(
        app.server
            .trigger_request(&app.dev_key, "t")
            .header("idempotency-key", "nested")
            .json(&json!({})),
    )
    .await;
    assert_eq!(
        redact(&proof.body),
        json!({"id": "<run id>", "isCached": false})
    );
}

#[tokio::test]
async fn a_body_just_under_the_limits_is_accepted() {
    let app = TestApp::start();
    let key = &app.dev_key;
    // Ten tags, 128-character tags, a 2048-character key, metadata of exactly 256 KiB
    // once serialized: every limit is inclusive.
    let ten_tags: Vec<String> = (0..9)
        .map(|i| format!("tag-{i}"))
        .chain(["t".repeat(128)])
        .collect();
    let filler = 262_144 - json!({"m": ""}).to_string().len();
    let metadata = json!({"m": "x".repeat(filler)});
    assert_eq!(metadata.to_string().len(), 262_144);
    let id = app
        .server
        .trigger_new(
            key,
            "t",
            &json!({"payload": "p".repeat(2 * 1024 * 1024), "options": {
                "tags": ten_tags,
                "idempotencyKey": "k".repeat(2048),
                "metadata": metadata,
            }}),
        )
        .await;
    let body = app.server.run(key, &id).await;
    assert_eq!(body["tags"].as_array().map(Vec::len), Some(10));
    assert_eq!(body["metadata"], metadata);
    assert_eq!(body["idempotencyKey"].as_str().map(str::len), Some(2048));
}

#[tokio::test]
async fn unknown_routes_are_404_and_wrong_methods_405() {
    let app = TestApp::start();
    let key = &app.dev_key;
    // (`/` is the dashboard's: a redirect to its pages, tested in tests/dashboard.rs.)
    for path in [
        "/nope",
        "/api/v1/nope",
        "/api/v3/runs",
        "/api/v3/runs/run_x/extra",
    ] {
        for authorized in [false, true] {
            let mut request = app.server.request(Method::GET, path);
            if authorized {
                request = request.bearer_auth(key);
            }
            let reply = send(request).await;
            if authorized || !path.starts_with("/api/") {
                reply.assert_error(StatusCode::NOT_FOUND, "Not found");
            } else {
                // The /api guard answers before routing (contract §1.4).
                assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{path}: {reply:?}");
            }
        }
    }

    let cases = [
        (Method::DELETE, "/api/v3/runs/x", "GET"),
        (Method::POST, "/api/v3/runs/x", "GET"),
        (Method::GET, "/api/v1/tasks/t/trigger", "POST"),
        (Method::POST, "/healthz", "GET"),
    ];
    for (method, path, allowed) in cases {
        let reply = send(app.server.request(method.clone(), path).bearer_auth(key)).await;
        reply.assert_error(StatusCode::METHOD_NOT_ALLOWED, "Method not allowed");
        let allow = reply
            .headers
            .get(ALLOW)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        assert!(
            allow.split(',').any(|m| m.trim() == allowed),
            "{method} {path}: Allow is {allow:?}, expected it to list {allowed}"
        );
    }
}

#[tokio::test]
async fn run_ids_are_unique_and_sort_by_creation() {
    let app = TestApp::start();
    let mut ids = Vec::new();
    for _ in 0..20 {
        let id = app.server.trigger_new(&app.dev_key, "t", &json!({})).await;
        assert_friendly_id(&id, "run");
        ids.push(id);
    }
    let mut sorted = ids.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), ids.len(), "duplicate ids: {ids:?}");
    // Ids start with the creation time in ms; runs created in different ms sort in order.
    for pair in ids.windows(2) {
        let (a, b) = (&pair[0], &pair[1]);
        let (ta, tb) = (
            timestamp(&app.server.run(&app.dev_key, a).await["createdAt"]),
            timestamp(&app.server.run(&app.dev_key, b).await["createdAt"]),
        );
        if ta < tb {
            assert!(a < b, "{a} ({ta}) sorts after {b} ({tb})");
        }
    }
}

/// The ids of a retrieve answer's related runs: `(parent, root, children)`.
fn related(run: &Value) -> (Value, Value, Vec<Value>) {
    let related = &run["relatedRuns"];
    let children = related["children"]
        .as_array()
        .unwrap_or_else(|| panic!("no children in {run}"))
        .iter()
        .map(|child| child["id"].clone())
        .collect();
    (
        related["parent"]["id"].clone(),
        related["root"]["id"].clone(),
        children,
    )
}

/// Leases queued run `run` of `task` to a new worker and starts it: `EXECUTING`.
async fn execute(server: &runnel_testkit::Server, key: &str, task: &str, run: &str) {
    let worker = server.register_worker(key, &[task]).await;
    let (leased, attempt) = server.dequeue_one(key, &worker).await;
    assert_eq!(leased, run);
    let started = server
        .worker_call(key, &worker, "start", &json!({"attemptIds": [attempt]}))
        .await;
    assert_eq!(started.status, StatusCode::OK, "{started:?}");
}

#[tokio::test]
async fn resume_parent_on_completion_needs_an_executing_parent() {
    let app = TestApp::start();
    let (server, key) = (&app.server, app.dev_key.as_str());
    server.register_worker(key, &["t"]).await;
    let parent = server.trigger_new(key, "t", &json!({})).await;
    let refused = server
        .trigger(
            key,
            "t",
            &json!({"options": {"parentRunId": parent, "resumeParentOnCompletion": true}}),
        )
        .await;
    refused.assert_error(
        StatusCode::BAD_REQUEST,
        &format!("Run {parent} is QUEUED; only an executing run can wait"),
    );
    // Nothing was created, and the parent still only waits in its queue.
    let list = send(server.request(Method::GET, "/api/v1/runs").bearer_auth(key)).await;
    assert_eq!(
        list.body["data"].as_array().map(Vec::len),
        Some(1),
        "{list:?}"
    );
    assert_eq!(server.run(key, &parent).await["status"], "QUEUED");

    // An executing parent waits for the child and resumes when it ends.
    execute(server, key, "t", &parent).await;
    let child = server
        .trigger_new(
            key,
            "c",
            &json!({"options": {"parentRunId": parent, "resumeParentOnCompletion": true}}),
        )
        .await;
    let status = |run: String| async move {
        server
            .retrieve_as(
                key,
                &run,
                runnel_core::status::ApiVersion::CURRENT_HEADER_VALUE,
            )
            .await
            .body["status"]
            .clone()
    };
    assert_eq!(status(parent.clone()).await, "WAITING");
    let worker = server.register_worker(key, &["c"]).await;
    assert_eq!(
        server.run_one(key, &worker, json!({"ok": true})).await,
        child
    );
    assert_eq!(status(parent.clone()).await, "EXECUTING");
}

#[tokio::test]
async fn parent_run_id_links_the_new_run_under_its_parent() {
    let app = TestApp::start();
    let (server, key) = (&app.server, app.dev_key.as_str());
    let root = server.trigger_new(key, "t", &json!({"payload": 1})).await;
    let child = server
        .trigger_new(key, "c", &json!({"options": {"parentRunId": root}}))
        .await;
    // `resumeParentOnCompletion` makes the parent wait, so it must be executing.
    execute(server, key, "c", &child).await;
    let grandchild = server
        .trigger_new(
            key,
            "t",
            &json!({"options": {"parentRunId": child, "resumeParentOnCompletion": true}}),
        )
        .await;

    let run = server.run(key, &grandchild).await;
    assert_eq!(related(&run), (json!(child), json!(root), vec![]), "{run}");
    assert_eq!(
        (&run["depth"], &run["triggerFunction"]),
        (&json!(2), &json!("triggerAndWait"))
    );
    // Related runs are whole run objects (without payload or related runs of their own).
    assert_eq!(run["relatedRuns"]["parent"]["depth"], 1);
    assert_eq!(run["relatedRuns"]["root"]["depth"], 0);
    assert_eq!(run["relatedRuns"]["parent"].get("relatedRuns"), None);
    let run = server.run(key, &child).await;
    assert_eq!(
        related(&run),
        (json!(root), json!(root), vec![json!(grandchild)])
    );
    assert_eq!(
        (&run["depth"], &run["triggerFunction"]),
        (&json!(1), &json!("trigger"))
    );
    let run = server.run(key, &root).await;
    assert_eq!(
        related(&run),
        (Value::Null, Value::Null, vec![json!(child)])
    );
    assert_eq!(run["relatedRuns"].get("parent"), None, "{run}");

    // The list shows each run's depth.
    let list = send(server.request(Method::GET, "/api/v1/runs").bearer_auth(key)).await;
    let depths: Vec<(Value, Value)> = list.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|run| (run["id"].clone(), run["depth"].clone()))
        .collect();
    for (id, depth) in [(&root, 0), (&child, 1), (&grandchild, 2)] {
        assert!(depths.contains(&(json!(id), json!(depth))), "{depths:?}");
    }

    // A parent that is not a run of this environment is refused, and nothing is created.
    let prod = app.keys_create("prod");
    let foreign = server.trigger_new(&prod, "t", &json!({})).await;
    for (parent, message) in [
        (
            "run_0000000000000000000000aa".to_owned(),
            "options.parentRunId: no run run_0000000000000000000000aa in this environment"
                .to_owned(),
        ),
        (
            foreign.clone(),
            format!("options.parentRunId: no run {foreign} in this environment"),
        ),
        (
            "batch_1".to_owned(),
            "options.parentRunId: must be a run id (run_…)".to_owned(),
        ),
    ] {
        server
            .trigger(key, "t", &json!({"options": {"parentRunId": parent}}))
            .await
            .assert_error(StatusCode::BAD_REQUEST, &message);
    }
    let list = send(server.request(Method::GET, "/api/v1/runs").bearer_auth(key)).await;
    assert_eq!(
        list.body["data"].as_array().map(Vec::len),
        Some(3),
        "{:?}",
        list.body
    );

    // Batches: the one-shot batch's items link to their own parentRunId; a batch
    // created under a run that does not exist is refused.
    let batch = send(
        server
            .request(Method::POST, "/api/v1/tasks/batch")
            .bearer_auth(key)
            .json(&json!({"items": [{"task": "t", "options": {"parentRunId": child}}]})),
    )
    .await;
    let item = batch.body["runs"][0]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("{batch:?}"))
        .to_owned();
    let run = server.run(key, &item).await;
    assert_eq!(related(&run), (json!(child), json!(root), vec![]));
    assert_eq!(run["depth"], 2);
    let missing = send(
        server
            .request(Method::POST, "/api/v3/batches")
            .bearer_auth(key)
            .json(&json!({"runCount": 1, "parentRunId": "run_0000000000000000000000aa"})),
    )
    .await;
    missing.assert_error(
        StatusCode::BAD_REQUEST,
        "parentRunId: no run run_0000000000000000000000aa in this environment",
    );
}
