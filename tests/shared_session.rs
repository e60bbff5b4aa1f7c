//! One session used by many requests at once: two tabs on one node, a user whose requests
//! alternate between two nodes, several clients on several nodes. Real `serve` processes on one
//! store (SQLite file, PostgreSQL, MariaDB), sync and async: every add answered 200 must be in
//! the stored cart afterwards and in what every node serves, and refusals must be rare
//! (alternating requests: none).

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use common::backends::{Backend, TestDb};
use common::shared::{new_session, scenario};
use common::{Client, Server, config_dir, items};
use http::StatusCode;

/// The async interval of the async runs.
const INTERVAL_MS: u64 = 200;
/// `session.cache.verify.interval` of the nodes.
const VERIFY_MS: u64 = 100;

/// The cart of `cookie` as a node that never served it restores it from the store.
async fn stored_cart(work: &Path, config: &Path, cookie: &str) -> BTreeSet<String> {
    let reader = Server::start(work, config, "reader");
    let mut client = Client::new();
    client.cookie = Some(cookie.to_owned());
    let (status, body) = client.send(&reader.base, "GET", "/cart", None).await;
    assert_eq!(status, StatusCode::OK);
    items(&body).into_iter().map(|(sku, _)| sku).collect()
}

async fn shared_session(url: Option<&str>, mode: &str, test: &str) {
    let work = tempfile::tempdir().unwrap();
    let store = url
        .map(|u| format!("session.store.url={u}\n"))
        .unwrap_or_default();
    let config = config_dir(
        work.path(),
        &format!(
            "{store}spring.session.storefront.save={mode}\n\
             spring.session.save.async.interval={INTERVAL_MS}\nsession.store.timeout=5000\n\
             session.cache.verify.interval={VERIFY_MS}\n"
        ),
    );
    let a = Server::start_with(
        work.path(),
        &config,
        "a",
        "127.0.0.1:0",
        &[("y_session_node_name", "a")],
    );
    let b = Server::start_with(
        work.path(),
        &config,
        "b",
        "127.0.0.1:0",
        &[("y_session_node_name", "b")],
    );
    let (na, nb) = (a.base.clone(), b.base.clone());
    // Async: the first write must have landed before another node can restore the session.
    let settle = || tokio::time::sleep(Duration::from_millis(INTERVAL_MS * 5));
    let cases: [(&str, Vec<Vec<String>>, usize); 3] = [
        // Two tabs on one node.
        ("one-node", vec![vec![na.clone()], vec![na.clone()]], 25),
        // One client whose balancer lost stickiness: A, B, A, B, ...
        ("alternating", vec![vec![na.clone(), nb.clone()]], 20),
        // Two clients per node at once.
        (
            "many",
            vec![
                vec![na.clone()],
                vec![na.clone()],
                vec![nb.clone()],
                vec![nb.clone()],
            ],
            20,
        ),
    ];
    for (name, clients, each) in cases {
        let cookie = new_session(&na).await;
        settle().await;
        let alternating = name == "alternating";
        let tally = scenario(&cookie, name, clients, each).await;
        settle().await;
        // Every node's view is the row: each checks its cached copy against it (verify
        // interval). In sync mode at once; in async mode the last writes land within a few
        // intervals, later on a loaded machine, so both are read again until they agree, within
        // a bound.
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        let stored = loop {
            let stored = stored_cart(work.path(), &config, &cookie).await;
            tokio::time::sleep(Duration::from_millis(VERIFY_MS * 2)).await;
            let mut views = Vec::new();
            for node in [&na, &nb] {
                let mut client = Client::new();
                client.cookie = Some(cookie.clone());
                let (status, body) = client.send(node, "GET", "/cart", None).await;
                assert_eq!(status, StatusCode::OK);
                let view: BTreeSet<String> = items(&body).into_iter().map(|(sku, _)| sku).collect();
                views.push((node, view));
            }
            if views.iter().all(|(_, view)| *view == stored) {
                break stored;
            }
            assert!(
                mode == "async" && std::time::Instant::now() < deadline,
                "{test} {name}: the nodes serve {views:?}, the row holds {stored:?}"
            );
            settle().await;
        };
        let lost: Vec<&String> = tally.acknowledged.difference(&stored).collect();
        eprintln!(
            "{test} {name}: {} requests, {} acknowledged, {} refused, {} lost",
            tally.requests,
            tally.acknowledged.len(),
            tally.refused,
            lost.len()
        );
        assert!(
            lost.is_empty(),
            "{test} {name}: acknowledged adds lost: {lost:?}"
        );
        assert!(
            stored.contains("first"),
            "{test} {name}: the first add is kept"
        );
        assert!(
            tally.refused * 20 < tally.requests,
            "{test} {name}: {} of {} refused (5 % allowed)",
            tally.refused,
            tally.requests
        );
        if alternating {
            assert_eq!(
                tally.refused, 0,
                "{test}: alternating requests are never refused"
            );
        }
        let logs = a.log_text() + &b.log_text();
        assert!(!logs.contains("panicked"), "{logs}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_sync() {
    shared_session(None, "sync", "sqlite_sync").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_async() {
    shared_session(None, "async", "sqlite_async").await;
}

async fn on(backend: Backend, mode: &str, test: &str) {
    let Some(db) = TestDb::create(backend, test).await else {
        return;
    };
    shared_session(Some(&db.url), mode, test).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_sync() {
    on(Backend::Postgres, "sync", "postgres_sync").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_async() {
    on(Backend::Postgres, "async", "postgres_async").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_sync() {
    on(Backend::MySql, "sync", "mysql_sync").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_async() {
    on(Backend::MySql, "async", "mysql_async").await;
}
