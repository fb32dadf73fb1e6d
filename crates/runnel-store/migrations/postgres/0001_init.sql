-- Runnel schema, PostgreSQL. The same tables, columns and indexes as the SQLite schema
-- (migrations/sqlite/0001_init.sql), so both backends behave identically:
--   * times are BIGINT milliseconds since the Unix epoch (UTC), never TIMESTAMPTZ;
--   * SQLite INTEGER is BIGINT, REAL is DOUBLE PRECISION, 0/1 flags are BOOLEAN;
--   * JSON (tags, errors) is stored as TEXT, exactly the bytes the SQLite backend stores.

CREATE TABLE projects (
    id          TEXT PRIMARY KEY,
    created_at  BIGINT NOT NULL
);

CREATE TABLE environments (
    id          TEXT PRIMARY KEY,
    project_id  TEXT NOT NULL REFERENCES projects(id),
    kind        TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    UNIQUE (project_id, kind)
);

-- Only the SHA-256 of a secret key is kept; `prefix` is what operators see.
CREATE TABLE api_keys (
    key_hash        TEXT PRIMARY KEY,
    prefix          TEXT NOT NULL,
    environment_id  TEXT NOT NULL REFERENCES environments(id),
    created_at      BIGINT NOT NULL,
    revoked_at      BIGINT
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
    idempotency_key_expires_at  BIGINT,
    tags                        TEXT NOT NULL,
    metadata                    TEXT,
    metadata_type               TEXT,
    delay_until                 BIGINT,
    ttl                         TEXT,
    expire_at                   BIGINT,
    expired_at                  BIGINT,
    max_attempts                BIGINT,
    max_duration_secs           BIGINT,
    machine                     TEXT,
    priority_ms                 BIGINT NOT NULL,
    is_test                     BOOLEAN NOT NULL,
    queue                       TEXT NOT NULL,
    concurrency_key             TEXT,
    lock_to_version             TEXT,
    worker_version              TEXT,
    created_at                  BIGINT NOT NULL,
    updated_at                  BIGINT NOT NULL,
    started_at                  BIGINT,
    completed_at                BIGINT,
    attempt_count               BIGINT NOT NULL,
    usage_duration_ms           BIGINT NOT NULL,
    cost_in_cents               DOUBLE PRECISION NOT NULL,
    base_cost_in_cents          DOUBLE PRECISION NOT NULL,
    depth                       BIGINT NOT NULL,
    parent_run_id               TEXT,
    root_run_id                 TEXT,
    batch_id                    TEXT,
    resume_parent_on_completion BOOLEAN NOT NULL,
    schedule_id                 TEXT
);
-- At most one run holds a key per (environment, task). Triggers lock the holder inside
-- their transaction; a concurrent trigger that found no holder hits this index, rolls
-- back and looks again (see `PgStore::run_trigger`). The store matches the violation
-- by this name, so keep it.
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
    number        BIGINT NOT NULL,
    status        TEXT NOT NULL,
    created_at    BIGINT NOT NULL,
    updated_at    BIGINT NOT NULL,
    started_at    BIGINT,
    completed_at  BIGINT,
    error         TEXT,
    UNIQUE (run_id, number)
);
