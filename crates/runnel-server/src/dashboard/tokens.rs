//! The waitpoint tokens page: the environment's tokens newest first, a page after
//! (older) or before (newer) a token ([`Engine::token_list`], as
//! `GET /api/v1/waitpoints/tokens`), and completing a waiting token with JSON output
//! ([`Engine::token_complete`], as `POST /api/v1/waitpoints/tokens/{id}/complete`).
//!
//! [`Engine::token_list`]: runnel_engine::Engine::token_list
//! [`Engine::token_complete`]: runnel_engine::Engine::token_complete

use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Redirect, Response};
use maud::html;
use runnel_core::waitpoint::{TokenListQuery, TokenStatus};
use runnel_core::WaitpointId;
use serde::Deserialize;
use serde_json::Value;

use super::page::{self, Area, PageError};
use super::session::{Action, Session};
use crate::state::AppState;

const PER_PAGE: u32 = 25;
const HREF: &str = "/dashboard/tokens";

#[derive(Debug, Deserialize)]
pub(crate) struct TokenPageQuery {
    after: Option<String>,
    before: Option<String>,
}

/// `GET /dashboard/tokens`.
pub(crate) async fn list(
    State(state): State<AppState>,
    session: Session,
    Query(query): Query<TokenPageQuery>,
) -> Response {
    let cursor = |raw: &Option<String>| raw.as_deref().and_then(WaitpointId::parse);
    let (after, before) = match (cursor(&query.after), cursor(&query.before)) {
        (Some(after), _) => (Some(after), None),
        (None, before) => (None, before),
    };
    let newer_page = before.is_some();
    let older_page = after.is_some();
    let result = async {
        let mut tokens = state
            .engine
            .token_list(
                &session.environment,
                &TokenListQuery {
                    after,
                    before,
                    limit: PER_PAGE + 1,
                    ..TokenListQuery::default()
                },
            )
            .await?;
        let more = tokens.len() > PER_PAGE as usize;
        tokens.truncate(PER_PAGE as usize);
        if newer_page {
            tokens.reverse();
        }
        // Older tokens exist past a full page or past a `before` page; newer ones past
        // an `after` page or a full `before` page (as the API's pagination).
        let next = tokens
            .last()
            .filter(|_| newer_page || more)
            .map(|t| t.id.to_string());
        let previous = tokens
            .first()
            .filter(|_| older_page || (newer_page && more))
            .map(|t| t.id.to_string());
        let content = html! {
            h1 { "Waitpoint tokens" }
            @if tokens.is_empty() {
                p { "No waitpoint tokens." }
            } @else {
                (page::table("Waitpoint tokens", &["Token", "Status", "Timeout", "Tags", "Created", "Complete"], html! {
                    @for token in &tokens {
                        @let id = token.id.as_str();
                        @let status = token.token_status();
                        tr data-token-id=(id) {
                            td { code { (id) } }
                            td data-field="status" { (status.as_str()) }
                            td { (page::time_or_dash(token.timeout_at)) }
                            td.wrap { @for tag in &token.tags { span.tag { (tag) } } }
                            td { (page::time(token.created_at)) }
                            td {
                                @if status == TokenStatus::Waiting {
                                    form.inline method="post" action=(format!("{HREF}/{id}/complete")) {
                                        (session.csrf_input())
                                        span {
                                            label for=(format!("output-{id}")) { "Output JSON" }
                                            textarea id=(format!("output-{id}")) name="output" rows="2" cols="28"
                                                spellcheck="false" placeholder="{\"ok\": true}" {}
                                        }
                                        button type="submit" { "Complete" }
                                    }
                                } @else {
                                    "—"
                                }
                            }
                        }
                    }
                }))
            }
            nav.pager aria-label="Pages" {
                @if let Some(previous) = &previous {
                    a href=(page::link(HREF, &[("before", previous)])) rel="prev" { "Previous page" }
                }
                @if let Some(next) = &next {
                    a href=(page::link(HREF, &[("after", next)])) rel="next" { "Next page" }
                }
            }
        };
        Ok::<_, PageError>(page::ok(
            &session,
            Area::Tokens,
            "Waitpoint tokens",
            content,
        ))
    };
    let result = result.await;
    session.respond(result)
}

/// `POST /dashboard/tokens/{id}/complete` (`output`: JSON, or empty for none).
pub(crate) async fn complete(
    State(state): State<AppState>,
    Path(raw): Path<String>,
    action: Action,
) -> Response {
    let result = async {
        let id = WaitpointId::parse(&raw).ok_or_else(PageError::not_found)?;
        let text = action.field("output").trim();
        let data = if text.is_empty() {
            None
        } else {
            crate::extract::check_body_depth(text.as_bytes())?;
            Some(serde_json::from_str::<Value>(text).map_err(|e| {
                PageError::bad_request(format!("Output JSON: not valid JSON ({e})."))
            })?)
        };
        let output = crate::waitpoints::token_output(data);
        if !state
            .engine
            .token_complete(&action.session.environment, &id, &output)
            .await?
        {
            return Err(PageError::not_found());
        }
        Ok(Redirect::to(HREF).into_response())
    }
    .await;
    action.session.respond(result)
}
