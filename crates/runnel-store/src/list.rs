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
//! What differs between the backends comes from the [`Dialect`]: ids compare under
//! `COLLATE "C"` on PostgreSQL (byte order, like SQLite and Rust, and the collation its
//! index is built with), value lists are `IN (…)` or `= ANY(…)`, and tags (JSON array
//! text) are matched by [`Dialect::json_array_has_any`] (`json_each` on SQLite, `jsonb ?|`
//! on PostgreSQL).

use std::borrow::Cow;

use runnel_core::list::{Direction, RunListQuery};

use crate::rows::{ms, RUN_COLUMNS};
use crate::sql::{Dialect, Params};

/// The statement of `query`, its values bound to `p`.
pub(crate) fn run_list_sql<'a, D: Dialect>(
    query: &'a RunListQuery,
    p: &mut Params<'a, D>,
) -> String {
    let id = format!("id{}", D::COLLATE_BYTES);
    let mut conditions = vec![format!(
        "environment_id = {}",
        p.bind(query.environment_id.as_str())
    )];
    if let Some(from) = query.created_from {
        conditions.push(format!("created_at >= {}", p.bind(ms(from))));
    }
    if let Some(to) = query.created_to {
        conditions.push(format!("created_at <= {}", p.bind(ms(to))));
    }
    let order = match &query.page {
        None => "DESC",
        Some((direction, cursor)) => {
            let (comparison, order) = match direction {
                Direction::Older => ("<", "DESC"),
                Direction::Newer => (">", "ASC"),
            };
            let c = p.bind(cursor.created_at_ms);
            let r = p.bind(cursor.run_id.as_str());
            conditions.push(format!("(created_at, {id}) {comparison} ({c}, {r})"));
            order
        }
    };

    let filter = &query.filter;
    let mut any_of = |column: &str, values: Vec<&'a str>| match values.as_slice() {
        [] => {}
        // One value is an equality, so PostgreSQL may scan `runs_list_by_task` in order
        // (it would not for `= ANY(array)`).
        [value] => conditions.push(format!("{column} = {}", p.bind(*value))),
        _ => conditions.push(format!("{column} {}", p.list(values))),
    };
    any_of(
        "status",
        filter.statuses.iter().map(|s| s.as_str()).collect(),
    );
    any_of(
        "task_identifier",
        filter.task_identifiers.iter().map(String::as_str).collect(),
    );
    any_of(
        "COALESCE(worker_version, lock_to_version)",
        filter.versions.iter().map(String::as_str).collect(),
    );
    any_of("queue", filter.queues.iter().map(String::as_str).collect());
    any_of(
        "machine",
        filter.machines.iter().map(|m| m.as_str()).collect(),
    );
    if !filter.tags.is_empty() {
        let tags = filter
            .tags
            .iter()
            .map(|t| Cow::Borrowed(t.as_str()))
            .collect();
        conditions.push(D::json_array_has_any(p, "runs.tags", tags));
    }
    if let Some(is_test) = filter.is_test {
        conditions.push(format!("is_test = {}", p.bind(is_test)));
    }
    if let Some(schedule) = &filter.schedule_id {
        conditions.push(format!("schedule_id = {}", p.bind(schedule)));
    }
    if let Some(batch) = &filter.batch_id {
        conditions.push(format!("batch_id = {}", p.bind(batch)));
    }
    let limit = p.bind(i64::from(query.limit));
    format!(
        "SELECT {RUN_COLUMNS} FROM runs WHERE {} ORDER BY created_at {order}, {id} {order} LIMIT {limit}",
        conditions.join(" AND ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sql::{Postgres, Sqlite};
    use runnel_core::list::{Cursor, RunFilter};
    use runnel_core::{EnvironmentId, RunId, RunStatus};

    #[test]
    fn placeholders_and_lists_follow_the_dialect() {
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
        let mut p = Params::<Postgres>::new();
        let pg = run_list_sql(&query, &mut p);
        assert!(
            pg.ends_with(
                "environment_id = $1 AND (created_at, id COLLATE \"C\") > ($2, $3) AND status = $4 \
                 AND runs.tags::jsonb ?| $5::text[] \
                 ORDER BY created_at ASC, id COLLATE \"C\" ASC LIMIT $6"
            ),
            "{pg}"
        );
        assert_eq!(p.len(), 6);
        let mut p = Params::<Sqlite>::new();
        let sqlite = run_list_sql(&query, &mut p);
        assert!(
            sqlite.ends_with(
                "environment_id = $1 AND (created_at, id) > ($2, $3) AND status = $4 \
                 AND EXISTS (SELECT 1 FROM json_each(runs.tags) AS item WHERE item.value IN ($5, $6)) \
                 ORDER BY created_at ASC, id ASC LIMIT $7"
            ),
            "{sqlite}"
        );
        assert_eq!(p.len(), 7);
    }
}
