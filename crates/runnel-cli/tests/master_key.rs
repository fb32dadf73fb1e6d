//! The master key across restarts of the real binary: `master.key` is created once
//! (mode 0600) and reused, so a token the SDK signed with a secret key still verifies
//! after a restart; a server given a key the database was not sealed under refuses to
//! start; a rotation with `--previous-encryption-keys` re-seals everything under the new
//! key, after which the old one is no longer needed (and no longer accepted alone).

mod common;

use chrono::Utc;
use common::{describe, runnel, send, Server};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::{Method, StatusCode};
use serde_json::json;
use tempfile::TempDir;

/// A token as the SDK's `auth.createPublicToken({scopes: {read: {runs: [run]}}})` signs
/// it: the claims endpoint's answer plus scopes, HS256 with the raw key.
async fn sdk_token(server: &Server, key: &str, run: &str) -> String {
    let claims = send(
        server
            .request(Method::POST, "/api/v1/auth/jwt/claims")
            .bearer_auth(key),
    )
    .await;
    assert_eq!(claims.status, StatusCode::OK, "{claims:?}");
    let now = Utc::now().timestamp();
    let mut payload = claims.body.clone();
    payload.as_object_mut().unwrap().extend(
        json!({
            "scopes": [format!("read:runs:{run}")],
            "iss": "https://id.trigger.dev", "aud": "https://api.trigger.dev",
            "iat": now, "exp": now + 900,
        })
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

/// `runnel serve` with `extra`, expected to refuse to start: its error output.
fn refused_start(dir: &TempDir, extra: &[&str]) -> String {
    let mut args = vec!["serve", "--listen", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    let output = runnel(dir.path(), &args);
    assert!(!output.status.success(), "{}", describe(&output));
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[tokio::test]
async fn an_sdk_signed_token_verifies_after_a_restart_and_through_a_rotation() {
    let dir = TempDir::new().unwrap();
    let server = Server::start(dir.path());
    let dev_key = server.dev_key().to_owned();
    let run = server.trigger_new(&dev_key, "t", &json!({})).await;
    let token = sdk_token(&server, &dev_key, &run).await;
    assert_eq!(server.retrieve(&token, &run).await.status, StatusCode::OK);
    assert!(
        server.stderr().contains("created a new master key"),
        "{}",
        server.stderr()
    );
    assert!(server.terminate().success());

    let file = dir.path().join("master.key");
    let old_key = std::fs::read_to_string(&file).unwrap().trim().to_owned();
    assert_eq!(old_key.len(), 64, "{old_key}");
    assert!(old_key.bytes().all(|b| b.is_ascii_hexdigit()), "{old_key}");
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{mode:o}");
    }

    // Restarted on the same data directory: the same key, the token still verifies.
    let server = Server::start(dir.path());
    assert!(!server.stderr().contains("created a new master key"));
    assert_eq!(server.retrieve(&token, &run).await.status, StatusCode::OK);
    assert!(server.terminate().success());
    assert_eq!(std::fs::read_to_string(&file).unwrap().trim(), old_key);

    // A key the database was not sealed under: refused, naming how to give the right one.
    let stranger = "11".repeat(32);
    let refused = refused_start(&dir, &["--encryption-key", &stranger]);
    assert!(refused.contains("RUNNEL_ENCRYPTION_KEY"), "{refused}");
    assert!(refused.contains("--encryption-key"), "{refused}");
    // Not a key at all: the flag is named.
    let refused = refused_start(&dir, &["--encryption-key", "not-a-key"]);
    assert!(
        refused.contains("--encryption-key (RUNNEL_ENCRYPTION_KEY) is not a valid key"),
        "{refused}"
    );
    let refused = refused_start(
        &dir,
        &[
            "--encryption-key",
            &stranger,
            "--previous-encryption-keys",
            "zz",
        ],
    );
    assert!(refused.contains("--previous-encryption-keys"), "{refused}");

    // Rotation: the new key with the old one as previous re-seals everything …
    let new_key = "22".repeat(32);
    let server = Server::start_with(
        dir.path(),
        &[
            "--encryption-key",
            &new_key,
            "--previous-encryption-keys",
            &old_key,
        ],
    );
    assert!(
        server
            .stderr()
            .contains("re-sealed values under the current master key"),
        "{}",
        server.stderr()
    );
    assert_eq!(server.retrieve(&token, &run).await.status, StatusCode::OK);
    assert!(server.terminate().success());
    // … so the new key alone serves, and the old one (master.key) no longer does.
    let server = Server::start_with(dir.path(), &["--encryption-key", &new_key]);
    assert_eq!(server.retrieve(&token, &run).await.status, StatusCode::OK);
    assert!(server.terminate().success());
    let refused = refused_start(&dir, &[]);
    assert!(refused.contains("RUNNEL_ENCRYPTION_KEY"), "{refused}");

    // `keys create` seals under the key it is given, and refuses another.
    let output = runnel(
        dir.path(),
        &[
            "keys",
            "create",
            "--env",
            "dev",
            "--encryption-key",
            &stranger,
        ],
    );
    assert!(!output.status.success(), "{}", describe(&output));
    let output = runnel(
        dir.path(),
        &[
            "keys",
            "create",
            "--env",
            "dev",
            "--encryption-key",
            &new_key,
        ],
    );
    assert!(output.status.success(), "{}", describe(&output));
}
