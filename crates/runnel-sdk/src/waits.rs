//! Waits of a running task: trigger a child run and wait for its result, a batch of
//! them, a time, a token. The run is blocked on the server meanwhile (status `WAITING`,
//! its compute time stopped) while the task's future stays where it awaits.
//!
//! ```text
//!   task ──► the wait's call ──► the server blocks the run with a waitpoint
//!     │        (trigger with parentRunId + resumeParentOnCompletion, a batch with
//!     │         them, POST …/wait/duration, POST …/waitpoints/tokens/{id}/wait)
//!     │
//!     └─ polls GET /engine/v1/runs/{run}/snapshots/latest every WAIT_POLL_INTERVAL
//!          until its snapshot lists the waitpoint as completed (the run resumed):
//!          a child's output or error, a token's data or its timeout
//! ```
//!
//! The worker keeps heartbeating a waiting attempt, which keeps its concurrency slot: a
//! worker whose every slot waits for children has none left to run them, so give it
//! room (or run the children on another worker). A cancel of the waiting run stops the
//! task as any cancel does. The worker's own `maxDuration` watchdog counts wall time,
//! waits included.
//!
//! A wait is matched to its completion by the waitpoint: a child by its run id
//! (`completedByTaskRun`), a batch item by batch id and index, a time or a token by the
//! waitpoint id. Waits of one context may run concurrently (`join!`): the run resumes
//! once all of them are completed and each finds its own.

use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use reqwest::Method;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::client::{segment, Client, Error, TriggerOptions, REQUEST_TIMEOUT};
use crate::tasks::TaskContext;

/// Between two reads of the waiting run's latest snapshot: a resumed task goes on within
/// this, and a waiting one costs the server a few reads per second.
pub const WAIT_POLL_INTERVAL: Duration = Duration::from_millis(250);

/// The content type of JSON payloads and outputs.
const JSON: &str = "application/json";

/// What a child run ended with, as its parent's wait hands it over.
#[derive(Debug, Clone, PartialEq)]
pub struct ChildResult {
    /// The child run (`run_…`).
    pub id: String,
    /// `Ok(output)` when the child succeeded (`null` for no output), `Err(error)` when it
    /// failed: its error as the server describes it (`{"type", "message", …}`).
    pub outcome: Result<Value, Value>,
}

impl ChildResult {
    pub fn is_ok(&self) -> bool {
        self.outcome.is_ok()
    }

    /// The output decoded as `T`; a failed child is [`Error::Wait`] with its message.
    pub fn output_as<T: DeserializeOwned>(&self) -> Result<T, Error> {
        match &self.outcome {
            Ok(output) => T::deserialize(output).map_err(|source| Error::Decode {
                context: format!("the output of run {}", self.id),
                source,
            }),
            Err(_) => Err(Error::Wait(format!(
                "run {} failed: {}",
                self.id,
                self.error_message().unwrap_or("no message")
            ))),
        }
    }

    /// The failed child's error message (`message`, or the `raw` text of a string error).
    pub fn error_message(&self) -> Option<&str> {
        let error = self.outcome.as_ref().err()?;
        error
            .get("message")
            .or_else(|| error.get("raw"))
            .and_then(Value::as_str)
    }
}

/// How a wait for a token ended.
#[derive(Debug, Clone, PartialEq)]
pub enum TokenResult {
    /// Completed with this data (`null` when none was given).
    Completed(Value),
    /// Its timeout passed first.
    TimedOut,
}

/// A token made by [`Client::create_token`].
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Token {
    /// `waitpoint_…`: what [`TaskContext::wait_for_token`] and
    /// [`Client::complete_token`] name.
    pub id: String,
    /// A POST of JSON to this URL completes the token with it (no key needed).
    pub url: String,
    /// True when an idempotency key found an existing token.
    #[serde(default)]
    pub is_cached: bool,
}

/// One child of [`TaskContext::batch_trigger_and_wait`].
#[derive(Debug, Clone, PartialEq)]
pub struct BatchItem {
    pub task: String,
    pub payload: Value,
    pub options: TriggerOptions,
}

impl BatchItem {
    /// A child of `task` with `payload` (anything that serializes to JSON).
    pub fn new<P: Serialize + ?Sized>(task: impl Into<String>, payload: &P) -> Result<Self, Error> {
        Ok(BatchItem {
            task: task.into(),
            payload: serde_json::to_value(payload).map_err(Error::Payload)?,
            options: TriggerOptions::default(),
        })
    }

    pub fn with_options(mut self, options: TriggerOptions) -> Self {
        self.options = options;
        self
    }
}

impl Client {
    /// Creates a token (`POST /api/v1/waitpoints/tokens`) that a task can wait for; it
    /// times out after `timeout` (never when `None`; whole seconds, rounded up).
    pub async fn create_token(&self, timeout: Option<Duration>) -> Result<Token, Error> {
        let mut body = Map::new();
        if let Some(timeout) = timeout {
            let secs = timeout.as_secs() + u64::from(timeout.subsec_nanos() > 0);
            body.insert("timeout".into(), json!(format!("{secs}s")));
        }
        self.call(
            Method::POST,
            "/api/v1/waitpoints/tokens",
            Some(&body),
            REQUEST_TIMEOUT,
        )
        .await
    }

    /// Completes token `id` with `data`, resuming the runs that wait for it.
    pub async fn complete_token<D: Serialize + ?Sized>(
        &self,
        id: &str,
        data: &D,
    ) -> Result<(), Error> {
        let data = serde_json::to_value(data).map_err(Error::Payload)?;
        let path = format!("/api/v1/waitpoints/tokens/{}/complete", segment(id));
        let _: Value = self
            .call(
                Method::POST,
                &path,
                Some(&json!({ "data": data })),
                REQUEST_TIMEOUT,
            )
            .await?;
        Ok(())
    }
}

impl TaskContext {
    /// The worker's client this context's waits use; `None` for a context not made by a
    /// [`crate::Worker`].
    pub fn client(&self) -> Option<&Client> {
        self.client.as_ref()
    }

    fn waiting_client(&self) -> Result<&Client, Error> {
        self.client.as_ref().ok_or_else(|| {
            Error::Wait("this task context has no client (it was not made by a worker)".into())
        })
    }

    /// Triggers a child run of `task` and waits for it to end: its output, or its error.
    /// The run waits meanwhile (its compute time stopped); the child is its child
    /// (`parentTaskRunId`, depth + 1).
    pub async fn trigger_and_wait<P: Serialize + ?Sized>(
        &self,
        task: &str,
        payload: &P,
        options: TriggerOptions,
    ) -> Result<ChildResult, Error> {
        let client = self.waiting_client()?;
        let payload = serde_json::to_value(payload).map_err(Error::Payload)?;
        let mut options = serde_json::to_value(&options).map_err(Error::Payload)?;
        options["parentRunId"] = json!(self.run_id);
        options["resumeParentOnCompletion"] = json!(true);
        let path = format!("/api/v1/tasks/{}/trigger", segment(task));
        #[derive(Deserialize)]
        struct Triggered {
            id: String,
        }
        let child: Triggered = client
            .call(
                Method::POST,
                &path,
                Some(&json!({ "payload": payload, "options": options })),
                REQUEST_TIMEOUT,
            )
            .await?;
        let completed = self
            .until_completed(client, |w| {
                w.pointer("/completedByTaskRun/friendlyId")
                    .and_then(Value::as_str)
                    == Some(child.id.as_str())
            })
            .await?;
        child_result(child.id, &completed)
    }

    /// Triggers a batch of children (one run per item) and waits for all of them to end:
    /// their results in item order. An item whose trigger was refused is an `Err` too
    /// (with an empty `id`).
    pub async fn batch_trigger_and_wait(
        &self,
        items: Vec<BatchItem>,
    ) -> Result<Vec<ChildResult>, Error> {
        let client = self.waiting_client()?;
        if items.is_empty() {
            return Ok(Vec::new());
        }
        #[derive(Deserialize)]
        struct Created {
            id: String,
        }
        let batch: Created = client
            .call(
                Method::POST,
                "/api/v3/batches",
                Some(&json!({
                    "runCount": items.len(),
                    "parentRunId": self.run_id,
                    "resumeParentOnCompletion": true,
                })),
                REQUEST_TIMEOUT,
            )
            .await?;
        let mut lines = String::new();
        for (index, item) in items.iter().enumerate() {
            let line = json!({
                "index": index,
                "task": item.task,
                "payload": item.payload,
                "options": item.options,
            });
            lines.push_str(&line.to_string());
            lines.push('\n');
        }
        let path = format!("/api/v3/batches/{}/items", segment(&batch.id));
        let request = client
            .request(Method::POST, &path, REQUEST_TIMEOUT)
            .header(reqwest::header::CONTENT_TYPE, "application/x-ndjson")
            .body(lines);
        let _: Value = client.send(request, Method::POST, &path).await?;
        let mut results: Vec<Option<ChildResult>> = vec![None; items.len()];
        let in_batch = |w: &Value| {
            w.pointer("/completedByTaskRun/batch/friendlyId")
                .and_then(Value::as_str)
                == Some(batch.id.as_str())
        };
        let completed = self
            .until_listed(client, |waitpoints| {
                let ours: Vec<&Value> = waitpoints.iter().filter(|w| in_batch(w)).collect();
                (!ours.is_empty()).then(|| ours.into_iter().cloned().collect::<Vec<_>>())
            })
            .await?;
        for waitpoint in completed {
            let index = waitpoint.get("index").and_then(Value::as_u64);
            let id = waitpoint
                .pointer("/completedByTaskRun/friendlyId")
                .and_then(Value::as_str);
            if let (Some(index), Some(id)) = (index, id) {
                if let Some(slot) = results.get_mut(index as usize) {
                    *slot = Some(child_result(id.to_owned(), &waitpoint)?);
                }
            }
        }
        // An item whose trigger was refused has no run: its waitpoint completed with the
        // refusal but names neither the batch nor a run, so it is only known as missing.
        Ok(results
            .into_iter()
            .map(|result| {
                result.unwrap_or_else(|| ChildResult {
                    id: String::new(),
                    outcome: Err(json!({
                        "type": "STRING_ERROR",
                        "raw": "the item's trigger was refused",
                    })),
                })
            })
            .collect())
    }

    /// Waits `duration` (a run waiting for a time costs no compute).
    pub async fn wait_for(&self, duration: Duration) -> Result<(), Error> {
        let duration = chrono::Duration::from_std(duration)
            .map_err(|_| Error::Wait(format!("{duration:?} is too long a wait")))?;
        self.wait_until(Utc::now() + duration).await
    }

    /// Waits until `until` (at once when it has passed).
    pub async fn wait_until(&self, until: DateTime<Utc>) -> Result<(), Error> {
        let client = self.waiting_client()?;
        let path = format!("/engine/v1/runs/{}/wait/duration", segment(&self.run_id));
        let date = until.to_rfc3339_opts(SecondsFormat::Millis, true);
        let waiting: Value = client
            .call(
                Method::POST,
                &path,
                Some(&json!({ "date": date })),
                REQUEST_TIMEOUT,
            )
            .await?;
        let Some(id) = waiting.pointer("/waitpoint/id").and_then(Value::as_str) else {
            return Err(Error::Wait(format!("{path} answered no waitpoint id")));
        };
        self.until_completed(client, |w| w.get("id").and_then(Value::as_str) == Some(id))
            .await?;
        Ok(())
    }

    /// Waits for token `id` ([`Client::create_token`]) to be completed or to time out.
    pub async fn wait_for_token(&self, id: &str) -> Result<TokenResult, Error> {
        let client = self.waiting_client()?;
        let path = format!(
            "/engine/v1/runs/{}/waitpoints/tokens/{}/wait",
            segment(&self.run_id),
            segment(id)
        );
        let _: Value = client
            .call(Method::POST, &path, None::<&()>, REQUEST_TIMEOUT)
            .await?;
        let completed = self
            .until_completed(client, |w| w.get("id").and_then(Value::as_str) == Some(id))
            .await?;
        if completed.get("outputIsError").and_then(Value::as_bool) == Some(true) {
            return Ok(TokenResult::TimedOut);
        }
        Ok(TokenResult::Completed(packet(&completed, id)?))
    }

    /// Polls the run's latest snapshot until it lists a completed waitpoint that
    /// `matches`.
    async fn until_completed(
        &self,
        client: &Client,
        matches: impl Fn(&Value) -> bool,
    ) -> Result<Value, Error> {
        self.until_listed(client, |waitpoints| {
            waitpoints.iter().find(|w| matches(w)).cloned()
        })
        .await
    }

    /// Polls the run's latest snapshot every [`WAIT_POLL_INTERVAL`] until `found` picks
    /// something out of its completed waitpoints; fails when the run has ended. Transient
    /// errors (server unreachable, 5xx) are retried at the same pace.
    async fn until_listed<T>(
        &self,
        client: &Client,
        found: impl Fn(&[Value]) -> Option<T>,
    ) -> Result<T, Error> {
        let path = format!("/engine/v1/runs/{}/snapshots/latest", segment(&self.run_id));
        loop {
            let latest: Value = match client
                .call(Method::GET, &path, None::<&()>, REQUEST_TIMEOUT)
                .await
            {
                Ok(latest) => latest,
                // A server away for a while (a restart) does not end the wait: the run
                // is still blocked there, and a cancel stops this task anyway.
                Err(error) if error.is_transient() => {
                    tracing::debug!(%error, run = %self.run_id, "reading the waiting run failed");
                    tokio::time::sleep(WAIT_POLL_INTERVAL).await;
                    continue;
                }
                Err(error) => return Err(error),
            };
            let execution = &latest["execution"];
            let waitpoints = execution["completedWaitpoints"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default();
            if let Some(found) = found(waitpoints) {
                return Ok(found);
            }
            match execution
                .pointer("/snapshot/executionStatus")
                .and_then(Value::as_str)
            {
                Some("FINISHED") => {
                    let status = execution
                        .pointer("/run/status")
                        .and_then(Value::as_str)
                        .unwrap_or("finished");
                    return Err(Error::Wait(format!(
                        "run {} ended ({status}) while it waited",
                        self.run_id
                    )));
                }
                _ => tokio::time::sleep(WAIT_POLL_INTERVAL).await,
            }
        }
    }
}

/// A completed child waitpoint as the child's result.
fn child_result(id: String, waitpoint: &Value) -> Result<ChildResult, Error> {
    let value = packet(waitpoint, &id)?;
    let outcome = if waitpoint.get("outputIsError").and_then(Value::as_bool) == Some(true) {
        Err(value)
    } else {
        Ok(value)
    };
    Ok(ChildResult { id, outcome })
}

/// A completed waitpoint's output packet as JSON: `null` when there is none; a packet of
/// another content type is kept as a JSON string.
fn packet(waitpoint: &Value, of: &str) -> Result<Value, Error> {
    let Some(output) = waitpoint.get("output").and_then(Value::as_str) else {
        return Ok(Value::Null);
    };
    let output_type = waitpoint
        .get("outputType")
        .and_then(Value::as_str)
        .unwrap_or(JSON);
    if output_type != JSON {
        return Ok(Value::String(output.to_owned()));
    }
    serde_json::from_str(output).map_err(|source| Error::Decode {
        context: format!("the output {of} completed with"),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_child_waitpoint_reads_as_its_result() {
        let ok = json!({
            "output": "{\"n\":2}", "outputType": "application/json", "outputIsError": false,
        });
        assert_eq!(
            child_result("run_a".into(), &ok).unwrap(),
            ChildResult {
                id: "run_a".into(),
                outcome: Ok(json!({"n": 2}))
            }
        );
        let none = json!({"outputIsError": false});
        assert_eq!(
            child_result("run_a".into(), &none).unwrap().outcome,
            Ok(Value::Null)
        );
        let failed = json!({
            "output": "{\"type\":\"BUILT_IN_ERROR\",\"message\":\"boom\"}",
            "outputType": "application/json",
            "outputIsError": true,
        });
        let failed = child_result("run_b".into(), &failed).unwrap();
        assert_eq!(failed.error_message(), Some("boom"));
        let error = failed.output_as::<Value>().unwrap_err();
        assert_eq!(error.to_string(), "cannot wait: run run_b failed: boom");
        let raw = json!({
            "output": "{\"type\":\"STRING_ERROR\",\"raw\":\"no\"}", "outputIsError": true,
        });
        assert_eq!(
            child_result("run_c".into(), &raw).unwrap().error_message(),
            Some("no")
        );
        let text = json!({"output": "plain", "outputType": "text/plain"});
        assert_eq!(packet(&text, "x").unwrap(), json!("plain"));
    }
}
