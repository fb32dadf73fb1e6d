//! The trigger.dev dev CLI's run protocol (issue 12; reference
//! `trigger-dev-cli-protocol.md` §2.2, §4), driven over HTTP as the CLI drives it: a
//! manifest registered as a version, runs dequeued with their `PENDING_EXECUTING`
//! snapshot, attempts started and completed by snapshot, a child triggered with
//! `resumeParentOnCompletion` blocking its parent until the child's end resumes it with
//! the child's output, a batch's items resuming the parent each with its index, and the
//! task process's retry decision honoured.

use reqwest::{Method, StatusCode};
use runnel_testkit::{send, Api, Reply, TestApp};
use serde_json::{json, Value};

/// The CLI's engine calls send JSON as text/plain.
async fn post(server: &Api, key: &str, path: &str, body: &Value) -> Reply {
    send(
        server
            .request(Method::POST, path)
            .bearer_auth(key)
            .header("content-type", "text/plain;charset=UTF-8")
            .body(body.to_string()),
    )
    .await
}

async fn get(server: &Api, key: &str, path: &str) -> Reply {
    send(server.request(Method::GET, path).bearer_auth(key)).await
}

fn manifest(project: &str) -> (String, Value) {
    let tasks = json!([
        {"id": "parent", "filePath": "src/trigger/parent.ts", "exportName": "parent",
         "retry": {"maxAttempts": 1}},
        {"id": "child", "filePath": "src/trigger/child.ts", "exportName": "child",
         "retry": {"maxAttempts": 3, "minTimeoutInMs": 100, "factor": 2}, "maxDuration": 60},
    ]);
    (
        format!("/api/v1/projects/{project}/background-workers"),
        json!({
            "localOnly": true,
            "metadata": {"packageVersion": "4.8.3", "contentHash": "abc123", "tasks": tasks,
                         "queues": [], "sourceFiles": []},
            "engine": "V2", "supportsLazyAttempts": true
        }),
    )
}

async fn register(server: &Api, key: &str) -> (String, String) {
    let (path, body) = manifest("proj_x");
    let reply = post(server, key, &path, &body).await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    let id = reply.body["id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("worker_"), "{reply:?}");
    assert_eq!(reply.body["contentHash"], "abc123");
    (id, reply.body["version"].as_str().unwrap().to_owned())
}

/// Dequeues until `run` comes out; returns its message.
async fn dequeue(server: &Api, key: &str, worker: &str, run: &str) -> Value {
    for _ in 0..50 {
        let reply = post(
            server,
            key,
            "/engine/v1/dev/dequeue",
            &json!({"currentWorker": worker, "oldWorkers": []}),
        )
        .await;
        assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
        if let Some(m) = reply.body["dequeuedMessages"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["run"]["friendlyId"] == run)
        {
            return m.clone();
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("{run} was never dequeued");
}

async fn start(server: &Api, key: &str, run: &str, snapshot: &str) -> Reply {
    post(
        server,
        key,
        &format!("/engine/v1/dev/runs/{run}/snapshots/{snapshot}/attempts/start"),
        &json!({"isWarmStart": false}),
    )
    .await
}

async fn complete(server: &Api, key: &str, run: &str, snapshot: &str, completion: Value) -> Reply {
    post(
        server,
        key,
        &format!("/engine/v1/dev/runs/{run}/snapshots/{snapshot}/attempts/complete"),
        &json!({ "completion": completion }),
    )
    .await
}

async fn latest(server: &Api, key: &str, run: &str) -> Value {
    let reply = get(
        server,
        key,
        &format!("/engine/v1/dev/runs/{run}/snapshots/latest"),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    reply.body["execution"].clone()
}

/// Dequeues until every run of `runs` came out; their messages, in `runs`' order (a
/// dequeue hands out every run it can, as the CLI expects).
async fn dequeue_all(server: &Api, key: &str, worker: &str, runs: &[String]) -> Vec<Value> {
    let mut got: Vec<Option<Value>> = vec![None; runs.len()];
    for _ in 0..50 {
        let reply = post(
            server,
            key,
            "/engine/v1/dev/dequeue",
            &json!({"currentWorker": worker, "oldWorkers": []}),
        )
        .await;
        for m in reply.body["dequeuedMessages"].as_array().unwrap() {
            if let Some(i) = runs
                .iter()
                .position(|r| m["run"]["friendlyId"] == r.as_str())
            {
                got[i] = Some(m.clone());
            }
        }
        if got.iter().all(Option::is_some) {
            return got.into_iter().map(Option::unwrap).collect();
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("not every run of {runs:?} was dequeued");
}

/// Starts dequeued `message`'s attempt: (executing snapshot id, start response).
async fn start_message(server: &Api, key: &str, message: &Value) -> (String, Value) {
    let run = message["run"]["friendlyId"].as_str().unwrap();
    let snapshot = message["snapshot"]["friendlyId"].as_str().unwrap();
    let reply = start(server, key, run, snapshot).await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    (
        reply.body["snapshot"]["friendlyId"]
            .as_str()
            .unwrap()
            .to_owned(),
        reply.body.clone(),
    )
}

/// Dequeues and starts `run`: (executing snapshot id, start response).
async fn take(server: &Api, key: &str, worker: &str, run: &str) -> (String, Value) {
    let message = dequeue(server, key, worker, run).await;
    assert_eq!(message["snapshot"]["executionStatus"], "PENDING_EXECUTING");
    assert_eq!(message["backgroundWorker"]["friendlyId"], worker);
    assert_eq!(message["deployment"], json!({}));
    let snapshot = message["snapshot"]["friendlyId"].as_str().unwrap();
    let reply = start(server, key, run, snapshot).await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    assert_eq!(reply.body["snapshot"]["executionStatus"], "EXECUTING");
    (
        reply.body["snapshot"]["friendlyId"]
            .as_str()
            .unwrap()
            .to_owned(),
        reply.body.clone(),
    )
}

fn ok(run: &str, output: &str) -> Value {
    json!({"ok": true, "id": run, "output": output, "outputType": "application/json"})
}

#[tokio::test]
async fn a_child_triggered_and_waited_for_resumes_its_parent_with_its_output() {
    let app = TestApp::start();
    let (server, key) = (&app.server, app.dev_key.as_str());
    let (worker, version) = register(server, key).await;
    let parent = server
        .trigger_new(key, "parent", &json!({"payload": {"n": 1}}))
        .await;
    let (parent_snapshot, started) = take(server, key, &worker, &parent).await;
    let execution = &started["execution"];
    assert_eq!(execution["run"]["id"], parent.as_str());
    assert_eq!(execution["run"]["payload"], r#"{"n":1}"#);
    assert_eq!(execution["run"]["payloadType"], "application/json");
    assert_eq!(execution["run"]["maxAttempts"], 1);
    assert_eq!(execution["task"]["filePath"], "src/trigger/parent.ts");
    assert_eq!(execution["environment"]["type"], "DEVELOPMENT");
    assert_eq!(execution["attempt"]["number"], 1);
    assert_eq!(started["run"]["attemptNumber"], 1);
    assert!(started["envVars"]["TRIGGER_OTEL_EXPORTER_OTLP_ENDPOINT"]
        .as_str()
        .unwrap()
        .ends_with("/otel"));

    // The task process triggers the child and waits for it.
    let child = send(server.trigger_request(key, "child").json(&json!({
        "payload": "{\"json\":{\"n\":2}}",
        "options": {"payloadType": "application/super+json", "parentRunId": parent,
                    "resumeParentOnCompletion": true, "lockToVersion": version}
    })))
    .await
    .assert_new_run();
    let waiting = latest(server, key, &parent).await;
    assert_eq!(
        waiting["snapshot"]["executionStatus"],
        "EXECUTING_WITH_WAITPOINTS"
    );
    assert_eq!(waiting["run"]["status"], "WAITING_TO_RESUME");
    assert_eq!(waiting["completedWaitpoints"], json!([]));
    let v4 = server.retrieve_as(key, &parent, "2025-07-16").await;
    assert_eq!(v4.body["status"], "WAITING", "{v4:?}");

    // A heartbeat on the parent's older snapshot still counts while it waits.
    let beat = post(
        server,
        key,
        &format!("/engine/v1/dev/runs/{parent}/snapshots/{parent_snapshot}/heartbeat"),
        &json!({"cpu": 0, "memory": 0}),
    )
    .await;
    assert_eq!(beat.body, json!({"ok": true}));

    let (child_snapshot, child_started) = take(server, key, &worker, &child).await;
    assert_eq!(
        child_started["execution"]["run"]["parentTaskRunId"],
        parent.as_str()
    );
    assert_eq!(
        child_started["execution"]["run"]["payloadType"],
        "application/super+json"
    );
    let done = complete(
        server,
        key,
        &child,
        &child_snapshot,
        json!({"ok": true, "id": child, "output": "{\"json\":42}", "outputType": "application/super+json"}),
    )
    .await;
    assert_eq!(done.status, StatusCode::OK, "{done:?}");
    assert_eq!(done.body["result"]["attemptStatus"], "RUN_FINISHED");
    assert_eq!(
        done.body["result"]["snapshot"]["executionStatus"],
        "FINISHED"
    );

    let resumed = latest(server, key, &parent).await;
    assert_eq!(
        resumed["snapshot"]["executionStatus"], "EXECUTING",
        "{resumed}"
    );
    assert_eq!(resumed["run"]["attemptNumber"], 1);
    let completed = resumed["completedWaitpoints"].as_array().unwrap();
    assert_eq!(completed.len(), 1, "{resumed}");
    assert_eq!(completed[0]["type"], "RUN");
    assert_eq!(
        completed[0]["completedByTaskRun"]["friendlyId"],
        child.as_str()
    );
    assert!(completed[0]["completedByTaskRun"].get("batch").is_none());
    assert_eq!(completed[0]["output"], "{\"json\":42}");
    assert_eq!(completed[0]["outputType"], "application/super+json");
    assert_eq!(completed[0]["outputIsError"], false);

    // Completing on the resumed snapshot ends the parent.
    let resumed_snapshot = resumed["snapshot"]["friendlyId"].as_str().unwrap();
    let done = complete(server, key, &parent, resumed_snapshot, ok(&parent, "7")).await;
    assert_eq!(
        done.body["result"]["attemptStatus"], "RUN_FINISHED",
        "{done:?}"
    );
    let run = server.run(key, &parent).await;
    assert_eq!(run["status"], "COMPLETED");
    assert_eq!(run["output"], 7);
    assert_eq!(run["relatedRuns"]["children"][0]["id"], child.as_str());
}

#[tokio::test]
async fn a_batch_waited_for_resumes_its_parent_with_every_item_by_index() {
    let app = TestApp::start();
    let (server, key) = (&app.server, app.dev_key.as_str());
    let (worker, _) = register(server, key).await;
    let parent = server.trigger_new(key, "parent", &json!({})).await;
    take(server, key, &worker, &parent).await;
    let batch = send(
        server
            .request(Method::POST, "/api/v3/batches")
            .bearer_auth(key)
            .json(
                &json!({"runCount": 2, "taskIdentifiers": ["child"], "parentRunId": parent,
                          "resumeParentOnCompletion": true}),
            ),
    )
    .await;
    assert!(batch.status.is_success(), "{batch:?}");
    let batch_id = batch.body["id"].as_str().unwrap().to_owned();
    let waiting = latest(server, key, &parent).await;
    assert_eq!(
        waiting["snapshot"]["executionStatus"],
        "EXECUTING_WITH_WAITPOINTS"
    );
    let lines = [0, 1]
        .map(|i| {
            json!({"index": i, "task": "child", "payload": format!("{{\"i\":{i}}}"),
                        "options": {"payloadType": "application/json"}})
            .to_string()
        })
        .join("\n");
    let items = send(
        server
            .request(Method::POST, &format!("/api/v3/batches/{batch_id}/items"))
            .bearer_auth(key)
            .header("content-type", "application/x-ndjson")
            .body(lines),
    )
    .await;
    assert_eq!(items.body["sealed"], true, "{items:?}");
    let detail = send(
        server
            .request(Method::GET, &format!("/api/v1/batches/{batch_id}"))
            .bearer_auth(key),
    )
    .await;
    let runs: Vec<String> = detail.body["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(runs.len(), 2, "{detail:?}");
    // Item 1 fails for good (no retry from the task process); item 0 succeeds.
    let messages = dequeue_all(server, key, &worker, &runs).await;
    let (s0, _) = start_message(server, key, &messages[0]).await;
    let (s1, _) = start_message(server, key, &messages[1]).await;
    let failed = complete(
        server,
        key,
        &runs[1],
        &s1,
        json!({"ok": false, "id": runs[1],
               "error": {"type": "BUILT_IN_ERROR", "name": "Error", "message": "boom", "stackTrace": ""}}),
    )
    .await;
    assert_eq!(
        failed.body["result"]["attemptStatus"], "RUN_FINISHED",
        "{failed:?}"
    );
    let still = latest(server, key, &parent).await;
    assert_eq!(
        still["snapshot"]["executionStatus"],
        "EXECUTING_WITH_WAITPOINTS"
    );
    complete(server, key, &runs[0], &s0, ok(&runs[0], "\"zero\"")).await;

    let resumed = latest(server, key, &parent).await;
    assert_eq!(
        resumed["snapshot"]["executionStatus"], "EXECUTING",
        "{resumed}"
    );
    let mut completed = resumed["completedWaitpoints"].as_array().unwrap().clone();
    completed.sort_by_key(|w| w["index"].as_u64());
    assert_eq!(completed.len(), 2, "{resumed}");
    for (i, w) in completed.iter().enumerate() {
        assert_eq!(w["index"], i, "{w}");
        assert_eq!(w["completedByTaskRun"]["friendlyId"], runs[i].as_str());
        assert_eq!(
            w["completedByTaskRun"]["batch"]["friendlyId"],
            batch_id.as_str()
        );
    }
    assert_eq!(completed[0]["output"], "\"zero\"");
    assert_eq!(completed[0]["outputIsError"], false);
    assert_eq!(completed[1]["outputIsError"], true);
    let error: Value = serde_json::from_str(completed[1]["output"].as_str().unwrap()).unwrap();
    assert_eq!(error["message"], "boom");
}

#[tokio::test]
async fn the_task_process_retry_decision_requeues_the_run_and_a_stale_snapshot_is_a_conflict() {
    let app = TestApp::start();
    let (server, key) = (&app.server, app.dev_key.as_str());
    let (worker, _) = register(server, key).await;
    let run = server.trigger_new(key, "child", &json!({})).await;
    let message = dequeue(server, key, &worker, &run).await;
    let pending = message["snapshot"]["friendlyId"]
        .as_str()
        .unwrap()
        .to_owned();
    let started = start(server, key, &run, &pending).await;
    let executing = started.body["snapshot"]["friendlyId"]
        .as_str()
        .unwrap()
        .to_owned();
    // Starting again on the old snapshot: it is no longer the latest.
    let again = start(server, key, &run, &pending).await;
    assert_eq!(again.status, StatusCode::CONFLICT, "{again:?}");

    let failed = complete(
        server,
        key,
        &run,
        &executing,
        json!({"ok": false, "id": run, "retry": {"timestamp": 0, "delay": 200},
               "error": {"type": "BUILT_IN_ERROR", "name": "Error", "message": "flaky", "stackTrace": ""}}),
    )
    .await;
    assert_eq!(
        failed.body["result"]["attemptStatus"], "RETRY_QUEUED",
        "{failed:?}"
    );
    assert_eq!(
        failed.body["result"]["snapshot"]["executionStatus"],
        "QUEUED"
    );
    assert_eq!(failed.body["result"]["run"]["attemptNumber"], 1);
    // The retry comes back through the queue as attempt 2.
    let (snapshot, started) = take(server, key, &worker, &run).await;
    assert_eq!(started["run"]["attemptNumber"], 2);
    assert_eq!(started["execution"]["attempt"]["number"], 2);
    complete(server, key, &run, &snapshot, ok(&run, "1")).await;
    let done = server.run(key, &run).await;
    assert_eq!(done["status"], "COMPLETED");
    assert_eq!(done["attemptCount"], 2);
}

#[tokio::test]
async fn a_run_the_task_process_gives_up_on_fails_without_retrying_and_other_keys_are_refused() {
    let app = TestApp::start();
    let (server, key) = (&app.server, app.dev_key.as_str());
    let (worker, _) = register(server, key).await;
    let run = server.trigger_new(key, "child", &json!({})).await;
    let (snapshot, _) = take(server, key, &worker, &run).await;
    // No `retry`: the process ruled a retry out (an AbortTaskRunError, say).
    let failed = complete(
        server,
        key,
        &run,
        &snapshot,
        json!({"ok": false, "id": run, "skippedRetrying": true,
               "error": {"type": "STRING_ERROR", "raw": "aborted"}}),
    )
    .await;
    assert_eq!(
        failed.body["result"]["attemptStatus"], "RUN_FINISHED",
        "{failed:?}"
    );
    let done = server.run(key, &run).await;
    assert_eq!(done["status"], "FAILED");
    assert_eq!(done["attemptCount"], 1);
    assert_eq!(done["error"]["message"], "aborted", "{done}");

    let prod = app.keys_create("prod");
    let refused = post(
        server,
        &prod,
        "/engine/v1/dev/dequeue",
        &json!({"currentWorker": worker}),
    )
    .await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN, "{refused:?}");
}

#[tokio::test]
async fn cancelling_a_waiting_parent_finishes_it_and_cancels_its_child() {
    let app = TestApp::start();
    let (server, key) = (&app.server, app.dev_key.as_str());
    let (worker, _) = register(server, key).await;
    let parent = server.trigger_new(key, "parent", &json!({})).await;
    take(server, key, &worker, &parent).await;
    let child = send(server.trigger_request(key, "child").json(&json!({
        "payload": "{}", "options": {"parentRunId": parent, "resumeParentOnCompletion": true}
    })))
    .await
    .assert_new_run();
    take(server, key, &worker, &child).await;
    let canceled = server.cancel(key, &parent).await;
    assert_eq!(canceled.status, StatusCode::OK, "{canceled:?}");
    assert_eq!(
        latest(server, key, &parent).await["snapshot"]["executionStatus"],
        "FINISHED"
    );
    assert_eq!(
        latest(server, key, &child).await["snapshot"]["executionStatus"],
        "FINISHED"
    );
    assert_eq!(server.run(key, &child).await["status"], "CANCELED");
    assert_eq!(server.run(key, &parent).await["status"], "CANCELED");
}

/// The dev CLI and large packets (issue 13): a stored payload reaches the task process as
/// its storage path (it imports it through `GET /api/v1/runs/{id}/packets/payload`); an
/// output the process uploaded itself is kept as `application/store` once it exists; a
/// large inline output is offloaded with its content type.
#[tokio::test]
async fn dev_attempts_take_stored_payloads_and_hand_back_stored_outputs() {
    let app = TestApp::start();
    let (server, key) = (&app.server, app.dev_key.as_str());
    let (worker, _) = register(server, key).await;
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let download = |url: String| {
        let client = client.clone();
        async move {
            let response = client.get(url).send().await.unwrap();
            let content_type = response.headers()["content-type"]
                .to_str()
                .unwrap()
                .to_owned();
            (content_type, response.text().await.unwrap())
        }
    };

    let payload = json!({"blob": "b".repeat(600 * 1024)});
    let run = server
        .trigger_new(key, "child", &json!({"payload": payload}))
        .await;
    let (snapshot, started) = take(server, key, &worker, &run).await;
    let execution = &started["execution"]["run"];
    assert_eq!(execution["payload"], format!("{run}/payload.json"));
    assert_eq!(execution["payloadType"], "application/store");
    let packet = get(server, key, &format!("/api/v1/runs/{run}/packets/payload")).await;
    let (content_type, text) = download(packet.body["presignedUrl"].as_str().unwrap().into()).await;
    assert_eq!(content_type, "application/json");
    assert_eq!(serde_json::from_str::<Value>(&text).unwrap(), payload);

    // An output path where nothing is stored is refused, naming it.
    let missing = complete(
        server,
        key,
        &run,
        &snapshot,
        json!({"ok": true, "id": run, "output": "nothing/here.json", "outputType": "application/store"}),
    )
    .await;
    missing.assert_error(
        StatusCode::BAD_REQUEST,
        "completion.output: no object is stored at nothing/here.json",
    );
    // The process uploads its output, then completes with the path.
    let path = format!("{run}/output-mine.json");
    let presigned = send(
        server
            .request(Method::PUT, &format!("/api/v2/packets/{path}"))
            .bearer_auth(key),
    )
    .await;
    let put = client
        .put(presigned.body["presignedUrl"].as_str().unwrap())
        .header("content-type", "application/super+json")
        .body(r#"{"json":{"done":1}}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), StatusCode::OK);
    let done = complete(
        server,
        key,
        &run,
        &snapshot,
        json!({"ok": true, "id": run, "output": path, "outputType": "application/store"}),
    )
    .await;
    assert_eq!(done.status, StatusCode::OK, "{done:?}");
    let body = server.run(key, &run).await;
    assert_eq!(body["status"], "COMPLETED");
    let (content_type, text) = download(body["outputPresignedUrl"].as_str().unwrap().into()).await;
    assert_eq!(
        (content_type.as_str(), text.as_str()),
        ("application/super+json", r#"{"json":{"done":1}}"#)
    );

    // A large inline output is offloaded, keeping its type.
    let run = server
        .trigger_new(key, "child", &json!({"payload": 1}))
        .await;
    let (snapshot, _) = take(server, key, &worker, &run).await;
    let big = json!({"json": {"o": "o".repeat(600 * 1024)}}).to_string();
    let done = complete(
        server,
        key,
        &run,
        &snapshot,
        json!({"ok": true, "id": run, "output": big, "outputType": "application/super+json"}),
    )
    .await;
    assert_eq!(done.status, StatusCode::OK, "{done:?}");
    let body = server.run(key, &run).await;
    assert!(body.get("output").is_none());
    let (content_type, text) = download(body["outputPresignedUrl"].as_str().unwrap().into()).await;
    assert_eq!(
        (content_type.as_str(), text),
        ("application/super+json", big)
    );
}
