//! The wait timer: completes `DATETIME` waitpoints whose time came and tokens whose
//! timeout passed, then resumes the runs they unblocked. Each pass also backs up the
//! engine's own completions (a node that stopped between a child's end and its parent's
//! resume): it completes `RUN` waitpoints whose run has ended and resumes waiting runs
//! none of whose blockers is pending. Every completion is a conditional update, so two
//! nodes' timers complete a waitpoint once.

use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use runnel_core::waitpoint::{WaitpointKind, WaitpointOutput};
use tokio::sync::Notify;

use crate::runtime::{Batch, TimedService, BATCH};
use crate::{Engine, Error};

/// A `RUN` waitpoint pointing at no run this long after it was made was left by a
/// trigger that never happened (its node stopped in between); it completes with an error.
const ORPHAN_AFTER_SECS: i64 = 60;

/// See the module doc.
#[derive(Debug, Clone)]
pub struct Waiter {
    engine: Engine,
}

impl Waiter {
    pub fn new(engine: Engine) -> Self {
        Waiter { engine }
    }
}

impl TimedService for Waiter {
    const NAME: &'static str = "waiter";

    async fn next_due(&self) -> Result<Option<DateTime<Utc>>, Error> {
        Ok(self.engine.store.waitpoint_next_due().await?)
    }

    async fn run_once(&self, now: DateTime<Utc>) -> Result<Batch, Error> {
        let engine = &self.engine;
        let due = engine.store.waitpoints_due(now, BATCH).await?;
        let mut moved = 0;
        for waitpoint in &due {
            let output = match waitpoint.kind {
                WaitpointKind::Manual => {
                    WaitpointOutput::timed_out(waitpoint.timeout_at.unwrap_or(now))
                }
                _ => WaitpointOutput::none(),
            };
            if engine.complete_waitpoint(&waitpoint.id, &output).await? {
                moved += 1;
            }
        }
        let stranded = engine
            .store
            .waitpoints_stranded(now - Duration::seconds(ORPHAN_AFTER_SECS), BATCH)
            .await?;
        for (waitpoint, run) in &stranded {
            let output = match run {
                Some(run) => engine.run_outcome(run).await?,
                None => WaitpointOutput::error(&serde_json::json!({
                    "type": "INTERNAL_ERROR",
                    "code": "TASK_RUN_SYSTEM_FAILURE",
                    "message": "The child run was never created",
                })),
            };
            if engine.complete_waitpoint(waitpoint, &output).await? {
                moved += 1;
            }
        }
        for run in engine.store.runs_resumable(BATCH).await? {
            if engine.resume(&run).await?.is_some() {
                moved += 1;
            }
        }
        Ok(Batch {
            moved,
            full: due.len() >= BATCH as usize,
        })
    }

    fn woken_by(&self) -> Option<Arc<Notify>> {
        Some(self.engine.wakes.waiter.clone())
    }
}
