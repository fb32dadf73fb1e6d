-- Queues as stored things: every task's `task/<id>` queue and the custom queues workers
-- declare, each with an optional concurrency limit (registered, or overridden through
-- the API) and a paused flag. Times are milliseconds.
CREATE TABLE queues (
    id                          TEXT PRIMARY KEY,
    environment_id              TEXT NOT NULL REFERENCES environments(id),
    -- The full name runs carry in `runs.queue` (`task/<id>` for a task queue).
    name                        TEXT NOT NULL,
    type                        TEXT NOT NULL CHECK (type IN ('task', 'custom')),
    -- From the latest registration that declared it; NULL = no limit.
    concurrency_limit           INTEGER,
    concurrency_limit_override  INTEGER,
    overridden_at               INTEGER,
    paused                      INTEGER NOT NULL DEFAULT 0,
    created_at                  INTEGER NOT NULL,
    updated_at                  INTEGER NOT NULL,
    UNIQUE (environment_id, name)
);
-- Dequeue reads only the queues that gate runs (paused or limited).
CREATE INDEX queues_gated ON queues (environment_id)
    WHERE paused = 1 OR concurrency_limit IS NOT NULL OR concurrency_limit_override IS NOT NULL;
-- Counting a queue's (and a concurrency key's) held runs is an index range.
CREATE INDEX runs_held_by_queue ON runs (environment_id, queue, concurrency_key)
    WHERE status IN ('DEQUEUED', 'EXECUTING');
-- The queues API counts a queue's waiting runs through `runs_dequeue` (environment,
-- task): one more index on every queued run would slow trigger and dequeue for a
-- number only the API reads.
