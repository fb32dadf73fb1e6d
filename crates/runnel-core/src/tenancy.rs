//! Projects and their environments: the unit every key, run and query is scoped to.

use chrono::{DateTime, Utc};

use crate::id::{EnvironmentId, ProjectId};
use crate::key::EnvironmentKind;

#[derive(Debug, Clone, PartialEq)]
pub struct Project {
    pub id: ProjectId,
    pub created_at: DateTime<Utc>,
}

/// One environment of a project. A secret key belongs to exactly one.
#[derive(Debug, Clone, PartialEq)]
pub struct Environment {
    pub id: EnvironmentId,
    pub project_id: ProjectId,
    pub kind: EnvironmentKind,
}

/// What `runnel keys list` shows of a key: never the secret.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiKeyInfo {
    pub prefix: String,
    pub environment: EnvironmentKind,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// What `runnel keys list` shows of a personal access token: never the secret.
#[derive(Debug, Clone, PartialEq)]
pub struct PersonalAccessTokenInfo {
    pub prefix: String,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
}
