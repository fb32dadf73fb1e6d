//! `runnel trigger TASK [--wait [--timeout D]]`: trigger one run and, when asked, follow it
//! to its end, saying on stderr what it is waiting for.
//!
//! stdout carries the result only (the run id, or with `--wait` the finished run as JSON),
//! so it can be piped; everything said to a person goes to stderr. Exit codes with `--wait`:
//!
//! ```text
//!   0    the run completed
//!   1    the run ended any other way (FAILED, CRASHED, CANCELED, …), or a request failed
//!   2    the command line was wrong (clap)
//!   124  --timeout passed before the run ended (the run goes on; as timeout(1) does)
//! ```

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use runnel_sdk::client::TriggerOptions;
use runnel_sdk::{Client, RunStatus};

/// The exit code of `--wait` when `--timeout` passed first.
pub const EXIT_WAIT_TIMED_OUT: i32 = 124;
/// The longest `--timeout`: a year.
const TIMEOUT_MAX_SECS: u64 = 365 * 86_400;
/// How often a waited-on run is looked at.
const POLL_INTERVAL: Duration = Duration::from_millis(250);

/// Parses `--timeout`: whole seconds (`90`) or the API's duration form (`90s`, `1h30m`).
pub fn parse_timeout(s: &str) -> Result<Duration, String> {
    let secs = match s.parse::<u64>() {
        Ok(secs) => Some(secs),
        Err(_) => runnel_core::duration::parse_duration_secs(s),
    };
    match secs {
        Some(0) => Err("the timeout must be at least 1s".to_owned()),
        Some(secs) if secs > TIMEOUT_MAX_SECS => Err(format!(
            "the timeout must be at most a year (365d, {TIMEOUT_MAX_SECS} seconds)"
        )),
        Some(secs) => Ok(Duration::from_secs(secs)),
        None => Err(format!(
            "{s:?} is not a duration: use seconds (90) or units such as 30s, 5m, 1h30m"
        )),
    }
}

/// What `runnel trigger` was asked to do, once its flags are parsed.
#[derive(Debug)]
pub struct Trigger {
    pub task: String,
    pub payload: serde_json::Value,
    pub options: TriggerOptions,
    /// `Some` with `--wait`: how long to wait at most (`None`: until the run ends).
    pub wait: Option<Option<Duration>>,
}

/// Triggers the run, prints its id or waits for it; on a `--timeout` the process exits
/// with [`EXIT_WAIT_TIMED_OUT`].
pub async fn run(client: &Client, trigger: Trigger) -> Result<()> {
    let triggered = client
        .trigger(&trigger.task, &trigger.payload, trigger.options)
        .await?;
    let Some(timeout) = trigger.wait else {
        println!("{}", triggered.id);
        return Ok(());
    };
    let id = &triggered.id;
    let cached = if triggered.is_cached {
        " (an earlier run with this idempotency key)"
    } else {
        ""
    };
    eprintln!(
        "{id}{cached}: waiting for it to end; Ctrl-C stops waiting, not the run \
         (`runnel runs cancel {id}` does)"
    );
    let started = Instant::now();
    // On a terminal a spinner shows the status and the time waited; status changes are
    // plain lines above it (and the only output when stderr is not a terminal).
    let spinner = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    spinner.set_style(
        ProgressStyle::with_template("{spinner} {msg} {elapsed}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    spinner.set_message(id.clone());
    spinner.enable_steady_tick(Duration::from_millis(120));
    let mut last: Option<RunStatus> = None;
    let run = loop {
        let run = client
            .retrieve(id)
            .await
            .with_context(|| format!("reading {id}"))?;
        if run.status.is_final() {
            spinner.finish_and_clear();
            break run;
        }
        if last.as_ref() != Some(&run.status) {
            spinner.suspend(|| eprintln!("{}", describe_wait(id, &trigger.task, &run.status)));
            spinner.set_message(format!("{id} {}", run.status));
            last = Some(run.status.clone());
        }
        let waited = started.elapsed();
        if let Some(timeout) = timeout {
            if waited >= timeout {
                spinner.finish_and_clear();
                eprintln!(
                    "{id} is still {} after {}s (--timeout); it goes on without us: \
                     `runnel runs get {id}` shows it later",
                    run.status,
                    timeout.as_secs()
                );
                std::process::exit(EXIT_WAIT_TIMED_OUT);
            }
        }
        let left = timeout.map_or(POLL_INTERVAL, |t| POLL_INTERVAL.min(t - waited));
        tokio::time::sleep(left).await;
    };
    println!("{}", serde_json::to_string_pretty(&run.raw)?);
    if !run.is_success {
        bail!("run {} ended {}", run.id, run.status);
    }
    Ok(())
}

/// One line saying what a run that has not ended is doing, in words that say what to do.
fn describe_wait(id: &str, task: &str, status: &RunStatus) -> String {
    match status {
        // WAITING_FOR_DEPLOY is the legacy name this client reads; PENDING_VERSION the v4 one.
        RunStatus::WaitingForDeploy => format!(
            "no worker serves task {task} yet; the run waits for one (PENDING_VERSION). \
             Start one: runnel worker --task '{task}=COMMAND' (or runnel dev)"
        ),
        RunStatus::Delayed => {
            format!("{id} is delayed (DELAYED): it is queued when its delay ends")
        }
        RunStatus::Queued => format!("{id} is queued (QUEUED): waiting for a free worker slot"),
        RunStatus::Executing => format!("{id} is running (EXECUTING)"),
        RunStatus::Reattempting => {
            format!("{id} failed an attempt and is retried after its backoff (REATTEMPTING)")
        }
        other => format!("{id} is {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_read_as_seconds_or_durations() {
        assert_eq!(parse_timeout("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_timeout("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_timeout("1h30m"), Ok(Duration::from_secs(5400)));
        assert!(parse_timeout("0").unwrap_err().contains("at least 1s"));
        assert_eq!(parse_timeout("365d"), Ok(Duration::from_secs(31_536_000)));
        assert!(parse_timeout("366d").unwrap_err().contains("31536000"));
        assert!(parse_timeout("soon")
            .unwrap_err()
            .contains("not a duration"));
    }
}
