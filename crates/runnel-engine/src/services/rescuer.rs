//! The rescuer: settles held attempts nobody will report on. What a rescue does is the
//! transition `runnel_core::state::rescue`:
//!
//! - A lease that ran out (the worker stopped heartbeating): an `Executing` attempt
//!   crashes (and its run retries or fails, as the task's retry policy says); a
//!   `Dequeued` one, never started, is canceled and its run goes back to the queue
//!   without spending an attempt. Claim: `LeaseExpired`.
//! - An `Executing` attempt past its `maxDuration` deadline plus `timeout_grace` times
//!   out. Claim: `TimedOut`.
//!
//! Lease ends are held back during the node's start-up grace (see [`crate::runtime`]);
//! `maxDuration` deadlines are not.
//!
//! One batch of up to [`RESCUE_BATCH`] due leases costs a bounded number of statements,
//! whatever its size:
//!
//! ```text
//!   read   due runs (1) + their attempts (1)              Store::run_leases_due
//!          environments (one per kind, 3)
//!          each distinct worker not in the engine's cache  (its tasks' retry policy)
//!   write  one transaction: a conditional UPDATE of the run and of its attempt per
//!          rescued run                                    Store::attempt_settle
//! ```
//!
//! The writes stay one pair per run because each settlement is its own outcome
//! (crash or retry at its own time, charged for its own duration), and each is
//! conditional on its claim, so a completion that raced the rescue wins or loses per
//! run and this service on several nodes never settles one twice.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use runnel_core::retry::RetryPolicy;
use runnel_core::state;
use runnel_core::WorkerId;
use runnel_store::{Deadline, Leased, WorkerRecord};
use tokio::sync::Notify;

use crate::runtime::{Batch, TimedService};
use crate::workers::attempt_settlement;
use crate::{Engine, Error};

/// Held attempts settled per batch.
pub const RESCUE_BATCH: u32 = 200;

/// See the module doc.
#[derive(Debug, Clone)]
pub struct Rescuer {
    engine: Engine,
}

impl Rescuer {
    pub fn new(engine: Engine) -> Self {
        Rescuer { engine }
    }

    /// The retry policies of the tasks of `due`, by worker: each worker's record is read
    /// once (from the engine's cache when it has it), however many of its runs are due.
    async fn workers_of(
        &self,
        due: &[Leased],
    ) -> Result<HashMap<WorkerId, Option<Arc<WorkerRecord>>>, Error> {
        let mut records = HashMap::new();
        for leased in due {
            let Some(worker_id) = leased.run.worker_id.clone() else {
                continue;
            };
            if records.contains_key(&worker_id) {
                continue;
            }
            let cached = self
                .engine
                .workers
                .lock()
                .expect("worker cache")
                .get(&worker_id)
                .cloned();
            let record = match cached {
                Some(record) => Some(record),
                None => self
                    .engine
                    .store
                    .worker_get(&worker_id)
                    .await?
                    .map(Arc::new),
            };
            records.insert(worker_id, record);
        }
        Ok(records)
    }
}

impl TimedService for Rescuer {
    const NAME: &'static str = "rescuer";

    async fn next_due(&self) -> Result<Option<DateTime<Utc>>, Error> {
        let store = &self.engine.store;
        let timeout = store.run_next_deadline(Deadline::MaxDuration).await?;
        let lease = if self.engine.in_start_up_grace(self.engine.clock.now()) {
            // Leases wait for the grace's end; `maxDuration` deadlines do not.
            Some(self.engine.start_up_grace_until())
        } else {
            store.run_next_deadline(Deadline::LeaseEnd).await?
        };
        Ok(timeout.into_iter().chain(lease).min())
    }

    async fn run_once(&self, now: DateTime<Utc>) -> Result<Batch, Error> {
        let engine = &self.engine;
        let leases_expired_by = (!engine.in_start_up_grace(now)).then_some(now);
        let due = engine
            .store
            .run_leases_due(leases_expired_by, now, RESCUE_BATCH)
            .await?;
        if due.is_empty() {
            return Ok(Batch {
                moved: 0,
                full: false,
            });
        }
        let environments = engine.environments().await?;
        let workers = self.workers_of(&due).await?;
        let mut settlements = Vec::with_capacity(due.len());
        for leased in &due {
            let Some(environment) = environments
                .iter()
                .find(|e| e.id == leased.run.environment_id)
            else {
                continue;
            };
            let policy = leased
                .run
                .worker_id
                .as_ref()
                .and_then(|id| workers.get(id).cloned().flatten())
                .and_then(|record| {
                    record
                        .task(&leased.run.task_identifier)
                        .and_then(|t| t.retry)
                })
                .unwrap_or_else(RetryPolicy::default);
            // The rescue is a transition of its own (`runnel_core::state::rescue`): a
            // timeout, a crash, or a never-started attempt back to the queue. Refused
            // when neither deadline has passed any more (a racing heartbeat).
            let Ok(change) = state::rescue(
                &leased.run,
                &leased.attempt,
                &engine.terms(environment, &leased.run, &policy),
                &mut rand::rng(),
                now,
            ) else {
                continue;
            };
            settlements.extend(attempt_settlement(&leased.run, change));
        }
        let applied = engine.store.attempt_settle(&settlements).await?;
        let mut moved = 0;
        for (settlement, ok) in settlements.iter().zip(applied) {
            if ok {
                moved += 1;
                tracing::warn!(
                    run = %settlement.run_id,
                    attempt = %settlement.attempt_id,
                    status = %settlement.run_status,
                    "rescued a held attempt"
                );
                engine.after_settle(settlement);
            }
        }
        if moved > 0 {
            engine.attempts_ended();
        }
        Ok(Batch {
            moved,
            // A full batch of which nothing settled (every claim lost a race) is not
            // retried at once: the next pass reads afresh.
            full: due.len() >= RESCUE_BATCH as usize && moved > 0,
        })
    }

    fn woken_by(&self) -> Option<Arc<Notify>> {
        Some(self.engine.wakes.rescuer.clone())
    }
}
