-- Cron schedules. Times are milliseconds.

-- A scheduled task (a `schedules.task`): schedules created through the API attach only to
-- tasks whose latest registration says so.
ALTER TABLE worker_tasks ADD COLUMN scheduled INTEGER NOT NULL DEFAULT 0;

-- One schedule of one environment. A DECLARATIVE schedule is its task's own (at most one
-- per task, kept in sync by registrations); an IMPERATIVE one was created through the
-- API and is found by its deduplication key too.
CREATE TABLE schedules (
    id                 TEXT PRIMARY KEY,
    environment_id     TEXT NOT NULL REFERENCES environments(id),
    task_identifier    TEXT NOT NULL,
    kind               TEXT NOT NULL,
    active             INTEGER NOT NULL,
    deduplication_key  TEXT,
    external_id        TEXT,
    cron               TEXT NOT NULL,
    timezone           TEXT NOT NULL,
    time_window        TEXT,
    -- The next occurrence (nominal), and when it fires (plus the window's offset).
    next_run_at        INTEGER,
    next_fire_at       INTEGER,
    -- The last occurrence fired: the next one's `lastTimestamp`.
    last_run_at        INTEGER,
    -- An occurrence claimed by a node whose run may not exist yet, and its
    -- `lastTimestamp`: whoever sees it triggers the run (idempotently) and clears it.
    pending_run_at     INTEGER,
    pending_last_at    INTEGER,
    created_at         INTEGER NOT NULL,
    updated_at         INTEGER NOT NULL
);
CREATE UNIQUE INDEX schedules_by_key ON schedules (environment_id, deduplication_key)
    WHERE deduplication_key IS NOT NULL;
CREATE UNIQUE INDEX schedules_declared ON schedules (environment_id, task_identifier)
    WHERE kind = 'DECLARATIVE';
CREATE INDEX schedules_due ON schedules (next_fire_at) WHERE active = 1;
CREATE INDEX schedules_pending ON schedules (pending_run_at) WHERE pending_run_at IS NOT NULL;
CREATE INDEX schedules_by_environment ON schedules (environment_id, created_at, id);
-- The runs of a schedule (`filter[schedule]`).
CREATE INDEX runs_by_schedule ON runs (schedule_id, created_at) WHERE schedule_id IS NOT NULL;
