//! The bootstrap side of `npx trigger.dev dev` (reference `trigger-dev-cli-protocol.md`
//! §2.1, §2.2.1–§2.2.3): what the stock CLI asks before it registers a worker and starts
//! dequeuing (that part, the run engine side, is elsewhere).
//!
//! ```text
//!  CLI ── Bearer tr_pat_… ──► GET  /api/v2/whoami                 {userId, email, dashboardUrl}
//!                             GET  /api/v1/platform-notifications {notification: null}
//!                             GET  /api/v1/projects/{ref}/dev     {apiKey, name, apiUrl, projectId}
//!      ── Bearer apiKey ────► GET  /engine/v1/dev/config          {environmentId, intervals, engineUrl}
//!                             GET  /api/v1/projects/{ref}/envvars {variables: {…}} (envvars.rs)
//!                             GET  /engine/v1/dev/presence        SSE: start, time every 4 s, 30 s
//! ```
//!
//! Credentials: the first three routes (and `POST …/branches`) take a personal access
//! token ([`PersonalCaller`]); everything after takes the environment's secret key that
//! `GET /api/v1/projects/{ref}/{env}` handed out, derived from the token so the same
//! token always gets the same key ([`runnel_engine::devboot`]). `/engine/v1/dev/*`
//! takes only a dev key (403 for another environment's).
//!
//! URLs: the CLI calls whatever base URL these answers name, so they name this server as
//! the client reached it ([`base_url`]: the `Host` header, `https` when
//! `X-Forwarded-Proto` says so).
//!
//! Every answer passes the CLI's zod schemas: optional fields are left out, never `null`.
//!
//! Optional, off by default: the browser-free legacy `trigger login`
//! (`POST /api/v1/authorization-code`, `POST /api/v1/token`), which hands a new token to
//! whoever asks, so only with [`DevState::new`]'s `login_auto_approve` (the operator's
//! explicit `--trigger-login-auto-approve`).

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::HeaderMap;
use axum::response::sse::{Event, Sse};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::stream::{self, Stream, StreamExt};
use rand::distr::{Alphanumeric, SampleString};
use runnel_core::key::EnvironmentKind;
use runnel_core::tenancy::Environment;
use runnel_core::view::iso;
use runnel_engine::devboot::DerivedKey;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::time::Instant;

use crate::auth::{Authenticated, PersonalCaller};
use crate::error::ApiError;
use crate::extract::{json_body, RawBody};
use crate::state::AppState;

/// The project's name in answers that need one (Runnel's one project has none).
const PROJECT_NAME: &str = "runnel";
/// The e-mail address `whoami` answers: the CLI requires a valid one, and Runnel has no
/// users. `localhost.localdomain` is no one's domain and passes zod's check.
const WHOAMI_EMAIL: &str = "runnel@localhost.localdomain";
/// The CLI's wait after a dequeue that returned runs (ms; the upstream default).
const DEQUEUE_INTERVAL_WITH_RUN_MS: u64 = 250;
/// The CLI's wait after an empty or failed dequeue (ms; the upstream default).
const DEQUEUE_INTERVAL_WITHOUT_RUN_MS: u64 = 1000;
/// Runs the CLI executes at once. Well above what a `triggerAndWait` chain needs, so a
/// parent waiting on its child never holds the slot the child needs (reference §4.7).
const DEV_MAX_CONCURRENT_RUNS: u32 = 25;
/// Between two `time` events of the presence stream (upstream: 0.8 × its 5 s TTL).
pub const PRESENCE_TICK: Duration = Duration::from_secs(4);
/// How long one presence stream stays open; the CLI reconnects at once.
pub const PRESENCE_STREAM_LIFETIME: Duration = Duration::from_secs(30);

const PROJECT_NOT_FOUND: &str = "Project not found";
const BRANCHES_UNSUPPORTED: &str = "Dev branches are not supported by Runnel yet";
const NO_PREVIEW: &str =
    "Runnel has no preview environment (its environments are dev, staging and prod)";
const BAD_HOST: &str = "A valid Host header is required: the answer names this server's URL";
const LOGIN_OFF: &str = "Browser-free `trigger login` is off on this server: export \
    TRIGGER_ACCESS_TOKEN=<a token `runnel keys create --pat` prints> instead, or start the \
    server with --trigger-login-auto-approve (RUNNEL_TRIGGER_LOGIN_AUTO_APPROVE=true), which \
    hands a personal access token to anyone who can reach it";

/// The routes of this module, merged into the application's router.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v2/whoami", get(whoami))
        .route(
            "/api/v1/platform-notifications",
            get(platform_notifications),
        )
        .route(
            "/api/v1/projects/{project_ref}/{env}",
            get(project_environment),
        )
        .route("/api/v1/projects/{project_ref}/branches", post(branches))
        .route("/engine/v1/dev/config", get(dev_config))
        .route("/engine/v1/dev/presence", get(dev_presence))
        .route("/api/v1/authorization-code", post(authorization_code))
        .route("/api/v1/token", post(token))
}

pub use crate::state::DevState;

/// This server's base URL as the client reached it: `http://<Host>`, or `https://…` when
/// `X-Forwarded-Proto` (its first value) says `https`. Every URL the bootstrap hands the
/// CLI (`apiUrl`, `engineUrl`, `dashboardUrl`) is this, so the CLI keeps calling the
/// address it was given, whatever the server listens on. A missing or malformed `Host`
/// is 400.
pub fn base_url(headers: &HeaderMap) -> Result<String, ApiError> {
    let host = headers
        .get(axum::http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| {
            !h.is_empty()
                && h.len() <= 255
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b".-:[]_".contains(&b))
        })
        .ok_or_else(|| ApiError::BadRequest(BAD_HOST.to_owned()))?;
    let https = headers
        .get("x-forwarded-proto")
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.split(',').next())
        .is_some_and(|proto| proto.trim().eq_ignore_ascii_case("https"));
    let scheme = if https { "https" } else { "http" };
    Ok(format!("{scheme}://{host}"))
}

/// [`base_url`] as an extractor.
#[derive(Debug, Clone)]
pub struct BaseUrl(pub String);

impl<S: Send + Sync> FromRequestParts<S> for BaseUrl {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        base_url(&parts.headers).map(BaseUrl)
    }
}

/// Refuses a key of an environment other than dev on a `/engine/v1/dev/*` route.
pub(crate) fn require_dev(environment: &Environment) -> Result<(), ApiError> {
    if environment.kind == EnvironmentKind::Dev {
        return Ok(());
    }
    Err(ApiError::Refused(format!(
        "/engine/v1/dev/* takes a secret key of the dev environment (tr_dev_…); this key \
         belongs to the {} environment",
        environment.kind
    )))
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ProjectRefQuery {
    project_ref: Option<String>,
}

/// `GET /api/v2/whoami`: who the token is. `userId` is the token's display prefix (what
/// `runnel keys list` shows), since Runnel has no user accounts; `project` only when the
/// query names this project.
async fn whoami(
    caller: PersonalCaller,
    BaseUrl(base): BaseUrl,
    Query(query): Query<ProjectRefQuery>,
) -> Json<Value> {
    let mut body = json!({
        "userId": caller.token.display_prefix(),
        "email": WHOAMI_EMAIL,
        "dashboardUrl": base,
    });
    if query.project_ref.as_deref() == Some(caller.project.id.as_str()) {
        body["project"] = json!({"name": PROJECT_NAME, "url": base, "orgTitle": PROJECT_NAME});
    }
    Json(body)
}

/// `GET /api/v1/platform-notifications`: never anything to say.
async fn platform_notifications(_caller: PersonalCaller) -> Json<Value> {
    Json(json!({"notification": null}))
}

/// `GET /api/v1/projects/{ref}/{env}`: the environment's secret key for this token (see
/// [`runnel_engine::devboot`]), and the URL to use it on.
async fn project_environment(
    State(state): State<AppState>,
    caller: PersonalCaller,
    BaseUrl(base): BaseUrl,
    Path((project_ref, env)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let kind = match env.as_str() {
        "dev" => Some(EnvironmentKind::Dev),
        "staging" => Some(EnvironmentKind::Staging),
        "prod" => Some(EnvironmentKind::Prod),
        "preview" => None,
        other => {
            return Err(ApiError::BadRequest(format!(
                "Invalid environment {other:?}: expected dev, staging, prod or preview"
            )))
        }
    };
    if project_ref != caller.project.id.as_str() {
        return Err(ApiError::Missing(PROJECT_NOT_FOUND.to_owned()));
    }
    let kind = kind.ok_or_else(|| ApiError::Missing(NO_PREVIEW.to_owned()))?;
    let (environment, key) = state
        .engine
        .pat_environment_key(&caller.token, kind)
        .await?
        .ok_or_else(|| ApiError::Missing(format!("Environment {kind} not found")))?;
    match key {
        DerivedKey::Live(key) => Ok(Json(json!({
            "apiKey": key.expose(),
            "name": PROJECT_NAME,
            "apiUrl": base,
            "projectId": environment.project_id.as_str(),
        }))),
        DerivedKey::Revoked { prefix } => Err(ApiError::Refused(format!(
            "The {kind} secret key of this personal access token ({prefix}) was revoked; \
             create a new token with `runnel keys create --pat`"
        ))),
    }
}

/// `POST /api/v1/projects/{ref}/branches` (`trigger dev --branch`): not supported.
async fn branches(_caller: PersonalCaller) -> ApiError {
    ApiError::BadRequest(BRANCHES_UNSUPPORTED.to_owned())
}

/// `GET /engine/v1/dev/config`: how the CLI paces its dequeues, and where it sends them.
async fn dev_config(
    Authenticated(environment): Authenticated,
    BaseUrl(base): BaseUrl,
) -> Result<Json<Value>, ApiError> {
    require_dev(&environment)?;
    Ok(Json(json!({
        "environmentId": environment.id.as_str(),
        "dequeueIntervalWithRun": DEQUEUE_INTERVAL_WITH_RUN_MS,
        "dequeueIntervalWithoutRun": DEQUEUE_INTERVAL_WITHOUT_RUN_MS,
        "maxConcurrentRuns": DEV_MAX_CONCURRENT_RUNS,
        "engineUrl": base,
    })))
}

/// An event of the presence stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PresenceEvent {
    Start,
    Time,
}

/// The presence stream's schedule: `Start` at once, `Time` every `tick` after it, and
/// the end at `lifetime` (a `Time` due at or after the end is not sent).
fn presence_events(tick: Duration, lifetime: Duration) -> impl Stream<Item = PresenceEvent> {
    let end = Instant::now() + lifetime;
    stream::unfold(None, move |last: Option<Instant>| async move {
        let Some(last) = last else {
            return Some((PresenceEvent::Start, Some(Instant::now())));
        };
        let next = last + tick;
        if next >= end {
            tokio::time::sleep_until(end).await;
            return None;
        }
        tokio::time::sleep_until(next).await;
        Some((PresenceEvent::Time, Some(next)))
    })
}

/// `GET /engine/v1/dev/presence`: a server-sent event stream the CLI keeps open while it
/// runs; each event records the environment as present ([`DevState::dev_presence_seen`]).
/// It ends after [`PRESENCE_STREAM_LIFETIME`] (the CLI reconnects) or when the server
/// stops.
async fn dev_presence(
    State(state): State<AppState>,
    Authenticated(environment): Authenticated,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    require_dev(&environment)?;
    let stopping = state.engine.stopping();
    let events = presence_events(PRESENCE_TICK, PRESENCE_STREAM_LIFETIME)
        .take_until(stopping)
        .map(move |event| {
            let now = state.engine.now();
            state.dev.presence_record(&environment.id, now);
            let name = match event {
                PresenceEvent::Start => "start",
                PresenceEvent::Time => "time",
            };
            let data = json!({"environmentId": environment.id.as_str(), "time": iso(now)});
            Ok(Event::default().event(name).data(data.to_string()))
        });
    Ok(Sse::new(events))
}

/// `POST /api/v1/authorization-code` (no credentials): starts the legacy `trigger
/// login`. Without `approval` in the answer the CLI polls `POST /api/v1/token`, which,
/// auto-approved, answers its first poll.
async fn authorization_code(
    State(state): State<AppState>,
    BaseUrl(base): BaseUrl,
) -> Result<Json<Value>, ApiError> {
    if !state.dev.login_auto_approve {
        return Err(ApiError::Refused(LOGIN_OFF.to_owned()));
    }
    let code = Alphanumeric.sample_string(&mut rand::rng(), 24);
    Ok(Json(json!({
        // Printed (or opened) by the CLI; nothing to do there, the login approves itself.
        "url": format!("{base}/"),
        "authorizationCode": code,
    })))
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct TokenRequest {
    #[allow(dead_code)] // required, as the CLI always sends it; any code is approved
    authorization_code: String,
}

/// `POST /api/v1/token` (no credentials): auto-approved, a new personal access token for
/// every call. The CLI sends its body without a content type; it is read as JSON anyway.
async fn token(State(state): State<AppState>, body: RawBody) -> Result<Json<Value>, ApiError> {
    if !state.dev.login_auto_approve {
        return Err(ApiError::Refused(LOGIN_OFF.to_owned()));
    }
    let _request: TokenRequest = json_body(body, &[])?;
    let project = state
        .engine
        .project()
        .await?
        .ok_or_else(|| ApiError::Missing(PROJECT_NOT_FOUND.to_owned()))?;
    let token = state.engine.pat_create(&project).await?;
    tracing::info!(
        prefix = %token.display_prefix(),
        "trigger login auto-approved: personal access token created"
    );
    let obfuscated = format!(
        "{}{}",
        token.display_prefix(),
        "*".repeat(token.expose().len() - token.display_prefix().len())
    );
    Ok(Json(json!({
        "token": {"token": token.expose(), "obfuscatedToken": obfuscated},
    })))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.insert(*name, HeaderValue::from_str(value).unwrap());
        }
        headers
    }

    #[test]
    fn base_url_is_the_host_the_client_reached() {
        for (pairs, want) in [
            (
                vec![("host", "127.0.0.1:3030")],
                Some("http://127.0.0.1:3030"),
            ),
            (vec![("host", "[::1]:8080")], Some("http://[::1]:8080")),
            (
                vec![("host", "runnel.example"), ("x-forwarded-proto", "https")],
                Some("https://runnel.example"),
            ),
            (
                vec![
                    ("host", "runnel.example"),
                    ("x-forwarded-proto", "HTTPS, http"),
                ],
                Some("https://runnel.example"),
            ),
            (
                vec![("host", "runnel.example"), ("x-forwarded-proto", "http")],
                Some("http://runnel.example"),
            ),
            (vec![], None),
            (vec![("host", "")], None),
            (vec![("host", "evil.example/path")], None),
            (vec![("host", "a b")], None),
        ] {
            let got = base_url(&headers(&pairs)).ok();
            assert_eq!(got.as_deref(), want, "{pairs:?}");
        }
    }

    /// `start` at once, `time` every 4 s, the end at 30 s: on a paused clock, so the
    /// schedule is exact.
    #[tokio::test(start_paused = true)]
    async fn presence_stream_follows_the_upstream_schedule() {
        let began = Instant::now();
        let events: Vec<(PresenceEvent, Duration)> =
            presence_events(PRESENCE_TICK, PRESENCE_STREAM_LIFETIME)
                .map(|event| (event, began.elapsed()))
                .collect()
                .await;
        let mut want = vec![(PresenceEvent::Start, Duration::ZERO)];
        want.extend((1..=7).map(|i| (PresenceEvent::Time, Duration::from_secs(4 * i))));
        assert_eq!(events, want);
        assert_eq!(began.elapsed(), Duration::from_secs(30), "ends at 30 s");
    }
}
