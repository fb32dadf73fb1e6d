//! Hardening against idle, slow and numerous connections, and against large batch
//! uploads (issue 9, items 3 and 4), against the real binary over raw TCP and HTTP.
//!
//! Connection tests speak HTTP/1.1 by hand over a `TcpStream`, since the point is to
//! behave like a client no HTTP library would be: one that never finishes its head, its
//! body, or its next request. "Closed by the server" means a read answers end of file (or
//! a reset) before a deadline.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{eventually, Server, TestApp};
use reqwest::{Method, StatusCode};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long a connection the server should close may take, well above the 1 s clocks
/// the tests set.
const CLOSE_DEADLINE: Duration = Duration::from_secs(10);

fn address(server: &Server) -> SocketAddr {
    server
        .url
        .strip_prefix("http://")
        .expect("http URL")
        .parse()
        .expect("socket address")
}

/// Reads until the server closes the connection; returns what it sent. Panics when the
/// connection is still open after [`CLOSE_DEADLINE`].
async fn read_until_closed(stream: &mut TcpStream, what: &str) -> String {
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + CLOSE_DEADLINE;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buffer)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return String::from_utf8_lossy(&received).into_owned(),
            Ok(Ok(n)) => received.extend_from_slice(&buffer[..n]),
            Err(_) => panic!(
                "{what}: the server kept the connection open for {CLOSE_DEADLINE:?}; received {:?}",
                String::from_utf8_lossy(&received)
            ),
        }
    }
}

/// Whether the server has closed `stream` (without waiting).
fn is_closed(stream: &TcpStream) -> bool {
    let mut buffer = [0u8; 64];
    match stream.try_read(&mut buffer) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
    }
}

/// The number a `key=value` field of the server's log line holding `message` shows.
fn logged_number(server: &Server, message: &str, key: &str) -> u64 {
    let log = server.stderr();
    let line = log
        .lines()
        .find(|line| line.contains(message))
        .unwrap_or_else(|| panic!("no {message:?} line in the server log:\n{log}"));
    line.split_whitespace()
        .find_map(|word| word.strip_prefix(key)?.strip_prefix('='))
        .and_then(|value| value.parse().ok())
        .unwrap_or_else(|| panic!("no {key} in {line:?}"))
}

fn open_descriptors(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("reading the server's descriptors")
        .count()
}

/// Raises this test process's own soft open-file limit to its hard one, so it can hold
/// the connections the test opens.
fn raise_own_file_limit(needed: u64) {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
    assert!(
        hard >= needed,
        "this test needs {needed} open files; the hard limit is {hard}"
    );
    if soft < needed {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).expect("setrlimit");
    }
}

#[tokio::test]
async fn idle_connections_beyond_the_file_limit_leave_the_server_reachable() {
    const FILE_LIMIT: u32 = 1024;
    const IDLE: usize = 1100;
    raise_own_file_limit(IDLE as u64 + 256);
    let dir = TempDir::new().unwrap();
    let server = Server::start_with_open_file_limit(dir.path(), FILE_LIMIT, &[]);
    // The limit the server runs under is the one it was given (soft and hard, so it
    // could not raise it), and its cap sits below it.
    assert_eq!(
        logged_number(&server, "open file limit", "soft"),
        u64::from(FILE_LIMIT)
    );
    assert_eq!(
        logged_number(&server, "open file limit", "hard"),
        u64::from(FILE_LIMIT)
    );
    let cap = logged_number(&server, "open file limit", "max_connections") as usize;
    assert!(cap < FILE_LIMIT as usize, "cap {cap}");

    let addr = address(&server);
    let started = Instant::now();
    let idle = tokio::time::timeout(Duration::from_secs(60), async {
        let mut idle = Vec::with_capacity(IDLE);
        for _ in 0..IDLE {
            idle.push(TcpStream::connect(addr).await.expect("connecting"));
        }
        idle
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "1,100 connections were not accepted within 60 s\n{}",
            server.stderr()
        )
    });
    let connected = started.elapsed();

    let healthz = tokio::time::timeout(
        Duration::from_secs(5),
        server.request(Method::GET, "/healthz").send(),
    )
    .await
    .expect("/healthz answered within 5 s")
    .unwrap_or_else(|e| panic!("/healthz: {e:?}\n{}", server.stderr()));
    assert_eq!(healthz.status(), StatusCode::OK);

    // The server closed the connections it had no room for and holds fewer descriptors
    // than it may open.
    let closed = eventually(
        "the connections above the cap closed",
        CLOSE_DEADLINE,
        || {
            let closed = idle.iter().filter(|stream| is_closed(stream)).count();
            async move { (closed >= IDLE - cap).then_some(closed) }
        },
    )
    .await;
    let descriptors = open_descriptors(server.pid());
    assert!(
        descriptors < FILE_LIMIT as usize,
        "{descriptors} descriptors open"
    );
    assert!(
        !server.stderr().contains("Too many open files"),
        "{}",
        server.stderr()
    );
    eprintln!(
        "{IDLE} idle connections in {connected:?}: cap {cap}, {closed} closed, {descriptors} descriptors open"
    );
}

#[tokio::test]
async fn slowloris_head_is_cut_at_the_header_read_timeout() {
    let app = TestApp::start_with(&["--header-read-timeout", "1", "--idle-timeout", "60"]);
    let mut stream = TcpStream::connect(address(&app.server)).await.unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: runnel\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let (mut reader, mut writer) = stream.into_split();
    // One header byte every 100 ms: never a complete head.
    let trickle = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        loop {
            tick.tick().await;
            if writer.write_all(b"x").await.is_err() {
                break;
            }
        }
    });
    let mut buffer = [0u8; 1024];
    let closed = tokio::time::timeout(CLOSE_DEADLINE, reader.read(&mut buffer)).await;
    trickle.abort();
    assert!(
        matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
        "a trickled head is still open after {CLOSE_DEADLINE:?}: {closed:?}"
    );
    assert!(started.elapsed() >= Duration::from_millis(900));
}

#[tokio::test]
async fn stalled_body_is_answered_408_and_closed_at_the_body_read_timeout() {
    let app = TestApp::start_with(&["--body-read-timeout", "1"]);
    let mut stream = TcpStream::connect(address(&app.server)).await.unwrap();
    let head = format!(
        "POST /api/v1/tasks/t/trigger HTTP/1.1\r\nHost: runnel\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"payload\":",
        app.dev_key
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let started = Instant::now();
    let response = read_until_closed(&mut stream, "a stalled body").await;
    assert!(started.elapsed() >= Duration::from_millis(900));
    assert!(
        response.starts_with("HTTP/1.1 408 ")
            && response.contains(
                "{\"error\":\"Request body stalled for more than 1 s (--body-read-timeout)\"}"
            ),
        "{response:?}"
    );
}

#[tokio::test]
async fn idle_keep_alive_connection_is_closed_at_the_idle_timeout() {
    let app = TestApp::start_with(&["--idle-timeout", "1"]);
    let mut stream = TcpStream::connect(address(&app.server)).await.unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: runnel\r\n\r\n")
        .await
        .unwrap();
    // The response, then nothing more from the client: the connection is kept alive
    // until the idle clock runs out.
    let mut received = Vec::new();
    let mut buffer = [0u8; 1024];
    while !String::from_utf8_lossy(&received).contains("{\"status\":\"ok\"}") {
        let n = tokio::time::timeout(CLOSE_DEADLINE, stream.read(&mut buffer))
            .await
            .expect("the /healthz response")
            .unwrap();
        assert!(n > 0, "closed before answering: {received:?}");
        received.extend_from_slice(&buffer[..n]);
    }
    let answered = Instant::now();
    let rest = read_until_closed(&mut stream, "an idle keep-alive connection").await;
    assert_eq!(rest, "");
    assert!(answered.elapsed() >= Duration::from_millis(900));
}

#[tokio::test]
async fn at_the_cap_busy_connections_stay_and_a_new_one_is_closed_at_once() {
    let app = TestApp::start_with(&["--max-connections", "2"]);
    let addr = address(&app.server);
    // Two requests in flight: each handler is reading a body that never comes (hyper
    // says `100 Continue` when the handler starts reading).
    let mut busy = Vec::new();
    for _ in 0..2 {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let head = format!(
            "POST /api/v1/tasks/t/trigger HTTP/1.1\r\nHost: runnel\r\nAuthorization: Bearer {}\r\n\
             Content-Type: application/json\r\nContent-Length: 100\r\nExpect: 100-continue\r\n\r\n",
            app.dev_key
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        let mut buffer = [0u8; 256];
        let n = tokio::time::timeout(CLOSE_DEADLINE, stream.read(&mut buffer))
            .await
            .expect("100 Continue")
            .unwrap();
        let answer = String::from_utf8_lossy(&buffer[..n]);
        assert!(answer.starts_with("HTTP/1.1 100 Continue"), "{answer:?}");
        busy.push(stream);
    }
    let started = Instant::now();
    let mut extra = TcpStream::connect(addr).await.unwrap();
    let answer = read_until_closed(&mut extra, "a connection past the cap").await;
    assert_eq!(answer, "");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert!(busy.iter().all(|stream| !is_closed(stream)));
}

/// A `VmHWM`/`VmRSS`-style line of `/proc/<pid>/status`, in KiB.
fn memory_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("process status");
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|rest| rest.trim().strip_suffix("kB"))
        .and_then(|kib| kib.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in {status}"))
}

#[tokio::test]
async fn sixteen_concurrent_sixty_megabyte_batch_uploads_stay_under_300_mib() {
    const UPLOADS: usize = 16;
    const ITEMS: usize = 1000;
    const PAYLOAD_BYTES: usize = 60_000;
    let app = TestApp::start();
    let payload = "x".repeat(PAYLOAD_BYTES);
    let body: String = (0..ITEMS)
        .map(|index| {
            format!(
                "{{\"index\":{index},\"task\":\"big\",\"payload\":{{\"blob\":\"{payload}\"}}}}\n"
            )
        })
        .collect();
    // Shared by every upload without a copy.
    let body: &'static [u8] = Box::leak(body.into_bytes().into_boxed_slice());
    assert!(body.len() > 60_000_000, "{} bytes", body.len());

    let mut batches = Vec::new();
    for _ in 0..UPLOADS {
        let created = common::send(
            app.server
                .request(Method::POST, "/api/v3/batches")
                .bearer_auth(&app.dev_key)
                .json(&serde_json::json!({"runCount": ITEMS})),
        )
        .await;
        assert_eq!(created.status, StatusCode::ACCEPTED, "{created:?}");
        batches.push(created.body["id"].as_str().unwrap().to_owned());
    }
    let pid = app.server.pid();
    let before = memory_kib(pid, "VmRSS");
    let started = Instant::now();
    let uploads: Vec<_> = batches
        .iter()
        .map(|id| {
            tokio::spawn(common::send(
                app.server
                    .request(Method::POST, &format!("/api/v3/batches/{id}/items"))
                    .bearer_auth(&app.dev_key)
                    .header("content-type", "application/x-ndjson")
                    .timeout(Duration::from_secs(300))
                    .body(body),
            ))
        })
        .collect();
    let mut replies = Vec::new();
    for upload in uploads {
        replies.push(upload.await.expect("upload task"));
    }
    let took = started.elapsed();
    for (id, reply) in batches.iter().zip(&replies) {
        assert_eq!(
            (reply.status, &reply.body),
            (
                StatusCode::OK,
                &serde_json::json!({"id": id, "itemsAccepted": ITEMS, "itemsDeduplicated": 0, "sealed": true})
            ),
        );
    }
    let peak = memory_kib(pid, "VmHWM");
    let after = memory_kib(pid, "VmRSS");
    eprintln!(
        "{UPLOADS} concurrent uploads of {} bytes in {took:?}: RSS {} MiB before, peak {} MiB, {} MiB after",
        body.len(),
        before / 1024,
        peak / 1024,
        after / 1024
    );
    assert!(peak < 300 * 1024, "peak RSS {} MiB", peak / 1024);
}

#[tokio::test]
async fn batch_uploads_past_the_environment_ceiling_answer_429() {
    let app = TestApp::start_with(&["--batch-uploads-per-environment", "1"]);
    let mut batches = Vec::new();
    for _ in 0..2 {
        let created = common::send(
            app.server
                .request(Method::POST, "/api/v3/batches")
                .bearer_auth(&app.dev_key)
                .json(&serde_json::json!({"runCount": 1})),
        )
        .await;
        batches.push(created.body["id"].as_str().unwrap().to_owned());
    }
    // One upload in progress: its handler reads a body that has not come yet (hyper says
    // `100 Continue` when it starts reading).
    let mut held = TcpStream::connect(address(&app.server)).await.unwrap();
    let head = format!(
        "POST /api/v3/batches/{}/items HTTP/1.1\r\nHost: runnel\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/x-ndjson\r\nContent-Length: 1000\r\nExpect: 100-continue\r\n\r\n",
        batches[0], app.dev_key
    );
    held.write_all(head.as_bytes()).await.unwrap();
    let mut buffer = [0u8; 256];
    let n = tokio::time::timeout(CLOSE_DEADLINE, held.read(&mut buffer))
        .await
        .expect("100 Continue")
        .unwrap();
    assert!(buffer[..n].starts_with(b"HTTP/1.1 100 Continue"));

    let upload = || {
        common::send(
            app.server
                .request(
                    Method::POST,
                    &format!("/api/v3/batches/{}/items", batches[1]),
                )
                .bearer_auth(&app.dev_key)
                .header("content-type", "application/x-ndjson")
                .body("{\"index\":0,\"task\":\"t\"}\n"),
        )
    };
    let refused = upload().await;
    assert_eq!(
        (refused.status, &refused.body),
        (
            StatusCode::TOO_MANY_REQUESTS,
            &serde_json::json!({"error": "Too many batch item uploads in progress for this environment (limit 1)"})
        )
    );
    // The held upload ends with its connection; the place is free again.
    drop(held);
    let accepted = eventually(
        "the upload's place to be given back",
        CLOSE_DEADLINE,
        || async {
            let reply = upload().await;
            (reply.status == StatusCode::OK).then_some(reply)
        },
    )
    .await;
    assert_eq!(accepted.body["itemsAccepted"], 1, "{accepted:?}");
}
