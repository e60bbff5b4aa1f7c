//! MySQL and MariaDB: batches are multi-row statements (up to 500 rows or 4 MiB); the purge
//! lock is `GET_LOCK`, named per database.

use sqlx::mysql::{MySqlConnectOptions, MySqlConnection, MySqlPool};

use super::{COLUMNS, Dialect, Query, bind_rows, values};
use crate::store::{Error, Record, StoreOptions};

/// The prefix of the purge's `GET_LOCK` name. `GET_LOCK` names are global to the server, so the
/// name is this prefix plus the MD5 of the database's name (at most 55 characters; MySQL allows
/// 64): deployments in two databases of one server do not skip each other's purge. Take it as
/// `GET_LOCK(CONCAT(PURGE_LOCK, MD5(DATABASE())), 0)`.
#[doc(hidden)] // test support: the lock tests hold to prove exclusion
pub const PURGE_LOCK: &str = "session_failover_purge:";

/// The MySQL/MariaDB dialect of [`super::SqlStore`].
#[derive(Debug)]
pub struct MySql;

impl Dialect for MySql {
    type Db = sqlx::MySql;

    const RETURNING: bool = false;
    const ARRAYS: bool = false;
    /// 13 placeholders a row, far below MySQL's 65,535.
    const MAX_ROWS: usize = 500;
    /// Well below MariaDB's default `max_allowed_packet` (16 MiB).
    const MAX_BYTES: usize = 4 * 1024 * 1024;
    const BIGINT: &'static str = "SIGNED";
    const PURGE: &'static str =
        "DELETE FROM stored_http_session WHERE expires_at <= ? ORDER BY expires_at LIMIT ?";

    fn param(_n: usize) -> String {
        "?".to_owned()
    }

    /// Each column takes the new value only if the new version is higher; MySQL evaluates
    /// assignments left to right, so `version` comes last.
    fn upsert(rows: usize) -> String {
        let take = |c: &str| format!("{c} = IF(version < VALUES(version), VALUES({c}), {c})");
        // created_at is left alone: a session's creation time never changes.
        let set: Vec<String> = COLUMNS
            .split(", ")
            .filter(|c| !["session_id", "created_at", "version"].contains(c))
            .chain(["version"])
            .map(take)
            .collect();
        format!(
            "INSERT INTO stored_http_session ({COLUMNS}) VALUES {} ON DUPLICATE KEY UPDATE {}",
            values::<Self>(rows, 13),
            set.join(", ")
        )
    }

    /// A join with the new rows as a derived table (MySQL has no `UPDATE … FROM`).
    fn update(rows: usize) -> String {
        let first: Vec<String> = COLUMNS.split(", ").map(|c| format!("? AS {c}")).collect();
        let rest = format!(" UNION ALL SELECT {}", vec!["?"; 13].join(", ")).repeat(rows - 1);
        let set: Vec<String> = COLUMNS
            .split(", ")
            .filter(|c| *c != "session_id" && *c != "version")
            .chain(["version"])
            .map(|c| format!("t.{c} = n.{c}"))
            .collect();
        format!(
            "UPDATE stored_http_session t JOIN (SELECT {}{rest}) n ON t.session_id = n.session_id \
             SET {} WHERE t.version = n.version - 1 AND t.expires_at > n.modified_at",
            first.join(", "),
            set.join(", ")
        )
    }

    fn bind_batch<'q>(query: Query<'q, Self>, records: &[&'q Record]) -> Query<'q, Self> {
        bind_rows(query, records)
    }

    async fn connect(url: &str, options: &StoreOptions) -> Result<MySqlPool, Error> {
        let url = match url.strip_prefix("mariadb://") {
            Some(rest) => format!("mysql://{rest}"),
            None => url.to_owned(),
        };
        let connect: MySqlConnectOptions = url.parse()?;
        super::pool(&url, options, connect).await
    }

    async fn migrate(pool: &MySqlPool) -> Result<(), Error> {
        sqlx::migrate!("migrations/mysql").run(pool).await?;
        Ok(())
    }

    async fn try_lock(conn: &mut MySqlConnection) -> Result<bool, sqlx::Error> {
        let locked: Option<i64> =
            sqlx::query_scalar("SELECT GET_LOCK(CONCAT(?, MD5(DATABASE())), 0)")
                .bind(PURGE_LOCK)
                .fetch_one(conn)
                .await?;
        Ok(locked == Some(1))
    }

    async fn unlock(conn: &mut MySqlConnection) -> Result<(), sqlx::Error> {
        sqlx::query("SELECT RELEASE_LOCK(CONCAT(?, MD5(DATABASE())))")
            .bind(PURGE_LOCK)
            .execute(conn)
            .await
            .map(drop)
    }
}
