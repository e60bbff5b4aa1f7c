//! [`SqlStore`]: every statement and method of the SQL stores, once, over a [`Dialect`].

use std::collections::{HashMap, HashSet};
use std::marker::PhantomData;
use std::sync::{Arc, OnceLock};

use sqlx::{AssertSqlSafe, Database, Executor, Row as _};

use super::{
    Dialect, META_COLUMNS, Query, StoreOptions, chunks, latest_per_key, meta_from_row, values,
};
use crate::id::SessionKey;
use crate::store::{
    EpochMillis, Error, ListQuery, Meta, Pushed, Record, SessionAdmin, SessionStore, Stats,
    StatsGroup, Update,
};

/// The largest number of keys in one `IN (…)` list (deletes and version look-ups are chunked).
const MAX_KEYS: usize = 500;
/// Keys in one `get_many` query: a power of two (see [`SqlStore::get_many`]).
const READ_KEYS: usize = 256;

/// How often a running purge renews its lock (MySQL's lease lasts three times as long).
pub(crate) const RENEW_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// A [`SessionStore`] on a SQL database: PostgreSQL (`PgStore`), MySQL and MariaDB
/// (`MySqlStore`) or SQLite (`SqliteStore`), as the cargo features allow.
///
/// Its statements are built once, when it connects (batch statements of a given row count on
/// first use). The pool does not ping connections before use.
pub struct SqlStore<D: Dialect> {
    pool: sqlx::Pool<D::Db>,
    sql: Arc<Statements>,
    /// Where the table's changes are pushed, once [`SessionStore::subscribe`] started it
    /// (`None` inside: the dialect cannot push).
    push: Arc<OnceLock<Option<tokio::sync::broadcast::Sender<Pushed>>>>,
    dialect: PhantomData<D>,
}

impl<D: Dialect> Clone for SqlStore<D> {
    fn clone(&self) -> Self {
        Self {
            pool: self.pool.clone(),
            sql: Arc::clone(&self.sql),
            push: Arc::clone(&self.push),
            dialect: PhantomData,
        }
    }
}

impl<D: Dialect> std::fmt::Debug for SqlStore<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqlStore")
            .field("dialect", &std::any::type_name::<D>())
            .finish_non_exhaustive()
    }
}

/// Pushed changes a slow receiver may fall behind by before it is told it lagged.
const PUSH_BUFFER: usize = 16_384;

/// A statement per batch size, built on first use.
type BySize = Vec<OnceLock<Arc<str>>>;

/// The SQL of one store.
#[derive(Debug)]
struct Statements {
    get: Arc<str>,
    version: Arc<str>,
    reset_timer: Arc<str>,
    rekey: Arc<str>,
    purge: Arc<str>,
    stats: Arc<str>,
    /// By filter: bit 0 app, 1 principal, 2 node, 3 after. Built for the filters given, so each
    /// can use its index.
    list: Vec<Arc<str>>,
    /// Live rows with their data, from the start and after a key (re-encryption).
    records: [Arc<str>; 2],
    /// Live rows of many keys (restores read together).
    get_many: BySize,
    upsert: BySize,
    update: BySize,
    versions: BySize,
    delete: BySize,
}

impl Statements {
    fn new<D: Dialect>() -> Self {
        let sizes = |n: usize| (0..=n).map(|_| OnceLock::new()).collect();
        // With arrays, one statement serves every batch size.
        let batch_sizes = if D::ARRAYS { 1 } else { D::MAX_ROWS };
        Self {
            get: format!(
                "SELECT {META_COLUMNS}, data FROM stored_http_session \
                 WHERE session_id = {} AND expires_at > {}",
                D::param(1),
                D::param(2)
            )
            .into(),
            version: format!(
                "SELECT version FROM stored_http_session \
                 WHERE session_id = {} AND expires_at > {}",
                D::param(1),
                D::param(2)
            )
            .into(),
            reset_timer: format!(
                "UPDATE stored_http_session SET modified_at = {}, expires_at = {} \
                 WHERE session_id = {} AND expires_at > {}",
                D::param(1),
                D::param(2),
                D::param(3),
                D::param(4)
            )
            .into(),
            rekey: format!(
                "UPDATE stored_http_session SET data = {}, size_bytes = {} \
                 WHERE session_id = {} AND version = {} AND expires_at > {}",
                D::param(1),
                D::param(2),
                D::param(3),
                D::param(4),
                D::param(5)
            )
            .into(),
            purge: D::PURGE.into(),
            stats: format!(
                "SELECT app, node, COUNT(*) AS sessions, \
                 CAST(COALESCE(SUM(CASE WHEN expires_at <= {} THEN 1 ELSE 0 END), 0) AS {int}) AS expired, \
                 CAST(COALESCE(SUM(CASE WHEN principal IS NOT NULL THEN 1 ELSE 0 END), 0) AS {int}) AS signed_in, \
                 CAST(COALESCE(SUM(size_bytes), 0) AS {int}) AS bytes \
                 FROM stored_http_session GROUP BY app, node",
                D::param(1),
                int = D::BIGINT
            )
            .into(),
            list: (0..16).map(|filters| list::<D>(filters).into()).collect(),
            records: [false, true].map(|after| {
                let (after, now, limit) = if after {
                    (format!("session_id > {} AND ", D::param(1)), D::param(2), D::param(3))
                } else {
                    (String::new(), D::param(1), D::param(2))
                };
                format!(
                    "SELECT {META_COLUMNS}, data FROM stored_http_session \
                     WHERE {after}expires_at > {now} ORDER BY session_id LIMIT {limit}"
                )
                .into()
            }),
            upsert: sizes(batch_sizes),
            update: sizes(batch_sizes),
            versions: sizes(MAX_KEYS),
            get_many: sizes(if D::ARRAYS { 1 } else { READ_KEYS }),
            delete: sizes(MAX_KEYS),
        }
    }

    /// The statement of `rows` rows from `slots`, built by `build` on first use.
    fn sized(slots: &BySize, rows: usize, build: impl FnOnce() -> String) -> Arc<str> {
        Arc::clone(slots[rows].get_or_init(|| build().into()))
    }
}

/// The live rows of `keys` keys: `get` for many ([`SqlStore::get_many`]).
fn get_many<D: Dialect>(keys: usize) -> String {
    let (keys, now) = if D::ARRAYS {
        (format!("= ANY({})", D::param(1)), D::param(2))
    } else {
        (format!("IN {}", values::<D>(1, keys)), D::param(keys + 1))
    };
    format!(
        "SELECT {META_COLUMNS}, data FROM stored_http_session \
         WHERE session_id {keys} AND expires_at > {now}"
    )
}

/// The filters of a list query, in the order their parameters are bound.
fn list_filters(query: &ListQuery) -> [Option<&str>; 4] {
    [
        query.app.as_deref(),
        query.principal.as_deref(),
        query.node.as_deref(),
        query.after.as_ref().map(SessionKey::as_str),
    ]
}

/// The list statement for a filter set (see [`Statements::list`]).
fn list<D: Dialect>(filters: usize) -> String {
    let columns = ["app = ", "principal = ", "node = ", "session_id > "];
    let mut conditions = Vec::new();
    for (bit, column) in columns.iter().enumerate() {
        if filters & (1 << bit) != 0 {
            conditions.push(format!("{column}{}", D::param(conditions.len() + 1)));
        }
    }
    let limit = D::param(conditions.len() + 1);
    let filter = if conditions.is_empty() {
        String::new()
    } else {
        format!("WHERE {} ", conditions.join(" AND "))
    };
    format!(
        "SELECT {META_COLUMNS} FROM stored_http_session {filter}ORDER BY session_id LIMIT {limit}"
    )
}

impl<D: Dialect> SqlStore<D>
where
    for<'c> &'c mut <D::Db as Database>::Connection: Executor<'c, Database = D::Db>,
{
    /// Connects with a pool of `options.pool_size` connections, waiting at most
    /// `options.timeout` for one.
    pub async fn connect(url: &str, options: &StoreOptions) -> Result<Self, Error> {
        Ok(Self {
            pool: D::connect(url, options).await?,
            sql: Arc::new(Statements::new::<D>()),
            push: Arc::default(),
            dialect: PhantomData,
        })
    }

    /// Applies the migrations in `migrations/<dialect>/`.
    pub async fn migrate(&self) -> Result<(), Error> {
        D::migrate(&self.pool).await
    }

    /// The underlying pool (for tests and tools that read the table directly).
    pub fn pool(&self) -> &sqlx::Pool<D::Db> {
        &self.pool
    }

    /// The statement [`SessionAdmin::list`] runs for `query`: only the filters it gives, so
    /// each can use its index. Parameters: the filters given, in the order app, principal,
    /// node, after; then the limit. (Public for tests/query_plans.rs, which checks its plan.)
    #[doc(hidden)]
    pub fn list_statement(&self, query: &ListQuery) -> Arc<str> {
        let set = list_filters(query)
            .iter()
            .enumerate()
            .fold(0, |bits, (bit, f)| bits | (usize::from(f.is_some()) << bit));
        Arc::clone(&self.sql.list[set])
    }

    /// The purge statement (parameters: now, batch size), for tests/query_plans.rs.
    #[doc(hidden)]
    pub fn purge_statement(&self) -> Arc<str> {
        Arc::clone(&self.sql.purge)
    }

    fn query(sql: &Arc<str>) -> Query<'static, D> {
        sqlx::query(AssertSqlSafe(Arc::clone(sql)))
    }
}

#[async_trait::async_trait]
impl<D: Dialect> SessionStore for SqlStore<D>
where
    for<'c> &'c mut <D::Db as Database>::Connection: Executor<'c, Database = D::Db>,
    <D::Db as Database>::Arguments: sqlx::IntoArguments<D::Db>,
    for<'t> &'t str: sqlx::Encode<'t, D::Db> + sqlx::Type<D::Db>,
    for<'t> &'t [u8]: sqlx::Encode<'t, D::Db> + sqlx::Type<D::Db>,
    i64: for<'t> sqlx::Encode<'t, D::Db> + for<'r> sqlx::Decode<'r, D::Db> + sqlx::Type<D::Db>,
    String: for<'r> sqlx::Decode<'r, D::Db> + sqlx::Type<D::Db>,
    Option<String>: for<'r> sqlx::Decode<'r, D::Db> + sqlx::Type<D::Db>,
    Vec<u8>: for<'r> sqlx::Decode<'r, D::Db> + sqlx::Type<D::Db>,
    &'static str: sqlx::ColumnIndex<<D::Db as Database>::Row>,
    <D::Db as Database>::QueryResult: QueryResultExt,
{
    async fn get(&self, key: &SessionKey, now: EpochMillis) -> Result<Option<Record>, Error> {
        let row = Self::query(&self.sql.get)
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

    /// One query per 256 (`READ_KEYS`) keys (PostgreSQL: `= ANY($1)`, one statement for any
    /// count; others: `IN (...)` with the count rounded up to a power of two, the last key
    /// repeated, so a storm prepares a handful of statements, not one per count). A row that
    /// does not decode fails its key only.
    async fn get_many(
        &self,
        keys: &[SessionKey],
        now: EpochMillis,
    ) -> Result<Vec<Result<Option<Record>, Error>>, Error> {
        let mut found: HashMap<String, Result<Record, Error>> = HashMap::with_capacity(keys.len());
        for chunk in keys.chunks(READ_KEYS) {
            let padded = chunk.len().next_power_of_two();
            let sql = self.batch(&self.sql.get_many, padded, get_many::<D>);
            let mut query = Self::query(&sql);
            if D::ARRAYS {
                query = D::bind_key_array(query, chunk);
            } else {
                let last = chunk.last().map(SessionKey::as_str).unwrap_or_default();
                let padding = std::iter::repeat_n(last, padded - chunk.len());
                for key in chunk.iter().map(SessionKey::as_str).chain(padding) {
                    query = query.bind(key);
                }
            }
            for row in query.bind(now).fetch_all(&self.pool).await? {
                let key: String = row.try_get("session_id")?;
                let record = meta_from_row(&row).and_then(|meta| {
                    Ok(Record {
                        meta,
                        data: row.try_get("data")?,
                    })
                });
                found.insert(key, record);
            }
        }
        Ok(keys
            .iter()
            .map(|key| match found.get(key.as_str()) {
                None => Ok(None),
                Some(Ok(record)) => Ok(Some(record.clone())),
                Some(Err(Error::CorruptRow { key, reason })) => Err(Error::CorruptRow {
                    key: key.clone(),
                    reason: reason.clone(),
                }),
                Some(Err(error)) => Err(Error::CorruptRow {
                    key: key.as_str().to_owned(),
                    reason: error.to_string(),
                }),
            })
            .collect())
    }

    fn reads_in_batches(&self) -> bool {
        true
    }

    fn subscribe(&self) -> Option<tokio::sync::broadcast::Receiver<Pushed>> {
        let sender = self.push.get_or_init(|| {
            let (sender, _) = tokio::sync::broadcast::channel(PUSH_BUFFER);
            D::listen(&self.pool, sender.clone()).then_some(sender)
        });
        sender
            .as_ref()
            .map(tokio::sync::broadcast::Sender::subscribe)
    }

    async fn version(&self, key: &SessionKey, now: EpochMillis) -> Result<Option<i64>, Error> {
        let row = Self::query(&self.sql.version)
            .bind(key.as_str())
            .bind(now)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|row| row.try_get("version")).transpose()?)
    }

    /// One statement per chunk of [`Dialect::MAX_ROWS`] rows (any size with arrays), in one
    /// transaction when there are several.
    async fn set_many(&self, records: &[Record]) -> Result<(), Error> {
        let latest = latest_per_key(records);
        let chunks = chunks(&latest, D::MAX_ROWS, D::MAX_BYTES);
        match chunks.as_slice() {
            [] => {}
            [one] => {
                self.upsert(one).execute(&self.pool).await?;
            }
            many => {
                let mut tx = self.pool.begin().await?;
                for chunk in many {
                    self.upsert(chunk).execute(&mut *tx).await?;
                }
                tx.commit().await?;
            }
        }
        Ok(())
    }

    /// One conditional update per chunk; a `SELECT` of the chunk's versions only when some row
    /// was not updated, to tell a newer row from a missing one.
    async fn update_many(&self, records: &[Record]) -> Result<Vec<Update>, Error> {
        let latest = latest_per_key(records);
        let mut outcome: HashMap<&str, Update> = HashMap::with_capacity(latest.len());
        for chunk in chunks(&latest, D::MAX_ROWS, D::MAX_BYTES) {
            let sql = self.batch(&self.sql.update, chunk.len(), D::update);
            let statement = D::bind_batch(Self::query(&sql), chunk);
            // Which rows were written: named by RETURNING where the dialect has it, else
            // counted (MySQL/MariaDB have no UPDATE ... RETURNING).
            let (returned, written) = if D::RETURNING {
                let keys: HashSet<String> = statement
                    .fetch_all(&self.pool)
                    .await?
                    .iter()
                    .map(|row| row.try_get("session_id"))
                    .collect::<Result<_, _>>()?;
                let n = keys.len();
                (Some(keys), n)
            } else {
                let done = statement.execute(&self.pool).await?;
                (
                    None,
                    usize::try_from(done.rows_affected()).unwrap_or(usize::MAX),
                )
            };
            let all = written == chunk.len();
            let stored = if all {
                HashMap::new()
            } else {
                self.versions(chunk).await?
            };
            for record in chunk {
                let key = record.meta.key.as_str();
                let update = match (&returned, stored.get(key)) {
                    _ if all => Update::Written,
                    (Some(keys), _) if keys.contains(key) => Update::Written,
                    (_, None) => Update::Missing,
                    // Expired: absent for every read, and an update must not revive it.
                    (_, Some((_, _, _, expires))) if *expires <= record.meta.modified_at => {
                        Update::Missing
                    }
                    // Counted, and some rows of the chunk were written: the stored row is this
                    // record's if it carries its version, node and time (an exact repeat of an
                    // earlier write counts as written: it is that write).
                    (None, Some((version, node, modified, _)))
                        if written > 0
                            && *version == record.meta.version
                            && *node == record.meta.node
                            && *modified == record.meta.modified_at =>
                    {
                        Update::Written
                    }
                    (_, Some(_)) => Update::Superseded,
                };
                outcome.insert(record.meta.key.as_str(), update);
            }
        }
        // Only the newest record of a key was sent; older ones in the batch are superseded by it.
        let sent: HashMap<&str, i64> = latest
            .iter()
            .map(|r| (r.meta.key.as_str(), r.meta.version))
            .collect();
        Ok(records
            .iter()
            .map(|r| {
                let key = r.meta.key.as_str();
                match outcome.get(key) {
                    Some(Update::Written) if sent.get(key) != Some(&r.meta.version) => {
                        Update::Superseded
                    }
                    Some(update) => *update,
                    None => Update::Missing,
                }
            })
            .collect())
    }

    async fn destroy_many(&self, keys: &[SessionKey]) -> Result<u64, Error> {
        let mut removed = 0;
        for chunk in keys.chunks(MAX_KEYS) {
            let sql = Statements::sized(&self.sql.delete, chunk.len(), || {
                format!(
                    "DELETE FROM stored_http_session WHERE session_id IN {}",
                    values::<D>(1, chunk.len())
                )
            });
            let mut query = Self::query(&sql);
            for key in chunk {
                query = query.bind(key.as_str());
            }
            removed += query.execute(&self.pool).await?.rows_affected();
        }
        Ok(removed)
    }

    async fn reset_timer(
        &self,
        key: &SessionKey,
        modified_at: EpochMillis,
        expires_at: EpochMillis,
    ) -> Result<bool, Error> {
        let done = Self::query(&self.sql.reset_timer)
            .bind(modified_at)
            .bind(expires_at)
            .bind(key.as_str())
            .bind(modified_at)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn rekey(
        &self,
        key: &SessionKey,
        version: i64,
        data: &[u8],
        now: EpochMillis,
    ) -> Result<bool, Error> {
        let done = Self::query(&self.sql.rekey)
            .bind(data)
            .bind(i64::try_from(data.len()).unwrap_or(i64::MAX))
            .bind(key.as_str())
            .bind(version)
            .bind(now)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }
}

#[async_trait::async_trait]
impl<D: Dialect> SessionAdmin for SqlStore<D>
where
    for<'c> &'c mut <D::Db as Database>::Connection: Executor<'c, Database = D::Db>,
    <D::Db as Database>::Arguments: sqlx::IntoArguments<D::Db>,
    for<'t> &'t str: sqlx::Encode<'t, D::Db> + sqlx::Type<D::Db>,
    for<'t> &'t [u8]: sqlx::Encode<'t, D::Db> + sqlx::Type<D::Db>,
    for<'t> Option<&'t str>: sqlx::Encode<'t, D::Db> + sqlx::Type<D::Db>,
    i64: for<'t> sqlx::Encode<'t, D::Db> + for<'r> sqlx::Decode<'r, D::Db> + sqlx::Type<D::Db>,
    String: for<'r> sqlx::Decode<'r, D::Db> + sqlx::Type<D::Db>,
    Option<String>: for<'r> sqlx::Decode<'r, D::Db> + sqlx::Type<D::Db>,
    Vec<u8>: for<'r> sqlx::Decode<'r, D::Db> + sqlx::Type<D::Db>,
    &'static str: sqlx::ColumnIndex<<D::Db as Database>::Row>,
    <D::Db as Database>::QueryResult: QueryResultExt,
{
    async fn list(&self, query: &ListQuery) -> Result<Vec<Meta>, Error> {
        let filters = list_filters(query);
        let mut statement = Self::query(&self.list_statement(query));
        for value in filters.into_iter().flatten() {
            statement = statement.bind(value);
        }
        let rows = statement
            .bind(i64::from(query.limit))
            .fetch_all(&self.pool)
            .await?;
        // A row that is not a session (a malformed key or attribute list) is skipped, not the
        // whole page.
        rows.iter()
            .filter_map(|row| match meta_from_row(row) {
                Err(Error::CorruptRow { key, reason }) => {
                    tracing::warn!(key = %key, %reason, "a row that is not a session was skipped");
                    None
                }
                other => Some(other),
            })
            .collect()
    }

    async fn records(
        &self,
        after: Option<&SessionKey>,
        limit: u32,
        now: EpochMillis,
    ) -> Result<Vec<Record>, Error> {
        let mut after: Option<String> = after.map(|key| key.as_str().to_owned());
        loop {
            let mut statement = Self::query(&self.sql.records[usize::from(after.is_some())]);
            if let Some(after) = &after {
                statement = statement.bind(after.as_str());
            }
            let rows = statement
                .bind(now)
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await?;
            let full = rows.len() >= limit as usize;
            let mut records = Vec::with_capacity(rows.len());
            for row in &rows {
                match meta_from_row(row) {
                    Err(Error::CorruptRow { key, reason }) => {
                        tracing::warn!(key = %key, %reason, "a row that is not a session was skipped");
                    }
                    Err(error) => return Err(error),
                    Ok(meta) => records.push(Record {
                        meta,
                        data: row.try_get("data")?,
                    }),
                }
            }
            // A page of rows that are not sessions only is not the end of the table.
            if !records.is_empty() || !full {
                return Ok(records);
            }
            after = rows
                .last()
                .map(|row| row.try_get::<String, _>("session_id"))
                .transpose()?;
        }
    }

    async fn purge_expired(&self, now: EpochMillis, batch_size: u32) -> Result<u64, Error> {
        let mut conn = self.pool.acquire().await?;
        self.purge_on(&mut conn, now, batch_size, false).await
    }

    /// Under the dialect's lock, on one pooled connection: a node that cannot take it at once
    /// skips the run.
    async fn purge_expired_exclusive(
        &self,
        now: EpochMillis,
        batch_size: u32,
    ) -> Result<Option<u64>, Error> {
        let mut conn = self.pool.acquire().await?;
        if !D::try_lock(&mut conn).await? {
            return Ok(None);
        }
        // The lock belongs to this connection's session (PostgreSQL's advisory lock; MySQL's
        // lease token): it must never go back to the pool holding it. Whatever happens next
        // (an unlock that fails, a run cancelled at shutdown or at its deadline), the connection
        // is closed when dropped: that releases an advisory lock; a lease runs out by itself.
        conn.close_on_drop();
        let result = self.purge_on(&mut conn, now, batch_size, true).await;
        if let Err(error) = D::unlock(&mut conn).await {
            tracing::warn!(
                error = &error as &dyn std::error::Error,
                "cannot release the purge lock; closing its connection releases it"
            );
        }
        result.map(Some)
    }

    /// One `GROUP BY app, node`.
    async fn stats(&self, now: EpochMillis) -> Result<Stats, Error> {
        let rows = Self::query(&self.sql.stats)
            .bind(now)
            .fetch_all(&self.pool)
            .await?;
        let mut stats = Stats::default();
        for row in rows {
            let count = |column: &'static str| -> Result<u64, Error> {
                Ok(row.try_get::<i64, _>(column)?.unsigned_abs())
            };
            let group = StatsGroup {
                sessions: count("sessions")?,
                expired: count("expired")?,
                signed_in: count("signed_in")?,
                bytes: count("bytes")?,
            };
            let (app, node): (String, String) = (row.try_get("app")?, row.try_get("node")?);
            stats.add(&app, &node, group);
        }
        Ok(stats)
    }

    async fn length(&self) -> Result<u64, Error> {
        let n: i64 = Self::query(&"SELECT COUNT(*) AS n FROM stored_http_session".into())
            .fetch_one(&self.pool)
            .await?
            .try_get("n")?;
        Ok(n.unsigned_abs())
    }

    async fn clear(&self) -> Result<(), Error> {
        Self::query(&"DELETE FROM stored_http_session".into())
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}

impl<D: Dialect> SqlStore<D>
where
    for<'c> &'c mut <D::Db as Database>::Connection: Executor<'c, Database = D::Db>,
    <D::Db as Database>::Arguments: sqlx::IntoArguments<D::Db>,
    for<'t> &'t str: sqlx::Encode<'t, D::Db> + sqlx::Type<D::Db>,
    i64: for<'t> sqlx::Encode<'t, D::Db> + for<'r> sqlx::Decode<'r, D::Db> + sqlx::Type<D::Db>,
    String: for<'r> sqlx::Decode<'r, D::Db> + sqlx::Type<D::Db>,
    &'static str: sqlx::ColumnIndex<<D::Db as Database>::Row>,
    <D::Db as Database>::QueryResult: QueryResultExt,
{
    /// The batch statement of `rows` rows (one for any size with arrays).
    fn batch(&self, slots: &BySize, rows: usize, build: fn(usize) -> String) -> Arc<str> {
        let rows = if D::ARRAYS { 1 } else { rows };
        Statements::sized(slots, rows, || build(rows))
    }

    fn upsert<'q>(&self, records: &[&'q Record]) -> Query<'q, D> {
        let sql = self.batch(&self.sql.upsert, records.len(), D::upsert);
        D::bind_batch(Self::query(&sql), records)
    }

    /// The stored version, node, modification and expiry time of each of `records`' keys, looked up
    /// [`MAX_KEYS`] at a time (a PostgreSQL batch may hold any number of records).
    async fn versions(
        &self,
        records: &[&Record],
    ) -> Result<HashMap<String, (i64, String, i64, i64)>, Error> {
        let mut stored = HashMap::with_capacity(records.len());
        for chunk in records.chunks(MAX_KEYS) {
            let sql = Statements::sized(&self.sql.versions, chunk.len(), || {
                format!(
                    "SELECT session_id, version, node, modified_at, expires_at FROM stored_http_session \
                     WHERE session_id IN {}",
                    values::<D>(1, chunk.len())
                )
            });
            let mut query = Self::query(&sql);
            for record in chunk {
                query = query.bind(record.meta.key.as_str());
            }
            for row in query.fetch_all(&self.pool).await? {
                stored.insert(
                    row.try_get("session_id")?,
                    (
                        row.try_get("version")?,
                        row.try_get("node")?,
                        row.try_get("modified_at")?,
                        row.try_get("expires_at")?,
                    ),
                );
            }
        }
        Ok(stored)
    }

    /// Deletes expired rows in batches on one connection until a batch comes back short.
    /// Deletes expired rows in batches of `batch_size`; `locked`: under the purge lock, which is
    /// renewed every [`RENEW_EVERY`] (a lease would run out under a long run).
    async fn purge_on(
        &self,
        conn: &mut <D::Db as Database>::Connection,
        now: EpochMillis,
        batch_size: u32,
        locked: bool,
    ) -> Result<u64, Error> {
        let batch = i64::from(batch_size.max(1));
        let mut total = 0;
        let mut renewed = std::time::Instant::now();
        loop {
            if locked && renewed.elapsed() >= RENEW_EVERY {
                if !D::renew(&mut *conn).await? {
                    tracing::warn!(
                        deleted = total,
                        "the purge lock ran out under a slow run; stopping (another node purges)"
                    );
                    return Ok(total);
                }
                renewed = std::time::Instant::now();
            }
            let done = Self::query(&self.sql.purge)
                .bind(now)
                .bind(batch)
                .execute(&mut *conn)
                .await?;
            total += done.rows_affected();
            if done.rows_affected() < batch.unsigned_abs() {
                return Ok(total);
            }
        }
    }
}

/// `rows_affected` of every driver's query result.
#[doc(hidden)] // a bound of the generic impls, not for use
pub trait QueryResultExt {
    /// Rows the statement changed.
    fn rows_affected(&self) -> u64;
}

#[cfg(feature = "postgres")]
impl QueryResultExt for sqlx::postgres::PgQueryResult {
    fn rows_affected(&self) -> u64 {
        self.rows_affected()
    }
}

#[cfg(feature = "mysql")]
impl QueryResultExt for sqlx::mysql::MySqlQueryResult {
    fn rows_affected(&self) -> u64 {
        self.rows_affected()
    }
}

#[cfg(feature = "sqlite")]
impl QueryResultExt for sqlx::sqlite::SqliteQueryResult {
    fn rows_affected(&self) -> u64 {
        self.rows_affected()
    }
}
