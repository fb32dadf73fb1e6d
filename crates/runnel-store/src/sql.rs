//! One SQL text per statement, run on either database.
//!
//! Every statement of the store is written once, in the area module it belongs to
//! (`keys.rs`, `runs.rs`, …), as a plain function generic over a `Backend` (`backend.rs`). What the
//! two databases spell differently is asked of the backend's [`Dialect`]:
//!
//! - **Placeholders and value lists.** A statement collects its values in [`Params`],
//!   which hands back the placeholder for each (`$n` on both: sqlx's SQLite driver binds
//!   `$n` to the n-th value as PostgreSQL does) and, for a list, the whole membership
//!   test: `IN ($3, $4, $5)` on SQLite, `= ANY($3)` with one array on PostgreSQL. A
//!   statement of thousands of values, each taken once in order (a multi-row `INSERT`),
//!   is built with [`Params::sequential`], whose placeholders are bare `?`s on SQLite.
//! - **Row locks.** [`Dialect::FOR_UPDATE`] and [`Dialect::SKIP_LOCKED`] are empty on
//!   SQLite, whose one writer connection already serializes writers.
//! - **Byte order.** [`Dialect::COLLATE_BYTES`] orders text by bytes, as Rust does; on
//!   PostgreSQL the database's locale would order ids and names otherwise.
//! - **JSON.** [`Dialect::json_quote`] (SQLite's `json_quote`, PostgreSQL's `to_json`) and
//!   [`Dialect::json_array_has_any`] (`json_each` on SQLite, `jsonb ?|` on PostgreSQL).
//! - **How a write begins** (`Backend::begin` (`backend.rs`)): `BEGIN IMMEDIATE` on the SQLite writer
//!   connection, a pooled transaction on PostgreSQL; and where reads go
//!   (`Backend::reader`).
//!
//! What truly differs in behaviour (the dequeue's selection, the idempotency race,
//! NOTIFY, the bootstrap lock) stays in `sqlite.rs` and `postgres.rs`.
//!
//! Values are bound through [`Value`] rather than sqlx's generic `bind`, so the area
//! code needs no per-database trait bounds: each dialect binds the few value kinds the
//! schema has (text, integer, real, flag, and their `NULL`s; see `rows.rs`).

use std::borrow::Cow;
use std::fmt::Write as _;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;

use runnel_core::run::AttemptStatus;
use runnel_core::RunStatus;

pub(crate) use crate::rows::{Columns, Value};

/// A future the dialect returns, borrowing the connection and the statement.
pub(crate) type Fut<'c, T> = Pin<Box<dyn Future<Output = sqlx::Result<T>> + Send + 'c>>;

/// The database a dialect runs on.
pub(crate) type Db<D> = <D as Dialect>::Db;

/// A connection of that database (what a pooled connection and a transaction deref to).
pub(crate) type Conn<D> = <Db<D> as sqlx::Database>::Connection;

/// A run status as an SQL literal (`'QUEUED'`). Statuses are written into the statement
/// text, not bound, so the planner can match the partial indexes that name them.
pub(crate) fn status(s: RunStatus) -> String {
    format!("'{}'", s.as_str())
}

/// Run statuses as a parenthesized SQL list (`('DEQUEUED', 'EXECUTING')`), for `IN`.
pub(crate) fn statuses(list: &[RunStatus]) -> String {
    let literals: Vec<String> = list.iter().map(|s| status(*s)).collect();
    format!("({})", literals.join(", "))
}

/// An attempt status as an SQL literal (`'PENDING'`).
pub(crate) fn attempt_status(s: AttemptStatus) -> String {
    format!("'{}'", s.as_str())
}

/// Attempt statuses as a parenthesized SQL list, for `IN`.
pub(crate) fn attempt_statuses(list: &[AttemptStatus]) -> String {
    let literals: Vec<String> = list.iter().map(|s| attempt_status(*s)).collect();
    format!("({})", literals.join(", "))
}

/// One column of a [`Params::table`]: its values, row by row.
#[derive(Debug, Clone)]
pub(crate) enum TableColumn<'a> {
    Texts(Vec<Option<Cow<'a, str>>>),
    Ints(Vec<Option<i64>>),
    Reals(Vec<f64>),
}

impl<'a> TableColumn<'a> {
    fn len(&self) -> usize {
        match self {
            TableColumn::Texts(values) => values.len(),
            TableColumn::Ints(values) => values.len(),
            TableColumn::Reals(values) => values.len(),
        }
    }

    /// Its values one by one (SQLite's `VALUES` rows).
    fn into_values(self) -> std::vec::IntoIter<Value<'a>> {
        match self {
            TableColumn::Texts(values) => values.into_iter().map(Value::Text).collect::<Vec<_>>(),
            TableColumn::Ints(values) => values.into_iter().map(Value::Int).collect(),
            TableColumn::Reals(values) => values.into_iter().map(Value::Real).collect(),
        }
        .into_iter()
    }

    /// Its values as one array, with the array's SQL type (PostgreSQL's `unnest`).
    fn into_array(self) -> (Value<'a>, &'static str) {
        match self {
            TableColumn::Texts(values) => (Value::TextColumn(values), "text[]"),
            TableColumn::Ints(values) => (Value::IntColumn(values), "bigint[]"),
            TableColumn::Reals(values) => (Value::RealColumn(values), "float8[]"),
        }
    }
}

/// The values of one statement, in placeholder order, and the placeholders for them.
///
/// ```text
/// let mut p = Params::<D>::new();
/// let sql = format!("UPDATE runs SET tags = {} WHERE id {}", p.bind(tags), p.list(ids));
/// p.execute(&mut *conn, &sql).await?;
/// ```
///
/// A fixed text with `$1`, `$2`… written out can use [`Params::with`] instead.
#[derive(Debug)]
pub(crate) struct Params<'a, D> {
    values: Vec<Value<'a>>,
    /// Placeholders are bare `?`s, bound by position ([`Params::sequential`]).
    bare: bool,
    dialect: PhantomData<D>,
}

impl<'a, D: Dialect> Default for Params<'a, D> {
    fn default() -> Self {
        Self::new()
    }
}

impl<'a, D: Dialect> Params<'a, D> {
    pub(crate) fn new() -> Self {
        Params {
            values: Vec::new(),
            bare: false,
            dialect: PhantomData,
        }
    }

    /// For a statement whose text takes every value once, in the order they are bound
    /// (a multi-row `INSERT … VALUES`, a long `IN` list): its placeholders are bare `?`s
    /// where the dialect has [`Dialect::BARE_PLACEHOLDERS`]. SQLite finds a numbered
    /// placeholder by a linear search and sqlx asks for every parameter's name when it
    /// binds, so thousands of `$n`s take seconds (docs/BENCHMARKS.md); a bare `?` is
    /// bound by position. Such a statement cannot use [`Params::with`] or a placeholder
    /// twice.
    pub(crate) fn sequential() -> Self {
        Params {
            bare: D::BARE_PLACEHOLDERS,
            ..Self::new()
        }
    }

    /// Adds a value and returns its placeholder.
    pub(crate) fn bind(&mut self, value: impl Into<Value<'a>>) -> String {
        self.values.push(value.into());
        let mut placeholder = String::with_capacity(4);
        self.push_placeholder(&mut placeholder);
        placeholder
    }

    /// Appends to `out` the placeholder of the value added last.
    fn push_placeholder(&self, out: &mut String) {
        if self.bare {
            out.push('?');
        } else {
            // Writing to a String cannot fail.
            let _ = write!(out, "${}", self.values.len());
        }
    }

    /// Makes room for `n` more values.
    pub(crate) fn reserve(&mut self, n: usize) {
        self.values.reserve(n);
    }

    /// Adds a value for the next `$n` of a fixed text.
    pub(crate) fn with(mut self, value: impl Into<Value<'a>>) -> Self {
        debug_assert!(!self.bare, "a sequential statement has no fixed `$n`s");
        self.values.push(value.into());
        self
    }

    /// Adds the values of one row of an `INSERT … VALUES` list and returns its
    /// `($1, $2, …)`.
    pub(crate) fn row<I>(&mut self, values: I) -> String
    where
        I: IntoIterator,
        I::Item: Into<Value<'a>>,
    {
        let mut row = String::new();
        self.push_row(&mut row, values);
        row
    }

    /// Like [`Params::row`], appending the `(…)` to `out`: a statement of thousands of
    /// values builds its text in one string.
    pub(crate) fn push_row<I>(&mut self, out: &mut String, values: I)
    where
        I: IntoIterator,
        I::Item: Into<Value<'a>>,
    {
        out.push('(');
        for (i, value) in values.into_iter().enumerate() {
            if i > 0 {
                out.push_str(", ");
            }
            self.values.push(value.into());
            self.push_placeholder(out);
        }
        out.push(')');
    }

    /// Adds the values of a list and returns the membership test that follows a column
    /// (`IN (…)` or `= ANY(…)`). An empty list matches nothing.
    pub(crate) fn list<I, S>(&mut self, items: I) -> String
    where
        I: IntoIterator<Item = S>,
        S: Into<Cow<'a, str>>,
    {
        let items: Vec<Cow<'a, str>> = items.into_iter().map(Into::into).collect();
        if D::ARRAYS {
            self.values.push(Value::Texts(items));
            format!("= ANY(${})", self.values.len())
        } else {
            let placeholders: Vec<String> = items
                .into_iter()
                .map(|item| self.bind(Value::Text(Some(item))))
                .collect();
            format!("IN ({})", placeholders.join(", "))
        }
    }

    /// Adds the values of a table (one [`TableColumn`] each, all of one length, at least one
    /// row) and returns a query of its rows, for `WITH v(a, b) AS (…)`:
    /// `VALUES ($1, $2), ($3, $4)` on SQLite; `SELECT * FROM unnest($1::text[],
    /// $2::bigint[])` on PostgreSQL, one array per column, so the text (and the prepared
    /// statement) is the same whatever the number of rows.
    pub(crate) fn table(&mut self, columns: Vec<TableColumn<'a>>) -> String {
        if D::ARRAYS {
            let arrays: Vec<String> = columns
                .into_iter()
                .map(|column| {
                    let (array, sql_type) = column.into_array();
                    format!("{}::{sql_type}", self.bind(array))
                })
                .collect();
            format!("SELECT * FROM unnest({})", arrays.join(", "))
        } else {
            let rows = columns.first().map_or(0, TableColumn::len);
            let mut columns: Vec<_> = columns.into_iter().map(TableColumn::into_values).collect();
            let rows: Vec<String> = (0..rows)
                .map(|_| {
                    let row: Vec<String> = columns
                        .iter_mut()
                        .filter_map(|values| values.next().map(|value| self.bind(value)))
                        .collect();
                    format!("({})", row.join(", "))
                })
                .collect();
            format!("VALUES {}", rows.join(", "))
        }
    }

    /// How many values are bound.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.values.len()
    }

    pub(crate) fn fetch_all<'c>(self, conn: &'c mut Conn<D>, sql: &'c str) -> Fut<'c, Vec<D::Row>>
    where
        'a: 'c,
    {
        D::fetch_all(conn, sql, self.values)
    }

    pub(crate) fn fetch_optional<'c>(
        self,
        conn: &'c mut Conn<D>,
        sql: &'c str,
    ) -> Fut<'c, Option<D::Row>>
    where
        'a: 'c,
    {
        D::fetch_optional(conn, sql, self.values)
    }

    pub(crate) async fn fetch_one(self, conn: &mut Conn<D>, sql: &str) -> sqlx::Result<D::Row> {
        D::fetch_optional(conn, sql, self.values)
            .await?
            .ok_or(sqlx::Error::RowNotFound)
    }

    /// Runs the statement and returns how many rows it changed.
    pub(crate) fn execute<'c>(self, conn: &'c mut Conn<D>, sql: &'c str) -> Fut<'c, u64>
    where
        'a: 'c,
    {
        D::execute(conn, sql, self.values)
    }
}

/// What a database spells its own way, and how values reach it.
pub(crate) trait Dialect: Send + Sync + Sized + 'static {
    type Db: sqlx::Database;
    type Row: Columns + Send + Sync;

    /// Whether a list binds as one array (`= ANY($n)`) rather than one value each.
    const ARRAYS: bool;
    /// Appended to a `SELECT` that locks the rows it reads until commit.
    const FOR_UPDATE: &'static str;
    /// Appended to a locking `SELECT` that passes over rows another writer holds.
    const SKIP_LOCKED: &'static str;
    /// Appended to an `ORDER BY` text column to order it by bytes.
    const COLLATE_BYTES: &'static str;
    /// Whether [`Params::sequential`] writes bare `?` placeholders.
    const BARE_PLACEHOLDERS: bool;
    /// Most values one statement may bind.
    const MAX_BINDS: usize;
    /// A flag column's true value as the schema's partial indexes spell it (`paused = 1`
    /// on SQLite, which stores flags as integers; `paused = TRUE` on PostgreSQL): a
    /// partial index serves a statement only when its text matches the index's.
    const TRUE: &'static str;

    fn fetch_all<'c, 'a: 'c>(
        conn: &'c mut Conn<Self>,
        sql: &'c str,
        values: Vec<Value<'a>>,
    ) -> Fut<'c, Vec<Self::Row>>;

    fn fetch_optional<'c, 'a: 'c>(
        conn: &'c mut Conn<Self>,
        sql: &'c str,
        values: Vec<Value<'a>>,
    ) -> Fut<'c, Option<Self::Row>>;

    fn execute<'c, 'a: 'c>(
        conn: &'c mut Conn<Self>,
        sql: &'c str,
        values: Vec<Value<'a>>,
    ) -> Fut<'c, u64>;

    /// The JSON string literal of the SQL text `expr` (`"…"`, escaped the same way on both
    /// databases). When `expr` is `NULL` it is `NULL` or `null`: wrap it in
    /// `COALESCE(…, 'null')`.
    fn json_quote(expr: &str) -> String;

    /// The condition that the JSON array of strings held by the text column `column` (a
    /// run's tags) has any of `items`, which it binds to `p`.
    fn json_array_has_any<'a>(
        p: &mut Params<'a, Self>,
        column: &str,
        items: Vec<Cow<'a, str>>,
    ) -> String;
}

/// SQLite's dialect.
#[derive(Debug)]
pub(crate) struct Sqlite;

impl Dialect for Sqlite {
    type Db = sqlx::Sqlite;
    type Row = sqlx::sqlite::SqliteRow;

    const ARRAYS: bool = false;
    const FOR_UPDATE: &'static str = "";
    const SKIP_LOCKED: &'static str = "";
    const COLLATE_BYTES: &'static str = "";
    const BARE_PLACEHOLDERS: bool = true;
    /// `SQLITE_MAX_VARIABLE_NUMBER`, 32766 since 3.32.
    const MAX_BINDS: usize = 32_766;
    const TRUE: &'static str = "1";

    fn fetch_all<'c, 'a: 'c>(
        conn: &'c mut Conn<Self>,
        sql: &'c str,
        values: Vec<Value<'a>>,
    ) -> Fut<'c, Vec<Self::Row>> {
        Box::pin(async move { sqlite_query(sql, values).fetch_all(conn).await })
    }

    fn fetch_optional<'c, 'a: 'c>(
        conn: &'c mut Conn<Self>,
        sql: &'c str,
        values: Vec<Value<'a>>,
    ) -> Fut<'c, Option<Self::Row>> {
        Box::pin(async move { sqlite_query(sql, values).fetch_optional(conn).await })
    }

    fn execute<'c, 'a: 'c>(
        conn: &'c mut Conn<Self>,
        sql: &'c str,
        values: Vec<Value<'a>>,
    ) -> Fut<'c, u64> {
        Box::pin(async move {
            Ok(sqlite_query(sql, values)
                .execute(conn)
                .await?
                .rows_affected())
        })
    }

    fn json_quote(expr: &str) -> String {
        format!("json_quote({expr})")
    }

    fn json_array_has_any<'a>(
        p: &mut Params<'a, Self>,
        column: &str,
        items: Vec<Cow<'a, str>>,
    ) -> String {
        let list = p.list(items);
        format!("EXISTS (SELECT 1 FROM json_each({column}) AS item WHERE item.value {list})")
    }
}

fn sqlite_query<'q>(
    sql: &'q str,
    values: Vec<Value<'q>>,
) -> sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments<'q>> {
    let mut query = sqlx::query(sql);
    for value in values {
        query = match value {
            Value::Text(Some(Cow::Borrowed(text))) => query.bind(text),
            Value::Text(Some(Cow::Owned(text))) => query.bind(text),
            Value::Text(None) => query.bind(None::<&str>),
            Value::Int(n) => query.bind(n),
            Value::Real(x) => query.bind(x),
            Value::Flag(flag) => query.bind(flag),
            // `Params` makes arrays only for a dialect with `ARRAYS` (not SQLite). Were
            // one to reach here, a debug build says so, and a release build binds NULL,
            // which matches nothing.
            Value::Texts(_) | Value::TextColumn(_) | Value::IntColumn(_) | Value::RealColumn(_) => {
                debug_assert!(false, "an array value bound to a SQLite statement");
                query.bind(None::<&str>)
            }
        };
    }
    query
}

/// PostgreSQL's dialect.
#[derive(Debug)]
pub(crate) struct Postgres;

impl Dialect for Postgres {
    type Db = sqlx::Postgres;
    type Row = sqlx::postgres::PgRow;

    const ARRAYS: bool = true;
    const FOR_UPDATE: &'static str = " FOR UPDATE";
    const SKIP_LOCKED: &'static str = " SKIP LOCKED";
    const COLLATE_BYTES: &'static str = " COLLATE \"C\"";
    const BARE_PLACEHOLDERS: bool = false;
    /// The protocol counts parameters in an `i16`.
    const MAX_BINDS: usize = 65_535;
    const TRUE: &'static str = "TRUE";

    fn fetch_all<'c, 'a: 'c>(
        conn: &'c mut Conn<Self>,
        sql: &'c str,
        values: Vec<Value<'a>>,
    ) -> Fut<'c, Vec<Self::Row>> {
        Box::pin(async move { pg_query(sql, values).fetch_all(conn).await })
    }

    fn fetch_optional<'c, 'a: 'c>(
        conn: &'c mut Conn<Self>,
        sql: &'c str,
        values: Vec<Value<'a>>,
    ) -> Fut<'c, Option<Self::Row>> {
        Box::pin(async move { pg_query(sql, values).fetch_optional(conn).await })
    }

    fn execute<'c, 'a: 'c>(
        conn: &'c mut Conn<Self>,
        sql: &'c str,
        values: Vec<Value<'a>>,
    ) -> Fut<'c, u64> {
        Box::pin(async move { Ok(pg_query(sql, values).execute(conn).await?.rows_affected()) })
    }

    fn json_quote(expr: &str) -> String {
        format!("to_json({expr})::text")
    }

    fn json_array_has_any<'a>(
        p: &mut Params<'a, Self>,
        column: &str,
        items: Vec<Cow<'a, str>>,
    ) -> String {
        // `?|` tests the parsed array at once, several times faster per row than
        // expanding its elements.
        format!("{column}::jsonb ?| {}::text[]", p.bind(Value::Texts(items)))
    }
}

fn pg_query<'q>(
    sql: &'q str,
    values: Vec<Value<'q>>,
) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
    let mut query = sqlx::query(sql);
    for value in values {
        query = match value {
            Value::Text(Some(Cow::Borrowed(text))) => query.bind(text),
            Value::Text(Some(Cow::Owned(text))) => query.bind(text),
            Value::Text(None) => query.bind(None::<&str>),
            Value::Int(n) => query.bind(n),
            Value::Real(x) => query.bind(x),
            Value::Flag(flag) => query.bind(flag),
            Value::Texts(items) => {
                query.bind(items.into_iter().map(Cow::into_owned).collect::<Vec<_>>())
            }
            Value::TextColumn(items) => query.bind(
                items
                    .into_iter()
                    .map(|item| item.map(Cow::into_owned))
                    .collect::<Vec<_>>(),
            ),
            Value::IntColumn(items) => query.bind(items),
            Value::RealColumn(items) => query.bind(items),
        };
    }
    query
}

/// Rows per `INSERT … VALUES` statement when each row binds `columns` parameters and a
/// statement may bind at most `limit`.
pub(crate) fn rows_per_statement(limit: usize, columns: usize) -> usize {
    (limit / columns).max(1)
}
