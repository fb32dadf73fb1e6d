//! The scheduler: fires each cron schedule's occurrences, once across every node
//! (`Engine::schedules_fire_due`; the claim and settle are conditional updates in the
//! store). Occurrences missed while no server ran are not replayed: the latest fires
//! once, and the skipped ones are logged.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use tokio::sync::Notify;

use crate::runtime::{Batch, TimedService};
use crate::{Engine, Error};

/// See the module doc.
#[derive(Debug, Clone)]
pub struct Scheduler {
    engine: Engine,
}

impl Scheduler {
    pub fn new(engine: Engine) -> Self {
        Scheduler { engine }
    }
}

impl TimedService for Scheduler {
    const NAME: &'static str = "scheduler";

    async fn next_due(&self) -> Result<Option<DateTime<Utc>>, Error> {
        Ok(self.engine.store.schedule_next_due().await?)
    }

    async fn run_once(&self, now: DateTime<Utc>) -> Result<Batch, Error> {
        let (moved, full) = self.engine.schedules_fire_due(now).await?;
        Ok(Batch { moved, full })
    }

    fn woken_by(&self) -> Option<Arc<Notify>> {
        Some(self.engine.wakes.scheduler.clone())
    }
}
