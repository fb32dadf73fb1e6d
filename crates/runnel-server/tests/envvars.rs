//! Environment variables over HTTP (contract §2 rows 29–35): create, list, retrieve,
//! update, delete and import with a secret key of the environment or a personal access
//! token; secrets redacted except where a task reads them; imports all or nothing; the
//! values sealed at rest; and the dev CLI's attempt start handing them to the task.

use reqwest::{Method, StatusCode};
use runnel_testkit::{send, Reply, TestApp};
use serde_json::{json, Value};

const INVALID_PROJECT_REF: &str = "Invalid project ref for this API key. Make sure you are \
    using an API key associated with that project.";
const INVALID_SLUG: &str = "Invalid environment slug for this API key. Make sure you are \
    using an API key associated with that environment.";
const NOT_FOUND: &str = "Environment variable not found";
const CONFLICT: &str = "Some of the variables are already set for these environments. Set \
    override to true to override them.";

async fn call(
    app: &TestApp,
    method: Method,
    path: &str,
    token: &str,
    body: Option<Value>,
) -> Reply {
    let mut request = app.server.request(method, path).bearer_auth(token);
    if let Some(body) = body {
        request = request.json(&body);
    }
    send(request).await
}

fn envvars(project: &str, env: &str) -> String {
    format!("/api/v1/projects/{project}/envvars/{env}")
}

async fn ok(reply: Reply) {
    assert_eq!(
        (reply.status, &reply.body),
        (StatusCode::OK, &json!({"success": true})),
        "{reply:?}"
    );
}

async fn list(app: &TestApp, token: &str, env: &str) -> Value {
    let reply = call(
        app,
        Method::GET,
        &envvars(&app.project_id(), env),
        token,
        None,
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    reply.body
}

async fn resolved(app: &TestApp, key: &str) -> Value {
    let path = format!("/api/v1/projects/{}/envvars", app.project_id());
    let reply = call(app, Method::GET, &path, key, None).await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    reply.body
}

#[tokio::test]
async fn a_variable_round_trips_and_a_secret_reads_back_redacted() {
    let app = TestApp::start();
    let (key, base) = (app.dev_key.as_str(), envvars(&app.project_id(), "dev"));
    ok(call(
        &app,
        Method::POST,
        &base,
        key,
        Some(json!({"name": "PLAIN", "value": "one"})),
    )
    .await)
    .await;
    ok(call(
        &app,
        Method::POST,
        &base,
        key,
        Some(json!({"name": "API_TOKEN", "value": "s3cret", "isSecret": true})),
    )
    .await)
    .await;
    assert_eq!(
        list(&app, key, "dev").await,
        json!([
            {"name": "API_TOKEN", "value": "<redacted>", "isSecret": true},
            {"name": "PLAIN", "value": "one", "isSecret": false},
        ])
    );
    let reply = call(&app, Method::GET, &format!("{base}/API_TOKEN"), key, None).await;
    assert_eq!(
        reply.body,
        json!({"name": "API_TOKEN", "value": "<redacted>", "isSecret": true})
    );
    // The runtime's call has every value in clear.
    assert_eq!(
        resolved(&app, key).await,
        json!({"variables": {"API_TOKEN": "s3cret", "PLAIN": "one"}})
    );

    // PUT and POST on the name update; POST on the collection always overrides.
    ok(call(
        &app,
        Method::PUT,
        &format!("{base}/PLAIN"),
        key,
        Some(json!({"value": "two"})),
    )
    .await)
    .await;
    let reply = call(&app, Method::GET, &format!("{base}/PLAIN"), key, None).await;
    assert_eq!(
        reply.body,
        json!({"name": "PLAIN", "value": "two", "isSecret": false})
    );
    ok(call(
        &app,
        Method::POST,
        &format!("{base}/PLAIN"),
        key,
        Some(json!({"value": "three"})),
    )
    .await)
    .await;
    ok(call(
        &app,
        Method::POST,
        &base,
        key,
        Some(json!({"name": "API_TOKEN", "value": "new"})),
    )
    .await)
    .await;
    assert_eq!(
        resolved(&app, key).await,
        json!({"variables": {"API_TOKEN": "new", "PLAIN": "three"}})
    );
    assert_eq!(
        list(&app, key, "dev").await[0],
        json!({"name": "API_TOKEN", "value": "<redacted>", "isSecret": true}),
        "a write without isSecret leaves a secret secret"
    );

    // Delete; then every name route is 404 with upstream's message.
    ok(call(&app, Method::DELETE, &format!("{base}/PLAIN"), key, None).await).await;
    for (method, body) in [
        (Method::GET, None),
        (Method::PUT, Some(json!({"value": "x"}))),
        (Method::DELETE, None),
    ] {
        call(&app, method, &format!("{base}/PLAIN"), key, body)
            .await
            .assert_error(StatusCode::NOT_FOUND, NOT_FOUND);
    }
    assert_eq!(
        resolved(&app, key).await,
        json!({"variables": {"API_TOKEN": "new"}})
    );
}

#[tokio::test]
async fn only_the_environment_key_or_a_project_token_reaches_the_variables() {
    let app = TestApp::start();
    let project = app.project_id();
    let prod = app.keys_create("prod");
    let staging = app.keys_create("staging");
    let token = app.pat_create();
    let dev = app.dev_key.as_str();
    ok(call(
        &app,
        Method::POST,
        &envvars(&project, "dev"),
        dev,
        Some(json!({"name": "DEV_ONLY", "value": "d"})),
    )
    .await)
    .await;

    // Another environment's key cannot read or write dev's variables.
    for (method, path, body) in [
        (Method::GET, envvars(&project, "dev"), None),
        (
            Method::GET,
            format!("{}/DEV_ONLY", envvars(&project, "dev")),
            None,
        ),
        (
            Method::POST,
            envvars(&project, "dev"),
            Some(json!({"name": "X", "value": "x"})),
        ),
        (
            Method::DELETE,
            format!("{}/DEV_ONLY", envvars(&project, "dev")),
            None,
        ),
    ] {
        call(&app, method, &path, &prod, body)
            .await
            .assert_error(StatusCode::BAD_REQUEST, INVALID_SLUG);
    }
    call(
        &app,
        Method::GET,
        &envvars("proj_other", "prod"),
        &prod,
        None,
    )
    .await
    .assert_error(StatusCode::BAD_REQUEST, INVALID_PROJECT_REF);
    assert_eq!(list(&app, &prod, "prod").await, json!([]));
    assert_eq!(resolved(&app, &prod).await, json!({"variables": {}}));
    // `stg` is `staging`.
    assert_eq!(list(&app, &staging, "stg").await, json!([]));
    assert_eq!(list(&app, &staging, "staging").await, json!([]));

    // A personal access token reaches every environment of its project.
    assert_eq!(
        list(&app, &token, "dev").await,
        json!([{"name": "DEV_ONLY", "value": "d", "isSecret": false}])
    );
    ok(call(
        &app,
        Method::POST,
        &envvars(&project, "prod"),
        &token,
        Some(json!({"name": "PROD_ONLY", "value": "p"})),
    )
    .await)
    .await;
    assert_eq!(
        resolved(&app, &prod).await,
        json!({"variables": {"PROD_ONLY": "p"}})
    );
    assert_eq!(
        resolved(&app, dev).await,
        json!({"variables": {"DEV_ONLY": "d"}})
    );
    call(
        &app,
        Method::GET,
        &envvars("proj_other", "dev"),
        &token,
        None,
    )
    .await
    .assert_error(StatusCode::NOT_FOUND, "Project not found");
    call(
        &app,
        Method::GET,
        &envvars(&project, "preview"),
        &token,
        None,
    )
    .await
    .assert_error(
        StatusCode::NOT_FOUND,
        "Runnel has no preview environment (its environments are dev, staging and prod)",
    );
    call(&app, Method::GET, &envvars(&project, "qa"), &token, None)
        .await
        .assert_error(
            StatusCode::BAD_REQUEST,
            "Invalid environment slug \"qa\": expected dev, staging (or stg) or prod",
        );
    // The resolved call takes a secret key only.
    let reply = call(
        &app,
        Method::GET,
        &format!("/api/v1/projects/{project}/envvars"),
        &token,
        None,
    )
    .await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{reply:?}");
    // No credential at all.
    let reply = send(app.server.request(Method::GET, &envvars(&project, "dev"))).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{reply:?}");

    // whoami names what a key belongs to.
    let reply = call(&app, Method::GET, "/api/v1/auth/whoami", &staging, None).await;
    let environment_id = reply.body["environment"]["id"].clone();
    assert!(
        environment_id.as_str().unwrap().starts_with("env_"),
        "{reply:?}"
    );
    assert_eq!(
        reply.body,
        json!({"projectRef": project, "environment": {"id": environment_id, "slug": "staging"}})
    );
}

#[tokio::test]
async fn an_import_is_all_or_nothing() {
    let app = TestApp::start();
    let key = app.dev_key.as_str();
    let import = format!("{}/import", envvars(&app.project_id(), "dev"));
    ok(call(
        &app,
        Method::POST,
        &import,
        key,
        Some(json!({"variables": {"A": "1", "B": "2"}})),
    )
    .await)
    .await;

    // A name already set refuses the whole import, naming it.
    let reply = call(
        &app,
        Method::POST,
        &import,
        key,
        Some(json!({"variables": {"A": "9", "C": "3"}, "override": false})),
    )
    .await;
    assert_eq!(
        (reply.status, reply.body),
        (
            StatusCode::BAD_REQUEST,
            json!({"error": CONFLICT, "variableErrors": [
                {"key": "A", "error": "Variable already set in this environment."}
            ]})
        )
    );
    assert_eq!(
        resolved(&app, key).await,
        json!({"variables": {"A": "1", "B": "2"}}),
        "C was not written either"
    );

    // With override every variable is written, secret when asked.
    ok(call(
        &app,
        Method::POST,
        &import,
        key,
        Some(
            json!({"variables": {"A": "9", "C": "3"}, "override": true, "isSecret": true,
                    "parentVariables": {}, "source": {"type": "user", "userId": "u1"}}),
        ),
    )
    .await)
    .await;
    assert_eq!(
        list(&app, key, "dev").await,
        json!([
            {"name": "A", "value": "<redacted>", "isSecret": true},
            {"name": "B", "value": "2", "isSecret": false},
            {"name": "C", "value": "<redacted>", "isSecret": true},
        ])
    );

    // A dotenv file, as multipart (the CLI's upload): quotes, comments, no substitution.
    let form = reqwest::multipart::Form::new()
        .part(
            "variables",
            reqwest::multipart::Part::text(
                "# comment\nD=four\nexport E=\"five\\nlines\"\nF='$HOME'\n",
            )
            .file_name(".env"),
        )
        .text("override", "false");
    let reply = send(
        app.server
            .request(Method::POST, &import)
            .bearer_auth(key)
            .multipart(form),
    )
    .await;
    ok(reply).await;
    assert_eq!(
        resolved(&app, key).await["variables"],
        json!({"A": "9", "B": "2", "C": "3", "D": "four", "E": "five\nlines", "F": "$HOME"})
    );
    // Multipart without override conflicts like JSON.
    let form = reqwest::multipart::Form::new()
        .text("variables", "D=x\nG=new\n")
        .text("override", "false");
    let reply = send(
        app.server
            .request(Method::POST, &import)
            .bearer_auth(key)
            .multipart(form),
    )
    .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{reply:?}");
    assert_eq!(reply.body["variableErrors"][0]["key"], "D");
    assert!(resolved(&app, key).await["variables"].get("G").is_none());

    // Refused bodies: each names what is wrong.
    let bad_bodies = [
        (
            json!({"variables": {"P": "1"}, "parentVariables": {"Q": "2"}}),
            json!({"error": "parentVariables: Runnel has no preview branches, so an environment has no parent to set them on"}),
        ),
        (
            json!({"variables": {"P": 1}}),
            json!({"error": "Invalid request body", "issues": [
                {"code": "custom", "message": "Expected string", "path": ["variables", "P"]}
            ]}),
        ),
        (
            json!({"variables": {"BAD-NAME": "1", "OK": "2"}}),
            json!({"error": "invalid variable name \"BAD-NAME\": use 1 to 256 letters, digits and underscores",
                   "variableErrors": [{"key": "BAD-NAME", "error": "invalid variable name \"BAD-NAME\": use 1 to 256 letters, digits and underscores"}]}),
        ),
    ];
    for (body, want) in bad_bodies {
        let reply = call(&app, Method::POST, &import, key, Some(body.clone())).await;
        assert_eq!(
            (reply.status, reply.body),
            (StatusCode::BAD_REQUEST, want),
            "{body}"
        );
    }
    let reply = call(
        &app,
        Method::POST,
        &import,
        key,
        Some(json!({"override": true})),
    )
    .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{reply:?}");
    assert_eq!(
        reply.body["issues"][0]["message"],
        "missing field `variables`"
    );
    assert!(resolved(&app, key).await["variables"].get("OK").is_none());
}

#[tokio::test]
async fn bad_names_and_values_are_refused() {
    let app = TestApp::start();
    let (key, base) = (app.dev_key.as_str(), envvars(&app.project_id(), "dev"));
    let message = |m: &str| json!({"error": m, "variableErrors": [{"key": "", "error": m}]});
    let cases = [
        (
            json!({"name": "", "value": "x"}),
            message("invalid variable name \"\": use 1 to 256 letters, digits and underscores"),
        ),
        (
            json!({"name": "N", "value": "a\u{0}b"}),
            json!({"error": "variable N: the value contains a NUL character",
                   "variableErrors": [{"key": "N", "error": "variable N: the value contains a NUL character"}]}),
        ),
        (
            json!({"name": "N", "value": "v".repeat(64 * 1024 + 1)}),
            json!({"error": "variable N: the value is longer than 65536 bytes",
                   "variableErrors": [{"key": "N", "error": "variable N: the value is longer than 65536 bytes"}]}),
        ),
        (
            json!({"name": "N"}),
            json!({"error": "Invalid request body", "issues": [
                {"code": "custom", "message": "missing field `value`", "path": []}
            ]}),
        ),
        (
            json!({"name": "N", "value": "x", "secret": true}),
            json!({"error": "Invalid request body", "issues": [
                {"code": "custom", "path": ["secret"],
                 "message": "unknown field `secret`, expected one of `name`, `value`, `isSecret`"}
            ]}),
        ),
    ];
    for (body, want) in cases {
        let reply = call(&app, Method::POST, &base, key, Some(body.clone())).await;
        assert_eq!(
            (reply.status, reply.body),
            (StatusCode::BAD_REQUEST, want),
            "{}",
            body.to_string().chars().take(80).collect::<String>()
        );
    }
    assert_eq!(list(&app, key, "dev").await, json!([]));
}

/// What the store holds is sealed: the value appears in neither the SQLite files (the
/// database and its write-ahead log) nor the PostgreSQL row.
#[tokio::test]
async fn a_value_is_never_stored_in_clear() {
    let app = TestApp::start();
    let key = app.dev_key.as_str();
    let marker = "plain-text-marker-7f3a9c";
    for (name, secret) in [("MARKED", false), ("MARKED_SECRET", true)] {
        ok(call(
            &app,
            Method::POST,
            &envvars(&app.project_id(), "dev"),
            key,
            Some(json!({"name": name, "value": marker, "isSecret": secret})),
        )
        .await)
        .await;
    }
    assert_eq!(
        resolved(&app, key).await,
        json!({"variables": {"MARKED": marker, "MARKED_SECRET": marker}})
    );

    // The rows as stored (a query of the table on either backend).
    let store = app.server.store();
    let environment = app.server.block_on({
        let store = store.clone();
        async move {
            store
                .environment_get(runnel_core::key::EnvironmentKind::Dev)
                .await
                .unwrap()
                .unwrap()
        }
    });
    let rows = app.server.block_on({
        let store = store.clone();
        let id = environment.id.clone();
        async move { store.env_var_list(&id).await.unwrap() }
    });
    assert_eq!(rows.len(), 2);
    for row in &rows {
        assert!(row.value_sealed.starts_with("v1:"), "{row:?}");
        assert!(!row.value_sealed.contains(marker), "{row:?}");
    }

    if app.database_url().is_none() {
        let dir = app.data_dir();
        let mut files = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            // The database files only (the blob store's directory sits beside them).
            if !path.is_file() {
                continue;
            }
            let bytes = std::fs::read(&path).unwrap();
            files += 1;
            assert!(
                !bytes.windows(marker.len()).any(|w| w == marker.as_bytes()),
                "{} holds the value in clear",
                path.display()
            );
        }
        assert!(files >= 2, "the database and its WAL were read");
    }
}

/// The dev CLI's attempt start hands the task its environment's variables, under the
/// platform's own (which win on a name both set); names the platform owns are left out.
#[tokio::test]
async fn the_dev_attempt_start_carries_the_environment_variables() {
    let app = TestApp::start();
    let key = app.dev_key.as_str();
    let import = format!("{}/import", envvars(&app.project_id(), "dev"));
    ok(call(
        &app,
        Method::POST,
        &import,
        key,
        Some(json!({"variables": {"MY_SETTING": "on", "TRIGGER_API_URL": "http://elsewhere",
                                  "TRIGGER_SECRET_KEY": "tr_dev_other", "OTEL_LOG_LEVEL": "debug"}})),
    )
    .await)
    .await;
    let text_post = |path: String, body: Value| {
        app.server
            .request(Method::POST, &path)
            .bearer_auth(key)
            .header("content-type", "text/plain;charset=UTF-8")
            .body(body.to_string())
    };
    let reply = send(text_post(
        format!("/api/v1/projects/{}/background-workers", app.project_id()),
        json!({
            "localOnly": true,
            "metadata": {"packageVersion": "4.8.3", "contentHash": "h", "queues": [],
                         "sourceFiles": [],
                         "tasks": [{"id": "env-task", "filePath": "src/env.ts", "exportName": "envTask"}]},
            "engine": "V2", "supportsLazyAttempts": true
        }),
    ))
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    let worker = reply.body["id"].as_str().unwrap().to_owned();
    let run = app.server.trigger_new(key, "env-task", &json!({})).await;
    let mut message = None;
    for _ in 0..50 {
        let reply = send(text_post(
            "/engine/v1/dev/dequeue".to_owned(),
            json!({"currentWorker": worker, "oldWorkers": []}),
        ))
        .await;
        message = reply.body["dequeuedMessages"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["run"]["friendlyId"] == run.as_str())
            .cloned();
        if message.is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let message = message.expect("the run was dequeued");
    let snapshot = message["snapshot"]["friendlyId"].as_str().unwrap();
    let reply = send(text_post(
        format!("/engine/v1/dev/runs/{run}/snapshots/{snapshot}/attempts/start"),
        json!({"isWarmStart": false}),
    ))
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    let base = &app.server.url;
    assert_eq!(
        reply.body["envVars"],
        json!({
            "MY_SETTING": "on",
            "OTEL_LOG_LEVEL": "debug",
            "TRIGGER_API_URL": base,
            "TRIGGER_OTEL_EXPORTER_OTLP_ENDPOINT": format!("{base}/otel"),
            "TRIGGER_MACHINE_PRESET": "small-1x",
        })
    );
}
