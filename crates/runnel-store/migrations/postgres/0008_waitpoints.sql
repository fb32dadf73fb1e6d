-- Waits (DESIGN §3, reference trigger-dev-cli-protocol.md §4): waitpoints, what blocks a
-- run, and the runs' execution snapshots. Times are milliseconds since the Unix epoch.

-- Something a run can wait for. Pending while completed_at is NULL; completed once.
CREATE TABLE waitpoints (
    id                          TEXT PRIMARY KEY,
    environment_id              TEXT NOT NULL REFERENCES environments(id),
    kind                        TEXT NOT NULL,   -- RUN | DATETIME | MANUAL | BATCH
    idempotency_key             TEXT,
    idempotency_key_user        TEXT,
    idempotency_key_expires_at  BIGINT,
    completed_by_run_id         TEXT,            -- RUN: the child whose end completes it
    batch_id                    TEXT,            -- RUN of a batch item
    batch_index                 BIGINT,
    completes_at                BIGINT,            -- DATETIME
    timeout_at                  BIGINT,            -- MANUAL
    output                      TEXT,
    output_type                 TEXT,
    output_is_error             BOOLEAN NOT NULL,
    tags                        TEXT NOT NULL,   -- JSON array
    callback_secret             TEXT,            -- MANUAL: the secret of its callback URL
    created_at                  BIGINT NOT NULL,
    updated_at                  BIGINT NOT NULL,
    completed_at                BIGINT
);
-- One live waitpoint per (environment, key); an expired holder gives its key up.
CREATE UNIQUE INDEX waitpoints_by_idempotency_key
    ON waitpoints (environment_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
-- The timer: pending DATETIME waitpoints by due time, pending tokens by timeout.
CREATE INDEX waitpoints_due ON waitpoints (completes_at)
    WHERE completed_at IS NULL AND completes_at IS NOT NULL;
CREATE INDEX waitpoints_timeouts ON waitpoints (timeout_at)
    WHERE completed_at IS NULL AND timeout_at IS NOT NULL;
-- A child's end finds the waitpoints it completes.
CREATE INDEX waitpoints_by_run ON waitpoints (completed_by_run_id)
    WHERE completed_by_run_id IS NOT NULL;
-- Token listing, newest first.
CREATE INDEX waitpoints_by_environment ON waitpoints (environment_id, kind, created_at, id);

-- What blocks a run: resolved_at is set when the run resumed past it.
CREATE TABLE run_blockers (
    run_id          TEXT NOT NULL REFERENCES runs(id),
    waitpoint_id    TEXT NOT NULL REFERENCES waitpoints(id),
    created_at      BIGINT NOT NULL,
    resolved_at     BIGINT,
    PRIMARY KEY (run_id, waitpoint_id)
);
CREATE INDEX run_blockers_by_waitpoint ON run_blockers (waitpoint_id);

-- A run's execution history; the highest seq is the latest snapshot.
CREATE TABLE run_snapshots (
    id                      TEXT PRIMARY KEY,
    run_id                  TEXT NOT NULL REFERENCES runs(id),
    seq                     BIGINT NOT NULL,
    execution_status        TEXT NOT NULL,
    description             TEXT NOT NULL,
    attempt_number          BIGINT,
    completed_waitpoints    TEXT NOT NULL,   -- JSON array of waitpoint ids
    created_at              BIGINT NOT NULL
);
CREATE UNIQUE INDEX run_snapshots_by_run ON run_snapshots (run_id, seq);

-- Compute time stops while an attempt waits.
ALTER TABLE attempts ADD COLUMN waited_ms BIGINT NOT NULL DEFAULT 0;
ALTER TABLE attempts ADD COLUMN waiting_since BIGINT;

-- A task's source file, as a Trigger.dev manifest gives it.
ALTER TABLE worker_tasks ADD COLUMN file_path TEXT;
