//! Large payloads and outputs in object storage (issue 13): the packet routes hand out
//! presigned URLs, the server's own blob URLs move the bytes (streamed, signed, expiring,
//! bound to their method), triggers take `application/store` payloads, and inline
//! payloads and outputs over the threshold are offloaded by the server and come back from
//! retrieve as URLs.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use runnel_core::key::EnvironmentKind;
use runnel_core::run::Packet;
use runnel_core::RunId;
use runnel_testkit::{send, BlobConfig, BlobLocation, Server, TestApp};
use serde_json::{json, Value};

fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

/// `PUT /api/v2/packets/{path}` (the SDK percent-encodes the whole path into one segment).
async fn presign_upload(server: &Server, key: &str, path: &str) -> (StatusCode, Value) {
    let encoded = path.replace('/', "%2F");
    let reply = send(
        server
            .request(Method::PUT, &format!("/api/v2/packets/{encoded}"))
            .bearer_auth(key),
    )
    .await;
    (reply.status, reply.body)
}

async fn upload(server: &Server, key: &str, path: &str, body: Vec<u8>, content_type: &str) {
    let (status, presigned) = presign_upload(server, key, path).await;
    assert_eq!(status, StatusCode::OK, "{presigned}");
    assert_eq!(presigned["storagePath"], path);
    let url = presigned["presignedUrl"].as_str().unwrap();
    let put = client()
        .put(url)
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), StatusCode::OK, "{:?}", put.text().await);
}

/// Downloads a URL: status, content type, bytes.
async fn download(url: &str) -> (StatusCode, String, Vec<u8>) {
    let response = client().get(url).send().await.unwrap();
    let status = response.status();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (
        status,
        content_type,
        response.bytes().await.unwrap().to_vec(),
    )
}

async fn stored_payload(app: &TestApp, run: &str) -> Packet {
    let store = app.server.store();
    let run = RunId::parse(run).unwrap();
    app.server.block_on(async move {
        let env = store
            .environment_get(EnvironmentKind::Dev)
            .await
            .unwrap()
            .unwrap();
        store.run_get(&env.id, &run).await.unwrap().unwrap().payload
    })
}

fn one_byte_changed(url: &str) -> String {
    let at = url.find("signature=").unwrap() + "signature=".len() + 3;
    let mut bytes = url.as_bytes().to_vec();
    bytes[at] = if bytes[at] == b'a' { b'b' } else { b'a' };
    String::from_utf8(bytes).unwrap()
}

#[tokio::test]
async fn an_uploaded_payload_triggers_a_run_and_retrieve_answers_a_url_to_it() {
    let app = TestApp::start();
    let (server, key) = (&app.server, app.dev_key.as_str());
    let path = "trigger/big-task/1700000000-abc/payload.json";
    let data = format!("{{\"json\":{{\"text\":\"{}\"}}}}", "x".repeat(200_000));
    upload(
        server,
        key,
        path,
        data.clone().into_bytes(),
        "application/super+json",
    )
    .await;

    let run = server
        .trigger_new(
            key,
            "big-task",
            &json!({"payload": path, "options": {"payloadType": "application/store", "payloadSize": data.len()}}),
        )
        .await;
    let body = server.run(key, &run).await;
    assert!(body.get("payload").is_none(), "{}", body["payload"]);
    let url = body["payloadPresignedUrl"].as_str().expect("a payload URL");
    let response = client().get(url).send().await.unwrap();
    assert_eq!(response.headers()["x-content-type-options"], "nosniff");
    let (status, content_type, bytes) = download(url).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(content_type, "application/super+json");
    assert_eq!(bytes, data.as_bytes());
    assert!(body.get("outputPresignedUrl").is_none());

    // The run's packet URL (what the SDK's import asks first); no output is stored.
    let packet = send(
        server
            .request(Method::GET, &format!("/api/v1/runs/{run}/packets/payload"))
            .bearer_auth(key),
    )
    .await;
    assert_eq!(packet.status, StatusCode::OK, "{packet:?}");
    let (_, _, again) = download(packet.body["presignedUrl"].as_str().unwrap()).await;
    assert_eq!(again, data.as_bytes());
    let output = send(
        server
            .request(Method::GET, &format!("/api/v1/runs/{run}/packets/output"))
            .bearer_auth(key),
    )
    .await;
    assert_eq!(output.status, StatusCode::NOT_FOUND, "{output:?}");
    // A public access token may ask for its own run's packet, not another run's.
    let token = server
        .trigger(key, "big-task", &json!({"payload": 1}))
        .await;
    let jwt = token.headers["x-trigger-jwt"].to_str().unwrap().to_owned();
    let own_token = server
        .trigger(
            key,
            "big-task",
            &json!({"payload": path, "options": {"payloadType": "application/store"}}),
        )
        .await;
    let own = own_token.run_id();
    let own_jwt = own_token.headers["x-trigger-jwt"]
        .to_str()
        .unwrap()
        .to_owned();
    let by_token = send(
        server
            .request(Method::GET, &format!("/api/v1/runs/{own}/packets/payload"))
            .bearer_auth(&own_jwt),
    )
    .await;
    assert_eq!(by_token.status, StatusCode::OK, "{by_token:?}");
    let refused = send(
        server
            .request(Method::GET, &format!("/api/v1/runs/{own}/packets/payload"))
            .bearer_auth(&jwt),
    )
    .await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN, "{refused:?}");

    // The legacy path route presigns a GET of the same object.
    let legacy = send(
        server
            .request(
                Method::GET,
                &format!("/api/v1/packets/{}", path.replace('/', "%2F")),
            )
            .bearer_auth(key),
    )
    .await;
    assert_eq!(legacy.status, StatusCode::OK, "{legacy:?}");
    let (_, _, legacy_bytes) = download(legacy.body["presignedUrl"].as_str().unwrap()).await;
    assert_eq!(legacy_bytes, data.as_bytes());

    // The database holds the path, not the data.
    let stored = stored_payload(&app, &run).await;
    assert_eq!(
        (stored.data.as_deref(), stored.data_type.as_str()),
        (Some(path), Packet::STORE)
    );

    // Replay points at the same object.
    let replay = send(
        server
            .request(Method::POST, &format!("/api/v1/runs/{run}/replay"))
            .bearer_auth(key)
            .json(&json!({})),
    )
    .await;
    assert_eq!(replay.status, StatusCode::OK, "{replay:?}");
    let replayed = server.run(key, replay.body["id"].as_str().unwrap()).await;
    let (_, _, replayed_bytes) = download(replayed["payloadPresignedUrl"].as_str().unwrap()).await;
    assert_eq!(replayed_bytes, data.as_bytes());
}

#[tokio::test]
async fn store_payloads_must_name_an_object_and_paths_are_checked() {
    let app = TestApp::start();
    let (server, key) = (&app.server, app.dev_key.as_str());
    let missing = server
        .trigger(
            key,
            "t",
            &json!({"payload": "nowhere/payload.json", "options": {"payloadType": "application/store"}}),
        )
        .await;
    assert_eq!(
        missing.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{missing:?}"
    );
    assert!(
        missing.body["error"]
            .as_str()
            .unwrap()
            .contains("nowhere/payload.json"),
        "{missing:?}"
    );
    // A batch item likewise, naming the item.
    let batch = send(
        server
            .request(Method::POST, "/api/v1/tasks/batch")
            .bearer_auth(key)
            .json(&json!({"items": [{"task": "t", "payload": "nowhere/p.json", "options": {"payloadType": "application/store"}}]})),
    )
    .await;
    assert_eq!(batch.status, StatusCode::UNPROCESSABLE_ENTITY, "{batch:?}");
    assert!(
        batch.body["error"]
            .as_str()
            .unwrap()
            .contains("nowhere/p.json"),
        "{batch:?}"
    );
    for bad in ["a%2F..%2Fb", "a%2F%2Fb", "a%00b", &"a".repeat(1100)] {
        let (status, body) = presign_upload(server, key, bad).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
        assert!(
            body["error"].as_str().unwrap().starts_with("path:"),
            "{body}"
        );
    }
    let traversal = server
        .trigger(
            key,
            "t",
            &json!({"payload": "../x", "options": {"payloadType": "application/store"}}),
        )
        .await;
    traversal.assert_error(
        StatusCode::BAD_REQUEST,
        "payload: must not have `.` or `..` segments",
    );
}

#[tokio::test]
async fn large_inline_payloads_and_outputs_are_offloaded_by_the_server() {
    let app = TestApp::start();
    let (server, key) = (&app.server, app.dev_key.as_str());
    let worker = server.register_worker(key, &["big"]).await;
    let payload = json!({"blob": "p".repeat(2 * 1024 * 1024)});
    let run = server
        .trigger_new(key, "big", &json!({"payload": payload}))
        .await;

    let stored = stored_payload(&app, &run).await;
    assert_eq!(stored.data_type, Packet::STORE);
    assert_eq!(
        stored.data.as_deref(),
        Some(format!("{run}/payload.json").as_str())
    );
    let body = server.run(key, &run).await;
    assert!(body.get("payload").is_none());
    let (status, content_type, bytes) =
        download(body["payloadPresignedUrl"].as_str().unwrap()).await;
    assert_eq!(
        (status, content_type.as_str()),
        (StatusCode::OK, "application/json")
    );
    assert_eq!(serde_json::from_slice::<Value>(&bytes).unwrap(), payload);

    // The worker receives the storage path and a URL to it.
    let dequeued = server
        .worker_call(
            key,
            &worker,
            "dequeue",
            &json!({"maxRuns": 1, "waitMs": 5000}),
        )
        .await;
    let leased = &dequeued.body["runs"][0];
    assert_eq!(leased["runId"], run.as_str(), "{dequeued:?}");
    assert_eq!(leased["payload"], format!("{run}/payload.json"));
    assert_eq!(leased["payloadType"], "application/store");
    let (_, _, leased_bytes) = download(leased["payloadPresignedUrl"].as_str().unwrap()).await;
    assert_eq!(leased_bytes, bytes);

    // A 2 MiB output is offloaded too.
    let attempt = leased["attemptId"].as_str().unwrap();
    server
        .worker_call(key, &worker, "start", &json!({"attemptIds": [attempt]}))
        .await;
    let output = json!({"result": "o".repeat(2 * 1024 * 1024)});
    let completed = server
        .worker_call(
            key,
            &worker,
            "complete",
            &json!({"completions": [{"attemptId": attempt, "outcome": "success", "output": output}]}),
        )
        .await;
    assert_eq!(
        completed.body["results"][0]["accepted"], true,
        "{completed:?}"
    );
    let body = server.run(key, &run).await;
    assert!(body.get("output").is_none());
    let (_, content_type, out) = download(body["outputPresignedUrl"].as_str().unwrap()).await;
    assert_eq!(content_type, "application/json");
    assert_eq!(serde_json::from_slice::<Value>(&out).unwrap(), output);
    let result = send(
        server
            .request(Method::GET, &format!("/api/v1/runs/{run}/result"))
            .bearer_auth(key),
    )
    .await;
    assert_eq!(result.body["outputType"], "application/store", "{result:?}");
    assert_eq!(
        result.body["output"],
        format!("{run}/output-{attempt}.json")
    );
    let (_, _, via_result) = download(result.body["outputPresignedUrl"].as_str().unwrap()).await;
    assert_eq!(via_result, out);

    // Small ones stay inline.
    let small = server
        .trigger_new(key, "big", &json!({"payload": {"a": 1}}))
        .await;
    let body = server.run(key, &small).await;
    assert_eq!(body["payload"], json!({"a": 1}));
    assert!(body.get("payloadPresignedUrl").is_none());
}

#[tokio::test]
async fn a_worker_may_hand_back_an_output_it_uploaded_itself() {
    let app = TestApp::start();
    let (server, key) = (&app.server, app.dev_key.as_str());
    let worker = server.register_worker(key, &["w"]).await;
    server.trigger_new(key, "w", &json!({"payload": 1})).await;
    let (run, attempt) = server.dequeue_one(key, &worker).await;
    server
        .worker_call(key, &worker, "start", &json!({"attemptIds": [attempt]}))
        .await;
    let path = format!("{run}/worker-output.json");
    upload(
        server,
        key,
        &path,
        b"{\"done\":true}".to_vec(),
        "application/json",
    )
    .await;
    // An unknown outputType, or a store output that is not a path, is refused whole.
    for (body, message) in [
        (
            json!({"completions": [{"attemptId": attempt, "outcome": "success", "output": path, "outputType": "text/csv"}]}),
            "completions[0].outputType: must be application/json or application/store",
        ),
        (
            json!({"completions": [{"attemptId": attempt, "outcome": "success", "output": 1, "outputType": "application/store"}]}),
            "completions[0].output: must be a storage path (a string) when outputType is application/store",
        ),
    ] {
        let refused = server.worker_call(key, &worker, "complete", &body).await;
        refused.assert_error(StatusCode::BAD_REQUEST, message);
    }
    let completed = server
        .worker_call(
            key,
            &worker,
            "complete",
            &json!({"completions": [{"attemptId": attempt, "outcome": "success", "output": path, "outputType": "application/store"}]}),
        )
        .await;
    assert_eq!(
        completed.body["results"][0]["runStatus"], "COMPLETED",
        "{completed:?}"
    );
    let body = server.run(key, &run).await;
    let (_, content_type, out) = download(body["outputPresignedUrl"].as_str().unwrap()).await;
    assert_eq!(
        (content_type.as_str(), out.as_slice()),
        ("application/json", &b"{\"done\":true}"[..])
    );

    // An output path where nothing is stored fails the attempt, naming it.
    server.trigger_new(key, "w", &json!({"payload": 2})).await;
    let (run, attempt) = server.dequeue_one(key, &worker).await;
    server
        .worker_call(key, &worker, "start", &json!({"attemptIds": [attempt]}))
        .await;
    let completed = server
        .worker_call(
            key,
            &worker,
            "complete",
            &json!({"completions": [{"attemptId": attempt, "outcome": "success", "output": "nothing/here.json", "outputType": "application/store"}]}),
        )
        .await;
    assert_eq!(
        completed.body["results"][0]["accepted"], true,
        "{completed:?}"
    );
    let body = server.run(key, &run).await;
    assert_ne!(body["status"], "COMPLETED", "{body}");
    assert!(body.get("outputPresignedUrl").is_none());
}

#[tokio::test]
async fn blob_urls_expire_are_bound_to_their_method_and_signature_and_cap_the_size() {
    let app = TestApp::start_with_blobs(|dir| BlobConfig {
        location: BlobLocation::Local(dir),
        url_ttl: Duration::from_secs(2),
        max_bytes: 1024,
        ..BlobConfig::default()
    });
    let (server, key) = (&app.server, app.dev_key.as_str());
    let path = "x/p.json";
    let (_, presigned) = presign_upload(server, key, path).await;
    let put_url = presigned["presignedUrl"].as_str().unwrap().to_owned();
    // A PUT URL cannot read.
    let (status, _, body) = download(&put_url).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(serde_json::from_slice::<Value>(&body).unwrap()["error"].is_string());
    // One byte of the signature changed.
    let altered = client()
        .put(one_byte_changed(&put_url))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(altered.status(), StatusCode::FORBIDDEN);
    let put = client()
        .put(&put_url)
        .body("{\"a\":1}")
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), StatusCode::OK);

    let get = send(
        server
            .request(Method::GET, &format!("/api/v1/packets/{path}"))
            .bearer_auth(key),
    )
    .await;
    let get_url = get.body["presignedUrl"].as_str().unwrap().to_owned();
    let (status, content_type, bytes) = download(&get_url).await;
    assert_eq!(status, StatusCode::OK);
    // Uploaded without a content type: kept as what it is, bytes.
    assert_eq!(content_type, "application/octet-stream");
    assert_eq!(bytes, b"{\"a\":1}");
    // A GET URL cannot write.
    let write = client().put(&get_url).body("{}").send().await.unwrap();
    assert_eq!(write.status(), StatusCode::FORBIDDEN);
    let (status, _, _) = download(&one_byte_changed(&get_url)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    // Altering the key or the expiry breaks the signature.
    let (status, _, _) = download(&get_url.replace("p.json", "q.json")).await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // Over the cap: 413, and nothing is stored.
    let (_, presigned) = presign_upload(server, key, "x/big.json").await;
    let big_url = presigned["presignedUrl"].as_str().unwrap();
    let big = client()
        .put(big_url)
        .body(vec![b'z'; 2048])
        .send()
        .await
        .unwrap();
    assert_eq!(big.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let refused = server
        .trigger(
            key,
            "t",
            &json!({"payload": "x/big.json", "options": {"payloadType": "application/store"}}),
        )
        .await;
    assert_eq!(
        refused.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{refused:?}"
    );
    // The staging file of the aborted upload is gone too.
    let mut leftovers = Vec::new();
    let mut dirs = vec![app.data_dir().join("blobs")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(dir).unwrap() {
            let entry = entry.unwrap();
            if entry.file_type().unwrap().is_dir() {
                dirs.push(entry.path());
            } else if entry.file_name().to_string_lossy().contains("big.json") {
                leftovers.push(entry.path());
            }
        }
    }
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // After the lifetime the URL is refused.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let (status, _, body) = download(&get_url).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(
        serde_json::from_slice::<Value>(&body).unwrap(),
        json!({"error": "the URL has expired"})
    );
}

#[tokio::test]
async fn another_environment_cannot_reach_this_ones_packets() {
    let app = TestApp::start();
    let (server, dev) = (&app.server, app.dev_key.as_str());
    let prod = app.keys_create("prod");
    let path = "shared/name.json";
    upload(
        server,
        dev,
        path,
        b"\"dev secret\"".to_vec(),
        "application/json",
    )
    .await;
    let run = server
        .trigger_new(
            dev,
            "t",
            &json!({"payload": path, "options": {"payloadType": "application/store"}}),
        )
        .await;

    // The same path in prod names prod's own (absent) object.
    let refused = server
        .trigger(
            &prod,
            "t",
            &json!({"payload": path, "options": {"payloadType": "application/store"}}),
        )
        .await;
    assert_eq!(
        refused.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{refused:?}"
    );
    let url = send(
        server
            .request(Method::GET, &format!("/api/v1/packets/{path}"))
            .bearer_auth(&prod),
    )
    .await;
    let (status, _, _) = download(url.body["presignedUrl"].as_str().unwrap()).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let packet = send(
        server
            .request(Method::GET, &format!("/api/v1/runs/{run}/packets/payload"))
            .bearer_auth(&prod),
    )
    .await;
    assert_eq!(packet.status, StatusCode::NOT_FOUND, "{packet:?}");
    // Prod's upload to the same path does not touch dev's object.
    upload(
        server,
        &prod,
        path,
        b"\"prod\"".to_vec(),
        "application/json",
    )
    .await;
    let body = server.run(dev, &run).await;
    let (_, _, bytes) = download(body["payloadPresignedUrl"].as_str().unwrap()).await;
    assert_eq!(bytes, b"\"dev secret\"");
}
