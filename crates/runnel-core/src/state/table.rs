//! The transition table: which status may move to which, and by which transition.
//!
//! This is the state machine's one definition. [`RunStatus::can_move_to`] reads it (and
//! the store refuses any move it has no edge for); `docs/state-machine.md` draws it, and a
//! test here fails when the drawing and the table disagree.

use std::fmt;

use crate::status::RunStatus;

/// The named ways a run changes status. Each has one pure function in
/// [`crate::state`] deciding its change (except those done inside one store statement:
/// trigger, dequeue, start), and one row per edge in [`EDGES`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transition {
    /// A new run enters its first status (from nothing: see [`INITIAL`]).
    Trigger,
    /// A delay ended, or a version serving a waiting run registered:
    /// [`crate::state::promote`].
    Promote,
    /// The TTL passed while the run waited to start: [`crate::state::expire`].
    Expire,
    /// A worker leased the run (a new attempt).
    Dequeue,
    /// The worker started the leased attempt.
    Start,
    /// The holding worker reported the attempt's end: [`crate::state::settle`].
    Settle,
    /// The server ended a held attempt nobody will report on (lease ran out, or
    /// `maxDuration` passed): [`crate::state::rescue`].
    Rescue,
    /// The backoff after a failed attempt ended: [`crate::state::requeue`].
    Requeue,
    /// Canceled by a caller (or with its parent): [`crate::state::cancel`].
    Cancel,
    /// Reserved: a run suspended on waitpoints (see `WAITING` in [`crate::state`]).
    Wait,
    /// Reserved: a suspended run's waitpoints completed.
    Resume,
    /// Reserved: the next attempt starts at once, without going back to the queue
    /// (upstream's `RETRY_IMMEDIATELY`).
    RetryImmediately,
    /// Reserved: a queued run goes back to waiting for a version.
    Unserve,
}

impl Transition {
    pub const ALL: [Transition; 13] = [
        Transition::Trigger,
        Transition::Promote,
        Transition::Expire,
        Transition::Dequeue,
        Transition::Start,
        Transition::Settle,
        Transition::Rescue,
        Transition::Requeue,
        Transition::Cancel,
        Transition::Wait,
        Transition::Resume,
        Transition::RetryImmediately,
        Transition::Unserve,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Transition::Trigger => "trigger",
            Transition::Promote => "promote",
            Transition::Expire => "expire",
            Transition::Dequeue => "dequeue",
            Transition::Start => "start",
            Transition::Settle => "settle",
            Transition::Rescue => "rescue",
            Transition::Requeue => "requeue",
            Transition::Cancel => "cancel",
            Transition::Wait => "wait",
            Transition::Resume => "resume",
            Transition::RetryImmediately => "retry immediately",
            Transition::Unserve => "unserve",
        }
    }

    /// Whether nothing takes this transition yet: its edges are allowed (the store
    /// accepts them) and kept for what is to come, but no code path moves a run along
    /// them.
    pub fn is_reserved(self) -> bool {
        matches!(self, Transition::RetryImmediately | Transition::Unserve)
    }

    /// The edges of this transition.
    pub fn edges(self) -> impl Iterator<Item = &'static Edge> {
        EDGES.iter().filter(move |e| e.by == self)
    }

    /// The statuses this transition may move a run out of.
    pub fn from(self) -> Vec<RunStatus> {
        let mut from: Vec<RunStatus> = Vec::new();
        for e in self.edges() {
            if !from.contains(&e.from) {
                from.push(e.from);
            }
        }
        from
    }

    /// Whether this transition may move a run from `from` to `to`.
    pub fn allows(self, from: RunStatus, to: RunStatus) -> bool {
        self.edges().any(|e| e.from == from && e.to == to)
    }
}

impl fmt::Display for Transition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One allowed move.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Edge {
    pub from: RunStatus,
    pub to: RunStatus,
    pub by: Transition,
}

const fn edge(from: RunStatus, by: Transition, to: RunStatus) -> Edge {
    Edge { from, to, by }
}

/// The statuses a run is created in, by [`Transition::Trigger`].
pub const INITIAL: [RunStatus; 3] = [
    RunStatus::Delayed,
    RunStatus::Queued,
    RunStatus::PendingVersion,
];

use RunStatus::{
    Canceled, CompletedSuccessfully, CompletedWithErrors, Crashed, Delayed, Dequeued, Executing,
    Expired, Interrupted, PendingVersion, Queued, RetryingAfterFailure, SystemFailure, TimedOut,
    WaitingToResume,
};
use Transition::{
    Cancel, Dequeue, Expire, Promote, Requeue, Rescue, Resume, RetryImmediately, Settle, Start,
    Unserve, Wait,
};

/// Every allowed move, by transition. Two transitions may share an edge (a crash is
/// settled by the worker or rescued by the server); nothing leaves a final status and no
/// status moves to itself.
pub const EDGES: &[Edge] = &[
    edge(Delayed, Promote, Queued),
    edge(Delayed, Promote, PendingVersion),
    edge(PendingVersion, Promote, Queued),
    edge(PendingVersion, Expire, Expired),
    edge(Queued, Expire, Expired),
    edge(Queued, Dequeue, Dequeued),
    edge(Queued, Unserve, PendingVersion),
    edge(Dequeued, Start, Executing),
    // A leased run the worker has not started yet can end the ways an executing one can
    // (the worker refuses it, crashes or is stopped before starting).
    edge(Dequeued, Settle, CompletedSuccessfully),
    edge(Dequeued, Settle, CompletedWithErrors),
    edge(Dequeued, Settle, RetryingAfterFailure),
    edge(Dequeued, Settle, Queued),
    edge(Dequeued, Settle, Crashed),
    edge(Dequeued, Settle, SystemFailure),
    edge(Dequeued, Settle, TimedOut),
    edge(Dequeued, Settle, Interrupted),
    edge(Dequeued, Rescue, Queued),
    edge(Dequeued, Wait, WaitingToResume),
    edge(Executing, Settle, CompletedSuccessfully),
    edge(Executing, Settle, CompletedWithErrors),
    edge(Executing, Settle, RetryingAfterFailure),
    edge(Executing, Settle, Queued),
    edge(Executing, Settle, Crashed),
    edge(Executing, Settle, SystemFailure),
    edge(Executing, Settle, TimedOut),
    edge(Executing, Settle, Interrupted),
    edge(Executing, Rescue, RetryingAfterFailure),
    edge(Executing, Rescue, Crashed),
    edge(Executing, Rescue, TimedOut),
    edge(Executing, Wait, WaitingToResume),
    // A process that dies during a wait reports (or is rescued) as an executing one does.
    edge(WaitingToResume, Settle, CompletedSuccessfully),
    edge(WaitingToResume, Settle, CompletedWithErrors),
    edge(WaitingToResume, Settle, RetryingAfterFailure),
    edge(WaitingToResume, Settle, Queued),
    edge(WaitingToResume, Settle, Crashed),
    edge(WaitingToResume, Settle, SystemFailure),
    edge(WaitingToResume, Settle, TimedOut),
    edge(WaitingToResume, Settle, Interrupted),
    edge(WaitingToResume, Rescue, RetryingAfterFailure),
    edge(WaitingToResume, Rescue, Crashed),
    edge(RetryingAfterFailure, Requeue, Queued),
    edge(RetryingAfterFailure, RetryImmediately, Executing),
    edge(WaitingToResume, Resume, Executing),
    edge(WaitingToResume, Resume, Queued),
    edge(Delayed, Cancel, Canceled),
    edge(PendingVersion, Cancel, Canceled),
    edge(Queued, Cancel, Canceled),
    edge(Dequeued, Cancel, Canceled),
    edge(Executing, Cancel, Canceled),
    edge(RetryingAfterFailure, Cancel, Canceled),
    edge(WaitingToResume, Cancel, Canceled),
];

/// Whether any transition moves a run from `from` to `to`.
pub fn has_edge(from: RunStatus, to: RunStatus) -> bool {
    EDGES.iter().any(|e| e.from == from && e.to == to)
}

impl RunStatus {
    /// Whether the state machine has an edge from `self` to `to`: the transition table
    /// ([`EDGES`], drawn in docs/state-machine.md) decides. Nothing leaves a final
    /// status; no status moves to itself.
    pub fn can_move_to(self, to: RunStatus) -> bool {
        has_edge(self, to)
    }
}

/// A status's name in the drawing: its variant name.
fn node(status: RunStatus) -> String {
    status
        .as_str()
        .split('_')
        .map(|word| {
            let mut chars = word.chars();
            let first = chars.next().map(|c| c.to_ascii_uppercase());
            first
                .into_iter()
                .chain(chars.map(|c| c.to_ascii_lowercase()))
                .collect::<String>()
        })
        .collect()
}

/// The table as the body of a mermaid `stateDiagram-v2`, one line per edge (transitions
/// sharing an edge are listed on it together, reserved ones marked): what the ```mermaid
/// block of `docs/state-machine.md` holds.
pub fn mermaid() -> String {
    let mut lines = vec!["stateDiagram-v2".to_owned()];
    for status in INITIAL {
        lines.push(format!(
            "    [*] --> {}: {}",
            node(status),
            Transition::Trigger
        ));
    }
    let mut seen: Vec<(RunStatus, RunStatus)> = Vec::new();
    for e in EDGES {
        if seen.contains(&(e.from, e.to)) {
            continue;
        }
        seen.push((e.from, e.to));
        let label = EDGES
            .iter()
            .filter(|other| other.from == e.from && other.to == e.to)
            .map(|other| {
                if other.by.is_reserved() {
                    format!("{} (reserved)", other.by)
                } else {
                    other.by.to_string()
                }
            })
            .collect::<Vec<_>>()
            .join(", ");
        lines.push(format!("    {} --> {}: {label}", node(e.from), node(e.to)));
    }
    let mut out = lines.join("\n");
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `RunStatus::can_move_to` as it was written before the table existed: the table
    /// must allow exactly these moves.
    fn old_can_move_to(from: RunStatus, to: RunStatus) -> bool {
        if from.is_final() || from == to {
            return false;
        }
        if to == Canceled {
            return true;
        }
        match from {
            Delayed => matches!(to, Queued | PendingVersion),
            PendingVersion => matches!(to, Queued | Expired),
            Queued => matches!(to, Dequeued | Expired | PendingVersion),
            Dequeued | Executing => matches!(
                to,
                Executing
                    | CompletedSuccessfully
                    | CompletedWithErrors
                    | RetryingAfterFailure
                    | WaitingToResume
                    | Queued
                    | Crashed
                    | SystemFailure
                    | TimedOut
                    | Interrupted
            ),
            RetryingAfterFailure => matches!(to, Queued | Executing),
            // Since waits were built: a waiting run's attempt can end too.
            WaitingToResume => matches!(
                to,
                Executing
                    | Queued
                    | CompletedSuccessfully
                    | CompletedWithErrors
                    | RetryingAfterFailure
                    | Crashed
                    | SystemFailure
                    | TimedOut
                    | Interrupted
            ),
            _ => false,
        }
    }

    #[test]
    fn the_table_allows_exactly_the_moves_allowed_before_it() {
        for from in RunStatus::ALL {
            for to in RunStatus::ALL {
                assert_eq!(
                    from.can_move_to(to),
                    old_can_move_to(from, to),
                    "{from} -> {to}"
                );
            }
        }
    }

    #[test]
    fn no_edge_is_listed_twice_and_none_leaves_a_final_status() {
        for (i, e) in EDGES.iter().enumerate() {
            assert!(!e.from.is_final(), "{e:?}");
            assert_ne!(e.from, e.to, "{e:?}");
            assert!(!EDGES[..i].contains(e), "{e:?} listed twice");
        }
    }

    #[test]
    fn every_transition_but_trigger_has_edges_and_only_cancel_enters_canceled() {
        for t in Transition::ALL {
            assert_eq!(t.edges().count() == 0, t == Transition::Trigger, "{t}");
        }
        for e in EDGES {
            assert_eq!(e.to == Canceled, e.by == Cancel, "{e:?}");
        }
        assert_eq!(Cancel.from().len(), 7, "every live status can be canceled");
        assert_eq!(Expire.from(), vec![PendingVersion, Queued]);
        assert!(Rescue.allows(Dequeued, Queued));
        assert!(
            !Rescue.allows(Dequeued, Crashed),
            "an unstarted attempt never crashes"
        );
    }

    #[test]
    fn node_names_are_the_variant_names() {
        assert_eq!(node(RetryingAfterFailure), "RetryingAfterFailure");
        assert_eq!(node(CompletedSuccessfully), "CompletedSuccessfully");
        assert_eq!(node(Queued), "Queued");
    }

    /// The lines of the first ```mermaid block of `markdown`.
    fn mermaid_block(markdown: &str) -> Option<String> {
        let start = markdown.find("```mermaid\n")? + "```mermaid\n".len();
        let len = markdown[start..].find("```")?;
        Some(markdown[start..start + len].to_owned())
    }

    #[test]
    fn docs_state_machine_draws_exactly_the_table() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/state-machine.md");
        let doc = std::fs::read_to_string(path).expect("docs/state-machine.md");
        let drawn = mermaid_block(&doc).expect("a ```mermaid block in docs/state-machine.md");
        let want = mermaid();
        if drawn != want {
            let drawn_lines: Vec<&str> = drawn.lines().collect();
            let want_lines: Vec<&str> = want.lines().collect();
            let mut diff = String::new();
            for line in &want_lines {
                if !drawn_lines.contains(line) {
                    diff.push_str(&format!("+ {line}\n"));
                }
            }
            for line in &drawn_lines {
                if !want_lines.contains(line) {
                    diff.push_str(&format!("- {line}\n"));
                }
            }
            if diff.is_empty() {
                diff.push_str("(same lines, different order)\n");
            }
            panic!(
                "docs/state-machine.md does not draw the transition table \
                 (runnel_core::state::table::EDGES).\n\
                 Lines to add (+) and remove (-):\n{diff}\n\
                 The block should read:\n```mermaid\n{want}```"
            );
        }
    }
}
