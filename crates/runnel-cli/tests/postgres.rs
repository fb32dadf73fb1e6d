//! `runnel serve --database-url postgres://…`: two server processes sharing one fresh
//! PostgreSQL database act as one installation.
//!
//! Needs `RUNNEL_TEST_DATABASE_URL` (a server where databases may be created); without
//! it the test fails, unless `RUNNEL_SKIP_POSTGRES_TESTS=1` says to skip it.

mod common;

use common::{keys_create_with, redact, send, Server, Worker};
use reqwest::StatusCode;
use runnel_testkit::PgTestDatabase;
use serde_json::json;
use tempfile::TempDir;

#[tokio::test]
async fn two_nodes_on_one_postgres_database_serve_the_same_runs() {
    let Some(database) = PgTestDatabase::create().await else {
        return;
    };
    let (dir_a, dir_b) = (TempDir::new().unwrap(), TempDir::new().unwrap());
    // Nodes sharing a database share the master key.
    let master_key = "ab".repeat(32);
    let store_args = [
        "--database-url",
        &database.url,
        "--encryption-key",
        &master_key,
    ];
    let node_a = Server::start_with(dir_a.path(), &store_args);
    let dev_key = node_a.dev_key().to_owned();
    let node_b = Server::start_with(dir_b.path(), &store_args);
    assert!(
        node_b.bootstrap.is_none(),
        "the second node finds the project and prints no key"
    );

    // A version registered through node B serves the task on every node.
    node_b.register_worker(&dev_key, &["t"]).await;
    let body =
        json!({"payload": {"n": 1}, "options": {"idempotencyKey": "pg-1", "tags": ["b", "a"]}});
    let id = node_a.trigger(&dev_key, "t", &body).await.assert_new_run();
    // Node B sees the run and the key.
    assert_eq!(
        node_b
            .trigger(&dev_key, "t", &body)
            .await
            .assert_cached_run(),
        id
    );
    let reply = node_b.retrieve(&dev_key, &id).await;
    assert_eq!(reply.status, StatusCode::OK);
    let body = redact(&reply.body);
    assert_eq!(body["status"], "QUEUED");
    assert_eq!(body["payload"], json!({"n": 1}));
    assert_eq!(body["tags"], json!(["a", "b"]));
    assert_eq!(body["idempotencyKey"], "pg-1");

    // Keys created against the database work on every node; environments stay apart.
    let staging = keys_create_with(&store_args, "staging");
    let other_env = node_a.retrieve(&staging, &id).await;
    other_env.assert_error(StatusCode::NOT_FOUND, "Not found");

    // A TTL set through one node expires on the shared database.
    let short = node_a
        .trigger(&dev_key, "t", &json!({"options": {"ttl": "1s"}}))
        .await
        .assert_new_run();
    let expired = node_b.wait_for_status(&dev_key, &short, "EXPIRED").await;
    assert!(expired["expiredAt"].is_string());

    // A worker attached to node B executes a run triggered through node A.
    let worker = Worker::start(&node_b, &dev_key, &["--task", "echo=cat"]);
    let echoed = node_a
        .trigger(&dev_key, "echo", &json!({"payload": {"via": "a"}}))
        .await
        .assert_new_run();
    let done = node_a.wait_for_status(&dev_key, &echoed, "COMPLETED").await;
    assert_eq!(done["output"], json!({"via": "a"}));
    assert_eq!(done["attemptCount"], 1);
    drop(worker);

    let health = send(node_b.request(reqwest::Method::GET, "/healthz")).await;
    assert_eq!(health.body, json!({"status": "ok"}));

    drop(node_a);
    drop(node_b);
    drop(database);
}
