//! Failover behind a real load balancer: HAProxy (deploy/haproxy.cfg) or nginx
//! (deploy/nginx.conf) in front of three `session-failover serve` nodes sharing PostgreSQL or
//! MariaDB; the busiest node is killed with SIGKILL mid-run. And the shipped files' two
//! frontends: the public one refuses the backoffice and the metrics, the admin one keeps an
//! operator signed in on every node.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::backends::{Backend, TestDb};
use common::balancer::{Lb, User, balancer, phase, rows_by_node, wait_until_all_up};
use common::{Client, Server, config_dir, free_port, items, require_program};
use http::StatusCode;
use session_failover::store::{SessionAdmin, StoreOptions};

const USERS: usize = 24;
const ADDS_BEFORE: usize = 4;
const ADDS_DURING: usize = 6;
const ADDS_AFTER: usize = 2;

async fn cluster_failover(lb: Lb, backend: Backend, test: &str) {
    let program = match lb {
        Lb::HaProxy => "haproxy",
        Lb::Nginx => "nginx",
    };
    if !require_program(program, test) {
        return;
    }
    let Some(db) = TestDb::create(backend, test).await else {
        return;
    };
    cluster_failover_at(lb, &db.url, test).await;
}

/// [`cluster_failover`] on the store at `url`.
async fn cluster_failover_at(lb: Lb, url: &str, test: &str) {
    let work = tempfile::tempdir().unwrap();
    let config = config_dir(
        work.path(),
        &format!("session.store.url={url}\nsession.store.timeout=3000\n"),
    );
    let ports = [free_port(), free_port(), free_port()];
    let front = free_port();
    let mut nodes: Vec<Option<Server>> = ports
        .iter()
        .enumerate()
        .map(|(i, port)| {
            let name = format!("node{}", i + 1);
            Some(Server::start_with(
                work.path(),
                &config,
                &name,
                &format!("127.0.0.1:{port}"),
                &[("y_session_node_name", name.as_str())],
            ))
        })
        .collect();
    let _lb = balancer(lb, work.path(), front, free_port(), ports);
    let base = format!("http://127.0.0.1:{front}");
    wait_until_all_up(&base).await;
    public_side_refuses_the_operators_paths(&base).await;

    let store: Arc<dyn SessionAdmin> = session_failover::store::open(url, &StoreOptions::default())
        .await
        .unwrap();
    let started = Instant::now();

    // Phase 1: every user builds a cart; HAProxy spreads them over the three nodes.
    let users: Vec<User> = (0..USERS).map(|_| User::new()).collect();
    let users = phase(&base, users, "a", ADDS_BEFORE, Duration::ZERO).await;
    let by_node = rows_by_node(&*store).await;
    let (victim, victims_users) = by_node
        .iter()
        .max_by_key(|(_, n)| **n)
        .map(|(n, c)| (n.clone(), *c))
        .unwrap();
    assert!(
        by_node.len() >= 2,
        "users spread over the nodes: {by_node:?}"
    );

    // Phase 2: users keep adding while the busiest node is killed.
    let victim_index: usize = victim.trim_start_matches("node").parse::<usize>().unwrap() - 1;
    let killer = {
        let node = nodes[victim_index].take().unwrap();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(150)).await;
            node.kill();
        })
    };
    let users = phase(&base, users, "b", ADDS_DURING, Duration::from_millis(40)).await;
    killer.await.unwrap();
    // Phase 3: after the kill, every user adds again.
    let users = phase(&base, users, "c", ADDS_AFTER, Duration::ZERO).await;

    // Every cart holds exactly the acknowledged items: no acknowledged add lost, nothing extra.
    let mut unknown = 0;
    let mut finals = Vec::new();
    for (i, mut user) in users.into_iter().enumerate() {
        let (status, body) = user.client.send(&base, "GET", "/cart", None).await;
        assert_eq!(status, StatusCode::OK);
        let cart: BTreeSet<String> = items(&body).into_iter().map(|(sku, _)| sku).collect();
        assert_eq!(
            cart, user.acknowledged,
            "user {i}: cart differs from the acknowledged adds"
        );
        assert!(cart.len() >= ADDS_BEFORE + ADDS_AFTER);
        let row = store
            .get(&user.session_key(), 0)
            .await
            .unwrap()
            .expect("persisted");
        assert_ne!(
            row.meta.node, victim,
            "user {i} is served by a live node now"
        );
        unknown += user.unknown;
        let raw = user.client.cookie.clone().unwrap();
        finals.push((raw.rsplit('~').next().unwrap().to_owned(), cart));
    }
    let after = rows_by_node(&*store).await;
    assert!(
        !after.contains_key(&victim),
        "no session is last written by the dead node: {after:?}"
    );
    eprintln!(
        "{test}: {USERS} users, killed {victim} (serving {victims_users}), {unknown} adds without \
         acknowledgement reconciled, rows by node after: {after:?}, {:.1}s",
        started.elapsed().as_secs_f64()
    );

    // The killed node comes back with a cold cache: it serves the newest state, not its old copy.
    let port = ports[victim_index];
    let back = Server::start_with(
        work.path(),
        &config,
        "back",
        &format!("127.0.0.1:{port}"),
        &[("y_session_node_name", victim.as_str())],
    );
    for (id, cart) in &finals {
        let mut direct = Client::new();
        direct.cookie = Some(id.clone());
        let (status, body) = direct.send(&back.base, "GET", "/cart", None).await;
        assert_eq!(status, StatusCode::OK);
        let seen: BTreeSet<String> = items(&body).into_iter().map(|(sku, _)| sku).collect();
        assert_eq!(&seen, cart, "the returning node serves the newest state");
    }
    let restores = back.log_text().matches("restored from store").count();
    assert_eq!(
        restores, USERS,
        "a cold cache: every session came from the database"
    );
    drop(back);
    drop(nodes);
}

/// The public frontend serves the shop, and nothing of the operators' under any spelling.
async fn public_side_refuses_the_operators_paths(public: &str) {
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    for path in [
        "/backoffice/login",
        "/backoffice/api/stats",
        "/metrics",
        "//backoffice/login",
        "/%62ackoffice/login",
        "/%6detrics",
        // The node routes this raw path to the API; a balancer that resolves it sees "/cart".
        "/backoffice/api/sessions/..%2F..%2F..%2Fcart",
    ] {
        let status = http
            .get(format!("{public}{path}"))
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, StatusCode::NOT_FOUND, "public {path}");
    }
    let status = http
        .get(format!("{public}/cart"))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, StatusCode::OK, "public /cart");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_behind_haproxy_on_postgres() {
    cluster_failover(
        Lb::HaProxy,
        Backend::Postgres,
        "failover_behind_haproxy_on_postgres",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_behind_haproxy_on_redis() {
    let test = "failover_behind_haproxy_on_redis";
    if !require_program("haproxy", test) {
        return;
    }
    let Some(url) = common::backends::redis_url(test) else {
        return;
    };
    // Database 4 of the test server, emptied first.
    let url = format!("{url}/4");
    session_failover::store::open(&url, &StoreOptions::default())
        .await
        .unwrap()
        .clear()
        .await
        .unwrap();
    cluster_failover_at(Lb::HaProxy, &url, test).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_behind_nginx_on_postgres() {
    cluster_failover(
        Lb::Nginx,
        Backend::Postgres,
        "failover_behind_nginx_on_postgres",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_behind_haproxy_on_mariadb() {
    cluster_failover(
        Lb::HaProxy,
        Backend::MySql,
        "failover_behind_haproxy_on_mariadb",
    )
    .await;
}

/// The backoffice behind the shipped HAProxy file, two nodes on one SQLite file: signed in on one
/// node, the operator stays signed in on requests that alternate between the nodes (the sign-in
/// is a persisted session like a shopper's). The public frontend refuses the backoffice and the
/// metrics; the admin frontend serves nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backoffice_sign_in_survives_alternating_nodes_behind_haproxy() {
    if !require_program(
        "haproxy",
        "backoffice_sign_in_survives_alternating_nodes_behind_haproxy",
    ) {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let hash = common::password_hash("operator password");
    let config = config_dir(
        work.path(),
        &format!(
            "spring.session.enabled=true\nspring.session.storefront.save=sync\n\
             session.store.url=sqlite://{}\n\
             session.backoffice.user=ops\nsession.backoffice.password.hash={hash}\n",
            work.path().join("sessions.db").display()
        ),
    );
    // Two nodes; the file's third server has nothing listening and is taken out by its checks.
    let ports = [free_port(), free_port(), free_port()];
    let nodes: Vec<Server> = (0..2)
        .map(|i| {
            let name = format!("node{}", i + 1);
            Server::start_with(
                work.path(),
                &config,
                &name,
                &format!("127.0.0.1:{}", ports[i]),
                &[("y_session_node_name", name.as_str())],
            )
        })
        .collect();
    let (front, admin) = (free_port(), free_port());
    let _lb = balancer(Lb::HaProxy, work.path(), front, admin, ports);
    let public = format!("http://127.0.0.1:{front}");
    let admin = format!("http://127.0.0.1:{admin}");
    wait_until_all_up(&public).await;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();

    public_side_refuses_the_operators_paths(&public).await;
    let status = http
        .get(format!("{admin}/cart"))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, StatusCode::NOT_FOUND, "admin /cart");

    // Sign in through the admin frontend.
    let response = http
        .post(format!("{admin}/backoffice/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("user=ops&password=operator+password")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    let set_cookie = response
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| v.strip_prefix("BACKOFFICESESSION="))
        .expect("the sign-in sets the backoffice cookie")
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    // HAProxy prefixed the value with the node's name; without the prefix, HAProxy balances
    // round-robin, so the next requests alternate between the nodes.
    let id = set_cookie.rsplit('~').next().unwrap().to_owned();
    let mut served_by = Vec::new();
    for i in 0..10 {
        let response = http
            .get(format!("{admin}/backoffice/api/stats"))
            .header("cookie", format!("BACKOFFICESESSION={id}"))
            .send()
            .await
            .unwrap();
        let node = response
            .headers()
            .get("x-served-by")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("?")
            .to_owned();
        assert_eq!(
            response.status(),
            StatusCode::OK,
            "request {i} on {node}: still signed in"
        );
        served_by.push(node);
    }
    // Round-robin over the live nodes (a request sent to the third before its checks took it
    // out is redispatched): both nodes served several of them.
    for node in ["node1", "node2"] {
        assert!(
            served_by.iter().filter(|n| *n == node).count() >= 3,
            "the requests go to both nodes: {served_by:?}"
        );
    }
    drop(nodes);
}
