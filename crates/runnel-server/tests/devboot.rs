//! The bootstrap side of `npx trigger.dev dev` over HTTP against a server built as
//! `runnel serve` builds it (`runnel_testkit::TestApp`): personal access tokens on the
//! routes the CLI calls before it knows an environment, the secret key they trade for,
//! and the first dev-engine calls made with that key. Whole bodies are compared, and no
//! answer may hold a `null` where the CLI's schemas want a field left out.
//! (`runnel keys create --pat`, `runnel dev`'s lines and the auto-approved login:
//! crates/runnel-cli/tests/personal_tokens.rs.)

use reqwest::{Method, StatusCode};
use runnel_testkit::{assert_no_nulls, assert_secret_key, send, Api, Reply, TestApp};
use serde_json::{json, Value};

const PERSONAL_TOKEN_ONLY: &str = "This request takes a personal access token \
    (Authorization: Bearer tr_pat_…; `runnel keys create --pat` prints one), not a secret key \
    or another credential";
const INVALID_PERSONAL_TOKEN: &str = "Invalid personal access token (unknown or revoked)";
const PERSONAL_TOKEN_HERE: &str = "Personal access tokens (tr_pat_…) are not allowed for this \
    request: use a secret key of the environment (GET /api/v1/projects/{ref}/{env} hands one out)";

/// `GET path` with `Bearer token` (none when `token` is `None`).
async fn get(app: &TestApp, path: &str, token: Option<&str>) -> Reply {
    let mut request = app.server.request(Method::GET, path);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    send(request).await
}

/// `GET /api/v1/projects/{ref}/{env}` with a personal access token.
async fn project_env(app: &TestApp, project: &str, env: &str, token: &str) -> Reply {
    get(
        app,
        &format!("/api/v1/projects/{project}/{env}"),
        Some(token),
    )
    .await
}

/// The secret key `token` trades for in `env` (asserting the whole answer).
async fn api_key(app: &TestApp, token: &str, env: &str) -> String {
    let project = app.project_id();
    let reply = project_env(app, &project, env, token).await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    assert_no_nulls(&reply.body);
    let key = reply.body["apiKey"].as_str().expect("apiKey").to_owned();
    assert_eq!(
        reply.body,
        json!({"apiKey": key, "name": "runnel", "apiUrl": app.server.url, "projectId": project}),
    );
    key
}

#[tokio::test]
async fn whoami_names_the_token_and_this_server() {
    let app = TestApp::start();
    let token = app.pat_create();
    let reply = get(&app, "/api/v2/whoami", Some(&token)).await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    assert_no_nulls(&reply.body);
    assert_eq!(
        reply.body,
        json!({
            "userId": &token[..13],
            "email": "runnel@localhost.localdomain",
            "dashboardUrl": app.server.url,
        })
    );

    // `trigger whoami --project-ref` asks about this project: it is described.
    let project = app.project_id();
    let reply = get(
        &app,
        &format!("/api/v2/whoami?projectRef={project}"),
        Some(&token),
    )
    .await;
    assert_eq!(
        reply.body["project"],
        json!({"name": "runnel", "url": app.server.url, "orgTitle": "runnel"}),
        "{reply:?}"
    );
    // Another ref: no project, and nothing null in its place.
    let reply = get(&app, "/api/v2/whoami?projectRef=proj_other", Some(&token)).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(reply.body.get("project").is_none(), "{reply:?}");
}

#[tokio::test]
async fn platform_notifications_has_none() {
    let app = TestApp::start();
    let token = app.pat_create();
    let reply = get(&app, "/api/v1/platform-notifications", Some(&token)).await;
    assert_eq!(
        (reply.status, reply.body),
        (StatusCode::OK, json!({"notification": null}))
    );
}

/// Every route that takes a personal access token refuses everything else with a 401
/// that says which credential it takes.
#[tokio::test]
async fn token_routes_refuse_other_credentials() {
    let app = TestApp::start();
    let project = app.project_id();
    let token = app.pat_create();
    let revoked = app.pat_create();
    app.revoke(&revoked[..13]);
    let unknown = format!("tr_pat_{}", "x".repeat(40));
    let staging = app.keys_create("staging");
    let routes = [
        (Method::GET, "/api/v2/whoami".to_owned()),
        (Method::GET, "/api/v1/platform-notifications".to_owned()),
        (Method::GET, format!("/api/v1/projects/{project}/dev")),
        (Method::POST, format!("/api/v1/projects/{project}/branches")),
    ];
    for (method, path) in &routes {
        for (credential, message) in [
            (app.dev_key.as_str(), PERSONAL_TOKEN_ONLY),
            (staging.as_str(), PERSONAL_TOKEN_ONLY),
            ("tr_oat_0123456789", PERSONAL_TOKEN_ONLY),
            (&token[..20], PERSONAL_TOKEN_ONLY),
            (unknown.as_str(), INVALID_PERSONAL_TOKEN),
            (revoked.as_str(), INVALID_PERSONAL_TOKEN),
        ] {
            let reply = send(
                app.server
                    .request(method.clone(), path)
                    .bearer_auth(credential)
                    .json(&json!({"branch": "b", "env": "development"})),
            )
            .await;
            assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{method} {path}");
            reply.assert_error(StatusCode::UNAUTHORIZED, message);
        }
        let reply = send(app.server.request(method.clone(), path)).await;
        assert_eq!(
            (reply.status, &reply.body["error"]),
            (
                StatusCode::UNAUTHORIZED,
                &json!("No authorization header provided")
            ),
            "{method} {path}"
        );
    }
    // The live token passes where the others did not.
    let reply = get(&app, "/api/v2/whoami", Some(&token)).await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
}

/// A token is no secret key: the rest of the API refuses it, saying what to use.
#[tokio::test]
async fn key_routes_refuse_a_personal_access_token() {
    let app = TestApp::start();
    let project = app.project_id();
    let token = app.pat_create();
    for path in [
        "/api/v3/runs/run_0000000000000000000000000a".to_owned(),
        format!("/api/v1/projects/{project}/envvars"),
        "/engine/v1/dev/config".to_owned(),
        "/engine/v1/dev/presence".to_owned(),
    ] {
        let reply = get(&app, &path, Some(&token)).await;
        reply.assert_error(StatusCode::UNAUTHORIZED, PERSONAL_TOKEN_HERE);
    }
}

/// The same token gets the same key every time (the CLI hands it to every task process),
/// a different token another one; and the key is a live key of its environment.
#[tokio::test]
async fn a_token_trades_for_one_stable_key_per_environment() {
    let app = TestApp::start();
    let token = app.pat_create();
    let dev = api_key(&app, &token, "dev").await;
    assert_secret_key(&dev, "dev");
    assert_eq!(
        api_key(&app, &token, "dev").await,
        dev,
        "same token, same key"
    );
    let other = app.pat_create();
    assert_ne!(api_key(&app, &other, "dev").await, dev);
    assert_secret_key(&api_key(&app, &token, "staging").await, "stg");
    let prod = api_key(&app, &token, "prod").await;
    assert_secret_key(&prod, "prod");

    // The key works on the API, in its own environment.
    let run = app.server.trigger_new(&dev, "t", &json!({})).await;
    let reply = app.server.retrieve(&dev, &run).await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    assert_eq!(reply.body["id"], run);
    let reply = app.server.retrieve(&prod, &run).await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND, "{reply:?}");
}

/// Many first requests of one token at once (the CLI retries; several nodes may answer):
/// every one gets the key, the same one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_first_requests_get_the_same_key() {
    let app = TestApp::start();
    let token = app.pat_create();
    let path = format!("/api/v1/projects/{}/dev", app.project_id());
    let api: Api = (*app.server).clone();
    let mut requests = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let (api, path, token) = (api.clone(), path.clone(), token.clone());
        requests
            .spawn(async move { send(api.request(Method::GET, &path).bearer_auth(&token)).await });
    }
    let replies = requests.join_all().await;
    let keys: Vec<&Value> = replies
        .iter()
        .map(|reply| {
            assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
            &reply.body["apiKey"]
        })
        .collect();
    assert!(keys.iter().all(|key| *key == keys[0]), "{keys:?}");
    let key = keys[0].as_str().unwrap();
    let reply = app
        .server
        .retrieve(key, "run_0000000000000000000000000a")
        .await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND, "a live key: {reply:?}");
}

/// A derived key that was revoked stays revoked: the token gets a 403 saying so, not a
/// key that no longer works.
#[tokio::test]
async fn a_revoked_derived_key_is_refused_not_revived() {
    let app = TestApp::start();
    let token = app.pat_create();
    let key = api_key(&app, &token, "dev").await;
    app.revoke(&key[..13]);
    let reply = project_env(&app, &app.project_id(), "dev", &token).await;
    reply.assert_error(
        StatusCode::FORBIDDEN,
        &format!(
            "The dev secret key of this personal access token ({}) was revoked; create a new \
             token with `runnel keys create --pat`",
            &key[..13]
        ),
    );
    let reply = app
        .server
        .retrieve(&key, "run_0000000000000000000000000a")
        .await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{reply:?}");
    // Another environment's key of the same token is untouched.
    assert_secret_key(&api_key(&app, &token, "prod").await, "prod");
}

#[tokio::test]
async fn project_environment_refuses_a_wrong_ref_or_environment() {
    let app = TestApp::start();
    let token = app.pat_create();
    let project = app.project_id();
    // The CLI prints its own hint for exactly this text.
    for other in ["proj_0000000000000000000000000a", "my-project"] {
        project_env(&app, other, "dev", &token)
            .await
            .assert_error(StatusCode::NOT_FOUND, "Project not found");
    }
    project_env(&app, &project, "development", &token)
        .await
        .assert_error(
            StatusCode::BAD_REQUEST,
            "Invalid environment \"development\": expected dev, staging, prod or preview",
        );
    project_env(&app, &project, "preview", &token)
        .await
        .assert_error(
            StatusCode::NOT_FOUND,
            "Runnel has no preview environment (its environments are dev, staging and prod)",
        );
}

/// The URLs handed out are this server as the client reached it: behind a proxy that
/// terminates TLS, `https`.
#[tokio::test]
async fn urls_follow_the_host_and_forwarded_proto() {
    let app = TestApp::start();
    let token = app.pat_create();
    let project = app.project_id();
    let reply = send(
        app.server
            .request(Method::GET, &format!("/api/v1/projects/{project}/dev"))
            .bearer_auth(&token)
            .header("host", "runnel.example:8443")
            .header("x-forwarded-proto", "https"),
    )
    .await;
    assert_eq!(
        reply.body["apiUrl"], "https://runnel.example:8443",
        "{reply:?}"
    );
    let key = reply.body["apiKey"].as_str().unwrap().to_owned();
    let reply = send(
        app.server
            .request(Method::GET, "/engine/v1/dev/config")
            .bearer_auth(&key)
            .header("host", "runnel.example:8080"),
    )
    .await;
    assert_eq!(
        reply.body["engineUrl"], "http://runnel.example:8080",
        "{reply:?}"
    );
}

#[tokio::test]
async fn envvars_of_a_fresh_environment_are_empty() {
    let app = TestApp::start();
    let project = app.project_id();
    let reply = get(
        &app,
        &format!("/api/v1/projects/{project}/envvars"),
        Some(&app.dev_key),
    )
    .await;
    assert_eq!(
        (reply.status, reply.body),
        (StatusCode::OK, json!({"variables": {}}))
    );
    let reply = get(
        &app,
        "/api/v1/projects/proj_0000000000000000000000000a/envvars",
        Some(&app.dev_key),
    )
    .await;
    reply.assert_error(StatusCode::NOT_FOUND, "Project not found");
    let reply = get(&app, &format!("/api/v1/projects/{project}/envvars"), None).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{reply:?}");
}

#[tokio::test]
async fn dev_config_answers_a_dev_key_only() {
    let app = TestApp::start();
    let token = app.pat_create();
    let key = api_key(&app, &token, "dev").await;
    let reply = get(&app, "/engine/v1/dev/config", Some(&key)).await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    assert_no_nulls(&reply.body);
    let environment = reply.body["environmentId"].as_str().unwrap().to_owned();
    runnel_testkit::assert_friendly_id(&environment, "env");
    assert_eq!(
        reply.body,
        json!({
            "environmentId": environment,
            "dequeueIntervalWithRun": 250,
            "dequeueIntervalWithoutRun": 1000,
            "maxConcurrentRuns": 25,
            "engineUrl": app.server.url,
        })
    );
    // The bootstrap's own dev key is of the same environment.
    let reply = get(&app, "/engine/v1/dev/config", Some(&app.dev_key)).await;
    assert_eq!(reply.body["environmentId"], environment.as_str());

    for (env, tag) in [("staging", "staging"), ("prod", "prod")] {
        let other = api_key(&app, &token, env).await;
        for path in ["/engine/v1/dev/config", "/engine/v1/dev/presence"] {
            get(&app, path, Some(&other)).await.assert_error(
                StatusCode::FORBIDDEN,
                &format!(
                    "/engine/v1/dev/* takes a secret key of the dev environment (tr_dev_…); \
                     this key belongs to the {tag} environment"
                ),
            );
        }
    }
    let reply = get(&app, "/engine/v1/dev/config", None).await;
    reply.assert_error(StatusCode::UNAUTHORIZED, "No authorization header provided");
}

/// The presence stream is server-sent events that open with `start`. (Its schedule, a
/// `time` every 4 s and the end at 30 s, is tested on a paused clock in the crate.)
#[tokio::test]
async fn presence_opens_an_event_stream_with_start() {
    let app = TestApp::start();
    let mut response = app
        .server
        .request(Method::GET, "/engine/v1/dev/presence")
        .bearer_auth(&app.dev_key)
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()["content-type"],
        "text/event-stream",
        "{response:?}"
    );
    let mut text = String::new();
    while !text.contains("\n\n") {
        let chunk = response
            .chunk()
            .await
            .unwrap()
            .expect("the stream stays open");
        text.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    let event = text.split("\n\n").next().unwrap();
    let mut lines = event.lines();
    assert_eq!(lines.next(), Some("event: start"), "{text:?}");
    let data: Value = serde_json::from_str(
        lines
            .next()
            .and_then(|l| l.strip_prefix("data: "))
            .unwrap_or_else(|| panic!("no data in {text:?}")),
    )
    .unwrap();
    runnel_testkit::assert_friendly_id(data["environmentId"].as_str().unwrap(), "env");
    runnel_testkit::timestamp(&data["time"]);
}

#[tokio::test]
async fn branches_are_not_supported() {
    let app = TestApp::start();
    let token = app.pat_create();
    let project = app.project_id();
    let reply = send(
        app.server
            .request(
                Method::POST,
                &format!("/api/v1/projects/{project}/branches"),
            )
            .bearer_auth(&token)
            .json(&json!({"branch": "feature", "env": "development"})),
    )
    .await;
    reply.assert_error(
        StatusCode::BAD_REQUEST,
        "Dev branches are not supported by Runnel yet",
    );
}

/// Without the operator's opt-in, the browser-free login hands out nothing, and says
/// how to turn it on (no credentials are needed to be told).
#[tokio::test]
async fn login_is_off_unless_the_server_opts_in() {
    let app = TestApp::start();
    for (path, body) in [
        (
            "/api/v1/authorization-code",
            json!({"codeChallenge": "a".repeat(43), "codeChallengeMethod": "S256"}),
        ),
        ("/api/v1/token", json!({"authorizationCode": "abc"})),
    ] {
        let reply = send(app.server.request(Method::POST, path).json(&body)).await;
        assert_eq!(reply.status, StatusCode::FORBIDDEN, "{path}: {reply:?}");
        let message = reply.body["error"].as_str().unwrap();
        assert!(
            message.contains("--trigger-login-auto-approve")
                && message.contains("runnel keys create --pat"),
            "{message}"
        );
    }
}
