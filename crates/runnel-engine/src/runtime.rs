//! Runtime services: the jobs that move runs because time passed, and the loop that
//! drives each of them.
//!
//! Each timed job is one [`TimedService`] in its own module under [`crate::services`]:
//!
//! | service | moves | waits for |
//! |---|---|---|
//! | [`Promoter`] | `Delayed` → `Queued` (or `PendingVersion`); `PendingVersion` → `Queued` once served | `delayUntil` |
//! | [`Expirer`] | `Queued`/`PendingVersion` → `Expired` | the TTL deadline |
//! | [`Requeuer`] | `RetryingAfterFailure` → `Queued` | `next_attempt_at` |
//! | [`Waiter`] | completes due `DATETIME` waitpoints and timed-out tokens, resumes the runs they (and any other completion) unblocked | a waitpoint's time or timeout |
//! | [`Rescuer`] | held attempts whose lease ran out crash (never started: back to the queue); past `maxDuration` time out | lease end, `maxDuration` deadline |
//! | [`Scheduler`] | fires each cron schedule's due occurrence once (the latest, after downtime) | a schedule's next occurrence |
//!
//! A service answers two questions: when it next has work ([`TimedService::next_due`],
//! one `min` over an indexed column) and what to do now ([`TimedService::run_once`], one
//! batch of at most a few hundred runs). [`drive`] runs one service: a pass repeats
//! `run_once` while batches come back full, then sleeps until the service's own next
//! deadline, capped at [`IDLE_RECHECK`] (so deadlines written by another node are seen),
//! or until the engine wakes it (a trigger with a delay or TTL wakes the promoter and
//! expirer, a failed attempt waiting to retry the requeuer, a started attempt with a
//! `maxDuration` the rescuer). A failed pass is logged and tried again after
//! [`ERROR_BACKOFF`]. [`Engine::run_services`] drives every service at once, each on its
//! own schedule: a busy expirer does not delay a rescue, and a new timed job (a
//! scheduler, a wait timer) is one new module and one line there.
//!
//! ```text
//!   trigger ──wake──┐
//!                   ▼
//!   drive(service) = loop {
//!       while service.run_once(now).full {}
//!       sleep until min(service.next_due(), now + IDLE_RECHECK), or a wake, or shutdown
//!   }
//! ```
//!
//! Every transition is a conditional update in the store, so the services running on
//! several nodes at once never move a run twice.
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

use std::future::Future;
use std::sync::Arc;
use std::time::Duration as StdDuration;

use chrono::{DateTime, Utc};
use tokio::sync::{watch, Notify};

use crate::services::{Expirer, Promoter, Requeuer, Rescuer, Scheduler, Waiter};
use crate::{Clock, Engine, Error};

/// Longest sleep between passes when no deadline is known.
pub const IDLE_RECHECK: StdDuration = StdDuration::from_secs(5);
/// Runs moved per statement; a pass repeats until a batch comes back short.
pub const BATCH: u32 = 500;
/// Pause after a store error before trying again.
pub const ERROR_BACKOFF: StdDuration = StdDuration::from_secs(1);

/// One timed job: something that moves runs once a deadline stored on them passes.
pub trait TimedService: Send + Sync {
    /// The service's name in logs.
    const NAME: &'static str;

    /// When this service next has work, if any run waits for it. An instant in the past
    /// means "now".
    fn next_due(&self) -> impl Future<Output = Result<Option<DateTime<Utc>>, Error>> + Send;

    /// Moves one batch of what is due at `now`.
    fn run_once(&self, now: DateTime<Utc>) -> impl Future<Output = Result<Batch, Error>> + Send;

    /// What wakes this service before its next deadline, besides [`IDLE_RECHECK`].
    fn woken_by(&self) -> Option<Arc<Notify>> {
        None
    }
}

/// What one [`TimedService::run_once`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Batch {
    /// Runs moved.
    pub moved: usize,
    /// A statement came back full: more may be due, run again before sleeping.
    pub full: bool,
}

/// The signals that wake a service before its next deadline. Each service has its own
/// [`Notify`], so a wake given while the service is busy is kept for its next sleep.
#[derive(Debug, Default)]
pub(crate) struct Wakes {
    pub(crate) promoter: Arc<Notify>,
    pub(crate) expirer: Arc<Notify>,
    pub(crate) requeuer: Arc<Notify>,
    pub(crate) rescuer: Arc<Notify>,
    pub(crate) waiter: Arc<Notify>,
    pub(crate) scheduler: Arc<Notify>,
}

impl Wakes {
    /// A run got a delay or a TTL.
    pub(crate) fn waits_changed(&self) {
        self.promoter.notify_one();
        self.expirer.notify_one();
    }
}

/// Runs `service` batch after batch until a batch comes back short. Returns how many
/// runs moved.
pub async fn run_pass<S: TimedService>(service: &S, clock: &dyn Clock) -> Result<usize, Error> {
    let mut moved = 0;
    loop {
        let batch = service.run_once(clock.now()).await?;
        moved += batch.moved;
        if !batch.full {
            return Ok(moved);
        }
    }
}

/// Drives `service` until `shutdown` turns true (or its sender is gone): a pass, then a
/// sleep until its next deadline (at most [`IDLE_RECHECK`]) or a wake.
pub async fn drive<S: TimedService>(
    service: S,
    clock: Arc<dyn Clock>,
    mut shutdown: watch::Receiver<bool>,
) {
    let woken_by = service.woken_by();
    let woken = || async {
        match &woken_by {
            Some(notify) => notify.notified().await,
            None => std::future::pending().await,
        }
    };
    loop {
        let sleep_for = match pass_and_next(&service, &*clock).await {
            Ok(sleep_for) => sleep_for,
            Err(error) => {
                tracing::error!(service = S::NAME, %error, "runtime service pass failed");
                ERROR_BACKOFF
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(sleep_for) => {}
            _ = woken() => {}
            changed = shutdown.changed() => {
                if changed.is_err() {
                    return;
                }
            }
        }
        if *shutdown.borrow() {
            return;
        }
    }
}

/// One pass of `service`, then how long it may sleep.
async fn pass_and_next<S: TimedService>(
    service: &S,
    clock: &dyn Clock,
) -> Result<StdDuration, Error> {
    run_pass(service, clock).await?;
    let next = service.next_due().await?;
    let now = clock.now();
    Ok(match next {
        Some(at) => (at - now)
            .to_std()
            .unwrap_or(StdDuration::ZERO)
            .min(IDLE_RECHECK),
        None => IDLE_RECHECK,
    })
}

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

    /// One pass of the promoter, the retry requeuer and the expirer: moves everything
    /// due now. Returns how many runs moved.
    pub async fn run_due_transitions(&self) -> Result<usize, Error> {
        let clock = &*self.clock;
        Ok(run_pass(&Promoter::new(self.clone()), clock).await?
            + run_pass(&Requeuer::new(self.clone()), clock).await?
            + run_pass(&Expirer::new(self.clone()), clock).await?)
    }

    /// One scheduler pass (see [`Scheduler`]): fires every occurrence due now. Returns
    /// how many schedules it looked at.
    pub async fn fire_due_schedules(&self) -> Result<usize, Error> {
        run_pass(&Scheduler::new(self.clone()), &*self.clock).await
    }

    /// One rescuer pass (see [`Rescuer`]). Returns how many runs moved.
    pub async fn rescue_due(&self) -> Result<usize, Error> {
        run_pass(&Rescuer::new(self.clone()), &*self.clock).await
    }

    /// Drives every runtime service, each on its own schedule, until `shutdown` turns
    /// true.
    pub async fn run_services(self, shutdown: watch::Receiver<bool>) {
        tracing::info!(
            until = %runnel_core::view::iso(self.start_up_grace_until()),
            "rescuer start-up grace: leases that ran out are not rescued before then, \
             so live workers can report"
        );
        let clock = self.clock.clone();
        tokio::join!(
            drive(Promoter::new(self.clone()), clock.clone(), shutdown.clone()),
            drive(Expirer::new(self.clone()), clock.clone(), shutdown.clone()),
            drive(Requeuer::new(self.clone()), clock.clone(), shutdown.clone()),
            drive(Waiter::new(self.clone()), clock.clone(), shutdown.clone()),
            drive(
                Scheduler::new(self.clone()),
                clock.clone(),
                shutdown.clone()
            ),
            drive(Rescuer::new(self), clock, shutdown),
        );
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::Mutex;

    use super::*;
    use crate::ManualClock;

    /// A service that hands out scripted batches, counts its passes' batches and is due
    /// never (so only a wake, or [`IDLE_RECHECK`], runs it again).
    struct Scripted {
        batches: Mutex<VecDeque<Batch>>,
        runs: watch::Sender<usize>,
        wake: Arc<Notify>,
    }

    impl Scripted {
        fn new(batches: &[Batch]) -> Self {
            Scripted {
                batches: Mutex::new(batches.iter().copied().collect()),
                runs: watch::channel(0).0,
                wake: Arc::new(Notify::new()),
            }
        }
    }

    impl TimedService for Arc<Scripted> {
        const NAME: &'static str = "scripted";

        async fn next_due(&self) -> Result<Option<DateTime<Utc>>, Error> {
            Ok(None)
        }

        async fn run_once(&self, _now: DateTime<Utc>) -> Result<Batch, Error> {
            self.runs.send_modify(|n| *n += 1);
            let next = self.batches.lock().expect("batches").pop_front();
            Ok(next.unwrap_or(SHORT))
        }

        fn woken_by(&self) -> Option<Arc<Notify>> {
            Some(self.wake.clone())
        }
    }

    const SHORT: Batch = Batch {
        moved: 0,
        full: false,
    };

    fn clock() -> Arc<dyn Clock> {
        Arc::new(ManualClock::new(DateTime::<Utc>::UNIX_EPOCH))
    }

    #[tokio::test]
    async fn a_pass_repeats_while_batches_come_back_full() {
        let full = Batch {
            moved: 500,
            full: true,
        };
        let short = Batch {
            moved: 3,
            full: false,
        };
        let service = Arc::new(Scripted::new(&[full, full, short, full]));
        assert_eq!(run_pass(&service, &*clock()).await.unwrap(), 1003);
        assert_eq!(*service.runs.borrow(), 3, "stops at the short batch");
    }

    #[tokio::test]
    async fn the_driver_runs_again_when_woken_and_stops_at_shutdown() {
        let service = Arc::new(Scripted::new(&[]));
        let mut runs = service.runs.subscribe();
        let (stop, shutdown) = watch::channel(false);
        let driver = tokio::spawn(drive(service.clone(), clock(), shutdown));
        // Well under IDLE_RECHECK: only the wake can explain a second pass this soon.
        let soon = StdDuration::from_secs(2);
        tokio::time::timeout(soon, runs.wait_for(|n| *n == 1))
            .await
            .expect("the first pass at start")
            .unwrap();
        service.wake.notify_one();
        tokio::time::timeout(soon, runs.wait_for(|n| *n == 2))
            .await
            .expect("a pass on the wake")
            .unwrap();
        stop.send_replace(true);
        tokio::time::timeout(soon, driver)
            .await
            .expect("the driver stops")
            .unwrap();
    }
}
