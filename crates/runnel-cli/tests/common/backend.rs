//! Which store the servers of a test binary use.
//!
//! `RUNNEL_TEST_BACKEND=postgres` makes every server the harness starts (and every
//! `runnel keys …` it runs on a data directory) use a fresh PostgreSQL database of its
//! own instead of the SQLite file in its data directory, so a whole suite written for one
//! server runs unchanged against PostgreSQL:
//!
//! ```sh
//! RUNNEL_TEST_BACKEND=postgres RUNNEL_TEST_DATABASE_URL=postgres://postgres@127.0.0.1:5432/test \
//!   cargo test -p runnel --test engine_e2e --test list
//! ```
//!
//! The database belongs to the data directory: a server restarted on the same directory
//! finds its runs again, as it would in its SQLite file. It is created by the shared
//! harness (`runnel_testkit::pg`) on the server named by `RUNNEL_TEST_DATABASE_URL`
//! (which must then be set: choosing PostgreSQL and having none is a failure, not a
//! skip). It is dropped once its data directory is gone (looked at whenever another
//! database is created, so a test binary leaves at most its last few behind); databases
//! left behind are dropped by a later run once an hour old.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{LazyLock, Mutex};

pub use runnel_testkit::pg::{backend, Backend, PgTestDatabase, DATABASE_URL_VAR};

/// Databases by data directory, for the servers of this test binary.
static DATABASES: LazyLock<Mutex<HashMap<PathBuf, PgTestDatabase>>> =
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
        // its directory): their databases go (dropping the guard drops the database).
        databases.retain(|dir, _| dir.exists());
    }
    let database = databases
        .entry(data_dir.to_owned())
        .or_insert_with(PgTestDatabase::create_required_blocking);
    vec!["--database-url".to_owned(), database.url.clone()]
}
