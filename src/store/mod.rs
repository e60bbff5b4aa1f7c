//! Where sessions are persisted: the [`SessionStore`] trait and its backends.
//!
//! The trait covers what the SAP approuter custom store offers (`clear`, `destroy`, `get`,
//! `length`, `ttl`, `set`, `exists`, `reset_timer`) plus `set_many` (a batch in one round trip),
//! `list` (filter and page, for the backoffice) and `purge_expired`. Every backend keeps the same
//! logical row, [`Record`], the `stored_http_session` table of DESIGN §3.
//!
//! Times are epoch milliseconds (UTC) passed in by the caller, so expiry is deterministic in
//! tests. A row whose `expires_at` is not after `now` is treated as absent by every read.
//!
//! Backends: [`SqliteStore`] (the embedded default), [`PgStore`] (PostgreSQL), [`MySqlStore`]
//! (MySQL and MariaDB) and [`MemoryStore`] (for tests). A store of your own plugs in by
//! implementing the trait.

mod memory;
mod mysql;
mod postgres;
mod sql;
mod sqlite;

use std::sync::Arc;
use std::time::Duration;

pub use memory::MemoryStore;
pub use mysql::{MySqlStore, PURGE_LOCK as MYSQL_PURGE_LOCK};
pub use postgres::{PURGE_LOCK as PG_PURGE_LOCK, PgStore};
pub use sqlite::SqliteStore;

use crate::session::SessionKey;

/// Epoch milliseconds, UTC.
pub type EpochMillis = i64;

/// The current time as [`EpochMillis`].
pub fn now_millis() -> EpochMillis {
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(since_epoch.as_millis()).unwrap_or(i64::MAX)
}

/// One persisted session: the columns of `stored_http_session`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// Everything but the blob.
    pub meta: Meta,
    /// The encoded attributes (see [`crate::codec`]).
    pub data: Vec<u8>,
}

/// A persisted session's metadata: every column but `data`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Meta {
    /// The store key (a hash of the session id).
    pub key: SessionKey,
    /// The application ("extension") the session belongs to.
    pub app: String,
    /// The cookie path / mount point of the application.
    pub context_path: String,
    /// The node that last wrote the row.
    pub node: String,
    /// The signed-in user, if any.
    pub principal: Option<String>,
    /// When the session was created.
    pub created_at: EpochMillis,
    /// When the session was last written or touched.
    pub modified_at: EpochMillis,
    /// When the session expires unless touched again.
    pub expires_at: EpochMillis,
    /// The session's inactivity timeout in seconds.
    pub max_inactive_secs: i64,
    /// Incremented on every write; a write never replaces a row of a higher or equal version.
    pub version: i64,
    /// Names of the stored attributes (readable without any secret).
    pub attributes: Vec<String>,
    /// Size of `data` in bytes.
    pub size_bytes: i64,
}

/// A filter and a page of [`SessionStore::list`].
#[derive(Clone, Debug, Default)]
pub struct ListQuery {
    /// Only sessions of this application.
    pub app: Option<String>,
    /// Only sessions of this principal.
    pub principal: Option<String>,
    /// Only sessions last written by this node.
    pub node: Option<String>,
    /// Keyset cursor: only keys greater than this one (the last key of the previous page).
    pub after: Option<SessionKey>,
    /// At most this many rows (ordered by key).
    pub limit: u32,
}

/// A store failure. The source error is kept.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The database answered with an error or could not be reached.
    #[error("database error")]
    Database(#[from] sqlx::Error),
    /// Applying the schema migrations failed.
    #[error("applying migrations failed")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The store could not be opened or reached at start-up.
    #[error("cannot open {url} (session.store.url)")]
    Connect {
        /// The URL (password redacted).
        url: String,
        /// The cause.
        #[source]
        source: sqlx::Error,
    },
    /// The store URL is not usable.
    #[error("session.store.url {url:?}: {reason}")]
    Url {
        /// The URL as configured (credentials are not part of the message).
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Preparing the store's files failed (e.g. creating the SQLite data directory).
    #[error("cannot prepare {path:?}")]
    Io {
        /// The path at fault.
        path: std::path::PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The store did not answer within `session.store.timeout`.
    #[error("store did not answer within {0:?} (session.store.timeout)")]
    Timeout(Duration),
    /// A store of your own failed (for [`SessionStore`] implementations outside this crate).
    #[error("session store error")]
    Backend(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// A row holds a value this build cannot read (e.g. attribute names that are not JSON).
    #[error("corrupt row {key}: {reason}")]
    CorruptRow {
        /// The row's key.
        key: String,
        /// What is wrong.
        reason: String,
    },
}

/// What [`SessionStore::update`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Update {
    /// The row was replaced.
    Written,
    /// The row has an equal or higher version: another write got there first.
    Superseded,
    /// There is no row: the session was ended (logout, rotation, backoffice, purge).
    Missing,
}

/// A session store. Implement it to plug in a store of your own.
///
/// Every method is one logical operation, and `set_many` should be one round trip. Implementations
/// must treat rows with `expires_at <= now` as absent, and must not let a write replace a row
/// whose `version` is greater than or equal to the written one (it is skipped, not an error).
#[async_trait::async_trait]
pub trait SessionStore: Send + Sync + 'static {
    /// The session stored under `key`, unless it is absent or expired at `now`.
    async fn get(&self, key: &SessionKey, now: EpochMillis) -> Result<Option<Record>, Error>;

    /// Inserts or replaces one session (see the version rule above).
    async fn set(&self, record: &Record) -> Result<(), Error>;

    /// Replaces an existing session's row if `record.version` is higher than the stored one; never
    /// creates a row, so a session deleted meanwhile stays deleted.
    ///
    /// The default reads then writes, which is not atomic: a store of your own should override it
    /// with a conditional update.
    async fn update(&self, record: &Record) -> Result<Update, Error> {
        match self.get(&record.meta.key, i64::MIN).await? {
            None => Ok(Update::Missing),
            Some(stored) if stored.meta.version >= record.meta.version => Ok(Update::Superseded),
            Some(_) => self.set(record).await.map(|()| Update::Written),
        }
    }

    /// Inserts or replaces many sessions, in one round trip where the backend allows.
    async fn set_many(&self, records: &[Record]) -> Result<(), Error>;

    /// [`SessionStore::update`] for many sessions, one outcome per record in order, in as few
    /// round trips as the backend allows. When a batch holds two states of one session, the
    /// older may be reported `Written` or `Superseded`. The default updates one by one.
    async fn update_many(&self, records: &[Record]) -> Result<Vec<Update>, Error> {
        let mut outcomes = Vec::with_capacity(records.len());
        for record in records {
            outcomes.push(self.update(record).await?);
        }
        Ok(outcomes)
    }

    /// Removes many sessions; returns how many rows were removed. The default removes one by one.
    async fn destroy_many(&self, keys: &[SessionKey]) -> Result<u64, Error> {
        let mut removed = 0;
        for key in keys {
            removed += u64::from(self.destroy(key).await?);
        }
        Ok(removed)
    }

    /// Removes a session; `true` if a row was removed.
    async fn destroy(&self, key: &SessionKey) -> Result<bool, Error>;

    /// Whether a live session is stored under `key` at `now`.
    async fn exists(&self, key: &SessionKey, now: EpochMillis) -> Result<bool, Error>;

    /// How long until the session expires, if it is live at `now`.
    async fn ttl(&self, key: &SessionKey, now: EpochMillis) -> Result<Option<Duration>, Error>;

    /// Pushes a live session's expiry forward without rewriting its data; `true` if it was found.
    async fn reset_timer(
        &self,
        key: &SessionKey,
        modified_at: EpochMillis,
        expires_at: EpochMillis,
    ) -> Result<bool, Error>;

    /// Number of stored rows (expired ones not yet purged included).
    async fn length(&self) -> Result<u64, Error>;

    /// Removes every session.
    async fn clear(&self) -> Result<(), Error>;

    /// Metadata of stored sessions matching `query`, ordered by key.
    async fn list(&self, query: &ListQuery) -> Result<Vec<Meta>, Error>;

    /// Deletes rows expired at `now`, at most `batch_size` per statement; returns how many.
    async fn purge_expired(&self, now: EpochMillis, batch_size: u32) -> Result<u64, Error>;

    /// [`SessionStore::purge_expired`] by one node at a time: `None` if another node holds the
    /// purge lock. The default takes no lock (a store with a single writer needs none).
    async fn purge_expired_exclusive(
        &self,
        now: EpochMillis,
        batch_size: u32,
    ) -> Result<Option<u64>, Error> {
        self.purge_expired(now, batch_size).await.map(Some)
    }
}

/// How to connect to a store (`session.store.*`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreOptions {
    /// Apply the migrations when opening (`session.store.migrate`).
    pub migrate: bool,
    /// Connections in the pool (`session.store.pool.size`).
    pub pool_size: u32,
    /// The longest a store operation, or waiting for a pooled connection, may take
    /// (`session.store.timeout`).
    pub timeout: Duration,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            migrate: true,
            pool_size: 10,
            timeout: Duration::from_secs(5),
        }
    }
}

/// Checks a store URL without connecting: a supported scheme, and for SQLite a usable path.
pub fn validate_url(url: &str) -> Result<(), Error> {
    let scheme = url.split_once("://").map_or("", |(scheme, _)| scheme);
    match scheme {
        "sqlite" => sqlite::sqlite_path(url).map(drop),
        "postgres" | "postgresql" | "mysql" | "mariadb" if url.len() > scheme.len() + 3 => Ok(()),
        _ => Err(unsupported(url, scheme)),
    }
}

fn unsupported(url: &str, scheme: &str) -> Error {
    Error::Url {
        url: redact_url(url),
        reason: format!(
            "scheme {scheme:?} is not supported (supported: sqlite://PATH, \
             postgres://USER@HOST/DB, mysql://USER@HOST/DB)"
        ),
    }
}

/// Opens the store named by `session.store.url` and applies migrations if `options.migrate`.
///
/// `sqlite://PATH` (the parent directory is created), `postgres://…` (or `postgresql://`),
/// `mysql://…` (or `mariadb://`). Other schemes are refused with a message naming the URL.
pub async fn open(url: &str, options: &StoreOptions) -> Result<Arc<dyn SessionStore>, Error> {
    let scheme = url.split_once("://").map_or("", |(scheme, _)| scheme);
    let store: Arc<dyn SessionStore> = match scheme {
        "sqlite" => {
            let store = SqliteStore::connect(url, options).await?;
            if options.migrate {
                store.migrate().await?;
            }
            Arc::new(store)
        }
        "postgres" | "postgresql" => {
            let store = PgStore::connect(url, options).await?;
            if options.migrate {
                store.migrate().await?;
            }
            Arc::new(store)
        }
        "mysql" | "mariadb" => {
            let store = MySqlStore::connect(url, options).await?;
            if options.migrate {
                store.migrate().await?;
            }
            Arc::new(store)
        }
        _ => return Err(unsupported(url, scheme)),
    };
    Ok(store)
}

/// `url` with any password replaced by `***`, for messages.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(start), Some(at)) if at > start => {
            let userinfo = &url[start + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..start + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords() {
        assert_eq!(
            redact_url("postgres://u:secret@h/db"),
            "postgres://u:***@h/db"
        );
        assert_eq!(redact_url("sqlite://data/s.db"), "sqlite://data/s.db");
        assert_eq!(redact_url("redis://h:6379"), "redis://h:6379");
    }
}
