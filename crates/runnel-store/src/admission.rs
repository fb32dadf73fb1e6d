//! Admission: which queued runs a dequeue may lease under the queues' pause flags and
//! concurrency limits, the part of dequeue both backends share.
//!
//! A run carries its queue's full name (`runs.queue`: `task/<taskId>` or a custom name).
//! A row in `queues` exists for every queue a registration declared (each task's queue,
//! and the `queues` list of the registration); a queue without a row, or whose row has
//! no limit and is not paused, is *open*: dequeue takes its runs on the fast path
//! without reading anything else. A *gated* queue is paused or limited:
//!
//! ```text
//!   dequeue ─► gated queues of the environment (partial index, usually none)
//!      │ none ──────────────────────────────► fast path: oldest queue_ts first
//!      ▼ some
//!   PostgreSQL only, before picking: lock each limited queue that has runs for
//!   this worker (advisory, transaction scoped, in name order), so dequeues of one
//!   limited queue take turns and the count below cannot go stale; a limited queue
//!   that had none is left out of this dequeue
//!      ▼
//!   candidates: oldest queued runs, where the query itself drops runs of paused
//!   queues and of full (queue, concurrencyKey) pairs, so a full queue never hides
//!   the runs queued behind it
//!      ▼
//!   count held (DEQUEUED + EXECUTING) runs per (queue, key) ─► [`admit`] keeps at
//!   most limit − held runs of each pair, oldest first ─► lease them; when some were
//!   dropped, look again (the full pairs are now excluded by the query)
//! ```
//!
//! Each concurrency key gets its own copy of its queue's limit; runs without a key
//! share one more copy. The effective limit is the API's override when there is one,
//! else the registered limit; `None` is unlimited.

use std::collections::HashMap;

use runnel_core::run::Run;
use runnel_core::RunStatus;

use crate::sql::{statuses, Dialect, Params};

/// The statuses that hold a place in a queue's limit.
const HELD: [RunStatus; 2] = [RunStatus::Dequeued, RunStatus::Executing];

/// How many times one dequeue looks again after its admission dropped runs of full
/// queues. Each round fills at least one (queue, key) pair, which the next one
/// excludes, so this only bounds pathological batches spread over many pairs.
pub(crate) const ADMIT_ROUNDS: usize = 4;

/// The gated (paused or limited) queues of an environment, as dequeue reads them.
#[derive(Debug, Default)]
pub(crate) struct Gates {
    pub paused: Vec<String>,
    /// Unpaused queues with a limit, by name.
    pub limits: HashMap<String, u32>,
}

impl Gates {
    pub fn from_rows(rows: Vec<(String, bool, Option<i64>)>) -> Gates {
        let mut gates = Gates::default();
        for (name, paused, limit) in rows {
            if paused {
                gates.paused.push(name);
            } else if let Some(limit) = limit {
                gates
                    .limits
                    .insert(name, u32::try_from(limit.max(0)).unwrap_or(u32::MAX));
            }
        }
        gates
    }

    pub fn is_empty(&self) -> bool {
        self.paused.is_empty() && self.limits.is_empty()
    }

    /// Every gated queue's name.
    pub fn names(&self) -> Vec<String> {
        self.paused
            .iter()
            .chain(self.limits.keys())
            .cloned()
            .collect()
    }

    /// The limited queues among `runs`' queues, sorted.
    pub fn limited_among(&self, runs: &[Run]) -> Vec<String> {
        let mut names: Vec<String> = runs
            .iter()
            .filter(|r| self.limits.contains_key(r.queue.as_str()))
            .map(|r| r.queue.to_string())
            .collect();
        names.sort();
        names.dedup();
        names
    }
}

/// Held runs per (queue, concurrency key).
pub(crate) type Held = HashMap<(String, Option<String>), i64>;

/// Keeps, oldest first, at most `want` of `candidates` such that no limited
/// (queue, key) pair ends up holding more than its queue's limit; `held` is updated
/// with what was kept. Runs of queues in `excluded` are dropped. Returns the kept runs
/// and whether any run was dropped for a full pair.
pub(crate) fn admit(
    candidates: Vec<Run>,
    gates: &Gates,
    excluded: &[String],
    held: &mut Held,
    want: usize,
) -> (Vec<Run>, bool) {
    let mut kept = Vec::new();
    let mut dropped = false;
    for run in candidates {
        if kept.len() >= want {
            break;
        }
        let queue = run.queue.as_str();
        if gates.paused.iter().any(|q| q == queue) || excluded.iter().any(|q| q == queue) {
            continue;
        }
        if let Some(&limit) = gates.limits.get(queue) {
            let count = held
                .entry((queue.to_owned(), run.concurrency_key.clone()))
                .or_insert(0);
            if *count >= i64::from(limit) {
                dropped = true;
                continue;
            }
            *count += 1;
        }
        kept.push(run);
    }
    (kept, dropped)
}

/// What a dequeue over gated queues leaves out (see `queues.rs`).
#[derive(Debug)]
pub(crate) struct DequeueGate<'a> {
    /// Every paused or limited queue of the environment: their runs are left out while
    /// the queue is paused or their (queue, concurrency key) pair is full.
    pub gated: &'a [String],
    /// Limited queues left out of this dequeue altogether
    /// ([`Backend::dequeue_lock_queues`](crate::backend::Backend::dequeue_lock_queues)).
    pub excluded: &'a [String],
}

/// The condition (`AND …`, over `runs`) that drops the runs `gate` leaves out. The query
/// itself drops the runs of paused queues and of full (queue, key) pairs, so a full queue
/// never hides the runs queued behind it.
pub(crate) fn gate_sql<'a, D: Dialect>(p: &mut Params<'a, D>, gate: &DequeueGate<'a>) -> String {
    let excluded = if gate.excluded.is_empty() {
        String::new()
    } else {
        format!(
            "AND NOT (queue {}) ",
            p.list(gate.excluded.iter().map(String::as_str))
        )
    };
    format!(
        "{excluded}AND (NOT (queue {}) OR NOT EXISTS (SELECT 1 FROM queues q \
           WHERE q.environment_id = runs.environment_id AND q.name = runs.queue \
           AND (q.paused OR COALESCE(q.concurrency_limit_override, q.concurrency_limit) <= \
             (SELECT count(*) FROM runs h WHERE h.environment_id = runs.environment_id \
              AND h.queue = runs.queue AND h.concurrency_key IS NOT DISTINCT FROM runs.concurrency_key \
              AND h.status IN {})))) ",
        p.list(gate.gated.iter().map(String::as_str)),
        statuses(&HELD),
    )
}
