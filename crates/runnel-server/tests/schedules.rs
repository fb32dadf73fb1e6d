//! Cron schedules over HTTP (contract §2 rows 22–27, §2.5): create and its upsert by
//! deduplication key, list paging, retrieve by id and by key, update, delete, activate
//! and deactivate; the 400s and 422s of bad settings; declarative schedules that only
//! their task may change; one environment never seeing another's schedules; and the
//! timezone list without credentials.
//!
//! Firing is the engine's (its tests drive a manual clock); the compatibility suite
//! fires a real schedule through a real worker.

use chrono::{DateTime, Utc};
use reqwest::{Method, StatusCode};
use runnel_core::schedule::Timing;
use runnel_testkit::{assert_friendly_id, send, timestamp, Reply, TestApp};
use serde_json::{json, Value};

const NOT_FOUND: &str = "Schedule not found";

async fn call(app: &TestApp, method: Method, path: &str, key: &str, body: Option<Value>) -> Reply {
    let mut request = app.server.request(method, path).bearer_auth(key);
    if let Some(body) = body {
        request = request.json(&body);
    }
    send(request).await
}

async fn ok(app: &TestApp, method: Method, path: &str, key: &str, body: Option<Value>) -> Value {
    let reply = call(app, method, path, key, body).await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    reply.body
}

/// Registers a worker in the key's environment serving `tasks` (task definitions).
async fn register(app: &TestApp, key: &str, tasks: Value) {
    let reply = app
        .server
        .register_worker_as(key, &json!({"name": "schedules", "tasks": tasks}))
        .await;
    assert_eq!(reply.status, StatusCode::OK, "register: {reply:?}");
}

/// The tasks most tests use: `nightly` (scheduled), `plain` (not scheduled) and
/// `declared` (with its own cron, so a DECLARATIVE schedule).
async fn register_tasks(app: &TestApp, key: &str) {
    register(
        app,
        key,
        json!([
            {"id": "nightly", "scheduled": true},
            {"id": "plain"},
            {"id": "declared", "schedule": {"cron": "30 4 * * *", "timezone": "Asia/Tokyo"}},
        ]),
    )
    .await;
}

/// The `{id, slug}` of the key's environment.
async fn environment_id(app: &TestApp, key: &str) -> String {
    let me = ok(app, Method::GET, "/api/v1/auth/whoami", key, None).await;
    me["environment"]["id"].as_str().unwrap().to_owned()
}

/// The next occurrence of `cron` in `timezone` after `after`.
fn next_after(cron: &str, timezone: &str, after: DateTime<Utc>) -> String {
    let timing = Timing::new(cron, Some(timezone), None, "test").unwrap();
    runnel_core::view::iso(timing.next_after(after).unwrap())
}

/// `schedule` with its id checked (`sched_…`) and replaced by `"<id>"`.
fn without_id(schedule: &Value) -> Value {
    let mut out = schedule.clone();
    assert_friendly_id(out["id"].as_str().expect("an id"), "sched");
    out["id"] = json!("<id>");
    out
}

fn id_of(schedule: &Value) -> String {
    schedule["id"].as_str().expect("an id").to_owned()
}

fn create(key: &str, task: &str, cron: &str) -> Value {
    json!({"task": task, "cron": cron, "deduplicationKey": key})
}

#[tokio::test]
async fn create_upserts_by_key_and_reads_back_by_id_and_by_key() {
    let app = TestApp::start();
    let key = app.dev_key.as_str();
    register_tasks(&app, key).await;
    let environment = environment_id(&app, key).await;

    let before = Utc::now();
    let created = ok(
        &app,
        Method::POST,
        "/api/v1/schedules",
        key,
        Some(json!({
            "task": "nightly",
            "cron": "0 9 * * 1",
            "deduplicationKey": "weekly-report",
            "externalId": "user-7",
            "timezone": "Europe/Paris",
            "window": "30m",
        })),
    )
    .await;
    let next = next_after("0 9 * * 1", "Europe/Paris", before);
    let effective = timestamp(&created["nextRunEffectiveAt"]);
    let nominal = timestamp(&json!(next));
    assert!(
        effective >= nominal && effective < nominal + chrono::Duration::minutes(30),
        "the effective time is inside the 30 minute window: {created}"
    );
    assert_eq!(
        without_id(&created),
        json!({
            "id": "<id>",
            "type": "IMPERATIVE",
            "task": "nightly",
            "active": true,
            "deduplicationKey": "weekly-report",
            "externalId": "user-7",
            "generator": {
                "type": "CRON",
                "expression": "0 9 * * 1",
                "description": created["generator"]["description"],
            },
            "timezone": "Europe/Paris",
            "window": "30m",
            "nextRun": next,
            "nextRunEffectiveAt": created["nextRunEffectiveAt"],
            "environments": [{"id": environment, "type": "DEVELOPMENT", "userName": null}],
        })
    );
    let description = created["generator"]["description"].as_str().unwrap();
    assert!(
        description.contains("09:00") && description.contains("Monday"),
        "{description}"
    );
    let id = id_of(&created);

    // The same key again: the same schedule, its settings replaced.
    let before = Utc::now();
    let upserted = ok(
        &app,
        Method::POST,
        "/api/v1/schedules",
        key,
        Some(create("weekly-report", "nightly", "*/5 * * * *")),
    )
    .await;
    assert_eq!(
        upserted,
        json!({
            "id": id,
            "type": "IMPERATIVE",
            "task": "nightly",
            "active": true,
            "deduplicationKey": "weekly-report",
            "externalId": null,
            "generator": {
                "type": "CRON",
                "expression": "*/5 * * * *",
                "description": upserted["generator"]["description"],
            },
            "timezone": "UTC",
            "nextRun": next_after("*/5 * * * *", "UTC", before),
            "nextRunEffectiveAt": next_after("*/5 * * * *", "UTC", before),
            "environments": [{"id": environment, "type": "DEVELOPMENT", "userName": null}],
        })
    );

    // By id and by key, the same object.
    let by_id = ok(
        &app,
        Method::GET,
        &format!("/api/v1/schedules/{id}"),
        key,
        None,
    )
    .await;
    assert_eq!(by_id, upserted);
    let by_key = ok(
        &app,
        Method::GET,
        "/api/v1/schedules/weekly-report",
        key,
        None,
    )
    .await;
    assert_eq!(by_key, upserted);

    // One imperative schedule (plus the declared task's).
    let listed = ok(&app, Method::GET, "/api/v1/schedules", key, None).await;
    let imperative: Vec<&Value> = listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["type"] == "IMPERATIVE")
        .collect();
    assert_eq!(imperative, vec![&upserted]);
}

#[tokio::test]
async fn the_list_pages_and_caps_the_page_size() {
    let app = TestApp::start();
    let key = app.dev_key.as_str();
    register(&app, key, json!([{"id": "nightly", "scheduled": true}])).await;
    let mut ids = Vec::new();
    for i in 0..103 {
        let created = ok(
            &app,
            Method::POST,
            "/api/v1/schedules",
            key,
            Some(create(&format!("key-{i:03}"), "nightly", "0 0 * * *")),
        )
        .await;
        ids.push(id_of(&created));
    }
    let page = |query: &str| {
        let path = format!("/api/v1/schedules{query}");
        let app = &app;
        async move { ok(app, Method::GET, &path, key, None).await }
    };
    let ids_of = |page: &Value| -> Vec<String> {
        page["data"].as_array().unwrap().iter().map(id_of).collect()
    };

    // Oldest first; ids created in the same millisecond may come in either order, so
    // the pages are checked against the whole list (one page of 100, then the rest).
    let capped = page("?perPage=500").await;
    assert_eq!(
        capped["pagination"],
        json!({"currentPage": 1, "totalPages": 2, "count": 103}),
        "above 100, 100"
    );
    let rest = page("?page=2&perPage=100").await;
    let all: Vec<String> = [ids_of(&capped), ids_of(&rest)].concat();
    assert_eq!(all.len(), 103);
    let mut sorted = all.clone();
    sorted.sort();
    ids.sort();
    assert_eq!(sorted, ids, "every schedule once");

    let first = page("?page=1&perPage=40").await;
    assert_eq!(
        first["pagination"],
        json!({"currentPage": 1, "totalPages": 3, "count": 103})
    );
    assert_eq!(ids_of(&first), all[..40]);
    let last = page("?page=3&perPage=40").await;
    assert_eq!(
        last["pagination"],
        json!({"currentPage": 3, "totalPages": 3, "count": 103})
    );
    assert_eq!(ids_of(&last), all[80..]);
    let beyond = page("?page=4&perPage=40").await;
    assert_eq!(ids_of(&beyond), Vec::<String>::new());

    // Defaults: page 1 of 20.
    let default = page("").await;
    assert_eq!(
        default["pagination"],
        json!({"currentPage": 1, "totalPages": 6, "count": 103})
    );
    assert_eq!(ids_of(&default), all[..20]);

    for query in [
        "?page=0",
        "?perPage=0",
        "?page=abc",
        "?perPage=-1",
        "?perPage=1.5",
    ] {
        let reply = call(
            &app,
            Method::GET,
            &format!("/api/v1/schedules{query}"),
            key,
            None,
        )
        .await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{query}: {reply:?}");
        assert_eq!(reply.body["error"], "Query Error", "{query}: {reply:?}");
    }
}

#[tokio::test]
async fn update_replaces_the_settings_and_keeps_the_key() {
    let app = TestApp::start();
    let key = app.dev_key.as_str();
    register(
        &app,
        key,
        json!([{"id": "nightly", "scheduled": true}, {"id": "hourly", "scheduled": true}]),
    )
    .await;
    let created = ok(
        &app,
        Method::POST,
        "/api/v1/schedules",
        key,
        Some(json!({
            "task": "nightly", "cron": "0 0 * * *", "deduplicationKey": "k",
            "externalId": "first",
        })),
    )
    .await;
    let id = id_of(&created);

    let before = Utc::now();
    let updated = ok(
        &app,
        Method::PUT,
        "/api/v1/schedules/k",
        key,
        Some(json!({
            "task": "hourly", "cron": "15 * * * *", "timezone": "America/New_York",
            "window": "50%",
        })),
    )
    .await;
    assert_eq!(updated["id"], json!(id));
    assert_eq!(updated["task"], "hourly");
    assert_eq!(updated["deduplicationKey"], "k");
    assert_eq!(
        updated["externalId"],
        Value::Null,
        "an update replaces, it does not merge"
    );
    assert_eq!(updated["generator"]["expression"], "15 * * * *");
    assert_eq!(updated["timezone"], "America/New_York");
    assert_eq!(updated["window"], "50%");
    assert_eq!(
        updated["nextRun"],
        json!(next_after("15 * * * *", "America/New_York", before))
    );
    let read = ok(
        &app,
        Method::GET,
        &format!("/api/v1/schedules/{id}"),
        key,
        None,
    )
    .await;
    assert_eq!(read, updated);

    // The key is not among the update's options; an unknown schedule is 404.
    let reply = call(
        &app,
        Method::PUT,
        &format!("/api/v1/schedules/{id}"),
        key,
        Some(json!({"task": "hourly", "cron": "0 * * * *", "deduplicationKey": "other"})),
    )
    .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{reply:?}");
    assert_eq!(reply.body["error"], "Invalid request body");
    call(
        &app,
        Method::PUT,
        "/api/v1/schedules/nobody",
        key,
        Some(json!({"task": "hourly", "cron": "0 * * * *"})),
    )
    .await
    .assert_error(StatusCode::NOT_FOUND, NOT_FOUND);
    assert_eq!(
        ok(
            &app,
            Method::GET,
            &format!("/api/v1/schedules/{id}"),
            key,
            None
        )
        .await,
        updated
    );
}

#[tokio::test]
async fn delete_removes_by_id_or_key() {
    let app = TestApp::start();
    let key = app.dev_key.as_str();
    register(&app, key, json!([{"id": "nightly", "scheduled": true}])).await;
    let mut ids = Vec::new();
    for dedup in ["a", "b"] {
        let created = ok(
            &app,
            Method::POST,
            "/api/v1/schedules",
            key,
            Some(create(dedup, "nightly", "0 0 * * *")),
        )
        .await;
        ids.push(id_of(&created));
    }
    assert_eq!(
        ok(&app, Method::DELETE, "/api/v1/schedules/a", key, None).await,
        json!({"id": ids[0]})
    );
    let path = format!("/api/v1/schedules/{}", ids[1]);
    assert_eq!(
        ok(&app, Method::DELETE, &path, key, None).await,
        json!({"id": ids[1]})
    );
    for path in ["/api/v1/schedules/a".to_owned(), path] {
        call(&app, Method::GET, &path, key, None)
            .await
            .assert_error(StatusCode::NOT_FOUND, NOT_FOUND);
        call(&app, Method::DELETE, &path, key, None)
            .await
            .assert_error(StatusCode::NOT_FOUND, NOT_FOUND);
    }
    let listed = ok(&app, Method::GET, "/api/v1/schedules", key, None).await;
    assert_eq!(listed["pagination"]["count"], 0);
}

#[tokio::test]
async fn deactivate_clears_the_next_run_and_activate_resumes_from_now() {
    let app = TestApp::start();
    let key = app.dev_key.as_str();
    register(&app, key, json!([{"id": "nightly", "scheduled": true}])).await;
    let created = ok(
        &app,
        Method::POST,
        "/api/v1/schedules",
        key,
        Some(create("k", "nightly", "* * * * *")),
    )
    .await;
    let id = id_of(&created);

    let off = ok(
        &app,
        Method::POST,
        "/api/v1/schedules/k/deactivate",
        key,
        None,
    )
    .await;
    assert_eq!(off["active"], false);
    assert_eq!(off["nextRun"], Value::Null);
    assert_eq!(off["nextRunEffectiveAt"], Value::Null);
    assert_eq!(
        ok(
            &app,
            Method::GET,
            &format!("/api/v1/schedules/{id}"),
            key,
            None
        )
        .await,
        off
    );
    // Upserting an inactive schedule keeps it inactive.
    let kept = ok(
        &app,
        Method::POST,
        "/api/v1/schedules",
        key,
        Some(create("k", "nightly", "*/2 * * * *")),
    )
    .await;
    assert_eq!(
        (&kept["active"], &kept["nextRun"]),
        (&json!(false), &Value::Null)
    );

    let before = Utc::now();
    let on = ok(
        &app,
        Method::POST,
        &format!("/api/v1/schedules/{id}/activate"),
        key,
        None,
    )
    .await;
    assert_eq!(on["active"], true);
    let next = timestamp(&on["nextRun"]);
    assert!(next > before, "the next run is in the future: {on}");
    assert_eq!(
        on["nextRun"],
        json!(next_after("*/2 * * * *", "UTC", before))
    );

    for action in ["activate", "deactivate"] {
        call(
            &app,
            Method::POST,
            &format!("/api/v1/schedules/nobody/{action}"),
            key,
            None,
        )
        .await
        .assert_error(StatusCode::NOT_FOUND, NOT_FOUND);
    }
}

#[tokio::test]
async fn bad_settings_are_refused_and_nothing_is_created() {
    let app = TestApp::start();
    let key = app.dev_key.as_str();
    register_tasks(&app, key).await;
    let base = |field: &str, value: Value| {
        let mut body = create("k", "nightly", "0 0 * * *");
        body[field] = value;
        body
    };
    let unprocessable = [
        (base("cron", json!("61 * * * *")), "Invalid cron expression: "),
        (base("cron", json!("* * * *")), "Invalid cron expression: "),
        (
            base("timezone", json!("Mars/Olympus")),
            "Invalid IANA timezone: 'Mars/Olympus'. The valid names are listed by GET /api/v1/timezones",
        ),
        (base("window", json!("3d")), "window: "),
        (base("window", json!("200%")), "window: cannot exceed 100%"),
        (base("window", json!("25h")), "window: cannot exceed 24 hours"),
        (
            base("task", json!("missing")),
            "Task with identifier missing not found in project.",
        ),
        (
            base("task", json!("plain")),
            "Task with identifier plain is not a scheduled task.",
        ),
    ];
    for (body, message) in unprocessable {
        let reply = call(
            &app,
            Method::POST,
            "/api/v1/schedules",
            key,
            Some(body.clone()),
        )
        .await;
        assert_eq!(
            reply.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{body}: {reply:?}"
        );
        let error = reply.body["error"].as_str().unwrap();
        assert!(
            error.starts_with(message),
            "{body}: {error:?} starts with {message:?}"
        );
    }

    let mut missing_key = create("k", "nightly", "0 0 * * *");
    missing_key
        .as_object_mut()
        .unwrap()
        .remove("deduplicationKey");
    let bad_request = [
        (missing_key, vec![]),
        (base("unknownOption", json!(1)), vec!["unknownOption"]),
        (base("cron", json!(5)), vec!["cron"]),
        (
            base("deduplicationKey", json!("")),
            vec!["deduplicationKey"],
        ),
        (
            base("deduplicationKey", json!("sched_abc")),
            vec!["deduplicationKey"],
        ),
        (
            base("externalId", json!("x".repeat(1025))),
            vec!["externalId"],
        ),
        (json!(["not", "an", "object"]), vec![]),
    ];
    for (body, path) in bad_request {
        let reply = call(
            &app,
            Method::POST,
            "/api/v1/schedules",
            key,
            Some(body.clone()),
        )
        .await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{body}: {reply:?}");
        assert_eq!(reply.body["error"], "Invalid request body", "{reply:?}");
        let issues = reply.body["issues"].as_array().unwrap();
        assert_eq!(issues.len(), 1, "{reply:?}");
        assert_eq!(issues[0]["path"], json!(path), "{body}: {reply:?}");
    }

    let listed = ok(&app, Method::GET, "/api/v1/schedules", key, None).await;
    let types: Vec<&Value> = listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| &s["type"])
        .collect();
    assert_eq!(
        types,
        vec![&json!("DECLARATIVE")],
        "only the declared task's: {listed}"
    );
}

#[tokio::test]
async fn a_declarative_schedule_is_listed_but_only_its_task_changes_it() {
    let app = TestApp::start();
    let key = app.dev_key.as_str();
    register_tasks(&app, key).await;
    let environment = environment_id(&app, key).await;
    let before = Utc::now();
    let listed = ok(&app, Method::GET, "/api/v1/schedules", key, None).await;
    assert_eq!(
        listed["pagination"],
        json!({"currentPage": 1, "totalPages": 1, "count": 1})
    );
    let declared = &listed["data"][0];
    let next = next_after("30 4 * * *", "Asia/Tokyo", before);
    assert_eq!(
        without_id(declared),
        json!({
            "id": "<id>",
            "type": "DECLARATIVE",
            "task": "declared",
            "active": true,
            "externalId": null,
            "generator": {
                "type": "CRON",
                "expression": "30 4 * * *",
                "description": declared["generator"]["description"],
            },
            "timezone": "Asia/Tokyo",
            "nextRun": next,
            "nextRunEffectiveAt": next,
            "environments": [{"id": environment, "type": "DEVELOPMENT", "userName": null}],
        })
    );
    let path = format!("/api/v1/schedules/{}", id_of(declared));
    call(
        &app,
        Method::PUT,
        &path,
        key,
        Some(json!({"task": "declared", "cron": "0 0 * * *"})),
    )
    .await
    .assert_error(
        StatusCode::UNPROCESSABLE_ENTITY,
        "Cannot update a declarative schedule",
    );
    let reply = call(&app, Method::DELETE, &path, key, None).await;
    assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY, "{reply:?}");
    assert!(
        reply.body["error"]
            .as_str()
            .unwrap()
            .starts_with("Cannot delete a declarative schedule"),
        "{reply:?}"
    );
    assert_eq!(ok(&app, Method::GET, &path, key, None).await, *declared);
}

#[tokio::test]
async fn another_environment_never_sees_the_schedule_and_keeps_its_own_keys() {
    let app = TestApp::start();
    let dev = app.dev_key.clone();
    let staging = app.keys_create("staging");
    register(&app, &dev, json!([{"id": "nightly", "scheduled": true}])).await;
    let created = ok(
        &app,
        Method::POST,
        "/api/v1/schedules",
        &dev,
        Some(create("shared-key", "nightly", "0 0 * * *")),
    )
    .await;
    let id = id_of(&created);

    for path in [
        format!("/api/v1/schedules/{id}"),
        "/api/v1/schedules/shared-key".to_owned(),
    ] {
        call(&app, Method::GET, &path, &staging, None)
            .await
            .assert_error(StatusCode::NOT_FOUND, NOT_FOUND);
        call(&app, Method::DELETE, &path, &staging, None)
            .await
            .assert_error(StatusCode::NOT_FOUND, NOT_FOUND);
        call(
            &app,
            Method::POST,
            &format!("{path}/deactivate"),
            &staging,
            None,
        )
        .await
        .assert_error(StatusCode::NOT_FOUND, NOT_FOUND);
    }
    let listed = ok(&app, Method::GET, "/api/v1/schedules", &staging, None).await;
    assert_eq!(listed["pagination"]["count"], 0);
    // Staging has no such task yet.
    let reply = call(
        &app,
        Method::POST,
        "/api/v1/schedules",
        &staging,
        Some(create("shared-key", "nightly", "0 1 * * *")),
    )
    .await;
    reply.assert_error(
        StatusCode::UNPROCESSABLE_ENTITY,
        "Task with identifier nightly not found in project.",
    );

    // The same key in staging is staging's own schedule; dev's is untouched.
    register(
        &app,
        &staging,
        json!([{"id": "nightly", "scheduled": true}]),
    )
    .await;
    let theirs = ok(
        &app,
        Method::POST,
        "/api/v1/schedules",
        &staging,
        Some(create("shared-key", "nightly", "0 1 * * *")),
    )
    .await;
    assert_ne!(id_of(&theirs), id);
    assert_eq!(theirs["environments"][0]["type"], "STAGING");
    assert_eq!(
        ok(
            &app,
            Method::GET,
            "/api/v1/schedules/shared-key",
            &dev,
            None
        )
        .await,
        created
    );
}

#[tokio::test]
async fn timezones_need_no_credentials() {
    let app = TestApp::start();
    let reply = send(app.server.request(Method::GET, "/api/v1/timezones")).await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    let all: Vec<&str> = reply.body["timezones"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    assert_eq!(all[0], "UTC");
    assert!(all.contains(&"Europe/Paris") && all.contains(&"America/New_York"));
    assert!(all[1..].windows(2).all(|w| w[0] < w[1]), "sorted after UTC");

    let reply = send(
        app.server
            .request(Method::GET, "/api/v1/timezones?excludeUtc=true"),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    let without: Vec<&str> = reply.body["timezones"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    assert_eq!(without, all[1..]);

    let reply = send(
        app.server
            .request(Method::GET, "/api/v1/timezones?excludeUtc=yes"),
    )
    .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{reply:?}");

    // Every other schedule route wants a key.
    let reply = send(app.server.request(Method::GET, "/api/v1/schedules")).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{reply:?}");
}
