//! Registered workers and the versions and tasks they serve ([`WorkerStore`]), written
//! once for both backends.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use runnel_core::{EnvironmentId, RunId, RunStatus, WorkerId};

use crate::backend::Backend;
use crate::detach::detached;
use crate::rows::{self, ms, task_config_from_row, Columns};
use crate::sql::{status, Dialect, Params};
use crate::{Registered, Result, WorkerRecord, WorkerRegistration, WorkerStore};

#[async_trait]
impl<B: Backend> WorkerStore for B {
    async fn worker_register(
        &self,
        registration: &WorkerRegistration,
        now: DateTime<Utc>,
    ) -> Result<Registered> {
        let (store, registration) = (self.clone(), registration.clone());
        detached(async move {
            let env = registration.environment_id.as_str();
            let mut tx = store.begin().await?;
            // Registrations of one environment take turns, so two never pick one version.
            let sql = format!(
                "SELECT id FROM environments WHERE id = $1{}",
                B::D::FOR_UPDATE
            );
            Params::<B::D>::new()
                .with(env)
                .execute(&mut tx, &sql)
                .await?;
            let version = match &registration.version {
                Some(version) => version.clone(),
                None => {
                    let rows = Params::<B::D>::new()
                        .with(env)
                        .with(rows::version_pattern(now))
                        .fetch_all(
                            &mut tx,
                            "SELECT version FROM worker_versions \
                             WHERE environment_id = $1 AND version LIKE $2",
                        )
                        .await?;
                    let existing = rows
                        .iter()
                        .map(|row| row.text("version"))
                        .collect::<sqlx::Result<Vec<_>>>()?;
                    rows::next_version(now, &existing)
                }
            };
            Params::<B::D>::new()
                .with(env)
                .with(version.as_str())
                .with(ms(now))
                .execute(
                    &mut tx,
                    "INSERT INTO worker_versions (environment_id, version, created_at) \
                     VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                )
                .await?;
            for task in &registration.tasks {
                Params::<B::D>::new()
                    .with(env)
                    .with(task.task_identifier.as_str())
                    .with(version.as_str())
                    .with(task.queue.as_str())
                    .with(rows::retry_text(task))
                    .with(task.max_duration_secs.map(i64::from))
                    .with(task.machine.map(|m| m.as_str()))
                    .with(task.file_path.as_deref())
                    .with(task.scheduled)
                    .execute(
                        &mut tx,
                        "INSERT INTO worker_tasks (environment_id, task_identifier, version, queue, \
                         retry, max_duration_secs, machine, file_path, scheduled) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
                         ON CONFLICT (environment_id, task_identifier, version) DO UPDATE SET \
                         queue = excluded.queue, retry = excluded.retry, \
                         max_duration_secs = excluded.max_duration_secs, machine = excluded.machine, \
                         file_path = excluded.file_path, scheduled = excluded.scheduled",
                    )
                    .await?;
            }
            let task_ids: Vec<&str> = registration
                .tasks
                .iter()
                .map(|t| t.task_identifier.as_str())
                .collect();
            Params::<B::D>::new()
                .with(registration.id.as_str())
                .with(env)
                .with(registration.name.as_str())
                .with(version.as_str())
                .with(serde_json::to_string(&task_ids).expect("strings serialize"))
                .with(ms(now))
                .execute(
                    &mut tx,
                    "INSERT INTO workers (id, environment_id, name, version, tasks, created_at, \
                     last_seen_at) VALUES ($1, $2, $3, $4, $5, $6, $6)",
                )
                .await?;
            let mut promoted = Vec::new();
            if !task_ids.is_empty() {
                let mut p = Params::<B::D>::new();
                let sql = format!(
                    "UPDATE runs SET status = {}, updated_at = {} \
                     WHERE environment_id = {} AND status = {} AND task_identifier {} \
                     AND (lock_to_version IS NULL OR lock_to_version = {}) RETURNING id",
                    status(RunStatus::Queued),
                    p.bind(ms(now)),
                    p.bind(env),
                    status(RunStatus::PendingVersion),
                    p.list(task_ids.iter().copied()),
                    p.bind(version.as_str()),
                );
                for row in p.fetch_all(&mut tx, &sql).await? {
                    promoted.push(RunId::from_trusted(row.text("id")?));
                }
            }
            crate::schedules::sync_declared::<B::D>(
                &mut tx,
                &registration.environment_id,
                &registration.schedules,
                now,
            )
            .await?;
            tx.commit().await?;
            Ok(Registered { version, promoted })
        })
        .await
    }

    async fn worker_get(&self, id: &WorkerId) -> Result<Option<WorkerRecord>> {
        let mut conn = self.reader().await?;
        let row = Params::<B::D>::new()
            .with(id.as_str())
            .fetch_optional(
                &mut conn,
                "SELECT environment_id, name, version, tasks, created_at FROM workers WHERE id = $1",
            )
            .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let (environment_id, version) = (row.text("environment_id")?, row.text("version")?);
        let served = rows::task_list(&row.text("tasks")?)?;
        let mut p = Params::<B::D>::new();
        let sql = format!(
            "SELECT task_identifier, queue, retry, max_duration_secs, machine, file_path, scheduled FROM worker_tasks \
             WHERE environment_id = {} AND version = {} AND task_identifier {} \
             ORDER BY task_identifier{}",
            p.bind(environment_id.as_str()),
            p.bind(version.as_str()),
            p.list(served.iter().map(String::as_str)),
            B::D::COLLATE_BYTES,
        );
        let tasks = p
            .fetch_all(&mut conn, &sql)
            .await?
            .iter()
            .map(task_config_from_row)
            .collect::<Result<Vec<_>>>()?;
        Ok(Some(WorkerRecord {
            id: id.clone(),
            environment_id: EnvironmentId::from_trusted(environment_id),
            name: row.text("name")?,
            version,
            tasks,
            created_at: row.time("created_at")?,
        }))
    }

    async fn task_served(
        &self,
        environment: &EnvironmentId,
        task: &str,
        version: Option<&str>,
    ) -> Result<bool> {
        let mut conn = self.reader().await?;
        let row = Params::<B::D>::new()
            .with(environment.as_str())
            .with(task)
            .with(version)
            .fetch_one(
                &mut conn,
                "SELECT EXISTS (SELECT 1 FROM worker_tasks WHERE environment_id = $1 \
                 AND task_identifier = $2 AND (CAST($3 AS TEXT) IS NULL OR version = $3)) AS served",
            )
            .await?;
        Ok(row.flag("served")?)
    }

    async fn task_queue(
        &self,
        environment: &EnvironmentId,
        task: &str,
        version: Option<&str>,
    ) -> Result<Option<String>> {
        let mut conn = self.reader().await?;
        let sql = format!(
            "SELECT t.queue FROM worker_tasks t JOIN worker_versions v \
             ON v.environment_id = t.environment_id AND v.version = t.version \
             WHERE t.environment_id = $1 AND t.task_identifier = $2 \
             AND (CAST($3 AS TEXT) IS NULL OR t.version = $3) \
             ORDER BY v.created_at DESC, v.version{} DESC LIMIT 1",
            B::D::COLLATE_BYTES
        );
        let row = Params::<B::D>::new()
            .with(environment.as_str())
            .with(task)
            .with(version)
            .fetch_optional(&mut conn, &sql)
            .await?;
        Ok(row.map(|row| row.text("queue")).transpose()?)
    }
}
