//! OTLP ingest (`POST /otel/v1/traces|logs|metrics`) and reading a run's events back
//! (`GET /api/v1/runs/{runId}/events` and `/trace`), over HTTP against a server built as
//! `runnel serve` builds it, in the test process (`runnel_testkit::TestApp`). The bodies
//! are shaped like what a `trigger.dev` 4.8.3 task process exports (reference
//! `trigger-dev-cli-protocol.md` §5): resource attributes `ctx.*`, the task context as
//! `$metadata.ctx.*` on every record, partial copies of running spans.

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use prost::Message;
use reqwest::{Method, StatusCode};
use runnel_core::RunId;
use runnel_store::RunEventQuery;
use runnel_testkit::{send, Reply, Server, TestApp};
use serde_json::{json, Value};

const TRACE: &str = "5b8efff798038103d269b633813fc60c";
/// The run's own span: the attempt's parent, which the task process never exports.
const RUN_SPAN: &str = "eee19b7ec3c1b174";
const ATTEMPT_SPAN: &str = "aaa19b7ec3c1b174";
const RUN_FN_SPAN: &str = "bbb19b7ec3c1b174";
const WAIT_SPAN: &str = "ccc19b7ec3c1b174";
/// 2026-01-02T03:04:05Z in nanoseconds.
const T0: u64 = 1_767_323_045_000_000_000;
const MS: u64 = 1_000_000;

fn text(key: &str, value: &str) -> Value {
    json!({"key": key, "value": {"stringValue": value}})
}

fn int(key: &str, value: i64) -> Value {
    json!({"key": key, "value": {"intValue": value.to_string()}})
}

fn flag(key: &str, value: bool) -> Value {
    json!({"key": key, "value": {"boolValue": value}})
}

/// The resource every export of the task process carries.
fn resource() -> Value {
    json!({"attributes": [
        text("ctx.environment.id", "env_x"), text("ctx.environment.type", "DEVELOPMENT"),
        text("ctx.organization.id", "org_x"), text("ctx.project.id", "proj_x"),
        text("ctx.project.ref", "proj_x"), text("ctx.machine.name", "small-1x"),
        text("service.name", "trigger.dev"), flag("$trigger", true),
        text("sdk.version", "4.8.3"), text("cli.version", "4.8.3"), text("sdk.language", "typescript"),
    ], "droppedAttributesCount": 0})
}

/// The task context the SDK stamps on every span and log record of a run.
fn context(run: &str) -> Vec<Value> {
    vec![
        int("$metadata.ctx.attempt.number", 1),
        text("$metadata.ctx.task.id", "hello"),
        text("$metadata.ctx.queue.name", "task/hello"),
        text("$metadata.ctx.run.id", run),
        flag("$metadata.ctx.run.isTest", false),
        text("$metadata.worker.version", "20260102.1"),
        flag("$metadata.warm_start", false),
    ]
}

fn span(
    id: &str,
    parent: &str,
    name: &str,
    start_ms: u64,
    end_ms: u64,
    attrs: Vec<Value>,
) -> Value {
    json!({
        "traceId": TRACE, "spanId": id, "parentSpanId": parent, "name": name, "kind": 1,
        "startTimeUnixNano": (T0 + start_ms * MS).to_string(),
        "endTimeUnixNano": (T0 + end_ms * MS).to_string(),
        "attributes": attrs, "droppedAttributesCount": 0, "events": [], "droppedEventsCount": 0,
        "status": {"code": 0}, "links": [], "droppedLinksCount": 0,
    })
}

fn traces(spans: Vec<Value>) -> Value {
    json!({"resourceSpans": [{"resource": resource(), "scopeSpans": [
        {"scope": {"name": "trigger.dev", "version": "4.8.3"}, "spans": spans}
    ]}]})
}

/// A `logger.info|warn(message, {fields})` record of `run`, logged in `span`.
fn log_record(run: &str, span: &str, at_ms: u64, level: (i32, &str), message: &str) -> Value {
    let mut attributes = context(run);
    attributes.push(text("$style.icon", "info"));
    attributes.push(int("user.count", 3));
    json!({
        "timeUnixNano": (T0 + at_ms * MS).to_string(),
        "observedTimeUnixNano": (T0 + at_ms * MS).to_string(),
        "severityNumber": level.0, "severityText": level.1,
        "body": {"stringValue": message}, "attributes": attributes,
        "droppedAttributesCount": 0, "flags": 1, "traceId": TRACE, "spanId": span,
    })
}

fn logs(records: Vec<Value>) -> Value {
    json!({"resourceLogs": [{"resource": resource(), "scopeLogs": [
        {"scope": {"name": "trigger.dev", "version": "4.8.3"}, "logRecords": records}
    ]}]})
}

/// Posts an OTLP JSON body as the task process does: no `Authorization` header.
async fn export(server: &Server, signal: &str, body: &Value) -> Reply {
    send(
        server
            .request(Method::POST, &format!("/otel/v1/{signal}"))
            .header("content-type", "application/json")
            .body(body.to_string()),
    )
    .await
}

async fn get(server: &Server, key: &str, path: &str) -> Reply {
    send(server.request(Method::GET, path).bearer_auth(key)).await
}

/// A run of task `hello` (no worker needed: it only has to exist).
async fn run_of(server: &Server, key: &str) -> String {
    server
        .trigger_new(key, "hello", &json!({"payload": {}}))
        .await
}

/// `value` with every `cursor` replaced by `"<cursor>"`.
fn redact_cursors(value: &Value) -> Value {
    match value {
        Value::Object(fields) => fields
            .iter()
            .map(|(name, field)| {
                let redacted = if name == "cursor" {
                    assert!(field.as_str().is_some_and(|c| c.contains('_')), "{field}");
                    json!("<cursor>")
                } else {
                    redact_cursors(field)
                };
                (name.clone(), redacted)
            })
            .collect(),
        Value::Array(items) => items.iter().map(redact_cursors).collect(),
        other => other.clone(),
    }
}

/// Posts an attempt of `run` as the task process exports it over a run: the attempt and
/// `run()` spans, a partial copy of a wait still running (then the wait itself), and
/// two log lines in `run()`.
async fn export_attempt(server: &Server, run: &str) {
    let attempt = |mut extra: Vec<Value>| {
        extra.extend(context(run));
        extra
    };
    let partial = attempt(vec![
        flag("$span.partial", true),
        text("$span.span_id", WAIT_SPAN),
    ]);
    for (signal, body) in [
        (
            "traces",
            traces(vec![span(
                "ddd19b7ec3c1b174",
                RUN_FN_SPAN,
                "wait.for()",
                30,
                30,
                partial,
            )]),
        ),
        (
            "logs",
            logs(vec![
                log_record(run, RUN_FN_SPAN, 20, (9, "info"), "Hello, world!"),
                log_record(run, RUN_FN_SPAN, 40, (13, "warn"), "careful"),
            ]),
        ),
        (
            "traces",
            traces(vec![
                span(
                    WAIT_SPAN,
                    RUN_FN_SPAN,
                    "wait.for()",
                    30,
                    1030,
                    attempt(vec![]),
                ),
                span(
                    RUN_FN_SPAN,
                    ATTEMPT_SPAN,
                    "run()",
                    10,
                    1100,
                    attempt(vec![]),
                ),
                span(
                    ATTEMPT_SPAN,
                    RUN_SPAN,
                    "Attempt 1",
                    0,
                    1200,
                    attempt(vec![
                        text("ctx.run.id", run),
                        flag("$span.attempt", true),
                        text("$entity.type", "attempt"),
                    ]),
                ),
            ]),
        ),
    ] {
        let reply = export(server, signal, &body).await;
        assert_eq!((reply.status, &reply.body), (StatusCode::OK, &json!({})));
    }
}

#[tokio::test]
async fn json_exports_of_a_run_read_back_as_its_events_and_trace() {
    let app = TestApp::start();
    let (server, key) = (&app.server, app.dev_key.as_str());
    let run = run_of(server, key).await;
    export_attempt(server, &run).await;

    let reply = get(server, key, &format!("/api/v1/runs/{run}/events")).await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    let events = reply.body["events"].as_array().expect("events").clone();
    let summary: Vec<(&str, &str, &str)> = events
        .iter()
        .map(|e| {
            (
                e["kind"].as_str().unwrap(),
                e["message"].as_str().unwrap(),
                e["level"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("SPAN", "Attempt 1", "TRACE"),
            ("SPAN", "run()", "TRACE"),
            ("LOG", "Hello, world!", "INFO"),
            ("SPAN", "wait.for()", "TRACE"),
            ("LOG", "careful", "WARN"),
        ],
        "time order; the wait's partial copy was replaced"
    );
    assert_eq!(
        redact_cursors(&events[2]),
        json!({
            "cursor": "<cursor>", "kind": "LOG", "runId": run, "traceId": TRACE,
            "spanId": RUN_FN_SPAN, "message": "Hello, world!", "level": "INFO",
            "startTime": "2026-01-02T03:04:05.020Z", "duration": 0.0,
            "isError": false, "isPartial": false, "isCancelled": false,
            "attemptNumber": 1, "taskSlug": "hello", "properties": {"user.count": 3},
        })
    );
    assert_eq!(
        redact_cursors(&events[3]),
        json!({
            "cursor": "<cursor>", "kind": "SPAN", "runId": run, "traceId": TRACE,
            "spanId": WAIT_SPAN, "parentId": RUN_FN_SPAN, "message": "wait.for()",
            "level": "TRACE", "startTime": "2026-01-02T03:04:05.030Z", "duration": 1000.0,
            "isError": false, "isPartial": false, "isCancelled": false,
            "attemptNumber": 1, "taskSlug": "hello", "properties": {}, "events": [],
        })
    );
    assert_eq!(reply.body["pagination"], json!({}));

    // The tree: the run at the root, then attempt, run(), and what happened in run().
    let reply = get(server, key, &format!("/api/v1/runs/{run}/trace")).await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    let trace = &reply.body["trace"];
    assert_eq!(trace["traceId"], TRACE);
    let root = &trace["rootSpan"];
    assert_eq!(
        (&root["id"], &root["runId"], &root["data"]["message"]),
        (&json!(RUN_SPAN), &json!(run), &json!("hello"))
    );
    assert_eq!(root["data"]["isPartial"], true, "the run has not ended");
    assert_eq!(root.get("parentId"), None);
    fn shape(span: &Value) -> Value {
        json!([
            span["data"]["message"],
            span["children"]
                .as_array()
                .unwrap()
                .iter()
                .map(shape)
                .collect::<Vec<_>>()
        ])
    }
    assert_eq!(
        shape(root),
        json!([
            "hello",
            [[
                "Attempt 1",
                [[
                    "run()",
                    [["Hello, world!", []], ["wait.for()", []], ["careful", []],]
                ]]
            ]]
        ])
    );
    let attempt = &root["children"][0];
    assert_eq!(
        (&attempt["id"], &attempt["parentId"]),
        (&json!(ATTEMPT_SPAN), &json!(RUN_SPAN))
    );
    assert_eq!(attempt["data"]["duration"], 1200.0);
    assert_eq!(attempt["data"]["startTime"], "2026-01-02T03:04:05Z");
    assert_eq!(attempt["data"]["workerVersion"], "20260102.1");
}

#[tokio::test]
async fn events_page_by_cursor_and_filter_by_kind() {
    let app = TestApp::start();
    let (server, key) = (&app.server, app.dev_key.as_str());
    let run = run_of(server, key).await;
    export_attempt(server, &run).await;

    let mut messages = Vec::new();
    let mut path = format!("/api/v1/runs/{run}/events?filter[kind]=log&page[size]=1");
    loop {
        let reply = get(server, key, &path).await;
        assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
        for event in reply.body["events"].as_array().unwrap() {
            messages.push(event["message"].as_str().unwrap().to_owned());
        }
        match reply.body["pagination"]["next"].as_str() {
            Some(next) => {
                path = format!(
                    "/api/v1/runs/{run}/events?filter[kind]=log&page[size]=1&page[after]={next}"
                )
            }
            None => break,
        }
    }
    assert_eq!(messages, ["Hello, world!", "careful"]);

    let spans = get(
        server,
        key,
        &format!("/api/v1/runs/{run}/events?filter[kind]=span"),
    )
    .await;
    assert_eq!(spans.body["events"].as_array().unwrap().len(), 3);

    // The trace's flat pages (`retrieveRunTracePage`): the run, then its spans.
    let page = get(
        server,
        key,
        &format!("/api/v1/runs/{run}/trace?page[size]=10"),
    )
    .await;
    assert_eq!(page.status, StatusCode::OK, "{page:?}");
    let ids: Vec<(&str, Option<&str>)> = page.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["id"].as_str().unwrap(), s["parentId"].as_str()))
        .collect();
    assert_eq!(
        ids,
        [
            (RUN_SPAN, None),
            (ATTEMPT_SPAN, Some(RUN_SPAN)),
            (RUN_FN_SPAN, Some(ATTEMPT_SPAN)),
            (WAIT_SPAN, Some(RUN_FN_SPAN)),
        ]
    );
    assert_eq!(page.body["attemptFailures"], json!([]));
    assert_eq!(page.body["pagination"], json!({}));

    for bad in [
        "page[size]=0",
        "page[size]=x",
        "page[after]=nope",
        "filter[kind]=metric",
    ] {
        let reply = get(server, key, &format!("/api/v1/runs/{run}/events?{bad}")).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{bad}: {reply:?}");
        assert_eq!(reply.body["error"], "Query Error", "{bad}: {reply:?}");
    }
}

#[tokio::test]
async fn a_protobuf_export_is_stored_and_answered_in_protobuf() {
    let app = TestApp::start();
    let (server, key) = (&app.server, app.dev_key.as_str());
    let run = run_of(server, key).await;
    let request: ExportLogsServiceRequest = serde_json::from_value(logs(vec![log_record(
        &run,
        RUN_FN_SPAN,
        5,
        (17, "error"),
        "it broke",
    )]))
    .expect("an OTLP logs request");
    let response = server
        .request(Method::POST, "/otel/v1/logs")
        .header("content-type", "application/x-protobuf")
        .body(request.encode_to_vec())
        .send()
        .await
        .expect("posting protobuf");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "application/x-protobuf");
    assert!(
        response.bytes().await.unwrap().is_empty(),
        "an empty export response"
    );

    let reply = get(server, key, &format!("/api/v1/runs/{run}/events")).await;
    let event = &reply.body["events"][0];
    assert_eq!(
        (&event["message"], &event["level"], &event["isError"]),
        (&json!("it broke"), &json!("ERROR"), &json!(true))
    );

    // A body that is not protobuf.
    let reply = send(
        server
            .request(Method::POST, "/otel/v1/traces")
            .header("content-type", "application/x-protobuf")
            .body(vec![0xff, 0xff, 0xff]),
    )
    .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{reply:?}");
    assert!(reply.body["error"].as_str().unwrap().contains("protobuf"));
}

#[tokio::test]
async fn exports_of_unknown_runs_are_dropped_and_bad_bodies_refused() {
    let app = TestApp::start();
    let server = &app.server;
    let missing = RunId::generate(0).to_string();
    let reply = export(
        server,
        "logs",
        &logs(vec![log_record(&missing, "", 1, (9, "info"), "nobody's")]),
    )
    .await;
    assert_eq!((reply.status, &reply.body), (StatusCode::OK, &json!({})));
    let stored = server
        .store()
        .run_event_list(
            &server
                .store()
                .environment_get(runnel_core::key::EnvironmentKind::Dev)
                .await
                .unwrap()
                .unwrap()
                .id,
            &RunId::parse(&missing).unwrap(),
            &RunEventQuery {
                kinds: vec![],
                after: None,
                limit: 10,
            },
        )
        .await
        .unwrap();
    assert!(stored.is_empty());

    // Metrics are accepted and dropped.
    let reply = export(server, "metrics", &json!({"resourceMetrics": []})).await;
    assert_eq!((reply.status, &reply.body), (StatusCode::OK, &json!({})));

    for signal in ["traces", "logs", "metrics"] {
        let reply = send(
            server
                .request(Method::POST, &format!("/otel/v1/{signal}"))
                .header("content-type", "application/json")
                .body("{not json"),
        )
        .await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{signal}: {reply:?}");
        assert!(
            reply.body["error"]
                .as_str()
                .unwrap()
                .contains("invalid OTLP JSON body"),
            "{signal}: {reply:?}"
        );
    }
}

#[tokio::test]
async fn another_environments_run_is_not_found() {
    let app = TestApp::start();
    let (server, key) = (&app.server, app.dev_key.as_str());
    let run = run_of(server, key).await;
    export_attempt(server, &run).await;
    let prod = app.keys_create("prod");
    for path in ["events", "trace"] {
        let reply = get(server, &prod, &format!("/api/v1/runs/{run}/{path}")).await;
        reply.assert_error(StatusCode::NOT_FOUND, "Run not found");
        let missing = RunId::generate(0);
        let reply = get(server, key, &format!("/api/v1/runs/{missing}/{path}")).await;
        reply.assert_error(StatusCode::NOT_FOUND, "Run not found");
        // The key's own environment sees them.
        assert_eq!(
            get(server, key, &format!("/api/v1/runs/{run}/{path}"))
                .await
                .status,
            StatusCode::OK
        );
    }
    // A secret key is required.
    let reply = send(server.request(Method::GET, &format!("/api/v1/runs/{run}/events"))).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
}
