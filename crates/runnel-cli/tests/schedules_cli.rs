//! Cron schedules from a terminal, against the real `runnel serve` and `runnel worker`:
//! an exec worker's `--scheduled` and `--cron` flags, and `runnel schedules ls | create |
//! rm` on the key's environment.

mod common;

use std::process::{Output, Stdio};

use common::{describe, runnel_command, Server, TestApp, Worker};
use reqwest::Method;
use runnel_testkit::send;
use serde_json::Value;

fn schedules(server: &Server, key: &str, args: &[&str]) -> Output {
    runnel_command()
        .arg("schedules")
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

/// `ls`'s table as cells: columns are at least two spaces apart, and no cell holds two
/// spaces in a row (a cron's fields are one space apart).
fn table(text: &str) -> Vec<Vec<String>> {
    text.lines()
        .map(|line| {
            line.split("  ")
                .map(str::trim)
                .filter(|cell| !cell.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .collect()
}

/// The environment's schedules as the API lists them.
async fn listed(server: &Server, key: &str) -> Vec<Value> {
    let reply = send(
        server
            .request(Method::GET, "/api/v1/schedules?perPage=100")
            .bearer_auth(key),
    )
    .await;
    assert!(reply.status.is_success(), "{reply:?}");
    reply.body["data"].as_array().unwrap().clone()
}

/// The row `ls` prints for `schedule` (as the API shows it).
fn row(schedule: &Value) -> Vec<String> {
    let text = |v: &Value| v.as_str().unwrap_or("-").to_owned();
    vec![
        text(&schedule["id"]),
        text(&schedule["type"]),
        text(&schedule["task"]),
        text(&schedule["generator"]["expression"]),
        text(&schedule["timezone"]),
        text(&schedule["nextRun"]),
        if schedule["active"] == true {
            "yes"
        } else {
            "no"
        }
        .to_owned(),
        text(&schedule["deduplicationKey"]),
    ]
}

const HEADER: [&str; 8] = [
    "ID", "TYPE", "TASK", "CRON", "TIMEZONE", "NEXT RUN", "ACTIVE", "KEY",
];

#[tokio::test]
async fn schedules_ls_create_rm_with_a_scheduled_exec_worker() {
    let app = TestApp::start();
    let (server, key) = (&app.server, app.dev_key.as_str());
    assert_eq!(succeeds(schedules(server, key, &["ls"])), "No schedules.\n");

    let mut worker = Worker::start(
        server,
        key,
        &[
            "--task",
            "nightly=cat",
            "--task",
            "hourly=cat",
            "--task",
            "plain=cat",
            "--scheduled",
            "nightly",
            "--cron",
            "hourly=15 * * * *",
            "--cron-timezone",
            "hourly=Asia/Tokyo",
        ],
    );
    worker.registration();

    // The declared cron is the task's DECLARATIVE schedule.
    let declared = listed(server, key).await;
    assert_eq!(declared.len(), 1, "{declared:?}");
    assert_eq!(
        (
            &declared[0]["type"],
            &declared[0]["task"],
            &declared[0]["generator"]["expression"],
            &declared[0]["timezone"],
        ),
        (
            &Value::from("DECLARATIVE"),
            &Value::from("hourly"),
            &Value::from("15 * * * *"),
            &Value::from("Asia/Tokyo"),
        )
    );
    assert_eq!(
        table(&succeeds(schedules(server, key, &["ls"]))),
        vec![HEADER.map(str::to_owned).to_vec(), row(&declared[0])]
    );

    // Create, then the same key again: one schedule, updated in place.
    let created = succeeds(schedules(
        server,
        key,
        &[
            "create",
            "--task",
            "nightly",
            "--cron",
            "0 9 * * 1-5",
            "--timezone",
            "Europe/Paris",
            "--dedup-key",
            "weekdays",
            "--external-id",
            "ext-1",
            "--window",
            "10m",
        ],
    ));
    assert!(created.starts_with("schedule sched_"), "{created}");
    assert!(
        created.contains(" (key weekdays): nightly 0 9 * * 1-5 (Europe/Paris), next run 20"),
        "{created}"
    );
    let id = created.split_whitespace().nth(1).unwrap().to_owned();
    let updated = succeeds(schedules(
        server,
        key,
        &[
            "create",
            "--task",
            "nightly",
            "--cron",
            "0 10 * * *",
            "--dedup-key",
            "weekdays",
        ],
    ));
    assert!(
        updated.starts_with(&format!(
            "schedule {id} (key weekdays): nightly 0 10 * * * (UTC)"
        )),
        "{updated}"
    );
    // Without a key, a new schedule named after its task.
    let generated = succeeds(schedules(
        server,
        key,
        &["create", "--task", "nightly", "--cron", "*/5 * * * *"],
    ));
    let generated_key = generated
        .split("(key ")
        .nth(1)
        .and_then(|rest| rest.split(')').next())
        .unwrap();
    assert!(
        generated_key
            .strip_prefix("nightly-")
            .is_some_and(|ms| ms.parse::<i64>().is_ok()),
        "{generated}"
    );

    let all = listed(server, key).await;
    assert_eq!(all.len(), 3, "{all:?}");
    assert_eq!(all[1]["id"], id.as_str());
    assert_eq!(all[1]["externalId"], Value::Null, "an update replaces");
    assert_eq!(all[2]["deduplicationKey"], generated_key);
    let mut expected = vec![HEADER.map(str::to_owned).to_vec()];
    expected.extend(all.iter().map(row));
    assert_eq!(table(&succeeds(schedules(server, key, &["ls"]))), expected);

    // Refusals, in the server's words.
    let stderr = fails(schedules(
        server,
        key,
        &["create", "--task", "plain", "--cron", "0 0 * * *"],
    ));
    assert!(
        stderr.contains("Task with identifier plain is not a scheduled task."),
        "{stderr}"
    );
    let stderr = fails(schedules(
        server,
        key,
        &["create", "--task", "nightly", "--cron", "0 0 * *"],
    ));
    assert!(stderr.contains("Invalid cron expression"), "{stderr}");
    let declared_id = declared[0]["id"].as_str().unwrap();
    let stderr = fails(schedules(server, key, &["rm", declared_id]));
    assert!(
        stderr.contains("Cannot delete a declarative schedule"),
        "{stderr}"
    );

    // rm by key, then by id.
    assert_eq!(
        succeeds(schedules(server, key, &["rm", "weekdays"])),
        format!("removed schedule {id}\n")
    );
    let stderr = fails(schedules(server, key, &["rm", "weekdays"]));
    assert!(stderr.contains("no schedule weekdays"), "{stderr}");
    let generated_id = all[2]["id"].as_str().unwrap();
    succeeds(schedules(server, key, &["rm", generated_id]));

    // A worker that no longer declares the cron takes the declarative schedule away.
    worker.kill();
    let mut worker = Worker::start(
        server,
        key,
        &["--task", "hourly=cat", "--scheduled", "hourly"],
    );
    worker.registration();
    assert_eq!(succeeds(schedules(server, key, &["ls"])), "No schedules.\n");

    // Another environment's key sees its own schedules only.
    let prod = common::keys_create(&app.data_dir(), "prod");
    assert_eq!(
        succeeds(schedules(server, &prod, &["ls"])),
        "No schedules.\n"
    );
}

#[test]
fn a_schedule_flag_for_a_task_the_worker_does_not_serve_stops_it() {
    let cases: [(&[&str], &str); 4] = [
        (
            &["--scheduled", "typo"],
            "--scheduled typo: no --task typo=COMMAND serves a task of that name",
        ),
        (
            &["--cron", "typo=* * * * *"],
            "--cron typo: no --task typo=COMMAND serves a task of that name",
        ),
        (
            &["--cron", "a=* * *"],
            "--cron a: Invalid cron expression: ",
        ),
        (
            &["--cron-timezone", "a=UTC"],
            "--cron-timezone a: the task has no --cron a=EXPR",
        ),
    ];
    for (flags, message) in cases {
        // No server: the flags are refused before the worker connects.
        let output = runnel_command()
            .args([
                "worker",
                "--api-url",
                "http://127.0.0.1:9",
                "--key",
                "tr_dev_x",
            ])
            .args(["--task", "a=cat"])
            .args(flags)
            .stdin(Stdio::null())
            .output()
            .expect("running the runnel binary");
        let stderr = fails(output);
        assert!(stderr.contains(message), "{flags:?}: {stderr}");
    }
}
