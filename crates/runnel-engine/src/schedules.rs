//! Cron schedules: the API's operations (create or upsert by deduplication key, list,
//! retrieve, update, delete, activate, deactivate), the declarative schedules each
//! registration keeps in sync ([`Engine::declared_sync`]), and firing occurrences
//! ([`Engine::schedules_fire_due`], driven by the [`Scheduler`](crate::services::Scheduler)
//! service).
//!
//! Every time is computed by `runnel_core::schedule`; the store compares and swaps
//! (see `runnel_store::schedules` for the claim / trigger / settle sequence that fires
//! each occurrence exactly once across nodes).
//!
//! Scope: a schedule belongs to one environment, and its deduplication key is unique
//! within that environment (upstream's key is unique per project, so creating with the
//! same key from another environment moves the schedule there; here each environment
//! keeps its own, and a key never sees another environment's schedules).

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use runnel_core::list::{RunFilter, RunListQuery};
use runnel_core::schedule::{self, ScheduleError, ScheduleKind, ScheduledPayload, Timing};
use runnel_core::tenancy::Environment;
use runnel_core::trigger::{IdempotencyHeaders, TriggerOptions, TriggerRequest};
use runnel_core::worker::TaskDefinition;
use runnel_core::{EnvironmentId, EnvironmentKind, ScheduleId};
use runnel_store::{
    DeclaredSync, DeclaredWrite, ScheduleClaim, ScheduleRef, ScheduleWrite, TriggerOutcome,
};
use serde_json::{json, Value};

/// The stored schedule the operations answer, for callers that do not depend on the store.
pub use runnel_store::ScheduleRecord;

use crate::trigger::ParentLink;
use crate::{Engine, Error};

/// The most schedules one page lists.
pub const MAX_PER_PAGE: u32 = 100;
/// Schedules fired per pass of the scheduler.
pub const FIRE_BATCH: u32 = 100;
/// A schedule's runs created since a pending occurrence that are looked through for its
/// run (at most two exist: its own, and the previous occurrence's if that fired late).
const OCCURRENCE_LOOKUP: u32 = 10;

/// Why a schedule operation was refused.
#[derive(Debug, thiserror::Error)]
pub enum ScheduleApiError {
    /// Settings the contract refuses with 422 (bad cron, timezone or window; a task
    /// that is missing or not scheduled).
    #[error("{0}")]
    Invalid(String),
    #[error("Schedule not found")]
    NotFound,
    /// An operation on a declarative schedule that only its task may change (422).
    #[error("{0}")]
    Declarative(&'static str),
}

impl From<ScheduleError> for ScheduleApiError {
    fn from(e: ScheduleError) -> Self {
        ScheduleApiError::Invalid(e.to_string())
    }
}

/// A schedule's settings as a request gives them (create, update).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScheduleInput {
    pub task: String,
    pub cron: String,
    /// Required on create; ignored on update (the key stays).
    pub deduplication_key: Option<String>,
    pub external_id: Option<String>,
    pub timezone: Option<String>,
    pub window: Option<String>,
}

/// One page of schedules.
#[derive(Debug, Clone)]
pub struct SchedulePage {
    pub schedules: Vec<ScheduleRecord>,
    pub page: u32,
    pub total_pages: u64,
    pub count: u64,
}

/// The seed of a schedule's window phase: stable for the schedule's whole life (its
/// task for a declarative one, its key for an imperative one), so a changed cron keeps
/// its offset and the phase is known before the row exists.
fn seed(environment: &EnvironmentId, kind: ScheduleKind, name: &str) -> String {
    format!("{environment}:{kind}:{name}")
}

/// A stored schedule's [`Timing`].
pub fn timing_of(record: &ScheduleRecord) -> Result<Timing, ScheduleError> {
    let name = match record.kind {
        ScheduleKind::Declarative => record.task_identifier.as_str(),
        ScheduleKind::Imperative => record.deduplication_key.as_deref().unwrap_or(""),
    };
    Timing::new(
        &record.cron,
        Some(&record.timezone),
        record.window.as_deref(),
        &seed(&record.environment_id, record.kind, name),
    )
}

impl Engine {
    /// Checks that `task` is a scheduled task of `environment`.
    async fn schedule_task_check(
        &self,
        environment: &Environment,
        task: &str,
    ) -> Result<(), Error> {
        match self.store.task_scheduled(&environment.id, task).await? {
            None => Err(ScheduleApiError::Invalid(format!(
                "Task with identifier {task} not found in project."
            ))
            .into()),
            Some(false) => Err(ScheduleApiError::Invalid(format!(
                "Task with identifier {task} is not a scheduled task."
            ))
            .into()),
            Some(true) => Ok(()),
        }
    }

    fn schedule_write(
        &self,
        environment: &Environment,
        input: &ScheduleInput,
        deduplication_key: &str,
        now: DateTime<Utc>,
    ) -> Result<ScheduleWrite, Error> {
        let timing = Timing::new(
            &input.cron,
            input.timezone.as_deref(),
            input.window.as_deref(),
            &seed(&environment.id, ScheduleKind::Imperative, deduplication_key),
        )
        .map_err(ScheduleApiError::from)?;
        Ok(ScheduleWrite {
            id: ScheduleId::generate(now.timestamp_millis()),
            environment_id: environment.id.clone(),
            task_identifier: input.task.clone(),
            deduplication_key: deduplication_key.to_owned(),
            external_id: input.external_id.clone(),
            cron: timing.cron.expression().to_owned(),
            timezone: timing.timezone.name().to_owned(),
            window: timing.window.map(|w| w.to_string()),
            next: timing.next_pair(now),
        })
    }

    /// Creates an imperative schedule, or updates the one with the same deduplication
    /// key.
    pub async fn schedule_create(
        &self,
        environment: &Environment,
        input: &ScheduleInput,
    ) -> Result<ScheduleRecord, Error> {
        let now = self.clock.now();
        let key = input
            .deduplication_key
            .as_deref()
            .ok_or_else(|| ScheduleApiError::Invalid("deduplicationKey: required".to_owned()))?;
        let write = self.schedule_write(environment, input, key, now)?;
        self.schedule_task_check(environment, &input.task).await?;
        let record = self.store.schedule_upsert(&write, now).await?;
        self.wakes.scheduler.notify_one();
        tracing::info!(schedule = %record.id, task = %record.task_identifier, cron = %record.cron,
            timezone = %record.timezone, "schedule saved");
        Ok(record)
    }

    pub async fn schedule_get(
        &self,
        environment: &Environment,
        reference: &str,
    ) -> Result<ScheduleRecord, Error> {
        self.store
            .schedule_get(&environment.id, &ScheduleRef::parse(reference))
            .await?
            .ok_or_else(|| ScheduleApiError::NotFound.into())
    }

    /// Page `page` (from 1) of `per_page` (1..=[`MAX_PER_PAGE`]).
    pub async fn schedule_list(
        &self,
        environment: &Environment,
        page: u32,
        per_page: u32,
    ) -> Result<SchedulePage, Error> {
        let page = page.max(1);
        let per_page = per_page.clamp(1, MAX_PER_PAGE);
        let offset = u64::from(page - 1) * u64::from(per_page);
        let (schedules, count) = self
            .store
            .schedule_list(&environment.id, offset, per_page)
            .await?;
        Ok(SchedulePage {
            schedules,
            page,
            total_pages: count.div_ceil(u64::from(per_page)),
            count,
        })
    }

    pub async fn schedule_update(
        &self,
        environment: &Environment,
        reference: &str,
        input: &ScheduleInput,
    ) -> Result<ScheduleRecord, Error> {
        let now = self.clock.now();
        let current = self.schedule_get(environment, reference).await?;
        if current.kind == ScheduleKind::Declarative {
            return Err(
                ScheduleApiError::Declarative("Cannot update a declarative schedule").into(),
            );
        }
        let key = current.deduplication_key.clone().unwrap_or_default();
        let write = self.schedule_write(environment, input, &key, now)?;
        self.schedule_task_check(environment, &input.task).await?;
        let record = self
            .store
            .schedule_update(&environment.id, &current.id, &write, now)
            .await?
            .ok_or(ScheduleApiError::NotFound)?;
        self.wakes.scheduler.notify_one();
        Ok(record)
    }

    /// Deletes an imperative schedule (a declarative one goes when its task stops
    /// declaring it).
    pub async fn schedule_delete(
        &self,
        environment: &Environment,
        reference: &str,
    ) -> Result<ScheduleId, Error> {
        let current = self.schedule_get(environment, reference).await?;
        if current.kind == ScheduleKind::Declarative {
            return Err(ScheduleApiError::Declarative(
                "Cannot delete a declarative schedule: remove the cron from its task instead",
            )
            .into());
        }
        if !self
            .store
            .schedule_delete(&environment.id, &current.id)
            .await?
        {
            return Err(ScheduleApiError::NotFound.into());
        }
        tracing::info!(schedule = %current.id, "schedule deleted");
        Ok(current.id)
    }

    /// Activates (from the next occurrence after now: nothing missed while inactive
    /// fires) or deactivates a schedule.
    pub async fn schedule_set_active(
        &self,
        environment: &Environment,
        reference: &str,
        active: bool,
    ) -> Result<ScheduleRecord, Error> {
        let now = self.clock.now();
        let current = self.schedule_get(environment, reference).await?;
        let next = if active {
            timing_of(&current)
                .map_err(ScheduleApiError::from)?
                .next_pair(now)
        } else {
            None
        };
        let record = self
            .store
            .schedule_set_active(&environment.id, &current.id, active, next, now)
            .await?
            .ok_or(ScheduleApiError::NotFound)?;
        self.wakes.scheduler.notify_one();
        Ok(record)
    }

    /// The declarative schedules a registration of `tasks` in `environment` keeps in
    /// sync. `whole_project`: the registration lists every task of the project (a
    /// `trigger.dev` manifest), so declarative schedules of unlisted tasks go too.
    pub(crate) fn declared_sync(
        &self,
        environment: &Environment,
        tasks: &[TaskDefinition],
        whole_project: bool,
        now: DateTime<Utc>,
    ) -> Result<DeclaredSync, String> {
        let mut sync = DeclaredSync {
            tasks: Vec::with_capacity(tasks.len()),
            prune_unlisted: whole_project,
        };
        for (i, task) in tasks.iter().enumerate() {
            let declared = match &task.schedule {
                Some(declared) => {
                    let timing = Timing::new(
                        &declared.cron,
                        declared.timezone.as_deref(),
                        declared.window.as_deref(),
                        &seed(&environment.id, ScheduleKind::Declarative, &task.id),
                    )
                    .map_err(|e| format!("tasks[{i}].schedule: {e}"))?;
                    declared
                        .applies_in(environment.kind)
                        .then(|| DeclaredWrite {
                            id: ScheduleId::generate(now.timestamp_millis()),
                            cron: timing.cron.expression().to_owned(),
                            timezone: timing.timezone.name().to_owned(),
                            window: timing.window.map(|w| w.to_string()),
                            next: timing.next_pair(now),
                        })
                }
                None => None,
            };
            sync.tasks.push((task.id.clone(), declared));
        }
        Ok(sync)
    }

    /// The `schedule` of a run's retrieve: `{id, externalId?, deduplicationKey?,
    /// generator}`; `None` when no schedule triggered it or the schedule is gone.
    pub(crate) async fn schedule_of_run(
        &self,
        environment: &Environment,
        schedule_id: Option<&str>,
    ) -> Result<Option<Value>, Error> {
        let Some(id) = schedule_id.and_then(ScheduleId::parse) else {
            return Ok(None);
        };
        let Some(record) = self
            .store
            .schedule_get(&environment.id, &ScheduleRef::Id(id))
            .await?
        else {
            return Ok(None);
        };
        let mut out = json!({
            "id": record.id.as_str(),
            "generator": generator(&record),
        });
        if let Some(external) = &record.external_id {
            out["externalId"] = json!(external);
        }
        if let Some(key) = &record.deduplication_key {
            out["deduplicationKey"] = json!(key);
        }
        Ok(Some(out))
    }

    /// The environment with id `id`.
    async fn environment_by_id(&self, id: &EnvironmentId) -> Result<Option<Environment>, Error> {
        for kind in EnvironmentKind::ALL {
            if let Some(environment) = self.store.environment_get(kind).await? {
                if &environment.id == id {
                    return Ok(Some(environment));
                }
            }
        }
        Ok(None)
    }

    /// Fires what is due at `now`: every pending occurrence, then each schedule whose
    /// next occurrence has come (the latest due one, once). Returns how many schedules
    /// it looked at and whether the batch was full.
    pub async fn schedules_fire_due(&self, now: DateTime<Utc>) -> Result<(usize, bool), Error> {
        let due = self.store.schedule_due(now, FIRE_BATCH).await?;
        let mut environments: HashMap<EnvironmentId, Option<Environment>> = HashMap::new();
        for record in &due {
            let environment = match environments.get(&record.environment_id) {
                Some(environment) => environment.clone(),
                None => {
                    let environment = self.environment_by_id(&record.environment_id).await?;
                    environments.insert(record.environment_id.clone(), environment.clone());
                    environment
                }
            };
            let Some(environment) = environment else {
                tracing::error!(schedule = %record.id, "schedule of an unknown environment");
                continue;
            };
            self.schedule_fire(&environment, record, now).await?;
        }
        Ok((due.len(), due.len() >= FIRE_BATCH as usize))
    }

    async fn schedule_fire(
        &self,
        environment: &Environment,
        record: &ScheduleRecord,
        now: DateTime<Utc>,
    ) -> Result<(), Error> {
        let timing = match timing_of(record) {
            Ok(timing) => timing,
            Err(error) => {
                // It can never fire; left as it is it would be due on every pass (and
                // the scheduler, its next deadline past, would never sleep). Deactivated,
                // it shows as inactive until its settings are fixed.
                tracing::error!(schedule = %record.id, %error,
                    "stored schedule does not parse: deactivated");
                self.store
                    .schedule_set_active(&record.environment_id, &record.id, false, None, now)
                    .await?;
                if let Some(pending) = record.pending_run_at {
                    self.store.schedule_settle(&record.id, pending).await?;
                }
                return Ok(());
            }
        };
        // A node claimed this occurrence and may have died before its run existed:
        // trigger it (again; the run's idempotency key makes it the same run). A run
        // that already ended in failure has freed its key, so look for it first.
        if let Some(pending) = record.pending_run_at {
            if !self.occurrence_has_run(record, pending).await? {
                self.schedule_trigger(
                    environment,
                    record,
                    &timing,
                    pending,
                    record.pending_last_at,
                    now,
                )
                .await?;
            }
            self.store.schedule_settle(&record.id, pending).await?;
            return Ok(());
        }
        let Some(due) = record.next_run_at else {
            return Ok(());
        };
        // The store found it due: its stored fire time has come. Fire it even if the
        // window offset computed now is later (a time stored by another version);
        // skipped, it would stay due on every pass until then.
        let Some(catch_up) = timing.catch_up(due, now.max(timing.effective(due))) else {
            return Ok(());
        };
        let claim = ScheduleClaim {
            id: record.id.clone(),
            expected_next: due,
            fire: catch_up.fire,
            next: catch_up.next,
        };
        if !self.store.schedule_claim(&claim, now).await? {
            // Another node fired it, or it changed meanwhile.
            return Ok(());
        }
        if catch_up.skipped > 0 {
            tracing::warn!(
                schedule = %record.id,
                task = %record.task_identifier,
                skipped = catch_up.skipped,
                first_skipped = %runnel_core::view::iso(due),
                fired = %runnel_core::view::iso(catch_up.fire),
                "occurrences missed while no server ran are skipped; only the latest fires"
            );
        }
        self.schedule_trigger(
            environment,
            record,
            &timing,
            catch_up.fire,
            record.last_run_at,
            now,
        )
        .await?;
        self.store
            .schedule_settle(&record.id, catch_up.fire)
            .await?;
        Ok(())
    }

    /// Whether the run of occurrence `fire` exists, whatever its status. The idempotency
    /// key alone does not tell: a run that failed, crashed, timed out or expired frees
    /// its key, and a pending occurrence may be seen only after its run ended (a node
    /// died between trigger and settle, the run failed, then the next node looked).
    ///
    /// The run was created at or after `fire` (an occurrence fires at or after its
    /// nominal time), and while `fire` is pending no later occurrence is claimed, so
    /// the schedule's few runs created since `fire` hold it if it exists.
    async fn occurrence_has_run(
        &self,
        record: &ScheduleRecord,
        fire: DateTime<Utc>,
    ) -> Result<bool, Error> {
        let key = occurrence_key(record, fire);
        let query = RunListQuery {
            filter: RunFilter {
                schedule_id: Some(record.id.as_str().to_owned()),
                ..RunFilter::default()
            },
            created_from: Some(fire),
            ..RunListQuery::newest(record.environment_id.clone(), OCCURRENCE_LOOKUP)
        };
        let runs = self.store.run_list(&query).await?;
        Ok(runs
            .iter()
            .any(|run| run.idempotency_key.as_deref() == Some(key.as_str())))
    }

    /// Triggers the run of occurrence `fire`, idempotent on (schedule, occurrence).
    async fn schedule_trigger(
        &self,
        environment: &Environment,
        record: &ScheduleRecord,
        timing: &Timing,
        fire: DateTime<Utc>,
        last: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> Result<(), Error> {
        let payload = ScheduledPayload {
            schedule_id: record.id.as_str(),
            kind: record.kind,
            timestamp: fire,
            last_timestamp: last,
            external_id: record.external_id.as_deref(),
            timezone: &record.timezone,
            upcoming: timing.upcoming(fire, schedule::UPCOMING),
        };
        let request = TriggerRequest {
            payload: Some(Value::String(payload.to_superjson())),
            context: None,
            options: Some(TriggerOptions {
                payload_type: Some(schedule::PAYLOAD_TYPE.to_owned()),
                ..TriggerOptions::default()
            }),
        };
        let parents = HashMap::new();
        let built = self.build_run(
            environment,
            &record.task_identifier,
            request,
            &IdempotencyHeaders::default(),
            ParentLink::Named(&parents),
            now,
            "schedule",
        );
        let mut run = match built {
            Ok(run) => run,
            Err(error) => {
                // Nothing a retry would change: the occurrence is dropped, loudly.
                tracing::error!(schedule = %record.id, %error, "scheduled run refused");
                return Ok(());
            }
        };
        run.schedule_id = Some(record.id.as_str().to_owned());
        run.idempotency_key = Some(occurrence_key(record, fire));
        self.place(environment, std::iter::once(&mut run)).await?;
        match self.store.run_trigger(&run, now).await? {
            TriggerOutcome::Created(id) => {
                self.after_insert(environment, std::iter::once((&run, &id)), now)
                    .await?;
                tracing::info!(run = %id, schedule = %record.id, task = %record.task_identifier,
                    occurrence = %runnel_core::view::iso(fire), "scheduled run triggered");
            }
            TriggerOutcome::Cached(id) => {
                tracing::debug!(run = %id, schedule = %record.id, "occurrence already fired");
            }
        }
        Ok(())
    }
}

/// The idempotency key of the run of `record`'s occurrence `fire`: one run per
/// occurrence across nodes and retries.
fn occurrence_key(record: &ScheduleRecord, fire: DateTime<Utc>) -> String {
    format!("schedule:{}:{}", record.id, fire.timestamp_millis())
}

/// A schedule's `generator`: `{type: "CRON", expression, description}`.
pub fn generator(record: &ScheduleRecord) -> Value {
    let description = schedule::Cron::parse(&record.cron)
        .map(|c| c.description())
        .unwrap_or_default();
    json!({"type": "CRON", "expression": record.cron, "description": description})
}
