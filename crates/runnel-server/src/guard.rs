//! The `/api` guard in front of every route: the missing-`Authorization` answer and the
//! rate limit ([`crate::rate_limit`], contract §1.4, §1.5).
//!
//! Every `/api/*` request except the few public ones ([`is_public`]) must carry an
//! `Authorization` header, or it is answered 401 `application/problem+json` before
//! routing, as upstream's middleware does. With a rate limit configured, the caller is
//! identified by the same [`auth::identify`] as the handlers, which find the result in
//! the request's extensions; a request whose credentials do not check out is passed on
//! unlimited, and its handler refuses it. The worker protocol and a few upstream-exempt
//! paths are not limited ([`is_exempt`]).

use axum::extract::{Request, State};
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::auth::{self, NO_AUTHORIZATION};
use crate::error::forbid_retry;
use crate::rate_limit::Decision;
use crate::state::AppState;

/// `/api` paths that need no credentials at all (the legacy `trigger login`'s two calls
/// are refused by their handlers unless the server auto-approves logins).
fn is_public(path: &str) -> bool {
    path == "/api/openapi.json"
        || path == "/api/v1/timezones"
        || path == "/api/v1/authorization-code"
        || path == "/api/v1/token"
        || (path.starts_with("/api/v1/waitpoints/tokens/") && path.contains("/callback/"))
}

/// `/api` paths that are authenticated but never rate limited.
fn is_exempt(path: &str) -> bool {
    path.starts_with("/api/v1/workers/")
        || path == "/api/v1/auth/jwt/claims"
        || path.starts_with("/api/v1/packets/")
        || path.starts_with("/api/v2/packets/")
}

fn problem(status: StatusCode, body: serde_json::Value) -> Response {
    let mut response = (status, body.to_string()).into_response();
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    response
}

fn missing_authorization() -> Response {
    let mut response = problem(
        StatusCode::UNAUTHORIZED,
        json!({
            "title": "Unauthorized",
            "status": 401,
            "type": "https://developer.mozilla.org/en-US/docs/Web/HTTP/Status/401",
            "detail": NO_AUTHORIZATION,
            "error": NO_AUTHORIZATION,
        }),
    );
    forbid_retry(&mut response);
    response
}

fn too_many_requests(decision: &Decision, now_ms: i64) -> Response {
    let seconds_until_reset = ((decision.reset_ms - now_ms).max(0) + 999) / 1000;
    let detail = format!(
        "Rate limit exceeded {}/{} requests remaining. Retry in {seconds_until_reset} seconds.",
        decision.remaining, decision.limit
    );
    problem(
        StatusCode::TOO_MANY_REQUESTS,
        json!({
            "title": "Rate Limit Exceeded",
            "status": 429,
            "type": "https://developer.mozilla.org/en-US/docs/Web/HTTP/Status/429",
            "detail": detail,
            "reset": decision.reset_ms,
            "limit": decision.limit,
            "remaining": decision.remaining,
            "secondsUntilReset": seconds_until_reset,
            "error": detail,
        }),
    )
}

/// The middleware in front of every route (see the module doc).
pub async fn guard(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    let path = request.uri().path();
    if !(path == "/api" || path.starts_with("/api/")) || is_public(path) {
        return next.run(request).await;
    }
    if !request.headers().contains_key(AUTHORIZATION) {
        return missing_authorization();
    }
    let Some(limiter) = state.rate_limiter.as_ref() else {
        return next.run(request).await;
    };
    if is_exempt(path) {
        return next.run(request).await;
    }
    let Ok(caller) = auth::identify(request.headers(), &state).await else {
        return next.run(request).await;
    };
    let now_ms = state.engine.now().timestamp_millis();
    let decision = limiter.take(caller.environment().id.as_str(), now_ms);
    if !decision.allowed {
        let mut response = too_many_requests(&decision, now_ms);
        decision.write_headers(response.headers_mut());
        return response;
    }
    request.extensions_mut().insert(caller);
    let mut response = next.run(request).await;
    decision.write_headers(response.headers_mut());
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_and_exempt_paths() {
        assert!(is_public("/api/openapi.json"));
        assert!(is_public(
            "/api/v1/waitpoints/tokens/waitpoint_1/callback/abc"
        ));
        assert!(is_public("/api/v1/token"));
        assert!(!is_public("/api/v3/runs/run_1"));
        assert!(!is_public("/api/v2/whoami"));
        assert!(is_exempt("/api/v1/workers/worker_1/dequeue"));
        assert!(is_exempt("/api/v1/auth/jwt/claims"));
        assert!(!is_exempt("/api/v1/auth/jwt"));
        assert!(!is_exempt("/api/v1/tasks/t/trigger"));
    }
}
