//! The backends the suite runs on: a fresh SQLite file or a fresh PostgreSQL database
//! per test, dropped with the fixture.

use crate::harness::*;

/// A store on a fresh database, and whatever keeps that database alive until the test ends.
pub(crate) struct Fixture {
    pub(crate) store: Arc<dyn Store>,
    _database: Box<dyn Any + Send>,
}

pub(crate) async fn make_sqlite_store() -> Option<Fixture> {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let store = SqliteStore::open(&dir.path().join("runnel.db"))
        .await
        .expect("the store opens on a fresh file");
    Some(Fixture {
        store: Arc::new(store),
        _database: Box::new(dir),
    })
}

pub(crate) async fn make_postgres_store() -> Option<Fixture> {
    let database = PgTestDatabase::create().await?;
    let store = PgStore::connect_with(&database.url, PG_POOL_SIZE)
        .await
        .expect("the store connects to a fresh database and migrates it");
    Some(Fixture {
        store: Arc::new(store),
        _database: Box::new(database),
    })
}

/// The admin url of a server the suite may create and drop databases on.
const PG_URL_VAR: &str = "RUNNEL_TEST_DATABASE_URL";
/// Set to `1` to skip the PostgreSQL tests when there is no server.
const PG_SKIP_VAR: &str = "RUNNEL_SKIP_POSTGRES_TESTS";
/// Connections per test store: tests run in parallel against one server, whose
/// `max_connections` (100 by default) they share.
const PG_POOL_SIZE: u32 = 5;
const PG_DATABASE_PREFIX: &str = "runnel_test_";
/// A test database this old was left behind by a killed run.
const PG_STALE_AFTER_SECS: u64 = 3600;

/// The admin url, `None` when PostgreSQL tests are skipped on purpose; panics when the
/// url is missing and skipping was not asked for.
pub(crate) fn pg_admin_url() -> Option<String> {
    match std::env::var(PG_URL_VAR) {
        Ok(url) if !url.is_empty() => Some(url),
        _ if std::env::var(PG_SKIP_VAR).as_deref() == Ok("1") => {
            eprintln!("skipping a PostgreSQL test: {PG_SKIP_VAR}=1 and {PG_URL_VAR} is unset");
            None
        }
        _ => panic!(
            "{PG_URL_VAR} is unset: point it at a PostgreSQL server the tests may create \
             databases on (e.g. postgres://postgres@127.0.0.1:5432/postgres), \
             or set {PG_SKIP_VAR}=1 to skip the PostgreSQL tests"
        ),
    }
}

pub(crate) fn unix_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is past 1970")
        .as_secs()
}

async fn pg_admin_connect(admin_url: &str) -> PgConnection {
    PgConnection::connect(admin_url)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to {PG_URL_VAR} ({admin_url}): {e}"))
}

async fn pg_drop_database(admin: &mut PgConnection, name: &str) -> Result<(), sqlx::Error> {
    sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
        .execute(admin)
        .await?;
    Ok(())
}

/// Drops the test databases that killed runs left behind, once per test process.
async fn pg_drop_stale_databases(admin: &mut PgConnection) {
    static SWEPT: OnceCell<()> = OnceCell::const_new();
    SWEPT
        .get_or_init(|| async {
            let names: Vec<String> = sqlx::query_scalar("SELECT datname FROM pg_database")
                .fetch_all(&mut *admin)
                .await
                .expect("list databases");
            let now = unix_secs();
            for name in names {
                let created = name
                    .strip_prefix(PG_DATABASE_PREFIX)
                    .and_then(|rest| rest.split('_').next())
                    .and_then(|secs| secs.parse::<u64>().ok());
                if created.is_some_and(|secs| now.saturating_sub(secs) > PG_STALE_AFTER_SECS) {
                    if let Err(e) = pg_drop_database(admin, &name).await {
                        eprintln!("could not drop stale test database {name}: {e}");
                    }
                }
            }
        })
        .await;
}

/// A fresh, empty database, dropped with this guard.
#[derive(Debug)]
pub(crate) struct PgTestDatabase {
    admin_url: String,
    name: String,
    /// Connects to the fresh database.
    pub(crate) url: String,
}

impl PgTestDatabase {
    /// `None` when PostgreSQL tests are skipped.
    pub(crate) async fn create() -> Option<Self> {
        let admin_url = pg_admin_url()?;
        let mut admin = pg_admin_connect(&admin_url).await;
        pg_drop_stale_databases(&mut admin).await;
        let name = format!(
            "{PG_DATABASE_PREFIX}{}_{:016x}",
            unix_secs(),
            rand::random::<u64>()
        );
        sqlx::query(&format!("CREATE DATABASE \"{name}\""))
            .execute(&mut admin)
            .await
            .unwrap_or_else(|e| panic!("create test database {name}: {e}"));
        admin.close().await.ok();
        let url = PgConnectOptions::from_str(&admin_url)
            .expect("a valid postgres url")
            .database(&name)
            .to_url_lossy()
            .to_string();
        Some(PgTestDatabase {
            admin_url,
            name,
            url,
        })
    }
}

impl Drop for PgTestDatabase {
    /// Drops the database from a thread with its own runtime: `Drop` cannot await, and
    /// the test's runtime may be unwinding from a panic.
    fn drop(&mut self) {
        let admin_url = self.admin_url.clone();
        let name = self.name.clone();
        let dropped = std::thread::spawn(move || -> Result<(), String> {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            runtime.block_on(async {
                let mut admin = PgConnection::connect(&admin_url)
                    .await
                    .map_err(|e| e.to_string())?;
                pg_drop_database(&mut admin, &name)
                    .await
                    .map_err(|e| e.to_string())?;
                admin.close().await.ok();
                Ok(())
            })
        })
        .join();
        match dropped {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("could not drop test database {}: {e}", self.name),
            Err(_) => eprintln!("dropping test database {} panicked", self.name),
        }
    }
}
