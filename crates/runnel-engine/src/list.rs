//! Listing runs: resolves a validated [`RunListRequest`] against the clock (the default
//! 7-day window, `period`) and the store (a legacy bare-run-id cursor), fetches one slice
//! of `page_size + 1` runs and makes it a [`RunPage`].

use runnel_core::list::{Cursor, PageCursor, QueryIssue, RunListQuery, RunListRequest, RunPage};
use runnel_core::tenancy::Environment;

use crate::Engine;

/// Why a list failed.
#[derive(Debug, thiserror::Error)]
pub enum ListError {
    /// The query named something that cannot be resolved (a cursor run that does not
    /// exist in the environment).
    #[error("invalid query")]
    Query(Vec<QueryIssue>),
    #[error(transparent)]
    Store(#[from] runnel_store::Error),
}

impl Engine {
    /// One page of `environment`'s runs, newest first.
    pub async fn run_list(
        &self,
        environment: &Environment,
        request: &RunListRequest,
    ) -> Result<RunPage, ListError> {
        let (created_from, created_to) = request.created.resolve(self.clock.now());
        let page = match &request.page {
            None => None,
            Some((direction, PageCursor::Keyset(cursor))) => Some((*direction, cursor.clone())),
            Some((direction, PageCursor::Run(id))) => {
                let run = self
                    .store
                    .run_get(&environment.id, id)
                    .await?
                    .ok_or_else(|| {
                        let key = match direction {
                            runnel_core::list::Direction::Older => "page[after]",
                            runnel_core::list::Direction::Newer => "page[before]",
                        };
                        ListError::Query(vec![QueryIssue::new("custom", key, "Invalid cursor")])
                    })?;
                Some((*direction, Cursor::of(&run)))
            }
        };
        let direction = page.as_ref().map(|(d, _)| *d);
        let query = RunListQuery {
            environment_id: environment.id.clone(),
            filter: request.filter.clone(),
            created_from,
            created_to,
            page,
            limit: request.page_size + 1,
        };
        let rows = self.store.run_list(&query).await?;
        Ok(RunPage::from_slice(rows, request.page_size, direction))
    }
}
