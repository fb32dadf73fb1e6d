//! Fresh PostgreSQL databases for tests, and which backend a suite's servers use.
//!
//! Every test that needs PostgreSQL creates its own database
//! `runnel_test_<unix secs>_<random>` on the server named by `RUNNEL_TEST_DATABASE_URL`
//! (any url of a server where databases may be created, e.g.
//! `postgres://postgres@127.0.0.1:5432/postgres`) and drops it `WITH (FORCE)` when its
//! [`PgTestDatabase`] drops, even when the test panics. Databases a killed run left
//! behind are dropped by the first database creation of a later test process once they
//! are an hour old.
//!
//! Without `RUNNEL_TEST_DATABASE_URL` a PostgreSQL test fails, so a CI that lost its
//! database cannot pass by skipping them; `RUNNEL_SKIP_POSTGRES_TESTS=1` skips them on
//! purpose ([`PgTestDatabase::create`] answers `None`). A suite run on PostgreSQL as a
//! whole (`RUNNEL_TEST_BACKEND=postgres`, see [`backend`]) has no skip: choosing
//! PostgreSQL without a server is a failure ([`PgTestDatabase::create_required`]).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use sqlx::{Connection, PgConnection};

/// `sqlite` (the default) or `postgres`: the store of every server a suite starts.
pub const BACKEND_VAR: &str = "RUNNEL_TEST_BACKEND";
/// A PostgreSQL server the tests may create and drop databases on (any database url).
pub const DATABASE_URL_VAR: &str = "RUNNEL_TEST_DATABASE_URL";
/// Set to `1` to skip the PostgreSQL tests when there is no server.
pub const SKIP_VAR: &str = "RUNNEL_SKIP_POSTGRES_TESTS";

/// How the names of the databases this harness creates begin.
const DATABASE_PREFIX: &str = "runnel_test_";
/// Prefixes of test databases that stale-database cleanup also drops: this harness's,
/// and the one the end-to-end suite used before it.
const STALE_PREFIXES: [&str; 2] = [DATABASE_PREFIX, "runnel_e2e_"];
/// A test database this old was left behind by a killed run.
const STALE_AFTER_SECS: u64 = 3600;

/// The store a suite's servers run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// The backend `RUNNEL_TEST_BACKEND` names (SQLite when unset or empty); panics on any
/// other value.
pub fn backend() -> Backend {
    match std::env::var(BACKEND_VAR).as_deref() {
        Err(_) | Ok("") | Ok("sqlite") => Backend::Sqlite,
        Ok("postgres") => Backend::Postgres,
        Ok(other) => panic!("{BACKEND_VAR}={other:?}: expected sqlite or postgres"),
    }
}

/// The admin url, `None` when PostgreSQL tests are skipped on purpose; panics when the
/// url is missing and skipping was not asked for.
pub fn pg_admin_url() -> Option<String> {
    match std::env::var(DATABASE_URL_VAR) {
        Ok(url) if !url.is_empty() => Some(url),
        _ if std::env::var(SKIP_VAR).as_deref() == Ok("1") => {
            eprintln!("skipping a PostgreSQL test: {SKIP_VAR}=1 and {DATABASE_URL_VAR} is unset");
            None
        }
        _ => panic!("{}", missing_url(true)),
    }
}

/// The admin url; panics when it is missing, whatever `RUNNEL_SKIP_POSTGRES_TESTS` says.
fn required_admin_url() -> String {
    match std::env::var(DATABASE_URL_VAR) {
        Ok(url) if !url.is_empty() => url,
        _ => panic!("{}", missing_url(false)),
    }
}

fn missing_url(may_skip: bool) -> String {
    let skip = if may_skip {
        format!(", or set {SKIP_VAR}=1 to skip the PostgreSQL tests")
    } else {
        String::new()
    };
    format!(
        "{DATABASE_URL_VAR} is unset: point it at a PostgreSQL server the tests may create \
         databases on (e.g. postgres://postgres@127.0.0.1:5432/postgres){skip}"
    )
}

/// Seconds since the Unix epoch.
pub fn unix_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is past 1970")
        .as_secs()
}

/// A fresh, empty database, dropped (`WITH (FORCE)`: whoever is still connected is
/// disconnected) with this guard.
#[derive(Debug)]
pub struct PgTestDatabase {
    admin_url: String,
    /// The database's name.
    pub name: String,
    /// Connects to the fresh database: the admin url with its database replaced.
    pub url: String,
}

impl PgTestDatabase {
    /// A fresh database, or `None` when PostgreSQL tests are skipped on purpose
    /// (`RUNNEL_SKIP_POSTGRES_TESTS=1` and no `RUNNEL_TEST_DATABASE_URL`); panics when
    /// the url is missing otherwise.
    pub async fn create() -> Option<PgTestDatabase> {
        let admin_url = pg_admin_url()?;
        Some(PgTestDatabase::create_on(admin_url).await)
    }

    /// A fresh database; panics when `RUNNEL_TEST_DATABASE_URL` is unset (for a suite
    /// that chose PostgreSQL, where a missing server is a failure, never a skip).
    pub async fn create_required() -> PgTestDatabase {
        PgTestDatabase::create_on(required_admin_url()).await
    }

    /// [`PgTestDatabase::create_required`] from synchronous code (on a thread of its
    /// own, so it also works inside a test's runtime).
    pub fn create_required_blocking() -> PgTestDatabase {
        on_own_runtime(PgTestDatabase::create_required())
    }

    async fn create_on(admin_url: String) -> PgTestDatabase {
        let mut admin = admin_connect(&admin_url).await;
        drop_stale_databases(&mut admin).await;
        let name = format!(
            "{DATABASE_PREFIX}{}_{:016x}",
            unix_secs(),
            rand::random::<u64>()
        );
        sqlx::query(&format!("CREATE DATABASE \"{name}\""))
            .execute(&mut admin)
            .await
            .unwrap_or_else(|e| panic!("creating test database {name}: {e}"));
        admin.close().await.ok();
        let url = with_database(&admin_url, &name);
        PgTestDatabase {
            admin_url,
            name,
            url,
        }
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
                drop_database(&mut admin, &name)
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

/// `admin_url` naming database `name` instead of its own (its query string kept).
fn with_database(admin_url: &str, name: &str) -> String {
    let (base, query) = match admin_url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (admin_url, None),
    };
    let authority = base
        .rsplit_once('/')
        .filter(|(head, _)| head.contains("://") && !head.ends_with('/'))
        .map_or(base, |(head, _)| head);
    match query {
        Some(query) => format!("{authority}/{name}?{query}"),
        None => format!("{authority}/{name}"),
    }
}

async fn admin_connect(admin_url: &str) -> PgConnection {
    PgConnection::connect(admin_url)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to {DATABASE_URL_VAR} ({admin_url}): {e}"))
}

async fn drop_database(admin: &mut PgConnection, name: &str) -> Result<(), sqlx::Error> {
    sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
        .execute(admin)
        .await?;
    Ok(())
}

/// Drops the test databases that killed runs left behind (their names start with their
/// creation time), once per test process.
async fn drop_stale_databases(admin: &mut PgConnection) {
    static SWEPT: AtomicBool = AtomicBool::new(false);
    if SWEPT.swap(true, Ordering::SeqCst) {
        return;
    }
    let names: Vec<String> = sqlx::query_scalar("SELECT datname FROM pg_database")
        .fetch_all(&mut *admin)
        .await
        .expect("listing databases");
    let now = unix_secs();
    for name in names {
        let created = STALE_PREFIXES
            .iter()
            .find_map(|prefix| name.strip_prefix(prefix))
            .and_then(|rest| rest.split('_').next())
            .and_then(|secs| secs.parse::<u64>().ok());
        if created.is_some_and(|secs| now.saturating_sub(secs) > STALE_AFTER_SECS) {
            if let Err(e) = drop_database(admin, &name).await {
                eprintln!("could not drop stale test database {name}: {e}");
            }
        }
    }
}

/// Runs `future` to completion on a runtime of its own, on a thread of its own.
pub(crate) fn on_own_runtime<T: Send + 'static>(
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

#[cfg(test)]
mod tests {
    use super::with_database;

    #[test]
    fn with_database_replaces_the_database_and_keeps_the_rest() {
        assert_eq!(
            with_database("postgres://postgres@127.0.0.1:5432/test", "d"),
            "postgres://postgres@127.0.0.1:5432/d"
        );
        assert_eq!(
            with_database("postgres://u:p@h/test?sslmode=disable", "d"),
            "postgres://u:p@h/d?sslmode=disable"
        );
        assert_eq!(
            with_database("postgres://h:5432", "d"),
            "postgres://h:5432/d"
        );
    }
}
