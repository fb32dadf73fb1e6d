-- Secret keys sealed under the server's master key (AES-256-GCM, context
-- `api_key:<key_hash>`, see runnel_core::secrets): the server reads a key back to verify
-- the public access tokens the SDK signs with it. NULL for keys stored before this
-- migration until the key next authenticates a request (sealed then, once).
ALTER TABLE api_keys ADD COLUMN key_sealed TEXT;

-- One-time public access tokens (`otu: true`) already used, by the SHA-256 of the token.
-- A row is kept until the token expires. `used_for` names what the one use created when
-- a second request belongs to it (`batch:<id>`: the items of the batch it created).
CREATE TABLE public_token_uses (
    token_hash      TEXT PRIMARY KEY,
    environment_id  TEXT NOT NULL REFERENCES environments(id),
    used_for        TEXT,
    used_at         BIGINT NOT NULL,
    expires_at      BIGINT NOT NULL
);
CREATE INDEX public_token_uses_by_expiry ON public_token_uses (expires_at);
