//! `runnel envvars ls | set | rm`: the environment variables of the key's environment,
//! over the env var API. The key names its project and environment
//! (`GET /api/v1/auth/whoami`); secret values are listed as `<redacted>`.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use runnel_sdk::{Client, StatusCode, Whoami};

async fn whoami(client: &Client) -> Result<Whoami> {
    client
        .whoami()
        .await
        .context("could not learn the key's project and environment")
}

/// Prints the variables as a table: name, value (secrets redacted), whether secret.
pub async fn ls(client: &Client) -> Result<()> {
    let me = whoami(client).await?;
    let vars = client
        .env_var_list(&me.project_ref, &me.environment.slug)
        .await?;
    if vars.is_empty() {
        println!("No environment variables in {}.", me.environment.slug);
        return Ok(());
    }
    let width = vars.iter().map(|v| v.name.len()).max().unwrap_or(0).max(4);
    println!("{:<width$}  {:<6}  VALUE", "NAME", "SECRET");
    for var in &vars {
        let secret = if var.is_secret { "yes" } else { "no" };
        println!("{:<width$}  {secret:<6}  {}", var.name, var.value);
    }
    Ok(())
}

/// Splits `NAME=VALUE` at its first `=`.
pub fn parse_assignment(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((name, value)) if !name.is_empty() => Ok((name.to_owned(), value.to_owned())),
        _ => Err(format!("expected NAME=VALUE, got {text:?}")),
    }
}

/// Sets one variable, or (with `from_file`) every variable of a dotenv file at once.
pub async fn set(
    client: &Client,
    assignment: Option<(String, String)>,
    from_file: Option<&Path>,
    secret: bool,
    override_existing: bool,
) -> Result<()> {
    let me = whoami(client).await?;
    let env = &me.environment.slug;
    match (assignment, from_file) {
        (Some((name, value)), None) => {
            client
                .env_var_set(&me.project_ref, env, &name, &value, secret)
                .await?;
            println!("set {name} in {env}");
        }
        (None, Some(path)) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("could not read {}", path.display()))?;
            let parsed = runnel_core::envvars::parse_dotenv(&text)
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            let variables: BTreeMap<String, String> = parsed.into_iter().collect();
            client
                .env_var_import(&me.project_ref, env, &variables, override_existing, secret)
                .await?;
            println!("set {} variables in {env}", variables.len());
        }
        _ => bail!("give NAME=VALUE or --from-file FILE (one of them)"),
    }
    Ok(())
}

/// Deletes one variable.
pub async fn rm(client: &Client, name: &str) -> Result<()> {
    let me = whoami(client).await?;
    let env = &me.environment.slug;
    match client.env_var_delete(&me.project_ref, env, name).await {
        Err(e) if e.status() == Some(StatusCode::NOT_FOUND) => {
            bail!("no variable {name} in {env}")
        }
        other => other?,
    }
    println!("removed {name} from {env}");
    Ok(())
}
