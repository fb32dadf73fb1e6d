//! Personal access tokens through the `runnel` binary: `keys create --pat` (what
//! `npx trigger.dev dev` logs in with), listing and revoking them, what `runnel dev`
//! prints for the `trigger.dev` CLI, and the opt-in browser-free `trigger login`. (The
//! routes themselves: crates/runnel-server/tests/devboot.rs.)

mod common;

use std::time::Duration;

use common::*;
use reqwest::{Method, StatusCode};
use serde_json::json;
use tempfile::TempDir;

/// Characters after `tr_pat_` in a token.
const TOKEN_BODY_LEN: usize = 40;
/// `tr_pat_` plus the six characters `keys list` shows.
const TOKEN_PREFIX_LEN: usize = 13;

fn assert_token(token: &str) {
    let body = token
        .strip_prefix("tr_pat_")
        .unwrap_or_else(|| panic!("{token:?} does not start with tr_pat_"));
    assert!(
        body.len() == TOKEN_BODY_LEN && body.bytes().all(|b| b.is_ascii_alphanumeric()),
        "{token:?} is not tr_pat_ + 40 alphanumerics"
    );
}

/// `GET /api/v2/whoami` with `token`: its status.
async fn whoami(api: &Api, token: &str) -> StatusCode {
    send(
        api.request(Method::GET, "/api/v2/whoami")
            .bearer_auth(token),
    )
    .await
    .status
}

/// The rows of `runnel keys list` as whitespace-split columns.
fn keys_list(app: &TestApp) -> Vec<Vec<String>> {
    let output = runnel(&app.data_dir(), &["keys", "list"]);
    assert!(output.status.success(), "{}", describe(&output));
    String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .skip(1)
        .map(|line| line.split_whitespace().map(str::to_owned).collect())
        .collect()
}

#[tokio::test]
async fn keys_create_pat_prints_a_token_alone_that_lists_and_revokes() {
    let app = TestApp::start();
    let output = runnel(&app.data_dir(), &["keys", "create", "--pat"]);
    assert!(output.status.success(), "{}", describe(&output));
    let stdout = String::from_utf8(output.stdout.clone()).unwrap();
    assert_eq!(
        stdout.lines().count(),
        1,
        "the token alone: {}",
        describe(&output)
    );
    assert!(stdout.ends_with('\n'));
    let token = stdout.trim_end();
    assert_token(token);
    assert_eq!(whoami(&app.server, token).await, StatusCode::OK);

    // Listed by its prefix, never in full, after the bootstrap's dev key.
    let prefix = &token[..TOKEN_PREFIX_LEN];
    let rows = keys_list(&app);
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert_eq!(rows[0][1], "dev");
    assert_eq!(&rows[1][..2], [prefix, "pat"]);
    assert_eq!(rows[1][3], "-", "live");

    let output = runnel(&app.data_dir(), &["keys", "revoke", prefix]);
    assert!(output.status.success(), "{}", describe(&output));
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        format!("revoked {prefix}")
    );
    assert_eq!(whoami(&app.server, token).await, StatusCode::UNAUTHORIZED);
    let rows = keys_list(&app);
    assert_ne!(rows[1][3], "-", "revoked: {rows:?}");
    // The dev key is untouched.
    let reply = app
        .server
        .retrieve(&app.dev_key, "run_0000000000000000000000000a")
        .await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND, "{reply:?}");
}

/// `keys create` takes exactly one of `--env` and `--pat`.
#[test]
fn keys_create_takes_env_or_pat() {
    let dir = TempDir::new().unwrap();
    for args in [
        &["keys", "create"][..],
        &["keys", "create", "--pat", "--env", "dev"],
    ] {
        let output = runnel(dir.path(), args);
        assert_eq!(
            output.status.code(),
            Some(2),
            "{args:?}: {}",
            describe(&output)
        );
        assert!(output.stdout.is_empty(), "{}", describe(&output));
    }
}

/// The lines `runnel dev` printed after its address, once it printed `count`.
fn lines_after_address(server: &Server, count: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let deadline = std::time::Instant::now() + STARTUP_TIMEOUT;
    while lines.len() < count {
        lines.extend(server.later_stdout());
        assert!(
            std::time::Instant::now() < deadline,
            "runnel dev printed {lines:?}, expected {count} lines\n{}",
            server.stderr()
        );
        std::thread::sleep(POLL_INTERVAL);
    }
    lines
}

/// `runnel dev` says how to point `npx trigger.dev dev` at it: on the first start with a
/// new token (shown once, like the dev key), later with the command that prints one.
#[tokio::test]
async fn dev_prints_what_trigger_dev_needs() {
    let dir = TempDir::new().unwrap();
    let first = Server::start_dev(dir.path(), &["--task", "t=true"]);
    let project = first.bootstrap.clone().expect("a first start").project_id;
    let lines = lines_after_address(&first, 3);
    let token = lines[0]
        .strip_prefix("Personal access token for `npx trigger.dev dev` (shown once, keep it): ")
        .unwrap_or_else(|| panic!("unexpected first line {lines:?}"));
    assert_token(token);
    assert!(lines[1].contains("npx trigger.dev dev"), "{lines:?}");
    assert_eq!(
        lines[2],
        format!(
            "  export TRIGGER_API_URL={} TRIGGER_ACCESS_TOKEN={token} TRIGGER_PROJECT_REF={project}",
            first.url
        )
    );
    // What the CLI does with them: the token trades for the dev environment's key.
    let reply = send(
        first
            .request(Method::GET, &format!("/api/v1/projects/{project}/dev"))
            .bearer_auth(token),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    assert_secret_key(reply.body["apiKey"].as_str().unwrap(), "dev");
    let token = token.to_owned();
    assert!(first.terminate().success());

    let second = Server::start_dev(dir.path(), &["--task", "t=true"]);
    let lines = lines_after_address(&second, 2);
    let export = lines[1]
        .strip_prefix(&format!(
            "  export TRIGGER_API_URL={} TRIGGER_ACCESS_TOKEN=",
            second.url
        ))
        .unwrap_or_else(|| panic!("unexpected lines {lines:?}"));
    assert!(
        export.starts_with("\"$(runnel keys create --pat")
            && export.ends_with(&format!(")\" TRIGGER_PROJECT_REF={project}")),
        "{export}"
    );
    assert!(
        !lines.iter().any(|line| line.contains("tr_pat_")),
        "{lines:?}"
    );
    // The first start's token still works.
    assert_eq!(whoami(&second, &token).await, StatusCode::OK);
}

/// With `--trigger-login-auto-approve`, the legacy `trigger login` gets a working token
/// on its first poll, without a browser.
#[tokio::test]
async fn auto_approved_login_hands_out_a_working_token() {
    let app = TestApp::start_with(&["--trigger-login-auto-approve"]);
    let reply = send(
        app.server
            .request(Method::POST, "/api/v1/authorization-code")
            .json(&json!({"codeChallenge": "a".repeat(43), "codeChallengeMethod": "S256"})),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    assert_no_nulls(&reply.body);
    let code = reply.body["authorizationCode"].as_str().unwrap().to_owned();
    assert_eq!(
        reply.body,
        json!({"url": format!("{}/", app.server.url), "authorizationCode": code}),
        "no `approval`: the CLI polls for the token"
    );
    // The CLI posts without a content type.
    let reply = send(
        app.server
            .request(Method::POST, "/api/v1/token")
            .body(json!({"authorizationCode": code}).to_string()),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    let token = reply.body["token"]["token"].as_str().unwrap();
    assert_token(token);
    assert_eq!(
        reply.body,
        json!({"token": {
            "token": token,
            "obfuscatedToken": format!("{}{}", &token[..TOKEN_PREFIX_LEN], "*".repeat(34)),
        }})
    );
    assert_eq!(whoami(&app.server, token).await, StatusCode::OK);
    eventually("the login is logged", Duration::from_secs(5), || async {
        app.server
            .stderr()
            .contains("trigger login auto-approved")
            .then_some(())
    })
    .await;
}
