//! Cron schedules: the expression, the IANA timezone it is read in, the optional window
//! that spreads each occurrence, and the arithmetic of occurrences, all pure.
//!
//! - [`Cron`]: a standard 5-field expression (`minute hour day-of-month month
//!   day-of-week`, with `L` and `#`), parsed by `croner`; its plain-English
//!   [`Cron::description`] is croner's too.
//! - [`Timezone`]: an IANA name (`chrono-tz`); occurrences are computed in local time, so
//!   `0 2 * * *` in `America/New_York` is 02:00 there in winter and in summer. A local
//!   time the spring-forward gap skips fires at the first instant after the gap; a fixed
//!   local time the fall-back overlap repeats fires once, while an interval (`*/30 * * * *`)
//!   fires at every real instant of both passes.
//! - [`Window`]: `"30m"`, `"2h"` (at most 24 h) or `"50%"` of the interval to the next
//!   occurrence. Each occurrence then fires at a stable offset inside the window, the
//!   same for every occurrence of one schedule ([`Timing::effective`]), so many
//!   schedules on one cron do not all fire in the same second.
//! - [`Timing::catch_up`]: what fires when the service looks at a schedule whose next
//!   occurrence is due: the latest due occurrence, once, and how many earlier ones were
//!   skipped (occurrences missed while no server ran are not replayed).
//! - [`ScheduledPayload`]: the payload a scheduled run receives, as superjson so the
//!   TypeScript SDK hands the task real `Date`s.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Duration, Utc};
use chrono_tz::Tz;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

/// Occurrences listed in a scheduled run's `upcoming`.
pub const UPCOMING: usize = 5;
/// The longest absolute window: 24 hours.
pub const MAX_WINDOW_SECS: u32 = 24 * 60 * 60;
/// The payload type of a scheduled run's payload.
pub const PAYLOAD_TYPE: &str = "application/super+json";
/// Longest `deduplicationKey` and `externalId`.
pub const MAX_KEY_CHARS: usize = 1024;

/// Who manages a schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ScheduleKind {
    /// Declared with its task (`schedules.task({cron})`, a Runnel task's `schedule`); kept in
    /// sync by each registration, and not changed through the API.
    Declarative,
    /// Created through the API (`schedules.create`, `runnel schedules create`).
    Imperative,
}

impl ScheduleKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ScheduleKind::Declarative => "DECLARATIVE",
            ScheduleKind::Imperative => "IMPERATIVE",
        }
    }
}

impl fmt::Display for ScheduleKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ScheduleKind {
    type Err = ScheduleError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "DECLARATIVE" => Ok(ScheduleKind::Declarative),
            "IMPERATIVE" => Ok(ScheduleKind::Imperative),
            other => Err(ScheduleError::Kind(other.to_owned())),
        }
    }
}

/// Why a schedule's settings were refused; the message is the API's (contract §2.5).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    #[error("Invalid cron expression: {0}")]
    Cron(String),
    #[error("Invalid IANA timezone: '{0}'. The valid names are listed by GET /api/v1/timezones")]
    Timezone(String),
    #[error("{0}")]
    Window(String),
    #[error("unknown schedule type {0:?}")]
    Kind(String),
}

/// A standard 5-field cron expression.
#[derive(Debug, Clone)]
pub struct Cron {
    expression: String,
    cron: croner::Cron,
}

impl Cron {
    pub fn parse(expression: &str) -> Result<Self, ScheduleError> {
        let expression = expression.trim();
        let fields = expression.split_whitespace().count();
        if fields != 5 {
            return Err(ScheduleError::Cron(format!(
                "{expression:?} has {fields} fields; a schedule takes 5 \
                 (minute hour day-of-month month day-of-week)"
            )));
        }
        let cron = croner::parser::CronParser::builder()
            .seconds(croner::parser::Seconds::Disallowed)
            .build()
            .parse(expression)
            .map_err(|e| ScheduleError::Cron(format!("{expression:?}: {e}")))?;
        // An expression that never matches (`0 0 31 2 *`) is refused too: it would
        // never fire.
        let probe = DateTime::<Utc>::UNIX_EPOCH + Duration::days(365 * 30);
        if cron.find_next_occurrence(&probe, false).is_err() {
            return Err(ScheduleError::Cron(format!(
                "{expression:?} never matches a date"
            )));
        }
        Ok(Cron {
            expression: expression.split_whitespace().collect::<Vec<_>>().join(" "),
            cron,
        })
    }

    /// The expression, its fields separated by one space.
    pub fn expression(&self) -> &str {
        &self.expression
    }

    /// In plain English ("At 09:00, on Monday, Tuesday, …").
    pub fn description(&self) -> String {
        let text = self.cron.describe();
        text.trim_end_matches('.').to_owned()
    }
}

impl PartialEq for Cron {
    fn eq(&self, other: &Self) -> bool {
        self.expression == other.expression
    }
}

/// An IANA timezone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timezone(Tz);

impl Timezone {
    pub const UTC: Timezone = Timezone(Tz::UTC);

    pub fn parse(name: &str) -> Result<Self, ScheduleError> {
        name.parse::<Tz>()
            .map(Timezone)
            .map_err(|_| ScheduleError::Timezone(name.to_owned()))
    }

    pub fn name(self) -> &'static str {
        self.0.name()
    }
}

/// Every timezone name a schedule takes, sorted, `UTC` first unless `exclude_utc`.
pub fn timezone_names(exclude_utc: bool) -> Vec<&'static str> {
    let mut names: Vec<&'static str> = chrono_tz::TZ_VARIANTS
        .iter()
        .map(|tz| tz.name())
        .filter(|name| *name != "UTC")
        .collect();
    names.sort_unstable();
    if !exclude_utc {
        names.insert(0, "UTC");
    }
    names
}

/// How far each occurrence may be spread after its nominal time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    /// Up to this many seconds (at most [`MAX_WINDOW_SECS`]), capped at the interval to
    /// the next occurrence.
    Duration(u32),
    /// This share (0..=100) of the interval to the next occurrence.
    Percent(u8),
}

impl Window {
    /// `"<n>m"`, `"<n>h"` or `"<n>%"`, whole non-negative numbers without leading zeros.
    pub fn parse(value: &str) -> Result<Self, ScheduleError> {
        let whole = |digits: &str| -> Option<u64> {
            let canonical = digits == "0"
                || (!digits.is_empty()
                    && !digits.starts_with('0')
                    && digits.bytes().all(|b| b.is_ascii_digit()));
            canonical.then(|| digits.parse().ok()).flatten()
        };
        let too_long = || ScheduleError::Window("window: cannot exceed 24 hours".to_owned());
        if let Some(n) = value.strip_suffix('%') {
            let n = whole(n).ok_or_else(|| {
                ScheduleError::Window("window: a percentage must be a whole number".into())
            })?;
            return u8::try_from(n)
                .ok()
                .filter(|n| *n <= 100)
                .map(Window::Percent)
                .ok_or_else(|| ScheduleError::Window("window: cannot exceed 100%".into()));
        }
        let (digits, unit) = if let Some(n) = value.strip_suffix('m') {
            (n, 60)
        } else if let Some(n) = value.strip_suffix('h') {
            (n, 3600)
        } else {
            return Err(ScheduleError::Window(format!(
                "window: {value:?} must look like \"30m\", \"2h\" or \"50%\""
            )));
        };
        let n = whole(digits).ok_or_else(|| {
            ScheduleError::Window("window: must be a whole non-negative number".into())
        })?;
        let secs = n.checked_mul(unit).ok_or_else(too_long)?;
        if secs > u64::from(MAX_WINDOW_SECS) {
            return Err(too_long());
        }
        Ok(Window::Duration(secs as u32))
    }
}

impl fmt::Display for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Window::Percent(p) => write!(f, "{p}%"),
            Window::Duration(0) => f.write_str("0m"),
            Window::Duration(s) if s % 3600 == 0 => write!(f, "{}h", s / 3600),
            Window::Duration(s) => write!(f, "{}m", s / 60),
        }
    }
}

/// A schedule's settings, validated: everything needed to compute its occurrences.
#[derive(Debug, Clone, PartialEq)]
pub struct Timing {
    pub cron: Cron,
    pub timezone: Timezone,
    pub window: Option<Window>,
    /// The schedule's stable share of its window, out of 2^31 ([`phase`]).
    pub phase: u32,
}

/// One occurrence the service fires ([`Timing::catch_up`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CatchUp {
    /// The occurrence that fires: its nominal time (the payload's `timestamp`).
    pub fire: DateTime<Utc>,
    /// Earlier due occurrences that are skipped.
    pub skipped: u64,
    /// The next occurrence after it, nominal and effective; `None` when the expression
    /// has no later date.
    pub next: Option<(DateTime<Utc>, DateTime<Utc>)>,
}

/// Most occurrences [`Timing::catch_up`] walks one by one before it jumps to the latest.
const CATCH_UP_WALK: u64 = 1_000;

impl Timing {
    /// Validates a schedule's settings; `id` seeds its window [`phase`].
    pub fn new(
        cron: &str,
        timezone: Option<&str>,
        window: Option<&str>,
        id: &str,
    ) -> Result<Self, ScheduleError> {
        Ok(Timing {
            cron: Cron::parse(cron)?,
            timezone: timezone.map_or(Ok(Timezone::UTC), Timezone::parse)?,
            window: window.map(Window::parse).transpose()?,
            phase: phase(id),
        })
    }

    /// The first occurrence strictly after `after` (nominal time).
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let local = after.with_timezone(&self.timezone.0);
        self.cron
            .cron
            .find_next_occurrence(&local, false)
            .ok()
            .map(|t| t.with_timezone(&Utc))
    }

    /// The latest occurrence at or before `at` (nominal time).
    pub fn latest_at_or_before(&self, at: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let local = at.with_timezone(&self.timezone.0);
        self.cron
            .cron
            .find_previous_occurrence(&local, true)
            .ok()
            .map(|t| t.with_timezone(&Utc))
    }

    /// The next `n` occurrences strictly after `after`.
    pub fn upcoming(&self, after: DateTime<Utc>, n: usize) -> Vec<DateTime<Utc>> {
        let mut out = Vec::with_capacity(n);
        let mut at = after;
        while out.len() < n {
            match self.next_after(at) {
                Some(next) => {
                    out.push(next);
                    at = next;
                }
                None => break,
            }
        }
        out
    }

    /// When the occurrence at `nominal` fires: `nominal` plus the schedule's stable share
    /// of its window (none without a window). The window is capped at the interval to
    /// the next occurrence, so an occurrence always fires before the next one's nominal
    /// time.
    pub fn effective(&self, nominal: DateTime<Utc>) -> DateTime<Utc> {
        let Some(window) = self.window else {
            return nominal;
        };
        let Some(next) = self.next_after(nominal) else {
            return nominal;
        };
        let interval_ms = (next - nominal).num_milliseconds().max(0) as u128;
        let window_ms = match window {
            Window::Duration(secs) => u128::from(secs) * 1000,
            Window::Percent(p) => interval_ms * u128::from(p) / 100,
        };
        let range = window_ms.min(interval_ms);
        // `phase < 2^31`, so the offset is below `range`: strictly before `next`.
        let offset = u128::from(self.phase) * range / (1u128 << 31);
        nominal + Duration::milliseconds(offset as i64)
    }

    /// The first occurrence strictly after `after`, nominal and effective.
    pub fn next_pair(&self, after: DateTime<Utc>) -> Option<(DateTime<Utc>, DateTime<Utc>)> {
        self.next_after(after).map(|n| (n, self.effective(n)))
    }

    /// What fires at `now` for a schedule whose next occurrence is `due` (nominal), when
    /// its effective time has come: the latest occurrence at or after `due` whose
    /// effective time is at or before `now`, once; the ones between are skipped. `None`
    /// when `due` itself is not due yet.
    pub fn catch_up(&self, due: DateTime<Utc>, now: DateTime<Utc>) -> Option<CatchUp> {
        if self.effective(due) > now {
            return None;
        }
        let mut fire = due;
        let mut skipped = 0u64;
        while let Some(next) = self.next_after(fire) {
            if self.effective(next) > now {
                break;
            }
            if skipped >= CATCH_UP_WALK {
                // Long downtime: jump to the latest occurrence near `now` instead of
                // walking every one (the count stays a lower bound of what was missed).
                let Some(latest) = self.latest_at_or_before(now) else {
                    break;
                };
                let latest = if self.effective(latest) <= now {
                    latest
                } else {
                    match self.latest_at_or_before(latest - Duration::milliseconds(1)) {
                        Some(before) if before > fire => before,
                        _ => next,
                    }
                };
                if latest > fire {
                    skipped += 1;
                    fire = latest;
                }
                break;
            }
            skipped += 1;
            fire = next;
        }
        Some(CatchUp {
            fire,
            skipped,
            next: self.next_pair(fire),
        })
    }
}

/// A schedule's stable share of its window: 31 bits of SHA-256 over its id.
pub fn phase(id: &str) -> u32 {
    let digest = Sha256::new()
        .chain_update(b"runnel-cron-phase-v1:")
        .chain_update(id.as_bytes())
        .finalize();
    u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]]) & 0x7fff_ffff
}

/// The payload of a run a schedule triggered (`ScheduledTaskPayload` of the SDK).
#[derive(Debug, Clone, PartialEq)]
pub struct ScheduledPayload<'a> {
    pub schedule_id: &'a str,
    pub kind: ScheduleKind,
    /// The occurrence's nominal time.
    pub timestamp: DateTime<Utc>,
    /// The occurrence fired before it, if any.
    pub last_timestamp: Option<DateTime<Utc>>,
    pub external_id: Option<&'a str>,
    pub timezone: &'a str,
    /// The next [`UPCOMING`] occurrences.
    pub upcoming: Vec<DateTime<Utc>>,
}

impl ScheduledPayload<'_> {
    /// As superjson text (`{"json": …, "meta": {"values": …}}`), the dates marked so the
    /// SDK revives them as `Date`s.
    pub fn to_superjson(&self) -> String {
        let iso = |t: DateTime<Utc>| crate::view::iso(t);
        let mut json = Map::new();
        let mut dates = Map::new();
        json.insert("scheduleId".into(), json!(self.schedule_id));
        json.insert("type".into(), json!(self.kind.as_str()));
        json.insert("timestamp".into(), json!(iso(self.timestamp)));
        dates.insert("timestamp".into(), json!(["Date"]));
        if let Some(last) = self.last_timestamp {
            json.insert("lastTimestamp".into(), json!(iso(last)));
            dates.insert("lastTimestamp".into(), json!(["Date"]));
        }
        if let Some(external) = self.external_id {
            json.insert("externalId".into(), json!(external));
        }
        json.insert("timezone".into(), json!(self.timezone));
        let upcoming: Vec<Value> = self.upcoming.iter().map(|t| json!(iso(*t))).collect();
        for i in 0..upcoming.len() {
            dates.insert(format!("upcoming.{i}"), json!(["Date"]));
        }
        json.insert("upcoming".into(), Value::Array(upcoming));
        json!({"json": json, "meta": {"values": dates}}).to_string()
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn timing(cron: &str, tz: &str) -> Timing {
        Timing::new(cron, Some(tz), None, "sched_test").unwrap()
    }

    #[test]
    fn only_five_field_expressions_parse() {
        for good in [
            "* * * * *",
            "0 9 * * 1-5",
            "0 0 L * *",
            "0 0 * * 1L",
            "0 0 * * 5#2",
        ] {
            assert!(Cron::parse(good).is_ok(), "{good}");
        }
        for bad in [
            "* * * * * *",
            "* * * *",
            "61 * * * *",
            "@daily",
            "",
            "0 0 31 2 *",
        ] {
            let err = Cron::parse(bad).unwrap_err();
            assert!(
                err.to_string().starts_with("Invalid cron expression: "),
                "{bad}: {err}"
            );
        }
        assert_eq!(
            Cron::parse(" 0  9 * * 1 ").unwrap().expression(),
            "0 9 * * 1"
        );
    }

    #[test]
    fn descriptions_are_plain_english() {
        assert_eq!(
            Cron::parse("* * * * *").unwrap().description(),
            "Every minute"
        );
        assert_eq!(
            Cron::parse("0 0 * * 1L").unwrap().description(),
            "At 00:00, on the last Monday of the month"
        );
    }

    #[test]
    fn timezones_are_iana_names_with_utc_first() {
        assert!(Timezone::parse("Europe/London").is_ok());
        let err = Timezone::parse("Mars/Olympus").unwrap_err();
        assert!(err
            .to_string()
            .starts_with("Invalid IANA timezone: 'Mars/Olympus'"));
        let names = timezone_names(false);
        assert_eq!(names[0], "UTC");
        assert!(names.contains(&"America/New_York"));
        assert!(!timezone_names(true).contains(&"UTC"));
    }

    #[test]
    fn windows_parse_and_print_back() {
        for (text, window) in [
            ("30m", Window::Duration(1800)),
            ("2h", Window::Duration(7200)),
            ("24h", Window::Duration(86400)),
            ("0m", Window::Duration(0)),
            ("50%", Window::Percent(50)),
        ] {
            assert_eq!(Window::parse(text).unwrap(), window);
            assert_eq!(window.to_string(), text);
        }
        assert_eq!(Window::Duration(5400).to_string(), "90m");
        for bad in ["25h", "1441m", "101%", "05m", "-1m", "1d", "m", "1.5h"] {
            assert!(Window::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn london_fixed_times_follow_the_clocks_across_both_changes() {
        // Clocks go forward at 01:00 GMT on 30 March 2025 and back at 01:00 GMT on 26
        // October 2025.
        let t = timing("30 9 * * *", "Europe/London");
        assert_eq!(
            t.upcoming(utc("2025-03-29T00:00:00Z"), 2),
            [utc("2025-03-29T09:30:00Z"), utc("2025-03-30T08:30:00Z")]
        );
        assert_eq!(
            t.upcoming(utc("2025-10-25T00:00:00Z"), 2),
            [utc("2025-10-25T08:30:00Z"), utc("2025-10-26T09:30:00Z")]
        );
        // 01:30 does not exist on 30 March: it fires at the first instant after the gap.
        let gap = timing("30 1 * * *", "Europe/London");
        assert_eq!(
            gap.upcoming(utc("2025-03-29T12:00:00Z"), 2),
            [utc("2025-03-30T01:00:00Z"), utc("2025-03-31T00:30:00Z")]
        );
        // 01:30 happens twice on 26 October: a fixed time fires once.
        assert_eq!(
            gap.upcoming(utc("2025-10-25T12:00:00Z"), 2),
            [utc("2025-10-26T00:30:00Z"), utc("2025-10-27T01:30:00Z")]
        );
        // An interval fires at every real half hour, both passes of the repeated hour.
        let every = timing("*/30 * * * *", "Europe/London");
        assert_eq!(
            every.upcoming(utc("2025-10-25T23:45:00Z"), 5),
            [
                utc("2025-10-26T00:00:00Z"),
                utc("2025-10-26T00:30:00Z"),
                utc("2025-10-26T01:00:00Z"),
                utc("2025-10-26T01:30:00Z"),
                utc("2025-10-26T02:00:00Z"),
            ]
        );
    }

    #[test]
    fn new_york_midnight_stays_midnight() {
        let t = timing("0 0 * * *", "America/New_York");
        // EST (-5) before 9 March 2025, EDT (-4) after; back to EST on 2 November.
        assert_eq!(
            t.upcoming(utc("2025-03-08T00:00:00Z"), 3),
            [
                utc("2025-03-08T05:00:00Z"),
                utc("2025-03-09T05:00:00Z"),
                utc("2025-03-10T04:00:00Z"),
            ]
        );
        assert_eq!(
            t.upcoming(utc("2025-11-01T00:00:00Z"), 2),
            [utc("2025-11-01T04:00:00Z"), utc("2025-11-02T04:00:00Z")]
        );
        assert_eq!(
            t.upcoming(utc("2025-11-02T12:00:00Z"), 1),
            [utc("2025-11-03T05:00:00Z")]
        );
    }

    #[test]
    fn a_window_spreads_each_occurrence_stably_inside_its_interval() {
        let hourly = Timing::new("0 * * * *", None, Some("30m"), "sched_a").unwrap();
        let at = utc("2025-01-01T10:00:00Z");
        let effective = hourly.effective(at);
        assert!(effective >= at && effective < at + Duration::minutes(30));
        // The same offset for every occurrence of one schedule.
        assert_eq!(
            hourly.effective(at + Duration::hours(1)) - (at + Duration::hours(1)),
            effective - at
        );
        // A window wider than the interval is capped at it.
        let wide = Timing::new("*/5 * * * *", None, Some("2h"), "sched_a").unwrap();
        assert!(wide.effective(at) < at + Duration::minutes(5));
        // Different schedules land at different offsets.
        let other = Timing::new("0 * * * *", None, Some("30m"), "sched_b").unwrap();
        assert_ne!(other.effective(at), effective);
        assert_eq!(timing("0 * * * *", "UTC").effective(at), at);
    }

    #[test]
    fn catch_up_fires_the_latest_due_occurrence_once() {
        let t = timing("0 * * * *", "UTC");
        let due = utc("2025-01-01T10:00:00Z");
        assert_eq!(t.catch_up(due, utc("2025-01-01T09:59:59Z")), None);
        let on_time = t.catch_up(due, utc("2025-01-01T10:00:00Z")).unwrap();
        assert_eq!((on_time.fire, on_time.skipped), (due, 0));
        assert_eq!(on_time.next.unwrap().0, utc("2025-01-01T11:00:00Z"));
        // Down from 09:30 to 12:30: 10:00, 11:00 and 12:00 were missed; 12:00 fires.
        let late = t.catch_up(due, utc("2025-01-01T12:30:00Z")).unwrap();
        assert_eq!(late.fire, utc("2025-01-01T12:00:00Z"));
        assert_eq!(late.skipped, 2);
        assert_eq!(late.next.unwrap().0, utc("2025-01-01T13:00:00Z"));
        // Years of downtime jump instead of walking.
        let minutely = timing("* * * * *", "UTC");
        let long = minutely.catch_up(due, utc("2027-06-01T00:00:30Z")).unwrap();
        assert_eq!(long.fire, utc("2027-06-01T00:00:00Z"));
        assert!(long.skipped > CATCH_UP_WALK);
    }

    #[test]
    fn the_payload_marks_its_dates_for_superjson() {
        let payload = ScheduledPayload {
            schedule_id: "sched_1",
            kind: ScheduleKind::Imperative,
            timestamp: Utc.with_ymd_and_hms(2025, 1, 1, 10, 0, 0).unwrap(),
            last_timestamp: None,
            external_id: Some("user_1"),
            timezone: "UTC",
            upcoming: vec![Utc.with_ymd_and_hms(2025, 1, 1, 11, 0, 0).unwrap()],
        };
        let value: Value = serde_json::from_str(&payload.to_superjson()).unwrap();
        assert_eq!(value["json"]["timestamp"], "2025-01-01T10:00:00.000Z");
        assert_eq!(value["json"]["type"], "IMPERATIVE");
        assert_eq!(value["json"]["externalId"], "user_1");
        assert!(value["json"].get("lastTimestamp").is_none());
        assert_eq!(value["meta"]["values"]["timestamp"], json!(["Date"]));
        assert_eq!(value["meta"]["values"]["upcoming.0"], json!(["Date"]));
    }
}
