//! Environment variables from a terminal and in tasks, against the real `runnel serve`:
//! `runnel envvars ls | set | rm` on the key's environment, and a `runnel worker` exec
//! command that sees a variable set through the API (and, a few seconds after a change,
//! its new value), below the platform's own `RUNNEL_*`.

mod common;

use std::process::{Output, Stdio};
use std::time::Duration;

use common::{describe, runnel_command, Server, TestApp, Worker};
use serde_json::json;

fn envvars(server: &Server, key: &str, args: &[&str]) -> Output {
    runnel_command()
        .arg("envvars")
        .args(args)
        .args(["--api-url", &server.url, "--key", key])
        .stdin(Stdio::null())
        .output()
        .expect("running the runnel binary")
}

fn succeeds(output: Output) -> String {
    assert!(output.status.success(), "{}", describe(&output));
    String::from_utf8(output.stdout).unwrap()
}

fn fails(output: Output) -> String {
    assert!(!output.status.success(), "{}", describe(&output));
    String::from_utf8(output.stderr).unwrap()
}

#[test]
fn envvars_set_ls_rm_round_trip_in_the_keys_environment() {
    let app = TestApp::start();
    let (server, key) = (&app.server, app.dev_key.as_str());
    assert_eq!(
        succeeds(envvars(server, key, &["ls"])),
        "No environment variables in dev.\n"
    );
    assert_eq!(
        succeeds(envvars(server, key, &["set", "GREETING=hello=world"])),
        "set GREETING in dev\n"
    );
    succeeds(envvars(
        server,
        key,
        &["set", "API_TOKEN=s3cret", "--secret"],
    ));
    assert_eq!(
        succeeds(envvars(server, key, &["ls"])),
        "NAME       SECRET  VALUE\n\
         API_TOKEN  yes     <redacted>\n\
         GREETING   no      hello=world\n"
    );

    // A dotenv file: all or nothing, and a name already set refuses it without --override.
    let file = app.dir.path().join("vars.env");
    std::fs::write(&file, "# settings\nGREETING=replaced\nNEW_ONE='x y'\n").unwrap();
    let file = file.to_str().unwrap();
    let stderr = fails(envvars(server, key, &["set", "--from-file", file]));
    assert!(stderr.contains("already set"), "{stderr}");
    assert!(!succeeds(envvars(server, key, &["ls"])).contains("NEW_ONE"));
    assert_eq!(
        succeeds(envvars(
            server,
            key,
            &["set", "--from-file", file, "--override"]
        )),
        "set 2 variables in dev\n"
    );
    let listed = succeeds(envvars(server, key, &["ls"]));
    assert!(listed.contains("GREETING   no      replaced\n"), "{listed}");
    assert!(listed.contains("NEW_ONE    no      x y\n"), "{listed}");

    assert_eq!(
        succeeds(envvars(server, key, &["rm", "GREETING"])),
        "removed GREETING from dev\n"
    );
    let stderr = fails(envvars(server, key, &["rm", "GREETING"]));
    assert!(stderr.contains("no variable GREETING in dev"), "{stderr}");
    let stderr = fails(envvars(server, key, &["set", "BAD-NAME=1"]));
    assert!(stderr.contains("invalid variable name"), "{stderr}");
    let stderr = fails(envvars(server, key, &["set", "no-equals-sign"]));
    assert!(stderr.contains("expected NAME=VALUE"), "{stderr}");

    // Another environment's key sees its own (empty) environment.
    let prod = common::keys_create(&app.data_dir(), "prod");
    assert_eq!(
        succeeds(envvars(server, &prod, &["ls"])),
        "No environment variables in prod.\n"
    );
}

/// Runs the `show` task once and returns its output.
async fn show(server: &Server, key: &str) -> serde_json::Value {
    let run = server.trigger_new(key, "show", &json!({})).await;
    let done = server.wait_for_status(key, &run, "COMPLETED").await;
    done["output"].clone()
}

#[tokio::test]
async fn an_exec_task_sees_its_environment_variables() {
    let app = TestApp::start();
    let (server, key) = (&app.server, app.dev_key.as_str());
    succeeds(envvars(server, key, &["set", "GREETING=hello"]));
    // A stored name the platform sets itself does not override it.
    succeeds(envvars(server, key, &["set", "RUNNEL_TASK=spoofed"]));
    let mut worker = Worker::start(
        server,
        key,
        &[
            "--task",
            r#"show=printf '%s %s' "$GREETING" "$RUNNEL_TASK""#,
        ],
    );
    worker.registration();
    assert_eq!(show(server, key).await, json!("hello show"));

    // A change reaches runs started after it within the worker's cache time.
    succeeds(envvars(server, key, &["set", "GREETING=changed"]));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let output = show(server, key).await;
        if output == json!("changed show") {
            break;
        }
        assert_eq!(output, json!("hello show"));
        assert!(
            tokio::time::Instant::now() < deadline,
            "the new value never arrived\n{}",
            worker.stderr()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
