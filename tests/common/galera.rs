//! A MariaDB Galera cluster of a test's own: three `mariadbd` from Debian's packages
//! (`mariadb-server`, `galera-4`, `mariadb-backup` for the state transfer) on free loopback
//! ports, each with its data directory under the test's temporary directory. The first node
//! bootstraps the cluster, the others join it one after the other; all are killed when dropped.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Three Galera nodes; [`Galera::url`] names one.
pub struct Galera {
    nodes: Vec<Child>,
    /// Each node's SQL port.
    pub ports: Vec<u16>,
}

impl Galera {
    /// Starts the cluster under `dir`; returns once every node is synced and the database
    /// `test` exists.
    pub fn start(dir: &Path) -> Self {
        let ports: Vec<u16> = (0..3).map(|_| super::free_port()).collect();
        let gcomm: Vec<u16> = (0..3).map(|_| super::free_port()).collect();
        let address = gcomm
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut galera = Self {
            nodes: Vec::new(),
            ports: ports.clone(),
        };
        for i in 0..3 {
            let node = dir.join(format!("galera{i}"));
            let data = node.join("data");
            std::fs::create_dir_all(&node).unwrap();
            let installed = Command::new("mariadb-install-db")
                .arg("--no-defaults")
                .arg(format!("--datadir={}", data.display()))
                .args(["--user=root", "--auth-root-authentication-method=normal"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .expect("mariadb-install-db runs");
            assert!(installed.success(), "mariadb-install-db for node {i}");
            let (ist, sst) = (super::free_port(), super::free_port());
            let config = format!(
                "[mariadbd]\n\
                 datadir={data}\nsocket={node}/sock\nport={port}\nbind-address=127.0.0.1\n\
                 pid-file={node}/pid\nlog-error={node}/error.log\nuser=root\n\
                 binlog_format=ROW\ndefault_storage_engine=InnoDB\ninnodb_autoinc_lock_mode=2\n\
                 innodb_buffer_pool_size=32M\n\
                 wsrep_on=ON\nwsrep_provider=/usr/lib/galera/libgalera_smm.so\n\
                 wsrep_cluster_name=session-failover-test\n\
                 wsrep_cluster_address=gcomm://{address}\n\
                 wsrep_node_address=127.0.0.1\nwsrep_node_name=node{i}\n\
                 wsrep_provider_options=\"gmcast.listen_addr=tcp://127.0.0.1:{gcomm};ist.recv_addr=127.0.0.1:{ist}\"\n\
                 wsrep_sst_receive_address=127.0.0.1:{sst}\n\
                 wsrep_sst_method=mariabackup\nwsrep_sst_auth=root:\n",
                data = data.display(),
                node = node.display(),
                port = ports[i],
                gcomm = gcomm[i],
            );
            let file = node.join("my.cnf");
            std::fs::write(&file, config).unwrap();
            let mut command = Command::new("/usr/sbin/mariadbd");
            command.arg(format!("--defaults-file={}", file.display()));
            if i == 0 {
                command.arg("--wsrep-new-cluster");
            }
            galera.nodes.push(
                command
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("mariadbd starts"),
            );
            // One joiner at a time: each takes its state from a synced node.
            galera.wait(i + 1, Duration::from_secs(90), &node);
        }
        galera.sql(0, "CREATE DATABASE IF NOT EXISTS test");
        galera
    }

    /// Waits until node `count - 1` answers and the cluster has `count` synced members.
    fn wait(&self, count: usize, within: Duration, node: &Path) {
        let deadline = Instant::now() + within;
        loop {
            let status = self.query(
                count - 1,
                "SHOW STATUS WHERE Variable_name IN ('wsrep_cluster_size', 'wsrep_local_state_comment')",
            );
            if let Some(status) = status
                && status.contains(&format!("wsrep_cluster_size\t{count}"))
                && status.contains("Synced")
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "Galera node {} did not join; its log:\n{}",
                count - 1,
                std::fs::read_to_string(node.join("error.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// The `mariadb` client's output of `sql` on node `i`, `None` if it failed.
    pub fn query(&self, i: usize, sql: &str) -> Option<String> {
        let out = Command::new("mariadb")
            .args([
                "-h",
                "127.0.0.1",
                "-P",
                &self.ports[i].to_string(),
                "-u",
                "root",
            ])
            .args(["--batch", "--skip-column-names", "-e", sql])
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Runs `sql` on node `i`; panics if it fails.
    pub fn sql(&self, i: usize, sql: &str) {
        assert!(self.query(i, sql).is_some(), "{sql} on Galera node {i}");
    }

    /// SIGKILL of node `i`: the process dies at once, as in a crash.
    pub fn kill(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        node.kill().unwrap();
        let _ = node.wait();
    }

    /// The store URL of node `i`'s `test` database.
    pub fn url(&self, i: usize) -> String {
        format!("mysql://root@127.0.0.1:{}/test", self.ports[i])
    }
}

impl Drop for Galera {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            let _ = node.kill();
            let _ = node.wait();
        }
    }
}
