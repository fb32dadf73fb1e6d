//! Listing runs (`GET /api/v1/runs`) and replaying one (`POST /api/v1/runs/{id}/replay`).

use reqwest::Method;
use serde::Deserialize;
use serde_json::Value;

use crate::client::{segment, Client, Error, RunInfo, REQUEST_TIMEOUT};

/// What to list. Empty lists match everything; the server's defaults apply to what is
/// left unset (25 runs a page, the last 7 days).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunListOptions {
    /// Public statuses, either vocabulary (`QUEUED`, `COMPLETED`, `FROZEN`, …).
    pub statuses: Vec<String>,
    pub tasks: Vec<String>,
    /// Runs with any of these tags.
    pub tags: Vec<String>,
    /// `page[size]`, 1..=100.
    pub limit: Option<u32>,
    /// A `next` cursor of an earlier page: list the runs older than it.
    pub after: Option<String>,
    /// A `previous` cursor of an earlier page: list the runs newer than it.
    pub before: Option<String>,
}

impl RunListOptions {
    /// The query string, keys and values percent-encoded.
    fn query(&self) -> String {
        let mut pairs: Vec<(&str, String)> = Vec::new();
        for (key, values) in [
            ("filter[status]", &self.statuses),
            ("filter[taskIdentifier]", &self.tasks),
            ("filter[tag]", &self.tags),
        ] {
            if !values.is_empty() {
                pairs.push((key, values.join(",")));
            }
        }
        if let Some(limit) = self.limit {
            pairs.push(("page[size]", limit.to_string()));
        }
        if let Some(after) = &self.after {
            pairs.push(("page[after]", after.clone()));
        }
        if let Some(before) = &self.before {
            pairs.push(("page[before]", before.clone()));
        }
        pairs
            .iter()
            .map(|(key, value)| format!("{}={}", segment(key), segment(value)))
            .collect::<Vec<_>>()
            .join("&")
    }
}

/// One page of runs, newest first.
#[derive(Debug, Clone, PartialEq)]
pub struct RunPage {
    pub runs: Vec<RunInfo>,
    /// Pass as [`RunListOptions::after`] for the next (older) page; `None` on the last.
    pub next: Option<String>,
    /// Pass as [`RunListOptions::before`] for the previous (newer) page.
    pub previous: Option<String>,
}

impl Client {
    /// Lists the runs of the key's environment (`GET /api/v1/runs`).
    pub async fn list_runs(&self, options: &RunListOptions) -> Result<RunPage, Error> {
        #[derive(Deserialize)]
        struct Pagination {
            next: Option<String>,
            previous: Option<String>,
        }
        #[derive(Deserialize)]
        struct Body {
            data: Vec<Value>,
            pagination: Pagination,
        }
        let query = options.query();
        let path = if query.is_empty() {
            "/api/v1/runs".to_owned()
        } else {
            format!("/api/v1/runs?{query}")
        };
        let body: Body = self
            .call(Method::GET, &path, None::<&()>, REQUEST_TIMEOUT)
            .await?;
        Ok(RunPage {
            runs: body
                .data
                .into_iter()
                .map(RunInfo::from_json)
                .collect::<Result<_, _>>()?,
            next: body.pagination.next,
            previous: body.pagination.previous,
        })
    }

    /// Replays a run: a new run of the same task with the same payload and options.
    /// Answers with the new run's id.
    pub async fn replay_run(&self, run_id: &str) -> Result<String, Error> {
        #[derive(Deserialize)]
        struct Body {
            id: String,
        }
        let path = format!("/api/v1/runs/{}/replay", segment(run_id));
        let body: Body = self
            .call(Method::POST, &path, None::<&()>, REQUEST_TIMEOUT)
            .await?;
        Ok(body.id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_query_encodes_keys_and_values() {
        assert_eq!(RunListOptions::default().query(), "");
        let options = RunListOptions {
            statuses: vec!["QUEUED".into(), "FAILED".into()],
            tags: vec!["a b".into()],
            limit: Some(5),
            after: Some("eyJj".into()),
            ..RunListOptions::default()
        };
        assert_eq!(
            options.query(),
            "filter%5Bstatus%5D=QUEUED%2CFAILED&filter%5Btag%5D=a%20b&page%5Bsize%5D=5&page%5Bafter%5D=eyJj"
        );
    }
}
