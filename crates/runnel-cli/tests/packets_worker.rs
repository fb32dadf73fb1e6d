//! Large payloads and outputs through object storage, end to end with workers: the real
//! `runnel serve`, a Rust SDK worker in this process and an exec worker (`runnel worker
//! --task big-cat=cat`), each handed a 2 MiB payload and returning a 2 MiB output.
//!
//! Each scenario runs twice: on the default local store (the data directory), and on a
//! real S3-compatible server on loopback (`runnel_testkit::S3Server`, which checks
//! request signatures) with `--blob-url s3://…`. Against S3 the tests also look in the
//! bucket, and show that retrieve's URLs are S3-presigned URLs that work, and stop
//! working with one signature byte changed or once expired.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{keys_create, TestApp, Worker as ExecWorker, SERVICE_TIMEOUT};
use runnel_sdk::packets::OFFLOAD_THRESHOLD_BYTES;
use runnel_sdk::{Client, RunInfo, RunStatus, Tasks, TriggerOptions, Worker, WorkerOptions};
use runnel_testkit::S3Server;
use serde_json::{json, Value};
use tokio::sync::oneshot;

const POLL_INTERVAL: Duration = Duration::from_millis(50);
/// 2 MiB of payload text.
const BIG: usize = 2 * 1024 * 1024;

/// A 2 MiB JSON payload whose every byte matters: the text cycles through letters, digits
/// and a two-byte character at a stride that no block boundary lines up with.
fn big_payload(seed: u32) -> Value {
    const ALPHABET: &[char] = &[
        'a', 'b', 'c', 'd', 'e', 'f', 'g', 'h', 'i', 'j', 'k', 'l', 'm', 'n', 'o', 'p', 'q', 'r',
        's', 't', 'u', 'v', 'w', 'x', 'y', 'z', '0', '1', '2', '3', '4', '5', '6', '7', '8', '9',
        'é', '"', '\\', ' ',
    ];
    let text: String = (0..BIG as u32)
        .map(|i| ALPHABET[((i.wrapping_mul(7) + i / 13 + seed) % ALPHABET.len() as u32) as usize])
        .collect();
    json!({"seed": seed, "text": text, "tail": [1, 2.5, null, true, "end"]})
}

/// The server (and, for S3, the bucket it stores in).
struct Setup {
    app: TestApp,
    s3: Option<S3Server>,
}

/// The object-key prefix of the S3 scenarios.
const S3_PREFIX: &str = "runnel-blobs";

impl Setup {
    fn local() -> Setup {
        Setup {
            app: TestApp::start(),
            s3: None,
        }
    }

    /// `extra`: more `serve` arguments (a short presigned-URL lifetime).
    fn s3(extra: &[&str]) -> Setup {
        let s3 = S3Server::start();
        let blob_url = s3.blob_url(S3_PREFIX);
        let mut args = vec!["--blob-url", blob_url.as_str()];
        args.extend_from_slice(extra);
        let app = TestApp::start_with_env(&args, &s3.env());
        Setup { app, s3: Some(s3) }
    }

    fn client(&self, key: &str) -> Client {
        let http = reqwest::Client::builder()
            .no_proxy()
            .build()
            .expect("building the HTTP client");
        Client::with_http_client(http, self.app.server.url.clone(), key.to_owned())
    }
}

/// A Rust task that hands its payload back as its output, so the output is as large as
/// the payload and equal to it only if the task saw the real payload (not a storage path).
fn echo_tasks() -> Tasks {
    Tasks::new().task("big-echo", |payload: Value| async move {
        Ok::<_, String>(json!({"echo": payload}))
    })
}

async fn wait_for_final(client: &Client, run_id: &str) -> RunInfo {
    client
        .wait_for_completion(run_id, POLL_INTERVAL, SERVICE_TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("waiting for {run_id}: {e}"))
}

/// GETs `url` without any key (a presigned URL carries its own authorization).
async fn fetch(url: &str) -> reqwest::Response {
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .get(url)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"))
}

async fn fetch_json(url: &str) -> Value {
    let response = fetch(url).await;
    assert_eq!(response.status(), 200, "GET {url}");
    response.json().await.expect("a JSON body")
}

/// `url` with the first hex digit of its signature (`X-Amz-Signature` or `signature`)
/// replaced by another.
fn change_signature_byte(url: &str) -> String {
    let at = ["X-Amz-Signature=", "signature=", "sig="]
        .iter()
        .find_map(|marker| url.find(marker).map(|at| at + marker.len()))
        .unwrap_or_else(|| panic!("no signature in {url}"));
    let mut bytes = url.as_bytes().to_vec();
    bytes[at] = if bytes[at] == b'0' { b'1' } else { b'0' };
    String::from_utf8(bytes).unwrap()
}

/// Runs both workers' scenarios on `setup` and checks what is common to both stores.
/// Answers the retrieve bodies of the Rust run and the exec run.
async fn round_trip(setup: &Setup) -> (Value, Value) {
    let app = &setup.app;
    let dev = setup.client(&app.dev_key);

    // The Rust worker (dev environment) in this process.
    let registered = Worker::new(
        dev.clone(),
        WorkerOptions {
            name: "packets-e2e".into(),
            version: None,
            concurrency: 2,
            shutdown_grace: Duration::from_secs(5),
            dequeue_wait: Duration::from_millis(500),
        },
    )
    .register(Arc::new(echo_tasks()))
    .await
    .expect("the server accepts the registration");
    let (shutdown, stopped) = oneshot::channel::<()>();
    let rust_worker = tokio::spawn(registered.run(async move {
        let _ = stopped.await;
    }));

    // The exec worker (prod environment): `cat` echoes its stdin, the payload's JSON.
    let prod_key = keys_create(&app.data_dir(), "prod");
    let mut exec_worker = ExecWorker::start(&app.server, &prod_key, &["--task", "big-cat=cat"]);
    exec_worker.registration();
    let prod = setup.client(&prod_key);

    // Rust: triggered through the SDK client, which offloads the payload itself.
    let rust_payload = big_payload(1);
    assert!(serde_json::to_vec(&rust_payload).unwrap().len() > OFFLOAD_THRESHOLD_BYTES);
    let rust_run = dev
        .trigger("big-echo", &rust_payload, TriggerOptions::default())
        .await
        .expect("trigger big-echo");
    // Exec: triggered with the payload inline; the server offloads it.
    let exec_payload = big_payload(2);
    let reply = app
        .server
        .trigger(&prod_key, "big-cat", &json!({"payload": exec_payload}))
        .await;
    let exec_run_id = reply.assert_new_run();

    let rust_done = wait_for_final(&dev, &rust_run.id).await;
    let exec_done = wait_for_final(&prod, &exec_run_id).await;
    let _ = shutdown.send(());
    let summary = tokio::time::timeout(SERVICE_TIMEOUT, rust_worker)
        .await
        .expect("the worker stopped")
        .unwrap();
    assert_eq!(summary.succeeded, 1, "{summary:?}");
    exec_worker.terminate();

    // The tasks saw the payloads themselves and their outputs came back whole:
    // `Client::retrieve` follows outputPresignedUrl.
    assert_eq!(
        rust_done.status,
        RunStatus::Completed,
        "{}",
        rust_done.error_message().unwrap_or_default()
    );
    assert_eq!(rust_done.output, Some(json!({"echo": rust_payload})));
    assert_eq!(
        exec_done.status,
        RunStatus::Completed,
        "{}",
        exec_done.error_message().unwrap_or_default()
    );
    assert_eq!(exec_done.output.as_ref(), Some(&exec_payload));

    // Retrieve serves neither inline, only URLs that download them.
    for (raw, payload, output) in [
        (&rust_done.raw, &rust_payload, json!({"echo": rust_payload})),
        (&exec_done.raw, &exec_payload, exec_payload.clone()),
    ] {
        assert!(raw.get("output").is_none(), "output inline in a retrieve");
        assert!(raw.get("payload").is_none(), "payload inline in a retrieve");
        let output_url = raw["outputPresignedUrl"]
            .as_str()
            .expect("outputPresignedUrl");
        let payload_url = raw["payloadPresignedUrl"]
            .as_str()
            .expect("payloadPresignedUrl");
        assert_eq!(fetch_json(output_url).await, output);
        assert_eq!(&fetch_json(payload_url).await, payload);
        let tampered = fetch(&change_signature_byte(output_url)).await;
        assert!(
            matches!(tampered.status().as_u16(), 401 | 403),
            "a changed signature got {}",
            tampered.status()
        );
    }
    (rust_done.raw, exec_done.raw)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_take_and_return_2_mib_through_the_local_store() {
    let setup = Setup::local();
    let (rust_raw, _) = round_trip(&setup).await;
    // The local store's URLs are the server's own.
    let url = rust_raw["outputPresignedUrl"].as_str().unwrap();
    assert!(url.starts_with(&setup.app.server.url), "{url}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_take_and_return_2_mib_through_s3() {
    let setup = Setup::s3(&[]);
    let s3 = setup.s3.as_ref().unwrap();
    let (rust_raw, exec_raw) = round_trip(&setup).await;

    // The URLs are S3's own presigned URLs (SigV4 in the query), and the objects are in
    // the bucket under the prefix: two payloads and two outputs at least.
    for raw in [&rust_raw, &exec_raw] {
        for field in ["outputPresignedUrl", "payloadPresignedUrl"] {
            let url = raw[field].as_str().unwrap();
            assert!(url.starts_with(&s3.endpoint), "{field}: {url}");
            assert!(url.contains("X-Amz-Signature="), "{field}: {url}");
            assert!(url.contains("X-Amz-Expires=300"), "{field}: {url}");
        }
    }
    let keys = s3.object_keys();
    let under_prefix: Vec<&String> = keys
        .iter()
        .filter(|key| key.starts_with(&format!("{S3_PREFIX}/")))
        .collect();
    assert!(under_prefix.len() >= 4, "objects in the bucket: {keys:?}");
    assert_eq!(
        under_prefix.len(),
        keys.len(),
        "objects outside the prefix: {keys:?}"
    );
    let largest = keys
        .iter()
        .filter_map(|key| s3.object_bytes(key).map(|bytes| bytes.len()))
        .max()
        .unwrap();
    assert!(largest > BIG, "the largest object has {largest} bytes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_presigned_urls_stop_working_once_expired() {
    // URLs valid for 2 s (`--blob-url-ttl`); S3 counts whole seconds from X-Amz-Date.
    let setup = Setup::s3(&["--blob-url-ttl", "2"]);
    let s3 = setup.s3.as_ref().unwrap();
    let app = &setup.app;
    // Nobody serves the task: the run stays queued with its payload offloaded.
    let payload = big_payload(3);
    let reply = app
        .server
        .trigger(
            &app.dev_key,
            "nobody-serves-this",
            &json!({"payload": payload}),
        )
        .await;
    let run_id = reply.assert_new_run();
    let raw = setup
        .client(&app.dev_key)
        .retrieve(&run_id)
        .await
        .unwrap()
        .raw;
    let url = raw["payloadPresignedUrl"]
        .as_str()
        .unwrap_or_else(|| panic!("no payloadPresignedUrl: {raw:#}"))
        .to_owned();
    assert!(url.starts_with(&s3.endpoint), "{url}");
    assert!(url.contains("X-Amz-Expires=2"), "{url}");
    assert_eq!(fetch_json(&url).await, payload);
    let tampered = fetch(&change_signature_byte(&url)).await;
    assert_eq!(tampered.status(), 403);

    tokio::time::sleep(Duration::from_millis(3_100)).await;
    let expired = fetch(&url).await;
    assert_eq!(expired.status(), 403);
    assert!(expired.text().await.unwrap().contains("expired"));
}
