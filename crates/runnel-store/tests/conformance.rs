//! The store conformance suite: one set of tests every [`Store`] backend must pass.
//!
//! Each test is a plain `async fn(Arc<dyn Store>)` that knows nothing about the backend.
//! [`conformance_tests!`] turns the whole list into `#[tokio::test]`s for one backend, in
//! a module named after it (`sqlite::run_expire_due_ends_queued_runs_past_their_ttl`).
//! Adding a backend is one line, like `conformance_tests!(postgres, make_postgres_store)`,
//! where `make_postgres_store() -> Option<Fixture>` hands out a store on a fresh, empty
//! database and a guard that drops the database with the fixture (`None` skips the
//! test). A new test is written once and added to the list inside the macro.
//!
//! PostgreSQL: every test creates its own database `runnel_test_<unix secs>_<random>` on
//! the server named by `RUNNEL_TEST_DATABASE_URL` (an admin url, e.g.
//! `postgres://postgres@127.0.0.1:5432/postgres`) and drops it `WITH (FORCE)` when the
//! fixture drops, even when the test panics. Databases a killed run left behind are
//! dropped by the first test of a later run once they are an hour old. Without
//! `RUNNEL_TEST_DATABASE_URL` the PostgreSQL tests fail, so a CI that lost its database
//! cannot pass by skipping them; `RUNNEL_SKIP_POSTGRES_TESTS=1` skips them on purpose.
//!
//! Invariants of the suite: every test starts on an empty database of its own, so tests
//! run in parallel; time is passed in as fixed instants ([`at`]), never read from the
//! clock or slept on; stored runs are compared whole with `assert_eq!`, so a field that
//! stops round-tripping fails the test that touches it.

use std::any::Any;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use chrono::{DateTime, Duration, TimeZone, Utc};
use runnel_core::key::{EnvironmentKind, SecretKey};
use runnel_core::run::{Packet, Run};
use runnel_core::tenancy::{ApiKeyInfo, Environment};
use runnel_core::trigger::{IdempotencyHeaders, TriggerRequest};
use runnel_core::{RunId, RunStatus};
use runnel_store::{PgStore, RevokeOutcome, SqliteStore, Store, TriggerOutcome};
use serde_json::{json, Value};
use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{ConnectOptions, Connection};
use tokio::sync::{Barrier, OnceCell};
use tokio::task::JoinSet;

/// Expands every conformance test into a `#[tokio::test]` against the store that
/// `$make_store().await` returns, inside `mod $backend`.
macro_rules! conformance_tests {
    ($backend:ident, $make_store:ident) => {
        conformance_tests!(@expand $backend, $make_store, [
            ping_answers,
            project_bootstrap_creates_project_environments_and_dev_key,
            project_bootstrap_runs_once_and_drops_the_second_key,
            project_bootstrap_creates_one_project_under_concurrent_bootstraps,
            api_key_authenticate_finds_the_environment_of_a_live_key,
            api_key_list_shows_prefixes_never_secrets,
            api_key_revoke_by_unique_prefix_stops_authentication,
            api_key_revoke_reports_an_unknown_prefix,
            api_key_revoke_refuses_an_ambiguous_prefix,
            api_key_revoke_revokes_once_under_concurrent_revokes,
            run_round_trips_every_field_set,
            run_round_trips_every_field_empty,
            run_get_is_scoped_to_the_environment,
            run_trigger_refuses_a_duplicate_id,
            idempotency_same_key_and_task_returns_the_holder,
            idempotency_key_is_scoped_to_the_task,
            idempotency_key_is_scoped_to_the_environment,
            idempotency_failed_holder_releases_the_key,
            idempotency_expired_key_is_released,
            idempotency_canceled_holder_keeps_the_key,
            idempotency_follows_the_holder_status,
            idempotency_holds_under_concurrent_triggers,
            run_transition_is_conditional_on_the_current_status,
            run_transition_into_a_final_status_sets_completed_at,
            run_transition_never_leaves_a_final_status,
            run_expire_due_ends_queued_runs_past_their_ttl,
            run_expire_due_respects_the_limit,
            run_expire_due_concurrent_sweeps_expire_each_run_once,
            run_promote_due_queues_delayed_runs_whose_delay_ended,
            run_promote_due_respects_the_limit,
            run_promote_due_concurrent_sweeps_promote_each_run_once,
            run_next_due_at_is_the_earliest_expiry_or_promotion,
            run_children_lists_the_runs_of_a_parent,
            attempt_list_is_empty_for_a_run_without_attempts,
        ]);
    };
    (@expand $backend:ident, $make_store:ident, [$($test:ident),* $(,)?]) => {
        mod $backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $test() {
                    let Some(fixture) = super::$make_store().await else {
                        return;
                    };
                    super::$test(std::sync::Arc::clone(&fixture.store)).await;
                    fixture.store.close().await;
                }
            )*
        }
    };
}

/// A store on a fresh database, and whatever keeps that database alive until the test ends.
struct Fixture {
    store: Arc<dyn Store>,
    _database: Box<dyn Any + Send>,
}

async fn make_sqlite_store() -> Option<Fixture> {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let store = SqliteStore::open(&dir.path().join("runnel.db"))
        .await
        .expect("the store opens on a fresh file");
    Some(Fixture {
        store: Arc::new(store),
        _database: Box::new(dir),
    })
}

conformance_tests!(sqlite, make_sqlite_store);

async fn make_postgres_store() -> Option<Fixture> {
    let database = PgTestDatabase::create().await?;
    let store = PgStore::connect_with(&database.url, PG_POOL_SIZE)
        .await
        .expect("the store connects to a fresh database and migrates it");
    Some(Fixture {
        store: Arc::new(store),
        _database: Box::new(database),
    })
}

conformance_tests!(postgres, make_postgres_store);

// ---------------------------------------------------------------------------------------
// PostgreSQL test databases

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
fn pg_admin_url() -> Option<String> {
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

fn unix_secs() -> u64 {
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
struct PgTestDatabase {
    admin_url: String,
    name: String,
    /// Connects to the fresh database.
    url: String,
}

impl PgTestDatabase {
    /// `None` when PostgreSQL tests are skipped.
    async fn create() -> Option<Self> {
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

/// Several nodes starting at once on one empty database: each connects (running the
/// migrations) and bootstraps; every node gets a working store and exactly one of them
/// creates the project.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_nodes_starting_together_migrate_and_bootstrap_once() {
    const NODES: usize = 4;
    let Some(database) = PgTestDatabase::create().await else {
        return;
    };
    let start = Arc::new(Barrier::new(NODES));
    let mut nodes = JoinSet::new();
    for _ in 0..NODES {
        let url = database.url.clone();
        let start = Arc::clone(&start);
        nodes.spawn(async move {
            start.wait().await;
            let store = PgStore::connect_with(&url, 2)
                .await
                .expect("every node connects and migrates");
            let key = SecretKey::generate(EnvironmentKind::Dev);
            let bootstrap = store
                .project_bootstrap(&key, at(0))
                .await
                .expect("bootstrap");
            (store, bootstrap)
        });
    }
    let nodes = nodes.join_all().await;
    let created: Vec<_> = nodes.iter().filter_map(|(_, b)| b.as_ref()).collect();
    assert_eq!(created.len(), 1, "exactly one node bootstraps");
    for (store, _) in &nodes {
        assert_eq!(
            store.project_get().await.unwrap(),
            Some(created[0].project.clone())
        );
        store.close().await;
    }
}

// ---------------------------------------------------------------------------------------
// Helpers

const MINUTE: i64 = 60;
const HOUR: i64 = 3600;
/// Enough for any batch a test creates.
const NO_LIMIT: u32 = 1000;

/// The suite's fixed clock: 2026-01-02T03:04:05Z plus `secs`.
fn at(secs: i64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap() + Duration::seconds(secs)
}

/// The project's three environments and the key the project was bootstrapped with.
struct Tenancy {
    dev: Environment,
    staging: Environment,
    prod: Environment,
    dev_key: SecretKey,
}

async fn bootstrap(store: &dyn Store) -> Tenancy {
    let dev_key = SecretKey::generate(EnvironmentKind::Dev);
    let bootstrap = store
        .project_bootstrap(&dev_key, at(0))
        .await
        .expect("bootstrap")
        .expect("an empty database bootstraps");
    let environment = |kind: EnvironmentKind| {
        bootstrap
            .environments
            .iter()
            .find(|e| e.kind == kind)
            .cloned()
            .unwrap_or_else(|| panic!("bootstrap created no {kind} environment"))
    };
    Tenancy {
        dev: environment(EnvironmentKind::Dev),
        staging: environment(EnvironmentKind::Staging),
        prod: environment(EnvironmentKind::Prod),
        dev_key,
    }
}

/// The run a trigger of `task` with request `body` creates in `environment` at `now`.
fn run_from(task: &str, body: Value, environment: &Environment, now: DateTime<Utc>) -> Run {
    let request: TriggerRequest = serde_json::from_value(body).expect("a well-formed trigger body");
    request
        .validate(task, &IdempotencyHeaders::default(), now)
        .expect("a valid trigger")
        .into_run(
            RunId::generate(now.timestamp_millis()),
            environment.id.clone(),
            now,
        )
}

fn queued_run(environment: &Environment, now: DateTime<Utc>) -> Run {
    run_from("my-task", json!({"payload": {"n": 1}}), environment, now)
}

fn run_with_options(options: Value, environment: &Environment, now: DateTime<Utc>) -> Run {
    run_from(
        "my-task",
        json!({"payload": {"n": 1}, "options": options}),
        environment,
        now,
    )
}

fn keyed_run(task: &str, key: &str, environment: &Environment, now: DateTime<Utc>) -> Run {
    run_from(
        task,
        json!({"options": {"idempotencyKey": key}}),
        environment,
        now,
    )
}

/// Triggers `run` and asserts it was inserted.
async fn create(store: &dyn Store, run: &Run, now: DateTime<Utc>) {
    let outcome = store.run_trigger(run, now).await.expect("trigger");
    assert_eq!(
        outcome,
        TriggerOutcome::Created(run.id.clone()),
        "triggering {}",
        run.id
    );
}

/// The stored version of `run`, which must exist.
async fn stored(store: &dyn Store, run: &Run) -> Run {
    store
        .run_get(&run.environment_id, &run.id)
        .await
        .expect("run_get")
        .unwrap_or_else(|| panic!("run {} is not stored", run.id))
}

async fn stored_status(store: &dyn Store, run: &Run) -> RunStatus {
    stored(store, run).await.status
}

/// Ids in a stable order, for comparing sets of ids.
fn sorted(mut ids: Vec<RunId>) -> Vec<RunId> {
    ids.sort();
    ids
}

/// Asserts the test run really sets every optional field, and every other field away
/// from its default, so the round trip covers them all. Destructuring without `..`
/// makes this stop compiling when `Run` gains a field, until the field is added here.
fn assert_every_field_set(run: &Run) {
    let Run {
        id: _,
        environment_id: _,
        task_identifier: _,
        status,
        payload,
        output,
        error,
        idempotency_key,
        idempotency_key_user,
        idempotency_key_scope,
        idempotency_key_expires_at,
        tags,
        metadata,
        delay_until,
        ttl,
        expire_at,
        expired_at,
        max_attempts,
        max_duration_secs,
        machine,
        priority_ms,
        is_test,
        queue: _,
        concurrency_key,
        lock_to_version,
        worker_version,
        created_at,
        updated_at,
        started_at,
        completed_at,
        attempt_count,
        usage_duration_ms,
        cost_in_cents,
        base_cost_in_cents,
        depth,
        parent_run_id,
        root_run_id,
        batch_id,
        resume_parent_on_completion,
        schedule_id,
        queue_ts,
        worker_id,
        current_attempt_id,
        lease_expires_at,
        timeout_at,
        next_attempt_at,
        failed_attempts,
    } = run;
    let checks = [
        ("status", *status != RunStatus::Queued),
        ("payload.data", payload.data.is_some()),
        ("output", output.as_ref().is_some_and(|o| o.data.is_some())),
        ("error", error.is_some()),
        ("idempotency_key", idempotency_key.is_some()),
        ("idempotency_key_user", idempotency_key_user.is_some()),
        ("idempotency_key_scope", idempotency_key_scope.is_some()),
        (
            "idempotency_key_expires_at",
            idempotency_key_expires_at.is_some(),
        ),
        ("tags", tags.len() > 1),
        (
            "metadata",
            metadata.as_ref().is_some_and(|m| m.data.is_some()),
        ),
        ("delay_until", delay_until.is_some()),
        ("ttl", ttl.is_some()),
        ("expire_at", expire_at.is_some()),
        ("expired_at", expired_at.is_some()),
        ("max_attempts", max_attempts.is_some()),
        ("max_duration_secs", max_duration_secs.is_some()),
        ("machine", machine.is_some()),
        ("priority_ms", *priority_ms != 0),
        ("is_test", *is_test),
        ("concurrency_key", concurrency_key.is_some()),
        ("lock_to_version", lock_to_version.is_some()),
        ("worker_version", worker_version.is_some()),
        ("updated_at", updated_at != created_at),
        ("started_at", started_at.is_some()),
        ("completed_at", completed_at.is_some()),
        ("attempt_count", *attempt_count > 0),
        (
            "usage_duration_ms",
            *usage_duration_ms > i64::from(i32::MAX),
        ),
        ("cost_in_cents", *cost_in_cents != 0.0),
        ("base_cost_in_cents", *base_cost_in_cents != 0.0),
        ("depth", *depth > 0),
        ("parent_run_id", parent_run_id.is_some()),
        ("root_run_id", root_run_id.is_some()),
        ("batch_id", batch_id.is_some()),
        ("resume_parent_on_completion", *resume_parent_on_completion),
        ("schedule_id", schedule_id.is_some()),
        ("queue_ts", *queue_ts != created_at.timestamp_millis()),
        ("worker_id", worker_id.is_some()),
        ("current_attempt_id", current_attempt_id.is_some()),
        ("lease_expires_at", lease_expires_at.is_some()),
        ("timeout_at", timeout_at.is_some()),
        ("next_attempt_at", next_attempt_at.is_some()),
        ("failed_attempts", *failed_attempts > 0),
    ];
    for (field, is_set) in checks {
        assert!(is_set, "the round-trip run must set {field}");
    }
}

// ---------------------------------------------------------------------------------------
// Health and tenancy

async fn ping_answers(store: Arc<dyn Store>) {
    store.ping().await.expect("ping");
}

async fn project_bootstrap_creates_project_environments_and_dev_key(store: Arc<dyn Store>) {
    assert_eq!(store.project_get().await.unwrap(), None);
    assert_eq!(
        store.environment_get(EnvironmentKind::Dev).await.unwrap(),
        None
    );

    let dev_key = SecretKey::generate(EnvironmentKind::Dev);
    let bootstrap = store
        .project_bootstrap(&dev_key, at(0))
        .await
        .unwrap()
        .expect("first bootstrap");

    assert_eq!(bootstrap.project.created_at, at(0));
    assert_eq!(
        store.project_get().await.unwrap(),
        Some(bootstrap.project.clone())
    );
    assert_eq!(bootstrap.environments.len(), 3);
    for kind in EnvironmentKind::ALL {
        let of_kind: Vec<&Environment> = bootstrap
            .environments
            .iter()
            .filter(|e| e.kind == kind)
            .collect();
        assert_eq!(of_kind.len(), 1, "one {kind} environment");
        assert_eq!(of_kind[0].project_id, bootstrap.project.id);
        assert_eq!(
            store.environment_get(kind).await.unwrap().as_ref(),
            Some(of_kind[0])
        );
    }
    let mut ids: Vec<&str> = bootstrap
        .environments
        .iter()
        .map(|e| e.id.as_str())
        .collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 3, "environment ids are distinct");

    let dev = store.environment_get(EnvironmentKind::Dev).await.unwrap();
    assert_eq!(
        store.api_key_authenticate(&dev_key.hash()).await.unwrap(),
        dev
    );
    assert_eq!(
        store.api_key_list().await.unwrap(),
        vec![ApiKeyInfo {
            prefix: dev_key.display_prefix(),
            environment: EnvironmentKind::Dev,
            created_at: at(0),
            revoked_at: None,
        }]
    );
}

async fn project_bootstrap_runs_once_and_drops_the_second_key(store: Arc<dyn Store>) {
    let tenancy = bootstrap(&*store).await;
    let project = store.project_get().await.unwrap();
    let keys = store.api_key_list().await.unwrap();

    let second_key = SecretKey::generate(EnvironmentKind::Dev);
    assert_eq!(
        store
            .project_bootstrap(&second_key, at(MINUTE))
            .await
            .unwrap(),
        None
    );

    assert_eq!(store.project_get().await.unwrap(), project);
    assert_eq!(
        store.environment_get(EnvironmentKind::Dev).await.unwrap(),
        Some(tenancy.dev.clone())
    );
    assert_eq!(
        store
            .api_key_authenticate(&second_key.hash())
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        store
            .api_key_authenticate(&tenancy.dev_key.hash())
            .await
            .unwrap(),
        Some(tenancy.dev)
    );
    assert_eq!(store.api_key_list().await.unwrap(), keys);
}

/// Several nodes starting at once on an empty database create one project between them.
async fn project_bootstrap_creates_one_project_under_concurrent_bootstraps(store: Arc<dyn Store>) {
    const NODES: usize = 4;
    let start = Arc::new(Barrier::new(NODES));
    let mut bootstraps = JoinSet::new();
    for _ in 0..NODES {
        let store = Arc::clone(&store);
        let start = Arc::clone(&start);
        bootstraps.spawn(async move {
            let key = SecretKey::generate(EnvironmentKind::Dev);
            start.wait().await;
            let bootstrap = store
                .project_bootstrap(&key, at(0))
                .await
                .expect("bootstrap");
            (key, bootstrap)
        });
    }
    let outcomes = bootstraps.join_all().await;

    let created: Vec<_> = outcomes
        .iter()
        .filter_map(|(key, bootstrap)| Some((key, bootstrap.as_ref()?)))
        .collect();
    assert_eq!(
        created.len(),
        1,
        "exactly one bootstrap creates the project"
    );
    let (winner_key, bootstrap) = created[0];
    assert_eq!(
        store.project_get().await.unwrap(),
        Some(bootstrap.project.clone())
    );
    assert_eq!(
        store.api_key_list().await.unwrap(),
        vec![ApiKeyInfo {
            prefix: winner_key.display_prefix(),
            environment: EnvironmentKind::Dev,
            created_at: at(0),
            revoked_at: None,
        }],
        "only the winner's key is stored"
    );
    for kind in EnvironmentKind::ALL {
        let environment = bootstrap.environments.iter().find(|e| e.kind == kind);
        assert_eq!(
            store.environment_get(kind).await.unwrap().as_ref(),
            environment
        );
    }
}

// ---------------------------------------------------------------------------------------
// API keys

/// Keys beside the bootstrap key: a second dev key, a staging key and a prod key,
/// created one minute apart.
struct Keys {
    dev: SecretKey,
    dev_second: SecretKey,
    staging: SecretKey,
    prod: SecretKey,
}

async fn insert_keys(store: &dyn Store, tenancy: &Tenancy) -> Keys {
    let keys = Keys {
        dev: tenancy.dev_key.clone(),
        dev_second: SecretKey::generate(EnvironmentKind::Dev),
        staging: SecretKey::generate(EnvironmentKind::Staging),
        prod: SecretKey::generate(EnvironmentKind::Prod),
    };
    store
        .api_key_insert(&keys.dev_second, &tenancy.dev.id, at(MINUTE))
        .await
        .unwrap();
    store
        .api_key_insert(&keys.staging, &tenancy.staging.id, at(2 * MINUTE))
        .await
        .unwrap();
    store
        .api_key_insert(&keys.prod, &tenancy.prod.id, at(3 * MINUTE))
        .await
        .unwrap();
    keys
}

/// What `api_key_list` shows for the keys of [`insert_keys`], none revoked.
fn listed(keys: &Keys) -> Vec<ApiKeyInfo> {
    [
        (&keys.dev, EnvironmentKind::Dev, at(0)),
        (&keys.dev_second, EnvironmentKind::Dev, at(MINUTE)),
        (&keys.staging, EnvironmentKind::Staging, at(2 * MINUTE)),
        (&keys.prod, EnvironmentKind::Prod, at(3 * MINUTE)),
    ]
    .into_iter()
    .map(|(key, environment, created_at)| ApiKeyInfo {
        prefix: key.display_prefix(),
        environment,
        created_at,
        revoked_at: None,
    })
    .collect()
}

async fn api_key_authenticate_finds_the_environment_of_a_live_key(store: Arc<dyn Store>) {
    let tenancy = bootstrap(&*store).await;
    let keys = insert_keys(&*store, &tenancy).await;

    for (key, environment) in [
        (&keys.dev, &tenancy.dev),
        (&keys.dev_second, &tenancy.dev),
        (&keys.staging, &tenancy.staging),
        (&keys.prod, &tenancy.prod),
    ] {
        assert_eq!(
            store
                .api_key_authenticate(&key.hash())
                .await
                .unwrap()
                .as_ref(),
            Some(environment),
            "{key:?}"
        );
    }
    let unknown = SecretKey::generate(EnvironmentKind::Prod);
    assert_eq!(
        store.api_key_authenticate(&unknown.hash()).await.unwrap(),
        None
    );
    // Keys are looked up by hash only: the secret itself is not a credential for storage.
    assert_eq!(
        store
            .api_key_authenticate(keys.prod.expose())
            .await
            .unwrap(),
        None
    );
}

async fn api_key_list_shows_prefixes_never_secrets(store: Arc<dyn Store>) {
    let tenancy = bootstrap(&*store).await;
    let keys = insert_keys(&*store, &tenancy).await;

    let list = store.api_key_list().await.unwrap();
    assert_eq!(list, listed(&keys));
    let shown = format!("{list:?}");
    for key in [&keys.dev, &keys.dev_second, &keys.staging, &keys.prod] {
        assert!(
            !shown.contains(key.expose()),
            "the list leaks a secret: {shown}"
        );
        assert!(
            !shown.contains(&key.hash()),
            "the list leaks a hash: {shown}"
        );
    }
}

async fn api_key_revoke_by_unique_prefix_stops_authentication(store: Arc<dyn Store>) {
    let tenancy = bootstrap(&*store).await;
    let keys = insert_keys(&*store, &tenancy).await;

    let outcome = store
        .api_key_revoke(&keys.staging.display_prefix(), at(HOUR))
        .await
        .unwrap();
    assert_eq!(
        outcome,
        RevokeOutcome::Revoked {
            prefix: keys.staging.display_prefix()
        }
    );
    // A shorter prefix works when only one live key starts with it.
    let outcome = store.api_key_revoke("tr_prod", at(2 * HOUR)).await.unwrap();
    assert_eq!(
        outcome,
        RevokeOutcome::Revoked {
            prefix: keys.prod.display_prefix()
        }
    );

    assert_eq!(
        store
            .api_key_authenticate(&keys.staging.hash())
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        store.api_key_authenticate(&keys.prod.hash()).await.unwrap(),
        None
    );
    assert_eq!(
        store.api_key_authenticate(&keys.dev.hash()).await.unwrap(),
        Some(tenancy.dev.clone())
    );
    assert_eq!(
        store
            .api_key_authenticate(&keys.dev_second.hash())
            .await
            .unwrap(),
        Some(tenancy.dev)
    );

    let mut want = listed(&keys);
    want[2].revoked_at = Some(at(HOUR));
    want[3].revoked_at = Some(at(2 * HOUR));
    assert_eq!(store.api_key_list().await.unwrap(), want);

    // A revoked key is no longer a match, so revoking it again finds nothing.
    assert_eq!(
        store
            .api_key_revoke(&keys.staging.display_prefix(), at(3 * HOUR))
            .await
            .unwrap(),
        RevokeOutcome::NotFound
    );
    assert_eq!(store.api_key_list().await.unwrap(), want);
}

async fn api_key_revoke_reports_an_unknown_prefix(store: Arc<dyn Store>) {
    let tenancy = bootstrap(&*store).await;
    let keys = insert_keys(&*store, &tenancy).await;

    for prefix in ["", "tr_nope_", "tr_dev_!", "xtr_dev_"] {
        assert_eq!(
            store.api_key_revoke(prefix, at(HOUR)).await.unwrap(),
            RevokeOutcome::NotFound,
            "{prefix}"
        );
    }
    assert_eq!(store.api_key_list().await.unwrap(), listed(&keys));
}

async fn api_key_revoke_refuses_an_ambiguous_prefix(store: Arc<dyn Store>) {
    let tenancy = bootstrap(&*store).await;
    let keys = insert_keys(&*store, &tenancy).await;

    assert_eq!(
        store.api_key_revoke("tr_dev_", at(HOUR)).await.unwrap(),
        RevokeOutcome::Ambiguous { matches: 2 }
    );
    assert_eq!(
        store.api_key_list().await.unwrap(),
        listed(&keys),
        "nothing is revoked"
    );
    assert_eq!(
        store.api_key_authenticate(&keys.dev.hash()).await.unwrap(),
        Some(tenancy.dev.clone())
    );
    assert_eq!(
        store
            .api_key_authenticate(&keys.dev_second.hash())
            .await
            .unwrap(),
        Some(tenancy.dev)
    );

    // Once one of the two is revoked, the same prefix names the other alone.
    store
        .api_key_revoke(&keys.dev.display_prefix(), at(2 * HOUR))
        .await
        .unwrap();
    assert_eq!(
        store.api_key_revoke("tr_dev_", at(3 * HOUR)).await.unwrap(),
        RevokeOutcome::Revoked {
            prefix: keys.dev_second.display_prefix()
        }
    );
}

/// Racing revokes of one key: one revokes it, the others find no live key.
async fn api_key_revoke_revokes_once_under_concurrent_revokes(store: Arc<dyn Store>) {
    const REVOKES: usize = 8;
    let tenancy = bootstrap(&*store).await;
    let keys = insert_keys(&*store, &tenancy).await;
    let prefix = keys.staging.display_prefix();

    let start = Arc::new(Barrier::new(REVOKES));
    let mut revokes = JoinSet::new();
    for i in 0..REVOKES {
        let store = Arc::clone(&store);
        let start = Arc::clone(&start);
        let prefix = prefix.clone();
        revokes.spawn(async move {
            start.wait().await;
            let now = at(HOUR + i as i64);
            (
                now,
                store.api_key_revoke(&prefix, now).await.expect("revoke"),
            )
        });
    }
    let outcomes = revokes.join_all().await;

    let revoked: Vec<DateTime<Utc>> = outcomes
        .iter()
        .filter(|(_, outcome)| {
            *outcome
                == RevokeOutcome::Revoked {
                    prefix: prefix.clone(),
                }
        })
        .map(|(now, _)| *now)
        .collect();
    assert_eq!(revoked.len(), 1, "exactly one revoke wins: {outcomes:?}");
    assert_eq!(
        outcomes
            .iter()
            .filter(|(_, outcome)| *outcome == RevokeOutcome::NotFound)
            .count(),
        REVOKES - 1,
        "{outcomes:?}"
    );
    let mut want = listed(&keys);
    want[2].revoked_at = Some(revoked[0]);
    assert_eq!(
        store.api_key_list().await.unwrap(),
        want,
        "the winner's time is kept"
    );
}

// ---------------------------------------------------------------------------------------
// Runs: insert and read back

async fn run_round_trips_every_field_set(store: Arc<dyn Store>) {
    let tenancy = bootstrap(&*store).await;
    let body = json!({
        "payload": r#"{"json":{"to":"ada@example.com"},"meta":{}}"#,
        "context": {"ignored": true},
        "options": {
            "payloadType": "application/super+json",
            "queue": {"name": "emails", "concurrencyLimit": 5},
            "concurrencyKey": 42,
            "idempotencyKey": "5f1d9c2e",
            "idempotencyKeyTTL": "2h",
            "idempotencyKeyOptions": {"key": "welcome-ada", "scope": "global"},
            "delay": "10m",
            "ttl": "1h30m",
            "tags": ["welcome", "email", "email", " "],
            "metadata": r#"{"json":{"step":1},"meta":{}}"#,
            "metadataType": "application/super+json",
            "maxAttempts": 7,
            "maxDuration": 300,
            "machine": "large-2x",
            "priority": 1.5,
            "lockToVersion": "20260101.3",
            "test": true,
        }
    });
    let mut run = run_from("send-email", body, &tenancy.dev, at(0));
    run.status = RunStatus::RetryingAfterFailure;
    run.output = Some(Packet {
        data: Some(r#"{"json":{"sent":true},"meta":{}}"#.to_owned()),
        data_type: Packet::SUPER_JSON.to_owned(),
    });
    run.error = Some(
        json!({"type": "BUILT_IN_ERROR", "name": "Error", "message": "smtp down", "stackTrace": "at send"}),
    );
    run.expired_at = Some(at(3 * HOUR));
    run.worker_version = Some("20260101.4".to_owned());
    run.updated_at = at(2 * HOUR);
    run.started_at = Some(at(11 * MINUTE));
    run.completed_at = Some(at(2 * HOUR));
    run.attempt_count = 3;
    run.usage_duration_ms = 9_000_000_123;
    run.cost_in_cents = 1.25;
    run.base_cost_in_cents = 0.000_25;
    run.depth = 2;
    run.parent_run_id = Some(RunId::generate(at(-MINUTE).timestamp_millis()));
    run.root_run_id = Some(RunId::generate(at(-HOUR).timestamp_millis()));
    run.batch_id = Some("batch_abc123".to_owned());
    run.resume_parent_on_completion = true;
    run.schedule_id = Some("sched_xyz789".to_owned());
    run.worker_id = Some("worker_abc".to_owned());
    run.current_attempt_id = Some("attempt_abc".to_owned());
    run.lease_expires_at = Some(at(HOUR));
    run.timeout_at = Some(at(HOUR + MINUTE));
    run.next_attempt_at = Some(at(HOUR + 2 * MINUTE));
    run.failed_attempts = 2;
    assert_every_field_set(&run);

    create(&*store, &run, at(0)).await;
    assert_eq!(stored(&*store, &run).await, run);
}

async fn run_round_trips_every_field_empty(store: Arc<dyn Store>) {
    let tenancy = bootstrap(&*store).await;
    let run = run_from("my-task", json!({}), &tenancy.prod, at(0));
    assert_eq!(run.payload.data, None);

    create(&*store, &run, at(0)).await;
    assert_eq!(stored(&*store, &run).await, run);
}

async fn run_get_is_scoped_to_the_environment(store: Arc<dyn Store>) {
    let tenancy = bootstrap(&*store).await;
    let run = queued_run(&tenancy.dev, at(0));
    create(&*store, &run, at(0)).await;

    assert_eq!(
        store.run_get(&tenancy.dev.id, &run.id).await.unwrap(),
        Some(run.clone())
    );
    assert_eq!(
        store.run_get(&tenancy.staging.id, &run.id).await.unwrap(),
        None
    );
    assert_eq!(
        store.run_get(&tenancy.prod.id, &run.id).await.unwrap(),
        None
    );
    let unknown = RunId::generate(at(0).timestamp_millis());
    assert_eq!(
        store.run_get(&tenancy.dev.id, &unknown).await.unwrap(),
        None
    );
}

async fn run_trigger_refuses_a_duplicate_id(store: Arc<dyn Store>) {
    let tenancy = bootstrap(&*store).await;
    let run = queued_run(&tenancy.dev, at(0));
    create(&*store, &run, at(0)).await;

    let mut again = queued_run(&tenancy.dev, at(MINUTE));
    again.id = run.id.clone();
    assert!(store.run_trigger(&again, at(MINUTE)).await.is_err());
    assert_eq!(stored(&*store, &run).await, run);
}

// ---------------------------------------------------------------------------------------
// Idempotency keys

async fn idempotency_same_key_and_task_returns_the_holder(store: Arc<dyn Store>) {
    let tenancy = bootstrap(&*store).await;
    let holder = keyed_run("my-task", "key-1", &tenancy.dev, at(0));
    create(&*store, &holder, at(0)).await;

    let retry = keyed_run("my-task", "key-1", &tenancy.dev, at(MINUTE));
    assert_eq!(
        store.run_trigger(&retry, at(MINUTE)).await.unwrap(),
        TriggerOutcome::Cached(holder.id.clone())
    );
    assert_eq!(
        store.run_get(&tenancy.dev.id, &retry.id).await.unwrap(),
        None,
        "nothing is inserted"
    );
    assert_eq!(
        stored(&*store, &holder).await,
        holder,
        "the holder is untouched"
    );
}

async fn idempotency_key_is_scoped_to_the_task(store: Arc<dyn Store>) {
    let tenancy = bootstrap(&*store).await;
    let holder = keyed_run("my-task", "key-1", &tenancy.dev, at(0));
    create(&*store, &holder, at(0)).await;

    let other_task = keyed_run("other-task", "key-1", &tenancy.dev, at(MINUTE));
    create(&*store, &other_task, at(MINUTE)).await;

    assert_eq!(stored(&*store, &holder).await, holder);
    assert_eq!(stored(&*store, &other_task).await, other_task);
}

async fn idempotency_key_is_scoped_to_the_environment(store: Arc<dyn Store>) {
    let tenancy = bootstrap(&*store).await;
    let holder = keyed_run("my-task", "key-1", &tenancy.dev, at(0));
    create(&*store, &holder, at(0)).await;

    let staging = keyed_run("my-task", "key-1", &tenancy.staging, at(MINUTE));
    create(&*store, &staging, at(MINUTE)).await;
    assert_eq!(stored(&*store, &holder).await, holder);
    assert_eq!(stored(&*store, &staging).await, staging);

    // Each environment keeps its own holder.
    let dev_retry = keyed_run("my-task", "key-1", &tenancy.dev, at(2 * MINUTE));
    assert_eq!(
        store.run_trigger(&dev_retry, at(2 * MINUTE)).await.unwrap(),
        TriggerOutcome::Cached(holder.id.clone())
    );
    let staging_retry = keyed_run("my-task", "key-1", &tenancy.staging, at(2 * MINUTE));
    assert_eq!(
        store
            .run_trigger(&staging_retry, at(2 * MINUTE))
            .await
            .unwrap(),
        TriggerOutcome::Cached(staging.id.clone())
    );
}

async fn idempotency_failed_holder_releases_the_key(store: Arc<dyn Store>) {
    let tenancy = bootstrap(&*store).await;
    let holder = keyed_run("my-task", "key-1", &tenancy.dev, at(0));
    create(&*store, &holder, at(0)).await;
    walk(
        &*store,
        &holder.id,
        RunStatus::CompletedWithErrors,
        at(MINUTE),
    )
    .await;

    let retry = keyed_run("my-task", "key-1", &tenancy.dev, at(2 * MINUTE));
    create(&*store, &retry, at(2 * MINUTE)).await;

    assert_eq!(
        stored(&*store, &holder).await.idempotency_key,
        None,
        "the failed run gave its key up"
    );
    assert_eq!(
        stored(&*store, &retry).await,
        retry,
        "the new run holds the key"
    );
    let again = keyed_run("my-task", "key-1", &tenancy.dev, at(3 * MINUTE));
    assert_eq!(
        store.run_trigger(&again, at(3 * MINUTE)).await.unwrap(),
        TriggerOutcome::Cached(retry.id.clone())
    );
}

async fn idempotency_expired_key_is_released(store: Arc<dyn Store>) {
    let tenancy = bootstrap(&*store).await;
    let options = json!({"idempotencyKey": "key-1", "idempotencyKeyTTL": "1h"});
    let holder = run_with_options(options.clone(), &tenancy.dev, at(0));
    assert_eq!(holder.idempotency_key_expires_at, Some(at(HOUR)));
    create(&*store, &holder, at(0)).await;

    let just_before = at(HOUR) - Duration::milliseconds(1);
    let early = run_with_options(options.clone(), &tenancy.dev, just_before);
    assert_eq!(
        store.run_trigger(&early, just_before).await.unwrap(),
        TriggerOutcome::Cached(holder.id.clone()),
        "the key still holds a millisecond before it expires"
    );

    // Expiry is inclusive: at `idempotency_key_expires_at` the key is free.
    let late = run_with_options(options, &tenancy.dev, at(HOUR));
    create(&*store, &late, at(HOUR)).await;
    assert_eq!(stored(&*store, &holder).await.idempotency_key, None);
    assert_eq!(
        stored(&*store, &holder).await.status,
        RunStatus::Queued,
        "only the key is released"
    );
    assert_eq!(stored(&*store, &late).await, late);
}

async fn idempotency_canceled_holder_keeps_the_key(store: Arc<dyn Store>) {
    let tenancy = bootstrap(&*store).await;
    let holder = keyed_run("my-task", "key-1", &tenancy.dev, at(0));
    create(&*store, &holder, at(0)).await;
    walk(&*store, &holder.id, RunStatus::Canceled, at(MINUTE)).await;

    let retry = keyed_run("my-task", "key-1", &tenancy.dev, at(2 * MINUTE));
    assert_eq!(
        store.run_trigger(&retry, at(2 * MINUTE)).await.unwrap(),
        TriggerOutcome::Cached(holder.id.clone())
    );
    assert_eq!(
        store.run_get(&tenancy.dev.id, &retry.id).await.unwrap(),
        None
    );
    assert_eq!(
        stored(&*store, &holder).await.idempotency_key.as_deref(),
        Some("key-1")
    );
}

/// For every status a holder can be in, the store does what `releases_idempotency_key`
/// says: hand the key to a new run, or return the holder.
async fn idempotency_follows_the_holder_status(store: Arc<dyn Store>) {
    let tenancy = bootstrap(&*store).await;
    for status in RunStatus::ALL {
        let key = format!("key-{status}");
        let mut holder = keyed_run("my-task", &key, &tenancy.dev, at(0));
        if status == RunStatus::Delayed {
            // No edge leads to DELAYED: such a holder is inserted delayed.
            holder.status = RunStatus::Delayed;
            holder.delay_until = Some(at(HOUR));
        }
        create(&*store, &holder, at(0)).await;
        if status != RunStatus::Queued && status != RunStatus::Delayed {
            walk(&*store, &holder.id, status, at(MINUTE)).await;
        }

        let retry = keyed_run("my-task", &key, &tenancy.dev, at(2 * MINUTE));
        let outcome = store.run_trigger(&retry, at(2 * MINUTE)).await.unwrap();
        let holder_key = stored(&*store, &holder).await.idempotency_key;
        if status.releases_idempotency_key() {
            assert_eq!(
                outcome,
                TriggerOutcome::Created(retry.id.clone()),
                "holder {status}"
            );
            assert_eq!(holder_key, None, "holder {status}");
        } else {
            assert_eq!(
                outcome,
                TriggerOutcome::Cached(holder.id.clone()),
                "holder {status}"
            );
            assert_eq!(holder_key, Some(key), "holder {status}");
        }
    }
}

/// Every round starts its triggers together behind a barrier, so a check-then-insert
/// that is not atomic lets two of them win; several rounds make a lost race likely.
async fn idempotency_holds_under_concurrent_triggers(store: Arc<dyn Store>) {
    const TRIGGERS: usize = 20;
    const ROUNDS: usize = 5;
    let tenancy = bootstrap(&*store).await;
    for round in 0..ROUNDS {
        let key = format!("race-{round}");
        let runs: Vec<Run> = (0..TRIGGERS)
            .map(|_| keyed_run("my-task", &key, &tenancy.dev, at(0)))
            .collect();

        let start = Arc::new(Barrier::new(TRIGGERS));
        let mut triggers = JoinSet::new();
        for run in runs.clone() {
            let store = Arc::clone(&store);
            let start = Arc::clone(&start);
            triggers.spawn(async move {
                start.wait().await;
                store.run_trigger(&run, at(0)).await.expect("trigger")
            });
        }
        let outcomes = triggers.join_all().await;

        let created: Vec<&RunId> = outcomes
            .iter()
            .filter_map(|o| match o {
                TriggerOutcome::Created(id) => Some(id),
                TriggerOutcome::Cached(_) => None,
            })
            .collect();
        assert_eq!(created.len(), 1, "exactly one trigger wins: {outcomes:?}");
        let winner = created[0].clone();
        let cached = outcomes
            .iter()
            .filter(|o| **o == TriggerOutcome::Cached(winner.clone()))
            .count();
        assert_eq!(
            cached,
            TRIGGERS - 1,
            "every other trigger returns the winner: {outcomes:?}"
        );

        for run in &runs {
            let found = store.run_get(&tenancy.dev.id, &run.id).await.unwrap();
            assert_eq!(found.is_some(), run.id == winner, "{} stored", run.id);
        }
    }
}

// ---------------------------------------------------------------------------------------
/// The moves that take a queued run to `status` along the state machine's edges.
fn path_from_queued(status: RunStatus) -> Vec<RunStatus> {
    use RunStatus::*;
    match status {
        Queued => vec![],
        Dequeued | Expired | Canceled | PendingVersion => vec![status],
        Executing => vec![Dequeued, Executing],
        Delayed => panic!("no edge leads back to DELAYED"),
        other => vec![Dequeued, Executing, other],
    }
}

/// Moves a queued run to `to` through allowed transitions, all at `now`.
async fn walk(store: &dyn Store, id: &RunId, to: RunStatus, now: DateTime<Utc>) {
    let mut from = RunStatus::Queued;
    for step in path_from_queued(to) {
        assert!(
            store.run_transition(id, from, step, now).await.unwrap(),
            "{from} -> {step}"
        );
        from = step;
    }
}

// Status transitions

async fn run_transition_is_conditional_on_the_current_status(store: Arc<dyn Store>) {
    let tenancy = bootstrap(&*store).await;
    let run = queued_run(&tenancy.dev, at(0));
    create(&*store, &run, at(0)).await;

    let moved = store
        .run_transition(
            &run.id,
            RunStatus::Executing,
            RunStatus::CompletedSuccessfully,
            at(MINUTE),
        )
        .await
        .unwrap();
    assert!(!moved, "the run is not EXECUTING");
    assert_eq!(
        stored(&*store, &run).await,
        run,
        "a refused transition changes nothing"
    );

    walk(&*store, &run.id, RunStatus::Executing, at(2 * MINUTE)).await;
    let mut want = run.clone();
    want.status = RunStatus::Executing;
    want.updated_at = at(2 * MINUTE);
    assert_eq!(stored(&*store, &run).await, want);

    // The second of two racing actors loses.
    assert!(!store
        .run_transition(
            &run.id,
            RunStatus::Queued,
            RunStatus::Expired,
            at(3 * MINUTE)
        )
        .await
        .unwrap());
    assert_eq!(stored(&*store, &run).await, want);

    let unknown = RunId::generate(at(0).timestamp_millis());
    assert!(!store
        .run_transition(
            &unknown,
            RunStatus::Queued,
            RunStatus::Executing,
            at(MINUTE)
        )
        .await
        .unwrap());
}

/// Nothing leaves a final status, even when the caller names it correctly.
async fn run_transition_never_leaves_a_final_status(store: Arc<dyn Store>) {
    let tenancy = bootstrap(&*store).await;
    for final_status in RunStatus::ALL.into_iter().filter(|s| s.is_final()) {
        let run = queued_run(&tenancy.dev, at(0));
        create(&*store, &run, at(0)).await;
        walk(&*store, &run.id, final_status, at(MINUTE)).await;
        let before = stored(&*store, &run).await;
        for to in RunStatus::ALL {
            assert!(
                !store
                    .run_transition(&run.id, final_status, to, at(HOUR))
                    .await
                    .unwrap(),
                "{final_status} -> {to}"
            );
        }
        assert_eq!(
            stored(&*store, &run).await,
            before,
            "{final_status} is unchanged"
        );
    }
}

async fn run_transition_into_a_final_status_sets_completed_at(store: Arc<dyn Store>) {
    let tenancy = bootstrap(&*store).await;
    for status in RunStatus::ALL
        .into_iter()
        .filter(|s| *s != RunStatus::Queued && *s != RunStatus::Delayed)
    {
        let run = queued_run(&tenancy.dev, at(0));
        create(&*store, &run, at(0)).await;
        walk(&*store, &run.id, status, at(MINUTE)).await;

        let mut want = run.clone();
        want.status = status;
        want.updated_at = at(MINUTE);
        want.completed_at = status.is_final().then_some(at(MINUTE));
        assert_eq!(stored(&*store, &run).await, want, "into {status}");
    }
}

// ---------------------------------------------------------------------------------------
// Expirer and promoter

async fn run_expire_due_ends_queued_runs_past_their_ttl(store: Arc<dyn Store>) {
    let tenancy = bootstrap(&*store).await;
    let due = run_with_options(json!({"ttl": "10m"}), &tenancy.dev, at(0));
    let later = run_with_options(json!({"ttl": 1200}), &tenancy.dev, at(0));
    let no_ttl = queued_run(&tenancy.dev, at(0));
    let executing = run_with_options(json!({"ttl": "5m"}), &tenancy.dev, at(0));
    let delayed = run_with_options(json!({"delay": "1m", "ttl": "1m"}), &tenancy.dev, at(0));
    assert_eq!(delayed.status, RunStatus::Delayed);
    for run in [&due, &later, &no_ttl, &executing, &delayed] {
        create(&*store, run, at(0)).await;
    }
    walk(&*store, &executing.id, RunStatus::Executing, at(MINUTE)).await;
    let executing = stored(&*store, &executing).await;

    // Exactly at the deadline counts as due.
    let now = at(10 * MINUTE);
    assert_eq!(
        store.run_expire_due(now, NO_LIMIT).await.unwrap(),
        vec![due.id.clone()]
    );

    let mut want = due.clone();
    want.status = RunStatus::Expired;
    want.expired_at = Some(now);
    want.completed_at = Some(now);
    want.updated_at = now;
    want.error = Some(
        json!({"type": "STRING_ERROR", "raw": "Run expired because the TTL (10m) was reached"}),
    );
    assert_eq!(stored(&*store, &due).await, want);
    assert_eq!(stored(&*store, &later).await, later);
    assert_eq!(stored(&*store, &no_ttl).await, no_ttl);
    assert_eq!(
        stored(&*store, &executing).await,
        executing,
        "only QUEUED runs expire"
    );
    assert_eq!(
        stored(&*store, &delayed).await,
        delayed,
        "only QUEUED runs expire"
    );

    assert_eq!(
        store.run_expire_due(now, NO_LIMIT).await.unwrap(),
        vec![],
        "a run expires once"
    );
    assert_eq!(stored(&*store, &due).await, want);

    let now = at(20 * MINUTE);
    assert_eq!(
        store.run_expire_due(now, NO_LIMIT).await.unwrap(),
        vec![later.id.clone()]
    );
    let expired = stored(&*store, &later).await;
    assert_eq!(
        expired.error,
        Some(
            json!({"type": "STRING_ERROR", "raw": "Run expired because the TTL (20m) was reached"})
        )
    );
    assert_eq!(stored_status(&*store, &no_ttl).await, RunStatus::Queued);
}

async fn run_expire_due_respects_the_limit(store: Arc<dyn Store>) {
    let tenancy = bootstrap(&*store).await;
    let runs: Vec<Run> = ["1m", "2m", "3m"]
        .into_iter()
        .map(|ttl| run_with_options(json!({"ttl": ttl}), &tenancy.dev, at(0)))
        .collect();
    for run in &runs {
        create(&*store, run, at(0)).await;
    }

    let first = store.run_expire_due(at(HOUR), 2).await.unwrap();
    assert_eq!(first.len(), 2, "{first:?}");
    let rest = store.run_expire_due(at(HOUR), 2).await.unwrap();
    assert_eq!(rest.len(), 1, "{rest:?}");
    assert_eq!(store.run_expire_due(at(HOUR), 2).await.unwrap(), vec![]);

    let all: Vec<RunId> = first.into_iter().chain(rest).collect();
    assert_eq!(
        sorted(all),
        sorted(runs.iter().map(|r| r.id.clone()).collect())
    );
    for run in &runs {
        assert_eq!(stored_status(&*store, run).await, RunStatus::Expired);
    }
}

/// Two sweepers (two server nodes) at once: every due run expires exactly once.
async fn run_expire_due_concurrent_sweeps_expire_each_run_once(store: Arc<dyn Store>) {
    const RUNS: usize = 30;
    const SWEEPERS: usize = 3;
    let tenancy = bootstrap(&*store).await;
    let runs: Vec<Run> = (0..RUNS)
        .map(|_| run_with_options(json!({"ttl": "1m"}), &tenancy.dev, at(0)))
        .collect();
    for run in &runs {
        create(&*store, run, at(0)).await;
    }

    let expired = sweep_concurrently(&store, SWEEPERS, |store| async move {
        store.run_expire_due(at(HOUR), 4).await.expect("expire")
    })
    .await;

    assert_eq!(
        expired,
        sorted(runs.iter().map(|r| r.id.clone()).collect()),
        "each run once"
    );
    for run in &runs {
        assert_eq!(stored_status(&*store, run).await, RunStatus::Expired);
    }
}

/// Runs `sweepers` copies of `sweep` at once, each repeating until it finds nothing, and
/// returns every id they reported, sorted (a duplicate means a run moved twice).
async fn sweep_concurrently<F, Fut>(store: &Arc<dyn Store>, sweepers: usize, sweep: F) -> Vec<RunId>
where
    F: Fn(Arc<dyn Store>) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Vec<RunId>> + Send,
{
    let start = Arc::new(Barrier::new(sweepers));
    let mut tasks = JoinSet::new();
    for _ in 0..sweepers {
        let store = Arc::clone(store);
        let start = Arc::clone(&start);
        let sweep = sweep.clone();
        tasks.spawn(async move {
            start.wait().await;
            let mut moved = Vec::new();
            loop {
                let batch = sweep(Arc::clone(&store)).await;
                if batch.is_empty() {
                    return moved;
                }
                moved.extend(batch);
            }
        });
    }
    sorted(tasks.join_all().await.into_iter().flatten().collect())
}

async fn run_promote_due_queues_delayed_runs_whose_delay_ended(store: Arc<dyn Store>) {
    let tenancy = bootstrap(&*store).await;
    let one = run_with_options(json!({"delay": "1m"}), &tenancy.dev, at(0));
    let two = run_with_options(json!({"delay": "2m", "ttl": "5m"}), &tenancy.dev, at(0));
    let ten = run_with_options(json!({"delay": "10m"}), &tenancy.dev, at(0));
    let queued = queued_run(&tenancy.dev, at(0));
    for run in [&one, &two, &ten, &queued] {
        create(&*store, run, at(0)).await;
    }

    // Exactly at `delay_until` counts as due.
    let now = at(2 * MINUTE);
    let promoted = store.run_promote_due(now, NO_LIMIT).await.unwrap();
    assert_eq!(
        sorted(promoted),
        sorted(vec![one.id.clone(), two.id.clone()])
    );
    for run in [&one, &two] {
        let mut want = run.clone();
        want.status = RunStatus::Queued;
        want.updated_at = now;
        assert_eq!(stored(&*store, run).await, want);
    }
    assert_eq!(
        stored(&*store, &ten).await,
        ten,
        "a later delay stays DELAYED"
    );
    assert_eq!(stored(&*store, &queued).await, queued);

    assert_eq!(
        store.run_promote_due(now, NO_LIMIT).await.unwrap(),
        vec![],
        "a run is promoted once"
    );
    assert_eq!(
        store
            .run_promote_due(at(10 * MINUTE), NO_LIMIT)
            .await
            .unwrap(),
        vec![ten.id.clone()]
    );
}

async fn run_promote_due_respects_the_limit(store: Arc<dyn Store>) {
    let tenancy = bootstrap(&*store).await;
    let runs: Vec<Run> = ["1m", "2m", "3m"]
        .into_iter()
        .map(|delay| run_with_options(json!({"delay": delay}), &tenancy.dev, at(0)))
        .collect();
    for run in &runs {
        create(&*store, run, at(0)).await;
    }

    let first = store.run_promote_due(at(HOUR), 2).await.unwrap();
    assert_eq!(first.len(), 2, "{first:?}");
    let rest = store.run_promote_due(at(HOUR), 2).await.unwrap();
    assert_eq!(rest.len(), 1, "{rest:?}");
    assert_eq!(store.run_promote_due(at(HOUR), 2).await.unwrap(), vec![]);

    let all: Vec<RunId> = first.into_iter().chain(rest).collect();
    assert_eq!(
        sorted(all),
        sorted(runs.iter().map(|r| r.id.clone()).collect())
    );
    for run in &runs {
        assert_eq!(stored_status(&*store, run).await, RunStatus::Queued);
    }
}

/// Two promoters (two server nodes) at once: every due run is queued exactly once.
async fn run_promote_due_concurrent_sweeps_promote_each_run_once(store: Arc<dyn Store>) {
    const RUNS: usize = 30;
    const SWEEPERS: usize = 3;
    let tenancy = bootstrap(&*store).await;
    let runs: Vec<Run> = (0..RUNS)
        .map(|_| run_with_options(json!({"delay": "1m"}), &tenancy.dev, at(0)))
        .collect();
    for run in &runs {
        create(&*store, run, at(0)).await;
    }

    let promoted = sweep_concurrently(&store, SWEEPERS, |store| async move {
        store.run_promote_due(at(HOUR), 4).await.expect("promote")
    })
    .await;

    assert_eq!(
        promoted,
        sorted(runs.iter().map(|r| r.id.clone()).collect()),
        "each run once"
    );
    for run in &runs {
        assert_eq!(stored_status(&*store, run).await, RunStatus::Queued);
    }
}

async fn run_next_due_at_is_the_earliest_expiry_or_promotion(store: Arc<dyn Store>) {
    let tenancy = bootstrap(&*store).await;
    assert_eq!(
        store.run_next_due_at().await.unwrap(),
        None,
        "empty database"
    );

    create(&*store, &queued_run(&tenancy.dev, at(0)), at(0)).await;
    assert_eq!(
        store.run_next_due_at().await.unwrap(),
        None,
        "a run without TTL or delay is never due"
    );

    let ttl_30m = run_with_options(json!({"ttl": "30m"}), &tenancy.dev, at(0));
    create(&*store, &ttl_30m, at(0)).await;
    assert_eq!(
        store.run_next_due_at().await.unwrap(),
        Some(at(30 * MINUTE))
    );

    let delay_10m = run_with_options(json!({"delay": "10m"}), &tenancy.staging, at(0));
    create(&*store, &delay_10m, at(0)).await;
    assert_eq!(
        store.run_next_due_at().await.unwrap(),
        Some(at(10 * MINUTE))
    );

    // The expiry of a run that is no longer QUEUED is not due.
    let executing = run_with_options(json!({"ttl": "1m"}), &tenancy.dev, at(0));
    create(&*store, &executing, at(0)).await;
    walk(&*store, &executing.id, RunStatus::Executing, at(0)).await;
    assert_eq!(
        store.run_next_due_at().await.unwrap(),
        Some(at(10 * MINUTE))
    );

    let ttl_2m = run_with_options(json!({"ttl": "2m"}), &tenancy.prod, at(0));
    create(&*store, &ttl_2m, at(0)).await;
    assert_eq!(store.run_next_due_at().await.unwrap(), Some(at(2 * MINUTE)));

    store
        .run_expire_due(at(2 * MINUTE), NO_LIMIT)
        .await
        .unwrap();
    assert_eq!(
        store.run_next_due_at().await.unwrap(),
        Some(at(10 * MINUTE))
    );
    store
        .run_promote_due(at(10 * MINUTE), NO_LIMIT)
        .await
        .unwrap();
    assert_eq!(
        store.run_next_due_at().await.unwrap(),
        Some(at(30 * MINUTE))
    );
    store
        .run_expire_due(at(30 * MINUTE), NO_LIMIT)
        .await
        .unwrap();
    assert_eq!(store.run_next_due_at().await.unwrap(), None);
}

// ---------------------------------------------------------------------------------------
// Children and attempts

async fn run_children_lists_the_runs_of_a_parent(store: Arc<dyn Store>) {
    let tenancy = bootstrap(&*store).await;
    let parent = queued_run(&tenancy.dev, at(0));
    create(&*store, &parent, at(0)).await;
    assert_eq!(store.run_children(&parent.id).await.unwrap(), vec![]);

    let child = |now: DateTime<Utc>| {
        let mut child = queued_run(&tenancy.dev, now);
        child.parent_run_id = Some(parent.id.clone());
        child.root_run_id = Some(parent.id.clone());
        child.depth = 1;
        child.resume_parent_on_completion = true;
        child
    };
    // Inserted newest first, listed oldest first.
    let second = child(at(2 * MINUTE));
    let first = child(at(MINUTE));
    create(&*store, &second, at(2 * MINUTE)).await;
    create(&*store, &first, at(2 * MINUTE)).await;
    create(
        &*store,
        &queued_run(&tenancy.dev, at(3 * MINUTE)),
        at(3 * MINUTE),
    )
    .await;

    assert_eq!(
        store.run_children(&parent.id).await.unwrap(),
        vec![first.clone(), second]
    );
    assert_eq!(store.run_children(&first.id).await.unwrap(), vec![]);
}

async fn attempt_list_is_empty_for_a_run_without_attempts(store: Arc<dyn Store>) {
    let tenancy = bootstrap(&*store).await;
    let run = queued_run(&tenancy.dev, at(0));
    create(&*store, &run, at(0)).await;

    assert_eq!(store.attempt_list(&run.id).await.unwrap(), vec![]);
    let unknown = RunId::generate(at(0).timestamp_millis());
    assert_eq!(store.attempt_list(&unknown).await.unwrap(), vec![]);
}
