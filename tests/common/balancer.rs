//! A load balancer in front of `session-failover serve` nodes (the shipped deploy/haproxy.cfg or
//! deploy/nginx.conf, ports replaced), and simulated users who add to their carts through it and
//! remember what they were told.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use http::StatusCode;
use serde_json::json;
use session_failover::store::{ListQuery, SessionAdmin};

use super::{Client, items};

/// A load balancer process, stopped when dropped.
pub struct Balancer(Child);

impl Drop for Balancer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[derive(Clone, Copy, Debug)]
pub enum Lb {
    HaProxy,
    Nginx,
}

/// A shipped file of deploy/ with its ports replaced: the public frontend's 8080 by `front`, the
/// admin one's 8090 by `admin`, the nodes' 8081–8083 by `nodes`.
pub fn shipped_config(file: &str, front: u16, admin: u16, nodes: [u16; 3]) -> String {
    let mut cfg = std::fs::read_to_string(file).unwrap();
    cfg = cfg.replace("127.0.0.1:8080", &format!("127.0.0.1:{front}"));
    cfg = cfg.replace("127.0.0.1:8090", &format!("127.0.0.1:{admin}"));
    for (i, port) in nodes.iter().enumerate() {
        cfg = cfg.replace(
            &format!("127.0.0.1:808{}", i + 1),
            &format!("127.0.0.1:{port}"),
        );
    }
    cfg
}

/// Runs deploy/haproxy.cfg or deploy/nginx.conf with its ports replaced.
pub fn balancer(lb: Lb, work: &Path, front: u16, admin: u16, nodes: [u16; 3]) -> Balancer {
    balancer_with(lb, work, front, admin, nodes, |cfg| cfg)
}

/// [`balancer`], with the shipped file changed by `edit` first.
pub fn balancer_with(
    lb: Lb,
    work: &Path,
    front: u16,
    admin: u16,
    nodes: [u16; 3],
    edit: impl FnOnce(String) -> String,
) -> Balancer {
    let log = std::fs::File::create(work.join(format!("{lb:?}.log"))).unwrap();
    let mut command = match lb {
        Lb::HaProxy => {
            let path = work.join("haproxy.cfg");
            std::fs::write(
                &path,
                edit(shipped_config("deploy/haproxy.cfg", front, admin, nodes)),
            )
            .unwrap();
            let mut command = Command::new("haproxy");
            command.arg("-db").arg("-f").arg(path);
            command
        }
        Lb::Nginx => {
            std::fs::write(
                work.join("nginx.conf"),
                edit(shipped_config("deploy/nginx.conf", front, admin, nodes)),
            )
            .unwrap();
            let mut command = Command::new("nginx");
            command
                .arg("-p")
                .arg(work)
                .args(["-c", "nginx.conf", "-g"])
                .arg(format!(
                    "daemon off; pid {}; error_log stderr;",
                    work.join("nginx.pid").display()
                ));
            command
        }
    };
    let child = command.stdout(Stdio::null()).stderr(log).spawn().unwrap();
    Balancer(child)
}

/// What one simulated user knows: the items whose add was acknowledged (a 200, or seen in the
/// cart after an add whose outcome was unknown).
pub struct User {
    pub client: Client,
    pub acknowledged: BTreeSet<String>,
    /// Adds without an acknowledgement.
    pub unknown: usize,
    /// Adds without an acknowledgement that the cart read afterwards did not show either: not
    /// kept, as far as the user could tell.
    pub unseen: BTreeSet<String>,
    /// Cart reads (after an add without acknowledgement) that failed.
    pub failed_reads: usize,
    /// The longest request this user waited for.
    pub longest: Duration,
}

impl User {
    pub fn new() -> Self {
        Self {
            client: Client::new(),
            acknowledged: BTreeSet::new(),
            unknown: 0,
            unseen: BTreeSet::new(),
            failed_reads: 0,
            longest: Duration::ZERO,
        }
    }

    pub async fn add(&mut self, base: &str, sku: String) {
        let started = Instant::now();
        let result = self
            .client
            .try_send(
                base,
                "POST",
                "/cart/items",
                Some(json!({"sku": sku, "qty": 1})),
            )
            .await;
        self.longest = self.longest.max(started.elapsed());
        match result {
            Some((StatusCode::OK, _)) => {
                self.acknowledged.insert(sku);
            }
            _ => {
                // No acknowledgement (the node died mid-request, or the change was refused):
                // the cart says whether it was kept.
                self.unknown += 1;
                // Within 20 s: a database cluster that lost a member may pause meanwhile.
                let deadline = Instant::now() + Duration::from_secs(20);
                let mut last = None;
                while Instant::now() < deadline {
                    let started = Instant::now();
                    let read = self.client.try_send(base, "GET", "/cart", None).await;
                    self.longest = self.longest.max(started.elapsed());
                    self.failed_reads += 1;
                    if let Some((StatusCode::OK, body)) = read {
                        self.failed_reads -= 1;
                        if items(&body).iter().any(|(s, _)| *s == sku) {
                            self.acknowledged.insert(sku);
                        } else {
                            self.unseen.insert(sku);
                        }
                        return;
                    }
                    last = read.map(|(status, body)| (status, body.to_string()));
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                panic!("the cart could not be read after a failed add; last answer {last:?}");
            }
        }
    }

    pub fn session_key(&self) -> session_failover::session::SessionKey {
        let raw = self.client.cookie.as_deref().expect("a session");
        // HAProxy prefixes the value with the node's cookie name: "node2~<id>".
        let id = raw.rsplit('~').next().unwrap();
        session_failover::session::SessionId::parse(id)
            .unwrap()
            .store_key()
    }
}

pub async fn wait_until_all_up(base: &str) {
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

pub async fn rows_by_node(store: &dyn SessionAdmin) -> BTreeMap<String, usize> {
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
pub async fn phase(
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
