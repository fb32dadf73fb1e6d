//! The project, its environments and their secret keys ([`KeyStore`]), written once for
//! both backends.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use runnel_core::key::{EnvironmentKind, SecretKey};
use runnel_core::tenancy::{ApiKeyInfo, Environment, Project};
use runnel_core::{EnvironmentId, ProjectId};

use crate::backend::Backend;
use crate::detach::detached;
use crate::rows::{self, api_key_info_from_row, environment_from_row, ms, project_from_row};
use crate::sql::{Conn, Dialect, Params};
use crate::{Bootstrap, KeyStore, Result, RevokeOutcome};

#[async_trait]
impl<B: Backend> KeyStore for B {
    async fn project_bootstrap(
        &self,
        dev_key: &SecretKey,
        now: DateTime<Utc>,
    ) -> Result<Option<Bootstrap>> {
        let (store, dev_key) = (self.clone(), dev_key.clone());
        detached(async move {
            let mut tx = store.begin().await?;
            store.serialize_bootstrap(&mut tx).await?;
            let existing = Params::<B::D>::new()
                .fetch_optional(&mut tx, "SELECT id FROM projects LIMIT 1")
                .await?;
            if existing.is_some() {
                return Ok(None);
            }
            let project = Project {
                id: ProjectId::generate(ms(now)),
                created_at: now,
            };
            Params::<B::D>::new()
                .with(project.id.as_str())
                .with(ms(now))
                .execute(
                    &mut tx,
                    "INSERT INTO projects (id, created_at) VALUES ($1, $2)",
                )
                .await?;
            let mut environments = Vec::new();
            for kind in EnvironmentKind::ALL {
                let environment = Environment {
                    id: EnvironmentId::generate(ms(now)),
                    project_id: project.id.clone(),
                    kind,
                };
                Params::<B::D>::new()
                    .with(environment.id.as_str())
                    .with(project.id.as_str())
                    .with(kind.slug())
                    .with(ms(now))
                    .execute(
                        &mut tx,
                        "INSERT INTO environments (id, project_id, kind, created_at) \
                         VALUES ($1, $2, $3, $4)",
                    )
                    .await?;
                environments.push(environment);
            }
            let dev = environments
                .iter()
                .find(|e| e.kind == EnvironmentKind::Dev)
                .expect("every kind was created");
            insert_key::<B::D>(&mut tx, &dev_key, &dev.id, now).await?;
            tx.commit().await?;
            Ok(Some(Bootstrap {
                project,
                environments,
            }))
        })
        .await
    }

    async fn project_get(&self) -> Result<Option<Project>> {
        let mut conn = self.reader().await?;
        let row = Params::<B::D>::new()
            .fetch_optional(
                &mut conn,
                "SELECT id, created_at FROM projects ORDER BY created_at LIMIT 1",
            )
            .await?;
        row.as_ref().map(project_from_row).transpose()
    }

    async fn environment_get(&self, kind: EnvironmentKind) -> Result<Option<Environment>> {
        let mut conn = self.reader().await?;
        let row = Params::<B::D>::new()
            .with(kind.slug())
            .fetch_optional(
                &mut conn,
                "SELECT id, project_id, kind FROM environments WHERE kind = $1",
            )
            .await?;
        row.as_ref().map(environment_from_row).transpose()
    }

    async fn api_key_insert(
        &self,
        key: &SecretKey,
        environment: &EnvironmentId,
        now: DateTime<Utc>,
    ) -> Result<()> {
        let mut conn = self.writer().await?;
        insert_key::<B::D>(&mut conn, key, environment, now).await
    }

    async fn api_key_authenticate(&self, key_hash: &str) -> Result<Option<Environment>> {
        let mut conn = self.reader().await?;
        let row = Params::<B::D>::new()
            .with(key_hash)
            .fetch_optional(
                &mut conn,
                "SELECT e.id, e.project_id, e.kind FROM api_keys k \
                 JOIN environments e ON e.id = k.environment_id \
                 WHERE k.key_hash = $1 AND k.revoked_at IS NULL",
            )
            .await?;
        row.as_ref().map(environment_from_row).transpose()
    }

    async fn api_key_list(&self) -> Result<Vec<ApiKeyInfo>> {
        let mut conn = self.reader().await?;
        let sql = format!(
            "SELECT k.prefix, e.kind, k.created_at, k.revoked_at FROM api_keys k \
             JOIN environments e ON e.id = k.environment_id \
             ORDER BY k.created_at, k.prefix{}",
            B::D::COLLATE_BYTES
        );
        let rows = Params::<B::D>::new().fetch_all(&mut conn, &sql).await?;
        rows.iter().map(api_key_info_from_row).collect()
    }

    async fn api_key_revoke(&self, prefix: &str, now: DateTime<Utc>) -> Result<RevokeOutcome> {
        if prefix.is_empty() {
            return Ok(RevokeOutcome::NotFound);
        }
        let (store, prefix) = (self.clone(), prefix.to_owned());
        detached(async move {
            let mut tx = store.begin().await?;
            // "Starts with" without LIKE's wildcards. The row lock makes a concurrent
            // revoke of the same key wait, then find it revoked.
            let sql = format!(
                "SELECT key_hash, prefix FROM api_keys \
                 WHERE revoked_at IS NULL AND substr(prefix, 1, length($1)) = $1{}",
                B::D::FOR_UPDATE
            );
            let found = Params::<B::D>::new()
                .with(prefix.as_str())
                .fetch_all(&mut tx, &sql)
                .await?;
            let outcome = match found.as_slice() {
                [] => RevokeOutcome::NotFound,
                [row] => {
                    use rows::Columns;
                    Params::<B::D>::new()
                        .with(ms(now))
                        .with(row.text("key_hash")?)
                        .execute(
                            &mut tx,
                            "UPDATE api_keys SET revoked_at = $1 WHERE key_hash = $2",
                        )
                        .await?;
                    RevokeOutcome::Revoked {
                        prefix: row.text("prefix")?,
                    }
                }
                many => RevokeOutcome::Ambiguous {
                    matches: many.len(),
                },
            };
            tx.commit().await?;
            Ok(outcome)
        })
        .await
    }

    async fn api_key_hashes(
        &self,
        environment: &EnvironmentId,
    ) -> Result<Option<(Environment, Vec<String>)>> {
        use rows::Columns;
        let mut conn = self.reader().await?;
        let sql = format!(
            "SELECT e.id, e.project_id, e.kind, k.key_hash FROM environments e \
             LEFT JOIN api_keys k ON k.environment_id = e.id AND k.revoked_at IS NULL \
             WHERE e.id = $1 ORDER BY k.created_at, k.key_hash{}",
            B::D::COLLATE_BYTES
        );
        let found = Params::<B::D>::new()
            .with(environment.as_str())
            .fetch_all(&mut conn, &sql)
            .await?;
        let Some(first) = found.first() else {
            return Ok(None);
        };
        let hashes = found
            .iter()
            .map(|row| row.opt_text("key_hash"))
            .filter_map(Result::transpose)
            .collect::<sqlx::Result<Vec<_>>>()?;
        Ok(Some((environment_from_row(first)?, hashes)))
    }
}

/// Stores a key (hashed) for `environment`, inside whatever transaction `conn` is in.
async fn insert_key<D: Dialect>(
    conn: &mut Conn<D>,
    key: &SecretKey,
    environment: &EnvironmentId,
    now: DateTime<Utc>,
) -> Result<()> {
    Params::<D>::new()
        .with(key.hash())
        .with(key.display_prefix())
        .with(environment.as_str())
        .with(ms(now))
        .execute(
            conn,
            "INSERT INTO api_keys (key_hash, prefix, environment_id, created_at) \
             VALUES ($1, $2, $3, $4)",
        )
        .await?;
    Ok(())
}
