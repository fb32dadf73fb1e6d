-- Personal access tokens (`tr_pat_…`): what the `trigger.dev` CLI logs in with before it
-- knows an environment. Stored like `api_keys`: the SHA-256 digest and a display prefix,
-- never the token. A token reaches the whole project; the secret keys it trades for are
-- ordinary rows of `api_keys` (derived from the token, so nothing here links them).
CREATE TABLE personal_access_tokens (
    token_hash  TEXT PRIMARY KEY,
    prefix      TEXT NOT NULL,
    project_id  TEXT NOT NULL REFERENCES projects(id),
    created_at  BIGINT NOT NULL,
    revoked_at  BIGINT
);
CREATE INDEX personal_access_tokens_by_prefix ON personal_access_tokens (prefix);
