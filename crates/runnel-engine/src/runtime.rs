//! Runtime services: the loops that move runs because time passed.
//!
//! - promoter: `Delayed` → `Queued` once `delayUntil` is reached;
//! - expirer: `Queued` → `Expired` once the run's TTL deadline passes;
//! - retries: `RetryingAfterFailure` → `Queued` once the backoff has elapsed;
//! - rescuer: a held attempt whose lease ran out crashes (or, never started, goes back
//!   to the queue); one past its `maxDuration` deadline times out.
//!
//! They are one loop here, because they share the question "when is the next deadline?".
//! The loop sleeps until the earliest deadline the store knows of (capped at
//! [`IDLE_RECHECK`], so deadlines written by another node are seen), or until a trigger
//! creates a run with a deadline. Each transition is a conditional update in the store,
//! so running this loop on several nodes at once never moves a run twice.
//!
//! ```text
//!   trigger ──notify──┐
//!                     ▼
//!   loop { promote_due(now); expire_due(now); sleep until min(next_due, now + IDLE_RECHECK) }
//! ```

use std::time::Duration as StdDuration;

use tokio::sync::watch;

use crate::Engine;

/// Longest sleep between passes when no deadline is known.
pub const IDLE_RECHECK: StdDuration = StdDuration::from_secs(5);
/// Runs moved per statement; a pass repeats until a batch comes back short.
pub const BATCH: u32 = 500;
/// Pause after a store error before trying again.
const ERROR_BACKOFF: StdDuration = StdDuration::from_secs(1);

impl Engine {
    /// One pass: promotes and expires everything due now. Returns how many runs moved.
    pub async fn run_due_transitions(&self) -> Result<usize, runnel_store::Error> {
        let mut moved = 0;
        loop {
            let now = self.clock.now();
            let promoted = self.store.run_promote_due(now, BATCH).await?;
            let expired = self.store.run_expire_due(now, BATCH).await?;
            for id in &promoted {
                tracing::debug!(run = %id, "run queued after its wait");
            }
            if !promoted.is_empty() {
                self.runs_became_available();
            }
            for id in &expired {
                tracing::info!(run = %id, "run expired: its TTL passed while queued");
            }
            moved += promoted.len() + expired.len();
            if promoted.len() < BATCH as usize && expired.len() < BATCH as usize {
                return Ok(moved);
            }
        }
    }

    /// Runs the promoter/expirer loop until `shutdown` turns true.
    pub async fn run_services(self, mut shutdown: watch::Receiver<bool>) {
        loop {
            let sleep_for = match self.pass().await {
                Ok(sleep_for) => sleep_for,
                Err(error) => {
                    tracing::error!(%error, "runtime services pass failed");
                    ERROR_BACKOFF
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(sleep_for) => {}
                _ = self.deadlines_changed.notified() => {}
                _ = shutdown.changed() => {}
            }
            if *shutdown.borrow() {
                return;
            }
        }
    }

    async fn pass(&self) -> Result<StdDuration, crate::Error> {
        self.run_due_transitions().await?;
        self.rescue_due().await?;
        let next = self.store.run_next_due_at().await?;
        let now = self.clock.now();
        Ok(match next {
            Some(at) => (at - now)
                .to_std()
                .unwrap_or(StdDuration::ZERO)
                .min(IDLE_RECHECK),
            None => IDLE_RECHECK,
        })
    }
}
