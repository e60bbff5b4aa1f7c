-- The Commerce StoredHttpSession item type: one row per persisted HTTP session.
-- Keys are ASCII (base64url); names are utf8mb4 so any application or user name fits.
CREATE TABLE IF NOT EXISTS stored_http_session (
    session_id        VARCHAR(64)   CHARACTER SET ascii COLLATE ascii_bin NOT NULL PRIMARY KEY,
    app               VARCHAR(255)  NOT NULL,
    context_path      VARCHAR(1024) NOT NULL,
    node              VARCHAR(255)  NOT NULL,
    principal         VARCHAR(255)  NULL,
    created_at        BIGINT        NOT NULL,
    modified_at       BIGINT        NOT NULL,
    expires_at        BIGINT        NOT NULL,
    max_inactive_secs BIGINT        NOT NULL,
    version           BIGINT        NOT NULL,
    attributes        TEXT          NOT NULL,
    size_bytes        BIGINT        NOT NULL,
    data              LONGBLOB      NOT NULL,
    INDEX stored_http_session_expires_at (expires_at),
    INDEX stored_http_session_principal (principal)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
