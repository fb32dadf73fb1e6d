//! SQLite driver overhead: sqlx 0.8 against rusqlite on a thread of its own (issue 15).
//!
//! Why: the SQLite backend spends much of its time switching threads, not in SQLite. sqlx
//! runs every statement as a round trip to the connection's worker thread (a channel, a
//! park and an unpark each way), so a `BEGIN IMMEDIATE; INSERT; COMMIT` costs three round
//! trips. The alternative measured here owns a rusqlite connection on one std thread and
//! takes whole transactions as closures (one round trip per transaction, statements
//! prepared once with `prepare_cached`), optionally draining every queued 1-row write into
//! one transaction (group commit). Same file layout as the store: WAL, `synchronous =
//! NORMAL`, one writer, readers apart; a table shaped like `runs` with an index on status.
//!
//! ```text
//!   sqlx:      task ──stmt──► conn worker ──► SQLite      (× statements per transaction)
//!   rusqlite:  task ──closure(tx)──► db thread ──► SQLite  (× 1 per transaction, or per group)
//! ```
//!
//! Workloads (N = 20,000 rows, one tokio runtime with 2 workers, each driver its own file):
//! 1. insert: N one-row transactions awaited one after another;
//! 2. update ×24: the same rows updated in transactions of 24 `UPDATE … WHERE id = ?`;
//! 3. update multi: as 2, but one `UPDATE … FROM (VALUES …)` per transaction;
//! 4. point read: N `SELECT … WHERE id = ?` from one caller (sqlx reader pool / a reader thread);
//! 5. 32 callers: N new 1-row transactions from 32 tasks at once (sqlx: the writer pool of 1;
//!    rusqlite: one transaction each, then group commit).
//!
//! An op is a row written or read; tx/s counts transactions (groups for group commit).
//! Every write transaction starts with `BEGIN IMMEDIATE`, as the store's do.
//!
//! Run: `cargo run --release -p runnel-store --example sqlite_drivers`

use std::error::Error;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rusqlite::types::Value;
use rusqlite::{params, params_from_iter, Connection, OpenFlags, TransactionBehavior};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;

type BoxError = Box<dyn Error + Send + Sync>;
/// A `runs` row as both drivers decode it for the point reads.
type RunRow = (String, String, String, i64, i64);

const ROWS: usize = 20_000;
const BATCH: usize = 24;
const CALLERS: usize = 32;
const READERS: u32 = 4;
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

const INSERT_EACH: &str = "insert 1 row/tx";
const UPDATE_EACH: &str = "update 24 stmts/tx";
const UPDATE_MULTI: &str = "update 24 rows/stmt";
const POINT_READ: &str = "point read";
const INSERT_CONCURRENT: &str = "insert 32 callers";

const SCHEMA: &str = "CREATE TABLE runs (id TEXT PRIMARY KEY, status TEXT NOT NULL, \
     payload TEXT NOT NULL, attempt INTEGER NOT NULL, updated_at INTEGER NOT NULL);
     CREATE INDEX runs_status ON runs (status);";
const INSERT: &str =
    "INSERT INTO runs (id, status, payload, attempt, updated_at) VALUES (?, 'PENDING', ?, 0, ?)";
const UPDATE: &str =
    "UPDATE runs SET status = ?, attempt = attempt + 1, updated_at = ? WHERE id = ?";
const SELECT: &str = "SELECT id, status, payload, attempt, updated_at FROM runs WHERE id = ?";

fn run_id(i: usize) -> String {
    format!("run_{i:010}")
}

/// About the size of a small task payload.
fn payload(i: usize) -> String {
    format!(
        r#"{{"orderId":"ord_{i}","customer":"cus_{:06}","items":[1,2,3],"note":"benchmark row"}}"#,
        i % 977
    )
}

/// `UPDATE … FROM (VALUES (id, status, updated_at), …)`: `rows` rows in one statement.
fn update_many_sql(rows: usize) -> String {
    let values = vec!["(?, ?, ?)"; rows].join(", ");
    format!(
        "UPDATE runs SET status = v.column2, attempt = runs.attempt + 1, updated_at = v.column3 \
         FROM (VALUES {values}) AS v WHERE runs.id = v.column1"
    )
}

/// The batches of workloads 2 and 3: row ranges of at most [`BATCH`].
fn batches() -> impl Iterator<Item = std::ops::Range<usize>> {
    (0..ROWS)
        .step_by(BATCH)
        .map(|start| start..(start + BATCH).min(ROWS))
}

/// Prints one line of the table: `ROWS` ops (rows written or read) in `txs` transactions.
fn report(workload: &str, driver: &str, txs: usize, start: Instant) {
    let secs = start.elapsed().as_secs_f64();
    let statements = match workload {
        UPDATE_EACH => ROWS + 2 * txs,
        UPDATE_MULTI => 3 * txs,
        POINT_READ => ROWS,
        _ => ROWS + 2 * txs, // BEGIN IMMEDIATE, the inserts, COMMIT
    };
    let (per_op, per_statement) = (secs * 1e6 / ROWS as f64, secs * 1e6 / statements as f64);
    let (ops_per_sec, txs_per_sec) = (ROWS as f64 / secs, txs as f64 / secs);
    println!(
        "{workload:<20} {driver:<22} {ops_per_sec:>9.0} {per_op:>7.1} {txs_per_sec:>8.0} \
         {per_statement:>8.1}"
    );
}

// ---------------------------------------------------------------- sqlx

async fn sqlx_suite(dir: &Path) -> Result<(), BoxError> {
    let options = SqliteConnectOptions::new()
        .filename(dir.join("sqlx.db"))
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .busy_timeout(BUSY_TIMEOUT);
    let writer = SqlitePoolOptions::new()
        .max_connections(1)
        .min_connections(1)
        .connect_with(options.clone())
        .await?;
    sqlx::raw_sql(SCHEMA).execute(&writer).await?;
    let reader = SqlitePoolOptions::new()
        .max_connections(READERS)
        .connect_with(options.read_only(true))
        .await?;

    let start = Instant::now();
    for i in 0..ROWS {
        sqlx_insert(&writer, i).await?;
    }
    report(INSERT_EACH, "sqlx", ROWS, start);

    let start = Instant::now();
    for rows in batches() {
        let mut tx = writer.begin_with("BEGIN IMMEDIATE").await?;
        for i in rows {
            sqlx::query(UPDATE)
                .bind("EXECUTING")
                .bind(i as i64)
                .bind(run_id(i))
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
    }
    report(UPDATE_EACH, "sqlx", ROWS.div_ceil(BATCH), start);

    let start = Instant::now();
    for rows in batches() {
        let sql = update_many_sql(rows.len());
        let mut query = sqlx::query(&sql);
        for i in rows {
            query = query.bind(run_id(i)).bind("COMPLETED").bind(i as i64 + 1);
        }
        let mut tx = writer.begin_with("BEGIN IMMEDIATE").await?;
        query.execute(&mut *tx).await?;
        tx.commit().await?;
    }
    report(UPDATE_MULTI, "sqlx", ROWS.div_ceil(BATCH), start);

    let start = Instant::now();
    for i in 0..ROWS {
        let row: RunRow = sqlx::query_as(SELECT)
            .bind(run_id(i))
            .fetch_one(&reader)
            .await?;
        assert_eq!(row.1, "COMPLETED");
    }
    report(POINT_READ, "sqlx (reader pool 4)", ROWS, start);

    let start = Instant::now();
    let mut callers = JoinSet::new();
    for caller in 0..CALLERS {
        let writer = writer.clone();
        callers.spawn(async move {
            for i in (ROWS + caller..2 * ROWS).step_by(CALLERS) {
                sqlx_insert(&writer, i).await?;
            }
            Ok::<_, sqlx::Error>(())
        });
    }
    while let Some(done) = callers.join_next().await {
        done??;
    }
    report(INSERT_CONCURRENT, "sqlx (pool of 1)", ROWS, start);

    writer.close().await;
    reader.close().await;
    Ok(())
}

/// A one-row write transaction: three round trips to the connection's worker.
async fn sqlx_insert(writer: &SqlitePool, i: usize) -> Result<(), sqlx::Error> {
    let mut tx = writer.begin_with("BEGIN IMMEDIATE").await?;
    let insert = sqlx::query(INSERT).bind(run_id(i)).bind(payload(i));
    insert.bind(i as i64).execute(&mut *tx).await?;
    tx.commit().await
}

// ---------------------------------------------------------------- rusqlite on a thread

type Job = Box<dyn FnOnce(&mut Connection) + Send>;
type GroupJob = Box<dyn FnOnce(&Connection) -> rusqlite::Result<()> + Send>;

enum Message {
    /// A whole transaction (or read) of its own.
    Alone(Job),
    /// A write that may share a transaction with every other one queued behind it.
    Grouped(GroupJob, oneshot::Sender<Result<(), String>>),
}

/// A connection owned by one std thread; async callers hand it closures.
#[derive(Clone)]
struct DbThread {
    sender: mpsc::UnboundedSender<Message>,
    /// Transactions committed for grouped writes.
    groups: Arc<AtomicUsize>,
}

impl DbThread {
    /// The thread ends when the last clone is dropped.
    fn spawn(connection: Connection) -> Self {
        let (sender, receiver) = mpsc::unbounded_channel();
        let groups = Arc::new(AtomicUsize::new(0));
        let counter = groups.clone();
        std::thread::spawn(move || serve(connection, receiver, &counter));
        DbThread { sender, groups }
    }

    async fn call<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> rusqlite::Result<R> + Send + 'static,
    ) -> Result<R, BoxError> {
        let (reply, answer) = oneshot::channel();
        let job: Job = Box::new(move |connection| {
            let _ = reply.send(f(connection));
        });
        self.sender
            .send(Message::Alone(job))
            .map_err(|_| "db thread gone")?;
        Ok(answer.await??)
    }

    /// One round trip: `f` inside `BEGIN IMMEDIATE … COMMIT`.
    async fn write<R: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<R> + Send + 'static,
    ) -> Result<R, BoxError> {
        self.call(move |connection| {
            let tx = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let result = f(&tx)?;
            tx.commit()?;
            Ok(result)
        })
        .await
    }

    async fn call_grouped(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<()> + Send + 'static,
    ) -> Result<(), BoxError> {
        let (reply, answer) = oneshot::channel();
        self.sender
            .send(Message::Grouped(Box::new(f), reply))
            .map_err(|_| "db thread gone")?;
        Ok(answer.await??)
    }
}

/// Runs messages in order until every sender is gone. A grouped write takes every grouped
/// write already queued behind it into one `BEGIN IMMEDIATE … COMMIT`; the group waits for
/// nothing, so a lone caller still commits at once. One failing write fails its group here
/// (the store's `group.rs` then retries one by one; a benchmark needs no such fallback).
fn serve(
    mut connection: Connection,
    mut receiver: mpsc::UnboundedReceiver<Message>,
    groups: &AtomicUsize,
) {
    let mut next = receiver.blocking_recv();
    while let Some(message) = next.take() {
        match message {
            Message::Alone(job) => job(&mut connection),
            Message::Grouped(job, reply) => {
                let (mut jobs, mut replies) = (vec![job], vec![reply]);
                loop {
                    match receiver.try_recv() {
                        Ok(Message::Grouped(job, reply)) => {
                            jobs.push(job);
                            replies.push(reply);
                        }
                        Ok(alone) => {
                            next = Some(alone);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                groups.fetch_add(1, Ordering::Relaxed);
                let outcome = commit_group(&mut connection, jobs).map_err(|e| e.to_string());
                for reply in replies {
                    let _ = reply.send(outcome.clone());
                }
            }
        }
        if next.is_none() {
            next = receiver.blocking_recv();
        }
    }
}

fn commit_group(connection: &mut Connection, jobs: Vec<GroupJob>) -> rusqlite::Result<()> {
    let tx = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
    for job in jobs {
        job(&tx)?;
    }
    tx.commit()
}

fn rusqlite_open(path: &Path, flags: OpenFlags) -> rusqlite::Result<Connection> {
    let connection = Connection::open_with_flags(path, flags)?;
    connection.busy_timeout(BUSY_TIMEOUT)?;
    let mode: String =
        connection.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))?;
    assert_eq!(mode, "wal");
    connection.pragma_update(None, "synchronous", "NORMAL")?;
    Ok(connection)
}

fn rusqlite_insert(
    connection: &Connection,
    id: &str,
    payload: &str,
    i: usize,
) -> rusqlite::Result<()> {
    connection
        .prepare_cached(INSERT)?
        .execute(params![id, payload, i as i64])?;
    Ok(())
}

async fn rusqlite_suite(dir: &Path) -> Result<(), BoxError> {
    let path = dir.join("rusqlite.db");
    let connection = rusqlite_open(&path, OpenFlags::default())?;
    connection.execute_batch(SCHEMA)?;
    let writer = DbThread::spawn(connection);
    let reader = DbThread::spawn(rusqlite_open(
        &path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?);

    let start = Instant::now();
    for i in 0..ROWS {
        let (id, payload) = (run_id(i), payload(i));
        let insert = move |c: &Connection| rusqlite_insert(c, &id, &payload, i);
        writer.write(insert).await?;
    }
    report(INSERT_EACH, "rusqlite thread", ROWS, start);

    let start = Instant::now();
    for rows in batches() {
        let ids: Vec<(String, i64)> = rows.map(|i| (run_id(i), i as i64)).collect();
        writer
            .write(move |tx| {
                let mut update = tx.prepare_cached(UPDATE)?;
                for (id, updated_at) in &ids {
                    update.execute(params!["EXECUTING", updated_at, id])?;
                }
                Ok(())
            })
            .await?;
    }
    report(UPDATE_EACH, "rusqlite thread", ROWS.div_ceil(BATCH), start);

    let start = Instant::now();
    for rows in batches() {
        let sql: Arc<str> = update_many_sql(rows.len()).into();
        let mut values = Vec::with_capacity(rows.len() * 3);
        for i in rows {
            values.push(Value::Text(run_id(i)));
            values.push(Value::Text("COMPLETED".into()));
            values.push(Value::Integer(i as i64 + 1));
        }
        let update =
            move |tx: &Connection| tx.prepare_cached(&sql)?.execute(params_from_iter(&values));
        writer.write(update).await?;
    }
    report(UPDATE_MULTI, "rusqlite thread", ROWS.div_ceil(BATCH), start);

    let start = Instant::now();
    for i in 0..ROWS {
        let id = run_id(i);
        let row: RunRow = reader
            .call(move |c| {
                let mut select = c.prepare_cached(SELECT)?;
                select.query_row([id], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
                })
            })
            .await?;
        assert_eq!(row.1, "COMPLETED");
    }
    report(POINT_READ, "rusqlite thread", ROWS, start);

    for grouped in [false, true] {
        let first = if grouped { 2 * ROWS } else { ROWS };
        let start = Instant::now();
        let mut callers = JoinSet::new();
        for caller in 0..CALLERS {
            let writer = writer.clone();
            callers.spawn(async move {
                for i in (first + caller..first + ROWS).step_by(CALLERS) {
                    let (id, payload) = (run_id(i), payload(i));
                    let insert = move |c: &Connection| rusqlite_insert(c, &id, &payload, i);
                    if grouped {
                        writer.call_grouped(insert).await?;
                    } else {
                        writer.write(insert).await?;
                    }
                }
                Ok::<_, BoxError>(())
            });
        }
        while let Some(done) = callers.join_next().await {
            done??;
        }
        let (driver, txs) = if grouped {
            (
                "rusqlite group commit",
                writer.groups.load(Ordering::Relaxed),
            )
        } else {
            ("rusqlite thread", ROWS)
        };
        report(INSERT_CONCURRENT, driver, txs, start);
    }

    Ok(())
}

fn main() -> Result<(), BoxError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let dir = tempfile::tempdir()?;
    println!(
        "SQLite {}, {ROWS} rows, WAL, synchronous = NORMAL",
        rusqlite::version()
    );
    println!(
        "{:<20} {:<22} {:>9} {:>7} {:>8} {:>8}",
        "workload", "driver", "ops/s", "µs/op", "tx/s", "µs/stmt"
    );
    runtime.block_on(async {
        sqlx_suite(dir.path()).await?;
        rusqlite_suite(dir.path()).await
    })
}
