//! The runs pages: the list (the API's filters and keyset cursors, `GET /api/v1/runs`'s
//! [`RunListRequest`] and [`Engine::run_list`]), one run (the retrieve view,
//! [`RetrieveRunResponse`], with its packets presigned as the API does, and its events),
//! and the actions on a run: cancel, replay, reschedule.
//!
//! Statuses are the v4 public ones ([`ApiVersion::Current`]).
//!
//! [`Engine::run_list`]: runnel_engine::Engine::run_list

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use chrono::{DateTime, Utc};
use maud::{html, Markup};
use runnel_core::list::{QueryIssue, RunListRequest, RunPage};
use runnel_core::replay::ReplayRequest;
use runnel_core::run::Run;
use runnel_core::view::{CommonRunFields, RetrieveRunResponse};
use runnel_core::{ApiVersion, RunId, RunStatus};
use runnel_engine::events::RunEventQuery;
use runnel_engine::list::ListError;
use serde_json::Value;

use super::page::{self, Area, PageError};
use super::session::{Action, Session};
use crate::state::AppState;

/// The statuses the filter offers: the v4 public set (contract §3.2), as the status
/// enum renders it, each once, in the enum's order.
fn statuses() -> Vec<&'static str> {
    let mut offered: Vec<&'static str> = Vec::new();
    for status in RunStatus::ALL {
        let text = status.public(ApiVersion::Current);
        if !offered.contains(&text) {
            offered.push(text);
        }
    }
    offered
}
/// Most log lines and spans a run page lists.
const EVENTS_SHOWN: u32 = 500;

/// A status as the pages show it.
fn status_text(status: RunStatus) -> &'static str {
    status.public(ApiVersion::Current)
}

fn run_href(id: &str) -> String {
    format!("/dashboard/runs/{id}")
}

/// The list's query string, as the filter form writes it.
#[derive(Debug, Default)]
struct Filters {
    status: String,
    task: String,
    tag: String,
    from: String,
    to: String,
    after: String,
    before: String,
}

impl Filters {
    fn read(pairs: &[(String, String)]) -> Filters {
        let get = |key: &str| {
            pairs
                .iter()
                .rev()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.trim().to_owned())
                .unwrap_or_default()
        };
        Filters {
            status: get("status"),
            task: get("task"),
            tag: get("tag"),
            from: get("from"),
            to: get("to"),
            after: get("after"),
            before: get("before"),
        }
    }

    /// The API's query pairs for these filters (so the list validates them as
    /// `GET /api/v1/runs` does).
    fn api_pairs(&self) -> Vec<(String, String)> {
        [
            ("filter[status]", &self.status),
            ("filter[taskIdentifier]", &self.task),
            ("filter[tag]", &self.tag),
            ("filter[createdAt][from]", &self.from),
            ("filter[createdAt][to]", &self.to),
            ("page[after]", &self.after),
            ("page[before]", &self.before),
        ]
        .into_iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| (k.to_owned(), v.clone()))
        .collect()
    }

    /// The list's URL with these filters and the page `cursor` (`after` or `before`).
    fn page_link(&self, cursor: (&str, &str)) -> String {
        page::link(
            "/dashboard/runs",
            &[
                ("status", &self.status),
                ("task", &self.task),
                ("tag", &self.tag),
                ("from", &self.from),
                ("to", &self.to),
                cursor,
            ],
        )
    }

    /// Says which API parameter a query issue is about, in the form's words.
    fn field_name(path: &[String]) -> &'static str {
        match path.first().map(String::as_str) {
            Some("filter[status]") => "Status",
            Some("filter[taskIdentifier]") => "Task",
            Some("filter[tag]") => "Tag",
            Some("filter[createdAt][from]") => "Created from",
            Some("filter[createdAt][to]") => "Created to",
            Some("page[after]") | Some("page[before]") => "Page",
            _ => "Query",
        }
    }
}

/// `GET /dashboard/runs`.
pub(crate) async fn list(
    State(state): State<AppState>,
    session: Session,
    Query(pairs): Query<Vec<(String, String)>>,
) -> Response {
    let filters = Filters::read(&pairs);
    let page = match RunListRequest::parse(&filters.api_pairs()) {
        Ok(request) => match state.engine.run_list(&session.environment, &request).await {
            Ok(page) => Ok(page),
            Err(ListError::Query(issues)) => Err(issues),
            Err(error) => {
                return PageError::from(crate::ApiError::from(error)).render(Some(&session))
            }
        },
        Err(issues) => Err(issues),
    };
    let (status, content) = match page {
        Ok(page) => (StatusCode::OK, list_content(&filters, Some(&page), &[])),
        Err(issues) => (
            StatusCode::BAD_REQUEST,
            list_content(&filters, None, &issues),
        ),
    };
    page::respond(
        status,
        page::document("Runs", Some((&session, Area::Runs)), content),
    )
}

fn list_content(filters: &Filters, page: Option<&RunPage>, issues: &[QueryIssue]) -> Markup {
    html! {
        h1 { "Runs" }
        (filter_form(filters))
        @if !issues.is_empty() {
            div.alert role="alert" {
                p { "The filters could not be applied:" }
                ul {
                    @for issue in issues {
                        li { (Filters::field_name(&issue.path)) ": " (issue.message) }
                    }
                }
            }
        }
        @if let Some(page) = page {
            @if page.runs.is_empty() {
                p { "No runs match." }
            } @else {
                (page::table("Runs", &["Run", "Task", "Status", "Tags", "Created", "Duration"], html! {
                    @for run in &page.runs { (row(run)) }
                }))
            }
            nav.pager aria-label="Pages" {
                @if let Some(previous) = &page.previous {
                    a href=(filters.page_link(("before", &previous.encode()))) rel="prev" { "Previous page" }
                }
                @if let Some(next) = &page.next {
                    a href=(filters.page_link(("after", &next.encode()))) rel="next" { "Next page" }
                }
            }
        }
    }
}

fn filter_form(filters: &Filters) -> Markup {
    html! {
        form.filters method="get" action="/dashboard/runs" aria-describedby="filter-hint" {
            p {
                label for="f-status" { "Status" }
                select #f-status name="status" {
                    option value="" selected[filters.status.is_empty()] { "Any" }
                    @for status in statuses() {
                        option value=(status) selected[filters.status == status] { (status) }
                    }
                }
            }
            p {
                label for="f-task" { "Task" }
                input #f-task name="task" type="text" value=(filters.task) autocomplete="off";
            }
            p {
                label for="f-tag" { "Tag" }
                input #f-tag name="tag" type="text" value=(filters.tag) autocomplete="off";
            }
            p {
                label for="f-from" { "Created from" }
                input #f-from name="from" type="datetime-local" step="1" value=(filters.from);
            }
            p {
                label for="f-to" { "Created to" }
                input #f-to name="to" type="datetime-local" step="1" value=(filters.to);
            }
            p { button type="submit" { "Filter" } }
        }
        p.hint #filter-hint {
            "Times are UTC. Without a range, runs created in the last 7 days are listed, newest first."
        }
    }
}

fn tags(tags: &[String]) -> Markup {
    html! { @for tag in tags { span.tag { (tag) } } }
}

fn row(run: &Run) -> Markup {
    let status = status_text(run.status);
    html! {
        tr data-run-id=(run.id.as_str()) {
            td { a href=(run_href(run.id.as_str())) { (run.id.as_str()) } }
            td { (run.task_identifier) }
            td data-field="status" data-status=(status) { (status) }
            td.wrap { (tags(&run.tags)) }
            td { (page::time(run.created_at)) }
            td { (page::duration(run.usage_duration_ms)) }
        }
    }
}

/// The run id of a path; one that does not parse is as missing as an unknown one.
fn parse_id(raw: &str) -> Result<RunId, PageError> {
    RunId::parse(raw).ok_or_else(PageError::not_found)
}

/// `GET /dashboard/runs/{id}`: 404 unless the run is of the session's environment.
pub(crate) async fn show(
    State(state): State<AppState>,
    session: Session,
    Path(raw): Path<String>,
    headers: HeaderMap,
) -> Response {
    let result = show_page(&state, &session, &raw, &headers).await;
    session.respond(result)
}

async fn show_page(
    state: &AppState,
    session: &Session,
    raw: &str,
    headers: &HeaderMap,
) -> Result<Response, PageError> {
    let environment = &session.environment;
    let id = parse_id(raw)?;
    let detail = state
        .engine
        .run_detail(environment, &id)
        .await?
        .ok_or_else(PageError::not_found)?;
    let mut view = RetrieveRunResponse::new(&detail, ApiVersion::Current);
    crate::packets::presign_stored(state, environment, &detail.run, &mut view, headers).await?;
    let events = state
        .engine
        .run_events(
            environment,
            &id,
            &RunEventQuery {
                kinds: vec![],
                after: None,
                limit: EVENTS_SHOWN,
            },
        )
        .await?;
    let run = &detail.run;
    let id = run.id.as_str();
    let status = status_text(run.status);
    let content = html! {
        h1 { "Run " code { (id) } }
        p.notice data-live-notice=(id) role="status" hidden { "Status changed; reload for details" }
        dl.summary data-run-id=(id) {
            dt { "Status" } dd { span data-field="status" data-status=(status) { (status) } }
            dt { "Task" } dd { (run.task_identifier) }
            dt { "Version" } dd { (view.common.version.as_deref().unwrap_or("—")) }
            dt { "Queue" } dd { (run.queue.as_str()) }
            dt { "Created" } dd { (page::time(run.created_at)) }
            dt { "Duration" } dd { (page::duration(run.usage_duration_ms)) }
            dt { "Cost" } dd { (cost(view.common.cost_in_cents + view.common.base_cost_in_cents)) }
            dt { "Attempts" } dd { (run.attempt_count) }
            @if let Some(key) = &view.common.idempotency_key {
                dt { "Idempotency key" } dd { code { (key) } }
            }
            @if run.is_test { dt { "Test run" } dd { "Yes" } }
        }
        h2 { "Actions" }
        div.actions {
            @if !run.status.is_final() {
                form method="post" action=(format!("/dashboard/runs/{id}/cancel")) data-cancel-for=(id) {
                    (session.csrf_input())
                    button.danger type="submit" { "Cancel run" }
                }
            }
            form method="post" action=(format!("/dashboard/runs/{id}/replay")) {
                (session.csrf_input())
                button.secondary type="submit" { "Replay run" }
            }
            @if run.status == RunStatus::Delayed {
                form.inline method="post" action=(format!("/dashboard/runs/{id}/reschedule")) data-reschedule-for=(id) {
                    (session.csrf_input())
                    span {
                        label for="delay" { "Delay" }
                        input #delay name="delay" type="text" required placeholder="30s, 5m, 2h" aria-describedby="delay-hint";
                    }
                    button type="submit" { "Reschedule" }
                    span.hint #delay-hint { "From now: a duration (30s, 5m) or an ISO 8601 date." }
                }
            }
        }
        h2 { "Timeline" }
        (timeline(run, &detail.attempts))
        h2 { "Attempts" }
        @if view.attempts.is_empty() {
            p { "No attempts yet." }
        } @else {
            (page::table("Attempts", &["#", "Attempt", "Status", "Started", "Completed", "Error"], html! {
                @for (number, attempt) in detail.attempts.iter().enumerate() {
                    tr {
                        td { (number + 1) }
                        td { code { (attempt.id.as_str()) } }
                        td { (attempt.status.as_str()) }
                        td { (page::time_or_dash(attempt.started_at)) }
                        td { (page::time_or_dash(attempt.completed_at)) }
                        td.wrap { @if let Some(error) = &attempt.error { (error_text(error)) } @else { "—" } }
                    }
                }
            }))
        }
        h2 { "Payload" }
        (packet(view.payload.as_ref(), view.payload_presigned_url.as_deref(), "payload"))
        h2 { "Output" }
        @if let Some(error) = &view.error {
            p role="note" { strong { "Error: " } (error_text(error)) }
            @if let Some(stack) = error.get("stackTrace").and_then(Value::as_str) {
                details { summary { "Stack trace" } div.scroll { pre tabindex="0" { (stack) } } }
            }
        }
        (packet(view.output.as_ref(), view.output_presigned_url.as_deref(), "output"))
        h2 { "Tags" }
        @if run.tags.is_empty() { p { "No tags." } } @else { p { (tags(&run.tags)) } }
        h2 { "Metadata" }
        @match &view.common.metadata {
            Some(metadata) => (page::json_block(metadata)),
            None => p { "No metadata." },
        }
        h2 { "Related runs" }
        (related(&view))
        @if !events.is_empty() {
            h2 { "Logs" }
            ol.logs {
                @for event in &events {
                    li {
                        (page::time(DateTime::<Utc>::from_timestamp_nanos(event.event.start_ns)))
                        " " span.level { (event.event.level) }
                        @if event.event.kind.is_span() { "span " }
                        (event.event.name)
                        @if event.event.kind.is_span() && event.event.duration_ns > 0 {
                            " (" (page::duration(event.event.duration_ns / 1_000_000)) ")"
                        }
                    }
                }
            }
            @if events.len() as u32 >= EVENTS_SHOWN {
                p.hint { "The first " (EVENTS_SHOWN) " events; " code { "runnel runs logs" } " shows them all." }
            }
        }
    };
    Ok(page::ok(session, Area::Runs, &format!("Run {id}"), content))
}

/// A cost in cents, in dollars.
fn cost(cents: f64) -> String {
    format!("${:.6}", cents / 100.0)
}

/// An error's message as the view shows it (`{message, name?}`), or its JSON.
fn error_text(error: &Value) -> String {
    let message = error
        .get("message")
        .or_else(|| error.get("raw"))
        .and_then(Value::as_str);
    match (error.get("name").and_then(Value::as_str), message) {
        (Some(name), Some(message)) => format!("{name}: {message}"),
        (None, Some(message)) => message.to_owned(),
        _ => error.to_string(),
    }
}

/// A payload or output: inline pretty JSON, or a link when it is in object storage.
fn packet(value: Option<&Value>, presigned: Option<&str>, what: &str) -> Markup {
    html! {
        @if let Some(url) = presigned {
            p {
                "The " (what) " is in object storage: "
                a href=(url) rel="noreferrer" { "download the " (what) }
                " (the link is valid for a limited time)."
            }
        } @else if let Some(value) = value {
            (page::json_block(value))
        } @else {
            p { "No " (what) "." }
        }
    }
}

/// What happened to the run, in time order: its own timestamps and its attempts'.
fn timeline(run: &Run, attempts: &[runnel_core::run::Attempt]) -> Markup {
    let mut steps: Vec<(DateTime<Utc>, String)> = vec![(run.created_at, "Triggered".to_owned())];
    if let Some(at) = run.delay_until {
        steps.push((at, "Delayed until".to_owned()));
    }
    for (number, attempt) in attempts.iter().enumerate() {
        if let Some(at) = attempt.started_at {
            steps.push((at, format!("Attempt {} started", number + 1)));
        }
        if let Some(at) = attempt.completed_at {
            steps.push((
                at,
                format!("Attempt {} ended: {}", number + 1, attempt.status.as_str()),
            ));
        }
    }
    if let Some(at) = run.expired_at {
        steps.push((at, "Expired".to_owned()));
    }
    if let Some(at) = run.completed_at {
        steps.push((at, format!("Finished: {}", status_text(run.status))));
    }
    steps.sort_by_key(|(at, _)| *at);
    html! {
        ol.timeline {
            @for (at, what) in &steps {
                li { (page::time(*at)) " — " (what) }
            }
            @if !run.status.is_final() {
                li { "Now — " (status_text(run.status)) }
            }
        }
    }
}

fn related_item(relation: &str, run: &CommonRunFields) -> Markup {
    html! {
        li {
            (relation) ": "
            a href=(run_href(&run.id)) { (run.id) }
            " (" (run.task_identifier) ", " (run.status) ")"
        }
    }
}

fn related(view: &RetrieveRunResponse) -> Markup {
    let related = &view.related_runs;
    let none = related.root.is_none() && related.parent.is_none() && related.children.is_empty();
    html! {
        @if none {
            p { "None." }
        } @else {
            ul {
                @if let Some(root) = &related.root { (related_item("Root", root)) }
                @if let Some(parent) = &related.parent { (related_item("Parent", parent)) }
                @for child in &related.children { (related_item("Child", child)) }
            }
        }
    }
}

/// Back to the run's page after an action on it.
fn to_run(id: &str) -> Response {
    Redirect::to(&run_href(id)).into_response()
}

/// `POST /dashboard/runs/{id}/cancel`.
pub(crate) async fn cancel(
    State(state): State<AppState>,
    Path(raw): Path<String>,
    action: Action,
) -> Response {
    let result = async {
        let id = parse_id(&raw)?;
        state
            .engine
            .cancel(&action.session.environment, &id)
            .await?
            .ok_or_else(PageError::not_found)?;
        Ok::<_, PageError>(to_run(id.as_str()))
    }
    .await;
    action.session.respond(result)
}

/// `POST /dashboard/runs/{id}/replay`: to the new run's page.
pub(crate) async fn replay(
    State(state): State<AppState>,
    Path(raw): Path<String>,
    action: Action,
) -> Response {
    let result = async {
        let id = parse_id(&raw)?;
        let triggered = state
            .engine
            .replay(&action.session.environment, &id, ReplayRequest::default())
            .await?;
        Ok::<_, PageError>(to_run(triggered.id.as_str()))
    }
    .await;
    action.session.respond(result)
}

/// `POST /dashboard/runs/{id}/reschedule` (`delay`).
pub(crate) async fn reschedule(
    State(state): State<AppState>,
    Path(raw): Path<String>,
    action: Action,
) -> Response {
    let result = async {
        let id = parse_id(&raw)?;
        let delay = action.field("delay").trim();
        if delay.is_empty() {
            return Err(PageError::bad_request("Delay: required (e.g. 30s, 5m)."));
        }
        state
            .engine
            .reschedule(&action.session.environment, &id, delay)
            .await?;
        Ok(to_run(id.as_str()))
    }
    .await;
    action.session.respond(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_offered_status_is_a_filter_value_and_a_v4_status() {
        for status in statuses() {
            assert!(
                runnel_core::list::statuses_for_filter(status).is_some(),
                "{status}"
            );
            assert!(
                RunStatus::ALL.iter().any(|s| status_text(*s) == status),
                "{status}"
            );
        }
    }

    #[test]
    fn the_form_maps_to_the_api_query() {
        let pairs: Vec<(String, String)> = [
            ("status", "QUEUED"),
            ("task", " hello "),
            ("from", "2026-01-02T03:04"),
            ("after", "abc"),
        ]
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
        let filters = Filters::read(&pairs);
        let request = RunListRequest::parse(&filters.api_pairs());
        let issues = request.expect_err("a bad cursor");
        assert_eq!(Filters::field_name(&issues[0].path), "Page");
        let filters = Filters {
            after: String::new(),
            ..filters
        };
        let request = RunListRequest::parse(&filters.api_pairs()).unwrap();
        assert_eq!(request.filter.task_identifiers, vec!["hello".to_owned()]);
        assert_eq!(request.filter.statuses, vec![RunStatus::Queued]);
        assert!(request.created.from.is_some());
        assert_eq!(
            filters.page_link(("after", "c")),
            "/dashboard/runs?status=QUEUED&task=hello&from=2026-01-02T03%3A04&after=c"
        );
    }
}
