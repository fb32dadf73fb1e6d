//! The `runnel` binary's lifecycle and key management, end to end: first start and
//! restart, graceful shutdown on SIGTERM (fast when idle; a second signal stops running
//! attempts at once without losing their runs; a SIGKILLed worker takes its task
//! processes with it), and `runnel keys create|list|revoke` run against the data
//! directory of a live server.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{
    assert_secret_key, describe, key_prefix, keys_create, process_is_gone, runnel, timestamp,
    Server, TestApp, Worker, WORKER_TIMEOUT,
};
use nix::sys::signal::Signal;
use reqwest::StatusCode;
use serde_json::{json, Value};
use tempfile::TempDir;

/// One row of `runnel keys list`.
#[derive(Debug, PartialEq)]
struct KeyRow {
    prefix: String,
    env: String,
    created: String,
    revoked: String,
}

/// Runs `runnel keys list`, asserts it succeeded, and parses its table. Also returns the
/// raw stdout so callers can check what it must never contain.
fn keys_list(app: &TestApp) -> (Vec<KeyRow>, String) {
    let output = runnel(&app.data_dir(), &["keys", "list"]);
    assert!(output.status.success(), "keys list: {}", describe(&output));
    let stdout = String::from_utf8(output.stdout).expect("utf-8 stdout");
    let mut lines = stdout.lines();
    let header: Vec<&str> = lines
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(header, ["PREFIX", "ENV", "CREATED", "REVOKED"], "{stdout}");
    let rows = lines
        .map(
            |line| match line.split_whitespace().collect::<Vec<_>>().as_slice() {
                [prefix, env, created, revoked] => KeyRow {
                    prefix: prefix.to_string(),
                    env: env.to_string(),
                    created: created.to_string(),
                    revoked: revoked.to_string(),
                },
                _ => panic!("unexpected keys list row {line:?} in\n{stdout}"),
            },
        )
        .collect();
    (rows, stdout)
}

/// Whether `key` is accepted: a retrieve of a missing run is 404 with a live key, 401
/// with a refused one.
async fn key_is_accepted(server: &Server, key: &str) -> bool {
    let reply = server.retrieve(key, "run_0000000000000000000000000").await;
    match reply.status {
        StatusCode::NOT_FOUND => true,
        StatusCode::UNAUTHORIZED => {
            reply.assert_error(StatusCode::UNAUTHORIZED, "Invalid API Key");
            false
        }
        other => panic!("unexpected {other}: {reply:?}"),
    }
}

#[tokio::test]
async fn the_first_start_prints_the_project_and_dev_key_once() {
    let dir = TempDir::new().unwrap();
    let first = Server::start(dir.path());
    let bootstrap = first
        .bootstrap
        .clone()
        .expect("the first start prints the key");
    assert_eq!(
        bootstrap.project_line,
        format!(
            "Created project {} with environments dev, staging, prod.",
            bootstrap.project_id
        )
    );
    let run = first
        .trigger_new(
            &bootstrap.dev_key,
            "t",
            &json!({"payload": "before restart"}),
        )
        .await;
    // Serving requests prints nothing more, the key least of all.
    assert_eq!(first.later_stdout(), Vec::<String>::new());
    assert!(
        !first.stderr().contains(&bootstrap.dev_key),
        "the key was logged"
    );
    drop(first);

    let second = Server::start(dir.path());
    assert!(
        second.bootstrap.is_none(),
        "a restart printed a project or key"
    );
    assert_eq!(
        second.run(&bootstrap.dev_key, &run).await["payload"],
        "before restart"
    );
    second
        .trigger_new(&bootstrap.dev_key, "t", &json!({}))
        .await;

    // Another data directory is another project with another key.
    let elsewhere = TestApp::start();
    let other = elsewhere.server.bootstrap.as_ref().unwrap();
    assert_ne!(other.project_id, bootstrap.project_id);
    assert_ne!(other.dev_key, bootstrap.dev_key);
    assert!(!key_is_accepted(&second, &other.dev_key).await);
}

#[tokio::test]
async fn sigterm_stops_the_server_cleanly_and_keeps_every_run() {
    let TestApp {
        server,
        dev_key,
        dir,
    } = TestApp::start();
    let queued = server
        .trigger_new(
            &dev_key,
            "t",
            &json!({"payload": {"n": 1}, "options": {"idempotencyKey": "once", "tags": ["a"]}}),
        )
        .await;
    let delayed = server
        .trigger_new(
            &dev_key,
            "t",
            &json!({"options": {"delay": "1h", "ttl": "10m"}}),
        )
        .await;
    let before: Vec<Value> = vec![
        server.run(&dev_key, &queued).await,
        server.run(&dev_key, &delayed).await,
    ];

    let status = server.terminate();
    assert_eq!(status.code(), Some(0), "exit status {status}");

    let restarted = Server::start(dir.path());
    assert!(restarted.bootstrap.is_none());
    let after: Vec<Value> = vec![
        restarted.run(&dev_key, &queued).await,
        restarted.run(&dev_key, &delayed).await,
    ];
    assert_eq!(after, before, "runs changed across a restart");
    timestamp(&after[1]["delayedUntil"]);
    // The idempotency key survived too.
    let again = restarted
        .trigger(
            &dev_key,
            "t",
            &json!({"options": {"idempotencyKey": "once"}}),
        )
        .await;
    assert_eq!(again.assert_cached_run(), queued);
}

#[tokio::test]
async fn keys_create_prints_a_working_key_of_the_environment() {
    let app = TestApp::start();
    let prod = keys_create(&app.data_dir(), "prod");
    assert_secret_key(&prod, "prod");
    let staging = keys_create(&app.data_dir(), "staging");
    assert_secret_key(&staging, "stg");
    let another_prod = keys_create(&app.data_dir(), "prod");
    assert_ne!(another_prod, prod);

    // The server sees keys created while it runs, each scoped to its environment.
    let run = app
        .server
        .trigger_new(&prod, "t", &json!({"payload": 1}))
        .await;
    assert_eq!(app.server.run(&another_prod, &run).await["payload"], 1);
    for other_env in [&staging, &app.dev_key] {
        app.server
            .retrieve(other_env, &run)
            .await
            .assert_error(StatusCode::NOT_FOUND, "Not found");
    }
}

#[tokio::test]
async fn keys_create_refuses_an_unknown_environment_or_a_missing_project() {
    let app = TestApp::start();
    let output = runnel(&app.data_dir(), &["keys", "create", "--env", "qa"]);
    assert!(!output.status.success(), "{}", describe(&output));
    assert!(output.stdout.is_empty(), "{}", describe(&output));

    let empty = TempDir::new().unwrap();
    let output = runnel(empty.path(), &["keys", "create", "--env", "dev"]);
    assert!(!output.status.success(), "{}", describe(&output));
    assert!(output.stdout.is_empty(), "{}", describe(&output));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("runnel serve"),
        "the error should say to start the server first: {}",
        describe(&output)
    );
    // The failed command leaves a directory the first start still bootstraps.
    let server = Server::start(empty.path());
    assert!(server.bootstrap.is_some());
}

#[tokio::test]
async fn keys_list_shows_prefixes_and_environments_but_never_a_secret() {
    let app = TestApp::start();
    let staging = keys_create(&app.data_dir(), "staging");
    let prod = keys_create(&app.data_dir(), "prod");
    let revoke = runnel(&app.data_dir(), &["keys", "revoke", key_prefix(&staging)]);
    assert!(revoke.status.success(), "{}", describe(&revoke));

    let (rows, stdout) = keys_list(&app);
    for key in [&app.dev_key, &staging, &prod] {
        assert!(
            !stdout.contains(key.as_str()),
            "keys list shows a secret:\n{stdout}"
        );
    }
    let shown: Vec<(&str, &str, bool)> = rows
        .iter()
        .map(|row| {
            timestamp(&json!(row.created));
            let revoked = row.revoked != "-";
            if revoked {
                timestamp(&json!(row.revoked));
            }
            (row.prefix.as_str(), row.env.as_str(), revoked)
        })
        .collect();
    let mut expected = vec![
        (key_prefix(&app.dev_key), "dev", false),
        (key_prefix(&staging), "staging", true),
        (key_prefix(&prod), "prod", false),
    ];
    let mut shown_sorted = shown.clone();
    shown_sorted.sort();
    expected.sort();
    assert_eq!(shown_sorted, expected, "\n{stdout}");
}

#[tokio::test]
async fn a_revoked_key_is_refused_and_the_others_keep_working() {
    let app = TestApp::start();
    let second_dev = keys_create(&app.data_dir(), "dev");
    let run = app.server.trigger_new(&app.dev_key, "t", &json!({})).await;

    // The prefix as `keys list` shows it.
    let (rows, _) = keys_list(&app);
    let prefix = rows
        .iter()
        .find(|row| app.dev_key.starts_with(&row.prefix))
        .map(|row| row.prefix.clone())
        .expect("the dev key is listed");
    let output = runnel(&app.data_dir(), &["keys", "revoke", &prefix]);
    assert!(output.status.success(), "{}", describe(&output));
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        format!("revoked {prefix}\n")
    );

    // The running server refuses it at once, on every route.
    app.server
        .retrieve(&app.dev_key, &run)
        .await
        .assert_error(StatusCode::UNAUTHORIZED, "Invalid API Key");
    app.server
        .trigger(&app.dev_key, "t", &json!({}))
        .await
        .assert_error(StatusCode::UNAUTHORIZED, "Invalid API Key");
    // The environment's other key still reads the run.
    assert_eq!(app.server.run(&second_dev, &run).await["id"], run.as_str());

    // Revoking it again finds no live key.
    let output = runnel(&app.data_dir(), &["keys", "revoke", &prefix]);
    assert!(!output.status.success(), "{}", describe(&output));
}

#[tokio::test]
async fn keys_revoke_of_an_unknown_or_ambiguous_prefix_fails_and_revokes_nothing() {
    let app = TestApp::start();
    let second_dev = keys_create(&app.data_dir(), "dev");
    let (before, _) = keys_list(&app);

    for prefix in ["tr_dev_zzzzzzzz", "tr_prod_", "nope", ""] {
        let output = runnel(&app.data_dir(), &["keys", "revoke", prefix]);
        assert!(
            !output.status.success(),
            "revoke {prefix:?}: {}",
            describe(&output)
        );
        assert!(output.stdout.is_empty(), "{}", describe(&output));
        assert!(
            String::from_utf8_lossy(&output.stderr).contains("no live key"),
            "{}",
            describe(&output)
        );
    }
    // `tr_dev_` starts both dev keys: refused rather than revoking one at random.
    let output = runnel(&app.data_dir(), &["keys", "revoke", "tr_dev_"]);
    assert!(!output.status.success(), "{}", describe(&output));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("2 live keys"),
        "{}",
        describe(&output)
    );

    let (after, _) = keys_list(&app);
    assert_eq!(after, before);
    for key in [&app.dev_key, &second_dev] {
        assert!(key_is_accepted(&app.server, key).await, "{key} was revoked");
    }
}

/// How long an idle server or `dev` may take to exit after SIGTERM.
const IDLE_STOP_MAX: Duration = Duration::from_secs(1);
/// How long a process may take to exit after the second signal, attempts running.
const STOP_NOW_MAX: Duration = Duration::from_secs(3);

/// `slow=…`: a task that creates `started` and then sleeps for 30 s.
fn slow_task(started: &Path) -> String {
    format!("slow=touch '{}'; exec sleep 30", started.display())
}

/// Waits until `path` exists (the task's command runs).
async fn wait_for_file(path: &Path) {
    let deadline = Instant::now() + WORKER_TIMEOUT;
    while !path.exists() {
        assert!(Instant::now() < deadline, "{path:?} never appeared");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Sends SIGTERM and answers how long the process took to exit (status 0).
fn time_to_stop(server: Server) -> Duration {
    let signaled = Instant::now();
    let status = server.terminate();
    let took = signaled.elapsed();
    assert_eq!(status.code(), Some(0), "exit status {status}");
    took
}

#[tokio::test]
async fn an_idle_server_stops_in_well_under_a_second() {
    let app = TestApp::start();
    let took = time_to_stop(app.server);
    assert!(took < IDLE_STOP_MAX, "an idle serve took {took:?} to stop");
}

#[tokio::test]
async fn an_idle_dev_stops_in_well_under_a_second() {
    let dir = TempDir::new().unwrap();
    let dev = Server::start_dev(dir.path(), &["--task", "t=true"]);
    // Its worker's dequeue long poll is in flight from here on: that poll used to hold
    // the stop until the end of its wait.
    dev.wait_for_log("worker registered worker_id=", WORKER_TIMEOUT);
    let took = time_to_stop(dev);
    assert!(took < IDLE_STOP_MAX, "an idle dev took {took:?} to stop");
}

#[tokio::test]
async fn a_second_ctrl_c_stops_dev_at_once_and_the_run_ends_interrupted() {
    let dir = TempDir::new().unwrap();
    let started = dir.path().join("started");
    let mut dev = Server::start_dev(dir.path(), &["--task", &slow_task(&started)]);
    let key = dev.dev_key().to_owned();
    let run = dev.trigger_new(&key, "slow", &json!({})).await;
    wait_for_file(&started).await;

    dev.signal(Signal::SIGINT);
    dev.wait_for_log(
        "stopping: waiting up to 30s for 1 running attempt; press Ctrl-C again to stop now",
        WORKER_TIMEOUT,
    );
    assert!(
        dev.wait_for_exit(Duration::from_millis(300)).is_none(),
        "the first Ctrl-C must wait for the running attempt\n{}",
        dev.stderr()
    );
    let signaled = Instant::now();
    dev.signal(Signal::SIGINT);
    let status = dev.wait_for_exit(STOP_NOW_MAX).unwrap_or_else(|| {
        panic!(
            "dev still running {STOP_NOW_MAX:?} after the second Ctrl-C\n{}",
            dev.stderr()
        )
    });
    assert_eq!(status.code(), Some(0), "{status}\n{}", dev.stderr());
    assert!(signaled.elapsed() < STOP_NOW_MAX);

    // The in-process server recorded the interruption before it stopped: a dev run
    // interrupted by its worker ends INTERRUPTED (docs/state-machine.md).
    drop(dev);
    let restarted = Server::start(dir.path());
    let body = restarted.run(&key, &run).await;
    assert_eq!(body["status"], "INTERRUPTED", "{body}");
    assert_eq!(body["attemptCount"], 1, "{body}");
    assert_eq!(body["attempts"][0]["status"], "FAILED", "{body}");
    assert_eq!(
        body["error"]["message"], "worker stopped during the run",
        "{body}"
    );
}

#[tokio::test]
async fn a_second_sigterm_stops_a_prod_worker_at_once_and_gives_its_run_back() {
    let app = TestApp::start();
    let key = &keys_create(&app.data_dir(), "prod");
    let started = app.data_dir().join("started");
    let mut worker = Worker::start(&app.server, key, &["--task", &slow_task(&started)]);
    let run = app.server.trigger_new(key, "slow", &json!({})).await;
    wait_for_file(&started).await;

    worker.terminate();
    let deadline = Instant::now() + WORKER_TIMEOUT;
    while !worker
        .stderr()
        .contains("stopping: waiting up to 30s for 1 running attempt")
    {
        assert!(Instant::now() < deadline, "{}", worker.stderr());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let signaled = Instant::now();
    worker.terminate();
    let status = worker.wait(STOP_NOW_MAX);
    assert!(signaled.elapsed() < STOP_NOW_MAX);
    assert!(status.success(), "{status}\n{}", worker.stderr());

    // Reported before the worker exited: outside dev an interrupted run goes back to the
    // queue, its attempt not counted.
    let body = app.server.run(key, &run).await;
    assert_eq!(body["status"], "QUEUED", "{body}");
    assert_eq!(body["attempts"][0]["status"], "CANCELED", "{body}");
}

#[tokio::test]
async fn a_second_sigterm_stops_a_worker_whose_server_is_gone_within_its_bound() {
    let app = TestApp::start();
    let started = app.data_dir().join("started");
    let mut worker = Worker::start(&app.server, &app.dev_key, &["--task", &slow_task(&started)]);
    app.server
        .trigger_new(&app.dev_key, "slow", &json!({}))
        .await;
    wait_for_file(&started).await;
    app.server.signal(Signal::SIGKILL);

    worker.terminate();
    let deadline = Instant::now() + WORKER_TIMEOUT;
    while !worker.stderr().contains("press Ctrl-C again to stop now") {
        assert!(Instant::now() < deadline, "{}", worker.stderr());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let signaled = Instant::now();
    worker.terminate();
    // The interrupted attempt's report cannot reach anyone: it is given up on (the
    // server rescues the run when it is back), within the stop-now bound.
    let status = worker.wait(STOP_NOW_MAX);
    assert!(signaled.elapsed() < STOP_NOW_MAX);
    assert!(status.success(), "{status}\n{}", worker.stderr());
}

/// How long a task's processes may outlive their SIGKILLed worker.
const ORPHAN_DEATH_MAX: Duration = Duration::from_secs(2);

/// `family=…`: a shell that writes its pid to `dir/shell`, starts a background `sleep 60`
/// writing its pid to `dir/sleep`, and waits.
fn family_task(dir: &Path) -> String {
    format!(
        "family=echo $$ > '{0}/shell.tmp'; mv '{0}/shell.tmp' '{0}/shell'; \
         sleep 60 & echo $! > '{0}/sleep.tmp'; mv '{0}/sleep.tmp' '{0}/sleep'; wait",
        dir.display()
    )
}

/// The pids `family_task` wrote, once both are there.
async fn family_pids(dir: &Path) -> [u32; 2] {
    let mut pids = [0; 2];
    for (pid, name) in pids.iter_mut().zip(["shell", "sleep"]) {
        let path = dir.join(name);
        wait_for_file(&path).await;
        *pid = std::fs::read_to_string(&path)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert!(!process_is_gone(*pid), "{name} ({pid}) should be running");
    }
    pids
}

/// Asserts every pid stops running within [`ORPHAN_DEATH_MAX`].
async fn assert_all_die(pids: [u32; 2], log: impl Fn() -> String) {
    let deadline = Instant::now() + ORPHAN_DEATH_MAX;
    while !pids.iter().all(|pid| process_is_gone(*pid)) {
        assert!(
            Instant::now() < deadline,
            "task processes {pids:?} outlived their worker by {ORPHAN_DEATH_MAX:?}\n{}",
            log()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_sigkilled_worker_takes_its_task_processes_with_it() {
    let app = TestApp::start();
    let pids_dir = TempDir::new().unwrap();
    let mut worker = Worker::start(
        &app.server,
        &app.dev_key,
        &["--task", &family_task(pids_dir.path())],
    );
    app.server
        .trigger_new(&app.dev_key, "family", &json!({}))
        .await;
    let pids = family_pids(pids_dir.path()).await;

    worker.kill();
    assert_all_die(pids, || worker.stderr()).await;
}

#[tokio::test]
async fn a_sigkilled_dev_takes_its_task_processes_with_it() {
    let dir = TempDir::new().unwrap();
    let pids_dir = TempDir::new().unwrap();
    let mut dev = Server::start_dev(dir.path(), &["--task", &family_task(pids_dir.path())]);
    let key = dev.dev_key().to_owned();
    dev.trigger_new(&key, "family", &json!({})).await;
    let pids = family_pids(pids_dir.path()).await;

    dev.signal(Signal::SIGKILL);
    assert!(dev.wait_for_exit(WORKER_TIMEOUT).is_some());
    assert_all_die(pids, || dev.stderr()).await;
}

#[tokio::test]
async fn under_the_task_guard_a_command_ends_as_it_would_without_it() {
    let dir = TempDir::new().unwrap();
    let dev = Server::start_dev(
        dir.path(),
        &[
            "--task",
            "echo=cat",
            "--task",
            "exit=echo bye >&2; exit 3",
            "--task",
            "term=kill -TERM $$",
            "--task",
            "pipe=kill -PIPE $$",
        ],
    );
    let key = dev.dev_key().to_owned();
    let once = json!({"payload": {"n": 1}, "options": {"maxAttempts": 1}});
    let cases = [
        ("echo", "COMPLETED", None),
        ("exit", "FAILED", Some("bye")),
        ("term", "CRASHED", Some("killed by signal 15 (SIGTERM)")),
        // Rust ignores SIGPIPE in its own processes: the guard must still die of it.
        ("pipe", "CRASHED", Some("killed by signal 13 (SIGPIPE)")),
    ];
    for (task, status, message) in cases {
        let run = dev.trigger_new(&key, task, &once).await;
        let body = dev.wait_for_status(&key, &run, status).await;
        match message {
            None => assert_eq!(body["output"], json!({"n": 1}), "{body}"),
            Some(message) => assert_eq!(body["error"]["message"], message, "{body}"),
        }
    }
}
