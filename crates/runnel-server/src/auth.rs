//! Who is calling (contract §1.2): `Authorization: Bearer <token>` carries a secret key
//! (`tr_<env>_…`), a legacy public key (`pk_…`, refused everywhere), or a public access
//! token (a JWT with `pub: true`, see [`crate::jwt`]).
//!
//! A live secret key yields its [`Environment`], which scopes everything the request may
//! see. A token yields its environment too, but only the routes that take a [`Caller`]
//! accept one, and they check its scopes with [`authorize`]; every other
//! route takes [`Authenticated`] or [`AuthenticatedKey`] and refuses tokens. A missing
//! header, a bad key and a bad token are 401, with the contract's messages.
//!
//! The result is kept in the request's extensions, so a request that the rate limiter
//! already identified is not looked up again by its handler.
//!
//! The `trigger.dev` CLI's bootstrap routes ([`crate::devboot`]) take a personal access
//! token (`tr_pat_…`) instead, which names the project rather than an environment
//! ([`PersonalCaller`]); a secret key there, or a token on any other route, is 401 with a
//! message saying which credential the route takes.

use axum::extract::{FromRef, FromRequestParts};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use axum::http::HeaderMap;
use chrono::{DateTime, Utc};
use runnel_core::key::{PersonalAccessToken, SecretKey, PERSONAL_ACCESS_TOKEN_PREFIX};
use runnel_core::tenancy::{Environment, Project};
use runnel_core::EnvironmentId;

use crate::error::ApiError;
use crate::jwt::{self, PublicToken};
use crate::state::AppState;
use runnel_engine::secrets::PublicTokenUse;

pub const NO_AUTHORIZATION: &str = "No authorization header provided";
const INVALID_KEY: &str = "Invalid API Key";
const PUBLIC_KEY: &str = "Public API keys are not allowed for this request";
const PUBLIC_TOKEN: &str = "Public JWT API keys are not allowed for this request";
const NO_SUBJECT: &str = "Invalid Public Access Token, missing subject.";
const NO_ENVIRONMENT: &str = "Invalid Public Access Token, environment not found.";
const PERSONAL_TOKEN_HERE: &str = "Personal access tokens (tr_pat_…) are not allowed for this \
    request: use a secret key of the environment (GET /api/v1/projects/{ref}/{env} hands one out)";
const PERSONAL_TOKEN_ONLY: &str = "This request takes a personal access token \
    (Authorization: Bearer tr_pat_…; `runnel keys create --pat` prints one), not a secret key \
    or another credential";
const INVALID_PERSONAL_TOKEN: &str = "Invalid personal access token (unknown or revoked)";
const ONE_TIME_USED: &str = "This one-time use Public Access Token has already been used: \
    create a new one for each request (or one with `multipleUse: true`)";

/// The environment the request's secret key belongs to.
#[derive(Debug, Clone)]
pub struct Authenticated(pub Environment);

/// The secret key that authenticated the request: its environment, and its stored hash,
/// which signs the public access tokens minted for this caller ([`Self::token_headers`]).
#[derive(Debug, Clone)]
pub struct AuthenticatedKey {
    pub environment: Environment,
    pub key_hash: String,
}

impl AuthenticatedKey {
    /// The headers that hand the caller a fresh token granting `scopes` (contract §2.3).
    pub fn token_headers(&self, scopes: &[String], now: DateTime<Utc>) -> HeaderMap {
        jwt::headers(&self.environment.id, &self.key_hash, scopes, now)
    }

    /// [`Self::token_headers`] with a token valid `ttl_secs`.
    pub fn token_headers_valid_for(
        &self,
        scopes: &[String],
        now: DateTime<Utc>,
        ttl_secs: i64,
    ) -> HeaderMap {
        jwt::headers_valid_for(&self.environment.id, &self.key_hash, scopes, now, ttl_secs)
    }
}

/// Whoever a route that also accepts public access tokens is talking to.
#[derive(Debug, Clone)]
pub enum Caller {
    SecretKey(AuthenticatedKey),
    PublicToken(PublicToken),
}

impl Caller {
    pub fn environment(&self) -> &Environment {
        match self {
            Caller::SecretKey(key) => &key.environment,
            Caller::PublicToken(token) => &token.environment,
        }
    }

    /// The headers that hand the caller a fresh token granting `scopes` (contract
    /// §2.3), signed with the hash of the key behind the caller (the secret key itself,
    /// or the key that signed its token).
    pub fn token_headers(&self, scopes: &[String], now: DateTime<Utc>) -> HeaderMap {
        let key_hash = match self {
            Caller::SecretKey(key) => &key.key_hash,
            Caller::PublicToken(token) => &token.key_hash,
        };
        jwt::headers(&self.environment().id, key_hash, scopes, now)
    }
}

/// A [`Caller`] whose one-time token, if it holds one, this request has not spent yet:
/// for the route that may be a token's second request ([`spend`] with `belongs_to`).
/// Every other route that takes a token takes [`Caller`], which spends it.
#[derive(Debug, Clone)]
pub struct UnspentCaller(pub Caller);

/// The bearer token in `headers`: 401 when the header is missing or not `Bearer …`.
fn bearer(headers: &HeaderMap) -> Result<&str, ApiError> {
    let header = headers
        .get(AUTHORIZATION)
        .ok_or(ApiError::Unauthorized(NO_AUTHORIZATION))?;
    header
        .to_str()
        .ok()
        .and_then(|h| {
            h.strip_prefix("Bearer ")
                .or_else(|| h.strip_prefix("bearer "))
        })
        .map(str::trim)
        .ok_or(ApiError::Unauthorized(INVALID_KEY))
}

/// Classifies and checks the bearer token in `headers`.
pub async fn identify(headers: &HeaderMap, state: &AppState) -> Result<Caller, ApiError> {
    let token = bearer(headers)?;
    if token.starts_with("pk_") {
        return Err(ApiError::Unauthorized(PUBLIC_KEY));
    }
    if token.starts_with(PERSONAL_ACCESS_TOKEN_PREFIX) {
        return Err(ApiError::Unauthorized(PERSONAL_TOKEN_HERE));
    }
    if !token.starts_with("tr_") && jwt::is_public_token(token) {
        return verify_public_token(state, token)
            .await
            .map(Caller::PublicToken);
    }
    let key = SecretKey::parse(token).ok_or(ApiError::Unauthorized(INVALID_KEY))?;
    let environment = state
        .engine
        .api_key_authenticate(&key)
        .await?
        .ok_or(ApiError::Unauthorized(INVALID_KEY))?;
    Ok(Caller::SecretKey(AuthenticatedKey {
        environment,
        key_hash: key.hash(),
    }))
}

/// Verifies a public access token against the live keys of its `sub` environment: each
/// key's hash (the tokens the server mints) and the key itself (the ones the SDK signs).
async fn verify_public_token(state: &AppState, token: &str) -> Result<PublicToken, ApiError> {
    let sub = jwt::subject(token).ok_or(ApiError::Unauthorized(NO_SUBJECT))?;
    let environment_id =
        EnvironmentId::parse(&sub).ok_or(ApiError::Unauthorized(NO_ENVIRONMENT))?;
    let (environment, keys) = state
        .engine
        .api_key_secrets(&environment_id)
        .await?
        .ok_or(ApiError::Unauthorized(NO_ENVIRONMENT))?;
    let mut secrets = Vec::with_capacity(keys.len() * 2);
    let mut signers = Vec::with_capacity(keys.len() * 2);
    for key in &keys {
        secrets.push(key.hash.clone());
        signers.push(&key.hash);
        if let Some(raw) = &key.raw {
            secrets.push(raw.clone());
            signers.push(&key.hash);
        }
    }
    let (claims, signer) = jwt::verify_with(token, &secrets, state.engine.now())
        .map_err(|e| ApiError::Unauthorized(e.message()))?;
    let one_time = (claims.otu == Some(true)).then(|| jwt::OneTime {
        token_hash: jwt::token_hash(token),
        expires_at: DateTime::from_timestamp(claims.exp, 0).unwrap_or(DateTime::<Utc>::MAX_UTC),
    });
    let skip_columns = claims
        .realtime
        .as_ref()
        .and_then(|r| r.get("skipColumns"))
        .and_then(serde_json::Value::as_array)
        .map(|columns| {
            columns
                .iter()
                .filter_map(|c| c.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    Ok(PublicToken {
        skip_columns,
        environment,
        scopes: claims.scopes,
        key_hash: signers[signer].clone(),
        one_time,
    })
}

/// Spends the caller's one-time token, if it holds one: its first use passes, and so
/// does a later one when `belongs_to` names what the first use created (`batch:<id>`,
/// for the items of the batch a one-time token created); any other is 401.
pub async fn spend(
    state: &AppState,
    caller: &Caller,
    belongs_to: Option<&str>,
) -> Result<(), ApiError> {
    let Caller::PublicToken(token) = caller else {
        return Ok(());
    };
    let Some(one_time) = &token.one_time else {
        return Ok(());
    };
    match state
        .engine
        .public_token_use(
            &one_time.token_hash,
            &token.environment.id,
            one_time.expires_at,
        )
        .await?
    {
        PublicTokenUse::First => Ok(()),
        PublicTokenUse::Again { used_for }
            if belongs_to.is_some() && used_for.as_deref() == belongs_to =>
        {
            Ok(())
        }
        PublicTokenUse::Again { .. } => Err(ApiError::Unauthorized(ONE_TIME_USED)),
    }
}

/// Records that the caller's one-time token (if it holds one) created `what`
/// (`batch:<id>`), so [`spend`] lets the requests that belong to it through.
pub async fn spent_on(state: &AppState, caller: &Caller, what: &str) -> Result<(), ApiError> {
    if let Caller::PublicToken(PublicToken {
        one_time: Some(one_time),
        ..
    }) = caller
    {
        state
            .engine
            .public_token_use_for(&one_time.token_hash, what)
            .await?;
    }
    Ok(())
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
            if jwt::scopes_allow(&token.scopes, action, resources) {
                Ok(())
            } else {
                Err(ApiError::Forbidden)
            }
        }
    }
}

/// What a token must be able to read to read a run (as `GET /api/v3/runs/{id}`).
pub(crate) fn run_resources(run: &runnel_core::run::Run) -> Vec<(&'static str, &str)> {
    let mut resources = vec![
        ("runs", run.id.as_str()),
        ("tasks", run.task_identifier.as_str()),
    ];
    resources.extend(run.tags.iter().map(|tag| ("tags", tag.as_str())));
    if let Some(batch) = &run.batch_id {
        resources.push(("batch", batch.as_str()));
    }
    resources
}

/// Whether `caller` may trigger each of `tasks` in a batch: a secret key may; a token
/// needs, per task, `batchTrigger:tasks:<task>` or `trigger:tasks:<task>`, their whole
/// type (`batchTrigger:tasks`, `trigger:tasks`) or a super scope. `None` (a batch that
/// does not list its tasks up front) needs a scope covering every task. Otherwise 403.
pub fn authorize_batch<'a>(
    caller: &Caller,
    tasks: Option<impl IntoIterator<Item = &'a str>>,
) -> Result<(), ApiError> {
    let Caller::PublicToken(token) = caller else {
        return Ok(());
    };
    let allows = |task: Option<&str>| {
        ["batchTrigger", "trigger"].iter().any(|action| match task {
            Some(task) => jwt::scopes_allow(&token.scopes, action, &[("tasks", task)]),
            None => {
                let general = format!("{action}:tasks");
                let all = format!("{action}:all");
                token
                    .scopes
                    .iter()
                    .any(|s| *s == general || *s == all || s == "admin")
            }
        })
    };
    let allowed = match tasks {
        Some(tasks) => tasks.into_iter().all(|task| allows(Some(task))),
        None => allows(None),
    };
    if allowed {
        Ok(())
    } else {
        Err(ApiError::Forbidden)
    }
}

/// [`identify`], once per request.
async fn caller<S>(parts: &mut Parts, state: &S) -> Result<Caller, ApiError>
where
    AppState: FromRef<S>,
{
    if let Some(caller) = parts.extensions.get::<Caller>() {
        return Ok(caller.clone());
    }
    let caller = identify(&parts.headers, &AppState::from_ref(state)).await?;
    parts.extensions.insert(caller.clone());
    Ok(caller)
}

/// Spends a one-time token (once per request: the first extraction does).
impl<S> FromRequestParts<S> for Caller
where
    AppState: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        #[derive(Clone)]
        struct Spent;
        let caller = caller(parts, state).await?;
        if parts.extensions.get::<Spent>().is_none() {
            spend(&AppState::from_ref(state), &caller, None).await?;
            parts.extensions.insert(Spent);
        }
        Ok(caller)
    }
}

impl<S> FromRequestParts<S> for UnspentCaller
where
    AppState: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        caller(parts, state).await.map(UnspentCaller)
    }
}

impl<S> FromRequestParts<S> for AuthenticatedKey
where
    AppState: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match caller(parts, state).await? {
            Caller::SecretKey(key) => Ok(key),
            Caller::PublicToken(_) => Err(ApiError::Unauthorized(PUBLIC_TOKEN)),
        }
    }
}

impl<S> FromRequestParts<S> for Authenticated
where
    AppState: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let key = AuthenticatedKey::from_request_parts(parts, state).await?;
        Ok(Authenticated(key.environment))
    }
}

/// A user of the `trigger.dev` CLI, by the personal access token it presented: the
/// project it reaches, and the token itself (the secret keys it trades for are derived
/// from it, [`PersonalAccessToken::derive_key`]).
#[derive(Debug, Clone)]
pub struct PersonalCaller {
    pub project: Project,
    pub token: PersonalAccessToken,
}

impl<S> FromRequestParts<S> for PersonalCaller
where
    AppState: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let token = PersonalAccessToken::parse(bearer(&parts.headers)?)
            .ok_or(ApiError::Unauthorized(PERSONAL_TOKEN_ONLY))?;
        let project = AppState::from_ref(state)
            .engine
            .pat_authenticate(&token)
            .await?
            .ok_or(ApiError::Unauthorized(INVALID_PERSONAL_TOKEN))?;
        Ok(PersonalCaller { project, token })
    }
}

/// The caller of the environment-variable routes (contract §2 rows 29–34), which take
/// either credential: a secret key (its environment must be the one the path names) or
/// a personal access token (the path's environment of its project).
#[derive(Debug, Clone)]
pub enum KeyOrPersonal {
    Key(Environment),
    Personal(PersonalCaller),
}

impl<S> FromRequestParts<S> for KeyOrPersonal
where
    AppState: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        if bearer(&parts.headers)?.starts_with(PERSONAL_ACCESS_TOKEN_PREFIX) {
            return PersonalCaller::from_request_parts(parts, state)
                .await
                .map(KeyOrPersonal::Personal);
        }
        let Authenticated(environment) = Authenticated::from_request_parts(parts, state).await?;
        Ok(KeyOrPersonal::Key(environment))
    }
}
