//! Public access tokens (contract §1.2): short-lived HS256 JWTs a browser or another
//! service may hold instead of the secret key, each good only for what its scopes name.
//!
//! Claims: `iss: "https://id.trigger.dev"`, `aud: "https://api.trigger.dev"`,
//! `sub: <environment id>`, `pub: true`, `scopes: [...]`, `iat`, `exp` (unix seconds).
//!
//! Signing secret. Upstream signs with the environment's secret key itself; Runnel keeps
//! only the SHA-256 hash of each key, so a token is signed with **the hash of the key that
//! authenticated the request** (hex, as stored) and verified by trying the hashes of the
//! live keys of the token's `sub` environment ([`Store::api_key_hashes`]). Consequences:
//! revoking a key invalidates every token minted with it at once; and a token the SDK
//! signs locally with the raw key (`auth.createPublicToken`) does not verify here; clients
//! get server-minted ones from the trigger response headers or `POST /api/v1/auth/jwt`.
//!
//! Scopes read `<action>:<resource type>[:<id>]`; a scope without an id covers the whole
//! type, and `admin` / `<action>:all` cover every resource of the action ([`authorize`]).
//!
//! [`Store::api_key_hashes`]: runnel_store::Store::api_key_hashes

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue};
use axum::Json;
use chrono::{DateTime, Utc};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use runnel_core::duration::parse_duration_secs;
use runnel_core::tenancy::Environment;
use runnel_core::EnvironmentId;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::auth::{AuthenticatedKey, Caller};
use crate::runs::json_body;
use crate::{ApiError, AppState};

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
const NO_SUBJECT: &str = "Invalid Public Access Token, missing subject.";
const NO_ENVIRONMENT: &str = "Invalid Public Access Token, environment not found.";

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
}

/// A verified public access token: the environment it was minted for and its scopes.
#[derive(Debug, Clone)]
pub struct PublicToken {
    pub environment: Environment,
    pub scopes: Vec<String>,
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
/// (the token, valid one hour) and `x-trigger-jwt-claims` (`{sub, pub: true, scopes}`).
pub fn jwt_headers(key: &AuthenticatedKey, scopes: &[String], now: DateTime<Utc>) -> HeaderMap {
    let environment = &key.environment.id;
    let token = mint(
        environment,
        &key.key_hash,
        scopes,
        now,
        now.timestamp() + TOKEN_TTL_SECS_DEFAULT,
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
    fn message(self) -> &'static str {
        match self {
            TokenError::Expired => EXPIRED,
            TokenError::Invalid => INVALID,
        }
    }
}

/// Checks `token` against each of `key_hashes`: the signature must match one of them,
/// issuer, audience and `pub` must be ours, and `exp` must be after `now`.
pub fn verify_with(
    token: &str,
    key_hashes: &[String],
    now: DateTime<Utc>,
) -> Result<Claims, TokenError> {
    let mut validation = Validation::new(Algorithm::HS256);
    validation.set_issuer(&[ISSUER]);
    validation.set_audience(&[AUDIENCE]);
    validation.set_required_spec_claims(&["exp", "sub", "iss", "aud"]);
    // Expiry is checked below against the server's clock, without leeway.
    validation.validate_exp = false;
    for hash in key_hashes {
        match jsonwebtoken::decode::<Claims>(
            token,
            &DecodingKey::from_secret(hash.as_bytes()),
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
                return Ok(claims);
            }
            Err(e) if matches!(e.kind(), ErrorKind::InvalidSignature) => continue,
            Err(_) => return Err(TokenError::Invalid),
        }
    }
    Err(TokenError::Invalid)
}

/// Verifies a public access token against the live keys of its `sub` environment.
pub(crate) async fn verify(state: &AppState, token: &str) -> Result<PublicToken, ApiError> {
    let sub = peek(token)
        .and_then(|claims| claims.sub)
        .and_then(|sub| sub.as_str().map(str::to_owned))
        .ok_or(ApiError::Unauthorized(NO_SUBJECT))?;
    let environment_id =
        EnvironmentId::parse(&sub).ok_or(ApiError::Unauthorized(NO_ENVIRONMENT))?;
    let (environment, hashes) = state
        .engine
        .store()
        .api_key_hashes(&environment_id)
        .await?
        .ok_or(ApiError::Unauthorized(NO_ENVIRONMENT))?;
    let claims = verify_with(token, &hashes, state.engine.now())
        .map_err(|e| ApiError::Unauthorized(e.message()))?;
    Ok(PublicToken {
        environment,
        scopes: claims.scopes,
    })
}

/// Whether `caller` may perform `action` on a resource described by `resources`
/// (`("runs", "run_…")`, `("tasks", "my-task")`, one `("tags", …)` per tag…): a secret key
/// may do anything in its environment; a token needs a scope naming one of the resources,
/// its whole type, or a super scope. Otherwise 403 (contract §1.4).
pub fn authorize(
    caller: &Caller,
    action: &str,
    resources: &[(&str, &str)],
) -> Result<(), ApiError> {
    match caller {
        Caller::SecretKey(_) => Ok(()),
        Caller::PublicToken(token) => {
            if scopes_allow(&token.scopes, action, resources) {
                Ok(())
            } else {
                Err(ApiError::Forbidden)
            }
        }
    }
}

fn scopes_allow(scopes: &[String], action: &str, resources: &[(&str, &str)]) -> bool {
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

/// `POST /api/v1/auth/jwt/claims`: what the SDK puts in the tokens it signs itself.
pub async fn claims(key: AuthenticatedKey) -> Json<Value> {
    Json(json!({"sub": key.environment.id.as_str(), "pub": true}))
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct CreateTokenRequest {
    #[serde(default)]
    claims: Option<RequestedClaims>,
    #[serde(default)]
    expiration_time: Option<Value>,
}

#[derive(Debug, Default, Deserialize)]
struct RequestedClaims {
    #[serde(default)]
    scopes: Vec<String>,
}

/// Reads `expirationTime`: a number is an absolute unix time in seconds, a string a
/// duration from now (`15m`, `1h`, `2d`); absent means one hour. Either must end in the
/// future and at most [`TOKEN_TTL_SECS_MAX`] from now.
fn expires_at(expiration: Option<&Value>, now: DateTime<Utc>) -> Result<i64, ApiError> {
    let invalid = || {
        ApiError::BadRequest(
            "expirationTime: must be a unix time in seconds or a duration like \"1h\"".to_owned(),
        )
    };
    let now = now.timestamp();
    let at = match expiration {
        None | Some(Value::Null) => return Ok(now + TOKEN_TTL_SECS_DEFAULT),
        Some(Value::Number(n)) => n
            .as_i64()
            // Saturates: 1e308 becomes i64::MAX, refused below as too far.
            .or_else(|| n.as_f64().filter(|f| f.is_finite()).map(|f| f as i64))
            .filter(|at| *at > now)
            .ok_or_else(invalid)?,
        Some(Value::String(s)) => parse_duration_secs(s)
            .map(|secs| now.saturating_add(i64::try_from(secs).unwrap_or(i64::MAX)))
            .ok_or_else(invalid)?,
        Some(_) => return Err(invalid()),
    };
    if at - now > TOKEN_TTL_SECS_MAX {
        return Err(ApiError::BadRequest(format!(
            "expirationTime: must be at most {TOKEN_TTL_SECS_MAX} seconds (30 days) from now"
        )));
    }
    Ok(at)
}

/// `POST /api/v1/auth/jwt`: mints a token with the requested scopes.
#[utoipa::path(post, path = "/api/v1/auth/jwt", tag = "auth",
    request_body(content = crate::openapi::CreateTokenBody, description = "Optional: an empty body mints a one-hour token without scopes"),
    responses((status = 200, description = "A public access token signed for the key's environment", body = crate::openapi::TokenBody), (status = 400, description = "Malformed or out-of-bounds body: `expirationTime` not in the future or more than 30 days (2592000 s) ahead; the message names the field", body = crate::openapi::ErrorBody), (status = 401, description = "No `Authorization` header (problem+json), a bad key, or a public access token", content((crate::openapi::ErrorBody = "application/json"), (crate::openapi::ProblemBody = "application/problem+json")))))]
pub async fn create(
    State(state): State<AppState>,
    key: AuthenticatedKey,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    // No body at all means the defaults; anything else must be a JSON object (blank
    // text is not JSON, and is refused like any other).
    let empty = matches!(&body, Ok(bytes) if bytes.is_empty());
    let request: CreateTokenRequest = if empty {
        CreateTokenRequest::default()
    } else {
        json_body(body, &["claims"])?
    };
    let now = state.engine.now();
    let expires_at = expires_at(request.expiration_time.as_ref(), now)?;
    let scopes = request.claims.unwrap_or_default().scopes;
    let token = mint(&key.environment.id, &key.key_hash, &scopes, now, expires_at);
    Ok(Json(json!({ "token": token })))
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
        let claims =
            verify_with(&token, &["other".to_owned(), "hash-a".to_owned()], now()).unwrap();
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
        let mut claims = verify_with(&token, &keys, now()).unwrap();
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
    fn only_jwts_saying_pub_true_are_public_tokens() {
        assert!(!is_public_token("tr_dev_abcdefghijklmnopqrstuvwx"));
        assert!(!is_public_token("a.b.c"));
        let mut claims = verify_with(
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

    #[test]
    fn expiration_time_is_a_unix_time_or_a_duration() {
        let t = now().timestamp();
        assert_eq!(expires_at(None, now()).unwrap(), t + 3600);
        assert_eq!(expires_at(Some(&json!("15m")), now()).unwrap(), t + 900);
        assert_eq!(expires_at(Some(&json!(t + 10)), now()).unwrap(), t + 10);
        for bad in [json!("soon"), json!(t - 10), json!(true)] {
            assert!(expires_at(Some(&bad), now()).is_err(), "{bad}");
        }
    }

    #[test]
    fn lifetimes_are_capped() {
        let t = now().timestamp();
        let max = t + TOKEN_TTL_SECS_MAX;
        assert_eq!(expires_at(Some(&json!(max)), now()).unwrap(), max);
        assert_eq!(expires_at(Some(&json!("30d")), now()).unwrap(), max);
        for too_far in [
            json!(max + 1),
            json!(1e308),
            json!(i64::MAX),
            json!(u64::MAX),
            json!("31d"),
        ] {
            let refused = expires_at(Some(&too_far), now()).unwrap_err().to_string();
            assert_eq!(
                refused,
                format!("expirationTime: must be at most {TOKEN_TTL_SECS_MAX} seconds (30 days) from now"),
                "{too_far}"
            );
        }
    }
}
