//! The HTTP API of a real `runnel serve` process: trigger, retrieve, idempotency, auth,
//! environment scoping, error bodies, and that rejected requests store nothing.

mod support;

use std::time::Duration;

use serde_json::{json, Value};
use support::{contains_null, parse_time, redact, DataDir};

#[test]
fn healthz_answers_ok() {
    let dir = DataDir::new();
    let server = dir.start();
    let reply = server
        .client("")
        .without_key()
        .send("GET", "/healthz", None, &[]);
    assert_eq!((reply.status, reply.body), (200, json!({"status": "ok"})));
}

#[test]
fn minimal_trigger_then_retrieve_whole_body() {
    let dir = DataDir::new();
    let server = dir.start();
    let api = server.client(&server.key());
    let (id, cached) = api.trigger_ok("hello-world", &json!({"payload": {"hello": "world"}}));
    assert!(support::is_run_id(&id) && !cached);

    let reply = api.retrieve(&id);
    assert_eq!(reply.status, 200);
    assert!(!contains_null(&reply.body), "{}", reply.body);
    assert_eq!(reply.body["id"], id.as_str());
    assert_eq!(reply.body["createdAt"], reply.body["updatedAt"]);
    assert_eq!(
        redact(&reply.body),
        json!({
            "id": "<run id>",
            "status": "QUEUED",
            "taskIdentifier": "hello-world",
            "isQueued": true,
            "isExecuting": false,
            "isWaiting": false,
            "isCompleted": false,
            "isSuccess": false,
            "isFailed": false,
            "isCancelled": false,
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
            "attempts": []
        })
    );
}

#[test]
fn trigger_with_every_option_is_stored_and_shown() {
    let dir = DataDir::new();
    let server = dir.start();
    let api = server.client(&server.key());
    let body = json!({
        "payload": {"order": 42},
        "context": {"ignored": true},
        "options": {
            "tags": ["zeta", "alpha", " ", "alpha"],
            "metadata": {"progress": 0.5},
            "idempotencyKey": "5f2b".repeat(16),
            "idempotencyKeyOptions": {"key": "order-42", "scope": "global"},
            "idempotencyKeyTTL": "1h",
            "delay": "1h",
            "ttl": 3600,
            "maxAttempts": 5,
            "maxDuration": 120,
            "machine": "small-2x",
            "priority": 10,
            "test": true,
            "queue": {"name": "payments"},
            "concurrencyKey": 7,
            "lockToVersion": "20260101.3"
        }
    });
    let before = chrono::Utc::now();
    let (id, _) = api.trigger_ok("charge", &body);
    let reply = api.retrieve(&id);
    assert_eq!(reply.status, 200);
    assert!(!contains_null(&reply.body), "{}", reply.body);
    let delayed_until = parse_time(reply.body["delayedUntil"].as_str().unwrap());
    let hour = chrono::Duration::hours(1);
    assert!(delayed_until >= before + hour - chrono::Duration::seconds(1));
    assert!(delayed_until <= chrono::Utc::now() + hour);
    assert_eq!(
        redact(&reply.body),
        json!({
            "id": "<run id>",
            "status": "DELAYED",
            "taskIdentifier": "charge",
            "idempotencyKey": "order-42",
            "version": "20260101.3",
            "isQueued": true,
            "isExecuting": false,
            "isWaiting": false,
            "isCompleted": false,
            "isSuccess": false,
            "isFailed": false,
            "isCancelled": false,
            "isTest": true,
            "createdAt": "<timestamp>",
            "updatedAt": "<timestamp>",
            "delayedUntil": "<timestamp>",
            "ttl": "1h",
            "tags": ["alpha", "zeta"],
            "costInCents": 0.0,
            "baseCostInCents": 0.0,
            "durationMs": 0,
            "metadata": {"progress": 0.5},
            "depth": 0,
            "triggerFunction": "trigger",
            "payload": {"order": 42},
            "relatedRuns": {"children": []},
            "attemptCount": 0,
            "attempts": []
        })
    );
    // The same run in the v4 vocabulary.
    let current = api.retrieve_current(&id);
    assert_eq!(current.body["status"], "DELAYED");
}

#[test]
fn payload_types_other_than_json_are_decoded_or_kept_as_text() {
    let dir = DataDir::new();
    let server = dir.start();
    let api = server.client(&server.key());
    let superjson = json!({
        "payload": "{\"json\":{\"when\":\"2026-01-01T00:00:00.000Z\"},\"meta\":{\"values\":{\"when\":[\"Date\"]}}}",
        "options": {"payloadType": "application/super+json"}
    });
    let (id, _) = api.trigger_ok("t", &superjson);
    assert_eq!(
        api.retrieve(&id).body["payload"],
        json!({"when": "2026-01-01T00:00:00.000Z"})
    );
    let (id, _) = api.trigger_ok(
        "t",
        &json!({"payload": "plain words", "options": {"payloadType": "text/plain"}}),
    );
    assert_eq!(api.retrieve(&id).body["payload"], json!("plain words"));
    let (id, _) = api.trigger_ok("t", &json!({}));
    assert!(
        api.retrieve(&id).body.get("payload").is_none(),
        "no payload, no field"
    );
}

#[test]
fn statuses_follow_the_callers_vocabulary_and_ttl_expires_runs() {
    let dir = DataDir::new();
    let server = dir.start();
    let api = server.client(&server.key());
    let (id, _) = api.trigger_ok("t", &json!({"options": {"ttl": "1s"}}));
    let queued = api.retrieve_current(&id).body;
    assert_eq!(
        (queued["status"].clone(), queued["isQueued"].clone()),
        (json!("QUEUED"), json!(true))
    );

    let expired = api.wait_for(&id, Duration::from_secs(10), |b| b["status"] == "EXPIRED");
    let current = api.retrieve_current(&id).body;
    assert_eq!(current["status"], "EXPIRED");
    for body in [&expired, &current] {
        assert_eq!(body["isCompleted"], true);
        assert_eq!(body["isFailed"], true);
        assert_eq!(body["isQueued"], false);
        assert_eq!(body["isSuccess"], false);
        assert_eq!(
            body["error"],
            json!({"message": "Run expired because the TTL (1s) was reached"})
        );
        assert_eq!(body["expiredAt"], body["finishedAt"]);
    }
    let created = parse_time(expired["createdAt"].as_str().unwrap());
    let expired_at = parse_time(expired["expiredAt"].as_str().unwrap());
    assert!(
        expired_at - created >= chrono::Duration::seconds(1),
        "not before its TTL"
    );
}

#[test]
fn idempotency_keys_dedupe_until_the_run_expires_or_the_key_does() {
    let dir = DataDir::new();
    let server = dir.start();
    let api = server.client(&server.key());
    let keyed = json!({"payload": 1, "options": {"idempotencyKey": "order-1", "ttl": "1s"}});
    let (first, cached) = api.trigger_ok("charge", &keyed);
    assert!(!cached);
    assert_eq!(api.trigger_ok("charge", &keyed), (first.clone(), true));
    let (other_task, cached) = api.trigger_ok("refund", &keyed);
    assert!(!cached && other_task != first, "keys are per task");

    // Via the header.
    let header = api.send(
        "POST",
        "/api/v1/tasks/charge/trigger",
        Some(b"{}".to_vec()),
        &[("idempotency-key", "order-1")],
    );
    assert_eq!(
        (header.status, header.body["id"].as_str()),
        (200, Some(first.as_str()))
    );
    assert_eq!(header.body["isCached"], true);

    // The keyed run expires: the key now makes a new run.
    api.wait_for(&first, Duration::from_secs(10), |b| {
        b["status"] == "EXPIRED"
    });
    let (second, cached) = api.trigger_ok("charge", &keyed);
    assert!(!cached);
    assert_ne!(second, first);

    // A key with its own short TTL stops deduplicating when it lapses.
    let short = json!({"options": {"idempotencyKey": "short", "idempotencyKeyTTL": "1s"}});
    let (a, _) = api.trigger_ok("t", &short);
    assert_eq!(api.trigger_ok("t", &short), (a.clone(), true));
    std::thread::sleep(Duration::from_millis(1100));
    let (b, cached) = api.trigger_ok("t", &short);
    assert!(!cached && b != a);
}

#[test]
fn authentication_errors() {
    let dir = DataDir::new();
    let server = dir.start();
    let anonymous = server.client("").without_key();
    for (method, path) in [
        ("GET", "/api/v3/runs/run_abc"),
        ("POST", "/api/v1/tasks/t/trigger"),
    ] {
        let reply = anonymous.send(method, path, Some(b"{}".to_vec()), &[]);
        assert_eq!(
            (reply.status, reply.body),
            (401, json!({"error": "No authorization header provided"}))
        );
    }
    for key in [
        "tr_dev_AAAAAAAAAAAAAAAAAAAAAAAA",
        "not-a-key",
        "tr_dev_short",
    ] {
        let reply = server.client(key).retrieve("run_abc");
        assert_eq!(
            (reply.status, reply.body),
            (401, json!({"error": "Invalid API Key"})),
            "{key}"
        );
    }

    // A revoked key stops working at once; other keys keep working.
    let extra = dir.create_key("dev");
    let (id, _) = server.client(&extra).trigger_ok("t", &json!({}));
    let (ok, stdout, stderr) = dir.cli(&["keys", "revoke", &extra[..13]]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains(&extra[..13]));
    let reply = server.client(&extra).retrieve(&id);
    assert_eq!(
        (reply.status, reply.body),
        (401, json!({"error": "Invalid API Key"}))
    );
    assert_eq!(server.client(&server.key()).retrieve(&id).status, 200);
}

#[test]
fn a_run_is_invisible_to_other_environments() {
    let dir = DataDir::new();
    let server = dir.start();
    let dev = server.client(&server.key());
    let staging = server.client(&dir.create_key("staging"));
    let (dev_run, _) = dev.trigger_ok("t", &json!({}));
    let not_found = json!({"error": "Not found"});
    for id in [
        dev_run.as_str(),
        "run_0000000000000000000000",
        "not-a-run-id",
    ] {
        let reply = staging.retrieve(id);
        assert_eq!((reply.status, &reply.body), (404, &not_found), "{id}");
        assert_eq!(reply.headers["x-should-retry"], "false");
    }
    let (staging_run, _) =
        staging.trigger_ok("t", &json!({"options": {"idempotencyKey": "shared"}}));
    assert_eq!(staging.retrieve(&staging_run).status, 200);
    assert_eq!(dev.retrieve(&staging_run).status, 404);
    // Idempotency keys are per environment too.
    let (dev_keyed, cached) =
        dev.trigger_ok("t", &json!({"options": {"idempotencyKey": "shared"}}));
    assert!(!cached && dev_keyed != staging_run);
}

/// Each rejected request carries an idempotency key; a valid trigger with that key must
/// then create a run (`isCached: false`), proving the rejected one stored nothing.
#[test]
fn bad_input_is_refused_with_its_status_and_stores_nothing() {
    let dir = DataDir::new();
    let server = dir.start();
    let api = server.client(&server.key());
    let key_header = |k: &str| vec![("idempotency-key".to_owned(), k.to_owned())];
    let eleven: Vec<String> = (0..11).map(|i| format!("tag{i}")).collect();
    let huge_metadata = "m".repeat(262_144);
    let cases: Vec<(&str, Vec<u8>, u16, Value)> = vec![
        (
            "bad-json",
            b"{\"payload\": ".to_vec(),
            400,
            json!({"error": "Invalid JSON"}),
        ),
        (
            "empty",
            Vec::new(),
            400,
            json!({"error": "Request body is empty"}),
        ),
        (
            "wrong-type",
            br#"{"options":{"maxAttempts":"x"}}"#.to_vec(),
            400,
            json!({"error": "options.maxAttempts: invalid type: string \"x\", expected i64"}),
        ),
        (
            "bad-ttl",
            br#"{"options":{"ttl":"forever"}}"#.to_vec(),
            400,
            json!({"error": "options.ttl: \"forever\" is not a duration like 10m, 1h42m or 3600s"}),
        ),
        (
            "bad-delay",
            br#"{"options":{"delay":"soon"}}"#.to_vec(),
            400,
            json!({"error": "options.delay: \"soon\" is neither a duration (like 30s, 1h30m) nor an ISO 8601 date"}),
        ),
        (
            "bad-machine",
            br#"{"options":{"machine":"huge"}}"#.to_vec(),
            400,
            json!({"error": "options.machine: must be one of micro, small-1x, small-2x, medium-1x, medium-2x, large-1x, large-2x"}),
        ),
        (
            "long-tag",
            json!({"options": {"tags": ["x".repeat(129)]}})
                .to_string()
                .into_bytes(),
            400,
            json!({"error": "options.tags: each tag must be at most 128 characters"}),
        ),
        (
            "too-many-tags",
            json!({"options": {"tags": eleven}})
                .to_string()
                .into_bytes(),
            422,
            json!({"error": "Runs can only have 10 tags, you're trying to set 11."}),
        ),
        (
            "big-metadata",
            json!({"options": {"metadata": {"m": huge_metadata}}})
                .to_string()
                .into_bytes(),
            413,
            json!({"error": "Metadata exceeds maximum size of 262144 bytes"}),
        ),
        (
            "huge-body",
            json!({"payload": "p".repeat(3 * 1024 * 1024)})
                .to_string()
                .into_bytes(),
            413,
            json!({"error": "Request body too large (limit 3145728 bytes)"}),
        ),
    ];
    for (key, body, status, want) in cases {
        let headers = key_header(key);
        let headers: Vec<(&str, &str)> = headers
            .iter()
            .map(|(a, b)| (a.as_str(), b.as_str()))
            .collect();
        let reply = api.send("POST", "/api/v1/tasks/t/trigger", Some(body), &headers);
        assert_eq!((reply.status, &reply.body), (status, &want), "{key}");
        let (_, cached) = api.trigger_ok("t", &json!({"options": {"idempotencyKey": key}}));
        assert!(!cached, "{key}: the rejected request stored a run");
    }

    let long_key = json!({"options": {"idempotencyKey": "k".repeat(2049)}});
    let reply = api.trigger("t", &long_key);
    assert_eq!(
        (reply.status, reply.body),
        (
            400,
            json!({"error": "options.idempotencyKey: must be at most 2048 characters"})
        )
    );
}

#[test]
fn unknown_routes_and_wrong_methods() {
    let dir = DataDir::new();
    let server = dir.start();
    let api = server.client(&server.key());
    let reply = api.send("GET", "/api/v9/nothing", None, &[]);
    assert_eq!(
        (reply.status, reply.body),
        (404, json!({"error": "Not found"}))
    );
    let reply = api.send("DELETE", "/api/v3/runs/run_abc", None, &[]);
    assert_eq!(
        (reply.status, &reply.body),
        (405, &json!({"error": "Method not allowed"}))
    );
    assert!(reply.headers["allow"].to_str().unwrap().contains("GET"));
    let reply = api.send("GET", "/api/v1/tasks/t/trigger", None, &[]);
    assert_eq!(reply.status, 405);
}
