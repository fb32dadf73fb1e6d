//! Environment variables: the engine seals every value under [`Engine::master_keys`]
//! before the store sees it and opens it after, checks names and values
//! (`runnel_core::envvars`), and decides what a caller may read:
//!
//! - the management API reads secret values as [`REDACTED`], never opening them;
//! - a task (the runtime's resolved call, the dev CLI's attempt start) gets every
//!   value in clear, except names the platform owns (`is_platform_owned`).
//!
//! A value that no longer opens (a master key missing, a row altered) fails the read
//! with [`EnvVarsError::Sealed`], a 500: a task must not silently run without it.

use std::collections::BTreeMap;

use runnel_core::envvars::{
    check_value, is_platform_owned, seal_context, EnvVarError, EnvVarName, REDACTED,
};
use runnel_core::key::EnvironmentKind;
use runnel_core::secrets::OpenError;
use runnel_core::tenancy::Environment;
use runnel_store::{EnvVarImport, EnvVarRecord, EnvVarWrite};

use crate::Engine;

/// A variable as the management API shows it: a secret's value is [`REDACTED`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvVarView {
    pub name: String,
    pub value: String,
    pub is_secret: bool,
}

/// Why an environment-variable operation failed.
#[derive(Debug, thiserror::Error)]
pub enum EnvVarsError {
    #[error(transparent)]
    Invalid(#[from] EnvVarError),
    #[error("Environment variable not found")]
    NotFound,
    /// An import without override named variables that are set; nothing was written.
    #[error("Some of the variables are already set for these environments. Set override to true to override them.")]
    Conflicts(Vec<String>),
    #[error("environment variable {name} does not open: {error}")]
    Sealed { name: String, error: OpenError },
    #[error(transparent)]
    Store(#[from] runnel_store::Error),
}

impl Engine {
    /// The environment of kind `kind`; `None` before the project exists.
    pub async fn environment(
        &self,
        kind: EnvironmentKind,
    ) -> Result<Option<Environment>, runnel_store::Error> {
        self.store.environment_get(kind).await
    }

    fn seal_var(&self, environment: &Environment, name: &EnvVarName, value: &str) -> String {
        self.master_keys()
            .seal(value, &seal_context(&environment.id, name.as_str()))
    }

    fn open_var(&self, record: &EnvVarRecord) -> Result<String, EnvVarsError> {
        self.master_keys()
            .open(
                &record.value_sealed,
                &seal_context(&record.environment_id, &record.name),
            )
            .map_err(|error| EnvVarsError::Sealed {
                name: record.name.clone(),
                error,
            })
    }

    fn view(
        record: EnvVarRecord,
        open: impl FnOnce(&EnvVarRecord) -> Result<String, EnvVarsError>,
    ) -> Result<EnvVarView, EnvVarsError> {
        let value = if record.is_secret {
            REDACTED.to_owned()
        } else {
            open(&record)?
        };
        Ok(EnvVarView {
            name: record.name,
            value,
            is_secret: record.is_secret,
        })
    }

    /// The variables of `environment` by name, secrets redacted.
    pub async fn env_var_list(
        &self,
        environment: &Environment,
    ) -> Result<Vec<EnvVarView>, EnvVarsError> {
        let records = self.store.env_var_list(&environment.id).await?;
        records
            .into_iter()
            .map(|record| Self::view(record, |r| self.open_var(r)))
            .collect()
    }

    /// One variable, its value redacted when secret.
    pub async fn env_var_get(
        &self,
        environment: &Environment,
        name: &str,
    ) -> Result<EnvVarView, EnvVarsError> {
        let record = self
            .store
            .env_var_get(&environment.id, name)
            .await?
            .ok_or(EnvVarsError::NotFound)?;
        Self::view(record, |r| self.open_var(r))
    }

    /// Creates `name` or replaces its value (a secret stays secret).
    pub async fn env_var_set(
        &self,
        environment: &Environment,
        name: &str,
        value: &str,
        is_secret: bool,
    ) -> Result<(), EnvVarsError> {
        let name = EnvVarName::parse(name)?;
        check_value(&name, value)?;
        let write = EnvVarWrite {
            value_sealed: self.seal_var(environment, &name, value),
            name: name.as_str().to_owned(),
            is_secret,
        };
        self.store
            .env_var_upsert(&environment.id, &write, self.clock.now())
            .await?;
        Ok(())
    }

    /// Replaces the value of an existing variable.
    pub async fn env_var_update(
        &self,
        environment: &Environment,
        name: &str,
        value: &str,
    ) -> Result<(), EnvVarsError> {
        // An invalid name cannot be stored, so it is as missing as an unknown one.
        let name = EnvVarName::parse(name).map_err(|_| EnvVarsError::NotFound)?;
        check_value(&name, value)?;
        let sealed = self.seal_var(environment, &name, value);
        let updated = self
            .store
            .env_var_update(&environment.id, name.as_str(), &sealed, self.clock.now())
            .await?;
        if updated {
            Ok(())
        } else {
            Err(EnvVarsError::NotFound)
        }
    }

    pub async fn env_var_delete(
        &self,
        environment: &Environment,
        name: &str,
    ) -> Result<(), EnvVarsError> {
        if self.store.env_var_delete(&environment.id, name).await? {
            Ok(())
        } else {
            Err(EnvVarsError::NotFound)
        }
    }

    /// Writes `vars` all or nothing: every name and value is checked first; without
    /// `override_existing` a name already set refuses the whole import
    /// ([`EnvVarsError::Conflicts`]).
    pub async fn env_var_import(
        &self,
        environment: &Environment,
        vars: &[(String, String)],
        override_existing: bool,
        is_secret: bool,
    ) -> Result<(), EnvVarsError> {
        let mut writes = Vec::with_capacity(vars.len());
        for (name, value) in vars {
            let name = EnvVarName::parse(name)?;
            check_value(&name, value)?;
            writes.push(EnvVarWrite {
                value_sealed: self.seal_var(environment, &name, value),
                name: name.as_str().to_owned(),
                is_secret,
            });
        }
        match self
            .store
            .env_var_import(
                &environment.id,
                &writes,
                override_existing,
                self.clock.now(),
            )
            .await?
        {
            EnvVarImport::Written => Ok(()),
            EnvVarImport::Conflicts(names) => Err(EnvVarsError::Conflicts(names)),
        }
    }

    /// What a task of `environment` sees: every variable in clear, except the names the
    /// platform owns.
    pub async fn env_vars_resolved(
        &self,
        environment: &Environment,
    ) -> Result<BTreeMap<String, String>, EnvVarsError> {
        let records = self.store.env_var_list(&environment.id).await?;
        let mut resolved = BTreeMap::new();
        for record in records {
            if is_platform_owned(&record.name) {
                continue;
            }
            let value = self.open_var(&record)?;
            resolved.insert(record.name, value);
        }
        Ok(resolved)
    }
}
