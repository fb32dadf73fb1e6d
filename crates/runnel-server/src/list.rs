//! `GET /api/v1/runs`: the caller's environment's runs, newest first, filtered and
//! keyset-paginated (contract §2.4). The query string is validated in `runnel-core`
//! ([`RunListRequest::parse`]); a bad one is a 400 `Query Error` listing every problem.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::Json;
use runnel_core::list::{ListRunsResponse, QueryIssue, RunListRequest};

use crate::auth::Authenticated;
use crate::error::ApiError;
use crate::extract::CallerApiVersion;
use crate::state::AppState;

pub async fn list(
    State(state): State<AppState>,
    Authenticated(environment): Authenticated,
    CallerApiVersion(version): CallerApiVersion,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Json<ListRunsResponse>, ApiError> {
    let Query(pairs) = query.map_err(|rejection| {
        ApiError::Query(vec![QueryIssue {
            code: "custom",
            message: rejection.body_text(),
            path: vec![],
        }])
    })?;
    let request = RunListRequest::parse(&pairs).map_err(ApiError::Query)?;
    let page = state.engine.run_list(&environment, &request).await?;
    Ok(Json(ListRunsResponse::new(&page, &environment, version)))
}
