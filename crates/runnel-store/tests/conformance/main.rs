//! The store conformance suite: one set of tests every [`Store`] backend must pass.
//!
//! Each test is a plain `async fn(Arc<dyn Store>)` that knows nothing about the backend.
//! [`conformance_tests!`] turns the whole list into `#[tokio::test]`s for one backend, in
//! a module named after it (`sqlite::run_expire_due_ends_queued_runs_past_their_ttl`).
//! Adding a backend is one line, like `conformance_tests!(postgres, make_postgres_store)`,
//! where `make_postgres_store() -> Option<Fixture>` hands out a store on a fresh, empty
//! database and a guard that drops the database with the fixture (`None` skips the
//! test). A new test is written once, in the module of its area, and added to the list
//! inside the macro as `area::name`.
//!
//! PostgreSQL (the fixture is the shared harness's, `runnel_testkit::pg`): every test
//! creates its own database `runnel_test_<unix secs>_<random>` on
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
//!
//! Layout: one module per area (`runs`, `attempts`, `queues`, ...); they share `harness`
//! (the fixed clock, tenancy, runs and the worker steps most areas need) and `backends`
//! (the fixtures). A helper used by one area stays in that area's module.

mod actions;
mod attempts;
mod backends;
mod batches;
mod dequeue;
mod envvars;
mod events;
mod harness;
mod idempotency;
mod keys;
mod leases;
mod list;
mod multinode;
mod queues;
mod runs;
mod schedules;
mod sweeps;
mod tenancy;
mod waits;
mod workers;

use crate::harness::*;

/// Expands every conformance test into a `#[tokio::test]` against the store that
/// `$make_store().await` returns, inside `mod $backend`.
macro_rules! conformance_tests {
    ($backend:ident, $make_store:ident) => {
        conformance_tests!(@expand $backend, $make_store, [
            tenancy::health_reads_and_writes,
            tenancy::writes_cut_off_by_their_caller_leave_the_store_usable,
            tenancy::project_bootstrap_creates_project_environments_and_dev_key,
            tenancy::project_bootstrap_runs_once_and_drops_the_second_key,
            tenancy::project_bootstrap_creates_one_project_under_concurrent_bootstraps,
            keys::api_key_authenticate_finds_the_environment_of_a_live_key,
            keys::api_key_list_shows_prefixes_never_secrets,
            keys::api_key_revoke_by_unique_prefix_stops_authentication,
            keys::api_key_revoke_reports_an_unknown_prefix,
            keys::api_key_revoke_refuses_an_ambiguous_prefix,
            keys::api_key_revoke_revokes_once_under_concurrent_revokes,
            keys::pat_authenticate_finds_the_project_of_a_live_token,
            keys::pat_list_shows_prefixes_never_secrets,
            keys::pat_revoke_by_prefix_stops_authentication_and_leaves_keys_alone,
            keys::api_key_ensure_stores_once_and_keeps_a_revoked_key_revoked,
            keys::api_key_ensure_stores_once_under_concurrent_ensures,
            runs::run_round_trips_every_field_set,
            runs::run_round_trips_every_field_empty,
            runs::run_get_is_scoped_to_the_environment,
            runs::run_trigger_refuses_a_duplicate_id,
            runs::run_trigger_among_concurrent_triggers_fails_alone,
            runs::run_trigger_concurrent_triggers_each_store_their_run,
            idempotency::idempotency_same_key_and_task_returns_the_holder,
            idempotency::idempotency_key_is_scoped_to_the_task,
            idempotency::idempotency_key_is_scoped_to_the_environment,
            idempotency::idempotency_failed_holder_releases_the_key,
            idempotency::idempotency_expired_key_is_released,
            idempotency::idempotency_canceled_holder_keeps_the_key,
            idempotency::idempotency_follows_the_holder_status,
            idempotency::idempotency_holds_under_concurrent_triggers,
            runs::run_transition_is_conditional_on_the_current_status,
            runs::run_transition_into_a_final_status_sets_completed_at,
            runs::run_transition_never_leaves_a_final_status,
            sweeps::run_expire_due_ends_queued_runs_past_their_ttl,
            sweeps::run_expire_due_respects_the_limit,
            sweeps::run_expire_due_concurrent_sweeps_expire_each_run_once,
            sweeps::run_promote_due_queues_delayed_runs_whose_delay_ended,
            sweeps::run_promote_due_respects_the_limit,
            sweeps::run_promote_due_concurrent_sweeps_promote_each_run_once,
            sweeps::run_next_due_at_is_the_earliest_expiry_or_promotion,
            runs::run_children_lists_the_runs_of_a_parent,
            runs::attempt_list_is_empty_for_a_run_without_attempts,
            workers::worker_register_assigns_dated_versions_and_keeps_given_ones,
            workers::worker_register_concurrent_registrations_get_distinct_versions,
            workers::worker_register_again_upserts_the_tasks_of_a_version,
            workers::worker_get_returns_only_the_worker_tasks,
            workers::task_served_by_any_version_or_the_named_one,
            workers::worker_register_queues_the_waiting_runs_of_its_tasks,
            dequeue::run_dequeue_takes_the_oldest_first_and_priority_moves_a_run_ahead,
            dequeue::run_dequeue_leases_only_the_worker_tasks_and_version,
            dequeue::run_dequeue_leases_the_run_with_a_new_pending_attempt,
            dequeue::run_dequeue_concurrent_dequeuers_lease_each_run_once,
            attempts::attempt_start_starts_only_the_holder_pending_attempt,
            attempts::attempt_start_sets_started_at_and_the_fee_once,
            attempts::attempt_start_without_a_max_duration_sets_no_deadline,
            attempts::attempt_heartbeat_extends_only_the_leases_a_worker_holds,
            attempts::attempt_settle_applies_only_while_the_claim_holds,
            attempts::attempt_settle_of_a_batch_decides_each_settlement_on_its_own,
            attempts::attempt_settle_adds_usage_and_counts_spent_failures,
            attempts::attempt_settle_after_run_cancel_is_refused,
            attempts::run_cancel_ends_live_runs_and_leaves_final_or_foreign_ones,
            leases::run_leases_due_finds_expired_leases_and_passed_deadlines_only,
            leases::an_expired_lease_not_yet_rescued_takes_its_worker_heartbeat_and_completion,
            leases::run_requeue_due_requeues_retrying_runs_at_their_next_attempt,
            leases::run_promote_due_leaves_delayed_runs_waiting_for_a_version_that_serves_them,
            leases::run_promote_due_queues_waiting_runs_a_version_now_serves,
            leases::run_expire_due_expires_runs_waiting_for_a_version,
            leases::run_next_due_at_includes_retry_lease_and_timeout_deadlines,
            leases::run_next_deadline_is_the_earliest_of_its_own_kind_only,
            leases::run_promote_due_leaves_retrying_runs_to_run_requeue_due,
            leases::attempt_settle_and_run_cancel_racing_settle_each_run_once,
            leases::attempt_heartbeat_and_start_racing_the_rescuer_settle_each_run_once,
            // [list]
            list::run_list_filters_each_select_their_runs,
            list::run_list_orders_newest_first_and_respects_the_limit,
            list::run_list_cursor_walk_neither_skips_nor_repeats_while_runs_are_added,
            list::run_list_pages_backward_from_a_cursor,
            list::run_list_is_scoped_to_the_environment,
            // [actions]
            actions::run_descendants_live_walks_the_live_subtree_of_the_environment,
            actions::run_reschedule_moves_only_delayed_runs,
            actions::run_tags_replace_is_a_compare_and_swap,
            actions::run_metadata_replace_is_a_compare_and_swap,
            actions::idempotency_key_reset_releases_the_key_of_that_task_and_environment,
            // [batches]
            batches::run_trigger_many_inserts_a_thousand_runs_in_one_call,
            batches::run_trigger_many_honours_idempotency_keys_in_order,
            batches::batch_create_returns_the_live_holder_of_its_key,
            batches::batch_items_trigger_dedups_by_index_and_seals,
            batches::batch_items_trigger_honours_idempotency_keys,
            batches::batch_items_trigger_concurrent_overlapping_calls_record_each_index_once,
            // [queues]
            queues::queue_declare_creates_queues_and_sets_stated_limits,
            queues::queue_list_pages_by_name_with_counts,
            queues::queue_update_pauses_overrides_and_resets,
            queues::task_queue_is_the_newest_declared_queue_of_the_task,
            queues::run_dequeue_never_exceeds_the_queue_limit_under_concurrent_dequeuers,
            queues::run_dequeue_limits_each_concurrency_key_separately_under_concurrent_dequeuers,
            queues::run_dequeue_a_full_queue_does_not_block_other_queues,
            queues::run_dequeue_skips_a_paused_queue_until_it_resumes,
            queues::run_dequeue_in_a_limited_queue_keeps_priority_and_fifo_order,
            queues::run_dequeue_override_wins_over_the_registered_limit_until_reset,
            // [auth]
            keys::api_key_hashes_lists_the_live_keys_of_an_environment,
            keys::api_key_hashes_drops_revoked_keys_and_knows_no_other_environment,
            // [secrets]
            keys::keys_are_stored_sealed_under_the_master_key_bound_to_their_row,
            keys::sealed_reseal_moves_values_to_the_current_key_once,
            keys::public_token_use_lets_one_use_through,
            // [events]
            events::run_event_insert_stores_events_of_existing_runs_in_their_environment,
            events::run_event_insert_replaces_a_partial_span_with_the_ended_one,
            events::run_event_list_pages_in_time_order_by_kind,
            events::run_event_insert_stops_at_the_cap_per_run,
            // [multinode]
            multinode::signals_reach_every_listener_of_the_database,
            multinode::run_leases_due_concurrent_rescuers_settle_each_lease_once,
            // [waits]
            waits::waitpoint_create_round_trips_and_honours_idempotency_keys,
            waits::waitpoint_complete_completes_once,
            waits::run_block_waits_until_every_blocker_is_completed,
            waits::waitpoints_due_next_due_and_stranded,
            waits::token_list_filters_and_pages_newest_first,
            waits::snapshots_append_in_sequence,
            // [envvars]
            envvars::env_var_upsert_update_delete_round_trip_per_environment,
            envvars::env_var_import_without_override_writes_nothing_on_a_conflict,
            envvars::env_var_import_concurrent_imports_of_one_name_write_once,
            // [schedules]
            schedules::schedule_upsert_creates_then_updates_by_key_keeping_id_and_active,
            schedules::schedule_get_by_id_or_key_only_in_its_environment,
            schedules::schedule_list_pages_oldest_first_with_the_count,
            schedules::schedule_update_changes_imperative_schedules_only,
            schedules::schedule_delete_removes_the_schedule_once,
            schedules::schedule_set_active_moves_next_only_when_activating,
            schedules::schedule_next_due_and_due_see_active_and_pending_schedules,
            schedules::schedule_claim_is_a_compare_and_swap,
            schedules::schedule_claim_concurrent_claims_of_one_occurrence_win_once,
            schedules::schedule_settle_clears_only_the_matching_pending,
            schedules::worker_register_syncs_the_declarative_schedules_it_lists,
            schedules::worker_register_prunes_unlisted_declarative_schedules_only,
            schedules::task_scheduled_follows_the_latest_version,
        ]);
    };
    (@expand $backend:ident, $make_store:ident, [$($area:ident :: $test:ident),* $(,)?]) => {
        mod $backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $test() {
                    let Some(fixture) = crate::backends::$make_store().await else {
                        return;
                    };
                    crate::$area::$test(std::sync::Arc::clone(&fixture.store)).await;
                    fixture.store.close().await;
                }
            )*
        }
    };
}

conformance_tests!(sqlite, make_sqlite_store);
conformance_tests!(postgres, make_postgres_store);

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
                .project_bootstrap(&key, crate::harness::master_keys(), at(0))
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
