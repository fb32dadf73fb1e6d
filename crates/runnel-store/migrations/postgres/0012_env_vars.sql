-- Environment variables of each environment. `value_sealed` is the value sealed under the
-- server's master key (`v1:<key id>:<base64>`, bound to `env_var:<environment id>:<name>`):
-- the store never holds a value in clear. Times are milliseconds.
CREATE TABLE env_vars (
    environment_id  TEXT NOT NULL REFERENCES environments(id),
    name            TEXT NOT NULL,
    value_sealed    TEXT NOT NULL,
    is_secret       BOOLEAN NOT NULL,
    created_at      BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL,
    PRIMARY KEY (environment_id, name)
);
