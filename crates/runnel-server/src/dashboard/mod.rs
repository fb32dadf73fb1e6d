//! The dashboard: server-rendered HTML pages under `/dashboard`, served by `runnel serve`
//! itself (no front-end server, no build step). The browser tests find things by the
//! markup's names (headings, link, button and label texts) and by the `data-run-id`,
//! `data-queue-name` and `data-field` attributes: keep them stable.
//!
//! - **Pages** are [`maud`] templates (compiled in, every interpolation escaped), one
//!   module per area: [`runs`], [`queues`], [`schedules`], [`tokens`], [`keys`]. Each
//!   handler only translates: it reads with the engine calls the API handlers use, scoped
//!   to the session's environment, and renders; a refusal is a [`page::PageError`].
//! - **Sessions** ([`session`]): sign-in with a secret key; an HTTP-only, signed cookie
//!   that stops working when that key is revoked. Every POST is an [`session::Action`],
//!   which checks the request's `Origin` and the form's CSRF token.
//! - **Live updates** ([`live`]): a server-sent event stream of the watched runs'
//!   statuses, fed by the engine's run changes; the embedded script updates the status
//!   cells in place.
//! - **Assets** ([`assets`]): one stylesheet and one small script, embedded in the binary
//!   and served under a content-hashed name with a year-long cache.
//!
//! Every page is served from indexes: the run list is the API's keyset page (25 rows),
//! a run page reads one run and its own attempts, children and events, and the other
//! lists are pages of their tables.

use axum::http::header::{CACHE_CONTROL, CONTENT_SECURITY_POLICY, REFERRER_POLICY};
use axum::http::{HeaderName, HeaderValue};
use axum::middleware::map_response;
use axum::response::{Redirect, Response};
use axum::routing::{get, post};
use axum::Router;

use crate::state::AppState;

mod assets;
mod keys;
mod live;
mod page;
mod queues;
mod runs;
mod schedules;
mod session;
mod signed_in;
mod tokens;

/// Where the dashboard starts.
const HOME: &str = "/dashboard/runs";

/// The dashboard's routes, merged into the application's router.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(home))
        .route("/dashboard", get(home))
        .route(
            "/dashboard/login",
            get(session::login_form).post(session::login),
        )
        .route("/dashboard/logout", post(session::logout))
        .route("/dashboard/assets/{name}", get(assets::serve))
        .route("/dashboard/events", get(live::events))
        .route("/dashboard/runs", get(runs::list))
        .route("/dashboard/runs/{run_id}", get(runs::show))
        .route("/dashboard/runs/{run_id}/cancel", post(runs::cancel))
        .route("/dashboard/runs/{run_id}/replay", post(runs::replay))
        .route(
            "/dashboard/runs/{run_id}/reschedule",
            post(runs::reschedule),
        )
        .route("/dashboard/queues", get(queues::list))
        .route("/dashboard/queues/{queue_id}/pause", post(queues::pause))
        .route("/dashboard/queues/{queue_id}/resume", post(queues::resume))
        .route("/dashboard/queues/{queue_id}/limit", post(queues::limit))
        .route("/dashboard/queues/{queue_id}/reset", post(queues::reset))
        .route("/dashboard/schedules", get(schedules::list))
        .route(
            "/dashboard/schedules/{schedule_id}/activate",
            post(schedules::activate),
        )
        .route(
            "/dashboard/schedules/{schedule_id}/deactivate",
            post(schedules::deactivate),
        )
        .route("/dashboard/tokens", get(tokens::list))
        .route(
            "/dashboard/tokens/{token_id}/complete",
            post(tokens::complete),
        )
        .route("/dashboard/keys", get(keys::list))
        .route("/dashboard/{*rest}", get(page::not_found))
        .layer(map_response(protect))
}

async fn home() -> Redirect {
    Redirect::to(HOME)
}

/// Headers every dashboard response carries: only this origin's script and style run
/// (no inline script at all), the pages are never framed, HTML is never cached (the
/// assets set their own long cache), and no URL leaks to other sites in `Referer`.
async fn protect(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
             connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'",
        ),
    );
    headers.insert(REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    headers.insert(
        HeaderName::from_static("x-content-type-options"),
        HeaderValue::from_static("nosniff"),
    );
    if !headers.contains_key(CACHE_CONTROL) {
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}
