//! What every handler shares ([`AppState`]), and the body limit every route starts from.

use runnel_engine::Engine;

use crate::devboot::DevState;
use crate::rate_limit::RateLimiter;
use crate::uploads::BatchUploads;

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
}
