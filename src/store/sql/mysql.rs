//! MySQL and MariaDB: batches are multi-row statements (up to 500 rows or 4 MiB); the purge
//! lock is a lease row in `session_failover_lock` (per database, and cluster-wide on Galera,
//! where `GET_LOCK` is local to each node).

use sqlx::mysql::{MySqlConnectOptions, MySqlConnection, MySqlPool};

use super::{COLUMNS, Dialect, Query, bind_rows, values};
use crate::store::{Error, Record, StoreOptions};

/// The name of the purge's lease row in `session_failover_lock`. The table is per database, so
/// deployments in two databases of one server do not skip each other's purge. A node holds it
/// while `holder` is its token and `expires_at` (epoch ms) is ahead.
#[doc(hidden)] // test support: the lock tests hold it to prove exclusion
pub const PURGE_LOCK: &str = "purge";

/// How long a purge lease lasts: three renewals (a running purge renews it every
/// `RENEW_EVERY`). A node that dies holding it, or a run cancelled at shutdown, delays the
/// others' purge that long at most.
const LEASE_MS: i64 = super::store::RENEW_EVERY.as_secs().cast_signed() * 3 * 1000;

/// On a Galera node, reads wait until the node has applied every write the cluster committed
/// before them (`wsrep_sync_wait = 1`): a session written through one node and restored
/// through another is read as written, not as it was. Elsewhere (no `wsrep_on`, or off):
/// nothing to do.
async fn read_committed_writes(conn: &mut MySqlConnection) -> Result<(), sqlx::Error> {
    let wsrep: Option<(String, String)> = sqlx::query_as("SHOW VARIABLES LIKE 'wsrep_on'")
        .fetch_optional(&mut *conn)
        .await?;
    if wsrep.is_some_and(|(_, on)| on.eq_ignore_ascii_case("ON")) {
        sqlx::query("SET SESSION wsrep_sync_wait = 1")
            .execute(conn)
            .await?;
    }
    Ok(())
}

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
        super::pool_with(&url, options, connect, |conn| {
            Box::pin(read_committed_writes(conn))
        })
        .await
    }

    /// Applies the migrations. sqlx serialises migrators with `GET_LOCK`, which is local to
    /// one server: nodes starting at once on different Galera nodes run them concurrently, and
    /// all but one find the other's migration half done (its row written, its DDL running) or
    /// lose the insert of that row, or their DDL loses a certification conflict, which leaves
    /// their own row half done. Those wait and try again, for up to a minute. Every migration
    /// of this dialect is idempotent (`IF NOT EXISTS`), so a half-done one is run again: its
    /// row is removed first (the node that wrote it, if still running it, finds it gone when it
    /// marks it done, which sqlx does not check).
    async fn migrate(pool: &MySqlPool) -> Result<(), Error> {
        use sqlx::migrate::MigrateError;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let error = match sqlx::migrate!("migrations/mysql").run(pool).await {
                Ok(()) => return Ok(()),
                Err(error) => error,
            };
            let concurrent = match &error {
                MigrateError::Dirty(_) => true,
                MigrateError::Execute(sqlx::Error::Database(e))
                | MigrateError::ExecuteMigration(sqlx::Error::Database(e), _) => e
                    .try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>()
                    // Duplicate key (the migration's row), deadlock or certification
                    // conflict, table already exists.
                    .is_some_and(|e| matches!(e.number(), 1062 | 1213 | 1050)),
                _ => false,
            };
            if !concurrent || std::time::Instant::now() >= deadline {
                return Err(error.into());
            }
            if let MigrateError::Dirty(version) = error {
                // Ignored if it fails: the next attempt says what is wrong.
                let _ = sqlx::query(
                    "DELETE FROM _sqlx_migrations WHERE version = ? AND success = FALSE",
                )
                .bind(version)
                .execute(pool)
                .await;
            }
            tracing::info!(
                error = &error as &dyn std::error::Error,
                "another node is applying the session store's migrations; waiting for it"
            );
            tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        }
    }

    /// Takes the lease if nobody holds it or it ran out; the token lives in the connection's
    /// `@session_failover_holder`, for [`MySql::unlock`]. Two nodes of a Galera cluster taking
    /// it together conflict at commit (deadlock, 1213): the loser has not taken it.
    async fn try_lock(conn: &mut MySqlConnection) -> Result<bool, sqlx::Error> {
        let now = crate::store::now_millis();
        sqlx::query("SET @session_failover_holder = UUID()")
            .execute(&mut *conn)
            .await?;
        // Assignments run left to right: `holder` is decided on the old `expires_at`, which
        // `expires_at`'s own assignment then still sees.
        let taken = sqlx::query(
            "INSERT INTO session_failover_lock (name, holder, expires_at) \
             VALUES (?, @session_failover_holder, ?) \
             ON DUPLICATE KEY UPDATE \
             holder = IF(expires_at <= ?, VALUES(holder), holder), \
             expires_at = IF(expires_at <= ?, VALUES(expires_at), expires_at)",
        )
        .bind(PURGE_LOCK)
        .bind(now.saturating_add(LEASE_MS))
        .bind(now)
        .bind(now)
        .execute(&mut *conn)
        .await;
        match taken {
            Ok(_) => {}
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("40001") => {
                return Ok(false);
            }
            Err(e) => return Err(e),
        }
        let mine: Option<i64> = sqlx::query_scalar(
            "SELECT holder = @session_failover_holder FROM session_failover_lock WHERE name = ?",
        )
        .bind(PURGE_LOCK)
        .fetch_optional(conn)
        .await?;
        Ok(mine == Some(1))
    }

    async fn renew(conn: &mut MySqlConnection) -> Result<bool, sqlx::Error> {
        let done = sqlx::query(
            "UPDATE session_failover_lock SET expires_at = ? \
             WHERE name = ? AND holder = @session_failover_holder",
        )
        .bind(crate::store::now_millis().saturating_add(LEASE_MS))
        .bind(PURGE_LOCK)
        .execute(conn)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn unlock(conn: &mut MySqlConnection) -> Result<(), sqlx::Error> {
        sqlx::query(
            "DELETE FROM session_failover_lock WHERE name = ? AND holder = @session_failover_holder",
        )
        .bind(PURGE_LOCK)
        .execute(conn)
        .await
        .map(drop)
    }
}
