//! A store that survives its callers: requests cut off half-way and writes that fail
//! (a full disk) leave the real `runnel serve` as healthy as before, and `/healthz` says
//! when the store cannot write.
//!
//! Runs on SQLite and, in the PostgreSQL pass of `scripts/test`, on PostgreSQL (the full
//! disk test is SQLite's own: its data directory is a small tmpfs).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{eventually, send, Server, TestApp, SERVICE_TIMEOUT};
use reqwest::{Method, StatusCode};
use serde_json::json;
use tempfile::TempDir;

/// Long polls a client abandons after a few milliseconds.
const ABORTED_POLLS: usize = 1000;
/// Abandoned long polls in flight at once.
const POLLS_AT_ONCE: usize = 25;

/// Hundreds of dequeue long polls whose clients give up after a few milliseconds (a killed
/// worker, a short client timeout), while runs are being triggered: every later write
/// still answers 200. On SQLite a poll cut inside its transaction used to leave the
/// writer refusing every write ("attempted to call begin_with at non-zero transaction
/// depth") while `/healthz` kept saying ok.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn aborted_long_polls_under_trigger_load_leave_every_write_working() {
    let app = TestApp::start();
    let server = &app.server;
    let key = app.dev_key.as_str();
    let worker = server.register_worker(key, &["cut"]).await;

    let triggering = async {
        for n in 0..400 {
            let reply = server
                .trigger(key, "cut", &json!({"payload": {"n": n}}))
                .await;
            assert_eq!(reply.status, StatusCode::OK, "trigger {n}: {reply:?}");
        }
    };
    let polling = async {
        // A few dozen at a time, as a fleet of impatient workers would.
        for chunk in 0..ABORTED_POLLS / POLLS_AT_ONCE {
            let mut polls = tokio::task::JoinSet::new();
            for n in 0..POLLS_AT_ONCE {
                let abandon_after =
                    Duration::from_micros(500 + ((chunk * 7 + n) % 16) as u64 * 500);
                let request = server
                    .request(Method::POST, &format!("/api/v1/workers/{worker}/dequeue"))
                    .bearer_auth(key)
                    .json(&json!({"maxRuns": 5, "waitMs": 2000}))
                    .timeout(abandon_after);
                polls.spawn(async move {
                    // Most are abandoned; the few answered in time must be answered 200.
                    if let Ok(response) = request.send().await {
                        assert!(
                            response.status().is_success(),
                            "a dequeue answered {}",
                            response.status()
                        );
                    }
                });
            }
            while let Some(poll) = polls.join_next().await {
                poll.expect("a poll panicked");
            }
        }
    };
    tokio::join!(triggering, polling);

    assert_every_write_works(server, key, &worker).await;
}

/// Triggers, dequeues, starts, completes and cancels, each answered 200, and `/healthz` ok.
async fn assert_every_write_works(server: &Server, key: &str, worker: &str) {
    let health = send(server.request(Method::GET, "/healthz")).await;
    assert_eq!(health.status, StatusCode::OK, "{health:?}");
    let to_cancel = server
        .trigger_new(key, "cut", &json!({"payload": {"after": "cancel"}}))
        .await;
    let cancel = server.cancel(key, &to_cancel).await;
    assert_eq!(cancel.status, StatusCode::OK, "cancel: {cancel:?}");
    server
        .trigger_new(key, "cut", &json!({"payload": {"after": "run"}}))
        .await;
    let run = server.run_one(key, worker, json!({"done": true})).await;
    let body = server.wait_for_status(key, &run, "COMPLETED").await;
    assert_eq!(body["output"], json!({"done": true}), "{body}");
}

/// Size of the tmpfs the full-disk test fills.
const TMPFS_SIZE: &str = "16m";
/// Set to skip the tests that mount a tmpfs (they need root), knowingly.
const SKIP_TMPFS_VAR: &str = "RUNNEL_SKIP_TMPFS_TESTS";

/// A small tmpfs mounted on a temporary directory, unmounted when dropped.
struct Tmpfs {
    dir: TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        let dir = TempDir::new().expect("creating the mount point");
        let output = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .expect("running mount");
        assert!(
            output.status.success(),
            "this test fills a small tmpfs to get a real full disk, and mounting one needs \
             root (CAP_SYS_ADMIN); run it as root, or set {SKIP_TMPFS_VAR}=1 to skip it \
             knowingly: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        Tmpfs { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// Writes zeros to `path` until the file system refuses: the disk is full.
fn fill(path: &Path) -> PathBuf {
    use std::io::Write;
    let filler = path.join("filler");
    let mut file = std::fs::File::create(&filler).expect("creating the filler");
    for chunk in [1 << 20, 64 << 10, 4 << 10, 512] {
        let zeros = vec![0u8; chunk];
        while file.write_all(&zeros).and_then(|()| file.flush()).is_ok() {}
    }
    let _ = file.sync_all();
    filler
}

/// A write that fails for want of disk (SQLITE_FULL at COMMIT) makes `/healthz` answer
/// 503 while the disk is full, and once space is back the node serves every write again
/// without a restart. It used to leave the one SQLite writer connection refusing every
/// write until restart, while `/healthz` said ok.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_fails_health_and_the_node_recovers_when_space_is_back() {
    if std::env::var_os(SKIP_TMPFS_VAR).is_some_and(|v| v == "1") {
        eprintln!("skipped: {SKIP_TMPFS_VAR}=1");
        return;
    }
    let tmpfs = Tmpfs::mount(TMPFS_SIZE);
    let database = format!("sqlite://{}", tmpfs.path().join("runnel.db").display());
    let server = Server::start_with(tmpfs.path(), &["--database-url", database.as_str()]);
    let key = server.dev_key().to_owned();
    let worker = server.register_worker(&key, &["cut"]).await;
    server
        .trigger_new(&key, "cut", &json!({"payload": {"before": "full"}}))
        .await;

    let filler = fill(tmpfs.path());
    let refused = server
        .trigger(&key, "cut", &json!({"payload": {"disk": "full"}}))
        .await;
    assert_eq!(
        refused.status,
        StatusCode::INTERNAL_SERVER_ERROR,
        "a trigger on a full disk: {refused:?}"
    );
    let health = send(server.request(Method::GET, "/healthz")).await;
    assert_eq!(
        (health.status, &health.body),
        (
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({"status": "unavailable"})
        ),
        "/healthz on a full disk"
    );

    std::fs::remove_file(&filler).expect("freeing the disk");
    eventually(
        "/healthz to answer 200 once space is back",
        SERVICE_TIMEOUT,
        || async {
            let health = send(server.request(Method::GET, "/healthz")).await;
            (health.status == StatusCode::OK).then_some(())
        },
    )
    .await;
    assert_every_write_works(&server, &key, &worker).await;
    drop(server);
    drop(tmpfs);
}
