//! `runnel runs ls | cancel | replay | logs`: the runs of the key's environment from a
//! terminal, over the management API.

use std::collections::HashSet;
use std::time::Duration;

use anyhow::{bail, Result};
use runnel_sdk::{Client, RunEvent, RunEventsOptions, RunInfo, RunListOptions, StatusCode};

/// Prints one page of runs as a table, then how to get the next page.
pub async fn ls(client: &Client, options: &RunListOptions) -> Result<()> {
    let page = client.list_runs(options).await?;
    if page.runs.is_empty() {
        println!("No runs.");
        return Ok(());
    }
    let header = ["ID", "TASK", "STATUS", "CREATED", "DURATION", "TAGS"].map(str::to_owned);
    let rows: Vec<[String; 6]> = page.runs.iter().map(row).collect();
    let mut widths = header.clone().map(|h| h.len());
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    for row in std::iter::once(&header).chain(&rows) {
        let cells: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        println!("{}", cells.join("  ").trim_end());
    }
    if let Some(next) = &page.next {
        println!();
        println!("More runs: runnel runs ls --after {next} (with the same filters)");
    }
    Ok(())
}

fn row(run: &RunInfo) -> [String; 6] {
    let created = run.raw["createdAt"]
        .as_str()
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_else(|| "-".to_owned());
    let tags: Vec<&str> = run.raw["tags"]
        .as_array()
        .map(|tags| tags.iter().filter_map(|t| t.as_str()).collect())
        .unwrap_or_default();
    [
        run.id.clone(),
        run.task_identifier.clone(),
        run.status.to_string(),
        created,
        duration(run.duration_ms),
        if tags.is_empty() {
            "-".to_owned()
        } else {
            tags.join(",")
        },
    ]
}

/// Compute time for people: `-` (none yet), `340ms`, `12.5s`, `3m04s`, `2h05m`.
fn duration(ms: u64) -> String {
    match ms {
        0 => "-".to_owned(),
        1..=999 => format!("{ms}ms"),
        1_000..=59_999 => format!("{:.1}s", ms as f64 / 1000.0),
        60_000..=3_599_999 => format!("{}m{:02}s", ms / 60_000, ms % 60_000 / 1000),
        _ => format!("{}h{:02}m", ms / 3_600_000, ms % 3_600_000 / 60_000),
    }
}

/// Cancels a run and says what became of it.
pub async fn cancel(client: &Client, id: &str) -> Result<()> {
    let not_found =
        |e: runnel_sdk::Error| anyhow::anyhow!("no run {id} in this key's environment: {e}");
    let before = match client.retrieve(id).await {
        Err(e) if e.status() == Some(StatusCode::NOT_FOUND) => return Err(not_found(e)),
        other => other?,
    };
    if before.status.is_final() {
        println!("{id} had already ended: {}", before.status);
        return Ok(());
    }
    match client.cancel(id).await {
        Err(e) if e.status() == Some(StatusCode::NOT_FOUND) => return Err(not_found(e)),
        other => other?,
    }
    let after = client.retrieve(id).await?;
    if after.status.as_str() == "CANCELED" {
        println!("canceled {id}");
    } else {
        // It ended on its own between the look and the cancel.
        println!("{id} had already ended: {}", after.status);
    }
    Ok(())
}

/// Replays a run and prints the new run's id.
pub async fn replay(client: &Client, id: &str) -> Result<()> {
    match client.replay_run(id).await {
        Ok(new_id) => {
            println!("{new_id}");
            Ok(())
        }
        Err(e) if e.status() == Some(StatusCode::NOT_FOUND) => bail!(
            "cannot replay {id}: {e} (no such run in this key's environment, or the server \
             does not support replay)"
        ),
        Err(e) => Err(e.into()),
    }
}

/// How often `runs logs --follow` looks for new lines and at the run's status.
const FOLLOW_POLL: Duration = Duration::from_secs(1);
/// Log lines read per request.
const LOGS_PAGE: u32 = 1000;

/// Prints a run's log lines, oldest first; with `follow`, keeps printing new ones until
/// the run is final, then prints the rest and returns.
///
/// Following reads the lines after the last one printed. A line can reach the server
/// after a later one (the task process exports each on its own request), so once the
/// run has ended (and the task process's last export had a poll's time to land) the
/// whole log is read once more and the lines not printed yet are printed.
pub async fn logs(client: &Client, id: &str, follow: bool) -> Result<()> {
    let mut printed = HashSet::new();
    let mut after = None;
    let mut ended = false;
    loop {
        after = print_new_lines(client, id, after, &mut printed).await?;
        if !follow {
            return Ok(());
        }
        if ended {
            print_new_lines(client, id, None, &mut printed).await?;
            return Ok(());
        }
        ended = client.retrieve(id).await?.status.is_final();
        tokio::time::sleep(FOLLOW_POLL).await;
    }
}

/// Prints the run's log lines after `after` that are not in `printed` yet; returns the
/// cursor of the last line read.
async fn print_new_lines(
    client: &Client,
    id: &str,
    mut after: Option<String>,
    printed: &mut HashSet<String>,
) -> Result<Option<String>> {
    loop {
        let options = RunEventsOptions {
            logs_only: true,
            limit: Some(LOGS_PAGE),
            after: after.clone(),
        };
        let page = match client.run_events(id, &options).await {
            Err(e) if e.status() == Some(StatusCode::NOT_FOUND) => {
                bail!("no run {id} in this key's environment: {e}")
            }
            other => other?,
        };
        for event in &page.events {
            if printed.insert(event.cursor.clone()) {
                println!("{}", log_line(event));
            }
        }
        if let Some(last) = page.events.last() {
            after = Some(last.cursor.clone());
        }
        if page.next.is_none() {
            return Ok(after);
        }
    }
}

/// `2026-01-02 03:04:05.020 INFO  message key=value …` (times in UTC).
fn log_line(event: &RunEvent) -> String {
    let time = chrono::DateTime::parse_from_rfc3339(&event.start_time)
        .map(|t| {
            t.with_timezone(&chrono::Utc)
                .format("%Y-%m-%d %H:%M:%S%.3f")
                .to_string()
        })
        .unwrap_or_else(|_| event.start_time.clone());
    let mut line = format!("{time} {:<5} {}", event.level, event.message);
    for (key, value) in &event.properties {
        let value = match value {
            serde_json::Value::String(text) => text.clone(),
            other => other.to_string(),
        };
        line.push_str(&format!(" {key}={value}"));
    }
    line
}

#[cfg(test)]
mod tests {
    use super::{duration, log_line};
    use runnel_sdk::RunEvent;

    #[test]
    fn a_log_line_reads_time_level_message_and_fields() {
        let event: RunEvent = serde_json::from_value(serde_json::json!({
            "cursor": "1_1", "kind": "LOG", "message": "Hello, world!", "level": "INFO",
            "startTime": "2026-01-02T03:04:05.020123Z", "duration": 0.0,
            "properties": {"count": 3, "who": "me"},
        }))
        .unwrap();
        assert_eq!(
            log_line(&event),
            "2026-01-02 03:04:05.020 INFO  Hello, world! count=3 who=me"
        );
    }

    #[test]
    fn durations_read_well() {
        for (ms, text) in [
            (0, "-"),
            (340, "340ms"),
            (12_500, "12.5s"),
            (184_000, "3m04s"),
            (7_500_000, "2h05m"),
        ] {
            assert_eq!(duration(ms), text);
        }
    }
}
