//! `POST /api/v1/auth/jwt` and `POST /api/v1/auth/jwt/claims`: public access tokens
//! minted on request ([`crate::jwt`] signs them; the caller's secret key picks the
//! environment and the signing hash).

use axum::extract::State;
use axum::Json;
use chrono::{DateTime, Utc};
use runnel_core::duration::parse_duration_secs;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::auth::AuthenticatedKey;
use crate::error::ApiError;
use crate::extract::{json_body, RawBody};
use crate::jwt::{mint, TOKEN_TTL_SECS_DEFAULT, TOKEN_TTL_SECS_MAX};
use crate::state::AppState;

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
    request_body(content = crate::schemas::CreateTokenBody, description = "Optional: an empty body mints a one-hour token without scopes"),
    responses((status = 200, description = "A public access token signed for the key's environment", body = crate::schemas::TokenBody), (status = 400, description = "Malformed or out-of-bounds body: `expirationTime` not in the future or more than 30 days (2592000 s) ahead; the message names the field", body = crate::schemas::ErrorBody), (status = 401, description = "No `Authorization` header (problem+json), a bad key, or a public access token", content((crate::schemas::ErrorBody = "application/json"), (crate::schemas::ProblemBody = "application/problem+json")))))]
pub async fn create(
    State(state): State<AppState>,
    key: AuthenticatedKey,
    body: RawBody,
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
