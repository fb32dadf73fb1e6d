//! `runnel serve --database-url postgres://…`: two server processes sharing one fresh
//! PostgreSQL database act as one installation.
//!
//! Needs `RUNNEL_TEST_DATABASE_URL` (a server where databases may be created); without
//! it the test fails, unless `RUNNEL_SKIP_POSTGRES_TESTS=1` says to skip it.

mod common;

use std::time::{SystemTime, UNIX_EPOCH};

use common::{keys_create_with, redact, send, Server, Worker};
use rand::Rng;
use reqwest::StatusCode;
use serde_json::json;
use sqlx::{Connection, PgConnection};
use tempfile::TempDir;

/// A database created for one test and dropped after it.
struct FreshDatabase {
    admin_url: String,
    name: String,
    url: String,
}

impl FreshDatabase {
    async fn create() -> Option<FreshDatabase> {
        let admin_url = match std::env::var("RUNNEL_TEST_DATABASE_URL") {
            Ok(url) if !url.is_empty() => url,
            _ if std::env::var("RUNNEL_SKIP_POSTGRES_TESTS").as_deref() == Ok("1") => {
                eprintln!("skipping: RUNNEL_SKIP_POSTGRES_TESTS=1");
                return None;
            }
            _ => panic!(
                "RUNNEL_TEST_DATABASE_URL is unset: point it at a PostgreSQL server the tests may \
                 create databases on, or set RUNNEL_SKIP_POSTGRES_TESTS=1"
            ),
        };
        let secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let name = format!("runnel_e2e_{secs}_{:08x}", rand::rng().random::<u32>());
        let mut admin = PgConnection::connect(&admin_url)
            .await
            .expect("connecting to PostgreSQL");
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .await
            .unwrap();
        admin.close().await.unwrap();
        let base = admin_url.rsplit_once('/').expect("a url with a database").0;
        let url = format!("{base}/{name}");
        Some(FreshDatabase {
            admin_url,
            name,
            url,
        })
    }

    async fn drop_database(self) {
        let mut admin = PgConnection::connect(&self.admin_url).await.unwrap();
        sqlx::query(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        ))
        .execute(&mut admin)
        .await
        .unwrap();
    }
}

#[tokio::test]
async fn two_nodes_on_one_postgres_database_serve_the_same_runs() {
    let Some(database) = FreshDatabase::create().await else {
        return;
    };
    let (dir_a, dir_b) = (TempDir::new().unwrap(), TempDir::new().unwrap());
    let node_a = Server::start_with(dir_a.path(), &["--database-url", &database.url]);
    let dev_key = node_a.dev_key().to_owned();
    let node_b = Server::start_with(dir_b.path(), &["--database-url", &database.url]);
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
    let staging = keys_create_with(&["--database-url", &database.url], "staging");
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
    database.drop_database().await;
}
