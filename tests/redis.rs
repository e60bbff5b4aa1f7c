//! Redis as the store, in real processes: a Redis of the test's own (Debian's `redis-server` on
//! a free loopback port, no persistence) that the test kills and starts again.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::redis::Redis;
use common::{Client, Server, config_dir, free_port, items, metric, require_program};
use http::StatusCode;
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

/// The store goes back to an older state of a session than the node serving it committed (a
/// failover to a replica that lagged, a restored backup): the node says so at WARN and counts
/// it (`session_store_regressed_total`), on the session's next change and, for a copy with no
/// change, when the cache checks it. It does not repair it (see docs/ARCHITECTURE.md): the
/// adds committed after the older state are lost, which is what `WAIT` prevents
/// ([`a_cluster_master_killed_under_load`]).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_gone_back_to_an_older_state_is_noticed_and_counted() {
    let Some((work, redis)) =
        own_redis("a_store_gone_back_to_an_older_state_is_noticed_and_counted")
    else {
        return;
    };
    let port = redis.port;
    let config = config_dir(
        work.path(),
        &format!(
            "session.store.url=redis://127.0.0.1:{port}\nspring.session.storefront.save=sync\n\
             session.cache.verify.interval=200\nsession.purge.cron=\n"
        ),
    );
    let a = Server::start(work.path(), &config, "a");
    let mut connection = redis::Client::open(format!("redis://127.0.0.1:{port}"))
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let mut user = Client::new();
    let add = async |user: &mut Client, sku: &str| {
        let (status, _) = user
            .send(
                &a.base,
                "POST",
                "/cart/items",
                Some(json!({"sku": sku, "qty": 1})),
            )
            .await;
        assert!(status.is_success(), "add {sku}: {status}");
    };
    add(&mut user, "S1").await;
    add(&mut user, "S2").await;
    let id = user.cookie.clone().unwrap();
    let hash = format!(
        "sf:s:{{{}}}",
        session_failover::session::SessionId::parse(&id)
            .unwrap()
            .store_key()
            .as_str()
    );
    let old: Vec<u8> = redis::cmd("DUMP")
        .arg(&hash)
        .query_async(&mut connection)
        .await
        .unwrap();
    let go_back = async |connection: &mut redis::aio::MultiplexedConnection| {
        redis::cmd("RESTORE")
            .arg(&hash)
            .arg(0)
            .arg(&old)
            .arg("REPLACE")
            .query_async::<()>(connection)
            .await
            .unwrap();
    };
    let regressed = async || metric(&a.base, "session_store_regressed_total").await;
    let said = || {
        a.log_text()
            .matches("the store holds an older state of this session")
            .count()
    };

    // A change on the older row.
    add(&mut user, "S3").await;
    add(&mut user, "S4").await;
    go_back(&mut connection).await;
    add(&mut user, "S5").await;
    assert_eq!(
        said(),
        1,
        "said once, by the write that found the older row"
    );
    assert_eq!(regressed().await, 1.0);

    // No change: the cache's check finds the older row.
    add(&mut user, "S6").await;
    go_back(&mut connection).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, body) = user.send(&a.base, "GET", "/cart", None).await;
    assert!(status.is_success());
    assert_eq!(said(), 2, "said again, by the cache's check");
    assert_eq!(regressed().await, 2.0);
    eprintln!(
        "the cart after the store went back twice: {:?}",
        items(&body)
    );
}

/// What a master killed under load costs on a Redis Cluster, in strict sync mode (no group
/// commit: a save that fails is refused, never kept for later), when its replica lags (stopped
/// and cut off for half a second, as a busy network would) and the node serving the users dies
/// with the master (its memory cannot write the lost adds back). Without `WAIT` the adds the
/// master acknowledged meanwhile are not on the replica that takes over: lost. With
/// `session.store.redis.wait.replicas=1` each acknowledged add was on the replica before the
/// user was answered (the others were refused): none is lost. The carts are read afterwards
/// through a second node with a cold cache: what Redis kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_master_killed_under_load() {
    let test = "a_cluster_master_killed_under_load";
    if !require_program("redis-server", test) || !require_program("redis-cli", test) {
        return;
    }
    let mut figures = Vec::new();
    for wait in [0, 1] {
        let (lost, acknowledged, refused, longest) = master_killed_under_load(wait).await;
        eprintln!(
            "{test}: wait.replicas={wait}: {acknowledged} acknowledged adds, {lost} lost, \
             {refused} refused or unanswered, longest request {longest:?}"
        );
        figures.push((lost, acknowledged));
    }
    let ((lost_without_wait, _), (lost_with_wait, acknowledged)) = (figures[0], figures[1]);
    assert!(acknowledged > 100, "the load ran: {acknowledged} adds");
    assert!(
        lost_without_wait > 0,
        "without WAIT, the lagging replica misses acknowledged adds (else this test shows nothing)"
    );
    assert_eq!(lost_with_wait, 0, "with WAIT, no acknowledged add is lost");
}

/// One run of [`a_cluster_master_killed_under_load`]: lost and acknowledged adds, the adds
/// refused or left unanswered, the longest request.
async fn master_killed_under_load(wait: u32) -> (usize, usize, usize, Duration) {
    const USERS: usize = 24;
    let work = tempfile::tempdir().unwrap();
    let mut cluster = common::redis::RedisCluster::start(work.path(), 1000);
    let config = config_dir(
        work.path(),
        &format!(
            "session.store.url={}\nsession.store.timeout=3000\n\
             session.store.redis.wait.replicas={wait}\nsession.save.group.commit=false\n\
             spring.session.storefront.save=sync\nsession.purge.cron=\n",
            cluster.url()
        ),
    );
    let a = Server::start(work.path(), &config, "a");
    let users: Vec<_> = (0..USERS)
        .map(|u| {
            let base = a.base.clone();
            tokio::spawn(async move {
                let mut client = Client::new();
                let (mut acknowledged, mut unknown) = (Vec::new(), Vec::new());
                let mut longest = Duration::ZERO;
                // Until node a is gone (a few unanswered adds in a row).
                let mut unanswered = 0;
                for n in 0.. {
                    let sku = format!("u{u}-{n}");
                    let started = Instant::now();
                    let answer = client
                        .try_send(
                            &base,
                            "POST",
                            "/cart/items",
                            Some(json!({"sku": sku, "qty": 1})),
                        )
                        .await;
                    longest = longest.max(started.elapsed());
                    match answer {
                        Some((status, _)) if status.is_success() => {
                            unanswered = 0;
                            acknowledged.push(sku);
                        }
                        Some(_) => unknown.push(sku),
                        None => {
                            unknown.push(sku);
                            unanswered += 1;
                            if unanswered == 3 {
                                break;
                            }
                        }
                    }
                    // About 12 adds a second: no cart reaches the shop's 100 lines.
                    tokio::time::sleep(Duration::from_millis(80)).await;
                }
                (client, acknowledged, unknown, longest)
            })
        })
        .collect();
    // Load for a second; the replica of one master stops and loses its link for half a
    // second; then the master and node a are killed (SIGKILL) together, and the replica
    // resumes and takes over.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let victim = cluster.master_of("sf:s:{x}");
    let replica = cluster.replica_of(victim);
    cluster.nodes[replica].as_ref().unwrap().signal("STOP");
    // Its link is cut too: what the master takes from now on is in no replica's socket buffer.
    cluster.nodes[victim]
        .as_ref()
        .unwrap()
        .query(&["CLIENT", "KILL", "TYPE", "replica"])
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    cluster.nodes[victim].take().unwrap().kill();
    a.kill();
    cluster.nodes[replica].as_ref().unwrap().signal("CONT");
    let mut results = Vec::new();
    for user in users {
        results.push(user.await.unwrap());
    }
    let cluster = tokio::task::spawn_blocking(move || {
        cluster.wait_until_ok(Duration::from_secs(30));
        cluster
    })
    .await
    .unwrap();

    // A second node, cold: every cart as Redis has it.
    let b = Server::start(work.path(), &config, "b");
    let (mut lost, mut acknowledged_total, mut refused, mut longest) = (0, 0, 0, Duration::ZERO);
    for (mut client, acknowledged, unknown, slowest) in results {
        let (status, body) = client.send(&b.base, "GET", "/cart", None).await;
        assert!(status.is_success(), "the cart is served: {status}");
        let cart: std::collections::BTreeSet<String> =
            items(&body).into_iter().map(|(sku, _)| sku).collect();
        lost += acknowledged
            .iter()
            .filter(|sku| !cart.contains(*sku))
            .count();
        let extra: Vec<&String> = cart
            .iter()
            .filter(|sku| !acknowledged.contains(sku) && !unknown.contains(sku))
            .collect();
        assert!(extra.is_empty(), "items nobody added: {extra:?}");
        acknowledged_total += acknowledged.len();
        refused += unknown.len();
        longest = longest.max(slowest);
    }
    drop(b);
    drop(cluster);
    (lost, acknowledged_total, refused, longest)
}

/// `GET /health/store` follows the store: 200 while Redis answers, 503 (and said once in the
/// log) while it is down, 200 again once it is back; `GET /health` stays 200 throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_store_follows_the_store() {
    let Some((work, redis)) = own_redis("health_store_follows_the_store") else {
        return;
    };
    let port = redis.port;
    let config = config_dir(
        work.path(),
        &format!(
            "session.store.url=redis://127.0.0.1:{port}\nsession.store.timeout=500\n\
             session.purge.cron=\n"
        ),
    );
    let a = Server::start(work.path(), &config, "a");
    let status = async |path: &str| {
        let response = reqwest::get(format!("{}{path}", a.base)).await.unwrap();
        (response.status(), response.text().await.unwrap())
    };
    assert_eq!(
        status("/health/store").await,
        (StatusCode::OK, "ok\n".to_owned())
    );
    redis.kill();
    for _ in 0..3 {
        let (code, body) = status("/health/store").await;
        assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert_eq!(status("/health").await.0, StatusCode::OK);
    }
    let said = "/health/store: the session store does not answer";
    assert_eq!(
        a.log_text().matches(said).count(),
        1,
        "said once, not at every check"
    );
    let _redis = Redis::start(port, work.path());
    let deadline = Instant::now() + Duration::from_secs(10);
    while status("/health/store").await.0 != StatusCode::OK {
        assert!(
            Instant::now() < deadline,
            "not up again after Redis restarted"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        a.log_text()
            .contains("/health/store: the session store answers again")
    );
}
