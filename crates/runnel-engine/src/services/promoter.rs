//! The promoter: `Delayed` → `Queued` once `delayUntil` is reached (or
//! `PendingVersion` when no registered version serves the run yet), and the sweep that
//! queues `PendingVersion` runs a registered version now serves (registration does this
//! itself; the sweep catches a run that raced it). The transition is
//! `runnel_core::state::promote`, applied to every due run by `Store::run_promote_due`.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use runnel_store::Deadline;
use tokio::sync::Notify;

use crate::runtime::{Batch, TimedService, BATCH};
use crate::{Engine, Error};

/// See the module doc.
#[derive(Debug, Clone)]
pub struct Promoter {
    engine: Engine,
}

impl Promoter {
    pub fn new(engine: Engine) -> Self {
        Promoter { engine }
    }
}

impl TimedService for Promoter {
    const NAME: &'static str = "promoter";

    async fn next_due(&self) -> Result<Option<DateTime<Utc>>, Error> {
        Ok(self
            .engine
            .store
            .run_next_deadline(Deadline::DelayEnd)
            .await?)
    }

    async fn run_once(&self, now: DateTime<Utc>) -> Result<Batch, Error> {
        let promoted = self.engine.store.run_promote_due(now, BATCH).await?;
        self.engine.runs_changed(&promoted);
        for id in &promoted {
            tracing::debug!(run = %id, "run queued after its wait");
        }
        if !promoted.is_empty() {
            self.engine.runs_became_available();
        }
        Ok(Batch {
            moved: promoted.len(),
            // Two statements of up to BATCH each: at least one may have been full.
            full: promoted.len() >= BATCH as usize,
        })
    }

    fn woken_by(&self) -> Option<Arc<Notify>> {
        Some(self.engine.wakes.promoter.clone())
    }
}
