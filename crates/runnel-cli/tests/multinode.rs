//! Several `runnel serve` nodes on one PostgreSQL database: a wake on one node reaches
//! long polls held by another (LISTEN/NOTIFY), and killing a node or a worker mid-load
//! loses no run and runs no finished run again.
//!
//! Needs `RUNNEL_TEST_DATABASE_URL` (a server where databases may be created); without
//! it the tests fail, unless `RUNNEL_SKIP_POSTGRES_TESTS=1` says to skip them.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{eventually_explained, send, send_signal, Server, Worker};
use nix::sys::signal::Signal;
use reqwest::{Method, StatusCode};
use runnel_testkit::PgTestDatabase;
use serde_json::{json, Value};
use tempfile::TempDir;
use tokio::task::JoinSet;

/// A fresh database, or `None` when PostgreSQL tests are skipped on purpose.
async fn fresh_database() -> Option<PgTestDatabase> {
    PgTestDatabase::create().await
}

/// The master key every node of these tests is given.
const MASTER_KEY: &str = "cdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcd";

/// `n` server nodes on `database`, each with its own data directory; the first one
/// created the project. Returns the nodes, the dev key and the directories.
fn start_nodes(
    database: &PgTestDatabase,
    n: usize,
    extra: &[&str],
) -> (Vec<Server>, String, Vec<TempDir>) {
    let dirs: Vec<TempDir> = (0..n).map(|_| TempDir::new().unwrap()).collect();
    // Nodes sharing a database share the master key.
    let mut args = vec![
        "--database-url",
        database.url.as_str(),
        "--encryption-key",
        MASTER_KEY,
    ];
    args.extend_from_slice(extra);
    let nodes: Vec<Server> = dirs
        .iter()
        .map(|dir| Server::start_with(dir.path(), &args))
        .collect();
    let key = nodes[0].dev_key().to_owned();
    (nodes, key, dirs)
}

/// Holds a request until it has surely reached the server and started waiting, and
/// checks it is still pending then. (Nothing outside the server can tell the moment a
/// long poll starts waiting; a poll that is not waiting yet would only make the timing
/// below easier, never flaky.)
async fn assert_pending<F: std::future::Future<Output = common::Reply>>(
    poll: std::pin::Pin<&mut F>,
    what: &str,
) {
    tokio::select! {
        reply = poll => panic!("{what} answered at once: {reply:?}"),
        () = tokio::time::sleep(Duration::from_millis(500)) => {}
    }
}

/// The most a wake may take to cross from one node to another: the polls wait 20 s, and
/// this binary also runs the 5,000-run load test beside it on a 2-core box.
const CROSS_NODE_WAKE: Duration = Duration::from_secs(3);

#[tokio::test]
async fn a_run_triggered_on_one_node_wakes_a_dequeue_waiting_on_another() {
    let Some(database) = fresh_database().await else {
        return;
    };
    let (nodes, key, _dirs) = start_nodes(&database, 2, &[]);
    dequeue_waiting_on_b_gets_a_run_of_a(&nodes[0], &nodes[1], &key).await;
    drop(nodes);
    drop(database);
}

async fn dequeue_waiting_on_b_gets_a_run_of_a(node_a: &Server, node_b: &Server, key: &str) {
    let worker = node_b.register_worker(key, &["wake"]).await;

    let long_poll = json!({"maxRuns": 1, "waitMs": 20000});
    let poll = node_b.worker_call(key, &worker, "dequeue", &long_poll);
    tokio::pin!(poll);
    assert_pending(poll.as_mut(), "the dequeue with nothing queued").await;

    let id = node_a
        .trigger_new(key, "wake", &json!({"payload": {"via": "a"}}))
        .await;
    let triggered = Instant::now();
    let reply = poll.await;
    let waited = triggered.elapsed();
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    assert_eq!(
        reply.body["runs"][0]["runId"],
        json!(id),
        "node B's dequeue got the run triggered on node A: {reply:?}"
    );
    assert!(
        waited < CROSS_NODE_WAKE,
        "node B's dequeue answered {waited:?} after the trigger on node A"
    );

    // A second round: the listener keeps listening after its first signal.
    let poll = node_b.worker_call(key, &worker, "dequeue", &long_poll);
    tokio::pin!(poll);
    assert_pending(poll.as_mut(), "the second dequeue").await;
    let second = node_a.trigger_new(key, "wake", &json!({})).await;
    let triggered = Instant::now();
    let reply = poll.await;
    assert_eq!(reply.body["runs"][0]["runId"], json!(second), "{reply:?}");
    assert!(triggered.elapsed() < CROSS_NODE_WAKE);
}

/// Triggers remember the queue of a served task; a newer version that declares another
/// queue, registered on one node, reaches the triggers of another through its signal.
#[tokio::test]
async fn a_registration_on_one_node_changes_the_queue_triggers_on_another_use() {
    let Some(database) = fresh_database().await else {
        return;
    };
    let (nodes, key, _dirs) = start_nodes(&database, 2, &[]);
    let register = |version: &str, queue: &str| {
        json!({"name": "q", "version": version, "tasks": [{"id": "moves", "queue": queue}],
               "queues": [{"name": queue}]})
    };
    let reply = nodes[0]
        .register_worker_as(&key, &register("v1", "first"))
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    // Node B reads (and remembers) the task's queue.
    let id = nodes[1].trigger_new(&key, "moves", &json!({})).await;
    assert_eq!(queue_of(&nodes[1], &key, &id).await, "first");

    let reply = nodes[0]
        .register_worker_as(&key, &register("v2", "second"))
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    let registered = Instant::now();
    loop {
        let id = nodes[1].trigger_new(&key, "moves", &json!({})).await;
        let queue = queue_of(&nodes[1], &key, &id).await;
        if queue == "second" {
            break;
        }
        assert_eq!(queue, "first");
        assert!(
            registered.elapsed() < CROSS_NODE_WAKE,
            "node B still triggers into the old queue {:?} after the registration on A",
            registered.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(nodes);
    drop(database);
}

/// A realtime subscription held by node B hears of a run that node A changes: the
/// changes cross nodes through `runnel_run_changes`.
#[tokio::test]
async fn a_realtime_subscription_on_one_node_sees_a_cancel_on_another() {
    let Some(database) = fresh_database().await else {
        return;
    };
    let (nodes, key, _dirs) = start_nodes(&database, 2, &[]);
    let id = nodes[0]
        .trigger_new(&key, "nobody-serves-this", &json!({}))
        .await;
    let path = format!("/realtime/v1/runs/{id}");
    let snapshot = send(
        nodes[1]
            .request(Method::GET, &path)
            .bearer_auth(&key)
            .query(&[("offset", "-1")]),
    )
    .await;
    assert_eq!(snapshot.status, StatusCode::OK, "{snapshot:?}");
    assert_eq!(
        snapshot.body[0]["value"]["status"], "PENDING_VERSION",
        "{snapshot:?}"
    );
    let header = |name: &str| snapshot.headers[name].to_str().unwrap().to_owned();
    let (handle, offset) = (header("electric-handle"), header("electric-offset"));
    let poll = send(
        nodes[1]
            .request(Method::GET, &path)
            .bearer_auth(&key)
            .query(&[
                ("handle", handle.as_str()),
                ("offset", offset.as_str()),
                ("live", "true"),
            ]),
    );
    tokio::pin!(poll);
    assert_pending(poll.as_mut(), "a live poll on B").await;
    let canceled = Instant::now();
    let reply = nodes[0].cancel(&key, &id).await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    let reply = tokio::time::timeout(CROSS_NODE_WAKE, poll)
        .await
        .expect("the cancel on A reaches the subscription on B");
    assert_eq!(reply.body[0]["value"]["status"], "CANCELED", "{reply:?}");
    assert!(canceled.elapsed() < CROSS_NODE_WAKE);
    drop(nodes);
    drop(database);
}

/// The queue run `id` waits in, as the runs list filters by it.
async fn queue_of(node: &Server, key: &str, id: &str) -> &'static str {
    for queue in ["first", "second"] {
        let reply = node
            .request(Method::GET, &format!("/api/v1/runs?filter[queue]={queue}"))
            .bearer_auth(key)
            .send()
            .await
            .unwrap();
        let body: Value = reply.json().await.unwrap();
        let listed = body["data"].as_array().expect("a runs page");
        if listed.iter().any(|run| run["id"] == id) {
            return queue;
        }
    }
    panic!("run {id} is in neither queue")
}

#[tokio::test]
async fn a_cancel_on_one_node_ends_a_heartbeat_waiting_on_another() {
    let Some(database) = fresh_database().await else {
        return;
    };
    let (nodes, key, _dirs) = start_nodes(&database, 2, &[]);
    heartbeat_waiting_on_b_learns_a_cancel_on_a(&nodes[0], &nodes[1], &key).await;
    drop(nodes);
    drop(database);
}

async fn heartbeat_waiting_on_b_learns_a_cancel_on_a(node_a: &Server, node_b: &Server, key: &str) {
    let worker = node_b.register_worker(key, &["held"]).await;
    let id = node_a.trigger_new(key, "held", &json!({})).await;
    let (leased, attempt) = node_b.dequeue_one(key, &worker).await;
    assert_eq!(leased, id);
    let started = node_b
        .worker_call(key, &worker, "start", &json!({"attemptIds": [attempt]}))
        .await;
    assert_eq!(started.body["started"], json!([attempt]), "{started:?}");

    let long_poll = json!({"attemptIds": [attempt], "waitMs": 20000});
    let heartbeat = node_b.worker_call(key, &worker, "heartbeat", &long_poll);
    tokio::pin!(heartbeat);
    assert_pending(heartbeat.as_mut(), "the heartbeat of a running attempt").await;

    assert_eq!(node_a.cancel(key, &id).await.status, StatusCode::OK);
    let canceled = Instant::now();
    let reply = heartbeat.await;
    let waited = canceled.elapsed();
    assert_eq!(
        (reply.status, &reply.body),
        (StatusCode::OK, &json!({"cancel": [attempt]}))
    );
    assert!(
        waited < CROSS_NODE_WAKE,
        "node B's heartbeat learnt of node A's cancel after {waited:?}"
    );
}

// ---------------------------------------------------------------------------------------
// Killing a node and a worker mid-load

/// Runs triggered in all.
const RUNS: usize = 5000;
/// Runs per batch trigger request (the one-shot batch endpoint's limit).
const BATCH: usize = 500;
/// Attempts running at once per worker.
const CONCURRENCY: usize = 8;
/// Seconds without a heartbeat before a held attempt is rescued. Live workers heartbeat
/// every third of it; it is long enough that a live worker starved of CPU on a loaded
/// 2-core box (three nodes, four workers and PostgreSQL share it) is not taken for dead.
const LEASE_TIMEOUT: &str = "10";
/// A run a killed process executed counts as in flight when it is among the last this
/// many executions of that process: its concurrency slots, plus slack for completions
/// still on their way (a slot is freed when the task ends, its completion is sent after).
const IN_FLIGHT_DEPTH: usize = 3 * CONCURRENCY;
/// Every run must be final this long after the last trigger (a quiet machine needs
/// well under a minute; this leaves room for a slow one).
const SETTLE_TIMEOUT: Duration = Duration::from_secs(600);

/// One execution a task command recorded: which run, which attempt, which worker.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Execution {
    attempt: u32,
    worker: usize,
}

/// An exec worker whose task appends `<run id> <attempt>` to a file of its own, and
/// that file.
struct RecordingWorker {
    process: Worker,
    log: PathBuf,
}

impl RecordingWorker {
    /// `then` runs after the record (e.g. `sleep 0.2`: the task takes a while).
    fn start(node: &Server, key: &str, dir: &Path, index: usize, then: &str) -> RecordingWorker {
        let log = dir.join(format!("worker-{index}.log"));
        std::fs::write(&log, "").unwrap();
        let task = format!(
            r#"noop=echo "$RUNNEL_RUN_ID $RUNNEL_ATTEMPT" >> '{}'{then}"#,
            log.display()
        );
        let concurrency = CONCURRENCY.to_string();
        let process = Worker::start(
            node,
            key,
            &[
                "--task",
                &task,
                "--concurrency",
                &concurrency,
                "--max-attempts",
                "5",
                "--version",
                "v1",
                "--shutdown-grace",
                "1",
            ],
        );
        RecordingWorker { process, log }
    }

    fn lines(&self) -> Vec<(String, u32)> {
        std::fs::read_to_string(&self.log)
            .unwrap()
            .lines()
            .map(|line| {
                let (run, attempt) = line
                    .split_once(' ')
                    .unwrap_or_else(|| panic!("a malformed record {line:?}"));
                (run.to_owned(), attempt.parse().unwrap())
            })
            .collect()
    }
}

/// Executions recorded by every worker so far.
fn executions(workers: &[RecordingWorker]) -> HashMap<String, Vec<Execution>> {
    let mut all: HashMap<String, Vec<Execution>> = HashMap::new();
    for (worker, recording) in workers.iter().enumerate() {
        for (run, attempt) in recording.lines() {
            all.entry(run)
                .or_default()
                .push(Execution { attempt, worker });
        }
    }
    all
}

fn executed_count(workers: &[RecordingWorker]) -> usize {
    workers.iter().map(|w| w.lines().len()).sum()
}

/// Triggers `count` no-op runs through `node` with one-shot batches; returns their ids.
async fn trigger_batches(node: &Server, key: &str, count: usize) -> Vec<String> {
    let mut ids = Vec::with_capacity(count);
    let mut left = count;
    while left > 0 {
        let n = left.min(BATCH);
        let items: Vec<Value> = (0..n)
            .map(|i| json!({"task": "noop", "payload": {"i": i}}))
            .collect();
        let reply = common::send(
            node.request(Method::POST, "/api/v1/tasks/batch")
                .bearer_auth(key)
                .json(&json!({ "items": items })),
        )
        .await;
        assert_eq!(
            reply.status,
            StatusCode::ACCEPTED,
            "batch trigger: {reply:?}"
        );
        let runs = reply.body["runs"].as_array().expect("runs");
        assert_eq!(runs.len(), n);
        ids.extend(runs.iter().map(|r| r["id"].as_str().unwrap().to_owned()));
        left -= n;
    }
    ids
}

/// Waits until the workers have recorded at least `n` executions.
async fn wait_for_executions(workers: &[RecordingWorker], n: usize) {
    eventually_explained(
        &format!("{n} executions"),
        Duration::from_secs(600),
        || async { (executed_count(workers) >= n).then_some(()) },
        || format!("{} executions so far", executed_count(workers)),
    )
    .await;
}

/// Statuses nothing leaves (legacy vocabulary).
const FINAL: [&str; 8] = [
    "COMPLETED",
    "FAILED",
    "CRASHED",
    "CANCELED",
    "SYSTEM_FAILURE",
    "INTERRUPTED",
    "EXPIRED",
    "TIMED_OUT",
];

/// Retrieves every run through `node` until each is final (or the deadline passes);
/// returns their last bodies' status and attempt count.
async fn settle(node: &Server, key: &str, ids: &[String]) -> HashMap<String, (String, u64)> {
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let mut settled = HashMap::new();
    let mut pending: Vec<String> = ids.to_vec();
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    while !pending.is_empty() {
        let shared = Arc::new(std::sync::Mutex::new(std::mem::take(&mut pending)));
        let mut fetchers = JoinSet::new();
        for _ in 0..16 {
            let (client, shared, url, key) = (
                client.clone(),
                shared.clone(),
                node.url.clone(),
                key.to_owned(),
            );
            fetchers.spawn(async move {
                let mut seen = Vec::new();
                loop {
                    let Some(id) = shared.lock().unwrap().pop() else {
                        return seen;
                    };
                    let reply = common::send(
                        client
                            .get(format!("{url}/api/v3/runs/{id}"))
                            .bearer_auth(&key),
                    )
                    .await;
                    assert_eq!(reply.status, StatusCode::OK, "retrieve {id}: {reply:?}");
                    let status = reply.body["status"].as_str().unwrap().to_owned();
                    let attempts = reply.body["attemptCount"].as_u64().unwrap();
                    seen.push((id, status, attempts));
                }
            });
        }
        for (id, status, attempts) in fetchers.join_all().await.into_iter().flatten() {
            if FINAL.contains(&status.as_str()) {
                settled.insert(id, (status, attempts));
            } else {
                pending.push(id);
            }
        }
        if !pending.is_empty() {
            assert!(
                Instant::now() < deadline,
                "{} runs are still not final {SETTLE_TIMEOUT:?} after the last trigger, e.g. {:?}",
                pending.len(),
                &pending[..pending.len().min(5)]
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    settled
}

/// Three nodes on one database, four exec workers attached to them, 5,000 runs
/// triggered through every node; one node is SIGKILLed mid-load, then one worker. Every
/// run still ends; no finished run executes again; the only runs executed twice are
/// runs the killed worker, or the worker of the killed node, was executing.
///
/// The worker of the killed node keeps its address (a `runnel worker` talks to one
/// server and retries it): it runs what it already started, cannot report it, and its
/// runs are rescued by the surviving nodes once their leases expire.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_nodes_lose_no_run_when_a_node_and_a_worker_are_killed() {
    let Some(database) = fresh_database().await else {
        return;
    };
    let began = Instant::now();
    let (mut nodes, key, _dirs) = start_nodes(
        &database,
        3,
        &[
            "--lease-timeout",
            LEASE_TIMEOUT,
            "--database-max-connections",
            "5",
        ],
    );
    let logs = TempDir::new().unwrap();
    const KILLED_NODE: usize = 2;
    const ORPHANED_WORKER: usize = 2;
    const KILLED_WORKER: usize = 3;
    // Workers 0, 1, 2 on nodes 0, 1, 2; worker 3 on node 1. The two that will be cut off
    // take a while per run, so they surely hold running attempts when that happens.
    let attach = [0, 1, 2, 1];
    let mut workers: Vec<RecordingWorker> = attach
        .iter()
        .enumerate()
        .map(|(i, &node)| {
            let then = if [ORPHANED_WORKER, KILLED_WORKER].contains(&i) {
                "; sleep 0.2"
            } else {
                ""
            };
            RecordingWorker::start(&nodes[node], &key, logs.path(), i, then)
        })
        .collect();
    for worker in &mut workers {
        worker.process.registration();
    }

    // First half through all three nodes at once.
    let half = RUNS / 2;
    let mut ids = Vec::with_capacity(RUNS);
    {
        let shares = [half / 3, half / 3, half - 2 * (half / 3)];
        let triggers = shares
            .iter()
            .zip(&nodes)
            .map(|(&share, node)| trigger_batches(node, &key, share));
        for batch in futures_join_all(triggers).await {
            ids.extend(batch);
        }
    }
    // Mid-load: the node goes while its worker holds runs.
    wait_for_executions(&workers, RUNS / 5).await;
    let node_killed_at = executed_count(&workers);
    send_signal(nodes[KILLED_NODE].pid(), Signal::SIGKILL);
    let killed_node = nodes.remove(KILLED_NODE);

    // Second half through the survivors, while the first half still runs.
    {
        let triggers = [
            trigger_batches(&nodes[0], &key, (RUNS - half) / 2),
            trigger_batches(&nodes[1], &key, RUNS - half - (RUNS - half) / 2),
        ];
        for batch in futures_join_all(triggers).await {
            ids.extend(batch);
        }
    }
    let triggered_at = began.elapsed();
    wait_for_executions(&workers, RUNS * 3 / 5).await;
    let worker_killed_at = executed_count(&workers);
    workers[KILLED_WORKER].process.kill();

    assert_eq!(ids.len(), RUNS);
    assert_eq!(
        ids.iter().collect::<HashSet<_>>().len(),
        RUNS,
        "distinct ids"
    );
    let settled = settle(&nodes[0], &key, &ids).await;
    let took = began.elapsed();
    let executions = executions(&workers);

    // None lost: every run exists, is final, and ran.
    assert_eq!(settled.len(), RUNS);
    let mut statuses: BTreeMap<&str, usize> = BTreeMap::new();
    for (status, _) in settled.values() {
        *statuses.entry(status.as_str()).or_default() += 1;
    }
    let stranger: Vec<&String> = executions
        .keys()
        .filter(|id| !settled.contains_key(*id))
        .collect();
    assert!(
        stranger.is_empty(),
        "executed runs nobody triggered: {stranger:?}"
    );

    let suspects = [ORPHANED_WORKER, KILLED_WORKER];
    // How far from the end of its log (the moment it was cut off) a suspect ran each
    // (run, attempt): what it held then is at the very end.
    let depth_in_log: HashMap<(usize, String, u32), usize> = suspects
        .iter()
        .flat_map(|&worker| {
            let lines = workers[worker].lines();
            let len = lines.len();
            lines
                .into_iter()
                .enumerate()
                .map(move |(i, (run, attempt))| ((worker, run, attempt), len - i))
        })
        .collect();
    let mut deepest = 0;
    let mut duplicates = 0;
    for (id, (status, attempt_count)) in &settled {
        let mut ran = executions.get(id).cloned().unwrap_or_default();
        ran.sort();
        let pairs: HashSet<u32> = ran.iter().map(|e| e.attempt).collect();
        assert_eq!(
            pairs.len(),
            ran.len(),
            "{id}: an attempt executed twice: {ran:?}"
        );
        assert!(
            ran.iter().all(|e| u64::from(e.attempt) <= *attempt_count),
            "{id} ({status}, {attempt_count} attempts) executed an attempt it does not have: {ran:?}"
        );
        if status == "COMPLETED" {
            // It ran its last attempt, and nothing after it.
            assert_eq!(
                ran.last().map(|e| u64::from(e.attempt)),
                Some(*attempt_count),
                "{id} completed without its last attempt executing: {ran:?}"
            );
        } else {
            // A run that did not complete can only be one the killed processes held,
            // rescued until it ran out of attempts.
            assert!(
                ran.iter().any(|e| suspects.contains(&e.worker)),
                "{id} ended {status} though no killed process held it: {ran:?}"
            );
        }
        if ran.len() > 1 {
            duplicates += 1;
            // Every execution but the last was lost with a killed process.
            for earlier in &ran[..ran.len() - 1] {
                assert!(
                    suspects.contains(&earlier.worker),
                    "{id} executed again after worker {} ran it: {ran:?}",
                    earlier.worker
                );
                // ...and was in flight then: among the last things that process ran,
                // not a run it had finished and reported long before.
                let depth = depth_in_log[&(earlier.worker, id.clone(), earlier.attempt)];
                deepest = deepest.max(depth);
                assert!(
                    depth <= IN_FLIGHT_DEPTH,
                    "{id} executed again though worker {} ran it {depth} executions before \
                     it was cut off: {ran:?}",
                    earlier.worker
                );
            }
        }
    }
    // The kills did cut off running attempts, and those were run again elsewhere.
    assert!(
        duplicates > 0,
        "no run was executed again: the kills hit nothing in flight"
    );
    let per_worker: Vec<usize> = workers.iter().map(|w| w.lines().len()).collect();
    eprintln!(
        "multinode: {RUNS} runs on 3 nodes; node {KILLED_NODE} killed after {node_killed_at} \
         executions, worker {KILLED_WORKER} after {worker_killed_at}; all triggered at \
         {triggered_at:?}, all final at {took:?}; statuses {statuses:?}; executions per \
         worker {per_worker:?}; {duplicates} runs executed more than once, the earliest \
         {deepest} executions before its worker was cut off"
    );
    assert!(
        statuses.get("COMPLETED") == Some(&RUNS) || duplicates > 0,
        "runs failed with no kill to explain it: {statuses:?}"
    );

    drop(killed_node);
    drop(workers);
    drop(nodes);
    drop(database);
}

/// Awaits futures concurrently, in order (no `futures` crate here).
async fn futures_join_all<F, T>(futures: impl IntoIterator<Item = F>) -> Vec<T>
where
    F: std::future::Future<Output = T>,
{
    let futures: Vec<_> = futures.into_iter().map(Box::pin).collect();
    let mut results: Vec<Option<T>> = futures.iter().map(|_| None).collect();
    let mut futures: Vec<Option<_>> = futures.into_iter().map(Some).collect();
    std::future::poll_fn(|cx| {
        let mut done = true;
        for (slot, result) in futures.iter_mut().zip(results.iter_mut()) {
            if let Some(future) = slot {
                match future.as_mut().poll(cx) {
                    std::task::Poll::Ready(value) => {
                        *result = Some(value);
                        *slot = None;
                    }
                    std::task::Poll::Pending => done = false,
                }
            }
        }
        if done {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
    results.into_iter().map(|r| r.unwrap()).collect()
}
