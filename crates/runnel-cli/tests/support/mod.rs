//! Test harness: starts the real `runnel` binary on a free port with its own data
//! directory, and reads the dev key and the address it prints.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;

const STARTUP_DEADLINE: Duration = Duration::from_secs(30);

pub fn runnel() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_runnel"));
    for (name, _) in std::env::vars() {
        if name.starts_with("RUNNEL_") {
            command.env_remove(name);
        }
    }
    command.env("RUST_LOG", "warn");
    command
}

/// A running server. Killed when dropped.
pub struct Server {
    pub url: String,
    /// The dev key printed on first start (`None` on a restart).
    pub printed_key: Option<String>,
    pub stdout_lines: Vec<String>,
    child: Child,
}

/// A data directory that outlives server restarts.
pub struct DataDir(TempDir);

impl DataDir {
    pub fn new() -> Self {
        DataDir(TempDir::new().unwrap())
    }

    pub fn path(&self) -> &Path {
        self.0.path()
    }

    pub fn start(&self) -> Server {
        Server::start(self.path().to_path_buf())
    }

    /// Runs `runnel <args> --data-dir <dir>`; returns (success, stdout, stderr).
    pub fn cli(&self, args: &[&str]) -> (bool, String, String) {
        let out = runnel()
            .args(args)
            .arg("--data-dir")
            .arg(self.path())
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8(out.stdout).unwrap(),
            String::from_utf8(out.stderr).unwrap(),
        )
    }

    pub fn create_key(&self, env: &str) -> String {
        let (ok, stdout, stderr) = self.cli(&["keys", "create", "--env", env]);
        assert!(ok, "keys create failed: {stderr}");
        stdout.trim().to_owned()
    }
}

impl Server {
    fn start(data_dir: PathBuf) -> Server {
        let mut child = runnel()
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(&data_dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        // Owned by the Server from here on, so a failed start still kills the child.
        let mut server = Server {
            url: String::new(),
            printed_key: None,
            stdout_lines: Vec::new(),
            child,
        };
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + STARTUP_DEADLINE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = rx.recv_timeout(left).unwrap_or_else(|_| {
                panic!(
                    "server did not print its address; stdout so far: {:?}",
                    server.stdout_lines
                )
            });
            server.stdout_lines.push(line.clone());
            if let Some(key) = line.strip_prefix("Dev secret key (shown once, keep it): ") {
                server.printed_key = Some(key.to_owned());
            }
            if let Some(url) = line.strip_prefix("Runnel listening on ") {
                server.url = url.to_owned();
                return server;
            }
        }
    }

    pub fn key(&self) -> String {
        self.printed_key.clone().expect("first start prints a key")
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM and waits (bounded) for the process to exit.
    pub fn terminate(mut self) -> ExitStatus {
        let killed = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(killed.success());
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "server did not exit within 10 s of SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn client(&self, key: &str) -> Client {
        Client {
            base: self.url.clone(),
            key: Some(key.to_owned()),
            http: Http::new(),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// reqwest's async client driven by a small runtime of its own, so tests stay plain
/// functions that can also drive child processes.
pub struct Http {
    runtime: tokio::runtime::Runtime,
    client: ::reqwest::Client,
}

impl Http {
    fn new() -> Self {
        Http {
            runtime: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap(),
            client: ::reqwest::Client::new(),
        }
    }
}

/// A response reduced to what tests look at.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: ::reqwest::header::HeaderMap,
    pub body: Value,
}

pub struct Client {
    base: String,
    key: Option<String>,
    http: Http,
}

impl Client {
    pub fn without_key(mut self) -> Self {
        self.key = None;
        self
    }

    /// Sends `method path` with optional raw body and extra headers.
    pub fn send(
        &self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
        headers: &[(&str, &str)],
    ) -> Reply {
        let method = ::reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut request = self
            .http
            .client
            .request(method, format!("{}{}", self.base, path));
        if let Some(key) = &self.key {
            request = request.header("authorization", format!("Bearer {key}"));
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body);
        }
        self.http.runtime.block_on(async {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            let headers = response.headers().clone();
            let bytes = response.bytes().await.unwrap();
            let body = if bytes.is_empty() {
                Value::Null
            } else {
                serde_json::from_slice(&bytes).unwrap_or_else(|_| {
                    panic!("non-JSON body: {}", String::from_utf8_lossy(&bytes))
                })
            };
            Reply {
                status,
                headers,
                body,
            }
        })
    }

    pub fn trigger(&self, task: &str, body: &Value) -> Reply {
        self.send(
            "POST",
            &format!("/api/v1/tasks/{task}/trigger"),
            Some(body.to_string().into_bytes()),
            &[],
        )
    }

    /// Triggers and expects success; returns (id, isCached).
    pub fn trigger_ok(&self, task: &str, body: &Value) -> (String, bool) {
        let reply = self.trigger(task, body);
        assert_eq!(reply.status, 200, "{:?}", reply.body);
        (
            reply.body["id"].as_str().unwrap().to_owned(),
            reply.body["isCached"].as_bool().unwrap(),
        )
    }

    pub fn retrieve(&self, id: &str) -> Reply {
        self.send("GET", &format!("/api/v3/runs/{id}"), None, &[])
    }

    pub fn retrieve_current(&self, id: &str) -> Reply {
        self.send(
            "GET",
            &format!("/api/v3/runs/{id}"),
            None,
            &[("x-trigger-api-version", "2025-07-16")],
        )
    }

    /// Polls retrieve until `done(body)` or the deadline.
    pub fn wait_for(&self, id: &str, deadline: Duration, done: impl Fn(&Value) -> bool) -> Value {
        let until = Instant::now() + deadline;
        loop {
            let reply = self.retrieve(id);
            assert_eq!(reply.status, 200);
            if done(&reply.body) {
                return reply.body;
            }
            assert!(
                Instant::now() < until,
                "condition not reached; last body {}",
                reply.body
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Replaces ids and timestamps with placeholders after checking their shape, so whole
/// responses can be compared.
pub fn redact(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| {
                    let v = match (k.as_str(), v) {
                        ("id", Value::String(s)) if s.starts_with("run_") => {
                            assert!(is_run_id(s), "bad run id {s}");
                            Value::String("<run id>".into())
                        }
                        (
                            "createdAt" | "updatedAt" | "startedAt" | "finishedAt" | "delayedUntil"
                            | "expiredAt",
                            Value::String(s),
                        ) => {
                            assert!(is_timestamp(s), "bad timestamp {k}: {s}");
                            Value::String("<timestamp>".into())
                        }
                        _ => redact(v),
                    };
                    (k.clone(), v)
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(redact).collect()),
        other => other.clone(),
    }
}

pub fn is_run_id(s: &str) -> bool {
    s.strip_prefix("run_").is_some_and(|body| {
        body.len() == 24
            && body
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'v').contains(&b))
    })
}

/// ISO 8601, UTC, milliseconds: `2026-01-02T03:04:05.678Z`.
pub fn is_timestamp(s: &str) -> bool {
    s.len() == 24 && s.ends_with('Z') && chrono::DateTime::parse_from_rfc3339(s).is_ok()
}

pub fn parse_time(s: &str) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::parse_from_rfc3339(s)
        .unwrap()
        .with_timezone(&chrono::Utc)
}

/// Whether `value` contains a JSON `null` anywhere.
pub fn contains_null(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::Array(items) => items.iter().any(contains_null),
        Value::Object(map) => map.values().any(contains_null),
        _ => false,
    }
}
