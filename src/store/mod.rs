//! Where sessions are persisted: the store traits and their backends.
//!
//! [`SessionStore`] is what the failover filter and its writer use: `get`, `set_many`,
//! `update_many`, `destroy_many` and `reset_timer` (five required methods; `set`, `update` and
//! `destroy` default to the batch forms). [`SessionAdmin`] adds what operators' tools use:
//! `list`, `stats`, `purge_expired`, `length`, `clear`, `exists` and `ttl`. Every backend keeps
//! the same logical row, [`Record`], the `stored_http_session` table of DESIGN §3.
//!
//! Times are epoch milliseconds (UTC) passed in by the caller, so expiry is deterministic in
//! tests. A row whose `expires_at` is not after `now` is treated as absent by every read.
//!
//! Backends: `SqlStore` over a `sql::Dialect` — `SqliteStore` (the embedded default,
//! feature `sqlite`), `PgStore` (feature `postgres`), `MySqlStore` (MySQL and MariaDB,
//! feature `mysql`) — and [`MemoryStore`] (for tests and embedding). A store of your own plugs
//! in by implementing the traits.

mod api;
mod custom;
mod error;
mod memory;
mod record;
#[cfg(feature = "redis")]
mod redis;
#[cfg(feature = "sql")]
pub mod sql;
#[doc(hidden)]
pub mod testing;

use std::sync::Arc;
use std::time::Duration;

pub use api::{SessionAdmin, SessionStore};
pub use custom::{Adapted, CustomStore, Opener, register};
pub use error::Error;
pub use memory::MemoryStore;
#[cfg(feature = "sql")]
pub(crate) use record::StatsGroup;
pub use record::{EpochMillis, ListQuery, Meta, Pushed, Record, Stats, Update, now_millis};
#[cfg(feature = "redis")]
pub use redis::RedisStore;
#[cfg(feature = "mysql")]
pub use sql::MYSQL_PURGE_LOCK;
#[cfg(feature = "postgres")]
pub use sql::PG_PURGE_LOCK;
#[cfg(feature = "sql")]
pub use sql::SqlStore;

/// The SQLite store.
#[cfg(feature = "sqlite")]
pub type SqliteStore = SqlStore<sql::Sqlite>;
/// The PostgreSQL store.
#[cfg(feature = "postgres")]
pub type PgStore = SqlStore<sql::Postgres>;
/// The MySQL and MariaDB store.
#[cfg(feature = "mysql")]
pub type MySqlStore = SqlStore<sql::MySql>;

/// How to connect to a store (`session.store.*`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreOptions {
    /// Apply the migrations when opening (`session.store.migrate`).
    pub migrate: bool,
    /// Create the database if it does not exist (the SQLite file). The server and `migrate`
    /// do; the operators' tools (`sessions …`) do not, so a mistyped path is an error rather
    /// than a new, empty store.
    pub create: bool,
    /// Connections in the pool (`session.store.pool.size`).
    pub pool_size: u32,
    /// The longest a store operation, or waiting for a pooled connection, may take
    /// (`session.store.timeout`).
    pub timeout: Duration,
    /// Redis: replicas every save waits for (`WAIT`), 0 for none
    /// (`session.store.redis.wait.replicas`).
    pub redis_wait_replicas: u32,
    /// The longest connecting may take, if not `timeout` (`session.store.connect.timeout`).
    pub connect_timeout: Option<Duration>,
    /// Redis: idle time before TCP keepalive probes, `None` for none
    /// (`session.store.redis.keepalive`).
    pub redis_keepalive: Option<Duration>,
}

impl StoreOptions {
    /// The longest connecting may take.
    pub fn connect_timeout(&self) -> Duration {
        self.connect_timeout.unwrap_or(self.timeout)
    }
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            migrate: true,
            create: true,
            pool_size: 10,
            timeout: Duration::from_secs(5),
            redis_wait_replicas: 0,
            connect_timeout: None,
            redis_keepalive: None,
        }
    }
}

/// Checks a store URL without connecting: a supported scheme, and for SQLite a usable path.
pub fn validate_url(url: &str) -> Result<(), Error> {
    let scheme = url.split_once("://").map_or("", |(scheme, _)| scheme);
    match scheme {
        #[cfg(feature = "sqlite")]
        "sqlite" => sql::sqlite_path(url).map(drop),
        #[cfg(feature = "postgres")]
        "postgres" | "postgresql" if url.len() > scheme.len() + 3 => Ok(()),
        #[cfg(feature = "mysql")]
        "mysql" | "mariadb" if url.len() > scheme.len() + 3 => Ok(()),
        #[cfg(feature = "redis")]
        "redis" | "rediss" => ::redis::parse_redis_url(url)
            .filter(|parsed| parsed.host_str().is_some_and(|host| !host.is_empty()))
            .map(drop)
            .ok_or_else(|| Error::Url {
            url: redact_url(url),
            reason: "not a Redis URL: expected redis://[USER:PASSWORD@]HOST[:PORT][/DB] (rediss:// for TLS)".to_owned(),
        }),
        #[cfg(feature = "redis")]
        "redis-cluster" | "rediss-cluster" => match redis::cluster_nodes(url) {
            Some(Ok(_)) => Ok(()),
            Some(Err(reason)) => Err(Error::Url {
                url: redact_url(url),
                reason,
            }),
            None => Err(unsupported(url, scheme)),
        },
        _ if custom::registered(scheme).is_some() => Ok(()),
        _ => Err(unsupported(url, scheme)),
    }
}

/// Whether `name` is a store registered in code ([`register`]).
pub(crate) fn is_registered(name: &str) -> bool {
    custom::registered(name).is_some()
}

/// The names of the stores registered in code, sorted.
pub(crate) fn registered_store_names() -> Vec<String> {
    custom::registered_names()
}

/// The URL forms this build accepts, for messages.
const SUPPORTED: &[(&str, &str, bool)] = &[
    ("sqlite", "sqlite://PATH", cfg!(feature = "sqlite")),
    (
        "postgres",
        "postgres://USER@HOST/DB",
        cfg!(feature = "postgres"),
    ),
    ("mysql", "mysql://USER@HOST/DB", cfg!(feature = "mysql")),
    ("redis", "redis://HOST:PORT", cfg!(feature = "redis")),
    (
        "redis",
        "redis-cluster://HOST:PORT[,HOST:PORT…]",
        cfg!(feature = "redis"),
    ),
];

fn unsupported(url: &str, scheme: &str) -> Error {
    let built: Vec<&str> = SUPPORTED
        .iter()
        .filter(|(_, _, on)| *on)
        .map(|(_, form, _)| *form)
        .collect();
    let feature = SUPPORTED
        .iter()
        .find(|(name, _, on)| {
            !on && (scheme.starts_with(name) || (*name == "mysql" && scheme == "mariadb"))
        })
        .map(|(name, _, _)| {
            format!("; this build has no {name} support (cargo feature \"{name}\")")
        })
        .unwrap_or_default();
    let mut built: Vec<String> = built.into_iter().map(str::to_owned).collect();
    built.extend(
        custom::registered_names()
            .into_iter()
            .map(|name| format!("{name}:// (registered)")),
    );
    let supported = if built.is_empty() {
        "none: this build has no store backend".to_owned()
    } else {
        built.join(", ")
    };
    let reason = if url.contains("://") {
        format!("scheme {scheme:?} is not supported (supported: {supported}){feature}")
    } else {
        if url.contains('@') {
            format!("no scheme (supported: {supported})")
        } else {
            format!("no scheme (supported: {supported}); for a SQLite file write sqlite://{url}")
        }
    };
    Error::Url {
        url: redact_url(url),
        reason,
    }
}

/// Opens the store named by `session.store.url` and applies migrations if `options.migrate`.
///
/// `sqlite://PATH` (the parent directory is created), `postgres://…` (or `postgresql://`),
/// `mysql://…` (or `mariadb://`). Other schemes are refused with a message naming the URL.
pub async fn open(url: &str, options: &StoreOptions) -> Result<Arc<dyn SessionAdmin>, Error> {
    let scheme = url.split_once("://").map_or("", |(scheme, _)| scheme);
    match scheme {
        #[cfg(feature = "sqlite")]
        "sqlite" => open_sql::<sql::Sqlite>(url, options).await,
        #[cfg(feature = "postgres")]
        "postgres" | "postgresql" => open_sql::<sql::Postgres>(url, options).await,
        #[cfg(feature = "mysql")]
        "mysql" | "mariadb" => open_sql::<sql::MySql>(url, options).await,
        #[cfg(feature = "redis")]
        "redis" | "rediss" | "redis-cluster" | "rediss-cluster" => {
            Ok(Arc::new(RedisStore::connect(url, options).await?))
        }
        _ => match custom::registered(scheme) {
            Some(open) => open(url.to_owned(), options.clone()).await,
            None => Err(unsupported(url, scheme)),
        },
    }
}

#[cfg(feature = "sql")]
async fn open_sql<D: sql::Dialect>(
    url: &str,
    options: &StoreOptions,
) -> Result<Arc<dyn SessionAdmin>, Error>
where
    SqlStore<D>: SessionAdmin,
    for<'c> &'c mut <D::Db as sqlx::Database>::Connection: sqlx::Executor<'c, Database = D::Db>,
{
    let store = SqlStore::<D>::connect(url, options).await?;
    if options.migrate {
        store.migrate().await?;
    }
    Ok(Arc::new(store))
}

/// `url` with any password replaced by `***`, for messages: the userinfo's (with or without a
/// scheme) and a `password=` query parameter's.
pub fn redact_url(url: &str) -> String {
    let start = url.find("://").map_or(0, |i| i + 3);
    let mut out = match url.rfind('@') {
        Some(at) if at > start => {
            let userinfo = &url[start..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..start], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    };
    if let Some((base, query)) = out.split_once('?') {
        let query: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((name, _)) if name.eq_ignore_ascii_case("password") => format!("{name}=***"),
                _ => pair.to_owned(),
            })
            .collect();
        out = format!("{base}?{}", query.join("&"));
    }
    out
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
        assert_eq!(redact_url("app:pw@db/x"), "app:***@db/x");
        assert_eq!(
            redact_url("postgres://u@h/db?sslmode=require&password=pw"),
            "postgres://u@h/db?sslmode=require&password=***"
        );
    }
}
