-- The purge's lock as a lease row: GET_LOCK is local to one server, so on a multi-primary
-- cluster (MariaDB Galera) every node would take it at once. A row is replicated, and two
-- nodes taking it together conflict at commit (Galera certification): one wins.
CREATE TABLE IF NOT EXISTS session_failover_lock (
    name       VARCHAR(64)  CHARACTER SET ascii COLLATE ascii_bin NOT NULL PRIMARY KEY,
    holder     VARCHAR(64)  CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    expires_at BIGINT       NOT NULL
) ENGINE = InnoDB;
