//! Queue names, spelled in one place.
//!
//! A run carries its queue's full name. Every task has a queue of its own, named
//! `task/<taskId>`; any other name is a custom queue (declared by a registration or
//! named by a trigger). The prefix is written only here: callers build a task's queue
//! with [`QueueName::for_task`] and read it back with [`task_of`] / [`is_task_queue`].

use std::fmt;

use serde::{Deserialize, Serialize};

/// What starts the name of a task's own queue.
const TASK_PREFIX: &str = "task/";

/// A queue's full name: `task/<taskId>` for a task's own queue, or a custom name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct QueueName(String);

impl QueueName {
    /// The longest queue name (contract §5).
    pub const MAX_LEN: usize = 128;

    /// The task's own queue: `task/<task>`.
    pub fn for_task(task: &str) -> Self {
        Self(format!("{TASK_PREFIX}{task}"))
    }

    /// Parses a name received from outside: 1..=128 of `[a-zA-Z0-9_\-/]`.
    pub fn parse(name: &str) -> Option<Self> {
        is_valid(name).then(|| Self(name.to_owned()))
    }

    /// Wraps a name read back from storage, where it was validated on the way in.
    pub fn from_trusted(name: String) -> Self {
        Self(name)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }

    /// The task whose own queue this is; `None` for a custom queue.
    pub fn task_of(&self) -> Option<&str> {
        task_of(&self.0)
    }

    /// Whether this is a task's own queue.
    pub fn is_task_queue(&self) -> bool {
        is_task_queue(&self.0)
    }
}

impl fmt::Display for QueueName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<QueueName> for String {
    fn from(name: QueueName) -> Self {
        name.0
    }
}

impl PartialEq<str> for QueueName {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<QueueName> for String {
    fn eq(&self, other: &QueueName) -> bool {
        *self == other.0
    }
}

/// Whether `name` is a queue name: 1..=128 of `[a-zA-Z0-9_\-/]`.
pub fn is_valid(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= QueueName::MAX_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'/'))
}

/// The task whose own queue `name` is (`task/<taskId>` gives `taskId`); `None` for a
/// custom queue.
pub fn task_of(name: &str) -> Option<&str> {
    name.strip_prefix(TASK_PREFIX)
}

/// Whether `name` is a task's own queue (`task/<taskId>`).
pub fn is_task_queue(name: &str) -> bool {
    task_of(name).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_task_queue_names_its_task_and_a_custom_one_none() {
        let q = QueueName::for_task("my-task");
        assert_eq!(q.as_str(), "task/my-task");
        assert_eq!(q.task_of(), Some("my-task"));
        assert!(q.is_task_queue());
        assert_eq!(task_of("emails"), None);
        assert!(!is_task_queue("emails"));
        assert_eq!(String::from("task/my-task"), q);
    }

    #[test]
    fn names_parse_only_within_the_alphabet_and_length() {
        for ok in ["task/my-task", "emails", "a_b-c/d", &"x".repeat(128)] {
            assert!(QueueName::parse(ok).is_some(), "{ok}");
        }
        for bad in ["", "has space", "é", &"x".repeat(129)] {
            assert!(QueueName::parse(bad).is_none(), "{bad}");
        }
    }
}
