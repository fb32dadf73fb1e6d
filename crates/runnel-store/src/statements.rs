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
        use chrono::{DateTime, Utc};
        use runnel_core::batch::{BatchItemRecord, BatchRecord};

        use runnel_core::run::Attempt;

        use runnel_core::{BatchId, EnvironmentId, RunId};

        use crate::batches::{batch_from_row, batch_item_from_row, BATCH_COLUMNS, BATCH_ITEM_COLUMNS};
        use crate::queues::{queue_from_row, ref_column, QUEUE_COLUMNS};
        use crate::rows::{attempt_from_row, ms, ATTEMPT_COLUMNS};
        use crate::{QueueChange, QueueRecord, QueueRef, Result};

        type Pool = sqlx::Pool<$db>;

        pub(crate) async fn attempt_list(
            db: impl sqlx::Executor<'_, Database = $db>,
            run: &RunId,
        ) -> Result<Vec<Attempt>> {
            let sql = format!("SELECT {ATTEMPT_COLUMNS} FROM attempts WHERE run_id = $1 ORDER BY number");
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

        pub(crate) async fn batch_get(
            db: impl sqlx::Executor<'_, Database = $db>,
            environment: &EnvironmentId,
            id: &BatchId,
        ) -> Result<Option<BatchRecord>> {
            let sql = format!("SELECT {BATCH_COLUMNS} FROM batches WHERE id = $1 AND environment_id = $2");
            let row = sqlx::query(&sql)
                .bind(id.as_str())
                .bind(environment.as_str())
                .fetch_optional(db)
                .await?;
            row.as_ref().map(batch_from_row).transpose()
        }

        pub(crate) async fn batch_item_list(
            db: impl sqlx::Executor<'_, Database = $db>,
            id: &BatchId,
        ) -> Result<Vec<BatchItemRecord>> {
            let sql = format!(
                "SELECT {BATCH_ITEM_COLUMNS} FROM batch_items WHERE batch_id = $1 ORDER BY item_index"
            );
            let rows = sqlx::query(&sql).bind(id.as_str()).fetch_all(db).await?;
            rows.iter().map(batch_item_from_row).collect()
        }

        /// One page of the environment's queues by name, and how many there are.
        pub(crate) async fn queue_list(
            pool: &Pool,
            environment: &EnvironmentId,
            offset: u64,
            limit: u32,
        ) -> Result<(Vec<QueueRecord>, u64)> {
            let total: i64 = sqlx::query_scalar("SELECT count(*) FROM queues WHERE environment_id = $1")
                .bind(environment.as_str())
                .fetch_one(pool)
                .await?;
            let sql = format!(
                "SELECT {QUEUE_COLUMNS} FROM queues q WHERE q.environment_id = $1 \
                 ORDER BY q.name{} LIMIT $2 OFFSET $3",
                $collate
            );
            let rows = sqlx::query(&sql)
                .bind(environment.as_str())
                .bind(i64::from(limit))
                .bind(i64::try_from(offset).unwrap_or(i64::MAX))
                .fetch_all(pool)
                .await?;
            let queues = rows.iter().map(queue_from_row).collect::<Result<_>>()?;
            Ok((queues, u64::try_from(total).unwrap_or(0)))
        }

        pub(crate) async fn queue_get(
            db: impl sqlx::Executor<'_, Database = $db>,
            environment: &EnvironmentId,
            queue: &QueueRef,
        ) -> Result<Option<QueueRecord>> {
            let (column, value) = ref_column(queue);
            let sql = format!(
                "SELECT {QUEUE_COLUMNS} FROM queues q WHERE q.environment_id = $1 AND {column} = $2"
            );
            let row = sqlx::query(&sql)
                .bind(environment.as_str())
                .bind(value)
                .fetch_optional(db)
                .await?;
            row.as_ref().map(queue_from_row).transpose()
        }

        /// Pauses, resumes or overrides a queue; the queue as it is now, or `None` when
        /// the environment has no such queue.
        pub(crate) async fn queue_update(
            pool: &Pool,
            environment: &EnvironmentId,
            queue: &QueueRef,
            change: QueueChange,
            now: DateTime<Utc>,
        ) -> Result<Option<QueueRecord>> {
            let set = match change {
                QueueChange::Pause => "paused = TRUE",
                QueueChange::Resume => "paused = FALSE",
                QueueChange::Override(_) => "concurrency_limit_override = $4, overridden_at = $1",
                QueueChange::ResetOverride => {
                    "concurrency_limit_override = NULL, overridden_at = NULL"
                }
            };
            let (column, value) = ref_column(queue);
            let column = column.trim_start_matches("q.");
            let sql = format!(
                "UPDATE queues SET {set}, updated_at = $1 \
                 WHERE environment_id = $2 AND {column} = $3 RETURNING id"
            );
            // $4 is bound only when the statement has it: PostgreSQL refuses a value
            // for a parameter the text never mentions.
            let mut query = sqlx::query_scalar::<_, String>(&sql)
                .bind(ms(now))
                .bind(environment.as_str())
                .bind(value);
            if let QueueChange::Override(limit) = change {
                query = query.bind(i64::from(limit));
            }
            match query.fetch_optional(pool).await? {
                Some(id) => queue_get(pool, environment, &QueueRef::Id(id)).await,
                None => Ok(None),
            }
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
