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
use runnel_core::batch::{BatchItemRecord, BatchRecord, BatchStatus, CreateBatchRequest};
use runnel_core::key::{EnvironmentKind, SecretKey};
use runnel_core::retry::RetryPolicy;
use runnel_core::run::{Attempt, AttemptStatus, Packet, Run};
use runnel_core::tenancy::{ApiKeyInfo, Environment};
use runnel_core::trigger::{IdempotencyHeaders, TriggerRequest};
use runnel_core::BatchId;
use runnel_core::{MachinePreset, RunId, RunStatus, WorkerId};
use runnel_store::{
    AttemptSettlement, CancelOutcome, Claim, Deadline, Leased, PgStore, QueueChange,
    QueueDeclaration, QueueKind, QueueRecord, QueueRef, Registered, RevokeOutcome, SqliteStore,
    Store, TaskConfig, TriggerOutcome, WorkerRecord, WorkerRegistration,
};
use runnel_store::{BatchCreateOutcome, BatchItemOutcome, BatchItemTrigger, BatchItemsOutcome};
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
            health_reads_and_writes,
            writes_cut_off_by_their_caller_leave_the_store_usable,
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
            run_trigger_among_concurrent_triggers_fails_alone,
            run_trigger_concurrent_triggers_each_store_their_run,
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
            worker_register_assigns_dated_versions_and_keeps_given_ones,
            worker_register_concurrent_registrations_get_distinct_versions,
            worker_register_again_upserts_the_tasks_of_a_version,
            worker_get_returns_only_the_worker_tasks,
            task_served_by_any_version_or_the_named_one,
            worker_register_queues_the_waiting_runs_of_its_tasks,
            run_dequeue_takes_the_oldest_first_and_priority_moves_a_run_ahead,
            run_dequeue_leases_only_the_worker_tasks_and_version,
            run_dequeue_leases_the_run_with_a_new_pending_attempt,
            run_dequeue_concurrent_dequeuers_lease_each_run_once,
            attempt_start_starts_only_the_holder_pending_attempt,
            attempt_start_sets_started_at_and_the_fee_once,
            attempt_start_without_a_max_duration_sets_no_deadline,
            attempt_heartbeat_extends_only_the_leases_a_worker_holds,
            attempt_settle_applies_only_while_the_claim_holds,
            attempt_settle_adds_usage_and_counts_spent_failures,
            attempt_settle_after_run_cancel_is_refused,
            run_cancel_ends_live_runs_and_leaves_final_or_foreign_ones,
            run_leases_due_finds_expired_leases_and_passed_deadlines_only,
            an_expired_lease_not_yet_rescued_takes_its_worker_heartbeat_and_completion,
            run_requeue_due_requeues_retrying_runs_at_their_next_attempt,
            run_promote_due_leaves_delayed_runs_waiting_for_a_version_that_serves_them,
            run_promote_due_queues_waiting_runs_a_version_now_serves,
            run_expire_due_expires_runs_waiting_for_a_version,
            run_next_due_at_includes_retry_lease_and_timeout_deadlines,
            run_next_deadline_is_the_earliest_of_its_own_kind_only,
            run_promote_due_leaves_retrying_runs_to_run_requeue_due,
            attempt_settle_and_run_cancel_racing_settle_each_run_once,
            attempt_heartbeat_and_start_racing_the_rescuer_settle_each_run_once,
            // [list]
            run_list_filters_each_select_their_runs,
            run_list_orders_newest_first_and_respects_the_limit,
            run_list_cursor_walk_neither_skips_nor_repeats_while_runs_are_added,
            run_list_pages_backward_from_a_cursor,
            run_list_is_scoped_to_the_environment,

            // [actions]
            run_descendants_live_walks_the_live_subtree_of_the_environment,
            run_reschedule_moves_only_delayed_runs,
            run_tags_replace_is_a_compare_and_swap,
            run_metadata_replace_is_a_compare_and_swap,
            idempotency_key_reset_releases_the_key_of_that_task_and_environment,

            // [batches]
            run_trigger_many_inserts_a_thousand_runs_in_one_call,
            run_trigger_many_honours_idempotency_keys_in_order,
            batch_create_returns_the_live_holder_of_its_key,
            batch_items_trigger_dedups_by_index_and_seals,
            batch_items_trigger_honours_idempotency_keys,
            batch_items_trigger_concurrent_overlapping_calls_record_each_index_once,

            // [queues]
            queue_declare_creates_queues_and_sets_stated_limits,
            queue_list_pages_by_name_with_counts,
            queue_update_pauses_overrides_and_resets,
            task_queue_is_the_newest_declared_queue_of_the_task,
            run_dequeue_never_exceeds_the_queue_limit_under_concurrent_dequeuers,
            run_dequeue_limits_each_concurrency_key_separately_under_concurrent_dequeuers,
            run_dequeue_a_full_queue_does_not_block_other_queues,
            run_dequeue_skips_a_paused_queue_until_it_resumes,
            run_dequeue_in_a_limited_queue_keeps_priority_and_fifo_order,
            run_dequeue_override_wins_over_the_registered_limit_until_reset,

            // [auth]
            api_key_hashes_lists_the_live_keys_of_an_environment,
            api_key_hashes_drops_revoked_keys_and_knows_no_other_environment,

            // [multinode]
            signals_reach_every_listener_of_the_database,
            run_leases_due_concurrent_rescuers_settle_each_lease_once,

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

async fn health_reads_and_writes(store: Arc<dyn Store>) {
    // On an empty database too: a node answers before anything is bootstrapped.
    store
        .health(at(0))
        .await
        .expect("health on an empty database");
    bootstrap(&*store).await;
    store.health(at(1)).await.expect("health");
    store
        .health(at(2))
        .await
        .expect("health again (the row is overwritten)");
}

/// Callers that stop waiting part-way through their writes (a client gone, a timeout):
/// every write still works afterwards. On SQLite, a transaction cut after its `BEGIN`
/// used to leave the one writer connection refusing every later write.
async fn writes_cut_off_by_their_caller_leave_the_store_usable(store: Arc<dyn Store>) {
    let tenancy = bootstrap(&*store).await;
    let worker = serve(&*store, &tenancy.dev, "v1", &["my-task"], at(1)).await;
    let runs: Vec<Run> = (0..60).map(|_| queued_run(&tenancy.dev, at(2))).collect();
    for run in &runs {
        create(&*store, run, at(2)).await;
    }
    let declarations = vec![QueueDeclaration {
        name: "custom".to_owned(),
        concurrency_limit: Some(Some(3)),
    }];
    // Cut each write at a different point: before, inside and after its transaction.
    for round in 0..1000u64 {
        let cut = std::time::Duration::from_micros((round * 7) % 400);
        let now = at(10 + round as i64);
        let _ = tokio::time::timeout(
            cut,
            store.queue_declare(&tenancy.dev.id, &declarations, now),
        )
        .await;
        let _ = tokio::time::timeout(
            cut,
            store.run_dequeue(&worker, 1, now + Duration::seconds(LEASE_SECS), now),
        )
        .await;
        let _ = tokio::time::timeout(cut, store.api_key_revoke("tr_dev_none", now)).await;
        let run = &runs[round as usize % runs.len()];
        let _ =
            tokio::time::timeout(cut, store.run_cancel(&tenancy.dev.id, &run.id, 0.0, now)).await;
    }
    let later = at(1000);
    store
        .health(later)
        .await
        .expect("health after the cut writes");
    store
        .queue_declare(&tenancy.dev.id, &declarations, later)
        .await
        .expect("queue_declare after the cut writes");
    create(&*store, &queued_run(&tenancy.dev, later), later).await;
    store
        .run_dequeue(
            &worker,
            NO_LIMIT,
            later + Duration::seconds(LEASE_SECS),
            later,
        )
        .await
        .expect("run_dequeue after the cut writes");
    let outcome = store
        .run_cancel(&tenancy.dev.id, &runs[0].id, 0.0, later)
        .await
        .expect("run_cancel after the cut writes");
    assert!(
        matches!(
            outcome,
            CancelOutcome::Canceled { .. } | CancelOutcome::AlreadyFinal(_)
        ),
        "{outcome:?}"
    );
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

/// Triggers `runs` at `now` from one task each, started together behind a barrier;
/// each run with its outcome, in the order the runs were given.
async fn trigger_concurrently(
    store: &Arc<dyn Store>,
    runs: &[Run],
    now: DateTime<Utc>,
) -> Vec<(Run, runnel_store::Result<TriggerOutcome>)> {
    let start = Arc::new(Barrier::new(runs.len()));
    let mut triggers = JoinSet::new();
    for (position, run) in runs.iter().cloned().enumerate() {
        let store = Arc::clone(store);
        let start = Arc::clone(&start);
        triggers.spawn(async move {
            start.wait().await;
            let outcome = store.run_trigger(&run, now).await;
            (position, run, outcome)
        });
    }
    let mut done = triggers.join_all().await;
    done.sort_by_key(|(position, _, _)| *position);
    done.into_iter()
        .map(|(_, run, outcome)| (run, outcome))
        .collect()
}

/// Concurrent triggers, one of which reuses a stored run's id: that one is refused and
/// every other is stored. (SQLite writes concurrent triggers in one transaction: a
/// failing member must not take the others down with it.)
async fn run_trigger_among_concurrent_triggers_fails_alone(store: Arc<dyn Store>) {
    const TRIGGERS: usize = 40;
    const DUPLICATE: usize = 17;
    let tenancy = bootstrap(&*store).await;
    let existing = queued_run(&tenancy.dev, at(0));
    create(&*store, &existing, at(0)).await;
    let mut runs: Vec<Run> = (0..TRIGGERS)
        .map(|_| queued_run(&tenancy.dev, at(MINUTE)))
        .collect();
    runs[DUPLICATE].id = existing.id.clone();

    let done = trigger_concurrently(&store, &runs, at(MINUTE)).await;
    for (position, (run, outcome)) in done.into_iter().enumerate() {
        if position == DUPLICATE {
            assert!(outcome.is_err(), "a duplicate id is refused: {outcome:?}");
        } else {
            assert_eq!(
                outcome.expect("the other triggers succeed"),
                TriggerOutcome::Created(run.id.clone())
            );
            assert_eq!(stored(&*store, &run).await, run);
        }
    }
    assert_eq!(
        stored(&*store, &existing).await,
        existing,
        "the holder of the id is untouched"
    );
}

/// Many concurrent triggers, keyed and not: each gets its own outcome, in the order the
/// keys were taken, and every created run reads back whole.
async fn run_trigger_concurrent_triggers_each_store_their_run(store: Arc<dyn Store>) {
    const TRIGGERS: usize = 60;
    let tenancy = bootstrap(&*store).await;
    // Every third trigger carries a key of its own; the rest have none.
    let runs: Vec<Run> = (0..TRIGGERS)
        .map(|i| {
            if i % 3 == 0 {
                keyed_run("my-task", &format!("own-{i}"), &tenancy.dev, at(0))
            } else {
                queued_run(&tenancy.dev, at(0))
            }
        })
        .collect();
    for (run, outcome) in trigger_concurrently(&store, &runs, at(0)).await {
        assert_eq!(
            outcome.expect("trigger"),
            TriggerOutcome::Created(run.id.clone())
        );
        assert_eq!(stored(&*store, &run).await, run);
    }
    // The keys hold afterwards: a second trigger with one returns its holder.
    let again = keyed_run("my-task", "own-3", &tenancy.dev, at(MINUTE));
    assert_eq!(
        store.run_trigger(&again, at(MINUTE)).await.unwrap(),
        TriggerOutcome::Cached(runs[3].id.clone())
    );
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

        let outcomes: Vec<TriggerOutcome> = trigger_concurrently(&store, &runs, at(0))
            .await
            .into_iter()
            .map(|(_, outcome)| outcome.expect("trigger"))
            .collect();

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
    // A version serves the task, so the runs are queued rather than left waiting for one.
    serve(&*store, &tenancy.dev, "v1", &["my-task"], at(0)).await;
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
    serve(&*store, &tenancy.dev, "v1", &["my-task"], at(0)).await;
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
    serve(&*store, &tenancy.dev, "v1", &["my-task"], at(0)).await;
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
        store.run_next_due_at(true).await.unwrap(),
        None,
        "empty database"
    );

    create(&*store, &queued_run(&tenancy.dev, at(0)), at(0)).await;
    assert_eq!(
        store.run_next_due_at(true).await.unwrap(),
        None,
        "a run without TTL or delay is never due"
    );

    let ttl_30m = run_with_options(json!({"ttl": "30m"}), &tenancy.dev, at(0));
    create(&*store, &ttl_30m, at(0)).await;
    assert_eq!(
        store.run_next_due_at(true).await.unwrap(),
        Some(at(30 * MINUTE))
    );

    let delay_10m = run_with_options(json!({"delay": "10m"}), &tenancy.staging, at(0));
    create(&*store, &delay_10m, at(0)).await;
    assert_eq!(
        store.run_next_due_at(true).await.unwrap(),
        Some(at(10 * MINUTE))
    );

    // The expiry of a run that is no longer QUEUED is not due.
    let executing = run_with_options(json!({"ttl": "1m"}), &tenancy.dev, at(0));
    create(&*store, &executing, at(0)).await;
    walk(&*store, &executing.id, RunStatus::Executing, at(0)).await;
    assert_eq!(
        store.run_next_due_at(true).await.unwrap(),
        Some(at(10 * MINUTE))
    );

    let ttl_2m = run_with_options(json!({"ttl": "2m"}), &tenancy.prod, at(0));
    create(&*store, &ttl_2m, at(0)).await;
    assert_eq!(
        store.run_next_due_at(true).await.unwrap(),
        Some(at(2 * MINUTE))
    );

    store
        .run_expire_due(at(2 * MINUTE), NO_LIMIT)
        .await
        .unwrap();
    assert_eq!(
        store.run_next_due_at(true).await.unwrap(),
        Some(at(10 * MINUTE))
    );
    store
        .run_promote_due(at(10 * MINUTE), NO_LIMIT)
        .await
        .unwrap();
    assert_eq!(
        store.run_next_due_at(true).await.unwrap(),
        Some(at(30 * MINUTE))
    );
    store
        .run_expire_due(at(30 * MINUTE), NO_LIMIT)
        .await
        .unwrap();
    assert_eq!(store.run_next_due_at(true).await.unwrap(), None);
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

// ---------------------------------------------------------------------------------------
// Workers: registration and versions

/// How long a lease lasts in these tests.
const LEASE_SECS: i64 = 30;
/// The `maxDuration` grace these tests start attempts with.
const GRACE_MS: i64 = 5_000;
/// The run fee these tests start attempts with (a binary fraction, so sums are exact).
const FEE: f64 = 0.25;

/// A task as a version serves it, every setting left open.
fn task(id: &str) -> TaskConfig {
    TaskConfig {
        task_identifier: id.to_owned(),
        queue: format!("task/{id}"),
        retry: None,
        max_duration_secs: None,
        machine: None,
    }
}

/// Registers a worker of `environment` serving `tasks` in `version` (assigned when
/// `None`); returns the worker as stored and what the registration did.
async fn register(
    store: &dyn Store,
    environment: &Environment,
    version: Option<&str>,
    tasks: Vec<TaskConfig>,
    now: DateTime<Utc>,
) -> (WorkerRecord, Registered) {
    let registration = WorkerRegistration {
        id: WorkerId::generate(now.timestamp_millis()),
        environment_id: environment.id.clone(),
        name: "test-worker".to_owned(),
        version: version.map(str::to_owned),
        tasks,
    };
    let registered = store
        .worker_register(&registration, now)
        .await
        .expect("worker_register");
    let worker = store
        .worker_get(&registration.id)
        .await
        .expect("worker_get")
        .expect("a registered worker is stored");
    (worker, registered)
}

/// A worker of `environment` serving `tasks` (settings left open) in `version`.
async fn serve(
    store: &dyn Store,
    environment: &Environment,
    version: &str,
    tasks: &[&str],
    now: DateTime<Utc>,
) -> WorkerRecord {
    let tasks = tasks.iter().map(|t| task(t)).collect();
    register(store, environment, Some(version), tasks, now)
        .await
        .0
}

/// A run of `task` waiting for a version, as the engine stores it when none serves it.
fn waiting_run(task: &str, options: Value, environment: &Environment, now: DateTime<Utc>) -> Run {
    let mut run = run_from(task, json!({"options": options}), environment, now);
    run.status = RunStatus::PendingVersion;
    run
}

async fn worker_register_assigns_dated_versions_and_keeps_given_ones(store: Arc<dyn Store>) {
    let tenancy = bootstrap(&*store).await;
    let assign = |environment: Environment, now: DateTime<Utc>| {
        let store = Arc::clone(&store);
        async move {
            register(&*store, &environment, None, vec![task("a")], now)
                .await
                .1
                .version
        }
    };
    // at(0) is 2026-01-02.
    assert_eq!(assign(tenancy.dev.clone(), at(0)).await, "20260102.1");
    assert_eq!(assign(tenancy.dev.clone(), at(MINUTE)).await, "20260102.2");

    let (worker, registered) = register(
        &*store,
        &tenancy.dev,
        Some("v1.0"),
        vec![task("a")],
        at(2 * MINUTE),
    )
    .await;
    assert_eq!(
        registered,
        Registered {
            version: "v1.0".to_owned(),
            promoted: vec![]
        }
    );
    assert_eq!(
        worker,
        WorkerRecord {
            id: worker.id.clone(),
            environment_id: tenancy.dev.id.clone(),
            name: "test-worker".to_owned(),
            version: "v1.0".to_owned(),
            tasks: vec![task("a")],
            created_at: at(2 * MINUTE),
        }
    );
    // Re-registering an assigned version keeps it and does not use up a number.
    let again = register(
        &*store,
        &tenancy.dev,
        Some("20260102.1"),
        vec![task("a")],
        at(3 * MINUTE),
    )
    .await;
    assert_eq!(again.1.version, "20260102.1");
    assert_eq!(again.0.version, "20260102.1");
    assert_eq!(
        assign(tenancy.dev.clone(), at(4 * MINUTE)).await,
        "20260102.3"
    );

    // Numbers are per environment and per date.
    assert_eq!(assign(tenancy.staging.clone(), at(0)).await, "20260102.1");
    assert_eq!(
        assign(tenancy.dev.clone(), at(24 * HOUR)).await,
        "20260103.1"
    );
}

/// Registrations at once (several workers starting on several nodes) never share an
/// assigned version.
async fn worker_register_concurrent_registrations_get_distinct_versions(store: Arc<dyn Store>) {
    const WORKERS: usize = 6;
    let tenancy = bootstrap(&*store).await;
    let start = Arc::new(Barrier::new(WORKERS));
    let mut tasks = JoinSet::new();
    for _ in 0..WORKERS {
        let store = Arc::clone(&store);
        let start = Arc::clone(&start);
        let dev = tenancy.dev.clone();
        tasks.spawn(async move {
            start.wait().await;
            register(&*store, &dev, None, vec![task("a")], at(0))
                .await
                .1
                .version
        });
    }
    let mut versions = tasks.join_all().await;
    versions.sort();
    let want: Vec<String> = (1..=WORKERS).map(|n| format!("20260102.{n}")).collect();
    assert_eq!(versions, want);
}

async fn worker_register_again_upserts_the_tasks_of_a_version(store: Arc<dyn Store>) {
    let tenancy = bootstrap(&*store).await;
    let first_a = TaskConfig {
        retry: Some(RetryPolicy {
            max_attempts: 5,
            factor: 3.0,
            min_timeout_in_ms: 100,
            max_timeout_in_ms: 900,
            randomize: false,
        }),
        max_duration_secs: Some(60),
        machine: Some(MachinePreset::Micro),
        queue: "shared".to_owned(),
        ..task("a")
    };
    let (first, _) = register(
        &*store,
        &tenancy.dev,
        Some("v1"),
        vec![first_a.clone(), task("b")],
        at(0),
    )
    .await;
    assert_eq!(first.tasks, vec![first_a, task("b")]);

    let second_a = TaskConfig {
        max_duration_secs: Some(120),
        machine: Some(MachinePreset::Large1x),
        ..task("a")
    };
    let (second, registered) = register(
        &*store,
        &tenancy.dev,
        Some("v1"),
        vec![second_a.clone()],
        at(MINUTE),
    )
    .await;
    assert_eq!(registered.version, "v1");
    assert_eq!(second.tasks, vec![second_a.clone()]);
    // The version's settings changed for every worker of it.
    let first_again = store.worker_get(&first.id).await.unwrap().unwrap();
    assert_eq!(first_again.tasks, vec![second_a, task("b")]);
}

async fn worker_get_returns_only_the_worker_tasks(store: Arc<dyn Store>) {
    let tenancy = bootstrap(&*store).await;
    let one = serve(&*store, &tenancy.dev, "v1", &["b", "a"], at(0)).await;
    let two = serve(&*store, &tenancy.dev, "v1", &["c", "b"], at(0)).await;
    let other_env = serve(&*store, &tenancy.prod, "v1", &["d"], at(0)).await;
    // Listed by task identifier.
    assert_eq!(one.tasks, vec![task("a"), task("b")]);
    assert_eq!(two.tasks, vec![task("b"), task("c")]);
    assert_eq!(other_env.tasks, vec![task("d")]);
    assert_eq!(other_env.environment_id, tenancy.prod.id);
    assert_eq!(
        store.worker_get(&one.id).await.unwrap(),
        Some(one.clone()),
        "a worker reads back the same"
    );
    let unknown = WorkerId::generate(at(0).timestamp_millis());
    assert_eq!(store.worker_get(&unknown).await.unwrap(), None);
}

async fn task_served_by_any_version_or_the_named_one(store: Arc<dyn Store>) {
    let tenancy = bootstrap(&*store).await;
    let served = |environment: &Environment, task: &'static str, version: Option<&'static str>| {
        let store = Arc::clone(&store);
        let environment = environment.id.clone();
        async move {
            store
                .task_served(&environment, task, version)
                .await
                .unwrap()
        }
    };
    assert!(!served(&tenancy.dev, "a", None).await, "nothing registered");
    serve(&*store, &tenancy.dev, "v1", &["a"], at(0)).await;
    assert!(served(&tenancy.dev, "a", None).await);
    assert!(served(&tenancy.dev, "a", Some("v1")).await);
    assert!(!served(&tenancy.dev, "a", Some("v2")).await);
    assert!(!served(&tenancy.dev, "b", None).await);
    assert!(!served(&tenancy.staging, "a", None).await);
    assert!(!served(&tenancy.staging, "a", Some("v1")).await);
}

async fn worker_register_queues_the_waiting_runs_of_its_tasks(store: Arc<dyn Store>) {
    let tenancy = bootstrap(&*store).await;
    let unlocked = waiting_run("a", json!({}), &tenancy.dev, at(0));
    let locked_v1 = waiting_run("a", json!({"lockToVersion": "v1"}), &tenancy.dev, at(0));
    let locked_v2 = waiting_run("a", json!({"lockToVersion": "v2"}), &tenancy.dev, at(0));
    let other_task = waiting_run("b", json!({}), &tenancy.dev, at(0));
    let other_env = waiting_run("a", json!({}), &tenancy.staging, at(0));
    let delayed = run_from(
        "a",
        json!({"options": {"delay": "1h"}}),
        &tenancy.dev,
        at(0),
    );
    let all = [
        &unlocked,
        &locked_v1,
        &locked_v2,
        &other_task,
        &other_env,
        &delayed,
    ];
    for run in all {
        create(&*store, run, at(0)).await;
    }

    let now = at(MINUTE);
    let (_, registered) = register(&*store, &tenancy.dev, Some("v1"), vec![task("a")], now).await;
    assert_eq!(
        sorted(registered.promoted),
        sorted(vec![unlocked.id.clone(), locked_v1.id.clone()])
    );
    for run in [&unlocked, &locked_v1] {
        let mut want = run.clone();
        want.status = RunStatus::Queued;
        want.updated_at = now;
        assert_eq!(stored(&*store, run).await, want);
    }
    for run in [&locked_v2, &other_task, &other_env, &delayed] {
        assert_eq!(stored(&*store, run).await, *run, "{} waits", run.id);
    }

    let (_, registered) = register(&*store, &tenancy.dev, Some("v2"), vec![task("a")], now).await;
    assert_eq!(registered.promoted, vec![locked_v2.id.clone()]);
    assert_eq!(stored_status(&*store, &locked_v2).await, RunStatus::Queued);
    assert_eq!(stored(&*store, &other_task).await, other_task);
}

// ---------------------------------------------------------------------------------------
// Dequeue

/// Leases every run `worker` can take, `limit` per call, until none is left.
async fn dequeue_all(store: &dyn Store, worker: &WorkerRecord, now: DateTime<Utc>) -> Vec<Leased> {
    store
        .run_dequeue(worker, NO_LIMIT, now + Duration::seconds(LEASE_SECS), now)
        .await
        .expect("run_dequeue")
}

/// Leases exactly one run to `worker` at `now`.
async fn lease(store: &dyn Store, worker: &WorkerRecord, now: DateTime<Utc>) -> Leased {
    let mut leased = store
        .run_dequeue(worker, 1, now + Duration::seconds(LEASE_SECS), now)
        .await
        .expect("run_dequeue");
    assert_eq!(leased.len(), 1, "one run to lease");
    leased.remove(0)
}

/// Leases one run to `worker` at `now` and starts its attempt at `now`; returns the run
/// and attempt as stored.
async fn lease_and_start(store: &dyn Store, worker: &WorkerRecord, now: DateTime<Utc>) -> Leased {
    let leased = lease(store, worker, now).await;
    let started = store
        .attempt_start(
            &worker.id,
            std::slice::from_ref(&leased.attempt.id),
            now + Duration::seconds(LEASE_SECS),
            GRACE_MS,
            FEE,
            now,
        )
        .await
        .expect("attempt_start");
    assert_eq!(started, vec![leased.attempt.id.clone()]);
    held(store, &leased.run).await
}

/// The run as stored, with its latest attempt.
async fn held(store: &dyn Store, run: &Run) -> Leased {
    let run = stored(store, run).await;
    let attempt = store
        .attempt_list(&run.id)
        .await
        .expect("attempt_list")
        .pop()
        .expect("the run has an attempt");
    Leased { run, attempt }
}

fn ids_of(leased: &[Leased]) -> Vec<RunId> {
    leased.iter().map(|l| l.run.id.clone()).collect()
}

async fn run_dequeue_takes_the_oldest_first_and_priority_moves_a_run_ahead(store: Arc<dyn Store>) {
    let tenancy = bootstrap(&*store).await;
    let worker = serve(&*store, &tenancy.dev, "v1", &["my-task"], at(0)).await;
    let first = queued_run(&tenancy.dev, at(0));
    let second = queued_run(&tenancy.dev, at(1));
    let third = queued_run(&tenancy.dev, at(2));
    // Triggered last, but 10 s of priority puts it before the run triggered 3 s earlier.
    let urgent = run_with_options(json!({"priority": 10}), &tenancy.dev, at(3));
    for run in [&third, &urgent, &first, &second] {
        create(&*store, run, at(3)).await;
    }

    let now = at(MINUTE);
    let lease_until = now + Duration::seconds(LEASE_SECS);
    let batch = store
        .run_dequeue(&worker, 2, lease_until, now)
        .await
        .unwrap();
    assert_eq!(ids_of(&batch), vec![urgent.id.clone(), first.id.clone()]);
    let batch = store
        .run_dequeue(&worker, 10, lease_until, now)
        .await
        .unwrap();
    assert_eq!(ids_of(&batch), vec![second.id.clone(), third.id.clone()]);
    assert!(store
        .run_dequeue(&worker, 10, lease_until, now)
        .await
        .unwrap()
        .is_empty());
}

async fn run_dequeue_leases_only_the_worker_tasks_and_version(store: Arc<dyn Store>) {
    let tenancy = bootstrap(&*store).await;
    let worker = serve(&*store, &tenancy.dev, "v1", &["a"], at(0)).await;
    serve(&*store, &tenancy.dev, "v2", &["a", "b"], at(0)).await;
    let unlocked = run_from("a", json!({}), &tenancy.dev, at(0));
    let locked_here = run_from(
        "a",
        json!({"options": {"lockToVersion": "v1"}}),
        &tenancy.dev,
        at(1),
    );
    let locked_elsewhere = run_from(
        "a",
        json!({"options": {"lockToVersion": "v2"}}),
        &tenancy.dev,
        at(0),
    );
    let other_task = run_from("b", json!({}), &tenancy.dev, at(0));
    let other_env = run_from("a", json!({}), &tenancy.staging, at(0));
    let delayed = run_from(
        "a",
        json!({"options": {"delay": "1s"}}),
        &tenancy.dev,
        at(0),
    );
    let waiting = waiting_run("a", json!({}), &tenancy.dev, at(0));
    let all = [
        &unlocked,
        &locked_here,
        &locked_elsewhere,
        &other_task,
        &other_env,
        &delayed,
        &waiting,
    ];
    for run in all {
        create(&*store, run, at(0)).await;
    }

    let leased = dequeue_all(&*store, &worker, at(MINUTE)).await;
    assert_eq!(
        ids_of(&leased),
        vec![unlocked.id.clone(), locked_here.id.clone()]
    );
    for run in [
        &locked_elsewhere,
        &other_task,
        &other_env,
        &delayed,
        &waiting,
    ] {
        assert_eq!(stored(&*store, run).await, *run, "{} is not leased", run.id);
    }
    let none = store
        .run_dequeue(&worker, 0, at(HOUR), at(MINUTE))
        .await
        .unwrap();
    assert!(none.is_empty(), "a limit of 0 leases nothing");
}

async fn run_dequeue_leases_the_run_with_a_new_pending_attempt(store: Arc<dyn Store>) {
    let tenancy = bootstrap(&*store).await;
    let settings = TaskConfig {
        max_duration_secs: Some(300),
        machine: Some(MachinePreset::Large1x),
        ..task("my-task")
    };
    let (worker, _) = register(&*store, &tenancy.dev, Some("v1"), vec![settings], at(0)).await;
    // The trigger leaves maxDuration and machine open and sets a TTL; this run has
    // already had two attempts.
    let mut open = run_with_options(json!({"ttl": "1h"}), &tenancy.dev, at(0));
    open.attempt_count = 2;
    open.failed_attempts = 1;
    let explicit = run_with_options(
        json!({"maxDuration": 60, "machine": "micro"}),
        &tenancy.dev,
        at(1),
    );
    create(&*store, &open, at(0)).await;
    create(&*store, &explicit, at(1)).await;

    let now = at(MINUTE);
    let lease_until = now + Duration::seconds(LEASE_SECS);
    let leased = store
        .run_dequeue(&worker, 10, lease_until, now)
        .await
        .unwrap();
    assert_eq!(ids_of(&leased), vec![open.id.clone(), explicit.id.clone()]);

    for (leased, run, number, max_duration, machine) in [
        (&leased[0], &open, 3, 300, MachinePreset::Large1x),
        (&leased[1], &explicit, 1, 60, MachinePreset::Micro),
    ] {
        let attempt = &leased.attempt;
        assert!(attempt.id.starts_with("attempt_"), "{}", attempt.id);
        assert_eq!(
            *attempt,
            Attempt {
                id: attempt.id.clone(),
                run_id: run.id.clone(),
                number,
                status: AttemptStatus::Pending,
                created_at: now,
                updated_at: now,
                started_at: None,
                completed_at: None,
                error: None,
                worker_id: Some(worker.id.to_string()),
                duration_ms: 0,
            }
        );
        let mut want = run.clone();
        want.status = RunStatus::Dequeued;
        want.worker_id = Some(worker.id.to_string());
        want.worker_version = Some("v1".to_owned());
        want.current_attempt_id = Some(attempt.id.clone());
        want.lease_expires_at = Some(lease_until);
        want.expire_at = None;
        want.attempt_count = number;
        want.max_duration_secs = Some(max_duration);
        want.machine = Some(machine);
        want.updated_at = now;
        assert_eq!(leased.run, want, "the lease as returned");
        assert_eq!(stored(&*store, run).await, want, "the lease as stored");
        assert_eq!(
            store.attempt_list(&run.id).await.unwrap(),
            vec![attempt.clone()]
        );
    }

    // A leased run with a TTL no longer expires.
    assert_eq!(
        store.run_expire_due(at(2 * HOUR), NO_LIMIT).await.unwrap(),
        vec![]
    );
}

/// Workers dequeuing at once (several processes, several server nodes) never lease one
/// run twice, and together they lease every run.
async fn run_dequeue_concurrent_dequeuers_lease_each_run_once(store: Arc<dyn Store>) {
    const RUNS: usize = 60;
    const DEQUEUERS: usize = 6;
    const BATCH: u32 = 3;
    let tenancy = bootstrap(&*store).await;
    let mut workers = Vec::new();
    for _ in 0..DEQUEUERS {
        workers.push(serve(&*store, &tenancy.dev, "v1", &["my-task"], at(0)).await);
    }
    let runs: Vec<Run> = (0..RUNS)
        .map(|i| queued_run(&tenancy.dev, at(i as i64)))
        .collect();
    for run in &runs {
        create(&*store, run, at(0)).await;
    }

    let start = Arc::new(Barrier::new(DEQUEUERS));
    let mut tasks = JoinSet::new();
    for worker in workers {
        let store = Arc::clone(&store);
        let start = Arc::clone(&start);
        tasks.spawn(async move {
            start.wait().await;
            let mut leased = Vec::new();
            loop {
                let now = at(HOUR);
                let batch = store
                    .run_dequeue(&worker, BATCH, now + Duration::seconds(LEASE_SECS), now)
                    .await
                    .expect("run_dequeue");
                if batch.is_empty() {
                    return leased;
                }
                assert!(batch.len() <= BATCH as usize, "{} > {BATCH}", batch.len());
                leased.extend(batch);
            }
        });
    }
    let leased: Vec<Leased> = tasks.join_all().await.into_iter().flatten().collect();
    assert_eq!(
        sorted(ids_of(&leased)),
        sorted(runs.iter().map(|r| r.id.clone()).collect()),
        "every run leased exactly once"
    );
    for l in &leased {
        let run = stored(&*store, &l.run).await;
        assert_eq!(run.status, RunStatus::Dequeued);
        assert_eq!(
            run.worker_id, l.run.worker_id,
            "leased to the worker told so"
        );
        assert_eq!(run.current_attempt_id.as_ref(), Some(&l.attempt.id));
        assert_eq!(
            store.attempt_list(&run.id).await.unwrap(),
            vec![l.attempt.clone()],
            "one attempt per run"
        );
    }
}

// ---------------------------------------------------------------------------------------
// Start and heartbeat

async fn attempt_start_starts_only_the_holder_pending_attempt(store: Arc<dyn Store>) {
    let tenancy = bootstrap(&*store).await;
    let holder = serve(&*store, &tenancy.dev, "v1", &["my-task"], at(0)).await;
    let stranger = serve(&*store, &tenancy.dev, "v1", &["my-task"], at(0)).await;
    let run = run_with_options(json!({"maxDuration": 60}), &tenancy.dev, at(0));
    create(&*store, &run, at(0)).await;
    let leased = lease(&*store, &holder, at(0)).await;
    let ids = vec![leased.attempt.id.clone()];

    let now = at(MINUTE);
    let lease_until = now + Duration::seconds(LEASE_SECS);
    let refused = store
        .attempt_start(&stranger.id, &ids, lease_until, GRACE_MS, FEE, now)
        .await
        .unwrap();
    assert_eq!(refused, Vec::<String>::new(), "not the holder");
    assert_eq!(
        held(&*store, &run).await,
        leased,
        "a refused start changes nothing"
    );

    let unknown = "attempt_0000000000000000000000".to_owned();
    let started = store
        .attempt_start(
            &holder.id,
            &[unknown, ids[0].clone()],
            lease_until,
            GRACE_MS,
            FEE,
            now,
        )
        .await
        .unwrap();
    assert_eq!(started, ids);
    let mut want = leased.clone();
    want.run.status = RunStatus::Executing;
    want.run.started_at = Some(now);
    want.run.base_cost_in_cents = FEE;
    want.run.lease_expires_at = Some(lease_until);
    want.run.timeout_at = Some(now + Duration::seconds(60) + Duration::milliseconds(GRACE_MS));
    want.run.updated_at = now;
    want.attempt.status = AttemptStatus::Executing;
    want.attempt.started_at = Some(now);
    want.attempt.updated_at = now;
    assert_eq!(held(&*store, &run).await, want);

    let again = store
        .attempt_start(&holder.id, &ids, at(HOUR), GRACE_MS, FEE, at(2 * MINUTE))
        .await
        .unwrap();
    assert_eq!(again, Vec::<String>::new(), "only a DEQUEUED run starts");
    assert_eq!(held(&*store, &run).await, want);
}

/// The run's `started_at` and per-run fee come from its first attempt; each attempt gets
/// its own `maxDuration` deadline.
async fn attempt_start_sets_started_at_and_the_fee_once(store: Arc<dyn Store>) {
    let tenancy = bootstrap(&*store).await;
    let worker = serve(&*store, &tenancy.dev, "v1", &["my-task"], at(0)).await;
    let run = run_with_options(json!({"maxDuration": 60}), &tenancy.dev, at(0));
    create(&*store, &run, at(0)).await;
    let first = lease_and_start(&*store, &worker, at(10)).await;
    let retry_at = at(MINUTE);
    let applied = store
        .attempt_settle(&[failed(
            &first,
            Claim::Worker(worker.id.clone()),
            retry_at,
            at(20),
        )])
        .await
        .unwrap();
    assert_eq!(applied, vec![true]);
    store.run_requeue_due(retry_at, NO_LIMIT).await.unwrap();

    let second = lease(&*store, &worker, at(2 * MINUTE)).await;
    assert_eq!(second.attempt.number, 2);
    let now = at(3 * MINUTE);
    store
        .attempt_start(
            &worker.id,
            std::slice::from_ref(&second.attempt.id),
            now + Duration::seconds(LEASE_SECS),
            GRACE_MS,
            FEE * 2.0,
            now,
        )
        .await
        .unwrap();
    let after = held(&*store, &run).await;
    assert_eq!(after.run.started_at, Some(at(10)), "the first start");
    assert_eq!(after.run.base_cost_in_cents, FEE, "charged once");
    assert_eq!(
        after.run.timeout_at,
        Some(now + Duration::seconds(60) + Duration::milliseconds(GRACE_MS))
    );
    assert_eq!(after.attempt.started_at, Some(now));
}

async fn attempt_start_without_a_max_duration_sets_no_deadline(store: Arc<dyn Store>) {
    let tenancy = bootstrap(&*store).await;
    let worker = serve(&*store, &tenancy.dev, "v1", &["my-task"], at(0)).await;
    let unlimited = run_with_options(json!({"maxDuration": 2147483647}), &tenancy.dev, at(0));
    let open = queued_run(&tenancy.dev, at(1));
    create(&*store, &unlimited, at(0)).await;
    create(&*store, &open, at(1)).await;
    for run in [&unlimited, &open] {
        let started = lease_and_start(&*store, &worker, at(MINUTE)).await;
        assert_eq!(started.run.id, run.id);
        assert_eq!(started.run.status, RunStatus::Executing);
        assert_eq!(started.run.timeout_at, None, "{:?}", run.max_duration_secs);
    }
}

async fn attempt_heartbeat_extends_only_the_leases_a_worker_holds(store: Arc<dyn Store>) {
    let tenancy = bootstrap(&*store).await;
    let holder = serve(&*store, &tenancy.dev, "v1", &["my-task"], at(0)).await;
    let stranger = serve(&*store, &tenancy.dev, "v1", &["my-task"], at(0)).await;
    let runs: Vec<Run> = (0..3).map(|i| queued_run(&tenancy.dev, at(i))).collect();
    for run in &runs {
        create(&*store, run, at(0)).await;
    }
    let dequeued = lease(&*store, &holder, at(10)).await;
    let executing = lease_and_start(&*store, &holder, at(10)).await;
    let theirs = lease(&*store, &stranger, at(10)).await;
    let before_theirs = held(&*store, &theirs.run).await;

    let now = at(20);
    let lease_until = at(20 + LEASE_SECS);
    let mut extended = store
        .attempt_heartbeat(
            &holder.id,
            &[
                dequeued.attempt.id.clone(),
                executing.attempt.id.clone(),
                theirs.attempt.id.clone(),
                "attempt_0000000000000000000000".to_owned(),
            ],
            lease_until,
            now,
        )
        .await
        .unwrap();
    extended.sort();
    let mut want = vec![dequeued.attempt.id.clone(), executing.attempt.id.clone()];
    want.sort();
    assert_eq!(extended, want);
    for leased in [&dequeued, &executing] {
        let run = stored(&*store, &leased.run).await;
        assert_eq!(run.lease_expires_at, Some(lease_until));
        assert_eq!(run.status, leased.run.status, "a heartbeat moves no run");
    }
    assert_eq!(
        held(&*store, &theirs.run).await,
        before_theirs,
        "not the holder's"
    );

    // A run canceled under the worker is no longer held.
    store
        .run_cancel(&tenancy.dev.id, &executing.run.id, 0.0, at(25))
        .await
        .unwrap();
    let extended = store
        .attempt_heartbeat(
            &holder.id,
            &[dequeued.attempt.id.clone(), executing.attempt.id.clone()],
            at(60),
            at(30),
        )
        .await
        .unwrap();
    assert_eq!(extended, vec![dequeued.attempt.id.clone()]);
    assert!(store
        .attempt_heartbeat(&holder.id, &[], at(60), at(30))
        .await
        .unwrap()
        .is_empty());
}

// ---------------------------------------------------------------------------------------
// Settlement and cancel

/// A successful end of `leased`'s attempt.
fn succeeded(leased: &Leased, claim: Claim, now: DateTime<Utc>) -> AttemptSettlement {
    AttemptSettlement {
        run_id: leased.run.id.clone(),
        attempt_id: leased.attempt.id.clone(),
        claim,
        attempt_status: AttemptStatus::Completed,
        attempt_error: None,
        run_status: RunStatus::CompletedSuccessfully,
        run_error: None,
        output: Some(Packet::json(&json!({"ok": true}))),
        next_attempt_at: None,
        spends_attempt: true,
        duration_ms: 0,
        cost_in_cents: 0.0,
        now,
    }
}

/// A failed attempt of `leased`, retried at `retry_at`.
fn failed(
    leased: &Leased,
    claim: Claim,
    retry_at: DateTime<Utc>,
    now: DateTime<Utc>,
) -> AttemptSettlement {
    AttemptSettlement {
        attempt_status: AttemptStatus::Failed,
        attempt_error: Some(json!({"message": "boom"})),
        run_status: RunStatus::RetryingAfterFailure,
        output: None,
        next_attempt_at: Some(retry_at),
        ..succeeded(leased, claim, now)
    }
}

async fn attempt_settle_applies_only_while_the_claim_holds(store: Arc<dyn Store>) {
    let tenancy = bootstrap(&*store).await;
    let holder = serve(&*store, &tenancy.dev, "v1", &["my-task"], at(0)).await;
    let stranger = serve(&*store, &tenancy.dev, "v1", &["my-task"], at(0)).await;
    let runs: Vec<Run> = (0..4)
        .map(|i| run_with_options(json!({"maxDuration": 60}), &tenancy.dev, at(i)))
        .collect();
    for run in &runs {
        create(&*store, run, at(0)).await;
    }
    // Started at 10 s: the lease runs out at 40 s, maxDuration (+ grace) at 75 s.
    let mut started = Vec::new();
    for _ in 0..3 {
        started.push(lease_and_start(&*store, &holder, at(10)).await);
    }
    let lease_end = at(10 + LEASE_SECS);
    let deadline = at(10 + 60) + Duration::milliseconds(GRACE_MS);
    assert_eq!(started[0].run.lease_expires_at, Some(lease_end));
    assert_eq!(started[0].run.timeout_at, Some(deadline));
    let dequeued = lease(&*store, &holder, at(10)).await;

    let now = at(MINUTE);
    let ms = Duration::milliseconds(1);
    let mut wrong_attempt = succeeded(&started[0], Claim::Worker(holder.id.clone()), now);
    wrong_attempt.attempt_id = dequeued.attempt.id.clone();
    let refused = [
        succeeded(&started[0], Claim::Worker(stranger.id.clone()), now),
        succeeded(&started[0], Claim::LeaseExpired(lease_end - ms), now),
        succeeded(&started[0], Claim::TimedOut(deadline - ms), now),
        wrong_attempt,
        // A run that never started has no maxDuration deadline.
        succeeded(&dequeued, Claim::TimedOut(at(HOUR)), now),
    ];
    assert_eq!(
        store.attempt_settle(&refused).await.unwrap(),
        vec![false; refused.len()]
    );
    for leased in started.iter().chain([&dequeued]) {
        assert_eq!(held(&*store, &leased.run).await, *leased, "nothing changed");
    }

    let accepted = [
        succeeded(&started[0], Claim::LeaseExpired(lease_end), now),
        succeeded(&started[1], Claim::TimedOut(deadline), now),
        succeeded(&started[2], Claim::Worker(holder.id.clone()), now),
    ];
    assert_eq!(
        store.attempt_settle(&accepted).await.unwrap(),
        vec![true, true, true]
    );
    let mut settled = Vec::new();
    for leased in &started {
        let after = held(&*store, &leased.run).await;
        assert_eq!(after.run.status, RunStatus::CompletedSuccessfully);
        assert_eq!(after.attempt.status, AttemptStatus::Completed);
        settled.push(after);
    }
    assert_eq!(
        store.attempt_settle(&accepted).await.unwrap(),
        vec![false, false, false],
        "an attempt settles once"
    );
    for after in &settled {
        assert_eq!(held(&*store, &after.run).await, *after);
    }
    assert_eq!(store.attempt_settle(&[]).await.unwrap(), Vec::<bool>::new());
}

/// Each settlement adds its compute time and cost; only a failed attempt that spends an
/// attempt counts against `maxAttempts`.
async fn attempt_settle_adds_usage_and_counts_spent_failures(store: Arc<dyn Store>) {
    let tenancy = bootstrap(&*store).await;
    let worker = serve(&*store, &tenancy.dev, "v1", &["my-task"], at(0)).await;
    let run = queued_run(&tenancy.dev, at(0));
    create(&*store, &run, at(0)).await;
    let claim = || Claim::Worker(worker.id.clone());

    // (attempt status, run status, spends an attempt, failures counted after)
    let steps = [
        (
            AttemptStatus::Failed,
            RunStatus::RetryingAfterFailure,
            true,
            1,
        ),
        (AttemptStatus::Canceled, RunStatus::Queued, false, 1),
        (AttemptStatus::Failed, RunStatus::Queued, false, 1),
        (
            AttemptStatus::Failed,
            RunStatus::RetryingAfterFailure,
            true,
            2,
        ),
        (
            AttemptStatus::Completed,
            RunStatus::CompletedSuccessfully,
            true,
            2,
        ),
    ];
    let mut t = 0;
    for (n, (attempt_status, run_status, spends_attempt, failures)) in steps.into_iter().enumerate()
    {
        t += MINUTE;
        store.run_requeue_due(at(t), NO_LIMIT).await.unwrap();
        let before = lease_and_start(&*store, &worker, at(t)).await;
        assert_eq!(before.attempt.number, n as u32 + 1);
        let now = at(t + 2);
        let retry_at = at(t + 30);
        let settlement = AttemptSettlement {
            attempt_status,
            run_status,
            spends_attempt,
            attempt_error: (attempt_status != AttemptStatus::Completed)
                .then(|| json!({"message": format!("attempt {}", n + 1)})),
            run_error: None,
            output: (run_status == RunStatus::CompletedSuccessfully)
                .then(|| Packet::json(&json!({"n": n}))),
            next_attempt_at: (run_status == RunStatus::RetryingAfterFailure).then_some(retry_at),
            duration_ms: 1500,
            cost_in_cents: 0.5,
            ..succeeded(&before, claim(), now)
        };
        assert_eq!(
            store
                .attempt_settle(std::slice::from_ref(&settlement))
                .await
                .unwrap(),
            vec![true]
        );

        let mut want = before.clone();
        want.run.status = run_status;
        want.run.output = settlement.output.clone();
        want.run.usage_duration_ms += 1500;
        want.run.cost_in_cents += 0.5;
        want.run.failed_attempts = failures;
        want.run.completed_at = run_status.is_final().then_some(now);
        want.run.next_attempt_at = settlement.next_attempt_at;
        want.run.lease_expires_at = None;
        want.run.timeout_at = None;
        want.run.current_attempt_id = None;
        want.run.updated_at = now;
        want.attempt.status = attempt_status;
        want.attempt.error = settlement.attempt_error.clone();
        want.attempt.completed_at = Some(now);
        want.attempt.updated_at = now;
        want.attempt.duration_ms = 1500;
        assert_eq!(held(&*store, &run).await, want, "step {}", n + 1);
        t += MINUTE;
    }
    let done = stored(&*store, &run).await;
    assert_eq!(done.usage_duration_ms, 5 * 1500);
    assert_eq!(done.cost_in_cents, 2.5);
    assert_eq!(done.attempt_count, 5);
    let statuses: Vec<AttemptStatus> = store
        .attempt_list(&run.id)
        .await
        .unwrap()
        .into_iter()
        .map(|a| a.status)
        .collect();
    assert_eq!(
        statuses,
        steps.iter().map(|s| s.0).collect::<Vec<_>>(),
        "every attempt kept its end"
    );
}

async fn attempt_settle_after_run_cancel_is_refused(store: Arc<dyn Store>) {
    let tenancy = bootstrap(&*store).await;
    let worker = serve(&*store, &tenancy.dev, "v1", &["my-task"], at(0)).await;
    let run = run_with_options(json!({"maxDuration": 600}), &tenancy.dev, at(0));
    create(&*store, &run, at(0)).await;
    let started = lease_and_start(&*store, &worker, at(10)).await;

    let now = at(70);
    let outcome = store
        .run_cancel(&tenancy.dev.id, &run.id, 0.5, now)
        .await
        .unwrap();
    assert_eq!(
        outcome,
        CancelOutcome::Canceled {
            attempt: Some(started.attempt.id.clone())
        }
    );
    let mut want = started.clone();
    want.run.status = RunStatus::Canceled;
    want.run.completed_at = Some(now);
    want.run.updated_at = now;
    want.run.error = Some(json!({
        "type": "INTERNAL_ERROR",
        "code": "TASK_RUN_CANCELLED",
        "message": "Run was canceled",
    }));
    want.run.usage_duration_ms = 60_000;
    want.run.cost_in_cents = 30_000.0;
    want.run.lease_expires_at = None;
    want.run.timeout_at = None;
    want.run.current_attempt_id = None;
    want.attempt.status = AttemptStatus::Canceled;
    want.attempt.completed_at = Some(now);
    want.attempt.updated_at = now;
    want.attempt.duration_ms = 60_000;
    want.attempt.error = Some(json!({"message": "Run was canceled"}));
    let canceled = held(&*store, &run).await;
    assert_eq!(canceled, want);

    let late = succeeded(&started, Claim::Worker(worker.id.clone()), at(80));
    assert_eq!(store.attempt_settle(&[late]).await.unwrap(), vec![false]);
    assert_eq!(held(&*store, &run).await, canceled, "the cancel stands");
    let rescue = succeeded(&started, Claim::LeaseExpired(at(HOUR)), at(HOUR));
    assert_eq!(store.attempt_settle(&[rescue]).await.unwrap(), vec![false]);
    assert_eq!(
        store
            .run_leases_due(Some(at(HOUR)), at(HOUR), NO_LIMIT)
            .await
            .unwrap(),
        vec![],
        "nothing left to rescue"
    );
}

async fn run_cancel_ends_live_runs_and_leaves_final_or_foreign_ones(store: Arc<dyn Store>) {
    let tenancy = bootstrap(&*store).await;
    let worker = serve(&*store, &tenancy.dev, "v1", &["my-task"], at(0)).await;
    let queued = queued_run(&tenancy.dev, at(0));
    let retrying = queued_run(&tenancy.dev, at(1));
    let completed = queued_run(&tenancy.dev, at(2));
    for run in [&queued, &retrying, &completed] {
        create(&*store, run, at(0)).await;
    }
    // `retrying` waits for its next attempt, `completed` succeeded.
    let first = lease_and_start(&*store, &worker, at(10)).await;
    let second = lease_and_start(&*store, &worker, at(10)).await;
    let third = lease_and_start(&*store, &worker, at(10)).await;
    assert_eq!(
        [&first.run.id, &second.run.id, &third.run.id],
        [&queued.id, &retrying.id, &completed.id]
    );
    // `queued` goes back to the queue (released).
    let release = AttemptSettlement {
        attempt_status: AttemptStatus::Canceled,
        run_status: RunStatus::Queued,
        spends_attempt: false,
        output: None,
        ..succeeded(&first, Claim::Worker(worker.id.clone()), at(20))
    };
    let settled = store
        .attempt_settle(&[
            release,
            failed(&second, Claim::Worker(worker.id.clone()), at(HOUR), at(20)),
            succeeded(&third, Claim::Worker(worker.id.clone()), at(20)),
        ])
        .await
        .unwrap();
    assert_eq!(settled, vec![true, true, true]);
    let completed_before = held(&*store, &completed).await;

    let outcome = store
        .run_cancel(&tenancy.dev.id, &completed.id, 1.0, at(30))
        .await
        .unwrap();
    assert_eq!(
        outcome,
        CancelOutcome::AlreadyFinal(RunStatus::CompletedSuccessfully)
    );
    assert_eq!(held(&*store, &completed).await, completed_before);

    let queued_before = stored(&*store, &queued).await;
    for environment in [&tenancy.staging, &tenancy.prod] {
        let outcome = store
            .run_cancel(&environment.id, &queued.id, 1.0, at(30))
            .await
            .unwrap();
        assert_eq!(outcome, CancelOutcome::NotFound, "{}", environment.kind);
    }
    assert_eq!(stored(&*store, &queued).await, queued_before);
    let unknown = RunId::generate(at(0).timestamp_millis());
    assert_eq!(
        store
            .run_cancel(&tenancy.dev.id, &unknown, 1.0, at(30))
            .await
            .unwrap(),
        CancelOutcome::NotFound
    );

    for run in [&queued, &retrying] {
        let before = stored(&*store, run).await;
        let outcome = store
            .run_cancel(&tenancy.dev.id, &run.id, 1.0, at(30))
            .await
            .unwrap();
        assert_eq!(outcome, CancelOutcome::Canceled { attempt: None });
        let mut want = before.clone();
        want.status = RunStatus::Canceled;
        want.completed_at = Some(at(30));
        want.updated_at = at(30);
        want.next_attempt_at = None;
        want.error = Some(json!({
            "type": "INTERNAL_ERROR",
            "code": "TASK_RUN_CANCELLED",
            "message": "Run was canceled",
        }));
        assert_eq!(
            stored(&*store, run).await,
            want,
            "no attempt held, nothing charged"
        );
    }
    assert_eq!(
        store.run_requeue_due(at(HOUR), NO_LIMIT).await.unwrap(),
        vec![],
        "a canceled retry is not queued again"
    );
    assert_eq!(
        store
            .run_cancel(&tenancy.dev.id, &queued.id, 1.0, at(40))
            .await
            .unwrap(),
        CancelOutcome::AlreadyFinal(RunStatus::Canceled)
    );
}

// ---------------------------------------------------------------------------------------
// Rescuer, promoter and expirer over leases and retries

async fn run_leases_due_finds_expired_leases_and_passed_deadlines_only(store: Arc<dyn Store>) {
    let tenancy = bootstrap(&*store).await;
    let worker = serve(&*store, &tenancy.dev, "v1", &["my-task"], at(0)).await;
    let dequeued = queued_run(&tenancy.dev, at(0));
    let limited = run_with_options(json!({"maxDuration": 10}), &tenancy.dev, at(1));
    let executing = queued_run(&tenancy.dev, at(2));
    let retrying = queued_run(&tenancy.dev, at(3));
    let queued = queued_run(&tenancy.dev, at(4));
    for run in [&dequeued, &limited, &executing, &retrying, &queued] {
        create(&*store, run, at(0)).await;
    }
    // Leased at 0 s: lease until 30 s. Started at 20 s: lease until 50 s, and the
    // limited run's deadline at 20 + 10 + 5 = 35 s.
    lease(&*store, &worker, at(0)).await;
    let mut others = Vec::new();
    for _ in 0..3 {
        let leased = lease(&*store, &worker, at(0)).await;
        store
            .attempt_start(
                &worker.id,
                std::slice::from_ref(&leased.attempt.id),
                at(20 + LEASE_SECS),
                GRACE_MS,
                FEE,
                at(20),
            )
            .await
            .unwrap();
        others.push(held(&*store, &leased.run).await);
    }
    store
        .attempt_settle(&[failed(
            &others[2],
            Claim::Worker(worker.id.clone()),
            at(1),
            at(20),
        )])
        .await
        .unwrap();

    let due_at = |now: DateTime<Utc>| {
        let store = Arc::clone(&store);
        async move {
            let mut due = store
                .run_leases_due(Some(now), now, NO_LIMIT)
                .await
                .unwrap();
            due.sort_by(|a, b| a.run.id.cmp(&b.run.id));
            due
        }
    };
    assert_eq!(due_at(at(29)).await, vec![]);
    let want_dequeued = held(&*store, &dequeued).await;
    assert_eq!(due_at(at(30)).await, vec![want_dequeued.clone()]);
    let want_limited = held(&*store, &limited).await;
    assert_eq!(
        due_at(at(35)).await,
        vec![want_dequeued.clone(), want_limited.clone()],
        "the maxDuration deadline passed, the lease did not"
    );
    let want_executing = held(&*store, &executing).await;
    assert_eq!(
        due_at(at(HOUR)).await,
        vec![want_dequeued, want_limited, want_executing],
        "a retrying or queued run holds no lease"
    );
    assert_eq!(
        store
            .run_leases_due(Some(at(HOUR)), at(HOUR), 2)
            .await
            .unwrap()
            .len(),
        2
    );
    // The rescuer's start-up grace: no lease counts, deadlines still do.
    assert_eq!(
        store
            .run_leases_due(None, at(HOUR), NO_LIMIT)
            .await
            .unwrap(),
        vec![held(&*store, &limited).await]
    );
}

/// A lease that ran out but was not rescued yet (the rescuer's start-up grace) is still
/// its worker's: a heartbeat renews it, a completion settles it.
async fn an_expired_lease_not_yet_rescued_takes_its_worker_heartbeat_and_completion(
    store: Arc<dyn Store>,
) {
    let tenancy = bootstrap(&*store).await;
    let worker = serve(&*store, &tenancy.dev, "v1", &["my-task"], at(0)).await;
    let runs: Vec<Run> = (0..2).map(|i| queued_run(&tenancy.dev, at(i))).collect();
    for run in &runs {
        create(&*store, run, at(0)).await;
    }
    // Both leases run out at 30 s; the worker speaks again at 100 s.
    let renewed = lease_and_start(&*store, &worker, at(0)).await;
    let completed = lease_and_start(&*store, &worker, at(0)).await;
    let now = at(100);
    assert_eq!(
        store
            .attempt_heartbeat(
                &worker.id,
                std::slice::from_ref(&renewed.attempt.id),
                now + Duration::seconds(LEASE_SECS),
                now,
            )
            .await
            .unwrap(),
        vec![renewed.attempt.id.clone()]
    );
    assert_eq!(
        stored(&*store, &renewed.run).await.lease_expires_at,
        Some(now + Duration::seconds(LEASE_SECS))
    );
    let settled = succeeded(&completed, Claim::Worker(worker.id.clone()), now);
    assert_eq!(store.attempt_settle(&[settled]).await.unwrap(), vec![true]);
    assert_eq!(
        stored(&*store, &completed.run).await.status,
        RunStatus::CompletedSuccessfully
    );
    assert_eq!(
        store
            .run_leases_due(Some(now), now, NO_LIMIT)
            .await
            .unwrap(),
        vec![],
        "nothing is left for the rescuer"
    );
}

async fn run_requeue_due_requeues_retrying_runs_at_their_next_attempt(store: Arc<dyn Store>) {
    let tenancy = bootstrap(&*store).await;
    let worker = serve(&*store, &tenancy.dev, "v1", &["my-task"], at(0)).await;
    let run = run_with_options(json!({"priority": 5}), &tenancy.dev, at(0));
    create(&*store, &run, at(0)).await;
    let started = lease_and_start(&*store, &worker, at(10)).await;
    let retry_at = at(10 * MINUTE);
    store
        .attempt_settle(&[failed(
            &started,
            Claim::Worker(worker.id.clone()),
            retry_at,
            at(20),
        )])
        .await
        .unwrap();
    let waiting = stored(&*store, &run).await;
    assert_eq!(waiting.status, RunStatus::RetryingAfterFailure);
    assert_eq!(waiting.next_attempt_at, Some(retry_at));

    assert_eq!(
        store
            .run_requeue_due(retry_at - Duration::milliseconds(1), NO_LIMIT)
            .await
            .unwrap(),
        vec![]
    );
    assert!(store
        .run_dequeue(&worker, 10, at(HOUR), retry_at)
        .await
        .unwrap()
        .is_empty());
    let now = retry_at + Duration::seconds(3);
    assert_eq!(
        store.run_requeue_due(now, NO_LIMIT).await.unwrap(),
        vec![run.id.clone()]
    );
    let mut want = waiting.clone();
    want.status = RunStatus::Queued;
    // Queued again as of its retry time, less its priority.
    want.queue_ts = retry_at.timestamp_millis() - 5_000;
    want.next_attempt_at = None;
    want.updated_at = now;
    assert_eq!(stored(&*store, &run).await, want);
    assert_eq!(lease(&*store, &worker, now).await.attempt.number, 2);
}

async fn run_promote_due_leaves_delayed_runs_waiting_for_a_version_that_serves_them(
    store: Arc<dyn Store>,
) {
    let tenancy = bootstrap(&*store).await;
    serve(&*store, &tenancy.dev, "v1", &["served"], at(0)).await;
    let options = |extra: Value| {
        let mut options = json!({"delay": "1m", "priority": 2});
        options
            .as_object_mut()
            .unwrap()
            .extend(extra.as_object().cloned().unwrap_or_default());
        options
    };
    let served = run_from(
        "served",
        json!({"options": options(json!({}))}),
        &tenancy.dev,
        at(0),
    );
    let unserved = run_from(
        "unserved",
        json!({"options": options(json!({}))}),
        &tenancy.dev,
        at(0),
    );
    let locked_elsewhere = run_from(
        "served",
        json!({"options": options(json!({"lockToVersion": "v9"}))}),
        &tenancy.dev,
        at(0),
    );
    let other_env = run_from(
        "served",
        json!({"options": options(json!({}))}),
        &tenancy.staging,
        at(0),
    );
    for run in [&served, &unserved, &locked_elsewhere, &other_env] {
        create(&*store, run, at(0)).await;
    }

    let now = at(MINUTE);
    let promoted = store.run_promote_due(now, NO_LIMIT).await.unwrap();
    assert_eq!(
        sorted(promoted),
        sorted(vec![
            served.id.clone(),
            unserved.id.clone(),
            locked_elsewhere.id.clone(),
            other_env.id.clone()
        ])
    );
    for (run, status) in [
        (&served, RunStatus::Queued),
        (&unserved, RunStatus::PendingVersion),
        (&locked_elsewhere, RunStatus::PendingVersion),
        (&other_env, RunStatus::PendingVersion),
    ] {
        let mut want = run.clone();
        want.status = status;
        want.queue_ts = at(MINUTE).timestamp_millis() - 2_000;
        want.updated_at = now;
        assert_eq!(stored(&*store, run).await, want, "{}", run.task_identifier);
    }
}

/// A run that went to wait for a version while that version was registering (the
/// engine's check and the insert are not one transaction) is queued by the sweep.
async fn run_promote_due_queues_waiting_runs_a_version_now_serves(store: Arc<dyn Store>) {
    let tenancy = bootstrap(&*store).await;
    serve(&*store, &tenancy.dev, "v1", &["a"], at(0)).await;
    let raced = waiting_run("a", json!({}), &tenancy.dev, at(0));
    let locked_here = waiting_run("a", json!({"lockToVersion": "v1"}), &tenancy.dev, at(0));
    let locked_elsewhere = waiting_run("a", json!({"lockToVersion": "v2"}), &tenancy.dev, at(0));
    let unserved = waiting_run("b", json!({}), &tenancy.dev, at(0));
    let other_env = waiting_run("a", json!({}), &tenancy.prod, at(0));
    for run in [
        &raced,
        &locked_here,
        &locked_elsewhere,
        &unserved,
        &other_env,
    ] {
        create(&*store, run, at(0)).await;
    }

    let now = at(5);
    assert_eq!(
        sorted(store.run_promote_due(now, NO_LIMIT).await.unwrap()),
        sorted(vec![raced.id.clone(), locked_here.id.clone()])
    );
    for run in [&raced, &locked_here] {
        let mut want = run.clone();
        want.status = RunStatus::Queued;
        want.updated_at = now;
        assert_eq!(stored(&*store, run).await, want);
    }
    for run in [&locked_elsewhere, &unserved, &other_env] {
        assert_eq!(stored(&*store, run).await, *run);
    }
    assert_eq!(store.run_promote_due(now, NO_LIMIT).await.unwrap(), vec![]);
}

async fn run_expire_due_expires_runs_waiting_for_a_version(store: Arc<dyn Store>) {
    let tenancy = bootstrap(&*store).await;
    let waiting = waiting_run("a", json!({"ttl": "10m"}), &tenancy.dev, at(0));
    let no_ttl = waiting_run("a", json!({}), &tenancy.dev, at(0));
    create(&*store, &waiting, at(0)).await;
    create(&*store, &no_ttl, at(0)).await;
    assert_eq!(
        store.run_next_due_at(true).await.unwrap(),
        Some(at(10 * MINUTE))
    );

    assert_eq!(
        store
            .run_expire_due(at(10 * MINUTE) - Duration::milliseconds(1), NO_LIMIT)
            .await
            .unwrap(),
        vec![]
    );
    let now = at(10 * MINUTE);
    assert_eq!(
        store.run_expire_due(now, NO_LIMIT).await.unwrap(),
        vec![waiting.id.clone()]
    );
    let mut want = waiting.clone();
    want.status = RunStatus::Expired;
    want.expired_at = Some(now);
    want.completed_at = Some(now);
    want.updated_at = now;
    want.error = Some(
        json!({"type": "STRING_ERROR", "raw": "Run expired because the TTL (10m) was reached"}),
    );
    assert_eq!(stored(&*store, &waiting).await, want);
    assert_eq!(stored(&*store, &no_ttl).await, no_ttl);
}

async fn run_next_due_at_includes_retry_lease_and_timeout_deadlines(store: Arc<dyn Store>) {
    let tenancy = bootstrap(&*store).await;
    let worker = serve(&*store, &tenancy.dev, "v1", &["my-task"], at(0)).await;
    let run = run_with_options(json!({"maxDuration": 5}), &tenancy.dev, at(0));
    create(&*store, &run, at(0)).await;
    assert_eq!(store.run_next_due_at(true).await.unwrap(), None);

    let leased = lease(&*store, &worker, at(0)).await;
    assert_eq!(
        store.run_next_due_at(true).await.unwrap(),
        Some(at(LEASE_SECS)),
        "the lease"
    );
    assert_eq!(
        store.run_next_due_at(false).await.unwrap(),
        None,
        "leases left out (the rescuer's start-up grace)"
    );
    store
        .attempt_start(
            &worker.id,
            std::slice::from_ref(&leased.attempt.id),
            at(2 + LEASE_SECS),
            GRACE_MS,
            FEE,
            at(2),
        )
        .await
        .unwrap();
    assert_eq!(
        store.run_next_due_at(true).await.unwrap(),
        Some(at(2 + 5) + Duration::milliseconds(GRACE_MS)),
        "the maxDuration deadline comes before the lease"
    );
    assert_eq!(
        store.run_next_due_at(false).await.unwrap(),
        Some(at(2 + 5) + Duration::milliseconds(GRACE_MS)),
        "a deadline counts without leases too"
    );
    let started = held(&*store, &run).await;
    store
        .attempt_settle(&[failed(
            &started,
            Claim::Worker(worker.id.clone()),
            at(HOUR),
            at(3),
        )])
        .await
        .unwrap();
    assert_eq!(
        store.run_next_due_at(true).await.unwrap(),
        Some(at(HOUR)),
        "the retry; the lease and deadline ended with the attempt"
    );
    let ttl = run_with_options(json!({"ttl": "30m"}), &tenancy.dev, at(0));
    create(&*store, &ttl, at(0)).await;
    assert_eq!(
        store.run_next_due_at(true).await.unwrap(),
        Some(at(30 * MINUTE))
    );
}

async fn run_next_deadline_is_the_earliest_of_its_own_kind_only(store: Arc<dyn Store>) {
    let tenancy = bootstrap(&*store).await;
    let worker = serve(&*store, &tenancy.dev, "v1", &["my-task"], at(0)).await;
    let next = |kind| {
        let store = Arc::clone(&store);
        async move { store.run_next_deadline(kind).await.unwrap() }
    };
    let kinds = [
        Deadline::DelayEnd,
        Deadline::Ttl,
        Deadline::NextAttempt,
        Deadline::LeaseEnd,
        Deadline::MaxDuration,
    ];
    for kind in kinds {
        assert_eq!(next(kind).await, None, "{kind:?} in an empty database");
    }
    let executing = run_with_options(json!({"maxDuration": 5}), &tenancy.dev, at(0));
    create(&*store, &executing, at(0)).await;
    let leased = lease(&*store, &worker, at(0)).await;
    store
        .attempt_start(
            &worker.id,
            std::slice::from_ref(&leased.attempt.id),
            at(2 + LEASE_SECS),
            GRACE_MS,
            FEE,
            at(2),
        )
        .await
        .unwrap();
    let retrying = run_with_options(json!({}), &tenancy.dev, at(1));
    create(&*store, &retrying, at(1)).await;
    let failing = lease_and_start(&*store, &worker, at(3)).await;
    store
        .attempt_settle(&[failed(
            &failing,
            Claim::Worker(worker.id.clone()),
            at(HOUR),
            at(4),
        )])
        .await
        .unwrap();
    create(
        &*store,
        &run_with_options(json!({"delay": "10m"}), &tenancy.dev, at(0)),
        at(0),
    )
    .await;
    create(
        &*store,
        &run_with_options(json!({"ttl": "30m"}), &tenancy.dev, at(0)),
        at(0),
    )
    .await;

    assert_eq!(next(Deadline::DelayEnd).await, Some(at(10 * MINUTE)));
    assert_eq!(next(Deadline::Ttl).await, Some(at(30 * MINUTE)));
    assert_eq!(next(Deadline::NextAttempt).await, Some(at(HOUR)));
    assert_eq!(next(Deadline::LeaseEnd).await, Some(at(2 + LEASE_SECS)));
    assert_eq!(
        next(Deadline::MaxDuration).await,
        Some(at(2 + 5) + Duration::milliseconds(GRACE_MS))
    );
}

async fn run_promote_due_leaves_retrying_runs_to_run_requeue_due(store: Arc<dyn Store>) {
    let tenancy = bootstrap(&*store).await;
    let worker = serve(&*store, &tenancy.dev, "v1", &["my-task"], at(0)).await;
    let run = queued_run(&tenancy.dev, at(0));
    create(&*store, &run, at(0)).await;
    let started = lease_and_start(&*store, &worker, at(10)).await;
    store
        .attempt_settle(&[failed(
            &started,
            Claim::Worker(worker.id.clone()),
            at(MINUTE),
            at(20),
        )])
        .await
        .unwrap();
    assert_eq!(
        store.run_promote_due(at(HOUR), NO_LIMIT).await.unwrap(),
        vec![]
    );
    assert_eq!(
        stored(&*store, &run).await.status,
        RunStatus::RetryingAfterFailure
    );
    assert_eq!(
        store.run_requeue_due(at(HOUR), NO_LIMIT).await.unwrap(),
        vec![run.id.clone()]
    );
}

/// A worker's completions, the rescuer and cancels racing on the same runs (three server
/// nodes at once): for every run exactly one of them wins, and the stored run shows it.
/// The worker and the rescuer settle batches in opposite orders, which must not deadlock.
async fn attempt_settle_and_run_cancel_racing_settle_each_run_once(store: Arc<dyn Store>) {
    const RUNS: usize = 48;
    const COMPLETION_BATCH: usize = RUNS / 2;
    // Which racer gets ahead differs from round to round.
    const ROUNDS: usize = 3;
    let tenancy = bootstrap(&*store).await;
    let worker = serve(&*store, &tenancy.dev, "v1", &["my-task"], at(0)).await;
    for round in 0..ROUNDS {
        let runs: Vec<Run> = (0..RUNS)
            .map(|i| queued_run(&tenancy.dev, at((round * RUNS + i) as i64)))
            .collect();
        for run in &runs {
            create(&*store, run, at(0)).await;
        }
        let mut held_runs = Vec::new();
        for _ in 0..RUNS {
            held_runs.push(lease_and_start(&*store, &worker, at(MINUTE)).await);
        }
        // Every lease has run out, so the rescuer's claim holds as much as the worker's.
        let now = at(HOUR);
        let completions: Vec<AttemptSettlement> = held_runs
            .iter()
            .map(|leased| succeeded(leased, Claim::Worker(worker.id.clone()), now))
            .collect();
        let rescues: Vec<AttemptSettlement> = held_runs
            .iter()
            .map(|leased| AttemptSettlement {
                run_status: RunStatus::Crashed,
                attempt_status: AttemptStatus::Failed,
                output: None,
                ..succeeded(leased, Claim::LeaseExpired(now), now)
            })
            .collect();

        let start = Arc::new(Barrier::new(3));
        // The worker reports, last run first, in batches.
        let completer = tokio::spawn({
            let (store, start) = (Arc::clone(&store), Arc::clone(&start));
            async move {
                start.wait().await;
                let mut won = vec![false; completions.len()];
                let indexes: Vec<usize> = (0..completions.len()).rev().collect();
                for chunk in indexes.chunks(COMPLETION_BATCH) {
                    let batch: Vec<AttemptSettlement> =
                        chunk.iter().map(|i| completions[*i].clone()).collect();
                    let applied = store.attempt_settle(&batch).await.expect("complete");
                    for (i, ok) in chunk.iter().zip(applied) {
                        won[*i] = ok;
                    }
                }
                won
            }
        });
        // The rescuer settles everything in one batch, first run first.
        let rescuer = tokio::spawn({
            let (store, start) = (Arc::clone(&store), Arc::clone(&start));
            async move {
                start.wait().await;
                store.attempt_settle(&rescues).await.expect("rescue")
            }
        });
        // Cancels arrive one by one, from the middle out.
        let canceler = tokio::spawn({
            let (store, start) = (Arc::clone(&store), Arc::clone(&start));
            let environment = tenancy.dev.id.clone();
            let targets: Vec<(RunId, String)> = held_runs
                .iter()
                .map(|l| (l.run.id.clone(), l.attempt.id.clone()))
                .collect();
            async move {
                start.wait().await;
                let mut won = vec![false; targets.len()];
                let half = targets.len() / 2;
                for i in (half..targets.len()).chain(0..half) {
                    let (run, attempt) = &targets[i];
                    let outcome = store
                        .run_cancel(&environment, run, 0.0, now)
                        .await
                        .expect("cancel");
                    won[i] = match outcome {
                        CancelOutcome::Canceled { attempt: held } => {
                            assert_eq!(held.as_ref(), Some(attempt));
                            true
                        }
                        CancelOutcome::AlreadyFinal(_) => false,
                        CancelOutcome::NotFound => panic!("the run exists"),
                    };
                }
                won
            }
        });
        let completed = completer.await.unwrap();
        let rescued = rescuer.await.unwrap();
        let canceled = canceler.await.unwrap();

        for (i, leased) in held_runs.iter().enumerate() {
            let winners = [completed[i], rescued[i], canceled[i]];
            assert_eq!(
                winners.iter().filter(|w| **w).count(),
                1,
                "round {round}, run {i}: completed, rescued, canceled = {winners:?}"
            );
            let want = match winners {
                [true, _, _] => (RunStatus::CompletedSuccessfully, AttemptStatus::Completed),
                [_, true, _] => (RunStatus::Crashed, AttemptStatus::Failed),
                _ => (RunStatus::Canceled, AttemptStatus::Canceled),
            };
            let after = held(&*store, &leased.run).await;
            assert_eq!(
                (after.run.status, after.attempt.status),
                want,
                "round {round}, run {i}"
            );
        }
    }
}

/// A worker heartbeating and starting its attempts while the rescuer settles the same
/// runs in one batch (their leases ran out): nothing deadlocks, and each run is either
/// rescued or kept by the worker, never both.
async fn attempt_heartbeat_and_start_racing_the_rescuer_settle_each_run_once(
    store: Arc<dyn Store>,
) {
    const RUNS: usize = 48;
    const ROUNDS: usize = 3;
    let tenancy = bootstrap(&*store).await;
    let worker = serve(&*store, &tenancy.dev, "v1", &["my-task"], at(0)).await;
    for round in 0..ROUNDS {
        let runs: Vec<Run> = (0..RUNS)
            .map(|i| queued_run(&tenancy.dev, at((round * RUNS + i) as i64)))
            .collect();
        // Stored newest first, so the table's order is not the ids' order.
        for run in runs.iter().rev() {
            create(&*store, run, at(0)).await;
        }
        // Every other run is started; all the leases have run out by `now`.
        let mut held_runs = Vec::new();
        for i in 0..RUNS {
            held_runs.push(if i % 2 == 0 {
                lease_and_start(&*store, &worker, at(MINUTE)).await
            } else {
                lease(&*store, &worker, at(MINUTE)).await
            });
        }
        let now = at(HOUR);
        let rescues: Vec<AttemptSettlement> = held_runs
            .iter()
            .map(|leased| match leased.run.status {
                RunStatus::Executing => AttemptSettlement {
                    run_status: RunStatus::Crashed,
                    attempt_status: AttemptStatus::Failed,
                    output: None,
                    ..succeeded(leased, Claim::LeaseExpired(now), now)
                },
                _ => AttemptSettlement {
                    run_status: RunStatus::Queued,
                    attempt_status: AttemptStatus::Canceled,
                    spends_attempt: false,
                    output: None,
                    ..succeeded(leased, Claim::LeaseExpired(now), now)
                },
            })
            .collect();
        let all: Vec<String> = held_runs
            .iter()
            .rev()
            .map(|l| l.attempt.id.clone())
            .collect();
        let unstarted: Vec<String> = held_runs
            .iter()
            .rev()
            .filter(|l| l.run.status == RunStatus::Dequeued)
            .map(|l| l.attempt.id.clone())
            .collect();

        let start = Arc::new(Barrier::new(3));
        let lease_until = now + Duration::seconds(LEASE_SECS);
        let heartbeat = tokio::spawn({
            let (store, start, worker) =
                (Arc::clone(&store), Arc::clone(&start), worker.id.clone());
            async move {
                start.wait().await;
                store
                    .attempt_heartbeat(&worker, &all, lease_until, now)
                    .await
                    .expect("heartbeat")
            }
        });
        let starter = tokio::spawn({
            let (store, start, worker) =
                (Arc::clone(&store), Arc::clone(&start), worker.id.clone());
            async move {
                start.wait().await;
                store
                    .attempt_start(&worker, &unstarted, lease_until, GRACE_MS, FEE, now)
                    .await
                    .expect("start")
            }
        });
        let rescuer = tokio::spawn({
            let (store, start) = (Arc::clone(&store), Arc::clone(&start));
            async move {
                start.wait().await;
                store.attempt_settle(&rescues).await.expect("rescue")
            }
        });
        let extended = heartbeat.await.unwrap();
        let started = starter.await.unwrap();
        let rescued = rescuer.await.unwrap();

        for (i, leased) in held_runs.iter().enumerate() {
            let kept =
                extended.contains(&leased.attempt.id) || started.contains(&leased.attempt.id);
            assert_ne!(
                kept, rescued[i],
                "round {round}, run {i}: kept {kept}, rescued {}",
                rescued[i]
            );
            let status = stored_status(&*store, &leased.run).await;
            let want = match (rescued[i], leased.run.status) {
                (false, _) => vec![RunStatus::Dequeued, RunStatus::Executing],
                (true, RunStatus::Executing) => vec![RunStatus::Crashed],
                (true, _) => vec![RunStatus::Queued],
            };
            assert!(want.contains(&status), "round {round}, run {i}: {status}");
        }
        // Requeued runs of this round must not be leased in the next one.
        for run in &runs {
            store
                .run_cancel(&tenancy.dev.id, &run.id, 0.0, now)
                .await
                .unwrap();
        }
    }
}

// [list]

use runnel_core::list::{Cursor, Direction, RunFilter, RunListQuery, RunPage};

/// `run_list` and the ids it returned, in order.
async fn listed_runs(store: &dyn Store, query: &RunListQuery) -> Vec<RunId> {
    store
        .run_list(query)
        .await
        .expect("run_list")
        .into_iter()
        .map(|run| run.id)
        .collect()
}

fn ids(runs: &[&Run]) -> Vec<RunId> {
    runs.iter().map(|run| run.id.clone()).collect()
}

/// A run of `task` in `environment` created at `now` with trigger `options`, stored.
async fn create_listed(
    store: &dyn Store,
    task: &str,
    options: Value,
    environment: &Environment,
    now: DateTime<Utc>,
) -> Run {
    let run = run_from(task, json!({"options": options}), environment, now);
    create(store, &run, now).await;
    run
}

async fn run_list_filters_each_select_their_runs(store: Arc<dyn Store>) {
    let tenancy = bootstrap(&*store).await;
    let env = &tenancy.dev;
    let plain = create_listed(&*store, "a", json!({}), env, at(0)).await;
    let tagged = create_listed(&*store, "a", json!({"tags": ["x", "y"]}), env, at(1)).await;
    let other_task = create_listed(&*store, "b", json!({"tags": ["z"]}), env, at(2)).await;
    let custom_queue =
        create_listed(&*store, "a", json!({"queue": {"name": "q1"}}), env, at(3)).await;
    let large = create_listed(&*store, "a", json!({"machine": "large-1x"}), env, at(4)).await;
    let test = create_listed(&*store, "a", json!({"test": true}), env, at(5)).await;
    let locked = create_listed(
        &*store,
        "a",
        json!({"lockToVersion": "20260101.2"}),
        env,
        at(6),
    )
    .await;
    let mut done = run_from("a", json!({}), env, at(7));
    done.status = RunStatus::CompletedSuccessfully;
    done.worker_version = Some("20260101.1".to_owned());
    done.schedule_id = Some("sched_1".to_owned());
    create(&*store, &done, at(7)).await;
    let mut failed = run_from("a", json!({}), env, at(8));
    failed.status = RunStatus::CompletedWithErrors;
    failed.batch_id = Some("batch_1".to_owned());
    create(&*store, &failed, at(8)).await;

    let query = |filter: RunFilter| RunListQuery {
        filter,
        ..RunListQuery::newest(env.id.clone(), NO_LIMIT)
    };
    let cases: Vec<(&str, RunFilter, Vec<RunId>)> = vec![
        (
            "none",
            RunFilter::default(),
            ids(&[
                &failed,
                &done,
                &locked,
                &test,
                &large,
                &custom_queue,
                &other_task,
                &tagged,
                &plain,
            ]),
        ),
        (
            "status",
            RunFilter {
                statuses: vec![
                    RunStatus::CompletedSuccessfully,
                    RunStatus::CompletedWithErrors,
                ],
                ..RunFilter::default()
            },
            ids(&[&failed, &done]),
        ),
        (
            "task",
            RunFilter {
                task_identifiers: vec!["b".into()],
                ..RunFilter::default()
            },
            ids(&[&other_task]),
        ),
        (
            "tags: any of them",
            RunFilter {
                tags: vec!["y".into(), "z".into(), "nope".into()],
                ..RunFilter::default()
            },
            ids(&[&other_task, &tagged]),
        ),
        (
            "queue",
            RunFilter {
                queues: vec!["q1".into(), "task/b".into()],
                ..RunFilter::default()
            },
            ids(&[&custom_queue, &other_task]),
        ),
        (
            "machine",
            RunFilter {
                machines: vec![MachinePreset::Large1x],
                ..RunFilter::default()
            },
            ids(&[&large]),
        ),
        (
            "version: the worker's, else the locked one",
            RunFilter {
                versions: vec!["20260101.1".into(), "20260101.2".into()],
                ..RunFilter::default()
            },
            ids(&[&done, &locked]),
        ),
        (
            "isTest",
            RunFilter {
                is_test: Some(true),
                ..RunFilter::default()
            },
            ids(&[&test]),
        ),
        (
            "schedule",
            RunFilter {
                schedule_id: Some("sched_1".into()),
                ..RunFilter::default()
            },
            ids(&[&done]),
        ),
        (
            "batch",
            RunFilter {
                batch_id: Some("batch_1".into()),
                ..RunFilter::default()
            },
            ids(&[&failed]),
        ),
        (
            "filters combine",
            RunFilter {
                task_identifiers: vec!["a".into()],
                tags: vec!["x".into(), "z".into()],
                ..RunFilter::default()
            },
            ids(&[&tagged]),
        ),
    ];
    for (what, filter, want) in cases {
        assert_eq!(listed_runs(&*store, &query(filter)).await, want, "{what}");
    }
    let not_test = listed_runs(
        &*store,
        &query(RunFilter {
            is_test: Some(false),
            ..RunFilter::default()
        }),
    )
    .await;
    assert_eq!(not_test.len(), 8);
    assert!(!not_test.contains(&test.id));

    // The createdAt window is inclusive at both ends.
    let window = RunListQuery {
        created_from: Some(at(2)),
        created_to: Some(at(4)),
        ..RunListQuery::newest(env.id.clone(), NO_LIMIT)
    };
    assert_eq!(
        listed_runs(&*store, &window).await,
        ids(&[&large, &custom_queue, &other_task])
    );
    // A listed run reads back whole.
    let all = store.run_list(&query(RunFilter::default())).await.unwrap();
    assert_eq!(all.last(), Some(&plain));
}

async fn run_list_orders_newest_first_and_respects_the_limit(store: Arc<dyn Store>) {
    let tenancy = bootstrap(&*store).await;
    let env = &tenancy.dev;
    let older = create_listed(&*store, "a", json!({}), env, at(0)).await;
    // Two runs created in the same millisecond: ordered by id, greatest first.
    let mut twins = [
        create_listed(&*store, "a", json!({}), env, at(5)).await,
        create_listed(&*store, "a", json!({}), env, at(5)).await,
    ];
    twins.sort_by(|x, y| y.id.cmp(&x.id));
    let newest = create_listed(&*store, "a", json!({}), env, at(9)).await;

    assert_eq!(
        listed_runs(&*store, &RunListQuery::newest(env.id.clone(), NO_LIMIT)).await,
        ids(&[&newest, &twins[0], &twins[1], &older])
    );
    assert_eq!(
        listed_runs(&*store, &RunListQuery::newest(env.id.clone(), 2)).await,
        ids(&[&newest, &twins[0]])
    );
    // A cursor on the first twin continues with the second.
    let after_twin = RunListQuery {
        page: Some((Direction::Older, Cursor::of(&twins[0]))),
        ..RunListQuery::newest(env.id.clone(), NO_LIMIT)
    };
    assert_eq!(
        listed_runs(&*store, &after_twin).await,
        ids(&[&twins[1], &older])
    );
}

/// Pages through every run with `page_size`, forward from the newest, triggering a new
/// (newer) run between two fetches; returns the ids in the order seen, and the cursor
/// of the first page's first run.
async fn run_list_walk_forward(
    store: &dyn Store,
    env: &Environment,
    page_size: u32,
    mut new_run_at: i64,
) -> (Vec<RunId>, Vec<Run>) {
    let mut seen = Vec::new();
    let mut added = Vec::new();
    let mut cursor = None;
    let mut pages = 0;
    loop {
        let query = RunListQuery {
            page: cursor.clone().map(|c| (Direction::Older, c)),
            ..RunListQuery::newest(env.id.clone(), page_size + 1)
        };
        let rows = store.run_list(&query).await.expect("run_list");
        let page = RunPage::from_slice(rows, page_size, query.page.as_ref().map(|(d, _)| *d));
        assert!(page.runs.len() <= page_size as usize);
        seen.extend(page.runs.iter().map(|r| r.id.clone()));
        pages += 1;
        assert!(pages < 100, "the walk does not end");
        added.push(create_listed(store, "a", json!({}), env, at(new_run_at)).await);
        new_run_at += 1;
        match page.next {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    (seen, added)
}

async fn run_list_cursor_walk_neither_skips_nor_repeats_while_runs_are_added(
    store: Arc<dyn Store>,
) {
    let tenancy = bootstrap(&*store).await;
    let env = &tenancy.dev;
    let mut runs = Vec::new();
    for i in 0..7 {
        runs.push(create_listed(&*store, "a", json!({}), env, at(i)).await);
    }
    // Ties on created_at are broken by id.
    for _ in 0..3 {
        runs.push(create_listed(&*store, "a", json!({}), env, at(3)).await);
    }
    runs.sort_by(|x, y| (y.created_at, &y.id).cmp(&(x.created_at, &x.id)));
    let all = RunListQuery::newest(env.id.clone(), NO_LIMIT);
    assert_eq!(
        listed_runs(&*store, &all).await,
        ids(&runs.iter().collect::<Vec<_>>())
    );

    for (walk, page_size) in [1u32, 3, 4, 10, 11, 40].into_iter().enumerate() {
        // Every run that exists when the walk starts (runs earlier walks added included).
        let want = listed_runs(&*store, &all).await;
        let (seen, added) =
            run_list_walk_forward(&*store, env, page_size, 1000 * (walk as i64 + 1)).await;
        assert_eq!(
            seen, want,
            "page size {page_size}: every run once, newest first"
        );
        // The runs added during the walk are there for a fresh first page.
        let mut newest_first: Vec<RunId> = added.iter().rev().map(|r| r.id.clone()).collect();
        newest_first.truncate(2);
        assert_eq!(
            listed_runs(&*store, &RunListQuery::newest(env.id.clone(), 2)).await,
            newest_first
        );
    }
}

async fn run_list_pages_backward_from_a_cursor(store: Arc<dyn Store>) {
    let tenancy = bootstrap(&*store).await;
    let env = &tenancy.dev;
    let mut runs = Vec::new();
    for i in 0..6 {
        runs.push(create_listed(&*store, "a", json!({}), env, at(i)).await);
    }
    let newer_than = |run: &Run, limit: u32| RunListQuery {
        page: Some((Direction::Newer, Cursor::of(run))),
        ..RunListQuery::newest(env.id.clone(), limit)
    };
    // Nearest the cursor first: the store returns oldest first when paging backward.
    assert_eq!(
        listed_runs(&*store, &newer_than(&runs[2], 2)).await,
        ids(&[&runs[3], &runs[4]])
    );
    let rows = store.run_list(&newer_than(&runs[2], 3)).await.unwrap();
    let page = RunPage::from_slice(rows, 2, Some(Direction::Newer));
    assert_eq!(
        ids(&page.runs.iter().collect::<Vec<_>>()),
        ids(&[&runs[4], &runs[3]])
    );
    assert_eq!(page.previous, Some(Cursor::of(&runs[4])));
    assert_eq!(page.next, Some(Cursor::of(&runs[3])));

    // A run triggered after the cursor was handed out shows up walking backward.
    let new = create_listed(&*store, "a", json!({}), env, at(60)).await;
    assert_eq!(
        listed_runs(&*store, &newer_than(&runs[4], NO_LIMIT)).await,
        ids(&[&runs[5], &new])
    );
    // …and not walking forward from a cursor handed out before it.
    let older_than = RunListQuery {
        page: Some((Direction::Older, Cursor::of(&runs[5]))),
        ..RunListQuery::newest(env.id.clone(), NO_LIMIT)
    };
    assert_eq!(
        listed_runs(&*store, &older_than).await,
        ids(&[&runs[4], &runs[3], &runs[2], &runs[1], &runs[0]])
    );
    // Filters and windows apply backward too.
    let filtered = RunListQuery {
        filter: RunFilter {
            statuses: vec![RunStatus::Canceled],
            ..RunFilter::default()
        },
        ..newer_than(&runs[0], NO_LIMIT)
    };
    assert_eq!(listed_runs(&*store, &filtered).await, Vec::<RunId>::new());
}

async fn run_list_is_scoped_to_the_environment(store: Arc<dyn Store>) {
    let tenancy = bootstrap(&*store).await;
    let dev = create_listed(&*store, "a", json!({"tags": ["t"]}), &tenancy.dev, at(0)).await;
    let prod = create_listed(&*store, "a", json!({"tags": ["t"]}), &tenancy.prod, at(1)).await;
    let in_env = |env: &Environment| RunListQuery {
        filter: RunFilter {
            tags: vec!["t".into()],
            ..RunFilter::default()
        },
        ..RunListQuery::newest(env.id.clone(), NO_LIMIT)
    };
    assert_eq!(
        listed_runs(&*store, &in_env(&tenancy.dev)).await,
        ids(&[&dev])
    );
    assert_eq!(
        listed_runs(&*store, &in_env(&tenancy.prod)).await,
        ids(&[&prod])
    );
    assert_eq!(
        listed_runs(&*store, &in_env(&tenancy.staging)).await,
        Vec::<RunId>::new()
    );
    // A cursor from another environment's run positions, never leaks, the list.
    let crossing = RunListQuery {
        page: Some((Direction::Newer, Cursor::of(&dev))),
        ..in_env(&tenancy.dev)
    };
    assert_eq!(listed_runs(&*store, &crossing).await, Vec::<RunId>::new());
}

// [actions]

/// A queued run of `environment` one level below `parent`.
fn child_of(parent: &Run, environment: &Environment, now: DateTime<Utc>) -> Run {
    Run {
        parent_run_id: Some(parent.id.clone()),
        root_run_id: Some(
            parent
                .root_run_id
                .clone()
                .unwrap_or_else(|| parent.id.clone()),
        ),
        depth: parent.depth + 1,
        ..queued_run(environment, now)
    }
}

async fn run_descendants_live_walks_the_live_subtree_of_the_environment(store: Arc<dyn Store>) {
    let tenancy = bootstrap(&*store).await;
    let dev = &tenancy.dev;
    let parent = queued_run(dev, at(0));
    let live_child = child_of(&parent, dev, at(1));
    let final_child = child_of(&parent, dev, at(2));
    let grandchild = child_of(&live_child, dev, at(3));
    let under_final = child_of(&final_child, dev, at(4));
    let unrelated = queued_run(dev, at(5));
    for run in [
        &parent,
        &live_child,
        &final_child,
        &grandchild,
        &under_final,
        &unrelated,
    ] {
        create(&*store, run, at(0)).await;
    }
    let canceled = store
        .run_cancel(&dev.id, &final_child.id, 0.0, at(10))
        .await
        .unwrap();
    assert_eq!(canceled, CancelOutcome::Canceled { attempt: None });

    let live = store
        .run_descendants_live(&dev.id, &parent.id)
        .await
        .unwrap();
    // Shallowest first; the canceled child is left out, its live child is not.
    assert_eq!(
        live,
        vec![
            live_child.id.clone(),
            grandchild.id.clone(),
            under_final.id.clone()
        ]
    );
    assert_eq!(
        store
            .run_descendants_live(&dev.id, &grandchild.id)
            .await
            .unwrap(),
        Vec::<RunId>::new()
    );
    assert_eq!(
        store
            .run_descendants_live(&tenancy.prod.id, &parent.id)
            .await
            .unwrap(),
        Vec::<RunId>::new(),
        "another environment sees no descendants"
    );
}

async fn run_reschedule_moves_only_delayed_runs(store: Arc<dyn Store>) {
    let tenancy = bootstrap(&*store).await;
    let delayed = run_with_options(json!({"delay": "1h", "ttl": "10m"}), &tenancy.dev, at(0));
    let queued = queued_run(&tenancy.dev, at(0));
    create(&*store, &delayed, at(0)).await;
    create(&*store, &queued, at(0)).await;
    let until = at(2 * HOUR);
    let expire_at = Some(until + Duration::minutes(10));
    let queue_ts = until.timestamp_millis();

    for environment in [&tenancy.staging, &tenancy.prod] {
        assert!(!store
            .run_reschedule(
                &environment.id,
                &delayed.id,
                until,
                expire_at,
                queue_ts,
                at(5)
            )
            .await
            .unwrap());
    }
    let queued_before = stored(&*store, &queued).await;
    assert!(!store
        .run_reschedule(
            &tenancy.dev.id,
            &queued.id,
            until,
            expire_at,
            queue_ts,
            at(5)
        )
        .await
        .unwrap());
    assert_eq!(stored(&*store, &queued).await, queued_before);

    assert!(store
        .run_reschedule(
            &tenancy.dev.id,
            &delayed.id,
            until,
            expire_at,
            queue_ts,
            at(5)
        )
        .await
        .unwrap());
    assert_eq!(
        stored(&*store, &delayed).await,
        Run {
            delay_until: Some(until),
            expire_at,
            queue_ts,
            updated_at: at(5),
            ..delayed.clone()
        }
    );
    // The promoter follows the new delay: nothing is due at the old one.
    assert!(store
        .run_promote_due(at(HOUR + 1), NO_LIMIT)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        store.run_promote_due(until, NO_LIMIT).await.unwrap(),
        vec![delayed.id.clone()]
    );
}

async fn run_tags_replace_is_a_compare_and_swap(store: Arc<dyn Store>) {
    let tenancy = bootstrap(&*store).await;
    let run = run_with_options(json!({"tags": ["a"]}), &tenancy.dev, at(0));
    create(&*store, &run, at(0)).await;
    let strings = |items: &[&str]| items.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    let (a, ab, ac, az) = (
        strings(&["a"]),
        strings(&["a", "b"]),
        strings(&["a", "c"]),
        strings(&["a", "z"]),
    );

    assert!(!store
        .run_tags_replace(&tenancy.prod.id, &run.id, &a, &az, at(1))
        .await
        .unwrap());
    assert!(store
        .run_tags_replace(&tenancy.dev.id, &run.id, &a, &ab, at(2))
        .await
        .unwrap());
    // A writer that read before the first swap loses.
    assert!(!store
        .run_tags_replace(&tenancy.dev.id, &run.id, &a, &ac, at(3))
        .await
        .unwrap());
    assert_eq!(
        stored(&*store, &run).await,
        Run {
            tags: ab,
            updated_at: at(2),
            ..run.clone()
        }
    );
}

async fn run_metadata_replace_is_a_compare_and_swap(store: Arc<dyn Store>) {
    let tenancy = bootstrap(&*store).await;
    let run = queued_run(&tenancy.dev, at(0));
    create(&*store, &run, at(0)).await;
    let first = Packet::json(&json!({"step": 1}));
    let second = Packet::json(&json!({"step": 2}));
    let stale = Packet::json(&json!({"step": 0}));

    assert!(!store
        .run_metadata_replace(&tenancy.staging.id, &run.id, None, &first, at(1))
        .await
        .unwrap());
    assert!(store
        .run_metadata_replace(&tenancy.dev.id, &run.id, None, &first, at(1))
        .await
        .unwrap());
    assert!(!store
        .run_metadata_replace(&tenancy.dev.id, &run.id, None, &second, at(2))
        .await
        .unwrap());
    assert!(!store
        .run_metadata_replace(&tenancy.dev.id, &run.id, Some(&stale), &second, at(2))
        .await
        .unwrap());
    assert!(store
        .run_metadata_replace(&tenancy.dev.id, &run.id, Some(&first), &second, at(3))
        .await
        .unwrap());
    assert_eq!(
        stored(&*store, &run).await,
        Run {
            metadata: Some(second),
            updated_at: at(3),
            ..run.clone()
        }
    );
}

async fn idempotency_key_reset_releases_the_key_of_that_task_and_environment(
    store: Arc<dyn Store>,
) {
    let tenancy = bootstrap(&*store).await;
    let holder = keyed_run("my-task", "k1", &tenancy.dev, at(0));
    let other_task = keyed_run("other-task", "k1", &tenancy.dev, at(0));
    create(&*store, &holder, at(0)).await;
    create(&*store, &other_task, at(0)).await;

    for (environment, task, key) in [
        (&tenancy.prod, "my-task", "k1"),
        (&tenancy.dev, "my-task", "k2"),
        (&tenancy.dev, "third-task", "k1"),
    ] {
        let released = store
            .idempotency_key_reset(&environment.id, task, key, at(1))
            .await
            .unwrap();
        assert_eq!(released, 0, "{} {task} {key}", environment.kind);
    }
    assert_eq!(
        store
            .idempotency_key_reset(&tenancy.dev.id, "my-task", "k1", at(2))
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        stored(&*store, &holder).await,
        Run {
            idempotency_key: None,
            idempotency_key_expires_at: None,
            updated_at: at(2),
            ..holder.clone()
        }
    );
    assert_eq!(stored(&*store, &other_task).await, other_task);
    // The next trigger with the key creates a run instead of returning the old one.
    let again = keyed_run("my-task", "k1", &tenancy.dev, at(3));
    create(&*store, &again, at(3)).await;
}

// [batches]

fn batch_record(
    environment: &Environment,
    run_count: u32,
    key: Option<&str>,
    now: DateTime<Utc>,
) -> BatchRecord {
    let request: CreateBatchRequest = serde_json::from_value(json!({
        "runCount": run_count,
        "idempotencyKey": key,
    }))
    .expect("a well-formed batch body");
    request
        .into_record(
            BatchId::generate(now.timestamp_millis()),
            environment.id.clone(),
            None,
            now,
        )
        .expect("a valid batch")
}

async fn create_batch(store: &dyn Store, batch: &BatchRecord, now: DateTime<Utc>) {
    assert_eq!(
        store.batch_create(batch, now).await.expect("batch create"),
        BatchCreateOutcome::Created(batch.clone())
    );
}

/// An item of `batch` at `index` whose run is a trigger of `task` with `body`.
fn batch_item(
    batch: &BatchRecord,
    index: u32,
    task: &str,
    body: Value,
    environment: &Environment,
    now: DateTime<Utc>,
) -> BatchItemTrigger {
    let mut run = run_from(task, body, environment, now);
    run.batch_id = Some(batch.id.to_string());
    BatchItemTrigger {
        index,
        task_identifier: task.to_owned(),
        run: Ok(run),
    }
}

fn item_run(item: &BatchItemTrigger) -> &Run {
    item.run.as_ref().expect("an item with a run")
}

async fn run_trigger_many_inserts_a_thousand_runs_in_one_call(store: Arc<dyn Store>) {
    let tenancy = bootstrap(&*store).await;
    let runs: Vec<Run> = (0..1000)
        .map(|n| {
            let mut run = run_from(
                "bulk-task",
                json!({"payload": {"n": n}, "options": {"tags": ["bulk"], "priority": n % 7}}),
                &tenancy.dev,
                at(0),
            );
            run.batch_id = Some("batch_bulk".to_owned());
            run
        })
        .collect();
    let started = std::time::Instant::now();
    let outcomes = store
        .run_trigger_many(&runs, at(0))
        .await
        .expect("trigger many");
    eprintln!("run_trigger_many: 1000 runs in {:?}", started.elapsed());
    let want: Vec<TriggerOutcome> = runs
        .iter()
        .map(|r| TriggerOutcome::Created(r.id.clone()))
        .collect();
    assert_eq!(outcomes, want);
    for run in &runs {
        assert_eq!(&stored(&*store, run).await, run, "every field round-trips");
    }
    assert_eq!(store.run_trigger_many(&[], at(0)).await.unwrap(), vec![]);
}

async fn run_trigger_many_honours_idempotency_keys_in_order(store: Arc<dyn Store>) {
    let tenancy = bootstrap(&*store).await;
    let live = keyed_run("my-task", "live", &tenancy.dev, at(0));
    create(&*store, &live, at(0)).await;
    let failed = keyed_run("my-task", "failed", &tenancy.dev, at(0));
    create(&*store, &failed, at(0)).await;
    walk(
        &*store,
        &failed.id,
        RunStatus::CompletedWithErrors,
        at(MINUTE),
    )
    .await;

    let now = at(2 * MINUTE);
    let runs = vec![
        keyed_run("my-task", "live", &tenancy.dev, now), // the live holder answers
        keyed_run("my-task", "failed", &tenancy.dev, now), // takes the failed run's key
        keyed_run("my-task", "new", &tenancy.dev, now),  // first of its key
        keyed_run("my-task", "new", &tenancy.dev, now),  // returns the one before
        keyed_run("other-task", "live", &tenancy.dev, now), // keys are per task
        queued_run(&tenancy.dev, now),
    ];
    let outcomes = store
        .run_trigger_many(&runs, now)
        .await
        .expect("trigger many");
    assert_eq!(
        outcomes,
        vec![
            TriggerOutcome::Cached(live.id.clone()),
            TriggerOutcome::Created(runs[1].id.clone()),
            TriggerOutcome::Created(runs[2].id.clone()),
            TriggerOutcome::Cached(runs[2].id.clone()),
            TriggerOutcome::Created(runs[4].id.clone()),
            TriggerOutcome::Created(runs[5].id.clone()),
        ]
    );
    assert_eq!(
        stored(&*store, &failed).await.idempotency_key,
        None,
        "the failed holder gave its key up"
    );
    for (i, run) in runs.iter().enumerate() {
        let found = store.run_get(&tenancy.dev.id, &run.id).await.unwrap();
        assert_eq!(found.is_some(), ![0, 3].contains(&i), "run {i} stored");
    }
    // The key of the new run now answers a single trigger too.
    let again = keyed_run("my-task", "new", &tenancy.dev, at(3 * MINUTE));
    assert_eq!(
        store.run_trigger(&again, at(3 * MINUTE)).await.unwrap(),
        TriggerOutcome::Cached(runs[2].id.clone())
    );
}

async fn batch_create_returns_the_live_holder_of_its_key(store: Arc<dyn Store>) {
    let tenancy = bootstrap(&*store).await;
    let first = batch_record(&tenancy.dev, 3, Some("k"), at(0));
    create_batch(&*store, &first, at(0)).await;
    assert_eq!(
        store.batch_get(&tenancy.dev.id, &first.id).await.unwrap(),
        Some(first.clone())
    );
    assert_eq!(
        store.batch_get(&tenancy.prod.id, &first.id).await.unwrap(),
        None,
        "scoped to the environment"
    );

    let again = batch_record(&tenancy.dev, 5, Some("k"), at(MINUTE));
    assert_eq!(
        store.batch_create(&again, at(MINUTE)).await.unwrap(),
        BatchCreateOutcome::Cached(first.clone())
    );
    assert_eq!(
        store.batch_get(&tenancy.dev.id, &again.id).await.unwrap(),
        None
    );

    let other_env = batch_record(&tenancy.prod, 1, Some("k"), at(MINUTE));
    create_batch(&*store, &other_env, at(MINUTE)).await;
    let unkeyed = batch_record(&tenancy.dev, 1, None, at(MINUTE));
    create_batch(&*store, &unkeyed, at(MINUTE)).await;

    // Past its 30-day expiry the key moves to the new batch.
    let later = at(31 * 24 * 3600);
    let after_expiry = batch_record(&tenancy.dev, 2, Some("k"), later);
    create_batch(&*store, &after_expiry, later).await;
    let old = store
        .batch_get(&tenancy.dev.id, &first.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(old.idempotency_key, None);
}

async fn batch_items_trigger_dedups_by_index_and_seals(store: Arc<dyn Store>) {
    let tenancy = bootstrap(&*store).await;
    let batch = batch_record(&tenancy.dev, 3, None, at(0));
    create_batch(&*store, &batch, at(0)).await;
    let now = at(MINUTE);
    let first = vec![
        batch_item(
            &batch,
            0,
            "my-task",
            json!({"payload": {"i": 0}}),
            &tenancy.dev,
            now,
        ),
        batch_item(
            &batch,
            1,
            "my-task",
            json!({"payload": {"i": 1}}),
            &tenancy.dev,
            now,
        ),
        batch_item(
            &batch,
            1,
            "my-task",
            json!({"payload": {"dup": true}}),
            &tenancy.dev,
            now,
        ),
    ];
    let BatchItemsOutcome::Applied {
        items,
        batch: after,
    } = store
        .batch_items_trigger(&tenancy.dev.id, &batch.id, &first, now)
        .await
        .unwrap()
    else {
        panic!("applied")
    };
    assert_eq!(
        items,
        vec![
            BatchItemOutcome::Triggered(TriggerOutcome::Created(item_run(&first[0]).id.clone())),
            BatchItemOutcome::Triggered(TriggerOutcome::Created(item_run(&first[1]).id.clone())),
            BatchItemOutcome::Duplicate,
        ]
    );
    assert_eq!(
        (after.items_received, after.sealed_at, after.status),
        (2, None, BatchStatus::Pending)
    );
    assert_eq!(
        store
            .run_get(&tenancy.dev.id, &item_run(&first[2]).id)
            .await
            .unwrap(),
        None
    );

    // The stream sent again, now complete; index 2's trigger was refused.
    let later = at(2 * MINUTE);
    let mut second = vec![
        batch_item(&batch, 0, "my-task", json!({}), &tenancy.dev, later),
        batch_item(&batch, 1, "my-task", json!({}), &tenancy.dev, later),
    ];
    second.push(BatchItemTrigger {
        index: 2,
        task_identifier: "my-task".to_owned(),
        run: Err("too many tags".to_owned()),
    });
    let BatchItemsOutcome::Applied {
        items,
        batch: sealed,
    } = store
        .batch_items_trigger(&tenancy.dev.id, &batch.id, &second, later)
        .await
        .unwrap()
    else {
        panic!("applied")
    };
    assert_eq!(
        items,
        vec![
            BatchItemOutcome::Duplicate,
            BatchItemOutcome::Duplicate,
            BatchItemOutcome::Failed
        ]
    );
    let mut want = batch.clone();
    want.items_received = 3;
    want.status = BatchStatus::Completed;
    want.updated_at = later;
    want.sealed_at = Some(later);
    want.processing_completed_at = Some(later);
    assert_eq!(sealed, want);
    assert_eq!(
        store.batch_get(&tenancy.dev.id, &batch.id).await.unwrap(),
        Some(want.clone())
    );
    assert_eq!(
        store.batch_item_list(&batch.id).await.unwrap(),
        vec![
            BatchItemRecord {
                index: 0,
                task_identifier: "my-task".into(),
                run_id: Some(item_run(&first[0]).id.to_string()),
                error: None
            },
            BatchItemRecord {
                index: 1,
                task_identifier: "my-task".into(),
                run_id: Some(item_run(&first[1]).id.to_string()),
                error: None
            },
            BatchItemRecord {
                index: 2,
                task_identifier: "my-task".into(),
                run_id: None,
                error: Some("too many tags".into())
            },
        ]
    );
    assert_eq!(
        stored(&*store, item_run(&first[0])).await.batch_id,
        Some(batch.id.to_string())
    );

    // Sealed: nothing more goes in; other environments do not see the batch.
    let third = vec![batch_item(
        &batch,
        2,
        "my-task",
        json!({}),
        &tenancy.dev,
        later,
    )];
    assert_eq!(
        store
            .batch_items_trigger(&tenancy.dev.id, &batch.id, &third, later)
            .await
            .unwrap(),
        BatchItemsOutcome::Sealed(want)
    );
    assert_eq!(
        store
            .run_get(&tenancy.dev.id, &item_run(&third[0]).id)
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        store
            .batch_items_trigger(&tenancy.prod.id, &batch.id, &third, later)
            .await
            .unwrap(),
        BatchItemsOutcome::NotFound
    );
}

async fn batch_items_trigger_honours_idempotency_keys(store: Arc<dyn Store>) {
    let tenancy = bootstrap(&*store).await;
    let holder = keyed_run("my-task", "item-key", &tenancy.dev, at(0));
    create(&*store, &holder, at(0)).await;
    let batch = batch_record(&tenancy.dev, 3, None, at(0));
    create_batch(&*store, &batch, at(0)).await;
    let items = vec![
        batch_item(
            &batch,
            0,
            "my-task",
            json!({"options": {"idempotencyKey": "item-key"}}),
            &tenancy.dev,
            at(1),
        ),
        batch_item(
            &batch,
            1,
            "my-task",
            json!({"options": {"idempotencyKey": "fresh"}}),
            &tenancy.dev,
            at(1),
        ),
        batch_item(
            &batch,
            2,
            "my-task",
            json!({"options": {"idempotencyKey": "fresh"}}),
            &tenancy.dev,
            at(1),
        ),
    ];
    let BatchItemsOutcome::Applied {
        items: outcomes,
        batch: after,
    } = store
        .batch_items_trigger(&tenancy.dev.id, &batch.id, &items, at(1))
        .await
        .unwrap()
    else {
        panic!("applied")
    };
    let fresh = item_run(&items[1]).id.clone();
    assert_eq!(
        outcomes,
        vec![
            BatchItemOutcome::Triggered(TriggerOutcome::Cached(holder.id.clone())),
            BatchItemOutcome::Triggered(TriggerOutcome::Created(fresh.clone())),
            BatchItemOutcome::Triggered(TriggerOutcome::Cached(fresh.clone())),
        ]
    );
    assert!(after.sealed());
    let runs: Vec<Option<String>> = store
        .batch_item_list(&batch.id)
        .await
        .unwrap()
        .into_iter()
        .map(|i| i.run_id)
        .collect();
    assert_eq!(
        runs,
        vec![
            Some(holder.id.to_string()),
            Some(fresh.to_string()),
            Some(fresh.to_string())
        ]
    );
    assert_eq!(
        store
            .run_get(&tenancy.dev.id, &item_run(&items[0]).id)
            .await
            .unwrap(),
        None
    );
}

async fn batch_items_trigger_concurrent_overlapping_calls_record_each_index_once(
    store: Arc<dyn Store>,
) {
    const CALLS: u32 = 6;
    const RUNS: u32 = 120;
    let tenancy = bootstrap(&*store).await;
    let batch = batch_record(&tenancy.dev, RUNS, None, at(0));
    create_batch(&*store, &batch, at(0)).await;
    // Call c sends indexes [c*15, c*15+45): every index is in 1 to 3 calls, and the
    // calls together cover them all.
    let calls: Vec<Vec<BatchItemTrigger>> = (0..CALLS)
        .map(|c| {
            (c * 15..(c * 15 + 45).min(RUNS))
                .chain(if c == CALLS - 1 { 90..RUNS } else { 0..0 })
                .map(|i| {
                    batch_item(
                        &batch,
                        i,
                        "my-task",
                        json!({"payload": i}),
                        &tenancy.dev,
                        at(1),
                    )
                })
                .collect()
        })
        .collect();
    let start = Arc::new(Barrier::new(CALLS as usize));
    let mut tasks = JoinSet::new();
    for items in calls.clone() {
        let store = Arc::clone(&store);
        let start = Arc::clone(&start);
        let id = batch.id.clone();
        let env = tenancy.dev.id.clone();
        tasks.spawn(async move {
            start.wait().await;
            let outcome = store
                .batch_items_trigger(&env, &id, &items, at(1))
                .await
                .expect("items");
            (items, outcome)
        });
    }
    let mut created = std::collections::HashMap::new();
    let mut sealed_calls = 0;
    for (items, outcome) in tasks.join_all().await {
        let outcomes = match outcome {
            BatchItemsOutcome::Applied { items, batch } => {
                sealed_calls += usize::from(batch.sealed());
                items
            }
            BatchItemsOutcome::Sealed(_) => continue,
            BatchItemsOutcome::NotFound => panic!("the batch exists"),
        };
        for (item, outcome) in items.iter().zip(outcomes) {
            if let BatchItemOutcome::Triggered(TriggerOutcome::Created(id)) = outcome {
                assert!(
                    created.insert(item.index, id).is_none(),
                    "index {} created twice",
                    item.index
                );
            }
        }
    }
    assert_eq!(created.len(), RUNS as usize, "every index created once");
    assert_eq!(sealed_calls, 1, "exactly one call seals the batch");
    let list = store.batch_item_list(&batch.id).await.unwrap();
    assert_eq!(list.len(), RUNS as usize);
    for item in list {
        let id = created[&item.index].clone();
        assert_eq!(item.run_id, Some(id.to_string()));
        assert!(store.run_get(&tenancy.dev.id, &id).await.unwrap().is_some());
    }
}

// [queues]

async fn declare(store: &dyn Store, environment: &Environment, name: &str, limit: Option<u32>) {
    store
        .queue_declare(
            &environment.id,
            &[QueueDeclaration {
                name: name.to_owned(),
                concurrency_limit: Some(limit),
            }],
            at(0),
        )
        .await
        .expect("queue_declare");
}

async fn queue_named(store: &dyn Store, environment: &Environment, name: &str) -> QueueRecord {
    store
        .queue_get(&environment.id, &QueueRef::Name(name.to_owned()))
        .await
        .expect("queue_get")
        .unwrap_or_else(|| panic!("queue {name} is stored"))
}

/// A run of `my-task` on `queue` (with a concurrency key when given), queued at `now`.
fn run_on(queue: &str, key: Option<&str>, environment: &Environment, now: DateTime<Utc>) -> Run {
    let mut options = json!({"queue": {"name": queue}});
    if let Some(key) = key {
        options["concurrencyKey"] = json!(key);
    }
    run_with_options(options, environment, now)
}

/// Dequeues with `dequeuers` workers at once, each until it gets nothing; every lease.
async fn dequeue_concurrently(
    store: &Arc<dyn Store>,
    environment: &Environment,
    dequeuers: usize,
    batch: u32,
) -> Vec<Leased> {
    let mut workers = Vec::new();
    for _ in 0..dequeuers {
        workers.push(serve(&**store, environment, "v1", &["my-task"], at(0)).await);
    }
    let start = Arc::new(Barrier::new(dequeuers));
    let mut tasks = JoinSet::new();
    for worker in workers {
        let store = Arc::clone(store);
        let start = Arc::clone(&start);
        tasks.spawn(async move {
            start.wait().await;
            let mut leased = Vec::new();
            loop {
                let now = at(HOUR);
                let got = store
                    .run_dequeue(&worker, batch, now + Duration::seconds(LEASE_SECS), now)
                    .await
                    .expect("run_dequeue");
                if got.is_empty() {
                    return leased;
                }
                leased.extend(got);
            }
        });
    }
    tasks.join_all().await.into_iter().flatten().collect()
}

async fn queue_declare_creates_queues_and_sets_stated_limits(store: Arc<dyn Store>) {
    let tenancy = bootstrap(&*store).await;
    let referenced = |name: &str| QueueDeclaration {
        name: name.to_owned(),
        concurrency_limit: None,
    };
    store
        .queue_declare(
            &tenancy.dev.id,
            &[
                referenced("task/my-task"),
                QueueDeclaration {
                    name: "emails".into(),
                    concurrency_limit: Some(Some(2)),
                },
            ],
            at(0),
        )
        .await
        .unwrap();
    let task_queue = queue_named(&*store, &tenancy.dev, "task/my-task").await;
    assert!(task_queue.id.as_str().starts_with("queue_"));
    assert_eq!(
        (
            task_queue.kind,
            task_queue.concurrency_limit,
            task_queue.paused
        ),
        (QueueKind::Task, None, false)
    );
    let emails = queue_named(&*store, &tenancy.dev, "emails").await;
    assert_eq!(
        (
            emails.kind,
            emails.concurrency_limit,
            emails.effective_limit()
        ),
        (QueueKind::Custom, Some(2), Some(2))
    );
    assert_eq!(emails.created_at, at(0));

    // Referencing keeps the limit; stating one replaces it; the id stays.
    store
        .queue_declare(&tenancy.dev.id, &[referenced("emails")], at(MINUTE))
        .await
        .unwrap();
    assert_eq!(queue_named(&*store, &tenancy.dev, "emails").await, emails);
    declare(&*store, &tenancy.dev, "emails", None).await;
    let cleared = queue_named(&*store, &tenancy.dev, "emails").await;
    assert_eq!(
        (cleared.id, cleared.concurrency_limit),
        (emails.id.clone(), None)
    );

    // Per environment.
    assert_eq!(
        store
            .queue_get(&tenancy.prod.id, &QueueRef::Name("emails".into()))
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        store
            .queue_get(&tenancy.prod.id, &QueueRef::Id(emails.id.to_string()))
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        store
            .queue_get(&tenancy.dev.id, &QueueRef::Id(emails.id.to_string()))
            .await
            .unwrap()
            .map(|q| q.name),
        Some("emails".to_owned())
    );
}

async fn queue_list_pages_by_name_with_counts(store: Arc<dyn Store>) {
    let tenancy = bootstrap(&*store).await;
    for name in ["c", "a", "task/my-task", "b"] {
        declare(&*store, &tenancy.dev, name, None).await;
    }
    declare(&*store, &tenancy.prod, "elsewhere", None).await;
    let worker = serve(&*store, &tenancy.dev, "v1", &["my-task"], at(0)).await;
    for i in 0..3 {
        create(&*store, &run_on("a", None, &tenancy.dev, at(i)), at(i)).await;
    }
    lease(&*store, &worker, at(MINUTE)).await;

    let (page, total) = store.queue_list(&tenancy.dev.id, 0, 2).await.unwrap();
    assert_eq!(total, 4);
    let names: Vec<(String, u64, u64)> = page
        .iter()
        .map(|q| (q.name.clone(), q.running, q.queued))
        .collect();
    assert_eq!(names, vec![("a".into(), 1, 2), ("b".into(), 0, 0)]);
    let (page, _) = store.queue_list(&tenancy.dev.id, 2, 2).await.unwrap();
    let names: Vec<&str> = page.iter().map(|q| q.name.as_str()).collect();
    assert_eq!(names, vec!["c", "task/my-task"]);
    let (page, total) = store.queue_list(&tenancy.dev.id, 4, 2).await.unwrap();
    assert_eq!((page.len(), total), (0, 4));
}

async fn queue_update_pauses_overrides_and_resets(store: Arc<dyn Store>) {
    let tenancy = bootstrap(&*store).await;
    declare(&*store, &tenancy.dev, "emails", Some(3)).await;
    let by_name = QueueRef::Name("emails".into());
    let update = |change: QueueChange, now: DateTime<Utc>| {
        let store = Arc::clone(&store);
        let env = tenancy.dev.id.clone();
        let by_name = by_name.clone();
        async move {
            store
                .queue_update(&env, &by_name, change, now)
                .await
                .unwrap()
        }
    };
    let paused = update(QueueChange::Pause, at(1)).await.unwrap();
    assert!(paused.paused);
    assert_eq!(paused.updated_at, at(1));
    assert!(!update(QueueChange::Resume, at(2)).await.unwrap().paused);

    let overridden = update(QueueChange::Override(7), at(3)).await.unwrap();
    assert_eq!(
        (
            overridden.concurrency_limit,
            overridden.concurrency_limit_override,
            overridden.overridden_at,
            overridden.effective_limit()
        ),
        (Some(3), Some(7), Some(at(3)), Some(7))
    );
    let zero = update(QueueChange::Override(0), at(4)).await.unwrap();
    assert_eq!(zero.effective_limit(), Some(0));
    let reset = update(QueueChange::ResetOverride, at(5)).await.unwrap();
    assert_eq!(
        (
            reset.concurrency_limit_override,
            reset.overridden_at,
            reset.effective_limit()
        ),
        (None, None, Some(3))
    );

    let missing = store
        .queue_update(
            &tenancy.dev.id,
            &QueueRef::Name("nope".into()),
            QueueChange::Pause,
            at(6),
        )
        .await
        .unwrap();
    assert_eq!(missing, None);
    let foreign = store
        .queue_update(&tenancy.prod.id, &by_name, QueueChange::Pause, at(6))
        .await
        .unwrap();
    assert_eq!(foreign, None, "another environment's queue");
    assert!(!queue_named(&*store, &tenancy.dev, "emails").await.paused);
}

async fn task_queue_is_the_newest_declared_queue_of_the_task(store: Arc<dyn Store>) {
    let tenancy = bootstrap(&*store).await;
    assert_eq!(
        store
            .task_queue(&tenancy.dev.id, "my-task", None)
            .await
            .unwrap(),
        None,
        "not served"
    );
    let on = |queue: &str| TaskConfig {
        queue: queue.to_owned(),
        ..task("my-task")
    };
    register(
        &*store,
        &tenancy.dev,
        Some("v1"),
        vec![on("task/my-task")],
        at(0),
    )
    .await;
    register(
        &*store,
        &tenancy.dev,
        Some("v2"),
        vec![on("emails")],
        at(MINUTE),
    )
    .await;
    let queue = |version: Option<&'static str>| {
        let store = Arc::clone(&store);
        let env = tenancy.dev.id.clone();
        async move { store.task_queue(&env, "my-task", version).await.unwrap() }
    };
    assert_eq!(queue(None).await.as_deref(), Some("emails"));
    assert_eq!(queue(Some("v1")).await.as_deref(), Some("task/my-task"));
    assert_eq!(queue(Some("v3")).await, None);
}

async fn run_dequeue_never_exceeds_the_queue_limit_under_concurrent_dequeuers(
    store: Arc<dyn Store>,
) {
    let tenancy = bootstrap(&*store).await;
    declare(&*store, &tenancy.dev, "emails", Some(3)).await;
    let runs: Vec<Run> = (0..30)
        .map(|i| run_on("emails", None, &tenancy.dev, at(i)))
        .collect();
    for run in &runs {
        create(&*store, run, at(0)).await;
    }
    let leased = dequeue_concurrently(&store, &tenancy.dev, 6, 4).await;
    assert_eq!(
        sorted(ids_of(&leased)),
        sorted(runs[..3].iter().map(|r| r.id.clone()).collect()),
        "the three oldest, once each"
    );
    let queue = queue_named(&*store, &tenancy.dev, "emails").await;
    assert_eq!((queue.running, queue.queued), (3, 27));

    // A held run that ends frees its slot.
    let outcome = store
        .run_cancel(&tenancy.dev.id, &leased[0].run.id, 0.0, at(HOUR))
        .await
        .unwrap();
    assert!(matches!(outcome, CancelOutcome::Canceled { .. }));
    let more = dequeue_concurrently(&store, &tenancy.dev, 4, 4).await;
    assert_eq!(ids_of(&more), vec![runs[3].id.clone()]);
}

async fn run_dequeue_limits_each_concurrency_key_separately_under_concurrent_dequeuers(
    store: Arc<dyn Store>,
) {
    let tenancy = bootstrap(&*store).await;
    declare(&*store, &tenancy.dev, "emails", Some(2)).await;
    let mut runs = Vec::new();
    for i in 0..8 {
        for key in [Some("alice"), Some("bob"), None] {
            runs.push(run_on("emails", key, &tenancy.dev, at(i)));
        }
    }
    for run in &runs {
        create(&*store, run, at(0)).await;
    }
    let leased = dequeue_concurrently(&store, &tenancy.dev, 6, 5).await;
    let mut per_key = std::collections::HashMap::<Option<String>, usize>::new();
    for l in &leased {
        *per_key.entry(l.run.concurrency_key.clone()).or_default() += 1;
    }
    assert_eq!(per_key.get(&Some("alice".to_owned())), Some(&2));
    assert_eq!(per_key.get(&Some("bob".to_owned())), Some(&2));
    assert_eq!(
        per_key.get(&None),
        Some(&2),
        "runs without a key share one copy"
    );
    assert_eq!(leased.len(), 6);
    let expected: Vec<RunId> = runs[..6].iter().map(|r| r.id.clone()).collect();
    assert_eq!(sorted(ids_of(&leased)), sorted(expected), "oldest per key");
}

async fn run_dequeue_a_full_queue_does_not_block_other_queues(store: Arc<dyn Store>) {
    let tenancy = bootstrap(&*store).await;
    declare(&*store, &tenancy.dev, "slow", Some(1)).await;
    declare(&*store, &tenancy.dev, "task/my-task", Some(50)).await;
    // The full queue's runs are the oldest by far, and many.
    let slow: Vec<Run> = (0..40)
        .map(|i| run_on("slow", None, &tenancy.dev, at(i)))
        .collect();
    let fast: Vec<Run> = (0..10)
        .map(|i| queued_run(&tenancy.dev, at(MINUTE + i)))
        .collect();
    let open: Vec<Run> = (0..5)
        .map(|i| run_on("open", None, &tenancy.dev, at(2 * MINUTE + i)))
        .collect();
    for run in slow.iter().chain(&fast).chain(&open) {
        create(&*store, run, at(0)).await;
    }
    let worker = serve(&*store, &tenancy.dev, "v1", &["my-task"], at(0)).await;
    let now = at(HOUR);
    let got = store
        .run_dequeue(&worker, 16, now + Duration::seconds(LEASE_SECS), now)
        .await
        .unwrap();
    let mut expected = vec![slow[0].id.clone()];
    expected.extend(fast.iter().map(|r| r.id.clone()));
    expected.extend(open.iter().map(|r| r.id.clone()));
    assert_eq!(
        ids_of(&got),
        expected,
        "one slow run, then the others in order"
    );
}

async fn run_dequeue_skips_a_paused_queue_until_it_resumes(store: Arc<dyn Store>) {
    let tenancy = bootstrap(&*store).await;
    declare(&*store, &tenancy.dev, "emails", None).await;
    let worker = serve(&*store, &tenancy.dev, "v1", &["my-task"], at(0)).await;
    let held = run_on("emails", None, &tenancy.dev, at(0));
    create(&*store, &held, at(0)).await;
    lease(&*store, &worker, at(1)).await;
    let by_name = QueueRef::Name("emails".into());
    store
        .queue_update(&tenancy.dev.id, &by_name, QueueChange::Pause, at(2))
        .await
        .unwrap();
    let waiting = run_on("emails", None, &tenancy.dev, at(3));
    let other = queued_run(&tenancy.dev, at(4));
    create(&*store, &waiting, at(3)).await;
    create(&*store, &other, at(4)).await;
    let now = at(MINUTE);
    let got = store
        .run_dequeue(&worker, 10, now + Duration::seconds(LEASE_SECS), now)
        .await
        .unwrap();
    assert_eq!(ids_of(&got), vec![other.id.clone()], "other queues go on");
    assert_eq!(
        stored_status(&*store, &held).await,
        RunStatus::Dequeued,
        "a held run stays held"
    );
    let paused = queue_named(&*store, &tenancy.dev, "emails").await;
    assert_eq!((paused.paused, paused.running, paused.queued), (true, 1, 1));

    store
        .queue_update(&tenancy.dev.id, &by_name, QueueChange::Resume, at(MINUTE))
        .await
        .unwrap();
    let got = store
        .run_dequeue(&worker, 10, now + Duration::seconds(LEASE_SECS), now)
        .await
        .unwrap();
    assert_eq!(ids_of(&got), vec![waiting.id.clone()]);
}

async fn run_dequeue_in_a_limited_queue_keeps_priority_and_fifo_order(store: Arc<dyn Store>) {
    let tenancy = bootstrap(&*store).await;
    declare(&*store, &tenancy.dev, "emails", Some(2)).await;
    let first = run_on("emails", None, &tenancy.dev, at(0));
    let second = run_on("emails", None, &tenancy.dev, at(10));
    let urgent = run_with_options(
        json!({"queue": {"name": "emails"}, "priority": 60}),
        &tenancy.dev,
        at(20),
    );
    for run in [&first, &second, &urgent] {
        create(&*store, run, at(20)).await;
    }
    let worker = serve(&*store, &tenancy.dev, "v1", &["my-task"], at(0)).await;
    let now = at(MINUTE);
    let got = store
        .run_dequeue(&worker, 10, now + Duration::seconds(LEASE_SECS), now)
        .await
        .unwrap();
    assert_eq!(
        ids_of(&got),
        vec![urgent.id.clone(), first.id.clone()],
        "priority first, then the oldest; the limit keeps the rest"
    );
}

async fn run_dequeue_override_wins_over_the_registered_limit_until_reset(store: Arc<dyn Store>) {
    let tenancy = bootstrap(&*store).await;
    declare(&*store, &tenancy.dev, "emails", Some(1)).await;
    let runs: Vec<Run> = (0..10)
        .map(|i| run_on("emails", None, &tenancy.dev, at(i)))
        .collect();
    for run in &runs {
        create(&*store, run, at(0)).await;
    }
    let worker = serve(&*store, &tenancy.dev, "v1", &["my-task"], at(0)).await;
    let by_name = QueueRef::Name("emails".into());
    let dequeue = || {
        let store = Arc::clone(&store);
        let worker = worker.clone();
        async move {
            let now = at(MINUTE);
            store
                .run_dequeue(&worker, 10, now + Duration::seconds(LEASE_SECS), now)
                .await
                .unwrap()
                .len()
        }
    };
    store
        .queue_update(&tenancy.dev.id, &by_name, QueueChange::Override(0), at(1))
        .await
        .unwrap();
    assert_eq!(dequeue().await, 0, "an override of 0 stops the queue");
    store
        .queue_update(&tenancy.dev.id, &by_name, QueueChange::Override(4), at(2))
        .await
        .unwrap();
    assert_eq!(dequeue().await, 4);
    assert_eq!(dequeue().await, 0);
    // Back to the registered 1: four are held already, so nothing more.
    store
        .queue_update(&tenancy.dev.id, &by_name, QueueChange::ResetOverride, at(3))
        .await
        .unwrap();
    assert_eq!(dequeue().await, 0);
    // A registration stating no limit lifts it.
    declare(&*store, &tenancy.dev, "emails", None).await;
    assert_eq!(dequeue().await, 6);
}

// [auth]

async fn api_key_hashes_lists_the_live_keys_of_an_environment(store: Arc<dyn Store>) {
    let tenancy = bootstrap(&*store).await;
    let keys = insert_keys(&*store, &tenancy).await;

    for (environment, want) in [
        (&tenancy.dev, vec![keys.dev.hash(), keys.dev_second.hash()]),
        (&tenancy.staging, vec![keys.staging.hash()]),
        (&tenancy.prod, vec![keys.prod.hash()]),
    ] {
        assert_eq!(
            store.api_key_hashes(&environment.id).await.unwrap(),
            Some((environment.clone(), want)),
            "{environment:?}"
        );
    }
}

async fn api_key_hashes_drops_revoked_keys_and_knows_no_other_environment(store: Arc<dyn Store>) {
    let tenancy = bootstrap(&*store).await;
    let keys = insert_keys(&*store, &tenancy).await;

    store
        .api_key_revoke(&keys.dev.display_prefix(), at(HOUR))
        .await
        .unwrap();
    store
        .api_key_revoke(&keys.prod.display_prefix(), at(HOUR))
        .await
        .unwrap();
    assert_eq!(
        store.api_key_hashes(&tenancy.dev.id).await.unwrap(),
        Some((tenancy.dev.clone(), vec![keys.dev_second.hash()]))
    );
    // An environment whose keys are all revoked still exists, with nothing to verify by.
    assert_eq!(
        store.api_key_hashes(&tenancy.prod.id).await.unwrap(),
        Some((tenancy.prod.clone(), vec![]))
    );
    let unknown = runnel_core::EnvironmentId::generate(0);
    assert_eq!(store.api_key_hashes(&unknown).await.unwrap(), None);
}

// [multinode]

/// What node `origin` publishes, every listener on the database receives, in order,
/// its own publisher included. A backend with no other process (SQLite) has no listener
/// and publishing there is harmless.
async fn signals_reach_every_listener_of_the_database(store: Arc<dyn Store>) {
    use runnel_store::{Announcement, Signal};
    let Some(mut first) = store.signal_listen().await.unwrap() else {
        store.signal_publish(&Signal::ALL, "node_a").await.unwrap();
        return;
    };
    let mut second = store
        .signal_listen()
        .await
        .unwrap()
        .expect("a second listener");
    store
        .signal_publish(&[Signal::RunsAvailable], "node_a")
        .await
        .unwrap();
    store.signal_publish(&[], "node_b").await.unwrap();
    store
        .signal_publish(&[Signal::AttemptsChanged, Signal::RunsAvailable], "node_b")
        .await
        .unwrap();
    let expected = [
        (Signal::RunsAvailable, "node_a"),
        (Signal::AttemptsChanged, "node_b"),
        (Signal::RunsAvailable, "node_b"),
    ]
    .map(|(signal, origin)| Announcement {
        signal,
        origin: origin.to_owned(),
    });
    for listener in [&mut first, &mut second] {
        let mut received = Vec::new();
        while received.len() < expected.len() {
            let next = tokio::time::timeout(std::time::Duration::from_secs(5), listener.recv())
                .await
                .unwrap_or_else(|_| panic!("no signal within 5 s; received {received:?}"))
                .unwrap();
            received.push(next.expect("the listening connection stays up"));
        }
        assert_eq!(received, expected);
    }
}

/// The rescuers of several nodes at once: each sees every expired lease, and between
/// them each is settled exactly once.
async fn run_leases_due_concurrent_rescuers_settle_each_lease_once(store: Arc<dyn Store>) {
    const RUNS: usize = 40;
    const RESCUERS: usize = 4;
    let tenancy = bootstrap(&*store).await;
    let worker = serve(&*store, &tenancy.dev, "v1", &["my-task"], at(0)).await;
    for i in 0..RUNS {
        create(&*store, &queued_run(&tenancy.dev, at(i as i64)), at(0)).await;
    }
    for _ in 0..RUNS {
        lease_and_start(&*store, &worker, at(MINUTE)).await;
    }
    let now = at(HOUR);
    let start = Arc::new(Barrier::new(RESCUERS));
    let mut rescuers = JoinSet::new();
    for _ in 0..RESCUERS {
        let (store, start) = (Arc::clone(&store), Arc::clone(&start));
        rescuers.spawn(async move {
            start.wait().await;
            let due = store
                .run_leases_due(Some(now), now, NO_LIMIT)
                .await
                .unwrap();
            let settlements: Vec<AttemptSettlement> = due
                .iter()
                .map(|leased| AttemptSettlement {
                    run_status: RunStatus::Crashed,
                    attempt_status: AttemptStatus::Failed,
                    output: None,
                    ..succeeded(leased, Claim::LeaseExpired(now), now)
                })
                .collect();
            let applied = store.attempt_settle(&settlements).await.unwrap();
            settlements
                .into_iter()
                .zip(applied)
                .filter(|(_, ok)| *ok)
                .map(|(settlement, _)| settlement.run_id)
                .collect::<Vec<_>>()
        });
    }
    let settled: Vec<RunId> = rescuers.join_all().await.into_iter().flatten().collect();
    let distinct: std::collections::HashSet<&RunId> = settled.iter().collect();
    assert_eq!(
        (settled.len(), distinct.len()),
        (RUNS, RUNS),
        "every lease settled exactly once"
    );
    assert_eq!(
        store
            .run_leases_due(Some(now), now, NO_LIMIT)
            .await
            .unwrap(),
        vec![]
    );
}
