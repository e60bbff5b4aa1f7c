//! Redis as the store, in real processes: a Redis of the test's own (Debian's `redis-server` on
//! a free loopback port, no persistence) that the test kills and starts again.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::redis::Redis;
use common::{Client, Server, config_dir, free_port, items, require_program};
use serde_json::json;

/// A work directory and a Redis of the test's own in it, or `None` (said on stderr, a failure
/// in CI) where Debian's redis-server is not installed.
fn own_redis(test: &str) -> Option<(tempfile::TempDir, Redis)> {
    if !require_program("redis-server", test) || !require_program("redis-cli", test) {
        return None;
    }
    let work = tempfile::tempdir().unwrap();
    let redis = Redis::start(free_port(), work.path());
    Some((work, redis))
}

/// Redis restarted empty (no persistence): the sessions a live node holds are back in Redis
/// within one async interval, without any request; another node then restores every cart, and
/// the node that held them never logged anyone out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_held_by_live_nodes_are_written_back_when_redis_restarts_empty() {
    let Some((work, redis)) =
        own_redis("sessions_held_by_live_nodes_are_written_back_when_redis_restarts_empty")
    else {
        return;
    };
    let port = redis.port;
    // Async mode at its default interval (5 s); the cache checks copies every second.
    let config = config_dir(
        work.path(),
        &format!(
            "session.store.url=redis://127.0.0.1:{port}\n\
             spring.session.storefront.save=async\nsession.purge.cron=\n"
        ),
    );
    let a = Server::start(work.path(), &config, "a");
    let mut users: Vec<Client> = (0..3).map(|_| Client::new()).collect();
    for (i, user) in users.iter_mut().enumerate() {
        for sku in 0..=i {
            let (status, _) = user
                .send(
                    &a.base,
                    "POST",
                    "/cart/items",
                    Some(json!({"sku": format!("S{sku}"), "qty": 1})),
                )
                .await;
            assert!(status.is_success());
        }
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    while redis.sessions() < 3 {
        assert!(
            Instant::now() < deadline,
            "the async writes never reached Redis"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    redis.kill();
    let redis = Redis::start(port, work.path());
    assert_eq!(redis.sessions(), 0, "restarted empty");
    let restarted = Instant::now();
    let deadline = restarted + Duration::from_secs(5);
    while redis.sessions() < 3 {
        assert!(
            Instant::now() < deadline,
            "not written back within the 5 s interval; node log:\n{}",
            a.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "3 sessions written back {} ms after Redis restarted empty",
        restarted.elapsed().as_millis()
    );
    assert!(a.log_text().contains("the store lost its data"));

    // Another node restores every cart from Redis.
    let b = Server::start(work.path(), &config, "b");
    for (i, user) in users.iter_mut().enumerate() {
        let (status, cart) = user.send(&b.base, "GET", "/cart", None).await;
        assert!(status.is_success());
        assert_eq!(items(&cart).len(), i + 1, "user {i} on b: {cart}");
    }
    // The node that held them still serves them, past its cache's version check.
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    for (i, user) in users.iter_mut().enumerate() {
        let (_, cart) = user.send(&a.base, "GET", "/cart", None).await;
        assert_eq!(items(&cart).len(), i + 1, "user {i} on a: {cart}");
    }
}

/// SAP approuter's way in: `EXT_SESSION_MGT` names a service bound in `VCAP_SERVICES`; the
/// nodes find Redis through it, `check-config` says where each value came from, and a cart
/// survives a node killed with SIGKILL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ext_session_mgt_and_a_service_binding_configure_the_store() {
    let Some((work, redis)) =
        own_redis("ext_session_mgt_and_a_service_binding_configure_the_store")
    else {
        return;
    };
    let port = redis.port;
    let secret = "approuter-0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
    let ext = format!(
        r#"{{"instanceName": "approuter-redis", "storageType": "redis", "sessionSecret": "{secret}",
            "defaultRetryTimeout": 10000, "backOffMultiplier": 10}}"#
    );
    let vcap = format!(
        r#"{{"redis-cache": [{{"name": "approuter-redis", "label": "redis-cache",
            "credentials": {{"hostname": "127.0.0.1", "port": {port}, "tls": false,
            "cluster_mode": false}}}}]}}"#
    );
    // The packaged files point elsewhere: the binding wins over them.
    let config = config_dir(
        work.path(),
        "session.store.url=sqlite://data/unused.db\nsession.purge.cron=\n",
    );
    let env = [
        ("EXT_SESSION_MGT", ext.as_str()),
        ("VCAP_SERVICES", vcap.as_str()),
    ];
    let shown = Command::new(env!("CARGO_BIN_EXE_session-failover"))
        .args(["check-config", "--connect", "--config"])
        .arg(&config)
        .current_dir(work.path())
        .envs(env)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&shown.stdout);
    assert!(
        shown.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&shown.stderr)
    );
    for line in [
        format!(
            "session.store.url=redis://127.0.0.1:{port}    # environment variable VCAP_SERVICES (service \"approuter-redis\")"
        ),
        "# environment variable EXT_SESSION_MGT.sessionSecret".to_owned(),
        "session.save.retry.multiplier=10    # environment variable EXT_SESSION_MGT.backOffMultiplier"
            .to_owned(),
    ] {
        assert!(text.contains(&line), "missing {line:?} in:\n{text}");
    }
    assert!(!text.contains(secret), "the secret is shown:\n{text}");

    let a = Server::start_with(work.path(), &config, "a", "127.0.0.1:0", &env);
    let mut user = Client::new();
    let (status, _) = user
        .send(
            &a.base,
            "POST",
            "/cart/items",
            Some(json!({"sku": "S1", "qty": 2})),
        )
        .await;
    assert!(status.is_success());
    assert_eq!(redis.sessions(), 1, "the session is in the bound Redis");
    a.kill();
    let b = Server::start_with(work.path(), &config, "b", "127.0.0.1:0", &env);
    let (_, cart) = user.send(&b.base, "GET", "/cart", None).await;
    assert_eq!(items(&cart), [("S1".to_owned(), 2)]);
    assert!(!work.path().join("data/unused.db").exists());
}

/// Redis restarted empty while two nodes hold copies of one session: the node the user left
/// holds an older copy, numbered higher by its own count of async snapshots. The newer row wins
/// the write-back, not the bigger local number.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_newer_copy_wins_the_write_back() {
    let Some((work, redis)) = own_redis("the_newer_copy_wins_the_write_back") else {
        return;
    };
    let port = redis.port;
    let config = config_dir(
        work.path(),
        &format!(
            "session.store.url=redis://127.0.0.1:{port}\n\
             spring.session.storefront.save=async\nspring.session.save.async.interval=300\n\
             session.purge.cron=\n"
        ),
    );
    let a = Server::start(work.path(), &config, "a");
    let b = Server::start(work.path(), &config, "b");
    let mut user = Client::new();
    // One add on b, written; then ten more, coalesced into one update by b's writer: b's
    // snapshots (12 so far) run ahead of the rows (2).
    for sku in 0..11 {
        if sku == 1 {
            tokio::time::sleep(Duration::from_millis(800)).await;
        }
        let (status, _) = user
            .send(
                &b.base,
                "POST",
                "/cart/items",
                Some(json!({"sku": format!("B{sku}"), "qty": 1})),
            )
            .await;
        assert!(status.is_success());
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    // The user moves to a, which restores the row and adds one more.
    let (status, _) = user
        .send(
            &a.base,
            "POST",
            "/cart/items",
            Some(json!({"sku": "A0", "qty": 1})),
        )
        .await;
    assert!(status.is_success());
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(redis.sessions(), 1);

    redis.kill();
    let redis = Redis::start(port, work.path());
    let deadline = Instant::now() + Duration::from_secs(5);
    while redis.sessions() < 1 {
        assert!(Instant::now() < deadline, "not written back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Both nodes have written theirs by now.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let c = Server::start(work.path(), &config, "c");
    let (_, cart) = user.send(&c.base, "GET", "/cart", None).await;
    assert_eq!(
        items(&cart).len(),
        12,
        "the newest cart (b's eleven adds and a's one): {cart}"
    );
}
