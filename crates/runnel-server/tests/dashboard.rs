//! The dashboard over HTTP against a server built as `runnel serve` builds it, in the
//! test process (`runnel_testkit::TestApp`): sign-in and sessions (a revoked key ends
//! its sessions), CSRF and cross-site refusals, the runs pages with their filters and
//! environment scoping, the run actions and queue actions through their forms, the
//! other pages, and the live status stream.
//!
//! A [`Browser`] is a client that keeps cookies and does not follow redirects, so each
//! test sees the 303s and the cookies as a browser receives them.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use reqwest::header::{HeaderMap, LOCATION, SET_COOKIE};
use reqwest::{Method, StatusCode};
use runnel_testkit::{send, TestApp, CURRENT_API_VERSION, SERVICE_TIMEOUT};
use serde_json::{json, Value};

/// A page as the browser received it.
#[derive(Debug)]
struct Page {
    status: StatusCode,
    headers: HeaderMap,
    text: String,
}

impl Page {
    fn location(&self) -> &str {
        self.headers
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_else(|| panic!("no Location: {self:?}"))
    }

    /// The first hidden `csrf` field's value.
    fn csrf(&self) -> String {
        let marker = r#"name="csrf" value=""#;
        let start = self
            .text
            .find(marker)
            .unwrap_or_else(|| panic!("no csrf field in {}", self.text))
            + marker.len();
        let end = self.text[start..].find('"').unwrap() + start;
        self.text[start..end].to_owned()
    }

    /// The `<tr …>` of the row whose attribute `attribute` is `value`, to its `</tr>`.
    fn row(&self, attribute: &str, value: &str) -> &str {
        let marker = format!(r#"{attribute}="{value}""#);
        let start = self
            .text
            .find(&marker)
            .unwrap_or_else(|| panic!("no row {marker} in {}", self.text));
        let end = self.text[start..].find("</tr>").unwrap() + start;
        &self.text[start..end]
    }

    fn assert(&self, status: StatusCode) -> &Self {
        assert_eq!(self.status, status, "{}", self.text);
        self
    }
}

/// A browser: a cookie jar, no redirects followed.
struct Browser {
    url: String,
    client: reqwest::Client,
    cookies: HashMap<String, String>,
}

impl Browser {
    fn new(app: &TestApp) -> Browser {
        Browser {
            url: app.server.url.clone(),
            client: reqwest::Client::builder()
                .no_proxy()
                .redirect(reqwest::redirect::Policy::none())
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap(),
            cookies: HashMap::new(),
        }
    }

    fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        let mut request = self.client.request(method, format!("{}{path}", self.url));
        if !self.cookies.is_empty() {
            let header: Vec<String> = self
                .cookies
                .iter()
                .map(|(name, value)| format!("{name}={value}"))
                .collect();
            request = request.header("cookie", header.join("; "));
        }
        request
    }

    async fn send(&mut self, request: reqwest::RequestBuilder) -> Page {
        let response = request.send().await.expect("sending the request");
        let status = response.status();
        let headers = response.headers().clone();
        for value in headers.get_all(SET_COOKIE) {
            let text = value.to_str().unwrap();
            let (pair, _) = text.split_once(';').unwrap_or((text, ""));
            let (name, value) = pair.split_once('=').unwrap();
            if value.is_empty() || text.contains("Max-Age=0") {
                self.cookies.remove(name);
            } else {
                self.cookies.insert(name.to_owned(), value.to_owned());
            }
        }
        let text = response.text().await.expect("reading the body");
        Page {
            status,
            headers,
            text,
        }
    }

    async fn get(&mut self, path: &str) -> Page {
        let request = self.request(Method::GET, path);
        self.send(request).await
    }

    async fn post(&mut self, path: &str, fields: &[(&str, &str)]) -> Page {
        let request = self.request(Method::POST, path).form(fields);
        self.send(request).await
    }

    /// Signs in with `key` through the form; returns the answer to the POST.
    async fn sign_in(&mut self, key: &str) -> Page {
        let form = self.get("/dashboard/login").await;
        form.assert(StatusCode::OK);
        let csrf = form.csrf();
        self.post("/dashboard/login", &[("key", key), ("csrf", &csrf)])
            .await
    }

    /// Signs in and asserts it worked.
    async fn signed_in(app: &TestApp, key: &str) -> Browser {
        let mut browser = Browser::new(app);
        let page = browser.sign_in(key).await;
        assert_eq!(page.status, StatusCode::SEE_OTHER, "{page:?}");
        assert_eq!(page.location(), "/dashboard/runs");
        browser
    }

    /// A POST from a page at `path`: with that page's CSRF token.
    async fn post_from(&mut self, path: &str, action: &str, fields: &[(&str, &str)]) -> Page {
        let page = self.get(path).await;
        page.assert(StatusCode::OK);
        let csrf = page.csrf();
        let mut fields = fields.to_vec();
        fields.push(("csrf", &csrf));
        self.post(action, &fields).await
    }
}

/// A queued run of task `t` (a worker serves the task, so it is not waiting for one).
async fn queued_run(app: &TestApp, key: &str, body: Value) -> String {
    app.server.register_worker(key, &["t"]).await;
    app.server.trigger_new(key, "t", &body).await
}

/// The run's v4 status through the API.
async fn api_status(app: &TestApp, key: &str, run: &str) -> String {
    let reply = app.server.retrieve_as(key, run, CURRENT_API_VERSION).await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    reply.body["status"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn sign_in_takes_a_live_secret_key_and_nothing_else() {
    let app = TestApp::start();
    let mut browser = Browser::new(&app);

    // Outside the `/api` guard: no 401 problem, a redirect into the dashboard.
    let root = browser.get("/").await;
    assert_eq!(
        (root.status, root.location()),
        (StatusCode::SEE_OTHER, "/dashboard/runs")
    );
    for path in [
        "/dashboard/runs",
        "/dashboard/queues",
        "/dashboard/keys",
        "/dashboard/runs/run_abc",
    ] {
        let page = browser.get(path).await;
        assert_eq!(
            (page.status, page.location()),
            (StatusCode::SEE_OTHER, "/dashboard/login"),
            "{path}"
        );
    }

    let form = browser.get("/dashboard/login").await;
    form.assert(StatusCode::OK);
    assert!(form.text.contains("<h1>Sign in</h1>"), "{}", form.text);
    assert!(
        form.text.contains(r#"<label for="key">Secret key</label>"#)
            && form.text.contains(r#"type="password" name="key""#),
        "{}",
        form.text
    );
    assert!(browser.cookies.contains_key("runnel_login_csrf"));
    let csrf = form.csrf();

    // A wrong key, a well-formed unknown key, no key: 401 with the alert, no session.
    for key in ["nope", "tr_dev_abcdefghijklmnopqrstuvwx", ""] {
        let page = browser
            .post("/dashboard/login", &[("key", key), ("csrf", &csrf)])
            .await;
        page.assert(StatusCode::UNAUTHORIZED);
        assert!(
            page.text.contains(r#"role="alert""#) && page.text.contains("Invalid secret key"),
            "{}",
            page.text
        );
        assert!(!browser.cookies.contains_key("runnel_session"));
    }
    // The login form's CSRF value is required too.
    let page = browser
        .post(
            "/dashboard/login",
            &[("key", app.dev_key.as_str()), ("csrf", "x")],
        )
        .await;
    page.assert(StatusCode::FORBIDDEN);

    let page = browser.sign_in(&app.dev_key).await;
    assert_eq!(
        (page.status, page.location()),
        (StatusCode::SEE_OTHER, "/dashboard/runs")
    );
    let cookie = page
        .headers
        .get_all(SET_COOKIE)
        .iter()
        .map(|v| v.to_str().unwrap())
        .find(|v| v.starts_with("runnel_session="))
        .expect("a session cookie");
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(cookie.contains(attribute), "{cookie}");
    }
    assert!(!cookie.contains("Secure"), "plain http: {cookie}");
    assert!(!cookie.contains(&app.dev_key), "{cookie}");

    let runs = browser.get("/dashboard/runs").await;
    runs.assert(StatusCode::OK);
    assert!(runs.text.contains("<h1>Runs</h1>"), "{}", runs.text);
    assert!(runs.text.contains(r#"<nav aria-label="Dashboard">"#));
    for link in ["Runs", "Queues", "Schedules", "Tokens", "Keys"] {
        assert!(runs.text.contains(&format!(">{link}</a>")), "{link}");
    }
    assert!(runs.text.contains("Sign out</button>"));

    // The session is no API credential.
    let token = browser.cookies["runnel_session"].clone();
    let reply = send(
        app.server
            .request(Method::GET, "/api/v1/runs")
            .bearer_auth(&token),
    )
    .await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{reply:?}");

    // Signing out clears the cookie; the pages then send to the sign-in page.
    let out = browser
        .post_from("/dashboard/runs", "/dashboard/logout", &[])
        .await;
    assert_eq!(
        (out.status, out.location()),
        (StatusCode::SEE_OTHER, "/dashboard/login")
    );
    assert!(!browser.cookies.contains_key("runnel_session"));
    let page = browser.get("/dashboard/runs").await;
    assert_eq!(page.status, StatusCode::SEE_OTHER);
}

#[tokio::test]
async fn revoking_the_key_ends_its_sessions_at_once() {
    let app = TestApp::start();
    let key = app.keys_create("dev");
    let mut browser = Browser::signed_in(&app, &key).await;
    browser.get("/dashboard/runs").await.assert(StatusCode::OK);
    // The keys page lists the prefixes, never a key.
    let keys = browser.get("/dashboard/keys").await;
    keys.assert(StatusCode::OK);
    let prefix = &key[..key.len() - 24 + 6];
    assert!(keys.text.contains(prefix), "{}", keys.text);
    assert!(!keys.text.contains(&key) && !keys.text.contains(&app.dev_key));

    app.revoke(prefix);
    let page = browser.get("/dashboard/runs").await;
    assert_eq!(
        (page.status, page.location()),
        (StatusCode::SEE_OTHER, "/dashboard/login")
    );
    // Another session, of a live key of the same environment, goes on.
    let mut other = Browser::signed_in(&app, &app.dev_key).await;
    other.get("/dashboard/runs").await.assert(StatusCode::OK);
}

#[tokio::test]
async fn every_action_needs_the_sessions_csrf_token_and_this_origin() {
    let app = TestApp::start();
    let key = app.dev_key.as_str();
    let run = queued_run(&app, key, json!({"payload": {"a": 1}})).await;
    let mut browser = Browser::signed_in(&app, key).await;
    let path = format!("/dashboard/runs/{run}");
    let cancel = format!("{path}/cancel");

    let page = browser.post(&cancel, &[]).await;
    page.assert(StatusCode::FORBIDDEN);
    assert!(page.text.contains(r#"role="alert""#));
    let page = browser
        .post(&cancel, &[("csrf", "0".repeat(64).as_str())])
        .await;
    page.assert(StatusCode::FORBIDDEN);
    // Another session's token is no good either.
    let mut other = Browser::signed_in(&app, &app.keys_create("dev")).await;
    let foreign = other.get("/dashboard/runs").await.csrf();
    let page = browser.post(&cancel, &[("csrf", foreign.as_str())]).await;
    page.assert(StatusCode::FORBIDDEN);
    // The right token from another site.
    let csrf = browser.get(&path).await.csrf();
    let request = browser
        .request(Method::POST, &cancel)
        .header("origin", "http://evil.example")
        .form(&[("csrf", csrf.as_str())]);
    browser.send(request).await.assert(StatusCode::FORBIDDEN);
    assert_eq!(api_status(&app, key, &run).await, "QUEUED");

    // This origin, the right token: canceled, back on the run's page.
    let request = browser
        .request(Method::POST, &cancel)
        .header("origin", &app.server.url)
        .form(&[("csrf", csrf.as_str())]);
    let page = browser.send(request).await;
    assert_eq!(
        (page.status, page.location()),
        (StatusCode::SEE_OTHER, path.as_str())
    );
    assert_eq!(api_status(&app, key, &run).await, "CANCELED");
    let page = browser.get(&path).await;
    page.assert(StatusCode::OK);
    assert!(
        page.text
            .contains(r#"data-field="status" data-status="CANCELED">CANCELED<"#),
        "{}",
        page.text
    );
    assert!(
        !page.text.contains("Cancel run"),
        "a final run has no cancel form"
    );
}

#[tokio::test]
async fn the_runs_page_lists_filters_and_pages_and_the_run_page_shows_the_run() {
    let app = TestApp::start();
    let key = app.dev_key.as_str();
    let run = queued_run(
        &app,
        key,
        json!({"payload": {"greeting": "<b>hi</b>"}, "options": {"tags": ["blue"], "metadata": {"m": 1}}}),
    )
    .await;
    let mut browser = Browser::signed_in(&app, key).await;

    let page = browser.get("/dashboard/runs").await;
    page.assert(StatusCode::OK);
    let row = page.row("data-run-id", &run);
    assert!(
        row.contains(&format!(r#"<a href="/dashboard/runs/{run}">{run}</a>"#)),
        "{row}"
    );
    assert!(
        row.contains(r#"data-field="status" data-status="QUEUED">QUEUED<"#),
        "{row}"
    );
    assert!(row.contains(">blue<"), "{row}");

    for query in [
        "status=QUEUED",
        "task=t",
        "tag=blue",
        "status=QUEUED&task=t&from=2020-01-01T00:00",
    ] {
        let page = browser.get(&format!("/dashboard/runs?{query}")).await;
        page.assert(StatusCode::OK);
        assert!(page.text.contains(&run), "{query}");
    }
    for query in [
        "status=COMPLETED",
        "task=other",
        "tag=red",
        "to=2020-01-01T00:00",
    ] {
        let page = browser.get(&format!("/dashboard/runs?{query}")).await;
        page.assert(StatusCode::OK);
        assert!(!page.text.contains(&run), "{query}");
        assert!(page.text.contains("No runs match."), "{query}");
    }
    let page = browser.get("/dashboard/runs?from=yesterday").await;
    page.assert(StatusCode::BAD_REQUEST);
    assert!(page.text.contains(r#"role="alert""#) && page.text.contains("Created from"));

    // The run page: its sections, its payload escaped and pretty, its actions.
    let page = browser.get(&format!("/dashboard/runs/{run}")).await;
    page.assert(StatusCode::OK);
    for section in [
        "Timeline",
        "Attempts",
        "Payload",
        "Output",
        "Tags",
        "Metadata",
        "Related runs",
    ] {
        assert!(
            page.text.contains(&format!("<h2>{section}</h2>")),
            "{section}"
        );
    }
    assert!(
        page.text
            .contains(&format!("<h1>Run <code>{run}</code></h1>")),
        "{}",
        page.text
    );
    assert!(
        page.text.contains("&lt;b&gt;hi&lt;/b&gt;"),
        "escaped payload"
    );
    assert!(!page.text.contains("<b>hi</b>"));
    assert!(page.text.contains("Cancel run</button>") && page.text.contains("Replay run</button>"));
    assert!(!page.text.contains("Reschedule</button>"), "not delayed");

    // No events, no logs section; a log line the task process exported is listed,
    // escaped.
    assert!(!page.text.contains("<h2>Logs</h2>"));
    let record = json!({"resourceLogs": [{"resource": {"attributes": []}, "scopeLogs": [{
        "scope": {"name": "trigger.dev"},
        "logRecords": [{
            "timeUnixNano": "1767323045000000000", "severityNumber": 9, "severityText": "INFO",
            "body": {"stringValue": "hello from <i>the task</i>"},
            "attributes": [{"key": "$metadata.ctx.run.id", "value": {"stringValue": run}}],
            "traceId": "5b8efff798038103d269b633813fc60c", "spanId": "aaa19b7ec3c1b174",
        }],
    }]}]});
    let reply = send(
        app.server
            .request(Method::POST, "/otel/v1/logs")
            .header("content-type", "application/json")
            .body(record.to_string()),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    let page = browser.get(&format!("/dashboard/runs/{run}")).await;
    assert!(page.text.contains("<h2>Logs</h2>"), "{}", page.text);
    assert!(
        page.text.contains("hello from &lt;i&gt;the task&lt;/i&gt;"),
        "{}",
        page.text
    );

    // A child run links to its parent, and the parent to its child.
    let child = app
        .server
        .trigger_new(key, "t", &json!({"options": {"parentRunId": run}}))
        .await;
    let page = browser.get(&format!("/dashboard/runs/{child}")).await;
    assert!(
        page.text.contains(&format!(
            r#"Parent: <a href="/dashboard/runs/{run}">{run}</a>"#
        )),
        "{}",
        page.text
    );
    let page = browser.get(&format!("/dashboard/runs/{run}")).await;
    assert!(
        page.text.contains(&format!(
            r#"Child: <a href="/dashboard/runs/{child}">{child}</a>"#
        )),
        "{}",
        page.text
    );

    // Replay: a new run, and its page.
    let csrf = page.csrf();
    let replayed = browser
        .post(&format!("/dashboard/runs/{run}/replay"), &[("csrf", &csrf)])
        .await;
    replayed.assert(StatusCode::SEE_OTHER);
    let location = replayed.location().to_owned();
    let new_id = location.strip_prefix("/dashboard/runs/").unwrap();
    assert_ne!(new_id, run);
    assert_eq!(api_status(&app, key, new_id).await, "QUEUED");

    // A delayed run: rescheduled through its form; a bad delay is refused.
    let delayed = app
        .server
        .trigger_new(key, "t", &json!({"options": {"delay": "1h"}}))
        .await;
    let path = format!("/dashboard/runs/{delayed}");
    let page = browser.get(&path).await;
    assert!(
        page.text.contains(r#"<label for="delay">Delay</label>"#),
        "{}",
        page.text
    );
    let bad = browser
        .post_from(&path, &format!("{path}/reschedule"), &[("delay", "soon")])
        .await;
    bad.assert(StatusCode::BAD_REQUEST);
    let before = app.server.run(key, &delayed).await["delayedUntil"].clone();
    let done = browser
        .post_from(&path, &format!("{path}/reschedule"), &[("delay", "2h")])
        .await;
    assert_eq!(
        (done.status, done.location()),
        (StatusCode::SEE_OTHER, path.as_str())
    );
    let after = app.server.run(key, &delayed).await["delayedUntil"].clone();
    assert_ne!(before, after);
}

/// The `href` of the link whose text is `text`, unescaped.
fn href_of(page: &Page, text: &str) -> Option<String> {
    let end = page.text.find(&format!(">{text}</a>"))?;
    let start = page.text[..end].rfind("href=\"")? + "href=\"".len();
    let close = page.text[start..].find('"')? + start;
    Some(page.text[start..close].replace("&amp;", "&"))
}

#[tokio::test]
async fn the_runs_list_pages_with_its_cursors_keeping_the_filters() {
    let app = TestApp::start();
    let key = app.dev_key.as_str();
    app.server.register_worker(key, &["p"]).await;
    let mut runs = Vec::new();
    for _ in 0..26 {
        runs.push(app.server.trigger_new(key, "p", &json!({})).await);
    }
    // Another task's run, filtered out on every page.
    let other = queued_run(&app, key, json!({})).await;
    let (oldest, newest) = (runs[0].clone(), runs[25].clone());
    let mut browser = Browser::signed_in(&app, key).await;

    let first = browser.get("/dashboard/runs?task=p").await;
    first.assert(StatusCode::OK);
    assert_eq!(first.text.matches("<tr data-run-id=").count(), 25);
    assert!(first.text.contains(&newest) && !first.text.contains(&oldest));
    assert!(!first.text.contains(&other));
    assert!(href_of(&first, "Previous page").is_none());
    let next = href_of(&first, "Next page").expect("a next page");
    assert!(next.contains("task=p") && next.contains("after="), "{next}");

    let second = browser.get(&next).await;
    second.assert(StatusCode::OK);
    assert_eq!(second.text.matches("<tr data-run-id=").count(), 1);
    assert!(second.text.contains(&oldest));
    assert!(href_of(&second, "Next page").is_none());
    let previous = href_of(&second, "Previous page").expect("a previous page");
    let back = browser.get(&previous).await;
    assert_eq!(back.text.matches("<tr data-run-id=").count(), 25);
    assert!(back.text.contains(&newest) && !back.text.contains(&oldest));
}

#[tokio::test]
async fn another_environments_session_sees_none_of_its_runs() {
    let app = TestApp::start();
    let key = app.dev_key.as_str();
    let run = queued_run(&app, key, json!({})).await;
    let mut prod = Browser::signed_in(&app, &app.keys_create("prod")).await;

    let page = prod.get("/dashboard/runs").await;
    page.assert(StatusCode::OK);
    assert!(!page.text.contains(&run));
    assert!(page.text.contains("No runs match."));
    prod.get(&format!("/dashboard/runs/{run}"))
        .await
        .assert(StatusCode::NOT_FOUND);
    let page = prod
        .post_from(
            "/dashboard/runs",
            &format!("/dashboard/runs/{run}/cancel"),
            &[],
        )
        .await;
    page.assert(StatusCode::NOT_FOUND);
    assert_eq!(api_status(&app, key, &run).await, "QUEUED");

    let mut dev = Browser::signed_in(&app, key).await;
    assert!(dev.get("/dashboard/runs").await.text.contains(&run));
}

#[tokio::test]
async fn a_queue_is_paused_resumed_and_limited_through_its_forms() {
    let app = TestApp::start();
    let key = app.dev_key.as_str();
    app.server.register_worker(key, &["hello"]).await;
    let mut browser = Browser::signed_in(&app, key).await;

    let page = browser.get("/dashboard/queues").await;
    page.assert(StatusCode::OK);
    assert!(page.text.contains("<h1>Queues</h1>"));
    let row = page.row("data-queue-name", "task/hello").to_owned();
    assert!(row.contains(r#"data-field="state">Running<"#), "{row}");
    let action = |row: &str, suffix: &str| {
        let end = row
            .find(&format!("/{suffix}\""))
            .unwrap_or_else(|| panic!("{row}"));
        let start = row[..end].rfind("/dashboard/queues/").unwrap();
        format!("{}/{suffix}", &row[start..end])
    };
    let pause = action(&row, "pause");
    let done = browser.post_from("/dashboard/queues", &pause, &[]).await;
    assert_eq!(
        (done.status, done.location()),
        (StatusCode::SEE_OTHER, "/dashboard/queues")
    );
    let reply = send(
        app.server
            .request(Method::GET, "/api/v1/queues/hello?type=task")
            .bearer_auth(key),
    )
    .await;
    assert_eq!(reply.body["paused"], true, "{reply:?}");
    let page = browser.get("/dashboard/queues").await;
    let row = page.row("data-queue-name", "task/hello").to_owned();
    assert!(row.contains(r#"data-field="state">Paused<"#), "{row}");
    assert!(row.contains("Resume</button>"), "{row}");

    let limit = action(&row, "limit");
    let bad = browser
        .post_from("/dashboard/queues", &limit, &[("limit", "-1")])
        .await;
    bad.assert(StatusCode::BAD_REQUEST);
    browser
        .post_from("/dashboard/queues", &limit, &[("limit", "3")])
        .await
        .assert(StatusCode::SEE_OTHER);
    let resume = action(&row, "resume");
    browser
        .post_from("/dashboard/queues", &resume, &[])
        .await
        .assert(StatusCode::SEE_OTHER);
    let reply = send(
        app.server
            .request(Method::GET, "/api/v1/queues/hello?type=task")
            .bearer_auth(key),
    )
    .await;
    assert_eq!(
        (
            reply.body["paused"].clone(),
            reply.body["concurrencyLimit"].clone()
        ),
        (json!(false), json!(3)),
        "{reply:?}"
    );
    let page = browser.get("/dashboard/queues").await;
    let row = page.row("data-queue-name", "task/hello");
    assert!(row.contains(r#"data-field="state">Running<"#), "{row}");
}

#[tokio::test]
async fn the_other_pages_render_and_a_schedule_and_a_token_are_changed_through_their_forms() {
    let app = TestApp::start();
    let key = app.dev_key.as_str();
    let reply = send(
        app.server
            .request(Method::POST, "/api/v1/waitpoints/tokens")
            .bearer_auth(key)
            .json(&json!({"tags": ["approval"]})),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    let token = reply.body["id"].as_str().unwrap().to_owned();
    let registered = app
        .server
        .register_worker_as(
            key,
            &json!({"name": "t", "tasks": [{"id": "t", "scheduled": true}]}),
        )
        .await;
    assert_eq!(registered.status, StatusCode::OK, "{registered:?}");
    let reply = send(
        app.server
            .request(Method::POST, "/api/v1/schedules")
            .bearer_auth(key)
            .json(&json!({"task": "t", "cron": "0 * * * *", "deduplicationKey": "hourly"})),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    let schedule = reply.body["id"].as_str().unwrap().to_owned();
    let mut browser = Browser::signed_in(&app, key).await;

    for (path, h1) in [
        ("/dashboard/schedules", "Schedules"),
        ("/dashboard/tokens", "Waitpoint tokens"),
        ("/dashboard/keys", "Keys"),
    ] {
        let page = browser.get(path).await;
        page.assert(StatusCode::OK);
        assert!(
            page.text.contains(&format!("<h1>{h1}</h1>")),
            "{path}: {}",
            page.text
        );
        assert!(page.text.contains(r#"aria-current="page""#), "{path}");
    }
    // The schedule: listed active, deactivated through its form.
    let page = browser.get("/dashboard/schedules").await;
    let row = page.row("data-schedule-id", &schedule).to_owned();
    assert!(
        row.contains("0 * * * *") && row.contains(r#"data-field="active">Yes<"#),
        "{row}"
    );
    let done = browser
        .post_from(
            "/dashboard/schedules",
            &format!("/dashboard/schedules/{schedule}/deactivate"),
            &[],
        )
        .await;
    assert_eq!(
        (done.status, done.location()),
        (StatusCode::SEE_OTHER, "/dashboard/schedules")
    );
    let reply = send(
        app.server
            .request(Method::GET, &format!("/api/v1/schedules/{schedule}"))
            .bearer_auth(key),
    )
    .await;
    assert_eq!(reply.body["active"], false, "{reply:?}");
    let page = browser.get("/dashboard/schedules").await;
    let row = page.row("data-schedule-id", &schedule);
    assert!(
        row.contains(r#"data-field="active">No<"#) && row.contains("Activate</button>"),
        "{row}"
    );

    let page = browser.get("/dashboard/tokens").await;
    let row = page.row("data-token-id", &token);
    assert!(row.contains(r#"data-field="status">WAITING<"#), "{row}");
    assert!(row.contains(">Output JSON</label>"), "{row}");

    let action = format!("/dashboard/tokens/{token}/complete");
    let bad = browser
        .post_from("/dashboard/tokens", &action, &[("output", "{not json")])
        .await;
    bad.assert(StatusCode::BAD_REQUEST);
    let done = browser
        .post_from(
            "/dashboard/tokens",
            &action,
            &[("output", r#"{"approved": true}"#)],
        )
        .await;
    assert_eq!(
        (done.status, done.location()),
        (StatusCode::SEE_OTHER, "/dashboard/tokens")
    );
    let reply = send(
        app.server
            .request(Method::GET, &format!("/api/v1/waitpoints/tokens/{token}"))
            .bearer_auth(key),
    )
    .await;
    assert_eq!(reply.body["status"], "COMPLETED", "{reply:?}");
    assert_eq!(reply.body["output"], r#"{"approved":true}"#, "{reply:?}");

    // Unknown dashboard paths are an HTML 404; the assets are cached for good.
    let page = browser.get("/dashboard/nothing-here").await;
    page.assert(StatusCode::NOT_FOUND);
    let runs = browser.get("/dashboard/runs").await;
    let start = runs.text.find("/dashboard/assets/app-").unwrap();
    let end = runs.text[start..].find('"').unwrap() + start;
    let css = browser.get(&runs.text[start..end]).await;
    css.assert(StatusCode::OK);
    assert!(css.headers["cache-control"]
        .to_str()
        .unwrap()
        .contains("immutable"));
    browser
        .get("/dashboard/assets/app-0000000000000000.css")
        .await
        .assert(StatusCode::NOT_FOUND);
}

/// Reads the event stream until its text contains `needle`; returns all it read.
async fn read_until(response: &mut reqwest::Response, seen: &mut String, needle: &str) {
    let deadline = Instant::now() + SERVICE_TIMEOUT;
    while !seen.contains(needle) {
        let left = deadline.saturating_duration_since(Instant::now());
        let chunk = tokio::time::timeout(left, response.chunk())
            .await
            .unwrap_or_else(|_| panic!("no {needle:?} in the stream; read: {seen}"))
            .expect("reading the stream")
            .unwrap_or_else(|| panic!("the stream ended; read: {seen}"));
        seen.push_str(std::str::from_utf8(&chunk).unwrap());
    }
}

#[tokio::test]
async fn the_event_stream_sends_a_runs_new_status_and_only_the_sessions_runs() {
    let app = TestApp::start();
    let key = app.dev_key.as_str();
    let run = queued_run(&app, key, json!({})).await;
    let browser = Browser::signed_in(&app, key).await;

    let mut stream = browser
        .request(Method::GET, &format!("/dashboard/events?run={run}"))
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), StatusCode::OK);
    assert!(stream.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let mut seen = String::new();
    read_until(&mut stream, &mut seen, r#""status":"QUEUED""#).await;
    assert!(seen.contains("event: run"), "{seen}");

    assert_eq!(app.server.cancel(key, &run).await.status, StatusCode::OK);
    read_until(&mut stream, &mut seen, r#""status":"CANCELED""#).await;
    let line = seen.lines().rev().find(|l| l.starts_with("data:")).unwrap();
    let data: Value = serde_json::from_str(line.trim_start_matches("data:").trim()).unwrap();
    assert_eq!(data["id"], run.as_str());
    assert!(data["updatedAt"].is_string(), "{data}");

    // Another environment's session watching that run (and one of its own) is sent
    // only its own.
    let prod_key = app.keys_create("prod");
    app.server.register_worker(&prod_key, &["t"]).await;
    let own = app.server.trigger_new(&prod_key, "t", &json!({})).await;
    let prod = Browser::signed_in(&app, &prod_key).await;
    let mut stream = prod
        .request(
            Method::GET,
            &format!("/dashboard/events?run={run}&run={own}"),
        )
        .send()
        .await
        .unwrap();
    let mut seen = String::new();
    read_until(&mut stream, &mut seen, &own).await;
    assert!(!seen.contains(&run), "{seen}");
}
