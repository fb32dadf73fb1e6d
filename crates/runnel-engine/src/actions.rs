//! Actions on existing runs (contract §2.1 rows 13–19 and 21, §4.3, §4.4, §4.7): cancel's
//! subtree, replay, reschedule, tags, metadata and idempotency key reset.
//!
//! Read-modify-write updates (tags, metadata) read the run, compute the new value with
//! `runnel-core` and write it back with a compare-and-swap on the value read; a lost race
//! reads again, up to [`CAS_ATTEMPTS`] times, so concurrent updates never drop each
//! other's changes. Replay builds an ordinary trigger request from the original run and
//! the caller's overrides (`runnel_core::replay`) and goes through [`Engine::trigger`],
//! so validation, version waits, TTLs and queue order apply as for any new run.

use chrono::{DateTime, Duration, Utc};
use runnel_core::duration::parse_duration_secs;
use runnel_core::metadata::{self, MetadataError, MetadataUpdate, Operation};
use runnel_core::replay::{self, ReplayError, ReplayRequest};
use runnel_core::run::Packet;
use runnel_core::tags::{self, TagsError};
use runnel_core::tenancy::Environment;
use runnel_core::trigger::{IdempotencyHeaders, TriggerError};
use runnel_core::view::RunDetail;
use runnel_core::{RunId, RunStatus};
use serde_json::{Map, Value};

use crate::{Engine, Error, Triggered};

/// How many times a compare-and-swap update re-reads after losing a race.
pub const CAS_ATTEMPTS: usize = 32;

/// Why an action was refused.
#[derive(Debug, thiserror::Error)]
pub enum ActionError {
    /// No such run in the caller's environment.
    #[error("Run not found")]
    NotFound,
    #[error("Cannot reschedule a run that is not delayed")]
    NotDelayed,
    #[error("Invalid delay: {0}")]
    InvalidDelay(String),
    /// A replay body's overrides that contradict each other (400).
    #[error(transparent)]
    Replay(#[from] ReplayError),
    #[error(transparent)]
    Tags(#[from] TagsError),
    #[error(transparent)]
    Metadata(#[from] MetadataError),
    /// The run finished more than an hour ago.
    #[error("Cannot update metadata for a completed run")]
    MetadataClosed,
    #[error("No runs found with idempotency key: {key} and task: {task}")]
    NoKeyHolder { key: String, task: String },
    /// Every compare-and-swap attempt lost a race.
    #[error("The run is being updated concurrently, retry shortly")]
    Contended,
    #[error(transparent)]
    Engine(#[from] Error),
}

impl From<runnel_store::Error> for ActionError {
    fn from(e: runnel_store::Error) -> Self {
        ActionError::Engine(Error::Store(e))
    }
}

/// When a reschedule's `delay` (a duration like `1h30m` or an ISO 8601 date) ends; `None`
/// when it is unparseable or not in the future.
pub fn parse_delay(delay: &str, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let until = match parse_duration_secs(delay) {
        Some(secs) => now + Duration::seconds(i64::try_from(secs).ok()?.min(100 * 365 * 86400)),
        None => DateTime::parse_from_rfc3339(delay)
            .ok()?
            .with_timezone(&Utc),
    };
    (until > now).then_some(until)
}

/// The metadata object a packet holds (empty when none or not an object).
fn metadata_object(packet: Option<&Packet>) -> Map<String, Value> {
    match packet.and_then(Packet::to_value) {
        Some(Value::Object(map)) => map,
        _ => Map::new(),
    }
}

impl Engine {
    /// Cancels the live runs below `parent` (children, grandchildren, …), each charged
    /// at its own machine's price; called once `parent` itself was canceled.
    pub(crate) async fn cancel_descendants(
        &self,
        environment: &Environment,
        parent: &RunId,
    ) -> Result<(), Error> {
        let descendants = self
            .store
            .run_descendants_live(&environment.id, parent)
            .await?;
        let mut attempts_ended = false;
        for id in &descendants {
            let Some(run) = self.store.run_get(&environment.id, id).await? else {
                continue;
            };
            let Ok(change) = runnel_core::state::cancel(&run, self.clock.now()) else {
                // Ended since the listing.
                continue;
            };
            let outcome = self
                .store
                .run_cancel(
                    &environment.id,
                    id,
                    self.cents_per_ms(environment, &run),
                    change.at,
                )
                .await?;
            if let runnel_store::CancelOutcome::Canceled { attempt } = outcome {
                self.runs_changed(std::iter::once(id));
                tracing::debug!(run = %id, parent = %parent, "child run canceled with its parent");
                attempts_ended |= attempt.is_some();
                self.dev_run_ended(id).await?;
            }
        }
        if attempts_ended {
            self.attempts_ended();
        }
        Ok(())
    }

    /// Triggers a new run like `id` (any status), on the latest version unless
    /// `overrides` names one; each override replaces the original's value and is checked
    /// as a trigger's would be, refusals naming the replay body's field.
    pub async fn replay(
        &self,
        environment: &Environment,
        id: &RunId,
        overrides: ReplayRequest,
    ) -> Result<Triggered, ActionError> {
        let run = self
            .store
            .run_get(&environment.id, id)
            .await?
            .ok_or(ActionError::NotFound)?;
        crate::unsupported::warn_once(&overrides.unsupported_in_use(), "replay");
        let request = replay::replay_request(&run, overrides)?;
        let triggered = self
            .trigger(
                environment,
                &run.task_identifier,
                request,
                &IdempotencyHeaders::default(),
            )
            .await
            .map_err(|e| match e {
                Error::Trigger(TriggerError::Invalid { field, message }) => {
                    Error::Trigger(TriggerError::Invalid {
                        field: replay::body_field(field),
                        message,
                    })
                }
                other => other,
            })?;
        tracing::debug!(run = %triggered.id, original = %run.id, "run replayed");
        Ok(triggered)
    }

    /// Moves a delayed run's delay to `delay` from now (or to the date `delay`), its TTL
    /// clock with it; returns the updated run.
    pub async fn reschedule(
        &self,
        environment: &Environment,
        id: &RunId,
        delay: &str,
    ) -> Result<RunDetail, ActionError> {
        let run = self
            .store
            .run_get(&environment.id, id)
            .await?
            .ok_or(ActionError::NotFound)?;
        if run.status != RunStatus::Delayed {
            return Err(ActionError::NotDelayed);
        }
        let now = self.clock.now();
        let until =
            parse_delay(delay, now).ok_or_else(|| ActionError::InvalidDelay(delay.to_owned()))?;
        // The TTL clock starts when the run is queued, at the end of its delay.
        let expire_at = run
            .ttl
            .as_deref()
            .and_then(parse_duration_secs)
            .and_then(|secs| i64::try_from(secs).ok())
            .map(|secs| until + Duration::seconds(secs.min(100 * 365 * 86400)));
        let queue_ts = until.timestamp_millis() - i64::from(run.priority_ms);
        if !self
            .store
            .run_reschedule(&environment.id, id, until, expire_at, queue_ts, now)
            .await?
        {
            // Promoted or canceled since the read.
            return Err(ActionError::NotDelayed);
        }
        self.runs_changed(std::iter::once(id));
        self.wakes.waits_changed();
        self.run_detail(environment, id)
            .await?
            .ok_or(ActionError::NotFound)
    }

    /// Adds `requested` tags to a run; returns how many were new.
    pub async fn tags_add(
        &self,
        environment: &Environment,
        id: &RunId,
        requested: Vec<String>,
    ) -> Result<usize, ActionError> {
        let requested = tags::requested(requested)?;
        for _ in 0..CAS_ATTEMPTS {
            let run = self
                .store
                .run_get(&environment.id, id)
                .await?
                .ok_or(ActionError::NotFound)?;
            let (tags, added) = tags::union(&run.tags, &requested)?;
            if added == 0 {
                return Ok(0);
            }
            if self
                .store
                .run_tags_replace(&environment.id, id, &run.tags, &tags, self.clock.now())
                .await?
            {
                self.runs_changed(std::iter::once(id));
                return Ok(added);
            }
        }
        Err(ActionError::Contended)
    }

    /// Applies a metadata update to a run (and its parent's and root's operations to
    /// them); returns the run's new metadata.
    pub async fn metadata_update(
        &self,
        environment: &Environment,
        id: &RunId,
        update: MetadataUpdate,
    ) -> Result<Map<String, Value>, ActionError> {
        let run = self
            .store
            .run_get(&environment.id, id)
            .await?
            .ok_or(ActionError::NotFound)?;
        let now = self.clock.now();
        if run.completed_at.is_some_and(|t| {
            now - t > Duration::milliseconds(metadata::EDITABLE_AFTER_COMPLETION_MS)
        }) {
            return Err(ActionError::MetadataClosed);
        }
        // Operations, when sent, win over a whole replacement (as upstream).
        let (replacement, operations) = match update.operations {
            Some(operations) => (None, operations),
            None => (update.metadata, Vec::new()),
        };
        if let Some(replacement) = &replacement {
            metadata::check_keys(replacement)?;
        }
        // Operations per target run, in order: the run, its parent, its root (the run
        // itself stands in for a missing parent or root).
        let mut targets: Vec<(RunId, Vec<Operation>)> = vec![(run.id.clone(), operations)];
        let parent = run.parent_run_id.clone().unwrap_or_else(|| run.id.clone());
        let root = run.root_run_id.clone().unwrap_or_else(|| parent.clone());
        for (target, operations) in [
            (parent, update.parent_operations),
            (root, update.root_operations),
        ] {
            if operations.is_empty() {
                continue;
            }
            match targets.iter_mut().find(|(t, _)| *t == target) {
                Some((_, existing)) => existing.extend(operations),
                None => targets.push((target, operations)),
            }
        }
        let mut result = None;
        for (target, operations) in targets {
            let replacement = (target == run.id).then(|| replacement.clone()).flatten();
            let written = self
                .metadata_apply(environment, &target, replacement, &operations)
                .await?;
            if target == run.id {
                result = written;
            }
        }
        result.ok_or(ActionError::NotFound)
    }

    /// Compare-and-swap loop for one run's metadata. `None` when the run is missing.
    async fn metadata_apply(
        &self,
        environment: &Environment,
        id: &RunId,
        replacement: Option<Map<String, Value>>,
        operations: &[Operation],
    ) -> Result<Option<Map<String, Value>>, ActionError> {
        for _ in 0..CAS_ATTEMPTS {
            let Some(run) = self.store.run_get(&environment.id, id).await? else {
                return Ok(None);
            };
            let start = match &replacement {
                Some(map) => map.clone(),
                None => metadata_object(run.metadata.as_ref()),
            };
            let updated = metadata::apply(start, operations)?;
            let packet = Packet {
                data: Some(metadata::serialize(&updated)?),
                data_type: Packet::JSON.to_owned(),
            };
            if run.metadata.as_ref() == Some(&packet) {
                return Ok(Some(updated));
            }
            if self
                .store
                .run_metadata_replace(
                    &environment.id,
                    id,
                    run.metadata.as_ref(),
                    &packet,
                    self.clock.now(),
                )
                .await?
            {
                self.runs_changed(std::iter::once(id));
                return Ok(Some(updated));
            }
        }
        Err(ActionError::Contended)
    }

    /// Releases idempotency key `key` of `task` in `environment`.
    pub async fn idempotency_key_reset(
        &self,
        environment: &Environment,
        key: &str,
        task: &str,
    ) -> Result<(), ActionError> {
        let released = self
            .store
            .idempotency_key_reset(&environment.id, task, key, self.clock.now())
            .await?;
        if released == 0 {
            return Err(ActionError::NoKeyHolder {
                key: key.to_owned(),
                task: task.to_owned(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn delays_parse_as_durations_or_future_dates() {
        let now = at("2026-01-01T00:00:00Z");
        assert_eq!(parse_delay("1h30m", now), Some(at("2026-01-01T01:30:00Z")));
        assert_eq!(
            parse_delay("2026-01-02T00:00:00Z", now),
            Some(at("2026-01-02T00:00:00Z"))
        );
        for bad in ["2025-12-31T00:00:00Z", "soon", "", "0s", "1x"] {
            assert_eq!(parse_delay(bad, now), None, "{bad}");
        }
    }
}
