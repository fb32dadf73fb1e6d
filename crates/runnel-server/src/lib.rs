//! Runnel's HTTP face: the Trigger.dev-compatible management API and the worker
//! protocol.
//!
//! Requests are translated to engine calls here and nowhere else; errors become HTTP in
//! exactly one place ([`error::ApiError`]). Every `/api/*` route is authenticated with a
//! secret key that scopes it to one environment ([`auth`]); the few that also take a
//! public access token check its scopes ([`auth::authorize`], over [`jwt`]). A guard in front of all routes answers
//! a missing `Authorization` header and applies the opt-in rate limit ([`guard`], [`rate_limit`]).
//! The `trigger.dev dev` CLI's bootstrap ([`devboot`]) starts from a personal access token.
//! The dashboard (`dashboard`: HTML pages under `/dashboard`, signed in with a secret key)
//! is served by the same router, outside the `/api` guard.

use std::future::Future;

use axum::extract::DefaultBodyLimit;
use axum::middleware;
use axum::routing::{get, post, put};
use axum::Router;
use tokio::net::TcpListener;

pub mod auth;
pub mod connections;
mod dev;
mod envvars;
pub mod error;
mod extract;
pub mod openapi;
mod runs;
mod schedules;
pub mod schemas;
mod state;
mod workers;

// [list]
mod list;

// [actions]
mod actions;

// [batches]
pub mod batches;

// [queues]
mod queues;

// [dashboard]
mod dashboard;

// [devboot]
pub mod devboot;
// [events]
mod events;
mod otel;
mod packets;

// [auth]
mod guard;
pub mod jwt;
pub mod rate_limit;
mod tokens;
mod uploads;

// [waitpoints]
mod waitpoints;

// [realtime]
pub mod realtime;

pub use error::ApiError;
pub use state::{AppState, MAX_BODY_BYTES};

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
        .route("/api/v1/runs", get(list::list))
        // [actions]
        .route("/api/v1/runs/{run_id}/replay", post(actions::replay))
        .route(
            "/api/v1/runs/{run_id}/reschedule",
            post(actions::reschedule),
        )
        .route("/api/v1/runs/{run_id}/tags", post(actions::tags_add))
        .route(
            "/api/v1/runs/{run_id}/metadata",
            put(actions::metadata_update).get(actions::metadata_get),
        )
        .route("/api/v1/runs/{run_id}/result", get(actions::result))
        .route(
            "/api/v1/idempotencyKeys/{key}/reset",
            post(actions::idempotency_key_reset),
        )
        // [batches]
        .route(
            "/api/v3/batches",
            post(batches::create).layer(DefaultBodyLimit::max(
                runnel_core::batch::MAX_CREATE_BODY_BYTES,
            )),
        )
        // Reads its body as a stream and counts it against its own limit.
        .route("/api/v3/batches/{batch_id}/items", post(batches::items))
        .route(
            "/api/v1/tasks/batch",
            post(batches::one_shot).layer(DefaultBodyLimit::max(batches::MAX_ONE_SHOT_BODY_BYTES)),
        )
        .route("/api/v1/batches/{batch_id}", get(batches::retrieve_v1))
        .route("/api/v2/batches/{batch_id}", get(batches::retrieve_v2))
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
        // [events]
        .route("/api/v1/runs/{run_id}/events", get(events::list))
        .route("/api/v1/runs/{run_id}/trace", get(events::trace))
        // No Authorization header comes with these (the guard covers only `/api`).
        .route("/otel/v1/traces", post(otel::traces))
        .route("/otel/v1/logs", post(otel::logs))
        .route("/otel/v1/metrics", post(otel::metrics))
        // [auth]
        .route("/api/v1/auth/jwt/claims", post(tokens::claims))
        .route("/api/v1/auth/jwt", post(tokens::create))
        // [dev] The trigger.dev CLI's run protocol.
        .route(
            "/api/v1/projects/{project_ref}/background-workers",
            post(dev::register),
        )
        .route("/engine/v1/dev/dequeue", post(dev::dequeue))
        .route(
            "/engine/v1/dev/runs/{run_id}/snapshots/{snapshot_id}/attempts/start",
            post(dev::start),
        )
        .route(
            "/engine/v1/dev/runs/{run_id}/snapshots/{snapshot_id}/attempts/complete",
            post(dev::complete),
        )
        .route(
            "/engine/v1/dev/runs/{run_id}/snapshots/{snapshot_id}/heartbeat",
            post(dev::heartbeat),
        )
        .route(
            "/engine/v1/dev/runs/{run_id}/snapshots/latest",
            get(dev::latest),
        )
        // Any environment's key: a Runnel worker's waiting task polls it.
        .route(
            "/engine/v1/runs/{run_id}/snapshots/latest",
            get(dev::run_latest),
        )
        .route(
            "/engine/v1/dev/runs/{run_id}/logs/debug",
            post(dev::debug_log),
        )
        .route("/engine/v1/dev/disconnect", post(dev::disconnect))
        // [dashboard] `/` and `/dashboard/*`: HTML pages, outside the `/api` guard.
        .merge(dashboard::routes())
        // [devboot]
        .merge(devboot::routes())
        .merge(realtime::routes())
        // [envvars]
        .merge(envvars::routes())
        // [schedules]
        .route(
            "/api/v1/schedules",
            post(schedules::create).get(schedules::list),
        )
        .route(
            "/api/v1/schedules/{schedule_id}",
            get(schedules::retrieve)
                .put(schedules::update)
                .delete(schedules::delete),
        )
        .route(
            "/api/v1/schedules/{schedule_id}/activate",
            post(schedules::activate),
        )
        .route(
            "/api/v1/schedules/{schedule_id}/deactivate",
            post(schedules::deactivate),
        )
        .route("/api/v1/timezones", get(schedules::timezones))
        // [waitpoints]
        .route(
            "/api/v1/waitpoints/tokens",
            post(waitpoints::create)
                .layer(DefaultBodyLimit::max(waitpoints::MAX_CREATE_BODY_BYTES))
                .get(waitpoints::list),
        )
        .route("/api/v1/waitpoints/tokens/{id}", get(waitpoints::retrieve))
        .route(
            "/api/v1/waitpoints/tokens/{id}/complete",
            post(waitpoints::complete),
        )
        .route(
            "/api/v1/waitpoints/tokens/{id}/callback/{secret}",
            post(waitpoints::callback),
        )
        .route(
            "/engine/v1/runs/{run_id}/wait/duration",
            post(waitpoints::wait_duration),
        )
        .route(
            "/engine/v1/runs/{run_id}/waitpoints/tokens/{waitpoint_id}/wait",
            post(waitpoints::wait_token),
        )
        .route("/api/v2/packets/{*path}", put(packets::upload_v2))
        .route(
            "/api/v1/packets/{*path}",
            put(packets::upload_v1).get(packets::download),
        )
        .route(
            "/api/v1/runs/{run_id}/packets/{field}",
            get(packets::run_packet),
        )
        .route(
            "/blobs/{*key}",
            get(packets::blob_get).put(packets::blob_put),
        )
        .fallback(|| async { ApiError::NotFound })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::from_fn_with_state(state.clone(), guard::guard))
        .with_state(state)
}

/// Serves until `shutdown` resolves, then stops accepting and lets in-flight requests
/// finish before returning; every connection is served under `limits`
/// ([`connections`]).
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    limits: connections::ConnectionLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    connections::serve(listener, router(state), limits, shutdown).await
}
