//! How stored records map to table rows and back, shared by every backend.
//!
//! Both schemas have the same columns, and each column decodes to the same Rust type on
//! either database: text as `String`, times and counts as `i64` (times in milliseconds
//! since the Unix epoch), costs as `f64`, flags as `bool`, JSON (tags, errors) as text.
//! So one list of values ([`run_values`]) and one set of decoders serve SQLite and
//! PostgreSQL, and a field cannot round-trip on one backend and not on the other. What
//! differs between the backends is SQL, never the mapping.
//!
//! Fails with [`Error::Corrupt`] when a stored value does not parse (an unknown status,
//! a timestamp out of range, malformed JSON).

use std::borrow::Cow;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use runnel_core::key::EnvironmentKind;
use runnel_core::run::{Attempt, AttemptStatus, Packet, Run};
use runnel_core::tenancy::{ApiKeyInfo, Environment, Project};
use runnel_core::trigger::MAX_DURATION_MAX_SECS;
use runnel_core::{
    AttemptId, BatchId, EnvironmentId, MachinePreset, ProjectId, QueueName, RunId, RunStatus,
    WorkerId,
};
use serde_json::Value as Json;

use crate::{Error, Result};

/// Every column of `runs`, in the order of [`run_values`].
pub(crate) const RUN_COLUMNS: &str = "id, environment_id, task_identifier, status, payload, payload_type, output, output_type, \
    error, idempotency_key, idempotency_key_user, idempotency_key_scope, idempotency_key_expires_at, tags, metadata, \
    metadata_type, delay_until, ttl, expire_at, expired_at, max_attempts, max_duration_secs, machine, priority_ms, \
    is_test, queue, concurrency_key, lock_to_version, worker_version, created_at, updated_at, started_at, \
    completed_at, attempt_count, usage_duration_ms, cost_in_cents, base_cost_in_cents, depth, parent_run_id, \
    root_run_id, batch_id, resume_parent_on_completion, schedule_id, queue_ts, worker_id, current_attempt_id, \
    lease_expires_at, timeout_at, next_attempt_at, failed_attempts";

/// How many columns [`RUN_COLUMNS`] names.
pub(crate) fn run_column_count() -> usize {
    RUN_COLUMNS.split(',').count()
}

/// A time as stored: milliseconds since the Unix epoch.
pub(crate) fn ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

pub(crate) fn time(ms: i64) -> Result<DateTime<Utc>> {
    DateTime::from_timestamp_millis(ms)
        .ok_or_else(|| Error::Corrupt(format!("timestamp {ms} out of range")))
}

pub(crate) fn opt_time(ms: Option<i64>) -> Result<Option<DateTime<Utc>>> {
    ms.map(time).transpose()
}

pub(crate) fn run_status(status: &str) -> Result<RunStatus> {
    RunStatus::from_str(status).map_err(|e| Error::Corrupt(e.to_string()))
}

/// Typed access to a column by name, the same on every backend's row type.
pub(crate) trait Columns {
    fn text(&self, column: &str) -> sqlx::Result<String>;
    fn opt_text(&self, column: &str) -> sqlx::Result<Option<String>>;
    fn int(&self, column: &str) -> sqlx::Result<i64>;
    fn opt_int(&self, column: &str) -> sqlx::Result<Option<i64>>;
    fn real(&self, column: &str) -> sqlx::Result<f64>;
    fn flag(&self, column: &str) -> sqlx::Result<bool>;

    fn time(&self, column: &str) -> Result<DateTime<Utc>> {
        time(self.int(column)?)
    }

    fn opt_time(&self, column: &str) -> Result<Option<DateTime<Utc>>> {
        opt_time(self.opt_int(column)?)
    }

    /// A non-negative count that fits a `u32`.
    fn count(&self, column: &str) -> Result<u32> {
        let n = self.int(column)?;
        u32::try_from(n).map_err(|_| Error::Corrupt(format!("{column} = {n}")))
    }

    fn opt_run_id(&self, column: &str) -> Result<Option<RunId>> {
        Ok(self.opt_text(column)?.map(RunId::from_trusted))
    }

    fn opt_json(&self, column: &str) -> Result<Option<Json>> {
        self.opt_text(column)?
            .map(|text| serde_json::from_str(&text))
            .transpose()
            .map_err(|e| Error::Corrupt(format!("{column}: {e}")))
    }
}

macro_rules! impl_columns {
    ($row:ty) => {
        impl Columns for $row {
            fn text(&self, column: &str) -> sqlx::Result<String> {
                sqlx::Row::try_get(self, column)
            }
            fn opt_text(&self, column: &str) -> sqlx::Result<Option<String>> {
                sqlx::Row::try_get(self, column)
            }
            fn int(&self, column: &str) -> sqlx::Result<i64> {
                sqlx::Row::try_get(self, column)
            }
            fn opt_int(&self, column: &str) -> sqlx::Result<Option<i64>> {
                sqlx::Row::try_get(self, column)
            }
            fn real(&self, column: &str) -> sqlx::Result<f64> {
                sqlx::Row::try_get(self, column)
            }
            fn flag(&self, column: &str) -> sqlx::Result<bool> {
                sqlx::Row::try_get(self, column)
            }
        }
    };
}

impl_columns!(sqlx::sqlite::SqliteRow);
impl_columns!(sqlx::postgres::PgRow);

/// Every field of `run` as values to bind, in [`RUN_COLUMNS`] order.
pub(crate) fn run_values(run: &Run) -> Vec<Value<'_>> {
    let tags = serde_json::to_string(&run.tags).expect("a list of strings serializes");
    vec![
        run.id.as_str().into(),
        run.environment_id.as_str().into(),
        run.task_identifier.as_str().into(),
        run.status.as_str().into(),
        run.payload.data.as_deref().into(),
        run.payload.data_type.as_str().into(),
        run.output.as_ref().and_then(|o| o.data.as_deref()).into(),
        run.output.as_ref().map(|o| o.data_type.as_str()).into(),
        run.error.as_ref().map(Json::to_string).into(),
        run.idempotency_key.as_deref().into(),
        run.idempotency_key_user.as_deref().into(),
        run.idempotency_key_scope.as_deref().into(),
        run.idempotency_key_expires_at.map(ms).into(),
        tags.into(),
        run.metadata.as_ref().and_then(|m| m.data.as_deref()).into(),
        run.metadata.as_ref().map(|m| m.data_type.as_str()).into(),
        run.delay_until.map(ms).into(),
        run.ttl.as_deref().into(),
        run.expire_at.map(ms).into(),
        run.expired_at.map(ms).into(),
        run.max_attempts.map(i64::from).into(),
        run.max_duration_secs.map(i64::from).into(),
        run.machine.map(MachinePreset::as_str).into(),
        i64::from(run.priority_ms).into(),
        run.is_test.into(),
        run.queue.as_str().into(),
        run.concurrency_key.as_deref().into(),
        run.lock_to_version.as_deref().into(),
        run.worker_version.as_deref().into(),
        ms(run.created_at).into(),
        ms(run.updated_at).into(),
        run.started_at.map(ms).into(),
        run.completed_at.map(ms).into(),
        i64::from(run.attempt_count).into(),
        run.usage_duration_ms.into(),
        run.cost_in_cents.into(),
        run.base_cost_in_cents.into(),
        i64::from(run.depth).into(),
        run.parent_run_id.as_ref().map(RunId::as_str).into(),
        run.root_run_id.as_ref().map(RunId::as_str).into(),
        run.batch_id.as_ref().map(BatchId::as_str).into(),
        run.resume_parent_on_completion.into(),
        run.schedule_id.as_deref().into(),
        run.queue_ts.into(),
        run.worker_id.as_ref().map(WorkerId::as_str).into(),
        run.current_attempt_id
            .as_ref()
            .map(AttemptId::as_str)
            .into(),
        run.lease_expires_at.map(ms).into(),
        run.timeout_at.map(ms).into(),
        run.next_attempt_at.map(ms).into(),
        i64::from(run.failed_attempts).into(),
    ]
}

/// A run from a row that selected [`RUN_COLUMNS`].
pub(crate) fn run_from_row(row: &impl Columns) -> Result<Run> {
    let tags = row.text("tags")?;
    let tags: Vec<String> =
        serde_json::from_str(&tags).map_err(|e| Error::Corrupt(format!("tags: {e}")))?;
    let machine = row
        .opt_text("machine")?
        .map(|m| MachinePreset::from_str(&m))
        .transpose()
        .map_err(|e| Error::Corrupt(e.to_string()))?;
    let packet = |data_column: &str, type_column: &str| -> Result<Option<Packet>> {
        row.opt_text(type_column)?
            .map(|data_type| -> Result<Packet> {
                Ok(Packet {
                    data: row.opt_text(data_column)?,
                    data_type,
                })
            })
            .transpose()
    };
    Ok(Run {
        id: RunId::from_trusted(row.text("id")?),
        environment_id: EnvironmentId::from_trusted(row.text("environment_id")?),
        task_identifier: row.text("task_identifier")?,
        status: run_status(&row.text("status")?)?,
        payload: Packet {
            data: row.opt_text("payload")?,
            data_type: row.text("payload_type")?,
        },
        output: packet("output", "output_type")?,
        error: row.opt_json("error")?,
        idempotency_key: row.opt_text("idempotency_key")?,
        idempotency_key_user: row.opt_text("idempotency_key_user")?,
        idempotency_key_scope: row.opt_text("idempotency_key_scope")?,
        idempotency_key_expires_at: row.opt_time("idempotency_key_expires_at")?,
        tags,
        metadata: packet("metadata", "metadata_type")?,
        delay_until: row.opt_time("delay_until")?,
        ttl: row.opt_text("ttl")?,
        expire_at: row.opt_time("expire_at")?,
        expired_at: row.opt_time("expired_at")?,
        max_attempts: row.opt_int("max_attempts")?.map(|n| n as u32),
        max_duration_secs: row.opt_int("max_duration_secs")?.map(|n| n as u32),
        machine,
        priority_ms: row.int("priority_ms")? as i32,
        is_test: row.flag("is_test")?,
        queue: QueueName::from_trusted(row.text("queue")?),
        concurrency_key: row.opt_text("concurrency_key")?,
        lock_to_version: row.opt_text("lock_to_version")?,
        worker_version: row.opt_text("worker_version")?,
        created_at: row.time("created_at")?,
        updated_at: row.time("updated_at")?,
        started_at: row.opt_time("started_at")?,
        completed_at: row.opt_time("completed_at")?,
        attempt_count: row.count("attempt_count")?,
        usage_duration_ms: row.int("usage_duration_ms")?,
        cost_in_cents: row.real("cost_in_cents")?,
        base_cost_in_cents: row.real("base_cost_in_cents")?,
        depth: row.count("depth")?,
        parent_run_id: row.opt_run_id("parent_run_id")?,
        root_run_id: row.opt_run_id("root_run_id")?,
        batch_id: row.opt_text("batch_id")?.map(BatchId::from_trusted),
        resume_parent_on_completion: row.flag("resume_parent_on_completion")?,
        schedule_id: row.opt_text("schedule_id")?,
        queue_ts: row.int("queue_ts")?,
        worker_id: row.opt_text("worker_id")?.map(WorkerId::from_trusted),
        current_attempt_id: row
            .opt_text("current_attempt_id")?
            .map(AttemptId::from_trusted),
        lease_expires_at: row.opt_time("lease_expires_at")?,
        timeout_at: row.opt_time("timeout_at")?,
        next_attempt_at: row.opt_time("next_attempt_at")?,
        failed_attempts: row.count("failed_attempts")?,
    })
}

/// A project from a row with `id, created_at`.
pub(crate) fn project_from_row(row: &impl Columns) -> Result<Project> {
    Ok(Project {
        id: ProjectId::from_trusted(row.text("id")?),
        created_at: row.time("created_at")?,
    })
}

/// An environment from a row with `id, project_id, kind`.
pub(crate) fn environment_from_row(row: &impl Columns) -> Result<Environment> {
    Ok(Environment {
        id: EnvironmentId::from_trusted(row.text("id")?),
        project_id: ProjectId::from_trusted(row.text("project_id")?),
        kind: environment_kind(&row.text("kind")?)?,
    })
}

/// What `api_key_list` shows, from a row with `prefix, kind, created_at, revoked_at`.
pub(crate) fn api_key_info_from_row(row: &impl Columns) -> Result<ApiKeyInfo> {
    Ok(ApiKeyInfo {
        prefix: row.text("prefix")?,
        environment: environment_kind(&row.text("kind")?)?,
        created_at: row.time("created_at")?,
        revoked_at: row.opt_time("revoked_at")?,
    })
}

/// An attempt from a row with every column of `attempts`.
pub(crate) fn attempt_from_row(row: &impl Columns) -> Result<Attempt> {
    let status = row.text("status")?;
    Ok(Attempt {
        id: AttemptId::from_trusted(row.text("id")?),
        run_id: RunId::from_trusted(row.text("run_id")?),
        number: row.int("number")? as u32,
        status: AttemptStatus::parse(&status)
            .ok_or_else(|| Error::Corrupt(format!("attempt status {status:?}")))?,
        created_at: row.time("created_at")?,
        updated_at: row.time("updated_at")?,
        started_at: row.opt_time("started_at")?,
        completed_at: row.opt_time("completed_at")?,
        error: row
            .opt_text("error")?
            .map(|e| serde_json::from_str(&e))
            .transpose()
            .map_err(|e| Error::Corrupt(format!("attempt error: {e}")))?,
        worker_id: row.opt_text("worker_id")?.map(WorkerId::from_trusted),
        duration_ms: row.int("duration_ms")?,
        waited_ms: row.int("waited_ms")?,
    })
}

fn environment_kind(kind: &str) -> Result<EnvironmentKind> {
    EnvironmentKind::from_str(kind).map_err(|e| Error::Corrupt(e.to_string()))
}

/// Every column of `attempts`.
pub(crate) const ATTEMPT_COLUMNS: &str =
    "id, run_id, number, status, created_at, updated_at, started_at, completed_at, error, worker_id, duration_ms, waited_ms";

/// A task setting from a row with `task_identifier, queue, retry, max_duration_secs, machine`.
pub(crate) fn task_config_from_row(row: &impl Columns) -> Result<crate::TaskConfig> {
    let retry = row
        .opt_text("retry")?
        .map(|r| serde_json::from_str(&r))
        .transpose()
        .map_err(|e| Error::Corrupt(format!("retry policy: {e}")))?;
    let machine = row
        .opt_text("machine")?
        .map(|m| MachinePreset::from_str(&m))
        .transpose()
        .map_err(|e| Error::Corrupt(e.to_string()))?;
    Ok(crate::TaskConfig {
        task_identifier: row.text("task_identifier")?,
        queue: row.text("queue")?,
        retry,
        max_duration_secs: row.opt_int("max_duration_secs")?.map(|n| n as u32),
        machine,
        file_path: row.opt_text("file_path")?,
        scheduled: row.flag("scheduled")?,
    })
}

/// A retry policy as stored (JSON text).
pub(crate) fn retry_text(config: &crate::TaskConfig) -> Option<String> {
    config
        .retry
        .as_ref()
        .map(|r| serde_json::to_string(r).expect("a retry policy serializes"))
}

/// The next server-assigned version of `now`'s date (`YYYYMMDD.N`), given the versions
/// that already exist for that date.
pub(crate) fn next_version(now: DateTime<Utc>, existing: &[String]) -> String {
    let date = now.format("%Y%m%d").to_string();
    let prefix = format!("{date}.");
    let highest = existing
        .iter()
        .filter_map(|v| v.strip_prefix(&prefix)?.parse::<u32>().ok())
        .max()
        .unwrap_or(0);
    format!("{date}.{}", highest + 1)
}

/// The `LIKE` pattern matching versions assigned on `now`'s date.
pub(crate) fn version_pattern(now: DateTime<Utc>) -> String {
    format!("{}.%", now.format("%Y%m%d"))
}

/// The task identifiers a worker runs, as stored (JSON array).
pub(crate) fn task_list(text: &str) -> Result<Vec<String>> {
    serde_json::from_str(text).map_err(|e| Error::Corrupt(format!("worker tasks: {e}")))
}

/// Pairs each run with its current attempt, dropping runs whose attempt is missing.
pub(crate) fn pair_leased(runs: Vec<Run>, attempts: Vec<Attempt>) -> Vec<crate::Leased> {
    let mut by_id: std::collections::HashMap<AttemptId, Attempt> =
        attempts.into_iter().map(|a| (a.id.clone(), a)).collect();
    runs.into_iter()
        .filter_map(|run| {
            let attempt = by_id.remove(run.current_attempt_id.as_ref()?)?;
            Some(crate::Leased { run, attempt })
        })
        .collect()
}

/// `maxDuration` at or above this means "no limit" (contract §4.5).
pub(crate) const NO_MAX_DURATION: i64 = MAX_DURATION_MAX_SECS as i64;

/// A queued run leased to `worker`: the run as it is after the dequeue (what the
/// backends then write), with its new `Pending` attempt. Settings the trigger left open
/// (maxDuration, machine) come from the worker's task.
pub(crate) fn lease(
    mut run: Run,
    worker: &crate::WorkerRecord,
    lease_until: DateTime<Utc>,
    now: DateTime<Utc>,
) -> crate::Leased {
    let task = worker.task(&run.task_identifier);
    let attempt = Attempt {
        id: AttemptId::generate(ms(now)),
        run_id: run.id.clone(),
        number: run.attempt_count + 1,
        status: AttemptStatus::Pending,
        created_at: now,
        updated_at: now,
        started_at: None,
        completed_at: None,
        error: None,
        worker_id: Some(worker.id.clone()),
        duration_ms: 0,
        waited_ms: 0,
    };
    run.status = RunStatus::Dequeued;
    run.worker_id = Some(worker.id.clone());
    run.worker_version = Some(worker.version.clone());
    run.current_attempt_id = Some(attempt.id.clone());
    run.lease_expires_at = Some(lease_until);
    run.expire_at = None;
    run.attempt_count = attempt.number;
    run.max_duration_secs = run
        .max_duration_secs
        .or(task.and_then(|t| t.max_duration_secs));
    run.machine = run.machine.or(task.and_then(|t| t.machine));
    run.updated_at = now;
    crate::Leased { run, attempt }
}

/// One value bound to a statement.
#[derive(Debug, Clone)]
pub(crate) enum Value<'a> {
    Text(Option<Cow<'a, str>>),
    Int(Option<i64>),
    Real(f64),
    Flag(bool),
    /// A list bound as one array (PostgreSQL's `= ANY($n)`).
    Texts(Vec<Cow<'a, str>>),
    /// A column of a [`Params::table`](crate::sql::Params::table) bound as one array (PostgreSQL's `unnest`).
    TextColumn(Vec<Option<Cow<'a, str>>>),
    /// A column of a [`Params::table`](crate::sql::Params::table) bound as one array (PostgreSQL's `unnest`).
    IntColumn(Vec<Option<i64>>),
    /// A column of a [`Params::table`](crate::sql::Params::table) bound as one array (PostgreSQL's `unnest`).
    RealColumn(Vec<f64>),
}

impl<'a> From<&'a str> for Value<'a> {
    fn from(text: &'a str) -> Self {
        Value::Text(Some(Cow::Borrowed(text)))
    }
}

impl<'a> From<&'a String> for Value<'a> {
    fn from(text: &'a String) -> Self {
        Value::Text(Some(Cow::Borrowed(text)))
    }
}

impl From<String> for Value<'_> {
    fn from(text: String) -> Self {
        Value::Text(Some(Cow::Owned(text)))
    }
}

impl<'a> From<Option<&'a str>> for Value<'a> {
    fn from(text: Option<&'a str>) -> Self {
        Value::Text(text.map(Cow::Borrowed))
    }
}

impl From<Option<String>> for Value<'_> {
    fn from(text: Option<String>) -> Self {
        Value::Text(text.map(Cow::Owned))
    }
}

impl From<i64> for Value<'_> {
    fn from(n: i64) -> Self {
        Value::Int(Some(n))
    }
}

impl From<Option<i64>> for Value<'_> {
    fn from(n: Option<i64>) -> Self {
        Value::Int(n)
    }
}

impl From<f64> for Value<'_> {
    fn from(x: f64) -> Self {
        Value::Real(x)
    }
}

impl From<bool> for Value<'_> {
    fn from(flag: bool) -> Self {
        Value::Flag(flag)
    }
}
