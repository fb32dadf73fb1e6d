//! A run's log lines and spans: what the OTLP ingest stores, and what the events, trace
//! and `runnel runs logs` reads see. The store does the work (`runnel_store::events`:
//! attribution to existing runs, the per-run cap, partial spans); this module gives it
//! the time and scopes reads to an environment.

use runnel_core::tenancy::Environment;
use runnel_core::RunId;
/// The event records the API speaks in, as the store keeps them.
pub use runnel_store::{
    EventCursor, EventKind, NewRunEvent, RunEvent, RunEventQuery, RUN_EVENTS_MAX_PER_RUN,
};

use crate::{Engine, Error};

impl Engine {
    /// Stores what one export request reported (the events of runs that exist; see
    /// `runnel_store::events`). Returns how many rows were written.
    pub async fn run_events_ingest(&self, events: &[NewRunEvent]) -> Result<u64, Error> {
        Ok(self
            .store
            .run_event_insert(events, self.clock.now())
            .await?)
    }

    /// The events of a run of `environment` matching `query`, in time order; empty when
    /// the run is missing or of another environment.
    pub async fn run_events(
        &self,
        environment: &Environment,
        run: &RunId,
        query: &RunEventQuery,
    ) -> Result<Vec<RunEvent>, Error> {
        Ok(self
            .store
            .run_event_list(&environment.id, run, query)
            .await?)
    }
}
