//! Public access tokens the SDK signs itself, over HTTP against a server built as
//! `runnel serve` builds it (`runnel_testkit::TestApp`): `auth.createPublicToken()`,
//! `createTriggerPublicToken()` and `createBatchTriggerPublicToken()` sign HS256 with
//! the raw secret key after `POST /api/v1/auth/jwt/claims`, which the server verifies
//! against the keys it keeps sealed under its master key. Also: no key is stored in
//! plain text, and a key stored before sealing existed verifies after one use.

use chrono::Utc;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::header::CONTENT_TYPE;
use reqwest::{Method, StatusCode};
use runnel_testkit::{send, Reply, TestApp};
use serde_json::{json, Value};

const INVALID: &str = "Public Access Token is invalid. See https://trigger.dev/docs/frontend/overview#authentication for more information.";
const ONE_TIME_USED: &str = "This one-time use Public Access Token has already been used: \
    create a new one for each request (or one with `multipleUse: true`)";

fn forbidden() -> Value {
    json!({"error": "Unauthorized", "code": "unauthorized", "param": "access_token", "type": "authorization"})
}

/// What the SDK's `generateJWT` signs: the claims endpoint's answer, then `extra`
/// (scopes, `otu`, `realtime`), issuer, audience, `iat` and a 15-minute `exp`, HS256
/// with the raw key.
async fn sdk_token(app: &TestApp, key: &str, extra: Value) -> String {
    let claims = send(
        app.server
            .request(Method::POST, "/api/v1/auth/jwt/claims")
            .bearer_auth(key),
    )
    .await;
    assert_eq!(claims.status, StatusCode::OK, "{claims:?}");
    let mut payload = claims.body.clone();
    let now = Utc::now().timestamp();
    let object = payload.as_object_mut().unwrap();
    object.extend(extra.as_object().unwrap().clone());
    object.extend(
        json!({"iss": "https://id.trigger.dev", "aud": "https://api.trigger.dev", "iat": now, "exp": now + 900})
            .as_object()
            .unwrap()
            .clone(),
    );
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &payload,
        &EncodingKey::from_secret(key.as_bytes()),
    )
    .unwrap()
}

fn assert_unauthorized(reply: &Reply, message: &str) {
    assert_eq!(
        (reply.status, &reply.body),
        (StatusCode::UNAUTHORIZED, &json!({ "error": message })),
        "{reply:?}"
    );
}

#[tokio::test]
async fn an_sdk_signed_token_reads_its_run_and_nothing_else() {
    let app = TestApp::start();
    let server = &app.server;
    let run = server.trigger_new(&app.dev_key, "t", &json!({})).await;
    let other = server.trigger_new(&app.dev_key, "t", &json!({})).await;
    let token = sdk_token(
        &app,
        &app.dev_key,
        json!({"scopes": [format!("read:runs:{run}")], "realtime": {"skipColumns": ["payload"]}}),
    )
    .await;

    let reply = server.retrieve(&token, &run).await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    assert_eq!(reply.body, server.run(&app.dev_key, &run).await);
    let reply = server.retrieve(&token, &other).await;
    assert_eq!(
        (reply.status, &reply.body),
        (StatusCode::FORBIDDEN, &forbidden())
    );

    // The payload swapped for one granting every run: the signature no longer matches.
    let wider = sdk_token(&app, &app.dev_key, json!({"scopes": ["read:runs"]})).await;
    let parts: Vec<&str> = token.split('.').collect();
    let wider_parts: Vec<&str> = wider.split('.').collect();
    let tampered = format!("{}.{}.{}", parts[0], wider_parts[1], parts[2]);
    assert_unauthorized(&server.retrieve(&tampered, &other).await, INVALID);
    // Not a trigger scope: triggering with it is forbidden.
    let reply = server.trigger(&token, "t", &json!({})).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN, "{reply:?}");
}

#[tokio::test]
async fn a_token_signed_by_a_revoked_key_is_401() {
    let app = TestApp::start();
    let server = &app.server;
    let key = app.keys_create("dev");
    let run = server.trigger_new(&key, "t", &json!({})).await;
    let token = sdk_token(&app, &key, json!({"scopes": ["read:runs"]})).await;
    assert_eq!(server.retrieve(&token, &run).await.status, StatusCode::OK);
    app.revoke(&key[..13]);
    assert_unauthorized(&server.retrieve(&token, &run).await, INVALID);
    // The other key of the environment does not sign it either.
    let reply = server.retrieve(&app.dev_key, &run).await;
    assert_eq!(reply.status, StatusCode::OK);
}

#[tokio::test]
async fn a_one_time_trigger_token_triggers_once() {
    let app = TestApp::start();
    let server = &app.server;
    // `createTriggerPublicToken("t")`: `otu: true` by default.
    let token = sdk_token(
        &app,
        &app.dev_key,
        json!({"otu": true, "scopes": ["trigger:tasks:t"]}),
    )
    .await;
    let reply = server
        .trigger(&token, "t", &json!({"payload": {"n": 1}}))
        .await;
    let run = reply.assert_new_run();
    // The response's own token reads the new run.
    let read = reply.headers["x-trigger-jwt"].to_str().unwrap().to_owned();
    assert_eq!(server.retrieve(&read, &run).await.status, StatusCode::OK);
    assert_eq!(
        server.run(&app.dev_key, &run).await["payload"],
        json!({"n": 1})
    );
    assert_unauthorized(
        &server.trigger(&token, "t", &json!({})).await,
        ONE_TIME_USED,
    );

    // `multipleUse: true` (`otu: false`): works again and again; another task: 403.
    let many = sdk_token(
        &app,
        &app.dev_key,
        json!({"otu": false, "scopes": ["trigger:tasks:t"]}),
    )
    .await;
    for _ in 0..2 {
        server
            .trigger(&many, "t", &json!({}))
            .await
            .assert_new_run();
    }
    let reply = server.trigger(&many, "other", &json!({})).await;
    assert_eq!(
        (reply.status, &reply.body),
        (StatusCode::FORBIDDEN, &forbidden())
    );
    // `trigger:tasks` covers every task.
    let all = sdk_token(&app, &app.dev_key, json!({"scopes": ["trigger:tasks"]})).await;
    server
        .trigger(&all, "other", &json!({}))
        .await
        .assert_new_run();
}

async fn batch_create(app: &TestApp, key: &str, body: Value) -> Reply {
    send(
        app.server
            .request(Method::POST, "/api/v3/batches")
            .bearer_auth(key)
            .json(&body),
    )
    .await
}

async fn batch_items(app: &TestApp, key: &str, batch: &str, task: &str) -> Reply {
    let line = format!("{}\n", json!({"index": 0, "task": task, "payload": {}}));
    send(
        app.server
            .request(Method::POST, &format!("/api/v3/batches/{batch}/items"))
            .bearer_auth(key)
            .header(CONTENT_TYPE, "application/x-ndjson")
            .body(line),
    )
    .await
}

async fn one_shot(app: &TestApp, key: &str, items: Value) -> Reply {
    send(
        app.server
            .request(Method::POST, "/api/v1/tasks/batch")
            .bearer_auth(key)
            .json(&json!({ "items": items })),
    )
    .await
}

#[tokio::test]
async fn a_one_time_batch_token_creates_one_batch_and_streams_its_items() {
    let app = TestApp::start();
    // `createBatchTriggerPublicToken("t")`: `otu: true` by default.
    let scoped = json!({"otu": true, "scopes": ["batchTrigger:tasks:t"]});
    let token = sdk_token(&app, &app.dev_key, scoped).await;
    // A task the token does not name: 403. (Another token: two tokens signed within
    // one second with the same claims are the same token.)
    let other = sdk_token(
        &app,
        &app.dev_key,
        json!({"otu": true, "scopes": ["batchTrigger:tasks:t", "read:runs"]}),
    )
    .await;
    let reply = batch_create(
        &app,
        &other,
        json!({"runCount": 1, "taskIdentifiers": ["u"]}),
    )
    .await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN, "{reply:?}");

    let body = json!({"runCount": 1, "taskIdentifiers": ["t"]});
    let reply = batch_create(&app, &token, body.clone()).await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{reply:?}");
    let batch = reply.body["id"].as_str().unwrap().to_owned();
    // An item of a task it does not name: 403.
    let reply = batch_items(&app, &token, &batch, "u").await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN, "{reply:?}");
    // The items of the batch it created are part of its one use.
    let reply = batch_items(&app, &token, &batch, "t").await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    assert_eq!(reply.body["sealed"], true, "{reply:?}");
    // A second batch: 401.
    assert_unauthorized(&batch_create(&app, &token, body).await, ONE_TIME_USED);
    // Items of another batch: 401.
    let reply = batch_create(&app, &app.dev_key, json!({"runCount": 1})).await;
    let second = reply.body["id"].as_str().unwrap().to_owned();
    assert_unauthorized(
        &batch_items(&app, &token, &second, "t").await,
        ONE_TIME_USED,
    );

    // The one-shot batch: every item's task must be allowed.
    let many = sdk_token(
        &app,
        &app.dev_key,
        json!({"scopes": ["batchTrigger:tasks:t"]}),
    )
    .await;
    let reply = one_shot(&app, &many, json!([{"task": "t"}, {"task": "t"}])).await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{reply:?}");
    let reply = one_shot(&app, &many, json!([{"task": "t"}, {"task": "u"}])).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN, "{reply:?}");
}

/// Every byte the database keeps about its keys: on SQLite the database file and its
/// write-ahead log; on PostgreSQL every column of every `api_keys` row.
async fn stored_bytes(app: &TestApp) -> Vec<u8> {
    match app.database_url() {
        Some(url) => {
            let pool = sqlx::PgPool::connect(url).await.unwrap();
            let rows: Vec<(String,)> =
                sqlx::query_as("SELECT row_to_json(k)::text FROM api_keys k")
                    .fetch_all(&pool)
                    .await
                    .unwrap();
            pool.close().await;
            assert!(!rows.is_empty());
            rows.into_iter()
                .flat_map(|(row,)| row.into_bytes())
                .collect()
        }
        None => {
            let mut bytes = Vec::new();
            for name in ["runnel.db", "runnel.db-wal"] {
                if let Ok(file) = std::fs::read(app.data_dir().join(name)) {
                    bytes.extend(file);
                }
            }
            bytes
        }
    }
}

#[tokio::test]
async fn no_key_is_stored_in_plain_text() {
    let app = TestApp::start();
    let created = app.keys_create("prod");
    let bytes = stored_bytes(&app).await;
    assert!(bytes.len() > 1000 || app.database_url().is_some());
    for key in [&app.dev_key, &created] {
        let found = bytes.windows(key.len()).any(|w| w == key.as_bytes());
        assert!(!found, "{key} is stored in plain text");
        // The body alone (what follows `tr_<env>_`) is not there either.
        let body = &key.as_bytes()[key.len() - 24..];
        assert!(
            !bytes.windows(24).any(|w| w == body),
            "{key}'s body is stored"
        );
    }
    // The rows do hold them sealed.
    let sealed = String::from_utf8_lossy(&bytes)
        .contains(&format!("v1:{}:", app.master_keys.current().id()));
    assert!(sealed, "no sealed value is stored");
}

/// Forgets the sealed copy of every key, as a database from before sealing has them.
async fn unseal_all(app: &TestApp) {
    let sql = "UPDATE api_keys SET key_sealed = NULL";
    match app.database_url() {
        Some(url) => {
            let pool = sqlx::PgPool::connect(url).await.unwrap();
            sqlx::query(sql).execute(&pool).await.unwrap();
            pool.close().await;
        }
        None => {
            let options = sqlx::sqlite::SqliteConnectOptions::new()
                .filename(app.data_dir().join("runnel.db"))
                .busy_timeout(std::time::Duration::from_secs(10));
            let pool = sqlx::SqlitePool::connect_with(options).await.unwrap();
            sqlx::query(sql).execute(&pool).await.unwrap();
            pool.close().await;
        }
    }
}

#[tokio::test]
async fn a_key_stored_before_sealing_verifies_sdk_tokens_after_one_use() {
    let app = TestApp::start();
    let server = &app.server;
    let key = app.keys_create("staging");
    let run = server.trigger_new(&key, "t", &json!({})).await;
    let token = sdk_token(&app, &key, json!({"scopes": [format!("read:runs:{run}")]})).await;
    unseal_all(&app).await;
    // Server-minted tokens never needed the key itself; an SDK-signed one does.
    assert_unauthorized(&server.retrieve(&token, &run).await, INVALID);
    // One request with the key seals it …
    assert_eq!(server.retrieve(&key, &run).await.status, StatusCode::OK);
    // … and the token verifies from then on.
    let reply = server.retrieve(&token, &run).await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
}
