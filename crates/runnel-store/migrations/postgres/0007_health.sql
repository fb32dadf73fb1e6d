-- One row every node's health check writes (`/healthz`): a write that fails here (a full
-- disk, a wedged connection, a read-only database) takes the node out of its load balancer.
CREATE TABLE health (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    checked_at  BIGINT NOT NULL
);
