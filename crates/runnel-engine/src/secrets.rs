//! The master keys against what the database holds: the start-up check, the rotation,
//! and opening the secret keys that verify SDK-signed public access tokens.
//!
//! At start ([`Engine::master_keys_prepare`]) a server refuses to run when a stored value
//! is sealed under a key id it has neither as its current key nor as a previous one
//! (started with the wrong `RUNNEL_ENCRYPTION_KEY`, or a node of a cluster without the
//! shared key): it could not open those values, and would seal new ones under a key the
//! other nodes lack. With previous keys given it then re-seals every value sealed under
//! one of them with the current key (idempotent; concurrent nodes are safe), after which
//! the previous keys may be dropped.
//!
//! Keys stored before keys were sealed have no sealed value until they authenticate a
//! request ([`Engine::api_key_authenticate`] seals them then).

use runnel_core::secrets::MasterKeys;
pub use runnel_store::PublicTokenUse;
use runnel_store::{LiveKey, Resealed, SealedCount};

use crate::Engine;

/// A live secret key of an environment: its hash (what the server-minted tokens are
/// signed with) and, when it is stored sealed and opened here, the key itself (what the
/// SDK signs its own tokens with). `Debug` never shows the key.
#[derive(Clone)]
pub struct KeySecret {
    pub hash: String,
    pub raw: Option<String>,
}

impl std::fmt::Debug for KeySecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeySecret")
            .field("hash", &self.hash)
            .field("raw", &self.raw.as_ref().map(|_| "…"))
            .finish()
    }
}

impl KeySecret {
    pub(crate) fn open(key: LiveKey, keys: &MasterKeys) -> KeySecret {
        let raw = key.sealed.and_then(|sealed| {
            keys.open(&sealed, &runnel_store::secrets::api_key_context(&key.hash))
                .map_err(|error| {
                    tracing::warn!(key_hash = %key.hash, %error, "a stored secret key does not open");
                })
                .ok()
        });
        KeySecret {
            hash: key.hash,
            raw,
        }
    }
}

/// Why a server may not start with the master keys it was given.
#[derive(Debug, thiserror::Error)]
pub enum MasterKeyError {
    #[error(
        "the database holds {count} value(s) in {table}.{column} sealed under master key {key_id}, \
         which this server was not given (its key: {current}{previous}): start it with the \
         master key the database was created with (RUNNEL_ENCRYPTION_KEY or --encryption-key; \
         without them `<data-dir>/master.key`), or add that key to \
         RUNNEL_PREVIOUS_ENCRYPTION_KEYS / --previous-encryption-keys while rotating"
    )]
    UnknownKey {
        table: &'static str,
        column: &'static str,
        key_id: String,
        count: u64,
        current: String,
        previous: String,
    },
    #[error("the database holds {count} value(s) in {table}.{column} that are not sealed values")]
    Malformed {
        table: &'static str,
        column: &'static str,
        count: u64,
    },
    #[error(transparent)]
    Store(#[from] runnel_store::Error),
}

/// What [`Engine::master_keys_prepare`] found and did.
#[derive(Debug, Clone, Default)]
pub struct Prepared {
    /// Stored sealed values by key id.
    pub counts: Vec<SealedCount>,
    /// The rotation's work, when previous keys were given.
    pub resealed: Vec<Resealed>,
}

/// Refuses `counts` when a value is sealed under a key `keys` lack.
pub fn check(counts: &[SealedCount], keys: &MasterKeys) -> Result<(), MasterKeyError> {
    for count in counts {
        match &count.key_id {
            None => {
                return Err(MasterKeyError::Malformed {
                    table: count.table,
                    column: count.column,
                    count: count.count,
                })
            }
            Some(id) if !keys.knows(id) => {
                let previous: Vec<&str> = keys.previous().iter().map(|k| k.id()).collect();
                return Err(MasterKeyError::UnknownKey {
                    table: count.table,
                    column: count.column,
                    key_id: id.clone(),
                    count: count.count,
                    current: keys.current().id().to_owned(),
                    previous: if previous.is_empty() {
                        String::new()
                    } else {
                        format!("; previous: {}", previous.join(", "))
                    },
                });
            }
            Some(_) => {}
        }
    }
    Ok(())
}

impl Engine {
    /// Records the use of a one-time public access token ([`SecretStore::public_token_use`]).
    ///
    /// [`SecretStore::public_token_use`]: runnel_store::SecretStore::public_token_use
    pub async fn public_token_use(
        &self,
        token_hash: &str,
        environment: &runnel_core::EnvironmentId,
        expires_at: chrono::DateTime<chrono::Utc>,
    ) -> Result<PublicTokenUse, crate::Error> {
        Ok(self
            .store
            .public_token_use(token_hash, environment, expires_at, self.clock.now())
            .await?)
    }

    /// Records what a one-time token's use created (`batch:<id>`).
    pub async fn public_token_use_for(
        &self,
        token_hash: &str,
        used_for: &str,
    ) -> Result<(), crate::Error> {
        Ok(self
            .store
            .public_token_use_for(token_hash, used_for)
            .await?)
    }

    /// The start-up check, then, with previous keys given, the rotation (module docs).
    pub async fn master_keys_prepare(&self) -> Result<Prepared, MasterKeyError> {
        let keys = self.master_keys();
        let counts = self.store.sealed_key_ids().await?;
        check(&counts, keys)?;
        let mut resealed = Vec::new();
        if !keys.previous().is_empty() {
            resealed = self.store.sealed_reseal(keys).await?;
            for done in &resealed {
                tracing::info!(
                    table = done.table,
                    column = done.column,
                    resealed = done.resealed,
                    raced = done.raced,
                    unopened = done.unopened,
                    current_key = keys.current().id(),
                    "re-sealed values under the current master key"
                );
            }
        }
        Ok(Prepared { counts, resealed })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use runnel_core::secrets::MasterKey;

    fn count(key_id: Option<&str>) -> SealedCount {
        SealedCount {
            table: "api_keys",
            column: "key_sealed",
            key_id: key_id.map(str::to_owned),
            count: 2,
        }
    }

    #[test]
    fn values_under_a_key_the_server_lacks_are_refused() {
        let old = MasterKey::generate();
        let keys = MasterKeys::new(MasterKey::generate(), vec![old.clone()]);
        assert!(check(
            &[count(Some(keys.current().id())), count(Some(old.id()))],
            &keys
        )
        .is_ok());
        assert!(check(&[], &keys).is_ok());
        let stranger = MasterKey::generate();
        let refused = check(&[count(Some(stranger.id()))], &keys)
            .unwrap_err()
            .to_string();
        assert!(refused.contains(stranger.id()), "{refused}");
        assert!(refused.contains("RUNNEL_ENCRYPTION_KEY"), "{refused}");
        assert!(refused.contains("--encryption-key"), "{refused}");
        assert!(matches!(
            check(&[count(None)], &keys),
            Err(MasterKeyError::Malformed { count: 2, .. })
        ));
    }
}
