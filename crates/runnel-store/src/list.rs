//! The SQL of `run_list`, written once for both backends.
//!
//! A page is one range scan of the `runs_list` index (`environment_id, created_at DESC,
//! id DESC`, migration 0004) starting at the cursor: the row-value comparison
//! `(created_at, id) < (cursor)` and the `createdAt` window bound the range, and every
//! other filter (status, task, tags, …) is checked on the rows the scan meets. With a
//! single task filter the planner may take `runs_list_by_task` instead. So a page costs
//! `limit` index steps (plus the rows a selective filter skips) whether the environment
//! holds ten runs or ten million.
//!
//! What differs between the backends: placeholders (`?` / `$n`), ids compare under
//! `COLLATE "C"` on PostgreSQL (byte order, like SQLite and Rust, and the collation its
//! index is built with), and tags (JSON array text) are matched with `json_each` on
//! SQLite and `jsonb ?|` on PostgreSQL.

use runnel_core::list::{Direction, RunListQuery};
use sqlx::query::Query;
use sqlx::{Database, Encode, Type};

use crate::rows::{ms, RUN_COLUMNS};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dialect {
    Sqlite,
    Postgres,
}

/// A value bound to the query, in placeholder order.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Bind {
    Text(String),
    Int(i64),
    Flag(bool),
}

/// The statement and its values.
#[derive(Debug)]
pub(crate) struct ListSql {
    pub sql: String,
    pub binds: Vec<Bind>,
}

struct Builder {
    dialect: Dialect,
    conditions: Vec<String>,
    binds: Vec<Bind>,
}

impl Builder {
    /// Adds `value` and returns its placeholder.
    fn bind(&mut self, value: Bind) -> String {
        self.binds.push(value);
        match self.dialect {
            Dialect::Sqlite => "?".to_owned(),
            Dialect::Postgres => format!("${}", self.binds.len()),
        }
    }

    /// `(p1, p2, …)` for a list of texts.
    fn text_list<'a>(&mut self, values: impl IntoIterator<Item = &'a str>) -> String {
        let placeholders: Vec<String> = values
            .into_iter()
            .map(|v| self.bind(Bind::Text(v.to_owned())))
            .collect();
        placeholders.join(", ")
    }

    /// `<column> IN (…)` when `values` is not empty.
    fn any_of<'a>(&mut self, column: &str, values: impl IntoIterator<Item = &'a str>) {
        let mut values = values.into_iter().peekable();
        if values.peek().is_some() {
            let list = self.text_list(values);
            self.conditions.push(format!("{column} IN ({list})"));
        }
    }
}

pub(crate) fn run_list_sql(query: &RunListQuery, dialect: Dialect) -> ListSql {
    let mut b = Builder {
        dialect,
        conditions: Vec::new(),
        binds: Vec::new(),
    };
    let id = match dialect {
        Dialect::Sqlite => "id",
        Dialect::Postgres => "id COLLATE \"C\"",
    };
    let environment = b.bind(Bind::Text(query.environment_id.as_str().to_owned()));
    b.conditions.push(format!("environment_id = {environment}"));
    if let Some(from) = query.created_from {
        let p = b.bind(Bind::Int(ms(from)));
        b.conditions.push(format!("created_at >= {p}"));
    }
    if let Some(to) = query.created_to {
        let p = b.bind(Bind::Int(ms(to)));
        b.conditions.push(format!("created_at <= {p}"));
    }
    let order = match &query.page {
        None => "DESC",
        Some((direction, cursor)) => {
            let (comparison, order) = match direction {
                Direction::Older => ("<", "DESC"),
                Direction::Newer => (">", "ASC"),
            };
            let c = b.bind(Bind::Int(cursor.created_at_ms));
            let r = b.bind(Bind::Text(cursor.run_id.as_str().to_owned()));
            b.conditions
                .push(format!("(created_at, {id}) {comparison} ({c}, {r})"));
            order
        }
    };

    let filter = &query.filter;
    b.any_of("status", filter.statuses.iter().map(|s| s.as_str()));
    b.any_of(
        "task_identifier",
        filter.task_identifiers.iter().map(String::as_str),
    );
    b.any_of(
        "COALESCE(worker_version, lock_to_version)",
        filter.versions.iter().map(String::as_str),
    );
    b.any_of("queue", filter.queues.iter().map(String::as_str));
    b.any_of("machine", filter.machines.iter().map(|m| m.as_str()));
    if !filter.tags.is_empty() {
        let list = b.text_list(filter.tags.iter().map(String::as_str));
        b.conditions.push(match dialect {
            Dialect::Sqlite => format!(
                "EXISTS (SELECT 1 FROM json_each(runs.tags) AS tag WHERE tag.value IN ({list}))"
            ),
            Dialect::Postgres => format!("runs.tags::jsonb ?| ARRAY[{list}]::text[]"),
        });
    }
    if let Some(is_test) = filter.is_test {
        let p = b.bind(Bind::Flag(is_test));
        b.conditions.push(format!("is_test = {p}"));
    }
    if let Some(schedule) = &filter.schedule_id {
        let p = b.bind(Bind::Text(schedule.clone()));
        b.conditions.push(format!("schedule_id = {p}"));
    }
    if let Some(batch) = &filter.batch_id {
        let p = b.bind(Bind::Text(batch.clone()));
        b.conditions.push(format!("batch_id = {p}"));
    }
    let limit = b.bind(Bind::Int(i64::from(query.limit)));
    let sql = format!(
        "SELECT {RUN_COLUMNS} FROM runs WHERE {} ORDER BY created_at {order}, {id} {order} LIMIT {limit}",
        b.conditions.join(" AND ")
    );
    ListSql {
        sql,
        binds: b.binds,
    }
}

/// Binds `binds` to `query` in order.
pub(crate) fn bind_all<'q, DB>(
    mut query: Query<'q, DB, <DB as Database>::Arguments<'q>>,
    binds: &'q [Bind],
) -> Query<'q, DB, <DB as Database>::Arguments<'q>>
where
    DB: Database,
    &'q str: Encode<'q, DB> + Type<DB>,
    i64: Encode<'q, DB> + Type<DB>,
    bool: Encode<'q, DB> + Type<DB>,
{
    for bind in binds {
        query = match bind {
            Bind::Text(text) => query.bind(text.as_str()),
            Bind::Int(n) => query.bind(*n),
            Bind::Flag(flag) => query.bind(*flag),
        };
    }
    query
}

#[cfg(test)]
mod tests {
    use super::*;
    use runnel_core::list::{Cursor, RunFilter};
    use runnel_core::{EnvironmentId, RunId, RunStatus};

    #[test]
    fn placeholders_follow_the_dialect_and_binds_their_order() {
        let query = RunListQuery {
            environment_id: EnvironmentId::parse("env_a").unwrap(),
            filter: RunFilter {
                statuses: vec![RunStatus::Queued],
                tags: vec!["x".into(), "y".into()],
                ..RunFilter::default()
            },
            created_from: None,
            created_to: None,
            page: Some((
                Direction::Newer,
                Cursor {
                    created_at_ms: 5,
                    run_id: RunId::parse("run_b").unwrap(),
                },
            )),
            limit: 3,
        };
        let pg = run_list_sql(&query, Dialect::Postgres);
        assert!(
            pg.sql.ends_with(
                "environment_id = $1 AND (created_at, id COLLATE \"C\") > ($2, $3) AND status IN ($4) \
                 AND runs.tags::jsonb ?| ARRAY[$5, $6]::text[] \
                 ORDER BY created_at ASC, id COLLATE \"C\" ASC LIMIT $7"
            ),
            "{}",
            pg.sql
        );
        assert_eq!(
            pg.binds,
            vec![
                Bind::Text("env_a".into()),
                Bind::Int(5),
                Bind::Text("run_b".into()),
                Bind::Text("QUEUED".into()),
                Bind::Text("x".into()),
                Bind::Text("y".into()),
                Bind::Int(3),
            ]
        );
        let sqlite = run_list_sql(&query, Dialect::Sqlite);
        assert!(!sqlite.sql.contains('$'), "{}", sqlite.sql);
        assert_eq!(sqlite.binds, pg.binds);
    }
}
