//! The embedded default: one SQLite file, in WAL mode, shared by every process on the host.

use std::path::{Path, PathBuf};
use std::str::FromStr as _;
use std::time::Duration;

use sqlx::Row as _;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

use super::sql::{attribute_names, meta_from_row, size};
use super::{EpochMillis, Error, ListQuery, Meta, Record, SessionStore, StoreOptions, Update};
use crate::session::SessionKey;

const UPSERT: &str = "INSERT INTO stored_http_session (session_id, app, context_path, node, \
     principal, created_at, modified_at, expires_at, max_inactive_secs, version, attributes, \
     size_bytes, data) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) \
     ON CONFLICT (session_id) DO UPDATE SET app = excluded.app, \
     context_path = excluded.context_path, node = excluded.node, principal = excluded.principal, \
     modified_at = excluded.modified_at, expires_at = excluded.expires_at, \
     max_inactive_secs = excluded.max_inactive_secs, version = excluded.version, \
     attributes = excluded.attributes, size_bytes = excluded.size_bytes, data = excluded.data \
     WHERE stored_http_session.version < excluded.version";

/// A [`SessionStore`] on one SQLite file.
///
/// Opened with WAL journaling, `synchronous = NORMAL` (durable across a process crash, which is
/// the failure failover is for) and a busy timeout, so several processes on one host can share
/// the file. The pool does not ping connections before use.
#[derive(Clone, Debug)]
pub struct SqliteStore {
    pool: SqlitePool,
}

impl SqliteStore {
    /// Opens (creating if needed) the database of a `sqlite://PATH` URL. `PATH` is relative to
    /// the working directory unless it starts with `/`; its directory is created. A connection
    /// waits up to `options.timeout` for another process's write lock (the busy timeout).
    pub async fn connect(url: &str, options: &StoreOptions) -> Result<Self, Error> {
        let path = sqlite_path(url)?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| Error::Io {
                path: dir.to_owned(),
                source,
            })?;
        }
        let connect = SqliteConnectOptions::from_str("sqlite:")?
            .filename(&path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(options.timeout);
        let pool = SqlitePoolOptions::new()
            .max_connections(options.pool_size)
            .acquire_timeout(options.timeout)
            .test_before_acquire(false)
            .connect_with(connect)
            .await
            .map_err(|source| Error::Connect {
                url: url.to_owned(),
                source,
            })?;
        Ok(Self { pool })
    }

    /// Applies the migrations in `migrations/sqlite/`.
    pub async fn migrate(&self) -> Result<(), Error> {
        sqlx::migrate!("migrations/sqlite").run(&self.pool).await?;
        Ok(())
    }

    /// The underlying pool (for tests and tools that read the table directly).
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }
}

pub(super) fn sqlite_path(url: &str) -> Result<PathBuf, Error> {
    let refuse = |reason: &str| Error::Url {
        url: url.to_owned(),
        reason: reason.to_owned(),
    };
    let path = url
        .strip_prefix("sqlite://")
        .ok_or_else(|| refuse("expected sqlite://PATH"))?;
    if path.is_empty() {
        return Err(refuse(
            "the path is empty; expected sqlite://PATH, e.g. sqlite://data/sessions.db",
        ));
    }
    if path.contains('?') {
        return Err(refuse(
            "query parameters are not supported; the store sets its own pragmas",
        ));
    }
    if path == ":memory:" || path.starts_with("file::memory:") {
        return Err(refuse(
            "an in-memory SQLite database is not shared between connections or nodes, so nothing \
             would fail over; use a file path, e.g. sqlite://data/sessions.db",
        ));
    }
    Ok(Path::new(path).to_owned())
}

/// Replaces a row only with a higher version; the parameters are in the order of [`UPSERT`].
const UPDATE: &str = "UPDATE stored_http_session SET app = ?2, context_path = ?3, node = ?4, \
     principal = ?5, created_at = ?6, modified_at = ?7, expires_at = ?8, max_inactive_secs = ?9, \
     version = ?10, attributes = ?11, size_bytes = ?12, data = ?13 \
     WHERE session_id = ?1 AND version < ?10";

/// Binds a record's 13 columns, in table order, to `sql`.
fn bind_row<'q>(
    sql: &'static str,
    record: &'q Record,
) -> sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments> {
    let m = &record.meta;
    sqlx::query(sql)
        .bind(m.key.as_str())
        .bind(&m.app)
        .bind(&m.context_path)
        .bind(&m.node)
        .bind(m.principal.as_deref())
        .bind(m.created_at)
        .bind(m.modified_at)
        .bind(m.expires_at)
        .bind(m.max_inactive_secs)
        .bind(m.version)
        .bind(attribute_names(m))
        .bind(size(record))
        .bind(record.data.as_slice())
}

#[async_trait::async_trait]
impl SessionStore for SqliteStore {
    async fn get(&self, key: &SessionKey, now: EpochMillis) -> Result<Option<Record>, Error> {
        let row = sqlx::query(GET)
            .bind(key.as_str())
            .bind(now)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|row| {
            Ok(Record {
                meta: meta_from_row(&row)?,
                data: row.try_get("data")?,
            })
        })
        .transpose()
    }

    async fn set(&self, record: &Record) -> Result<(), Error> {
        bind_row(UPSERT, record).execute(&self.pool).await?;
        Ok(())
    }

    async fn update(&self, record: &Record) -> Result<Update, Error> {
        let done = bind_row(UPDATE, record).execute(&self.pool).await?;
        if done.rows_affected() > 0 {
            return Ok(Update::Written);
        }
        let exists = sqlx::query("SELECT 1 FROM stored_http_session WHERE session_id = ?")
            .bind(record.meta.key.as_str())
            .fetch_optional(&self.pool)
            .await?;
        Ok(if exists.is_some() {
            Update::Superseded
        } else {
            Update::Missing
        })
    }

    /// One transaction of prepared single-row upserts: SQLite is in-process, so there is no
    /// round trip to save, and one transaction is one commit.
    async fn set_many(&self, records: &[Record]) -> Result<(), Error> {
        let mut tx = self.pool.begin().await?;
        for record in records {
            bind_row(UPSERT, record).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// One transaction of prepared single-row updates (see `set_many`).
    async fn update_many(&self, records: &[Record]) -> Result<Vec<Update>, Error> {
        let mut tx = self.pool.begin().await?;
        let mut outcomes = Vec::with_capacity(records.len());
        for record in records {
            let done = bind_row(UPDATE, record).execute(&mut *tx).await?;
            outcomes.push(if done.rows_affected() > 0 {
                Update::Written
            } else {
                let exists = sqlx::query("SELECT 1 FROM stored_http_session WHERE session_id = ?")
                    .bind(record.meta.key.as_str())
                    .fetch_optional(&mut *tx)
                    .await?;
                if exists.is_some() {
                    Update::Superseded
                } else {
                    Update::Missing
                }
            });
        }
        tx.commit().await?;
        Ok(outcomes)
    }

    async fn destroy_many(&self, keys: &[SessionKey]) -> Result<u64, Error> {
        let mut tx = self.pool.begin().await?;
        let mut removed = 0;
        for key in keys {
            removed += sqlx::query("DELETE FROM stored_http_session WHERE session_id = ?")
                .bind(key.as_str())
                .execute(&mut *tx)
                .await?
                .rows_affected();
        }
        tx.commit().await?;
        Ok(removed)
    }

    async fn destroy(&self, key: &SessionKey) -> Result<bool, Error> {
        let done = sqlx::query("DELETE FROM stored_http_session WHERE session_id = ?")
            .bind(key.as_str())
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn exists(&self, key: &SessionKey, now: EpochMillis) -> Result<bool, Error> {
        let row = sqlx::query(
            "SELECT 1 FROM stored_http_session WHERE session_id = ? AND expires_at > ?",
        )
        .bind(key.as_str())
        .bind(now)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.is_some())
    }

    async fn ttl(&self, key: &SessionKey, now: EpochMillis) -> Result<Option<Duration>, Error> {
        let expires: Option<i64> = sqlx::query_scalar(
            "SELECT expires_at FROM stored_http_session WHERE session_id = ? AND expires_at > ?",
        )
        .bind(key.as_str())
        .bind(now)
        .fetch_optional(&self.pool)
        .await?;
        Ok(expires.map(|at| Duration::from_millis((at - now).unsigned_abs())))
    }

    async fn reset_timer(
        &self,
        key: &SessionKey,
        modified_at: EpochMillis,
        expires_at: EpochMillis,
    ) -> Result<bool, Error> {
        let done = sqlx::query(
            "UPDATE stored_http_session SET modified_at = ?, expires_at = ? \
             WHERE session_id = ? AND expires_at > ?",
        )
        .bind(modified_at)
        .bind(expires_at)
        .bind(key.as_str())
        .bind(modified_at)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn length(&self) -> Result<u64, Error> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM stored_http_session")
            .fetch_one(&self.pool)
            .await?;
        Ok(n.unsigned_abs())
    }

    async fn clear(&self) -> Result<(), Error> {
        sqlx::query("DELETE FROM stored_http_session")
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn list(&self, query: &ListQuery) -> Result<Vec<Meta>, Error> {
        let rows = sqlx::query(LIST)
            .bind(query.app.as_deref())
            .bind(query.principal.as_deref())
            .bind(query.node.as_deref())
            .bind(query.after.as_ref().map(SessionKey::as_str))
            .bind(i64::from(query.limit))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(meta_from_row).collect()
    }

    async fn purge_expired(&self, now: EpochMillis, batch_size: u32) -> Result<u64, Error> {
        let mut total = 0;
        loop {
            let done = sqlx::query(
                "DELETE FROM stored_http_session WHERE session_id IN \
                 (SELECT session_id FROM stored_http_session WHERE expires_at <= ? LIMIT ?)",
            )
            .bind(now)
            .bind(i64::from(batch_size.max(1)))
            .execute(&self.pool)
            .await?;
            total += done.rows_affected();
            if done.rows_affected() < u64::from(batch_size.max(1)) {
                return Ok(total);
            }
        }
    }
}

const GET: &str = "SELECT session_id, app, context_path, node, principal, created_at, modified_at, expires_at, \
     max_inactive_secs, version, attributes, size_bytes, data \
     FROM stored_http_session WHERE session_id = ? AND expires_at > ?";

const LIST: &str = "SELECT session_id, app, context_path, node, principal, created_at, modified_at, expires_at, \
     max_inactive_secs, version, attributes, size_bytes \
     FROM stored_http_session \
     WHERE (?1 IS NULL OR app = ?1) AND (?2 IS NULL OR principal = ?2) \
       AND (?3 IS NULL OR node = ?3) AND (?4 IS NULL OR session_id > ?4) \
     ORDER BY session_id LIMIT ?5";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_paths() {
        assert_eq!(
            sqlite_path("sqlite://data/s.db").unwrap(),
            Path::new("data/s.db")
        );
        assert_eq!(
            sqlite_path("sqlite:///tmp/s.db").unwrap(),
            Path::new("/tmp/s.db")
        );
        assert!(sqlite_path("sqlite://").is_err());
        assert!(sqlite_path("sqlite://x.db?mode=ro").is_err());
        assert!(sqlite_path("postgres://x").is_err());
    }
}
