-- Batches (contract §2.1 rows 2-8). Times are milliseconds since the Unix epoch.

CREATE TABLE batches (
    id                          TEXT PRIMARY KEY,
    environment_id              TEXT NOT NULL REFERENCES environments(id),
    status                      TEXT NOT NULL,   -- PENDING | PROCESSING | COMPLETED | ABORTED
    run_count                   BIGINT NOT NULL,
    items_received              BIGINT NOT NULL,
    idempotency_key             TEXT,
    idempotency_key_user        TEXT,
    idempotency_key_expires_at  BIGINT,
    parent_run_id               TEXT,
    resume_parent_on_completion BOOLEAN NOT NULL,
    created_at                  BIGINT NOT NULL,
    updated_at                  BIGINT NOT NULL,
    sealed_at                   BIGINT,
    processing_completed_at     BIGINT
);
-- One live batch per (environment, key); an expired holder gives its key up.
CREATE UNIQUE INDEX batches_by_idempotency_key
    ON batches (environment_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;

-- Each index of a batch arrives once; the primary key is the dedup of retried streams.
CREATE TABLE batch_items (
    batch_id        TEXT NOT NULL REFERENCES batches(id),
    item_index      BIGINT NOT NULL,
    task_identifier TEXT NOT NULL,
    run_id          TEXT,
    error           TEXT,
    PRIMARY KEY (batch_id, item_index)
);

-- Retrieve a run's batch siblings / list runs of a batch.
CREATE INDEX runs_by_batch ON runs (batch_id) WHERE batch_id IS NOT NULL;
