-- Runnel schema, SQLite. Times are milliseconds since the Unix epoch (UTC).

CREATE TABLE projects (
    id          TEXT PRIMARY KEY,
    created_at  INTEGER NOT NULL
);

CREATE TABLE environments (
    id          TEXT PRIMARY KEY,
    project_id  TEXT NOT NULL REFERENCES projects(id),
    kind        TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    UNIQUE (project_id, kind)
);

-- Only the SHA-256 of a secret key is kept; `prefix` is what operators see.
CREATE TABLE api_keys (
    key_hash        TEXT PRIMARY KEY,
    prefix          TEXT NOT NULL,
    environment_id  TEXT NOT NULL REFERENCES environments(id),
    created_at      INTEGER NOT NULL,
    revoked_at      INTEGER
);
CREATE INDEX api_keys_by_prefix ON api_keys (prefix);

CREATE TABLE runs (
    id                          TEXT PRIMARY KEY,
    environment_id              TEXT NOT NULL REFERENCES environments(id),
    task_identifier             TEXT NOT NULL,
    status                      TEXT NOT NULL,
    payload                     TEXT,
    payload_type                TEXT NOT NULL,
    output                      TEXT,
    output_type                 TEXT,
    error                       TEXT,
    idempotency_key             TEXT,
    idempotency_key_user        TEXT,
    idempotency_key_scope       TEXT,
    idempotency_key_expires_at  INTEGER,
    tags                        TEXT NOT NULL,
    metadata                    TEXT,
    metadata_type               TEXT,
    delay_until                 INTEGER,
    ttl                         TEXT,
    expire_at                   INTEGER,
    expired_at                  INTEGER,
    max_attempts                INTEGER,
    max_duration_secs           INTEGER,
    machine                     TEXT,
    priority_ms                 INTEGER NOT NULL,
    is_test                     INTEGER NOT NULL,
    queue                       TEXT NOT NULL,
    concurrency_key             TEXT,
    lock_to_version             TEXT,
    worker_version              TEXT,
    created_at                  INTEGER NOT NULL,
    updated_at                  INTEGER NOT NULL,
    started_at                  INTEGER,
    completed_at                INTEGER,
    attempt_count               INTEGER NOT NULL,
    usage_duration_ms           INTEGER NOT NULL,
    cost_in_cents               REAL NOT NULL,
    base_cost_in_cents          REAL NOT NULL,
    depth                       INTEGER NOT NULL,
    parent_run_id               TEXT,
    root_run_id                 TEXT,
    batch_id                    TEXT,
    resume_parent_on_completion INTEGER NOT NULL,
    schedule_id                 TEXT
);
-- At most one run holds a key per (environment, task). Triggers look the holder up
-- inside their write transaction; this index is the last guard against another writer.
CREATE UNIQUE INDEX runs_by_idempotency_key
    ON runs (environment_id, task_identifier, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
-- The expirer and the promoter scan only the runs that are due.
CREATE INDEX runs_queued_by_expiry ON runs (expire_at)
    WHERE status = 'QUEUED' AND expire_at IS NOT NULL;
CREATE INDEX runs_delayed_by_time ON runs (delay_until)
    WHERE status = 'DELAYED';
CREATE INDEX runs_by_parent ON runs (parent_run_id)
    WHERE parent_run_id IS NOT NULL;

CREATE TABLE attempts (
    id            TEXT PRIMARY KEY,
    run_id        TEXT NOT NULL REFERENCES runs(id),
    number        INTEGER NOT NULL,
    status        TEXT NOT NULL,
    created_at    INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL,
    started_at    INTEGER,
    completed_at  INTEGER,
    error         TEXT,
    UNIQUE (run_id, number)
);
