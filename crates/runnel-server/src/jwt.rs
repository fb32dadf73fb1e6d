//! Public access tokens (contract §1.2): short-lived HS256 JWTs a browser or another
//! service may hold instead of the secret key, each good only for what its scopes name.
//!
//! Pure token functions: minting, reading and verifying against given key hashes, and
//! matching scopes. Finding the live key hashes and answering HTTP is `auth.rs`'s
//! (and `tokens.rs`'s, for the minting routes).
//!
//! Claims: `iss: "https://id.trigger.dev"`, `aud: "https://api.trigger.dev"`,
//! `sub: <environment id>`, `pub: true`, `scopes: [...]`, `iat`, `exp` (unix seconds).
//!
//! Signing secret. A token is signed with one of the environment's live secret keys,
//! in either of two forms, and verified by trying both forms of every live key of the
//! token's `sub` environment ([`Engine::api_key_secrets`]):
//!
//! - **the raw secret key**, as the SDK signs the tokens it makes itself
//!   (`auth.createPublicToken`, `createTriggerPublicToken`,
//!   `createBatchTriggerPublicToken`, after `POST /api/v1/auth/jwt/claims`). The server
//!   keeps each key sealed under its master key to read it back for this; a key stored
//!   before sealing existed verifies such tokens once it has authenticated one request.
//! - **the hex SHA-256 of the key** (as stored), what the server signs the tokens it
//!   mints with (trigger response headers, `POST /api/v1/auth/jwt`).
//!
//! Either way revoking a key invalidates every token signed with it at once.
//!
//! One-time tokens (`otu: true`, the SDK's default for trigger tokens) work for one
//! request: [`crate::auth`] records the use ([`runnel_store::SecretStore::public_token_use`])
//! and refuses the next. `realtime.skipColumns` leaves those columns out of the rows of
//! the token's realtime subscriptions ([`crate::realtime`]), as if the request had asked.
//!
//! Scopes read `<action>:<resource type>[:<id>]`; a scope without an id covers the whole
//! type, and `admin` / `<action>:all` cover every resource of the action ([`scopes_allow`]).
//!
//! [`Engine::api_key_secrets`]: runnel_engine::Engine::api_key_secrets

use axum::http::{HeaderMap, HeaderValue};
use chrono::{DateTime, Utc};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use runnel_core::tenancy::Environment;
use runnel_core::EnvironmentId;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

pub const ISSUER: &str = "https://id.trigger.dev";
pub const AUDIENCE: &str = "https://api.trigger.dev";
/// Lifetime of the tokens the server mints on its own (trigger response), and the default
/// of `POST /api/v1/auth/jwt`.
pub const TOKEN_TTL_SECS_DEFAULT: i64 = 3600;
/// The longest lifetime `POST /api/v1/auth/jwt` grants (30 days). A public token is a
/// bearer credential that cannot be revoked on its own (only with the key that signed
/// it), so its lifetime is bounded rather than left to the caller.
pub const TOKEN_TTL_SECS_MAX: i64 = 30 * 86_400;

const EXPIRED: &str = "Public Access Token has expired. See https://trigger.dev/docs/frontend/overview#authentication for more information.";
const INVALID: &str = "Public Access Token is invalid. See https://trigger.dev/docs/frontend/overview#authentication for more information.";

/// The claims of a public access token.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    pub aud: String,
    pub sub: String,
    #[serde(rename = "pub")]
    pub public: bool,
    #[serde(default)]
    pub scopes: Vec<String>,
    #[serde(default)]
    pub iat: i64,
    pub exp: i64,
    /// One-time use (the SDK's trigger tokens, unless `multipleUse`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub otu: Option<bool>,
    /// Options of realtime subscriptions (`skipColumns`, [`crate::realtime`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub realtime: Option<Value>,
}

/// A verified public access token: the environment it was minted for and its scopes.
#[derive(Debug, Clone)]
pub struct PublicToken {
    pub environment: Environment,
    pub scopes: Vec<String>,
    /// The hash of the key that signed it: what tokens minted for its holder (the
    /// trigger response's) are signed with.
    pub key_hash: String,
    /// Set for a one-time token.
    pub one_time: Option<OneTime>,
    /// Columns its realtime subscriptions leave out (`realtime.skipColumns`).
    pub skip_columns: Vec<String>,
}

/// What identifies a one-time token's use.
#[derive(Debug, Clone)]
pub struct OneTime {
    /// Hex SHA-256 of the token text.
    pub token_hash: String,
    pub expires_at: DateTime<Utc>,
}

/// The hex SHA-256 of a token's text (how a one-time token's use is recorded).
pub fn token_hash(token: &str) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Signs a token for `environment` with `key_hash` as the HMAC secret.
pub fn mint(
    environment: &EnvironmentId,
    key_hash: &str,
    scopes: &[String],
    now: DateTime<Utc>,
    expires_at: i64,
) -> String {
    let claims = Claims {
        iss: ISSUER.to_owned(),
        aud: AUDIENCE.to_owned(),
        sub: environment.as_str().to_owned(),
        public: true,
        scopes: scopes.to_vec(),
        iat: now.timestamp(),
        exp: expires_at,
        otu: None,
        realtime: None,
    };
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(key_hash.as_bytes()),
    )
    // HS256 over a serializable struct cannot fail.
    .expect("signing a public access token")
}

/// The headers that hand a fresh token to the caller (contract §2.3): `x-trigger-jwt`
/// (a token for `environment` signed with `key_hash`, valid one hour) and
/// `x-trigger-jwt-claims` (`{sub, pub: true, scopes}`).
pub fn headers(
    environment: &EnvironmentId,
    key_hash: &str,
    scopes: &[String],
    now: DateTime<Utc>,
) -> HeaderMap {
    headers_valid_for(environment, key_hash, scopes, now, TOKEN_TTL_SECS_DEFAULT)
}

/// [`headers`] with a token valid `ttl_secs` (a waitpoint token's: a day).
pub fn headers_valid_for(
    environment: &EnvironmentId,
    key_hash: &str,
    scopes: &[String],
    now: DateTime<Utc>,
    ttl_secs: i64,
) -> HeaderMap {
    let token = mint(
        environment,
        key_hash,
        scopes,
        now,
        now.timestamp() + ttl_secs,
    );
    let claims = json!({"sub": environment.as_str(), "pub": true, "scopes": scopes});
    let mut headers = HeaderMap::new();
    // Both values are ASCII: base64url and JSON of ids and scope strings (non-ASCII
    // scopes cannot come from the server's own minting, which names run ids).
    if let Ok(value) = HeaderValue::from_str(&token) {
        headers.insert("x-trigger-jwt", value);
    }
    if let Ok(value) = HeaderValue::from_str(&claims.to_string()) {
        headers.insert("x-trigger-jwt-claims", value);
    }
    headers
}

/// What can be read of a token before it is verified.
#[derive(Deserialize)]
struct Unverified {
    #[serde(rename = "pub")]
    public: Option<Value>,
    sub: Option<Value>,
}

fn peek(token: &str) -> Option<Unverified> {
    jsonwebtoken::dangerous::insecure_decode::<Unverified>(token)
        .ok()
        .map(|data| data.claims)
}

/// Whether a bearer token claims to be a public access token (a JWT with `pub: true`).
pub(crate) fn is_public_token(token: &str) -> bool {
    peek(token).is_some_and(|claims| claims.public == Some(Value::Bool(true)))
}

/// Why a token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenError {
    Expired,
    Invalid,
}

impl TokenError {
    pub(crate) fn message(self) -> &'static str {
        match self {
            TokenError::Expired => EXPIRED,
            TokenError::Invalid => INVALID,
        }
    }
}

/// Checks `token` against each of `secrets`: the signature must match one of them,
/// issuer, audience and `pub` must be ours, and `exp` must be after `now`. Returns the
/// claims and the index of the secret that signed it.
pub fn verify_with(
    token: &str,
    secrets: &[String],
    now: DateTime<Utc>,
) -> Result<(Claims, usize), TokenError> {
    let mut validation = Validation::new(Algorithm::HS256);
    validation.set_issuer(&[ISSUER]);
    validation.set_audience(&[AUDIENCE]);
    validation.set_required_spec_claims(&["exp", "sub", "iss", "aud"]);
    // Expiry is checked below against the server's clock, without leeway.
    validation.validate_exp = false;
    for (index, secret) in secrets.iter().enumerate() {
        match jsonwebtoken::decode::<Claims>(
            token,
            &DecodingKey::from_secret(secret.as_bytes()),
            &validation,
        ) {
            Ok(data) => {
                let claims = data.claims;
                if !claims.public {
                    return Err(TokenError::Invalid);
                }
                if claims.exp <= now.timestamp() {
                    return Err(TokenError::Expired);
                }
                return Ok((claims, index));
            }
            Err(e) if matches!(e.kind(), ErrorKind::InvalidSignature) => continue,
            Err(_) => return Err(TokenError::Invalid),
        }
    }
    Err(TokenError::Invalid)
}

/// The `sub` claim of a token, read before it is verified: the environment whose keys
/// may have signed it.
pub(crate) fn subject(token: &str) -> Option<String> {
    peek(token)
        .and_then(|claims| claims.sub)
        .and_then(|sub| sub.as_str().map(str::to_owned))
}

/// Whether `scopes` let their holder perform `action` on a resource described by
/// `resources` (`("runs", "run_…")`, `("tasks", "my-task")`, one `("tags", …)` per tag…):
/// a scope naming one of the resources, its whole type, or a super scope.
pub(crate) fn scopes_allow(scopes: &[String], action: &str, resources: &[(&str, &str)]) -> bool {
    let all = format!("{action}:all");
    if scopes.iter().any(|s| s == "admin" || *s == all) {
        return true;
    }
    resources.iter().any(|(kind, id)| {
        let general = format!("{action}:{kind}");
        let specific = format!("{general}:{id}");
        scopes.iter().any(|s| *s == general || *s == specific)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn now() -> DateTime<Utc> {
        Utc.timestamp_opt(1_800_000_000, 0).unwrap()
    }

    fn environment() -> EnvironmentId {
        EnvironmentId::generate(0)
    }

    fn scopes(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn a_minted_token_verifies_with_its_key_hash_and_carries_the_claims() {
        let env = environment();
        let token = mint(
            &env,
            "hash-a",
            &scopes(&["read:runs:run_1"]),
            now(),
            now().timestamp() + 60,
        );
        assert!(is_public_token(&token));
        let (claims, index) =
            verify_with(&token, &["other".to_owned(), "hash-a".to_owned()], now()).unwrap();
        assert_eq!(index, 1);
        assert_eq!(
            claims,
            Claims {
                iss: ISSUER.to_owned(),
                aud: AUDIENCE.to_owned(),
                sub: env.as_str().to_owned(),
                public: true,
                scopes: scopes(&["read:runs:run_1"]),
                iat: now().timestamp(),
                exp: now().timestamp() + 60,
                otu: None,
                realtime: None,
            }
        );
    }

    #[test]
    fn a_token_signed_by_no_live_key_is_invalid() {
        let token = mint(
            &environment(),
            "revoked",
            &[],
            now(),
            now().timestamp() + 60,
        );
        assert_eq!(
            verify_with(&token, &["live".to_owned()], now()),
            Err(TokenError::Invalid)
        );
        assert_eq!(verify_with(&token, &[], now()), Err(TokenError::Invalid));
    }

    #[test]
    fn a_token_at_or_past_its_expiry_is_expired() {
        let token = mint(&environment(), "k", &[], now(), now().timestamp() + 60);
        let keys = ["k".to_owned()];
        assert!(verify_with(&token, &keys, now() + chrono::Duration::seconds(59)).is_ok());
        assert_eq!(
            verify_with(&token, &keys, now() + chrono::Duration::seconds(60)),
            Err(TokenError::Expired)
        );
    }

    #[test]
    fn a_tampered_or_foreign_token_is_invalid() {
        let token = mint(
            &environment(),
            "k",
            &scopes(&["read:runs:run_1"]),
            now(),
            now().timestamp() + 60,
        );
        let keys = ["k".to_owned()];
        // Swap the payload for one granting more: the signature no longer matches.
        let forged = mint(
            &environment(),
            "k",
            &scopes(&["read:runs"]),
            now(),
            now().timestamp() + 60,
        );
        let parts: Vec<&str> = token.split('.').collect();
        let forged_parts: Vec<&str> = forged.split('.').collect();
        let spliced = format!("{}.{}.{}", parts[0], forged_parts[1], parts[2]);
        assert_eq!(
            verify_with(&spliced, &keys, now()),
            Err(TokenError::Invalid)
        );

        // Right key, wrong audience.
        let (mut claims, _) = verify_with(&token, &keys, now()).unwrap();
        claims.aud = "https://elsewhere".to_owned();
        let other = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(b"k"),
        )
        .unwrap();
        assert_eq!(verify_with(&other, &keys, now()), Err(TokenError::Invalid));
        assert_eq!(
            verify_with("not.a.jwt", &keys, now()),
            Err(TokenError::Invalid)
        );
    }

    #[test]
    fn an_sdk_style_token_signed_with_the_raw_key_reads_its_claims() {
        // What the SDK's `generateJWT` signs: the claims endpoint's `{sub, pub}`, then
        // scopes, `otu` and `realtime`, with issuer, audience, iat and exp.
        let env = environment();
        let payload = json!({
            "sub": env.as_str(), "pub": true, "otu": true,
            "scopes": ["trigger:tasks:email"], "realtime": {"skipColumns": ["payload"]},
            "iss": ISSUER, "aud": AUDIENCE, "iat": now().timestamp(), "exp": now().timestamp() + 900,
        });
        let token = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &payload,
            &EncodingKey::from_secret(b"tr_dev_rawkey"),
        )
        .unwrap();
        let secrets = ["hash-of-key".to_owned(), "tr_dev_rawkey".to_owned()];
        let (claims, index) = verify_with(&token, &secrets, now()).unwrap();
        assert_eq!(index, 1);
        assert_eq!(claims.otu, Some(true));
        assert_eq!(claims.scopes, scopes(&["trigger:tasks:email"]));
        assert_eq!(
            verify_with(&token, &secrets[..1], now()),
            Err(TokenError::Invalid)
        );
    }

    #[test]
    fn only_jwts_saying_pub_true_are_public_tokens() {
        assert!(!is_public_token("tr_dev_abcdefghijklmnopqrstuvwx"));
        assert!(!is_public_token("a.b.c"));
        let (mut claims, _) = verify_with(
            &mint(&environment(), "k", &[], now(), now().timestamp() + 60),
            &["k".to_owned()],
            now(),
        )
        .unwrap();
        claims.public = false;
        let private = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(b"k"),
        )
        .unwrap();
        assert!(!is_public_token(&private));
    }

    #[test]
    fn scopes_name_a_resource_its_type_or_everything() {
        let run = [("runs", "run_1"), ("tasks", "email"), ("tags", "user_7")];
        for (granted, allowed) in [
            (vec!["read:runs:run_1"], true),
            (vec!["read:runs"], true),
            (vec!["read:tasks:email"], true),
            (vec!["read:tasks"], true),
            (vec!["read:tags:user_7"], true),
            (vec!["read:all"], true),
            (vec!["admin"], true),
            (vec!["read:runs:run_2", "read:tasks:other"], false),
            (vec!["write:runs:run_1"], false),
            (vec!["read:run:run_1"], false),
            (vec![], false),
        ] {
            assert_eq!(
                scopes_allow(&scopes(&granted), "read", &run),
                allowed,
                "{granted:?}"
            );
        }
    }
}
