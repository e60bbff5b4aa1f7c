//! [`Error`]: what a store call can fail with.

use std::time::Duration;

/// A store failure. The source error is kept.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The database answered with an error or could not be reached. The message is the
    /// database's own, once (the driver's error is kept for inspection, not chained: its text
    /// would repeat the message, with the server's source line).
    #[cfg(feature = "sql")]
    #[error("{}", database_message(.0))]
    Database(sqlx::Error),
    /// Applying the schema migrations failed.
    #[cfg(feature = "sql")]
    #[error("applying migrations failed")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The store could not be opened or reached at start-up.
    #[cfg(feature = "sql")]
    #[error("cannot connect to {url}: {reason}")]
    Connect {
        /// The URL (password redacted).
        url: String,
        /// What failed, in an operator's words (the server's message, once).
        reason: String,
        /// The error as the driver reported it.
        error: sqlx::Error,
    },
    /// Redis answered with an error or could not be reached.
    #[cfg(feature = "redis")]
    #[error("Redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// Redis could not be reached at start-up.
    #[cfg(feature = "redis")]
    #[error("cannot connect to {url}: {reason}")]
    RedisConnect {
        /// The URL (password redacted).
        url: String,
        /// What failed, in an operator's words.
        reason: String,
        /// What the client reported.
        source: redis::RedisError,
    },
    /// The store URL is not usable.
    #[error("session.store.url {url:?}: {reason}")]
    Url {
        /// The URL as configured (credentials are not part of the message).
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The store's file or directory is not usable (the SQLite database: missing, not
    /// writable, a directory that is a file).
    #[error("{}: {reason}", path.display())]
    File {
        /// The path at fault.
        path: std::path::PathBuf,
        /// What is wrong, with the file system's own words.
        reason: String,
    },
    /// The store did not answer within `session.store.timeout`.
    #[error("store did not answer within {0:?} (session.store.timeout)")]
    Timeout(Duration),
    /// A store of your own failed (for [`crate::store::SessionStore`] implementations outside
    /// this crate), or a store said why in words; shown as its message.
    #[error(transparent)]
    Backend(Box<dyn std::error::Error + Send + Sync>),
    /// A row holds a value this build cannot read (e.g. attribute names that are not JSON).
    #[error("corrupt row {key}: {reason}")]
    CorruptRow {
        /// The row's key.
        key: String,
        /// What is wrong.
        reason: String,
    },
}

#[cfg(feature = "sql")]
impl From<sqlx::Error> for Error {
    fn from(error: sqlx::Error) -> Self {
        Error::Database(error)
    }
}

/// A driver error in an operator's words: what the server said, or why it could not be asked.
#[cfg(feature = "sql")]
fn database_message(error: &sqlx::Error) -> String {
    match error {
        sqlx::Error::Database(e) => match e.code() {
            Some(code) => format!("the database answered: {} (SQLSTATE {code})", e.message()),
            None => format!("the database answered: {}", e.message()),
        },
        sqlx::Error::Io(e) => format!("cannot reach the database: {e}"),
        sqlx::Error::PoolTimedOut => {
            "no database connection could be had in time (session.store.timeout)".to_owned()
        }
        other => format!("database error: {other}"),
    }
}

impl Error {
    /// Whether the store could not be reached in time (a timeout, a connection that failed or
    /// could not be had): the next calls would most likely wait as long.
    pub fn is_unreachable(&self) -> bool {
        match self {
            Error::Timeout(_) => true,
            #[cfg(feature = "redis")]
            Error::RedisConnect { .. } => true,
            #[cfg(feature = "redis")]
            Error::Redis(e) => {
                e.is_io_error()
                    || e.is_timeout()
                    || e.is_connection_dropped()
                    || e.is_connection_refusal()
            }
            #[cfg(feature = "sql")]
            Error::Connect { .. } => true,
            #[cfg(feature = "sql")]
            Error::Database(
                sqlx::Error::Io(_)
                | sqlx::Error::Tls(_)
                | sqlx::Error::PoolTimedOut
                | sqlx::Error::PoolClosed,
            ) => true,
            _ => false,
        }
    }

    /// Whether the store is unreachable or slow (retry everything later) rather than refusing
    /// this data (retry one by one, then give up).
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Timeout(_) | Error::Backend(_) => true,
            // Every Redis error passes: the data is checked before it is sent, and a script
            // refuses nothing but versions (answered as outcomes, not errors).
            #[cfg(feature = "redis")]
            Error::Redis(_) | Error::RedisConnect { .. } => true,
            #[cfg(feature = "sql")]
            Error::Connect { .. } => true,
            #[cfg(feature = "sql")]
            Error::Database(sqlx::Error::Database(e)) => retryable(e.as_ref()),
            #[cfg(feature = "sql")]
            Error::Database(_) => true,
            _ => false,
        }
    }
}

/// Errors a database reports for a reason that passes (a deadlock, a serialization failure, a
/// Galera certification conflict, a lock wait timeout, an administrator's shutdown, a replica
/// still read-only during a switchover): the same write may succeed when retried.
#[cfg(feature = "sql")]
fn retryable(e: &dyn sqlx::error::DatabaseError) -> bool {
    #[cfg(feature = "mysql")]
    if let Some(my) = e.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>() {
        // ER_LOCK_DEADLOCK (also Galera's certification conflict), ER_LOCK_WAIT_TIMEOUT,
        // ER_SERVER_SHUTDOWN, ER_OPTION_PREVENTS_STATEMENT (read_only), WSREP not ready.
        return matches!(my.number(), 1213 | 1205 | 1053 | 1290 | 1047);
    }
    #[cfg(feature = "sqlite")]
    if e.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some() {
        // SQLITE_BUSY and SQLITE_LOCKED, with their extended codes (another connection held
        // the write lock past the busy timeout).
        return e
            .code()
            .and_then(|code| code.parse::<i32>().ok())
            .is_some_and(|code| matches!(code & 0xff, 5 | 6));
    }
    // SQLSTATE: serialization_failure, deadlock_detected, admin_shutdown, crash_shutdown,
    // cannot_connect_now, read_only_sql_transaction.
    matches!(
        e.code().as_deref(),
        Some("40001" | "40P01" | "57P01" | "57P02" | "57P03" | "25006")
    )
}

#[cfg(all(test, feature = "sqlite"))]
mod tests {
    use sqlx::Connection as _;
    use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};

    use super::Error;

    /// A write that met another connection's write lock is retried, not given up as refused data.
    #[tokio::test]
    async fn a_locked_sqlite_database_is_a_passing_error() {
        let dir = tempfile::tempdir().unwrap();
        let options = SqliteConnectOptions::new()
            .filename(dir.path().join("locked.db"))
            .create_if_missing(true)
            .busy_timeout(std::time::Duration::ZERO);
        let mut holder = SqliteConnection::connect_with(&options).await.unwrap();
        let mut other = SqliteConnection::connect_with(&options).await.unwrap();
        sqlx::query("CREATE TABLE t (x INTEGER)")
            .execute(&mut holder)
            .await
            .unwrap();
        sqlx::query("BEGIN IMMEDIATE")
            .execute(&mut holder)
            .await
            .unwrap();
        let refused = sqlx::query("INSERT INTO t VALUES (1)")
            .execute(&mut other)
            .await
            .unwrap_err();
        let error = Error::Database(refused);
        assert!(error.is_transient(), "{error}");
        // A constraint failure is the data's fault: not retried.
        sqlx::query("ROLLBACK").execute(&mut holder).await.unwrap();
        sqlx::query("CREATE TABLE u (x INTEGER NOT NULL)")
            .execute(&mut holder)
            .await
            .unwrap();
        let refused = sqlx::query("INSERT INTO u VALUES (NULL)")
            .execute(&mut other)
            .await
            .unwrap_err();
        assert!(!Error::Database(refused).is_transient());
    }
}
