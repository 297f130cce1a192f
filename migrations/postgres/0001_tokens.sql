-- One-time deployment tokens (PostgreSQL). Token values are never stored: only their SHA-256.
-- Times are Unix seconds (UTC).
CREATE TABLE gatehouse_tokens (
    id             BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    token_sha256   BYTEA  NOT NULL UNIQUE,
    created_at     BIGINT NOT NULL,
    expires_at     BIGINT NOT NULL,
    namespace      TEXT,
    note           TEXT   NOT NULL DEFAULT '',
    used_at        BIGINT,
    used_by_user   TEXT,
    used_by_kind   TEXT,
    used_by_object TEXT,
    used_by_uid    TEXT,
    revoked_at     BIGINT,
    CONSTRAINT gatehouse_tokens_sha256_length CHECK (octet_length(token_sha256) = 32)
);

CREATE INDEX gatehouse_tokens_expires_at ON gatehouse_tokens (expires_at);
