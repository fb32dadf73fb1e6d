//! Scheduled Rust tasks against a real server in this process (`runnel_testkit::TestApp`):
//! a task registered with [`Task::cron`] gets a DECLARATIVE schedule, and the run the
//! scheduler triggers for it hands the task a [`ScheduledPayload`].
//!
//! The occurrence is fired without waiting for the wall clock to reach it: the test runs
//! one scheduler pass (`Engine::schedules_fire_due`) at the schedule's next occurrence,
//! which is what the server's own scheduler service does when that time comes. The
//! service may get there first (a test straddling a whole minute); the occurrence fires
//! once either way (a claim on the schedule's `next_run_at`, and the run's idempotency key
//! per occurrence), so the test looks the run up by its schedule.

use std::sync::Arc;
use std::time::Duration;

use runnel_core::EnvironmentKind;
use runnel_sdk::{
    Client, RunStatus, ScheduleKind, ScheduledPayload, Task, Tasks, Worker, WorkerOptions,
};
use runnel_testkit::{eventually, TestApp, CURRENT_API_VERSION, SERVICE_TIMEOUT};
use serde_json::{json, Value};
use tokio::sync::oneshot;

const TASK: &str = "tick";
const CRON: &str = "* * * * *";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cron_task_gets_a_declarative_schedule_and_its_typed_payload() {
    let app = TestApp::start();
    let client = Client::new(app.server.url.clone(), app.dev_key.clone());
    // The task hands back what it received, typed: the output is the payload as the
    // struct serializes it, so a field the task could not read would be missing there.
    let tasks = Tasks::new().task(
        Task::new(TASK).cron(CRON),
        |payload: ScheduledPayload| async move { Ok::<_, String>(payload) },
    );
    let mut options = WorkerOptions::new("scheduled");
    options.dequeue_wait = Duration::from_secs(1);
    let registered = Worker::new(client.clone(), options)
        .register(Arc::new(tasks))
        .await
        .expect("the server accepts the registration");
    let (shutdown, stopped) = oneshot::channel::<()>();
    let worker = tokio::spawn(registered.run(async move {
        let _ = stopped.await;
    }));

    // The registration made the task's schedule: one DECLARATIVE schedule in dev.
    let engine = app.server.engine.clone();
    let (schedules, due) = app.server.block_on(async move {
        let dev = engine
            .environment(EnvironmentKind::Dev)
            .await
            .unwrap()
            .expect("the dev environment");
        let page = engine.schedule_list(&dev, 1, 10).await.unwrap();
        let due = page.schedules.first().and_then(|s| s.next_fire_at);
        // One scheduler pass at the next occurrence (see the module doc).
        if let Some(at) = due {
            engine.schedules_fire_due(at).await.unwrap();
        }
        (page.schedules, due)
    });
    assert_eq!(schedules.len(), 1, "{schedules:#?}");
    let schedule = &schedules[0];
    assert_eq!(
        (
            schedule.task_identifier.as_str(),
            schedule.kind,
            schedule.active,
            schedule.cron.as_str(),
            schedule.timezone.as_str(),
            schedule.deduplication_key.as_deref(),
        ),
        (TASK, ScheduleKind::Declarative, true, CRON, "UTC", None),
        "{schedule:#?}"
    );
    let occurrence = schedule.next_run_at.expect("a next occurrence");
    assert_eq!(due, Some(occurrence), "no window: fires at the occurrence");

    let schedule_id = schedule.id.as_str().to_owned();
    let run_id = eventually("the scheduled run", SERVICE_TIMEOUT, || {
        let request = app
            .server
            .request(reqwest::Method::GET, "/api/v1/runs")
            .query(&[("filter[schedule]", schedule_id.as_str())])
            .bearer_auth(&app.dev_key);
        async move {
            let reply = runnel_testkit::send(request).await;
            // Oldest last: the occurrence fired here (the service fires later ones).
            reply.body["data"]
                .as_array()
                .and_then(|runs| runs.last())
                .and_then(|run| run["id"].as_str())
                .map(str::to_owned)
        }
    })
    .await;
    let run = client
        .wait_for_completion(&run_id, Duration::from_millis(50), SERVICE_TIMEOUT)
        .await
        .expect("the scheduled run ends");
    assert_eq!(run.status, RunStatus::Completed, "{:#}", run.raw);

    // What the task received, read back from its output.
    let received: ScheduledPayload = run.output_as().expect("the task's payload");
    let mut upcoming = Vec::new();
    let mut next = occurrence;
    for _ in 0..runnel_core::schedule::UPCOMING {
        next += chrono::Duration::minutes(1);
        upcoming.push(next);
    }
    assert_eq!(
        received,
        ScheduledPayload {
            schedule_id: schedule_id.clone(),
            kind: ScheduleKind::Declarative,
            timestamp: occurrence,
            last_timestamp: schedule.last_run_at,
            external_id: None,
            timezone: "UTC".into(),
            upcoming,
        },
        "{:#}",
        run.raw
    );

    // It is the scheduler's run: superjson stored, the schedule on retrieve.
    let retrieved = app
        .server
        .retrieve_as(&app.dev_key, &run_id, CURRENT_API_VERSION)
        .await;
    assert_eq!(retrieved.body["schedule"]["id"], json!(schedule_id));
    assert_eq!(
        retrieved.body["payload"]["timestamp"],
        Value::String(runnel_core::view::iso(occurrence))
    );

    let _ = shutdown.send(());
    let summary = worker.await.expect("the worker ends");
    assert_eq!(summary.failed, 0);
}
