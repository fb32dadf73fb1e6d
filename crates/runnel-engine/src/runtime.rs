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
//!
//! # The rescuer's start-up grace
//!
//! A lease is the server's promise to a worker: "heartbeat at least every lease timeout
//! and the attempt stays yours". While no server runs, nobody can heartbeat, so every
//! lease held when the server went down may have run out by the time it is back, though
//! its worker is alive, has perhaps finished, and is retrying its report. Rescuing such
//! leases at once would refuse that finished work and run the attempts again. So for
//! one lease timeout after this node started, the rescuer rescues no lease:
//!
//! ```text
//!   server down ─────────────┐ start                    start + lease timeout
//!   leases run out ...       │◄──────── grace ───────────►│
//!                            │ heartbeats renew leases,   │ the rescuer takes the
//!                            │ completions settle them    │ leases still out of date
//! ```
//!
//! A live worker speaks within a lease timeout (it heartbeats every third of one and
//! retries failed calls with a delay well under one), so by the end of the grace every
//! lease still out of date belongs to a worker that is gone. The grace is the same
//! promise the lease made, counted again from the first moment a server could hear it.
//! Every lease that runs out during the grace was granted before the start, so the grace
//! is simply "no lease rescue before `start + lease timeout`".
//!
//! What it does not cover:
//! - `maxDuration` deadlines are a separate claim (`Claim::TimedOut`): a run past its
//!   deadline plus `timeout_grace` is timed out at once, grace or not, because its
//!   worker should have stopped it by then anyway.
//! - The grace is per node and lives in memory; nothing is written. A PostgreSQL node
//!   starting while others run holds back only its own rescuer: the others keep
//!   rescuing as before, so a rolling restart never delays a rescue. It helps when every
//!   node was down (the first one back waits a lease timeout before rescuing).
//! - A worker that was down too, or that cannot reach the server within the grace, is
//!   rescued as before.

use std::time::Duration as StdDuration;

use chrono::{DateTime, Utc};
use tokio::sync::watch;

use crate::Engine;

/// Longest sleep between passes when no deadline is known.
pub const IDLE_RECHECK: StdDuration = StdDuration::from_secs(5);
/// Runs moved per statement; a pass repeats until a batch comes back short.
pub const BATCH: u32 = 500;
/// Pause after a store error before trying again.
const ERROR_BACKOFF: StdDuration = StdDuration::from_secs(1);

impl Engine {
    /// When the start-up grace ends: one lease timeout after this node started.
    pub fn start_up_grace_until(&self) -> DateTime<Utc> {
        let lease =
            chrono::Duration::from_std(self.config.lease_timeout).unwrap_or(chrono::Duration::MAX);
        self.started_at
            .checked_add_signed(lease)
            .unwrap_or(DateTime::<Utc>::MAX_UTC)
    }

    /// Whether the rescuer still leaves out-of-date leases alone at `now` (see the
    /// module doc).
    pub fn in_start_up_grace(&self, now: DateTime<Utc>) -> bool {
        now < self.start_up_grace_until()
    }

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
                tracing::debug!(run = %id, "run expired: its TTL passed while queued");
            }
            moved += promoted.len() + expired.len();
            if promoted.len() < BATCH as usize && expired.len() < BATCH as usize {
                return Ok(moved);
            }
        }
    }

    /// Runs the promoter/expirer loop until `shutdown` turns true.
    pub async fn run_services(self, mut shutdown: watch::Receiver<bool>) {
        tracing::info!(
            until = %runnel_core::view::iso(self.start_up_grace_until()),
            "rescuer start-up grace: leases that ran out are not rescued before then, \
             so live workers can report"
        );
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
        let now = self.clock.now();
        let next = if self.in_start_up_grace(now) {
            // Leases wait for the grace's end; the other deadlines do not.
            let next = self.store.run_next_due_at(false).await?;
            let grace_end = self.start_up_grace_until();
            Some(next.map_or(grace_end, |at| at.min(grace_end)))
        } else {
            self.store.run_next_due_at(true).await?
        };
        Ok(match next {
            Some(at) => (at - now)
                .to_std()
                .unwrap_or(StdDuration::ZERO)
                .min(IDLE_RECHECK),
            None => IDLE_RECHECK,
        })
    }
}
