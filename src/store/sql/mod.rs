//! One SQL store over three dialects: [`SqlStore`] holds every statement and method once;
//! a [`Dialect`] says only what differs (placeholders, the upsert's conflict clause, the batch
//! statements, the purge statement and the purge lock, how to connect and migrate).
//!
//! | dialect | batch write | purge lock |
//! |---|---|---|
//! | `Postgres` | one `UNNEST` statement of 13 arrays, any size | advisory lock |
//! | `MySql` (and MariaDB) | multi-row `VALUES`, 500 rows or 4 MiB a statement | a lease row, per database (cluster-wide on Galera) |
//! | `Sqlite` | multi-row `VALUES`, 500 rows a statement | none (one writer) |
//!
//! A `set_many` of several chunks is one transaction; `update_many` and `destroy_many` commit
//! chunk by chunk (a failure after the first chunk leaves the earlier ones written, and a retry
//! then finds them `Superseded` by themselves, which loses nothing).

#[cfg(feature = "mysql")]
mod mysql;
#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "sqlite")]
mod sqlite;
mod store;

use std::future::Future;

use sqlx::{ColumnIndex, Database, Decode, Row, Type};

#[cfg(feature = "mysql")]
pub use mysql::{MySql, PURGE_LOCK as MYSQL_PURGE_LOCK};
#[cfg(feature = "postgres")]
pub use postgres::{PURGE_LOCK as PG_PURGE_LOCK, Postgres};
#[cfg(feature = "sqlite")]
pub use sqlite::Sqlite;
#[cfg(feature = "sqlite")]
pub(crate) use sqlite::sqlite_path;
pub use store::SqlStore;

use super::{Error, Meta, Record, StoreOptions};
use crate::id::SessionKey;

/// The statement and binding a query of dialect `D` is built from.
pub(crate) type Query<'q, D> =
    sqlx::query::Query<'q, <D as Dialect>::Db, <<D as Dialect>::Db as Database>::Arguments>;

/// What one SQL database does differently from the others. Implemented by `Postgres`,
/// `MySql` and `Sqlite`; everything else is [`SqlStore`]'s.
pub trait Dialect: std::fmt::Debug + Send + Sync + Sized + 'static {
    /// The sqlx driver.
    type Db: Database;

    /// Whether the conditional update names the rows it wrote (`RETURNING session_id`), so
    /// outcomes are exact rather than inferred from the affected-row count.
    const RETURNING: bool;
    /// Whether batch statements bind columns as arrays (one statement of any size) rather than
    /// rows (one statement per batch size).
    const ARRAYS: bool;
    /// Rows in one batch statement.
    const MAX_ROWS: usize;
    /// Data in one batch statement (a lone larger row still gets its own).
    const MAX_BYTES: usize;
    /// The type name of a 64-bit integer in `CAST(… AS …)`.
    const BIGINT: &'static str;
    /// Deletes at most `$2` rows expired at `$1`.
    const PURGE: &'static str;

    /// The `n`-th (1-based) statement parameter: `$n` or `?`.
    fn param(n: usize) -> String;

    /// The upsert of `rows` records (ignored when [`Dialect::ARRAYS`]), replacing a row only
    /// with a higher version.
    fn upsert(rows: usize) -> String;

    /// The conditional update of `rows` records (ignored when [`Dialect::ARRAYS`]): a row is
    /// replaced only when its version is the record's version minus one (compare-and-set on
    /// the version the writer read) and it has not expired; never created.
    fn update(rows: usize) -> String;

    /// Binds `records` to a statement built by [`Dialect::upsert`] or [`Dialect::update`].
    fn bind_batch<'q>(query: Query<'q, Self>, records: &[&'q Record]) -> Query<'q, Self>;

    /// Binds `keys` as one text array: called only when [`Dialect::ARRAYS`], whose dialects
    /// implement it (the default binds nothing).
    fn bind_key_array<'q>(query: Query<'q, Self>, keys: &[SessionKey]) -> Query<'q, Self> {
        let _ = keys;
        query
    }

    /// Opens the pool for `url`.
    fn connect(
        url: &str,
        options: &StoreOptions,
    ) -> impl Future<Output = Result<sqlx::Pool<Self::Db>, Error>> + Send;

    /// Applies this dialect's migrations.
    fn migrate(pool: &sqlx::Pool<Self::Db>) -> impl Future<Output = Result<(), Error>> + Send;

    /// Starts pushing the table's changes to `sender` from a task of its own; `false` if the
    /// database cannot push them (the default).
    fn listen(
        pool: &sqlx::Pool<Self::Db>,
        sender: tokio::sync::broadcast::Sender<crate::store::Pushed>,
    ) -> bool {
        let _ = (pool, sender);
        false
    }

    /// Takes the purge lock on `conn` without waiting; `false` if another node holds it. The
    /// default takes none.
    fn try_lock(
        conn: &mut <Self::Db as Database>::Connection,
    ) -> impl Future<Output = Result<bool, sqlx::Error>> + Send {
        let _ = conn;
        async { Ok(true) }
    }

    /// Extends the purge lock taken on `conn` if it runs out by itself (a lease); `false` if it
    /// was lost meanwhile (the run stops). The default has nothing to extend.
    fn renew(
        conn: &mut <Self::Db as Database>::Connection,
    ) -> impl Future<Output = Result<bool, sqlx::Error>> + Send {
        let _ = conn;
        async { Ok(true) }
    }

    /// Releases the purge lock taken on `conn`.
    fn unlock(
        conn: &mut <Self::Db as Database>::Connection,
    ) -> impl Future<Output = Result<(), sqlx::Error>> + Send {
        let _ = conn;
        async { Ok(()) }
    }
}

/// A pool of `options.pool_size` connections to `connect`, waiting at most `options.timeout` for
/// one and not pinging them before use; `url` (redacted) names it in the error.
///
/// One connection is made first, on its own: the pool retries a refused connection until its
/// timeout and then reports only that it timed out, while this says at once what failed
/// (connection refused, authentication, an unknown database).
#[cfg(any(feature = "postgres", feature = "sqlite"))]
pub(crate) async fn pool<DB: Database>(
    url: &str,
    options: &StoreOptions,
    connect: <DB::Connection as sqlx::Connection>::Options,
) -> Result<sqlx::Pool<DB>, Error> {
    pool_with(url, options, connect, |_| Box::pin(async { Ok(()) })).await
}

/// What runs on each new pooled connection before its first use.
pub(crate) type AfterConnect<DB> =
    fn(
        &mut <DB as Database>::Connection,
    ) -> std::pin::Pin<Box<dyn Future<Output = Result<(), sqlx::Error>> + Send + '_>>;

/// [`pool`], with `after_connect` run on each new connection of the pool.
pub(crate) async fn pool_with<DB: Database>(
    url: &str,
    options: &StoreOptions,
    connect: <DB::Connection as sqlx::Connection>::Options,
    after_connect: AfterConnect<DB>,
) -> Result<sqlx::Pool<DB>, Error> {
    use sqlx::Connection as _;
    let failed = |error: sqlx::Error| Error::Connect {
        url: crate::store::redact_url(url),
        reason: connect_failure(&error, options.connect_timeout()),
        error,
    };
    match tokio::time::timeout(
        options.connect_timeout(),
        DB::Connection::connect_with(&connect),
    )
    .await
    {
        Ok(Ok(first)) => {
            let _ = first.close().await;
        }
        Ok(Err(error)) => return Err(failed(error)),
        Err(_) => return Err(failed(sqlx::Error::PoolTimedOut)),
    }
    sqlx::pool::PoolOptions::<DB>::new()
        .max_connections(options.pool_size)
        .acquire_timeout(options.timeout)
        .test_before_acquire(false)
        .after_connect(move |conn, _| after_connect(conn))
        .connect_with(connect)
        .await
        .map_err(failed)
}

/// What a failed connection attempt says to an operator: the server's own message, once.
fn connect_failure(error: &sqlx::Error, timeout: std::time::Duration) -> String {
    match error {
        sqlx::Error::Io(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            format!("{e}: is the database server running, on that host and port?")
        }
        sqlx::Error::Io(e) => e.to_string(),
        sqlx::Error::Tls(e) => format!("TLS: {e}"),
        sqlx::Error::Database(e) => format!("the server refused: {}", e.message()),
        sqlx::Error::PoolTimedOut => format!(
            "no answer within {} ms (session.store.timeout)",
            timeout.as_millis()
        ),
        other => other.to_string(),
    }
}

/// `(p, p, …), (p, …)`: `rows` groups of `columns` parameters, numbered from 1.
pub(crate) fn values<D: Dialect>(rows: usize, columns: usize) -> String {
    (0..rows)
        .map(|row| {
            let params: Vec<String> = (1..=columns).map(|c| D::param(row * columns + c)).collect();
            format!("({})", params.join(", "))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Binds the 13 columns of each record, in table order, row after row.
#[cfg(any(feature = "mysql", feature = "sqlite"))]
pub(crate) fn bind_rows<'q, DB>(
    mut query: sqlx::query::Query<'q, DB, DB::Arguments>,
    records: &[&'q Record],
) -> sqlx::query::Query<'q, DB, DB::Arguments>
where
    DB: Database,
    for<'t> &'t str: sqlx::Encode<'t, DB> + Type<DB>,
    for<'t> Option<&'t str>: sqlx::Encode<'t, DB> + Type<DB>,
    for<'t> &'t [u8]: sqlx::Encode<'t, DB> + Type<DB>,
    String: for<'t> sqlx::Encode<'t, DB> + Type<DB>,
    i64: for<'t> sqlx::Encode<'t, DB> + Type<DB>,
{
    for record in records {
        let m = &record.meta;
        query = query
            .bind(m.key.as_str())
            .bind(m.app.as_str())
            .bind(m.context_path.as_str())
            .bind(m.node.as_str())
            .bind(m.principal.as_deref())
            .bind(m.created_at)
            .bind(m.modified_at)
            .bind(m.expires_at)
            .bind(m.max_inactive_secs)
            .bind(m.version)
            .bind(attribute_names(m))
            .bind(size(record))
            .bind(record.data.as_slice());
    }
    query
}

/// The 13 columns, in table order.
pub(crate) const COLUMNS: &str = "session_id, app, context_path, node, principal, created_at, \
     modified_at, expires_at, max_inactive_secs, version, attributes, size_bytes, data";

/// The columns an update replaces, as `col = {new}.col`; an upsert's conflict clause
/// (`upsert`) leaves `created_at` alone, as a session's creation time never changes.
#[cfg(any(feature = "postgres", feature = "sqlite"))]
pub(crate) fn assignments(new: &str, upsert: bool) -> String {
    [
        "app",
        "context_path",
        "node",
        "principal",
        "created_at",
        "modified_at",
        "expires_at",
        "max_inactive_secs",
        "attributes",
        "size_bytes",
        "data",
        "version",
    ]
    .iter()
    .filter(|c| !(upsert && **c == "created_at"))
    .map(|c| format!("{c} = {new}.{c}"))
    .collect::<Vec<_>>()
    .join(", ")
}

/// The metadata columns, in the order every backend selects them.
pub(crate) const META_COLUMNS: &str = "session_id, app, context_path, node, principal, \
     created_at, modified_at, expires_at, max_inactive_secs, version, attributes, size_bytes";

/// Decodes the metadata columns of a row of any SQL backend.
pub(crate) fn meta_from_row<'r, R>(row: &'r R) -> Result<Meta, Error>
where
    R: Row,
    &'static str: ColumnIndex<R>,
    String: Decode<'r, R::Database> + Type<R::Database>,
    Option<String>: Decode<'r, R::Database> + Type<R::Database>,
    i64: Decode<'r, R::Database> + Type<R::Database>,
{
    let key: String = row.try_get("session_id")?;
    // Whoever can write the table could put anything here: a key reaches pages, terminals and
    // logs, so only a well-formed one is taken (the message quotes it escaped).
    let Some(parsed) = SessionKey::parse(&key) else {
        return Err(Error::CorruptRow {
            key: format!("{key:?}"),
            reason: "its key is not a session key (43 characters of base64url)".to_owned(),
        });
    };
    let attributes: String = row.try_get("attributes")?;
    let attributes = serde_json::from_str(&attributes).map_err(|e| Error::CorruptRow {
        key: key.clone(),
        reason: format!("attribute names are not a JSON array of strings: {e}"),
    })?;
    Ok(Meta {
        key: parsed,
        app: row.try_get("app")?,
        context_path: row.try_get("context_path")?,
        node: row.try_get("node")?,
        principal: row.try_get("principal")?,
        created_at: row.try_get("created_at")?,
        modified_at: row.try_get("modified_at")?,
        expires_at: row.try_get("expires_at")?,
        max_inactive_secs: row.try_get("max_inactive_secs")?,
        version: row.try_get("version")?,
        attributes,
        size_bytes: row.try_get("size_bytes")?,
    })
}

/// The `attributes` column's text: a JSON array of names.
pub(crate) fn attribute_names(meta: &Meta) -> String {
    serde_json::to_string(&meta.attributes).unwrap_or_else(|_| "[]".to_owned())
}

/// The `size_bytes` column.
pub(crate) fn size(record: &Record) -> i64 {
    i64::try_from(record.data.len()).unwrap_or(i64::MAX)
}

/// One record per key, the highest version of each, in the order keys first appear.
///
/// PostgreSQL refuses a multi-row upsert that touches one row twice, and only the newest state of
/// a session matters anyway.
pub(crate) fn latest_per_key(records: &[Record]) -> Vec<&Record> {
    let mut index: std::collections::HashMap<&SessionKey, usize> =
        std::collections::HashMap::with_capacity(records.len());
    let mut out: Vec<&Record> = Vec::with_capacity(records.len());
    for record in records {
        match index.get(&record.meta.key) {
            Some(&i) if out[i].meta.version >= record.meta.version => {}
            Some(&i) => out[i] = record,
            None => {
                index.insert(&record.meta.key, out.len());
                out.push(record);
            }
        }
    }
    out
}

/// Splits a batch so no statement carries more than `max_rows` rows or about `max_bytes` of data
/// (a lone larger row still gets its own statement).
pub(crate) fn chunks<'a>(
    records: &'a [&'a Record],
    max_rows: usize,
    max_bytes: usize,
) -> Vec<&'a [&'a Record]> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut bytes = 0;
    for (i, record) in records.iter().enumerate() {
        let len = record.data.len();
        if i > start && (i - start >= max_rows || bytes + len > max_bytes) {
            out.push(&records[start..i]);
            start = i;
            bytes = 0;
        }
        bytes += len;
    }
    if start < records.len() {
        out.push(&records[start..]);
    }
    out
}
