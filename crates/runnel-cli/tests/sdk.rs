//! End to end with the Rust SDK: the real `runnel serve` binary, a `runnel_sdk::Worker`
//! running typed [`Tasks`] in this process, and runs triggered and read back through
//! `runnel_sdk::Client`.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{eventually, keys_create, TestApp, Worker as ExecWorker, SERVICE_TIMEOUT};
use runnel_sdk::{
    Client, RetryPolicy, RunInfo, RunStatus, ScheduleKind, ScheduledPayload, Task, TaskContext,
    Tasks, TriggerOptions, Worker, WorkerOptions, WorkerSummary,
};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::{oneshot, Notify};

/// Between two retrieves while waiting for a run.
const POLL_INTERVAL: Duration = Duration::from_millis(25);

#[derive(Debug, Serialize, Deserialize)]
struct Hello {
    name: String,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Greeting {
    greeting: String,
}

/// Signals from the `block` task: how many attempts began, and whether one was dropped
/// (aborted by a stop).
#[derive(Debug, Default)]
struct Probe {
    entered: AtomicUsize,
    entered_changed: Notify,
    dropped: AtomicBool,
}

impl Probe {
    async fn wait_entered(&self, count: usize) {
        tokio::time::timeout(SERVICE_TIMEOUT, async {
            loop {
                let notified = self.entered_changed.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if self.entered.load(Ordering::SeqCst) >= count {
                    return;
                }
                notified.await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("no {count} attempt(s) of `block` began"));
    }
}

struct DropFlag(Arc<Probe>);

impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.dropped.store(true, Ordering::SeqCst);
    }
}

/// `hello` greets; `fail` always errs (2 attempts, 100 ms apart); `block` never ends
/// by itself; `slow` never ends by itself either, but has the smallest `maxDuration`
/// the server accepts (5 s).
fn tasks(probe: Arc<Probe>) -> Tasks {
    let blocking = |probe: Arc<Probe>| {
        move |_: serde_json::Value| {
            let guard = DropFlag(probe.clone());
            probe.entered.fetch_add(1, Ordering::SeqCst);
            probe.entered_changed.notify_waiters();
            async move {
                let _guard = guard;
                std::future::pending::<()>().await;
                Ok::<(), String>(())
            }
        }
    };
    Tasks::new()
        .task("hello", |hello: Hello| async move {
            Ok::<_, String>(Greeting {
                greeting: format!("Hello, {}!", hello.name),
            })
        })
        .task(
            Task::new("fail").retry(RetryPolicy {
                max_attempts: 2,
                factor: 1.0,
                min_timeout_in_ms: 100,
                max_timeout_in_ms: 100,
                randomize: false,
            }),
            |_: serde_json::Value| async move { Err::<(), _>("no luck this time") },
        )
        .task("block", blocking(probe.clone()))
        .task(
            Task::new("slow").max_duration(Duration::from_secs(5)),
            blocking(probe),
        )
}

/// A worker running in this process against the test server.
struct TestWorker {
    shutdown: oneshot::Sender<()>,
    done: tokio::task::JoinHandle<WorkerSummary>,
    /// The version the server registered.
    version: String,
}

impl TestWorker {
    /// Registers the tasks, so runs triggered from now on are queued at once, and runs
    /// the worker in the background.
    async fn start(app: &TestApp, tasks: Tasks, options: WorkerOptions) -> TestWorker {
        // The worker's log, shown for a failed test (or with --nocapture); RUST_LOG filters it.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        let registered = Worker::new(client(app), options)
            .register(Arc::new(tasks))
            .await
            .expect("the server accepts the registration");
        let version = registered.version().to_owned();
        let (shutdown, stopped) = oneshot::channel::<()>();
        let done = tokio::spawn(registered.run(async move {
            let _ = stopped.await;
        }));
        TestWorker {
            shutdown,
            done,
            version,
        }
    }

    async fn stop(self) -> WorkerSummary {
        let _ = self.shutdown.send(());
        tokio::time::timeout(SERVICE_TIMEOUT, self.done)
            .await
            .expect("the worker stopped in time")
            .expect("the worker task did not panic")
    }
}

fn options() -> WorkerOptions {
    WorkerOptions {
        name: "sdk-e2e".into(),
        version: None,
        concurrency: 4,
        shutdown_grace: Duration::from_secs(5),
        // Short, so stopping an idle worker is quick.
        dequeue_wait: Duration::from_millis(500),
    }
}

fn client(app: &TestApp) -> Client {
    let http = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("building the HTTP client");
    Client::with_http_client(http, app.server.url.clone(), app.dev_key.clone())
}

async fn wait_for_final(client: &Client, run_id: &str) -> RunInfo {
    client
        .wait_for_completion(run_id, POLL_INTERVAL, SERVICE_TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("waiting for {run_id}: {e}"))
}

#[tokio::test]
async fn a_typed_task_completes_with_its_output() {
    let app = TestApp::start();
    let client = client(&app);
    let worker = TestWorker::start(&app, tasks(Arc::default()), options()).await;

    let triggered = client
        .trigger(
            "hello",
            &Hello { name: "Ada".into() },
            TriggerOptions {
                tags: vec!["sdk".into()],
                ..TriggerOptions::default()
            },
        )
        .await
        .expect("trigger");
    assert!(!triggered.is_cached);
    let run = wait_for_final(&client, &triggered.id).await;

    assert_eq!(run.status, RunStatus::Completed, "{:#}", run.raw);
    assert!(run.is_completed && run.is_success && !run.is_failed);
    assert_eq!(
        run.output_as::<Greeting>().unwrap(),
        Greeting {
            greeting: "Hello, Ada!".into()
        }
    );
    assert_eq!(run.attempt_count, 1, "{:#}", run.raw);
    assert_eq!(run.task_identifier, "hello");
    assert_eq!(run.error, None);
    assert_eq!(run.raw["payload"], json!({"name": "Ada"}));
    assert_eq!(run.raw["tags"], json!(["sdk"]));

    assert_eq!(
        run.version.as_deref(),
        Some(worker.version.as_str()),
        "the run names the worker's version"
    );
    let version = worker.version.clone();
    let summary = worker.stop().await;
    assert_eq!((summary.succeeded, summary.failed), (1, 0));
    assert_eq!(summary.version, Some(version));
}

/// A task reads its environment's variables from its context, in clear (a secret too),
/// as they were set through the API.
#[tokio::test]
async fn a_task_reads_its_environment_variables_from_its_context() {
    let app = TestApp::start();
    let client = client(&app);
    let me = client.whoami().await.expect("whoami");
    assert_eq!(me.environment.slug, "dev");
    client
        .env_var_set(&me.project_ref, "dev", "GREETING", "Bonjour", true)
        .await
        .expect("setting a variable");
    let tasks = Tasks::new().task_with_context(
        "env",
        |_: serde_json::Value, ctx: TaskContext| async move {
            Ok::<_, String>(json!({
                "greeting": ctx.env_var("GREETING"),
                "missing": ctx.env_var("NOT_SET"),
                "names": ctx.env_vars().keys().collect::<Vec<_>>(),
            }))
        },
    );
    let worker = TestWorker::start(&app, tasks, options()).await;
    let triggered = client
        .trigger("env", &json!({}), TriggerOptions::default())
        .await
        .expect("trigger");
    let run = wait_for_final(&client, &triggered.id).await;
    assert_eq!(
        run.raw["output"],
        json!({"greeting": "Bonjour", "missing": null, "names": ["GREETING"]}),
        "{:#}",
        run.raw
    );
    worker.stop().await;
}

#[tokio::test]
async fn a_run_triggered_before_any_worker_waits_for_one() {
    let app = TestApp::start();
    let client = client(&app);
    let triggered = client
        .trigger(
            "hello",
            &Hello {
                name: "early".into(),
            },
            TriggerOptions::default(),
        )
        .await
        .expect("trigger");
    let waiting = client.retrieve(&triggered.id).await.unwrap();
    assert_eq!(
        waiting.status,
        RunStatus::WaitingForDeploy,
        "{:#}",
        waiting.raw
    );
    assert_eq!(waiting.version, None);

    // The one-call form: registers, then runs until shut down.
    let (shutdown, stopped) = oneshot::channel::<()>();
    let worker = Worker::new(client.clone(), options());
    let running = tokio::spawn(worker.run(Arc::new(tasks(Arc::default())), async move {
        let _ = stopped.await;
    }));
    let run = wait_for_final(&client, &triggered.id).await;
    assert_eq!(run.status, RunStatus::Completed, "{:#}", run.raw);
    assert_eq!(
        run.output_as::<Greeting>().unwrap().greeting,
        "Hello, early!"
    );
    let _ = shutdown.send(());
    let summary = tokio::time::timeout(SERVICE_TIMEOUT, running)
        .await
        .expect("the worker stopped in time")
        .expect("the worker task did not panic")
        .expect("the worker ran");
    assert_eq!(summary.succeeded, 1);
}

#[tokio::test]
async fn a_failing_task_fails_after_its_retries() {
    let app = TestApp::start();
    let client = client(&app);
    let worker = TestWorker::start(&app, tasks(Arc::default()), options()).await;

    let triggered = client
        .trigger("fail", &json!({}), TriggerOptions::default())
        .await
        .expect("trigger");
    let run = wait_for_final(&client, &triggered.id).await;

    assert_eq!(run.status, RunStatus::Failed, "{:#}", run.raw);
    assert!(run.is_completed && run.is_failed && !run.is_success);
    assert_eq!(run.attempt_count, 2, "{:#}", run.raw);
    assert_eq!(
        run.error_message(),
        Some("no luck this time"),
        "{:#}",
        run.raw
    );
    assert_eq!(run.output, None);

    let summary = worker.stop().await;
    assert_eq!((summary.succeeded, summary.failed), (0, 2));
}

#[tokio::test]
async fn an_unreadable_payload_is_a_system_failure() {
    let app = TestApp::start();
    let client = client(&app);
    let worker = TestWorker::start(&app, tasks(Arc::default()), options()).await;

    let triggered = client
        .trigger("hello", &json!({"nom": "Ada"}), TriggerOptions::default())
        .await
        .expect("trigger");
    let run = wait_for_final(&client, &triggered.id).await;

    assert_eq!(run.status, RunStatus::SystemFailure, "{:#}", run.raw);
    assert_eq!(run.attempt_count, 1, "not retried: {:#}", run.raw);
    let message = run.error_message().unwrap_or_default();
    assert!(message.contains("missing field `name`"), "{:#}", run.raw);
    worker.stop().await;
}

#[tokio::test]
async fn a_canceled_run_stops_its_attempt() {
    let app = TestApp::start();
    let client = client(&app);
    let probe = Arc::new(Probe::default());
    let worker = TestWorker::start(&app, tasks(probe.clone()), options()).await;

    let triggered = client
        .trigger("block", &json!(null), TriggerOptions::default())
        .await
        .expect("trigger");
    probe.wait_entered(1).await;
    assert_eq!(
        client.retrieve(&triggered.id).await.unwrap().status,
        RunStatus::Executing
    );
    client.cancel(&triggered.id).await.expect("cancel");

    eventually(
        "the canceled attempt to be aborted",
        SERVICE_TIMEOUT,
        || {
            let dropped = probe.dropped.load(Ordering::SeqCst);
            async move { dropped.then_some(()) }
        },
    )
    .await;
    let run = client.retrieve(&triggered.id).await.unwrap();
    assert_eq!(run.status, RunStatus::Canceled, "{:#}", run.raw);
    assert!(run.is_completed);

    let summary = worker.stop().await;
    assert_eq!(
        (summary.canceled, summary.succeeded, summary.failed),
        (1, 0, 0)
    );
    let run = client.retrieve(&triggered.id).await.unwrap();
    assert_eq!(
        run.status,
        RunStatus::Canceled,
        "still canceled: {:#}",
        run.raw
    );
}

#[tokio::test]
async fn an_attempt_over_its_max_duration_times_out() {
    let app = TestApp::start();
    let client = client(&app);
    let probe = Arc::new(Probe::default());
    let worker = TestWorker::start(&app, tasks(probe.clone()), options()).await;

    let triggered = client
        .trigger("slow", &json!(null), TriggerOptions::default())
        .await
        .expect("trigger");
    let run = wait_for_final(&client, &triggered.id).await;

    assert_eq!(run.status, RunStatus::TimedOut, "{:#}", run.raw);
    assert_eq!(run.attempt_count, 1, "not retried: {:#}", run.raw);
    assert_eq!(
        run.error_message(),
        Some("Run exceeded maxDuration of 5s"),
        "{:#}",
        run.raw
    );
    assert!(probe.dropped.load(Ordering::SeqCst), "the task was stopped");
    let summary = worker.stop().await;
    assert_eq!(summary.failed, 1);
}

#[tokio::test]
async fn a_worker_shut_down_mid_run_interrupts_it_in_dev() {
    let app = TestApp::start();
    let client = client(&app);
    let probe = Arc::new(Probe::default());
    let worker = TestWorker::start(
        &app,
        tasks(probe.clone()),
        WorkerOptions {
            shutdown_grace: Duration::from_millis(200),
            ..options()
        },
    )
    .await;

    let triggered = client
        .trigger("block", &json!(null), TriggerOptions::default())
        .await
        .expect("trigger");
    probe.wait_entered(1).await;
    let summary = worker.stop().await;
    assert_eq!(summary.interrupted, 1);
    assert!(probe.dropped.load(Ordering::SeqCst));

    let run = client.retrieve(&triggered.id).await.unwrap();
    assert_eq!(run.status, RunStatus::Interrupted, "{:#}", run.raw);
    assert_eq!(
        run.error_message(),
        Some("worker stopped during the run"),
        "{:#}",
        run.raw
    );
}

#[tokio::test]
async fn many_runs_complete_with_limited_concurrency() {
    let app = TestApp::start();
    let client = client(&app);
    let worker = TestWorker::start(
        &app,
        tasks(Arc::default()),
        WorkerOptions {
            concurrency: 3,
            ..options()
        },
    )
    .await;

    let mut ids = Vec::new();
    for n in 0..20 {
        let hello = Hello {
            name: format!("n{n}"),
        };
        let triggered = client
            .trigger("hello", &hello, TriggerOptions::default())
            .await
            .expect("trigger");
        ids.push(triggered.id);
    }
    for (n, id) in ids.iter().enumerate() {
        let run = wait_for_final(&client, id).await;
        assert_eq!(run.status, RunStatus::Completed, "{:#}", run.raw);
        assert_eq!(
            run.output,
            Some(json!({"greeting": format!("Hello, n{n}!")}))
        );
    }
    let summary = worker.stop().await;
    assert_eq!(summary.succeeded, 20);
}

/// A scheduled run's payload is superjson (`application/super+json`: the dates marked so
/// the TypeScript SDK revives them). Runnel's own workers get its `json` part: a Rust task
/// deserializes it as a [`ScheduledPayload`], an exec command reads plain JSON with the
/// dates as ISO strings on stdin. The runs are triggered with the very text the scheduler
/// stores (`runnel_core::schedule::ScheduledPayload::to_superjson`) and its payload type,
/// so nobody waits for a minute to come.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduled_payload_reaches_rust_and_exec_tasks_as_plain_json() {
    let app = TestApp::start();
    let client = client(&app);
    let at = |s: &str| common::timestamp(&json!(s));
    let upcoming = vec![
        at("2026-12-03T19:00:00.000Z"),
        at("2026-12-03T20:00:00.000Z"),
    ];
    let superjson = runnel_core::schedule::ScheduledPayload {
        schedule_id: "sched_0123456789abcdefghijklmn",
        kind: ScheduleKind::Imperative,
        timestamp: at("2026-12-03T18:00:00.000Z"),
        last_timestamp: Some(at("2026-12-03T17:00:00.000Z")),
        external_id: Some("user_1"),
        timezone: "Europe/Paris",
        upcoming: upcoming.clone(),
    }
    .to_superjson();
    let trigger_body = json!({
        "payload": superjson,
        "options": {"payloadType": runnel_core::schedule::PAYLOAD_TYPE},
    });

    // The Rust task hands back what it received, typed.
    let tasks = Tasks::new().task(
        Task::new("scheduled-echo").scheduled(),
        |payload: ScheduledPayload| async move { Ok::<_, String>(payload) },
    );
    let worker = TestWorker::start(&app, tasks, options()).await;
    // The exec command echoes its stdin (in prod, so the two workers stay apart).
    let prod_key = keys_create(&app.data_dir(), "prod");
    let mut exec_worker =
        ExecWorker::start(&app.server, &prod_key, &["--task", "scheduled-cat=cat"]);
    exec_worker.registration();

    let rust_run = app
        .server
        .trigger(&app.dev_key, "scheduled-echo", &trigger_body)
        .await
        .assert_new_run();
    let exec_run = app
        .server
        .trigger(&prod_key, "scheduled-cat", &trigger_body)
        .await
        .assert_new_run();

    let run = wait_for_final(&client, &rust_run).await;
    assert_eq!(run.status, RunStatus::Completed, "{:#}", run.raw);
    assert_eq!(
        run.output_as::<ScheduledPayload>().unwrap(),
        ScheduledPayload {
            schedule_id: "sched_0123456789abcdefghijklmn".into(),
            kind: ScheduleKind::Imperative,
            timestamp: at("2026-12-03T18:00:00.000Z"),
            last_timestamp: Some(at("2026-12-03T17:00:00.000Z")),
            external_id: Some("user_1".into()),
            timezone: "Europe/Paris".into(),
            upcoming,
        },
        "{:#}",
        run.raw
    );

    let http = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("building the HTTP client");
    let prod = Client::with_http_client(http, app.server.url.clone(), prod_key.clone());
    let run = wait_for_final(&prod, &exec_run).await;
    exec_worker.terminate();
    assert_eq!(run.status, RunStatus::Completed, "{:#}", run.raw);
    assert_eq!(
        run.output,
        Some(json!({
            "scheduleId": "sched_0123456789abcdefghijklmn",
            "type": "IMPERATIVE",
            "timestamp": "2026-12-03T18:00:00.000Z",
            "lastTimestamp": "2026-12-03T17:00:00.000Z",
            "externalId": "user_1",
            "timezone": "Europe/Paris",
            "upcoming": ["2026-12-03T19:00:00.000Z", "2026-12-03T20:00:00.000Z"],
        })),
        "the command read plain JSON: {:#}",
        run.raw
    );
    let summary = worker.stop().await;
    assert_eq!((summary.succeeded, summary.failed), (1, 0));
}
