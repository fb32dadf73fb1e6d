//! Queue operations: the queues a registration declares, and the queues API (list,
//! retrieve, pause/resume, concurrency override/reset).
//!
//! Limits and pauses are enforced by the store's dequeue (`runnel_store::queues`); this
//! module validates what comes in and wakes long-polling dequeuers whenever a change
//! may let waiting runs start (a resume, a higher override, a reset), so a resumed
//! queue starts at once instead of at the next poll.

use runnel_core::tenancy::Environment;
use runnel_core::worker::{QueueDefinition, MAX_QUEUE_CONCURRENCY};
use runnel_core::QueueName;
use runnel_store::queues::declarations;
/// The queue records and changes the queues API speaks in, as the store keeps them.
pub use runnel_store::{QueueChange, QueueKind, QueueRecord, QueueRef};
use runnel_store::{QueueDeclaration, TaskConfig};

use crate::{Engine, Error, WorkerError};

/// The longest queue name (contract §5).
pub const QUEUE_NAME_MAX: usize = QueueName::MAX_LEN;

/// What a queue change did.
#[derive(Debug, Clone, PartialEq)]
pub enum QueueUpdate {
    Updated(QueueRecord),
    NotFound,
    /// A reset of a queue whose limit is not overridden.
    NotOverridden,
}

/// Whether `name` is a queue name: 1..=128 of `[a-zA-Z0-9_\-/]`.
pub fn is_valid_queue_name(name: &str) -> bool {
    runnel_core::queue::is_valid(name)
}

impl Engine {
    /// The queue declarations of a registration: every task's queue, and the `queues`
    /// list with its limits.
    pub(crate) fn queue_declarations(
        &self,
        tasks: &[TaskConfig],
        queues: &[QueueDefinition],
    ) -> Result<Vec<QueueDeclaration>, Error> {
        let invalid = |m: String| Error::Worker(WorkerError::Invalid(m));
        for (i, task) in tasks.iter().enumerate() {
            if !is_valid_queue_name(&task.queue) {
                return Err(invalid(format!(
                    "tasks[{i}].queue: must be 1 to {QUEUE_NAME_MAX} characters of A-Z a-z 0-9 _ - /"
                )));
            }
        }
        for (i, queue) in queues.iter().enumerate() {
            if !is_valid_queue_name(&queue.name) {
                return Err(invalid(format!(
                    "queues[{i}].name: must be 1 to {QUEUE_NAME_MAX} characters of A-Z a-z 0-9 _ - /"
                )));
            }
            if queue
                .concurrency_limit
                .is_some_and(|l| l > MAX_QUEUE_CONCURRENCY)
            {
                return Err(invalid(format!(
                    "queues[{i}].concurrencyLimit: must be between 0 and {MAX_QUEUE_CONCURRENCY}"
                )));
            }
            if queues[..i].iter().any(|q| q.name == queue.name) {
                return Err(invalid(format!(
                    "queues[{i}].name: {:?} is listed twice",
                    queue.name
                )));
            }
        }
        Ok(declarations(
            tasks.iter().map(|t| t.queue.clone()),
            queues.iter().map(|q| (q.name.clone(), q.concurrency_limit)),
        ))
    }

    /// A page (1-based) of the environment's queues, with the total count.
    pub async fn queue_list(
        &self,
        environment: &Environment,
        page: u32,
        per_page: u32,
    ) -> Result<(Vec<QueueRecord>, u64), Error> {
        let offset = u64::from(page.saturating_sub(1)) * u64::from(per_page);
        Ok(self
            .store
            .queue_list(&environment.id, offset, per_page)
            .await?)
    }

    pub async fn queue_get(
        &self,
        environment: &Environment,
        queue: &QueueRef,
    ) -> Result<Option<QueueRecord>, Error> {
        Ok(self.store.queue_get(&environment.id, queue).await?)
    }

    /// Applies `change`; waiting dequeuers are woken when it may let runs start.
    pub async fn queue_update(
        &self,
        environment: &Environment,
        queue: &QueueRef,
        change: QueueChange,
    ) -> Result<QueueUpdate, Error> {
        if change == QueueChange::ResetOverride {
            match self.store.queue_get(&environment.id, queue).await? {
                None => return Ok(QueueUpdate::NotFound),
                Some(q) if q.concurrency_limit_override.is_none() => {
                    return Ok(QueueUpdate::NotOverridden)
                }
                Some(_) => {}
            }
        }
        let now = self.clock.now();
        let updated = self
            .store
            .queue_update(&environment.id, queue, change, now)
            .await?;
        let Some(updated) = updated else {
            return Ok(QueueUpdate::NotFound);
        };
        if change != QueueChange::Pause {
            self.runs_became_available();
        }
        tracing::info!(queue = %updated.name, env = %environment.kind, ?change, "queue changed");
        Ok(QueueUpdate::Updated(updated))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_names() {
        for ok in ["task/my-task", "emails", "a_b-c/d", &"x".repeat(128)] {
            assert!(is_valid_queue_name(ok), "{ok}");
        }
        for bad in ["", "has space", "emails!", &"x".repeat(129)] {
            assert!(!is_valid_queue_name(bad), "{bad}");
        }
    }
}
