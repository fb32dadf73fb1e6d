//! What every handler shares ([`AppState`]), and the body limit every route starts from.

use runnel_engine::Engine;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::rate_limit::RateLimiter;
use crate::uploads::BatchUploads;
use chrono::{DateTime, Utc};
use runnel_core::EnvironmentId;

/// Largest request body accepted (contract §5: 3 MiB).
pub const MAX_BODY_BYTES: usize = 3 * 1024 * 1024;

/// What every handler shares.
#[derive(Debug, Clone)]
pub struct AppState {
    pub engine: Engine,
    /// Per-environment API rate limit; `None` (the default) turns it off.
    pub rate_limiter: Option<RateLimiter>,
    /// Batch item uploads in progress, per environment, under their ceiling.
    pub batch_uploads: BatchUploads,
    /// The `trigger.dev dev` bootstrap's memory: CLI presence, login auto-approval.
    pub dev: DevState,
    /// The realtime subscriptions this node holds between their polls.
    pub realtime: crate::realtime::shapes::Shapes,
}

/// What the dev bootstrap keeps between requests, in memory on this node: when each
/// environment's CLI was last present, and whether `trigger login` is auto-approved.
#[derive(Debug, Clone, Default)]
pub struct DevState {
    presence: Arc<Mutex<HashMap<EnvironmentId, DateTime<Utc>>>>,
    pub(crate) login_auto_approve: bool,
}

impl DevState {
    /// `login_auto_approve`: answer the legacy `trigger login` with a new personal
    /// access token for anyone (the operator's explicit opt-in).
    pub fn new(login_auto_approve: bool) -> DevState {
        DevState {
            login_auto_approve,
            ..DevState::default()
        }
    }

    /// When a `trigger.dev dev` CLI of `environment` was last seen on this node's
    /// presence stream (it is sent an event every few seconds while connected);
    /// `None` if never since this node started.
    pub fn dev_presence_seen(&self, environment: &EnvironmentId) -> Option<DateTime<Utc>> {
        self.presence
            .lock()
            .expect("presence map poisoned")
            .get(environment)
            .copied()
    }

    pub(crate) fn presence_record(&self, environment: &EnvironmentId, now: DateTime<Utc>) {
        let mut presence = self.presence.lock().expect("presence map poisoned");
        let seen = presence.entry(environment.clone()).or_insert(now);
        *seen = (*seen).max(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presence_keeps_the_latest_time_per_environment() {
        let dev = DevState::default();
        let (a, b) = (EnvironmentId::generate(1), EnvironmentId::generate(2));
        let t = |s| DateTime::from_timestamp(s, 0).unwrap();
        assert_eq!(dev.dev_presence_seen(&a), None);
        dev.presence_record(&a, t(10));
        dev.presence_record(&a, t(14));
        // A slower node's clock, or two streams of one environment, never move it back.
        dev.presence_record(&a, t(12));
        assert_eq!(dev.dev_presence_seen(&a), Some(t(14)));
        assert_eq!(dev.dev_presence_seen(&b), None);
        // Clones share the map (every handler holds one).
        dev.clone().presence_record(&b, t(20));
        assert_eq!(dev.dev_presence_seen(&b), Some(t(20)));
    }
}
