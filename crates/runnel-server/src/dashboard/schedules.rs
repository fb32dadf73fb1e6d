//! The schedules page: the environment's schedules a page at a time
//! ([`Engine::schedule_list`], as `GET /api/v1/schedules`), each activated or
//! deactivated with [`Engine::schedule_set_active`] as the API's routes do.
//!
//! [`Engine::schedule_list`]: runnel_engine::Engine::schedule_list
//! [`Engine::schedule_set_active`]: runnel_engine::Engine::schedule_set_active

use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Redirect, Response};
use maud::html;

use super::page::{self, Area, PageError};
use super::queues::{page_number, pager, PageQuery};
use super::session::{Action, Session};
use crate::state::AppState;

const PER_PAGE: u32 = 50;
const HREF: &str = "/dashboard/schedules";

/// `GET /dashboard/schedules`.
pub(crate) async fn list(
    State(state): State<AppState>,
    session: Session,
    Query(query): Query<PageQuery>,
) -> Response {
    let page = page_number(query.page.as_deref());
    let result = async {
        let listed = state
            .engine
            .schedule_list(&session.environment, page, PER_PAGE)
            .await?;
        let content = html! {
            h1 { "Schedules" }
            @if listed.schedules.is_empty() {
                p { "No schedules in this environment." }
            } @else {
                (page::table("Schedules", &["Schedule", "Task", "Cron", "Timezone", "Next run", "Active", "Actions"], html! {
                    @for schedule in &listed.schedules {
                        @let id = schedule.id.as_str();
                        tr data-schedule-id=(id) {
                            td {
                                code { (id) }
                                @if let Some(key) = &schedule.deduplication_key { br; span.hint { (key) } }
                            }
                            td { (schedule.task_identifier) }
                            td { code { (schedule.cron) } }
                            td { (schedule.timezone) }
                            td { (page::time_or_dash(schedule.next_run_at.filter(|_| schedule.active))) }
                            td data-field="active" { @if schedule.active { "Yes" } @else { "No" } }
                            td {
                                @if schedule.active {
                                    form.inline method="post" action=(format!("{HREF}/{id}/deactivate")) {
                                        (session.csrf_input())
                                        button.secondary type="submit" { "Deactivate" }
                                    }
                                } @else {
                                    form.inline method="post" action=(format!("{HREF}/{id}/activate")) {
                                        (session.csrf_input())
                                        button type="submit" { "Activate" }
                                    }
                                }
                            }
                        }
                    }
                }))
            }
            (pager(HREF, listed.page, listed.total_pages))
        };
        Ok::<_, PageError>(page::ok(&session, Area::Schedules, "Schedules", content))
    };
    let result = result.await;
    session.respond(result)
}

async fn set_active(state: &AppState, action: &Action, id: &str, active: bool) -> Response {
    let result = async {
        state
            .engine
            .schedule_set_active(&action.session.environment, id, active)
            .await?;
        Ok::<_, PageError>(Redirect::to(HREF).into_response())
    }
    .await;
    action.session.respond(result)
}

/// `POST /dashboard/schedules/{id}/activate`.
pub(crate) async fn activate(
    State(state): State<AppState>,
    Path(id): Path<String>,
    action: Action,
) -> Response {
    set_active(&state, &action, &id, true).await
}

/// `POST /dashboard/schedules/{id}/deactivate`.
pub(crate) async fn deactivate(
    State(state): State<AppState>,
    Path(id): Path<String>,
    action: Action,
) -> Response {
    set_active(&state, &action, &id, false).await
}
