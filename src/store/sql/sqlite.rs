//! The embedded default: one SQLite file, in WAL mode, shared by every process on the host.
//! Batches are multi-row statements (up to 500 rows); no purge lock is needed,
//! as SQLite has one writer at a time.

use std::path::{Path, PathBuf};
use std::str::FromStr as _;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqliteSynchronous};

use super::{COLUMNS, Dialect, Query, assignments, bind_rows, values};
use crate::store::{Error, Record, StoreOptions};

/// The SQLite dialect of [`super::SqlStore`].
///
/// Opened with WAL journaling, `synchronous = NORMAL` (durable across a process crash, which is
/// the failure failover is for) and a busy timeout of `session.store.timeout`, so several
/// processes on one host can share the file.
#[derive(Debug)]
pub struct Sqlite;

impl Dialect for Sqlite {
    type Db = sqlx::Sqlite;

    const RETURNING: bool = true;
    const ARRAYS: bool = false;
    /// 13 parameters a row, far below SQLite's 32,766.
    const MAX_ROWS: usize = 500;
    const MAX_BYTES: usize = usize::MAX;
    const BIGINT: &'static str = "INTEGER";
    const PURGE: &'static str = "DELETE FROM stored_http_session WHERE session_id IN \
         (SELECT session_id FROM stored_http_session WHERE expires_at <= ? LIMIT ?)";

    fn param(_n: usize) -> String {
        "?".to_owned()
    }

    fn upsert(rows: usize) -> String {
        format!(
            "INSERT INTO stored_http_session ({COLUMNS}) VALUES {} \
             ON CONFLICT (session_id) DO UPDATE SET {} \
             WHERE stored_http_session.version < excluded.version",
            values::<Self>(rows, 13),
            assignments("excluded", true)
        )
    }

    /// `UPDATE … FROM` a common table expression of the new rows (SQLite 3.33 and later).
    fn update(rows: usize) -> String {
        format!(
            "WITH n ({COLUMNS}) AS (VALUES {}) UPDATE stored_http_session SET {} FROM n \
             WHERE stored_http_session.session_id = n.session_id \
             AND stored_http_session.version = n.version - 1 \
             AND stored_http_session.expires_at > n.modified_at RETURNING session_id",
            values::<Self>(rows, 13),
            assignments("n", false)
        )
    }

    fn bind_batch<'q>(query: Query<'q, Self>, records: &[&'q Record]) -> Query<'q, Self> {
        bind_rows(query, records)
    }

    /// Opens (creating if needed) the database of a `sqlite://PATH` URL. `PATH` is relative to
    /// the working directory unless it starts with `/`; its directory is created.
    async fn connect(url: &str, options: &StoreOptions) -> Result<SqlitePool, Error> {
        let path = sqlite_path(url)?;
        prepare(&path, options.create)?;
        let connect = SqliteConnectOptions::from_str("sqlite:")?
            .filename(&path)
            .create_if_missing(options.create)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(options.timeout);
        super::pool(url, options, connect).await
    }

    async fn migrate(pool: &SqlitePool) -> Result<(), Error> {
        sqlx::migrate!("migrations/sqlite").run(pool).await?;
        Ok(())
    }
}

/// Checks the database file and its directory with the file system's own words ("Permission
/// denied", "Not a directory"), which SQLite reduces to "unable to open database file": the
/// directory is created if `create` (and must be a directory), the file must exist unless
/// `create`, and must open for reading and writing.
fn prepare(path: &Path, create: bool) -> Result<(), Error> {
    let fail = |path: &Path, reason: String| Error::File {
        path: path.to_owned(),
        reason,
    };
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
    if let Some(dir) = dir {
        match std::fs::metadata(dir) {
            Ok(meta) if !meta.is_dir() => {
                return Err(fail(
                    dir,
                    "is a file; the database's directory must be a directory".to_owned(),
                ));
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && create => {
                std::fs::create_dir_all(dir)
                    .map_err(|e| fail(dir, format!("cannot create the directory: {e}")))?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(fail(
                    path,
                    "does not exist (its directory neither): check the path; a store is created \
                     only by `migrate`, or by `serve` with session.store.migrate=true"
                        .to_owned(),
                ));
            }
            Err(e) => return Err(fail(dir, e.to_string())),
        }
    }
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_dir() => Err(fail(
            path,
            "is a directory; give the database file's path, e.g. sqlite://data/sessions.db"
                .to_owned(),
        )),
        Ok(_) => std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map(drop)
            .map_err(|e| fail(path, format!("cannot open for reading and writing: {e}"))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && create => {
            // SQLite takes an empty file for an empty database.
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .open(path)
                .map(drop)
                .map_err(|e| fail(path, format!("cannot create: {e}")))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(fail(
            path,
            "does not exist: check the path; a store is created only by `migrate`, or by `serve` \
             with session.store.migrate=true"
                .to_owned(),
        )),
        Err(e) => Err(fail(path, e.to_string())),
    }
}

pub(crate) fn sqlite_path(url: &str) -> Result<PathBuf, Error> {
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
