//! `runnel runs ls | cancel | replay`: the runs of the key's environment from a
//! terminal, over the management API.

use anyhow::{bail, Result};
use runnel_sdk::{Client, RunInfo, RunListOptions, StatusCode};

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

#[cfg(test)]
mod tests {
    use super::duration;

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
