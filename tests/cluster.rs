//! Failover behind a real load balancer: HAProxy (deploy/haproxy.cfg) in front of three
//! `session-failover serve` nodes sharing PostgreSQL or MariaDB; the busiest node is killed with
//! SIGKILL mid-run.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::backends::{Backend, TestDb};
use common::{Client, Server, config_dir, free_port, items, require_program};
use http::StatusCode;
use serde_json::json;
use session_failover::store::{ListQuery, SessionAdmin, StoreOptions};

const USERS: usize = 24;
const ADDS_BEFORE: usize = 4;
const ADDS_DURING: usize = 6;
const ADDS_AFTER: usize = 2;

struct HaProxy(Child);

impl Drop for HaProxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs deploy/haproxy.cfg with its ports replaced.
fn haproxy(work: &Path, front: u16, nodes: [u16; 3]) -> HaProxy {
    let mut cfg = std::fs::read_to_string("deploy/haproxy.cfg").unwrap();
    cfg = cfg.replace("127.0.0.1:8080", &format!("127.0.0.1:{front}"));
    for (i, port) in nodes.iter().enumerate() {
        cfg = cfg.replace(
            &format!("127.0.0.1:808{}", i + 1),
            &format!("127.0.0.1:{port}"),
        );
    }
    let path = work.join("haproxy.cfg");
    std::fs::write(&path, cfg).unwrap();
    let child = Command::new("haproxy")
        .arg("-db")
        .arg("-f")
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(work.join("haproxy.log")).unwrap())
        .spawn()
        .unwrap();
    HaProxy(child)
}

/// What one simulated user knows: the items whose add was acknowledged (a 200, or seen in the
/// cart after an add whose outcome was unknown).
struct User {
    client: Client,
    acknowledged: BTreeSet<String>,
    unknown: usize,
}

impl User {
    async fn add(&mut self, base: &str, sku: String) {
        let result = self
            .client
            .try_send(
                base,
                "POST",
                "/cart/items",
                Some(json!({"sku": sku, "qty": 1})),
            )
            .await;
        match result {
            Some((StatusCode::OK, _)) => {
                self.acknowledged.insert(sku);
            }
            _ => {
                // No acknowledgement (the node died mid-request, or the change was refused):
                // the cart says whether it was kept.
                self.unknown += 1;
                for _ in 0..20 {
                    if let Some((StatusCode::OK, body)) =
                        self.client.try_send(base, "GET", "/cart", None).await
                    {
                        if items(&body).iter().any(|(s, _)| *s == sku) {
                            self.acknowledged.insert(sku);
                        }
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                panic!("the cart could not be read after a failed add");
            }
        }
    }

    fn session_key(&self) -> session_failover::session::SessionKey {
        let raw = self.client.cookie.as_deref().expect("a session");
        // HAProxy prefixes the value with the node's cookie name: "node2~<id>".
        let id = raw.rsplit('~').next().unwrap();
        session_failover::session::SessionId::parse(id)
            .unwrap()
            .store_key()
    }
}

async fn cluster_failover(backend: Backend, test: &str) {
    if !require_program("haproxy", test) {
        return;
    }
    let Some(db) = TestDb::create(backend, test).await else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let config = config_dir(
        work.path(),
        &format!("session.store.url={}\nsession.store.timeout=3000\n", db.url),
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
    let _lb = haproxy(work.path(), front, ports);
    let base = format!("http://127.0.0.1:{front}");
    wait_until_all_up(&base).await;

    let store: Arc<dyn SessionAdmin> =
        session_failover::store::open(&db.url, &StoreOptions::default())
            .await
            .unwrap();
    let started = Instant::now();

    // Phase 1: every user builds a cart; HAProxy spreads them over the three nodes.
    let users: Vec<User> = (0..USERS)
        .map(|_| User {
            client: Client::new(),
            acknowledged: BTreeSet::new(),
            unknown: 0,
        })
        .collect();
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

async fn wait_until_all_up(base: &str) {
    let http = reqwest::Client::new();
    for _ in 0..100 {
        if let Ok(r) = http.get(format!("{base}/health")).send().await
            && r.status().is_success()
        {
            // Give the health checks time to mark every node up (rise 2 × 500 ms).
            tokio::time::sleep(Duration::from_millis(1200)).await;
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("HAProxy did not come up at {base}");
}

async fn rows_by_node(store: &dyn SessionAdmin) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for meta in store
        .list(&ListQuery {
            limit: 10_000,
            ..ListQuery::default()
        })
        .await
        .unwrap()
    {
        *out.entry(meta.node).or_default() += 1;
    }
    out
}

/// Each user adds `adds` items (SKUs unique per user and phase), users concurrently.
async fn phase(
    base: &str,
    users: Vec<User>,
    round: &str,
    adds: usize,
    pause: Duration,
) -> Vec<User> {
    let tasks: Vec<_> = users
        .into_iter()
        .enumerate()
        .map(|(i, mut user)| {
            let base = base.to_owned();
            let round = round.to_owned();
            tokio::spawn(async move {
                for n in 0..adds {
                    user.add(&base, format!("u{i}-{round}{n}")).await;
                    tokio::time::sleep(pause).await;
                }
                user
            })
        })
        .collect();
    let mut out = Vec::new();
    for task in tasks {
        out.push(task.await.unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_behind_haproxy_on_postgres() {
    cluster_failover(Backend::Postgres, "failover_behind_haproxy_on_postgres").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_behind_haproxy_on_mariadb() {
    cluster_failover(Backend::MySql, "failover_behind_haproxy_on_mariadb").await;
}
