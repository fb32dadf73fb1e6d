//! Environment variables over HTTP (contract §2 rows 29–35):
//!
//! ```text
//! GET    /api/v1/projects/{ref}/envvars/{env}          [{name, value, isSecret}]
//! POST   /api/v1/projects/{ref}/envvars/{env}          {name, value, isSecret?} → {success}
//! GET    /api/v1/projects/{ref}/envvars/{env}/{name}   {name, value, isSecret}
//! PUT    /api/v1/projects/{ref}/envvars/{env}/{name}   {value} → {success}   (POST too)
//! DELETE /api/v1/projects/{ref}/envvars/{env}/{name}   {success}
//! POST   /api/v1/projects/{ref}/envvars/{env}/import   JSON or multipart dotenv → {success}
//! GET    /api/v1/projects/{ref}/envvars                {variables: {…}}  (the runtime's call)
//! GET    /api/v1/auth/whoami                           {projectRef, environment: {id, slug}}
//! ```
//!
//! Credentials: a secret key, whose project and environment must be the ones the path
//! names (else 400 with upstream's messages), or a personal access token of the project,
//! which reaches the environment the path names. `env` is `dev`, `staging` (or `stg`)
//! or `prod`; Runnel has no preview environments. Secret values read back as
//! `<redacted>`; only the resolved call (a secret key of the environment) gets them in
//! clear, for tasks.
//!
//! `…/{env}/import` shares its path with a variable named `import`: a POST there is the
//! import (as upstream), every other method is the variable's.
//!
//! `GET /api/v1/auth/whoami` is Runnel's own: what a secret key belongs to, so a client
//! holding only the key (the `runnel envvars` command, the worker runtime) can name its
//! project in these paths.

use axum::body::Bytes;
use axum::extract::{FromRequest, Multipart, Path, Request, State};
use axum::http::header::CONTENT_TYPE;
use axum::routing::get;
use axum::{Json, Router};
use runnel_core::envvars::{parse_dotenv, EnvVarError};
use runnel_core::key::EnvironmentKind;
use runnel_core::tenancy::Environment;
use runnel_engine::envvars::{EnvVarView, EnvVarsError};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::auth::{Authenticated, KeyOrPersonal};
use crate::error::ApiError;
use crate::extract::{issues_body as body, RawBody};
use crate::state::AppState;

const INVALID_PROJECT_REF: &str = "Invalid project ref for this API key. Make sure you are \
    using an API key associated with that project.";
const INVALID_SLUG: &str = "Invalid environment slug for this API key. Make sure you are \
    using an API key associated with that environment.";
const PROJECT_NOT_FOUND: &str = "Project not found";
const NO_PREVIEW: &str =
    "Runnel has no preview environment (its environments are dev, staging and prod)";
const NO_PARENT: &str = "parentVariables: Runnel has no preview branches, so an environment \
    has no parent to set them on";
/// The name of the path segment that is the import, not a variable, on POST.
const IMPORT: &str = "import";

/// The routes of this module, merged into the application's router.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/projects/{project_ref}/envvars", get(resolved))
        .route(
            "/api/v1/projects/{project_ref}/envvars/{env}",
            get(list).post(create),
        )
        .route(
            "/api/v1/projects/{project_ref}/envvars/{env}/{name}",
            get(retrieve).put(update).post(post_named).delete(delete),
        )
        .route("/api/v1/auth/whoami", get(whoami))
}

impl From<EnvVarsError> for ApiError {
    fn from(e: EnvVarsError) -> Self {
        let message = e.to_string();
        match e {
            EnvVarsError::Invalid(invalid) => {
                let key = match &invalid {
                    EnvVarError::Name(name) => name.clone(),
                    EnvVarError::ValueTooLong { name } | EnvVarError::ValueNul { name } => {
                        name.clone()
                    }
                };
                ApiError::Variables {
                    error: message.clone(),
                    variable_errors: vec![(key, message)],
                }
            }
            EnvVarsError::NotFound => ApiError::Missing(message),
            EnvVarsError::Conflicts(names) => ApiError::Variables {
                error: message,
                variable_errors: names
                    .into_iter()
                    .map(|name| (name, "Variable already set in this environment.".to_owned()))
                    .collect(),
            },
            e @ (EnvVarsError::Sealed { .. } | EnvVarsError::Store(_)) => {
                ApiError::Internal(runnel_engine::Error::EnvVars(e))
            }
        }
    }
}

/// The environment a path's `{ref}` and `{env}` name, as `caller` may reach it.
async fn environment_of(
    state: &AppState,
    caller: &KeyOrPersonal,
    project_ref: &str,
    slug: &str,
) -> Result<Environment, ApiError> {
    let kind = match slug {
        "dev" => Some(EnvironmentKind::Dev),
        "staging" | "stg" => Some(EnvironmentKind::Staging),
        "prod" => Some(EnvironmentKind::Prod),
        "preview" => None,
        other => {
            return Err(ApiError::BadRequest(format!(
                "Invalid environment slug {other:?}: expected dev, staging (or stg) or prod"
            )))
        }
    };
    match caller {
        KeyOrPersonal::Key(environment) => {
            if environment.project_id.as_str() != project_ref {
                return Err(ApiError::BadRequest(INVALID_PROJECT_REF.to_owned()));
            }
            if kind != Some(environment.kind) {
                return Err(ApiError::BadRequest(INVALID_SLUG.to_owned()));
            }
            Ok(environment.clone())
        }
        KeyOrPersonal::Personal(personal) => {
            if personal.project.id.as_str() != project_ref {
                return Err(ApiError::Missing(PROJECT_NOT_FOUND.to_owned()));
            }
            let kind = kind.ok_or_else(|| ApiError::Missing(NO_PREVIEW.to_owned()))?;
            state
                .engine
                .environment(kind)
                .await
                .map_err(|e| ApiError::Internal(e.into()))?
                .ok_or_else(|| ApiError::Missing(format!("Environment {kind} not found")))
        }
    }
}

fn view_json(var: &EnvVarView) -> Value {
    json!({"name": var.name, "value": var.value, "isSecret": var.is_secret})
}

fn success() -> Json<Value> {
    Json(json!({"success": true}))
}

/// `GET …/envvars/{env}`: every variable, secrets redacted.
async fn list(
    State(state): State<AppState>,
    caller: KeyOrPersonal,
    Path((project_ref, env)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let environment = environment_of(&state, &caller, &project_ref, &env).await?;
    let vars = state.engine.env_var_list(&environment).await?;
    Ok(Json(Value::Array(vars.iter().map(view_json).collect())))
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct CreateBody {
    name: String,
    value: String,
    #[serde(default)]
    is_secret: Option<bool>,
}

/// `POST …/envvars/{env}`: creates the variable or replaces its value.
async fn create(
    State(state): State<AppState>,
    caller: KeyOrPersonal,
    Path((project_ref, env)): Path<(String, String)>,
    raw: RawBody,
) -> Result<Json<Value>, ApiError> {
    let environment = environment_of(&state, &caller, &project_ref, &env).await?;
    let body: CreateBody = body(raw)?;
    state
        .engine
        .env_var_set(
            &environment,
            &body.name,
            &body.value,
            body.is_secret.unwrap_or(false),
        )
        .await?;
    Ok(success())
}

/// `GET …/envvars/{env}/{name}`.
async fn retrieve(
    State(state): State<AppState>,
    caller: KeyOrPersonal,
    Path((project_ref, env, name)): Path<(String, String, String)>,
) -> Result<Json<Value>, ApiError> {
    let environment = environment_of(&state, &caller, &project_ref, &env).await?;
    let var = state.engine.env_var_get(&environment, &name).await?;
    Ok(Json(view_json(&var)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateBody {
    value: String,
}

/// `PUT …/envvars/{env}/{name}`: replaces an existing variable's value.
async fn update(
    State(state): State<AppState>,
    caller: KeyOrPersonal,
    Path((project_ref, env, name)): Path<(String, String, String)>,
    raw: RawBody,
) -> Result<Json<Value>, ApiError> {
    let environment = environment_of(&state, &caller, &project_ref, &env).await?;
    let body: UpdateBody = body(raw)?;
    state
        .engine
        .env_var_update(&environment, &name, &body.value)
        .await?;
    Ok(success())
}

/// `POST …/envvars/{env}/{name}`: the import when `{name}` is `import`, else an update.
async fn post_named(
    State(state): State<AppState>,
    caller: KeyOrPersonal,
    Path((project_ref, env, name)): Path<(String, String, String)>,
    request: Request,
) -> Result<Json<Value>, ApiError> {
    let environment = environment_of(&state, &caller, &project_ref, &env).await?;
    if name == IMPORT {
        return import(&state, &environment, request).await;
    }
    let raw = Bytes::from_request(request, &state).await;
    let body: UpdateBody = body(raw)?;
    state
        .engine
        .env_var_update(&environment, &name, &body.value)
        .await?;
    Ok(success())
}

/// `DELETE …/envvars/{env}/{name}`.
async fn delete(
    State(state): State<AppState>,
    caller: KeyOrPersonal,
    Path((project_ref, env, name)): Path<(String, String, String)>,
) -> Result<Json<Value>, ApiError> {
    let environment = environment_of(&state, &caller, &project_ref, &env).await?;
    state.engine.env_var_delete(&environment, &name).await?;
    Ok(success())
}

/// Upstream's `source` of an import: who set the variables. Checked, then not kept
/// (Runnel has no users to attribute a change to).
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
#[allow(dead_code)] // checked for shape only
enum ImportSource {
    User {
        #[serde(rename = "userId")]
        user_id: String,
    },
    Integration {
        integration: String,
    },
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ImportBody {
    variables: Map<String, Value>,
    #[serde(default)]
    parent_variables: Option<Map<String, Value>>,
    #[serde(default)]
    r#override: Option<bool>,
    #[serde(default)]
    is_secret: Option<bool>,
    #[serde(default)]
    #[allow(dead_code)] // checked for shape only
    source: Option<ImportSource>,
}

/// The `{K: "v"}` of an import: every value must be a string.
fn string_map(field: &str, map: Map<String, Value>) -> Result<Vec<(String, String)>, ApiError> {
    map.into_iter()
        .map(|(key, value)| match value {
            Value::String(value) => Ok((key, value)),
            _ => Err(ApiError::Issues(vec![ApiError::issue(
                &[field, &key],
                "Expected string",
            )])),
        })
        .collect()
}

/// `POST …/envvars/{env}/import`: JSON `{variables, override?, isSecret?, …}` or
/// multipart with a dotenv `variables` file and `override`; all or nothing.
async fn import(
    state: &AppState,
    environment: &Environment,
    request: Request,
) -> Result<Json<Value>, ApiError> {
    let multipart = request
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().starts_with("multipart/form-data"));
    let (vars, override_existing, is_secret) = if multipart {
        import_multipart(state, request).await?
    } else {
        let raw = Bytes::from_request(request, state).await;
        let body: ImportBody = body(raw)?;
        if body.parent_variables.is_some_and(|p| !p.is_empty()) {
            return Err(ApiError::BadRequest(NO_PARENT.to_owned()));
        }
        (
            string_map("variables", body.variables)?,
            body.r#override.unwrap_or(false),
            body.is_secret.unwrap_or(false),
        )
    };
    state
        .engine
        .env_var_import(environment, &vars, override_existing, is_secret)
        .await?;
    Ok(success())
}

/// A multipart import: the `variables` file (dotenv), `override` and `isSecret`
/// (`true` or `false`). Any other field is refused.
async fn import_multipart(
    state: &AppState,
    request: Request,
) -> Result<(Vec<(String, String)>, bool, bool), ApiError> {
    let bad = |message: String| ApiError::BadRequest(message);
    let mut multipart = Multipart::from_request(request, state)
        .await
        .map_err(|e| bad(format!("Invalid body: {}", e.body_text())))?;
    let (mut vars, mut override_existing, mut is_secret) = (None, false, false);
    while let Some(field) = multipart
        .next_field()
        .await
        .map_err(|e| bad(format!("Invalid body: {}", e.body_text())))?
    {
        let name = field.name().unwrap_or_default().to_owned();
        let text = field
            .text()
            .await
            .map_err(|e| bad(format!("{name}: {}", e.body_text())))?;
        let flag = |text: &str| match text.trim() {
            "true" => Ok(true),
            "false" => Ok(false),
            other => Err(bad(format!(
                "{name}: expected true or false, got {other:?}"
            ))),
        };
        match name.as_str() {
            "variables" => {
                let parsed = parse_dotenv(&text).map_err(|e| bad(format!("variables: {e}")))?;
                vars = Some(parsed);
            }
            "override" => override_existing = flag(&text)?,
            "isSecret" => is_secret = flag(&text)?,
            other => {
                return Err(bad(format!(
                    "{other:?}: unknown field (expected variables, override, isSecret)"
                )))
            }
        }
    }
    let vars = vars.ok_or_else(|| bad("variables: a dotenv file is required".to_owned()))?;
    Ok((vars, override_existing, is_secret))
}

/// `GET /api/v1/projects/{ref}/envvars`: the variables of the key's own environment, in
/// clear, for the runtime (the dev CLI's index worker, Runnel's workers).
async fn resolved(
    State(state): State<AppState>,
    Authenticated(environment): Authenticated,
    Path(project_ref): Path<String>,
) -> Result<Json<Value>, ApiError> {
    if project_ref != environment.project_id.as_str() {
        return Err(ApiError::Missing(PROJECT_NOT_FOUND.to_owned()));
    }
    let variables = state.engine.env_vars_resolved(&environment).await?;
    Ok(Json(json!({ "variables": variables })))
}

/// `GET /api/v1/auth/whoami` (Runnel's own): what the secret key belongs to.
async fn whoami(Authenticated(environment): Authenticated) -> Json<Value> {
    Json(json!({
        "projectRef": environment.project_id.as_str(),
        "environment": {"id": environment.id.as_str(), "slug": environment.kind.slug()},
    }))
}
