//! Listing runs end to end: `GET /api/v1/runs` on the real `runnel serve`, and the
//! `runnel runs ls` / `runnel runs cancel` commands against it.
//!
//! Runs of a task a registered worker serves stay `QUEUED` (the worker never dequeues);
//! runs of a task nobody serves wait for a version (`WAITING_FOR_DEPLOY`, or
//! `PENDING_VERSION` for v4 clients), which gives every test both status vocabularies.

mod common;

use std::process::{Output, Stdio};

use chrono::{Duration, Utc};
use common::{
    assert_no_nulls, describe, keys_create, redact, runnel_command, send, timestamp, Reply, Server,
    TestApp, CURRENT_API_VERSION,
};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

/// A query string as `(key, value)` pairs.
type QueryPairs<'a> = Vec<(&'a str, &'a str)>;

/// A task a registered worker serves.
const SERVED: &str = "served";
/// A task no worker serves.
const WAITING: &str = "waiting";

/// `GET /api/v1/runs?<query>` (legacy statuses unless `version` is given).
async fn list(server: &Server, key: &str, query: &[(&str, &str)], version: Option<&str>) -> Reply {
    let mut request = server
        .request(Method::GET, "/api/v1/runs")
        .bearer_auth(key)
        .query(query);
    if let Some(version) = version {
        request = request.header("x-trigger-api-version", version);
    }
    send(request).await
}

/// A list reply that must be 200: its run ids, next and previous cursors.
fn page(reply: &Reply) -> (Vec<String>, Option<String>, Option<String>) {
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    assert_no_nulls(&reply.body);
    let ids = reply.body["data"]
        .as_array()
        .unwrap_or_else(|| panic!("no data in {reply:?}"))
        .iter()
        .map(|item| item["id"].as_str().unwrap().to_owned())
        .collect();
    let cursor = |name: &str| {
        reply.body["pagination"]
            .get(name)
            .map(|c| c.as_str().unwrap().to_owned())
    };
    (ids, cursor("next"), cursor("previous"))
}

async fn ids(server: &Server, key: &str, query: &[(&str, &str)]) -> Vec<String> {
    page(&list(server, key, query, None).await).0
}

/// A list item with its ids and timestamps redacted (`env.id` checked to be `env_…`).
fn redact_item(item: &Value) -> Value {
    let mut item = item.clone();
    let env = item
        .as_object_mut()
        .unwrap()
        .remove("env")
        .expect("every item has env");
    assert!(env["id"].as_str().unwrap().starts_with("env_"), "{env}");
    let mut item = redact(&item);
    item["env"] = json!({"id": "<env id>", "name": env["name"]});
    item
}

/// Triggers runs and returns their ids, oldest first.
async fn trigger_all(app: &TestApp, runs: &[(&str, Value)]) -> Vec<String> {
    let mut ids = Vec::new();
    for (task, body) in runs {
        ids.push(app.server.trigger_new(&app.dev_key, task, body).await);
    }
    ids
}

/// `ids` in list order: newest first by `(createdAt, id)` (runs triggered within one
/// millisecond are ordered by id, not by when they were triggered).
async fn newest_first(server: &Server, key: &str, ids: &[&String]) -> Vec<String> {
    let mut keyed = Vec::new();
    for id in ids {
        let run = server.run(key, id).await;
        keyed.push((timestamp(&run["createdAt"]), (*id).clone()));
    }
    keyed.sort();
    keyed.into_iter().rev().map(|(_, id)| id).collect()
}

#[tokio::test]
async fn list_items_have_the_sdk_shape_and_filters_select_runs() {
    let app = TestApp::start();
    app.server.register_worker(&app.dev_key, &[SERVED]).await;
    let runs = trigger_all(
        &app,
        &[
            (SERVED, json!({"options": {"tags": ["red", "blue"]}})),
            (
                SERVED,
                json!({"options": {"test": true, "machine": "micro"}}),
            ),
            (
                WAITING,
                json!({"options": {"tags": ["blue"], "metadata": {"step": 1}}}),
            ),
            (SERVED, json!({"options": {"queue": {"name": "emails"}}})),
        ],
    )
    .await;

    let reply = list(&app.server, &app.dev_key, &[], None).await;
    let (all, next, previous) = page(&reply);
    let ordered = newest_first(&app.server, &app.dev_key, &runs.iter().collect::<Vec<_>>()).await;
    assert_eq!(all, ordered);
    let item = |id: &String| {
        let i = all.iter().position(|x| x == id).unwrap();
        reply.body["data"][i].clone()
    };
    assert_eq!((next, previous), (None, None), "one page");
    assert_eq!(
        redact_item(&item(&runs[0])),
        json!({
            "id": "<run id>",
            "status": "QUEUED",
            "taskIdentifier": SERVED,
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
            "tags": ["blue", "red"],
            "costInCents": 0.0,
            "baseCostInCents": 0.0,
            "durationMs": 0,
            "depth": 0,
            "env": {"id": "<env id>", "name": "dev"},
        })
    );
    assert_eq!(item(&runs[2])["metadata"], json!({"step": 1}));
    assert_eq!(item(&runs[2])["status"], "WAITING_FOR_DEPLOY");

    let cases: Vec<(QueryPairs, Vec<&String>)> = vec![
        (
            vec![("filter[tag]", "blue,green")],
            vec![&runs[2], &runs[0]],
        ),
        (vec![("filter[taskIdentifier]", WAITING)], vec![&runs[2]]),
        (vec![("filter[isTest]", "true")], vec![&runs[1]]),
        (
            vec![("filter[isTest]", "false")],
            vec![&runs[3], &runs[2], &runs[0]],
        ),
        (vec![("filter[machine]", "micro")], vec![&runs[1]]),
        (vec![("filter[queue]", "emails")], vec![&runs[3]]),
        (
            vec![("filter[queue]", "task/waiting,emails")],
            vec![&runs[3], &runs[2]],
        ),
        // Both vocabularies name the runs waiting for a version.
        (
            vec![("filter[status]", "WAITING_FOR_DEPLOY")],
            vec![&runs[2]],
        ),
        (vec![("filter[status]", "PENDING_VERSION")], vec![&runs[2]]),
        (
            vec![("filter[status]", "QUEUED"), ("filter[tag]", "red")],
            vec![&runs[0]],
        ),
        (vec![("filter[status]", "COMPLETED,FROZEN")], vec![]),
        (vec![("filter[schedule]", "sched_x")], vec![]),
        (vec![("filter[batch]", "batch_x")], vec![]),
        (vec![("filter[version]", "20260101.1")], vec![]),
    ];
    for (query, want) in cases {
        let want = newest_first(&app.server, &app.dev_key, &want).await;
        assert_eq!(
            ids(&app.server, &app.dev_key, &query).await,
            want,
            "{query:?}"
        );
    }
}

#[tokio::test]
async fn the_created_at_window_defaults_to_seven_days_and_takes_ms_iso_and_periods() {
    let app = TestApp::start();
    let runs = trigger_all(&app, &[(WAITING, json!({})), (WAITING, json!({}))]).await;
    let hour_ago = (Utc::now() - Duration::hours(1))
        .timestamp_millis()
        .to_string();
    let in_an_hour = (Utc::now() + Duration::hours(1)).to_rfc3339();
    let cases: Vec<(QueryPairs, bool)> = vec![
        (vec![], true),
        (vec![("filter[createdAt][period]", "1h")], true),
        (vec![("filter[createdAt][from]", &hour_ago)], true),
        (vec![("filter[createdAt][from]", &in_an_hour)], false),
        (vec![("filter[createdAt][to]", "2020-01-01")], false),
        (
            vec![
                ("filter[createdAt][from]", &hour_ago),
                ("filter[createdAt][to]", &in_an_hour),
            ],
            true,
        ),
    ];
    for (query, found) in cases {
        let want = if found {
            newest_first(&app.server, &app.dev_key, &runs.iter().collect::<Vec<_>>()).await
        } else {
            vec![]
        };
        assert_eq!(
            ids(&app.server, &app.dev_key, &query).await,
            want,
            "{query:?}"
        );
    }
}

#[tokio::test]
async fn bad_queries_are_400_query_errors_listing_every_issue() {
    let app = TestApp::start();
    let issue = |code: &str, message: &str, path: &str| json!({"code": code, "message": message, "path": [path]});
    let cases: Vec<(QueryPairs, Vec<Value>)> = vec![
        (
            vec![("filter[status]", "QUEUED,FOO")],
            vec![issue(
                "custom",
                "Invalid status values: FOO",
                "filter[status]",
            )],
        ),
        (
            vec![("filter[isTest]", "yes")],
            vec![issue(
                "custom",
                "Invalid value for isTest: yes",
                "filter[isTest]",
            )],
        ),
        (
            vec![("filter[machine]", "huge")],
            vec![issue(
                "custom",
                "Invalid machine values: huge",
                "filter[machine]",
            )],
        ),
        (
            vec![("page[size]", "0")],
            vec![issue(
                "too_small",
                "Number must be greater than or equal to 1",
                "page[size]",
            )],
        ),
        (
            vec![("page[size]", "101")],
            vec![issue(
                "too_big",
                "Number must be less than or equal to 100",
                "page[size]",
            )],
        ),
        (
            vec![("page[after]", "bm90IGEgY3Vyc29y")],
            vec![issue("custom", "Invalid cursor", "page[after]")],
        ),
        (
            // A run id is a cursor too, but only one of this environment.
            vec![("page[before]", "run_doesnotexist")],
            vec![issue("custom", "Invalid cursor", "page[before]")],
        ),
        (
            vec![("filter[status]", "NOPE"), ("page[size]", "abc")],
            vec![
                issue("custom", "Invalid status values: NOPE", "filter[status]"),
                issue(
                    "invalid_type",
                    "Expected an integer, received \"abc\"",
                    "page[size]",
                ),
            ],
        ),
    ];
    for (query, details) in cases {
        let reply = list(&app.server, &app.dev_key, &query, None).await;
        assert_eq!(
            (reply.status, &reply.body),
            (
                StatusCode::BAD_REQUEST,
                &json!({"error": "Query Error", "details": details})
            ),
            "{query:?}"
        );
        assert_eq!(reply.headers["x-should-retry"], "false");
    }
    let reply = send(app.server.request(Method::GET, "/api/v1/runs")).await;
    // The contract's problem+json 401 (its whole body is checked in tests/auth.rs).
    assert_eq!(
        (reply.status, &reply.body["error"]),
        (
            StatusCode::UNAUTHORIZED,
            &json!("No authorization header provided")
        )
    );
}

#[tokio::test]
async fn pages_walk_forward_and_back_without_skips_or_repeats_in_both_vocabularies() {
    let app = TestApp::start();
    for _ in 0..7 {
        app.server
            .trigger_new(&app.dev_key, WAITING, &json!({}))
            .await;
    }
    let everything = [("page[size]", "100")];

    for (version, status) in [
        (None, "WAITING_FOR_DEPLOY"),
        (Some(CURRENT_API_VERSION), "PENDING_VERSION"),
    ] {
        // Every run that exists when the walk starts, newest first.
        let want = ids(&app.server, &app.dev_key, &everything).await;
        // Forward by 3, a new run triggered between two fetches: new runs are newer than
        // every cursor handed out, so the walk never meets them.
        let mut seen = Vec::new();
        let mut pages = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let mut query = vec![("page[size]", "3")];
            if let Some(after) = &after {
                query.push(("page[after]", after));
            }
            let reply = list(&app.server, &app.dev_key, &query, version).await;
            for item in reply.body["data"].as_array().unwrap() {
                assert_eq!(item["status"], status, "{item}");
            }
            let (ids, next, previous) = page(&reply);
            assert_eq!(
                previous.is_some(),
                after.is_some(),
                "previous only after page 1"
            );
            seen.extend(ids.clone());
            pages.push((ids, previous));
            app.server
                .trigger_new(&app.dev_key, WAITING, &json!({}))
                .await;
            match next {
                Some(next) => after = Some(next),
                None => break,
            }
        }
        assert_eq!(seen, want, "{version:?}: every run once, newest first");
        assert_eq!(pages.len(), want.len().div_ceil(3));
        assert!(pages.len() >= 3);

        // Backward from the last page: the page before it, then the one before that.
        let last = pages.len() - 1;
        let before = pages[last].1.clone().unwrap();
        let reply = list(
            &app.server,
            &app.dev_key,
            &[("page[size]", "3"), ("page[before]", &before)],
            version,
        )
        .await;
        let (ids, next, previous) = page(&reply);
        assert_eq!(
            ids,
            pages[last - 1].0,
            "pages backward are newest first too"
        );
        assert!(next.is_some());
        let reply = list(
            &app.server,
            &app.dev_key,
            &[("page[size]", "3"), ("page[before]", &previous.unwrap())],
            version,
        )
        .await;
        let (ids, _, previous) = page(&reply);
        assert_eq!(ids, pages[last - 2].0);
        assert!(
            previous.is_some(),
            "newer runs exist (at least those triggered meanwhile)"
        );
    }

    // Upstream's legacy cursor, a bare run id, works too.
    let all = ids(&app.server, &app.dev_key, &everything).await;
    let after = ids(&app.server, &app.dev_key, &[("page[after]", &all[4])]).await;
    assert_eq!(after, all[5..]);
}

#[tokio::test]
async fn a_key_lists_only_its_environment() {
    let app = TestApp::start();
    let prod_key = keys_create(&app.data_dir(), "prod");
    let dev_run = app
        .server
        .trigger_new(&app.dev_key, WAITING, &json!({}))
        .await;
    let prod_run = app.server.trigger_new(&prod_key, WAITING, &json!({})).await;
    assert_eq!(
        ids(&app.server, &app.dev_key, &[]).await,
        vec![dev_run.clone()]
    );
    let reply = list(&app.server, &prod_key, &[], None).await;
    assert_eq!(page(&reply).0, vec![prod_run]);
    assert_eq!(reply.body["data"][0]["env"]["name"], "prod");
    // Another environment's run is no cursor here.
    let reply = list(&app.server, &prod_key, &[("page[after]", &dev_run)], None).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{reply:?}");
}

/// `runnel runs <args…> --api-url <server> --key <key>`.
fn runs_command(server: &Server, key: &str, args: &[&str]) -> Output {
    runnel_command()
        .arg("runs")
        .args(args)
        .args(["--api-url", &server.url, "--key", key])
        .stdin(Stdio::null())
        .output()
        .expect("running the runnel binary")
}

fn stdout_of(output: &Output) -> String {
    assert!(output.status.success(), "{}", describe(output));
    String::from_utf8(output.stdout.clone()).unwrap()
}

#[tokio::test]
async fn runs_ls_prints_a_table_and_the_next_page_cursor() {
    let app = TestApp::start();
    let runs = trigger_all(
        &app,
        &[
            (WAITING, json!({"options": {"tags": ["a", "b"]}})),
            ("other", json!({})),
            (WAITING, json!({})),
        ],
    )
    .await;

    let ordered = newest_first(&app.server, &app.dev_key, &runs.iter().collect::<Vec<_>>()).await;
    let waiting = newest_first(&app.server, &app.dev_key, &[&runs[0], &runs[2]]).await;
    let out = stdout_of(&runs_command(&app.server, &app.dev_key, &["ls"]));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 4, "{out}");
    let header: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(
        header,
        ["ID", "TASK", "STATUS", "CREATED", "DURATION", "TAGS"]
    );
    for (line, id) in lines[1..].iter().zip(&ordered) {
        assert!(line.starts_with(id.as_str()), "{out}");
    }
    let tagged = lines
        .iter()
        .find(|line| line.starts_with(runs[0].as_str()))
        .unwrap();
    let cells: Vec<&str> = tagged.split_whitespace().collect();
    // CREATED is a date and a time: two words.
    assert_eq!(cells.len(), 7, "{tagged}");
    assert_eq!(
        [cells[0], cells[1], cells[2], cells[5], cells[6]],
        [runs[0].as_str(), WAITING, "WAITING_FOR_DEPLOY", "-", "a,b"]
    );
    let created = chrono::NaiveDateTime::parse_from_str(
        &format!("{} {}", cells[3], cells[4]),
        "%Y-%m-%d %H:%M:%S",
    )
    .expect("CREATED is YYYY-MM-DD HH:MM:SS");
    assert!(
        (Utc::now().naive_utc() - created).num_minutes().abs() < 5,
        "{tagged}"
    );

    // Filters, and a page size that leaves more.
    let out = stdout_of(&runs_command(
        &app.server,
        &app.dev_key,
        &["ls", "--task", WAITING, "--limit", "1"],
    ));
    assert!(
        out.lines().nth(1).unwrap().starts_with(&waiting[0]),
        "{out}"
    );
    let hint = out.lines().last().unwrap();
    let cursor = hint
        .strip_prefix("More runs: runnel runs ls --after ")
        .and_then(|rest| rest.strip_suffix(" (with the same filters)"))
        .unwrap_or_else(|| panic!("no next-page hint in {out}"));
    let out = stdout_of(&runs_command(
        &app.server,
        &app.dev_key,
        &["ls", "--task", WAITING, "--limit", "1", "--after", cursor],
    ));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "the last page has no hint: {out}");
    assert!(lines[1].starts_with(&waiting[1]), "{out}");

    let out = stdout_of(&runs_command(
        &app.server,
        &app.dev_key,
        &["ls", "--tag", "b", "--status", "WAITING_FOR_DEPLOY,QUEUED"],
    ));
    assert_eq!(out.lines().count(), 2, "{out}");
    let out = stdout_of(&runs_command(
        &app.server,
        &app.dev_key,
        &["ls", "--status", "COMPLETED"],
    ));
    assert_eq!(out, "No runs.\n");

    let output = runs_command(&app.server, &app.dev_key, &["ls", "--status", "DONE"]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("Query Error"), "{}", describe(&output));
}

#[tokio::test]
async fn runs_cancel_cancels_and_reports_runs_that_already_ended() {
    let app = TestApp::start();
    let id = app
        .server
        .trigger_new(&app.dev_key, WAITING, &json!({}))
        .await;

    let out = stdout_of(&runs_command(&app.server, &app.dev_key, &["cancel", &id]));
    assert_eq!(out, format!("canceled {id}\n"));
    assert_eq!(
        app.server.run(&app.dev_key, &id).await["status"],
        "CANCELED"
    );
    let canceled = ids(&app.server, &app.dev_key, &[("filter[status]", "CANCELED")]).await;
    assert_eq!(canceled, vec![id.clone()]);

    let out = stdout_of(&runs_command(&app.server, &app.dev_key, &["cancel", &id]));
    assert_eq!(out, format!("{id} had already ended: CANCELED\n"));

    let output = runs_command(&app.server, &app.dev_key, &["cancel", "run_doesnotexist"]);
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr)
            .contains("no run run_doesnotexist in this key's environment"),
        "{}",
        describe(&output)
    );
}

#[tokio::test]
async fn runs_replay_prints_a_new_run_with_the_same_payload_and_tags() {
    let app = TestApp::start();
    let id = app
        .server
        .trigger_new(
            &app.dev_key,
            WAITING,
            &json!({"payload": {"n": 7}, "options": {"tags": ["again"]}}),
        )
        .await;

    let out = stdout_of(&runs_command(&app.server, &app.dev_key, &["replay", &id]));
    let replayed = out.trim().rsplit(' ').next().unwrap().to_owned();
    assert!(replayed.starts_with("run_"), "{out:?}");
    assert_ne!(replayed, id);
    let run = app.server.run(&app.dev_key, &replayed).await;
    assert_eq!(
        (&run["payload"], &run["tags"], &run["taskIdentifier"]),
        (&json!({"n": 7}), &json!(["again"]), &json!(WAITING))
    );

    let output = runs_command(&app.server, &app.dev_key, &["replay", "run_doesnotexist"]);
    assert!(!output.status.success(), "{}", describe(&output));
}
