//! Environment variables: the management calls ([`Client::env_var_list`] and the rest,
//! what `runnel envvars` uses), and what the worker runtime hands each attempt
//! ([`EnvVarsCache`]).
//!
//! The runtime reads the environment's variables in clear from
//! `GET /api/v1/projects/{ref}/envvars` with the worker's own secret key, learning the
//! project from `GET /api/v1/auth/whoami` once. It keeps an answer for at most
//! [`ENV_VARS_CACHE_TTL`], so a run started after a change sees the new value a few
//! seconds later at most. A server without `whoami` (404) has no variables to give:
//! attempts then run with none. Any other failure to read them fails the attempt
//! (`TaskFailed`, so it is retried): a task must not run without its secrets.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use reqwest::Method;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::client::{segment, Client, Error, REQUEST_TIMEOUT};

/// How long the runtime reuses the variables it read.
pub const ENV_VARS_CACHE_TTL: Duration = Duration::from_secs(2);

/// The variables an attempt sees, by name.
pub type EnvVars = Arc<BTreeMap<String, String>>;

/// What a secret key belongs to (`GET /api/v1/auth/whoami`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Whoami {
    pub project_ref: String,
    pub environment: WhoamiEnvironment,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct WhoamiEnvironment {
    pub id: String,
    /// `dev`, `staging` or `prod`.
    pub slug: String,
}

/// A variable as the management API lists it (a secret's value is `<redacted>`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EnvVar {
    pub name: String,
    pub value: String,
    pub is_secret: bool,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct CreateBody<'a> {
    name: &'a str,
    value: &'a str,
    is_secret: bool,
}

#[derive(Serialize)]
struct ImportBody<'a> {
    variables: &'a BTreeMap<String, String>,
    #[serde(rename = "override")]
    override_existing: bool,
    #[serde(rename = "isSecret")]
    is_secret: bool,
}

#[derive(Deserialize)]
struct Resolved {
    variables: BTreeMap<String, String>,
}

impl Client {
    /// What this client's key belongs to: its project and environment.
    pub async fn whoami(&self) -> Result<Whoami, Error> {
        self.call(
            Method::GET,
            "/api/v1/auth/whoami",
            None::<&()>,
            REQUEST_TIMEOUT,
        )
        .await
    }

    /// The variables of the key's environment in clear, as tasks see them.
    pub async fn env_vars_resolved(
        &self,
        project_ref: &str,
    ) -> Result<BTreeMap<String, String>, Error> {
        let path = format!("/api/v1/projects/{}/envvars", segment(project_ref));
        let resolved: Resolved = self
            .call(Method::GET, &path, None::<&()>, REQUEST_TIMEOUT)
            .await?;
        Ok(resolved.variables)
    }

    /// The variables of environment `env` (`dev`, `staging`, `prod`), secrets redacted.
    pub async fn env_var_list(&self, project_ref: &str, env: &str) -> Result<Vec<EnvVar>, Error> {
        let path = envvars_path(project_ref, env, None);
        self.call(Method::GET, &path, None::<&()>, REQUEST_TIMEOUT)
            .await
    }

    /// Creates `name` or replaces its value.
    pub async fn env_var_set(
        &self,
        project_ref: &str,
        env: &str,
        name: &str,
        value: &str,
        is_secret: bool,
    ) -> Result<(), Error> {
        let path = envvars_path(project_ref, env, None);
        let body = CreateBody {
            name,
            value,
            is_secret,
        };
        let _: Value = self
            .call(Method::POST, &path, Some(&body), REQUEST_TIMEOUT)
            .await?;
        Ok(())
    }

    /// Deletes `name` (a 404 error when it is not set).
    pub async fn env_var_delete(
        &self,
        project_ref: &str,
        env: &str,
        name: &str,
    ) -> Result<(), Error> {
        let path = envvars_path(project_ref, env, Some(name));
        let _: Value = self
            .call(Method::DELETE, &path, None::<&()>, REQUEST_TIMEOUT)
            .await?;
        Ok(())
    }

    /// Sets `variables` all or nothing; without `override_existing`, a name already set
    /// refuses them all (a 400 naming it).
    pub async fn env_var_import(
        &self,
        project_ref: &str,
        env: &str,
        variables: &BTreeMap<String, String>,
        override_existing: bool,
        is_secret: bool,
    ) -> Result<(), Error> {
        let path = format!("{}/import", envvars_path(project_ref, env, None));
        let body = ImportBody {
            variables,
            override_existing,
            is_secret,
        };
        let _: Value = self
            .call(Method::POST, &path, Some(&body), REQUEST_TIMEOUT)
            .await?;
        Ok(())
    }
}

fn envvars_path(project_ref: &str, env: &str, name: Option<&str>) -> String {
    let mut path = format!(
        "/api/v1/projects/{}/envvars/{}",
        segment(project_ref),
        segment(env)
    );
    if let Some(name) = name {
        path.push('/');
        path.push_str(&segment(name));
    }
    path
}

/// Where the project ref stands for the runtime.
#[derive(Debug, Clone)]
enum Project {
    Unknown,
    /// The server has no `whoami`: it serves no variables.
    Unsupported,
    Known(String),
}

/// The runtime's copy of its environment's variables (see the module doc).
#[derive(Debug)]
pub(crate) struct EnvVarsCache {
    state: Mutex<CacheState>,
}

#[derive(Debug)]
struct CacheState {
    project: Project,
    fetched: Option<(Instant, EnvVars)>,
}

impl EnvVarsCache {
    pub(crate) fn new() -> EnvVarsCache {
        EnvVarsCache {
            state: Mutex::new(CacheState {
                project: Project::Unknown,
                fetched: None,
            }),
        }
    }

    /// The variables, read again when the copy is older than [`ENV_VARS_CACHE_TTL`].
    /// One reader at a time: attempts starting together share one read.
    pub(crate) async fn get(&self, client: &Client) -> Result<EnvVars, Error> {
        let mut state = self.state.lock().await;
        if let Some((at, vars)) = &state.fetched {
            if at.elapsed() < ENV_VARS_CACHE_TTL {
                return Ok(vars.clone());
            }
        }
        if let Project::Unknown = state.project {
            state.project = match client.whoami().await {
                Ok(whoami) => Project::Known(whoami.project_ref),
                Err(error) if error.status() == Some(reqwest::StatusCode::NOT_FOUND) => {
                    tracing::warn!(
                        "the server does not say its project (no /api/v1/auth/whoami): \
                         tasks run without environment variables"
                    );
                    Project::Unsupported
                }
                Err(error) => return Err(error),
            };
        }
        let vars = match &state.project {
            Project::Known(project_ref) => Arc::new(client.env_vars_resolved(project_ref).await?),
            Project::Unsupported | Project::Unknown => Arc::new(BTreeMap::new()),
        };
        state.fetched = Some((Instant::now(), vars.clone()));
        Ok(vars)
    }
}
