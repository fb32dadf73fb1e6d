//! [`WaitStore`]: waitpoints, what blocks a run, and runs' execution snapshots
//! (`runnel_core::waitpoint`; DESIGN §3, the dev CLI protocol's §4).
//!
//! A waitpoint is completed once (`completed_at` goes from NULL to a time in one
//! conditional update), so a timer firing on two nodes, or a token completed twice,
//! completes it once. Blocking and resuming a run are one transaction each and move the
//! run only from the status they expect, under the run's row lock (SQLite: its one
//! writer); a resume checks, in the same statement that moves the run, that none of its
//! blockers is pending, so of two completions racing to resume a run, the last to commit
//! resumes it and the other finds nothing to do.

use std::borrow::Cow;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use runnel_core::run::AttemptStatus;
use runnel_core::waitpoint::{
    ExecutionStatus, NewSnapshot, Snapshot, TokenListQuery, TokenStatus, Waitpoint, WaitpointKind,
    WaitpointOutput,
};
use runnel_core::{BatchId, EnvironmentId, RunId, RunStatus, SnapshotId, WaitpointId};

use crate::backend::Backend;
use crate::detach::detached;
use crate::rows::{ms, run_status, Columns};
use crate::sql::{attempt_status, status, statuses, Conn, Dialect, Params};
use crate::{Error, Result};

/// What creating a waitpoint did.
#[derive(Debug, Clone, PartialEq)]
pub enum WaitpointCreated {
    Created(Waitpoint),
    /// A live waitpoint already holds the idempotency key: it is returned, nothing new.
    Cached(Waitpoint),
}

impl WaitpointCreated {
    pub fn waitpoint(&self) -> &Waitpoint {
        match self {
            WaitpointCreated::Created(w) | WaitpointCreated::Cached(w) => w,
        }
    }
}

/// What blocking a run did.
#[derive(Debug, Clone, PartialEq)]
pub enum BlockOutcome {
    /// The run waits; `snapshot` is the `EXECUTING_WITH_WAITPOINTS` snapshot appended when
    /// it was executing (`None` when it was already waiting on others).
    Blocked {
        snapshot: Option<Snapshot>,
    },
    /// The run is not executing or waiting (it ended, or was never started): nothing
    /// changed.
    NotBlockable(RunStatus),
    NotFound,
}

/// Waitpoints, run blockers and execution snapshots.
#[async_trait]
pub trait WaitStore: Send + Sync {
    /// Inserts `waitpoint`, honouring its idempotency key: when a live waitpoint of the
    /// environment holds the key, returns it and inserts nothing; an expired holder gives
    /// the key up.
    async fn waitpoint_create(
        &self,
        waitpoint: &Waitpoint,
        now: DateTime<Utc>,
    ) -> Result<WaitpointCreated>;

    /// A waitpoint of `environment`.
    async fn waitpoint_get(
        &self,
        environment: &EnvironmentId,
        id: &WaitpointId,
    ) -> Result<Option<Waitpoint>>;

    /// The waitpoints with these ids (any environment), in no particular order.
    async fn waitpoints_get(&self, ids: &[WaitpointId]) -> Result<Vec<Waitpoint>>;

    /// `MANUAL` waitpoints (tokens) of `environment` matching `query`, newest first (or
    /// oldest first when paging `before`), at most `query.limit`.
    async fn token_list(
        &self,
        environment: &EnvironmentId,
        query: &TokenListQuery,
    ) -> Result<Vec<Waitpoint>>;

    /// Completes a pending waitpoint with `output`. Returns the runs it blocks (not yet
    /// resumed past it) when this call completed it; `None` when it was already completed
    /// or does not exist.
    async fn waitpoint_complete(
        &self,
        id: &WaitpointId,
        output: &WaitpointOutput,
        now: DateTime<Utc>,
    ) -> Result<Option<Vec<RunId>>>;

    /// Points a `RUN` waitpoint at the run whose end completes it (a trigger that found
    /// its idempotency key taken; a batch item's run).
    async fn waitpoint_set_run(&self, id: &WaitpointId, run: &RunId) -> Result<()>;

    /// The pending `RUN` waitpoints `run`'s end completes.
    async fn waitpoints_of_run(&self, run: &RunId) -> Result<Vec<WaitpointId>>;

    /// The pending `RUN` waitpoint of item `index` of `batch`.
    async fn waitpoint_of_batch_item(
        &self,
        batch: &BatchId,
        index: u32,
    ) -> Result<Option<WaitpointId>>;

    /// Up to `limit` pending waitpoints whose time came by `now`: `DATETIME` ones due, and
    /// tokens past their timeout.
    async fn waitpoints_due(&self, now: DateTime<Utc>, limit: u32) -> Result<Vec<Waitpoint>>;

    /// The earliest time a pending waitpoint is due or times out.
    async fn waitpoint_next_due(&self) -> Result<Option<DateTime<Utc>>>;

    /// Up to `limit` pending `RUN` waitpoints whose run has ended (a completion the engine
    /// did not get to, say because a node stopped), or that point at no run and were
    /// created before `orphaned_before` (a trigger that never happened). The backstop of
    /// the engine's own completion.
    async fn waitpoints_stranded(
        &self,
        orphaned_before: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<(WaitpointId, Option<RunId>)>>;

    /// Blocks an executing (or already waiting) run with the existing waitpoints
    /// `waitpoints`: the run becomes `WaitingToResume`, its attempt's compute time stops,
    /// and, if it was executing, `snapshot` (an `EXECUTING_WITH_WAITPOINTS` one) is
    /// appended.
    async fn run_block(
        &self,
        environment: &EnvironmentId,
        run: &RunId,
        waitpoints: &[WaitpointId],
        snapshot: &NewSnapshot,
        now: DateTime<Utc>,
    ) -> Result<BlockOutcome>;

    /// Resumes a waiting run when none of its blockers is pending: the run executes
    /// again (lease extended to `lease_until`, its `maxDuration` deadline moved by the
    /// wait), its attempt's wait is added up, and `snapshot` (an `EXECUTING` one) is
    /// appended listing the blockers resumed past. `None` when the run is not waiting or
    /// still blocked.
    async fn run_resume(
        &self,
        run: &RunId,
        snapshot: &NewSnapshot,
        lease_until: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<Option<Snapshot>>;

    /// Up to `limit` waiting runs none of whose blockers is pending (the backstop of the
    /// engine's resume after each completion).
    async fn runs_resumable(&self, limit: u32) -> Result<Vec<RunId>>;

    /// The waitpoints blocking `run` that it has not resumed past.
    async fn run_blockers(&self, run: &RunId) -> Result<Vec<Waitpoint>>;

    /// Appends snapshots (each to its own run's history).
    async fn snapshot_append(&self, snapshots: &[NewSnapshot], now: DateTime<Utc>) -> Result<()>;

    /// A run's latest snapshot.
    async fn snapshot_latest(&self, run: &RunId) -> Result<Option<Snapshot>>;

    /// A run's snapshots, oldest first.
    async fn snapshot_list(&self, run: &RunId) -> Result<Vec<Snapshot>>;
}

const WAITPOINT_COLUMNS: &str = "id, environment_id, kind, idempotency_key, idempotency_key_user, \
     idempotency_key_expires_at, completed_by_run_id, batch_id, batch_index, completes_at, timeout_at, \
     output, output_type, output_is_error, tags, callback_secret, created_at, completed_at";

const SNAPSHOT_COLUMNS: &str =
    "id, run_id, seq, execution_status, description, attempt_number, completed_waitpoints, created_at";

fn waitpoint_from_row(row: &impl Columns) -> Result<Waitpoint> {
    let kind = row.text("kind")?;
    let tags = row.text("tags")?;
    let batch = match (row.opt_text("batch_id")?, row.opt_int("batch_index")?) {
        (Some(batch), Some(index)) => Some((
            BatchId::from_trusted(batch),
            u32::try_from(index).map_err(|_| Error::Corrupt(format!("batch index {index}")))?,
        )),
        _ => None,
    };
    Ok(Waitpoint {
        id: WaitpointId::from_trusted(row.text("id")?),
        environment_id: EnvironmentId::from_trusted(row.text("environment_id")?),
        kind: kind.parse::<WaitpointKind>().map_err(Error::Corrupt)?,
        completed_at: row.opt_time("completed_at")?,
        idempotency_key: row.opt_text("idempotency_key")?,
        idempotency_key_user: row.opt_text("idempotency_key_user")?,
        idempotency_key_expires_at: row.opt_time("idempotency_key_expires_at")?,
        completed_by_run: row
            .opt_text("completed_by_run_id")?
            .map(RunId::from_trusted),
        batch,
        completes_at: row.opt_time("completes_at")?,
        timeout_at: row.opt_time("timeout_at")?,
        output: row.opt_text("output")?,
        output_type: row.opt_text("output_type")?,
        output_is_error: row.flag("output_is_error")?,
        tags: serde_json::from_str(&tags)
            .map_err(|e| Error::Corrupt(format!("waitpoint tags: {e}")))?,
        callback_secret: row.opt_text("callback_secret")?,
        created_at: row.time("created_at")?,
    })
}

fn snapshot_from_row(row: &impl Columns) -> Result<Snapshot> {
    let status = row.text("execution_status")?;
    let completed = row.text("completed_waitpoints")?;
    let completed: Vec<String> = serde_json::from_str(&completed)
        .map_err(|e| Error::Corrupt(format!("snapshot waitpoints: {e}")))?;
    Ok(Snapshot {
        id: SnapshotId::from_trusted(row.text("id")?),
        run_id: RunId::from_trusted(row.text("run_id")?),
        seq: row.int("seq")?,
        status: status.parse::<ExecutionStatus>().map_err(Error::Corrupt)?,
        description: row.text("description")?,
        attempt_number: row.opt_int("attempt_number")?.map(|n| n as u32),
        completed_waitpoints: completed
            .into_iter()
            .map(WaitpointId::from_trusted)
            .collect(),
        created_at: row.time("created_at")?,
    })
}

/// Appends one snapshot at the end of its run's history; returns it as stored.
async fn append<D: Dialect>(
    conn: &mut Conn<D>,
    snapshot: &NewSnapshot,
    completed: &[WaitpointId],
    now: DateTime<Utc>,
) -> Result<Snapshot> {
    let ids: Vec<&str> = completed.iter().map(WaitpointId::as_str).collect();
    let completed_json = serde_json::to_string(&ids).expect("a list of strings serializes");
    let sql = format!(
        "INSERT INTO run_snapshots ({SNAPSHOT_COLUMNS}) \
         SELECT $1, $2, COALESCE(MAX(seq), 0) + 1, $3, $4, $5, $6, $7 \
         FROM run_snapshots WHERE run_id = $2 \
         RETURNING {SNAPSHOT_COLUMNS}"
    );
    let row = Params::<D>::new()
        .with(snapshot.id.as_str())
        .with(snapshot.run_id.as_str())
        .with(snapshot.status.as_str())
        .with(snapshot.description.as_str())
        .with(snapshot.attempt_number.map(i64::from))
        .with(completed_json)
        .with(ms(now))
        .fetch_one(conn, &sql)
        .await?;
    snapshot_from_row(&row)
}

/// Pending waitpoints: the SQL condition.
const PENDING: &str = "completed_at IS NULL";

#[async_trait]
impl<B: Backend> WaitStore for B {
    async fn waitpoint_create(
        &self,
        waitpoint: &Waitpoint,
        now: DateTime<Utc>,
    ) -> Result<WaitpointCreated> {
        let (store, w) = (self.clone(), waitpoint.clone());
        detached(async move {
            let mut tx = store.begin().await?;
            if let Some(key) = &w.idempotency_key {
                let sql = format!(
                    "SELECT {WAITPOINT_COLUMNS} FROM waitpoints \
                     WHERE environment_id = $1 AND idempotency_key = $2{}",
                    B::D::FOR_UPDATE
                );
                let held = Params::<B::D>::new()
                    .with(w.environment_id.as_str())
                    .with(key.as_str())
                    .fetch_optional(&mut tx, &sql)
                    .await?;
                if let Some(row) = held {
                    let holder = waitpoint_from_row(&row)?;
                    let live = holder.idempotency_key_expires_at.is_none_or(|at| at > now);
                    if live {
                        return Ok(WaitpointCreated::Cached(holder));
                    }
                    Params::<B::D>::new()
                        .with(holder.id.as_str())
                        .with(ms(now))
                        .execute(
                            &mut tx,
                            "UPDATE waitpoints SET idempotency_key = NULL, updated_at = $2 \
                             WHERE id = $1",
                        )
                        .await?;
                }
            }
            let tags = serde_json::to_string(&w.tags).expect("a list of strings serializes");
            let sql = format!(
                "INSERT INTO waitpoints ({WAITPOINT_COLUMNS}, updated_at) VALUES \
                 ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $17)"
            );
            Params::<B::D>::new()
                .with(w.id.as_str())
                .with(w.environment_id.as_str())
                .with(w.kind.as_str())
                .with(w.idempotency_key.as_deref())
                .with(w.idempotency_key_user.as_deref())
                .with(w.idempotency_key_expires_at.map(ms))
                .with(w.completed_by_run.as_ref().map(RunId::as_str))
                .with(w.batch.as_ref().map(|(b, _)| b.as_str()))
                .with(w.batch.as_ref().map(|(_, i)| i64::from(*i)))
                .with(w.completes_at.map(ms))
                .with(w.timeout_at.map(ms))
                .with(w.output.as_deref())
                .with(w.output_type.as_deref())
                .with(w.output_is_error)
                .with(tags)
                .with(w.callback_secret.as_deref())
                .with(ms(w.created_at))
                .with(w.completed_at.map(ms))
                .execute(&mut tx, &sql)
                .await?;
            tx.commit().await?;
            Ok(WaitpointCreated::Created(w))
        })
        .await
    }

    async fn waitpoint_get(
        &self,
        environment: &EnvironmentId,
        id: &WaitpointId,
    ) -> Result<Option<Waitpoint>> {
        let mut conn = self.reader().await?;
        let sql = format!(
            "SELECT {WAITPOINT_COLUMNS} FROM waitpoints WHERE id = $1 AND environment_id = $2"
        );
        Params::<B::D>::new()
            .with(id.as_str())
            .with(environment.as_str())
            .fetch_optional(&mut conn, &sql)
            .await?
            .map(|row| waitpoint_from_row(&row))
            .transpose()
    }

    async fn waitpoints_get(&self, ids: &[WaitpointId]) -> Result<Vec<Waitpoint>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut conn = self.reader().await?;
        let mut p = Params::<B::D>::new();
        let sql = format!(
            "SELECT {WAITPOINT_COLUMNS} FROM waitpoints WHERE id {}",
            p.list(ids.iter().map(WaitpointId::as_str))
        );
        let rows = p.fetch_all(&mut conn, &sql).await?;
        rows.iter().map(waitpoint_from_row).collect()
    }

    async fn token_list(
        &self,
        environment: &EnvironmentId,
        query: &TokenListQuery,
    ) -> Result<Vec<Waitpoint>> {
        let mut p = Params::<B::D>::new();
        let mut sql = format!(
            "SELECT {WAITPOINT_COLUMNS} FROM waitpoints WHERE environment_id = {} AND kind = {}",
            p.bind(environment.as_str()),
            p.bind(WaitpointKind::Manual.as_str()),
        );
        if !query.statuses.is_empty() {
            let conditions: Vec<&str> = query
                .statuses
                .iter()
                .map(|s| match s {
                    TokenStatus::Waiting => "completed_at IS NULL",
                    TokenStatus::Completed => {
                        "(completed_at IS NOT NULL AND NOT (output_is_error AND timeout_at IS NOT NULL))"
                    }
                    TokenStatus::TimedOut => {
                        "(completed_at IS NOT NULL AND output_is_error AND timeout_at IS NOT NULL)"
                    }
                })
                .collect();
            sql.push_str(&format!(" AND ({})", conditions.join(" OR ")));
        }
        if let Some(key) = &query.idempotency_key {
            let key = p.bind(key.as_str());
            sql.push_str(&format!(
                " AND (idempotency_key = {key} OR idempotency_key_user = {key})"
            ));
        }
        if !query.tags.is_empty() {
            let has = B::D::json_array_has_any(
                &mut p,
                "tags",
                query
                    .tags
                    .iter()
                    .map(|t| Cow::Borrowed(t.as_str()))
                    .collect(),
            );
            sql.push_str(&format!(" AND {has}"));
        }
        if let Some(from) = query.created_from {
            sql.push_str(&format!(" AND created_at >= {}", p.bind(ms(from))));
        }
        if let Some(to) = query.created_to {
            sql.push_str(&format!(" AND created_at <= {}", p.bind(ms(to))));
        }
        let order = if let Some(before) = &query.before {
            sql.push_str(&format!(
                " AND id{} > {}",
                B::D::COLLATE_BYTES,
                p.bind(before.as_str())
            ));
            "ASC"
        } else {
            if let Some(after) = &query.after {
                sql.push_str(&format!(
                    " AND id{} < {}",
                    B::D::COLLATE_BYTES,
                    p.bind(after.as_str())
                ));
            }
            "DESC"
        };
        sql.push_str(&format!(
            " ORDER BY id{} {order} LIMIT {}",
            B::D::COLLATE_BYTES,
            p.bind(i64::from(query.limit))
        ));
        let mut conn = self.reader().await?;
        let rows = p.fetch_all(&mut conn, &sql).await?;
        rows.iter().map(waitpoint_from_row).collect()
    }

    async fn waitpoint_complete(
        &self,
        id: &WaitpointId,
        output: &WaitpointOutput,
        now: DateTime<Utc>,
    ) -> Result<Option<Vec<RunId>>> {
        let (store, id, output) = (self.clone(), id.clone(), output.clone());
        detached(async move {
            let mut tx = store.begin().await?;
            let sql = format!(
                "UPDATE waitpoints SET completed_at = $1, updated_at = $1, output = $2, \
                 output_type = $3, output_is_error = $4 WHERE id = $5 AND {PENDING} RETURNING id"
            );
            let done = Params::<B::D>::new()
                .with(ms(now))
                .with(output.output.as_deref())
                .with(output.output_type.as_deref())
                .with(output.is_error)
                .with(id.as_str())
                .fetch_optional(&mut tx, &sql)
                .await?;
            if done.is_none() {
                return Ok(None);
            }
            let rows = Params::<B::D>::new()
                .with(id.as_str())
                .fetch_all(
                    &mut tx,
                    "SELECT run_id FROM run_blockers WHERE waitpoint_id = $1 AND resolved_at IS NULL",
                )
                .await?;
            let runs = rows
                .iter()
                .map(|row| Ok(RunId::from_trusted(row.text("run_id")?)))
                .collect::<Result<Vec<_>>>()?;
            tx.commit().await?;
            Ok(Some(runs))
        })
        .await
    }

    async fn waitpoint_set_run(&self, id: &WaitpointId, run: &RunId) -> Result<()> {
        let mut conn = self.writer().await?;
        Params::<B::D>::new()
            .with(run.as_str())
            .with(id.as_str())
            .execute(
                &mut conn,
                "UPDATE waitpoints SET completed_by_run_id = $1 WHERE id = $2",
            )
            .await?;
        Ok(())
    }

    async fn waitpoints_of_run(&self, run: &RunId) -> Result<Vec<WaitpointId>> {
        let mut conn = self.reader().await?;
        let sql = format!("SELECT id FROM waitpoints WHERE completed_by_run_id = $1 AND {PENDING}");
        let rows = Params::<B::D>::new()
            .with(run.as_str())
            .fetch_all(&mut conn, &sql)
            .await?;
        rows.iter()
            .map(|row| Ok(WaitpointId::from_trusted(row.text("id")?)))
            .collect()
    }

    async fn waitpoint_of_batch_item(
        &self,
        batch: &BatchId,
        index: u32,
    ) -> Result<Option<WaitpointId>> {
        let mut conn = self.reader().await?;
        let sql =
            "SELECT id FROM waitpoints WHERE batch_id = $1 AND batch_index = $2 AND kind = $3";
        let row = Params::<B::D>::new()
            .with(batch.as_str())
            .with(i64::from(index))
            .with(WaitpointKind::Run.as_str())
            .fetch_optional(&mut conn, sql)
            .await?;
        row.map(|row| Ok(WaitpointId::from_trusted(row.text("id")?)))
            .transpose()
    }

    async fn waitpoints_due(&self, now: DateTime<Utc>, limit: u32) -> Result<Vec<Waitpoint>> {
        let mut conn = self.reader().await?;
        let sql = format!(
            "SELECT {WAITPOINT_COLUMNS} FROM waitpoints WHERE id IN ( \
               SELECT id FROM waitpoints WHERE {PENDING} AND completes_at IS NOT NULL AND completes_at <= $1 \
               UNION \
               SELECT id FROM waitpoints WHERE {PENDING} AND timeout_at IS NOT NULL AND timeout_at <= $1) \
             LIMIT $2"
        );
        let rows = Params::<B::D>::new()
            .with(ms(now))
            .with(i64::from(limit))
            .fetch_all(&mut conn, &sql)
            .await?;
        rows.iter().map(waitpoint_from_row).collect()
    }

    async fn waitpoint_next_due(&self) -> Result<Option<DateTime<Utc>>> {
        let mut conn = self.reader().await?;
        let sql = format!(
            "SELECT min(t) AS t FROM ( \
               SELECT min(completes_at) AS t FROM waitpoints WHERE {PENDING} AND completes_at IS NOT NULL \
               UNION ALL \
               SELECT min(timeout_at) AS t FROM waitpoints WHERE {PENDING} AND timeout_at IS NOT NULL \
             ) AS due"
        );
        let row = Params::<B::D>::new().fetch_one(&mut conn, &sql).await?;
        row.opt_time("t")
    }

    async fn waitpoints_stranded(
        &self,
        orphaned_before: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<(WaitpointId, Option<RunId>)>> {
        let mut conn = self.reader().await?;
        let finals: Vec<RunStatus> = RunStatus::ALL
            .into_iter()
            .filter(|s| s.is_final())
            .collect();
        let sql = format!(
            "SELECT w.id AS id, r.id AS run_id FROM waitpoints w \
             LEFT JOIN runs r ON r.id = w.completed_by_run_id \
             WHERE w.kind = $1 AND w.{PENDING} AND ( \
               r.status IN {} \
               OR (r.id IS NULL AND w.batch_id IS NULL AND w.created_at < $2)) \
             LIMIT $3",
            statuses(&finals)
        );
        let rows = Params::<B::D>::new()
            .with(WaitpointKind::Run.as_str())
            .with(ms(orphaned_before))
            .with(i64::from(limit))
            .fetch_all(&mut conn, &sql)
            .await?;
        rows.iter()
            .map(|row| {
                Ok((
                    WaitpointId::from_trusted(row.text("id")?),
                    row.opt_text("run_id")?.map(RunId::from_trusted),
                ))
            })
            .collect()
    }

    async fn run_block(
        &self,
        environment: &EnvironmentId,
        run: &RunId,
        waitpoints: &[WaitpointId],
        snapshot: &NewSnapshot,
        now: DateTime<Utc>,
    ) -> Result<BlockOutcome> {
        let (store, environment, run, waitpoints, snapshot) = (
            self.clone(),
            environment.clone(),
            run.clone(),
            waitpoints.to_vec(),
            snapshot.clone(),
        );
        detached(async move {
            let mut tx = store.begin().await?;
            let sql = format!(
                "SELECT status, current_attempt_id FROM runs WHERE id = $1 AND environment_id = $2{}",
                B::D::FOR_UPDATE
            );
            let Some(row) = Params::<B::D>::new()
                .with(run.as_str())
                .with(environment.as_str())
                .fetch_optional(&mut tx, &sql)
                .await?
            else {
                return Ok(BlockOutcome::NotFound);
            };
            let current = run_status(&row.text("status")?)?;
            if !matches!(current, RunStatus::Executing | RunStatus::WaitingToResume) {
                return Ok(BlockOutcome::NotBlockable(current));
            }
            for waitpoint in &waitpoints {
                Params::<B::D>::new()
                    .with(run.as_str())
                    .with(waitpoint.as_str())
                    .with(ms(now))
                    .execute(
                        &mut tx,
                        "INSERT INTO run_blockers (run_id, waitpoint_id, created_at) \
                         VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                    )
                    .await?;
            }
            let mut appended = None;
            if current == RunStatus::Executing {
                let sql = format!(
                    "UPDATE runs SET status = {}, updated_at = $1 WHERE id = $2 AND status = {}",
                    status(RunStatus::WaitingToResume),
                    status(RunStatus::Executing)
                );
                Params::<B::D>::new()
                    .with(ms(now))
                    .with(run.as_str())
                    .execute(&mut tx, &sql)
                    .await?;
                if let Some(attempt) = row.opt_text("current_attempt_id")? {
                    Params::<B::D>::new()
                        .with(ms(now))
                        .with(attempt.as_str())
                        .execute(
                            &mut tx,
                            "UPDATE attempts SET waiting_since = COALESCE(waiting_since, $1) WHERE id = $2",
                        )
                        .await?;
                }
                appended = Some(append::<B::D>(&mut tx, &snapshot, &[], now).await?);
            }
            tx.commit().await?;
            Ok(BlockOutcome::Blocked { snapshot: appended })
        })
        .await
    }

    async fn run_resume(
        &self,
        run: &RunId,
        snapshot: &NewSnapshot,
        lease_until: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<Option<Snapshot>> {
        let (store, run, snapshot) = (self.clone(), run.clone(), snapshot.clone());
        detached(async move {
            let mut tx = store.begin().await?;
            // Moves the run only when none of its blockers is pending, in the statement
            // that takes its row lock.
            let sql = format!(
                "UPDATE runs SET status = {}, updated_at = $1, lease_expires_at = $2 \
                 WHERE id = $3 AND status = {} AND NOT EXISTS ( \
                   SELECT 1 FROM run_blockers b JOIN waitpoints w ON w.id = b.waitpoint_id \
                   WHERE b.run_id = $3 AND b.resolved_at IS NULL AND w.{PENDING}) \
                 RETURNING current_attempt_id",
                status(RunStatus::Executing),
                status(RunStatus::WaitingToResume),
            );
            let Some(row) = Params::<B::D>::new()
                .with(ms(now))
                .with(ms(lease_until))
                .with(run.as_str())
                .fetch_optional(&mut tx, &sql)
                .await?
            else {
                return Ok(None);
            };
            if let Some(attempt) = row.opt_text("current_attempt_id")? {
                // The wait is not compute time; the maxDuration deadline moves by it.
                let waited = Params::<B::D>::new()
                    .with(attempt.as_str())
                    .fetch_optional(
                        &mut tx,
                        "SELECT waiting_since FROM attempts WHERE id = $1",
                    )
                    .await?
                    .map(|row| row.opt_int("waiting_since"))
                    .transpose()?
                    .flatten()
                    .map_or(0, |since| (ms(now) - since).max(0));
                let sql = format!(
                    "UPDATE attempts SET waited_ms = waited_ms + $1, waiting_since = NULL \
                     WHERE id = $2 AND status = {}",
                    attempt_status(AttemptStatus::Executing)
                );
                Params::<B::D>::new()
                    .with(waited)
                    .with(attempt.as_str())
                    .execute(&mut tx, &sql)
                    .await?;
                Params::<B::D>::new()
                    .with(waited)
                    .with(run.as_str())
                    .execute(
                        &mut tx,
                        "UPDATE runs SET timeout_at = timeout_at + $1 \
                         WHERE id = $2 AND timeout_at IS NOT NULL",
                    )
                    .await?;
            }
            let rows = Params::<B::D>::new()
                .with(run.as_str())
                .fetch_all(
                    &mut tx,
                    "SELECT waitpoint_id FROM run_blockers WHERE run_id = $1 AND resolved_at IS NULL \
                     ORDER BY created_at, waitpoint_id",
                )
                .await?;
            let completed = rows
                .iter()
                .map(|row| Ok(WaitpointId::from_trusted(row.text("waitpoint_id")?)))
                .collect::<Result<Vec<_>>>()?;
            Params::<B::D>::new()
                .with(ms(now))
                .with(run.as_str())
                .execute(
                    &mut tx,
                    "UPDATE run_blockers SET resolved_at = $1 WHERE run_id = $2 AND resolved_at IS NULL",
                )
                .await?;
            let appended = append::<B::D>(&mut tx, &snapshot, &completed, now).await?;
            tx.commit().await?;
            Ok(Some(appended))
        })
        .await
    }

    async fn runs_resumable(&self, limit: u32) -> Result<Vec<RunId>> {
        let mut conn = self.reader().await?;
        let sql = format!(
            "SELECT r.id AS id FROM runs r WHERE r.status = {} AND NOT EXISTS ( \
               SELECT 1 FROM run_blockers b JOIN waitpoints w ON w.id = b.waitpoint_id \
               WHERE b.run_id = r.id AND b.resolved_at IS NULL AND w.{PENDING}) \
             LIMIT $1",
            status(RunStatus::WaitingToResume)
        );
        let rows = Params::<B::D>::new()
            .with(i64::from(limit))
            .fetch_all(&mut conn, &sql)
            .await?;
        rows.iter()
            .map(|row| Ok(RunId::from_trusted(row.text("id")?)))
            .collect()
    }

    async fn run_blockers(&self, run: &RunId) -> Result<Vec<Waitpoint>> {
        let mut conn = self.reader().await?;
        let columns: Vec<String> = WAITPOINT_COLUMNS
            .split(", ")
            .map(|c| format!("w.{}", c.trim()))
            .collect();
        let sql = format!(
            "SELECT {} FROM run_blockers b JOIN waitpoints w ON w.id = b.waitpoint_id \
             WHERE b.run_id = $1 AND b.resolved_at IS NULL ORDER BY b.created_at, w.id",
            columns.join(", ")
        );
        let rows = Params::<B::D>::new()
            .with(run.as_str())
            .fetch_all(&mut conn, &sql)
            .await?;
        rows.iter().map(waitpoint_from_row).collect()
    }

    async fn snapshot_append(&self, snapshots: &[NewSnapshot], now: DateTime<Utc>) -> Result<()> {
        if snapshots.is_empty() {
            return Ok(());
        }
        let (store, snapshots) = (self.clone(), snapshots.to_vec());
        detached(async move {
            let mut tx = store.begin().await?;
            for snapshot in &snapshots {
                append::<B::D>(&mut tx, snapshot, &[], now).await?;
            }
            tx.commit().await?;
            Ok(())
        })
        .await
    }

    async fn snapshot_latest(&self, run: &RunId) -> Result<Option<Snapshot>> {
        let mut conn = self.reader().await?;
        let sql = format!(
            "SELECT {SNAPSHOT_COLUMNS} FROM run_snapshots WHERE run_id = $1 ORDER BY seq DESC LIMIT 1"
        );
        Params::<B::D>::new()
            .with(run.as_str())
            .fetch_optional(&mut conn, &sql)
            .await?
            .map(|row| snapshot_from_row(&row))
            .transpose()
    }

    async fn snapshot_list(&self, run: &RunId) -> Result<Vec<Snapshot>> {
        let mut conn = self.reader().await?;
        let sql =
            format!("SELECT {SNAPSHOT_COLUMNS} FROM run_snapshots WHERE run_id = $1 ORDER BY seq");
        let rows = Params::<B::D>::new()
            .with(run.as_str())
            .fetch_all(&mut conn, &sql)
            .await?;
        rows.iter().map(snapshot_from_row).collect()
    }
}
