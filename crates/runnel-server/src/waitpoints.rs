//! Waitpoint tokens (contract §2.1 rows 41-45) and the waits a task makes from inside
//! its run (the dev CLI protocol's §2.3): handlers that parse, call the engine's waits
//! ([`runnel_engine::waits`]) and answer in the shapes `@trigger.dev/core` 4.8.3 parses,
//! optional fields left out rather than `null`.
//!
//! - `POST /api/v1/waitpoints/tokens` makes a token (or finds the live one holding its
//!   idempotency key) and answers its callback URL and, in `x-trigger-jwt`, a public
//!   token that may complete it (`write:waitpoints:<id>`, a day).
//! - `GET /api/v1/waitpoints/tokens[/{id}]` list and read tokens.
//! - `POST …/{id}/complete` (secret key, or that public token) and
//!   `POST …/{id}/callback/{secret}` (no credentials: the URL's secret is one) complete
//!   a token once; completing it again answers the same and changes nothing.
//! - `POST /engine/v1/runs/{runId}/wait/duration` and
//!   `POST /engine/v1/runs/{runId}/waitpoints/tokens/{id}/wait` block an executing run.
//!
//! A token's data is kept as its JSON text with `outputType` `application/json`, which
//! the SDK's `wait.forToken` parses back to the value that was sent (a string too).

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::IntoResponse;
use axum::Json;
use chrono::{DateTime, Duration, Utc};
use runnel_core::duration::{parse_duration_secs, parse_idempotency_ttl_secs};
use runnel_core::idempotency::{KEY_TTL_DEFAULT_SECS, MAX_KEY_LEN};
use runnel_core::list::{parse_date, QueryIssue, PAGE_SIZE_DEFAULT, PAGE_SIZE_MAX};
use runnel_core::run::Packet;
use runnel_core::tags::{MAX_TAGS, MAX_TAG_LEN};
use runnel_core::view::iso;
use runnel_core::waitpoint::{TokenListQuery, TokenStatus, Waitpoint, WaitpointOutput};
use runnel_core::WaitpointId;
use runnel_engine::waits::WaitKey;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::auth::{self, Authenticated, AuthenticatedKey, Caller};
use crate::error::ApiError;
use crate::extract::{self, base_url, json_body, within, RawBody};
use crate::state::AppState;

/// Largest token create body (upstream's limit).
pub const MAX_CREATE_BODY_BYTES: usize = 10 * 1024;
/// How long the public token handed out with a new waitpoint token lives: a day.
const TOKEN_JWT_TTL_SECS: i64 = 86_400;
const NOT_FOUND: &str = "Waitpoint not found";
const BAD_CALLBACK: &str = "Invalid URL, hash doesn't match";

fn not_found() -> ApiError {
    ApiError::Missing(NOT_FOUND.to_owned())
}

fn waitpoint_id(raw: &str) -> Result<WaitpointId, ApiError> {
    WaitpointId::parse(raw).ok_or_else(not_found)
}

/// A wait's or a token's idempotency key: the key as sent (the SDK sends it hashed),
/// expiring after `ttl` (`^\d+[smhd]$`), or after the trigger's default when `ttl` is
/// absent or not of that form, as for triggers.
fn wait_key(
    key: Option<String>,
    ttl: Option<String>,
    now: DateTime<Utc>,
) -> Result<WaitKey, ApiError> {
    let Some(key) = key.filter(|k| !k.is_empty()) else {
        return Ok(WaitKey::default());
    };
    if key.len() > MAX_KEY_LEN {
        return Err(ApiError::BadRequest(format!(
            "idempotencyKey: must be at most {MAX_KEY_LEN} characters"
        )));
    }
    if key.contains('\0') {
        return Err(ApiError::BadRequest(
            "idempotencyKey: must not contain NUL".to_owned(),
        ));
    }
    let secs = ttl
        .as_deref()
        .and_then(parse_idempotency_ttl_secs)
        .unwrap_or(KEY_TTL_DEFAULT_SECS);
    Ok(WaitKey {
        key: Some(key),
        user_key: None,
        expires_at: Some(now + seconds(secs)),
    })
}

/// Seconds as a chrono duration, saturating a century out.
fn seconds(secs: u64) -> Duration {
    Duration::seconds(
        i64::try_from(secs)
            .unwrap_or(i64::MAX)
            .min(100 * 365 * 86_400),
    )
}

/// An instant as a body gives it: an ISO 8601 date, or unix milliseconds.
fn instant(value: &Value) -> Option<DateTime<Utc>> {
    match value {
        Value::String(text) => parse_date(text),
        Value::Number(n) => DateTime::from_timestamp_millis(n.as_i64()?),
        _ => None,
    }
}

/// A body that may come with any content type (or none): JSON regardless, empty as `{}`.
fn loose_body<T: serde::de::DeserializeOwned>(body: RawBody) -> Result<T, ApiError> {
    match &body {
        Ok(bytes) if bytes.iter().all(u8::is_ascii_whitespace) => {
            json_body(Ok(axum::body::Bytes::from_static(b"{}")), &[])
        }
        _ => json_body(body, &[]),
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct CreateTokenRequest {
    idempotency_key: Option<String>,
    #[serde(rename = "idempotencyKeyTTL")]
    idempotency_key_ttl: Option<String>,
    /// A duration (`"1m"`, `"2h30m"`) or an ISO date.
    timeout: Option<Value>,
    /// One tag or a list.
    tags: Option<Value>,
}

/// `timeout` as the instant the token times out.
fn timeout_at(value: Option<Value>, now: DateTime<Utc>) -> Result<Option<DateTime<Utc>>, ApiError> {
    let invalid = || {
        ApiError::BadRequest(
            "timeout: must be a duration like 30s, 1m or 2h30m, or an ISO 8601 date".to_owned(),
        )
    };
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => match parse_duration_secs(&text) {
            Some(secs) => Ok(Some(now + seconds(secs))),
            None => parse_date(&text).map(Some).ok_or_else(invalid),
        },
        Some(other) => instant(&other).map(Some).ok_or_else(invalid),
    }
}

/// `tags`: a string or a list of strings, at most [`MAX_TAGS`] of under
/// [`MAX_TAG_LEN`] characters; blanks dropped, duplicates removed.
fn token_tags(value: Option<Value>) -> Result<Vec<String>, ApiError> {
    let raw = match value {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::String(tag)) => vec![tag],
        Some(Value::Array(items)) => items
            .into_iter()
            .map(|item| match item {
                Value::String(tag) => Ok(tag),
                _ => Err(ApiError::BadRequest(
                    "tags: each tag must be a string".to_owned(),
                )),
            })
            .collect::<Result<_, _>>()?,
        Some(_) => {
            return Err(ApiError::BadRequest(
                "tags: must be a string or a list of strings".to_owned(),
            ))
        }
    };
    let mut tags: Vec<String> = Vec::with_capacity(raw.len());
    for tag in raw {
        if tag.chars().count() >= MAX_TAG_LEN || tag.contains('\0') {
            return Err(ApiError::BadRequest(format!(
                "tags: each tag must be under {MAX_TAG_LEN} characters without NUL"
            )));
        }
        if !tag.trim().is_empty() && !tags.contains(&tag) {
            tags.push(tag);
        }
    }
    if tags.len() > MAX_TAGS {
        return Err(ApiError::Unprocessable(format!(
            "Waitpoints can only have {MAX_TAGS} tags, you're trying to set {}.",
            tags.len()
        )));
    }
    Ok(tags)
}

/// A token's callback URL: a POST there completes it.
fn callback_url(base: &str, token: &Waitpoint) -> String {
    format!(
        "{base}/api/v1/waitpoints/tokens/{}/callback/{}",
        token.id,
        token.callback_secret.as_deref().unwrap_or_default()
    )
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct CreateTokenResponse {
    id: String,
    is_cached: bool,
    url: String,
}

/// `POST /api/v1/waitpoints/tokens` (`wait.createToken`).
pub async fn create(
    State(state): State<AppState>,
    key: AuthenticatedKey,
    headers: HeaderMap,
    body: RawBody,
) -> Result<impl IntoResponse, ApiError> {
    let request: CreateTokenRequest = json_body(within(body, MAX_CREATE_BODY_BYTES)?, &[])?;
    let now = state.engine.now();
    let timeout_at = timeout_at(request.timeout, now)?;
    let tags = token_tags(request.tags)?;
    let wait_key = wait_key(request.idempotency_key, request.idempotency_key_ttl, now)?;
    let (token, is_cached) = state
        .engine
        .token_create(&key.environment, timeout_at, tags, wait_key)
        .await?;
    let scopes = [format!("write:waitpoints:{}", token.id)];
    let jwt = key.token_headers_valid_for(&scopes, now, TOKEN_JWT_TTL_SECS);
    Ok((
        jwt,
        Json(CreateTokenResponse {
            id: token.id.to_string(),
            is_cached,
            url: callback_url(&base_url(&headers), &token),
        }),
    ))
}

/// A token as the list and retrieve answer it (`WaitpointTokenItem`); the output only
/// on retrieve.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct TokenItem {
    id: String,
    url: String,
    status: TokenStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    completed_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    timeout_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    idempotency_key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    idempotency_key_expires_at: Option<String>,
    tags: Vec<String>,
    created_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    output: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    output_type: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    output_is_error: Option<bool>,
}

impl TokenItem {
    fn new(token: &Waitpoint, base: &str, with_output: bool) -> Self {
        let completed = with_output && token.is_completed();
        let idempotency_key = token
            .idempotency_key_user
            .clone()
            .or_else(|| token.idempotency_key.clone());
        TokenItem {
            id: token.id.to_string(),
            url: callback_url(base, token),
            status: token.token_status(),
            completed_at: token.completed_at.map(iso),
            timeout_at: token.timeout_at.map(iso),
            idempotency_key_expires_at: idempotency_key
                .as_ref()
                .and(token.idempotency_key_expires_at)
                .map(iso),
            idempotency_key,
            tags: token.tags.clone(),
            created_at: iso(token.created_at),
            output: token.output.clone().filter(|_| completed),
            output_type: token.output_type.clone().filter(|_| completed),
            output_is_error: completed.then_some(token.output_is_error),
        }
    }
}

/// `GET /api/v1/waitpoints/tokens/{id}`.
pub async fn retrieve(
    State(state): State<AppState>,
    Authenticated(environment): Authenticated,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<impl Serialize>, ApiError> {
    let id = waitpoint_id(&id)?;
    let token = state
        .engine
        .token_get(&environment, &id)
        .await?
        .ok_or_else(not_found)?;
    Ok(Json(TokenItem::new(&token, &base_url(&headers), true)))
}

/// The list's query, validated: every problem is reported, as for the run list.
fn list_query(
    pairs: &[(String, String)],
    now: DateTime<Utc>,
) -> Result<TokenListQuery, Vec<QueryIssue>> {
    let get = |key: &str| {
        pairs
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .filter(|v| !v.is_empty())
    };
    let comma_list = crate::extract::comma_list;
    let mut issues = Vec::new();
    // Text the database cannot hold is no key or tag any token has.
    for key in ["filter[idempotencyKey]", "filter[tags]"] {
        if get(key).is_some_and(|v| v.contains('\0')) {
            issues.push(QueryIssue::new("custom", key, "must not contain NUL"));
        }
    }
    let mut query = TokenListQuery {
        limit: PAGE_SIZE_DEFAULT,
        ..TokenListQuery::default()
    };
    if let Some(value) = get("filter[status]") {
        let mut unknown = Vec::new();
        for name in comma_list(value) {
            match name.parse::<TokenStatus>() {
                Ok(status) if !query.statuses.contains(&status) => query.statuses.push(status),
                Ok(_) => {}
                Err(_) => unknown.push(name),
            }
        }
        if !unknown.is_empty() {
            issues.push(QueryIssue::new(
                "custom",
                "filter[status]",
                format!(
                    "Invalid status values: {} (WAITING, COMPLETED, TIMED_OUT)",
                    unknown.join(", ")
                ),
            ));
        }
    }
    query.idempotency_key = get("filter[idempotencyKey]").map(str::to_owned);
    if let Some(value) = get("filter[tags]") {
        query.tags = comma_list(value);
    }
    for (key, bound) in [
        ("filter[createdAt][from]", &mut query.created_from),
        ("filter[createdAt][to]", &mut query.created_to),
    ] {
        if let Some(value) = get(key) {
            match parse_date(value) {
                Some(t) => *bound = Some(t),
                None => issues.push(QueryIssue::new(
                    "invalid_date",
                    key,
                    format!("Invalid date: {value}"),
                )),
            }
        }
    }
    if let Some(value) = get("filter[createdAt][period]") {
        match parse_duration_secs(value) {
            Some(secs) if secs > 0 => {
                // `from`/`to` win over a period, as on the run list.
                if query.created_from.is_none() && query.created_to.is_none() {
                    query.created_from = now.checked_sub_signed(seconds(secs));
                }
            }
            _ => issues.push(QueryIssue::new(
                "custom",
                "filter[createdAt][period]",
                format!("Invalid period: {value} (expected a duration like 1h, 7d or 30d)"),
            )),
        }
    }
    if let Some(value) = get("page[size]") {
        match value.trim().parse::<i64>() {
            Ok(n) if n < 1 => issues.push(QueryIssue::new(
                "too_small",
                "page[size]",
                "Number must be greater than or equal to 1",
            )),
            Ok(n) if n > i64::from(PAGE_SIZE_MAX) => issues.push(QueryIssue::new(
                "too_big",
                "page[size]",
                format!("Number must be less than or equal to {PAGE_SIZE_MAX}"),
            )),
            Ok(n) => query.limit = n as u32,
            Err(_) => issues.push(QueryIssue::new(
                "invalid_type",
                "page[size]",
                format!("Expected an integer, received {value:?}"),
            )),
        }
    }
    match (get("page[after]"), get("page[before]")) {
        (Some(_), Some(_)) => issues.push(QueryIssue::new(
            "custom",
            "page[before]",
            "page[after] and page[before] cannot be used together",
        )),
        (Some(text), None) => match WaitpointId::parse(text) {
            Some(id) => query.after = Some(id),
            None => issues.push(QueryIssue::new("custom", "page[after]", "Invalid cursor")),
        },
        (None, Some(text)) => match WaitpointId::parse(text) {
            Some(id) => query.before = Some(id),
            None => issues.push(QueryIssue::new("custom", "page[before]", "Invalid cursor")),
        },
        (None, None) => {}
    }
    if issues.is_empty() {
        Ok(query)
    } else {
        Err(issues)
    }
}

#[derive(Debug, Serialize)]
struct TokenPage {
    data: Vec<TokenItem>,
    pagination: runnel_core::list::Pagination,
}

/// `GET /api/v1/waitpoints/tokens`: newest first, a page after (older) or before
/// (newer) a token id.
pub async fn list(
    State(state): State<AppState>,
    Authenticated(environment): Authenticated,
    headers: HeaderMap,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Json<impl Serialize>, ApiError> {
    let Query(pairs) = query.map_err(|rejection| {
        ApiError::Query(vec![QueryIssue {
            code: "custom",
            message: rejection.body_text(),
            path: vec![],
        }])
    })?;
    let mut query = list_query(&pairs, state.engine.now()).map_err(ApiError::Query)?;
    let page_size = query.limit as usize;
    query.limit += 1;
    let mut rows = state.engine.token_list(&environment, &query).await?;
    let more = rows.len() > page_size;
    rows.truncate(page_size);
    let newer_page = query.before.is_some();
    if newer_page {
        rows.reverse();
    }
    let (newest, oldest) = (
        rows.first().map(|t| t.id.to_string()),
        rows.last().map(|t| t.id.to_string()),
    );
    let pagination = runnel_core::list::Pagination {
        // Older tokens exist past a full page, or past a `before` page (at least the
        // cursor's own); newer ones past an `after` page or a full `before` page.
        next: if newer_page || more { oldest } else { None },
        previous: if query.after.is_some() || (newer_page && more) {
            newest
        } else {
            None
        },
    };
    let base = base_url(&headers);
    Ok(Json(TokenPage {
        data: rows
            .iter()
            .map(|t| TokenItem::new(t, &base, false))
            .collect(),
        pagination,
    }))
}

#[derive(Debug, Deserialize)]
struct CompleteTokenRequest {
    data: Option<Value>,
}

/// What a token's data is kept as: its JSON text, or nothing for `null`/absent.
pub(crate) fn token_output(data: Option<Value>) -> WaitpointOutput {
    WaitpointOutput {
        output: data.filter(|d| !d.is_null()).map(|d| d.to_string()),
        output_type: Some(Packet::JSON.to_owned()),
        is_error: false,
    }
}

/// `POST /api/v1/waitpoints/tokens/{id}/complete` (`wait.completeToken`): a secret key,
/// or a public token allowed to write the waitpoint.
pub async fn complete(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    body: RawBody,
) -> Result<Json<Value>, ApiError> {
    let id = waitpoint_id(&id)?;
    auth::authorize(&caller, "write", &[("waitpoints", id.as_str())])?;
    let request: CompleteTokenRequest = loose_body(body)?;
    let completed = state
        .engine
        .token_complete(caller.environment(), &id, &token_output(request.data))
        .await?;
    if !completed {
        return Err(not_found());
    }
    Ok(Json(json!({"success": true})))
}

/// `POST /api/v1/waitpoints/tokens/{id}/callback/{secret}`: no credentials (the secret
/// in the URL is one); the whole body is the token's data, `{}` when it is not JSON.
pub async fn callback(
    State(state): State<AppState>,
    Path((id, secret)): Path<(String, String)>,
    body: RawBody,
) -> Result<Json<Value>, ApiError> {
    let body = within(body, crate::state::MAX_BODY_BYTES)?
        .map_err(|rejection| ApiError::BadRequest(rejection.body_text()))?;
    let id = waitpoint_id(&id)?;
    let token = state
        .engine
        .token_by_callback(&id, &secret)
        .await?
        .ok_or(ApiError::Unauthorized(BAD_CALLBACK))?;
    let data = extract::check_body_depth(&body)
        .ok()
        .and_then(|()| serde_json::from_slice::<Value>(&body).ok())
        .unwrap_or_else(|| json!({}));
    state
        .engine
        .token_complete_by_callback(&token, &token_output(Some(data)))
        .await?;
    Ok(Json(json!({"success": true})))
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct WaitDurationRequest {
    /// When the wait ends: an ISO date (or unix milliseconds); required.
    date: Option<Value>,
    idempotency_key: Option<String>,
    #[serde(rename = "idempotencyKeyTTL")]
    idempotency_key_ttl: Option<String>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct WaitDurationResponse {
    wait_until: String,
    waitpoint: WaitpointRef,
}

#[derive(Debug, Serialize)]
struct WaitpointRef {
    id: String,
}

/// `POST /engine/v1/runs/{runId}/wait/duration` (`wait.for`/`wait.until` over 5 s):
/// blocks the executing run until `date`.
pub async fn wait_duration(
    State(state): State<AppState>,
    Authenticated(environment): Authenticated,
    Path(run_id): Path<String>,
    body: RawBody,
) -> Result<Json<impl Serialize>, ApiError> {
    let run = extract::run_id(&run_id, || ApiError::Missing("Run not found".to_owned()))?;
    let request: WaitDurationRequest = loose_body(body)?;
    let until = request
        .date
        .as_ref()
        .and_then(instant)
        .ok_or_else(|| ApiError::BadRequest("date: must be an ISO 8601 date".to_owned()))?;
    let now = state.engine.now();
    let key = wait_key(request.idempotency_key, request.idempotency_key_ttl, now)?;
    let waitpoint = state
        .engine
        .wait_until(&environment, &run, until, key)
        .await?;
    Ok(Json(WaitDurationResponse {
        wait_until: iso(waitpoint.completes_at.unwrap_or(until)),
        waitpoint: WaitpointRef {
            id: waitpoint.id.to_string(),
        },
    }))
}

/// `POST /engine/v1/runs/{runId}/waitpoints/tokens/{waitpointId}/wait`
/// (`wait.forToken`): blocks the executing run with the token.
pub async fn wait_token(
    State(state): State<AppState>,
    Authenticated(environment): Authenticated,
    Path((run_id, waitpoint)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let run = extract::run_id(&run_id, || ApiError::Missing("Run not found".to_owned()))?;
    let waitpoint = waitpoint_id(&waitpoint)?;
    state
        .engine
        .token_wait(&environment, &run, &waitpoint)
        .await?;
    Ok(Json(json!({"success": true})))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn timeouts_are_durations_or_dates() {
        let now: DateTime<Utc> = "2026-12-03T10:00:00Z".parse().unwrap();
        let cases = [
            (json!("1m"), Some("2026-12-03T10:01:00Z")),
            (json!("1h30m"), Some("2026-12-03T11:30:00Z")),
            (json!("2026-12-04T00:00:00Z"), Some("2026-12-04T00:00:00Z")),
            (json!(null), None),
        ];
        for (value, expected) in cases {
            let got = timeout_at(Some(value.clone()), now).unwrap();
            assert_eq!(got, expected.map(|t| t.parse().unwrap()), "{value}");
        }
        for bad in [json!("soon"), json!("1y"), json!(true), json!({})] {
            let error = timeout_at(Some(bad.clone()), now).unwrap_err();
            assert!(error.to_string().starts_with("timeout: "), "{bad}: {error}");
        }
    }

    #[test]
    fn tags_are_a_string_or_a_list_of_at_most_ten() {
        assert_eq!(token_tags(Some(json!("a"))).unwrap(), ["a"]);
        assert_eq!(
            token_tags(Some(json!(["a", "b", "a", " "]))).unwrap(),
            ["a", "b"]
        );
        let eleven: Vec<String> = (0..11).map(|i| format!("t{i}")).collect();
        assert!(matches!(
            token_tags(Some(json!(eleven))),
            Err(ApiError::Unprocessable(_))
        ));
        assert!(matches!(
            token_tags(Some(json!([1]))),
            Err(ApiError::BadRequest(_))
        ));
        assert!(matches!(
            token_tags(Some(json!(["x".repeat(128)]))),
            Err(ApiError::BadRequest(_))
        ));
    }

    #[test]
    fn list_queries_parse_and_every_problem_is_named() {
        let now: DateTime<Utc> = "2026-12-03T10:00:00Z".parse().unwrap();
        let query = list_query(
            &pairs(&[
                ("filter[status]", "WAITING,TIMED_OUT"),
                ("filter[tags]", "a,b"),
                ("filter[createdAt][period]", "1h"),
                ("page[size]", "7"),
            ]),
            now,
        )
        .unwrap();
        assert_eq!(
            query.statuses,
            [TokenStatus::Waiting, TokenStatus::TimedOut]
        );
        assert_eq!(query.tags, ["a", "b"]);
        assert_eq!(
            query.created_from,
            Some("2026-12-03T09:00:00Z".parse().unwrap())
        );
        assert_eq!(query.limit, 7);
        let issues = list_query(
            &pairs(&[
                ("filter[tags]", "a\0"),
                ("filter[status]", "DONE"),
                ("page[size]", "101"),
                ("page[after]", "run_1"),
            ]),
            now,
        )
        .unwrap_err();
        let paths: Vec<&str> = issues.iter().map(|i| i.path[0].as_str()).collect();
        assert_eq!(
            paths,
            [
                "filter[tags]",
                "filter[status]",
                "page[size]",
                "page[after]"
            ]
        );
    }

    #[test]
    fn base_url_follows_host_and_forwarded_proto() {
        let mut headers = HeaderMap::new();
        headers.insert("host", "example.test:3030".parse().unwrap());
        assert_eq!(base_url(&headers), "http://example.test:3030");
        headers.insert("x-forwarded-proto", "https".parse().unwrap());
        assert_eq!(base_url(&headers), "https://example.test:3030");
    }
}
