-- The Commerce StoredHttpSession item type: one row per persisted HTTP session.
CREATE TABLE IF NOT EXISTS stored_http_session (
    session_id        TEXT COLLATE "C" NOT NULL PRIMARY KEY, -- SHA-256 of the id, base64url; bytewise order for keyset paging
    app               TEXT    NOT NULL,             -- application ("extension")
    context_path      TEXT    NOT NULL,             -- cookie path / mount point
    node              TEXT    NOT NULL,             -- node that last wrote the row
    principal         TEXT,                         -- signed-in user, if any
    created_at        BIGINT  NOT NULL,             -- epoch milliseconds
    modified_at       BIGINT  NOT NULL,             -- epoch milliseconds
    expires_at        BIGINT  NOT NULL,             -- epoch milliseconds
    max_inactive_secs BIGINT  NOT NULL,
    version           BIGINT  NOT NULL,
    attributes        TEXT    NOT NULL,             -- JSON array of attribute names
    size_bytes        BIGINT  NOT NULL,
    data              BYTEA   NOT NULL              -- codec envelope
);

CREATE INDEX IF NOT EXISTS stored_http_session_expires_at ON stored_http_session (expires_at);
CREATE INDEX IF NOT EXISTS stored_http_session_principal ON stored_http_session (principal);
