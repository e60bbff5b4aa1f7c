//! A Redis of a test's own: Debian's `redis-server` on a free loopback port, no persistence;
//! and a Redis Cluster of six of them (three masters, three replicas).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `redis-server` without persistence on `port`; killed when dropped.
pub struct Redis {
    child: Child,
    pub port: u16,
}

impl Redis {
    pub fn start(port: u16, dir: &Path) -> Self {
        Self::start_with(port, dir, &[])
    }

    /// [`Redis::start`] with more `redis-server` arguments.
    pub fn start_with(port: u16, dir: &Path, args: &[&str]) -> Self {
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir)
            .args(args)
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        let redis = Self { child, port };
        let deadline = Instant::now() + Duration::from_secs(10);
        while redis.query(&["PING"]).is_none() {
            assert!(
                Instant::now() < deadline,
                "redis-server on {port} did not start; its log:\n{}",
                std::fs::read_to_string(dir.join("redis.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        redis
    }

    /// `redis-cli` output of one command, `None` if the server does not answer.
    pub fn query(&self, args: &[&str]) -> Option<String> {
        let out = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(args)
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        (out.status.success() && !text.contains("Could not connect")).then_some(text)
    }

    /// The session hashes stored now.
    pub fn sessions(&self) -> usize {
        self.query(&["--scan", "--pattern", "sf:s:*"])
            .map_or(0, |keys| keys.lines().filter(|l| !l.is_empty()).count())
    }

    /// Sends `signal` (`STOP`, `CONT`…) to the server.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success(), "kill -{signal}");
    }

    /// Kills the server with SIGKILL (no shutdown: what a crash does).
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A Redis Cluster of a test's own: six servers on free loopback ports, three masters with one
/// replica each, made by `redis-cli --cluster create`; stopped when dropped.
pub struct RedisCluster {
    /// Every node, `None` once killed.
    pub nodes: Vec<Option<Redis>>,
    /// What [`RedisCluster::revive`] needs: each node's directory and `redis-server` arguments.
    starts: Vec<(std::path::PathBuf, Vec<String>)>,
}

impl RedisCluster {
    /// Starts the cluster under `dir`, a replica taking over a master that is silent for
    /// `node_timeout_ms`; returns once every slot is served.
    pub fn start(dir: &Path, node_timeout_ms: u32) -> Self {
        let mut cluster = Self {
            nodes: Vec::new(),
            starts: Vec::new(),
        };
        for _ in 0..6 {
            let (port, bus) = (super::free_port(), super::free_port());
            let node_dir = dir.join(format!("redis-{port}"));
            std::fs::create_dir_all(&node_dir).unwrap();
            let args: Vec<String> = [
                "--cluster-enabled",
                "yes",
                "--cluster-port",
                &bus.to_string(),
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                &node_timeout_ms.to_string(),
                // A replica's first sync starts at once (the default waits 5 s).
                "--repl-diskless-sync-delay",
                "0",
                "--logfile",
                &node_dir.join("redis.log").display().to_string(),
            ]
            .map(str::to_owned)
            .into();
            let refs: Vec<&str> = args.iter().map(String::as_str).collect();
            cluster
                .nodes
                .push(Some(Redis::start_with(port, &node_dir, &refs)));
            cluster.starts.push((node_dir, args));
        }
        let addresses: Vec<String> = cluster
            .ports()
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .output()
            .expect("redis-cli runs");
        assert!(
            out.status.success(),
            "redis-cli --cluster create: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        cluster.wait_until_ok(Duration::from_secs(30));
        cluster
    }

    /// The log of node `i`.
    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(self.starts[i].0.join("redis.log")).unwrap_or_default()
    }

    /// Starts killed node `i` again, empty, on its port: it rejoins the cluster (its
    /// `nodes.conf` survived) as a replica of the master that took over.
    pub fn revive(&mut self, i: usize, port: u16) {
        let (dir, args) = &self.starts[i];
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        self.nodes[i] = Some(Redis::start_with(port, dir, &refs));
    }

    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().flatten().map(|n| n.port).collect()
    }

    /// The store URL naming two of the nodes (the client learns the others).
    pub fn url(&self) -> String {
        let ports = self.ports();
        format!(
            "redis-cluster://127.0.0.1:{},127.0.0.1:{}",
            ports[0], ports[1]
        )
    }

    /// Waits until every live node says the cluster is ok and serves every slot, and every
    /// replica is in sync.
    pub fn wait_until_ok(&self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let ok = self.nodes.iter().flatten().all(|node| {
                node.query(&["CLUSTER", "INFO"]).is_some_and(|info| {
                    info.contains("cluster_state:ok") && info.contains("cluster_slots_ok:16384")
                }) && node.query(&["INFO", "replication"]).is_some_and(|info| {
                    !info.contains("state=wait_bgsave")
                        && !info.contains("state=send_bulk")
                        && !info.contains("master_link_status:down")
                })
            });
            if ok {
                return;
            }
            assert!(Instant::now() < deadline, "the Redis Cluster is not ok");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The index in [`RedisCluster::nodes`] of the master serving `key`'s slot.
    pub fn master_of(&self, key: &str) -> usize {
        let slot: u16 = self
            .nodes
            .iter()
            .flatten()
            .next()
            .unwrap()
            .query(&["CLUSTER", "KEYSLOT", key])
            .unwrap()
            .parse()
            .unwrap();
        self.nodes
            .iter()
            .position(|node| {
                node.as_ref().is_some_and(|node| {
                    node.query(&["ROLE"])
                        .is_some_and(|r| r.starts_with("master"))
                        && owns(node, slot)
                })
            })
            .expect("a master serves the slot")
    }

    /// The index in [`RedisCluster::nodes`] of the replica of node `master`.
    pub fn replica_of(&self, master: usize) -> usize {
        let port = self.nodes[master].as_ref().unwrap().port.to_string();
        self.nodes
            .iter()
            .position(|node| {
                node.as_ref().is_some_and(|node| {
                    node.query(&["ROLE"]).is_some_and(|role| {
                        let lines: Vec<&str> = role.lines().collect();
                        lines.first() == Some(&"slave") && lines.get(2) == Some(&port.as_str())
                    })
                })
            })
            .expect("the master has a replica")
    }

    /// The session hashes stored now, over the masters.
    pub fn sessions(&self) -> usize {
        self.nodes
            .iter()
            .flatten()
            .filter(|n| n.query(&["ROLE"]).is_some_and(|r| r.starts_with("master")))
            .map(Redis::sessions)
            .sum()
    }
}

/// Whether `node` serves `slot` (its own line of `CLUSTER NODES` lists it).
fn owns(node: &Redis, slot: u16) -> bool {
    let Some(nodes) = node.query(&["CLUSTER", "NODES"]) else {
        return false;
    };
    nodes
        .lines()
        .filter(|line| line.contains("myself"))
        .flat_map(|line| line.split_whitespace().skip(8))
        .any(|range| match range.split_once('-') {
            Some((a, b)) => {
                a.parse::<u16>().is_ok_and(|a| a <= slot)
                    && b.parse::<u16>().is_ok_and(|b| slot <= b)
            }
            None => range.parse::<u16>() == Ok(slot),
        })
}
