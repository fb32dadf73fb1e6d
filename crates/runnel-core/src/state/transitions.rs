//! The transitions as pure functions: each decides, from a run and `now`, the [`Change`]
//! to apply, or why it does not apply ([`Refused`]).

use chrono::{DateTime, Duration, Utc};
use rand::Rng;
use serde_json::{json, Value};

use super::table::Transition;
use super::{RunState, StateError};
use crate::id::{AttemptId, WorkerId};
use crate::key::EnvironmentKind;
use crate::retry::RetryPolicy;
use crate::run::{Attempt, AttemptStatus, Packet, Run};
use crate::status::RunStatus;
use crate::worker::{self, AttemptOutcome, FailureKind, Settlement, TaskFailure};

/// An attempt's compute time and its price.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Charge {
    pub duration_ms: i64,
    pub cost_in_cents: f64,
}

/// The compute time of an attempt that started at `started_at` (never: nothing) and
/// ended at `ended_at`, priced at `cents_per_ms`
/// ([`Pricing::cents_per_ms`](crate::cost::Pricing::cents_per_ms)). A clock that went
/// backwards charges nothing.
pub fn charge(
    started_at: Option<DateTime<Utc>>,
    ended_at: DateTime<Utc>,
    cents_per_ms: f64,
) -> Charge {
    let duration_ms =
        started_at.map_or(0, |started| (ended_at - started).num_milliseconds().max(0));
    Charge {
        duration_ms,
        cost_in_cents: cost_of(duration_ms, cents_per_ms),
    }
}

/// The price of `duration_ms` of compute at `cents_per_ms`.
pub(crate) fn cost_of(duration_ms: i64, cents_per_ms: f64) -> f64 {
    if duration_ms <= 0 {
        0.0
    } else {
        duration_ms as f64 * cents_per_ms
    }
}

/// Whose hold on the run's attempt a change relies on: the store applies it only while
/// the claim still holds, so a late completion never overwrites a rescue and vice versa.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// The worker that holds the attempt reports its end.
    Worker(WorkerId),
    /// The lease ran out at or before this time.
    LeaseExpired(DateTime<Utc>),
    /// The attempt passed its `maxDuration` deadline at or before this time.
    TimedOut(DateTime<Utc>),
}

/// How a change ends the attempt the run held.
#[derive(Debug, Clone, PartialEq)]
pub struct AttemptEnd {
    pub attempt: AttemptId,
    pub status: AttemptStatus,
    /// `{message, name?, stackTrace?}`.
    pub error: Option<Value>,
    /// Whether the attempt counts against the run's `maxAttempts`.
    pub spends_attempt: bool,
    /// Its compute time and price, added to the run's. `None` for a cancel: the store
    /// reads the attempt's start in the cancel's own transaction and charges it there.
    pub charge: Option<Charge>,
    /// `None` for a cancel, which ends whatever attempt the run holds.
    pub claim: Option<Claim>,
}

/// What a transition does to one run: applied only while the run is still in `from`, it
/// moves it to `to` at `at` and sets the fields below.
///
/// A change that ends a held attempt (`attempt` is `Some`) also clears the hold (lease,
/// `maxDuration` deadline, current attempt), and for settle and rescue writes `error`,
/// `output` and `next_attempt_at` as given (`None` clears them). Other changes set only
/// the fields that are `Some`.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub transition: Transition,
    pub from: RunStatus,
    pub to: RunStatus,
    pub at: DateTime<Utc>,
    /// `at` when `to` is final.
    pub completed_at: Option<DateTime<Utc>>,
    /// The run's `TaskRunError`, when it ends in failure.
    pub error: Option<Value>,
    pub output: Option<Packet>,
    pub expired_at: Option<DateTime<Utc>>,
    /// When a retrying run is queued again.
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// The run's new place in its queue (when it was queued, less its priority, in ms).
    pub queue_ts: Option<i64>,
    pub attempt: Option<AttemptEnd>,
}

impl Change {
    fn new(transition: Transition, from: RunStatus, to: RunStatus, at: DateTime<Utc>) -> Self {
        debug_assert!(
            transition.allows(from, to),
            "{transition}: no edge {from} -> {to}"
        );
        Change {
            transition,
            from,
            to,
            at,
            completed_at: to.is_final().then_some(at),
            error: None,
            output: None,
            expired_at: None,
            next_attempt_at: None,
            queue_ts: None,
            attempt: None,
        }
    }
}

/// Why a transition does not apply to a run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// The transition has no edge out of the run's status.
    #[error("{transition} does not move a run out of {from}")]
    NotFrom {
        transition: Transition,
        from: RunStatus,
    },
    /// Its deadline has not passed (or, for promote, no version serves it).
    #[error("{transition} is not due for the run yet")]
    NotDue { transition: Transition },
    /// The attempt is not the one the run holds, or another worker holds it.
    #[error("the attempt is not held by this claimant")]
    NotHeld,
    #[error(transparent)]
    State(#[from] StateError),
}

fn not_from(transition: Transition, state: &RunState) -> Refused {
    Refused::NotFrom {
        transition,
        from: state.status(),
    }
}

/// What the run's environment and task say about ending its attempts.
#[derive(Debug, Clone, Copy)]
pub struct Terms<'a> {
    pub environment: EnvironmentKind,
    /// The task's retry policy; the run's own `maxAttempts` overrides its limit.
    pub policy: &'a RetryPolicy,
    /// The price of the run's machine here (0 in dev).
    pub cents_per_ms: f64,
    /// What the worker said of a retry, when its runtime decides it (the Trigger.dev
    /// task process computes the delay itself).
    pub retry: RetryHint,
}

/// A worker's own word on retrying a failed attempt. The server still decides whether
/// attempts remain; the worker can only shorten the road.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RetryHint {
    /// The task's retry policy decides (Runnel's own workers).
    #[default]
    Policy,
    /// The worker's runtime ruled a retry out (an `AbortTaskRunError`, a 4xx, retries
    /// disabled in dev): the run fails now.
    Never,
    /// Retry after this many ms, if attempts remain.
    After { delay_ms: u64 },
}

/// An attempt's end as decided: the settlement, the failure it records and the output.
struct Ending<'f> {
    settlement: Settlement,
    failure: Option<&'f TaskFailure>,
    output: Option<Packet>,
}

/// Decides what `outcome` does to `run`: success, or a failure retried or not as the
/// retry policy says (`worker::settle_failure`).
fn decide<'f>(
    run: &Run,
    outcome: &'f AttemptOutcome,
    terms: &Terms,
    rng: &mut impl Rng,
) -> Ending<'f> {
    match outcome {
        AttemptOutcome::Success { output } => Ending {
            settlement: Settlement::Succeeded,
            failure: None,
            output: (!output.is_null()).then(|| Packet::json(output)),
        },
        AttemptOutcome::Failure { error } => {
            let settlement = worker::settle_failure(
                error.kind,
                terms.environment,
                run.failed_attempts + 1,
                run.max_attempts.unwrap_or(terms.policy.max_attempts),
                terms.policy,
                rng,
            );
            let settlement = match (settlement, terms.retry) {
                (Settlement::Retry { .. }, RetryHint::Never) => {
                    Settlement::Fail(worker::final_status(error.kind))
                }
                (Settlement::Retry { .. }, RetryHint::After { delay_ms }) => {
                    Settlement::Retry { delay_ms }
                }
                (settlement, _) => settlement,
            };
            Ending {
                settlement,
                failure: Some(error),
                output: None,
            }
        }
    }
}

/// The change that ends the held `attempt` of a run in `from` as `ending` says.
fn end_attempt(
    transition: Transition,
    from: RunStatus,
    attempt: &Attempt,
    claim: Claim,
    ending: Ending,
    cents_per_ms: f64,
    now: DateTime<Utc>,
) -> Change {
    let Ending {
        settlement,
        failure,
        output,
    } = ending;
    let mut change = Change::new(transition, from, settlement.run_status(), now);
    change.output = output;
    change.error = match settlement {
        Settlement::Fail(_) => failure.map(TaskFailure::run_error),
        _ => None,
    };
    change.next_attempt_at = match settlement {
        Settlement::Retry { delay_ms } => {
            Some(now + Duration::milliseconds(i64::try_from(delay_ms).unwrap_or(i64::MAX)))
        }
        _ => None,
    };
    change.attempt = Some(AttemptEnd {
        attempt: attempt.id.clone(),
        status: match settlement {
            Settlement::Succeeded => AttemptStatus::Completed,
            Settlement::Release => AttemptStatus::Canceled,
            Settlement::Retry { .. } | Settlement::Fail(_) => AttemptStatus::Failed,
        },
        error: failure.map(TaskFailure::attempt_error),
        spends_attempt: settlement.spends_attempt(),
        charge: Some(charge(
            attempt
                .started_at
                .map(|at| at + Duration::milliseconds(attempt.waited_ms)),
            now,
            cents_per_ms,
        )),
        claim: Some(claim),
    });
    change
}

/// The held attempt's state, checked: the run is leased and `attempt` is the one it
/// holds.
fn held_attempt(transition: Transition, run: &Run, attempt: &Attempt) -> Result<RunState, Refused> {
    let state = run.state()?;
    match state.held() {
        None => Err(not_from(transition, &state)),
        Some((held, _)) if *held != attempt.id => Err(Refused::NotHeld),
        Some(_) => Ok(state),
    }
}

/// Settle: the worker `reporter` reports how `attempt` of `run` ended. Succeeds, retries
/// after the policy's backoff, fails the run, or (an operator-stopped worker outside
/// dev) puts it back in the queue without spending an attempt.
pub fn settle(
    run: &Run,
    attempt: &Attempt,
    reporter: &WorkerId,
    outcome: &AttemptOutcome,
    terms: &Terms,
    rng: &mut impl Rng,
    now: DateTime<Utc>,
) -> Result<Change, Refused> {
    let state = held_attempt(Transition::Settle, run, attempt)?;
    if state.held().is_some_and(|(_, worker)| worker != reporter) {
        return Err(Refused::NotHeld);
    }
    let ending = decide(run, outcome, terms, rng);
    Ok(end_attempt(
        Transition::Settle,
        state.status(),
        attempt,
        Claim::Worker(reporter.clone()),
        ending,
        terms.cents_per_ms,
        now,
    ))
}

/// Rescue: the server ends `attempt` of `run` because nobody will report on it.
///
/// - Past its `maxDuration` deadline (`timeout_at`), an executing attempt times out.
/// - Its lease ran out: an executing attempt crashes (and the run retries or ends
///   `Crashed`, as the policy says); a dequeued one, never started, is canceled and the
///   run goes back to the queue without spending an attempt, in every environment.
///
/// `NotDue` when neither deadline has passed.
pub fn rescue(
    run: &Run,
    attempt: &Attempt,
    terms: &Terms,
    rng: &mut impl Rng,
    now: DateTime<Utc>,
) -> Result<Change, Refused> {
    let state = held_attempt(Transition::Rescue, run, attempt)?;
    let reason = match &state {
        RunState::Executing {
            timeout_at: Some(timeout_at),
            ..
        } if *timeout_at <= now => Rescued::TimedOut,
        RunState::Dequeued {
            lease_expires_at, ..
        } if *lease_expires_at <= now => Rescued::NeverStarted,
        RunState::Executing {
            lease_expires_at, ..
        }
        | RunState::WaitingToResume {
            lease_expires_at, ..
        } if *lease_expires_at <= now => Rescued::Crashed,
        _ => {
            return Err(Refused::NotDue {
                transition: Transition::Rescue,
            })
        }
    };
    let outcome = match reason {
        Rescued::TimedOut => AttemptOutcome::failure(
            FailureKind::MaxDurationExceeded,
            format!(
                "Run exceeded maxDuration of {}s and its worker did not stop it",
                run.max_duration_secs.unwrap_or_default()
            ),
        ),
        Rescued::NeverStarted => AttemptOutcome::failure(
            FailureKind::Interrupted,
            "Worker stopped heartbeating before starting the attempt",
        ),
        Rescued::Crashed => AttemptOutcome::failure(
            FailureKind::Crashed,
            "Worker stopped heartbeating (lease expired): the attempt crashed",
        ),
    };
    let (claim, ending) = match (reason, &outcome) {
        (Rescued::TimedOut, _) => (Claim::TimedOut(now), decide(run, &outcome, terms, rng)),
        (Rescued::NeverStarted, AttemptOutcome::Failure { error }) => (
            Claim::LeaseExpired(now),
            // Back to the queue in every environment, the attempt not counted.
            Ending {
                settlement: Settlement::Release,
                failure: Some(error),
                output: None,
            },
        ),
        _ => (Claim::LeaseExpired(now), decide(run, &outcome, terms, rng)),
    };
    Ok(end_attempt(
        Transition::Rescue,
        state.status(),
        attempt,
        claim,
        ending,
        terms.cents_per_ms,
        now,
    ))
}

#[derive(Debug, Clone, Copy)]
enum Rescued {
    TimedOut,
    NeverStarted,
    Crashed,
}

/// The stored error of a canceled run (contract §4.3).
pub fn canceled_error() -> Value {
    json!({
        "type": "INTERNAL_ERROR",
        "code": "TASK_RUN_CANCELLED",
        "message": "Run was canceled",
    })
}

/// The stored error of an expired run: `Run expired because the TTL (<ttl>) was reached`.
pub fn expired_error(ttl: Option<&str>) -> Value {
    json!({
        "type": "STRING_ERROR",
        "raw": ttl.map(|ttl| format!("Run expired because the TTL ({ttl}) was reached")),
    })
}

/// Cancel: any live run ends `Canceled`; the attempt it holds, if any, is canceled
/// (charged for its compute time so far by the store, which reads its start).
///
/// Decided on the status alone (a live run with incomplete columns can still be
/// canceled); `NotFrom` for a run that already ended.
pub fn cancel(run: &Run, now: DateTime<Utc>) -> Result<Change, Refused> {
    if !Transition::Cancel.allows(run.status, RunStatus::Canceled) {
        return Err(Refused::NotFrom {
            transition: Transition::Cancel,
            from: run.status,
        });
    }
    let mut change = Change::new(Transition::Cancel, run.status, RunStatus::Canceled, now);
    change.error = Some(canceled_error());
    change.attempt = run.current_attempt_id.clone().map(|attempt| AttemptEnd {
        attempt,
        status: AttemptStatus::Canceled,
        error: Some(json!({"message": "Run was canceled"})),
        spends_attempt: false,
        charge: None,
        claim: None,
    });
    Ok(change)
}

/// Expire: a run still waiting to start (`Queued`, `PendingVersion`) whose TTL deadline
/// (`expire_at`) has passed ends `Expired`.
pub fn expire(run: &Run, now: DateTime<Utc>) -> Result<Change, Refused> {
    let state = run.state()?;
    let expire_at = match &state {
        RunState::Queued { expire_at } | RunState::PendingVersion { expire_at } => *expire_at,
        other => return Err(not_from(Transition::Expire, other)),
    };
    if expire_at.is_none_or(|at| at > now) {
        return Err(Refused::NotDue {
            transition: Transition::Expire,
        });
    }
    let mut change = Change::new(Transition::Expire, state.status(), RunStatus::Expired, now);
    change.expired_at = Some(now);
    change.error = Some(expired_error(run.ttl.as_deref()));
    Ok(change)
}

/// Promote: a delayed run whose delay has ended is queued as of `delayUntil` (less its
/// priority), or waits for a version when none `served` it; a version-waiting run is
/// queued once one is `served`.
pub fn promote(run: &Run, served: bool, now: DateTime<Utc>) -> Result<Change, Refused> {
    let not_due = Refused::NotDue {
        transition: Transition::Promote,
    };
    match run.state()? {
        RunState::Delayed { until } if until <= now => {
            let to = if served {
                RunStatus::Queued
            } else {
                RunStatus::PendingVersion
            };
            let mut change = Change::new(Transition::Promote, RunStatus::Delayed, to, now);
            change.queue_ts = Some(until.timestamp_millis() - i64::from(run.priority_ms));
            Ok(change)
        }
        RunState::Delayed { .. } => Err(not_due),
        RunState::PendingVersion { .. } if served => Ok(Change::new(
            Transition::Promote,
            RunStatus::PendingVersion,
            RunStatus::Queued,
            now,
        )),
        RunState::PendingVersion { .. } => Err(not_due),
        other => Err(not_from(Transition::Promote, &other)),
    }
}

/// Requeue: a run retrying after a failed attempt is queued again once its backoff has
/// ended, as of `next_attempt_at` (less its priority).
pub fn requeue(run: &Run, now: DateTime<Utc>) -> Result<Change, Refused> {
    match run.state()? {
        RunState::RetryingAfterFailure { next_attempt_at } if next_attempt_at <= now => {
            let mut change = Change::new(
                Transition::Requeue,
                RunStatus::RetryingAfterFailure,
                RunStatus::Queued,
                now,
            );
            change.queue_ts = Some(next_attempt_at.timestamp_millis() - i64::from(run.priority_ms));
            Ok(change)
        }
        RunState::RetryingAfterFailure { .. } => Err(Refused::NotDue {
            transition: Transition::Requeue,
        }),
        other => Err(not_from(Transition::Requeue, &other)),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::id::{EnvironmentId, RunId};
    use crate::trigger::{IdempotencyHeaders, TriggerRequest};
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    pub(crate) fn t(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + secs, 0).unwrap()
    }

    /// A run in `status` with every column its state needs: leased to `worker()` with
    /// `attempt()`, the lease ending at t(30), `maxDuration` ending at t(60).
    pub(crate) fn run_in(status: RunStatus) -> Run {
        let request: TriggerRequest =
            serde_json::from_value(json!({"payload": {"a": 1}, "options": {"ttl": "10m"}}))
                .unwrap();
        let mut run = request
            .validate("t", &IdempotencyHeaders::default(), t(0))
            .unwrap()
            .into_run(RunId::generate(0), EnvironmentId::generate(0), t(0));
        run.status = status;
        run.priority_ms = 500;
        run.delay_until = Some(t(5));
        run.expire_at = Some(t(600));
        if matches!(
            status,
            RunStatus::Dequeued | RunStatus::Executing | RunStatus::WaitingToResume
        ) {
            run.current_attempt_id = Some(attempt().id);
            run.worker_id = Some(worker());
            run.lease_expires_at = Some(t(30));
        }
        if status == RunStatus::Executing {
            run.timeout_at = Some(t(60));
            run.max_duration_secs = Some(55);
        }
        if status == RunStatus::RetryingAfterFailure {
            run.next_attempt_at = Some(t(20));
        }
        if status.is_final() {
            run.completed_at = Some(t(40));
        }
        run
    }

    pub(crate) fn worker() -> WorkerId {
        WorkerId::from_trusted("worker_1".into())
    }

    pub(crate) fn attempt() -> Attempt {
        Attempt {
            id: AttemptId::from_trusted("attempt_1".into()),
            run_id: RunId::from_trusted("run_1".into()),
            number: 1,
            status: AttemptStatus::Executing,
            created_at: t(0),
            updated_at: t(0),
            started_at: Some(t(10)),
            completed_at: None,
            error: None,
            worker_id: Some(worker()),
            duration_ms: 0,
            waited_ms: 0,
        }
    }

    const POLICY: RetryPolicy = RetryPolicy {
        max_attempts: 3,
        factor: 2.0,
        min_timeout_in_ms: 1_000,
        max_timeout_in_ms: 60_000,
        randomize: false,
    };

    fn terms(environment: EnvironmentKind) -> Terms<'static> {
        Terms {
            environment,
            policy: &POLICY,
            cents_per_ms: 0.001,
            retry: RetryHint::Policy,
        }
    }

    fn rng() -> StdRng {
        StdRng::seed_from_u64(3)
    }

    fn settle_at(
        run: &Run,
        outcome: AttemptOutcome,
        now: DateTime<Utc>,
    ) -> Result<Change, Refused> {
        settle(
            run,
            &attempt(),
            &worker(),
            &outcome,
            &terms(EnvironmentKind::Prod),
            &mut rng(),
            now,
        )
    }

    fn failed(kind: FailureKind) -> AttemptOutcome {
        AttemptOutcome::failure(kind, "boom")
    }

    fn ended(change: &Change) -> &AttemptEnd {
        change
            .attempt
            .as_ref()
            .expect("the change ends the held attempt")
    }

    // -- charge -----------------------------------------------------------------------

    #[test]
    fn charge_prices_the_time_between_start_and_end() {
        let c = charge(Some(t(10)), t(12) + Duration::milliseconds(500), 0.002);
        assert_eq!(c.duration_ms, 2_500);
        assert!((c.cost_in_cents - 5.0).abs() < 1e-12, "{c:?}");
        assert_eq!(
            charge(None, t(12), 0.002),
            Charge::default(),
            "never started"
        );
        assert_eq!(
            charge(Some(t(12)), t(10), 0.002),
            Charge::default(),
            "a clock that went backwards charges nothing"
        );
    }

    #[test]
    fn pricing_and_charge_agree() {
        use crate::cost::Pricing;
        use crate::machine::MachinePreset;
        let p = Pricing::default();
        let rate = p.cents_per_ms(EnvironmentKind::Prod, MachinePreset::Large1x);
        assert!(rate > 0.0);
        assert_eq!(
            charge(Some(t(0)), t(2) + Duration::milliseconds(500), rate).cost_in_cents,
            p.compute_cents(EnvironmentKind::Prod, MachinePreset::Large1x, 2_500)
        );
        assert_eq!(
            p.cents_per_ms(EnvironmentKind::Dev, MachinePreset::Large1x),
            0.0
        );
    }

    // -- settle -----------------------------------------------------------------------

    #[test]
    fn settle_success_completes_the_run_with_its_output_and_charges_the_attempt() {
        let run = run_in(RunStatus::Executing);
        let output = json!({"ok": true});
        let c = settle_at(
            &run,
            AttemptOutcome::Success {
                output: output.clone(),
            },
            t(15),
        )
        .unwrap();
        assert_eq!(c.transition, Transition::Settle);
        assert_eq!(
            (c.from, c.to),
            (RunStatus::Executing, RunStatus::CompletedSuccessfully)
        );
        assert_eq!(c.completed_at, Some(t(15)));
        assert_eq!(c.output, Some(Packet::json(&output)));
        assert_eq!(c.error, None);
        let a = ended(&c);
        assert_eq!(a.status, AttemptStatus::Completed);
        assert_eq!(a.claim, Some(Claim::Worker(worker())));
        assert_eq!(a.charge.unwrap().duration_ms, 5_000);
        let none = settle_at(
            &run,
            AttemptOutcome::Success {
                output: Value::Null,
            },
            t(15),
        )
        .unwrap();
        assert_eq!(none.output, None, "a null output is no output");
    }

    #[test]
    fn settle_failure_retries_while_attempts_are_left_then_fails() {
        let mut run = run_in(RunStatus::Executing);
        let retry = settle_at(&run, failed(FailureKind::TaskFailed), t(15)).unwrap();
        assert_eq!(retry.to, RunStatus::RetryingAfterFailure);
        assert_eq!(
            retry.next_attempt_at,
            Some(t(16)),
            "1 s backoff after attempt 1"
        );
        assert_eq!(retry.completed_at, None);
        assert_eq!(retry.error, None, "the run has no error while it retries");
        let a = ended(&retry);
        assert_eq!(a.status, AttemptStatus::Failed);
        assert!(a.spends_attempt);
        assert_eq!(a.error, Some(json!({"message": "boom"})));

        run.failed_attempts = 2;
        let last = settle_at(&run, failed(FailureKind::TaskFailed), t(15)).unwrap();
        assert_eq!(last.to, RunStatus::CompletedWithErrors);
        assert_eq!(last.next_attempt_at, None);
        assert_eq!(last.error.as_ref().unwrap()["type"], "BUILT_IN_ERROR");
        assert_eq!(last.completed_at, Some(t(15)));

        run.failed_attempts = 0;
        run.max_attempts = Some(1);
        let capped = settle_at(&run, failed(FailureKind::Crashed), t(15)).unwrap();
        assert_eq!(capped.to, RunStatus::Crashed, "the run's maxAttempts wins");
    }

    #[test]
    fn settle_interrupted_outside_dev_releases_without_spending() {
        let run = run_in(RunStatus::Dequeued);
        let c = settle_at(&run, failed(FailureKind::Interrupted), t(15)).unwrap();
        assert_eq!((c.from, c.to), (RunStatus::Dequeued, RunStatus::Queued));
        let a = ended(&c);
        assert_eq!(a.status, AttemptStatus::Canceled);
        assert!(!a.spends_attempt);
        assert_eq!(c.error, None);
        let dev = settle(
            &run,
            &attempt(),
            &worker(),
            &failed(FailureKind::Interrupted),
            &terms(EnvironmentKind::Dev),
            &mut rng(),
            t(15),
        )
        .unwrap();
        assert_eq!(dev.to, RunStatus::Interrupted);
    }

    #[test]
    fn settle_is_refused_to_anyone_but_the_holder() {
        let run = run_in(RunStatus::Executing);
        let other = WorkerId::from_trusted("worker_2".into());
        let outcome = failed(FailureKind::TaskFailed);
        let by_other = settle(
            &run,
            &attempt(),
            &other,
            &outcome,
            &terms(EnvironmentKind::Prod),
            &mut rng(),
            t(15),
        );
        assert_eq!(by_other, Err(Refused::NotHeld));
        let mut stale = attempt();
        stale.id = AttemptId::from_trusted("attempt_0".into());
        let stale = settle(
            &run,
            &stale,
            &worker(),
            &outcome,
            &terms(EnvironmentKind::Prod),
            &mut rng(),
            t(15),
        );
        assert_eq!(stale, Err(Refused::NotHeld));
        assert_eq!(
            settle_at(&run_in(RunStatus::Queued), outcome, t(15)),
            Err(Refused::NotFrom {
                transition: Transition::Settle,
                from: RunStatus::Queued
            })
        );
    }

    // -- rescue -----------------------------------------------------------------------

    fn rescue_at(run: &Run, env: EnvironmentKind, now: DateTime<Utc>) -> Result<Change, Refused> {
        rescue(run, &attempt(), &terms(env), &mut rng(), now)
    }

    #[test]
    fn rescue_times_out_an_attempt_past_its_max_duration_even_with_its_lease_gone() {
        let run = run_in(RunStatus::Executing);
        let c = rescue_at(&run, EnvironmentKind::Prod, t(61)).unwrap();
        assert_eq!(c.transition, Transition::Rescue);
        assert_eq!(c.to, RunStatus::TimedOut);
        assert_eq!(c.error.as_ref().unwrap()["code"], "MAX_DURATION_EXCEEDED");
        assert_eq!(
            c.error.as_ref().unwrap()["message"],
            "Run exceeded maxDuration of 55s and its worker did not stop it"
        );
        let a = ended(&c);
        assert_eq!(a.claim, Some(Claim::TimedOut(t(61))));
        assert_eq!(a.charge.unwrap().duration_ms, 51_000);
    }

    #[test]
    fn rescue_crashes_an_executing_attempt_whose_lease_ran_out() {
        let mut run = run_in(RunStatus::Executing);
        let c = rescue_at(&run, EnvironmentKind::Prod, t(31)).unwrap();
        assert_eq!(c.to, RunStatus::RetryingAfterFailure);
        assert_eq!(c.next_attempt_at, Some(t(32)));
        let a = ended(&c);
        assert_eq!(a.claim, Some(Claim::LeaseExpired(t(31))));
        assert_eq!(a.status, AttemptStatus::Failed);
        assert!(a.error.as_ref().unwrap()["message"]
            .as_str()
            .unwrap()
            .contains("lease expired"));
        run.failed_attempts = 2;
        let c = rescue_at(&run, EnvironmentKind::Prod, t(31)).unwrap();
        assert_eq!(c.to, RunStatus::Crashed);
        assert_eq!(c.error.as_ref().unwrap()["code"], "TASK_RUN_CRASHED");
    }

    #[test]
    fn rescue_requeues_a_never_started_attempt_in_every_environment() {
        let run = run_in(RunStatus::Dequeued);
        for env in EnvironmentKind::ALL {
            let c = rescue_at(&run, env, t(31)).unwrap();
            assert_eq!(
                (c.from, c.to),
                (RunStatus::Dequeued, RunStatus::Queued),
                "{env}"
            );
            assert_eq!(c.error, None);
            assert_eq!(c.next_attempt_at, None);
            let a = ended(&c);
            assert_eq!(a.status, AttemptStatus::Canceled);
            assert!(!a.spends_attempt);
            assert_eq!(a.claim, Some(Claim::LeaseExpired(t(31))));
            assert_eq!(
                a.error,
                Some(json!({"message": "Worker stopped heartbeating before starting the attempt"}))
            );
        }
    }

    #[test]
    fn rescue_waits_for_a_deadline() {
        let not_due = Err(Refused::NotDue {
            transition: Transition::Rescue,
        });
        assert_eq!(
            rescue_at(&run_in(RunStatus::Executing), EnvironmentKind::Prod, t(29)),
            not_due
        );
        assert_eq!(
            rescue_at(&run_in(RunStatus::Dequeued), EnvironmentKind::Prod, t(29)),
            not_due
        );
        assert!(matches!(
            rescue_at(
                &run_in(RunStatus::RetryingAfterFailure),
                EnvironmentKind::Prod,
                t(99)
            ),
            Err(Refused::NotFrom { .. })
        ));
    }

    // -- cancel -----------------------------------------------------------------------

    #[test]
    fn cancel_ends_any_live_run_and_its_held_attempt() {
        let c = cancel(&run_in(RunStatus::Executing), t(15)).unwrap();
        assert_eq!((c.from, c.to), (RunStatus::Executing, RunStatus::Canceled));
        assert_eq!(c.completed_at, Some(t(15)));
        assert_eq!(c.error, Some(canceled_error()));
        let a = ended(&c);
        assert_eq!(a.attempt, attempt().id);
        assert_eq!(a.status, AttemptStatus::Canceled);
        assert!(!a.spends_attempt);
        let queued = cancel(&run_in(RunStatus::Queued), t(15)).unwrap();
        assert_eq!(queued.attempt, None, "nothing held");
        for status in RunStatus::ALL {
            assert_eq!(
                cancel(&run_in(status), t(15)).is_ok(),
                !status.is_final(),
                "{status}"
            );
        }
        // Decided on the status alone: a live run missing its columns is still canceled.
        let mut bare = run_in(RunStatus::Executing);
        bare.lease_expires_at = None;
        assert!(cancel(&bare, t(15)).is_ok());
    }

    // -- expire -----------------------------------------------------------------------

    #[test]
    fn expire_ends_a_waiting_run_past_its_ttl() {
        for status in [RunStatus::Queued, RunStatus::PendingVersion] {
            let run = run_in(status);
            let c = expire(&run, t(600)).unwrap();
            assert_eq!((c.from, c.to), (status, RunStatus::Expired));
            assert_eq!(c.expired_at, Some(t(600)));
            assert_eq!(c.completed_at, Some(t(600)));
            assert_eq!(
                c.error,
                Some(
                    json!({"type": "STRING_ERROR", "raw": "Run expired because the TTL (10m) was reached"})
                )
            );
            assert_eq!(
                expire(&run, t(599)),
                Err(Refused::NotDue {
                    transition: Transition::Expire
                })
            );
        }
        let mut no_ttl = run_in(RunStatus::Queued);
        no_ttl.expire_at = None;
        assert!(matches!(
            expire(&no_ttl, t(9_999)),
            Err(Refused::NotDue { .. })
        ));
        assert!(matches!(
            expire(&run_in(RunStatus::Delayed), t(9_999)),
            Err(Refused::NotFrom { .. })
        ));
    }

    // -- promote ----------------------------------------------------------------------

    #[test]
    fn promote_queues_a_delayed_run_as_of_its_delay_end() {
        let run = run_in(RunStatus::Delayed);
        let c = promote(&run, true, t(7)).unwrap();
        assert_eq!((c.from, c.to), (RunStatus::Delayed, RunStatus::Queued));
        assert_eq!(c.queue_ts, Some(t(5).timestamp_millis() - 500));
        assert_eq!(c.completed_at, None);
        let unserved = promote(&run, false, t(7)).unwrap();
        assert_eq!(unserved.to, RunStatus::PendingVersion);
        assert!(matches!(
            promote(&run, true, t(4)),
            Err(Refused::NotDue { .. })
        ));
    }

    #[test]
    fn promote_queues_a_version_waiting_run_once_served() {
        let run = run_in(RunStatus::PendingVersion);
        let c = promote(&run, true, t(7)).unwrap();
        assert_eq!(
            (c.from, c.to),
            (RunStatus::PendingVersion, RunStatus::Queued)
        );
        assert_eq!(c.queue_ts, None, "keeps its place");
        assert!(matches!(
            promote(&run, false, t(7)),
            Err(Refused::NotDue { .. })
        ));
        assert!(matches!(
            promote(&run_in(RunStatus::Queued), true, t(7)),
            Err(Refused::NotFrom { .. })
        ));
    }

    // -- requeue ----------------------------------------------------------------------

    #[test]
    fn requeue_queues_a_retrying_run_when_its_backoff_ends() {
        let run = run_in(RunStatus::RetryingAfterFailure);
        let c = requeue(&run, t(20)).unwrap();
        assert_eq!(
            (c.from, c.to),
            (RunStatus::RetryingAfterFailure, RunStatus::Queued)
        );
        assert_eq!(c.queue_ts, Some(t(20).timestamp_millis() - 500));
        assert_eq!(c.next_attempt_at, None);
        assert!(matches!(requeue(&run, t(19)), Err(Refused::NotDue { .. })));
        assert!(matches!(
            requeue(&run_in(RunStatus::Queued), t(20)),
            Err(Refused::NotFrom { .. })
        ));
    }

    proptest::proptest! {
        /// Whatever the outcome, attempts spent and limit, a settle or a rescue moves the
        /// run along an edge of its own transition, and a retry only with attempts left.
        #[test]
        fn settle_and_rescue_follow_the_table(
            kind in 0usize..6,
            dequeued: bool,
            dev: bool,
            spent in 0u32..300,
            max in 1u32..300,
            late in 0i64..100,
            seed: u64,
        ) {
            let kinds = [FailureKind::TaskFailed, FailureKind::Crashed, FailureKind::MaxDurationExceeded,
                         FailureKind::SystemFailure, FailureKind::Interrupted];
            let outcome = match kinds.get(kind) {
                Some(k) => failed(*k),
                None => AttemptOutcome::Success { output: json!(1) },
            };
            let mut run = run_in(if dequeued { RunStatus::Dequeued } else { RunStatus::Executing });
            run.failed_attempts = spent;
            run.max_attempts = Some(max);
            let env = if dev { EnvironmentKind::Dev } else { EnvironmentKind::Prod };
            let mut rng = StdRng::seed_from_u64(seed);
            let now = t(late);
            let settled = settle(&run, &attempt(), &worker(), &outcome, &terms(env), &mut rng, now).unwrap();
            let rescued = rescue(&run, &attempt(), &terms(env), &mut rng, now);
            for c in std::iter::once(settled).chain(rescued.ok()) {
                proptest::prop_assert!(c.transition.allows(c.from, c.to), "{c:?}");
                proptest::prop_assert_eq!(c.completed_at.is_some(), c.to.is_final());
                if c.to == RunStatus::RetryingAfterFailure {
                    proptest::prop_assert!(spent + 1 < max.min(250));
                    proptest::prop_assert!(c.next_attempt_at.is_some_and(|at| at > now));
                }
            }
        }
    }
}
