//! Dashboard sessions: sign-in with a secret key, the session cookie, CSRF.
//!
//! **The session** is the cookie `runnel_session` (HttpOnly, SameSite=Strict, Path=/,
//! Secure behind https): an HS256 JWT with its own audience ([`AUDIENCE`]), so it is never
//! a public access token and no API token is ever a session. `sub` is the environment,
//! `key` the display prefix of the secret key signed in with, and it is signed with that
//! key's hex SHA-256 hash, as the server's public access tokens are ([`crate::jwt::mint`]).
//! It is verified against the hashes of the environment's *live* keys
//! ([`runnel_engine::Engine::api_key_secrets`]), so revoking the key ends the session at
//! once; it expires after [`SESSION_TTL_SECS`].
//!
//! **CSRF.** Every POST is an [`Action`]: refused (403) when its `Origin` header is present
//! and not this host, or when its `csrf` field is not [`Session::csrf`], an HMAC of the
//! session token under a fixed label that a page of another site cannot compute (it
//! cannot read the cookie). The sign-in form, which has no session yet, uses a
//! double-submit cookie (`runnel_login_csrf`, random, compared with the form's field).
//!
//! A request without a valid session is sent to the sign-in page (303).

use axum::extract::{FromRequest, FromRequestParts, OptionalFromRequestParts, Request, State};
use axum::http::header::{COOKIE, HOST, ORIGIN, SET_COOKIE};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use maud::html;
use rand::distr::{Alphanumeric, SampleString};
use runnel_core::key::SecretKey;
use runnel_core::EnvironmentId;
use serde::{Deserialize, Serialize};

use super::page::{self, PageError};
pub(crate) use super::signed_in::Session;
use crate::error::ApiError;
use crate::state::AppState;

pub(crate) const SESSION_COOKIE: &str = "runnel_session";
pub(crate) const LOGIN_CSRF_COOKIE: &str = "runnel_login_csrf";
/// The audience of session tokens: no other token of the server carries it.
pub(crate) const AUDIENCE: &str = "runnel-dashboard";
const ISSUER: &str = "runnel";
/// How long a session lasts.
pub(crate) const SESSION_TTL_SECS: i64 = 12 * 3600;
const LOGIN: &str = "/dashboard/login";
/// Length of the sign-in form's random CSRF value.
const LOGIN_CSRF_LEN: usize = 32;
const INVALID_KEY: &str = "Invalid secret key: it is unknown or revoked.";

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    iss: String,
    aud: String,
    /// The environment.
    sub: String,
    /// The display prefix of the secret key signed in with (`tr_dev_abcdef`).
    key: String,
    iat: i64,
    exp: i64,
}

/// Compares two secrets without an early exit on the first difference.
fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// A session token for `environment`, from `key`, issued at `now`.
fn mint(environment: &EnvironmentId, key: &SecretKey, now: i64) -> String {
    let claims = Claims {
        iss: ISSUER.to_owned(),
        aud: AUDIENCE.to_owned(),
        sub: environment.as_str().to_owned(),
        key: key.display_prefix(),
        iat: now,
        exp: now + SESSION_TTL_SECS,
    };
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(key.hash().as_bytes()),
    )
    // HS256 over a serializable struct cannot fail.
    .expect("signing a session token")
}

/// The session `token` names, when it is signed by a live key of its environment, is
/// a session token and has not expired.
async fn verify(state: &AppState, token: &str) -> Result<Option<Session>, ApiError> {
    let Some(environment_id) = crate::jwt::subject(token).and_then(|s| EnvironmentId::parse(&s))
    else {
        return Ok(None);
    };
    let Some((environment, keys)) = state.engine.api_key_secrets(&environment_id).await? else {
        return Ok(None);
    };
    let mut validation = Validation::new(Algorithm::HS256);
    validation.set_issuer(&[ISSUER]);
    validation.set_audience(&[AUDIENCE]);
    validation.set_required_spec_claims(&["exp", "sub", "iss", "aud"]);
    // Expiry is checked below against the engine's clock, without leeway.
    validation.validate_exp = false;
    let now = state.engine.now().timestamp();
    for key in &keys {
        let Ok(data) = jsonwebtoken::decode::<Claims>(
            token,
            &DecodingKey::from_secret(key.hash.as_bytes()),
            &validation,
        ) else {
            continue;
        };
        let claims = data.claims;
        if claims.exp <= now || claims.sub != environment.id.as_str() {
            return Ok(None);
        }
        return Ok(Some(Session {
            environment,
            key_prefix: claims.key,
            token: token.to_owned(),
        }));
    }
    Ok(None)
}

/// The value of cookie `name` in the request's `Cookie` headers.
pub(crate) fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value.trim())
}

/// Whether the request came over https (directly or, per `X-Forwarded-Proto`, through
/// a proxy): its cookies are then `Secure`.
fn over_https(headers: &HeaderMap) -> bool {
    crate::extract::base_url(headers).starts_with("https:")
}

/// A `Set-Cookie` value: HttpOnly and SameSite=Strict always; `max_age` 0 clears it.
fn set_cookie(
    headers: &HeaderMap,
    name: &str,
    value: &str,
    path: &str,
    max_age: i64,
) -> HeaderValue {
    let secure = if over_https(headers) { "; Secure" } else { "" };
    let text = format!(
        "{name}={value}; Path={path}; Max-Age={max_age}; HttpOnly; SameSite=Strict{secure}"
    );
    HeaderValue::from_str(&text).expect("cookie values are token characters")
}

/// Whether a POST may be acted on as far as its origin goes: no `Origin` header (an
/// older browser, or not a browser), or one naming this very host.
pub(crate) fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(ORIGIN) else {
        return true;
    };
    let (Ok(origin), Some(Ok(host))) = (origin.to_str(), headers.get(HOST).map(|h| h.to_str()))
    else {
        return false;
    };
    origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))
        .is_some_and(|authority| authority.eq_ignore_ascii_case(host))
}

fn to_login() -> Response {
    Redirect::to(LOGIN).into_response()
}

impl FromRequestParts<AppState> for Session {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        match <Session as OptionalFromRequestParts<AppState>>::from_request_parts(parts, state)
            .await?
        {
            Some(session) => Ok(session),
            None => Err(to_login()),
        }
    }
}

impl OptionalFromRequestParts<AppState> for Session {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Option<Self>, Self::Rejection> {
        if let Some(session) = parts.extensions.get::<Session>() {
            return Ok(Some(session.clone()));
        }
        let Some(token) = cookie(&parts.headers, SESSION_COOKIE) else {
            return Ok(None);
        };
        let session = verify(state, token)
            .await
            .map_err(|e| PageError::from(e).render(None))?;
        if let Some(session) = &session {
            parts.extensions.insert(session.clone());
        }
        Ok(session)
    }
}

/// A POST from a page of the dashboard: a session, an `Origin` that is this host, and a
/// form whose `csrf` field matches the session. No session → the sign-in page; a
/// foreign origin or a wrong or missing token → 403.
#[derive(Debug)]
pub(crate) struct Action {
    pub session: Session,
    fields: Vec<(String, String)>,
    pub headers: HeaderMap,
}

impl Action {
    /// The form's field `name` (its last value), `""` when absent.
    pub fn field(&self, name: &str) -> &str {
        self.fields
            .iter()
            .rev()
            .find(|(key, _)| key == name)
            .map_or("", |(_, value)| value.as_str())
    }
}

impl FromRequest<AppState> for Action {
    type Rejection = Response;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let (mut parts, body) = request.into_parts();
        let session =
            <Session as FromRequestParts<AppState>>::from_request_parts(&mut parts, state).await?;
        if !same_origin(&parts.headers) {
            return Err(
                PageError::forbidden("Refused: this request came from another site.")
                    .render(Some(&session)),
            );
        }
        let headers = parts.headers.clone();
        let Form(fields) =
            Form::<Vec<(String, String)>>::from_request(Request::from_parts(parts, body), state)
                .await
                .map_err(|rejection| {
                    PageError::bad_request(rejection.body_text()).render(Some(&session))
                })?;
        let action = Action {
            session,
            fields,
            headers,
        };
        if !same_secret(action.field("csrf"), &action.session.csrf()) {
            return Err(PageError::forbidden(
                "Refused: the form's security token is missing or stale. Reload the page and try again.",
            )
            .render(Some(&action.session)));
        }
        Ok(action)
    }
}

/// The sign-in page with `csrf` in its form, and `alert` above it when given.
fn login_page(status: StatusCode, csrf: &str, alert: Option<&str>) -> Response {
    let content = html! {
        h1 { "Sign in" }
        @if let Some(alert) = alert {
            p.alert role="alert" { (alert) }
        }
        form.login method="post" action=(LOGIN) {
            input type="hidden" name="csrf" value=(csrf);
            p {
                label for="key" { "Secret key" }
                input #key type="password" name="key" required autocomplete="current-password"
                    spellcheck="false" aria-describedby="key-hint";
            }
            p.hint #key-hint {
                "A secret key of the environment to manage (" code { "tr_dev_…" } ", "
                code { "tr_prod_…" } "): " code { "runnel keys create" } " prints one."
            }
            p { button type="submit" { "Sign in" } }
        }
    };
    page::respond(status, page::document("Sign in", None, content))
}

/// The login form's CSRF value: the browser's cookie when it holds a well-formed one,
/// else a fresh one (then set as the cookie).
fn login_csrf(headers: &HeaderMap) -> (String, bool) {
    match cookie(headers, LOGIN_CSRF_COOKIE) {
        Some(value)
            if value.len() == LOGIN_CSRF_LEN
                && value.bytes().all(|b| b.is_ascii_alphanumeric()) =>
        {
            (value.to_owned(), false)
        }
        _ => (
            Alphanumeric.sample_string(&mut rand::rng(), LOGIN_CSRF_LEN),
            true,
        ),
    }
}

fn with_login_csrf(
    mut response: Response,
    headers: &HeaderMap,
    csrf: &str,
    fresh: bool,
) -> Response {
    if fresh {
        response.headers_mut().append(
            SET_COOKIE,
            set_cookie(headers, LOGIN_CSRF_COOKIE, csrf, LOGIN, 3600),
        );
    }
    response
}

/// `GET /dashboard/login`.
pub(crate) async fn login_form(headers: HeaderMap) -> Response {
    let (csrf, fresh) = login_csrf(&headers);
    with_login_csrf(
        login_page(StatusCode::OK, &csrf, None),
        &headers,
        &csrf,
        fresh,
    )
}

/// `POST /dashboard/login` (`key`, `csrf`): a live secret key starts a session (303 to
/// the runs); anything else is the form again, 401 with an alert.
pub(crate) async fn login(
    State(state): State<AppState>,
    headers: HeaderMap,
    form: Result<Form<Vec<(String, String)>>, axum::extract::rejection::FormRejection>,
) -> Response {
    let field = |fields: &[(String, String)], name: &str| {
        fields
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    let fields = match form {
        Ok(Form(fields)) => fields,
        Err(rejection) => return PageError::bad_request(rejection.body_text()).render(None),
    };
    let expected = cookie(&headers, LOGIN_CSRF_COOKIE).unwrap_or("");
    if !same_origin(&headers)
        || expected.is_empty()
        || !same_secret(&field(&fields, "csrf"), expected)
    {
        return PageError::forbidden(
            "Refused: the sign-in form's security token is missing or stale. Reload the sign-in page and try again.",
        )
        .render(None);
    }
    let key = field(&fields, "key");
    let environment = match SecretKey::parse(key.trim()) {
        Some(key) => match state.engine.api_key_authenticate(&key).await {
            Ok(found) => found.map(|environment| (environment, key)),
            Err(error) => return PageError::from(error).render(None),
        },
        None => None,
    };
    let Some((environment, key)) = environment else {
        let (csrf, fresh) = login_csrf(&headers);
        return with_login_csrf(
            login_page(StatusCode::UNAUTHORIZED, &csrf, Some(INVALID_KEY)),
            &headers,
            &csrf,
            fresh,
        );
    };
    let token = mint(&environment.id, &key, state.engine.now().timestamp());
    let mut response = Redirect::to(super::HOME).into_response();
    let cookies = response.headers_mut();
    cookies.append(
        SET_COOKIE,
        set_cookie(&headers, SESSION_COOKIE, &token, "/", SESSION_TTL_SECS),
    );
    cookies.append(
        SET_COOKIE,
        set_cookie(&headers, LOGIN_CSRF_COOKIE, "", LOGIN, 0),
    );
    response
}

/// `POST /dashboard/logout`: clears the cookie (the token itself stays valid until it
/// expires or its key is revoked; the browser no longer holds it).
pub(crate) async fn logout(action: Action) -> Response {
    let mut response = Redirect::to(LOGIN).into_response();
    response.headers_mut().append(
        SET_COOKIE,
        set_cookie(&action.headers, SESSION_COOKIE, "", "/", 0),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dashboard::signed_in::csrf_of;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    #[test]
    fn cookies_are_found_among_others() {
        let map = headers(&[
            ("cookie", "a=1; runnel_session=tok.en.x"),
            ("cookie", "b=2"),
        ]);
        assert_eq!(cookie(&map, SESSION_COOKIE), Some("tok.en.x"));
        assert_eq!(cookie(&map, "b"), Some("2"));
        assert_eq!(cookie(&map, "c"), None);
    }

    #[test]
    fn only_this_host_is_a_same_origin() {
        assert!(same_origin(&headers(&[("host", "127.0.0.1:3030")])));
        assert!(same_origin(&headers(&[
            ("host", "127.0.0.1:3030"),
            ("origin", "http://127.0.0.1:3030")
        ])));
        assert!(same_origin(&headers(&[
            ("host", "runnel.example"),
            ("origin", "https://runnel.example")
        ])));
        for origin in ["http://evil.example", "null", "http://127.0.0.1:3031"] {
            assert!(
                !same_origin(&headers(&[("host", "127.0.0.1:3030"), ("origin", origin)])),
                "{origin}"
            );
        }
    }

    #[test]
    fn the_csrf_token_depends_on_the_session_and_compares_exactly() {
        assert_eq!(csrf_of("a"), csrf_of("a"));
        assert_ne!(csrf_of("a"), csrf_of("b"));
        assert_eq!(csrf_of("a").len(), 64);
        assert!(same_secret("abc", "abc"));
        assert!(!same_secret("abc", "abd"));
        assert!(!same_secret("abc", "ab"));
        assert!(!same_secret("", "x"));
    }

    #[test]
    fn a_session_token_is_no_public_access_token() {
        let key = SecretKey::generate(runnel_core::key::EnvironmentKind::Dev);
        let token = mint(&EnvironmentId::generate(0), &key, 1_800_000_000);
        assert!(!crate::jwt::is_public_token(&token));
        let now = chrono::DateTime::from_timestamp(1_800_000_001, 0).unwrap();
        assert!(crate::jwt::verify_with(&token, &[key.hash()], now).is_err());
    }
}
