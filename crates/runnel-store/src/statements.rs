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
    ($db:ty, dialect = $dialect:expr, collate_bytes = $collate:literal) => {
        use chrono::{DateTime, Utc};
        use runnel_core::batch::{BatchItemRecord, BatchRecord};

        use runnel_core::list::RunListQuery;
        use runnel_core::run::{Packet, Run};

        use runnel_core::{BatchId, EnvironmentId, RunId, RunStatus};

        use crate::batches::{batch_from_row, batch_item_from_row, BATCH_COLUMNS, BATCH_ITEM_COLUMNS};
        use crate::queues::{queue_from_row, ref_column, QUEUE_COLUMNS};
        use crate::rows::{
            self, ms, opt_time, run_from_row, RUN_COLUMNS,
        };
        use crate::{Deadline, QueueChange, QueueRecord, QueueRef, Result};

        type Pool = sqlx::Pool<$db>;

        pub(crate) async fn run_get(
            db: impl sqlx::Executor<'_, Database = $db>,
            environment: &EnvironmentId,
            id: &RunId,
        ) -> Result<Option<Run>> {
            let sql = format!("SELECT {RUN_COLUMNS} FROM runs WHERE id = $1 AND environment_id = $2");
            let row = sqlx::query(&sql)
                .bind(id.as_str())
                .bind(environment.as_str())
                .fetch_optional(db)
                .await?;
            row.as_ref().map(run_from_row).transpose()
        }

        /// The direct children of `parent`, oldest first (ties by id).
        /// Held runs whose lease ran out by `leases_expired_by` (none when `None`: a NULL
        /// matches no lease, only deadlines are looked at) or whose `maxDuration` deadline
        /// passed by `timed_out_by`; at most `limit`.
        pub(crate) async fn run_leases_due(
            db: impl sqlx::Executor<'_, Database = $db>,
            leases_expired_by: Option<DateTime<Utc>>,
            timed_out_by: DateTime<Utc>,
            limit: u32,
        ) -> Result<Vec<Run>> {
            let sql = format!(
                "SELECT {RUN_COLUMNS} FROM runs WHERE id IN ( \
                   SELECT id FROM runs WHERE status IN ('DEQUEUED', 'EXECUTING') AND lease_expires_at <= $1 \
                   UNION \
                   SELECT id FROM runs WHERE status = 'EXECUTING' AND timeout_at IS NOT NULL AND timeout_at <= $2) \
                 LIMIT $3"
            );
            let rows = sqlx::query(&sql)
                .bind(leases_expired_by.map(ms))
                .bind(ms(timed_out_by))
                .bind(i64::from(limit))
                .fetch_all(db)
                .await?;
            rows.iter().map(run_from_row).collect()
        }

        pub(crate) async fn run_children(
            db: impl sqlx::Executor<'_, Database = $db>,
            parent: &RunId,
        ) -> Result<Vec<Run>> {
            let sql = format!(
                "SELECT {RUN_COLUMNS} FROM runs WHERE parent_run_id = $1 ORDER BY created_at, id{}",
                $collate
            );
            let rows = sqlx::query(&sql)
                .bind(parent.as_str())
                .fetch_all(db)
                .await?;
            rows.iter().map(run_from_row).collect()
        }

        /// Moves `id` from `from` to `to` if it is still in `from`: one conditional
        /// `UPDATE`, so of two racing actors exactly one wins.
        pub(crate) async fn run_transition(
            db: impl sqlx::Executor<'_, Database = $db>,
            id: &RunId,
            from: RunStatus,
            to: RunStatus,
            now: DateTime<Utc>,
        ) -> Result<bool> {
            if !from.can_move_to(to) {
                return Ok(false);
            }
            let completed_at = to.is_final().then_some(ms(now));
            let done = sqlx::query(
                "UPDATE runs SET status = $1, updated_at = $2, completed_at = COALESCE($3, completed_at) \
                 WHERE id = $4 AND status = $5",
            )
            .bind(to.as_str())
            .bind(ms(now))
            .bind(completed_at)
            .bind(id.as_str())
            .bind(from.as_str())
            .execute(db)
            .await?;
            Ok(done.rows_affected() == 1)
        }

        /// The earliest instant at which a periodic service has something to do; lease
        /// ends count only `with_leases`.
        pub(crate) async fn run_next_due_at(
            db: impl sqlx::Executor<'_, Database = $db>,
            with_leases: bool,
        ) -> Result<Option<DateTime<Utc>>> {
            let next: Option<i64> = sqlx::query_scalar(
                "SELECT min(t) FROM ( \
                   SELECT min(expire_at) AS t FROM runs \
                   WHERE status IN ('QUEUED', 'PENDING_VERSION') AND expire_at IS NOT NULL \
                   UNION ALL \
                   SELECT min(delay_until) AS t FROM runs WHERE status = 'DELAYED' \
                   UNION ALL \
                   SELECT min(next_attempt_at) AS t FROM runs WHERE status = 'RETRYING_AFTER_FAILURE' \
                   UNION ALL \
                   SELECT min(lease_expires_at) AS t FROM runs WHERE $1 AND status IN ('DEQUEUED', 'EXECUTING') \
                   UNION ALL \
                   SELECT min(timeout_at) AS t FROM runs WHERE status = 'EXECUTING' AND timeout_at IS NOT NULL \
                 ) AS due",
            )
            .bind(with_leases)
            .fetch_one(db)
            .await?;
            opt_time(next)
        }

        /// The earliest deadline of `kind`: each kind is the `min` of one column over the
        /// runs in the status that waits for it.
        pub(crate) async fn run_next_deadline(
            db: impl sqlx::Executor<'_, Database = $db>,
            kind: Deadline,
        ) -> Result<Option<DateTime<Utc>>> {
            let sql = match kind {
                Deadline::DelayEnd => "SELECT min(delay_until) FROM runs WHERE status = 'DELAYED'",
                Deadline::Ttl => {
                    "SELECT min(expire_at) FROM runs \
                     WHERE status IN ('QUEUED', 'PENDING_VERSION') AND expire_at IS NOT NULL"
                }
                Deadline::NextAttempt => {
                    "SELECT min(next_attempt_at) FROM runs WHERE status = 'RETRYING_AFTER_FAILURE'"
                }
                Deadline::LeaseEnd => {
                    "SELECT min(lease_expires_at) FROM runs WHERE status IN ('DEQUEUED', 'EXECUTING')"
                }
                Deadline::MaxDuration => {
                    "SELECT min(timeout_at) FROM runs WHERE status = 'EXECUTING' AND timeout_at IS NOT NULL"
                }
            };
            let next: Option<i64> = sqlx::query_scalar(sql).fetch_one(db).await?;
            opt_time(next)
        }

        pub(crate) async fn run_list(
            db: impl sqlx::Executor<'_, Database = $db>,
            query: &RunListQuery,
        ) -> Result<Vec<Run>> {
            let list = crate::list::run_list_sql(query, $dialect);
            let rows = crate::list::bind_all(sqlx::query(&list.sql), &list.binds)
                .fetch_all(db)
                .await?;
            rows.iter().map(run_from_row).collect()
        }

        /// The runs below `parent` (children, their children, …) that have not ended,
        /// shallowest first.
        pub(crate) async fn run_descendants_live(
            db: impl sqlx::Executor<'_, Database = $db>,
            environment: &EnvironmentId,
            parent: &RunId,
        ) -> Result<Vec<RunId>> {
            // UNION (not UNION ALL) also ends the walk should parent links ever form a cycle.
            let sql = format!(
                "WITH RECURSIVE tree(id) AS ( \
                   SELECT id FROM runs WHERE parent_run_id = $1 AND environment_id = $2 \
                   UNION \
                   SELECT r.id FROM runs r JOIN tree t ON r.parent_run_id = t.id) \
                 SELECT runs.id FROM runs JOIN tree ON runs.id = tree.id \
                 WHERE runs.environment_id = $2 AND runs.status NOT IN ({}) \
                 ORDER BY runs.depth, runs.created_at, runs.id{}",
                rows::final_statuses_sql(),
                $collate
            );
            let ids: Vec<String> = sqlx::query_scalar(&sql)
                .bind(parent.as_str())
                .bind(environment.as_str())
                .fetch_all(db)
                .await?;
            Ok(ids.into_iter().map(RunId::from_trusted).collect())
        }

        /// Moves a DELAYED run's `delayUntil` (and what follows from it); false when the
        /// run is not DELAYED (any more).
        pub(crate) async fn run_reschedule(
            db: impl sqlx::Executor<'_, Database = $db>,
            environment: &EnvironmentId,
            id: &RunId,
            delay_until: DateTime<Utc>,
            expire_at: Option<DateTime<Utc>>,
            queue_ts: i64,
            now: DateTime<Utc>,
        ) -> Result<bool> {
            let done = sqlx::query(
                "UPDATE runs SET delay_until = $1, expire_at = $2, queue_ts = $3, updated_at = $4 \
                 WHERE id = $5 AND environment_id = $6 AND status = 'DELAYED'",
            )
            .bind(ms(delay_until))
            .bind(expire_at.map(ms))
            .bind(queue_ts)
            .bind(ms(now))
            .bind(id.as_str())
            .bind(environment.as_str())
            .execute(db)
            .await?;
            Ok(done.rows_affected() == 1)
        }

        /// Compare-and-swap of a run's tags: false when they are no longer `expected`.
        pub(crate) async fn run_tags_replace(
            db: impl sqlx::Executor<'_, Database = $db>,
            environment: &EnvironmentId,
            id: &RunId,
            expected: &[String],
            tags: &[String],
            now: DateTime<Utc>,
        ) -> Result<bool> {
            let text = |t: &[String]| serde_json::to_string(t).expect("a list of strings serializes");
            let done = sqlx::query(
                "UPDATE runs SET tags = $1, updated_at = $2 \
                 WHERE id = $3 AND environment_id = $4 AND tags = $5",
            )
            .bind(text(tags))
            .bind(ms(now))
            .bind(id.as_str())
            .bind(environment.as_str())
            .bind(text(expected))
            .execute(db)
            .await?;
            Ok(done.rows_affected() == 1)
        }

        /// Compare-and-swap of a run's metadata: false when it is no longer `expected`.
        pub(crate) async fn run_metadata_replace(
            db: impl sqlx::Executor<'_, Database = $db>,
            environment: &EnvironmentId,
            id: &RunId,
            expected: Option<&Packet>,
            metadata: &Packet,
            now: DateTime<Utc>,
        ) -> Result<bool> {
            let done = sqlx::query(
                "UPDATE runs SET metadata = $1, metadata_type = $2, updated_at = $3 \
                 WHERE id = $4 AND environment_id = $5 \
                 AND metadata IS NOT DISTINCT FROM $6 AND metadata_type IS NOT DISTINCT FROM $7",
            )
            .bind(metadata.data.as_deref())
            .bind(metadata.data_type.as_str())
            .bind(ms(now))
            .bind(id.as_str())
            .bind(environment.as_str())
            .bind(expected.and_then(|m| m.data.as_deref()))
            .bind(expected.map(|m| m.data_type.as_str()))
            .execute(db)
            .await?;
            Ok(done.rows_affected() == 1)
        }

        /// Releases the key from every run of `task` holding it (the user's own key too, so
        /// retrieve no longer shows a key the run does not hold); how many were released.
        pub(crate) async fn idempotency_key_reset(
            db: impl sqlx::Executor<'_, Database = $db>,
            environment: &EnvironmentId,
            task: &str,
            key: &str,
            now: DateTime<Utc>,
        ) -> Result<u64> {
            let done = sqlx::query(
                "UPDATE runs SET idempotency_key = NULL, idempotency_key_user = NULL, idempotency_key_expires_at = NULL, updated_at = $1 \
                 WHERE environment_id = $2 AND task_identifier = $3 AND idempotency_key = $4",
            )
            .bind(ms(now))
            .bind(environment.as_str())
            .bind(task)
            .bind(key)
            .execute(db)
            .await?;
            Ok(done.rows_affected())
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
    statements!(
        sqlx::Sqlite,
        dialect = crate::list::Dialect::Sqlite,
        collate_bytes = ""
    );
}

/// For [`crate::postgres::PgStore`].
pub(crate) mod postgres {
    statements!(
        sqlx::Postgres,
        dialect = crate::list::Dialect::Postgres,
        collate_bytes = " COLLATE \"C\""
    );
}
