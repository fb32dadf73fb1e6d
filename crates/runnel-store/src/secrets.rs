//! Values sealed under the master key ([`runnel_core::secrets`]) as a whole, and the
//! uses of one-time public access tokens ([`SecretStore`]).
//!
//! Every column holding sealed values is listed once in [`SEALED_COLUMNS`]: its table,
//! its column, the columns naming a row, and how the row's sealing context is built
//! from them. The start-up check ([`SecretStore::sealed_key_ids`]: which master keys
//! the stored values were sealed under) and the rotation ([`SecretStore::sealed_reseal`]:
//! re-seal under the current key what a previous one sealed) walk that list, so a new
//! sealed column is one more entry there, nothing else.
//!
//! A re-seal is a conditional update (`… WHERE <row> AND <column> = <old value>`): a value
//! changed meanwhile (re-sealed by another node, rewritten by its owner) is left alone,
//! so the rotation is safe to run on several nodes at once and to run again.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use runnel_core::secrets::{sealed_key_id, MasterKeys};
use runnel_core::EnvironmentId;

use crate::backend::Backend;
use crate::rows::{ms, Columns};
use crate::sql::Params;
use crate::Result;

/// A column whose values are sealed under the master key.
#[derive(Debug, Clone, Copy)]
pub struct SealedColumn {
    pub table: &'static str,
    pub column: &'static str,
    /// The columns that name a row (its primary key), in the order [`Self::context`]
    /// takes their values.
    pub row_columns: &'static [&'static str],
    /// The context a row's value is sealed with, from its `row_columns` values.
    pub context: fn(&[String]) -> String,
}

/// The sealing context of a secret key's row.
pub fn api_key_context(key_hash: &str) -> String {
    format!("api_key:{key_hash}")
}

fn api_key_row_context(row: &[String]) -> String {
    api_key_context(&row[0])
}

/// Every sealed column of the schema.
pub const SEALED_COLUMNS: &[SealedColumn] = &[
    SealedColumn {
        table: "api_keys",
        column: "key_sealed",
        row_columns: &["key_hash"],
        context: api_key_row_context,
    },
    SealedColumn {
        table: "env_vars",
        column: "value_sealed",
        row_columns: &["environment_id", "name"],
        context: env_var_row_context,
    },
];

fn env_var_row_context(row: &[String]) -> String {
    // The row's environment id as stored; the same text `seal_context` writes.
    format!("env_var:{}:{}", row[0], row[1])
}

/// How many values of a column are sealed under one master key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedCount {
    pub table: &'static str,
    pub column: &'static str,
    /// The key id the values name; `None` for values that are not sealed values at all.
    pub key_id: Option<String>,
    pub count: u64,
}

/// What a rotation did to one column.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resealed {
    pub table: &'static str,
    pub column: &'static str,
    /// Values now sealed under the current key.
    pub resealed: u64,
    /// Values changed by someone else between the read and the update (left alone).
    pub raced: u64,
    /// Values that did not open (sealed under an unknown key, altered): left as they are.
    pub unopened: u64,
}

/// What recording the use of a one-time token found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublicTokenUse {
    /// This was the token's first use; it is recorded now.
    First,
    /// The token was used before; `used_for` is what that use recorded it created.
    Again { used_for: Option<String> },
}

/// Sealed values across the schema, and one-time tokens' uses.
#[async_trait]
pub trait SecretStore: Send + Sync {
    /// For every column of [`SEALED_COLUMNS`], how many values each master key sealed.
    async fn sealed_key_ids(&self) -> Result<Vec<SealedCount>>;

    /// Re-seals under `keys`' current key every value of [`SEALED_COLUMNS`] sealed under
    /// another (a previous) key; one entry per column. Idempotent.
    async fn sealed_reseal(&self, keys: &MasterKeys) -> Result<Vec<Resealed>>;

    /// Records the use of the one-time token with SHA-256 `token_hash` (a conditional
    /// insert: of two concurrent uses exactly one is [`PublicTokenUse::First`]). Uses of
    /// tokens expired before `now` are forgotten on the way.
    async fn public_token_use(
        &self,
        token_hash: &str,
        environment: &EnvironmentId,
        expires_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<PublicTokenUse>;

    /// Records what the token's one use created (`batch:<id>`), so the requests that
    /// belong to it (the batch's items) are let through.
    async fn public_token_use_for(&self, token_hash: &str, used_for: &str) -> Result<()>;
}

#[async_trait]
impl<B: Backend> SecretStore for B {
    async fn sealed_key_ids(&self) -> Result<Vec<SealedCount>> {
        let mut conn = self.reader().await?;
        let mut counts: Vec<SealedCount> = Vec::new();
        for sealed in SEALED_COLUMNS {
            let sql = format!(
                "SELECT {column} AS sealed FROM {table} WHERE {column} IS NOT NULL",
                column = sealed.column,
                table = sealed.table
            );
            let rows = Params::<B::D>::new().fetch_all(&mut conn, &sql).await?;
            for row in &rows {
                let value = row.text("sealed")?;
                let key_id = sealed_key_id(&value).map(str::to_owned);
                match counts.iter_mut().find(|c| {
                    c.table == sealed.table && c.column == sealed.column && c.key_id == key_id
                }) {
                    Some(count) => count.count += 1,
                    None => counts.push(SealedCount {
                        table: sealed.table,
                        column: sealed.column,
                        key_id,
                        count: 1,
                    }),
                }
            }
        }
        Ok(counts)
    }

    async fn sealed_reseal(&self, keys: &MasterKeys) -> Result<Vec<Resealed>> {
        let current = keys.current().id();
        let mut report = Vec::new();
        for sealed in SEALED_COLUMNS {
            let mut done = Resealed {
                table: sealed.table,
                column: sealed.column,
                ..Resealed::default()
            };
            let select = format!(
                "SELECT {rows}, {column} AS sealed FROM {table} WHERE {column} IS NOT NULL",
                rows = sealed.row_columns.join(", "),
                column = sealed.column,
                table = sealed.table
            );
            let rows = {
                let mut conn = self.reader().await?;
                Params::<B::D>::new().fetch_all(&mut conn, &select).await?
            };
            let mut condition = String::new();
            for (i, name) in sealed.row_columns.iter().enumerate() {
                condition.push_str(&format!(" AND {name} = ${}", i + 3));
            }
            let update = format!(
                "UPDATE {table} SET {column} = $1 WHERE {column} = $2{condition}",
                table = sealed.table,
                column = sealed.column
            );
            for row in &rows {
                let value = row.text("sealed")?;
                if sealed_key_id(&value) == Some(current) {
                    continue;
                }
                let names = sealed
                    .row_columns
                    .iter()
                    .map(|name| row.text(name))
                    .collect::<sqlx::Result<Vec<_>>>()?;
                let context = (sealed.context)(&names);
                let Ok(plain) = keys.open(&value, &context) else {
                    done.unopened += 1;
                    continue;
                };
                let resealed = keys.seal(&plain, &context);
                let mut params = Params::<B::D>::new()
                    .with(resealed.as_str())
                    .with(value.as_str());
                for name in &names {
                    params = params.with(name.as_str());
                }
                let mut conn = self.writer().await?;
                match params.execute(&mut conn, &update).await? {
                    0 => done.raced += 1,
                    _ => done.resealed += 1,
                }
            }
            report.push(done);
        }
        Ok(report)
    }

    async fn public_token_use(
        &self,
        token_hash: &str,
        environment: &EnvironmentId,
        expires_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<PublicTokenUse> {
        let mut conn = self.writer().await?;
        Params::<B::D>::new()
            .with(ms(now))
            .execute(
                &mut conn,
                "DELETE FROM public_token_uses WHERE expires_at < $1",
            )
            .await?;
        let inserted = Params::<B::D>::new()
            .with(token_hash)
            .with(environment.as_str())
            .with(ms(now))
            .with(ms(expires_at))
            .execute(
                &mut conn,
                "INSERT INTO public_token_uses (token_hash, environment_id, used_at, expires_at) \
                 VALUES ($1, $2, $3, $4) ON CONFLICT (token_hash) DO NOTHING",
            )
            .await?;
        if inserted == 1 {
            return Ok(PublicTokenUse::First);
        }
        let row = Params::<B::D>::new()
            .with(token_hash)
            .fetch_one(
                &mut conn,
                "SELECT used_for FROM public_token_uses WHERE token_hash = $1",
            )
            .await?;
        Ok(PublicTokenUse::Again {
            used_for: row.opt_text("used_for")?,
        })
    }

    async fn public_token_use_for(&self, token_hash: &str, used_for: &str) -> Result<()> {
        let mut conn = self.writer().await?;
        Params::<B::D>::new()
            .with(used_for)
            .with(token_hash)
            .execute(
                &mut conn,
                "UPDATE public_token_uses SET used_for = $1 WHERE token_hash = $2",
            )
            .await?;
        Ok(())
    }
}
