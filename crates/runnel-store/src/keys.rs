//! The project, its environments and their secret keys, and the personal access tokens
//! of the `trigger.dev` CLI ([`KeyStore`]), written once for both backends.
//!
//! Keys and tokens are stored the same way: the SHA-256 digest (the primary key, what a
//! presented credential is looked up by) and a display prefix; revocation sets
//! `revoked_at` and never deletes, so a revoked credential stays revoked (also a derived
//! key that [`KeyStore::api_key_ensure`] is asked to store again). A secret key is also
//! stored sealed under the master key (`key_sealed`, context `api_key:<hash>`): the
//! server opens it to verify the public access tokens the SDK signs with the raw key.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use runnel_core::key::{EnvironmentKind, PersonalAccessToken, SecretKey};
use runnel_core::secrets::MasterKeys;
use runnel_core::tenancy::{ApiKeyInfo, Environment, PersonalAccessTokenInfo, Project};
use runnel_core::{EnvironmentId, ProjectId};

use crate::backend::Backend;
use crate::detach::detached;
use crate::rows::{self, api_key_info_from_row, environment_from_row, ms, project_from_row};
use crate::secrets::api_key_context;
use crate::sql::{Conn, Dialect, Params};
use crate::{Bootstrap, FoundKey, KeyStanding, KeyStore, LiveKey, Result, RevokeOutcome};

#[async_trait]
impl<B: Backend> KeyStore for B {
    async fn project_bootstrap(
        &self,
        dev_key: &SecretKey,
        keys: &MasterKeys,
        now: DateTime<Utc>,
    ) -> Result<Option<Bootstrap>> {
        let (store, dev_key) = (self.clone(), dev_key.clone());
        let sealed = seal_key(&dev_key, keys);
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
            insert_key::<B::D>(&mut tx, &dev_key, &sealed, &dev.id, now).await?;
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
        keys: &MasterKeys,
        now: DateTime<Utc>,
    ) -> Result<()> {
        let sealed = seal_key(key, keys);
        let mut conn = self.writer().await?;
        insert_key::<B::D>(&mut conn, key, &sealed, environment, now).await
    }

    async fn api_key_find(&self, key_hash: &str) -> Result<Option<FoundKey>> {
        use rows::Columns;
        let mut conn = self.reader().await?;
        let row = Params::<B::D>::new()
            .with(key_hash)
            .fetch_optional(
                &mut conn,
                "SELECT e.id, e.project_id, e.kind, k.key_sealed FROM api_keys k \
                 JOIN environments e ON e.id = k.environment_id \
                 WHERE k.key_hash = $1 AND k.revoked_at IS NULL",
            )
            .await?;
        row.as_ref()
            .map(|row| {
                Ok(FoundKey {
                    environment: environment_from_row(row)?,
                    sealed: row.opt_text("key_sealed")?.is_some(),
                })
            })
            .transpose()
    }

    async fn api_key_seal_missing(&self, key: &SecretKey, keys: &MasterKeys) -> Result<bool> {
        let sealed = seal_key(key, keys);
        let mut conn = self.writer().await?;
        let updated = Params::<B::D>::new()
            .with(sealed.as_str())
            .with(key.hash())
            .execute(
                &mut conn,
                "UPDATE api_keys SET key_sealed = $1 WHERE key_hash = $2 AND key_sealed IS NULL",
            )
            .await?;
        Ok(updated == 1)
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
            // "Starts with" without LIKE's wildcards, in both tables (their prefixes
            // differ: `tr_pat_` against `tr_<env>_`). The row locks make a concurrent
            // revoke of the same credential wait, then find it revoked.
            let mut found = Vec::new();
            for table in [Revocable::ApiKey, Revocable::Token] {
                let sql = format!(
                    "SELECT {hash} AS credential_hash, prefix FROM {table} \
                     WHERE revoked_at IS NULL AND substr(prefix, 1, length($1)) = $1{lock}",
                    hash = table.hash_column(),
                    table = table.table(),
                    lock = B::D::FOR_UPDATE
                );
                let rows = Params::<B::D>::new()
                    .with(prefix.as_str())
                    .fetch_all(&mut tx, &sql)
                    .await?;
                found.extend(rows.into_iter().map(|row| (table, row)));
            }
            let outcome = match found.as_slice() {
                [] => RevokeOutcome::NotFound,
                [(table, row)] => {
                    use rows::Columns;
                    let sql = format!(
                        "UPDATE {} SET revoked_at = $1 WHERE {} = $2",
                        table.table(),
                        table.hash_column()
                    );
                    Params::<B::D>::new()
                        .with(ms(now))
                        .with(row.text("credential_hash")?)
                        .execute(&mut tx, &sql)
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

    async fn api_key_ensure(
        &self,
        key: &SecretKey,
        environment: &EnvironmentId,
        keys: &MasterKeys,
        now: DateTime<Utc>,
    ) -> Result<KeyStanding> {
        use rows::Columns;
        let sealed = seal_key(key, keys);
        let mut conn = self.writer().await?;
        // A concurrent insert of the same hash (another request, another node) makes
        // this one wait for it and then only fill in the sealed key if that row (stored
        // before sealing existed) lacks it; either way the row is there after.
        Params::<B::D>::new()
            .with(key.hash())
            .with(key.display_prefix())
            .with(environment.as_str())
            .with(ms(now))
            .with(sealed.as_str())
            .execute(
                &mut conn,
                "INSERT INTO api_keys (key_hash, prefix, environment_id, created_at, key_sealed) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (key_hash) DO UPDATE \
                 SET key_sealed = excluded.key_sealed WHERE api_keys.key_sealed IS NULL",
            )
            .await?;
        let row = Params::<B::D>::new()
            .with(key.hash())
            .fetch_one(
                &mut conn,
                "SELECT revoked_at FROM api_keys WHERE key_hash = $1",
            )
            .await?;
        Ok(match row.opt_int("revoked_at")? {
            None => KeyStanding::Live,
            Some(_) => KeyStanding::Revoked,
        })
    }

    async fn pat_insert(
        &self,
        token: &PersonalAccessToken,
        project: &ProjectId,
        now: DateTime<Utc>,
    ) -> Result<()> {
        let mut conn = self.writer().await?;
        Params::<B::D>::new()
            .with(token.hash())
            .with(token.display_prefix())
            .with(project.as_str())
            .with(ms(now))
            .execute(
                &mut conn,
                "INSERT INTO personal_access_tokens (token_hash, prefix, project_id, created_at) \
                 VALUES ($1, $2, $3, $4)",
            )
            .await?;
        Ok(())
    }

    async fn pat_authenticate(&self, token_hash: &str) -> Result<Option<Project>> {
        let mut conn = self.reader().await?;
        let row = Params::<B::D>::new()
            .with(token_hash)
            .fetch_optional(
                &mut conn,
                "SELECT p.id, p.created_at FROM personal_access_tokens t \
                 JOIN projects p ON p.id = t.project_id \
                 WHERE t.token_hash = $1 AND t.revoked_at IS NULL",
            )
            .await?;
        row.as_ref().map(project_from_row).transpose()
    }

    async fn pat_list(&self) -> Result<Vec<PersonalAccessTokenInfo>> {
        use rows::Columns;
        let mut conn = self.reader().await?;
        let sql = format!(
            "SELECT prefix, created_at, revoked_at FROM personal_access_tokens \
             ORDER BY created_at, prefix{}",
            B::D::COLLATE_BYTES
        );
        let rows = Params::<B::D>::new().fetch_all(&mut conn, &sql).await?;
        rows.iter()
            .map(|row| {
                Ok(PersonalAccessTokenInfo {
                    prefix: row.text("prefix")?,
                    created_at: row.time("created_at")?,
                    revoked_at: row.opt_time("revoked_at")?,
                })
            })
            .collect()
    }

    async fn api_keys_live(
        &self,
        environment: &EnvironmentId,
    ) -> Result<Option<(Environment, Vec<LiveKey>)>> {
        use rows::Columns;
        let mut conn = self.reader().await?;
        let sql = format!(
            "SELECT e.id, e.project_id, e.kind, k.key_hash, k.key_sealed FROM environments e \
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
        let mut live = Vec::new();
        for row in &found {
            if let Some(hash) = row.opt_text("key_hash")? {
                live.push(LiveKey {
                    hash,
                    sealed: row.opt_text("key_sealed")?,
                });
            }
        }
        Ok(Some((environment_from_row(first)?, live)))
    }
}

/// The two tables whose rows `runnel keys revoke` revokes by prefix.
#[derive(Debug, Clone, Copy)]
enum Revocable {
    ApiKey,
    Token,
}

impl Revocable {
    fn table(self) -> &'static str {
        match self {
            Revocable::ApiKey => "api_keys",
            Revocable::Token => "personal_access_tokens",
        }
    }

    fn hash_column(self) -> &'static str {
        match self {
            Revocable::ApiKey => "key_hash",
            Revocable::Token => "token_hash",
        }
    }
}

/// `key` sealed under the current master key, bound to its row (`api_key:<hash>`).
fn seal_key(key: &SecretKey, keys: &MasterKeys) -> String {
    keys.seal(key.expose(), &api_key_context(&key.hash()))
}

/// Stores a key (hashed, and sealed: `sealed`) for `environment`, inside whatever
/// transaction `conn` is in.
async fn insert_key<D: Dialect>(
    conn: &mut Conn<D>,
    key: &SecretKey,
    sealed: &str,
    environment: &EnvironmentId,
    now: DateTime<Utc>,
) -> Result<()> {
    Params::<D>::new()
        .with(key.hash())
        .with(key.display_prefix())
        .with(environment.as_str())
        .with(ms(now))
        .with(sealed)
        .execute(
            conn,
            "INSERT INTO api_keys (key_hash, prefix, environment_id, created_at, key_sealed) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .await?;
    Ok(())
}
