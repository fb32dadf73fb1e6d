//! The queues page: the environment's queues a page at a time ([`Engine::queue_list`],
//! as `GET /api/v1/queues`), with pause / resume and the concurrency override
//! ([`Engine::queue_update`], as the API's queue actions).
//!
//! [`Engine::queue_list`]: runnel_engine::Engine::queue_list
//! [`Engine::queue_update`]: runnel_engine::Engine::queue_update

use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Redirect, Response};
use maud::html;
use runnel_core::worker::MAX_QUEUE_CONCURRENCY;
use runnel_engine::queues::{QueueChange, QueueRef, QueueUpdate};
use serde::Deserialize;

use super::page::{self, Area, PageError};
use super::session::{Action, Session};
use crate::state::AppState;

/// Queues per page.
const PER_PAGE: u32 = 50;
const HREF: &str = "/dashboard/queues";

#[derive(Debug, Deserialize)]
pub(crate) struct PageQuery {
    pub(crate) page: Option<String>,
}

/// `?page=` from 1; anything else is the first page.
pub(crate) fn page_number(raw: Option<&str>) -> u32 {
    raw.and_then(|p| p.parse::<u32>().ok())
        .filter(|p| *p >= 1)
        .unwrap_or(1)
}

/// The pager of a numbered list at `page` of `total_pages`.
pub(crate) fn pager(href: &str, page: u32, total_pages: u64) -> maud::Markup {
    html! {
        nav.pager aria-label="Pages" {
            @if page > 1 {
                a href=(page::link(href, &[("page", &(page - 1).to_string())])) rel="prev" { "Previous page" }
            }
            @if u64::from(page) < total_pages {
                a href=(page::link(href, &[("page", &(page + 1).to_string())])) rel="next" { "Next page" }
            }
        }
    }
}

/// `GET /dashboard/queues`.
pub(crate) async fn list(
    State(state): State<AppState>,
    session: Session,
    Query(query): Query<PageQuery>,
) -> Response {
    let page = page_number(query.page.as_deref());
    let result = async {
        let (queues, count) = state
            .engine
            .queue_list(&session.environment, page, PER_PAGE)
            .await?;
        let content = html! {
            h1 { "Queues" }
            @if queues.is_empty() {
                p { "No queues yet: a worker registering its tasks creates them." }
            } @else {
                (page::table("Queues", &["Name", "Queued", "Running", "Concurrency limit", "State", "Actions"], html! {
                    @for queue in &queues {
                        @let id = queue.id.as_str();
                        tr data-queue-name=(queue.name) {
                            th scope="row" { (queue.name) }
                            td { (queue.queued) }
                            td { (queue.running) }
                            td {
                                @match queue.effective_limit() {
                                    Some(limit) => (limit),
                                    None => "Unlimited",
                                }
                                @if queue.concurrency_limit_override.is_some() { " (override)" }
                            }
                            td data-field="state" { @if queue.paused { "Paused" } @else { "Running" } }
                            td {
                                @if queue.paused {
                                    form.inline method="post" action=(format!("{HREF}/{id}/resume")) {
                                        (session.csrf_input())
                                        button type="submit" { "Resume" }
                                    }
                                } @else {
                                    form.inline method="post" action=(format!("{HREF}/{id}/pause")) {
                                        (session.csrf_input())
                                        button.secondary type="submit" { "Pause" }
                                    }
                                }
                                form.inline method="post" action=(format!("{HREF}/{id}/limit")) {
                                    (session.csrf_input())
                                    span {
                                        label for=(format!("limit-{id}")) { "Concurrency limit" }
                                        input id=(format!("limit-{id}")) name="limit" type="number" min="0"
                                            max=(MAX_QUEUE_CONCURRENCY) required size="6"
                                            value=[queue.effective_limit()];
                                    }
                                    button.secondary type="submit" { "Set limit" }
                                }
                                @if queue.concurrency_limit_override.is_some() {
                                    form.inline method="post" action=(format!("{HREF}/{id}/reset")) {
                                        (session.csrf_input())
                                        button.secondary type="submit" { "Reset limit" }
                                    }
                                }
                            }
                        }
                    }
                }))
            }
            (pager(HREF, page, count.div_ceil(u64::from(PER_PAGE))))
        };
        Ok::<_, PageError>(page::ok(&session, Area::Queues, "Queues", content))
    };
    let result = result.await;
    session.respond(result)
}

/// Applies `change` to queue `id` of the session's environment; back to the list.
async fn apply(state: &AppState, action: &Action, id: String, change: QueueChange) -> Response {
    let result = async {
        match state
            .engine
            .queue_update(&action.session.environment, &QueueRef::Id(id), change)
            .await?
        {
            QueueUpdate::Updated(_) => Ok::<_, PageError>(Redirect::to(HREF).into_response()),
            QueueUpdate::NotFound => Err(PageError::not_found()),
            QueueUpdate::NotOverridden => Err(PageError::bad_request(
                "The queue's concurrency limit is not overridden.",
            )),
        }
    }
    .await;
    action.session.respond(result)
}

/// `POST /dashboard/queues/{id}/pause`.
pub(crate) async fn pause(
    State(state): State<AppState>,
    Path(id): Path<String>,
    action: Action,
) -> Response {
    apply(&state, &action, id, QueueChange::Pause).await
}

/// `POST /dashboard/queues/{id}/resume`.
pub(crate) async fn resume(
    State(state): State<AppState>,
    Path(id): Path<String>,
    action: Action,
) -> Response {
    apply(&state, &action, id, QueueChange::Resume).await
}

/// `POST /dashboard/queues/{id}/limit` (`limit`: 0 to the maximum).
pub(crate) async fn limit(
    State(state): State<AppState>,
    Path(id): Path<String>,
    action: Action,
) -> Response {
    match action
        .field("limit")
        .trim()
        .parse::<u32>()
        .ok()
        .filter(|limit| *limit <= MAX_QUEUE_CONCURRENCY)
    {
        Some(limit) => apply(&state, &action, id, QueueChange::Override(limit)).await,
        None => PageError::bad_request(format!(
            "Concurrency limit: a whole number from 0 to {MAX_QUEUE_CONCURRENCY}."
        ))
        .render(Some(&action.session)),
    }
}

/// `POST /dashboard/queues/{id}/reset`: back to the registered limit.
pub(crate) async fn reset(
    State(state): State<AppState>,
    Path(id): Path<String>,
    action: Action,
) -> Response {
    apply(&state, &action, id, QueueChange::ResetOverride).await
}
