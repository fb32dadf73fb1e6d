//! The backends the suite runs on: a fresh SQLite file or a fresh PostgreSQL database
//! per test (the shared harness's, `runnel_testkit::pg`), dropped with the fixture.

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

/// Connections per test store: tests run in parallel against one server, whose
/// `max_connections` (100 by default) they share.
const PG_POOL_SIZE: u32 = 5;
