//! Runnel's HTTP face: the Trigger.dev-compatible management API and the worker
//! protocol.
//!
//! Requests are translated to engine calls here and nowhere else; errors become HTTP in
//! exactly one place ([`error::ApiError`]). Every `/api/*` route is authenticated with a
//! secret key that scopes it to one environment ([`auth`]).

use std::future::Future;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::Router;
use runnel_engine::Engine;
use tokio::net::TcpListener;

pub mod auth;
pub mod error;
pub mod openapi;
mod runs;
mod workers;

// [list]

// [actions]

// [batches]

// [queues]
mod queues;

// [auth]

pub use error::ApiError;

/// Largest request body accepted (contract §5: 3 MiB).
pub const MAX_BODY_BYTES: usize = 3 * 1024 * 1024;

/// What every handler shares.
#[derive(Debug, Clone)]
pub struct AppState {
    pub engine: Engine,
}

/// The whole HTTP application.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(runs::healthz))
        .route("/api/openapi.json", get(openapi::serve))
        .route(
            "/api/v1/tasks/{task_identifier}/trigger",
            post(runs::trigger),
        )
        .route("/api/v3/runs/{run_id}", get(runs::retrieve))
        .route("/api/v2/runs/{run_id}/cancel", post(runs::cancel))
        .route("/api/v1/workers/register", post(workers::register))
        .route(
            "/api/v1/workers/{worker_id}/dequeue",
            post(workers::dequeue),
        )
        .route("/api/v1/workers/{worker_id}/start", post(workers::start))
        .route(
            "/api/v1/workers/{worker_id}/heartbeat",
            post(workers::heartbeat),
        )
        .route(
            "/api/v1/workers/{worker_id}/complete",
            post(workers::complete),
        )
        // [list]
        // [actions]
        // [batches]
        // [queues]
        .route("/api/v1/queues", get(queues::list))
        .route("/api/v1/queues/{queue_param}", get(queues::retrieve))
        .route("/api/v1/queues/{queue_param}/pause", post(queues::pause))
        .route(
            "/api/v1/queues/{queue_param}/concurrency/override",
            post(queues::concurrency_override),
        )
        .route(
            "/api/v1/queues/{queue_param}/concurrency/reset",
            post(queues::concurrency_reset),
        )
        // [auth]
        .fallback(|| async { ApiError::NotFound })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

/// Serves until `shutdown` resolves, then stops accepting and lets in-flight requests
/// finish before returning.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}
