//! Throwaway databases on the PostgreSQL and MariaDB/MySQL servers named by environment
//! variables, and the rule for when a backend test may skip.
//!
//! - `SESSION_FAILOVER_TEST_POSTGRES_URL`, e.g. `postgres://postgres@127.0.0.1:5432/test`
//! - `SESSION_FAILOVER_TEST_MYSQL_URL`, e.g. `mysql://root@127.0.0.1:3306/test`
//!
//! Unset outside CI: the test says on stderr that the backend was not run, and passes. Unset in
//! CI (`CI=true`), or set but unreachable anywhere: the test fails.

use std::io::Write as _;
use std::sync::atomic::{AtomicU32, Ordering};

use sqlx::Connection as _;

/// A database server kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Postgres,
    MySql,
}

impl Backend {
    pub fn var(self) -> &'static str {
        match self {
            Backend::Postgres => "SESSION_FAILOVER_TEST_POSTGRES_URL",
            Backend::MySql => "SESSION_FAILOVER_TEST_MYSQL_URL",
        }
    }

    /// The server URL, or `None` (after saying so) when this backend is not configured here.
    pub fn url(self, test: &str) -> Option<String> {
        match std::env::var(self.var()) {
            Ok(url) if !url.is_empty() => Some(url),
            _ if std::env::var("CI").is_ok_and(|v| v == "true") => {
                panic!(
                    "{test}: {} is not set; CI must run every backend",
                    self.var()
                )
            }
            _ => {
                // Straight to stderr: the test harness captures print! of passing tests.
                let _ = writeln!(
                    std::io::stderr(),
                    "SKIPPED {test}: {:?} backend not run (set {} to run it)",
                    self,
                    self.var()
                );
                None
            }
        }
    }
}

/// The Redis server tests use (`SESSION_FAILOVER_TEST_REDIS_URL`, e.g. `redis://127.0.0.1:6379`,
/// without a database number: each test picks its own), or `None` (after saying so) when it
/// is not configured here; in CI a missing one fails the test.
pub fn redis_url(test: &str) -> Option<String> {
    const VAR: &str = "SESSION_FAILOVER_TEST_REDIS_URL";
    match std::env::var(VAR) {
        Ok(url) if !url.is_empty() => Some(url.trim_end_matches('/').to_owned()),
        _ if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("{test}: {VAR} is not set; CI must run every backend")
        }
        _ => {
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED {test}: Redis backend not run (set {VAR} to run it)"
            );
            None
        }
    }
}

/// A database created for one test and dropped when the value is dropped.
pub struct TestDb {
    pub backend: Backend,
    /// The URL of the new database.
    pub url: String,
    admin: String,
    name: String,
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

fn with_database(url: &str, db: &str) -> String {
    let (base, _) = url
        .rsplit_once('/')
        .expect("a database URL ends in /DBNAME");
    format!("{base}/{db}")
}

impl TestDb {
    /// A fresh, empty database on `backend`'s server, or `None` if the backend is not configured
    /// (see the module docs).
    pub async fn create(backend: Backend, test: &str) -> Option<TestDb> {
        let admin = backend.url(test)?;
        let name = format!(
            "sf_test_{}_{}_{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .subsec_nanos()
        );
        let sql = format!("CREATE DATABASE {name}");
        match backend {
            Backend::Postgres => {
                let mut c = sqlx::PgConnection::connect(&admin)
                    .await
                    .unwrap_or_else(|e| panic!("{test}: cannot reach PostgreSQL at {admin}: {e}"));
                sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                    .execute(&mut c)
                    .await
                    .unwrap();
            }
            Backend::MySql => {
                let mut c = sqlx::MySqlConnection::connect(&admin)
                    .await
                    .unwrap_or_else(|e| {
                        panic!("{test}: cannot reach MySQL/MariaDB at {admin}: {e}")
                    });
                sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                    .execute(&mut c)
                    .await
                    .unwrap();
            }
        }
        Some(TestDb {
            backend,
            url: with_database(&admin, &name),
            admin,
            name,
        })
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let (backend, admin, name) = (self.backend, self.admin.clone(), self.name.clone());
        // Drop is not async: do it on a thread with its own runtime.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                match backend {
                    Backend::Postgres => {
                        if let Ok(mut c) = sqlx::PgConnection::connect(&admin).await {
                            let sql = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
                            let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                                .execute(&mut c)
                                .await;
                        }
                    }
                    Backend::MySql => {
                        if let Ok(mut c) = sqlx::MySqlConnection::connect(&admin).await {
                            let sql = format!("DROP DATABASE IF EXISTS {name}");
                            let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                                .execute(&mut c)
                                .await;
                        }
                    }
                }
            });
        })
        .join();
    }
}
