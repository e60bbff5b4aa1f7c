//! Fresh reads across nodes: after a change or a logout on node A, node B, which holds the
//! session in its cache, stops serving its older copy within the documented bound: pushed by
//! PostgreSQL (`LISTEN/NOTIFY`, well under a second), `session.cache.verify.interval` on
//! SQLite and MariaDB. Real `serve` processes; the delays are measured and printed, and checked
//! against the bound (with slack for this noisy machine).

mod common;

use std::time::{Duration, Instant};

use common::backends::{Backend, TestDb};
use common::{Client, Server, config_dir, items};
use http::StatusCode;
use serde_json::json;

/// The default `session.cache.verify.interval`.
const VERIFY_MS: u64 = 1000;
/// What the bound allows on top of the interval: a request, a probe, a restore, scheduling.
const SLACK_MS: u64 = 1500;
/// The bound checked with pushed changes (PostgreSQL): a notification, a restore, a poll.
const PUSHED_MS: u64 = 500;

fn skus(body: &serde_json::Value) -> Vec<String> {
    items(body).into_iter().map(|(sku, _)| sku).collect()
}

/// Polls `GET /cart` on `base` until `done` holds; how long that took.
async fn until(
    client: &mut Client,
    base: &str,
    done: impl Fn(&[String]) -> bool,
    what: &str,
    bound_ms: u64,
) -> Duration {
    let started = Instant::now();
    let limit = Duration::from_millis(bound_ms);
    loop {
        let (status, body) = client.send(base, "GET", "/cart", None).await;
        assert_eq!(status, StatusCode::OK);
        if done(&skus(&body)) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < limit,
            "{what}: still not seen after {:?} (bound {bound_ms} ms)",
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn fresh_reads(url: Option<&str>, test: &str, bound_ms: u64) {
    let work = tempfile::tempdir().unwrap();
    let store = url
        .map(|u| format!("session.store.url={u}\n"))
        .unwrap_or_default();
    // The default interval: what is measured is what a user gets.
    let config = config_dir(
        work.path(),
        &format!("{store}spring.session.storefront.save=sync\n"),
    );
    let start = |name: &str| {
        Server::start_with(
            work.path(),
            &config,
            name,
            "127.0.0.1:0",
            &[("y_session_node_name", name)],
        )
    };
    let (a, b) = (start("a"), start("b"));
    let mut on_a = Client::new();
    let add = |sku: &str| Some(json!({"sku": sku, "qty": 1}));
    let (status, _) = on_a
        .send(&a.base, "POST", "/cart/items", add("first"))
        .await;
    assert_eq!(status, StatusCode::OK);
    // B restores the session and caches it.
    let mut on_b = Client::new();
    on_b.cookie = on_a.cookie.clone();
    let (_, body) = on_b.send(&b.base, "GET", "/cart", None).await;
    assert_eq!(skus(&body), ["first"]);

    // A change on A: B serves it within the bound.
    let (status, _) = on_a
        .send(&a.base, "POST", "/cart/items", add("second"))
        .await;
    assert_eq!(status, StatusCode::OK);
    let change = until(
        &mut on_b,
        &b.base,
        |cart| cart.contains(&"second".to_owned()),
        "a change on A, read on B",
        bound_ms,
    )
    .await;

    // A logout on A: B stops serving the session within the bound.
    let (status, _) = on_a.send(&a.base, "POST", "/logout", None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let logout = until(
        &mut on_b,
        &b.base,
        <[String]>::is_empty,
        "a logout on A, read on B",
        bound_ms,
    )
    .await;
    // And does not bring it back: the row stays gone.
    let reader = Server::start(work.path(), &config, "reader");
    let mut fresh = Client::new();
    fresh.cookie = on_a.cookie.clone();
    let (_, body) = fresh.send(&reader.base, "GET", "/cart", None).await;
    assert!(skus(&body).is_empty(), "ended for every node: {body}");
    for server in [&a, &b] {
        assert!(!server.log_text().contains("panicked"));
    }
    eprintln!(
        "{test}: a change on A seen on B after {change:?}, a logout after {logout:?} \
         (bound {bound_ms} ms; session.cache.verify.interval={VERIFY_MS} ms)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite() {
    fresh_reads(None, "sqlite", VERIFY_MS + SLACK_MS).await;
}

async fn on(backend: Backend, test: &str, bound_ms: u64) {
    let Some(db) = TestDb::create(backend, test).await else {
        return;
    };
    fresh_reads(Some(&db.url), test, bound_ms).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres() {
    on(Backend::Postgres, "postgres", PUSHED_MS).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql() {
    on(Backend::MySql, "mysql", VERIFY_MS + SLACK_MS).await;
}

/// Read-your-writes without waiting for a push or a check: a client alternating between two
/// nodes (a balancer without stickiness) reads every change it made on the other node at once,
/// through its version cookie. SQLite, with checks all but off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_reads_its_own_writes_on_any_node() {
    let work = tempfile::tempdir().unwrap();
    let config = config_dir(
        work.path(),
        "spring.session.storefront.save=sync\nsession.cache.verify.interval=3600000\n",
    );
    let (a, b) = (
        Server::start(work.path(), &config, "a"),
        Server::start(work.path(), &config, "b"),
    );
    let mut client = Client::new();
    let mut expected = Vec::new();
    for i in 0..10 {
        let (write_on, read_on) = if i % 2 == 0 { (&a, &b) } else { (&b, &a) };
        let sku = format!("item{i}");
        let (status, _) = client
            .send(
                &write_on.base,
                "POST",
                "/cart/items",
                Some(json!({"sku": sku, "qty": 1})),
            )
            .await;
        assert_eq!(status, StatusCode::OK);
        expected.push(sku);
        let (status, body) = client.send(&read_on.base, "GET", "/cart", None).await;
        assert_eq!(status, StatusCode::OK);
        let mut cart = skus(&body);
        cart.sort();
        let mut want = expected.clone();
        want.sort();
        assert_eq!(cart, want, "read {i} on the other node");
    }
    assert!(client.version.is_some(), "the version cookie was set");
}
