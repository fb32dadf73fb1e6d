//! Authentication over HTTP against the real binary: public access tokens (minted on
//! trigger and by `POST /api/v1/auth/jwt`, scoped, expiring, dying with their key), the
//! refusals of §1.2/§1.4, and the opt-in per-environment rate limit of §1.5.

mod common;

use chrono::Utc;
use common::{key_prefix, keys_create, runnel, send, Reply, Server, TestApp};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

const EXPIRED: &str = "Public Access Token has expired. See https://trigger.dev/docs/frontend/overview#authentication for more information.";
const INVALID: &str = "Public Access Token is invalid. See https://trigger.dev/docs/frontend/overview#authentication for more information.";
const JWT_REFUSED: &str = "Public JWT API keys are not allowed for this request";

fn forbidden() -> Value {
    json!({"error": "Unauthorized", "code": "unauthorized", "param": "access_token", "type": "authorization"})
}

/// The token and the parsed claims of a trigger response's headers.
fn token_headers(reply: &Reply) -> (String, Value) {
    let header = |name: &str| {
        reply
            .headers
            .get(name)
            .unwrap_or_else(|| panic!("no {name}: {reply:?}"))
            .to_str()
            .unwrap()
            .to_owned()
    };
    let claims = serde_json::from_str(&header("x-trigger-jwt-claims")).unwrap();
    (header("x-trigger-jwt"), claims)
}

/// The payload of a JWT, unverified.
fn payload(token: &str) -> Value {
    let data = jsonwebtoken::dangerous::insecure_decode::<Value>(token).expect("a JWT");
    data.claims
}

/// A token signed with `secret`, with these claims over the defaults.
fn sign(secret: &[u8], overrides: Value) -> String {
    let now = Utc::now().timestamp();
    let mut claims = json!({
        "iss": "https://id.trigger.dev", "aud": "https://api.trigger.dev",
        "pub": true, "scopes": ["read:runs"], "iat": now, "exp": now + 600,
    });
    claims
        .as_object_mut()
        .unwrap()
        .extend(overrides.as_object().unwrap().clone());
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret),
    )
    .unwrap()
}

fn key_hash(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

async fn claims_of(server: &Server, key: &str) -> Reply {
    send(
        server
            .request(Method::POST, "/api/v1/auth/jwt/claims")
            .bearer_auth(key),
    )
    .await
}

fn assert_unauthorized(reply: &Reply, message: &str) {
    assert_eq!(
        (reply.status, &reply.body),
        (StatusCode::UNAUTHORIZED, &json!({ "error": message })),
        "{reply:?}"
    );
}

#[tokio::test]
async fn a_trigger_hands_out_a_token_that_reads_that_run_only() {
    let app = TestApp::start();
    let server = &app.server;
    let other = server.trigger_new(&app.dev_key, "t", &json!({})).await;
    let reply = server
        .trigger(&app.dev_key, "t", &json!({"payload": 1}))
        .await;
    let run = reply.assert_new_run();
    let (token, claims) = token_headers(&reply);

    let environment = claims_of(server, &app.dev_key).await.body["sub"].clone();
    let scopes = json!([
        format!("read:runs:{run}"),
        format!("write:inputStreams:{run}")
    ]);
    assert_eq!(
        claims,
        json!({"sub": environment, "pub": true, "scopes": scopes})
    );
    let body = payload(&token);
    assert_eq!(
        (
            &body["iss"],
            &body["aud"],
            &body["sub"],
            &body["pub"],
            &body["scopes"]
        ),
        (
            &json!("https://id.trigger.dev"),
            &json!("https://api.trigger.dev"),
            &environment,
            &json!(true),
            &scopes
        )
    );
    assert_eq!(
        body["exp"].as_i64().unwrap() - body["iat"].as_i64().unwrap(),
        3600
    );

    // The token reads its run exactly as the key does.
    let with_token = server.retrieve(&token, &run).await;
    assert_eq!(with_token.status, StatusCode::OK, "{with_token:?}");
    assert_eq!(with_token.body, server.run(&app.dev_key, &run).await);

    // Another run of the same environment: forbidden. A missing one: not found.
    let reply = server.retrieve(&token, &other).await;
    assert_eq!(
        (reply.status, &reply.body),
        (StatusCode::FORBIDDEN, &forbidden())
    );
    let missing = server
        .retrieve(&token, "run_0000000000000000000000000")
        .await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND, "{missing:?}");

    // Routes that take no token refuse it, and it changes nothing.
    let before = server.run(&app.dev_key, &run).await["status"].clone();
    assert_unauthorized(&server.cancel(&token, &run).await, JWT_REFUSED);
    // Triggering takes a token, with a `trigger:tasks` scope this one lacks.
    let reply = server.trigger(&token, "t", &json!({})).await;
    assert_eq!(
        (reply.status, &reply.body),
        (StatusCode::FORBIDDEN, &forbidden())
    );
    assert_unauthorized(&claims_of(server, &token).await, JWT_REFUSED);
    assert_eq!(server.run(&app.dev_key, &run).await["status"], before);
    assert_ne!(before, "CANCELED");
}

#[tokio::test]
async fn a_batch_hands_out_a_token_that_reads_the_runs_of_that_batch() {
    let app = TestApp::start();
    let server = &app.server;
    let outsider = server.trigger_new(&app.dev_key, "t", &json!({})).await;
    let created = send(
        server
            .request(Method::POST, "/api/v3/batches")
            .bearer_auth(&app.dev_key)
            .json(&json!({"runCount": 1})),
    )
    .await;
    assert_eq!(created.status, StatusCode::ACCEPTED, "{created:?}");
    let batch = created.body["id"].as_str().unwrap().to_owned();
    let (token, claims) = token_headers(&created);
    assert_eq!(claims["scopes"], json!([format!("read:batch:{batch}")]));

    let items = send(
        server
            .request(Method::POST, &format!("/api/v3/batches/{batch}/items"))
            .bearer_auth(&app.dev_key)
            .header(CONTENT_TYPE, "application/x-ndjson")
            .body("{\"index\":0,\"task\":\"t\",\"payload\":{\"n\":1}}\n"),
    )
    .await;
    assert_eq!(items.body["sealed"], json!(true), "{items:?}");
    let retrieved = send(
        server
            .request(Method::GET, &format!("/api/v2/batches/{batch}"))
            .bearer_auth(&app.dev_key),
    )
    .await;
    let run = retrieved.body["runs"][0].as_str().unwrap().to_owned();

    let reply = server.retrieve(&token, &run).await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    assert_eq!(reply.body["batchId"], json!(batch));
    let reply = server.retrieve(&token, &outsider).await;
    assert_eq!(
        (reply.status, &reply.body),
        (StatusCode::FORBIDDEN, &forbidden())
    );
}

#[tokio::test]
async fn expired_forged_and_foreign_tokens_are_401() {
    let app = TestApp::start();
    let server = &app.server;
    let run = server.trigger_new(&app.dev_key, "t", &json!({})).await;
    let sub = claims_of(server, &app.dev_key).await.body["sub"].clone();
    let secret = key_hash(&app.dev_key);

    // Signed like the server signs: accepted, so the cases below fail for their reason.
    let good = sign(secret.as_bytes(), json!({"sub": sub}));
    assert_eq!(server.retrieve(&good, &run).await.status, StatusCode::OK);

    let now = Utc::now().timestamp();
    let expired = sign(
        secret.as_bytes(),
        json!({"sub": sub, "iat": now - 120, "exp": now - 60}),
    );
    assert_unauthorized(&server.retrieve(&expired, &run).await, EXPIRED);

    for forged in [
        sign(b"some other secret", json!({"sub": sub})),
        // The raw key of another environment's key.
        sign(
            keys_create(&app.data_dir(), "staging").as_bytes(),
            json!({"sub": sub}),
        ),
        sign(
            secret.as_bytes(),
            json!({"sub": sub, "aud": "https://elsewhere"}),
        ),
        sign(
            secret.as_bytes(),
            json!({"sub": sub, "iss": "https://elsewhere"}),
        ),
    ] {
        assert_unauthorized(&server.retrieve(&forged, &run).await, INVALID);
    }
    // A well-signed token of a made-up environment: that environment does not exist.
    let foreign = sign(
        secret.as_bytes(),
        json!({"sub": "env_0000000000000000000000000"}),
    );
    assert_unauthorized(
        &server.retrieve(&foreign, &run).await,
        "Invalid Public Access Token, environment not found.",
    );
    let no_sub = sign(secret.as_bytes(), json!({}));
    assert_unauthorized(
        &server.retrieve(&no_sub, &run).await,
        "Invalid Public Access Token, missing subject.",
    );
    // Legacy public keys are refused outright.
    let public_key = format!("pk_dev_{}", &app.dev_key[7..]);
    assert_unauthorized(
        &server.retrieve(&public_key, &run).await,
        "Public API keys are not allowed for this request",
    );
}

#[tokio::test]
async fn tokens_die_with_the_key_that_minted_them() {
    let app = TestApp::start();
    let server = &app.server;
    let staging = keys_create(&app.data_dir(), "staging");
    let second = keys_create(&app.data_dir(), "staging");
    let reply = server.trigger(&staging, "t", &json!({})).await;
    let run = reply.assert_new_run();
    let (token, _) = token_headers(&reply);
    let (other_token, _) = token_headers(&server.trigger(&second, "t", &json!({})).await);
    assert_eq!(server.retrieve(&token, &run).await.status, StatusCode::OK);

    let revoke = runnel(&app.data_dir(), &["keys", "revoke", key_prefix(&staging)]);
    assert!(revoke.status.success(), "{}", common::describe(&revoke));
    assert_unauthorized(&server.retrieve(&token, &run).await, INVALID);
    // Tokens of the environment's other key live on (and still see only their run).
    let reply = server.retrieve(&other_token, &run).await;
    assert_eq!(
        (reply.status, &reply.body),
        (StatusCode::FORBIDDEN, &forbidden())
    );
    // A dev token cannot read staging's run: it is not in its environment.
    let (dev_token, _) = token_headers(&server.trigger(&app.dev_key, "t", &json!({})).await);
    let reply = server.retrieve(&dev_token, &run).await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND, "{reply:?}");
}

#[tokio::test]
async fn the_claims_and_token_endpoints_mint_scoped_tokens() {
    let app = TestApp::start();
    let server = &app.server;
    let claims = claims_of(server, &app.dev_key).await;
    assert_eq!(claims.status, StatusCode::OK, "{claims:?}");
    let sub = claims.body["sub"].as_str().unwrap().to_owned();
    assert!(sub.starts_with("env_"), "{claims:?}");
    assert_eq!(claims.body, json!({"sub": sub, "pub": true}));

    let tagged = server
        .trigger_new(
            &app.dev_key,
            "email",
            &json!({"options": {"tags": ["user_7"]}}),
        )
        .await;
    let untagged = server.trigger_new(&app.dev_key, "sms", &json!({})).await;
    let mint = |body: Option<Value>| {
        let request = server
            .request(Method::POST, "/api/v1/auth/jwt")
            .bearer_auth(&app.dev_key);
        let request = match body {
            Some(body) => request.json(&body),
            None => request,
        };
        async move {
            let reply = send(request).await;
            assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
            reply.body["token"].as_str().unwrap().to_owned()
        }
    };

    for (scopes, reads_tagged, reads_untagged) in [
        (json!(["read:tasks:email"]), true, false),
        (json!(["read:tags:user_7"]), true, false),
        (json!(["read:runs"]), true, true),
        (json!(["read:tasks:sms"]), false, true),
        (json!(["write:runs"]), false, false),
    ] {
        let token = mint(Some(json!({"claims": {"scopes": scopes}}))).await;
        for (run, allowed) in [(&tagged, reads_tagged), (&untagged, reads_untagged)] {
            let reply = server.retrieve(&token, run).await;
            let want = if allowed {
                StatusCode::OK
            } else {
                StatusCode::FORBIDDEN
            };
            assert_eq!(reply.status, want, "{scopes} reading {run}: {reply:?}");
        }
    }

    // Defaults: no scopes, one hour.
    let token = mint(None).await;
    let claims = payload(&token);
    assert_eq!(
        (&claims["sub"], &claims["scopes"]),
        (&json!(sub), &json!([]))
    );
    assert_eq!(
        claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
        3600
    );
    assert_eq!(
        server.retrieve(&token, &tagged).await.status,
        StatusCode::FORBIDDEN
    );
    let token = mint(Some(json!({"expirationTime": "15m"}))).await;
    let claims = payload(&token);
    assert_eq!(
        claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
        900
    );

    let reply = send(
        server
            .request(Method::POST, "/api/v1/auth/jwt")
            .bearer_auth(&app.dev_key)
            .json(&json!({"expirationTime": "soon"})),
    )
    .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{reply:?}");
}

#[tokio::test]
async fn a_request_without_authorization_is_401_problem_json() {
    let app = TestApp::start();
    let server = &app.server;
    for (method, path) in [
        (Method::GET, "/api/v3/runs/run_0000000000000000000000000"),
        (Method::POST, "/api/v1/tasks/t/trigger"),
        (Method::POST, "/api/v1/auth/jwt/claims"),
        (Method::POST, "/api/v1/workers/register"),
        (Method::GET, "/api/v9/no-such-route"),
    ] {
        let response = server
            .request(method.clone(), path)
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        assert_eq!(
            response.status(),
            StatusCode::UNAUTHORIZED,
            "{method} {path}"
        );
        assert_eq!(
            response.headers()[CONTENT_TYPE],
            "application/problem+json",
            "{method} {path}"
        );
        let body: Value = response.json().await.unwrap();
        assert_eq!(
            body,
            json!({
                "title": "Unauthorized",
                "status": 401,
                "type": "https://developer.mozilla.org/en-US/docs/Web/HTTP/Status/401",
                "detail": "No authorization header provided",
                "error": "No authorization header provided",
            }),
            "{method} {path}"
        );
    }
    // Public: the OpenAPI document and the health check.
    for path in ["/api/openapi.json", "/healthz"] {
        let response = server.request(Method::GET, path).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path}");
    }
}

fn rate_headers(reply: &Reply) -> Option<(u64, u64, i64)> {
    let get = |name: &str| -> Option<String> {
        Some(reply.headers.get(name)?.to_str().unwrap().to_owned())
    };
    Some((
        get("x-ratelimit-limit")?.parse().unwrap(),
        get("x-ratelimit-remaining")?.parse().unwrap(),
        get("x-ratelimit-reset")?.parse().unwrap(),
    ))
}

#[tokio::test]
async fn the_rate_limit_is_per_environment_and_answers_429_when_the_bucket_is_empty() {
    let app = TestApp::start_with(&["--rate-limit", "3/1/1h"]);
    let server = &app.server;
    let key = &app.dev_key;
    let started_ms = Utc::now().timestamp_millis();

    let reply = server.trigger(key, "t", &json!({})).await;
    let run = reply.assert_new_run();
    let (limit, remaining, reset) = rate_headers(&reply).expect("rate limit headers");
    assert_eq!((limit, remaining), (3, 2), "{reply:?}");
    // The next refill is one interval after the bucket was created.
    let hour_ms = 3_600_000;
    assert!(
        (started_ms + hour_ms - 5_000..=Utc::now().timestamp_millis() + hour_ms).contains(&reset),
        "reset {reset}"
    );
    // A token spends its environment's bucket too.
    let (token, _) = token_headers(&reply);
    let reply = server.retrieve(&token, &run).await;
    assert_eq!(
        (reply.status, rate_headers(&reply)),
        (StatusCode::OK, Some((3, 1, reset)))
    );
    let reply = server.retrieve(key, &run).await;
    assert_eq!(
        (reply.status, rate_headers(&reply)),
        (StatusCode::OK, Some((3, 0, reset)))
    );

    let response = server
        .request(Method::GET, &format!("/api/v3/runs/{run}"))
        .header(AUTHORIZATION, format!("Bearer {key}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(response.headers()[CONTENT_TYPE], "application/problem+json");
    assert_eq!(response.headers()["x-ratelimit-limit"], "3");
    assert_eq!(response.headers()["x-ratelimit-remaining"], "0");
    assert_eq!(
        response.headers()["x-ratelimit-reset"],
        reset.to_string().as_str()
    );
    let mut body: Value = response.json().await.unwrap();
    let seconds = body["secondsUntilReset"]
        .as_i64()
        .expect("secondsUntilReset");
    assert!((3590..=3600).contains(&seconds), "{body}");
    let detail = format!("Rate limit exceeded 0/3 requests remaining. Retry in {seconds} seconds.");
    body["secondsUntilReset"] = json!("<s>");
    assert_eq!(
        body,
        json!({
            "title": "Rate Limit Exceeded",
            "status": 429,
            "type": "https://developer.mozilla.org/en-US/docs/Web/HTTP/Status/429",
            "detail": detail,
            "reset": reset,
            "limit": 3,
            "remaining": 0,
            "secondsUntilReset": "<s>",
            "error": detail,
        })
    );

    // The worker protocol and the claims endpoint are exempt, and carry no headers.
    let worker = send(
        server
            .request(Method::POST, "/api/v1/workers/register")
            .bearer_auth(key)
            .json(&json!({"name": "w", "tasks": [{"id": "t"}]})),
    )
    .await;
    assert_eq!(
        (worker.status, rate_headers(&worker)),
        (StatusCode::OK, None),
        "{worker:?}"
    );
    let claims = claims_of(server, key).await;
    assert_eq!(
        (claims.status, rate_headers(&claims)),
        (StatusCode::OK, None)
    );

    // Another environment has a bucket of its own.
    let staging = keys_create(&app.data_dir(), "staging");
    let reply = server.trigger(&staging, "t", &json!({})).await;
    reply.assert_new_run();
    assert_eq!(rate_headers(&reply).map(|(l, r, _)| (l, r)), Some((3, 2)));
}

#[tokio::test]
async fn without_the_flag_nothing_is_rate_limited() {
    let app = TestApp::start();
    let server = &app.server;
    let run = server.trigger_new(&app.dev_key, "t", &json!({})).await;
    for _ in 0..5 {
        let reply = server.retrieve(&app.dev_key, &run).await;
        assert_eq!(
            (reply.status, rate_headers(&reply)),
            (StatusCode::OK, None),
            "{reply:?}"
        );
    }
    let reply = server.trigger(&app.dev_key, "t", &json!({})).await;
    reply.assert_new_run();
    assert_eq!(rate_headers(&reply), None);
}
