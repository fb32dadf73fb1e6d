//! Write transactions that outlive their caller.
//!
//! A request future is dropped when its client goes away or a timeout fires. A write
//! transaction cut at that moment can leave its connection mid-transaction: on SQLite,
//! sqlx's `BEGIN` acknowledged to a caller that is already gone leaves the one writer
//! connection believing it is inside a transaction nobody owns, and every later write
//! fails ("attempted to call begin_with at non-zero transaction depth"). So a backend
//! runs each multi-statement write on a task of its own ([`detached`]): the caller may
//! stop waiting, the transaction still commits or rolls back as a whole, and the
//! connection goes back to the pool clean.
//!
//! Single statements in autocommit mode need none of this: the database applies them
//! whole or not at all, whenever their caller stops listening.

use std::future::Future;

use crate::{Error, Result};

/// Runs `work` to its end on its own task, whatever happens to the caller, and returns
/// its outcome. A panic inside `work` resumes in the caller, as if it had run inline.
pub(crate) async fn detached<T, F>(work: F) -> Result<T>
where
    T: Send + 'static,
    F: Future<Output = Result<T>> + Send + 'static,
{
    match tokio::spawn(work).await {
        Ok(outcome) => outcome,
        Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
        // Only a runtime shutting down cancels the task: the store is going away.
        Err(_) => Err(Error::Database(sqlx::Error::PoolClosed)),
    }
}
