//! A new user's first hour: the README's Quick start, run as written against the real
//! binary, and the answers the CLI gives to ordinary mistakes (a run no worker serves, a
//! wait that must end, `keys` in the wrong directory, a lost dev key).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{describe, runnel_command, Server};
use serde_json::{json, Value};
use tempfile::TempDir;

/// The repository's README.md.
fn readme() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// The fenced blocks of the README section headed `## {title}`, each with its info string.
fn blocks(readme: &str, title: &str) -> Vec<(String, String)> {
    let heading = format!("## {title}\n");
    let start = readme
        .find(&heading)
        .unwrap_or_else(|| panic!("README.md has no section {heading:?}"))
        + heading.len();
    let section = &readme[start..];
    let section = &section[..section.find("\n## ").unwrap_or(section.len())];
    let mut blocks = Vec::new();
    let mut lines = section.lines();
    while let Some(line) = lines.next() {
        let Some(info) = line.strip_prefix("```") else {
            continue;
        };
        let body: Vec<&str> = lines.by_ref().take_while(|l| *l != "```").collect();
        blocks.push((info.to_owned(), body.join("\n")));
    }
    blocks
}

/// The commands of a shell block: continuation lines joined, comment lines dropped.
fn commands(block: &str) -> Vec<String> {
    let mut commands = Vec::new();
    let mut current = String::new();
    for line in block.lines() {
        if current.is_empty() && (line.trim().is_empty() || line.trim_start().starts_with('#')) {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(head) => current.push_str(head),
            None => {
                current.push_str(line);
                commands.push(std::mem::take(&mut current));
            }
        }
    }
    commands
}

/// A README command line with `cargo run --release --` standing for the built binary.
fn as_built(command: &str) -> String {
    let rest = command
        .strip_prefix("cargo run --release -- ")
        .unwrap_or_else(|| panic!("not a `cargo run --release --` command: {command:?}"));
    format!("exec '{}' {rest}", env!("CARGO_BIN_EXE_runnel"))
}

/// `sh -c SCRIPT` with a clean environment (no RUNNEL_* of the caller), in `dir`.
fn shell(script: &str, dir: &Path) -> Command {
    let mut command = Command::new("sh");
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("RUNNEL_") {
            command.env_remove(name);
        }
    }
    command
        .env_remove("RUST_LOG")
        .args(["-c", script])
        .current_dir(dir);
    command
}

/// Whether `line` matches `pattern`, where `…` in the pattern stands for any text.
fn matches_placeholder(pattern: &str, line: &str) -> bool {
    let mut parts = pattern.split('…');
    let first = parts.next().unwrap_or_default();
    let Some(mut rest) = line.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    for (i, part) in parts.iter().enumerate() {
        if i + 1 == parts.len() {
            return rest.ends_with(part) && rest.len() > part.len();
        }
        match rest.find(part) {
            Some(at) if at > 0 => rest = &rest[at + part.len()..],
            _ => return false,
        }
    }
    rest.is_empty()
}

/// Cargo picks `runnel` for a bare `cargo run` at the root: it is the only binary among
/// the workspace's default members (the README's `cargo run --release -- …` relies on it).
#[test]
fn cargo_run_at_the_root_runs_runnel() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let output = Command::new(env!("CARGO"))
        .args([
            "metadata",
            "--no-deps",
            "--format-version",
            "1",
            "--offline",
        ])
        .current_dir(&root)
        .output()
        .expect("running cargo metadata");
    assert!(output.status.success(), "{}", describe(&output));
    let metadata: Value = serde_json::from_slice(&output.stdout).unwrap();
    let defaults: Vec<&str> = metadata["workspace_default_members"]
        .as_array()
        .expect("workspace_default_members")
        .iter()
        .map(|id| id.as_str().unwrap())
        .collect();
    let binaries: Vec<&str> = metadata["packages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|package| defaults.contains(&package["id"].as_str().unwrap()))
        .flat_map(|package| package["targets"].as_array().unwrap())
        .filter(|target| target["kind"].as_array().unwrap().contains(&json!("bin")))
        .map(|target| target["name"].as_str().unwrap())
        .collect();
    assert_eq!(binaries, ["runnel"], "binaries `cargo run` chooses from");
}

/// The Quick start, command by command, as the README writes it: `dev` with the README's
/// task, the printed banner, `trigger … --wait` with the printed key, and both curl calls.
#[tokio::test]
async fn the_quick_start_works_as_written() {
    let readme = readme();
    let blocks = blocks(&readme, "Quick start");
    let shell_commands: Vec<String> = blocks
        .iter()
        .filter(|(info, _)| info == "sh")
        .flat_map(|(_, body)| commands(body))
        .collect();
    let [dev, export, trigger, curl_trigger, curl_retrieve] = shell_commands.as_slice() else {
        panic!("the Quick start's commands changed; update this test: {shell_commands:#?}");
    };
    let banner: Vec<&str> = blocks
        .iter()
        .find(|(info, _)| info.is_empty())
        .map(|(_, body)| body.lines().collect())
        .expect("the Quick start shows what the first start prints");

    // 1. `cargo run --release -- dev --task …`, in an empty directory, on a free port.
    let dir = TempDir::new().unwrap();
    let mut child = shell(&as_built(dev), dir.path())
        .env("RUNNEL_LISTEN", "127.0.0.1:0")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting the dev command");
    let stdout = child.stdout.take().unwrap();
    let (lines_tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut printed = Vec::new();
    while printed.len() < banner.len() {
        match lines.recv_timeout(Duration::from_secs(30)) {
            Ok(line) => printed.push(line),
            Err(e) => {
                let _ = child.kill();
                panic!("the dev command printed {printed:?} and then {e}");
            }
        }
    }
    for (pattern, line) in banner.iter().zip(&printed) {
        // The README's default port; this test listens on a free one.
        let pattern = pattern.replace("127.0.0.1:3030", "127.0.0.1:…");
        assert!(
            matches_placeholder(&pattern, line),
            "README shows {pattern:?}, the binary printed {line:?}"
        );
    }
    let key = printed[1]
        .rsplit(' ')
        .next()
        .expect("the key line ends with the key")
        .to_owned();
    let url = printed[2]
        .strip_prefix("Runnel listening on ")
        .expect("the address line")
        .to_owned();

    // 2. `export RUNNEL_SECRET_KEY=tr_dev_…`: the README's placeholder is the printed key's shape.
    let placeholder = export
        .strip_prefix("export RUNNEL_SECRET_KEY=")
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("unexpected export line {export:?}"));
    assert!(
        matches_placeholder(placeholder, &key),
        "{placeholder} vs {key}"
    );

    // 3. `cargo run --release -- trigger hello --payload … --wait`.
    let output = shell(&as_built(trigger), dir.path())
        .env("RUNNEL_SECRET_KEY", &key)
        .env("RUNNEL_API_URL", &url)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", describe(&output));
    let run: Value = serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "trigger --wait prints the run as JSON ({e}): {}",
            describe(&output)
        )
    });
    assert_eq!(run["status"], "COMPLETED", "{run:#}");
    // The README's comment says what the output is.
    let claimed = readme
        .split("\"output\": ")
        .nth(1)
        .and_then(|rest| rest.split(", attempts").next())
        .expect("the README shows the output");
    let claimed: Value = serde_json::from_str(claimed).unwrap();
    assert_eq!(run["output"], claimed, "{run:#}");

    // 4. and 5. The curl calls, against this server, with the run id the first returns.
    let curl = |command: &str| {
        let script = command.replace("http://127.0.0.1:3030", &url);
        let output = shell(&script, dir.path())
            .env("RUNNEL_SECRET_KEY", &key)
            .output()
            .unwrap();
        assert!(output.status.success(), "{script}: {}", describe(&output));
        serde_json::from_slice::<Value>(&output.stdout)
            .unwrap_or_else(|e| panic!("{script} printed no JSON ({e}): {}", describe(&output)))
    };
    let triggered = curl(curl_trigger);
    let id = triggered["id"].as_str().expect("the trigger answers an id");
    assert_eq!(triggered["isCached"], false);
    assert!(curl_retrieve.contains("run_…"), "{curl_retrieve}");
    let retrieved = common::eventually(
        "the curl-triggered run to complete",
        Duration::from_secs(20),
        || {
            let command = curl_retrieve.replace("run_…", id);
            let curl = &curl;
            async move {
                let run = curl(&command);
                (run["status"] == "COMPLETED").then_some(run)
            }
        },
    )
    .await;
    assert_eq!(retrieved["tags"], json!(["demo"]));

    let _ = child.kill();
    let _ = child.wait();
}

/// The test command the README gives exists and is what CI runs.
#[test]
fn the_readme_test_command_is_the_one_ci_runs() {
    let readme = readme();
    let blocks = blocks(&readme, "Running the tests");
    let (_, first) = blocks.first().expect("a command block");
    assert_eq!(first.trim(), "scripts/test");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let ci = std::fs::read_to_string(root.join(".ci/run")).expect(".ci/run");
    assert!(
        ci.contains("scripts/test"),
        ".ci/run does not call scripts/test"
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(root.join("scripts/test"))
        .unwrap()
        .permissions()
        .mode();
    assert!(mode & 0o111 != 0, "scripts/test is not executable");
}

fn trigger_command(server: &Server, key: &str, args: &[&str]) -> Command {
    let mut command = runnel_command();
    command
        .args(["trigger", "--api-url", &server.url, "--key", key])
        .args(args)
        .stdin(Stdio::null());
    command
}

/// `trigger --wait` for a task no worker serves: the id at once, then why it waits, and
/// `--timeout` ends the wait with its own exit code while the run goes on.
#[tokio::test]
async fn trigger_wait_says_what_it_waits_for_and_times_out_apart() {
    let dir = TempDir::new().unwrap();
    let server = Server::start(dir.path());
    let key = server.dev_key().to_owned();
    let started = Instant::now();
    let output = trigger_command(
        &server,
        &key,
        &["nobody-serves-this", "--wait", "--timeout", "2s"],
    )
    .output()
    .unwrap();
    let took = started.elapsed();
    assert_eq!(output.status.code(), Some(124), "{}", describe(&output));
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(8),
        "{took:?}"
    );
    assert!(output.stdout.is_empty(), "{}", describe(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    let first = stderr.lines().next().unwrap_or_default();
    let id = first.split(':').next().unwrap_or_default();
    assert!(id.starts_with("run_"), "the run id comes first: {stderr}");
    assert!(
        stderr.contains(
            "no worker serves task nobody-serves-this yet; the run waits for one (PENDING_VERSION)"
        ),
        "{stderr}"
    );
    assert!(stderr.contains("--timeout"), "{stderr}");
    // The run goes on waiting for a worker.
    let run = server.run(&key, id).await;
    assert_eq!(run["status"], "WAITING_FOR_DEPLOY", "{run:#}");

    // A bad duration is refused before anything is triggered.
    let output = trigger_command(&server, &key, &["t", "--wait", "--timeout", "soon"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2), "{}", describe(&output));
    assert!(String::from_utf8_lossy(&output.stderr).contains("not a duration"));
}

/// A run that ends badly exits 1 (not the timeout's 124) and still prints the run.
#[tokio::test]
async fn trigger_wait_of_a_failed_run_exits_one() {
    let dir = TempDir::new().unwrap();
    let server = Server::start_dev(dir.path(), &["--task", "fail=echo broken >&2; exit 3"]);
    let key = server.dev_key().to_owned();
    let output = trigger_command(
        &server,
        &key,
        &["fail", "--max-attempts", "1", "--wait", "--timeout", "60"],
    )
    .output()
    .unwrap();
    assert_eq!(output.status.code(), Some(1), "{}", describe(&output));
    let run: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(run["status"], "FAILED", "{run:#}");
    assert!(String::from_utf8_lossy(&output.stderr).contains("ended FAILED"));
}

/// `keys` in a directory without a database refuses, names the directory and the fix,
/// and creates nothing there.
#[test]
fn keys_in_a_directory_without_a_database_refuse_and_create_nothing() {
    let dir = TempDir::new().unwrap();
    let data_dir: PathBuf = dir.path().join("not-here");
    for args in [
        &["keys", "list"][..],
        &["keys", "create", "--env", "dev"],
        &["keys", "revoke", "tr_dev_abc"],
    ] {
        let output = runnel_command()
            .args(args)
            .arg("--data-dir")
            .arg(&data_dir)
            .output()
            .unwrap();
        assert!(!output.status.success(), "{}", describe(&output));
        assert!(output.stdout.is_empty(), "{}", describe(&output));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(&data_dir.display().to_string()), "{stderr}");
        assert!(
            stderr.contains("--data-dir") && stderr.contains("runnel serve"),
            "{stderr}"
        );
        assert!(
            !data_dir.exists(),
            "{args:?} created {}",
            data_dir.display()
        );
    }
    // The default data directory, from a directory holding none.
    let output = runnel_command()
        .args(["keys", "list"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(!output.status.success(), "{}", describe(&output));
    assert!(String::from_utf8_lossy(&output.stderr).contains(".runnel"));
    assert!(!dir.path().join(".runnel").exists());
}

/// Every start after the first says how to get a new dev key, and that command works.
#[tokio::test]
async fn a_restart_says_how_to_get_a_new_dev_key() {
    let dir = TempDir::new().unwrap();
    let first = Server::start(dir.path());
    assert!(
        first.key_hint.is_none(),
        "the first start prints the key instead"
    );
    drop(first);
    let second = Server::start(dir.path());
    let hint = second.key_hint.clone().expect("the restart's hint");
    let command = hint
        .split('`')
        .nth(1)
        .unwrap_or_else(|| panic!("no command in {hint:?}"));
    assert!(
        command.starts_with("runnel keys create --env dev"),
        "{hint}"
    );
    let script = command.replacen("runnel", &format!("'{}'", env!("CARGO_BIN_EXE_runnel")), 1);
    let mut shell = shell(&script, Path::new("/"));
    // Under RUNNEL_TEST_BACKEND=postgres the hint names the database URL itself.
    let output: Output = shell.output().unwrap();
    assert!(output.status.success(), "{script}: {}", describe(&output));
    let key = String::from_utf8(output.stdout).unwrap().trim().to_owned();
    assert!(key.starts_with("tr_dev_"), "{key}");
    let reply = second.retrieve(&key, "run_doesnotexist0000000000").await;
    assert_eq!(
        reply.status,
        reqwest::StatusCode::NOT_FOUND,
        "the new key is accepted"
    );
}

/// README.md and every page of docs/: the user's documents, each standing on its own.
fn documents() -> Vec<(PathBuf, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut paths = vec![
        root.join("README.md"),
        root.join("examples/rust-worker/README.md"),
    ];
    for entry in std::fs::read_dir(root.join("docs")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "md") {
            paths.push(path);
        }
    }
    paths
        .into_iter()
        .map(|path| {
            let text = std::fs::read_to_string(&path).unwrap();
            (path, text)
        })
        .collect()
}

/// The docs point only at files in the repository: no team-internal documents, issue
/// trackers or contract sections, and every relative link resolves.
#[test]
fn the_docs_stand_on_their_own() {
    let outside = [
        "DESIGN",
        "§",
        "`issues`",
        "shared reference",
        "shared folder",
        "../shared",
        "contract",
        "seed/",
    ];
    let mut problems = Vec::new();
    for (path, text) in documents() {
        let dir = path.parent().unwrap();
        for (number, line) in text.lines().enumerate() {
            let place = format!("{}:{}", path.display(), number + 1);
            for word in outside {
                if line.contains(word) {
                    problems.push(format!("{place} mentions {word:?}: {line}"));
                }
            }
            // Relative Markdown links: `](target)` not starting with a scheme or `#`.
            for link in line.split("](").skip(1) {
                let target = link.split(')').next().unwrap_or_default();
                let file = target.split('#').next().unwrap_or_default();
                if file.is_empty() || file.contains("://") || file.starts_with("mailto:") {
                    continue;
                }
                if !dir.join(file).exists() {
                    problems.push(format!("{place} links to missing {file}"));
                }
            }
        }
        // A long line written twice in one document is a pasted fragment.
        let mut seen = std::collections::HashSet::new();
        for line in text.lines().map(str::trim).filter(|l| l.len() > 60) {
            if !seen.insert(line) {
                problems.push(format!("{} repeats a line: {line}", path.display()));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    let readme = readme();
    assert!(
        readme.contains("(docs/roadmap.md)"),
        "the README links the roadmap"
    );
}
