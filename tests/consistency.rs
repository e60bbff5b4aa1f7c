//! Races between requests and nodes: nothing ended comes back, nothing saved is cut in half.

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Router;
use axum::routing::{get, post};
use common::{SlowStore, config, items, send, sqlite};
use http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::json;
use session_failover::persist::Persistence;
use session_failover::session::SessionId;
use session_failover::store::{SessionAdmin, SqliteStore};
use session_failover::{SaveMode, Session, SessionFailoverLayer, server};
use sqlx::Row as _;

const SYNC: &str = "spring.session.enabled=true\nspring.session.storefront.save=sync\n";

fn node(name: &str, store: Arc<dyn SessionAdmin>) -> Router {
    node_with(SYNC, name, store)
}

fn node_with(local: &str, name: &str, store: Arc<dyn SessionAdmin>) -> Router {
    let config = config(local);
    let persistence = Persistence::from_config(store, &config);
    server::app(&config, name, Some(persistence))
}

fn add(sku: &str) -> Option<serde_json::Value> {
    Some(json!({ "sku": sku, "qty": 1 }))
}

fn jar(id: &str) -> String {
    format!("JSESSIONID={id}")
}

async fn rows(store: &SqliteStore) -> i64 {
    sqlx::query("SELECT COUNT(*) AS n FROM stored_http_session")
        .fetch_one(store.pool())
        .await
        .unwrap()
        .get("n")
}

#[tokio::test]
async fn a_logout_completes_even_if_the_client_goes_away() {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = sqlite(dir.path()).await;
    let slow = SlowStore::new(Arc::new(sqlite.clone()));
    let a = node("a", slow.clone());
    let id = send(&a, "POST", "/cart/items", None, add("A"))
        .await
        .cookie("JSESSIONID")
        .unwrap();
    slow.destroy_ms.store(300, Ordering::SeqCst);
    // The client gives up after 30 ms: the response future is dropped mid-delete.
    let cookie = jar(&id);
    let logout = send(&a, "POST", "/logout", Some(&cookie), None);
    assert!(
        tokio::time::timeout(Duration::from_millis(30), logout)
            .await
            .is_err()
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(rows(&sqlite).await, 0, "the delete ran to completion");
    let b = node("b", Arc::new(sqlite.clone()));
    let r = send(&b, "GET", "/cart", Some(&jar(&id)), None).await;
    assert!(
        items(&r.body).is_empty(),
        "the session is gone on every node"
    );
}

#[tokio::test]
async fn a_save_that_lands_after_a_logout_does_not_bring_the_session_back() {
    // Each request writing its own row: the late update finds no row and creates none.
    let direct = format!("{SYNC}session.save.group.commit=false\n");
    let (status, rows_after) = save_racing_a_logout(&direct).await;
    assert_eq!(status, StatusCode::CONFLICT, "R1 was not kept");
    assert_eq!(
        rows_after, 0,
        "R1's late update found no row and created none"
    );
    // Through the writer: the logout waits behind R1's batch, so R1 is kept and then ended.
    let (status, rows_after) = save_racing_a_logout(SYNC).await;
    assert!(
        matches!(status, StatusCode::OK | StatusCode::CONFLICT),
        "{status}"
    );
    assert_eq!(rows_after, 0, "the logout won in the end");
}

/// R1 adds an item with a slow save; R2 logs out meanwhile. R1's status, and the rows after.
async fn save_racing_a_logout(local: &str) -> (StatusCode, i64) {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = sqlite(dir.path()).await;
    let slow = SlowStore::new(Arc::new(sqlite.clone()));
    let a = node_with(local, "a", slow.clone());
    let id = send(&a, "POST", "/cart/items", None, add("A"))
        .await
        .cookie("JSESSIONID")
        .unwrap();
    slow.update_ms.store(300, Ordering::SeqCst);
    let r1 = {
        let (a, cookie) = (a.clone(), jar(&id));
        tokio::spawn(async move { send(&a, "POST", "/cart/items", Some(&cookie), add("B")).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    let r2 = send(&a, "POST", "/logout", Some(&jar(&id)), None).await;
    assert_eq!(r2.status, StatusCode::NO_CONTENT);
    let status = r1.await.unwrap().status;
    let rows_after = rows(&sqlite).await;
    slow.update_ms.store(0, Ordering::SeqCst);
    for node in [&a, &node("b", Arc::new(sqlite.clone()))] {
        let r = send(node, "GET", "/cart", Some(&jar(&id)), None).await;
        assert!(items(&r.body).is_empty());
    }
    (status, rows_after)
}

#[tokio::test]
async fn a_logout_on_another_node_is_not_undone_by_a_stale_copy() {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = sqlite(dir.path()).await;
    let store: Arc<dyn SessionAdmin> = Arc::new(sqlite.clone());
    let a = node("a", store.clone());
    let b = node("b", store.clone());
    let id = send(&a, "POST", "/cart/items", None, add("A"))
        .await
        .cookie("JSESSIONID")
        .unwrap();
    // The user fails over to b and logs out there; a still caches the session.
    assert_eq!(
        send(&b, "POST", "/logout", Some(&jar(&id)), None)
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(rows(&sqlite).await, 0);
    // Back on a (sticky again): a write finds the row gone, and a drops its copy.
    let r = send(&a, "POST", "/cart/items", Some(&jar(&id)), add("B")).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "not acknowledged");
    assert_eq!(
        rows(&sqlite).await,
        0,
        "the stale copy did not re-create the row"
    );
    let r = send(&a, "GET", "/cart", Some(&jar(&id)), None).await;
    assert!(
        items(&r.body).is_empty(),
        "a stopped serving the ended session"
    );
}

#[tokio::test]
async fn a_stale_copy_yields_to_the_newer_state_of_another_node() {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = sqlite(dir.path()).await;
    let store: Arc<dyn SessionAdmin> = Arc::new(sqlite.clone());
    let a = node("a", store.clone());
    let b = node("b", store.clone());
    let id = send(&a, "POST", "/cart/items", None, add("A"))
        .await
        .cookie("JSESSIONID")
        .unwrap();
    send(&b, "POST", "/cart/items", Some(&jar(&id)), add("B")).await; // b restores, writes v2
    // a's copy is v1: its compare-and-set on v1 fails; a reads v2, adds C to it again (the
    // storefront adds with Session::update) and writes v3. Nothing is refused, nothing lost.
    let r = send(&a, "POST", "/cart/items", Some(&jar(&id)), add("C")).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let all = [
        ("A".to_owned(), 1),
        ("B".to_owned(), 1),
        ("C".to_owned(), 1),
    ];
    let r = send(&a, "GET", "/cart", Some(&jar(&id)), None).await;
    assert_eq!(items(&r.body), all, "a serves the merged state");
    let row = sqlx::query("SELECT node, version FROM stored_http_session")
        .fetch_one(sqlite.pool())
        .await
        .unwrap();
    assert_eq!(
        (row.get::<String, _>("node"), row.get::<i64, _>("version")),
        ("a".to_owned(), 3)
    );
    let c = node("c", store.clone());
    let r = send(&c, "GET", "/cart", Some(&jar(&id)), None).await;
    assert_eq!(items(&r.body), all, "and so does every other node");
}

#[tokio::test]
async fn a_read_then_write_of_a_value_another_node_replaced_is_refused() {
    // A handler that reads a value and writes one derived from it (not Session::update): if
    // another node replaced the value since this node read it, the write is a true conflict.
    let dir = tempfile::tempdir().unwrap();
    let sqlite = sqlite(dir.path()).await;
    let store: Arc<dyn SessionAdmin> = Arc::new(sqlite.clone());
    let counter = |name: &str| {
        let config = config(SYNC);
        let persistence = Persistence::from_config(store.clone(), &config);
        Router::new()
            .route(
                "/inc",
                post(|s: Session| async move {
                    let n = s.get::<u32>("n").unwrap_or(0);
                    s.insert("n", n + 1);
                    s.insert("other", 1u8);
                    axum::Json(n + 1)
                }),
            )
            .route(
                "/blind",
                post(|s: Session| async move {
                    s.insert("note", "b".to_owned());
                }),
            )
            .route(
                "/n",
                get(|s: Session| async move { axum::Json(s.get::<u32>("n")) }),
            )
            .layer(SessionFailoverLayer::from_config(
                &config,
                "storefront",
                "/",
                name,
                Some(persistence),
            ))
    };
    let (a, b) = (counter("a"), counter("b"));
    let id = send(&a, "POST", "/inc", None, None)
        .await
        .cookie("JSESSIONID")
        .unwrap();
    // b restores (n = 1) and increments to 2; a still holds n = 1.
    assert_eq!(
        send(&b, "POST", "/inc", Some(&jar(&id)), None).await.body,
        2
    );
    // a's increment read 1, which b replaced: refused, not acknowledged.
    let r = send(&a, "POST", "/inc", Some(&jar(&id)), None).await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    assert_eq!(send(&a, "GET", "/n", Some(&jar(&id)), None).await.body, 2);
    assert_eq!(send(&b, "GET", "/n", Some(&jar(&id)), None).await.body, 2);
    // A blind write of another attribute on a stale copy merges without a conflict.
    send(&b, "POST", "/inc", Some(&jar(&id)), None).await; // n = 3 on b
    let r = send(&a, "POST", "/blind", Some(&jar(&id)), None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(send(&a, "GET", "/n", Some(&jar(&id)), None).await.body, 3);
}

#[tokio::test]
async fn the_old_id_is_dead_at_once_after_a_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = sqlite(dir.path()).await;
    let slow = SlowStore::new(Arc::new(sqlite.clone()));
    let a = node("a", slow.clone());
    let old = send(&a, "POST", "/cart/items", None, add("A"))
        .await
        .cookie("JSESSIONID")
        .unwrap();
    // The login's insert of the new row is slow; meanwhile the old id must already be dead.
    slow.set_ms.store(300, Ordering::SeqCst);
    let login = {
        let (a, cookie) = (a.clone(), jar(&old));
        tokio::spawn(async move {
            send(
                &a,
                "POST",
                "/login",
                Some(&cookie),
                Some(json!({"user": "eve"})),
            )
            .await
        })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    let r = send(&a, "GET", "/cart", Some(&jar(&old)), None).await;
    assert!(
        items(&r.body).is_empty() && r.body["user"].is_null(),
        "old id sees nothing"
    );
    let new = login.await.unwrap().cookie("JSESSIONID").unwrap();
    let r = send(&a, "GET", "/cart", Some(&jar(&new)), None).await;
    assert_eq!(r.body["user"], "eve");
    assert_eq!(items(&r.body), [("A".to_owned(), 1)]);
    assert!(
        !SessionAdmin::exists(&sqlite, &SessionId::parse(&old).unwrap().store_key(), 0)
            .await
            .unwrap()
    );
}

#[derive(Clone, Serialize, Deserialize, PartialEq, Debug)]
struct AddressV2 {
    city: String,
    #[serde(default)]
    zip: Option<String>,
}

#[derive(Clone, Serialize, Deserialize, PartialEq, Debug)]
struct AddressV1 {
    city: String,
}

#[tokio::test]
async fn an_older_reader_does_not_strip_fields_it_does_not_know() {
    // During a rolling upgrade, a node running the old build reads the newer struct with fewer
    // fields and then saves the session for another reason: the newer fields must survive.
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn SessionAdmin> = Arc::new(sqlite(dir.path()).await);
    let layer = |node: &str| {
        SessionFailoverLayer::new("shop")
            .with_store(store.clone(), SaveMode::Sync)
            .with_node_name(node)
    };
    let new_build = Router::new()
        .route(
            "/write",
            post(|s: Session| async move {
                s.insert(
                    "address",
                    AddressV2 {
                        city: "Kyiv".into(),
                        zip: Some("01001".into()),
                    },
                );
            }),
        )
        .route(
            "/read",
            get(|s: Session| async move { format!("{:?}", s.get::<AddressV2>("address")) }),
        )
        .layer(layer("new"));
    let old_build = Router::new()
        .route(
            "/touch",
            post(|s: Session| async move {
                let city = s.get::<AddressV1>("address").map(|a| a.city);
                s.insert("visited", city);
            }),
        )
        .layer(layer("old"));
    let id = send(&new_build, "POST", "/write", None, None)
        .await
        .cookie("JSESSIONID")
        .unwrap();
    send(&old_build, "POST", "/touch", Some(&jar(&id)), None).await;
    let fresh = Router::new()
        .route("/read", get(|s: Session| async move {
            axum::Json(json!({ "address": s.get::<AddressV2>("address"), "visited": s.get::<Option<String>>("visited") }))
        }))
        .layer(layer("fresh"));
    let r = send(&fresh, "GET", "/read", Some(&jar(&id)), None).await;
    assert_eq!(r.body["address"], json!({"city": "Kyiv", "zip": "01001"}));
    assert_eq!(r.body["visited"], "Kyiv");
}

/// A request that already holds the session when another request of it signs in (a new id)
/// goes on with the session under its new id: its change lands there, and it does not start a
/// second session (a fork: the user's next requests would carry one of two carts).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_racing_a_rotation_follows_the_session_to_its_new_id() {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = sqlite(dir.path()).await;
    let started = Arc::new(tokio::sync::Notify::new());
    let release = Arc::new(tokio::sync::Notify::new());
    let (s, r) = (Arc::clone(&started), Arc::clone(&release));
    let app = Router::new()
        .route(
            "/slow",
            post(move |session: Session| {
                let (started, release) = (Arc::clone(&s), Arc::clone(&r));
                async move {
                    // Holds the session from before the sign-in.
                    let _: Option<u32> = session.get("n");
                    started.notify_one();
                    release.notified().await;
                    session.update("n", |n: &mut u32| *n += 1);
                    "done"
                }
            }),
        )
        .route(
            "/login",
            post(|session: Session| async move {
                session.set_principal(Some("eve".to_owned())).unwrap();
                "in"
            }),
        )
        .route(
            "/read",
            get(|session: Session| async move {
                axum::Json(json!({"n": session.get::<u32>("n"), "user": session.principal()}))
            }),
        )
        .layer(
            SessionFailoverLayer::new("shop").with_store(Arc::new(sqlite.clone()), SaveMode::Sync),
        );
    // A session with n = 1.
    let first = {
        let app = app.clone();
        tokio::spawn(async move { send(&app, "POST", "/slow", None, None).await })
    };
    started.notified().await;
    release.notify_one();
    let old = first.await.unwrap().cookie("JSESSIONID").unwrap();
    let slow = {
        let (app, cookie) = (app.clone(), jar(&old));
        tokio::spawn(async move { send(&app, "POST", "/slow", Some(&cookie), None).await })
    };
    started.notified().await;
    let login = send(&app, "POST", "/login", Some(&jar(&old)), None).await;
    assert_eq!(login.status, StatusCode::OK);
    let new = login.cookie("JSESSIONID").unwrap();
    assert_ne!(new, old);
    release.notify_one();
    let slow = slow.await.unwrap();
    assert_eq!(slow.status, StatusCode::OK);
    if let Some(id) = slow.cookie("JSESSIONID") {
        assert_eq!(
            id, new,
            "the racing request names the session's new id, not a third"
        );
    }
    let r = send(&app, "GET", "/read", Some(&jar(&new)), None).await;
    assert_eq!(
        r.body,
        json!({"n": 2, "user": "eve"}),
        "its change landed under the new id"
    );
    let r = send(&app, "GET", "/read", Some(&jar(&old)), None).await;
    assert_eq!(
        r.body,
        json!({"n": null, "user": null}),
        "the old id stays dead"
    );
    assert_eq!(rows(&sqlite).await, 1, "one session, not two");
}

/// Sync mode: a request whose change a concurrent request's save carried (it found nothing
/// left to save) is answered only once that save is committed, not before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_saved_by_a_concurrent_request_is_committed_before_its_answer() {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = sqlite(dir.path()).await;
    let slow = SlowStore::new(Arc::new(sqlite.clone()));
    let changed = Arc::new(tokio::sync::Notify::new());
    let release = Arc::new(tokio::sync::Notify::new());
    let (c, r) = (Arc::clone(&changed), Arc::clone(&release));
    let app = Router::new()
        .route(
            "/x",
            post(move |session: Session| {
                let (changed, release) = (Arc::clone(&c), Arc::clone(&r));
                async move {
                    session.insert("x", 1u32);
                    changed.notify_one();
                    release.notified().await;
                    "x"
                }
            }),
        )
        .route(
            "/y",
            post(|session: Session| async move {
                session.insert("y", 1u32);
                "y"
            }),
        )
        .layer(SessionFailoverLayer::new("shop").with_store(slow.clone(), SaveMode::Sync));
    let id = send(&app, "POST", "/y", None, None)
        .await
        .cookie("JSESSIONID")
        .unwrap();
    let key = SessionId::parse(&id).unwrap().store_key();
    // /x changes the session and waits; /y then saves it (x included) slowly.
    let x = {
        let (app, cookie) = (app.clone(), jar(&id));
        tokio::spawn(async move { send(&app, "POST", "/x", Some(&cookie), None).await })
    };
    changed.notified().await;
    slow.update_ms.store(400, Ordering::SeqCst);
    let y = {
        let (app, cookie) = (app.clone(), jar(&id));
        tokio::spawn(async move { send(&app, "POST", "/y", Some(&cookie), None).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    // /y's save is in flight; /x finishes now and has nothing left to save.
    release.notify_one();
    let answered = x.await.unwrap();
    assert_eq!(answered.status, StatusCode::OK);
    let row = session_failover::store::SessionStore::get(&sqlite, &key, 0)
        .await
        .unwrap()
        .unwrap();
    assert!(
        row.meta.attributes.contains(&"x".to_owned()),
        "answered before a write carrying its change was committed: {:?}",
        row.meta.attributes
    );
    assert_eq!(y.await.unwrap().status, StatusCode::OK);
}

/// A request that holds a session while another request of this node finds the copy older
/// than the row (another node wrote) and refreshes it: both changes land, in either save mode,
/// whether the holder changes the copy after the refresh or while the refresh reads the row.
/// Before, the second request replaced the copy with a new one restored from the row, and the
/// first request's change, made on the replaced copy, lost to the new copy's write in the
/// queue (async) although it had been answered 200 (CI, stop 24: `shared_session` on
/// PostgreSQL, where a pushed change marks the copy stale).
async fn a_change_on_a_copy_refreshed_meanwhile(mode: SaveMode, during_refresh: bool) {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = sqlite(dir.path()).await;
    let store: Arc<dyn SessionAdmin> = Arc::new(sqlite.clone());
    // Node a reads through this: its refresh can be held while the holder changes the copy.
    let slow = SlowStore::new(Arc::new(sqlite.clone()));
    let started = Arc::new(tokio::sync::Notify::new());
    let release = Arc::new(tokio::sync::Notify::new());
    let node = |name: &str, store: Arc<dyn SessionAdmin>| {
        let (s, r) = (Arc::clone(&started), Arc::clone(&release));
        let config = config("spring.session.save.async.interval=50\n");
        let persistence = Persistence::from_config(store, &config);
        Router::new()
            .route(
                "/slow",
                post(move |session: Session| {
                    let (started, release) = (Arc::clone(&s), Arc::clone(&r));
                    async move {
                        let _: Option<Vec<String>> = session.get("cart");
                        started.notify_one();
                        release.notified().await;
                        session.update("cart", |cart: &mut Vec<String>| cart.push("slow".into()));
                        "slow"
                    }
                }),
            )
            .route(
                "/cart",
                get(|session: Session| async move {
                    axum::Json(session.get::<Vec<String>>("cart").unwrap_or_default())
                }),
            )
            .route(
                "/add/{sku}",
                post(
                    |session: Session, axum::extract::Path(sku): axum::extract::Path<String>| async move {
                        session.update("cart", move |cart: &mut Vec<String>| cart.push(sku.clone()));
                        "added"
                    },
                ),
            )
            .layer(
                SessionFailoverLayer::new("shop")
                    .with_persistence(persistence, mode)
                    .with_node_name(name)
                    // Every read checks the row's version: the copy is found older at once.
                    .with_verify_interval(Duration::ZERO),
            )
    };
    let (a, b) = (node("a", slow.clone()), node("b", store.clone()));
    let id = send(&a, "POST", "/add/first", None, None)
        .await
        .cookie("JSESSIONID")
        .unwrap();
    let key = SessionId::parse(&id).unwrap().store_key();
    let stored = || async {
        let record = session_failover::store::SessionStore::get(&sqlite, &key, 0).await;
        record.unwrap().map(|r| r.meta.version)
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while stored().await.is_none() {
        assert!(tokio::time::Instant::now() < deadline, "never written");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // On a: /slow holds the session, then b writes, then a's next request finds its copy older.
    let slow_request = {
        let (a, cookie) = (a.clone(), jar(&id));
        tokio::spawn(async move { send(&a, "POST", "/slow", Some(&cookie), None).await })
    };
    started.notified().await;
    let r = send(&b, "POST", "/add/b", Some(&jar(&id)), None).await;
    assert_eq!(r.status, StatusCode::OK);
    while stored().await < Some(2) {
        assert!(tokio::time::Instant::now() < deadline, "b never wrote");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (r, slow_answer) = if during_refresh {
        // /slow changes the copy and saves it while a's refresh reads the row; its write is
        // not committed yet when the refresh ends (the copy has changes of its own: kept, and
        // merged by the writer).
        slow.get_ms.store(400, Ordering::SeqCst);
        slow.update_ms.store(700, Ordering::SeqCst);
        let add = {
            let (a, cookie) = (a.clone(), jar(&id));
            tokio::spawn(async move { send(&a, "POST", "/add/a", Some(&cookie), None).await })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        slow.get_ms.store(0, Ordering::SeqCst);
        release.notify_one();
        tokio::time::sleep(Duration::from_millis(500)).await;
        slow.update_ms.store(0, Ordering::SeqCst);
        let slow_answer = slow_request.await.unwrap();
        (add.await.unwrap(), slow_answer)
    } else {
        let r = send(&a, "POST", "/add/a", Some(&jar(&id)), None).await;
        release.notify_one();
        (r, slow_request.await.unwrap())
    };
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(slow_answer.status, StatusCode::OK, "{:?}", slow_answer.body);
    // Every change was answered 200: every one is in the row once a's writes are made, and a
    // node that never held the session serves them all.
    let want = vec!["a", "b", "first", "slow"];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let r = send(
            &node("c", store.clone()),
            "GET",
            "/cart",
            Some(&jar(&id)),
            None,
        )
        .await;
        let mut cart: Vec<String> = serde_json::from_value(r.body.clone()).unwrap_or_default();
        cart.sort_unstable();
        if cart == want {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{mode:?}: the row holds {cart:?}, acknowledged {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_on_a_copy_refreshed_meanwhile_is_kept_async() {
    a_change_on_a_copy_refreshed_meanwhile(SaveMode::Async, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_on_a_copy_refreshed_meanwhile_is_kept_sync() {
    a_change_on_a_copy_refreshed_meanwhile(SaveMode::Sync, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_made_while_the_copy_is_refreshed_is_kept_async() {
    a_change_on_a_copy_refreshed_meanwhile(SaveMode::Async, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_made_while_the_copy_is_refreshed_is_kept_sync() {
    a_change_on_a_copy_refreshed_meanwhile(SaveMode::Sync, true).await;
}
