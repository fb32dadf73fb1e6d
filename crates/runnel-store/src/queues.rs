//! Queues as stored things ([`QueueStore`], written once for both backends): declared
//! by registrations, listed, paused, resumed and limited through the API. How a dequeue
//! honours their pause flags and limits is `admission.rs`.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use runnel_core::{EnvironmentId, QueueId, RunStatus};

use crate::backend::Backend;
use crate::detach::detached;
use crate::rows::{ms, Columns};
use crate::sql::rows_per_statement;
use crate::sql::{self, Conn, Dialect, Params};
use crate::{QueueStore, Result};

/// Whether a queue is a task's own queue or a named one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueKind {
    /// `task/<taskId>`: every task has one.
    Task,
    /// Declared by name (a task's `queue`, a registration's `queues`, a trigger's
    /// `queue.name`).
    Custom,
}

impl QueueKind {
    pub fn as_str(self) -> &'static str {
        match self {
            QueueKind::Task => "task",
            QueueKind::Custom => "custom",
        }
    }

    /// The kind of a full queue name.
    pub fn of(name: &str) -> QueueKind {
        if runnel_core::queue::is_task_queue(name) {
            QueueKind::Task
        } else {
            QueueKind::Custom
        }
    }
}

/// A queue a registration declares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueDeclaration {
    /// The full name (`task/<taskId>` for a task's own queue).
    pub name: String,
    /// `Some(limit)`: the registration states the queue's limit (`Some(None)` = none),
    /// which replaces the registered one. `None`: the queue is only referenced (by a
    /// task); it is created when missing and its limit stays as it was.
    pub concurrency_limit: Option<Option<u32>>,
}

/// A stored queue with its current counts.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueRecord {
    pub id: QueueId,
    pub environment_id: EnvironmentId,
    /// The full name (`task/<taskId>` for a task queue).
    pub name: String,
    pub kind: QueueKind,
    /// From registration.
    pub concurrency_limit: Option<u32>,
    /// From the API; wins over the registered limit while set.
    pub concurrency_limit_override: Option<u32>,
    pub overridden_at: Option<DateTime<Utc>>,
    pub paused: bool,
    /// Runs held by workers (DEQUEUED or EXECUTING).
    pub running: u64,
    /// Runs waiting (QUEUED).
    pub queued: u64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl QueueRecord {
    /// The limit dequeue applies: the override, else the registered limit.
    pub fn effective_limit(&self) -> Option<u32> {
        self.concurrency_limit_override.or(self.concurrency_limit)
    }
}

/// How the API names a queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueueRef {
    Id(String),
    /// The full stored name (`task/<taskId>` or the custom name).
    Name(String),
}

/// A change the queues API makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueChange {
    Pause,
    Resume,
    Override(u32),
    ResetOverride,
}

/// The declarations a registration makes: each task's queue (referenced) and the
/// registration's `queues` list (limit stated), merged by name.
pub fn declarations(
    task_queues: impl IntoIterator<Item = String>,
    declared: impl IntoIterator<Item = (String, Option<u32>)>,
) -> Vec<QueueDeclaration> {
    let mut out: Vec<QueueDeclaration> = Vec::new();
    for name in task_queues {
        if !out.iter().any(|d| d.name == name) {
            out.push(QueueDeclaration {
                name,
                concurrency_limit: None,
            });
        }
    }
    for (name, limit) in declared {
        match out.iter_mut().find(|d| d.name == name) {
            Some(d) => d.concurrency_limit = Some(limit),
            None => out.push(QueueDeclaration {
                name,
                concurrency_limit: Some(limit),
            }),
        }
    }
    out
}

/// The columns [`queue_from_row`] reads, over `queues q` (the counts use the partial
/// indexes on `runs`).
fn queue_columns() -> String {
    format!(
        "q.id, q.environment_id, q.name, q.type, q.concurrency_limit, \
         q.concurrency_limit_override, q.overridden_at, q.paused, q.created_at, q.updated_at, \
         (SELECT count(*) FROM runs r WHERE r.environment_id = q.environment_id AND r.queue = q.name \
          AND r.status IN {}) AS running, \
         (SELECT count(*) FROM runs r WHERE r.environment_id = q.environment_id AND r.queue = q.name \
          AND r.status = {}) AS queued",
        sql::statuses(&[RunStatus::Dequeued, RunStatus::Executing]),
        sql::status(RunStatus::Queued)
    )
}

fn queue_from_row(row: &impl crate::rows::Columns) -> crate::Result<QueueRecord> {
    let limit = |column: &str| -> crate::Result<Option<u32>> {
        Ok(row
            .opt_int(column)?
            .map(|n| u32::try_from(n.max(0)).unwrap_or(u32::MAX)))
    };
    let kind = match row.text("type")?.as_str() {
        "task" => QueueKind::Task,
        "custom" => QueueKind::Custom,
        other => return Err(crate::Error::Corrupt(format!("queue type {other:?}"))),
    };
    Ok(QueueRecord {
        id: QueueId::from_trusted(row.text("id")?),
        environment_id: EnvironmentId::from_trusted(row.text("environment_id")?),
        name: row.text("name")?,
        kind,
        concurrency_limit: limit("concurrency_limit")?,
        concurrency_limit_override: limit("concurrency_limit_override")?,
        overridden_at: row.opt_time("overridden_at")?,
        paused: row.flag("paused")?,
        running: u64::try_from(row.int("running")?).unwrap_or(0),
        queued: u64::try_from(row.int("queued")?).unwrap_or(0),
        created_at: row.time("created_at")?,
        updated_at: row.time("updated_at")?,
    })
}

/// The column and value that pick one queue by [`QueueRef`].
fn ref_column(queue: &QueueRef) -> (&'static str, &str) {
    match queue {
        QueueRef::Id(id) => ("id", id.as_str()),
        QueueRef::Name(name) => ("name", name.as_str()),
    }
}

#[async_trait]
impl<B: Backend> QueueStore for B {
    async fn queue_declare(
        &self,
        environment: &EnvironmentId,
        declarations: &[QueueDeclaration],
        now: DateTime<Utc>,
    ) -> Result<()> {
        if declarations.is_empty() {
            return Ok(());
        }
        // Referenced queues are created when missing; a stated limit replaces the
        // registered one. Of two statements of one name the later wins (and one upsert
        // may not meet a row twice on PostgreSQL).
        let (mut referenced, mut stated) = (Vec::new(), Vec::<QueueDeclaration>::new());
        for d in declarations {
            if d.concurrency_limit.is_some() {
                stated.retain(|s| s.name != d.name);
                stated.push(d.clone());
            } else {
                referenced.push(d.clone());
            }
        }
        let (store, environment) = (self.clone(), environment.clone());
        detached(async move {
            let mut tx = store.begin().await?;
            insert_queues::<B::D>(&mut tx, &environment, &referenced, "DO NOTHING", now).await?;
            insert_queues::<B::D>(
                &mut tx,
                &environment,
                &stated,
                "DO UPDATE SET concurrency_limit = excluded.concurrency_limit, \
                 updated_at = excluded.updated_at",
                now,
            )
            .await?;
            tx.commit().await?;
            Ok(())
        })
        .await
    }

    async fn queue_list(
        &self,
        environment: &EnvironmentId,
        offset: u64,
        limit: u32,
    ) -> Result<(Vec<QueueRecord>, u64)> {
        let mut conn = self.reader().await?;
        let total = Params::<B::D>::new()
            .with(environment.as_str())
            .fetch_one(
                &mut conn,
                "SELECT count(*) AS total FROM queues WHERE environment_id = $1",
            )
            .await?
            .int("total")?;
        let sql = format!(
            "SELECT {} FROM queues q WHERE q.environment_id = $1 \
             ORDER BY q.name{} LIMIT $2 OFFSET $3",
            queue_columns(),
            B::D::COLLATE_BYTES
        );
        let rows = Params::<B::D>::new()
            .with(environment.as_str())
            .with(i64::from(limit))
            .with(i64::try_from(offset).unwrap_or(i64::MAX))
            .fetch_all(&mut conn, &sql)
            .await?;
        let queues = rows.iter().map(queue_from_row).collect::<Result<_>>()?;
        Ok((queues, u64::try_from(total).unwrap_or(0)))
    }

    async fn queue_get(
        &self,
        environment: &EnvironmentId,
        queue: &QueueRef,
    ) -> Result<Option<QueueRecord>> {
        let mut conn = self.reader().await?;
        queue_get::<B::D>(&mut conn, environment, queue).await
    }

    async fn queue_update(
        &self,
        environment: &EnvironmentId,
        queue: &QueueRef,
        change: QueueChange,
        now: DateTime<Utc>,
    ) -> Result<Option<QueueRecord>> {
        let mut p = Params::<B::D>::new();
        let now = p.bind(ms(now));
        let set = match change {
            QueueChange::Pause => format!("paused = {}", p.bind(true)),
            QueueChange::Resume => format!("paused = {}", p.bind(false)),
            QueueChange::Override(limit) => format!(
                "concurrency_limit_override = {}, overridden_at = {now}",
                p.bind(i64::from(limit))
            ),
            QueueChange::ResetOverride => {
                "concurrency_limit_override = NULL, overridden_at = NULL".to_owned()
            }
        };
        let (column, value) = ref_column(queue);
        let sql = format!(
            "UPDATE queues SET {set}, updated_at = {now} \
             WHERE environment_id = {} AND {column} = {} RETURNING id",
            p.bind(environment.as_str()),
            p.bind(value)
        );
        // Read back on the connection that wrote.
        let mut conn = self.writer().await?;
        match p.fetch_optional(&mut conn, &sql).await? {
            Some(row) => {
                let id = QueueRef::Id(row.text("id")?);
                queue_get::<B::D>(&mut conn, environment, &id).await
            }
            None => Ok(None),
        }
    }
}

/// One queue of `environment`, with its counts.
async fn queue_get<D: Dialect>(
    conn: &mut Conn<D>,
    environment: &EnvironmentId,
    queue: &QueueRef,
) -> Result<Option<QueueRecord>> {
    let (column, value) = ref_column(queue);
    let sql = format!(
        "SELECT {} FROM queues q WHERE q.environment_id = $1 AND q.{column} = $2",
        queue_columns()
    );
    let row = Params::<D>::new()
        .with(environment.as_str())
        .with(value)
        .fetch_optional(conn, &sql)
        .await?;
    row.as_ref().map(queue_from_row).transpose()
}

/// Inserts the queues `declarations` name, `on_conflict` deciding what happens to those
/// that exist: one multi-row `INSERT` per chunk that fits the bind-parameter limit.
async fn insert_queues<D: Dialect>(
    conn: &mut Conn<D>,
    environment: &EnvironmentId,
    declarations: &[QueueDeclaration],
    on_conflict: &str,
    now: DateTime<Utc>,
) -> Result<()> {
    for chunk in declarations.chunks(rows_per_statement(D::MAX_BINDS, 7)) {
        let mut p = Params::<D>::sequential();
        let values: Vec<String> = chunk
            .iter()
            .map(|d| {
                p.row([
                    QueueId::generate(ms(now)).to_string().into(),
                    environment.as_str().into(),
                    d.name.as_str().into(),
                    QueueKind::of(&d.name).as_str().into(),
                    d.concurrency_limit.flatten().map(i64::from).into(),
                    ms(now).into(),
                    ms(now).into(),
                ] as [sql::Value<'_>; 7])
            })
            .collect();
        let sql = format!(
            "INSERT INTO queues (id, environment_id, name, type, concurrency_limit, created_at, \
             updated_at) VALUES {} ON CONFLICT (environment_id, name) {on_conflict}",
            values.join(", ")
        );
        p.execute(conn, &sql).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn declarations_merge_task_queues_with_stated_limits() {
        let got = declarations(
            [
                "task/a".to_owned(),
                "emails".to_owned(),
                "emails".to_owned(),
            ],
            [("emails".to_owned(), Some(2)), ("other".to_owned(), None)],
        );
        assert_eq!(
            got,
            vec![
                QueueDeclaration {
                    name: "task/a".into(),
                    concurrency_limit: None
                },
                QueueDeclaration {
                    name: "emails".into(),
                    concurrency_limit: Some(Some(2))
                },
                QueueDeclaration {
                    name: "other".into(),
                    concurrency_limit: Some(None)
                },
            ]
        );
    }
}
