//! [`TestApp`]: a server in this process, built as `runnel serve` builds it with its
//! default settings, on a fresh store of its own.
//!
//! The store is a SQLite file in a temporary directory, or, when
//! `RUNNEL_TEST_BACKEND=postgres`, a fresh PostgreSQL database (see [`crate::pg`]). The
//! project is bootstrapped with a new dev key, the engine runs its runtime services and
//! the cross-node signals, and `runnel_server::serve` listens on `127.0.0.1:0` under the
//! default connection limits (the cap fitted under the open-file limit), with no rate
//! limit and the default batch-upload slots: what `runnel serve --listen 127.0.0.1:0`
//! runs, minus the process around it (banner, logging, signals).
//!
//! The server runs on a multi-threaded runtime of its own, so a test's own runtime (a
//! `#[tokio::test]`'s single thread) only drives the client, as it would against a
//! separate process, and [`TestApp::start`] is a plain function. Dropping the app stops
//! the server as `runnel serve` stops on SIGTERM (long polls released, in-flight
//! requests finished, services stopped, store closed), then removes its directory and
//! its database.
//!
//! What needs the process itself (its flags, its output, signals, restarts on the same
//! data directory, process-wide state such as log-once warnings) is tested against the
//! `runnel` binary in the runnel-cli crate.

use std::net::SocketAddr;
use std::ops::Deref;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use runnel_core::key::{EnvironmentKind, SecretKey};
use runnel_core::secrets::MasterKeys;
use runnel_engine::{BlobConfig, BlobLocation, Blobs, Clock, Engine, EngineConfig, SystemClock};
use runnel_server::batches::{BatchUploads, BATCH_UPLOADS_PER_ENVIRONMENT_DEFAULT};
use runnel_server::connections::{ConnectionLimits, FileLimit};
use runnel_server::AppState;
use runnel_store::prelude::*;
use runnel_store::{PgStore, SqliteStore};
use tempfile::TempDir;
use tokio::runtime::Runtime;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::http::Api;
use crate::pg::{backend, Backend, PgTestDatabase};

/// The SQLite file inside the data directory (as `runnel serve` names it).
const DATABASE_FILE: &str = "runnel.db";
/// Worker threads of the server's runtime.
const SERVER_THREADS: usize = 2;
/// How long a dropped server may take to finish its in-flight requests and stop.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// A fresh store with a server running on it (which created the project).
#[derive(Debug)]
pub struct TestApp {
    pub server: Server,
    /// The dev key the bootstrap created.
    pub dev_key: String,
    /// The master key the server seals secrets under (a new one per app; a server
    /// restarted on the same store needs it again).
    pub master_keys: MasterKeys,
    // Dropped after `server` (fields drop in order), so the server never loses its files
    // or its database while it runs.
    /// The data directory (the SQLite file is there; empty on PostgreSQL).
    pub dir: TempDir,
    database: Option<PgTestDatabase>,
}

impl TestApp {
    /// Starts a server on a fresh store: SQLite in a temporary directory, or a fresh
    /// PostgreSQL database when `RUNNEL_TEST_BACKEND=postgres`.
    pub fn start() -> TestApp {
        TestApp::start_with_blobs(|dir| BlobConfig {
            location: BlobLocation::Local(dir),
            ..BlobConfig::default()
        })
    }

    /// [`TestApp::start`] with the object storage `blobs` builds from the default local
    /// blob directory (`<data dir>/blobs`): a short URL lifetime, a small size cap, S3.
    pub fn start_with_blobs(blobs: impl FnOnce(PathBuf) -> BlobConfig) -> TestApp {
        let dir = TempDir::new().expect("creating a temporary data directory");
        let blobs = blobs(dir.path().join("blobs"));
        let database = match backend() {
            Backend::Sqlite => None,
            Backend::Postgres => Some(PgTestDatabase::create_required_blocking()),
        };
        let place = match &database {
            Some(database) => Place::Postgres(database.url.clone()),
            None => Place::Sqlite(dir.path().join(DATABASE_FILE)),
        };
        let master_keys = MasterKeys::ephemeral();
        let (server, dev_key) = Server::start(place, master_keys.clone(), blobs);
        TestApp {
            server,
            dev_key,
            master_keys,
            dir,
            database,
        }
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().to_owned()
    }

    /// The url of the PostgreSQL database the server runs on, `None` on SQLite.
    pub fn database_url(&self) -> Option<&str> {
        self.database.as_ref().map(|d| d.url.as_str())
    }

    /// Creates a secret key for environment `env` (`dev`, `staging` or `prod`) as
    /// `runnel keys create --env <env>` does; returns the key.
    pub fn keys_create(&self, env: &str) -> String {
        let kind: EnvironmentKind = env.parse().unwrap_or_else(|e| panic!("{e}"));
        let store = Arc::clone(&self.server.store);
        let keys = self.master_keys.clone();
        self.server.block_on(async move {
            let environment = store
                .environment_get(kind)
                .await
                .expect("reading the environment")
                .expect("the project was bootstrapped");
            let key = SecretKey::generate(kind);
            store
                .api_key_insert(&key, &environment.id, &keys, SystemClock.now())
                .await
                .expect("inserting the key");
            key.expose().to_owned()
        })
    }
}

impl TestApp {
    /// Creates a personal access token as `runnel keys create --pat` does; returns it.
    pub fn pat_create(&self) -> String {
        let engine = self.server.engine.clone();
        self.server.block_on(async move {
            let project = engine
                .project()
                .await
                .expect("reading the project")
                .expect("the project was bootstrapped");
            let token = engine
                .pat_create(&project)
                .await
                .expect("creating the token");
            token.expose().to_owned()
        })
    }

    /// The project's id (`proj_…`), the ref the `trigger.dev` CLI names it by.
    pub fn project_id(&self) -> String {
        let engine = self.server.engine.clone();
        self.server.block_on(async move {
            let project = engine.project().await.expect("reading the project");
            project
                .expect("the project was bootstrapped")
                .id
                .to_string()
        })
    }

    /// Revokes the one key or token whose prefix starts with `prefix`, as
    /// `runnel keys revoke PREFIX` does.
    pub fn revoke(&self, prefix: &str) {
        let store = Arc::clone(&self.server.store);
        let prefix = prefix.to_owned();
        let outcome = self.server.block_on(async move {
            store
                .api_key_revoke(&prefix, SystemClock.now())
                .await
                .expect("revoking")
        });
        assert!(
            matches!(outcome, runnel_store::RevokeOutcome::Revoked { .. }),
            "{outcome:?}"
        );
    }
}

/// Where a server's store is.
#[derive(Debug, Clone)]
enum Place {
    Sqlite(PathBuf),
    Postgres(String),
}

/// A server running in this process, on a runtime of its own; its [`Api`] is reached
/// through `Deref` (`server.trigger(…)`, `server.url`). Stopped when dropped.
#[derive(Debug)]
pub struct Server {
    api: Api,
    pub addr: SocketAddr,
    pub engine: Engine,
    store: Arc<dyn Store>,
    running: Option<Running>,
}

/// What stopping a server stops.
#[derive(Debug)]
struct Running {
    runtime: Runtime,
    shutdown: watch::Sender<bool>,
    server: JoinHandle<std::io::Result<()>>,
    services: JoinHandle<()>,
    signals: JoinHandle<()>,
}

impl Deref for Server {
    type Target = Api;

    fn deref(&self) -> &Api {
        &self.api
    }
}

impl Server {
    /// Opens the store, bootstraps the project with a new dev key, binds `127.0.0.1:0`
    /// and serves; returns the server and the dev key.
    fn start(place: Place, master_keys: MasterKeys, blobs: BlobConfig) -> (Server, String) {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(SERVER_THREADS)
            .thread_name("runnel-test-server")
            .enable_all()
            .build()
            .expect("building the server's runtime");
        // On a thread of its own: the caller may be inside a runtime, where blocking on
        // another one is refused.
        let (runtime, started) = std::thread::spawn(move || {
            let started = runtime.block_on(Server::serve(place, master_keys, blobs));
            (runtime, started)
        })
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        let Started {
            addr,
            engine,
            store,
            dev_key,
            shutdown,
            server,
            services,
            signals,
        } = started;
        let server = Server {
            api: Api::new(format!("http://{addr}")),
            addr,
            engine,
            store,
            running: Some(Running {
                runtime,
                shutdown,
                server,
                services,
                signals,
            }),
        };
        (server, dev_key)
    }

    /// What `runnel serve` does up to printing its address, on the server's runtime.
    async fn serve(place: Place, master_keys: MasterKeys, blobs: BlobConfig) -> Started {
        let limits = limits();
        let store: Arc<dyn Store> = match place {
            Place::Sqlite(path) => Arc::new(
                SqliteStore::open(&path)
                    .await
                    .unwrap_or_else(|e| panic!("opening database {}: {e}", path.display())),
            ),
            Place::Postgres(url) => Arc::new(
                PgStore::connect_with(&url, runnel_store::postgres::MAX_CONNECTIONS_DEFAULT)
                    .await
                    .unwrap_or_else(|e| panic!("connecting to PostgreSQL ({url}): {e}")),
            ),
        };
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let engine = Engine::with_config(
            Arc::clone(&store),
            Arc::clone(&clock),
            EngineConfig {
                blobs: Blobs::new(blobs, &master_keys).expect("building the blob store"),
                master_keys,
                ..EngineConfig::default()
            },
        );
        engine
            .master_keys_prepare()
            .await
            .expect("checking the master key");
        let dev_key = SecretKey::generate(EnvironmentKind::Dev);
        store
            .project_bootstrap(&dev_key, engine.master_keys(), clock.now())
            .await
            .expect("bootstrapping the project")
            .expect("a fresh store creates the project");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding 127.0.0.1:0");
        let addr = listener.local_addr().expect("the bound address");

        let (shutdown, shutdown_rx) = watch::channel(false);
        let services = tokio::spawn(engine.clone().run_services(shutdown_rx.clone()));
        let signals = tokio::spawn(engine.clone().run_signals(shutdown_rx.clone()));
        let mut http_shutdown = shutdown_rx;
        let server = tokio::spawn(runnel_server::serve(
            listener,
            AppState {
                engine: engine.clone(),
                rate_limiter: None,
                batch_uploads: BatchUploads::new(BATCH_UPLOADS_PER_ENVIRONMENT_DEFAULT),
                dev: runnel_server::devboot::DevState::default(),
                realtime: Default::default(),
            },
            limits,
            async move {
                let _ = http_shutdown.wait_for(|stop| *stop).await;
            },
        ));
        Started {
            addr,
            engine,
            store,
            dev_key: dev_key.expose().to_owned(),
            shutdown,
            server,
            services,
            signals,
        }
    }

    /// The store the server runs on.
    pub fn store(&self) -> Arc<dyn Store> {
        Arc::clone(&self.store)
    }

    /// Runs `future` on the server's runtime and waits for it (from a thread of its own,
    /// so the caller may be inside a runtime).
    pub fn block_on<T: Send + 'static>(
        &self,
        future: impl std::future::Future<Output = T> + Send + 'static,
    ) -> T {
        let handle = self
            .running
            .as_ref()
            .expect("the server runs")
            .runtime
            .handle()
            .clone();
        std::thread::spawn(move || handle.block_on(future))
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    }
}

impl Drop for Server {
    /// Stops as `runnel serve` stops on SIGTERM: releases the long polls, stops
    /// accepting, lets in-flight requests finish (for at most [`STOP_TIMEOUT`]), stops
    /// the services, closes the store. On a thread of its own: the caller may be inside
    /// a runtime, where a runtime may not be dropped.
    fn drop(&mut self) {
        let Some(running) = self.running.take() else {
            return;
        };
        let engine = self.engine.clone();
        let store = Arc::clone(&self.store);
        let stopped = std::thread::spawn(move || {
            let Running {
                runtime,
                shutdown,
                mut server,
                services,
                signals,
            } = running;
            runtime.block_on(async move {
                engine.stop_long_polls();
                let _ = shutdown.send(true);
                if tokio::time::timeout(STOP_TIMEOUT, &mut server)
                    .await
                    .is_err()
                {
                    server.abort();
                }
                let _ = tokio::time::timeout(STOP_TIMEOUT, async {
                    let _ = services.await;
                    let _ = signals.await;
                })
                .await;
                store.close().await;
            });
            runtime.shutdown_timeout(STOP_TIMEOUT);
        })
        .join();
        if stopped.is_err() && !std::thread::panicking() {
            panic!("stopping the in-process server panicked");
        }
    }
}

/// A server just started: what [`Server::serve`] hands back.
struct Started {
    addr: SocketAddr,
    engine: Engine,
    store: Arc<dyn Store>,
    dev_key: String,
    shutdown: watch::Sender<bool>,
    server: JoinHandle<std::io::Result<()>>,
    services: JoinHandle<()>,
    signals: JoinHandle<()>,
}

/// `runnel serve`'s connection limits with their defaults: the open-file limit raised as
/// far as allowed and the connection cap fitted under it.
fn limits() -> ConnectionLimits {
    let defaults = ConnectionLimits::default();
    let files = FileLimit::raise().expect("reading the open file limit");
    ConnectionLimits {
        max_connections: defaults.max_connections.min(files.connections()),
        ..defaults
    }
}
