//! Which store the servers of a test binary use.
//!
//! `RUNNEL_TEST_BACKEND=postgres` makes every server the harness starts (and every
//! `runnel keys …` it runs on a data directory) use a fresh PostgreSQL database of its
//! own instead of the SQLite file in its data directory, so a whole suite written for one
//! server runs unchanged against PostgreSQL:
//!
//! ```sh
//! RUNNEL_TEST_BACKEND=postgres RUNNEL_TEST_DATABASE_URL=postgres://postgres@127.0.0.1:5432/test \
//!   cargo test -p runnel --test api --test engine_e2e
//! ```
//!
//! The database belongs to the data directory: a server restarted on the same directory
//! finds its runs again, as it would in its SQLite file. It is created on the server
//! named by `RUNNEL_TEST_DATABASE_URL` (which must then be set: choosing PostgreSQL and
//! having none is a failure, not a skip). It is dropped once its data directory is gone
//! (looked at whenever another database is created, so a test binary leaves at most its
//! last few behind); databases left behind are dropped by a later run once an hour old.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{LazyLock, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use rand::Rng;
use sqlx::{Connection, PgConnection, Row};

/// `sqlite` (the default) or `postgres`.
pub const BACKEND_VAR: &str = "RUNNEL_TEST_BACKEND";
/// A PostgreSQL server the tests may create and drop databases on (any database url).
pub const DATABASE_URL_VAR: &str = "RUNNEL_TEST_DATABASE_URL";
const DATABASE_PREFIX: &str = "runnel_e2e_";
/// A test database this old was left behind by a killed run.
const STALE_AFTER_SECS: u64 = 3600;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// The backend `RUNNEL_TEST_BACKEND` names (SQLite when unset).
pub fn backend() -> Backend {
    match std::env::var(BACKEND_VAR).as_deref() {
        Err(_) | Ok("") | Ok("sqlite") => Backend::Sqlite,
        Ok("postgres") => Backend::Postgres,
        Ok(other) => panic!("{BACKEND_VAR}={other:?}: expected sqlite or postgres"),
    }
}

/// Database urls by data directory, for the servers of this test binary.
static DATABASES: LazyLock<Mutex<HashMap<PathBuf, FreshDatabase>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

/// `--database-url <url>` of `data_dir`'s database when the backend is PostgreSQL
/// (creating the database on first use); nothing on SQLite.
pub fn store_args(data_dir: &Path) -> Vec<String> {
    if backend() == Backend::Sqlite {
        return Vec::new();
    }
    let mut databases = DATABASES.lock().unwrap_or_else(|e| e.into_inner());
    if !databases.contains_key(data_dir) {
        // The tests whose directories are gone are over (a test drops its server before
        // its directory): their databases go.
        let over: Vec<PathBuf> = databases.keys().filter(|d| !d.exists()).cloned().collect();
        for dir in over {
            if let Some(database) = databases.remove(&dir) {
                database.drop_blocking();
            }
        }
    }
    let database = databases
        .entry(data_dir.to_owned())
        .or_insert_with(FreshDatabase::create_blocking);
    vec!["--database-url".to_owned(), database.url.clone()]
}

/// A database created for one test.
#[derive(Debug, Clone)]
pub struct FreshDatabase {
    admin_url: String,
    pub name: String,
    /// The url a server connects to.
    pub url: String,
}

impl FreshDatabase {
    /// Creates an empty database on the server of `RUNNEL_TEST_DATABASE_URL`; panics when
    /// the variable is unset.
    pub async fn create() -> FreshDatabase {
        let admin_url = match std::env::var(DATABASE_URL_VAR) {
            Ok(url) if !url.is_empty() => url,
            _ => panic!(
                "{DATABASE_URL_VAR} is unset: point it at a PostgreSQL server the tests may \
                 create databases on"
            ),
        };
        let secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let name = format!(
            "{DATABASE_PREFIX}{secs}_{:08x}",
            rand::rng().random::<u32>()
        );
        let mut admin = PgConnection::connect(&admin_url)
            .await
            .expect("connecting to PostgreSQL");
        drop_stale(&mut admin, secs).await;
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .await
            .unwrap_or_else(|e| panic!("creating database {name}: {e}"));
        admin.close().await.unwrap();
        let base = admin_url.rsplit_once('/').expect("a url with a database").0;
        let url = format!("{base}/{name}");
        FreshDatabase {
            admin_url,
            name,
            url,
        }
    }

    /// [`FreshDatabase::create`] from synchronous code (on a thread of its own, so it
    /// also works inside a test's runtime).
    pub fn create_blocking() -> FreshDatabase {
        on_own_runtime(FreshDatabase::create())
    }

    /// Drops the database, disconnecting whoever is still connected.
    pub async fn drop_database(&self) {
        let mut admin = PgConnection::connect(&self.admin_url).await.unwrap();
        sqlx::query(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        ))
        .execute(&mut admin)
        .await
        .unwrap_or_else(|e| panic!("dropping database {}: {e}", self.name));
    }

    pub fn drop_blocking(&self) {
        let database = self.clone();
        on_own_runtime(async move { database.drop_database().await });
    }
}

/// Drops test databases older than [`STALE_AFTER_SECS`] (their names start with the
/// creation time): a killed run leaves its databases behind.
async fn drop_stale(admin: &mut PgConnection, now_secs: u64) {
    let names: Vec<String> = sqlx::query("SELECT datname FROM pg_database WHERE datname LIKE $1")
        .bind(format!("{DATABASE_PREFIX}%"))
        .fetch_all(&mut *admin)
        .await
        .map(|rows| rows.iter().map(|r| r.get::<String, _>(0)).collect())
        .unwrap_or_default();
    for name in names {
        let created = name
            .strip_prefix(DATABASE_PREFIX)
            .and_then(|rest| rest.split('_').next())
            .and_then(|secs| secs.parse::<u64>().ok());
        if created.is_some_and(|c| c + STALE_AFTER_SECS < now_secs) {
            let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                .execute(&mut *admin)
                .await;
        }
    }
}

fn on_own_runtime<T: Send + 'static>(
    future: impl std::future::Future<Output = T> + Send + 'static,
) -> T {
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime")
            .block_on(future)
    })
    .join()
    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}
