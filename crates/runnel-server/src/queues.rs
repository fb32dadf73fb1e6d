//! Queue endpoints (contract §2.1 rows 36–40, §2.6): list, retrieve, pause/resume,
//! concurrency override and reset. A queue is named by id (`queue_…`, the default) or,
//! with `type=task|custom`, by name: a task queue by its task id (stored as
//! `task/<taskId>`), a custom queue by its name (`/` arrives encoded as `%2F`).

use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use runnel_core::queue::{self, QueueName};
use runnel_core::worker::MAX_QUEUE_CONCURRENCY;
use runnel_engine::queues::{QueueChange, QueueKind, QueueRecord, QueueRef, QueueUpdate};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::auth::Authenticated;
use crate::error::ApiError;
use crate::extract::{json_body, RawBody};
use crate::state::AppState;

/// Page size of the list when `perPage` is absent, and its maximum.
pub const QUEUES_PER_PAGE_DEFAULT: u32 = 25;
pub const QUEUES_PER_PAGE_MAX: u32 = 100;

/// `QueueItem` (contract §2.6).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct QueueItem {
    id: String,
    /// The task id for a task queue, else the custom name.
    name: String,
    #[serde(rename = "type")]
    kind: &'static str,
    running: u64,
    queued: u64,
    paused: bool,
    /// The effective limit (override, else registered); null: unlimited.
    concurrency_limit: Option<u32>,
    concurrency: Concurrency,
    /// Older SDKs require it; runs here never release their slot while waiting.
    release_concurrency_on_waitpoint: bool,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Concurrency {
    current: Option<u32>,
    base: Option<u32>,
    #[serde(rename = "override")]
    override_limit: Option<u32>,
    overridden_at: Option<String>,
    overridden_by: Option<String>,
}

impl From<QueueRecord> for QueueItem {
    fn from(q: QueueRecord) -> Self {
        let name = match q.kind {
            QueueKind::Task => queue::task_of(&q.name).unwrap_or(&q.name).to_owned(),
            QueueKind::Custom => q.name.clone(),
        };
        QueueItem {
            id: q.id.to_string(),
            name,
            kind: q.kind.as_str(),
            running: q.running,
            queued: q.queued,
            paused: q.paused,
            concurrency_limit: q.effective_limit(),
            concurrency: Concurrency {
                current: q.effective_limit(),
                base: q.concurrency_limit,
                override_limit: q.concurrency_limit_override,
                overridden_at: q
                    .overridden_at
                    .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
                overridden_by: None,
            },
            release_concurrency_on_waitpoint: false,
        }
    }
}

/// A missing queue: upstream's body, through the one error mapping (so it also says
/// `x-should-retry: false`, and the SDK does not retry it).
fn not_found() -> Response {
    ApiError::Missing("queue-not-found".to_owned()).into_response()
}

/// How the path names the queue.
fn queue_ref(param: &str, kind: Option<&str>) -> Result<QueueRef, ApiError> {
    match kind.unwrap_or("id") {
        "id" => Ok(QueueRef::Id(param.to_owned())),
        "task" => Ok(QueueRef::Name(QueueName::for_task(param).into_string())),
        "custom" => Ok(QueueRef::Name(param.to_owned())),
        other => Err(ApiError::BadRequest(format!(
            "type: expected one of id, task, custom, got {other:?}"
        ))),
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListQuery {
    page: Option<String>,
    per_page: Option<String>,
}

fn positive(value: Option<&str>, field: &str, default: u32) -> Result<u32, ApiError> {
    match value {
        None | Some("") => Ok(default),
        Some(v) => v
            .parse::<u32>()
            .ok()
            .filter(|n| *n >= 1)
            .ok_or_else(|| ApiError::BadRequest(format!("{field}: must be a positive integer"))),
    }
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Pagination {
    current_page: u32,
    total_pages: u64,
    count: u64,
}

/// `GET /api/v1/queues?page=&perPage=`.
pub async fn list(
    State(state): State<AppState>,
    Authenticated(environment): Authenticated,
    Query(query): Query<ListQuery>,
) -> Result<Response, ApiError> {
    let page = positive(query.page.as_deref(), "page", 1)?;
    let per_page = positive(
        query.per_page.as_deref(),
        "perPage",
        QUEUES_PER_PAGE_DEFAULT,
    )?
    .min(QUEUES_PER_PAGE_MAX);
    let (queues, count) = state
        .engine
        .queue_list(&environment, page, per_page)
        .await?;
    let data: Vec<QueueItem> = queues.into_iter().map(QueueItem::from).collect();
    Ok(Json(json!({
        "data": data,
        "pagination": Pagination {
            current_page: page,
            total_pages: count.div_ceil(u64::from(per_page)),
            count,
        },
    }))
    .into_response())
}

#[derive(Debug, Deserialize)]
pub struct TypeQuery {
    #[serde(rename = "type")]
    kind: Option<String>,
}

/// `GET /api/v1/queues/{queueParam}?type=id|task|custom`.
pub async fn retrieve(
    State(state): State<AppState>,
    Authenticated(environment): Authenticated,
    Path(param): Path<String>,
    Query(query): Query<TypeQuery>,
) -> Result<Response, ApiError> {
    let queue = queue_ref(&param, query.kind.as_deref())?;
    Ok(match state.engine.queue_get(&environment, &queue).await? {
        Some(q) => Json(QueueItem::from(q)).into_response(),
        None => not_found(),
    })
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PauseBody {
    #[serde(rename = "type")]
    kind: Option<String>,
    action: PauseAction,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
enum PauseAction {
    Pause,
    Resume,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct OverrideBody {
    #[serde(rename = "type")]
    kind: Option<String>,
    concurrency_limit: Option<i64>,
    percent: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
struct ResetBody {
    #[serde(rename = "type")]
    kind: Option<String>,
}

async fn update(
    state: &AppState,
    environment: &runnel_core::tenancy::Environment,
    queue: QueueRef,
    change: QueueChange,
) -> Result<Response, ApiError> {
    Ok(
        match state
            .engine
            .queue_update(environment, &queue, change)
            .await?
        {
            QueueUpdate::Updated(q) => Json(QueueItem::from(q)).into_response(),
            QueueUpdate::NotFound => not_found(),
            QueueUpdate::NotOverridden => {
                return Err(ApiError::BadRequest(
                    "Queue concurrency limit is not overridden".to_owned(),
                ))
            }
        },
    )
}

/// `POST /api/v1/queues/{queueParam}/pause` with `{type?, action: "pause"|"resume"}`.
pub async fn pause(
    State(state): State<AppState>,
    Authenticated(environment): Authenticated,
    Path(param): Path<String>,
    body: RawBody,
) -> Result<Response, ApiError> {
    let body: PauseBody = json_body(body, &[])?;
    let queue = queue_ref(&param, body.kind.as_deref())?;
    let change = match body.action {
        PauseAction::Pause => QueueChange::Pause,
        PauseAction::Resume => QueueChange::Resume,
    };
    update(&state, &environment, queue, change).await
}

/// `POST /api/v1/queues/{queueParam}/concurrency/override` with
/// `{type?, concurrencyLimit: 0..100000}` (`percent` is not supported: 400).
pub async fn concurrency_override(
    State(state): State<AppState>,
    Authenticated(environment): Authenticated,
    Path(param): Path<String>,
    body: RawBody,
) -> Result<Response, ApiError> {
    let body: OverrideBody = json_body(body, &[])?;
    let queue = queue_ref(&param, body.kind.as_deref())?;
    if body.percent.is_some() {
        return Err(ApiError::BadRequest(
            "percent: not supported; give concurrencyLimit".to_owned(),
        ));
    }
    let limit = body
        .concurrency_limit
        .ok_or_else(|| ApiError::BadRequest("concurrencyLimit: required".to_owned()))?;
    let limit = u32::try_from(limit)
        .ok()
        .filter(|l| *l <= MAX_QUEUE_CONCURRENCY)
        .ok_or_else(|| {
            ApiError::BadRequest(format!(
                "concurrencyLimit: must be between 0 and {MAX_QUEUE_CONCURRENCY}"
            ))
        })?;
    update(&state, &environment, queue, QueueChange::Override(limit)).await
}

/// `POST /api/v1/queues/{queueParam}/concurrency/reset` with `{type?}` (the body may
/// be empty).
pub async fn concurrency_reset(
    State(state): State<AppState>,
    Authenticated(environment): Authenticated,
    Path(param): Path<String>,
    body: RawBody,
) -> Result<Response, ApiError> {
    let empty = body
        .as_ref()
        .is_ok_and(|b| b.iter().all(u8::is_ascii_whitespace));
    let body: ResetBody = if empty {
        ResetBody::default()
    } else {
        json_body(body, &[])?
    };
    let queue = queue_ref(&param, body.kind.as_deref())?;
    update(&state, &environment, queue, QueueChange::ResetOverride).await
}
