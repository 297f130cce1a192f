-- One-time deployment tokens (SQLite). Token values are never stored: only their SHA-256.
-- Times are Unix seconds (UTC).
CREATE TABLE gatehouse_tokens (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    token_sha256   BLOB    NOT NULL UNIQUE,
    created_at     INTEGER NOT NULL,
    expires_at     INTEGER NOT NULL,
    namespace      TEXT,
    note           TEXT    NOT NULL DEFAULT '',
    used_at        INTEGER,
    used_by_user   TEXT,
    used_by_kind   TEXT,
    used_by_object TEXT,
    used_by_uid    TEXT,
    revoked_at     INTEGER
);

CREATE INDEX gatehouse_tokens_expires_at ON gatehouse_tokens (expires_at);
