//! What the `trigger.dev` CLI's bootstrap needs of the engine: personal access tokens
//! (`tr_pat_…`, what the CLI logs in with), the secret keys they trade for, and the end
//! of the long-lived responses it keeps open ([`Engine::stopping`]).
//!
//! A token names the project. The CLI asks it for an environment's secret key
//! (`GET /api/v1/projects/{ref}/{env}`), which must be the same key every time (the CLI
//! hands it to every task process it starts) although keys are stored only hashed. So
//! the key is derived from the token ([`PersonalAccessToken::derive_key`]) and stored,
//! hashed, the first time it is asked for ([`KeyStore::api_key_ensure`], safe when nodes
//! race). From then on it is an ordinary key of its environment: listed by
//! `runnel keys list`, revoked by `runnel keys revoke`, and a revoked one is never
//! handed out again (the caller needs a new token).

use std::future::Future;

use runnel_core::key::{EnvironmentKind, PersonalAccessToken, SecretKey};
use runnel_core::tenancy::{Environment, Project};
use runnel_store::KeyStanding;

use crate::{Engine, Error};

/// The secret key a token trades for in one environment.
#[derive(Debug, Clone)]
pub enum DerivedKey {
    /// Stored and live: hand it out.
    Live(SecretKey),
    /// It was revoked; `prefix` is what `runnel keys list` shows of it.
    Revoked { prefix: String },
}

impl Engine {
    /// The project a live personal access token reaches; `None` for a token that is
    /// unknown or revoked.
    pub async fn pat_authenticate(
        &self,
        token: &PersonalAccessToken,
    ) -> Result<Option<Project>, Error> {
        Ok(self.store.pat_authenticate(&token.hash()).await?)
    }

    /// The project (there is one); `None` before the first start created it.
    pub async fn project(&self) -> Result<Option<Project>, Error> {
        Ok(self.store.project_get().await?)
    }

    /// Creates a personal access token for `project` and returns it (the only time it
    /// is seen in full).
    pub async fn pat_create(&self, project: &Project) -> Result<PersonalAccessToken, Error> {
        let token = PersonalAccessToken::generate();
        self.store
            .pat_insert(&token, &project.id, self.clock.now())
            .await?;
        Ok(token)
    }

    /// The environment of kind `kind` and the secret key `token` trades for there,
    /// stored (hashed) on first request; `None` when there is no such environment.
    pub async fn pat_environment_key(
        &self,
        token: &PersonalAccessToken,
        kind: EnvironmentKind,
    ) -> Result<Option<(Environment, DerivedKey)>, Error> {
        let Some(environment) = self.store.environment_get(kind).await? else {
            return Ok(None);
        };
        let key = token.derive_key(kind, &environment.id);
        let standing = self
            .store
            .api_key_ensure(&key, &environment.id, self.master_keys(), self.clock.now())
            .await?;
        let derived = match standing {
            KeyStanding::Live => DerivedKey::Live(key),
            KeyStanding::Revoked => DerivedKey::Revoked {
                prefix: key.display_prefix(),
            },
        };
        Ok(Some((environment, derived)))
    }

    /// Resolves once the server stops ([`Engine::stop_long_polls`]): a response that
    /// stays open (the dev presence stream) ends then, so it never holds a graceful stop.
    pub fn stopping(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut stop = self.stopping.subscribe();
        async move {
            // The sender lives as long as the engine; a dropped one means stopped too.
            let _ = stop.wait_for(|stopping| *stopping).await;
        }
    }
}
