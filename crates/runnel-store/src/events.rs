//! What a run's task process reported about itself ([`EventStore`], written once for both
//! backends): its log lines and its spans, as the OTLP ingest (`runnel-server`'s `otel.rs`)
//! attributed them to runs.
//!
//! Invariants:
//!
//! - **Only runs that exist.** An insert joins each event to its run and takes the
//!   environment from the run, so an event naming a missing run is dropped by the same
//!   statement that stores the others, and a read scoped to an environment never sees
//!   another environment's events.
//! - **One row per span.** A long-running span is first exported as a partial copy
//!   ([`EventKind::PartialSpan`], stored under the real span's id) and again when it ends;
//!   the ended span replaces the copy (an upsert on `(run_id, span_id)`), and a copy that
//!   arrives after its span is ignored. Log lines are never merged.
//! - **A cap per run.** At most [`RUN_EVENTS_MAX_PER_RUN`] events are kept per run, so a
//!   chatty task cannot fill the disk. The insert counts a run's stored events once, before
//!   it adds any, so one export request can take a run past the cap by at most its own
//!   size; after that every new event of the run is dropped (a span replacing its partial
//!   copy still lands: it adds no row).
//! - **One statement per export request** (per few thousand events, the backend's
//!   bind-parameter limit): the join, the cap and the upsert are one `INSERT … SELECT`.
//!
//! A run's events are read in time order (`start_ns`, then arrival), a page at a time
//! after an [`EventCursor`].

use std::fmt;
use std::str::FromStr;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use runnel_core::{EnvironmentId, RunId};
use serde_json::Value as Json;

use crate::backend::Backend;
use crate::rows::{ms, Columns};
use crate::sql::{rows_per_statement, Dialect, Params, TableColumn};
use crate::{Error, Result};

/// Most events kept per run (see the module doc for how an insert applies it).
pub const RUN_EVENTS_MAX_PER_RUN: u64 = 10_000;

/// What an event is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// A log record (`logger.info(…)`, an intercepted `console.log`).
    Log,
    /// A span that ended.
    Span,
    /// An early copy of a span still running (`$span.partial`), replaced by the span.
    PartialSpan,
}

impl EventKind {
    pub const ALL: [EventKind; 3] = [EventKind::Log, EventKind::Span, EventKind::PartialSpan];

    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Log => "log",
            EventKind::Span => "span",
            EventKind::PartialSpan => "span_partial",
        }
    }

    pub fn is_span(self) -> bool {
        !matches!(self, EventKind::Log)
    }

    fn parse(text: &str) -> Result<EventKind> {
        EventKind::ALL
            .into_iter()
            .find(|kind| kind.as_str() == text)
            .ok_or_else(|| Error::Corrupt(format!("run event kind {text:?}")))
    }

    /// The kind as an SQL literal (`'log'`).
    fn literal(self) -> String {
        format!("'{}'", self.as_str())
    }
}

/// An event as the ingest attributed it, before it is stored.
#[derive(Debug, Clone, PartialEq)]
pub struct NewRunEvent {
    pub run_id: RunId,
    pub kind: EventKind,
    /// Lowercase hex; empty when the record had none.
    pub trace_id: String,
    /// A span's own id (a partial copy's: the real span's); a log line's: the span it
    /// was logged in, empty when none.
    pub span_id: String,
    pub parent_span_id: Option<String>,
    /// A span's name, a log line's message.
    pub name: String,
    /// `TRACE`, `DEBUG`, `LOG`, `INFO`, `WARN` or `ERROR`.
    pub level: String,
    /// Nanoseconds since the Unix epoch.
    pub start_ns: i64,
    pub duration_ns: i64,
    /// OTLP's span status code: 0 unset, 1 ok, 2 error.
    pub status_code: i64,
    /// A JSON object of the record's attributes.
    pub attributes: Json,
    /// A span's events (a JSON array); `None` for a log line.
    pub events: Option<Json>,
}

/// A stored event.
#[derive(Debug, Clone, PartialEq)]
pub struct RunEvent {
    /// The order of arrival.
    pub seq: i64,
    pub environment_id: EnvironmentId,
    pub event: NewRunEvent,
    pub received_at: DateTime<Utc>,
}

impl RunEvent {
    /// Where a page that ends with this event continues.
    pub fn cursor(&self) -> EventCursor {
        EventCursor {
            start_ns: self.event.start_ns,
            seq: self.seq,
        }
    }
}

/// A position in a run's events, in their order (`start_ns`, then arrival). Written
/// `<start_ns>_<seq>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct EventCursor {
    pub start_ns: i64,
    pub seq: i64,
}

impl fmt::Display for EventCursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}_{}", self.start_ns, self.seq)
    }
}

impl FromStr for EventCursor {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let invalid = || format!("invalid cursor {text:?}");
        let (start, seq) = text.split_once('_').ok_or_else(invalid)?;
        Ok(EventCursor {
            start_ns: start.parse().map_err(|_| invalid())?,
            seq: seq.parse().map_err(|_| invalid())?,
        })
    }
}

/// Which of a run's events to read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunEventQuery {
    /// Only these kinds; empty: every kind.
    pub kinds: Vec<EventKind>,
    /// Only the events after this position.
    pub after: Option<EventCursor>,
    pub limit: u32,
}

/// Log lines and spans of runs.
#[async_trait]
pub trait EventStore: Send + Sync {
    /// Stores `events` (see the module doc: only those of existing runs, under the cap,
    /// a span replacing its partial copy). Returns how many rows were written.
    async fn run_event_insert(&self, events: &[NewRunEvent], now: DateTime<Utc>) -> Result<u64>;

    /// The events of run `run` of `environment` matching `query`, in time order (none
    /// when the run is missing or of another environment).
    async fn run_event_list(
        &self,
        environment: &EnvironmentId,
        run: &RunId,
        query: &RunEventQuery,
    ) -> Result<Vec<RunEvent>>;
}

/// The columns an event binds, in the order of the insert's `v(…)`.
const EVENT_COLUMNS: [&str; 12] = [
    "run_id",
    "kind",
    "trace_id",
    "span_id",
    "parent_span_id",
    "name",
    "level",
    "start_ns",
    "duration_ns",
    "status_code",
    "attributes",
    "events",
];

/// `events` with at most one span row per `(run, span id)`: the ended span over its
/// partial copy, else the last copy (one upsert may not meet a row twice on PostgreSQL).
fn one_row_per_span(events: &[NewRunEvent]) -> Vec<&NewRunEvent> {
    let mut out: Vec<&NewRunEvent> = Vec::with_capacity(events.len());
    let mut spans: std::collections::HashMap<(&str, &str), usize> =
        std::collections::HashMap::new();
    for event in events {
        if !event.kind.is_span() {
            out.push(event);
            continue;
        }
        let key = (event.run_id.as_str(), event.span_id.as_str());
        match spans.get(&key) {
            Some(&i) => {
                if out[i].kind == EventKind::PartialSpan || event.kind == EventKind::Span {
                    out[i] = event;
                }
            }
            None => {
                spans.insert(key, out.len());
                out.push(event);
            }
        }
    }
    out
}

#[async_trait]
impl<B: Backend> EventStore for B {
    async fn run_event_insert(&self, events: &[NewRunEvent], now: DateTime<Utc>) -> Result<u64> {
        let events = one_row_per_span(events);
        if events.is_empty() {
            return Ok(0);
        }
        let columns = EVENT_COLUMNS.join(", ");
        let (log, partial) = (EventKind::Log.literal(), EventKind::PartialSpan.literal());
        let mut written = 0;
        let mut conn = self.writer().await?;
        for chunk in events.chunks(rows_per_statement(B::D::MAX_BINDS, EVENT_COLUMNS.len())) {
            let texts = |f: &dyn Fn(&NewRunEvent) -> Option<String>| {
                TableColumn::Texts(chunk.iter().map(|e| f(e).map(Into::into)).collect())
            };
            let ints = |f: &dyn Fn(&NewRunEvent) -> i64| {
                TableColumn::Ints(chunk.iter().map(|e| Some(f(e))).collect())
            };
            let mut p = Params::<B::D>::sequential();
            let table = p.table(vec![
                texts(&|e| Some(e.run_id.to_string())),
                texts(&|e| Some(e.kind.as_str().to_owned())),
                texts(&|e| Some(e.trace_id.clone())),
                texts(&|e| Some(e.span_id.clone())),
                texts(&|e| e.parent_span_id.clone()),
                texts(&|e| Some(e.name.clone())),
                texts(&|e| Some(e.level.clone())),
                ints(&|e| e.start_ns),
                ints(&|e| e.duration_ns),
                ints(&|e| e.status_code),
                texts(&|e| Some(e.attributes.to_string())),
                texts(&|e| e.events.as_ref().map(Json::to_string)),
            ]);
            let received_at = p.bind(ms(now));
            let values: Vec<String> = EVENT_COLUMNS.iter().map(|c| format!("v.{c}")).collect();
            let updates: Vec<String> = EVENT_COLUMNS
                .iter()
                .filter(|c| !matches!(**c, "run_id" | "span_id"))
                .map(|c| format!("{c} = excluded.{c}"))
                .collect();
            // The count of each run's stored events is read once, before the insert,
            // so the cap is checked against the rows stored before this statement; a
            // span replacing its partial copy adds no row and passes it.
            let sql = format!(
                "WITH v({columns}) AS ({table}), \
                 counts AS (SELECT e.run_id, count(*) AS n FROM run_events e \
                   WHERE e.run_id IN (SELECT run_id FROM v) GROUP BY e.run_id) \
                 INSERT INTO run_events ({columns}, environment_id, received_at) \
                 SELECT {}, r.environment_id, {received_at} FROM v \
                 JOIN runs r ON r.id = v.run_id \
                 LEFT JOIN counts c ON c.run_id = v.run_id \
                 WHERE COALESCE(c.n, 0) < {RUN_EVENTS_MAX_PER_RUN} \
                 OR (v.kind <> {log} AND EXISTS (SELECT 1 FROM run_events x \
                   WHERE x.run_id = v.run_id AND x.span_id = v.span_id \
                   AND x.kind <> {log} AND x.kind = {partial})) \
                 ON CONFLICT (run_id, span_id) WHERE kind <> {log} \
                 DO UPDATE SET {}, received_at = excluded.received_at \
                 WHERE run_events.kind = {partial}",
                values.join(", "),
                updates.join(", "),
            );
            written += p.execute(&mut conn, &sql).await?;
        }
        Ok(written)
    }

    async fn run_event_list(
        &self,
        environment: &EnvironmentId,
        run: &RunId,
        query: &RunEventQuery,
    ) -> Result<Vec<RunEvent>> {
        let mut p = Params::<B::D>::new();
        let mut sql = format!(
            "SELECT id, environment_id, received_at, {} FROM run_events \
             WHERE run_id = {} AND environment_id = {}",
            EVENT_COLUMNS.join(", "),
            p.bind(run.as_str()),
            p.bind(environment.as_str()),
        );
        if !query.kinds.is_empty() {
            let kinds: Vec<String> = query.kinds.iter().map(|k| k.literal()).collect();
            sql.push_str(&format!(" AND kind IN ({})", kinds.join(", ")));
        }
        if let Some(after) = query.after {
            let start = p.bind(after.start_ns);
            sql.push_str(&format!(
                " AND (start_ns > {start} OR (start_ns = {start} AND id > {}))",
                p.bind(after.seq)
            ));
        }
        sql.push_str(&format!(
            " ORDER BY start_ns, id LIMIT {}",
            p.bind(i64::from(query.limit))
        ));
        let mut conn = self.reader().await?;
        let rows = p.fetch_all(&mut conn, &sql).await?;
        rows.iter().map(event_from_row).collect()
    }
}

fn event_from_row(row: &impl Columns) -> Result<RunEvent> {
    let json = |column: &str| -> Result<Option<Json>> { row.opt_json(column) };
    Ok(RunEvent {
        seq: row.int("id")?,
        environment_id: EnvironmentId::from_trusted(row.text("environment_id")?),
        received_at: row.time("received_at")?,
        event: NewRunEvent {
            run_id: RunId::from_trusted(row.text("run_id")?),
            kind: EventKind::parse(&row.text("kind")?)?,
            trace_id: row.text("trace_id")?,
            span_id: row.text("span_id")?,
            parent_span_id: row.opt_text("parent_span_id")?,
            name: row.text("name")?,
            level: row.text("level")?,
            start_ns: row.int("start_ns")?,
            duration_ns: row.int("duration_ns")?,
            status_code: row.int("status_code")?,
            attributes: json("attributes")?.unwrap_or(Json::Null),
            events: json("events")?,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_refuse_garbage() {
        let cursor = EventCursor {
            start_ns: 1_767_322_245_000_000_123,
            seq: 42,
        };
        assert_eq!(cursor.to_string(), "1767322245000000123_42");
        assert_eq!(cursor.to_string().parse::<EventCursor>(), Ok(cursor));
        for bad in ["", "12", "a_1", "1_b", "1_2_3"] {
            assert!(bad.parse::<EventCursor>().is_err(), "{bad:?}");
        }
    }

    fn span(span_id: &str, kind: EventKind, name: &str) -> NewRunEvent {
        NewRunEvent {
            run_id: RunId::from_trusted("run_a".into()),
            kind,
            trace_id: String::new(),
            span_id: span_id.into(),
            parent_span_id: None,
            name: name.into(),
            level: "TRACE".into(),
            start_ns: 0,
            duration_ns: 0,
            status_code: 0,
            attributes: Json::Null,
            events: None,
        }
    }

    #[test]
    fn one_row_per_span_keeps_the_ended_span_over_its_copies() {
        let events = [
            span("s1", EventKind::PartialSpan, "copy"),
            span("s1", EventKind::Span, "ended"),
            span("s1", EventKind::PartialSpan, "late copy"),
            span("s2", EventKind::PartialSpan, "first copy"),
            span("s2", EventKind::PartialSpan, "second copy"),
            span("s1", EventKind::Log, "a log line in s1"),
            span("s1", EventKind::Log, "another"),
        ];
        let names: Vec<&str> = one_row_per_span(&events)
            .iter()
            .map(|e| e.name.as_str())
            .collect();
        assert_eq!(
            names,
            ["ended", "second copy", "a log line in s1", "another"]
        );
    }
}
