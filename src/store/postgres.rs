//! PostgreSQL: what clusters share. `set_many` is one `UNNEST` upsert per batch.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use sqlx::AssertSqlSafe;

use sqlx::Row as _;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

use super::sql::{META_COLUMNS, attribute_names, latest_per_key, meta_from_row, size};
use super::{EpochMillis, Error, ListQuery, Meta, Record, SessionStore, StoreOptions, Update};
use crate::session::SessionKey;

/// The `SET` part of every upsert: a row is replaced only by a newer version.
const ON_CONFLICT: &str = "ON CONFLICT (session_id) DO UPDATE SET app = excluded.app, \
     context_path = excluded.context_path, node = excluded.node, principal = excluded.principal, \
     modified_at = excluded.modified_at, expires_at = excluded.expires_at, \
     max_inactive_secs = excluded.max_inactive_secs, version = excluded.version, \
     attributes = excluded.attributes, size_bytes = excluded.size_bytes, data = excluded.data \
     WHERE stored_http_session.version < excluded.version";

/// The advisory lock key of the purge (an arbitrary constant: "SFPURGE" in ASCII).
pub const PURGE_LOCK: i64 = 0x0053_4650_5552_4745;

/// The SQL of one store, built once in [`PgStore::connect`].
#[derive(Debug)]
struct Statements {
    get: Arc<str>,
    update: Arc<str>,
    update_many: Arc<str>,
    upsert_one: Arc<str>,
    upsert_many: Arc<str>,
    list: Arc<str>,
}

impl Statements {
    fn new() -> Self {
        let insert = format!("INSERT INTO stored_http_session ({META_COLUMNS}, data)");
        Self {
            get: format!(
                "SELECT {META_COLUMNS}, data FROM stored_http_session \
                 WHERE session_id = $1 AND expires_at > $2"
            )
            .into(),
            update: "UPDATE stored_http_session SET app = $2, context_path = $3, node = $4, \
                 principal = $5, created_at = $6, modified_at = $7, expires_at = $8, \
                 max_inactive_secs = $9, version = $10, attributes = $11, size_bytes = $12, \
                 data = $13 WHERE session_id = $1 AND version < $10"
                .into(),
            update_many: "UPDATE stored_http_session AS t SET app = n.app, \
                 context_path = n.context_path, node = n.node, principal = n.principal, \
                 created_at = n.created_at, modified_at = n.modified_at, expires_at = n.expires_at, \
                 max_inactive_secs = n.max_inactive_secs, version = n.version, \
                 attributes = n.attributes, size_bytes = n.size_bytes, data = n.data \
                 FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], \
                 $6::int8[], $7::int8[], $8::int8[], $9::int8[], $10::int8[], $11::text[], \
                 $12::int8[], $13::bytea[]) AS n(session_id, app, context_path, node, principal, \
                 created_at, modified_at, expires_at, max_inactive_secs, version, attributes, \
                 size_bytes, data) \
                 WHERE t.session_id = n.session_id AND t.version < n.version \
                 RETURNING t.session_id"
                .into(),
            upsert_one: format!(
                "{insert} VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) {ON_CONFLICT}"
            )
            .into(),
            upsert_many: format!(
                "{insert} SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], \
                 $5::text[], $6::int8[], $7::int8[], $8::int8[], $9::int8[], $10::int8[], \
                 $11::text[], $12::int8[], $13::bytea[]) {ON_CONFLICT}"
            )
            .into(),
            list: format!(
                "SELECT {META_COLUMNS} FROM stored_http_session \
                 WHERE ($1::text IS NULL OR app = $1) AND ($2::text IS NULL OR principal = $2) \
                 AND ($3::text IS NULL OR node = $3) AND ($4::text IS NULL OR session_id > $4) \
                 ORDER BY session_id LIMIT $5"
            )
            .into(),
        }
    }
}

/// A [`SessionStore`] on PostgreSQL.
#[derive(Clone, Debug)]
pub struct PgStore {
    pool: PgPool,
    sql: Arc<Statements>,
}

impl PgStore {
    /// Connects to a `postgres://` URL with a pool of `options.pool_size` connections, waiting at
    /// most `options.timeout` for one. Connections are not pinged before use.
    pub async fn connect(url: &str, options: &StoreOptions) -> Result<Self, Error> {
        let connect: PgConnectOptions = url.parse()?;
        let pool = PgPoolOptions::new()
            .max_connections(options.pool_size)
            .acquire_timeout(options.timeout)
            .test_before_acquire(false)
            .connect_with(connect)
            .await
            .map_err(|source| Error::Connect {
                url: super::redact_url(url),
                source,
            })?;
        Ok(Self {
            pool,
            sql: Arc::new(Statements::new()),
        })
    }

    /// Applies the migrations in `migrations/postgres/`.
    pub async fn migrate(&self) -> Result<(), Error> {
        sqlx::migrate!("migrations/postgres")
            .run(&self.pool)
            .await?;
        Ok(())
    }

    /// The underlying pool (for tests and tools that read the table directly).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Binds the 13 columns of `records` as arrays, in table order, to `sql`.
    fn bind_arrays<'q>(
        &self,
        sql: &Arc<str>,
        records: &[&'q Record],
    ) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
        let text = |f: &dyn Fn(&Record) -> String| records.iter().map(|r| f(r)).collect::<Vec<_>>();
        let number = |f: &dyn Fn(&Record) -> i64| records.iter().map(|r| f(r)).collect::<Vec<_>>();
        sqlx::query(AssertSqlSafe(Arc::clone(sql)))
            .bind(text(&|r| r.meta.key.as_str().to_owned()))
            .bind(text(&|r| r.meta.app.clone()))
            .bind(text(&|r| r.meta.context_path.clone()))
            .bind(text(&|r| r.meta.node.clone()))
            .bind(
                records
                    .iter()
                    .map(|r| r.meta.principal.as_deref())
                    .collect::<Vec<_>>(),
            )
            .bind(number(&|r| r.meta.created_at))
            .bind(number(&|r| r.meta.modified_at))
            .bind(number(&|r| r.meta.expires_at))
            .bind(number(&|r| r.meta.max_inactive_secs))
            .bind(number(&|r| r.meta.version))
            .bind(text(&|r| attribute_names(&r.meta)))
            .bind(number(&size))
            .bind(
                records
                    .iter()
                    .map(|r| r.data.as_slice())
                    .collect::<Vec<_>>(),
            )
    }

    /// Binds a record's 13 columns, in table order, to `sql`.
    fn bind_row<'q>(
        &self,
        sql: &Arc<str>,
        record: &'q Record,
    ) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
        let m = &record.meta;
        sqlx::query(AssertSqlSafe(Arc::clone(sql)))
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
            .bind(record.data.as_slice())
    }
}

#[async_trait::async_trait]
impl SessionStore for PgStore {
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
        self.bind_row(&self.sql.upsert_one, record)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn update(&self, record: &Record) -> Result<Update, Error> {
        let done = self
            .bind_row(&self.sql.update, record)
            .execute(&self.pool)
            .await?;
        if done.rows_affected() > 0 {
            return Ok(Update::Written);
        }
        let exists = sqlx::query("SELECT 1 FROM stored_http_session WHERE session_id = $1")
            .bind(record.meta.key.as_str())
            .fetch_optional(&self.pool)
            .await?;
        Ok(if exists.is_some() {
            Update::Superseded
        } else {
            Update::Missing
        })
    }

    /// One statement for the whole batch: the columns travel as 13 arrays.
    async fn set_many(&self, records: &[Record]) -> Result<(), Error> {
        let records = latest_per_key(records);
        if records.is_empty() {
            return Ok(());
        }
        self.bind_arrays(&self.sql.upsert_many, &records)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// One `UPDATE … FROM UNNEST` for the batch; a second statement only if some row was not
    /// updated, to tell a newer row from a missing one.
    async fn update_many(&self, records: &[Record]) -> Result<Vec<Update>, Error> {
        if records.is_empty() {
            return Ok(Vec::new());
        }
        let latest = latest_per_key(records);
        let written: HashSet<String> = self
            .bind_arrays(&self.sql.update_many, &latest)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|row| row.try_get::<String, _>(0))
            .collect::<Result<_, _>>()?;
        let mut present = HashSet::new();
        if written.len() < latest.len() {
            let unwritten: Vec<&str> = latest
                .iter()
                .map(|r| r.meta.key.as_str())
                .filter(|k| !written.contains(*k))
                .collect();
            present = sqlx::query_scalar::<_, String>(
                "SELECT session_id FROM stored_http_session WHERE session_id = ANY($1)",
            )
            .bind(unwritten)
            .fetch_all(&self.pool)
            .await?
            .into_iter()
            .collect();
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
                if written.contains(key) && sent.get(key) == Some(&r.meta.version) {
                    Update::Written
                } else if written.contains(key) || present.contains(key) {
                    Update::Superseded
                } else {
                    Update::Missing
                }
            })
            .collect())
    }

    async fn destroy_many(&self, keys: &[SessionKey]) -> Result<u64, Error> {
        let keys: Vec<&str> = keys.iter().map(SessionKey::as_str).collect();
        let done = sqlx::query("DELETE FROM stored_http_session WHERE session_id = ANY($1)")
            .bind(keys)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }

    async fn destroy(&self, key: &SessionKey) -> Result<bool, Error> {
        let done = sqlx::query("DELETE FROM stored_http_session WHERE session_id = $1")
            .bind(key.as_str())
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn exists(&self, key: &SessionKey, now: EpochMillis) -> Result<bool, Error> {
        let row = sqlx::query(
            "SELECT 1 FROM stored_http_session WHERE session_id = $1 AND expires_at > $2",
        )
        .bind(key.as_str())
        .bind(now)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.is_some())
    }

    async fn ttl(&self, key: &SessionKey, now: EpochMillis) -> Result<Option<Duration>, Error> {
        let expires: Option<i64> = sqlx::query_scalar(
            "SELECT expires_at FROM stored_http_session WHERE session_id = $1 AND expires_at > $2",
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
            "UPDATE stored_http_session SET modified_at = $1, expires_at = $2 \
             WHERE session_id = $3 AND expires_at > $1",
        )
        .bind(modified_at)
        .bind(expires_at)
        .bind(key.as_str())
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
        let rows = sqlx::query(AssertSqlSafe(Arc::clone(&self.sql.list)))
            .bind(query.app.as_deref())
            .bind(query.principal.as_deref())
            .bind(query.node.as_deref())
            .bind(query.after.as_ref().map(SessionKey::as_str))
            .bind(i64::from(query.limit))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(meta_from_row).collect()
    }

    /// Under a session-level advisory lock on one pooled connection: a node that cannot take it
    /// at once skips the run.
    async fn purge_expired_exclusive(
        &self,
        now: EpochMillis,
        batch_size: u32,
    ) -> Result<Option<u64>, Error> {
        let mut conn = self.pool.acquire().await?;
        let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(PURGE_LOCK)
            .fetch_one(&mut *conn)
            .await?;
        if !locked {
            return Ok(None);
        }
        let batch = i64::from(batch_size.max(1));
        let result = async {
            let mut total = 0;
            loop {
                let done = sqlx::query(
                    "DELETE FROM stored_http_session WHERE session_id IN \
                     (SELECT session_id FROM stored_http_session WHERE expires_at <= $1 LIMIT $2)",
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
        sqlx::query("SELECT pg_advisory_unlock($1)")
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
                "DELETE FROM stored_http_session WHERE session_id IN \
                 (SELECT session_id FROM stored_http_session WHERE expires_at <= $1 LIMIT $2)",
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
