//! What the batch store operations take and return, and the one decision both backends
//! share: which runs of a multi-row trigger are inserted and which return a run that
//! already holds their idempotency key ([`plan_trigger_many`]).
//!
//! A multi-row trigger runs in one transaction:
//!
//! ```text
//!   BEGIN
//!   (batch items only) lock the batch row; read the indexes it already has
//!   SELECT holders of the keys of the new runs          (PostgreSQL: FOR UPDATE)
//!   plan: per run, in order → insert | Cached(holder) | Cached(earlier run of this call)
//!   UPDATE runs SET idempotency_key = NULL … WHERE id IN (released holders)
//!   INSERT INTO runs (…) VALUES (…), (…), …             one statement per chunk of
//!                                                       rows that fits the backend's
//!                                                       bind-parameter limit
//!   (batch items only) INSERT INTO batch_items … VALUES (…), …; UPDATE batches (count, seal)
//!   COMMIT
//! ```
//!
//! Two runs of one call with the same (environment, task, key) behave as two triggers
//! in a row: the first is inserted (or returns the holder), the second returns the
//! first. On PostgreSQL a concurrent writer can insert a key between the holder look-up
//! and the insert; the unique index then refuses the whole statement, the transaction
//! rolls back and the call starts over, as a single trigger does.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use runnel_core::batch::BatchRecord;
use runnel_core::idempotency::{self, Decision};
use runnel_core::run::Run;
use runnel_core::{RunId, RunStatus};

use crate::TriggerOutcome;

/// One index of a batch to record, with the run its item triggers.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchItemTrigger {
    pub index: u32,
    pub task_identifier: String,
    /// The run to trigger, or why the item's trigger was refused (recorded, no run).
    pub run: Result<Run, String>,
}

/// What `batch_create` did.
#[derive(Debug, Clone, PartialEq)]
pub enum BatchCreateOutcome {
    Created(BatchRecord),
    /// A batch of the environment holds the idempotency key; nothing was created.
    Cached(BatchRecord),
}

/// What happened to one item of `batch_items_trigger`.
#[derive(Debug, Clone, PartialEq)]
pub enum BatchItemOutcome {
    /// The index was new; its run was inserted or returned under its key.
    Triggered(TriggerOutcome),
    /// The index was new; its refusal was recorded.
    Failed,
    /// The index had already arrived (earlier, or earlier in this call); nothing changed.
    Duplicate,
}

/// What `batch_items_trigger` did.
#[derive(Debug, Clone, PartialEq)]
pub enum BatchItemsOutcome {
    /// One outcome per item, in order, and the batch after the call (sealed when every
    /// index has arrived).
    Applied {
        items: Vec<BatchItemOutcome>,
        batch: BatchRecord,
    },
    /// No such batch in the environment.
    NotFound,
    /// The batch was sealed before the call; nothing changed.
    Sealed(BatchRecord),
}

/// A run that holds an idempotency key: id, status, key expiry.
pub(crate) type Holder = (String, RunStatus, Option<DateTime<Utc>>);

/// (environment, task, key): the scope of an idempotency key.
pub(crate) type KeyScope = (String, String, String);

pub(crate) fn key_scope(run: &Run) -> Option<KeyScope> {
    run.idempotency_key.as_ref().map(|key| {
        (
            run.environment_id.as_str().to_owned(),
            run.task_identifier.clone(),
            key.clone(),
        )
    })
}

/// The keyed runs grouped by (environment, task): one holder look-up per group.
pub(crate) fn keys_by_task<'r>(runs: &[&'r Run]) -> HashMap<(&'r str, &'r str), Vec<&'r str>> {
    let mut groups: HashMap<(&str, &str), Vec<&str>> = HashMap::new();
    for run in runs {
        if let Some(key) = run.idempotency_key.as_deref() {
            groups
                .entry((run.environment_id.as_str(), run.task_identifier.as_str()))
                .or_default()
                .push(key);
        }
    }
    for keys in groups.values_mut() {
        keys.sort_unstable();
        keys.dedup();
    }
    groups
}

/// What a multi-row trigger writes.
#[derive(Debug, Default)]
pub(crate) struct TriggerPlan {
    /// One per run, in order.
    pub outcomes: Vec<TriggerOutcome>,
    /// Positions of the runs to insert.
    pub insert: Vec<usize>,
    /// Holders whose key is taken off them.
    pub release: Vec<String>,
}

/// Decides, for runs in order, which are inserted: each keyed run asks
/// [`idempotency::decide`] about the key's holder in `holders`, or about the run of this
/// call that took the key first.
pub(crate) fn plan_trigger_many(
    runs: &[&Run],
    holders: &HashMap<KeyScope, Holder>,
    now: DateTime<Utc>,
) -> TriggerPlan {
    let mut plan = TriggerPlan::default();
    // Who holds each key once the earlier runs of this call are applied.
    let mut claimed: HashMap<KeyScope, RunId> = HashMap::new();
    for (position, run) in runs.iter().enumerate() {
        let Some(scope) = key_scope(run) else {
            plan.insert.push(position);
            plan.outcomes.push(TriggerOutcome::Created(run.id.clone()));
            continue;
        };
        if let Some(holder) = claimed.get(&scope) {
            // A run of this call holds the key: it is queued (or returned), never failed.
            plan.outcomes.push(TriggerOutcome::Cached(holder.clone()));
            continue;
        }
        match holders.get(&scope) {
            Some((holder_id, status, expires_at))
                if idempotency::decide(*status, *expires_at, now) == Decision::ReturnExisting =>
            {
                let holder = RunId::from_trusted(holder_id.clone());
                claimed.insert(scope, holder.clone());
                plan.outcomes.push(TriggerOutcome::Cached(holder));
            }
            found => {
                if let Some((holder_id, _, _)) = found {
                    plan.release.push(holder_id.clone());
                }
                claimed.insert(scope, run.id.clone());
                plan.insert.push(position);
                plan.outcomes.push(TriggerOutcome::Created(run.id.clone()));
            }
        }
    }
    plan
}

/// Rows per `INSERT … VALUES` statement when each row binds `columns` parameters and a
/// statement may bind at most `limit`.
pub(crate) fn rows_per_statement(limit: usize, columns: usize) -> usize {
    (limit / columns).max(1)
}

/// The batch after `new_items` more indexes arrived at `now`: sealed (and completed)
/// when every index is in.
pub(crate) fn batch_after(
    mut batch: BatchRecord,
    new_items: u32,
    now: DateTime<Utc>,
) -> BatchRecord {
    batch.items_received += new_items;
    if new_items > 0 {
        batch.updated_at = now;
    }
    if batch.items_received >= batch.run_count && batch.sealed_at.is_none() {
        batch.sealed_at = Some(now);
        batch.processing_completed_at = Some(now);
        batch.status = runnel_core::batch::BatchStatus::Completed;
        batch.updated_at = now;
    }
    batch
}

/// Which items are new: not among `seen` indexes, and first of their index in the call.
pub(crate) fn new_items(
    items: &[BatchItemTrigger],
    seen: &std::collections::HashSet<u32>,
) -> Vec<bool> {
    let mut taken = seen.clone();
    items.iter().map(|item| taken.insert(item.index)).collect()
}

pub(crate) const BATCH_COLUMNS: &str = "id, environment_id, status, run_count, items_received, \
    idempotency_key, idempotency_key_user, idempotency_key_expires_at, parent_run_id, \
    resume_parent_on_completion, created_at, updated_at, sealed_at, processing_completed_at";

pub(crate) const BATCH_ITEM_COLUMNS: &str = "item_index, task_identifier, run_id, error";

/// A batch from a row that selected [`BATCH_COLUMNS`].
pub(crate) fn batch_from_row(row: &impl crate::rows::Columns) -> crate::Result<BatchRecord> {
    let status = row.text("status")?;
    Ok(BatchRecord {
        id: runnel_core::BatchId::from_trusted(row.text("id")?),
        environment_id: runnel_core::EnvironmentId::from_trusted(row.text("environment_id")?),
        status: runnel_core::batch::BatchStatus::parse(&status)
            .ok_or_else(|| crate::Error::Corrupt(format!("batch status {status:?}")))?,
        run_count: row.count("run_count")?,
        items_received: row.count("items_received")?,
        idempotency_key: row.opt_text("idempotency_key")?,
        idempotency_key_user: row.opt_text("idempotency_key_user")?,
        idempotency_key_expires_at: row.opt_time("idempotency_key_expires_at")?,
        parent_run_id: row.opt_run_id("parent_run_id")?,
        resume_parent_on_completion: row.flag("resume_parent_on_completion")?,
        created_at: row.time("created_at")?,
        updated_at: row.time("updated_at")?,
        sealed_at: row.opt_time("sealed_at")?,
        processing_completed_at: row.opt_time("processing_completed_at")?,
    })
}

/// A batch item from a row that selected [`BATCH_ITEM_COLUMNS`].
pub(crate) fn batch_item_from_row(
    row: &impl crate::rows::Columns,
) -> crate::Result<runnel_core::batch::BatchItemRecord> {
    Ok(runnel_core::batch::BatchItemRecord {
        index: row.count("item_index")?,
        task_identifier: row.text("task_identifier")?,
        run_id: row.opt_run_id("run_id")?,
        error: row.opt_text("error")?,
    })
}

/// Whether a batch holding its key at `now` still holds it.
pub(crate) fn batch_key_live(expires_at: Option<DateTime<Utc>>, now: DateTime<Utc>) -> bool {
    expires_at.is_none_or(|at| at > now)
}

/// The batch-item rows a call writes: (index, task, run id, error).
type ItemRow<'a> = (i64, &'a str, Option<String>, Option<&'a str>);

/// Applies the plan's outcomes to the new items: their outcomes and their rows.
fn item_results<'a>(
    items: &'a [BatchItemTrigger],
    fresh: &[bool],
    run_outcomes: Vec<TriggerOutcome>,
) -> (Vec<BatchItemOutcome>, Vec<ItemRow<'a>>) {
    let mut run_outcomes = run_outcomes.into_iter();
    let mut outcomes = Vec::with_capacity(items.len());
    let mut rows = Vec::new();
    for (item, fresh) in items.iter().zip(fresh) {
        if !fresh {
            outcomes.push(BatchItemOutcome::Duplicate);
            continue;
        }
        match &item.run {
            Ok(_) => {
                let outcome = run_outcomes
                    .next()
                    .expect("one trigger outcome per new item with a run");
                let run_id = match &outcome {
                    TriggerOutcome::Created(id) | TriggerOutcome::Cached(id) => id.to_string(),
                };
                rows.push((
                    i64::from(item.index),
                    item.task_identifier.as_str(),
                    Some(run_id),
                    None,
                ));
                outcomes.push(BatchItemOutcome::Triggered(outcome));
            }
            Err(error) => {
                rows.push((
                    i64::from(item.index),
                    item.task_identifier.as_str(),
                    None,
                    Some(error.as_str()),
                ));
                outcomes.push(BatchItemOutcome::Failed);
            }
        }
    }
    (outcomes, rows)
}

/// The runs of the new items, in item order.
fn fresh_runs<'a>(items: &'a [BatchItemTrigger], fresh: &[bool]) -> Vec<&'a Run> {
    items
        .iter()
        .zip(fresh)
        .filter(|(_, fresh)| **fresh)
        .filter_map(|(item, _)| item.run.as_ref().ok())
        .collect()
}

/// `(?, ?, …), (?, …)` for `rows` rows of `columns` values, or numbered
/// `($1, $2, …), ($n, …)` for PostgreSQL. SQLite gets bare `?`s on purpose: it keeps a
/// numbered or named placeholder in a list it searches linearly, and sqlx asks for each
/// parameter's name when binding, so a 30,000-value statement would take seconds.
fn values_list(rows: usize, columns: usize, numbered: bool) -> String {
    let mut sql = String::with_capacity(rows * columns * 5);
    let mut n = 0;
    for row in 0..rows {
        if row > 0 {
            sql.push_str(", ");
        }
        sql.push('(');
        for column in 0..columns {
            if column > 0 {
                sql.push_str(", ");
            }
            n += 1;
            if numbered {
                sql.push('$');
                sql.push_str(&n.to_string());
            } else {
                sql.push('?');
            }
        }
        sql.push(')');
    }
    sql
}

const BATCH_ITEM_INSERT_COLUMNS: usize = 5;

/// Creating a batch and adding its items: the same statements on both backends but for
/// `lock`, appended to the reads that decide (the key's holder, the batch row):
/// `FOR UPDATE` on PostgreSQL; nothing on SQLite, whose transaction already holds the one
/// writer. `numbered` is how [`values_list`] writes placeholders. Expanded inside
/// [`sqlite`] and [`postgres`], where it uses that module's `trigger_many` and
/// `MAX_BINDS`.
macro_rules! batch_statements {
    ($conn:ty, lock = $lock:literal, numbered = $numbered:literal) => {
        pub(crate) async fn batch_insert(conn: &mut $conn, batch: &BatchRecord) -> Result<()> {
            sqlx::query(&format!(
                "INSERT INTO batches ({BATCH_COLUMNS}) VALUES {}",
                values_list(1, 14, $numbered)
            ))
            .bind(batch.id.as_str())
            .bind(batch.environment_id.as_str())
            .bind(batch.status.as_str())
            .bind(i64::from(batch.run_count))
            .bind(i64::from(batch.items_received))
            .bind(batch.idempotency_key.as_deref())
            .bind(batch.idempotency_key_user.as_deref())
            .bind(batch.idempotency_key_expires_at.map(ms))
            .bind(batch.parent_run_id.as_ref().map(RunId::as_str))
            .bind(batch.resume_parent_on_completion)
            .bind(ms(batch.created_at))
            .bind(ms(batch.updated_at))
            .bind(batch.sealed_at.map(ms))
            .bind(batch.processing_completed_at.map(ms))
            .execute(conn)
            .await?;
            Ok(())
        }

        /// The batch-create decision inside the caller's transaction.
        pub(crate) async fn batch_create(
            conn: &mut $conn,
            batch: &BatchRecord,
            now: DateTime<Utc>,
        ) -> Result<BatchCreateOutcome> {
            if let Some(key) = &batch.idempotency_key {
                let holder = sqlx::query(&format!(
                    "SELECT {} FROM batches WHERE environment_id = $1 AND idempotency_key = $2{}",
                    BATCH_COLUMNS,
                    $lock
                ))
                .bind(batch.environment_id.as_str())
                .bind(key)
                .fetch_optional(&mut *conn)
                .await?;
                if let Some(holder) = holder.as_ref().map(batch_from_row).transpose()? {
                    if batch_key_live(holder.idempotency_key_expires_at, now) {
                        return Ok(BatchCreateOutcome::Cached(holder));
                    }
                    sqlx::query(
                        "UPDATE batches SET idempotency_key = NULL, idempotency_key_expires_at = NULL, \
                         updated_at = $1 WHERE id = $2",
                    )
                    .bind(ms(now))
                    .bind(holder.id.as_str())
                    .execute(&mut *conn)
                    .await?;
                }
            }
            batch_insert(conn, batch).await?;
            Ok(BatchCreateOutcome::Created(batch.clone()))
        }

        /// The batch-items trigger inside the caller's transaction.
        pub(crate) async fn items_trigger(
            conn: &mut $conn,
            environment: &EnvironmentId,
            id: &BatchId,
            items: &[BatchItemTrigger],
            now: DateTime<Utc>,
        ) -> Result<BatchItemsOutcome> {
            // Item calls of one batch take turns (the batch row lock, or SQLite's one
            // writer): the indexes read below cannot change until this transaction ends.
            let row = sqlx::query(&format!(
                "SELECT {} FROM batches WHERE id = $1 AND environment_id = $2{}",
                BATCH_COLUMNS,
                $lock
            ))
            .bind(id.as_str())
            .bind(environment.as_str())
            .fetch_optional(&mut *conn)
            .await?;
            let Some(batch) = row.as_ref().map(batch_from_row).transpose()? else {
                return Ok(BatchItemsOutcome::NotFound);
            };
            if batch.sealed() {
                return Ok(BatchItemsOutcome::Sealed(batch));
            }
            let seen: HashSet<u32> =
                sqlx::query_scalar::<_, i64>("SELECT item_index FROM batch_items WHERE batch_id = $1")
                    .bind(id.as_str())
                    .fetch_all(&mut *conn)
                    .await?
                    .into_iter()
                    .filter_map(|i| u32::try_from(i).ok())
                    .collect();
            let fresh = new_items(items, &seen);
            let runs = fresh_runs(items, &fresh);
            let run_outcomes = trigger_many(conn, &runs, now).await?;
            let (outcomes, rows) = item_results(items, &fresh, run_outcomes);
            for chunk in rows.chunks(rows_per_statement(MAX_BINDS, BATCH_ITEM_INSERT_COLUMNS)) {
                let sql = format!(
                    "INSERT INTO batch_items (batch_id, {BATCH_ITEM_COLUMNS}) VALUES {}",
                    values_list(chunk.len(), BATCH_ITEM_INSERT_COLUMNS, $numbered)
                );
                let mut query = sqlx::query(&sql);
                for (index, task, run_id, error) in chunk {
                    query = query
                        .bind(id.as_str())
                        .bind(*index)
                        .bind(*task)
                        .bind(run_id.as_deref())
                        .bind(*error);
                }
                query.execute(&mut *conn).await?;
            }
            let batch = batch_after(batch, rows.len() as u32, now);
            sqlx::query(
                "UPDATE batches SET items_received = $1, status = $2, updated_at = $3, sealed_at = $4, \
                 processing_completed_at = $5 WHERE id = $6",
            )
            .bind(i64::from(batch.items_received))
            .bind(batch.status.as_str())
            .bind(ms(batch.updated_at))
            .bind(batch.sealed_at.map(ms))
            .bind(batch.processing_completed_at.map(ms))
            .bind(id.as_str())
            .execute(&mut *conn)
            .await?;
            Ok(BatchItemsOutcome::Applied {
                items: outcomes,
                batch,
            })
        }
    };
}

pub(crate) mod sqlite {
    //! The SQLite side: the caller's transaction runs on the one writer connection, so
    //! nothing else writes between the look-ups and the inserts.

    use std::collections::{HashMap, HashSet};

    use chrono::{DateTime, Utc};
    use runnel_core::batch::BatchRecord;
    use runnel_core::run::Run;
    use runnel_core::{BatchId, EnvironmentId};
    use sqlx::SqliteConnection;

    use super::*;
    use crate::rows::{self, ms, opt_time, run_status, RUN_COLUMNS};
    use crate::{Result, TriggerOutcome};

    /// SQLite's bind-parameter limit (`SQLITE_MAX_VARIABLE_NUMBER`, 32766 since 3.32).
    const MAX_BINDS: usize = 32_766;

    async fn holders(
        conn: &mut SqliteConnection,
        runs: &[&Run],
    ) -> Result<HashMap<KeyScope, Holder>> {
        let mut found = HashMap::new();
        for ((environment, task), keys) in keys_by_task(runs) {
            for chunk in keys.chunks(MAX_BINDS - 2) {
                let sql = format!(
                    "SELECT id, status, idempotency_key, idempotency_key_expires_at FROM runs \
                     WHERE environment_id = ? AND task_identifier = ? AND idempotency_key IN ({})",
                    vec!["?"; chunk.len()].join(", ")
                );
                let mut query = sqlx::query_as::<_, (String, String, String, Option<i64>)>(&sql)
                    .bind(environment)
                    .bind(task);
                for key in chunk {
                    query = query.bind(*key);
                }
                for (id, status, key, expires_at) in query.fetch_all(&mut *conn).await? {
                    found.insert(
                        (environment.to_owned(), task.to_owned(), key),
                        (id, run_status(&status)?, opt_time(expires_at)?),
                    );
                }
            }
        }
        Ok(found)
    }

    /// The multi-row trigger inside the caller's transaction.
    pub(crate) async fn trigger_many(
        conn: &mut SqliteConnection,
        runs: &[&Run],
        now: DateTime<Utc>,
    ) -> Result<Vec<TriggerOutcome>> {
        let holders = holders(conn, runs).await?;
        let plan = plan_trigger_many(runs, &holders, now);
        for chunk in plan.release.chunks(MAX_BINDS - 1) {
            let sql = format!(
                "UPDATE runs SET idempotency_key = NULL, idempotency_key_expires_at = NULL, \
                 updated_at = ? WHERE id IN ({})",
                vec!["?"; chunk.len()].join(", ")
            );
            let mut query = sqlx::query(&sql).bind(ms(now));
            for id in chunk {
                query = query.bind(id);
            }
            query.execute(&mut *conn).await?;
        }
        let columns = rows::run_column_count();
        for chunk in plan.insert.chunks(rows_per_statement(MAX_BINDS, columns)) {
            let sql = format!(
                "INSERT INTO runs ({RUN_COLUMNS}) VALUES {}",
                values_list(chunk.len(), columns, false)
            );
            let mut query = sqlx::query(&sql);
            for &position in chunk {
                query = rows::bind_run(query, runs[position]);
            }
            query.execute(&mut *conn).await?;
        }
        Ok(plan.outcomes)
    }

    batch_statements!(SqliteConnection, lock = "", numbered = false);
}

pub(crate) mod postgres {
    //! The PostgreSQL side: holders and the batch row are locked (`FOR UPDATE`) inside
    //! the caller's transaction; a key inserted concurrently by another node surfaces
    //! as a unique violation, on which the caller rolls back and runs the call again.

    use std::collections::{HashMap, HashSet};

    use chrono::{DateTime, Utc};
    use runnel_core::batch::BatchRecord;
    use runnel_core::run::Run;
    use runnel_core::{BatchId, EnvironmentId};
    use sqlx::PgConnection;

    use super::*;
    use crate::rows::{self, ms, opt_time, run_status, RUN_COLUMNS};
    use crate::{Result, TriggerOutcome};

    /// PostgreSQL's bind-parameter limit per statement (an `i16` count).
    const MAX_BINDS: usize = 65_535;

    /// The unique index that guards batch idempotency keys (migration 0005).
    pub(crate) const BATCH_IDEMPOTENCY_INDEX: &str = "batches_by_idempotency_key";

    async fn holders(conn: &mut PgConnection, runs: &[&Run]) -> Result<HashMap<KeyScope, Holder>> {
        let mut found = HashMap::new();
        let mut groups: Vec<_> = keys_by_task(runs).into_iter().collect();
        // A fixed lock order between groups (and by id inside one) keeps two batches
        // locking the same holders from deadlocking.
        groups.sort_unstable();
        for ((environment, task), keys) in groups {
            let rows: Vec<(String, String, String, Option<i64>)> = sqlx::query_as(
                "SELECT id, status, idempotency_key, idempotency_key_expires_at FROM runs \
                 WHERE environment_id = $1 AND task_identifier = $2 AND idempotency_key = ANY($3) \
                 ORDER BY id COLLATE \"C\" FOR UPDATE",
            )
            .bind(environment)
            .bind(task)
            .bind(&keys)
            .fetch_all(&mut *conn)
            .await?;
            for (id, status, key, expires_at) in rows {
                found.insert(
                    (environment.to_owned(), task.to_owned(), key),
                    (id, run_status(&status)?, opt_time(expires_at)?),
                );
            }
        }
        Ok(found)
    }

    /// The multi-row trigger inside the caller's transaction.
    pub(crate) async fn trigger_many(
        conn: &mut PgConnection,
        runs: &[&Run],
        now: DateTime<Utc>,
    ) -> Result<Vec<TriggerOutcome>> {
        let holders = holders(conn, runs).await?;
        let plan = plan_trigger_many(runs, &holders, now);
        if !plan.release.is_empty() {
            sqlx::query(
                "UPDATE runs SET idempotency_key = NULL, idempotency_key_expires_at = NULL, \
                 updated_at = $1 WHERE id = ANY($2)",
            )
            .bind(ms(now))
            .bind(&plan.release)
            .execute(&mut *conn)
            .await?;
        }
        let columns = rows::run_column_count();
        for chunk in plan.insert.chunks(rows_per_statement(MAX_BINDS, columns)) {
            let sql = format!(
                "INSERT INTO runs ({RUN_COLUMNS}) VALUES {}",
                values_list(chunk.len(), columns, true)
            );
            let mut query = sqlx::query(&sql);
            for &position in chunk {
                query = rows::bind_run(query, runs[position]);
            }
            query.execute(&mut *conn).await?;
        }
        Ok(plan.outcomes)
    }

    batch_statements!(PgConnection, lock = " FOR UPDATE", numbered = true);
}
