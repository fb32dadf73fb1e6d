//! The payload of a run a schedule triggered, typed: [`ScheduledPayload`].
//!
//! The server stores a scheduled run's payload as superjson (`application/super+json`,
//! `{"json": {…}, "meta": {"values": {"timestamp": ["Date"], …}}}`) so the TypeScript SDK
//! revives its dates. A Rust task never sees the envelope: the worker protocol hands every
//! superjson payload over as its `json` part (docs/worker-protocol.md, Dequeue), and the
//! runtime reads a superjson packet from object storage the same way
//! ([`crate::packets::Packet::decode`]). So the task's payload is plain JSON with the dates
//! as ISO 8601 strings, which this struct deserializes:
//!
//! ```no_run
//! use runnel_sdk::{ScheduledPayload, Task, Tasks};
//!
//! let tasks = Tasks::new().task(
//!     Task::new("nightly-report").cron("0 2 * * *"),
//!     |payload: ScheduledPayload| async move {
//!         Ok::<_, String>(format!("report for {}", payload.timestamp.date_naive()))
//!     },
//! );
//! ```

use chrono::{DateTime, Utc};
use runnel_core::schedule::ScheduleKind;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// What a scheduled run receives (the TypeScript SDK's `ScheduledTaskPayload`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ScheduledPayload {
    /// The schedule that triggered the run (`sched_…`).
    pub schedule_id: String,
    /// `DECLARATIVE` (declared with the task, e.g. [`crate::Task::cron`]) or `IMPERATIVE`
    /// (created through the API).
    #[serde(
        rename = "type",
        serialize_with = "kind_to_str",
        deserialize_with = "kind_from_str"
    )]
    pub kind: ScheduleKind,
    /// The occurrence this run is for (its nominal time, in UTC).
    pub timestamp: DateTime<Utc>,
    /// The occurrence the schedule fired before this one, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_timestamp: Option<DateTime<Utc>>,
    /// The schedule's `externalId` (an imperative schedule's, when it has one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_id: Option<String>,
    /// The IANA timezone the cron is read in (`UTC` unless the schedule says otherwise).
    pub timezone: String,
    /// The schedule's next occurrences after this one, soonest first.
    #[serde(default)]
    pub upcoming: Vec<DateTime<Utc>>,
}

fn kind_to_str<S: Serializer>(kind: &ScheduleKind, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(kind.as_str())
}

fn kind_from_str<'de, D: Deserializer<'de>>(deserializer: D) -> Result<ScheduleKind, D::Error> {
    let text = String::deserialize(deserializer)?;
    text.parse().map_err(serde::de::Error::custom)
}

#[cfg(test)]
mod tests {
    use runnel_core::run::Packet;
    use serde_json::{json, Value};

    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    /// The server's payload of an occurrence, as a worker receives it: superjson made by
    /// the scheduler, decoded to its `json` part as the worker protocol renders it.
    fn as_dequeued(payload: &runnel_core::schedule::ScheduledPayload) -> Value {
        Packet {
            data: Some(payload.to_superjson()),
            data_type: runnel_core::schedule::PAYLOAD_TYPE.to_owned(),
        }
        .to_value()
        .expect("a payload")
    }

    #[test]
    fn the_scheduler_payload_deserializes_whole() {
        let upcoming = vec![utc("2026-12-03T18:01:00Z"), utc("2026-12-03T18:02:00Z")];
        let server = runnel_core::schedule::ScheduledPayload {
            schedule_id: "sched_abc",
            kind: ScheduleKind::Imperative,
            timestamp: utc("2026-12-03T18:00:00Z"),
            last_timestamp: Some(utc("2026-12-03T17:59:00Z")),
            external_id: Some("user_1"),
            timezone: "Europe/Paris",
            upcoming: upcoming.clone(),
        };
        let value = as_dequeued(&server);
        // Plain JSON: the dates are strings, the superjson meta is gone.
        assert_eq!(value["timestamp"], json!("2026-12-03T18:00:00.000Z"));
        assert!(value.get("meta").is_none() && value.get("json").is_none());
        let payload: ScheduledPayload = serde_json::from_value(value).unwrap();
        assert_eq!(
            payload,
            ScheduledPayload {
                schedule_id: "sched_abc".into(),
                kind: ScheduleKind::Imperative,
                timestamp: utc("2026-12-03T18:00:00Z"),
                last_timestamp: Some(utc("2026-12-03T17:59:00Z")),
                external_id: Some("user_1".into()),
                timezone: "Europe/Paris".into(),
                upcoming,
            }
        );
    }

    #[test]
    fn a_first_declarative_occurrence_has_no_last_timestamp_nor_external_id() {
        let server = runnel_core::schedule::ScheduledPayload {
            schedule_id: "sched_abc",
            kind: ScheduleKind::Declarative,
            timestamp: utc("2026-12-03T18:00:00Z"),
            last_timestamp: None,
            external_id: None,
            timezone: "UTC",
            upcoming: vec![],
        };
        let payload: ScheduledPayload = serde_json::from_value(as_dequeued(&server)).unwrap();
        assert_eq!(payload.kind, ScheduleKind::Declarative);
        assert_eq!(
            (payload.last_timestamp, payload.external_id.as_deref()),
            (None, None)
        );
        // Written back the way the server writes it (the same field names and type).
        assert_eq!(
            serde_json::to_value(&payload).unwrap(),
            json!({
                "scheduleId": "sched_abc", "type": "DECLARATIVE",
                "timestamp": "2026-12-03T18:00:00Z", "timezone": "UTC", "upcoming": []
            })
        );
    }

    #[test]
    fn an_unknown_type_is_refused() {
        let error = serde_json::from_value::<ScheduledPayload>(json!({
            "scheduleId": "sched_abc", "type": "WEEKLY",
            "timestamp": "2026-12-03T18:00:00.000Z", "timezone": "UTC", "upcoming": []
        }))
        .unwrap_err();
        assert!(error.to_string().contains("WEEKLY"), "{error}");
    }
}
