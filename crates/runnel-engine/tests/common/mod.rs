//! The engine over a real SQLite store in a temporary directory, with a hand-driven
//! clock: what every engine test starts from. Each test file adds its own helpers in an
//! `impl Harness` block.

// Each test binary uses a different part of the harness.
#![allow(dead_code)]

use std::sync::Arc;

use chrono::{DateTime, Utc};
use runnel_core::key::{EnvironmentKind, SecretKey};
use runnel_core::tenancy::Environment;
use runnel_engine::{Engine, EngineConfig, ManualClock};
use runnel_store::{SqliteStore, Store};
use tempfile::TempDir;

pub struct Harness {
    pub engine: Engine,
    pub clock: Arc<ManualClock>,
    pub dev: Environment,
    pub prod: Environment,
    _dir: TempDir,
}

/// Where every test's clock starts.
pub fn start() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-03-01T12:00:00Z")
        .unwrap()
        .with_timezone(&Utc)
}

/// An engine with the default config over an empty, bootstrapped store; no worker is
/// registered.
pub async fn harness() -> Harness {
    let dir = TempDir::new().unwrap();
    let store: Arc<dyn Store> =
        Arc::new(SqliteStore::open(&dir.path().join("t.db")).await.unwrap());
    store
        .project_bootstrap(
            &SecretKey::generate(EnvironmentKind::Dev),
            &runnel_core::secrets::MasterKeys::ephemeral(),
            start(),
        )
        .await
        .unwrap()
        .unwrap();
    let environment = |kind| {
        let store = Arc::clone(&store);
        async move { store.environment_get(kind).await.unwrap().unwrap() }
    };
    let dev = environment(EnvironmentKind::Dev).await;
    let prod = environment(EnvironmentKind::Prod).await;
    let clock = Arc::new(ManualClock::new(start()));
    Harness {
        engine: Engine::with_config(store, clock.clone(), EngineConfig::default()),
        clock,
        dev,
        prod,
        _dir: dir,
    }
}
