//! Listing runs (`GET /api/v1/runs`, contract §2.4): the query string as the API takes
//! it ([`RunListRequest`]), the keyset query the store answers ([`RunListQuery`]), the
//! opaque page cursor ([`Cursor`]), how a fetched slice becomes a page ([`RunPage`]) and
//! the list item on the wire ([`ListRunItem`]).
//!
//! Pages are newest first: `created_at DESC, id DESC`. A cursor names one run by
//! `(created_at, id)`; `page[after]` lists the runs strictly older than it, `page[before]`
//! the runs strictly newer (still shown newest first). Because a cursor is a position in
//! that order and not an offset, walking forward never repeats or skips a run however
//! many runs are triggered meanwhile: new runs are newer than every cursor handed out, so
//! they show up only when walking backward (or on a fresh first page).
//!
//! ```text
//!   newest ─────────────────────────────────────────────► oldest
//!   [new runs] [ page[before]=c ]  c  [ page[after]=c ]
//! ```
//!
//! A store fetches `page_size + 1` rows in scan order (nearest the cursor first); the
//! extra row only says whether another page exists ([`RunPage::from_slice`]).

use std::collections::BTreeSet;

use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use serde::{Serialize, Serializer};
use serde_json::Value;

use crate::duration::parse_duration_secs;
use crate::id::{EnvironmentId, RunId};
use crate::machine::MachinePreset;
use crate::run::Run;
use crate::status::{ApiVersion, RunStatus};
use crate::tenancy::Environment;
use crate::view::CommonRunFields;

/// `page[size]` when the query has none.
pub const PAGE_SIZE_DEFAULT: u32 = 25;
/// The largest `page[size]`.
pub const PAGE_SIZE_MAX: u32 = 100;
/// The `createdAt` window when the query gives no `from`, `to` or `period`: 7 days.
pub const CREATED_WINDOW_DEFAULT_SECS: u64 = 7 * 86_400;
/// Metadata keys the SDK keeps for realtime streams; list items leave them out.
const INTERNAL_METADATA_KEYS: [&str; 3] = ["$$streams", "$$streamsVersion", "$$streamsBaseUrl"];

/// The internal statuses a public status name selects. Both vocabularies are accepted
/// (contract §3.2); `None` for a name in neither. Names shared by both sets select the
/// status of the same internal name, as upstream does (so `EXECUTING` selects executing
/// runs only, not leased ones that the legacy set also shows as `EXECUTING`).
pub fn statuses_for_filter(name: &str) -> Option<&'static [RunStatus]> {
    use RunStatus::*;
    Some(match name {
        "DELAYED" => &[Delayed],
        "PENDING_VERSION" | "WAITING_FOR_DEPLOY" => &[PendingVersion],
        "QUEUED" => &[Queued],
        "DEQUEUED" => &[Dequeued],
        "EXECUTING" => &[Executing],
        "REATTEMPTING" => &[RetryingAfterFailure],
        "WAITING" | "FROZEN" => &[WaitingToResume],
        "COMPLETED" => &[CompletedSuccessfully],
        "FAILED" => &[CompletedWithErrors],
        "CANCELED" => &[Canceled],
        "INTERRUPTED" => &[Interrupted],
        "CRASHED" => &[Crashed],
        "SYSTEM_FAILURE" => &[SystemFailure],
        "EXPIRED" => &[Expired],
        "TIMED_OUT" => &[TimedOut],
        _ => return None,
    })
}

/// What the runs a list shows must match. An empty list (or `None`) matches everything;
/// values of one list are alternatives (`tags`: the run has any of them).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunFilter {
    pub statuses: Vec<RunStatus>,
    pub task_identifiers: Vec<String>,
    /// The run's version: the executing worker's, else the locked one.
    pub versions: Vec<String>,
    pub tags: Vec<String>,
    /// Queue names as stored (`task/<taskIdentifier>` for a task's own queue).
    pub queues: Vec<String>,
    pub machines: Vec<MachinePreset>,
    pub is_test: Option<bool>,
    pub schedule_id: Option<String>,
    pub batch_id: Option<String>,
}

/// Which way a page goes from its cursor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// `page[after]`: runs older than the cursor.
    Older,
    /// `page[before]`: runs newer than the cursor.
    Newer,
}

/// A position in the list order: one run's `(created_at, id)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    pub created_at_ms: i64,
    pub run_id: RunId,
}

impl Cursor {
    pub fn of(run: &Run) -> Self {
        Cursor {
            created_at_ms: run.created_at.timestamp_millis(),
            run_id: run.id.clone(),
        }
    }

    /// The opaque form clients echo back: base64url (no padding) of
    /// `{"c":<createdAt ms>,"r":"<run id>"}`, the shape upstream uses.
    pub fn encode(&self) -> String {
        let json = serde_json::json!({"c": self.created_at_ms, "r": self.run_id.as_str()});
        base64url_encode(json.to_string().as_bytes())
    }

    /// Parses what [`Cursor::encode`] wrote; `None` for anything else.
    pub fn decode(text: &str) -> Option<Cursor> {
        let bytes = base64url_decode(text)?;
        let value: Value = serde_json::from_slice(&bytes).ok()?;
        let object = value.as_object()?;
        if object.len() != 2 {
            return None;
        }
        let created_at_ms = object.get("c")?.as_i64()?;
        let run_id = RunId::parse(object.get("r")?.as_str()?)?;
        Some(Cursor {
            created_at_ms,
            run_id,
        })
    }
}

/// A cursor as a client sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PageCursor {
    Keyset(Cursor),
    /// A bare run id (upstream's legacy cursor): the position of that run, looked up.
    Run(RunId),
}

impl PageCursor {
    fn parse(text: &str) -> Option<PageCursor> {
        if let Some(id) = RunId::parse(text) {
            return Some(PageCursor::Run(id));
        }
        Cursor::decode(text).map(PageCursor::Keyset)
    }
}

/// The `createdAt` bounds a query asked for; resolved against `now` by [`Self::resolve`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CreatedWindow {
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
    /// `filter[createdAt][period]` in seconds: the last this long.
    pub period_secs: Option<u64>,
}

impl CreatedWindow {
    /// Inclusive bounds: `from`/`to` when either is given; else the last `period`; else
    /// the last [`CREATED_WINDOW_DEFAULT_SECS`].
    pub fn resolve(&self, now: DateTime<Utc>) -> (Option<DateTime<Utc>>, Option<DateTime<Utc>>) {
        if self.from.is_some() || self.to.is_some() {
            return (self.from, self.to);
        }
        let secs = self.period_secs.unwrap_or(CREATED_WINDOW_DEFAULT_SECS);
        let secs = i64::try_from(secs).unwrap_or(i64::MAX);
        let from = chrono::Duration::try_seconds(secs).and_then(|d| now.checked_sub_signed(d));
        // A period longer than all of time means no lower bound.
        (from, None)
    }
}

/// One problem with a query string, in the shape of the zod issues upstream sends in
/// `{"error":"Query Error","details":[…]}` (contract §1.4).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct QueryIssue {
    pub code: &'static str,
    pub message: String,
    pub path: Vec<String>,
}

impl QueryIssue {
    pub fn new(code: &'static str, key: &str, message: impl Into<String>) -> Self {
        QueryIssue {
            code,
            message: message.into(),
            path: vec![key.to_owned()],
        }
    }
}

/// `GET /api/v1/runs` as the client asked for it, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct RunListRequest {
    pub filter: RunFilter,
    pub created: CreatedWindow,
    pub page_size: u32,
    pub page: Option<(Direction, PageCursor)>,
}

impl Default for RunListRequest {
    fn default() -> Self {
        RunListRequest {
            filter: RunFilter::default(),
            created: CreatedWindow::default(),
            page_size: PAGE_SIZE_DEFAULT,
            page: None,
        }
    }
}

/// A comma list without empty items.
fn comma_list(value: &str) -> Vec<String> {
    value
        .split(',')
        .filter(|item| !item.is_empty())
        .map(str::to_owned)
        .collect()
}

/// A `createdAt` bound: unix milliseconds (what the SDK sends) or an ISO 8601 date.
pub fn parse_date(text: &str) -> Option<DateTime<Utc>> {
    let text = text.trim();
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        return DateTime::from_timestamp_millis(text.parse().ok()?);
    }
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Some(t.with_timezone(&Utc));
    }
    for format in ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%dT%H:%M"] {
        if let Ok(t) = NaiveDateTime::parse_from_str(text, format) {
            return Some(t.and_utc());
        }
    }
    NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc())
}

impl RunListRequest {
    /// Validates the query's `(key, value)` pairs. Unknown keys are ignored (as upstream's
    /// schema strips them); when a key repeats, its last value counts. Every problem
    /// found is reported, not just the first.
    pub fn parse(pairs: &[(String, String)]) -> Result<Self, Vec<QueryIssue>> {
        let get = |key: &str| {
            pairs
                .iter()
                .rev()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.as_str())
                .filter(|v| !v.is_empty())
        };
        let mut issues = Vec::new();
        let mut request = RunListRequest::default();
        let filter = &mut request.filter;

        if let Some(value) = get("filter[status]") {
            let names = comma_list(value);
            let unknown: Vec<&str> = names
                .iter()
                .map(String::as_str)
                .filter(|name| statuses_for_filter(name).is_none())
                .collect();
            if unknown.is_empty() {
                let mut seen = BTreeSet::new();
                for name in &names {
                    for status in statuses_for_filter(name).unwrap_or_default() {
                        if seen.insert(status.as_str()) {
                            filter.statuses.push(*status);
                        }
                    }
                }
            } else {
                issues.push(QueryIssue::new(
                    "custom",
                    "filter[status]",
                    format!("Invalid status values: {}", unknown.join(", ")),
                ));
            }
        }
        if let Some(value) = get("filter[taskIdentifier]") {
            filter.task_identifiers = comma_list(value);
        }
        if let Some(value) = get("filter[version]") {
            filter.versions = comma_list(value);
        }
        if let Some(value) = get("filter[tag]") {
            filter.tags = comma_list(value);
        }
        if let Some(value) = get("filter[queue]") {
            filter.queues = comma_list(value);
        }
        if let Some(value) = get("filter[machine]") {
            let names = comma_list(value);
            let unknown: Vec<&str> = names
                .iter()
                .map(String::as_str)
                .filter(|name| name.parse::<MachinePreset>().is_err())
                .collect();
            if unknown.is_empty() {
                filter.machines = names.iter().filter_map(|n| n.parse().ok()).collect();
            } else {
                issues.push(QueryIssue::new(
                    "custom",
                    "filter[machine]",
                    format!("Invalid machine values: {}", unknown.join(", ")),
                ));
            }
        }
        if let Some(value) = get("filter[isTest]") {
            match value {
                "true" => filter.is_test = Some(true),
                "false" => filter.is_test = Some(false),
                other => issues.push(QueryIssue::new(
                    "custom",
                    "filter[isTest]",
                    format!("Invalid value for isTest: {other}"),
                )),
            }
        }
        filter.schedule_id = get("filter[schedule]").map(str::to_owned);
        filter.batch_id = get("filter[batch]").map(str::to_owned);

        for (key, bound) in [
            ("filter[createdAt][from]", &mut request.created.from),
            ("filter[createdAt][to]", &mut request.created.to),
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
                Some(secs) if secs > 0 => request.created.period_secs = Some(secs),
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
                Ok(n) => request.page_size = n as u32,
                Err(_) => issues.push(QueryIssue::new(
                    "invalid_type",
                    "page[size]",
                    format!("Expected an integer, received {value:?}"),
                )),
            }
        }
        let after = get("page[after]");
        let before = get("page[before]");
        if after.is_some() && before.is_some() {
            issues.push(QueryIssue::new(
                "custom",
                "page[before]",
                "page[after] and page[before] cannot be used together",
            ));
        } else if let Some((key, direction, text)) = after
            .map(|t| ("page[after]", Direction::Older, t))
            .or(before.map(|t| ("page[before]", Direction::Newer, t)))
        {
            match PageCursor::parse(text) {
                Some(cursor) => request.page = Some((direction, cursor)),
                None => issues.push(QueryIssue::new("custom", key, "Invalid cursor")),
            }
        }

        if issues.is_empty() {
            Ok(request)
        } else {
            Err(issues)
        }
    }
}

/// What a store fetches: one environment's runs matching `filter` and created within
/// `[created_from, created_to]`, beyond `page`'s cursor in its direction (or from the
/// newest without one), at most `limit` of them, in scan order: newest first, or, for
/// [`Direction::Newer`], oldest first (nearest the cursor first either way).
#[derive(Debug, Clone, PartialEq)]
pub struct RunListQuery {
    pub environment_id: EnvironmentId,
    pub filter: RunFilter,
    pub created_from: Option<DateTime<Utc>>,
    pub created_to: Option<DateTime<Utc>>,
    pub page: Option<(Direction, Cursor)>,
    pub limit: u32,
}

impl RunListQuery {
    /// Every run of `environment`, newest first, at most `limit`.
    pub fn newest(environment_id: EnvironmentId, limit: u32) -> Self {
        RunListQuery {
            environment_id,
            filter: RunFilter::default(),
            created_from: None,
            created_to: None,
            page: None,
            limit,
        }
    }
}

/// One page of runs, newest first, with the cursors of its neighbours.
#[derive(Debug, Clone, PartialEq)]
pub struct RunPage {
    pub runs: Vec<Run>,
    /// Where the older runs start (`page[after]`); `None` on the last page.
    pub next: Option<Cursor>,
    /// Where the newer runs start (`page[before]`); `None` on the first page.
    pub previous: Option<Cursor>,
}

impl RunPage {
    /// Builds a page from what a store returned for a query of `page_size + 1` rows in
    /// `direction` (`None`: the first page).
    pub fn from_slice(mut rows: Vec<Run>, page_size: u32, direction: Option<Direction>) -> Self {
        let more = rows.len() > page_size as usize;
        rows.truncate(page_size as usize);
        if direction == Some(Direction::Newer) {
            rows.reverse();
        }
        let (newest, oldest) = (rows.first().map(Cursor::of), rows.last().map(Cursor::of));
        let (next, previous) = match direction {
            // The first page: nothing is newer.
            None => (oldest.filter(|_| more), None),
            // Something newer exists: at least the run the cursor names.
            Some(Direction::Older) => (oldest.filter(|_| more), newest),
            // Something older exists: at least the run the cursor names.
            Some(Direction::Newer) => (oldest, newest.filter(|_| more)),
        };
        RunPage {
            runs: rows,
            next,
            previous,
        }
    }
}

/// `env` of a list item.
#[derive(Debug, Clone, Serialize)]
pub struct RunEnvironmentView {
    pub id: String,
    /// The environment's slug as keys spell it: `dev`, `stg`, `prod`.
    pub name: &'static str,
}

/// One entry of `data` (contract §3.3): the common run fields, `depth` and `env`; no
/// payload, output, error, related runs, `triggerFunction` or `batchId`.
#[derive(Debug, Clone)]
pub struct ListRunItem {
    pub common: CommonRunFields,
    pub env: RunEnvironmentView,
}

impl ListRunItem {
    pub fn new(run: &Run, environment: &Environment, version: ApiVersion) -> Self {
        let mut common = CommonRunFields::new(run, version);
        // The list shows the key as stored (the SDK's hash), not the user's own key.
        common.idempotency_key = run.idempotency_key.clone();
        if let Some(Value::Object(metadata)) = &mut common.metadata {
            for key in INTERNAL_METADATA_KEYS {
                metadata.remove(key);
            }
        }
        ListRunItem {
            common,
            env: RunEnvironmentView {
                id: environment.id.to_string(),
                name: environment.kind.key_tag(),
            },
        }
    }
}

impl Serialize for ListRunItem {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::Error;
        let mut fields = match serde_json::to_value(&self.common).map_err(S::Error::custom)? {
            Value::Object(fields) => fields,
            _ => return Err(S::Error::custom("run fields are not an object")),
        };
        fields.remove("triggerFunction");
        fields.remove("batchId");
        fields.insert(
            "env".to_owned(),
            serde_json::to_value(&self.env).map_err(S::Error::custom)?,
        );
        fields.serialize(serializer)
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Pagination {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous: Option<String>,
}

/// `GET /api/v1/runs`'s answer.
#[derive(Debug, Clone, Serialize)]
pub struct ListRunsResponse {
    pub data: Vec<ListRunItem>,
    pub pagination: Pagination,
}

impl ListRunsResponse {
    pub fn new(page: &RunPage, environment: &Environment, version: ApiVersion) -> Self {
        ListRunsResponse {
            data: page
                .runs
                .iter()
                .map(|run| ListRunItem::new(run, environment, version))
                .collect(),
            pagination: Pagination {
                next: page.next.as_ref().map(Cursor::encode),
                previous: page.previous.as_ref().map(Cursor::encode),
            },
        }
    }
}

const BASE64URL: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// Base64url without padding (RFC 4648 §5).
fn base64url_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(BASE64URL[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

/// Decodes base64url, with or without padding; `None` on any other character or a
/// length no encoding produces.
fn base64url_decode(text: &str) -> Option<Vec<u8>> {
    let text = text.trim_end_matches('=');
    if text.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    for chunk in text.as_bytes().chunks(4) {
        let mut n = 0u32;
        for (i, c) in chunk.iter().enumerate() {
            let v = BASE64URL.iter().position(|b| b == c)? as u32;
            n |= v << (18 - 6 * i);
        }
        for i in 0..chunk.len() - 1 {
            out.push((n >> (16 - 8 * i)) as u8);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::EnvironmentKind;
    use crate::trigger::{IdempotencyHeaders, TriggerRequest};
    use crate::ProjectId;
    use serde_json::json;

    fn pairs(query: &[(&str, &str)]) -> Vec<(String, String)> {
        query
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn parse(query: &[(&str, &str)]) -> Result<RunListRequest, Vec<QueryIssue>> {
        RunListRequest::parse(&pairs(query))
    }

    fn issue(query: &[(&str, &str)]) -> (String, String) {
        let issues = parse(query).expect_err("the query is rejected");
        assert_eq!(issues.len(), 1, "{issues:?}");
        (issues[0].path[0].clone(), issues[0].message.clone())
    }

    #[test]
    fn both_status_vocabularies_map_to_internal_statuses() {
        use RunStatus::*;
        let cases: &[(&str, &[RunStatus])] = &[
            ("QUEUED", &[Queued]),
            ("FROZEN,WAITING", &[WaitingToResume]),
            ("REATTEMPTING", &[RetryingAfterFailure]),
            (
                "FAILED,COMPLETED",
                &[CompletedWithErrors, CompletedSuccessfully],
            ),
            ("WAITING_FOR_DEPLOY,PENDING_VERSION", &[PendingVersion]),
            ("DEQUEUED,EXECUTING", &[Dequeued, Executing]),
            (
                "INTERRUPTED,TIMED_OUT,EXPIRED",
                &[Interrupted, TimedOut, Expired],
            ),
        ];
        for (value, want) in cases {
            let request = parse(&[("filter[status]", value)]).unwrap();
            assert_eq!(request.filter.statuses, *want, "{value}");
        }
        // Every public name of either vocabulary is accepted.
        for status in RunStatus::ALL {
            for version in [ApiVersion::Legacy, ApiVersion::Current] {
                let name = status.public(version);
                assert!(statuses_for_filter(name).is_some(), "{name}");
            }
        }
    }

    #[test]
    fn unknown_values_are_query_issues() {
        assert_eq!(
            issue(&[("filter[status]", "QUEUED,FOO,bar")]),
            (
                "filter[status]".into(),
                "Invalid status values: FOO, bar".into()
            )
        );
        assert_eq!(
            issue(&[("filter[status]", "COMPLETED_SUCCESSFULLY")]).1,
            "Invalid status values: COMPLETED_SUCCESSFULLY"
        );
        assert_eq!(
            issue(&[("filter[isTest]", "yes")]),
            (
                "filter[isTest]".into(),
                "Invalid value for isTest: yes".into()
            )
        );
        assert_eq!(
            issue(&[("filter[machine]", "micro,huge")]).1,
            "Invalid machine values: huge"
        );
        assert_eq!(issue(&[("page[size]", "0")]).0, "page[size]");
        assert_eq!(issue(&[("page[size]", "101")]).0, "page[size]");
        assert_eq!(issue(&[("page[size]", "ten")]).0, "page[size]");
        assert_eq!(issue(&[("page[after]", "garbage!")]).1, "Invalid cursor");
        assert_eq!(
            issue(&[("filter[createdAt][from]", "yesterday")]).0,
            "filter[createdAt][from]"
        );
        assert_eq!(
            issue(&[("filter[createdAt][period]", "7x")]).0,
            "filter[createdAt][period]"
        );
        let both = parse(&[("filter[status]", "NOPE"), ("page[size]", "0")]).unwrap_err();
        assert_eq!(both.len(), 2, "every issue is reported");
    }

    #[test]
    fn filters_and_page_parse() {
        let cursor = Cursor {
            created_at_ms: 1_700_000_000_123,
            run_id: RunId::parse("run_abc").unwrap(),
        };
        let request = parse(&[
            ("filter[taskIdentifier]", "a,b"),
            ("filter[tag]", "x,,y"),
            ("filter[queue]", "task/a"),
            ("filter[machine]", "micro"),
            ("filter[version]", "20260101.1"),
            ("filter[isTest]", "false"),
            ("filter[schedule]", "sched_1"),
            ("filter[batch]", "batch_1"),
            ("filter[createdAt][from]", "1700000000000"),
            ("filter[createdAt][to]", "2026-01-02T03:04:05Z"),
            ("page[size]", "7"),
            ("page[before]", &cursor.encode()),
            ("unknown", "ignored"),
        ])
        .unwrap();
        assert_eq!(
            request,
            RunListRequest {
                filter: RunFilter {
                    statuses: vec![],
                    task_identifiers: vec!["a".into(), "b".into()],
                    versions: vec!["20260101.1".into()],
                    tags: vec!["x".into(), "y".into()],
                    queues: vec!["task/a".into()],
                    machines: vec![MachinePreset::Micro],
                    is_test: Some(false),
                    schedule_id: Some("sched_1".into()),
                    batch_id: Some("batch_1".into()),
                },
                created: CreatedWindow {
                    from: DateTime::from_timestamp_millis(1_700_000_000_000),
                    to: parse_date("2026-01-02T03:04:05.000Z"),
                    period_secs: None,
                },
                page_size: 7,
                page: Some((Direction::Newer, PageCursor::Keyset(cursor))),
            }
        );
        assert_eq!(parse(&[]).unwrap(), RunListRequest::default());
        assert_eq!(
            parse(&[("page[after]", "run_abc")]).unwrap().page,
            Some((
                Direction::Older,
                PageCursor::Run(RunId::parse("run_abc").unwrap())
            ))
        );
    }

    #[test]
    fn created_window_defaults_to_the_last_seven_days() {
        let now = parse_date("2026-01-10T00:00:00Z").unwrap();
        assert_eq!(
            CreatedWindow::default().resolve(now),
            (parse_date("2026-01-03T00:00:00Z"), None)
        );
        let period = CreatedWindow {
            period_secs: Some(3600),
            ..CreatedWindow::default()
        };
        assert_eq!(
            period.resolve(now),
            (parse_date("2026-01-09T23:00:00Z"), None)
        );
        let to_only = CreatedWindow {
            to: Some(now),
            period_secs: Some(3600),
            ..CreatedWindow::default()
        };
        assert_eq!(to_only.resolve(now), (None, Some(now)));
    }

    #[test]
    fn cursors_round_trip_and_reject_tampering() {
        let cursor = Cursor {
            created_at_ms: 1_767_323_045_678,
            run_id: RunId::generate(1_767_323_045_678),
        };
        let text = cursor.encode();
        assert!(text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        assert_eq!(Cursor::decode(&text), Some(cursor));
        for bad in [
            "",
            "a",
            "not base64!",
            "eyJjIjoxfQ",
            &text[..text.len() - 1],
        ] {
            assert_eq!(Cursor::decode(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn base64url_matches_the_rfc_vectors() {
        for (plain, encoded) in [
            ("", ""),
            ("f", "Zg"),
            ("fo", "Zm8"),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg"),
            ("fooba", "Zm9vYmE"),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64url_encode(plain.as_bytes()), encoded);
            assert_eq!(base64url_decode(encoded).unwrap(), plain.as_bytes());
        }
        assert_eq!(base64url_decode("Zm8=").unwrap(), b"fo");
        assert_eq!(base64url_encode(&[0xfb, 0xff]), "-_8");
    }

    fn run_at(ms: i64) -> Run {
        let now = DateTime::from_timestamp_millis(ms).unwrap();
        let request: TriggerRequest = serde_json::from_value(json!({})).unwrap();
        request
            .validate("t", &IdempotencyHeaders::default(), now)
            .unwrap()
            .into_run(RunId::generate(ms), EnvironmentId::generate(0), now)
    }

    #[test]
    fn pages_point_at_their_neighbours() {
        // Rows as a store returns them for page_size 2 (+1 extra).
        let (a, b, c) = (run_at(3), run_at(2), run_at(1));
        let first = RunPage::from_slice(vec![a.clone(), b.clone(), c.clone()], 2, None);
        assert_eq!(first.runs, vec![a.clone(), b.clone()]);
        assert_eq!(first.next, Some(Cursor::of(&b)));
        assert_eq!(first.previous, None);

        let last = RunPage::from_slice(vec![c.clone()], 2, Some(Direction::Older));
        assert_eq!(last.runs, vec![c.clone()]);
        assert_eq!(last.next, None);
        assert_eq!(last.previous, Some(Cursor::of(&c)));

        // Backward rows come oldest first and are shown newest first.
        let back = RunPage::from_slice(vec![b.clone(), a.clone()], 1, Some(Direction::Newer));
        assert_eq!(back.runs, vec![b.clone()]);
        assert_eq!(back.next, Some(Cursor::of(&b)));
        assert_eq!(back.previous, Some(Cursor::of(&b)));
        let top = RunPage::from_slice(vec![a.clone()], 1, Some(Direction::Newer));
        assert_eq!(top.previous, None);
        assert_eq!(top.next, Some(Cursor::of(&a)));

        let empty = RunPage::from_slice(vec![], 2, None);
        assert_eq!((empty.next, empty.previous), (None, None));
    }

    #[test]
    fn list_items_have_env_and_no_retrieve_only_fields() {
        let mut run = run_at(1_767_323_045_678);
        run.metadata = Some(crate::run::Packet::json(
            &json!({"a": 1, "$$streams": ["s"]}),
        ));
        run.idempotency_key = Some("hashed".into());
        run.idempotency_key_user = Some("mine".into());
        let environment = Environment {
            id: EnvironmentId::parse("env_abc").unwrap(),
            project_id: ProjectId::parse("proj_abc").unwrap(),
            kind: EnvironmentKind::Staging,
        };
        let body = serde_json::to_value(ListRunItem::new(&run, &environment, ApiVersion::Current))
            .unwrap();
        assert_eq!(body["env"], json!({"id": "env_abc", "name": "stg"}));
        assert_eq!(body["metadata"], json!({"a": 1}));
        assert_eq!(body["depth"], 0);
        assert_eq!(body["idempotencyKey"], "hashed");
        assert_eq!(body["status"], "QUEUED");
        for absent in [
            "triggerFunction",
            "batchId",
            "payload",
            "output",
            "relatedRuns",
            "attempts",
        ] {
            assert!(body.get(absent).is_none(), "{absent}");
        }
    }
}
