//! `runnel`: the one binary. `serve` runs the server; `keys` manages secret keys.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use runnel_core::key::{EnvironmentKind, SecretKey};
use runnel_engine::{Clock, Engine, SystemClock};
use runnel_server::AppState;
use runnel_store::{PgStore, RevokeOutcome, SqliteStore, Store};
use tokio::sync::watch;

/// Default address `runnel serve` listens on.
const LISTEN_DEFAULT: &str = "127.0.0.1:3030";
/// Default directory for the embedded database (and, later, blobs).
const DATA_DIR_DEFAULT: &str = ".runnel";
/// The SQLite file inside the data directory.
const DATABASE_FILE: &str = "runnel.db";

#[derive(Debug, Parser)]
#[command(
    name = "runnel",
    version,
    about = "Background task runs, self-hosted, Trigger.dev-compatible API"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server (API and runtime services).
    Serve(ServeArgs),
    /// Create, list and revoke secret API keys.
    #[command(subcommand)]
    Keys(KeysCommand),
}

/// Where the database is: an explicit URL, or the SQLite file in the data directory.
#[derive(Debug, Args)]
struct StoreArgs {
    /// Directory for the embedded SQLite database.
    #[arg(long, env = "RUNNEL_DATA_DIR", default_value = DATA_DIR_DEFAULT)]
    data_dir: PathBuf,
    /// Database URL: `postgres://user@host/db` (several nodes may share it) or
    /// `sqlite://path/to/file.db`; overrides --data-dir.
    #[arg(long, env = "RUNNEL_DATABASE_URL")]
    database_url: Option<String>,
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, env = "RUNNEL_LISTEN", default_value = LISTEN_DEFAULT)]
    listen: SocketAddr,
    #[command(flatten)]
    store: StoreArgs,
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Create a secret key and print it (alone) on stdout.
    Create {
        /// Environment of the key: dev, staging or prod.
        #[arg(long)]
        env: EnvironmentKind,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// List keys: prefix, environment, creation and revocation time. Never the secret.
    List {
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Revoke the key whose prefix (as `keys list` shows it) starts with PREFIX.
    Revoke {
        prefix: String,
        #[command(flatten)]
        store: StoreArgs,
    },
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match Cli::parse().command {
        Command::Serve(args) => serve(args).await,
        Command::Keys(command) => keys(command).await,
    }
}

async fn open_store(args: &StoreArgs) -> Result<Arc<dyn Store>> {
    let store = match &args.database_url {
        Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
            let store = PgStore::connect(url)
                .await
                .context("connecting to PostgreSQL")?;
            return Ok(Arc::new(store));
        }
        Some(url) => SqliteStore::open_url(url)
            .await
            .with_context(|| format!("opening database {url}"))?,
        None => {
            std::fs::create_dir_all(&args.data_dir)
                .with_context(|| format!("creating data directory {}", args.data_dir.display()))?;
            let path = args.data_dir.join(DATABASE_FILE);
            SqliteStore::open(&path)
                .await
                .with_context(|| format!("opening database {}", path.display()))?
        }
    };
    Ok(Arc::new(store))
}

async fn serve(args: ServeArgs) -> Result<()> {
    let store = open_store(&args.store).await?;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let dev_key = SecretKey::generate(EnvironmentKind::Dev);
    if let Some(bootstrap) = store.project_bootstrap(&dev_key, clock.now()).await? {
        let kinds: Vec<_> = bootstrap
            .environments
            .iter()
            .map(|e| e.kind.slug())
            .collect();
        println!(
            "Created project {} with environments {}.",
            bootstrap.project.id,
            kinds.join(", ")
        );
        println!("Dev secret key (shown once, keep it): {}", dev_key.expose());
    }
    let engine = Engine::new(store.clone(), clock);
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let addr = listener.local_addr()?;
    println!("Runnel listening on http://{addr}");

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let services = tokio::spawn(engine.clone().run_services(shutdown_rx.clone()));
    let mut http_shutdown = shutdown_rx;
    let server = tokio::spawn(runnel_server::serve(
        listener,
        AppState { engine },
        async move {
            let _ = http_shutdown.wait_for(|stop| *stop).await;
        },
    ));

    shutdown_signal().await;
    tracing::info!("shutting down: finishing in-flight requests");
    let _ = shutdown_tx.send(true);
    server.await.context("server task")??;
    services.await.context("services task")?;
    store.close().await;
    tracing::info!("stopped");
    Ok(())
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .expect("installing the SIGTERM handler");
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
}

async fn keys(command: KeysCommand) -> Result<()> {
    let now = SystemClock.now();
    match command {
        KeysCommand::Create { env, store } => {
            let store = open_store(&store).await?;
            let environment = store
                .environment_get(env)
                .await?
                .context("no project yet: start `runnel serve` once to create it")?;
            let key = SecretKey::generate(env);
            store.api_key_insert(&key, &environment.id, now).await?;
            store.close().await;
            println!("{}", key.expose());
        }
        KeysCommand::List { store } => {
            let store = open_store(&store).await?;
            let keys = store.api_key_list().await?;
            store.close().await;
            println!("{:<16} {:<8} {:<25} REVOKED", "PREFIX", "ENV", "CREATED");
            for key in keys {
                println!(
                    "{:<16} {:<8} {:<25} {}",
                    key.prefix,
                    key.environment.slug(),
                    runnel_core::view::iso(key.created_at),
                    key.revoked_at
                        .map(runnel_core::view::iso)
                        .unwrap_or_else(|| "-".to_owned())
                );
            }
        }
        KeysCommand::Revoke { prefix, store } => {
            let store = open_store(&store).await?;
            let outcome = store.api_key_revoke(&prefix, now).await?;
            store.close().await;
            match outcome {
                RevokeOutcome::Revoked { prefix } => println!("revoked {prefix}"),
                RevokeOutcome::NotFound => bail!("no live key starts with {prefix:?}"),
                RevokeOutcome::Ambiguous { matches } => {
                    bail!("{matches} live keys start with {prefix:?}; give more of the prefix")
                }
            }
        }
    }
    Ok(())
}
