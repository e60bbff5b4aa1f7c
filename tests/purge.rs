//! The purge on every SQL backend: exactly the expired rows go, in bounded batches, while a
//! writer keeps working; and only one node purges at a time.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::backends::{Backend, TestDb};
use session_failover::purge::{PurgeSchedule, Purger};
use session_failover::session::SessionId;
use session_failover::store::{
    self, ListQuery, Meta, MySqlStore, PgStore, Record, SessionAdmin, SqliteStore, StoreOptions,
};
use sqlx::Connection as _;

const NOW: i64 = 1_800_000_000_000;

fn live(version: i64) -> Record {
    Record {
        meta: Meta {
            key: SessionId::generate().store_key(),
            app: "storefront".into(),
            context_path: "/".into(),
            node: "n".into(),
            principal: None,
            created_at: NOW,
            modified_at: NOW,
            expires_at: NOW + 3_600_000,
            max_inactive_secs: 3600,
            version,
            attributes: vec![],
            size_bytes: 2,
        },
        data: vec![1, 0],
    }
}

fn purger(store: Arc<dyn SessionAdmin>) -> Purger {
    Purger::new(
        store,
        PurgeSchedule::parse("0 * * * * *").unwrap(),
        1000,
        Duration::ZERO,
    )
}

/// Inserts `expired` expired rows with one SQL statement per 10,000 (fast for 200,000).
async fn fill_expired(backend: Option<Backend>, url: &str, expired: u32) {
    let sql = |from: u32, to: u32| match backend {
        Some(Backend::Postgres) => format!(
            "INSERT INTO stored_http_session SELECT 'expired-' || g, 'storefront', '/', 'n', NULL, 0, 0, \
             {}, 60, 1, '[]', 2, '\\x0100'::bytea FROM generate_series({from}, {to}) g",
            NOW - 1
        ),
        _ => format!(
            "INSERT INTO stored_http_session (session_id, app, context_path, node, principal, created_at, \
             modified_at, expires_at, max_inactive_secs, version, attributes, size_bytes, data) \
             WITH RECURSIVE g(n) AS (SELECT {from} UNION ALL SELECT n + 1 FROM g WHERE n < {to}) \
             SELECT CONCAT('expired-', n), 'storefront', '/', 'n', NULL, 0, 0, {}, 60, 1, '[]', 2, x'0100' FROM g",
            NOW - 1
        ),
    };
    let mut from = 1;
    while from <= expired {
        let to = (from + 9_999).min(expired);
        let statement = sqlx::AssertSqlSafe(sql(from, to));
        match backend {
            Some(Backend::Postgres) => {
                let mut c = sqlx::PgConnection::connect(url).await.unwrap();
                sqlx::raw_sql(statement).execute(&mut c).await.unwrap();
            }
            Some(Backend::MySql) => {
                let mut c = sqlx::MySqlConnection::connect(url).await.unwrap();
                // MySQL and MariaDB name the recursion limit differently; each ignores the other.
                sqlx::raw_sql("SET SESSION cte_max_recursion_depth = 100000")
                    .execute(&mut c)
                    .await
                    .ok();
                sqlx::raw_sql("SET SESSION max_recursive_iterations = 100000")
                    .execute(&mut c)
                    .await
                    .ok();
                sqlx::raw_sql(statement).execute(&mut c).await.unwrap();
            }
            None => {
                let mut c = sqlx::SqliteConnection::connect(url).await.unwrap();
                let text = statement
                    .0
                    .replace("CONCAT('expired-', n)", "'expired-' || n");
                sqlx::raw_sql(sqlx::AssertSqlSafe(text))
                    .execute(&mut c)
                    .await
                    .unwrap();
            }
        }
        from = to + 1;
    }
}

/// Purges `expired` rows while a writer updates live sessions; checks what is left.
async fn purge_under_load(
    store: Arc<dyn SessionAdmin>,
    backend: Option<Backend>,
    url: &str,
    expired: u32,
) {
    let lives: Vec<Record> = (0..50).map(|_| live(1)).collect();
    store.set_many(&lives).await.unwrap();
    fill_expired(backend, url, expired).await;
    assert_eq!(store.length().await.unwrap(), u64::from(expired) + 50);

    let writer = {
        let store = Arc::clone(&store);
        let lives = lives.clone();
        tokio::spawn(async move {
            let (mut writes, mut slowest) = (0, Duration::ZERO);
            for round in 2..=40 {
                for record in &lives {
                    let mut next = record.clone();
                    next.meta.version = round;
                    let started = Instant::now();
                    store.update(&next).await.unwrap();
                    slowest = slowest.max(started.elapsed());
                    writes += 1;
                }
            }
            (writes, slowest)
        })
    };
    let report = purger(Arc::clone(&store)).purge_once(NOW).await.unwrap();
    let (writes, slowest) = writer.await.unwrap();
    assert!(!report.skipped);
    assert_eq!(
        report.deleted,
        u64::from(expired),
        "exactly the expired rows"
    );
    assert_eq!(store.length().await.unwrap(), 50, "the live rows stay");
    for record in &lives {
        assert_eq!(
            store
                .get(&record.meta.key, NOW)
                .await
                .unwrap()
                .unwrap()
                .meta
                .version,
            40
        );
    }
    eprintln!(
        "{backend:?}: purged {} rows in {:?} (batches of 1000) while a writer made {writes} updates, slowest {slowest:?}",
        report.deleted, report.took
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_purges_exactly_the_expired_rows() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/s.db", dir.path().display());
    let store = SqliteStore::connect(&url, &StoreOptions::default())
        .await
        .unwrap();
    store.migrate().await.unwrap();
    let file = format!("sqlite:{}/s.db", dir.path().display());
    purge_under_load(Arc::new(store), None, &file, 20_000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_purges_200000_expired_rows_in_batches_under_a_writer() {
    let Some(db) = TestDb::create(Backend::Postgres, "postgres_purge").await else {
        return;
    };
    let store = PgStore::connect(&db.url, &StoreOptions::default())
        .await
        .unwrap();
    store.migrate().await.unwrap();
    purge_under_load(Arc::new(store), Some(Backend::Postgres), &db.url, 200_000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_purges_exactly_the_expired_rows() {
    let Some(db) = TestDb::create(Backend::MySql, "mariadb_purge").await else {
        return;
    };
    let store = MySqlStore::connect(&db.url, &StoreOptions::default())
        .await
        .unwrap();
    store.migrate().await.unwrap();
    purge_under_load(Arc::new(store), Some(Backend::MySql), &db.url, 20_000).await;
}

#[tokio::test]
async fn only_one_node_purges_at_a_time() {
    for backend in [Backend::Postgres, Backend::MySql] {
        let Some(db) = TestDb::create(backend, "purge_lock").await else {
            continue;
        };
        let store: Arc<dyn SessionAdmin> = match backend {
            Backend::Postgres => Arc::new(
                PgStore::connect(&db.url, &StoreOptions::default())
                    .await
                    .unwrap(),
            ),
            Backend::MySql => Arc::new(
                MySqlStore::connect(&db.url, &StoreOptions::default())
                    .await
                    .unwrap(),
            ),
        };
        store::open(&db.url, &StoreOptions::default())
            .await
            .unwrap(); // migrations
        fill_expired(Some(backend), &db.url, 100).await;
        // Another node holds the purge lock (taken here on a connection of our own).
        let other: Box<dyn std::any::Any> = match backend {
            Backend::Postgres => {
                let mut c = sqlx::PgConnection::connect(&db.url).await.unwrap();
                let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
                    .bind(store::PG_PURGE_LOCK)
                    .fetch_one(&mut c)
                    .await
                    .unwrap();
                assert!(got);
                Box::new(c)
            }
            Backend::MySql => {
                // A lease row another node holds for a minute.
                let mut c = sqlx::MySqlConnection::connect(&db.url).await.unwrap();
                sqlx::query(
                    "INSERT INTO session_failover_lock (name, holder, expires_at) VALUES (?, 'other', ?)",
                )
                .bind(store::MYSQL_PURGE_LOCK)
                .bind(store::now_millis() + 60_000)
                .execute(&mut c)
                .await
                .unwrap();
                Box::new(c)
            }
        };
        let report = purger(Arc::clone(&store)).purge_once(NOW).await.unwrap();
        assert!(
            report.skipped,
            "{backend:?}: a second node skips while one purges"
        );
        // The lock is per database: a deployment in another database of the same server purges.
        let elsewhere = TestDb::create(backend, "purge_lock_elsewhere")
            .await
            .unwrap();
        let elsewhere_store = store::open(&elsewhere.url, &StoreOptions::default())
            .await
            .unwrap();
        fill_expired(Some(backend), &elsewhere.url, 10).await;
        let report = purger(elsewhere_store).purge_once(NOW).await.unwrap();
        assert_eq!(
            (report.skipped, report.deleted),
            (false, 10),
            "{backend:?}: another database is not blocked"
        );
        assert_eq!(
            store.length().await.unwrap(),
            100,
            "{backend:?}: nothing deleted"
        );
        // The other node goes away: its connection (and advisory lock) closes; its lease runs
        // out (set here as run out rather than waited for).
        if backend == Backend::MySql {
            let mut c = sqlx::MySqlConnection::connect(&db.url).await.unwrap();
            sqlx::query("UPDATE session_failover_lock SET expires_at = 0 WHERE holder = 'other'")
                .execute(&mut c)
                .await
                .unwrap();
        }
        drop(other);
        tokio::time::sleep(Duration::from_millis(200)).await;
        let report = purger(Arc::clone(&store)).purge_once(NOW).await.unwrap();
        assert_eq!(
            (report.skipped, report.deleted),
            (false, 100),
            "{backend:?}"
        );
        let left = store
            .list(&ListQuery {
                limit: 10,
                ..ListQuery::default()
            })
            .await
            .unwrap();
        assert!(left.is_empty());
    }
}

/// A purge run cancelled while it holds the lock (the server's shutdown, the run's deadline)
/// leaves no lock behind: its connection is closed rather than pooled with the lock, so another
/// node's next run purges (PostgreSQL's advisory lock goes with the connection; MySQL's lease
/// runs out by itself, within 30 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_purge_leaves_no_lock_behind() {
    for backend in [Backend::Postgres, Backend::MySql] {
        let Some(db) = TestDb::create(backend, "purge_cancelled").await else {
            continue;
        };
        let options = StoreOptions {
            pool_size: 1,
            ..StoreOptions::default()
        };
        let store = store::open(&db.url, &options).await.unwrap();
        fill_expired(Some(backend), &db.url, 20_000).await;
        // One row a statement: still running when it is cancelled.
        let cancelled = tokio::time::timeout(
            Duration::from_millis(300),
            store.purge_expired_exclusive(NOW, 1),
        )
        .await;
        assert!(cancelled.is_err(), "{backend:?}: the run was still going");
        let other = store::open(&db.url, &StoreOptions::default())
            .await
            .unwrap();
        let within = match backend {
            Backend::MySql => Duration::from_secs(40),
            _ => Duration::from_secs(5),
        };
        let deadline = std::time::Instant::now() + within;
        let deleted = loop {
            if let Some(deleted) = other.purge_expired_exclusive(NOW, 10_000).await.unwrap() {
                break deleted;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{backend:?}: the cancelled run still holds the purge lock"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        assert!(deleted > 0, "{backend:?}");
        // The first node's pool works on, and purges too.
        assert_eq!(
            store.purge_expired_exclusive(NOW, 10_000).await.unwrap(),
            Some(0)
        );
    }
}

/// SIGTERM while a long purge runs: the purge stops where it is (logged), and the server
/// drains and exits without waiting for it; the next start purges the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_does_not_wait_for_a_running_purge() {
    let work = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/sessions.db", work.path().display());
    let store = store::open(&url, &StoreOptions::default()).await.unwrap();
    let file = format!("sqlite:{}/sessions.db", work.path().display());
    fill_expired(None, &file, 100_000).await;
    let mut c = sqlx::SqliteConnection::connect(&file).await.unwrap();
    sqlx::raw_sql("UPDATE stored_http_session SET expires_at = 1")
        .execute(&mut c)
        .await
        .unwrap();
    let config = common::config_dir(
        work.path(),
        &format!(
            "spring.session.enabled=true\nspring.session.storefront.save=sync\n\
             session.store.url={url}\nsession.purge.cron=* * * * * *\nsession.purge.jitter=0\n\
             session.purge.batch.size=1\n"
        ),
    );
    let server = common::Server::start(work.path(), &config, "node");
    // The purge is deleting, one row a statement.
    let deadline = Instant::now() + Duration::from_secs(15);
    while store.length().await.unwrap() == 100_000 {
        assert!(Instant::now() < deadline, "{}", server.log_text());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let log = server.log.clone();
    let status = server.terminate();
    assert!(status.success());
    let log = std::fs::read_to_string(log).unwrap();
    assert!(log.contains("purge stopped for shutdown"), "{log}");
    assert!(log.contains("stopped"), "{log}");
    let left = store.length().await.unwrap();
    assert!(left > 0, "the server waited for the whole purge");
}
