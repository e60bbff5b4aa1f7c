-- The Commerce StoredHttpSession item type: one row per persisted HTTP session.
CREATE TABLE IF NOT EXISTS stored_http_session (
    session_id        TEXT    NOT NULL PRIMARY KEY, -- SHA-256 of the session id, base64url
    app               TEXT    NOT NULL,             -- application ("extension")
    context_path      TEXT    NOT NULL,             -- cookie path / mount point
    node              TEXT    NOT NULL,             -- node that last wrote the row
    principal         TEXT,                         -- signed-in user, if any
    created_at        INTEGER NOT NULL,             -- epoch milliseconds
    modified_at       INTEGER NOT NULL,             -- epoch milliseconds
    expires_at        INTEGER NOT NULL,             -- epoch milliseconds
    max_inactive_secs INTEGER NOT NULL,
    version           INTEGER NOT NULL,
    attributes        TEXT    NOT NULL,             -- JSON array of attribute names
    size_bytes        INTEGER NOT NULL,
    data              BLOB    NOT NULL              -- codec envelope
) WITHOUT ROWID;

CREATE INDEX IF NOT EXISTS stored_http_session_expires_at ON stored_http_session (expires_at);
CREATE INDEX IF NOT EXISTS stored_http_session_principal ON stored_http_session (principal);
