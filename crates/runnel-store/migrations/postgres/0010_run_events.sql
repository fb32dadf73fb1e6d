-- What a run's task process reported over OTLP (`/otel/v1/traces|logs`): its log lines
-- and its spans, each attributed to a run that exists (the environment is the run's).
-- Times are nanoseconds since the Unix epoch, as OTLP gives them; `received_at` is
-- milliseconds like every other time. At most 10,000 events are kept per run (the
-- insert counts them; see `runnel-store/src/events.rs`).
CREATE TABLE run_events (
    -- The order of arrival; with `start_ns` it orders and pages a run's events.
    id              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    run_id          TEXT NOT NULL REFERENCES runs(id),
    environment_id  TEXT NOT NULL REFERENCES environments(id),
    -- 'log', 'span', or 'span_partial' (an early copy of a span still running, which
    -- the span replaces when it ends).
    kind            TEXT NOT NULL CHECK (kind IN ('log', 'span', 'span_partial')),
    -- Lowercase hex; '' when the record had none.
    trace_id        TEXT NOT NULL,
    -- A span's own id (a partial copy's: the real span's); a log line's: the span it
    -- was logged in ('' when none).
    span_id         TEXT NOT NULL,
    parent_span_id  TEXT,
    -- A span's name, a log line's message.
    name            TEXT NOT NULL,
    -- TRACE, DEBUG, LOG, INFO, WARN or ERROR.
    level           TEXT NOT NULL,
    start_ns        BIGINT NOT NULL,
    duration_ns     BIGINT NOT NULL,
    -- OTLP's status code of a span (0 unset, 1 ok, 2 error); a log line's is 2 at
    -- level ERROR, else 0.
    status_code     BIGINT NOT NULL,
    -- JSON object: the record's attributes, flat as OTLP sends them.
    attributes      TEXT NOT NULL,
    -- JSON array of a span's events (name, time, attributes); NULL for a log line.
    events          TEXT,
    received_at     BIGINT NOT NULL
);
-- A run's events in time order, and the count the cap reads.
CREATE INDEX run_events_by_run ON run_events (run_id, start_ns, id);
-- One row per span of a run: the real span replaces its partial copy.
CREATE UNIQUE INDEX run_events_span ON run_events (run_id, span_id) WHERE kind <> 'log';
