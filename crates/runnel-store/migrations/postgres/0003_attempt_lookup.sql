-- Start, heartbeat, complete and the rescuer find a run by the attempt it holds.
CREATE INDEX runs_by_current_attempt ON runs (current_attempt_id)
    WHERE current_attempt_id IS NOT NULL;
