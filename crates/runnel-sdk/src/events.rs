//! A run's log lines and spans, as the task process reported them
//! (`GET /api/v1/runs/{runId}/events`; docs/api.md, "Run events and trace").

use reqwest::Method;
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::client::{segment, Client, Error, REQUEST_TIMEOUT};

/// Which events to read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunEventsOptions {
    /// Only log lines (not spans).
    pub logs_only: bool,
    /// `page[size]`; `None`: every event of the run at once.
    pub limit: Option<u32>,
    /// The `next` cursor of an earlier page: only the events after it.
    pub after: Option<String>,
}

/// One log line or span of a run.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunEvent {
    /// Where a read continues after this event.
    pub cursor: String,
    /// `LOG` or `SPAN`.
    pub kind: String,
    pub message: String,
    /// `TRACE`, `DEBUG`, `LOG`, `INFO`, `WARN` or `ERROR`.
    pub level: String,
    /// ISO 8601.
    pub start_time: String,
    /// Milliseconds.
    pub duration: f64,
    #[serde(default)]
    pub span_id: String,
    #[serde(default)]
    pub properties: Map<String, Value>,
}

/// One read of a run's events, oldest first.
#[derive(Debug, Clone, PartialEq)]
pub struct RunEventPage {
    pub events: Vec<RunEvent>,
    /// Pass as [`RunEventsOptions::after`] for the next page; `None` on the last.
    pub next: Option<String>,
}

impl Client {
    /// Reads a run's events in time order (`GET /api/v1/runs/{runId}/events`).
    pub async fn run_events(
        &self,
        run_id: &str,
        options: &RunEventsOptions,
    ) -> Result<RunEventPage, Error> {
        #[derive(Deserialize)]
        struct Pagination {
            next: Option<String>,
        }
        #[derive(Deserialize)]
        struct Body {
            events: Vec<RunEvent>,
            pagination: Option<Pagination>,
        }
        let mut query = Vec::new();
        if options.logs_only {
            query.push("filter%5Bkind%5D=log".to_owned());
        }
        if let Some(limit) = options.limit {
            query.push(format!("page%5Bsize%5D={limit}"));
        }
        if let Some(after) = &options.after {
            query.push(format!("page%5Bafter%5D={}", segment(after)));
        }
        let mut path = format!("/api/v1/runs/{}/events", segment(run_id));
        if !query.is_empty() {
            path = format!("{path}?{}", query.join("&"));
        }
        let body: Body = self
            .call(Method::GET, &path, None::<&()>, REQUEST_TIMEOUT)
            .await?;
        Ok(RunEventPage {
            events: body.events,
            next: body.pagination.and_then(|p| p.next),
        })
    }
}
