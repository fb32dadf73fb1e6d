//! Batches and their items ([`BatchStore`]), and the multi-row trigger ([`trigger_many`])
//! that batch items, [`crate::RunStore::run_trigger_many`] and the group commit of
//! single triggers (`group.rs`) write with, each statement written once for both
//! backends. The decision in it, which runs are inserted and which return a run that
//! already holds their idempotency key, is [`plan_trigger_many`].
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
//! rolls back and the call starts over, as a single trigger does: the caller's retry
//! (`postgres.rs`; for batches [`Backend::retry_key_race`]). A batch's own key is decided
//! the same way on `batches_by_idempotency_key`.

use std::collections::{HashMap, HashSet};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use runnel_core::batch::{BatchItemRecord, BatchRecord};
use runnel_core::idempotency::{self, Decision};
use runnel_core::run::Run;
use runnel_core::{BatchId, EnvironmentId, RunId, RunStatus};

use crate::backend::{Backend, KeyedWrite};
use crate::detach::detached;
use crate::rows::{self, ms, run_status, Columns, RUN_COLUMNS};
use crate::sql::{rows_per_statement, Conn, Dialect, Params};
use crate::{BatchStore, Result, TriggerOutcome};

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

/// The columns of a batch-items row: the batch id and [`BATCH_ITEM_COLUMNS`].
const BATCH_ITEM_INSERT_COLUMNS: usize = 5;

/// The runs of the new items, in item order.
fn fresh_runs<'a>(items: &'a [BatchItemTrigger], fresh: &[bool]) -> Vec<&'a Run> {
    items
        .iter()
        .zip(fresh)
        .filter(|(_, fresh)| **fresh)
        .filter_map(|(item, _)| item.run.as_ref().ok())
        .collect()
}

#[async_trait]
impl<B: Backend> BatchStore for B {
    async fn batch_create(
        &self,
        batch: &BatchRecord,
        now: DateTime<Utc>,
    ) -> Result<BatchCreateOutcome> {
        let (store, batch) = (self.clone(), batch.clone());
        detached(async move {
            let (store, batch) = (&store, &batch);
            let write = || -> KeyedWrite<'_, BatchCreateOutcome> {
                Box::pin(async move {
                    let mut tx = store.begin().await?;
                    let outcome = batch_create::<B::D>(&mut tx, batch, now).await?;
                    tx.commit().await?;
                    Ok(outcome)
                })
            };
            store.retry_key_race(batch.id.as_str(), &write).await
        })
        .await
    }

    async fn batch_get(
        &self,
        environment: &EnvironmentId,
        id: &BatchId,
    ) -> Result<Option<BatchRecord>> {
        let mut conn = self.reader().await?;
        let sql =
            format!("SELECT {BATCH_COLUMNS} FROM batches WHERE id = $1 AND environment_id = $2");
        let row = Params::<B::D>::new()
            .with(id.as_str())
            .with(environment.as_str())
            .fetch_optional(&mut conn, &sql)
            .await?;
        row.as_ref().map(batch_from_row).transpose()
    }

    async fn batch_item_list(&self, id: &BatchId) -> Result<Vec<BatchItemRecord>> {
        let mut conn = self.reader().await?;
        let sql = format!(
            "SELECT {BATCH_ITEM_COLUMNS} FROM batch_items WHERE batch_id = $1 ORDER BY item_index"
        );
        let rows = Params::<B::D>::new()
            .with(id.as_str())
            .fetch_all(&mut conn, &sql)
            .await?;
        rows.iter().map(batch_item_from_row).collect()
    }

    async fn batch_items_trigger(
        &self,
        environment: &EnvironmentId,
        id: &BatchId,
        items: &[BatchItemTrigger],
        now: DateTime<Utc>,
    ) -> Result<BatchItemsOutcome> {
        let (store, environment, id, items) = (
            self.clone(),
            environment.clone(),
            id.clone(),
            items.to_vec(),
        );
        detached(async move {
            let (store, environment, id, items) = (&store, &environment, &id, &items[..]);
            let write = || -> KeyedWrite<'_, BatchItemsOutcome> {
                Box::pin(async move {
                    let mut tx = store.begin().await?;
                    let outcome =
                        items_trigger::<B::D>(&mut tx, environment, id, items, now).await?;
                    tx.commit().await?;
                    Ok(outcome)
                })
            };
            store.retry_key_race(id.as_str(), &write).await
        })
        .await
    }
}

/// The holders of the keys of `runs`, locked until the caller's transaction ends.
async fn holders<D: Dialect>(
    conn: &mut Conn<D>,
    runs: &[&Run],
) -> Result<HashMap<KeyScope, Holder>> {
    let mut found = HashMap::new();
    let mut groups: Vec<_> = keys_by_task(runs).into_iter().collect();
    // A fixed lock order between groups (and by id inside one) keeps two batches
    // locking the same holders from deadlocking.
    groups.sort_unstable();
    for ((environment, task), keys) in groups {
        for chunk in keys.chunks(D::MAX_BINDS - 2) {
            let mut p = Params::<D>::sequential();
            let sql = format!(
                "SELECT id, status, idempotency_key, idempotency_key_expires_at FROM runs \
                 WHERE environment_id = {} AND task_identifier = {} AND idempotency_key {} \
                 ORDER BY id{}{}",
                p.bind(environment),
                p.bind(task),
                p.list(chunk.iter().copied()),
                D::COLLATE_BYTES,
                D::FOR_UPDATE
            );
            for row in p.fetch_all(conn, &sql).await? {
                found.insert(
                    (
                        environment.to_owned(),
                        task.to_owned(),
                        row.text("idempotency_key")?,
                    ),
                    (
                        row.text("id")?,
                        run_status(&row.text("status")?)?,
                        row.opt_time("idempotency_key_expires_at")?,
                    ),
                );
            }
        }
    }
    Ok(found)
}

/// The multi-row trigger inside the caller's transaction (see the module doc). On
/// PostgreSQL it fails with the unique violation of `runs_by_idempotency_key` when a
/// concurrent writer inserted one of its keys first; the caller rolls back and runs it
/// again.
pub(crate) async fn trigger_many<D: Dialect>(
    conn: &mut Conn<D>,
    runs: &[&Run],
    now: DateTime<Utc>,
) -> Result<Vec<TriggerOutcome>> {
    let holders = holders::<D>(conn, runs).await?;
    let plan = plan_trigger_many(runs, &holders, now);
    for chunk in plan.release.chunks(D::MAX_BINDS - 1) {
        let mut p = Params::<D>::sequential();
        let sql = format!(
            "UPDATE runs SET idempotency_key = NULL, idempotency_key_expires_at = NULL, \
             updated_at = {} WHERE id {}",
            p.bind(ms(now)),
            p.list(chunk.iter().map(String::as_str))
        );
        p.execute(conn, &sql).await?;
    }
    let inserted: Vec<&Run> = plan.insert.iter().map(|&position| runs[position]).collect();
    insert_runs::<D>(conn, &inserted).await?;
    Ok(plan.outcomes)
}

/// Inserts `runs`: one multi-row `INSERT` per chunk of rows that fits the dialect's
/// bind-parameter limit.
pub(crate) async fn insert_runs<D: Dialect>(conn: &mut Conn<D>, runs: &[&Run]) -> Result<()> {
    for chunk in runs.chunks(rows_per_statement(D::MAX_BINDS, rows::run_column_count())) {
        let columns = rows::run_column_count();
        let mut p = Params::<D>::sequential();
        p.reserve(chunk.len() * columns);
        let mut sql = format!("INSERT INTO runs ({RUN_COLUMNS}) VALUES ");
        sql.reserve(chunk.len() * columns * 4);
        for (i, run) in chunk.iter().enumerate() {
            if i > 0 {
                sql.push_str(", ");
            }
            p.push_row(&mut sql, rows::run_values(run));
        }
        p.execute(conn, &sql).await?;
    }
    Ok(())
}

/// Creating a batch, inside the caller's transaction. The holder of the key is locked
/// (PostgreSQL; SQLite's transaction already holds the one writer); a batch inserted
/// concurrently with the same key fails the insert on `batches_by_idempotency_key`.
async fn batch_create<D: Dialect>(
    conn: &mut Conn<D>,
    batch: &BatchRecord,
    now: DateTime<Utc>,
) -> Result<BatchCreateOutcome> {
    if let Some(key) = &batch.idempotency_key {
        let sql = format!(
            "SELECT {BATCH_COLUMNS} FROM batches WHERE environment_id = $1 AND idempotency_key = $2{}",
            D::FOR_UPDATE
        );
        let holder = Params::<D>::new()
            .with(batch.environment_id.as_str())
            .with(key)
            .fetch_optional(conn, &sql)
            .await?;
        if let Some(holder) = holder.as_ref().map(batch_from_row).transpose()? {
            if batch_key_live(holder.idempotency_key_expires_at, now) {
                return Ok(BatchCreateOutcome::Cached(holder));
            }
            Params::<D>::new()
                .with(ms(now))
                .with(holder.id.as_str())
                .execute(
                    conn,
                    "UPDATE batches SET idempotency_key = NULL, idempotency_key_expires_at = NULL, \
                     updated_at = $1 WHERE id = $2",
                )
                .await?;
        }
    }
    let mut p = Params::<D>::sequential();
    let sql = format!(
        "INSERT INTO batches ({BATCH_COLUMNS}) VALUES {}",
        p.row([
            batch.id.as_str().into(),
            batch.environment_id.as_str().into(),
            batch.status.as_str().into(),
            i64::from(batch.run_count).into(),
            i64::from(batch.items_received).into(),
            batch.idempotency_key.as_deref().into(),
            batch.idempotency_key_user.as_deref().into(),
            batch.idempotency_key_expires_at.map(ms).into(),
            batch.parent_run_id.as_ref().map(RunId::as_str).into(),
            batch.resume_parent_on_completion.into(),
            ms(batch.created_at).into(),
            ms(batch.updated_at).into(),
            batch.sealed_at.map(ms).into(),
            batch.processing_completed_at.map(ms).into(),
        ] as [crate::sql::Value<'_>; 14])
    );
    p.execute(conn, &sql).await?;
    Ok(BatchCreateOutcome::Created(batch.clone()))
}

/// The batch-items trigger inside the caller's transaction.
async fn items_trigger<D: Dialect>(
    conn: &mut Conn<D>,
    environment: &EnvironmentId,
    id: &BatchId,
    items: &[BatchItemTrigger],
    now: DateTime<Utc>,
) -> Result<BatchItemsOutcome> {
    // Item calls of one batch take turns (the batch row lock, or SQLite's one writer):
    // the indexes read below cannot change until this transaction ends.
    let sql = format!(
        "SELECT {BATCH_COLUMNS} FROM batches WHERE id = $1 AND environment_id = $2{}",
        D::FOR_UPDATE
    );
    let row = Params::<D>::new()
        .with(id.as_str())
        .with(environment.as_str())
        .fetch_optional(conn, &sql)
        .await?;
    let Some(batch) = row.as_ref().map(batch_from_row).transpose()? else {
        return Ok(BatchItemsOutcome::NotFound);
    };
    if batch.sealed() {
        return Ok(BatchItemsOutcome::Sealed(batch));
    }
    let seen: HashSet<u32> = Params::<D>::new()
        .with(id.as_str())
        .fetch_all(
            conn,
            "SELECT item_index FROM batch_items WHERE batch_id = $1",
        )
        .await?
        .iter()
        .map(|row| row.int("item_index"))
        .collect::<sqlx::Result<Vec<i64>>>()?
        .into_iter()
        .filter_map(|i| u32::try_from(i).ok())
        .collect();
    let fresh = new_items(items, &seen);
    let runs = fresh_runs(items, &fresh);
    let run_outcomes = trigger_many::<D>(conn, &runs, now).await?;
    let (outcomes, rows) = item_results(items, &fresh, run_outcomes);
    for chunk in rows.chunks(rows_per_statement(D::MAX_BINDS, BATCH_ITEM_INSERT_COLUMNS)) {
        let mut p = Params::<D>::sequential();
        let values: Vec<String> = chunk
            .iter()
            .map(|(index, task, run_id, error)| {
                p.row([
                    id.as_str().into(),
                    (*index).into(),
                    (*task).into(),
                    run_id.as_deref().into(),
                    (*error).into(),
                ] as [crate::sql::Value<'_>; BATCH_ITEM_INSERT_COLUMNS])
            })
            .collect();
        let sql = format!(
            "INSERT INTO batch_items (batch_id, {BATCH_ITEM_COLUMNS}) VALUES {}",
            values.join(", ")
        );
        p.execute(conn, &sql).await?;
    }
    let batch = batch_after(batch, rows.len() as u32, now);
    Params::<D>::new()
        .with(i64::from(batch.items_received))
        .with(batch.status.as_str())
        .with(ms(batch.updated_at))
        .with(batch.sealed_at.map(ms))
        .with(batch.processing_completed_at.map(ms))
        .with(id.as_str())
        .execute(
            conn,
            "UPDATE batches SET items_received = $1, status = $2, updated_at = $3, sealed_at = $4, \
             processing_completed_at = $5 WHERE id = $6",
        )
        .await?;
    Ok(BatchItemsOutcome::Applied {
        items: outcomes,
        batch,
    })
}
