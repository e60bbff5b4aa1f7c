//! The failover filter through its tower interface, on a real SQLite file.

mod common;

use std::sync::Arc;

use axum::Router;
use common::{CountingStore, config, items, send, sqlite};
use http::StatusCode;
use serde_json::json;
use session_failover::persist::Persistence;
use session_failover::server;
use session_failover::session::SessionId;
use session_failover::store::{ListQuery, SessionAdmin, SqliteStore};
use sqlx::Row as _;

const SYNC: &str = "spring.session.enabled=true\nspring.session.storefront.save=sync\n";

/// A "node": the demo server's router with its own cache, on a shared store.
fn node(local: &str, name: &str, store: Arc<dyn SessionAdmin>) -> Router {
    {
        let config = config(local);
        let persistence = Persistence::from_config(store, &config);
        server::app(&config, name, Some(persistence))
    }
}

fn add(sku: &str, qty: u32) -> Option<serde_json::Value> {
    Some(json!({ "sku": sku, "qty": qty }))
}

fn jar(id: &str) -> String {
    format!("JSESSIONID={id}")
}

/// Makes every update of the table fail (`true`: a trigger that aborts it, as a full disk
/// would), or succeed again (`false`).
async fn fail_updates(store: &SqliteStore, fail: bool) {
    let sql = if fail {
        "CREATE TRIGGER fail BEFORE UPDATE ON stored_http_session BEGIN SELECT RAISE(ABORT, 'disk full'); END"
    } else {
        "DROP TRIGGER fail"
    };
    sqlx::query(sql).execute(store.pool()).await.unwrap();
}

async fn row_count(store: &SqliteStore) -> i64 {
    sqlx::query("SELECT COUNT(*) AS n FROM stored_http_session")
        .fetch_one(store.pool())
        .await
        .unwrap()
        .get("n")
}

#[tokio::test]
async fn sticky_reads_touch_no_store_and_only_changes_are_written() {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = sqlite(dir.path()).await;
    let counting = CountingStore::new(Arc::new(sqlite.clone()));
    let app = node(SYNC, "a", counting.clone());

    // A request that never writes: no cookie, no store call, no row.
    let r = send(&app, "GET", "/cart", None, None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.set_cookie.is_empty());
    assert_eq!(counting.total(), 0);

    let r = send(&app, "POST", "/cart/items", None, add("A", 1)).await;
    let id = r
        .cookie("JSESSIONID")
        .expect("a new session sets its cookie");
    assert_eq!(
        counting.rows_written(),
        1,
        "one row written for one changed request"
    );
    assert_eq!(
        counting.calls(),
        [("set_many", 1)].into(),
        "a new session is inserted"
    );

    for _ in 0..20 {
        let r = send(&app, "GET", "/cart", Some(&jar(&id)), None).await;
        assert_eq!(items(&r.body), [("A".to_owned(), 1)]);
        assert!(r.set_cookie.is_empty(), "no cookie for a known session");
    }
    // Unchanged requests: a read, and a delete of a line that is not there.
    let r = send(&app, "DELETE", "/cart/items/NOPE", Some(&jar(&id)), None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(
        counting.calls(),
        [("set_many", 1)].into(),
        "sticky reads read nothing, write nothing"
    );

    for n in 1..=3 {
        send(&app, "POST", "/cart/items", Some(&jar(&id)), add("B", 1)).await;
        assert_eq!(
            counting.rows_written(),
            1 + n,
            "one row per changed request"
        );
        assert_eq!(
            counting.count("update_many"),
            n,
            "an existing session's row is updated, not upserted"
        );
    }
    assert_eq!(counting.total(), 4);
    assert_eq!(counting.reads(), 0);
    let row = sqlx::query("SELECT version, attributes, node, app FROM stored_http_session")
        .fetch_one(sqlite.pool())
        .await
        .unwrap();
    assert_eq!(row.get::<i64, _>("version"), 4);
    assert_eq!(row.get::<String, _>("attributes"), r#"["cart"]"#);
    assert_eq!(row.get::<String, _>("node"), "a");
    assert_eq!(row.get::<String, _>("app"), "storefront");
    assert_eq!(row_count(&sqlite).await, 1);
}

#[tokio::test]
async fn another_node_restores_once_then_serves_from_its_cache() {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = Arc::new(sqlite(dir.path()).await);
    let a = node(SYNC, "a", sqlite.clone());
    let first = send(&a, "POST", "/cart/items", None, add("A", 2))
        .await
        .cookie("JSESSIONID")
        .unwrap();
    let r = send(
        &a,
        "POST",
        "/login",
        Some(&jar(&first)),
        Some(json!({"user": "zoë"})),
    )
    .await;
    let id = r.cookie("JSESSIONID").expect("login sends the rotated id");
    let rows = sqlite
        .list(&ListQuery {
            limit: 10,
            ..ListQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].principal.as_deref(), Some("zoë"));

    let counting = CountingStore::new(sqlite.clone());
    let b = node(SYNC, "b", counting.clone());
    let r = send(&b, "GET", "/cart", Some(&jar(&id)), None).await;
    assert_eq!(items(&r.body), [("A".to_owned(), 2)]);
    assert_eq!(r.body["user"], "zoë");
    assert_eq!(counting.calls(), [("get", 1)].into(), "one restore");
    assert_eq!(
        r.cookie("JSESSIONID").as_deref(),
        Some(id.as_str()),
        "the restoring node re-sends the same cookie, so a cookie-prefix balancer re-sticks"
    );
    for _ in 0..10 {
        let r = send(&b, "GET", "/cart", Some(&jar(&id)), None).await;
        assert!(r.set_cookie.is_empty(), "only once");
    }
    assert_eq!(
        counting.calls(),
        [("get", 1)].into(),
        "then served from b's cache"
    );
}

#[tokio::test]
async fn concurrent_first_requests_restore_once() {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = Arc::new(sqlite(dir.path()).await);
    let a = node(SYNC, "a", sqlite.clone());
    let id = send(&a, "POST", "/cart/items", None, add("A", 1))
        .await
        .cookie("JSESSIONID")
        .unwrap();
    let counting = CountingStore::new(sqlite.clone());
    let b = node(SYNC, "b", counting.clone());
    let requests = (0..16).map(|_| {
        let b = b.clone();
        let cookie = jar(&id);
        tokio::spawn(async move { send(&b, "GET", "/cart", Some(&cookie), None).await })
    });
    for r in futures_join(requests).await {
        assert_eq!(items(&r.body), [("A".to_owned(), 1)]);
    }
    assert_eq!(
        counting.count("get"),
        1,
        "one shared restore for 16 concurrent requests"
    );
}

async fn send_raw_cookie(app: &Router, cookie: &[u8]) -> serde_json::Value {
    use http_body_util::BodyExt as _;
    let request = http::Request::get("/cart")
        .header("cookie", http::HeaderValue::from_bytes(cookie).unwrap())
        .body(axum::body::Body::empty())
        .unwrap();
    let response = tower::ServiceExt::oneshot(app.clone(), request)
        .await
        .unwrap();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice(&bytes).unwrap()
}

async fn futures_join<T: Send + 'static>(
    handles: impl Iterator<Item = tokio::task::JoinHandle<T>>,
) -> Vec<T> {
    let mut out = Vec::new();
    for handle in handles.collect::<Vec<_>>() {
        out.push(handle.await.unwrap());
    }
    out
}

#[tokio::test]
async fn memory_only_apps_never_touch_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = sqlite(dir.path()).await;
    for local in [
        // Failover disabled globally, even with a mode for the app.
        "spring.session.enabled=false\nspring.session.storefront.save=sync\n",
        // Failover enabled, but no mode for this app.
        "spring.session.enabled=true\nspring.session.storefront.save=\n",
    ] {
        let counting = CountingStore::new(Arc::new(sqlite.clone()));
        let app = node(local, "a", counting.clone());
        let id = send(&app, "POST", "/cart/items", None, add("A", 1))
            .await
            .cookie("JSESSIONID")
            .unwrap();
        let r = send(&app, "GET", "/cart", Some(&jar(&id)), None).await;
        assert_eq!(
            items(&r.body),
            [("A".to_owned(), 1)],
            "kept in memory on this node"
        );
        assert_eq!(counting.total(), 0, "{local}");
        // Another node (or this one after a restart) does not know it.
        let other = node(local, "b", counting.clone());
        let r = send(&other, "GET", "/cart", Some(&jar(&id)), None).await;
        assert!(items(&r.body).is_empty());
    }
    assert_eq!(row_count(&sqlite).await, 0);
}

fn parse_cookie(header: &str) -> cookie::Cookie<'static> {
    cookie::Cookie::parse(header.to_owned()).unwrap()
}

#[tokio::test]
async fn per_app_cookie_settings_appear_in_set_cookie() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn SessionAdmin> = Arc::new(sqlite(dir.path()).await);

    let app = node(
        &format!(
            "{SYNC}spring.session.storefront.cookie.name=SHOPSESSION\n\
             spring.session.storefront.cookie.path=/shop\n\
             spring.session.storefront.secure=true\n\
             spring.session.storefront.cookie.httponly=true\n"
        ),
        "a",
        store.clone(),
    );
    let r = send(&app, "POST", "/cart/items", None, add("A", 1)).await;
    // The session cookie, and (sync mode) the version cookie with the same settings.
    assert_eq!(r.set_cookie.len(), 2, "{:?}", r.set_cookie);
    let version = parse_cookie(&r.set_cookie[1]);
    assert_eq!(version.name(), "SHOPSESSION_VERSION");
    assert_eq!(version.value(), "1", "the first row version");
    assert_eq!(
        (version.path(), version.secure(), version.http_only()),
        (Some("/shop"), Some(true), Some(true))
    );
    let c = parse_cookie(&r.set_cookie[0]);
    assert_eq!(c.name(), "SHOPSESSION");
    assert!(SessionId::parse(c.value()).is_some());
    assert_eq!(c.path(), Some("/shop"));
    assert_eq!(c.secure(), Some(true));
    assert_eq!(c.http_only(), Some(true));
    assert_eq!(c.same_site(), Some(cookie::SameSite::Lax));
    assert_eq!(c.max_age(), None, "a session cookie, gone with the browser");
    // The app reads its own cookie name, and ignores JSESSIONID.
    let r2 = send(
        &app,
        "GET",
        "/cart",
        Some(&format!("JSESSIONID=x; SHOPSESSION={}", c.value())),
        None,
    )
    .await;
    assert_eq!(items(&r2.body), [("A".to_owned(), 1)]);

    // Unset secure follows the request and unset httponly is on: plain http gets HttpOnly only...
    let plain = node(SYNC, "a", store.clone());
    let r = send(&plain, "POST", "/cart/items", None, add("A", 1)).await;
    let c = parse_cookie(&r.set_cookie[0]);
    assert_eq!((c.name(), c.path()), ("JSESSIONID", Some("/")));
    assert_eq!((c.secure(), c.http_only()), (None, Some(true)));
    // ...a request forwarded from TLS (either header) gets both...
    let request = http::Request::post("/cart/items")
        .header("forwarded", "for=192.0.2.60;proto=https;by=203.0.113.43")
        .header("content-type", "application/json")
        .body(axum::body::Body::from(r#"{"sku":"A","qty":1}"#))
        .unwrap();
    let response = tower::ServiceExt::oneshot(plain.clone(), request)
        .await
        .unwrap();
    let c = parse_cookie(response.headers()["set-cookie"].to_str().unwrap());
    assert_eq!((c.secure(), c.http_only()), (Some(true), Some(true)));
    let request = http::Request::post("/cart/items")
        .header("x-forwarded-proto", "https")
        .header("content-type", "application/json")
        .body(axum::body::Body::from(r#"{"sku":"A","qty":1}"#))
        .unwrap();
    let response = tower::ServiceExt::oneshot(plain.clone(), request)
        .await
        .unwrap();
    let c = parse_cookie(response.headers()["set-cookie"].to_str().unwrap());
    assert_eq!((c.secure(), c.http_only()), (Some(true), Some(true)));
    // ...and explicit false wins even over TLS.
    let off = node(
        &format!(
            "{SYNC}spring.session.storefront.secure=false\nspring.session.storefront.cookie.httponly=false\n"
        ),
        "a",
        store,
    );
    let request = http::Request::post("/cart/items")
        .header("x-forwarded-proto", "https")
        .header("content-type", "application/json")
        .body(axum::body::Body::from(r#"{"sku":"A","qty":1}"#))
        .unwrap();
    let response = tower::ServiceExt::oneshot(off, request).await.unwrap();
    let c = parse_cookie(response.headers()["set-cookie"].to_str().unwrap());
    assert_eq!((c.secure(), c.http_only()), (None, None));
}

#[tokio::test]
async fn cycle_id_and_invalidate_end_the_old_id_everywhere() {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = sqlite(dir.path()).await;
    let store: Arc<dyn SessionAdmin> = Arc::new(sqlite.clone());
    let a = node(SYNC, "a", store.clone());

    let before = send(&a, "POST", "/cart/items", None, add("A", 3))
        .await
        .cookie("JSESSIONID")
        .unwrap();
    let r = send(
        &a,
        "POST",
        "/login",
        Some(&jar(&before)),
        Some(json!({"user": "ann"})),
    )
    .await;
    let after = r.cookie("JSESSIONID").expect("login rotates the id");
    assert_ne!(before, after);
    assert_eq!(
        row_count(&sqlite).await,
        1,
        "the old row is gone, the new one written"
    );

    // The old id: not in a's cache, not in the store (a fresh node b).
    let b = node(SYNC, "b", store.clone());
    for node in [&a, &b] {
        let r = send(node, "GET", "/cart", Some(&jar(&before)), None).await;
        assert!(items(&r.body).is_empty() && r.body["user"].is_null());
    }
    let old_key = SessionId::parse(&before).unwrap().store_key();
    assert!(!store.exists(&old_key, 0).await.unwrap());
    // The new id carries the cart and the user, on both nodes.
    for node in [&a, &b] {
        let r = send(node, "GET", "/cart", Some(&jar(&after)), None).await;
        assert_eq!(items(&r.body), [("A".to_owned(), 3)]);
        assert_eq!(r.body["user"], "ann");
    }

    // Logout invalidates: the cookie is expired, and the id restores nowhere.
    let r = send(&b, "POST", "/logout", Some(&jar(&after)), None).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let c = parse_cookie(&r.set_cookie[0]);
    assert_eq!((c.name(), c.value()), ("JSESSIONID", ""));
    assert_eq!(c.max_age(), Some(cookie::time::Duration::ZERO));
    assert_eq!(row_count(&sqlite).await, 0);
    let c = node(SYNC, "c", store.clone());
    for node in [&b, &c] {
        let r = send(node, "GET", "/cart", Some(&jar(&after)), None).await;
        assert!(items(&r.body).is_empty() && r.body["user"].is_null());
    }
}

#[tokio::test]
async fn bad_cookies_get_a_fresh_session_and_never_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = sqlite(dir.path()).await;
    let store: Arc<dyn SessionAdmin> = Arc::new(sqlite.clone());
    let app = node(SYNC, "a", store.clone());
    let real = send(&app, "POST", "/cart/items", None, add("REAL", 1))
        .await
        .cookie("JSESSIONID")
        .unwrap();
    let forged = SessionId::generate();
    let forged = forged.as_cookie_value();
    let long = "A".repeat(64 * 1024);
    let cases = [
        "JSESSIONID=".to_owned(),
        "JSESSIONID".to_owned(),
        "JSESSIONID=abc".to_owned(),
        format!("JSESSIONID={long}"),
        format!("JSESSIONID={}", &real[..42]),
        format!("JSESSIONID={real}x"),
        format!("JSESSIONID={forged}"),
        format!("JSESSIONID=\"{forged}\""),
        format!("JSESSIONID={}", real.to_lowercase()),
        "JSESSIONID=../../etc/passwd; other=1".to_owned(),
        "=; ;;; ==JSESSIONID=".to_owned(),
        format!("{};JSESSIONID={forged}", "x=y;".repeat(2000)),
    ];
    let rows_before = row_count(&sqlite).await;
    for cookie in &cases {
        let r = send(&app, "GET", "/cart", Some(cookie), None).await;
        assert_eq!(r.status, StatusCode::OK, "{:.80}", cookie);
        assert!(items(&r.body).is_empty(), "{:.80}", cookie);
        assert!(
            r.set_cookie.is_empty(),
            "reading creates nothing: {:.80}",
            cookie
        );

        let r = send(&app, "POST", "/cart/items", Some(cookie), add("NEW", 1)).await;
        assert_eq!(r.status, StatusCode::OK);
        let fresh = r.cookie("JSESSIONID").expect("a fresh id");
        assert_ne!(fresh, forged, "a client-chosen id is never adopted");
        assert_ne!(fresh, real);
        assert!(SessionId::parse(&fresh).is_some());
        assert_eq!(items(&r.body), [("NEW".to_owned(), 1)]);
    }
    assert_eq!(row_count(&sqlite).await, rows_before + cases.len() as i64);

    // A header that is not UTF-8 at all.
    let request = http::Request::get("/cart")
        .header(
            "cookie",
            http::HeaderValue::from_bytes(b"JSESSIONID=\xff\xfe").unwrap(),
        )
        .body(axum::body::Body::empty())
        .unwrap();
    let response = tower::ServiceExt::oneshot(app.clone(), request)
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    // Another cookie with non-UTF-8 bytes does not hide ours.
    let mut header = b"pref=caf\xe9; ".to_vec();
    header.extend_from_slice(format!("JSESSIONID={real}").as_bytes());
    let r = send_raw_cookie(&app, &header).await;
    assert_eq!(items(&r), [("REAL".to_owned(), 1)]);

    // The real session still works, and an unknown id next to it does not hide it.
    let r = send(
        &app,
        "GET",
        "/cart",
        Some(&format!("JSESSIONID={forged}; JSESSIONID={real}")),
        None,
    )
    .await;
    assert_eq!(items(&r.body), [("REAL".to_owned(), 1)]);
}

#[tokio::test]
async fn corrupt_or_foreign_rows_give_a_fresh_session() {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = sqlite(dir.path()).await;
    let store: Arc<dyn SessionAdmin> = Arc::new(sqlite.clone());
    let a = node(SYNC, "a", store.clone());
    let mut ids = Vec::new();
    for _ in 0..4 {
        ids.push(
            send(&a, "POST", "/cart/items", None, add("A", 1))
                .await
                .cookie("JSESSIONID")
                .unwrap(),
        );
    }
    let corrupt = [
        vec![],                 // empty
        vec![1],                // truncated header
        vec![9, 0, 0x80],       // unknown format version
        vec![1, 1, 0xde, 0xad], // "compressed" garbage
    ];
    for (id, blob) in ids.iter().zip(corrupt) {
        let key = SessionId::parse(id).unwrap().store_key();
        sqlx::query("UPDATE stored_http_session SET data = ? WHERE session_id = ?")
            .bind(blob)
            .bind(key.as_str())
            .execute(sqlite.pool())
            .await
            .unwrap();
    }
    let b = node(SYNC, "b", store.clone());
    for id in &ids {
        let r = send(&b, "GET", "/cart", Some(&jar(id)), None).await;
        assert_eq!(r.status, StatusCode::OK);
        assert!(items(&r.body).is_empty());
        let r = send(&b, "POST", "/cart/items", Some(&jar(id)), add("B", 1)).await;
        assert_ne!(
            r.cookie("JSESSIONID").as_deref(),
            Some(id.as_str()),
            "never adopted"
        );
    }

    // A session of another application sharing the store is not restored by this one.
    let other = node(SYNC, "b", store.clone());
    let id = send(&a, "POST", "/cart/items", None, add("A", 1))
        .await
        .cookie("JSESSIONID")
        .unwrap();
    sqlx::query("UPDATE stored_http_session SET app = 'backoffice' WHERE session_id = ?")
        .bind(SessionId::parse(&id).unwrap().store_key().as_str())
        .execute(sqlite.pool())
        .await
        .unwrap();
    let r = send(&other, "GET", "/cart", Some(&jar(&id)), None).await;
    assert!(items(&r.body).is_empty());
}

#[tokio::test]
async fn an_unreachable_store_answers_503_not_a_fresh_session() {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = sqlite(dir.path()).await;
    let store: Arc<dyn SessionAdmin> = Arc::new(sqlite.clone());
    let a = node(SYNC, "a", store.clone());
    let id = send(&a, "POST", "/cart/items", None, add("A", 1))
        .await
        .cookie("JSESSIONID")
        .unwrap();
    let b = node(SYNC, "b", store.clone());
    sqlite.pool().close().await;
    // b cannot restore: the session may exist, so it must not be replaced by an empty one.
    let r = send(&b, "GET", "/cart", Some(&jar(&id)), None).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(r.set_cookie.is_empty());
    assert_eq!(r.body, serde_json::Value::Null, "an opaque, empty body");
    // a still serves it from its cache.
    let r = send(&a, "GET", "/cart", Some(&jar(&id)), None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(items(&r.body), [("A".to_owned(), 1)]);
    // A change a cannot commit is refused (sync: 2xx means committed), not kept for later, and
    // a drops its copy, which holds the refused change: the session's next request restores
    // the stored state, which it cannot while the store is down.
    let r = send(&a, "POST", "/cart/items", Some(&jar(&id)), add("B", 1)).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(r.set_cookie.is_empty());
    let r = send(&a, "GET", "/cart", Some(&jar(&id)), None).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test]
async fn a_failed_direct_save_is_refused_and_dropped() {
    // Without group commit each request writes its own row: one that fails is kept by nobody,
    // so it is refused (503, no cookie) and dropped from the node; it never appears later.
    // (The same with group commit: the writer drops a sync save that failed.)
    let dir = tempfile::tempdir().unwrap();
    let sqlite = sqlite(dir.path()).await;
    let store: Arc<dyn SessionAdmin> = Arc::new(sqlite.clone());
    let direct = format!("{SYNC}session.save.group.commit=false\n");
    let a = node(&direct, "a", store.clone());
    let id = send(&a, "POST", "/cart/items", None, add("A", 1))
        .await
        .cookie("JSESSIONID")
        .unwrap();
    // Make writes fail: a trigger that aborts every update.
    fail_updates(&sqlite, true).await;
    let r = send(&a, "POST", "/cart/items", Some(&jar(&id)), add("B", 1)).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(r.set_cookie.is_empty());
    fail_updates(&sqlite, false).await;
    // Neither this node nor another serves the refused change; the next one is kept.
    let r = send(&a, "GET", "/cart", Some(&jar(&id)), None).await;
    assert_eq!(items(&r.body), [("A".to_owned(), 1)]);
    let r = send(&a, "POST", "/cart/items", Some(&jar(&id)), add("C", 1)).await;
    assert_eq!(r.status, StatusCode::OK);
    let b = node(SYNC, "b", store.clone());
    let r = send(&b, "GET", "/cart", Some(&jar(&id)), None).await;
    assert_eq!(items(&r.body), [("A".to_owned(), 1), ("C".to_owned(), 1)]);
}

/// `set_principal` refuses what a store could not keep, and gives the session a new id when
/// the user changes (session fixation); `set_principal_keeping_id` does not.
#[tokio::test]
async fn a_new_principal_gets_a_new_id_and_bad_principals_are_refused() {
    use axum::extract::Path;
    use axum::response::IntoResponse as _;
    use axum::routing::post;
    use session_failover::{Session, SessionFailoverLayer};
    let app = Router::new()
        .route(
            "/as/{user}",
            post(|session: Session, Path(user): Path<String>| async move {
                match session.set_principal(Some(user)) {
                    Ok(()) => StatusCode::OK.into_response(),
                    Err(e) => (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
                }
            }),
        )
        .route(
            "/keep/{user}",
            post(|session: Session, Path(user): Path<String>| async move {
                session.set_principal_keeping_id(Some(user)).unwrap();
            }),
        )
        .route(
            "/visit",
            post(|session: Session| async move { session.insert("n", 1u32) }),
        )
        .layer(SessionFailoverLayer::new("app"));
    let first = send(&app, "POST", "/visit", None, None)
        .await
        .cookie("JSESSIONID")
        .unwrap();
    let r = send(&app, "POST", "/as/ann", Some(&jar(&first)), None).await;
    assert_eq!(r.status, StatusCode::OK);
    let second = r.cookie("JSESSIONID").expect("a new id at sign-in");
    assert_ne!(second, first);
    // The planted id is worth nothing now.
    let r = send(&app, "POST", "/keep/eve", Some(&jar(&first)), None).await;
    assert_ne!(r.cookie("JSESSIONID"), Some(first.clone()));
    // The same user again: no new id; another user kept by the opt-out: no new id either.
    let r = send(&app, "POST", "/as/ann", Some(&jar(&second)), None).await;
    assert_eq!(r.cookie("JSESSIONID"), None);
    let r = send(&app, "POST", "/keep/bob", Some(&jar(&second)), None).await;
    assert_eq!(r.cookie("JSESSIONID"), None);
    let long = "x".repeat(256);
    for user in ["a%00b", "tab%09", long.as_str()] {
        let r = send(
            &app,
            "POST",
            &format!("/as/{user}"),
            Some(&jar(&second)),
            None,
        )
        .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{user}");
        assert!(r.cookie("JSESSIONID").is_none(), "{user}: no new id");
    }
    // 255 characters (510 bytes of UTF-8) are fine.
    let ok = "%C3%A9".repeat(255);
    let r = send(
        &app,
        "POST",
        &format!("/as/{ok}"),
        Some(&jar(&second)),
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "255 characters are fine");
}

#[tokio::test]
async fn reads_touch_the_row_at_most_once_per_tenth_of_the_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = sqlite(dir.path()).await;
    let counting = CountingStore::new(Arc::new(sqlite.clone()));
    // A 10 s timeout: a read may touch the row at most once a second.
    let app = node(
        &format!("{SYNC}session.timeout=10\n"),
        "a",
        counting.clone(),
    );
    let id = send(&app, "POST", "/cart/items", None, add("A", 1))
        .await
        .cookie("JSESSIONID")
        .unwrap();
    let key = SessionId::parse(&id).unwrap().store_key();
    let expires = |s: SqliteStore, key: session_failover::session::SessionKey| async move {
        let row = sqlx::query("SELECT expires_at FROM stored_http_session WHERE session_id = ?")
            .bind(key.as_str())
            .fetch_one(s.pool())
            .await
            .unwrap();
        row.get::<i64, _>("expires_at")
    };
    let first = expires(sqlite.clone(), key.clone()).await;
    for _ in 0..5 {
        send(&app, "GET", "/cart", Some(&jar(&id)), None).await;
    }
    assert_eq!(
        counting.count("reset_timer"),
        0,
        "within a tenth of the timeout: no touch"
    );
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    for _ in 0..5 {
        send(&app, "GET", "/cart", Some(&jar(&id)), None).await;
    }
    assert_eq!(counting.count("reset_timer"), 1, "one touch for five reads");
    assert_eq!(counting.rows_written(), 1, "a touch rewrites no data");
    assert!(
        expires(sqlite.clone(), key).await >= first + 1100,
        "expiry pushed forward"
    );
}

#[tokio::test]
async fn expired_sessions_never_restore() {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = sqlite(dir.path()).await;
    let store: Arc<dyn SessionAdmin> = Arc::new(sqlite.clone());
    let local = format!("{SYNC}session.timeout=1\n");
    let a = node(&local, "a", store.clone());
    let id = send(&a, "POST", "/cart/items", None, add("A", 1))
        .await
        .cookie("JSESSIONID")
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
    assert_eq!(
        row_count(&sqlite).await,
        1,
        "not purged: the row is still there"
    );
    let b = node(&local, "b", store.clone());
    for node in [&a, &b] {
        let r = send(node, "GET", "/cart", Some(&jar(&id)), None).await;
        assert_eq!(r.status, StatusCode::OK);
        assert!(items(&r.body).is_empty(), "expired in cache and in store");
    }
}

#[tokio::test]
async fn clones_of_a_configured_layer_share_one_node_cache() {
    // Memory-only: a session is visible through another router only if the cache is shared.
    let layer = session_failover::SessionFailoverLayer::new("shop").with_cookie_name("SHOP");
    let handler = |session: session_failover::Session| async move {
        let n: u64 = session.get("n").unwrap_or(0) + 1;
        session.insert("n", n);
        n.to_string()
    };
    let a = Router::new()
        .route("/", axum::routing::post(handler))
        .layer(layer.clone());
    let b = Router::new()
        .route("/", axum::routing::post(handler))
        .layer(layer.clone());
    let r = send(&a, "POST", "/", None, None).await;
    let id = r.cookie("SHOP").expect("a new session sets its cookie");
    let r = send(&b, "POST", "/", Some(&format!("SHOP={id}")), None).await;
    assert_eq!(
        r.body,
        json!(2),
        "the second router served the first one's session"
    );
    assert!(r.set_cookie.is_empty(), "no new session was created");
}

/// A session larger than `session.max.size` is refused where it is saved (500, no cookie) and
/// its change dropped: it is never stored, where a body that compresses well could be written
/// and never restored.
#[tokio::test]
async fn a_session_over_the_size_limit_is_refused_not_stored() {
    use axum::routing::{get, post};
    use session_failover::{SaveMode, Session, SessionFailoverLayer};
    let dir = tempfile::tempdir().unwrap();
    let sqlite = sqlite(dir.path()).await;
    let store: Arc<dyn SessionAdmin> = Arc::new(sqlite.clone());
    let app = Router::new()
        .route(
            "/small",
            post(|session: Session| async move { session.insert("n", 1u32) }),
        )
        .route(
            // 4 KiB that compress to almost nothing.
            "/big",
            post(|session: Session| async move { session.insert("blob", "x".repeat(4096)) }),
        )
        .route(
            "/names",
            get(|session: Session| async move { session.attribute_names().join(",") }),
        )
        .layer(
            SessionFailoverLayer::new("app")
                .with_store(
                    store.clone() as Arc<dyn session_failover::SessionStore>,
                    SaveMode::Sync,
                )
                .with_max_size(2048),
        );
    let id = send(&app, "POST", "/small", None, None)
        .await
        .cookie("JSESSIONID")
        .unwrap();
    let r = send(&app, "POST", "/big", Some(&jar(&id)), None).await;
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(r.set_cookie.is_empty());
    let names = tower::ServiceExt::oneshot(
        app.clone(),
        http::Request::get("/names")
            .header("cookie", jar(&id))
            .body(axum::body::Body::empty())
            .unwrap(),
    )
    .await
    .unwrap();
    let names = http_body_util::BodyExt::collect(names.into_body())
        .await
        .unwrap()
        .to_bytes();
    assert_eq!(&names[..], b"n", "the refused change is dropped");
    let row = store
        .get(&SessionId::parse(&id).unwrap().store_key(), 0)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(row.meta.attributes, ["n"]);
}

/// `Session::save` before a side effect: the side effect runs only after the change is
/// committed (it can see the row), never when the save is refused, and the refused response is
/// refused whatever the handler returns. A save with nothing left writes nothing more.
#[tokio::test]
async fn an_explicit_save_commits_before_the_side_effect() {
    use axum::extract::{Path, State};
    use axum::routing::post;
    use session_failover::session::SaveError;
    use session_failover::{SaveMode, Session, SessionFailoverLayer};
    use std::sync::Mutex;

    /// Orders placed, each with the order its session's row held when it was placed.
    type Placed = Arc<Mutex<Vec<(String, Option<String>)>>>;
    async fn order(
        State((store, placed)): State<(SqliteStore, Placed)>,
        session: Session,
        Path(n): Path<String>,
    ) -> Result<&'static str, SaveError> {
        session.insert("order", n.clone());
        session.save().await?;
        // The side effect: it finds the change committed (the codec is plaintext here).
        let data: Vec<u8> = sqlx::query("SELECT data FROM stored_http_session")
            .fetch_one(store.pool())
            .await
            .unwrap()
            .get("data");
        let stored = String::from_utf8_lossy(&data)
            .contains(&n)
            .then(|| n.clone());
        placed.lock().unwrap().push((n, stored));
        // Nothing new since: this save writes nothing.
        session.save().await?;
        Ok("placed")
    }

    let dir = tempfile::tempdir().unwrap();
    let sqlite = sqlite(dir.path()).await;
    let counted = CountingStore::new(Arc::new(sqlite.clone()));
    let placed: Placed = Arc::default();
    let app = Router::new()
        .route("/order/{n}", post(order))
        .route(
            "/ignore",
            post(|session: Session| async move {
                session.insert("order", "ignored".to_owned());
                let _ = session.save().await;
                // A change after the refusal: never saved, by this request or a later one.
                session.insert("note", "after the refusal".to_owned());
                "placed"
            }),
        )
        .route(
            "/peek",
            axum::routing::get(|session: Session| async move {
                axum::Json(json!({
                    "order": session.get::<String>("order"),
                    "note": session.get::<String>("note"),
                }))
            }),
        )
        .with_state((sqlite.clone(), placed.clone()))
        .layer(SessionFailoverLayer::new("shop").with_persistence(
            // Each save its own write (no group commit): a failed one is kept by nobody and
            // refused. (The same through the writer: a sync save is Ok only once committed.)
            Persistence::new(
                counted.clone(),
                session_failover::persist::WriterConfig::default(),
                std::time::Duration::from_secs(5),
                false,
            ),
            SaveMode::Sync,
        ));
    let r = send(&app, "POST", "/order/A-1001", None, None).await;
    assert_eq!(r.status, StatusCode::OK);
    let id = r.cookie("JSESSIONID").expect("the new session's cookie");
    assert_eq!(
        placed.lock().unwrap().as_slice(),
        [("A-1001".to_owned(), Some("A-1001".to_owned()))],
        "placed after its session change was committed"
    );
    assert_eq!(
        counted.rows_written(),
        1,
        "one write: the second save and the end had nothing"
    );
    assert!(
        r.set_cookie
            .iter()
            .any(|c| c.starts_with("JSESSIONID_VERSION=")),
        "the committed version is sent as after any sync save: {:?}",
        r.set_cookie
    );

    // The store refuses writes: the save fails, nothing is placed, and the response is a 503
    // without a cookie, as for a change saved after the handler.
    fail_updates(&sqlite, true).await;
    let r = send(&app, "POST", "/order/B-2002", Some(&jar(&id)), None).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(r.set_cookie.is_empty());
    assert_eq!(
        placed.lock().unwrap().len(),
        1,
        "no side effect for a refused save"
    );
    let r = send(&app, "POST", "/ignore", Some(&jar(&id)), None).await;
    assert_eq!(
        r.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "refused whatever the handler says"
    );
    fail_updates(&sqlite, false).await;
    let peek = send(&app, "GET", "/peek", Some(&jar(&id)), None).await;
    assert_eq!(
        peek.body,
        json!({"order": "A-1001", "note": null}),
        "the last stored state: not the refused change, nor the one made after it"
    );
    let r = send(&app, "POST", "/order/C-3003", Some(&jar(&id)), None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        placed.lock().unwrap().last(),
        Some(&("C-3003".to_owned(), Some("C-3003".to_owned())))
    );
}

/// An unknown session id costs one store read a second in sync mode, not one a request; a
/// client that names a version it wrote, and async mode (where another node's write of the id
/// may be on its way), read every time.
#[tokio::test]
async fn unknown_ids_are_read_once_a_second_in_sync_mode() {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = sqlite(dir.path()).await;
    let counting = CountingStore::new(Arc::new(sqlite.clone()));
    let sync = node(SYNC, "a", counting.clone());
    let unknown = SessionId::generate();
    let cookie = jar(unknown.as_cookie_value());
    for _ in 0..5 {
        let r = send(&sync, "GET", "/cart", Some(&cookie), None).await;
        assert_eq!((r.status, items(&r.body)), (StatusCode::OK, vec![]));
    }
    assert_eq!(counting.count("get"), 1, "one read for five requests");
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    send(&sync, "GET", "/cart", Some(&cookie), None).await;
    assert_eq!(counting.count("get"), 2, "remembered for a second");
    // With a version cookie the client says it wrote: always read.
    let hinted = format!("{cookie}; JSESSIONID_VERSION=3");
    for _ in 0..3 {
        send(&sync, "GET", "/cart", Some(&hinted), None).await;
    }
    assert_eq!(counting.count("get"), 5);
    // Async mode: always read.
    let asynchronous = node(
        "spring.session.enabled=true\nspring.session.storefront.save=async\n",
        "c",
        counting.clone(),
    );
    for _ in 0..3 {
        send(&asynchronous, "GET", "/cart", Some(&cookie), None).await;
    }
    assert_eq!(counting.count("get"), 8);
}

/// A `Session::save` the serializability checker refuses writes nothing, and nothing the
/// handler changes afterwards is saved by a later request: the node drops its copy.
#[tokio::test]
async fn a_save_the_checker_refuses_keeps_nothing_of_the_request() {
    use axum::routing::{get, post};
    use serde::{Deserialize, Serialize};
    use session_failover::session::SaveError;
    use session_failover::{SaveMode, Session, SessionFailoverLayer};

    /// Loses a field on a round trip: the checker refuses it.
    #[derive(Serialize, Deserialize)]
    struct Lossy {
        kept: u32,
        #[serde(skip_deserializing)]
        lost: u32,
    }
    let dir = tempfile::tempdir().unwrap();
    let sqlite = sqlite(dir.path()).await;
    let app = Router::new()
        .route(
            "/order",
            post(|session: Session| async move { session.insert("order", "A-1".to_owned()) }),
        )
        .route(
            "/lossy",
            post(|session: Session| async move {
                session.insert("lossy", Lossy { kept: 1, lost: 2 });
                let refused = session.save().await == Err(SaveError::CheckFailed);
                session.insert("note", "after the refusal".to_owned());
                if refused { "refused" } else { "saved" }
            }),
        )
        .route(
            "/peek",
            get(|session: Session| async move {
                axum::Json(json!({
                    "order": session.get::<String>("order"),
                    "note": session.get::<String>("note"),
                    "lossy": session.attribute_names().contains(&"lossy".to_owned()),
                }))
            }),
        )
        .layer(
            SessionFailoverLayer::new("shop")
                .with_store(Arc::new(sqlite.clone()), SaveMode::Sync)
                .with_serialization_check(true, true),
        );
    let id = send(&app, "POST", "/order", None, None)
        .await
        .cookie("JSESSIONID")
        .unwrap();
    let r = send(&app, "POST", "/lossy", Some(&jar(&id)), None).await;
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR);
    let peek = send(&app, "GET", "/peek", Some(&jar(&id)), None).await;
    assert_eq!(
        peek.body,
        json!({"order": "A-1", "note": null, "lossy": false})
    );
    // A later change is saved on top of the stored state only.
    send(&app, "POST", "/order", Some(&jar(&id)), None).await;
    let stored: String = sqlx::query("SELECT attributes FROM stored_http_session")
        .fetch_one(sqlite.pool())
        .await
        .unwrap()
        .get("attributes");
    assert_eq!(stored, r#"["order"]"#);
}

/// Sync mode: a request whose change rode in another request's save (it finished after that
/// save took the session's state) is answered 2xx only if that save committed. Here the save
/// fails: both requests are refused, and neither change is served afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_carried_by_a_refused_save_is_refused_too() {
    use axum::routing::{get, post};
    use session_failover::{SaveMode, Session, SessionFailoverLayer};
    use std::time::Duration;
    let dir = tempfile::tempdir().unwrap();
    let sqlite = sqlite(dir.path()).await;
    let app = Router::new()
        .route(
            "/slow",
            post(|session: Session| async move {
                session.insert("slow", "set".to_owned());
                tokio::time::sleep(Duration::from_millis(400)).await;
                "ok"
            }),
        )
        .route(
            "/fast",
            post(|session: Session| async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                session.insert("fast", "set".to_owned());
                "ok"
            }),
        )
        .route(
            "/peek",
            get(|session: Session| async move {
                axum::Json(json!({
                    "slow": session.get::<String>("slow"),
                    "fast": session.get::<String>("fast"),
                }))
            }),
        )
        .layer(SessionFailoverLayer::new("shop").with_persistence(
            // Group commit: the saves go through the writer.
            Persistence::new(
                Arc::new(sqlite.clone()),
                session_failover::persist::WriterConfig::default(),
                Duration::from_secs(2),
                true,
            ),
            SaveMode::Sync,
        ));
    let r = send(&app, "POST", "/fast", None, None).await;
    assert_eq!(r.status, StatusCode::OK);
    let id = r.cookie("JSESSIONID").unwrap();
    let peek = send(&app, "GET", "/peek", Some(&jar(&id)), None).await;
    assert_eq!(peek.body, json!({"slow": null, "fast": "set"}));
    fail_updates(&sqlite, true).await;
    // /slow changes the session and is still running when /fast saves: /fast's save carries
    // /slow's change, and fails.
    let cookie = jar(&id);
    let (slow, fast) = tokio::join!(send(&app, "POST", "/slow", Some(&cookie), None), async {
        tokio::time::sleep(Duration::from_millis(20)).await;
        send(&app, "POST", "/fast", Some(&cookie), None).await
    });
    assert_eq!(
        fast.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "its own save failed"
    );
    assert_eq!(
        slow.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "its change rode in the refused save: not committed, so not acknowledged"
    );
    fail_updates(&sqlite, false).await;
    let peek = send(&app, "GET", "/peek", Some(&jar(&id)), None).await;
    assert_eq!(
        peek.body,
        json!({"slow": null, "fast": "set"}),
        "the last stored state"
    );
}

/// Sync mode: a request that holds a copy whose save was just refused (the copy is dropped:
/// nobody writes its change) and changes it afterwards is refused too. Before, its save wrote
/// the dropped copy, the refused change with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_on_a_copy_dropped_by_a_refused_save_is_refused() {
    use axum::routing::{get, post};
    use session_failover::{SaveMode, Session, SessionFailoverLayer};
    use std::time::Duration;
    let dir = tempfile::tempdir().unwrap();
    let sqlite = sqlite(dir.path()).await;
    let app = Router::new()
        .route(
            "/late",
            post(|session: Session| async move {
                let _: Option<String> = session.get("late");
                tokio::time::sleep(Duration::from_millis(1200)).await;
                session.insert("late", "set".to_owned());
                "ok"
            }),
        )
        .route(
            "/fast",
            post(|session: Session| async move {
                session.update("fast", |n: &mut u32| *n += 1);
                "ok"
            }),
        )
        .route(
            "/peek",
            get(|session: Session| async move {
                axum::Json(json!({
                    "late": session.get::<String>("late"),
                    "fast": session.get::<u32>("fast"),
                }))
            }),
        )
        .layer(SessionFailoverLayer::new("shop").with_persistence(
            Persistence::new(
                Arc::new(sqlite.clone()),
                session_failover::persist::WriterConfig::default(),
                Duration::from_millis(400),
                true,
            ),
            SaveMode::Sync,
        ));
    let r = send(&app, "POST", "/fast", None, None).await;
    assert_eq!(r.status, StatusCode::OK);
    let id = r.cookie("JSESSIONID").unwrap();
    fail_updates(&sqlite, true).await;
    let cookie = jar(&id);
    let late = {
        let (app, cookie) = (app.clone(), cookie.clone());
        tokio::spawn(async move { send(&app, "POST", "/late", Some(&cookie), None).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    // /late holds the copy; /fast's save is refused at the store timeout and drops it.
    let fast = send(&app, "POST", "/fast", Some(&cookie), None).await;
    assert_eq!(fast.status, StatusCode::SERVICE_UNAVAILABLE);
    // The store takes writes again before /late changes the copy and saves.
    fail_updates(&sqlite, false).await;
    let late = late.await.unwrap();
    assert_eq!(
        late.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "its change was made on a copy nobody writes: refused"
    );
    let peek = send(&app, "GET", "/peek", Some(&jar(&id)), None).await;
    assert_eq!(
        peek.body,
        json!({"late": null, "fast": 1}),
        "the last stored state: neither the refused change nor the one made on its copy"
    );
}
