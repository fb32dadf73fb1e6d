//! Batch trigger: create a batch, stream its items, read it back (contract §2.1 rows
//! 2–8). Every item goes through the single trigger's validation
//! (`TriggerRequest::validate`) and its `PENDING_VERSION` rule; an items request is
//! stored chunk by chunk as it arrives ([`BatchItemsUpload`]), each chunk by one store
//! call (`Store::batch_items_trigger`: one transaction, one multi-row insert) that also
//! records the indexes that arrived, so a stream sent again only adds what is missing.
//!
//! How items fail: a line that is not an item refuses the rest of the request: the
//! chunks stored before it stay (a stream sent again deduplicates them, as upstream's
//! per-item processing does), nothing of the chunk holding it is stored; an item whose trigger is refused (too many tags, a bad option) is recorded
//! against its index with the error and creates no run, like upstream's per-item
//! processing errors, so the batch can still be sealed. The one-shot
//! `POST /api/v1/tasks/batch` instead refuses the whole request on the first bad item.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use runnel_core::batch::{
    parse_item_lines, BatchItemLine, BatchItemRecord, BatchRecord, BatchRequestError,
    CreateBatchRequest, OneShotBatchRequest, OneShotItem, MAX_ONE_SHOT_ITEMS,
};
use runnel_core::run::Run;
use runnel_core::tenancy::Environment;
use runnel_core::trigger::{IdempotencyHeaders, TriggerError, TriggerRequest};
use runnel_core::{BatchId, RunId};
use runnel_store::{
    BatchCreateOutcome, BatchItemOutcome, BatchItemTrigger, BatchItemsOutcome, TriggerOutcome,
};

use crate::trigger::{BatchParent, ParentLink};
use crate::Engine;

/// Why a batch operation failed.
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    #[error(transparent)]
    Request(#[from] BatchRequestError),
    /// An item of a one-shot batch was refused; nothing was stored.
    #[error("items[{index}]: {error}")]
    Item { index: usize, error: TriggerError },
    /// No such batch in the environment.
    #[error("Batch {0} not found")]
    NotFound(String),
    #[error("Batch {0} is already sealed and cannot accept more items")]
    Sealed(BatchId),
    #[error(transparent)]
    Store(#[from] runnel_store::Error),
    /// Object storage failed while offloading an item's payload (500).
    #[error(transparent)]
    Blob(#[from] crate::BlobError),
}

/// The answer to a batch create.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchCreated {
    pub batch: BatchRecord,
    /// The idempotency key matched an existing batch; nothing new was created.
    pub is_cached: bool,
}

/// The answer to an items request (`StreamBatchItemsResponse`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchItemsAccepted {
    pub id: BatchId,
    /// Indexes new to the batch (runs triggered or refusals recorded).
    pub items_accepted: u32,
    /// Indexes that had already arrived.
    pub items_deduplicated: u32,
    pub sealed: bool,
    /// Indexes the batch holds so far, and how many it expects.
    pub received: u32,
    pub expected: u32,
}

/// One run of a one-shot batch.
#[derive(Debug, Clone, PartialEq)]
pub struct OneShotRun {
    pub id: RunId,
    pub task_identifier: String,
    pub is_cached: bool,
    pub idempotency_key: Option<String>,
}

/// The answer to a one-shot batch.
#[derive(Debug, Clone, PartialEq)]
pub struct OneShotBatch {
    pub batch: BatchRecord,
    pub is_cached: bool,
    pub runs: Vec<OneShotRun>,
}

/// A batch with the items that arrived, by index.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchDetail {
    pub batch: BatchRecord,
    pub items: Vec<BatchItemRecord>,
}

/// An items request in progress: the batch it writes to and what its chunks did so far.
#[derive(Debug)]
pub struct BatchItemsUpload {
    /// The batch as it was when the request started.
    batch: BatchRecord,
    parent: Option<BatchParent>,
    items_accepted: u32,
    items_deduplicated: u32,
    /// The batch after the last stored chunk; `None` before the first.
    latest: Option<BatchRecord>,
}

impl BatchItemsUpload {
    /// Items of the batch: an item's index must be below it.
    pub fn run_count(&self) -> u32 {
        self.batch.run_count
    }
}

impl Engine {
    /// Creates a batch that will hold `request.runCount` runs, or returns the batch of
    /// the environment holding the same idempotency key.
    pub async fn batch_create(
        &self,
        environment: &Environment,
        request: CreateBatchRequest,
        header_key: Option<String>,
    ) -> Result<BatchCreated, BatchError> {
        let now = self.clock.now();
        let batch = request.into_record(
            BatchId::generate(now.timestamp_millis()),
            environment.id.clone(),
            header_key,
            now,
        )?;
        if let Some(parent) = &batch.parent_run_id {
            let exists = self.store.run_get(&environment.id, parent).await?.is_some();
            if !exists {
                return Err(BatchRequestError::Invalid(format!(
                    "parentRunId: no run {parent} in this environment"
                ))
                .into());
            }
        }
        Ok(match self.store.batch_create(&batch, now).await? {
            BatchCreateOutcome::Created(batch) => {
                tracing::debug!(batch = %batch.id, runs = batch.run_count, env = %environment.kind, "batch created");
                // `batchTriggerAndWait`: the parent waits for every item from now on.
                if let (Some(parent), true) =
                    (&batch.parent_run_id, batch.resume_parent_on_completion)
                {
                    self.block_on_batch(environment, parent, &batch.id, batch.run_count)
                        .await
                        .map_err(|e| match e {
                            crate::Error::Store(e) => BatchError::Store(e),
                            other => BatchError::Request(BatchRequestError::Invalid(format!(
                                "parentRunId: {other}"
                            ))),
                        })?;
                }
                BatchCreated {
                    batch,
                    is_cached: false,
                }
            }
            BatchCreateOutcome::Cached(batch) => BatchCreated {
                batch,
                is_cached: true,
            },
        })
    }

    /// Takes a whole NDJSON items body for batch `id`, as one chunk (see
    /// [`Engine::batch_items_open`] for a body read as it arrives).
    pub async fn batch_items(
        &self,
        environment: &Environment,
        id: &BatchId,
        body: &[u8],
    ) -> Result<BatchItemsAccepted, BatchError> {
        let mut upload = self.batch_items_open(environment, id).await?;
        let lines = parse_item_lines(body, upload.run_count())?;
        self.batch_items_write(environment, &mut upload, lines)
            .await?;
        self.batch_items_finish(environment, upload).await
    }

    /// Starts an items request for batch `id`: the batch must exist in the environment
    /// and not be sealed. Its items then go in chunk by chunk
    /// ([`Engine::batch_items_write`]), each one store call (one transaction), so a
    /// request of any size holds one chunk at a time.
    pub async fn batch_items_open(
        &self,
        environment: &Environment,
        id: &BatchId,
    ) -> Result<BatchItemsUpload, BatchError> {
        let batch = self
            .store
            .batch_get(&environment.id, id)
            .await?
            .ok_or_else(|| BatchError::NotFound(id.to_string()))?;
        if batch.sealed() {
            return Err(BatchError::Sealed(id.clone()));
        }
        let parent = self.batch_parent(environment, &batch).await?;
        Ok(BatchItemsUpload {
            batch,
            parent,
            items_accepted: 0,
            items_deduplicated: 0,
            latest: None,
        })
    }

    /// Triggers the runs of one chunk of an items request: the indexes not seen before
    /// (one store call), sealing the batch once every index has arrived. Once a chunk is
    /// stored, a batch sealed meanwhile (by this request or a concurrent one) only means
    /// the rest of the request repeats indexes it holds: they count as deduplicated.
    pub async fn batch_items_write(
        &self,
        environment: &Environment,
        upload: &mut BatchItemsUpload,
        lines: Vec<BatchItemLine>,
    ) -> Result<(), BatchError> {
        if lines.is_empty() && upload.latest.is_some() {
            return Ok(());
        }
        let now = self.clock.now();
        let batch_id = upload.batch.id.clone();
        let mut items = Vec::with_capacity(lines.len());
        let requests: Vec<_> = lines.into_iter().map(BatchItemLine::into_trigger).collect();
        let item_parents = match upload.parent {
            Some(_) => HashMap::new(),
            None => {
                self.parents_named(environment, requests.iter().map(|(_, _, r)| r))
                    .await?
            }
        };
        for (index, task, request) in requests {
            let run = self
                .batch_run(
                    environment,
                    &batch_id,
                    upload.parent.as_ref(),
                    &item_parents,
                    &task,
                    request,
                    now,
                )
                .await?
                .map_err(|e| e.to_string());
            items.push(BatchItemTrigger {
                index,
                task_identifier: task,
                run,
            });
        }
        self.mark_pending_versions(environment, &mut items).await?;
        let outcome = self
            .store
            .batch_items_trigger(&environment.id, &batch_id, &items, now)
            .await?;
        let (outcomes, batch) = match outcome {
            BatchItemsOutcome::Applied { items, batch } => (items, batch),
            BatchItemsOutcome::NotFound => return Err(BatchError::NotFound(batch_id.to_string())),
            BatchItemsOutcome::Sealed(batch) if upload.latest.is_some() => {
                upload.items_deduplicated += items.len() as u32;
                upload.latest = Some(batch);
                return Ok(());
            }
            BatchItemsOutcome::Sealed(_) => return Err(BatchError::Sealed(batch_id)),
        };
        self.after_batch_insert(environment, &items, &outcomes, now)
            .await?;
        if upload.batch.resume_parent_on_completion && upload.batch.parent_run_id.is_some() {
            for (item, outcome) in items.iter().zip(&outcomes) {
                let run = match (&item.run, outcome) {
                    (_, BatchItemOutcome::Triggered(TriggerOutcome::Created(id)))
                    | (_, BatchItemOutcome::Triggered(TriggerOutcome::Cached(id))) => Ok(id),
                    (Err(error), BatchItemOutcome::Failed) => Err(error.as_str()),
                    _ => continue,
                };
                self.batch_item_arrived(&batch_id, item.index, run)
                    .await
                    .map_err(|e| match e {
                        crate::Error::Store(e) => BatchError::Store(e),
                        other => BatchError::Request(BatchRequestError::Invalid(other.to_string())),
                    })?;
            }
        }
        let deduplicated = outcomes
            .iter()
            .filter(|o| matches!(o, BatchItemOutcome::Duplicate))
            .count() as u32;
        upload.items_accepted += outcomes.len() as u32 - deduplicated;
        upload.items_deduplicated += deduplicated;
        upload.latest = Some(batch);
        Ok(())
    }

    /// Ends an items request: what it added, and where the batch stands.
    pub async fn batch_items_finish(
        &self,
        environment: &Environment,
        mut upload: BatchItemsUpload,
    ) -> Result<BatchItemsAccepted, BatchError> {
        if upload.latest.is_none() {
            // No line at all: an empty store call reads the batch as the others would.
            self.batch_items_write(environment, &mut upload, Vec::new())
                .await?;
        }
        let batch = upload.latest.unwrap_or(upload.batch);
        Ok(BatchItemsAccepted {
            id: batch.id.clone(),
            items_accepted: upload.items_accepted,
            items_deduplicated: upload.items_deduplicated,
            sealed: batch.sealed(),
            received: batch.items_received,
            expected: batch.run_count,
        })
    }

    /// `POST /api/v1/tasks/batch`: a batch and all its runs in one request; the
    /// `idempotency-key` header, when given, is the batch's key.
    pub async fn batch_trigger_one_shot(
        &self,
        environment: &Environment,
        request: OneShotBatchRequest,
        header_key: Option<String>,
    ) -> Result<OneShotBatch, BatchError> {
        let count = request.items.len();
        if count == 0 || count > MAX_ONE_SHOT_ITEMS {
            return Err(BatchRequestError::Invalid(format!(
                "items: must hold 1 to {MAX_ONE_SHOT_ITEMS} items, got {count}"
            ))
            .into());
        }
        let now = self.clock.now();
        let batch = CreateBatchRequest {
            run_count: count as i64,
            ..CreateBatchRequest::default()
        }
        .into_record(
            BatchId::generate(now.timestamp_millis()),
            environment.id.clone(),
            header_key,
            now,
        )?;
        // Every item must pass before anything is stored.
        let mut items = Vec::with_capacity(count);
        let requests: Vec<_> = request
            .items
            .into_iter()
            .map(OneShotItem::into_trigger)
            .collect();
        let item_parents = self
            .parents_named(environment, requests.iter().map(|(_, r)| r))
            .await?;
        for (index, (task, request)) in requests.into_iter().enumerate() {
            let run = self
                .batch_run(
                    environment,
                    &batch.id,
                    None,
                    &item_parents,
                    &task,
                    request,
                    now,
                )
                .await?
                .map_err(|error| BatchError::Item { index, error })?;
            items.push(BatchItemTrigger {
                index: index as u32,
                task_identifier: task,
                run: Ok(run),
            });
        }
        let batch = match self.store.batch_create(&batch, now).await? {
            BatchCreateOutcome::Cached(batch) => {
                let runs = self
                    .store
                    .batch_item_list(&batch.id)
                    .await?
                    .into_iter()
                    .filter_map(|item| {
                        Some(OneShotRun {
                            id: item.run_id?,
                            task_identifier: item.task_identifier,
                            is_cached: true,
                            idempotency_key: None,
                        })
                    })
                    .collect();
                return Ok(OneShotBatch {
                    batch,
                    is_cached: true,
                    runs,
                });
            }
            BatchCreateOutcome::Created(batch) => batch,
        };
        self.mark_pending_versions(environment, &mut items).await?;
        let (outcomes, batch) = match self
            .store
            .batch_items_trigger(&environment.id, &batch.id, &items, now)
            .await?
        {
            BatchItemsOutcome::Applied { items, batch } => (items, batch),
            BatchItemsOutcome::NotFound | BatchItemsOutcome::Sealed(_) => {
                // The batch was created just above and nothing else knows its id.
                return Err(BatchError::NotFound(batch.id.to_string()));
            }
        };
        self.after_batch_insert(environment, &items, &outcomes, now)
            .await?;
        let runs = items
            .iter()
            .zip(&outcomes)
            .filter_map(|(item, outcome)| {
                let run = item.run.as_ref().ok()?;
                let (id, is_cached) = match outcome {
                    BatchItemOutcome::Triggered(TriggerOutcome::Created(id)) => (id, false),
                    BatchItemOutcome::Triggered(TriggerOutcome::Cached(id)) => (id, true),
                    _ => return None,
                };
                Some(OneShotRun {
                    id: id.clone(),
                    task_identifier: item.task_identifier.clone(),
                    is_cached,
                    idempotency_key: run
                        .idempotency_key_user
                        .clone()
                        .or_else(|| run.idempotency_key.clone()),
                })
            })
            .collect();
        Ok(OneShotBatch {
            batch,
            is_cached: false,
            runs,
        })
    }

    /// A batch of `environment` with its items; `None` when it does not exist there.
    pub async fn batch_detail(
        &self,
        environment: &Environment,
        id: &BatchId,
    ) -> Result<Option<BatchDetail>, BatchError> {
        let Some(batch) = self.store.batch_get(&environment.id, id).await? else {
            return Ok(None);
        };
        let items = self.store.batch_item_list(id).await?;
        Ok(Some(BatchDetail { batch, items }))
    }

    /// The parent run named at batch creation, when it exists in the environment.
    async fn batch_parent(
        &self,
        environment: &Environment,
        batch: &BatchRecord,
    ) -> Result<Option<BatchParent>, BatchError> {
        let Some(parent_id) = &batch.parent_run_id else {
            return Ok(None);
        };
        let Some(parent) = self.store.run_get(&environment.id, parent_id).await? else {
            return Ok(None);
        };
        Ok(Some(BatchParent {
            root: parent
                .root_run_id
                .clone()
                .unwrap_or_else(|| parent.id.clone()),
            id: parent.id,
            depth: parent.depth + 1,
            resume: batch.resume_parent_on_completion,
        }))
    }

    /// Validates one item as a single trigger and builds its run in the batch
    /// ([`Engine::build_run`]): under the batch's parent, else under the item's own
    /// `parentRunId`, looked up beforehand in `item_parents`.
    #[allow(clippy::too_many_arguments)]
    /// Its payload is settled as a single trigger's ([`Engine::payload_settle`]); the
    /// outer error is object storage failing.
    async fn batch_run(
        &self,
        environment: &Environment,
        batch: &BatchId,
        parent: Option<&BatchParent>,
        item_parents: &HashMap<RunId, Run>,
        task: &str,
        request: TriggerRequest,
        now: DateTime<Utc>,
    ) -> Result<Result<Run, TriggerError>, crate::BlobError> {
        let link = match parent {
            Some(parent) => ParentLink::Batch(parent),
            None => ParentLink::Named(item_parents),
        };
        let mut run = match self.build_run(
            environment,
            task,
            request,
            &IdempotencyHeaders::default(),
            link,
            now,
            "batch item",
        ) {
            Ok(run) => run,
            Err(refused) => return Ok(Err(refused)),
        };
        run.batch_id = Some(batch.clone());
        if let Err(refused) = self.payload_settle(environment, &mut run).await? {
            return Ok(Err(refused));
        }
        Ok(Ok(run))
    }

    /// [`Engine::place`] for the items that passed.
    async fn mark_pending_versions(
        &self,
        environment: &Environment,
        items: &mut [BatchItemTrigger],
    ) -> Result<(), BatchError> {
        let runs = items.iter_mut().filter_map(|item| item.run.as_mut().ok());
        Ok(self.place(environment, runs).await?)
    }

    /// [`Engine::after_insert`] for the items the store created.
    async fn after_batch_insert(
        &self,
        environment: &Environment,
        items: &[BatchItemTrigger],
        outcomes: &[BatchItemOutcome],
        now: DateTime<Utc>,
    ) -> Result<(), BatchError> {
        let created =
            items
                .iter()
                .zip(outcomes)
                .filter_map(|(item, outcome)| match (&item.run, outcome) {
                    (Ok(run), BatchItemOutcome::Triggered(TriggerOutcome::Created(id))) => {
                        Some((run, id))
                    }
                    _ => None,
                });
        Ok(self.after_insert(environment, created, now).await?)
    }
}
