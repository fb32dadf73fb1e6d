//! The expirer: `Queued` or `PendingVersion` → `Expired` once the run's TTL deadline
//! (`expire_at`) passes while it still waits to start: the transition
//! `runnel_core::state::expire`, applied to every due run by `Store::run_expire_due`.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use runnel_store::Deadline;
use tokio::sync::Notify;

use crate::runtime::{Batch, TimedService, BATCH};
use crate::{Engine, Error};

/// See the module doc.
#[derive(Debug, Clone)]
pub struct Expirer {
    engine: Engine,
}

impl Expirer {
    pub fn new(engine: Engine) -> Self {
        Expirer { engine }
    }
}

impl TimedService for Expirer {
    const NAME: &'static str = "expirer";

    async fn next_due(&self) -> Result<Option<DateTime<Utc>>, Error> {
        Ok(self.engine.store.run_next_deadline(Deadline::Ttl).await?)
    }

    async fn run_once(&self, now: DateTime<Utc>) -> Result<Batch, Error> {
        let expired = self.engine.store.run_expire_due(now, BATCH).await?;
        self.engine.runs_changed(&expired);
        for id in &expired {
            tracing::debug!(run = %id, "run expired: its TTL passed while queued");
        }
        Ok(Batch {
            moved: expired.len(),
            full: expired.len() >= BATCH as usize,
        })
    }

    fn woken_by(&self) -> Option<Arc<Notify>> {
        Some(self.engine.wakes.expirer.clone())
    }
}
