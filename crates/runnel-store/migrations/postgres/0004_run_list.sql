-- Listing runs (GET /api/v1/runs): newest first, keyset-paginated on (created_at, id).
-- A page is one index range scan from the cursor, so it costs the same however many
-- runs the environment holds; the other filters are checked on the rows the scan meets.
-- Ids compare in byte order (COLLATE "C"), as in SQLite and Rust; queries must use the
-- same collation to be served by these indexes.
CREATE INDEX runs_list ON runs (environment_id, created_at DESC, id COLLATE "C" DESC);
-- The same order within one task (filter[taskIdentifier]).
CREATE INDEX runs_list_by_task ON runs (environment_id, task_identifier, created_at DESC, id COLLATE "C" DESC);
