-- The rescuer watches the leases of runs waiting on waitpoints too (0008), so its
-- queries say status IN ('DEQUEUED', 'EXECUTING', 'WAITING_TO_RESUME'). An index
-- partial on the first two is not implied by that, so every sweep (woken by each
-- start) scanned the whole runs table. Rebuilt to match.
DROP INDEX runs_lease_due;
CREATE INDEX runs_lease_due ON runs (lease_expires_at)
    WHERE status IN ('DEQUEUED', 'EXECUTING', 'WAITING_TO_RESUME');

-- A dequeue takes the oldest queued runs, `ORDER BY queue_ts, id`. Runs triggered by
-- one batch share their queue_ts, so without the id in the index every dequeue read
-- and sorted the whole tie (up to a thousand runs) to return a few.
DROP INDEX runs_dequeue;
CREATE INDEX runs_dequeue ON runs (environment_id, task_identifier, queue_ts, id)
    WHERE status = 'QUEUED';
