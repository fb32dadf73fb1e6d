//! Cron schedules ([`ScheduleStore`]), written once for both backends.
//!
//! The store keeps each schedule's settings and its place in time: the next occurrence
//! (`next_run_at`, nominal) and when it fires (`next_fire_at`, with the window's
//! offset), the last occurrence fired, and an occurrence claimed but perhaps not yet
//! triggered (`pending_run_at`). The engine computes every time (`runnel_core::schedule`);
//! the store only compares and swaps them:
//!
//! ```text
//!   due (next_fire_at <= now)
//!     └─ claim: one conditional UPDATE on next_run_at (one node wins) that moves
//!        next_* on and sets pending_run_at = the occurrence
//!          └─ trigger its run, idempotent on (schedule, occurrence)
//!               └─ settle: pending_run_at = NULL
//! ```
//!
//! A node that dies between claim and settle leaves `pending_run_at` set; any node then
//! triggers it again, and the run's idempotency key makes that the same run. So each
//! occurrence fires exactly once across nodes and crashes.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use runnel_core::schedule::ScheduleKind;
use runnel_core::{EnvironmentId, ScheduleId};

use crate::backend::Backend;
use crate::rows::{ms, Columns};
use crate::sql::{Conn, Dialect, Params};
use crate::{Error, Result};

/// A stored schedule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduleRecord {
    pub id: ScheduleId,
    pub environment_id: EnvironmentId,
    pub task_identifier: String,
    pub kind: ScheduleKind,
    pub active: bool,
    /// The user's key (imperative schedules); `None` for declarative ones.
    pub deduplication_key: Option<String>,
    pub external_id: Option<String>,
    pub cron: String,
    pub timezone: String,
    pub window: Option<String>,
    pub next_run_at: Option<DateTime<Utc>>,
    pub next_fire_at: Option<DateTime<Utc>>,
    pub last_run_at: Option<DateTime<Utc>>,
    pub pending_run_at: Option<DateTime<Utc>>,
    pub pending_last_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// An imperative schedule to create or change. `id` is used only when a new row is
/// inserted; `next` is the next occurrence for these settings (nominal, effective).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduleWrite {
    pub id: ScheduleId,
    pub environment_id: EnvironmentId,
    pub task_identifier: String,
    pub deduplication_key: String,
    pub external_id: Option<String>,
    pub cron: String,
    pub timezone: String,
    pub window: Option<String>,
    pub next: Option<(DateTime<Utc>, DateTime<Utc>)>,
}

/// A declarative schedule a registration declares for one of its tasks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeclaredWrite {
    /// Used only when the task has no declarative schedule yet.
    pub id: ScheduleId,
    pub cron: String,
    pub timezone: String,
    pub window: Option<String>,
    /// The next occurrence for these settings; kept as stored when the settings did not
    /// change.
    pub next: Option<(DateTime<Utc>, DateTime<Utc>)>,
}

/// The declarative schedules one registration keeps in sync, in its own transaction.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeclaredSync {
    /// Each listed task with its declared schedule here; `None` deletes the task's
    /// declarative schedule.
    pub tasks: Vec<(String, Option<DeclaredWrite>)>,
    /// Also deletes the declarative schedules of tasks not listed (the registration is
    /// the whole project: a `trigger.dev` manifest).
    pub prune_unlisted: bool,
}

/// A schedule named in a request: its id, or an imperative schedule's deduplication key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScheduleRef {
    Id(ScheduleId),
    Key(String),
}

impl ScheduleRef {
    /// `sched_…` is an id; anything else a deduplication key.
    pub fn parse(s: &str) -> Self {
        match ScheduleId::parse(s) {
            Some(id) => ScheduleRef::Id(id),
            None => ScheduleRef::Key(s.to_owned()),
        }
    }
}

/// One occurrence a node claims: the swap [`ScheduleStore::schedule_claim`] makes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduleClaim {
    pub id: ScheduleId,
    /// The `next_run_at` the node read: the claim holds only if it is unchanged.
    pub expected_next: DateTime<Utc>,
    /// The occurrence that fires (becomes `last_run_at` and `pending_run_at`).
    pub fire: DateTime<Utc>,
    /// The occurrence after it (nominal, effective); `None` when there is none.
    pub next: Option<(DateTime<Utc>, DateTime<Utc>)>,
}

/// The schedules of each environment, and the swaps that fire them.
#[async_trait]
pub trait ScheduleStore: Send + Sync {
    /// Creates the imperative schedule with `write.deduplication_key` in its environment,
    /// or changes the one that has it (its id, `active` and pending occurrence stay).
    async fn schedule_upsert(
        &self,
        write: &ScheduleWrite,
        now: DateTime<Utc>,
    ) -> Result<ScheduleRecord>;

    async fn schedule_get(
        &self,
        environment: &EnvironmentId,
        reference: &ScheduleRef,
    ) -> Result<Option<ScheduleRecord>>;

    /// A page of the environment's schedules, oldest first, and how many there are.
    async fn schedule_list(
        &self,
        environment: &EnvironmentId,
        offset: u64,
        limit: u32,
    ) -> Result<(Vec<ScheduleRecord>, u64)>;

    /// Changes an imperative schedule's settings (its key stays); `None` when the
    /// environment has no imperative schedule `id`.
    async fn schedule_update(
        &self,
        environment: &EnvironmentId,
        id: &ScheduleId,
        write: &ScheduleWrite,
        now: DateTime<Utc>,
    ) -> Result<Option<ScheduleRecord>>;

    /// Deletes the schedule; `false` when there was none.
    async fn schedule_delete(&self, environment: &EnvironmentId, id: &ScheduleId) -> Result<bool>;

    /// Activates (with its `next` occurrence from now) or deactivates the schedule;
    /// `None` when there is none.
    async fn schedule_set_active(
        &self,
        environment: &EnvironmentId,
        id: &ScheduleId,
        active: bool,
        next: Option<(DateTime<Utc>, DateTime<Utc>)>,
        now: DateTime<Utc>,
    ) -> Result<Option<ScheduleRecord>>;

    /// The earliest moment a schedule has work: an active one's `next_fire_at`, or a
    /// pending occurrence (due at once).
    async fn schedule_next_due(&self) -> Result<Option<DateTime<Utc>>>;

    /// Schedules with work at `now`, at most `limit`: pending occurrences first, then
    /// active schedules whose `next_fire_at` has come, earliest first.
    async fn schedule_due(&self, now: DateTime<Utc>, limit: u32) -> Result<Vec<ScheduleRecord>>;

    /// Claims one occurrence (see the module doc); `false` when another node moved the
    /// schedule first, or it was deactivated, deleted or has a pending occurrence.
    async fn schedule_claim(&self, claim: &ScheduleClaim, now: DateTime<Utc>) -> Result<bool>;

    /// Clears the pending occurrence `pending` once its run exists.
    async fn schedule_settle(&self, id: &ScheduleId, pending: DateTime<Utc>) -> Result<()>;

    /// Whether the task's latest registration in `environment` says it is scheduled;
    /// `None` when no registration there lists the task.
    async fn task_scheduled(&self, environment: &EnvironmentId, task: &str)
        -> Result<Option<bool>>;
}

const COLUMNS: &str = "id, environment_id, task_identifier, kind, active, deduplication_key, \
     external_id, cron, timezone, time_window, next_run_at, next_fire_at, last_run_at, \
     pending_run_at, pending_last_at, created_at, updated_at";

fn record_from_row(row: &impl Columns) -> Result<ScheduleRecord> {
    let environment = row.text("environment_id")?;
    let id = row.text("id")?;
    Ok(ScheduleRecord {
        id: ScheduleId::parse(&id).ok_or_else(|| Error::Corrupt(format!("schedule id {id:?}")))?,
        environment_id: EnvironmentId::parse(&environment)
            .ok_or_else(|| Error::Corrupt(format!("environment id {environment:?}")))?,
        task_identifier: row.text("task_identifier")?,
        kind: row
            .text("kind")?
            .parse()
            .map_err(|e: runnel_core::schedule::ScheduleError| Error::Corrupt(e.to_string()))?,
        active: row.flag("active")?,
        deduplication_key: row.opt_text("deduplication_key")?,
        external_id: row.opt_text("external_id")?,
        cron: row.text("cron")?,
        timezone: row.text("timezone")?,
        window: row.opt_text("time_window")?,
        next_run_at: row.opt_time("next_run_at")?,
        next_fire_at: row.opt_time("next_fire_at")?,
        last_run_at: row.opt_time("last_run_at")?,
        pending_run_at: row.opt_time("pending_run_at")?,
        pending_last_at: row.opt_time("pending_last_at")?,
        created_at: row.time("created_at")?,
        updated_at: row.time("updated_at")?,
    })
}

fn next_ms(next: Option<(DateTime<Utc>, DateTime<Utc>)>) -> (Option<i64>, Option<i64>) {
    (next.map(|n| ms(n.0)), next.map(|n| ms(n.1)))
}

/// Writes a registration's declarative schedules inside its transaction (see
/// [`DeclaredSync`]).
pub(crate) async fn sync_declared<D: Dialect>(
    conn: &mut Conn<D>,
    environment: &EnvironmentId,
    sync: &DeclaredSync,
    now: DateTime<Utc>,
) -> Result<()> {
    let env = environment.as_str();
    // The settings are the same when cron, timezone and window are: the stored next
    // occurrence (perhaps missed while no server ran) then stays.
    let same = "schedules.cron = excluded.cron AND schedules.timezone = excluded.timezone \
         AND schedules.time_window IS NOT DISTINCT FROM excluded.time_window";
    let upsert = format!(
        "INSERT INTO schedules (id, environment_id, task_identifier, kind, active, \
         cron, timezone, time_window, next_run_at, next_fire_at, created_at, updated_at) \
         VALUES ($1, $2, $3, 'DECLARATIVE', {true_}, $4, $5, $6, $7, $8, $9, $9) \
         ON CONFLICT (environment_id, task_identifier) WHERE kind = 'DECLARATIVE' DO UPDATE SET \
         next_run_at = CASE WHEN {same} THEN schedules.next_run_at ELSE excluded.next_run_at END, \
         next_fire_at = CASE WHEN {same} THEN schedules.next_fire_at ELSE excluded.next_fire_at END, \
         updated_at = CASE WHEN {same} THEN schedules.updated_at ELSE excluded.updated_at END, \
         cron = excluded.cron, timezone = excluded.timezone, time_window = excluded.time_window",
        true_ = D::TRUE,
    );
    for (task, declared) in &sync.tasks {
        match declared {
            Some(declared) => {
                let (next_run, next_fire) = next_ms(declared.next);
                Params::<D>::new()
                    .with(declared.id.as_str())
                    .with(env)
                    .with(task.as_str())
                    .with(declared.cron.as_str())
                    .with(declared.timezone.as_str())
                    .with(declared.window.as_deref())
                    .with(next_run)
                    .with(next_fire)
                    .with(ms(now))
                    .execute(conn, &upsert)
                    .await?;
            }
            None => {
                Params::<D>::new()
                    .with(env)
                    .with(task.as_str())
                    .execute(
                        conn,
                        "DELETE FROM schedules WHERE environment_id = $1 \
                         AND kind = 'DECLARATIVE' AND task_identifier = $2",
                    )
                    .await?;
            }
        }
    }
    if sync.prune_unlisted {
        let mut p = Params::<D>::new();
        let env = p.bind(env);
        let listed: Vec<&str> = sync.tasks.iter().map(|(task, _)| task.as_str()).collect();
        let sql = if listed.is_empty() {
            format!("DELETE FROM schedules WHERE environment_id = {env} AND kind = 'DECLARATIVE'")
        } else {
            let list = p.list(listed);
            format!(
                "DELETE FROM schedules WHERE environment_id = {env} AND kind = 'DECLARATIVE' \
                 AND NOT (task_identifier {list})"
            )
        };
        p.execute(conn, &sql).await?;
    }
    Ok(())
}

#[async_trait]
impl<B: Backend> ScheduleStore for B {
    async fn schedule_upsert(
        &self,
        write: &ScheduleWrite,
        now: DateTime<Utc>,
    ) -> Result<ScheduleRecord> {
        let mut conn = self.writer().await?;
        let (next_run, next_fire) = next_ms(write.next);
        let sql = format!(
            "INSERT INTO schedules (id, environment_id, task_identifier, kind, active, \
             deduplication_key, external_id, cron, timezone, time_window, next_run_at, \
             next_fire_at, created_at, updated_at) \
             VALUES ($1, $2, $3, 'IMPERATIVE', {true_}, $4, $5, $6, $7, $8, $9, $10, $11, $11) \
             ON CONFLICT (environment_id, deduplication_key) WHERE deduplication_key IS NOT NULL \
             DO UPDATE SET task_identifier = excluded.task_identifier, \
             external_id = excluded.external_id, cron = excluded.cron, \
             timezone = excluded.timezone, time_window = excluded.time_window, \
             next_run_at = excluded.next_run_at, next_fire_at = excluded.next_fire_at, \
             updated_at = excluded.updated_at \
             RETURNING {COLUMNS}",
            true_ = B::D::TRUE,
        );
        let row = Params::<B::D>::new()
            .with(write.id.as_str())
            .with(write.environment_id.as_str())
            .with(write.task_identifier.as_str())
            .with(write.deduplication_key.as_str())
            .with(write.external_id.as_deref())
            .with(write.cron.as_str())
            .with(write.timezone.as_str())
            .with(write.window.as_deref())
            .with(next_run)
            .with(next_fire)
            .with(ms(now))
            .fetch_optional(&mut conn, &sql)
            .await?
            .ok_or_else(|| Error::Corrupt("schedule upsert returned no row".into()))?;
        record_from_row(&row)
    }

    async fn schedule_get(
        &self,
        environment: &EnvironmentId,
        reference: &ScheduleRef,
    ) -> Result<Option<ScheduleRecord>> {
        let mut conn = self.reader().await?;
        let (column, value) = match reference {
            ScheduleRef::Id(id) => ("id", id.as_str()),
            ScheduleRef::Key(key) => ("deduplication_key", key.as_str()),
        };
        let sql =
            format!("SELECT {COLUMNS} FROM schedules WHERE environment_id = $1 AND {column} = $2");
        let row = Params::<B::D>::new()
            .with(environment.as_str())
            .with(value)
            .fetch_optional(&mut conn, &sql)
            .await?;
        row.as_ref().map(record_from_row).transpose()
    }

    async fn schedule_list(
        &self,
        environment: &EnvironmentId,
        offset: u64,
        limit: u32,
    ) -> Result<(Vec<ScheduleRecord>, u64)> {
        let mut conn = self.reader().await?;
        let count = Params::<B::D>::new()
            .with(environment.as_str())
            .fetch_optional(
                &mut conn,
                "SELECT COUNT(*) AS n FROM schedules WHERE environment_id = $1",
            )
            .await?
            .map(|row| row.int("n"))
            .transpose()?
            .unwrap_or(0);
        let sql = format!(
            "SELECT {COLUMNS} FROM schedules WHERE environment_id = $1 \
             ORDER BY created_at, id LIMIT $2 OFFSET $3"
        );
        let rows = Params::<B::D>::new()
            .with(environment.as_str())
            .with(i64::from(limit))
            .with(i64::try_from(offset).unwrap_or(i64::MAX))
            .fetch_all(&mut conn, &sql)
            .await?;
        let records = rows
            .iter()
            .map(record_from_row)
            .collect::<Result<Vec<_>>>()?;
        Ok((records, u64::try_from(count).unwrap_or(0)))
    }

    async fn schedule_update(
        &self,
        environment: &EnvironmentId,
        id: &ScheduleId,
        write: &ScheduleWrite,
        now: DateTime<Utc>,
    ) -> Result<Option<ScheduleRecord>> {
        let mut conn = self.writer().await?;
        let (next_run, next_fire) = next_ms(write.next);
        let sql = format!(
            "UPDATE schedules SET task_identifier = $1, external_id = $2, cron = $3, \
             timezone = $4, time_window = $5, next_run_at = $6, next_fire_at = $7, \
             updated_at = $8 \
             WHERE environment_id = $9 AND id = $10 AND kind = 'IMPERATIVE' \
             RETURNING {COLUMNS}"
        );
        let row = Params::<B::D>::new()
            .with(write.task_identifier.as_str())
            .with(write.external_id.as_deref())
            .with(write.cron.as_str())
            .with(write.timezone.as_str())
            .with(write.window.as_deref())
            .with(next_run)
            .with(next_fire)
            .with(ms(now))
            .with(environment.as_str())
            .with(id.as_str())
            .fetch_optional(&mut conn, &sql)
            .await?;
        row.as_ref().map(record_from_row).transpose()
    }

    async fn schedule_delete(&self, environment: &EnvironmentId, id: &ScheduleId) -> Result<bool> {
        let mut conn = self.writer().await?;
        let deleted = Params::<B::D>::new()
            .with(environment.as_str())
            .with(id.as_str())
            .execute(
                &mut conn,
                "DELETE FROM schedules WHERE environment_id = $1 AND id = $2",
            )
            .await?;
        Ok(deleted > 0)
    }

    async fn schedule_set_active(
        &self,
        environment: &EnvironmentId,
        id: &ScheduleId,
        active: bool,
        next: Option<(DateTime<Utc>, DateTime<Utc>)>,
        now: DateTime<Utc>,
    ) -> Result<Option<ScheduleRecord>> {
        let mut conn = self.writer().await?;
        let (next_run, next_fire) = next_ms(next);
        // Deactivating keeps the stored next occurrence (shown as `nextRun`); activating
        // moves it to the first one from now, so nothing missed while inactive fires.
        let sql = format!(
            "UPDATE schedules SET active = $1, \
             next_run_at = CASE WHEN $1 THEN $2 ELSE next_run_at END, \
             next_fire_at = CASE WHEN $1 THEN $3 ELSE next_fire_at END, updated_at = $4 \
             WHERE environment_id = $5 AND id = $6 RETURNING {COLUMNS}"
        );
        let row = Params::<B::D>::new()
            .with(active)
            .with(next_run)
            .with(next_fire)
            .with(ms(now))
            .with(environment.as_str())
            .with(id.as_str())
            .fetch_optional(&mut conn, &sql)
            .await?;
        row.as_ref().map(record_from_row).transpose()
    }

    async fn schedule_next_due(&self) -> Result<Option<DateTime<Utc>>> {
        let mut conn = self.reader().await?;
        let sql = format!(
            "SELECT (SELECT MIN(next_fire_at) FROM schedules WHERE active = {}) AS fire, \
             (SELECT MIN(pending_run_at) FROM schedules WHERE pending_run_at IS NOT NULL) \
             AS pending",
            B::D::TRUE
        );
        let row = Params::<B::D>::new()
            .fetch_optional(&mut conn, &sql)
            .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let fire = row.opt_time("fire")?;
        let pending = row.opt_time("pending")?;
        Ok(match (fire, pending) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        })
    }

    async fn schedule_due(&self, now: DateTime<Utc>, limit: u32) -> Result<Vec<ScheduleRecord>> {
        let mut conn = self.reader().await?;
        let pending_sql = format!(
            "SELECT {COLUMNS} FROM schedules WHERE pending_run_at IS NOT NULL \
             ORDER BY pending_run_at LIMIT $1"
        );
        let mut records = Params::<B::D>::new()
            .with(i64::from(limit))
            .fetch_all(&mut conn, &pending_sql)
            .await?
            .iter()
            .map(record_from_row)
            .collect::<Result<Vec<_>>>()?;
        let room = limit.saturating_sub(records.len() as u32);
        if room > 0 {
            let due_sql = format!(
                "SELECT {COLUMNS} FROM schedules WHERE active = {} AND next_fire_at <= $1 \
                 AND pending_run_at IS NULL ORDER BY next_fire_at LIMIT $2",
                B::D::TRUE
            );
            let due = Params::<B::D>::new()
                .with(ms(now))
                .with(i64::from(room))
                .fetch_all(&mut conn, &due_sql)
                .await?;
            for row in &due {
                records.push(record_from_row(row)?);
            }
        }
        Ok(records)
    }

    async fn schedule_claim(&self, claim: &ScheduleClaim, now: DateTime<Utc>) -> Result<bool> {
        let mut conn = self.writer().await?;
        let (next_run, next_fire) = next_ms(claim.next);
        // `pending_last_at = last_run_at` reads the row's value before this update.
        let sql = format!(
            "UPDATE schedules SET pending_last_at = last_run_at, last_run_at = $1, \
             pending_run_at = $1, next_run_at = $2, next_fire_at = $3, updated_at = $4 \
             WHERE id = $5 AND next_run_at = $6 AND active = {} AND pending_run_at IS NULL",
            B::D::TRUE
        );
        let claimed = Params::<B::D>::new()
            .with(ms(claim.fire))
            .with(next_run)
            .with(next_fire)
            .with(ms(now))
            .with(claim.id.as_str())
            .with(ms(claim.expected_next))
            .execute(&mut conn, &sql)
            .await?;
        Ok(claimed > 0)
    }

    async fn schedule_settle(&self, id: &ScheduleId, pending: DateTime<Utc>) -> Result<()> {
        let mut conn = self.writer().await?;
        Params::<B::D>::new()
            .with(id.as_str())
            .with(ms(pending))
            .execute(
                &mut conn,
                "UPDATE schedules SET pending_run_at = NULL, pending_last_at = NULL \
                 WHERE id = $1 AND pending_run_at = $2",
            )
            .await?;
        Ok(())
    }

    async fn task_scheduled(
        &self,
        environment: &EnvironmentId,
        task: &str,
    ) -> Result<Option<bool>> {
        let mut conn = self.reader().await?;
        let sql = format!(
            "SELECT t.scheduled FROM worker_tasks t JOIN worker_versions v \
             ON v.environment_id = t.environment_id AND v.version = t.version \
             WHERE t.environment_id = $1 AND t.task_identifier = $2 \
             ORDER BY v.created_at DESC, v.version{} DESC LIMIT 1",
            B::D::COLLATE_BYTES
        );
        let row = Params::<B::D>::new()
            .with(environment.as_str())
            .with(task)
            .fetch_optional(&mut conn, &sql)
            .await?;
        Ok(row.map(|row| row.flag("scheduled")).transpose()?)
    }
}
