//! The dashboard end to end: `e2e/tests/dashboard.test.mjs` drives headless Chromium
//! (Debian's `chromium`, through playwright-core pinned in `e2e/package-lock.json`)
//! against the real `runnel serve` and a real `runnel worker`.
//!
//! The server gets a fresh data directory (or PostgreSQL database, with
//! `RUNNEL_TEST_BACKEND=postgres`), a prod key and a staging key; a prod-key exec worker
//! serves `hello` (`cat`), `slow` (`sleep 120`, canceled by the test) and the scheduled
//! `nightly` (`cat`). The node file signs in, filters, opens, cancels (watching the
//! status change live in a second tab), replays and reschedules runs, pauses a queue,
//! visits every page, and checks the staging key sees none of prod's runs; it writes one
//! screenshot per page into `target/e2e-screenshots/` of the workspace.
//!
//! The suite needs Node.js, `npm ci --prefix e2e` and `/usr/bin/chromium`
//! (`scripts/install-chromium`); scripts/test does both. Without them it fails, never skips.

mod common;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{key_prefix, keys_create, Server, Worker};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tempfile::TempDir;

/// Longest the node file may take (it takes well under a minute).
const FILE_TIMEOUT: Duration = Duration::from_secs(150);
/// The browser the tests drive; `scripts/install-chromium` puts it there.
const CHROMIUM: &str = "/usr/bin/chromium";

fn workspace_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("the workspace directory")
}

#[test]
fn dashboard_in_headless_chromium() {
    let e2e = workspace_dir().join("e2e");
    assert!(
        e2e.join("node_modules/playwright-core/package.json")
            .exists(),
        "the dashboard end-to-end tests need playwright-core: run `npm ci --prefix e2e` first"
    );
    assert!(
        PathBuf::from(CHROMIUM).exists(),
        "the dashboard end-to-end tests need {CHROMIUM}: run scripts/install-chromium first"
    );
    let screenshots = workspace_dir().join("target/e2e-screenshots");

    let data = TempDir::new().expect("a temporary data directory");
    let server = Server::start(data.path());
    let key = keys_create(data.path(), "prod");
    let other_key = keys_create(data.path(), "staging");
    let mut worker = Worker::start(
        &server,
        &key,
        &[
            "--concurrency",
            "4",
            "--task",
            "hello=cat",
            "--task",
            "slow=sleep 120",
            "--task",
            "nightly=cat",
            "--scheduled",
            "nightly",
        ],
    );
    worker.registration();

    let child = Command::new("node")
        .args([
            "--test",
            "--test-concurrency=1",
            "--test-reporter=spec",
            "tests/dashboard.test.mjs",
        ])
        .current_dir(&e2e)
        .env("RUNNEL_E2E_URL", &server.url)
        .env("RUNNEL_E2E_KEY", &key)
        .env("RUNNEL_E2E_KEY_PREFIX", key_prefix(&key))
        .env("RUNNEL_E2E_OTHER_KEY", &other_key)
        .env("RUNNEL_E2E_SCREENSHOTS", &screenshots)
        .env("RUNNEL_E2E_CHROMIUM", CHROMIUM)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running node (the dashboard end-to-end tests need Node.js 20 or newer)");
    // Read both pipes to the end on another thread, and kill node if the file hangs
    // (Chromium, its child, goes with it: playwright closes it when node's pipe closes).
    let pid = child.id();
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = done_tx.send(child.wait_with_output());
    });
    let output = match done_rx.recv_timeout(FILE_TIMEOUT) {
        Ok(output) => output.expect("node's output"),
        Err(_) => {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
            let output = done_rx.recv().expect("node exits").expect("node's output");
            panic!(
                "e2e/tests/dashboard.test.mjs did not finish within {FILE_TIMEOUT:?}\n{}\n--- server ---\n{}\n--- worker ---\n{}",
                String::from_utf8_lossy(&output.stdout),
                server.stderr(),
                worker.stderr(),
            );
        }
    };
    // Shown with --nocapture, and by the test harness when the test fails.
    println!("{}", String::from_utf8_lossy(&output.stdout));
    println!("screenshots: {}", screenshots.display());
    assert!(
        output.status.success(),
        "e2e/tests/dashboard.test.mjs failed ({:?})\n--- node stdout ---\n{}\n--- node stderr ---\n{}\n--- server ---\n{}\n--- worker ---\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
        server.stderr(),
        worker.stderr(),
    );
    let pngs = std::fs::read_dir(&screenshots)
        .expect("the screenshot directory")
        .filter(|entry| {
            entry
                .as_ref()
                .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "png"))
        })
        .count();
    assert!(
        pngs >= 16,
        "{pngs} screenshots in {}",
        screenshots.display()
    );
}
