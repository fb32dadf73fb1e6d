-- Workers and the run engine: leases, attempts, retries. Times are milliseconds.

-- Ordering key of a queued run: when it was queued minus its priority (contract §4.5).
ALTER TABLE runs ADD COLUMN queue_ts INTEGER;
UPDATE runs SET queue_ts = COALESCE(delay_until, created_at) - priority_ms;
ALTER TABLE runs ADD COLUMN worker_id TEXT;
ALTER TABLE runs ADD COLUMN current_attempt_id TEXT;
ALTER TABLE runs ADD COLUMN lease_expires_at INTEGER;
ALTER TABLE runs ADD COLUMN timeout_at INTEGER;
ALTER TABLE runs ADD COLUMN next_attempt_at INTEGER;
ALTER TABLE runs ADD COLUMN failed_attempts INTEGER NOT NULL DEFAULT 0;

-- Dequeue: the oldest queued runs of the tasks a worker serves.
CREATE INDEX runs_dequeue ON runs (environment_id, task_identifier, queue_ts)
    WHERE status = 'QUEUED';
CREATE INDEX runs_pending_version ON runs (environment_id, task_identifier)
    WHERE status = 'PENDING_VERSION';
CREATE INDEX runs_retry_due ON runs (next_attempt_at)
    WHERE status = 'RETRYING_AFTER_FAILURE';
-- The rescuer: leases that ran out, attempts past their maxDuration.
CREATE INDEX runs_lease_due ON runs (lease_expires_at)
    WHERE status IN ('DEQUEUED', 'EXECUTING');
CREATE INDEX runs_timeout_due ON runs (timeout_at)
    WHERE status = 'EXECUTING' AND timeout_at IS NOT NULL;
-- A run waiting for a version expires by its TTL too.
DROP INDEX runs_queued_by_expiry;
CREATE INDEX runs_waiting_by_expiry ON runs (expire_at)
    WHERE status IN ('QUEUED', 'PENDING_VERSION') AND expire_at IS NOT NULL;

ALTER TABLE attempts ADD COLUMN worker_id TEXT;
ALTER TABLE attempts ADD COLUMN duration_ms INTEGER NOT NULL DEFAULT 0;

-- Versions registered in an environment (`YYYYMMDD.N` when assigned by the server).
CREATE TABLE worker_versions (
    environment_id  TEXT NOT NULL REFERENCES environments(id),
    version         TEXT NOT NULL,
    created_at      INTEGER NOT NULL,
    PRIMARY KEY (environment_id, version)
);

-- The tasks each version serves, with their settings.
CREATE TABLE worker_tasks (
    environment_id     TEXT NOT NULL,
    task_identifier    TEXT NOT NULL,
    version            TEXT NOT NULL,
    queue              TEXT NOT NULL,
    retry              TEXT,
    max_duration_secs  INTEGER,
    machine            TEXT,
    PRIMARY KEY (environment_id, task_identifier, version),
    FOREIGN KEY (environment_id, version) REFERENCES worker_versions (environment_id, version)
);

CREATE TABLE workers (
    id              TEXT PRIMARY KEY,
    environment_id  TEXT NOT NULL REFERENCES environments(id),
    name            TEXT NOT NULL,
    version         TEXT NOT NULL,
    -- The task identifiers this worker runs (JSON array): a subset of its version's.
    tasks           TEXT NOT NULL,
    created_at      INTEGER NOT NULL,
    last_seen_at    INTEGER NOT NULL
);
