//! What a node needs of its database besides data ([`NodeStore`]): the health check,
//! written once, and the signals between nodes and closing, which are the backend's own.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::backend::Backend;
use crate::detach::detached;
use crate::rows::ms;
use crate::sql::Params;
use crate::{NodeStore, Result, Signal, SignalListener};

#[async_trait]
impl<B: Backend> NodeStore for B {
    async fn health(&self, now: DateTime<Utc>) -> Result<()> {
        let mut conn = self.reader().await?;
        Params::<B::D>::new().execute(&mut conn, "SELECT 1").await?;
        drop(conn);
        // Through the path every write takes: on SQLite the one writer connection, so a
        // connection a failed COMMIT left wedged, a full disk or a read-only file fail it.
        let store = self.clone();
        detached(async move {
            let mut tx = store.begin().await?;
            Params::<B::D>::new()
                .with(ms(now))
                .execute(
                    &mut tx,
                    "INSERT INTO health (id, checked_at) VALUES (1, $1) \
                     ON CONFLICT (id) DO UPDATE SET checked_at = excluded.checked_at",
                )
                .await?;
            tx.commit().await?;
            Ok(())
        })
        .await
    }

    async fn signal_publish(&self, signals: &[Signal], origin: &str) -> Result<()> {
        self.publish(signals, origin).await
    }

    async fn run_changes_publish(
        &self,
        runs: &[runnel_core::RunId],
        missed: bool,
        origin: &str,
    ) -> Result<()> {
        self.publish_changes(runs, missed, origin).await
    }

    async fn signal_listen(&self) -> Result<Option<Box<dyn SignalListener>>> {
        self.listen().await
    }

    async fn close(&self) {
        self.close_pools().await;
    }
}
