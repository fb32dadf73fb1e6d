//! What every page shares: the layout (navigation, sign-out form, assets), the error
//! pages ([`PageError`]) and the small formatting helpers (times, durations, JSON,
//! query strings).

use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use chrono::{DateTime, SecondsFormat, Utc};
use maud::{html, Markup, DOCTYPE};
use runnel_engine::ActionError;
use serde_json::Value;

use super::assets;
use super::signed_in::Session;
use crate::error::ApiError;

/// The areas of the navigation, in its order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Area {
    Runs,
    Queues,
    Schedules,
    Tokens,
    Keys,
    /// A page outside the areas (an error page).
    None,
}

const AREAS: [(Area, &str, &str); 5] = [
    (Area::Runs, "Runs", "/dashboard/runs"),
    (Area::Queues, "Queues", "/dashboard/queues"),
    (Area::Schedules, "Schedules", "/dashboard/schedules"),
    (Area::Tokens, "Tokens", "/dashboard/tokens"),
    (Area::Keys, "Keys", "/dashboard/keys"),
];

/// A whole document: `title` in the tab, `content` inside `<main>` (which holds the one
/// `<h1>`). With a session, the header has the navigation and the sign-out form.
pub(crate) fn document(title: &str, session: Option<(&Session, Area)>, content: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · Runnel" }
                link rel="stylesheet" href=(assets::css_url());
                script src=(assets::js_url()) defer {}
            }
            body {
                a.skip href="#main" { "Skip to content" }
                header.top {
                    span.brand { "Runnel" }
                    @if let Some((session, current)) = session {
                        nav aria-label="Dashboard" {
                            ul {
                                @for (area, name, href) in AREAS {
                                    li {
                                        @if area == current {
                                            a href=(href) aria-current="page" { (name) }
                                        } @else {
                                            a href=(href) { (name) }
                                        }
                                    }
                                }
                            }
                            form.signout method="post" action="/dashboard/logout" {
                                (session.csrf_input())
                                span.env title="The environment of this session" {
                                    (session.environment.kind.slug())
                                }
                                button type="submit" { "Sign out" }
                            }
                        }
                    }
                }
                main #main { (content) }
            }
        }
    }
}

/// A rendered page with its status.
pub(crate) fn respond(status: StatusCode, markup: Markup) -> Response {
    (status, Html(markup.into_string())).into_response()
}

/// A page in an area, 200.
pub(crate) fn ok(session: &Session, area: Area, title: &str, content: Markup) -> Response {
    respond(
        StatusCode::OK,
        document(title, Some((session, area)), content),
    )
}

/// Why a page or an action was refused: rendered as a page with this status and the
/// message in an alert (with the navigation when the session is known).
#[derive(Debug)]
pub(crate) struct PageError {
    pub status: StatusCode,
    pub message: String,
}

impl PageError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        PageError {
            status,
            message: message.into(),
        }
    }

    pub fn not_found() -> Self {
        PageError::new(
            StatusCode::NOT_FOUND,
            "Nothing here: no such page, or not in this environment.",
        )
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        PageError::new(StatusCode::FORBIDDEN, message)
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        PageError::new(StatusCode::BAD_REQUEST, message)
    }

    /// The error page, with the navigation of `session` when there is one.
    pub fn render(&self, session: Option<&Session>) -> Response {
        let title = match self.status {
            StatusCode::NOT_FOUND => "Not found",
            StatusCode::FORBIDDEN => "Forbidden",
            StatusCode::BAD_REQUEST => "Bad request",
            StatusCode::UNAUTHORIZED => "Unauthorized",
            status if status.is_server_error() => "Server error",
            _ => "Refused",
        };
        let content = html! {
            h1 { (title) }
            p role="alert" { (self.message) }
            p { a href=(super::HOME) { "Go to the run list" } }
        };
        respond(
            self.status,
            document(title, session.map(|s| (s, Area::None)), content),
        )
    }
}

impl From<ApiError> for PageError {
    fn from(error: ApiError) -> Self {
        let status = error.status();
        let message = match &error {
            ApiError::Internal(cause) => {
                tracing::error!(error = %cause, "dashboard request failed");
                "Internal Server Error: the server log has the cause.".to_owned()
            }
            ApiError::NotFound | ApiError::Missing(_) => return PageError::not_found(),
            other => other.to_string(),
        };
        PageError::new(status, message)
    }
}

impl From<runnel_engine::Error> for PageError {
    fn from(error: runnel_engine::Error) -> Self {
        ApiError::from(error).into()
    }
}

impl From<ActionError> for PageError {
    fn from(error: ActionError) -> Self {
        ApiError::action(error, "Run not found").into()
    }
}

/// Unknown dashboard paths: an HTML 404 (the session's navigation when there is one).
pub(crate) async fn not_found(session: Option<Session>) -> Response {
    PageError::not_found().render(session.as_ref())
}

/// A time as the pages show it: `<time>` with the ISO form for machines, UTC for people.
pub(crate) fn time(t: DateTime<Utc>) -> Markup {
    html! {
        time datetime=(t.to_rfc3339_opts(SecondsFormat::Millis, true)) {
            (t.format("%Y-%m-%d %H:%M:%S UTC"))
        }
    }
}

/// [`time`], or a dash when there is none.
pub(crate) fn time_or_dash(t: Option<DateTime<Utc>>) -> Markup {
    match t {
        Some(t) => time(t),
        None => html! { "—" },
    }
}

/// A duration in milliseconds for people: `850 ms`, `12.3 s`, `4 min 05 s`, `2 h 03 min`.
pub(crate) fn duration(ms: i64) -> String {
    let ms = ms.max(0);
    match ms {
        0..=999 => format!("{ms} ms"),
        1_000..=59_999 => format!("{:.1} s", ms as f64 / 1000.0),
        60_000..=3_599_999 => format!("{} min {:02} s", ms / 60_000, (ms / 1000) % 60),
        _ => format!("{} h {:02} min", ms / 3_600_000, (ms / 60_000) % 60),
    }
}

/// The most of a JSON value a page inlines; past it the text is cut with a note.
const INLINE_JSON_MAX_BYTES: usize = 64 * 1024;

/// A JSON value, pretty-printed in a `<pre>` (cut at [`INLINE_JSON_MAX_BYTES`]).
pub(crate) fn json_block(value: &Value) -> Markup {
    let text = serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string());
    let total = text.len();
    let shown = if total > INLINE_JSON_MAX_BYTES {
        let mut end = INLINE_JSON_MAX_BYTES;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        &text[..end]
    } else {
        &text[..]
    };
    html! {
        div.scroll {
            pre.json tabindex="0" { code { (shown) } }
        }
        @if shown.len() < total {
            p.hint { "Shown: the first " (shown.len()) " of " (total) " bytes." }
        }
    }
}

/// Percent-encodes a query-string component (everything but RFC 3986's unreserved
/// characters).
pub(crate) fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// `path?k=v&…` of the non-empty pairs.
pub(crate) fn link(path: &str, pairs: &[(&str, &str)]) -> String {
    let query: Vec<String> = pairs
        .iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
        .collect();
    if query.is_empty() {
        path.to_owned()
    } else {
        format!("{path}?{}", query.join("&"))
    }
}

/// A table in a wrapper that scrolls sideways on a narrow screen (focusable, so a
/// keyboard can scroll it too), labelled by `label`.
pub(crate) fn table(label: &str, head: &[&str], body: Markup) -> Markup {
    html! {
        div.scroll role="region" aria-label=(label) tabindex="0" {
            table {
                thead { tr { @for name in head { th scope="col" { (name) } } } }
                tbody { (body) }
            }
        }
    }
}

impl Session {
    /// The page for `result`: the response, or the error page with this session's
    /// navigation.
    pub fn respond(&self, result: Result<Response, PageError>) -> Response {
        result.unwrap_or_else(|error| error.render(Some(self)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_at_every_scale() {
        assert_eq!(duration(0), "0 ms");
        assert_eq!(duration(850), "850 ms");
        assert_eq!(duration(12_345), "12.3 s");
        assert_eq!(duration(245_000), "4 min 05 s");
        assert_eq!(duration(7_380_000), "2 h 03 min");
    }

    #[test]
    fn links_encode_their_values_and_drop_empty_ones() {
        assert_eq!(
            link(
                "/dashboard/runs",
                &[("task", "a b&c"), ("tag", ""), ("status", "QUEUED")]
            ),
            "/dashboard/runs?task=a%20b%26c&status=QUEUED"
        );
        assert_eq!(link("/x", &[("a", "")]), "/x");
    }

    #[test]
    fn user_text_is_escaped() {
        let markup = html! { p { ("<script>alert(1)</script>") } }.into_string();
        assert_eq!(markup, "<p>&lt;script&gt;alert(1)&lt;/script&gt;</p>");
        let long = Value::String("x".repeat(INLINE_JSON_MAX_BYTES * 2));
        let block = json_block(&long).into_string();
        assert!(
            block.contains("Shown: the first"),
            "{}",
            &block[block.len() - 200..]
        );
    }
}
