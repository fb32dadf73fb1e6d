//! Environment variables ([`EnvVarStore`]), written once for both backends.
//!
//! The store holds values only sealed (`runnel_core::secrets`): the engine seals before it
//! writes and opens after it reads, so nothing here ever sees a value in clear. A write
//! of one variable is one statement; an import is one transaction, all or nothing. A
//! variable once secret stays secret (an upsert ORs the flag), so a later write that
//! forgets `isSecret` cannot make its value readable.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use runnel_core::EnvironmentId;

use crate::backend::Backend;
use crate::detach::detached;
use crate::rows::{ms, Columns};
use crate::sql::{Dialect, Params};
use crate::{Error, Result};

/// A stored variable, its value sealed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvVarRecord {
    pub environment_id: EnvironmentId,
    pub name: String,
    pub value_sealed: String,
    pub is_secret: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A variable to write, its value already sealed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvVarWrite {
    pub name: String,
    pub value_sealed: String,
    pub is_secret: bool,
}

/// What an import did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnvVarImport {
    /// Every variable was written.
    Written,
    /// Without override, these names were already set: nothing was written.
    Conflicts(Vec<String>),
}

/// The environment variables of each environment.
#[async_trait]
pub trait EnvVarStore: Send + Sync {
    /// The variables of `environment`, by name (bytes order).
    async fn env_var_list(&self, environment: &EnvironmentId) -> Result<Vec<EnvVarRecord>>;

    async fn env_var_get(
        &self,
        environment: &EnvironmentId,
        name: &str,
    ) -> Result<Option<EnvVarRecord>>;

    /// Creates the variable or replaces its value (a secret stays secret).
    async fn env_var_upsert(
        &self,
        environment: &EnvironmentId,
        var: &EnvVarWrite,
        now: DateTime<Utc>,
    ) -> Result<()>;

    /// Replaces the value of an existing variable; `false` when there is none.
    async fn env_var_update(
        &self,
        environment: &EnvironmentId,
        name: &str,
        value_sealed: &str,
        now: DateTime<Utc>,
    ) -> Result<bool>;

    /// Deletes the variable; `false` when there was none.
    async fn env_var_delete(&self, environment: &EnvironmentId, name: &str) -> Result<bool>;

    /// Writes `vars` in one transaction. With `override_existing`, each is upserted;
    /// without, a name already set makes the whole import write nothing and come back
    /// in [`EnvVarImport::Conflicts`] (every such name, by name).
    async fn env_var_import(
        &self,
        environment: &EnvironmentId,
        vars: &[EnvVarWrite],
        override_existing: bool,
        now: DateTime<Utc>,
    ) -> Result<EnvVarImport>;
}

const COLUMNS: &str = "environment_id, name, value_sealed, is_secret, created_at, updated_at";

fn record_from_row(row: &impl Columns) -> Result<EnvVarRecord> {
    let environment = row.text("environment_id")?;
    Ok(EnvVarRecord {
        environment_id: EnvironmentId::parse(&environment)
            .ok_or_else(|| Error::Corrupt(format!("environment id {environment:?}")))?,
        name: row.text("name")?,
        value_sealed: row.text("value_sealed")?,
        is_secret: row.flag("is_secret")?,
        created_at: row.time("created_at")?,
        updated_at: row.time("updated_at")?,
    })
}

/// The upsert of one variable; `$1..$5` are environment, name, sealed value, secret
/// flag and time.
const UPSERT: &str = "INSERT INTO env_vars (environment_id, name, value_sealed, is_secret, \
     created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $5) \
     ON CONFLICT (environment_id, name) DO UPDATE SET value_sealed = excluded.value_sealed, \
     is_secret = (env_vars.is_secret OR excluded.is_secret), updated_at = excluded.updated_at";

/// The insert of one variable unless it is set.
const INSERT_NEW: &str = "INSERT INTO env_vars (environment_id, name, value_sealed, is_secret, \
     created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $5) \
     ON CONFLICT (environment_id, name) DO NOTHING";

fn write_params<'a, D: Dialect>(
    environment: &'a EnvironmentId,
    var: &'a EnvVarWrite,
    now: DateTime<Utc>,
) -> Params<'a, D> {
    Params::<D>::new()
        .with(environment.as_str())
        .with(var.name.as_str())
        .with(var.value_sealed.as_str())
        .with(var.is_secret)
        .with(ms(now))
}

#[async_trait]
impl<B: Backend> EnvVarStore for B {
    async fn env_var_list(&self, environment: &EnvironmentId) -> Result<Vec<EnvVarRecord>> {
        let mut conn = self.reader().await?;
        let sql = format!(
            "SELECT {COLUMNS} FROM env_vars WHERE environment_id = $1 ORDER BY name{}",
            B::D::COLLATE_BYTES
        );
        let rows = Params::<B::D>::new()
            .with(environment.as_str())
            .fetch_all(&mut conn, &sql)
            .await?;
        rows.iter().map(record_from_row).collect()
    }

    async fn env_var_get(
        &self,
        environment: &EnvironmentId,
        name: &str,
    ) -> Result<Option<EnvVarRecord>> {
        let mut conn = self.reader().await?;
        let sql = format!("SELECT {COLUMNS} FROM env_vars WHERE environment_id = $1 AND name = $2");
        let row = Params::<B::D>::new()
            .with(environment.as_str())
            .with(name)
            .fetch_optional(&mut conn, &sql)
            .await?;
        row.as_ref().map(record_from_row).transpose()
    }

    async fn env_var_upsert(
        &self,
        environment: &EnvironmentId,
        var: &EnvVarWrite,
        now: DateTime<Utc>,
    ) -> Result<()> {
        let mut conn = self.writer().await?;
        write_params::<B::D>(environment, var, now)
            .execute(&mut conn, UPSERT)
            .await?;
        Ok(())
    }

    async fn env_var_update(
        &self,
        environment: &EnvironmentId,
        name: &str,
        value_sealed: &str,
        now: DateTime<Utc>,
    ) -> Result<bool> {
        let mut conn = self.writer().await?;
        let changed = Params::<B::D>::new()
            .with(value_sealed)
            .with(ms(now))
            .with(environment.as_str())
            .with(name)
            .execute(
                &mut conn,
                "UPDATE env_vars SET value_sealed = $1, updated_at = $2 \
                 WHERE environment_id = $3 AND name = $4",
            )
            .await?;
        Ok(changed > 0)
    }

    async fn env_var_delete(&self, environment: &EnvironmentId, name: &str) -> Result<bool> {
        let mut conn = self.writer().await?;
        let changed = Params::<B::D>::new()
            .with(environment.as_str())
            .with(name)
            .execute(
                &mut conn,
                "DELETE FROM env_vars WHERE environment_id = $1 AND name = $2",
            )
            .await?;
        Ok(changed > 0)
    }

    async fn env_var_import(
        &self,
        environment: &EnvironmentId,
        vars: &[EnvVarWrite],
        override_existing: bool,
        now: DateTime<Utc>,
    ) -> Result<EnvVarImport> {
        let (store, environment, vars) = (self.clone(), environment.clone(), vars.to_vec());
        detached(async move {
            let mut tx = store.begin().await?;
            // Without override, an insert that finds its name taken (also by a concurrent
            // writer: the primary key decides) is a conflict, and the transaction is
            // rolled back whole.
            let mut conflicts = Vec::new();
            for var in &vars {
                let sql = if override_existing {
                    UPSERT
                } else {
                    INSERT_NEW
                };
                let written = write_params::<B::D>(&environment, var, now)
                    .execute(&mut tx, sql)
                    .await?;
                if written == 0 {
                    conflicts.push(var.name.clone());
                }
            }
            if conflicts.is_empty() {
                tx.commit().await?;
                Ok(EnvVarImport::Written)
            } else {
                tx.rollback().await?;
                conflicts.sort();
                conflicts.dedup();
                Ok(EnvVarImport::Conflicts(conflicts))
            }
        })
        .await
    }
}
