//! Cron schedules over HTTP (contract §2 rows 22–27, §2.5) and the timezone list:
//!
//! ```text
//! POST   /api/v1/schedules                      CreateScheduleOptions → ScheduleObject
//! GET    /api/v1/schedules?page=&perPage=       {data: [ScheduleObject], pagination}
//! GET    /api/v1/schedules/{id}                 ScheduleObject
//! PUT    /api/v1/schedules/{id}                 UpdateScheduleOptions → ScheduleObject
//! DELETE /api/v1/schedules/{id}                 {id}
//! POST   /api/v1/schedules/{id}/activate        ScheduleObject (active: true)
//! POST   /api/v1/schedules/{id}/deactivate      ScheduleObject (active: false)
//! GET    /api/v1/timezones[?excludeUtc=true]    {timezones: [...]}   (no credentials)
//! ```
//!
//! `{id}` is a schedule id (`sched_…`) or an imperative schedule's deduplication key.
//! Every schedule route takes a secret key and reaches only its environment's schedules:
//! a deduplication key is unique within one environment, and another environment's
//! schedule is answered 404 like a missing one (upstream scopes keys to the project; see
//! `runnel_engine::schedules`). Creating with a key the environment already has updates
//! that schedule (same id).
//!
//! Bodies answer like upstream's hand-written routes: a body that is not an object, a
//! missing or mistyped field, or a field the contract does not have is 400
//! `{"error":"Invalid request body","issues":[…]}`; settings the engine refuses (cron,
//! timezone, window, task) are 422 `{"error": …}`.

use axum::extract::{Path, Query, State};
use axum::Json;
use runnel_core::schedule::{self, ScheduleKind, MAX_KEY_CHARS};
use runnel_core::tenancy::Environment;
use runnel_core::view::iso;
use runnel_core::ScheduleId;
use runnel_engine::schedules::{generator, ScheduleInput, ScheduleRecord};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::auth::Authenticated;
use crate::error::ApiError;
use crate::extract::{issues_body, RawBody};
use crate::state::AppState;

/// Schedules per page when `perPage` is absent.
pub const SCHEDULES_PER_PAGE_DEFAULT: u32 = 20;

/// `ScheduleObject` (contract §2.5) of a schedule of `environment`.
fn schedule_json(environment: &Environment, record: &ScheduleRecord) -> Value {
    let mut out = json!({
        "id": record.id.as_str(),
        "type": record.kind.as_str(),
        "task": record.task_identifier,
        "active": record.active,
        "externalId": record.external_id,
        "generator": generator(record),
        "timezone": record.timezone,
        // An inactive schedule has no next run, even where the store kept one (an
        // upsert or update of an inactive schedule computes it; activating recomputes).
        "nextRun": record.next_run_at.filter(|_| record.active).map(iso),
        "nextRunEffectiveAt": record.next_fire_at.filter(|_| record.active).map(iso),
        "environments": [{
            "id": environment.id.as_str(),
            "type": environment.kind.api_type(),
            "userName": null,
        }],
    });
    // Only the user's own key: a declarative schedule has none to show.
    if record.kind == ScheduleKind::Imperative {
        out["deduplicationKey"] = json!(record.deduplication_key);
    }
    if let Some(window) = &record.window {
        out["window"] = json!(window);
    }
    out
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct CreateBody {
    task: String,
    cron: String,
    deduplication_key: String,
    #[serde(default)]
    external_id: Option<String>,
    #[serde(default)]
    timezone: Option<String>,
    #[serde(default)]
    window: Option<String>,
}

/// `UpdateScheduleOptions`: the create body minus `deduplicationKey` (the key stays).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct UpdateBody {
    task: String,
    cron: String,
    #[serde(default)]
    external_id: Option<String>,
    #[serde(default)]
    timezone: Option<String>,
    #[serde(default)]
    window: Option<String>,
}

/// Bounds serde cannot state: a key that names its schedule in a path (non-empty, not
/// shaped like an id, which the path would read as one) and lengths.
fn check_keys(deduplication_key: Option<&str>, external_id: Option<&str>) -> Result<(), ApiError> {
    let issue =
        |field: &str, message: String| ApiError::Issues(vec![ApiError::issue(&[field], message)]);
    if let Some(key) = deduplication_key {
        if key.is_empty() {
            return Err(issue("deduplicationKey", "must not be empty".to_owned()));
        }
        if ScheduleId::parse(key).is_some() {
            return Err(issue(
                "deduplicationKey",
                "must not look like a schedule id (sched_…): paths read it as one".to_owned(),
            ));
        }
    }
    for (field, value) in [
        ("deduplicationKey", deduplication_key),
        ("externalId", external_id),
    ] {
        if value.is_some_and(|v| v.chars().count() > MAX_KEY_CHARS) {
            return Err(issue(
                field,
                format!("must be at most {MAX_KEY_CHARS} characters"),
            ));
        }
    }
    Ok(())
}

/// `POST /api/v1/schedules`: creates a schedule, or updates the environment's schedule
/// with the same `deduplicationKey`.
pub async fn create(
    State(state): State<AppState>,
    Authenticated(environment): Authenticated,
    raw: RawBody,
) -> Result<Json<Value>, ApiError> {
    let body: CreateBody = issues_body(raw)?;
    check_keys(Some(&body.deduplication_key), body.external_id.as_deref())?;
    let input = ScheduleInput {
        task: body.task,
        cron: body.cron,
        deduplication_key: Some(body.deduplication_key),
        external_id: body.external_id,
        timezone: body.timezone,
        window: body.window,
    };
    let record = state.engine.schedule_create(&environment, &input).await?;
    Ok(Json(schedule_json(&environment, &record)))
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListQuery {
    page: Option<String>,
    per_page: Option<String>,
}

/// A query number that must be a whole number from 1: else 400 `Query Error` naming it.
fn positive(value: Option<&str>, field: &str, default: u32) -> Result<u32, ApiError> {
    match value {
        None => Ok(default),
        Some(v) => v.parse::<u32>().ok().filter(|n| *n >= 1).ok_or_else(|| {
            ApiError::Query(vec![runnel_core::list::QueryIssue::new(
                "invalid_type",
                field,
                format!("{field} must be a whole number from 1, got {v:?}"),
            )])
        }),
    }
}

/// `GET /api/v1/schedules?page=&perPage=`: the environment's schedules, oldest first;
/// `perPage` above the maximum is capped.
pub async fn list(
    State(state): State<AppState>,
    Authenticated(environment): Authenticated,
    Query(query): Query<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    let page = positive(query.page.as_deref(), "page", 1)?;
    let per_page = positive(
        query.per_page.as_deref(),
        "perPage",
        SCHEDULES_PER_PAGE_DEFAULT,
    )?;
    let listed = state
        .engine
        .schedule_list(&environment, page, per_page)
        .await?;
    let data: Vec<Value> = listed
        .schedules
        .iter()
        .map(|record| schedule_json(&environment, record))
        .collect();
    Ok(Json(json!({
        "data": data,
        "pagination": {
            "currentPage": listed.page,
            "totalPages": listed.total_pages,
            "count": listed.count,
        },
    })))
}

/// `GET /api/v1/schedules/{id}`: by id or deduplication key.
pub async fn retrieve(
    State(state): State<AppState>,
    Authenticated(environment): Authenticated,
    Path(reference): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let record = state.engine.schedule_get(&environment, &reference).await?;
    Ok(Json(schedule_json(&environment, &record)))
}

/// `PUT /api/v1/schedules/{id}`: replaces an imperative schedule's settings.
pub async fn update(
    State(state): State<AppState>,
    Authenticated(environment): Authenticated,
    Path(reference): Path<String>,
    raw: RawBody,
) -> Result<Json<Value>, ApiError> {
    let body: UpdateBody = issues_body(raw)?;
    check_keys(None, body.external_id.as_deref())?;
    let input = ScheduleInput {
        task: body.task,
        cron: body.cron,
        deduplication_key: None,
        external_id: body.external_id,
        timezone: body.timezone,
        window: body.window,
    };
    let record = state
        .engine
        .schedule_update(&environment, &reference, &input)
        .await?;
    Ok(Json(schedule_json(&environment, &record)))
}

/// `DELETE /api/v1/schedules/{id}`: an imperative schedule; answers its id.
pub async fn delete(
    State(state): State<AppState>,
    Authenticated(environment): Authenticated,
    Path(reference): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = state
        .engine
        .schedule_delete(&environment, &reference)
        .await?;
    Ok(Json(json!({ "id": id.as_str() })))
}

/// `POST /api/v1/schedules/{id}/activate`: fires again from the next occurrence after
/// now (nothing missed while inactive fires).
pub async fn activate(
    State(state): State<AppState>,
    Authenticated(environment): Authenticated,
    Path(reference): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let record = state
        .engine
        .schedule_set_active(&environment, &reference, true)
        .await?;
    Ok(Json(schedule_json(&environment, &record)))
}

/// `POST /api/v1/schedules/{id}/deactivate`: stops firing; `nextRun` becomes null.
pub async fn deactivate(
    State(state): State<AppState>,
    Authenticated(environment): Authenticated,
    Path(reference): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let record = state
        .engine
        .schedule_set_active(&environment, &reference, false)
        .await?;
    Ok(Json(schedule_json(&environment, &record)))
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TimezonesQuery {
    exclude_utc: Option<String>,
}

/// `GET /api/v1/timezones[?excludeUtc=true]`: every IANA name a schedule takes, `UTC`
/// first unless excluded. Needs no credentials.
pub async fn timezones(Query(query): Query<TimezonesQuery>) -> Result<Json<Value>, ApiError> {
    let exclude_utc = match query.exclude_utc.as_deref() {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => {
            return Err(ApiError::Query(vec![runnel_core::list::QueryIssue::new(
                "invalid_type",
                "excludeUtc",
                format!("excludeUtc must be true or false, got {other:?}"),
            )]))
        }
    };
    Ok(Json(
        json!({ "timezones": schedule::timezone_names(exclude_utc) }),
    ))
}
