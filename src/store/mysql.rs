//! MySQL and MariaDB. `set_many` is one multi-row `INSERT … ON DUPLICATE KEY UPDATE` per batch.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use sqlx::mysql::{MySqlConnectOptions, MySqlPool, MySqlPoolOptions};
use sqlx::{AssertSqlSafe, Row as _};

use super::sql::{META_COLUMNS, attribute_names, chunks, latest_per_key, meta_from_row, size};
use super::{EpochMillis, Error, ListQuery, Meta, Record, SessionStore, StoreOptions, Update};
use crate::session::SessionKey;

/// The prefix of the purge's `GET_LOCK` name. `GET_LOCK` names are global to the server, so the
/// name is this prefix plus the MD5 of the database's name (at most 55 characters; MySQL allows
/// 64): deployments in two databases of one server do not skip each other's purge. Take it as
/// `GET_LOCK(CONCAT(PURGE_LOCK, MD5(DATABASE())), 0)`.
pub const PURGE_LOCK: &str = "session_failover_purge:";

/// Rows per multi-row statement (13 placeholders each, far below MySQL's 65,535).
const MAX_ROWS: usize = 500;
/// Data per statement, kept well below MariaDB's default `max_allowed_packet` (16 MiB).
const MAX_BYTES: usize = 4 * 1024 * 1024;

/// The update part of every upsert: each column takes the new value only if the new version is
/// higher. MySQL evaluates assignments left to right, so `version` must come last.
const ON_DUPLICATE: &str = " ON DUPLICATE KEY UPDATE \
     app = IF(version < VALUES(version), VALUES(app), app), \
     context_path = IF(version < VALUES(version), VALUES(context_path), context_path), \
     node = IF(version < VALUES(version), VALUES(node), node), \
     principal = IF(version < VALUES(version), VALUES(principal), principal), \
     modified_at = IF(version < VALUES(version), VALUES(modified_at), modified_at), \
     expires_at = IF(version < VALUES(version), VALUES(expires_at), expires_at), \
     max_inactive_secs = IF(version < VALUES(version), VALUES(max_inactive_secs), max_inactive_secs), \
     attributes = IF(version < VALUES(version), VALUES(attributes), attributes), \
     size_bytes = IF(version < VALUES(version), VALUES(size_bytes), size_bytes), \
     data = IF(version < VALUES(version), VALUES(data), data), \
     version = IF(version < VALUES(version), VALUES(version), version)";

/// The SQL of one store: fixed statements built in [`MySqlStore::connect`], and the multi-row
/// upsert for each batch size, built once on first use.
#[derive(Debug)]
struct Statements {
    get: Arc<str>,
    list: Arc<str>,
    upsert: Vec<OnceLock<Arc<str>>>,
    update: Vec<OnceLock<Arc<str>>>,
    versions: Vec<OnceLock<Arc<str>>>,
    delete: Vec<OnceLock<Arc<str>>>,
}

/// The statement of `rows` rows from `slots`, built by `build` on first use.
fn cached(slots: &[OnceLock<Arc<str>>], rows: usize, build: impl FnOnce() -> String) -> Arc<str> {
    Arc::clone(slots[rows].get_or_init(|| build().into()))
}

fn placeholders(n: usize) -> String {
    vec!["?"; n].join(", ")
}

impl Statements {
    fn new() -> Self {
        Self {
            get: format!(
                "SELECT {META_COLUMNS}, data FROM stored_http_session \
                 WHERE session_id = ? AND expires_at > ?"
            )
            .into(),
            list: format!(
                "SELECT {META_COLUMNS} FROM stored_http_session \
                 WHERE (? IS NULL OR app = ?) AND (? IS NULL OR principal = ?) \
                 AND (? IS NULL OR node = ?) AND (? IS NULL OR session_id > ?) \
                 ORDER BY session_id LIMIT ?"
            )
            .into(),
            upsert: (0..=MAX_ROWS).map(|_| OnceLock::new()).collect(),
            update: (0..=MAX_ROWS).map(|_| OnceLock::new()).collect(),
            versions: (0..=MAX_ROWS).map(|_| OnceLock::new()).collect(),
            delete: (0..=MAX_ROWS).map(|_| OnceLock::new()).collect(),
        }
    }

    /// The upsert of `rows` rows (1..=MAX_ROWS).
    fn upsert(&self, rows: usize) -> Arc<str> {
        cached(&self.upsert, rows, || {
            let values = vec![format!("({})", placeholders(13)); rows].join(", ");
            format!(
                "INSERT INTO stored_http_session ({META_COLUMNS}, data) VALUES {values}{ON_DUPLICATE}"
            )
        })
    }

    /// The conditional update of `rows` rows: a join with the new rows as a derived table.
    fn update(&self, rows: usize) -> Arc<str> {
        cached(&self.update, rows, || {
            let first = "SELECT ? AS session_id, ? AS app, ? AS context_path, ? AS node, \
                 ? AS principal, ? AS created_at, ? AS modified_at, ? AS expires_at, \
                 ? AS max_inactive_secs, ? AS version, ? AS attributes, ? AS size_bytes, ? AS data";
            let rest = format!(" UNION ALL SELECT {}", placeholders(13)).repeat(rows - 1);
            format!(
                "UPDATE stored_http_session t JOIN ({first}{rest}) n ON t.session_id = n.session_id \
                 SET t.app = n.app, t.context_path = n.context_path, t.node = n.node, \
                 t.principal = n.principal, t.created_at = n.created_at, \
                 t.modified_at = n.modified_at, t.expires_at = n.expires_at, \
                 t.max_inactive_secs = n.max_inactive_secs, t.attributes = n.attributes, \
                 t.size_bytes = n.size_bytes, t.data = n.data, t.version = n.version \
                 WHERE t.version < n.version"
            )
        })
    }

    /// The stored versions of `rows` keys.
    fn versions(&self, rows: usize) -> Arc<str> {
        cached(&self.versions, rows, || {
            format!(
                "SELECT session_id, version, node, modified_at FROM stored_http_session \
                 WHERE session_id IN ({})",
                placeholders(rows)
            )
        })
    }

    /// The delete of `rows` keys.
    fn delete(&self, rows: usize) -> Arc<str> {
        cached(&self.delete, rows, || {
            format!(
                "DELETE FROM stored_http_session WHERE session_id IN ({})",
                placeholders(rows)
            )
        })
    }
}

/// A [`SessionStore`] on MySQL or MariaDB.
#[derive(Clone, Debug)]
pub struct MySqlStore {
    pool: MySqlPool,
    sql: Arc<Statements>,
}

impl MySqlStore {
    /// Connects to a `mysql://` (or `mariadb://`) URL with a pool of `options.pool_size`
    /// connections, waiting at most `options.timeout` for one. Connections are not pinged before
    /// use.
    pub async fn connect(url: &str, options: &StoreOptions) -> Result<Self, Error> {
        let url = match url.strip_prefix("mariadb://") {
            Some(rest) => format!("mysql://{rest}"),
            None => url.to_owned(),
        };
        let connect: MySqlConnectOptions = url.parse()?;
        let pool = MySqlPoolOptions::new()
            .max_connections(options.pool_size)
            .acquire_timeout(options.timeout)
            .test_before_acquire(false)
            .connect_with(connect)
            .await
            .map_err(|source| Error::Connect {
                url: super::redact_url(&url),
                source,
            })?;
        Ok(Self {
            pool,
            sql: Arc::new(Statements::new()),
        })
    }

    /// Applies the migrations in `migrations/mysql/`.
    pub async fn migrate(&self) -> Result<(), Error> {
        sqlx::migrate!("migrations/mysql").run(&self.pool).await?;
        Ok(())
    }

    /// The underlying pool (for tests and tools that read the table directly).
    pub fn pool(&self) -> &MySqlPool {
        &self.pool
    }

    async fn upsert(&self, records: &[&Record]) -> Result<(), Error> {
        let query = sqlx::query(AssertSqlSafe(self.sql.upsert(records.len())));
        bind_rows(query, records).execute(&self.pool).await?;
        Ok(())
    }

    /// Updates one chunk; the outcome of each of its (distinct) records.
    async fn update_chunk(&self, records: &[&Record]) -> Result<Vec<Update>, Error> {
        let query = sqlx::query(AssertSqlSafe(self.sql.update(records.len())));
        let done = bind_rows(query, records).execute(&self.pool).await?;
        if usize::try_from(done.rows_affected()).is_ok_and(|n| n == records.len()) {
            return Ok(vec![Update::Written; records.len()]);
        }
        // Some were not updated: read what the store holds to tell which.
        let mut query = sqlx::query(AssertSqlSafe(self.sql.versions(records.len())));
        for record in records {
            query = query.bind(record.meta.key.as_str());
        }
        let stored: HashMap<String, (i64, String, i64)> = query
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|row| {
                Ok((
                    row.try_get("session_id")?,
                    (
                        row.try_get("version")?,
                        row.try_get("node")?,
                        row.try_get("modified_at")?,
                    ),
                ))
            })
            .collect::<Result<_, sqlx::Error>>()?;
        Ok(records
            .iter()
            .map(|r| match stored.get(r.meta.key.as_str()) {
                None => Update::Missing,
                Some((version, node, modified)) => {
                    let ours = *version == r.meta.version
                        && *node == r.meta.node
                        && *modified == r.meta.modified_at;
                    if ours {
                        Update::Written
                    } else {
                        Update::Superseded
                    }
                }
            })
            .collect())
    }
}

/// Binds the 13 columns of each record, in table order.
fn bind_rows<'q>(
    mut query: sqlx::query::Query<'q, sqlx::MySql, sqlx::mysql::MySqlArguments>,
    records: &[&'q Record],
) -> sqlx::query::Query<'q, sqlx::MySql, sqlx::mysql::MySqlArguments> {
    {
        for record in records {
            let m = &record.meta;
            query = query
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
                .bind(record.data.as_slice());
        }
    }
    query
}

#[async_trait::async_trait]
impl SessionStore for MySqlStore {
    async fn get(&self, key: &SessionKey, now: EpochMillis) -> Result<Option<Record>, Error> {
        let row = sqlx::query(AssertSqlSafe(Arc::clone(&self.sql.get)))
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
        self.upsert(&[record]).await
    }

    async fn update(&self, record: &Record) -> Result<Update, Error> {
        let m = &record.meta;
        let done = sqlx::query(
            "UPDATE stored_http_session SET app = ?, context_path = ?, node = ?, principal = ?, \
             created_at = ?, modified_at = ?, expires_at = ?, max_inactive_secs = ?, version = ?, \
             attributes = ?, size_bytes = ?, data = ? WHERE session_id = ? AND version < ?",
        )
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
        .bind(m.key.as_str())
        .bind(m.version)
        .execute(&self.pool)
        .await?;
        if done.rows_affected() > 0 {
            return Ok(Update::Written);
        }
        let exists = sqlx::query("SELECT 1 FROM stored_http_session WHERE session_id = ?")
            .bind(m.key.as_str())
            .fetch_optional(&self.pool)
            .await?;
        Ok(if exists.is_some() {
            Update::Superseded
        } else {
            Update::Missing
        })
    }

    /// One multi-row statement per batch of up to 500 rows or about 4 MiB of data.
    async fn set_many(&self, records: &[Record]) -> Result<(), Error> {
        let records = latest_per_key(records);
        for chunk in chunks(&records, MAX_ROWS, MAX_BYTES) {
            self.upsert(chunk).await?;
        }
        Ok(())
    }

    /// One `UPDATE … JOIN (derived table)` per chunk; a `SELECT` of the chunk's versions only
    /// when some row was not updated.
    async fn update_many(&self, records: &[Record]) -> Result<Vec<Update>, Error> {
        let latest = latest_per_key(records);
        let mut outcome: HashMap<&str, Update> = HashMap::with_capacity(latest.len());
        for chunk in chunks(&latest, MAX_ROWS, MAX_BYTES) {
            for (record, update) in chunk.iter().zip(self.update_chunk(chunk).await?) {
                outcome.insert(record.meta.key.as_str(), update);
            }
        }
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
        for chunk in keys.chunks(MAX_ROWS) {
            let mut query = sqlx::query(AssertSqlSafe(self.sql.delete(chunk.len())));
            for key in chunk {
                query = query.bind(key.as_str());
            }
            removed += query.execute(&self.pool).await?.rows_affected();
        }
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
        let after = query.after.as_ref().map(SessionKey::as_str);
        let rows = sqlx::query(AssertSqlSafe(Arc::clone(&self.sql.list)))
            .bind(query.app.as_deref())
            .bind(query.app.as_deref())
            .bind(query.principal.as_deref())
            .bind(query.principal.as_deref())
            .bind(query.node.as_deref())
            .bind(query.node.as_deref())
            .bind(after)
            .bind(after)
            .bind(i64::from(query.limit))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(meta_from_row).collect()
    }

    /// Under `GET_LOCK` on one pooled connection: a node that cannot take it at once skips the
    /// run.
    async fn purge_expired_exclusive(
        &self,
        now: EpochMillis,
        batch_size: u32,
    ) -> Result<Option<u64>, Error> {
        let mut conn = self.pool.acquire().await?;
        let locked: Option<i64> =
            sqlx::query_scalar("SELECT GET_LOCK(CONCAT(?, MD5(DATABASE())), 0)")
                .bind(PURGE_LOCK)
                .fetch_one(&mut *conn)
                .await?;
        if locked != Some(1) {
            return Ok(None);
        }
        let batch = i64::from(batch_size.max(1));
        let result = async {
            let mut total = 0;
            loop {
                let done = sqlx::query(
                    "DELETE FROM stored_http_session WHERE expires_at <= ? ORDER BY expires_at LIMIT ?",
                )
                .bind(now)
                .bind(batch)
                .execute(&mut *conn)
                .await?;
                total += done.rows_affected();
                if done.rows_affected() < batch.unsigned_abs() {
                    return Ok::<_, Error>(total);
                }
            }
        }
        .await;
        sqlx::query("SELECT RELEASE_LOCK(CONCAT(?, MD5(DATABASE())))")
            .bind(PURGE_LOCK)
            .execute(&mut *conn)
            .await?;
        result.map(Some)
    }

    async fn purge_expired(&self, now: EpochMillis, batch_size: u32) -> Result<u64, Error> {
        let batch = batch_size.max(1);
        let mut total = 0;
        loop {
            let done = sqlx::query(
                "DELETE FROM stored_http_session WHERE expires_at <= ? ORDER BY expires_at LIMIT ?",
            )
            .bind(now)
            .bind(i64::from(batch))
            .execute(&self.pool)
            .await?;
            total += done.rows_affected();
            if done.rows_affected() < u64::from(batch) {
                return Ok(total);
            }
        }
    }
}
