//! Secret-key authentication (contract §1.2): `Authorization: Bearer tr_<env>_…`.
//!
//! The key is hashed and looked up; a live key yields its [`Environment`], which scopes
//! everything the request may see. A missing header and a bad key are both 401, with
//! the contract's messages.

use axum::extract::{FromRef, FromRequestParts};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use runnel_core::key::SecretKey;
use runnel_core::tenancy::Environment;
use runnel_core::ApiVersion;

use crate::{ApiError, AppState};

/// The environment the request's key belongs to.
#[derive(Debug, Clone)]
pub struct Authenticated(pub Environment);

impl<S> FromRequestParts<S> for Authenticated
where
    AppState: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let header = parts
            .headers
            .get(AUTHORIZATION)
            .ok_or(ApiError::Unauthorized("No authorization header provided"))?;
        let token = header
            .to_str()
            .ok()
            .and_then(|h| {
                h.strip_prefix("Bearer ")
                    .or_else(|| h.strip_prefix("bearer "))
            })
            .map(str::trim)
            .ok_or(ApiError::Unauthorized("Invalid API Key"))?;
        let key = SecretKey::parse(token).ok_or(ApiError::Unauthorized("Invalid API Key"))?;
        let state = AppState::from_ref(state);
        let environment = state
            .engine
            .store()
            .api_key_authenticate(&key.hash())
            .await?
            .ok_or(ApiError::Unauthorized("Invalid API Key"))?;
        Ok(Authenticated(environment))
    }
}

/// The status vocabulary the caller speaks, from `x-trigger-api-version`.
#[derive(Debug, Clone, Copy)]
pub struct CallerApiVersion(pub ApiVersion);

impl<S: Send + Sync> FromRequestParts<S> for CallerApiVersion {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let value = parts
            .headers
            .get("x-trigger-api-version")
            .and_then(|v| v.to_str().ok());
        Ok(CallerApiVersion(ApiVersion::from_header(value)))
    }
}
