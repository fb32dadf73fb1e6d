//! Cron schedules through the management API (what `runnel schedules` uses):
//! [`Client::schedule_list`], [`Client::schedule_create`], [`Client::schedule_get`] and
//! [`Client::schedule_delete`]. A schedule is named by its id (`sched_…`) or by its
//! deduplication key; both reach only the key's own environment.

use reqwest::Method;
use serde::{Deserialize, Serialize};

use crate::client::{segment, Client, Error, REQUEST_TIMEOUT};

/// A schedule as the API shows it (`ScheduleObject`, the fields a client reads).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Schedule {
    /// `sched_…`
    pub id: String,
    /// `IMPERATIVE` (created through the API) or `DECLARATIVE` (declared with its task).
    #[serde(rename = "type")]
    pub kind: String,
    pub task: String,
    pub active: bool,
    /// An imperative schedule's key; `None` for a declarative one.
    #[serde(default)]
    pub deduplication_key: Option<String>,
    #[serde(default)]
    pub external_id: Option<String>,
    pub generator: ScheduleGenerator,
    pub timezone: String,
    #[serde(default)]
    pub window: Option<String>,
    /// The next occurrence (ISO 8601); `None` when inactive.
    #[serde(default)]
    pub next_run: Option<String>,
    /// When it fires: the next occurrence plus the schedule's share of its window.
    #[serde(default)]
    pub next_run_effective_at: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ScheduleGenerator {
    pub expression: String,
    pub description: String,
}

/// One page of schedules.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct SchedulePage {
    pub data: Vec<Schedule>,
    pub pagination: SchedulePagination,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SchedulePagination {
    pub current_page: u32,
    pub total_pages: u32,
    pub count: u64,
}

/// A schedule to create (or, with a key the environment has, the new settings of that
/// schedule).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ScheduleOptions {
    pub task: String,
    /// 5 fields: minute hour day-of-month month day-of-week.
    pub cron: String,
    pub deduplication_key: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub external_id: Option<String>,
    /// An IANA name; UTC when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
    /// `30m`, `2h` (at most 24 h) or `50%`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window: Option<String>,
}

#[derive(Deserialize)]
struct Deleted {
    id: String,
}

impl Client {
    /// Page `page` (from 1) of the environment's schedules, `per_page` (1 to 100) a page.
    pub async fn schedule_list(&self, page: u32, per_page: u32) -> Result<SchedulePage, Error> {
        let path = format!("/api/v1/schedules?page={page}&perPage={per_page}");
        self.call(Method::GET, &path, None::<&()>, REQUEST_TIMEOUT)
            .await
    }

    /// Creates a schedule, or updates the one with the same deduplication key.
    pub async fn schedule_create(&self, options: &ScheduleOptions) -> Result<Schedule, Error> {
        self.call(
            Method::POST,
            "/api/v1/schedules",
            Some(options),
            REQUEST_TIMEOUT,
        )
        .await
    }

    /// The schedule with id or deduplication key `reference`.
    pub async fn schedule_get(&self, reference: &str) -> Result<Schedule, Error> {
        let path = format!("/api/v1/schedules/{}", segment(reference));
        self.call(Method::GET, &path, None::<&()>, REQUEST_TIMEOUT)
            .await
    }

    /// Deletes an imperative schedule by id or deduplication key; returns its id.
    pub async fn schedule_delete(&self, reference: &str) -> Result<String, Error> {
        let path = format!("/api/v1/schedules/{}", segment(reference));
        let deleted: Deleted = self
            .call(Method::DELETE, &path, None::<&()>, REQUEST_TIMEOUT)
            .await?;
        Ok(deleted.id)
    }
}
