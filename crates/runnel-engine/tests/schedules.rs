//! The scheduler over real stores with a hand-driven clock: occurrences across the
//! daylight-saving changes fire once each at their real instant, several nodes on one
//! PostgreSQL database fire each occurrence exactly once, a restart after downtime fires
//! the latest missed occurrence once, a claimed but untriggered occurrence fires once,
//! and the API's imperative and declarative schedules start and stop firing.
//!
//! Every pass is `Engine::fire_due_schedules` at the clock's time; runs are read back
//! through the store's run list filtered by schedule, and each scheduled run's payload
//! (superjson text) is parsed for its `timestamp`, `lastTimestamp` and `upcoming`.

mod common;

use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use common::{harness, Harness};
use runnel_core::key::{EnvironmentKind, SecretKey};
use runnel_core::list::{Cursor, Direction, RunFilter, RunListQuery};
use runnel_core::run::Run;
use runnel_core::schedule::PAYLOAD_TYPE;
use runnel_core::status::ApiVersion;
use runnel_core::tenancy::Environment;
use runnel_core::view::RetrieveRunResponse;
use runnel_core::worker::RegisterRequest;
use runnel_core::RunStatus;
use runnel_core::ScheduleId;
use runnel_engine::schedules::{ScheduleApiError, ScheduleInput};
use runnel_engine::{Clock, Engine, EngineConfig, ManualClock};
use runnel_store::{PgStore, ScheduleClaim, ScheduleRecord, ScheduleWrite, Store};
use runnel_testkit::PgTestDatabase;
use serde_json::{json, Value};

fn utc(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text)
        .unwrap()
        .with_timezone(&Utc)
}

/// One scheduled run as its payload tells it.
#[derive(Debug, Clone, PartialEq)]
struct Fired {
    /// When the run was created (the clock of the pass that fired it).
    created_at: DateTime<Utc>,
    timestamp: DateTime<Utc>,
    last_timestamp: Option<DateTime<Utc>>,
    upcoming: Vec<DateTime<Utc>>,
}

fn fired(run: &Run) -> Fired {
    assert_eq!(run.payload.data_type, PAYLOAD_TYPE);
    let text = run
        .payload
        .data
        .as_deref()
        .expect("a scheduled run has a payload");
    let superjson: Value = serde_json::from_str(text).expect("the payload is superjson text");
    let payload = &superjson["json"];
    let date = |v: &Value| utc(v.as_str().unwrap_or_else(|| panic!("a date: {v}")));
    Fired {
        created_at: run.created_at,
        timestamp: date(&payload["timestamp"]),
        last_timestamp: payload.get("lastTimestamp").map(date),
        upcoming: payload["upcoming"]
            .as_array()
            .expect("upcoming is a list")
            .iter()
            .map(date)
            .collect(),
    }
}

/// The runs schedule `id` triggered in `environment`, oldest occurrence first (every
/// page of the store's run list filtered by schedule).
async fn runs_of(store: &dyn Store, environment: &Environment, id: &str) -> Vec<Run> {
    const PAGE: u32 = 200;
    let mut query = RunListQuery {
        filter: RunFilter {
            schedule_id: Some(id.to_owned()),
            ..RunFilter::default()
        },
        ..RunListQuery::newest(environment.id.clone(), PAGE)
    };
    let mut runs = Vec::new();
    loop {
        let page = store.run_list(&query).await.unwrap();
        let Some(last) = page.last() else {
            break;
        };
        query.page = Some((Direction::Older, Cursor::of(last)));
        let full = page.len() == PAGE as usize;
        runs.extend(page);
        if !full {
            break;
        }
    }
    runs.sort_by_key(|run| fired(run).timestamp);
    runs
}

async fn fired_of(store: &dyn Store, environment: &Environment, id: &str) -> Vec<Fired> {
    runs_of(store, environment, id)
        .await
        .iter()
        .map(fired)
        .collect()
}

/// Registers a worker of `environment` serving `tasks` (task definitions as JSON).
async fn register(engine: &Engine, environment: &Environment, tasks: Value) {
    let request: RegisterRequest =
        serde_json::from_value(json!({"name": "test", "tasks": tasks})).unwrap();
    engine.worker_register(environment, request).await.unwrap();
}

/// The environment's schedules of `task`.
async fn schedules_of(
    engine: &Engine,
    environment: &Environment,
    task: &str,
) -> Vec<ScheduleRecord> {
    engine
        .schedule_list(environment, 1, 100)
        .await
        .unwrap()
        .schedules
        .into_iter()
        .filter(|s| s.task_identifier == task)
        .collect()
}

/// The one schedule of `task`.
async fn schedule_of(engine: &Engine, environment: &Environment, task: &str) -> ScheduleRecord {
    let mut found = schedules_of(engine, environment, task).await;
    assert_eq!(found.len(), 1, "one schedule of {task}");
    found.remove(0)
}

impl Harness {
    /// Moves the clock to `to` (either way).
    fn set_clock(&self, to: DateTime<Utc>) {
        self.clock.advance(to - self.engine.now());
    }

    /// Moves the clock from `from` to `to` in `step`s, one scheduler pass at each.
    async fn drive(&self, from: DateTime<Utc>, to: DateTime<Utc>, step: Duration) {
        self.set_clock(from);
        while self.engine.now() < to {
            self.clock.advance(step);
            self.engine.fire_due_schedules().await.unwrap();
        }
    }

    async fn pass(&self) -> usize {
        self.engine.fire_due_schedules().await.unwrap()
    }
}

/// What each run of a schedule whose occurrences are `expected` must say, when it fired
/// at its own instant: every occurrence but the last (which is only the last run's
/// `upcoming[0]`) fired once, its `lastTimestamp` the one before it.
fn assert_fired_exactly(runs: &[Fired], expected: &[DateTime<Utc>], what: &str) {
    let timestamps: Vec<_> = runs.iter().map(|r| r.timestamp).collect();
    let fired_once = &expected[..expected.len() - 1];
    if let Some(i) = (0..timestamps.len().max(fired_once.len()))
        .find(|&i| timestamps.get(i) != fired_once.get(i))
    {
        panic!(
            "{what}: {} runs for {} occurrences; first difference at {i}: fired {:?}, expected {:?}",
            timestamps.len(),
            fired_once.len(),
            timestamps.get(i),
            fired_once.get(i)
        );
    }
    for (i, run) in runs.iter().enumerate() {
        assert_eq!(
            run.created_at, run.timestamp,
            "{what}: occurrence {} fired at its instant",
            run.timestamp
        );
        let previous = i.checked_sub(1).map(|p| expected[p]);
        assert_eq!(run.last_timestamp, previous, "{what}: lastTimestamp of {i}");
        assert_eq!(run.upcoming.len(), 5, "{what}: five upcoming");
        assert_eq!(
            run.upcoming[0],
            expected[i + 1],
            "{what}: upcoming[0] of {i}"
        );
        assert!(
            run.upcoming.windows(2).all(|w| w[0] < w[1]),
            "{what}: upcoming ascends"
        );
    }
}

const DST_TASKS: [(&str, &str, &str); 4] = [
    ("london-0130", "30 1 * * *", "Europe/London"),
    ("new-york-0230", "30 2 * * *", "America/New_York"),
    ("new-york-0130", "30 1 * * *", "America/New_York"),
    ("london-half-hourly", "*/30 * * * *", "Europe/London"),
];

/// A harness at `from` serving the daylight-saving tasks, each with its declared
/// schedule.
async fn dst_harness(from: DateTime<Utc>) -> Harness {
    let h = harness().await;
    h.set_clock(from);
    let tasks: Vec<Value> = DST_TASKS
        .iter()
        .map(|(id, cron, timezone)| {
            json!({"id": id, "schedule": {"cron": cron, "timezone": timezone}})
        })
        .collect();
    register(&h.engine, &h.dev, Value::Array(tasks)).await;
    h
}

/// Every half hour from `first` to `last`.
fn half_hours(first: DateTime<Utc>, last: DateTime<Utc>) -> Vec<DateTime<Utc>> {
    let mut out = vec![first];
    while *out.last().unwrap() < last {
        out.push(*out.last().unwrap() + Duration::minutes(30));
    }
    out
}

/// Spring forward 2025: London skips 01:00-02:00 local on 30 March (01:00 GMT), New
/// York skips 02:00-03:00 local on 9 March (07:00 UTC). The clock moves 15 minutes a
/// pass for a week, so each run's creation time is the pass that fired it.
#[tokio::test]
async fn fixed_times_fire_once_at_their_instant_across_the_spring_forward_gap() {
    let from = utc("2025-03-06T12:00:00Z");
    let h = dst_harness(from).await;
    h.drive(from, utc("2025-04-01T12:00:00Z"), Duration::minutes(15))
        .await;
    let store = &**h.engine.store();

    let london = schedule_of(&h.engine, &h.dev, "london-0130").await;
    let runs = fired_of(store, &h.dev, london.id.as_str()).await;
    let mut expected: Vec<_> = (7..=29)
        .map(|day| utc(&format!("2025-03-{day:02}T01:30:00Z")))
        .collect();
    expected.extend([
        // 01:30 does not exist on 30 March: the first instant after the gap, 02:00 BST.
        utc("2025-03-30T01:00:00Z"),
        // 01:30 BST from then on.
        utc("2025-03-31T00:30:00Z"),
        utc("2025-04-01T00:30:00Z"),
        utc("2025-04-02T00:30:00Z"),
    ]);
    assert_fired_exactly(&runs, &expected, "London 01:30");
    assert_eq!(runs.len(), 26);

    let new_york = schedule_of(&h.engine, &h.dev, "new-york-0230").await;
    let runs = fired_of(store, &h.dev, new_york.id.as_str()).await;
    let mut expected = vec![
        // 02:30 EST.
        utc("2025-03-07T07:30:00Z"),
        utc("2025-03-08T07:30:00Z"),
        // 02:30 does not exist on 9 March: the first instant after the gap, 03:00 EDT.
        utc("2025-03-09T07:00:00Z"),
    ];
    // 02:30 EDT from then on.
    expected.extend((10..=31).map(|day| utc(&format!("2025-03-{day:02}T06:30:00Z"))));
    expected.extend([utc("2025-04-01T06:30:00Z"), utc("2025-04-02T06:30:00Z")]);
    assert_fired_exactly(&runs, &expected, "New York 02:30");
    assert_eq!(runs.len(), 26);

    // A time the gap does not touch moves by the hour, and nothing else.
    let new_york = schedule_of(&h.engine, &h.dev, "new-york-0130").await;
    let runs = fired_of(store, &h.dev, new_york.id.as_str()).await;
    let mut expected: Vec<_> = (7..=9)
        .map(|day| utc(&format!("2025-03-{day:02}T06:30:00Z")))
        .collect();
    expected.extend((10..=31).map(|day| utc(&format!("2025-03-{day:02}T05:30:00Z"))));
    expected.extend([utc("2025-04-01T05:30:00Z"), utc("2025-04-02T05:30:00Z")]);
    assert_fired_exactly(&runs, &expected, "New York 01:30");

    // Every real half hour, the gap included (London's clocks skip an hour, time does
    // not).
    let half_hourly = schedule_of(&h.engine, &h.dev, "london-half-hourly").await;
    let runs = fired_of(store, &h.dev, half_hourly.id.as_str()).await;
    let expected = half_hours(utc("2025-03-06T12:30:00Z"), utc("2025-04-01T12:30:00Z"));
    assert_fired_exactly(&runs, &expected, "London every 30 minutes");
    assert_eq!(runs.len(), 26 * 48);
}

/// Fall back 2025: London repeats 01:00-02:00 local on 26 October (00:00-02:00 UTC), New
/// York repeats 01:00-02:00 local on 2 November (05:00-07:00 UTC).
#[tokio::test]
async fn fixed_times_fire_once_and_intervals_at_every_half_hour_across_the_fall_back_overlap() {
    let from = utc("2025-10-24T12:00:00Z");
    let h = dst_harness(from).await;
    h.drive(from, utc("2025-11-04T12:00:00Z"), Duration::minutes(15))
        .await;
    let store = &**h.engine.store();

    let london = schedule_of(&h.engine, &h.dev, "london-0130").await;
    let runs = fired_of(store, &h.dev, london.id.as_str()).await;
    let expected = vec![
        // 01:30 BST.
        utc("2025-10-25T00:30:00Z"),
        // 01:30 happens twice on 26 October (BST, then GMT): it fires at the first.
        utc("2025-10-26T00:30:00Z"),
        // 01:30 GMT from then on.
        utc("2025-10-27T01:30:00Z"),
        utc("2025-10-28T01:30:00Z"),
        utc("2025-10-29T01:30:00Z"),
        utc("2025-10-30T01:30:00Z"),
        utc("2025-10-31T01:30:00Z"),
        utc("2025-11-01T01:30:00Z"),
        utc("2025-11-02T01:30:00Z"),
        utc("2025-11-03T01:30:00Z"),
        utc("2025-11-04T01:30:00Z"),
        utc("2025-11-05T01:30:00Z"),
    ];
    assert_fired_exactly(&runs, &expected, "London 01:30");
    assert_eq!(runs.len(), 11);

    let new_york = schedule_of(&h.engine, &h.dev, "new-york-0130").await;
    let runs = fired_of(store, &h.dev, new_york.id.as_str()).await;
    // 01:30 EDT until 1 November; 01:30 happens twice on 2 November: once, at EDT.
    let mut expected: Vec<_> = (25..=31)
        .map(|day| utc(&format!("2025-10-{day:02}T05:30:00Z")))
        .collect();
    expected.extend([
        utc("2025-11-01T05:30:00Z"),
        utc("2025-11-02T05:30:00Z"),
        // 01:30 EST from then on.
        utc("2025-11-03T06:30:00Z"),
        utc("2025-11-04T06:30:00Z"),
        utc("2025-11-05T06:30:00Z"),
    ]);
    assert_fired_exactly(&runs, &expected, "New York 01:30");
    assert_eq!(runs.len(), 11);

    let new_york = schedule_of(&h.engine, &h.dev, "new-york-0230").await;
    let runs = fired_of(store, &h.dev, new_york.id.as_str()).await;
    let mut expected: Vec<_> = (25..=31)
        .map(|day| utc(&format!("2025-10-{day:02}T06:30:00Z")))
        .collect();
    expected.extend([
        utc("2025-11-01T06:30:00Z"),
        // 02:30 exists once on 2 November (EST).
        utc("2025-11-02T07:30:00Z"),
        utc("2025-11-03T07:30:00Z"),
        utc("2025-11-04T07:30:00Z"),
        utc("2025-11-05T07:30:00Z"),
    ]);
    assert_fired_exactly(&runs, &expected, "New York 02:30");
    assert_eq!(runs.len(), 11);

    // Every real half hour: both passes of London's repeated hour (00:00, 00:30, 01:00
    // and 01:30 UTC on 26 October are 01:00 and 01:30 BST, then 01:00 and 01:30 GMT).
    let half_hourly = schedule_of(&h.engine, &h.dev, "london-half-hourly").await;
    let runs = fired_of(store, &h.dev, half_hourly.id.as_str()).await;
    let expected = half_hours(utc("2025-10-24T12:30:00Z"), utc("2025-11-04T12:30:00Z"));
    assert_fired_exactly(&runs, &expected, "London every 30 minutes");
    assert_eq!(runs.len(), 11 * 48);
    for repeated in ["00:00", "00:30", "01:00", "01:30"] {
        let at = utc(&format!("2025-10-26T{repeated}:00Z"));
        assert_eq!(runs.iter().filter(|r| r.timestamp == at).count(), 1, "{at}");
    }
}

/// Three nodes (an engine each, each with its own connection pool) on one PostgreSQL
/// database, sharing one clock: every minute for two hours, all three passes run at
/// once; each occurrence of each schedule fires exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_nodes_on_one_postgres_database_fire_each_occurrence_exactly_once() {
    const NODES: usize = 3;
    const MINUTES: i64 = 120;
    let Some(database) = PgTestDatabase::create().await else {
        return;
    };
    let clock = Arc::new(ManualClock::new(common::start()));
    let mut stores: Vec<Arc<dyn Store>> = Vec::new();
    for _ in 0..NODES {
        stores.push(Arc::new(
            PgStore::connect_with(&database.url, 3).await.unwrap(),
        ));
    }
    stores[0]
        .project_bootstrap(
            &SecretKey::generate(EnvironmentKind::Dev),
            &runnel_core::secrets::MasterKeys::ephemeral(),
            clock.now(),
        )
        .await
        .unwrap()
        .unwrap();
    let engines: Vec<Engine> = stores
        .iter()
        .map(|store| Engine::with_config(Arc::clone(store), clock.clone(), EngineConfig::default()))
        .collect();
    let dev = stores[0]
        .environment_get(EnvironmentKind::Dev)
        .await
        .unwrap()
        .unwrap();
    // A declarative schedule and an imperative one, both every minute.
    register(
        &engines[0],
        &dev,
        json!([{"id": "tick", "schedule": {"cron": "* * * * *"}}, {"id": "tock", "scheduled": true}]),
    )
    .await;
    let declarative = schedule_of(&engines[1], &dev, "tick").await;
    let imperative = engines[2]
        .schedule_create(
            &dev,
            &ScheduleInput {
                task: "tock".into(),
                cron: "* * * * *".into(),
                deduplication_key: Some("tock-every-minute".into()),
                ..ScheduleInput::default()
            },
        )
        .await
        .unwrap();

    let start = common::start();
    for minute in 1..=MINUTES {
        clock.advance(Duration::minutes(1));
        let (a, b, c) = tokio::join!(
            engines[0].fire_due_schedules(),
            engines[1].fire_due_schedules(),
            engines[2].fire_due_schedules(),
        );
        a.unwrap();
        b.unwrap();
        c.unwrap();
        // No gap and no duplicate: the occurrence of this minute has fired, once, by
        // the end of the step.
        for schedule in [&declarative.id, &imperative.id] {
            let runs = runs_of(&*stores[0], &dev, schedule.as_str()).await;
            assert_eq!(
                runs.len() as i64,
                minute,
                "{schedule} after minute {minute}"
            );
        }
    }

    let expected: Vec<_> = (1..=MINUTES + 1)
        .map(|m| start + Duration::minutes(m))
        .collect();
    for schedule in [&declarative.id, &imperative.id] {
        let runs = fired_of(&*stores[1], &dev, schedule.as_str()).await;
        assert_eq!(
            runs.len() as i64,
            MINUTES,
            "{schedule}: one run per occurrence"
        );
        assert_fired_exactly(&runs, &expected, schedule.as_str());
        let record = engines[0]
            .schedule_get(&dev, schedule.as_str())
            .await
            .unwrap();
        assert_eq!(record.pending_run_at, None);
        assert_eq!(record.last_run_at, Some(start + Duration::minutes(MINUTES)));
        assert_eq!(
            record.next_run_at,
            Some(start + Duration::minutes(MINUTES + 1))
        );
    }
    for store in &stores {
        store.close().await;
    }
    drop(database);
}

/// A server down across 11:00, 12:00 and 13:00 restarts at 13:30: the latest missed
/// occurrence fires once, the earlier ones are skipped.
#[tokio::test]
async fn a_restart_after_downtime_fires_the_latest_missed_occurrence_once() {
    let h = harness().await;
    h.set_clock(utc("2026-03-01T09:30:00Z"));
    register(
        &h.engine,
        &h.dev,
        json!([{"id": "hourly", "schedule": {"cron": "0 * * * *"}}]),
    )
    .await;
    let schedule = schedule_of(&h.engine, &h.dev, "hourly").await;
    assert_eq!(schedule.next_run_at, Some(utc("2026-03-01T10:00:00Z")));
    h.set_clock(utc("2026-03-01T10:00:00Z"));
    h.pass().await;
    let store = &**h.engine.store();
    let before = fired_of(store, &h.dev, schedule.id.as_str()).await;
    assert_eq!(before.len(), 1);
    assert_eq!(before[0].timestamp, utc("2026-03-01T10:00:00Z"));
    assert_eq!(before[0].last_timestamp, None);

    // Down until 13:30; a new engine on the same store (the restarted server).
    h.set_clock(utc("2026-03-01T13:30:00Z"));
    let restarted = Engine::with_config(
        Arc::clone(h.engine.store()),
        h.clock.clone(),
        EngineConfig::default(),
    );
    restarted.fire_due_schedules().await.unwrap();
    let after = fired_of(store, &h.dev, schedule.id.as_str()).await;
    assert_eq!(after.len(), 2, "exactly one run for the downtime");
    assert_eq!(
        after[1],
        Fired {
            created_at: utc("2026-03-01T13:30:00Z"),
            timestamp: utc("2026-03-01T13:00:00Z"),
            last_timestamp: Some(utc("2026-03-01T10:00:00Z")),
            upcoming: (14..=18)
                .map(|hour| utc(&format!("2026-03-01T{hour}:00:00Z")))
                .collect(),
        }
    );
    let record = restarted
        .schedule_get(&h.dev, schedule.id.as_str())
        .await
        .unwrap();
    assert_eq!(record.next_run_at, Some(utc("2026-03-01T14:00:00Z")));
    assert_eq!(record.last_run_at, Some(utc("2026-03-01T13:00:00Z")));
    assert_eq!(record.pending_run_at, None);

    restarted.fire_due_schedules().await.unwrap();
    assert_eq!(fired_of(store, &h.dev, schedule.id.as_str()).await.len(), 2);
}

/// A node that claimed an occurrence and died before triggering its run: the next pass
/// (any node's) triggers it once; a node that died after triggering but before settling
/// leaves a pending occurrence whose second trigger is the same run.
#[tokio::test]
async fn a_claimed_but_untriggered_occurrence_fires_once() {
    let h = harness().await;
    register(
        &h.engine,
        &h.dev,
        json!([{"id": "hourly", "schedule": {"cron": "0 * * * *"}}]),
    )
    .await;
    let store = Arc::clone(h.engine.store());
    let schedule = schedule_of(&h.engine, &h.dev, "hourly").await;
    let first = utc("2026-03-01T13:00:00Z");
    let second = utc("2026-03-01T14:00:00Z");
    assert_eq!(schedule.next_run_at, Some(first));

    // The dead node's claim.
    h.set_clock(first);
    assert!(store
        .schedule_claim(
            &ScheduleClaim {
                id: schedule.id.clone(),
                expected_next: first,
                fire: first,
                next: Some((second, second)),
            },
            first,
        )
        .await
        .unwrap());
    assert_eq!(
        fired_of(&*store, &h.dev, schedule.id.as_str()).await,
        vec![]
    );

    h.clock.advance(Duration::seconds(5));
    h.pass().await;
    let runs = fired_of(&*store, &h.dev, schedule.id.as_str()).await;
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].timestamp, first);
    assert_eq!(runs[0].last_timestamp, None);
    assert_eq!(runs[0].upcoming[0], second);
    let record = h
        .engine
        .schedule_get(&h.dev, schedule.id.as_str())
        .await
        .unwrap();
    assert_eq!(
        (
            record.pending_run_at,
            record.last_run_at,
            record.next_run_at
        ),
        (None, Some(first), Some(second))
    );
    h.pass().await;
    assert_eq!(
        fired_of(&*store, &h.dev, schedule.id.as_str()).await.len(),
        1
    );

    // The next occurrence fires normally; then a node dies after triggering it but
    // before settling: its pending occurrence is set again (a claim of the same
    // occurrence that leaves the next one where it is).
    h.set_clock(second);
    h.pass().await;
    assert_eq!(
        fired_of(&*store, &h.dev, schedule.id.as_str()).await.len(),
        2
    );
    let third = utc("2026-03-01T15:00:00Z");
    assert!(store
        .schedule_claim(
            &ScheduleClaim {
                id: schedule.id.clone(),
                expected_next: third,
                fire: second,
                next: Some((third, third)),
            },
            second,
        )
        .await
        .unwrap());
    // Two nodes see the pending occurrence and trigger it: one run.
    let other = Engine::with_config(Arc::clone(&store), h.clock.clone(), EngineConfig::default());
    let (a, b) = tokio::join!(h.engine.fire_due_schedules(), other.fire_due_schedules());
    a.unwrap();
    b.unwrap();
    let runs = fired_of(&*store, &h.dev, schedule.id.as_str()).await;
    assert_eq!(
        runs.iter().map(|r| r.timestamp).collect::<Vec<_>>(),
        vec![first, second]
    );
    let record = h
        .engine
        .schedule_get(&h.dev, schedule.id.as_str())
        .await
        .unwrap();
    assert_eq!(record.pending_run_at, None);
    assert_eq!(record.next_run_at, Some(third));
}

/// A node triggered an occurrence's run and died before settling; the run then failed
/// (which frees an ordinary idempotency key) before a node saw the pending occurrence:
/// the occurrence already has its run, and no second one is triggered.
#[tokio::test]
async fn a_pending_occurrence_whose_run_already_failed_is_not_triggered_again() {
    let h = harness().await;
    register(
        &h.engine,
        &h.dev,
        json!([{"id": "hourly", "schedule": {"cron": "0 * * * *"}}]),
    )
    .await;
    let store = Arc::clone(h.engine.store());
    let schedule = schedule_of(&h.engine, &h.dev, "hourly").await;
    let first = utc("2026-03-01T13:00:00Z");
    let second = utc("2026-03-01T14:00:00Z");
    h.set_clock(first);
    h.pass().await;
    let runs = runs_of(&*store, &h.dev, schedule.id.as_str()).await;
    assert_eq!(runs.len(), 1);
    // The node died before its settle: the occurrence is pending again.
    assert!(store
        .schedule_claim(
            &ScheduleClaim {
                id: schedule.id.clone(),
                expected_next: second,
                fire: first,
                next: Some((second, second)),
            },
            first,
        )
        .await
        .unwrap());
    // Meanwhile a worker ran the occurrence's run, and it failed.
    h.clock.advance(Duration::minutes(5));
    let now = h.engine.now();
    for (from, to) in [
        (RunStatus::Queued, RunStatus::Dequeued),
        (RunStatus::Dequeued, RunStatus::Executing),
        (RunStatus::Executing, RunStatus::CompletedWithErrors),
    ] {
        assert!(store
            .run_transition(&runs[0].id, from, to, now)
            .await
            .unwrap());
    }

    h.pass().await;
    let after = runs_of(&*store, &h.dev, schedule.id.as_str()).await;
    assert_eq!(
        after.iter().map(|r| r.id.clone()).collect::<Vec<_>>(),
        vec![runs[0].id.clone()],
        "one run for the occurrence"
    );
    let record = h
        .engine
        .schedule_get(&h.dev, schedule.id.as_str())
        .await
        .unwrap();
    assert_eq!(record.pending_run_at, None);
    // The next occurrence still fires.
    h.set_clock(second);
    h.pass().await;
    let runs = fired_of(&*store, &h.dev, schedule.id.as_str()).await;
    assert_eq!(
        runs.iter().map(|r| r.timestamp).collect::<Vec<_>>(),
        vec![first, second]
    );
    assert_eq!(runs[1].last_timestamp, Some(first));
}

/// A stored schedule whose settings no longer parse (written by another version) can
/// never fire: the pass deactivates it, so it is not due on every pass after (the
/// scheduler would sleep zero between passes and spin).
#[tokio::test]
async fn a_stored_schedule_that_no_longer_parses_is_deactivated_not_due_forever() {
    let h = harness().await;
    register(
        &h.engine,
        &h.dev,
        json!([{"id": "report", "scheduled": true}]),
    )
    .await;
    let store = Arc::clone(h.engine.store());
    let due = utc("2026-03-01T12:10:00Z");
    let broken = store
        .schedule_upsert(
            &ScheduleWrite {
                id: ScheduleId::generate(h.engine.now().timestamp_millis()),
                environment_id: h.dev.id.clone(),
                task_identifier: "report".into(),
                deduplication_key: "broken".into(),
                external_id: None,
                cron: "*/10 * * * *".into(),
                timezone: "Mars/Olympus".into(),
                window: None,
                next: Some((due, due)),
            },
            h.engine.now(),
        )
        .await
        .unwrap();
    h.set_clock(due);
    assert_eq!(store.schedule_next_due().await.unwrap(), Some(due));
    h.pass().await;
    let record = h
        .engine
        .schedule_get(&h.dev, broken.id.as_str())
        .await
        .unwrap();
    assert!(!record.active);
    assert_eq!(store.schedule_next_due().await.unwrap(), None);
    assert_eq!(h.pass().await, 0, "nothing left due");
    assert_eq!(runs_of(&*store, &h.dev, broken.id.as_str()).await.len(), 0);
}

/// A schedule the store says is due (its stored fire time has come) fires, even when
/// the window offset computed now is later than the stored one (a stored time written
/// by another version): otherwise it stays due, unfired, on every pass until then.
#[tokio::test]
async fn a_due_schedule_fires_even_when_its_window_now_computes_later() {
    let h = harness().await;
    register(
        &h.engine,
        &h.dev,
        json!([{"id": "report", "scheduled": true}]),
    )
    .await;
    let store = Arc::clone(h.engine.store());
    let nominal = utc("2026-03-01T13:00:00Z");
    let record = store
        .schedule_upsert(
            &ScheduleWrite {
                id: ScheduleId::generate(h.engine.now().timestamp_millis()),
                environment_id: h.dev.id.clone(),
                task_identifier: "report".into(),
                deduplication_key: "spread".into(),
                external_id: None,
                cron: "0 * * * *".into(),
                timezone: "UTC".into(),
                window: Some("50%".into()),
                // Stored without the offset this version computes for it.
                next: Some((nominal, nominal)),
            },
            h.engine.now(),
        )
        .await
        .unwrap();
    h.set_clock(nominal);
    h.pass().await;
    let runs = fired_of(&*store, &h.dev, record.id.as_str()).await;
    assert_eq!(
        runs.iter().map(|r| r.timestamp).collect::<Vec<_>>(),
        vec![nominal]
    );
    let next_due = store.schedule_next_due().await.unwrap().unwrap();
    assert!(
        next_due >= utc("2026-03-01T14:00:00Z") && next_due < utc("2026-03-01T14:30:00Z"),
        "the next occurrence, inside its window: {next_due}"
    );
}

#[tokio::test]
async fn imperative_schedules_attach_to_scheduled_tasks_and_stop_while_inactive() {
    let h = harness().await;
    register(
        &h.engine,
        &h.dev,
        json!([{"id": "plain"}, {"id": "report", "scheduled": true}]),
    )
    .await;
    let input = |task: &str| ScheduleInput {
        task: task.into(),
        cron: "*/10 * * * *".into(),
        deduplication_key: Some("report-every-10".into()),
        external_id: Some("customer-7".into()),
        ..ScheduleInput::default()
    };
    for task in ["plain", "missing"] {
        let err = h
            .engine
            .schedule_create(&h.dev, &input(task))
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                runnel_engine::Error::Schedule(ScheduleApiError::Invalid(_))
            ),
            "{task}: {err:?}"
        );
    }
    assert_eq!(
        h.engine.schedule_list(&h.dev, 1, 10).await.unwrap().count,
        0
    );

    let created = h
        .engine
        .schedule_create(&h.dev, &input("report"))
        .await
        .unwrap();
    let id = created.id.as_str().to_owned();
    assert_eq!(created.next_run_at, Some(utc("2026-03-01T12:10:00Z")));
    let store = &**h.engine.store();

    h.set_clock(utc("2026-03-01T12:10:00Z"));
    h.pass().await;
    assert_eq!(fired_of(store, &h.dev, &id).await.len(), 1);

    // Inactive: three occurrences pass and nothing fires.
    h.engine
        .schedule_set_active(&h.dev, &id, false)
        .await
        .unwrap();
    h.drive(
        utc("2026-03-01T12:10:00Z"),
        utc("2026-03-01T12:45:00Z"),
        Duration::minutes(5),
    )
    .await;
    assert_eq!(fired_of(store, &h.dev, &id).await.len(), 1);

    // Active again at 12:45: nothing missed replays; 12:50 fires.
    let active = h
        .engine
        .schedule_set_active(&h.dev, &id, true)
        .await
        .unwrap();
    assert_eq!(active.next_run_at, Some(utc("2026-03-01T12:50:00Z")));
    h.pass().await;
    assert_eq!(fired_of(store, &h.dev, &id).await.len(), 1);
    h.drive(
        utc("2026-03-01T12:45:00Z"),
        utc("2026-03-01T12:55:00Z"),
        Duration::minutes(5),
    )
    .await;
    let runs = fired_of(store, &h.dev, &id).await;
    assert_eq!(
        runs.iter().map(|r| r.timestamp).collect::<Vec<_>>(),
        vec![utc("2026-03-01T12:10:00Z"), utc("2026-03-01T12:50:00Z")]
    );
    assert_eq!(runs[1].created_at, utc("2026-03-01T12:50:00Z"));
    assert_eq!(runs[1].last_timestamp, Some(utc("2026-03-01T12:10:00Z")));
}

#[tokio::test]
async fn declarative_schedules_follow_each_registration() {
    let h = harness().await;
    let declare = |cron: Option<&str>| {
        let mut task = json!({"id": "sync"});
        if let Some(cron) = cron {
            task["schedule"] = json!({"cron": cron});
        }
        json!([task])
    };
    register(&h.engine, &h.dev, declare(Some("0 * * * *"))).await;
    let hourly = schedule_of(&h.engine, &h.dev, "sync").await;
    assert_eq!(hourly.next_run_at, Some(utc("2026-03-01T13:00:00Z")));

    // A changed cron changes the next occurrence (same schedule).
    register(&h.engine, &h.dev, declare(Some("30 * * * *"))).await;
    let half_past = schedule_of(&h.engine, &h.dev, "sync").await;
    assert_eq!(half_past.id, hourly.id);
    assert_eq!(half_past.cron, "30 * * * *");
    assert_eq!(half_past.next_run_at, Some(utc("2026-03-01T12:30:00Z")));
    h.set_clock(utc("2026-03-01T12:30:00Z"));
    h.pass().await;
    let store = &**h.engine.store();
    assert_eq!(fired_of(store, &h.dev, hourly.id.as_str()).await.len(), 1);

    // Listed without its cron: the schedule goes, and nothing fires any more.
    register(&h.engine, &h.dev, declare(None)).await;
    assert_eq!(schedules_of(&h.engine, &h.dev, "sync").await, vec![]);
    h.drive(
        utc("2026-03-01T12:30:00Z"),
        utc("2026-03-01T15:00:00Z"),
        Duration::minutes(15),
    )
    .await;
    assert_eq!(fired_of(store, &h.dev, hourly.id.as_str()).await.len(), 1);
    assert_eq!(
        store
            .run_list(&RunListQuery::newest(h.dev.id.clone(), 100))
            .await
            .unwrap()
            .len(),
        1,
        "no run of any schedule"
    );

    // Declared for production only: none in dev, one in prod.
    let prod_only = json!([{"id": "prod-report", "schedule": {"cron": "0 0 * * *", "environments": ["PRODUCTION"]}}]);
    register(&h.engine, &h.dev, prod_only.clone()).await;
    register(&h.engine, &h.prod, prod_only).await;
    assert_eq!(schedules_of(&h.engine, &h.dev, "prod-report").await, vec![]);
    let prod = schedule_of(&h.engine, &h.prod, "prod-report").await;
    assert_eq!(prod.next_run_at, Some(utc("2026-03-02T00:00:00Z")));

    // Narrowed to production later: the dev schedule it had goes.
    register(
        &h.engine,
        &h.dev,
        json!([{"id": "nightly", "schedule": {"cron": "0 0 * * *"}}]),
    )
    .await;
    let nightly = schedule_of(&h.engine, &h.dev, "nightly").await;
    // Only its task changes a declarative schedule.
    for refused in [
        h.engine
            .schedule_update(
                &h.dev,
                nightly.id.as_str(),
                &ScheduleInput {
                    task: "nightly".into(),
                    cron: "0 1 * * *".into(),
                    ..ScheduleInput::default()
                },
            )
            .await
            .map(|_| ()),
        h.engine
            .schedule_delete(&h.dev, nightly.id.as_str())
            .await
            .map(|_| ()),
    ] {
        assert!(
            matches!(
                refused,
                Err(runnel_engine::Error::Schedule(
                    ScheduleApiError::Declarative(_)
                ))
            ),
            "{refused:?}"
        );
    }
    register(
        &h.engine,
        &h.dev,
        json!([{"id": "nightly", "schedule": {"cron": "0 0 * * *", "environments": ["prod"]}}]),
    )
    .await;
    assert_eq!(schedules_of(&h.engine, &h.dev, "nightly").await, vec![]);
}

#[tokio::test]
async fn a_scheduled_run_retrieves_with_its_schedule_and_no_public_idempotency_key() {
    let h = harness().await;
    register(
        &h.engine,
        &h.dev,
        json!([{"id": "hourly", "schedule": {"cron": "0 * * * *"}}, {"id": "report", "scheduled": true}]),
    )
    .await;
    let declarative = schedule_of(&h.engine, &h.dev, "hourly").await;
    let imperative = h
        .engine
        .schedule_create(
            &h.dev,
            &ScheduleInput {
                task: "report".into(),
                cron: "0 13 * * *".into(),
                deduplication_key: Some("daily-report".into()),
                external_id: Some("customer-7".into()),
                timezone: Some("Europe/Paris".into()),
                ..ScheduleInput::default()
            },
        )
        .await
        .unwrap();
    // Created at 12:00 UTC on 1 March: 13:00 in Paris (12:00 UTC) next fires on 2 March;
    // the hourly one fires its latest occurrence then too.
    h.set_clock(utc("2026-03-02T12:00:00Z"));
    h.pass().await;
    let store = &**h.engine.store();

    for (schedule, expected) in [
        (
            &declarative,
            json!({
                "id": declarative.id.as_str(),
                "generator": {
                    "type": "CRON",
                    "expression": "0 * * * *",
                    "description": "At minute 0 past every hour"
                }
            }),
        ),
        (
            &imperative,
            json!({
                "id": imperative.id.as_str(),
                "externalId": "customer-7",
                "deduplicationKey": "daily-report",
                "generator": {
                    "type": "CRON",
                    "expression": "0 13 * * *",
                    "description": "At 13:00"
                }
            }),
        ),
    ] {
        let runs = runs_of(store, &h.dev, schedule.id.as_str()).await;
        assert_eq!(runs.len(), 1, "{}", schedule.task_identifier);
        let run = &runs[0];
        let detail = h.engine.run_detail(&h.dev, &run.id).await.unwrap().unwrap();
        assert_eq!(detail.schedule, Some(expected.clone()));
        // The run holds the server's per-occurrence key; the view does not show it.
        let occurrence = fired(run).timestamp;
        assert_eq!(
            run.idempotency_key.as_deref(),
            Some(format!("schedule:{}:{}", schedule.id, occurrence.timestamp_millis()).as_str())
        );
        for version in [ApiVersion::Legacy, ApiVersion::Current] {
            let view = serde_json::to_value(RetrieveRunResponse::new(&detail, version)).unwrap();
            assert_eq!(view["schedule"], expected);
            assert!(
                view.get("idempotencyKey").is_none(),
                "{version:?}: {}",
                view["idempotencyKey"]
            );
        }
    }

    // Once its schedule is deleted, a run retrieves without `schedule`.
    let runs = runs_of(store, &h.dev, imperative.id.as_str()).await;
    h.engine
        .schedule_delete(&h.dev, "daily-report")
        .await
        .unwrap();
    let detail = h
        .engine
        .run_detail(&h.dev, &runs[0].id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(detail.schedule, None);
}
