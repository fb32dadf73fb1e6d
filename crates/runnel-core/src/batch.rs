//! Batches (contract §2.1 rows 2–8): many runs triggered together under one `batch_…` id.
//!
//! The current SDK creates a batch in two phases: `POST /api/v3/batches` names how many
//! runs it will hold ([`CreateBatchRequest`]), then `POST /api/v3/batches/{id}/items`
//! streams one [`BatchItemLine`] per NDJSON line. Items are identified by their index, so
//! a stream that is sent again only adds the indexes not seen before; once every index
//! `0..runCount` has arrived the batch is sealed and takes no more items.
//!
//! [`BatchRecord`] is the batch as stored and [`BatchStatus`] its lifecycle:
//!
//! ```text
//!   create ──► PENDING ──(last missing index arrives: every run exists)──► COMPLETED
//! ```
//!
//! Runs are created while their items arrive, so a sealed batch has nothing left to
//! process: Runnel goes straight to `COMPLETED` (`processingCompletedAt` = seal time).
//! `PROCESSING` and `ABORTED` are part of the vocabulary (upstream uses them for its
//! asynchronous item queue) and read back, but nothing here moves a batch into them.

use chrono::{DateTime, Duration, Utc};
use serde::Deserialize;
use serde_json::Value;

use crate::duration::parse_idempotency_ttl_secs;
use crate::id::{BatchId, EnvironmentId, RunId};
use crate::idempotency::{KEY_TTL_DEFAULT_SECS, MAX_KEY_LEN};
use crate::trigger::{IdempotencyKeyOptions, TriggerOptions, TriggerRequest};

/// Most runs one streamed batch holds (`STREAMING_BATCH_MAX_ITEMS`).
pub const MAX_RUN_COUNT: u32 = 1000;
/// Most items of a one-shot `POST /api/v1/tasks/batch` (`MAX_BATCH_V2_TRIGGER_ITEMS`).
pub const MAX_ONE_SHOT_ITEMS: usize = 500;
/// Largest `POST /api/v3/batches` body: 128 KiB.
pub const MAX_CREATE_BODY_BYTES: usize = 131_072;
/// Largest NDJSON line of an items stream: 3 MiB.
pub const MAX_ITEM_LINE_BYTES: usize = 3 * 1024 * 1024;

/// Where a batch is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchStatus {
    /// Created; items may still arrive.
    Pending,
    /// Upstream's "sealed, runs being created"; unused by Runnel (see the module doc).
    Processing,
    /// Sealed: every index arrived and its run exists (or its error is recorded).
    Completed,
    /// Given up; unused by Runnel so far.
    Aborted,
}

impl BatchStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            BatchStatus::Pending => "PENDING",
            BatchStatus::Processing => "PROCESSING",
            BatchStatus::Completed => "COMPLETED",
            BatchStatus::Aborted => "ABORTED",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            BatchStatus::Pending,
            BatchStatus::Processing,
            BatchStatus::Completed,
            BatchStatus::Aborted,
        ]
        .into_iter()
        .find(|b| b.as_str() == s)
    }
}

/// A batch as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchRecord {
    pub id: BatchId,
    pub environment_id: EnvironmentId,
    pub status: BatchStatus,
    /// How many items (indexes `0..run_count`) the batch holds.
    pub run_count: u32,
    /// How many distinct indexes have arrived.
    pub items_received: u32,
    /// The key as matched (unique per environment while it holds).
    pub idempotency_key: Option<String>,
    /// The user's own key, from `idempotencyKeyOptions`.
    pub idempotency_key_user: Option<String>,
    pub idempotency_key_expires_at: Option<DateTime<Utc>>,
    /// The run that triggered the batch, when triggered from inside a task.
    pub parent_run_id: Option<RunId>,
    pub resume_parent_on_completion: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// When the last missing index arrived.
    pub sealed_at: Option<DateTime<Utc>>,
    /// When every run of the batch existed (the seal, in Runnel).
    pub processing_completed_at: Option<DateTime<Utc>>,
}

impl BatchRecord {
    pub fn sealed(&self) -> bool {
        self.sealed_at.is_some()
    }

    /// The key a response shows: the user's own, else the matched one.
    pub fn public_idempotency_key(&self) -> Option<&str> {
        self.idempotency_key_user
            .as_deref()
            .or(self.idempotency_key.as_deref())
    }
}

/// One index of a batch as stored: the run it created, or why it created none.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchItemRecord {
    pub index: u32,
    pub task_identifier: String,
    /// The run the item created or, under an idempotency key, the run it returned.
    pub run_id: Option<RunId>,
    /// Why the item created no run (its trigger was refused).
    pub error: Option<String>,
}

/// Why a batch request was refused; the server maps each to its HTTP status.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BatchRequestError {
    /// Malformed input (400).
    #[error("{0}")]
    Invalid(String),
    /// Well-formed input the batch cannot take (422).
    #[error("{0}")]
    Unprocessable(String),
}

/// `POST /api/v3/batches` body.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreateBatchRequest {
    pub run_count: i64,
    /// Accepted for compatibility (upstream uses it for rate limiting); not stored.
    #[serde(default)]
    pub task_identifiers: Option<Vec<String>>,
    #[serde(default)]
    pub parent_run_id: Option<String>,
    #[serde(default)]
    pub resume_parent_on_completion: Option<bool>,
    #[serde(default)]
    pub idempotency_key: Option<String>,
    #[serde(default, rename = "idempotencyKeyTTL")]
    pub idempotency_key_ttl: Option<String>,
    #[serde(default)]
    pub idempotency_key_options: Option<IdempotencyKeyOptions>,
}

impl CreateBatchRequest {
    /// Validates the request and builds the batch to store as `id` at `now`; `header_key`
    /// is the `idempotency-key` header, used when the body names no key.
    pub fn into_record(
        self,
        id: BatchId,
        environment_id: EnvironmentId,
        header_key: Option<String>,
        now: DateTime<Utc>,
    ) -> Result<BatchRecord, BatchRequestError> {
        if self.run_count < 1 || self.run_count > i64::from(MAX_RUN_COUNT) {
            return Err(BatchRequestError::Invalid(format!(
                "runCount: must be between 1 and {MAX_RUN_COUNT}"
            )));
        }
        let key = self
            .idempotency_key
            .or(header_key)
            .filter(|k| !k.is_empty());
        let user_key = self.idempotency_key_options.map(|o| o.key);
        for (field, value) in [
            ("idempotencyKey", key.as_deref()),
            ("idempotencyKeyOptions.key", user_key.as_deref()),
            ("parentRunId", self.parent_run_id.as_deref()),
        ] {
            if let Some(value) = value {
                if value.len() > MAX_KEY_LEN {
                    return Err(BatchRequestError::Invalid(format!(
                        "{field}: must be at most {MAX_KEY_LEN} characters"
                    )));
                }
                if value.contains('\0') {
                    return Err(BatchRequestError::Invalid(format!(
                        "{field}: must not contain NUL characters"
                    )));
                }
            }
        }
        let parent_run_id = self
            .parent_run_id
            .as_deref()
            .map(|parent| {
                RunId::parse(parent).ok_or_else(|| {
                    BatchRequestError::Invalid("parentRunId: must be a run id (run_…)".to_owned())
                })
            })
            .transpose()?;
        let ttl_secs = self
            .idempotency_key_ttl
            .as_deref()
            .and_then(parse_idempotency_ttl_secs)
            .unwrap_or(KEY_TTL_DEFAULT_SECS);
        let expires_at = key
            .as_ref()
            .map(|_| now + Duration::seconds(i64::try_from(ttl_secs).unwrap_or(i64::MAX / 2_000)));
        Ok(BatchRecord {
            id,
            environment_id,
            status: BatchStatus::Pending,
            run_count: self.run_count as u32,
            items_received: 0,
            idempotency_key_user: key.as_ref().and(user_key),
            idempotency_key: key,
            idempotency_key_expires_at: expires_at,
            parent_run_id,
            resume_parent_on_completion: self.resume_parent_on_completion.unwrap_or(false),
            created_at: now,
            updated_at: now,
            sealed_at: None,
            processing_completed_at: None,
        })
    }
}

/// One line of an items stream (`BatchItemNDJSON`): a trigger of `task` at `index`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BatchItemLine {
    pub index: u32,
    pub task: String,
    #[serde(default)]
    pub payload: Option<Value>,
    #[serde(default)]
    pub context: Option<Value>,
    #[serde(default)]
    pub options: Option<TriggerOptions>,
}

impl BatchItemLine {
    /// The single-trigger request the item amounts to.
    pub fn into_trigger(self) -> (u32, String, TriggerRequest) {
        (
            self.index,
            self.task,
            TriggerRequest {
                payload: self.payload,
                context: self.context,
                options: self.options,
            },
        )
    }
}

/// `POST /api/v1/tasks/batch` body: every run of the batch at once.
#[derive(Debug, Deserialize)]
pub struct OneShotBatchRequest {
    pub items: Vec<OneShotItem>,
}

/// An item of a one-shot batch: an items-stream line without its index.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OneShotItem {
    pub task: String,
    #[serde(default)]
    pub payload: Option<Value>,
    #[serde(default)]
    pub context: Option<Value>,
    #[serde(default)]
    pub options: Option<TriggerOptions>,
}

impl OneShotItem {
    /// The single-trigger request the item amounts to.
    pub fn into_trigger(self) -> (String, TriggerRequest) {
        (
            self.task,
            TriggerRequest {
                payload: self.payload,
                context: self.context,
                options: self.options,
            },
        )
    }
}

/// Parses an NDJSON items body: blank lines are skipped; a line that is not JSON is a
/// 400 (`Invalid JSON at line N`), a line that is not an item or names an index outside
/// `0..run_count` a 422, a line over [`MAX_ITEM_LINE_BYTES`] a 400.
pub fn parse_item_lines(
    body: &[u8],
    run_count: u32,
) -> Result<Vec<BatchItemLine>, BatchRequestError> {
    let mut items = Vec::new();
    let mut lines = ItemLines::new(run_count);
    lines.push(body, &mut items)?;
    lines.finish(&mut items)?;
    Ok(items)
}

/// Most bytes of an unfinished line an [`ItemLines`] holds: a line at the limit plus room
/// for whitespace around it (trimmed before the limit applies).
const MAX_PENDING_LINE_BYTES: usize = MAX_ITEM_LINE_BYTES + 64 * 1024;

/// An items stream parsed as it arrives: bytes go in as they come, the items of the
/// lines they complete come out, and only the one unfinished line is held, so memory
/// does not grow with the stream. Lines are judged as by [`parse_item_lines`].
#[derive(Debug)]
pub struct ItemLines {
    run_count: u32,
    /// The start of a line whose newline has not arrived yet.
    pending: Vec<u8>,
    /// Lines completed so far.
    line_number: usize,
}

impl ItemLines {
    pub fn new(run_count: u32) -> ItemLines {
        ItemLines {
            run_count,
            pending: Vec::new(),
            line_number: 0,
        }
    }

    /// Takes the next bytes of the stream; appends the items of the lines they complete.
    pub fn push(
        &mut self,
        mut bytes: &[u8],
        items: &mut Vec<BatchItemLine>,
    ) -> Result<(), BatchRequestError> {
        while let Some(end) = bytes.iter().position(|b| *b == b'\n') {
            let line = &bytes[..end];
            bytes = &bytes[end + 1..];
            if self.pending.is_empty() {
                self.line(line, items)?;
            } else {
                let mut whole = std::mem::take(&mut self.pending);
                whole.extend_from_slice(line);
                self.line(&whole, items)?;
            }
        }
        let pending = self.pending.len() + bytes.len();
        if pending > MAX_PENDING_LINE_BYTES {
            return Err(BatchRequestError::Invalid(format!(
                "Item at line {} exceeds maximum size of {MAX_ITEM_LINE_BYTES} bytes (actual: more than {pending})",
                self.line_number + 1
            )));
        }
        self.pending.extend_from_slice(bytes);
        Ok(())
    }

    /// Ends the stream: the last line needs no newline.
    pub fn finish(mut self, items: &mut Vec<BatchItemLine>) -> Result<(), BatchRequestError> {
        let last = std::mem::take(&mut self.pending);
        if last.is_empty() {
            return Ok(());
        }
        self.line(&last, items)
    }

    fn line(
        &mut self,
        line: &[u8],
        items: &mut Vec<BatchItemLine>,
    ) -> Result<(), BatchRequestError> {
        self.line_number += 1;
        let line_number = self.line_number;
        let run_count = self.run_count;
        let line = line.trim_ascii();
        if line.is_empty() {
            return Ok(());
        }
        if line.len() > MAX_ITEM_LINE_BYTES {
            return Err(BatchRequestError::Invalid(format!(
                "Item at line {line_number} exceeds maximum size of {MAX_ITEM_LINE_BYTES} bytes (actual: {})",
                line.len()
            )));
        }
        let value: Value = serde_json::from_slice(line).map_err(|e| {
            BatchRequestError::Invalid(format!("Invalid JSON at line {line_number}: {e}"))
        })?;
        let item: BatchItemLine = item_from_value(value).map_err(|e| {
            BatchRequestError::Unprocessable(format!("Invalid item at line {line_number}: {e}"))
        })?;
        if item.index >= run_count {
            return Err(BatchRequestError::Unprocessable(format!(
                "Item index {} exceeds batch runCount {run_count}",
                item.index
            )));
        }
        items.push(item);
        Ok(())
    }
}

/// An item from one parsed line; serde's message names a missing or mistyped field.
fn item_from_value(value: Value) -> Result<BatchItemLine, serde_json::Error> {
    if !value.is_object() {
        return Err(serde::de::Error::custom("must be a JSON object"));
    }
    serde_json::from_value(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap()
    }

    fn record(body: Value) -> Result<BatchRecord, BatchRequestError> {
        let request: CreateBatchRequest = serde_json::from_value(body).unwrap();
        request.into_record(
            BatchId::generate(0),
            EnvironmentId::generate(0),
            None,
            now(),
        )
    }

    #[test]
    fn run_count_must_be_between_one_and_the_maximum() {
        for (count, ok) in [
            (0, false),
            (-1, false),
            (1, true),
            (1000, true),
            (1001, false),
        ] {
            let result = record(serde_json::json!({"runCount": count}));
            assert_eq!(result.is_ok(), ok, "{count}: {result:?}");
        }
    }

    #[test]
    fn idempotency_key_gets_the_default_ttl_and_the_user_key() {
        let batch = record(serde_json::json!({
            "runCount": 2, "idempotencyKey": "k",
            "idempotencyKeyOptions": {"key": "mine", "scope": "global"}
        }))
        .unwrap();
        assert_eq!(batch.idempotency_key.as_deref(), Some("k"));
        assert_eq!(batch.public_idempotency_key(), Some("mine"));
        assert_eq!(
            batch.idempotency_key_expires_at,
            Some(now() + Duration::days(30))
        );
        let unkeyed = record(serde_json::json!({"runCount": 2})).unwrap();
        assert_eq!(unkeyed.idempotency_key_expires_at, None);
    }

    #[test]
    fn item_lines_parse_and_refuse_by_kind() {
        let body =
            b"{\"index\":1,\"task\":\"a\",\"payload\":{\"n\":1}}\n\n{\"index\":0,\"task\":\"b\"}\n";
        let items = parse_item_lines(body, 2).unwrap();
        assert_eq!(
            items.iter().map(|i| i.index).collect::<Vec<_>>(),
            vec![1, 0]
        );
        let cases: [(&[u8], bool); 4] = [
            (b"{not json", true),
            (b"{\"task\":\"a\"}", false),
            (b"{\"index\":2,\"task\":\"a\"}", false),
            (b"[1]", false),
        ];
        for (body, invalid) in cases {
            let err = parse_item_lines(body, 2).unwrap_err();
            assert_eq!(
                matches!(err, BatchRequestError::Invalid(_)),
                invalid,
                "{err:?}"
            );
        }
    }

    #[test]
    fn item_lines_split_anywhere_parse_as_the_whole_body() {
        let body =
            b"{\"index\":1,\"task\":\"a\"}\n  \n{\"index\":0,\"task\":\"b\",\"payload\":\"x\\ny\"}";
        for piece in 1..body.len() {
            let mut items = Vec::new();
            let mut lines = ItemLines::new(2);
            for bytes in body.chunks(piece) {
                lines.push(bytes, &mut items).unwrap();
            }
            lines.finish(&mut items).unwrap();
            let read: Vec<_> = items.iter().map(|i| (i.index, i.task.as_str())).collect();
            assert_eq!(read, vec![(1, "a"), (0, "b")], "pieces of {piece}");
        }
        // A line that never ends is refused once it outgrows the limit, not buffered.
        let mut lines = ItemLines::new(2);
        let chunk = vec![b' '; 1024 * 1024];
        let refused = (0..8).find_map(|_| lines.push(&chunk, &mut Vec::new()).err());
        assert!(
            matches!(&refused, Some(BatchRequestError::Invalid(m)) if m.starts_with("Item at line 1 exceeds maximum size")),
            "{refused:?}"
        );
    }
}
