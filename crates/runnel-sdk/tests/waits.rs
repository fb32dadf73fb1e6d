//! A task's waits against a real server in this process (`runnel_testkit::TestApp`): a
//! worker runs typed tasks whose context triggers children and waits for them, waits
//! for a time and for a token; each test reads the runs back over the API.

use std::sync::Arc;
use std::time::{Duration, Instant};

use runnel_sdk::{
    BatchItem, Client, RunInfo, RunStatus, Task, TaskContext, Tasks, TokenResult, TriggerOptions,
    Worker, WorkerOptions, WorkerSummary,
};
use runnel_testkit::{eventually, TestApp, CURRENT_API_VERSION, SERVICE_TIMEOUT};
use serde_json::{json, Value};
use tokio::sync::oneshot;

/// How long the `child` task works: longer than its parent's own compute time.
const CHILD_WORK: Duration = Duration::from_millis(1_500);
/// The time `sleeper` waits.
const SLEEP: Duration = Duration::from_secs(2);

/// `child` doubles its number after [`CHILD_WORK`]; `fail` always fails (one attempt);
/// `parent` trigger-and-waits a `child`; `fan_out` waits for a batch of `child`, `fail`,
/// `child`; `sleeper` waits [`SLEEP`]; `approval` waits for the token its payload names.
fn tasks() -> Tasks {
    Tasks::new()
        .task("child", |n: i64| async move {
            tokio::time::sleep(CHILD_WORK).await;
            Ok::<_, String>(n * 2)
        })
        .task(Task::new("fail").max_attempts(1), |_: Value| async move {
            Err::<(), _>("no luck")
        })
        .task_with_context("parent", |n: i64, ctx: TaskContext| async move {
            let child = ctx
                .trigger_and_wait("child", &n, TriggerOptions::default())
                .await
                .map_err(|e| e.to_string())?;
            let doubled: i64 = child.output_as().map_err(|e| e.to_string())?;
            Ok::<_, String>(json!({ "child": child.id, "doubled": doubled }))
        })
        .task_with_context("fan_out", |_: Value, ctx: TaskContext| async move {
            let items = vec![
                BatchItem::new("child", &1).unwrap(),
                BatchItem::new("fail", &Value::Null).unwrap(),
                BatchItem::new("child", &3).unwrap(),
            ];
            let results = ctx
                .batch_trigger_and_wait(items)
                .await
                .map_err(|e| e.to_string())?;
            let summary: Vec<Value> = results
                .iter()
                .map(|r| match &r.outcome {
                    Ok(output) => json!({ "ok": output }),
                    Err(_) => json!({ "err": r.error_message() }),
                })
                .collect();
            Ok::<_, String>(json!(summary))
        })
        .task_with_context("sleeper", |_: Value, ctx: TaskContext| async move {
            let started = Instant::now();
            ctx.wait_for(SLEEP).await.map_err(|e| e.to_string())?;
            Ok::<_, String>(started.elapsed().as_millis() as u64)
        })
        .task_with_context("approval", |token: String, ctx: TaskContext| async move {
            match ctx
                .wait_for_token(&token)
                .await
                .map_err(|e| e.to_string())?
            {
                TokenResult::Completed(data) => Ok::<_, String>(json!({ "data": data })),
                TokenResult::TimedOut => Ok(json!("timed out")),
            }
        })
}

/// A worker serving [`tasks`] in the background.
struct TestWorker {
    shutdown: oneshot::Sender<()>,
    done: tokio::task::JoinHandle<WorkerSummary>,
}

impl TestWorker {
    async fn start(client: Client) -> TestWorker {
        let mut options = WorkerOptions::new("waits");
        options.dequeue_wait = Duration::from_secs(1);
        let registered = Worker::new(client, options)
            .register(Arc::new(tasks()))
            .await
            .expect("the server accepts the registration");
        let (shutdown, stopped) = oneshot::channel::<()>();
        let done = tokio::spawn(registered.run(async move {
            let _ = stopped.await;
        }));
        TestWorker { shutdown, done }
    }

    async fn stop(self) -> WorkerSummary {
        let _ = self.shutdown.send(());
        self.done.await.expect("the worker ends")
    }
}

fn client(app: &TestApp) -> Client {
    Client::new(app.server.url.clone(), app.dev_key.clone())
}

fn client_with(app: &TestApp, key: &str) -> Client {
    Client::new(app.server.url.clone(), key)
}

async fn finished(client: &Client, run: &str) -> RunInfo {
    client
        .wait_for_completion(run, Duration::from_millis(50), SERVICE_TIMEOUT)
        .await
        .expect("the run ends")
}

/// Polls until the run's status, as the v4 SDK reads it (`x-trigger-api-version`), is
/// `status`.
async fn until_status(app: &TestApp, key: &str, run: &str, status: &str) -> Value {
    eventually(
        &format!("{run} to be {status}"),
        SERVICE_TIMEOUT,
        || async {
            let reply = app.server.retrieve_as(key, run, CURRENT_API_VERSION).await;
            (reply.body["status"] == status).then_some(reply.body)
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trigger_and_wait_hands_the_parent_its_childs_output() {
    let app = TestApp::start();
    let client = client(&app);
    let worker = TestWorker::start(client.clone()).await;

    let parent = client
        .trigger("parent", &21, TriggerOptions::default())
        .await
        .unwrap();
    until_status(&app, &app.dev_key, &parent.id, "WAITING").await;
    let done = finished(&client, &parent.id).await;
    assert_eq!(done.status, RunStatus::Completed, "{:?}", done.raw);
    let child_id = done.output.as_ref().unwrap()["child"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        done.output,
        Some(json!({ "child": child_id, "doubled": 42 }))
    );
    // The wait is not compute time: the parent ran for less than its child worked.
    assert!(
        done.duration_ms < CHILD_WORK.as_millis() as u64,
        "the parent's durationMs {} counts its wait",
        done.duration_ms
    );
    let child = client.retrieve(&child_id).await.unwrap();
    assert_eq!(child.status, RunStatus::Completed);
    assert_eq!(child.raw["depth"], 1, "{:?}", child.raw);
    assert_eq!(child.raw["relatedRuns"]["parent"]["id"], json!(parent.id));
    assert!(child.duration_ms >= CHILD_WORK.as_millis() as u64);

    let summary = worker.stop().await;
    assert_eq!((summary.succeeded, summary.failed), (2, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_trigger_and_wait_answers_in_item_order() {
    let app = TestApp::start();
    let client = client(&app);
    let worker = TestWorker::start(client.clone()).await;

    let parent = client
        .trigger("fan_out", &Value::Null, TriggerOptions::default())
        .await
        .unwrap();
    let done = finished(&client, &parent.id).await;
    assert_eq!(done.status, RunStatus::Completed, "{:?}", done.raw);
    assert_eq!(
        done.output,
        Some(json!([{ "ok": 2 }, { "err": "no luck" }, { "ok": 6 }]))
    );
    assert!(done.duration_ms < CHILD_WORK.as_millis() as u64);

    let summary = worker.stop().await;
    assert_eq!((summary.succeeded, summary.failed), (3, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_for_leaves_the_run_waiting_then_resumes_it() {
    let app = TestApp::start();
    // Any environment's worker can wait, not only dev's.
    let key = app.keys_create("prod");
    let client = client_with(&app, &key);
    let worker = TestWorker::start(client.clone()).await;

    let run = client
        .trigger("sleeper", &Value::Null, TriggerOptions::default())
        .await
        .unwrap();
    until_status(&app, &key, &run.id, "WAITING").await;
    // Without the API version header, a waiting run reads as the v3 SDK knew it.
    assert_eq!(app.server.run(&key, &run.id).await["status"], "FROZEN");
    let done = finished(&client, &run.id).await;
    assert_eq!(done.status, RunStatus::Completed, "{:?}", done.raw);
    let waited: u64 = done.output_as().unwrap();
    assert!(
        waited >= SLEEP.as_millis() as u64 - 10,
        "waited {waited} ms"
    );
    assert!(done.duration_ms < SLEEP.as_millis() as u64);

    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_for_token_resumes_with_its_data_or_its_timeout() {
    let app = TestApp::start();
    let client = client(&app);
    let worker = TestWorker::start(client.clone()).await;

    let token = client
        .create_token(Some(Duration::from_secs(600)))
        .await
        .unwrap();
    let run = client
        .trigger("approval", &token.id, TriggerOptions::default())
        .await
        .unwrap();
    until_status(&app, &app.dev_key, &run.id, "WAITING").await;
    client
        .complete_token(&token.id, &json!({ "approved": true }))
        .await
        .unwrap();
    let done = finished(&client, &run.id).await;
    assert_eq!(
        done.output,
        Some(json!({ "data": { "approved": true } })),
        "{:?}",
        done.raw
    );

    let short = client
        .create_token(Some(Duration::from_secs(1)))
        .await
        .unwrap();
    let run = client
        .trigger("approval", &short.id, TriggerOptions::default())
        .await
        .unwrap();
    let done = finished(&client, &run.id).await;
    assert_eq!(done.output, Some(json!("timed out")), "{:?}", done.raw);

    worker.stop().await;
}

/// A context not made by a worker has no client: its waits say so.
#[tokio::test]
async fn a_context_without_a_client_cannot_wait() {
    let run = runnel_sdk::DequeuedRun {
        run_id: "run_1".into(),
        payload_presigned_url: None,
        attempt_id: "attempt_1".into(),
        attempt_number: 1,
        task_identifier: "t".into(),
        payload: Value::Null,
        payload_type: "application/json".into(),
        max_duration_secs: None,
        machine: "small-1x".into(),
        environment: "dev".into(),
        version: "20260101.1".into(),
        is_test: false,
        tags: vec![],
        lease_expires_at: "2026-01-01T00:00:00.000Z".into(),
    };
    let ctx = TaskContext::new(&run, None);
    let error = ctx.wait_for(Duration::from_secs(1)).await.unwrap_err();
    assert_eq!(
        error.to_string(),
        "cannot wait: this task context has no client (it was not made by a worker)"
    );
}
