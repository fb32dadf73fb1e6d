//! The statements both backends run the same way, written once.
//!
//! An operation belongs here when its SQL and row mapping do not depend on how the
//! backend keeps concurrent writers apart: plain reads, and single-statement conditional
//! writes (`UPDATE … WHERE <expected state>`), which are atomic on both engines. What
//! locks, retries or sweeps (triggers, dequeue, settlement, the expirer and promoter,
//! registration, bootstrap, batches) stays in `sqlite.rs` and `postgres.rs`, where each
//! backend's way of serializing writers is spelled out.
//!
//! [`statements!`] expands the same functions once per driver, as the modules
//! [`sqlite`] and [`postgres`]; each takes the pool or executor to run on (the SQLite
//! backend passes its reader pool for reads and its writer for writes). Placeholders are
//! `$n`, which sqlx's SQLite driver binds to the n-th value as PostgreSQL does, so one
//! text serves both. (SQLite looks a named or numbered placeholder up by a linear search,
//! harmless for the handful each of these statements has; long value lists, as in
//! `batches.rs`, keep bare `?`s there.) The one dialect difference left is spelled by the
//! expansion:
//!
//! - `collate_bytes`: the collation that orders text by bytes, as Rust and SQLite do by
//!   default; on PostgreSQL the database's locale would order ids and names otherwise.

macro_rules! statements {
    ($db:ty, collate_bytes = $collate:literal) => {
        use runnel_core::run::Attempt;

        use runnel_core::{EnvironmentId, RunId};

        use crate::rows::{attempt_from_row, ATTEMPT_COLUMNS};
        use crate::Result;

        pub(crate) async fn attempt_list(
            db: impl sqlx::Executor<'_, Database = $db>,
            run: &RunId,
        ) -> Result<Vec<Attempt>> {
            let sql =
                format!("SELECT {ATTEMPT_COLUMNS} FROM attempts WHERE run_id = $1 ORDER BY number");
            let rows = sqlx::query(&sql).bind(run.as_str()).fetch_all(db).await?;
            rows.iter().map(attempt_from_row).collect()
        }

        /// Whether a registered version (`version`, when given) serves `task`.
        pub(crate) async fn task_served(
            db: impl sqlx::Executor<'_, Database = $db>,
            environment: &EnvironmentId,
            task: &str,
            version: Option<&str>,
        ) -> Result<bool> {
            let served: bool = sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM worker_tasks WHERE environment_id = $1 \
                 AND task_identifier = $2 AND (CAST($3 AS TEXT) IS NULL OR version = $3))",
            )
            .bind(environment.as_str())
            .bind(task)
            .bind(version)
            .fetch_one(db)
            .await?;
            Ok(served)
        }

        /// The queue of `task` in `version`, or in the newest version that has it.
        pub(crate) async fn task_queue(
            db: impl sqlx::Executor<'_, Database = $db>,
            environment: &EnvironmentId,
            task: &str,
            version: Option<&str>,
        ) -> Result<Option<String>> {
            let queue: Option<String> = sqlx::query_scalar(concat!(
                "SELECT t.queue FROM worker_tasks t JOIN worker_versions v \
                 ON v.environment_id = t.environment_id AND v.version = t.version \
                 WHERE t.environment_id = $1 AND t.task_identifier = $2 \
                 AND (CAST($3 AS TEXT) IS NULL OR t.version = $3) \
                 ORDER BY v.created_at DESC, v.version",
                $collate,
                " DESC LIMIT 1"
            ))
            .bind(environment.as_str())
            .bind(task)
            .bind(version)
            .fetch_optional(db)
            .await?;
            Ok(queue)
        }
    };
}

/// For [`crate::sqlite::SqliteStore`].
pub(crate) mod sqlite {
    statements!(sqlx::Sqlite, collate_bytes = "");
}

/// For [`crate::postgres::PgStore`].
pub(crate) mod postgres {
    statements!(sqlx::Postgres, collate_bytes = " COLLATE \"C\"");
}
