//! The retry requeuer: `RetryingAfterFailure` → `Queued` once the backoff has elapsed
//! (`next_attempt_at`), queued as of that instant less the run's priority: the transition
//! `runnel_core::state::requeue`, applied to every due run by `Store::run_requeue_due`.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use runnel_store::Deadline;
use tokio::sync::Notify;

use crate::runtime::{Batch, TimedService, BATCH};
use crate::{Engine, Error};

/// See the module doc.
#[derive(Debug, Clone)]
pub struct Requeuer {
    engine: Engine,
}

impl Requeuer {
    pub fn new(engine: Engine) -> Self {
        Requeuer { engine }
    }
}

impl TimedService for Requeuer {
    const NAME: &'static str = "requeuer";

    async fn next_due(&self) -> Result<Option<DateTime<Utc>>, Error> {
        Ok(self
            .engine
            .store
            .run_next_deadline(Deadline::NextAttempt)
            .await?)
    }

    async fn run_once(&self, now: DateTime<Utc>) -> Result<Batch, Error> {
        let requeued = self.engine.store.run_requeue_due(now, BATCH).await?;
        self.engine.runs_changed(&requeued);
        for id in &requeued {
            tracing::debug!(run = %id, "run queued for its next attempt");
        }
        if !requeued.is_empty() {
            self.engine.runs_became_available();
        }
        Ok(Batch {
            moved: requeued.len(),
            full: requeued.len() >= BATCH as usize,
        })
    }

    fn woken_by(&self) -> Option<Arc<Notify>> {
        Some(self.engine.wakes.requeuer.clone())
    }
}
