//! Group commit and async write-behind through the layer, on real SQLite, and in real processes
//! stopped with SIGTERM and SIGKILL under load.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::post;
use common::{Client, CountingStore, Server, SlowStore, config, config_dir, items, send, sqlite};
use http::StatusCode;
use serde_json::json;
use session_failover::persist::{Persistence, Scope, WriteBehind, WriterConfig};
use session_failover::session::SessionId;
use session_failover::store::{SessionAdmin, SessionStore};
use session_failover::{SaveMode, Session, SessionFailoverLayer, server};

const SYNC: &str = "spring.session.enabled=true\nspring.session.storefront.save=sync\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_sync_saves_share_statements_and_each_waits_for_its_commit() {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = sqlite(dir.path()).await;
    let slow = SlowStore::new(Arc::new(sqlite.clone()));
    let counting = CountingStore::new(slow.clone());
    let config = config(SYNC);
    let app = server::app(
        &config,
        "a",
        Some(Persistence::from_config(counting.clone(), &config)),
    );
    // Every commit takes 200 ms: a response sent before its commit would come back sooner.
    slow.set_ms.store(200, Ordering::SeqCst);
    let started = Instant::now();
    let requests: Vec<_> = (0..64)
        .map(|i| {
            let (app, sqlite) = (app.clone(), sqlite.clone());
            tokio::spawn(async move {
                let r = send(
                    &app,
                    "POST",
                    "/cart/items",
                    None,
                    Some(json!({"sku": format!("S{i}"), "qty": 1})),
                )
                .await;
                let answered = Instant::now();
                let id = r.cookie("JSESSIONID").unwrap();
                // The row is there the moment the response is.
                let key = SessionId::parse(&id).unwrap().store_key();
                let committed = SessionAdmin::exists(&sqlite, &key, 0).await.unwrap();
                (r.status, answered, committed)
            })
        })
        .collect();
    for request in requests {
        let (status, answered, committed) = request.await.unwrap();
        assert_eq!(status, StatusCode::OK);
        assert!(committed, "answered before its row was committed");
        assert!(answered - started >= Duration::from_millis(200));
    }
    let statements = counting.count("set_many");
    assert_eq!(counting.rows_written(), 64);
    assert!(
        statements <= 8,
        "64 sync saves took {statements} statements"
    );
    eprintln!("group commit: 64 concurrent sync saves in {statements} statements");
}

fn visit(name: &'static str) -> Router {
    Router::new().route(
        "/visit",
        post(move |session: Session| async move {
            let n: u32 = session.get("n").unwrap_or(0) + 1;
            session.insert("n", n);
            format!("{name} {n}")
        }),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_app_and_an_async_app_share_one_store() {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = sqlite(dir.path()).await;
    let counting = CountingStore::new(Arc::new(sqlite.clone()));
    let persistence = Persistence::new(
        counting.clone(),
        WriterConfig {
            interval: Duration::from_millis(300),
            ..WriterConfig::default()
        },
        Duration::from_secs(5),
        true,
    );
    let shop = visit("shop").layer(
        SessionFailoverLayer::new("shop").with_persistence(persistence.clone(), SaveMode::Sync),
    );
    let news = visit("news").layer(
        SessionFailoverLayer::new("news")
            .with_cookie_name("NEWS")
            .with_persistence(persistence.clone(), SaveMode::Async),
    );
    let shop_id = send(&shop, "POST", "/visit", None, None)
        .await
        .cookie("JSESSIONID")
        .unwrap();
    let news_id = send(&news, "POST", "/visit", None, None)
        .await
        .cookie("NEWS")
        .unwrap();
    for _ in 0..50 {
        send(
            &news,
            "POST",
            "/visit",
            Some(&format!("NEWS={news_id}")),
            None,
        )
        .await;
    }
    let shop_key = SessionId::parse(&shop_id).unwrap().store_key();
    let news_key = SessionId::parse(&news_id).unwrap().store_key();
    assert!(
        SessionAdmin::exists(&sqlite, &shop_key, 0).await.unwrap(),
        "sync: written at once"
    );
    assert!(
        !SessionAdmin::exists(&sqlite, &news_key, 0).await.unwrap(),
        "async: not yet"
    );
    tokio::time::sleep(Duration::from_millis(700)).await;
    let row = SessionStore::get(&sqlite, &news_key, 0)
        .await
        .unwrap()
        .expect("async: written");
    assert_eq!(row.meta.app, "news");
    assert_eq!(
        row.meta.version, 51,
        "one insert, made as the newest of 51 snapshots"
    );
    // A node with nothing queued reads the row: the newest of 51 states.
    let reader = counter("reader").layer(
        SessionFailoverLayer::new("news")
            .with_cookie_name("NEWS")
            .with_store(Arc::new(sqlite.clone()), SaveMode::Sync),
    );
    let r = send(
        &reader,
        "POST",
        "/visit",
        Some(&format!("NEWS={news_id}")),
        None,
    )
    .await;
    assert_eq!(
        r.body,
        json!({"by": "reader", "n": 52}),
        "the newest of 51 states"
    );
    assert_eq!(
        counting.rows_written(),
        2,
        "51 async saves coalesced into one row write"
    );
    let report = persistence.shutdown(Duration::from_secs(1)).await;
    assert_eq!(report.unwritten, 0);
}

/// Users hammering one async node; the cart each user was told it has.
async fn load(
    base: String,
    users: usize,
    stop_after: Duration,
    pause: Duration,
) -> Vec<(Client, BTreeSet<String>)> {
    let deadline = Instant::now() + stop_after;
    let tasks: Vec<_> = (0..users)
        .map(|u| {
            let base = base.clone();
            tokio::spawn(async move {
                let mut client = Client::new();
                let mut acked = BTreeSet::new();
                let mut n = 0;
                while Instant::now() < deadline {
                    let sku = format!("u{u}-{n}");
                    match client
                        .try_send(
                            &base,
                            "POST",
                            "/cart/items",
                            Some(json!({"sku": sku, "qty": 1})),
                        )
                        .await
                    {
                        Some((StatusCode::OK, _)) => {
                            acked.insert(sku);
                        }
                        _ => break, // the node is gone
                    }
                    n += 1;
                    if n >= 90 {
                        break; // the cart holds at most 100 lines
                    }
                    tokio::time::sleep(pause).await;
                }
                (client, acked)
            })
        })
        .collect();
    let mut out = Vec::new();
    for task in tasks {
        out.push(task.await.unwrap());
    }
    out
}

async fn stored_cart(reader: &str, client: &Client) -> BTreeSet<String> {
    let mut other = Client::new();
    other.cookie = client.cookie.clone();
    match other.try_send(reader, "GET", "/cart", None).await {
        Some((StatusCode::OK, body)) => items(&body).into_iter().map(|(s, _)| s).collect(),
        other => panic!("reading the cart failed: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_loses_nothing_in_async_mode() {
    let work = tempfile::tempdir().unwrap();
    let config = config_dir(
        work.path(),
        "spring.session.storefront.save=async\nspring.session.save.async.interval=1000\n",
    );
    let a = Server::start(work.path(), &config, "a");
    let base = a.base.clone();
    let pid = a.pid();
    let stopper = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .unwrap();
    });
    let users = load(base, 8, Duration::from_secs(5), Duration::from_millis(20)).await;
    stopper.await.unwrap();
    let log = a.log.clone();
    assert_eq!(a.terminate_wait().code(), Some(0));
    let log = std::fs::read_to_string(log).unwrap();
    assert!(log.contains("session writer drained"), "{log}");
    let b = Server::start(work.path(), &config, "b");
    let mut acked_total = 0;
    for (client, acked) in &users {
        let stored = stored_cart(&b.base, client).await;
        assert!(
            acked.is_subset(&stored),
            "acknowledged adds lost on SIGTERM: {:?}",
            acked.difference(&stored).collect::<Vec<_>>()
        );
        acked_total += acked.len();
    }
    assert!(
        acked_total > 50,
        "the load ran: {acked_total} acknowledged adds"
    );
    eprintln!("SIGTERM under async load: {acked_total} acknowledged adds, none lost");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_load_loses_at_most_the_last_interval_in_async_mode() {
    sigkill_under_async_load("").await;
}

/// The same on Redis (database 5 of the test server, cleared first).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_load_loses_at_most_the_last_interval_in_async_mode_on_redis() {
    let test = "sigkill_under_load_loses_at_most_the_last_interval_in_async_mode_on_redis";
    let Some(url) = common::backends::redis_url(test) else {
        return;
    };
    let url = format!("{url}/5");
    session_failover::store::open(&url, &session_failover::store::StoreOptions::default())
        .await
        .unwrap()
        .clear()
        .await
        .unwrap();
    sigkill_under_async_load(&format!("session.store.url={url}\n")).await;
}

/// One async node under load killed with SIGKILL; `local` adds to its local.properties.
async fn sigkill_under_async_load(local: &str) {
    let interval = Duration::from_millis(1000);
    let work = tempfile::tempdir().unwrap();
    let config = config_dir(
        work.path(),
        &format!(
            "spring.session.storefront.save=async\nspring.session.save.async.interval={}\n{local}",
            interval.as_millis()
        ),
    );
    let a = Server::start(work.path(), &config, "a");
    let base = a.base.clone();
    let killed_at = Arc::new(std::sync::Mutex::new(None));
    let killer = {
        let killed_at = Arc::clone(&killed_at);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(2500)).await;
            *killed_at.lock().unwrap() = Some(Instant::now());
            a.kill();
        })
    };
    let started = Instant::now();
    let pause = Duration::from_millis(40);
    let users = load(base, 8, Duration::from_secs(6), pause).await;
    killer.await.unwrap();
    let killed_at = killed_at.lock().unwrap().unwrap();
    let b = Server::start(work.path(), &config, "b");
    let (mut acked_total, mut lost_total) = (0, 0);
    for (client, acked) in &users {
        let stored = stored_cart(&b.base, client).await;
        let lost: Vec<&String> = acked.difference(&stored).collect();
        // SKUs are numbered in order ("u<user>-<n>"); what is lost must be a suffix: the last
        // writes before the kill, never an older one while a newer one was kept.
        let n = |sku: &String| -> u32 { sku.rsplit('-').next().unwrap().parse().unwrap() };
        let newest_kept = acked.iter().filter(|s| stored.contains(*s)).map(n).max();
        let oldest_lost = lost.iter().map(|s| n(s)).min();
        if let (Some(kept), Some(lost)) = (newest_kept, oldest_lost) {
            assert!(
                lost > kept,
                "only a suffix may be lost: add {lost} lost, add {kept} kept"
            );
        }
        acked_total += acked.len();
        lost_total += lost.len();
    }
    // Each user adds one item per pause plus a round trip: one interval holds at most
    // interval / pause adds per user.
    let per_user_bound = usize::try_from(interval.as_millis() / pause.as_millis()).unwrap() + 2;
    for (_, acked) in &users {
        assert!(
            acked.len() < 90,
            "the user was still adding when the node was killed"
        );
    }
    assert!(
        lost_total <= users.len() * per_user_bound,
        "lost {lost_total} > bound"
    );
    eprintln!(
        "SIGKILL under async load (interval {interval:?}): {acked_total} acknowledged adds, {lost_total} lost \
         (bound {} = one interval of adds per user); killed {:.1}s into the run",
        users.len() * per_user_bound,
        (killed_at - started).as_secs_f64()
    );
}

/// Async mode encodes a session once per write, not once per request: later changes are folded
/// into the queued write and encoded when the writer makes it. A node that restores the session
/// from the queue meanwhile (it left the cache) must see the folded changes, and its own changes
/// must be the ones written.
fn counter(name: &'static str) -> Router {
    Router::new().route(
        "/visit",
        post(move |session: Session| async move {
            let n: u32 = session.get("n").unwrap_or(0) + 1;
            session.insert("n", n);
            axum::Json(json!({"by": name, "n": n}))
        }),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_changes_folded_into_a_queued_write_are_seen_and_written() {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = sqlite(dir.path()).await;
    let counting = CountingStore::new(Arc::new(sqlite.clone()));
    let (writer, worker) = WriteBehind::pair(counting.clone(), WriterConfig::default());
    let persistence = Persistence::with_writer(writer, true);
    let layer = || {
        SessionFailoverLayer::new("news")
            .with_cookie_name("NEWS")
            .with_persistence(persistence.clone(), SaveMode::Async)
    };
    // Two layers of one app with their own caches: the second restores the session as a node
    // does after its cache dropped it.
    let (first, second) = (
        counter("first").layer(layer()),
        counter("second").layer(layer()),
    );
    let id = send(&first, "POST", "/visit", None, None)
        .await
        .cookie("NEWS")
        .unwrap();
    let cookie = format!("NEWS={id}");
    for n in 2..=5 {
        let r = send(&first, "POST", "/visit", Some(&cookie), None).await;
        assert_eq!(r.body, json!({"by": "first", "n": n}));
    }
    assert_eq!(counting.rows_written(), 0, "async: nothing written yet");
    let r = send(&second, "POST", "/visit", Some(&cookie), None).await;
    assert_eq!(
        r.body,
        json!({"by": "second", "n": 6}),
        "restored from the queue with the folded changes"
    );
    let report = worker.flush_once(Scope::All).await;
    assert_eq!(report.written, 1, "{report:?}");
    let key = SessionId::parse(&id).unwrap().store_key();
    let row = SessionStore::get(&sqlite, &key, 0).await.unwrap().unwrap();
    assert_eq!(
        row.meta.version, 6,
        "one insert, made as the newest snapshot (the second layer's)"
    );
    // A third node with nothing queued reads the row: the newest state, from the second layer.
    let third = counter("third").layer(
        SessionFailoverLayer::new("news")
            .with_cookie_name("NEWS")
            .with_store(Arc::new(sqlite.clone()), SaveMode::Async),
    );
    let r = send(&third, "POST", "/visit", Some(&cookie), None).await;
    assert_eq!(r.body, json!({"by": "third", "n": 7}));
}

/// A change folded into a queued async write is written even while another request of the same
/// session is between its change and its save: the write carries the state its request
/// acknowledged, not whatever the entry holds at that moment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_folded_change_is_written_while_another_request_is_mid_change() {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = sqlite(dir.path()).await;
    let (writer, worker) = WriteBehind::pair(Arc::new(sqlite.clone()), WriterConfig::default());
    let persistence = Persistence::with_writer(writer, true);
    let started = Arc::new(tokio::sync::Notify::new());
    let release = Arc::new(tokio::sync::Notify::new());
    let (s, r) = (Arc::clone(&started), Arc::clone(&release));
    let app = counter("shop")
        .route(
            "/slow",
            post(move |session: Session| {
                let (started, release) = (Arc::clone(&s), Arc::clone(&r));
                async move {
                    session.insert("x", 1u32);
                    started.notify_one();
                    release.notified().await;
                    "done"
                }
            }),
        )
        .layer(SessionFailoverLayer::new("shop").with_persistence(persistence, SaveMode::Async));
    let id = send(&app, "POST", "/visit", None, None)
        .await
        .cookie("JSESSIONID")
        .unwrap();
    let cookie = format!("JSESSIONID={id}");
    let r = send(&app, "POST", "/visit", Some(&cookie), None).await;
    assert_eq!(
        r.body,
        json!({"by": "shop", "n": 2}),
        "acknowledged, folded"
    );
    let slow = {
        let (app, cookie) = (app.clone(), cookie.clone());
        tokio::spawn(async move { send(&app, "POST", "/slow", Some(&cookie), None).await })
    };
    started.notified().await;
    let report = worker.flush_once(Scope::All).await;
    assert_eq!(report.written, 1, "{report:?}");
    let key = SessionId::parse(&id).unwrap().store_key();
    let row = SessionStore::get(&sqlite, &key, 0).await.unwrap().unwrap();
    assert_eq!(
        row.meta.version, 2,
        "one insert, made as the acknowledged second visit's snapshot"
    );
    // A node with nothing queued reads the row: the acknowledged second visit, and not yet the
    // change of the request still running.
    let reader = Router::new()
        .route(
            "/read",
            post(|session: Session| async move {
                let (n, x) = (session.get::<u32>("n"), session.get::<u32>("x"));
                axum::Json(json!({"n": n, "x": x}))
            }),
        )
        .layer(
            SessionFailoverLayer::new("shop").with_store(Arc::new(sqlite.clone()), SaveMode::Sync),
        );
    let r = send(&reader, "POST", "/read", Some(&cookie), None).await;
    assert_eq!(
        r.body,
        json!({"n": 2, "x": null}),
        "the acknowledged second visit is written"
    );
    release.notify_one();
    assert_eq!(slow.await.unwrap().status, StatusCode::OK);
}

/// A batch the store commits but answers too late for the store timeout has an unknown
/// outcome. Async mode keeps the write and retries it: the retry finds its own row, not another
/// node's, so the add it carried is applied once, not merged in a second time. Sync mode
/// refuses the request (2xx means committed) and does not retry: the add the store committed
/// anyway is there once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_committed_but_answered_late_is_not_applied_twice() {
    for mode in ["async", "sync"] {
        committed_late_applied_once(mode).await;
    }
}

async fn committed_late_applied_once(mode: &str) {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = sqlite(dir.path()).await;
    let slow = SlowStore::new(Arc::new(sqlite.clone()));
    let config = config(&format!(
        "{SYNC}spring.session.storefront.save={mode}\nspring.session.save.async.interval=50\n\
         session.store.timeout=300\nsession.save.retry.delay=100\n"
    ));
    let app = server::app(
        &config,
        "a",
        Some(Persistence::from_config(slow.clone(), &config)),
    );
    let add = || Some(json!({"sku": "A", "qty": 1}));
    let first = send(&app, "POST", "/cart/items", None, add()).await;
    assert_eq!(first.status, StatusCode::OK);
    // Async: the first write lands within an interval.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let cookie = format!("JSESSIONID={}", first.cookie("JSESSIONID").unwrap());
    let key = SessionId::parse(&first.cookie("JSESSIONID").unwrap())
        .unwrap()
        .store_key();
    // The next update commits, then answers after the store timeout.
    slow.hang_ms.store(600, Ordering::SeqCst);
    slow.hang_updates.store(1, Ordering::SeqCst);
    let second = send(&app, "POST", "/cart/items", Some(&cookie), add()).await;
    if mode == "async" {
        assert_eq!(second.status, StatusCode::OK, "{:?}", second.body);
        assert_eq!(items(&second.body), [("A".to_owned(), 2)]);
    } else {
        assert_eq!(
            second.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "not committed in time"
        );
    }
    // Async: the late batch went back to the queue; its retry (after 100-200 ms of backoff)
    // has run.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let stored = SessionStore::get(&sqlite, &key, 0).await.unwrap().unwrap();
    let cart = send(&app, "GET", "/cart", Some(&cookie), None).await;
    assert_eq!(
        items(&cart.body),
        [("A".to_owned(), 2)],
        "{mode}: two adds, each applied once; row version {}",
        stored.meta.version
    );
}
