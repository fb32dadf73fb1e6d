//! The ceiling on batch item uploads in progress at once, per environment: each holds a
//! chunk of items in memory (`batches.rs`), so the ceiling bounds what one environment's
//! uploads hold together; past it an upload is refused with a 429.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use runnel_core::id::EnvironmentId;

use crate::error::ApiError;

/// Items requests of one environment in progress at once.
pub const BATCH_UPLOADS_PER_ENVIRONMENT_DEFAULT: usize = 16;

/// Items requests in progress per environment, under a ceiling: each holds a chunk of
/// items in memory, so the ceiling bounds what one environment's uploads can hold.
#[derive(Debug, Clone)]
pub struct BatchUploads {
    per_environment: usize,
    active: Arc<Mutex<HashMap<EnvironmentId, usize>>>,
}

impl BatchUploads {
    pub fn new(per_environment: usize) -> BatchUploads {
        BatchUploads {
            per_environment: per_environment.max(1),
            active: Arc::default(),
        }
    }

    /// A place for one more upload of `environment`, or a 429 naming the ceiling.
    pub(crate) fn start(&self, environment: &EnvironmentId) -> Result<BatchUpload, ApiError> {
        let mut active = self.active.lock().expect("batch uploads lock");
        let count = active.entry(environment.clone()).or_insert(0);
        if *count >= self.per_environment {
            return Err(ApiError::TooManyRequests(format!(
                "Too many batch item uploads in progress for this environment (limit {})",
                self.per_environment
            )));
        }
        *count += 1;
        Ok(BatchUpload {
            uploads: self.clone(),
            environment: environment.clone(),
        })
    }
}

impl Default for BatchUploads {
    fn default() -> Self {
        BatchUploads::new(BATCH_UPLOADS_PER_ENVIRONMENT_DEFAULT)
    }
}

/// One upload's place in [`BatchUploads`], given back when the request ends.
#[derive(Debug)]
pub(crate) struct BatchUpload {
    uploads: BatchUploads,
    environment: EnvironmentId,
}

impl Drop for BatchUpload {
    fn drop(&mut self) {
        let mut active = self.uploads.active.lock().expect("batch uploads lock");
        if let Some(count) = active.get_mut(&self.environment) {
            *count -= 1;
            if *count == 0 {
                active.remove(&self.environment);
            }
        }
    }
}
