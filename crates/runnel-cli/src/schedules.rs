//! `runnel schedules ls | create | rm`: the cron schedules of the key's environment,
//! over the schedules API (`/api/v1/schedules`).
//!
//! `create` without `--dedup-key` names the schedule `<task>-<creation time in ms>`, so
//! each such call makes a new schedule; with a key the environment already has, it
//! updates that schedule in place (same id). `rm` takes an id or a key; a declarative
//! schedule (declared with its task) is removed by its task, not here.

use anyhow::{Context, Result};
use runnel_sdk::schedules::{Schedule, ScheduleOptions};
use runnel_sdk::{Client, StatusCode};

/// Schedules read per request by `ls`.
const LS_PAGE_SIZE: u32 = 100;

/// Every schedule of the key's environment, page by page.
async fn all(client: &Client) -> Result<Vec<Schedule>> {
    let mut out = Vec::new();
    let mut page = 1;
    loop {
        let listed = client
            .schedule_list(page, LS_PAGE_SIZE)
            .await
            .context("could not list the schedules")?;
        out.extend(listed.data);
        if listed.pagination.current_page >= listed.pagination.total_pages {
            return Ok(out);
        }
        page += 1;
    }
}

/// Prints the schedules as a table: id, type, task, cron, timezone, next run, active
/// and the deduplication key.
pub async fn ls(client: &Client) -> Result<()> {
    let schedules = all(client).await?;
    if schedules.is_empty() {
        println!("No schedules.");
        return Ok(());
    }
    let rows: Vec<[String; 8]> = schedules
        .iter()
        .map(|s| {
            [
                s.id.clone(),
                s.kind.clone(),
                s.task.clone(),
                s.generator.expression.clone(),
                s.timezone.clone(),
                s.next_run.clone().unwrap_or_else(|| "-".to_owned()),
                if s.active { "yes" } else { "no" }.to_owned(),
                s.deduplication_key
                    .clone()
                    .unwrap_or_else(|| "-".to_owned()),
            ]
        })
        .collect();
    let header = [
        "ID", "TYPE", "TASK", "CRON", "TIMEZONE", "NEXT RUN", "ACTIVE", "KEY",
    ];
    let widths: Vec<usize> = (0..header.len())
        .map(|i| {
            rows.iter()
                .map(|row| row[i].chars().count())
                .chain([header[i].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: Vec<&str>| {
        let last = cells.len() - 1;
        let text: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, cell)| {
                if i == last {
                    (*cell).to_owned()
                } else {
                    format!("{cell:<width$}", width = widths[i])
                }
            })
            .collect();
        println!("{}", text.join("  "));
    };
    line(header.to_vec());
    for row in &rows {
        line(row.iter().map(String::as_str).collect());
    }
    Ok(())
}

/// What `runnel schedules create` was given.
#[derive(Debug, Clone)]
pub struct CreateArgs {
    pub task: String,
    pub cron: String,
    pub timezone: Option<String>,
    pub dedup_key: Option<String>,
    pub external_id: Option<String>,
    pub window: Option<String>,
}

/// Creates (or, with a key the environment has, updates) a schedule; prints its id, key
/// and next run.
pub async fn create(client: &Client, args: CreateArgs) -> Result<()> {
    let key = args
        .dedup_key
        .unwrap_or_else(|| format!("{}-{}", args.task, chrono::Utc::now().timestamp_millis()));
    let options = ScheduleOptions {
        task: args.task,
        cron: args.cron,
        deduplication_key: key,
        external_id: args.external_id,
        timezone: args.timezone,
        window: args.window,
    };
    let schedule = client.schedule_create(&options).await?;
    println!(
        "schedule {} (key {}): {} {} ({}), next run {}",
        schedule.id,
        schedule.deduplication_key.as_deref().unwrap_or("-"),
        schedule.task,
        schedule.generator.expression,
        schedule.timezone,
        schedule.next_run.as_deref().unwrap_or("-"),
    );
    Ok(())
}

/// Deletes a schedule by id or deduplication key.
pub async fn rm(client: &Client, reference: &str) -> Result<()> {
    match client.schedule_delete(reference).await {
        Ok(id) => {
            println!("removed schedule {id}");
            Ok(())
        }
        Err(e) if e.status() == Some(StatusCode::NOT_FOUND) => {
            anyhow::bail!("no schedule {reference}")
        }
        Err(e) => Err(e.into()),
    }
}
