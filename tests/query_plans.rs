//! The operators' queries use their indexes on every backend, proven by each database's own
//! plan: "log a user out everywhere" and the backoffice's principal filter (the principal index),
//! paging (the primary key), the purge (the expiry index). Each table holds 2,000 analysed rows,
//! so a planner that could use the index has a reason to.

mod common;

use common::backends::{Backend, TestDb};
use session_failover::session::SessionId;
use session_failover::store::{
    ListQuery, Meta, MySqlStore, PgStore, Record, SessionStore, SqlStore, StoreOptions,
};
use sqlx::Row as _;
use std::sync::Arc;

const NOW: i64 = 1_700_000_000_000;
const ROWS: usize = 2000;

async fn fill<D>(store: &SqlStore<D>) -> String
where
    D: session_failover::store::sql::Dialect,
    SqlStore<D>: SessionStore,
{
    let records: Vec<Record> = (0..ROWS)
        .map(|i| Record {
            meta: Meta {
                key: SessionId::generate().store_key(),
                app: if i % 2 == 0 {
                    "storefront"
                } else {
                    "backoffice"
                }
                .to_owned(),
                context_path: "/".to_owned(),
                node: format!("node-{}", i % 3),
                principal: (i % 4 != 0).then(|| format!("user-{i}")),
                created_at: NOW,
                modified_at: NOW,
                expires_at: NOW + 60_000 + i as i64,
                max_inactive_secs: 60,
                version: 1,
                attributes: vec!["cart".to_owned()],
                size_bytes: 3,
            },
            data: vec![1, 0, 7],
        })
        .collect();
    store.set_many(&records).await.unwrap();
    records[ROWS / 2].meta.key.as_str().to_owned()
}

fn principal(after: Option<&str>) -> ListQuery {
    ListQuery {
        principal: Some("user-1001".to_owned()),
        after: after.map(|k| session_failover::session::SessionKey::parse(k).unwrap()),
        limit: 1000,
        ..ListQuery::default()
    }
}

fn after(key: &str) -> ListQuery {
    ListQuery {
        after: Some(session_failover::session::SessionKey::parse(key).unwrap()),
        limit: 50,
        ..ListQuery::default()
    }
}

/// `prefix sql` with `binds` bound: whole numbers as integers, the rest as text.
fn explained<DB: sqlx::Database>(
    prefix: &str,
    sql: &str,
    binds: Vec<String>,
) -> sqlx::query::Query<'static, DB, <DB as sqlx::Database>::Arguments>
where
    i64: for<'q> sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    String: for<'q> sqlx::Encode<'q, DB> + sqlx::Type<DB>,
{
    let mut query = sqlx::query(sqlx::AssertSqlSafe(format!("{prefix} {sql}")));
    for bind in binds {
        query = match bind.parse::<i64>() {
            Ok(n) => query.bind(n),
            Err(_) => query.bind(bind),
        };
    }
    query
}

/// The plans (as `plan` renders them) of the statements checked, in order: a user's sessions,
/// a user's sessions after `key`, a page after `key`, the purge.
async fn plans<F, Fut>(
    list: impl Fn(&ListQuery) -> Arc<str>,
    purge: Arc<str>,
    key: &str,
    plan: F,
) -> [String; 4]
where
    F: Fn(Arc<str>, Vec<String>) -> Fut,
    Fut: std::future::Future<Output = String>,
{
    let user = || "user-1001".to_owned();
    [
        plan(list(&principal(None)), vec![user(), "1000".into()]).await,
        plan(
            list(&principal(Some(key))),
            vec![user(), key.to_owned(), "1000".into()],
        )
        .await,
        plan(list(&after(key)), vec![key.to_owned(), "50".into()]).await,
        plan(purge, vec![NOW.to_string(), "500".into()]).await,
    ]
}

#[tokio::test]
async fn sqlite_plans_use_the_indexes() {
    let dir = tempfile::tempdir().unwrap();
    let store = common::sqlite(dir.path()).await;
    let key = fill(&store).await;
    // One connection: the statistics ANALYZE gathers are loaded by the connection that made
    // them (others read them when they next load the schema).
    let conn = Arc::new(tokio::sync::Mutex::new(
        store.pool().acquire().await.unwrap(),
    ));
    sqlx::query("ANALYZE")
        .execute(&mut **conn.lock().await)
        .await
        .unwrap();
    let plan = |sql: Arc<str>, binds: Vec<String>| {
        let conn = conn.clone();
        async move {
            let rows = explained::<sqlx::Sqlite>("EXPLAIN QUERY PLAN", &sql, binds)
                .fetch_all(&mut **conn.lock().await)
                .await
                .unwrap();
            rows.iter()
                .map(|r| r.get::<String, _>("detail"))
                .collect::<Vec<_>>()
                .join("\n")
        }
    };
    let [by_principal, paged, page, purge] = plans(
        |q| store.list_statement(q),
        store.purge_statement(),
        &key,
        plan,
    )
    .await;
    assert!(
        by_principal.contains(
            "SEARCH stored_http_session USING INDEX stored_http_session_principal (principal=?)"
        ),
        "{by_principal}"
    );
    assert!(
        paged.contains("USING INDEX stored_http_session_principal (principal=? AND session_id>?)"),
        "{paged}"
    );
    assert!(
        page.contains("SEARCH stored_http_session USING PRIMARY KEY (session_id>?)"),
        "{page}"
    );
    assert!(
        purge.contains("USING COVERING INDEX stored_http_session_expires_at (expires_at<?)"),
        "{purge}"
    );
    for text in [&by_principal, &paged, &page, &purge] {
        assert!(
            !text.contains("SCAN stored_http_session"),
            "a full scan: {text}"
        );
    }
}

#[tokio::test]
async fn postgres_plans_use_the_indexes() {
    let Some(db) = TestDb::create(Backend::Postgres, "postgres_plans_use_the_indexes").await else {
        return;
    };
    let store = PgStore::connect(&db.url, &StoreOptions::default())
        .await
        .unwrap();
    store.migrate().await.unwrap();
    let key = fill(&store).await;
    sqlx::query("ANALYZE stored_http_session")
        .execute(store.pool())
        .await
        .unwrap();
    let plan = |sql: Arc<str>, binds: Vec<String>| {
        let pool = store.pool().clone();
        async move {
            let rows = explained::<sqlx::Postgres>("EXPLAIN", &sql, binds)
                .fetch_all(&pool)
                .await
                .unwrap();
            rows.iter()
                .map(|r| r.get::<String, _>(0))
                .collect::<Vec<_>>()
                .join("\n")
        }
    };
    let [by_principal, paged, page, purge] = plans(
        |q| store.list_statement(q),
        store.purge_statement(),
        &key,
        plan,
    )
    .await;
    assert!(
        by_principal.contains("stored_http_session_principal"),
        "{by_principal}"
    );
    assert!(paged.contains("stored_http_session_principal"), "{paged}");
    assert!(page.contains("stored_http_session_pkey"), "{page}");
    assert!(purge.contains("stored_http_session_expires_at"), "{purge}");
    for text in [&by_principal, &paged, &page, &purge] {
        assert!(!text.contains("Seq Scan"), "a full scan: {text}");
    }
}

#[tokio::test]
async fn mysql_plans_use_the_indexes() {
    let Some(db) = TestDb::create(Backend::MySql, "mysql_plans_use_the_indexes").await else {
        return;
    };
    let store = MySqlStore::connect(&db.url, &StoreOptions::default())
        .await
        .unwrap();
    store.migrate().await.unwrap();
    let key = fill(&store).await;
    sqlx::query("ANALYZE TABLE stored_http_session")
        .execute(store.pool())
        .await
        .unwrap();
    // Each plan row's access type and index: `ALL` is a full scan.
    let plan = |sql: Arc<str>, binds: Vec<String>| {
        let pool = store.pool().clone();
        async move {
            let rows = explained::<sqlx::MySql>("EXPLAIN", &sql, binds)
                .fetch_all(&pool)
                .await
                .unwrap();
            rows.iter()
                .map(|r| {
                    let text = |column: &str| {
                        r.try_get::<Option<String>, _>(column)
                            .ok()
                            .flatten()
                            .or_else(|| {
                                r.try_get::<Option<Vec<u8>>, _>(column)
                                    .ok()
                                    .flatten()
                                    .map(|b| String::from_utf8_lossy(&b).into_owned())
                            })
                            .unwrap_or_default()
                    };
                    format!("type={} key={}", text("type"), text("key"))
                })
                .collect::<Vec<_>>()
                .join("\n")
        }
    };
    let [by_principal, paged, page, purge] = plans(
        |q| store.list_statement(q),
        store.purge_statement(),
        &key,
        plan,
    )
    .await;
    assert!(
        by_principal.contains("key=stored_http_session_principal"),
        "{by_principal}"
    );
    assert!(
        paged.contains("key=stored_http_session_principal") || paged.contains("key=PRIMARY"),
        "{paged}"
    );
    assert!(page.contains("type=range key=PRIMARY"), "{page}");
    assert!(
        purge.contains("key=stored_http_session_expires_at"),
        "{purge}"
    );
    for text in [&by_principal, &paged, &page, &purge] {
        assert!(!text.contains("type=ALL"), "a full scan: {text}");
    }
}
