//! Shared test helpers: a counting store wrapper, a tower client for the router, and real
//! `session-failover serve` processes.
#![allow(dead_code, unreachable_pub)]

pub mod backends;
pub mod balancer;
pub mod galera;
pub mod redis;
pub mod shared;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use http::{Request, StatusCode};
use http_body_util::BodyExt as _;
use session_failover::config::{Config, Properties};
use session_failover::store;
use session_failover::store::testing::{Call, Hook, Wrapped};
use tower::ServiceExt as _;

/// The sum of a Prometheus counter's series on the node at `base`.
pub async fn metric(base: &str, name: &str) -> f64 {
    let text = reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|line| line.starts_with(name))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The shipped `config/project.properties`, so tests run on what users get.
pub const PROJECT_PROPERTIES: &str = include_str!("../../config/project.properties");

/// A store wrapper that counts calls per operation: how we prove what the layer asks of a store.
pub type CountingStore = Wrapped<Counter>;

/// The counts of a [`CountingStore`].
#[derive(Default)]
pub struct Counter {
    calls: Mutex<BTreeMap<&'static str, u64>>,
    rows: std::sync::atomic::AtomicU64,
}

impl Hook for Counter {
    async fn before(&self, call: Call<'_>) -> Result<(), store::Error> {
        *self.calls.lock().unwrap().entry(call.name()).or_default() += 1;
        self.rows.fetch_add(
            call.records().len() as u64,
            std::sync::atomic::Ordering::SeqCst,
        );
        Ok(())
    }
}

impl Counter {
    pub fn count(&self, op: &str) -> u64 {
        self.calls.lock().unwrap().get(op).copied().unwrap_or(0)
    }
    /// Rows handed to set/update calls (single or batched).
    pub fn rows_written(&self) -> u64 {
        self.rows.load(std::sync::atomic::Ordering::SeqCst)
    }
    /// Calls that read a session (get/exists/ttl).
    pub fn reads(&self) -> u64 {
        self.count("get") + self.count("exists") + self.count("ttl")
    }
    pub fn total(&self) -> u64 {
        self.calls.lock().unwrap().values().sum()
    }
    pub fn calls(&self) -> BTreeMap<&'static str, u64> {
        self.calls.lock().unwrap().clone()
    }
}

/// A config from the shipped project.properties plus `local` (as local.properties).
pub fn config(local: &str) -> Config {
    let mut p = Properties::builtin();
    p.merge_file(
        Path::new("config/project.properties"),
        PROJECT_PROPERTIES.as_bytes(),
    )
    .unwrap();
    p.merge_file(Path::new("local.properties"), local.as_bytes())
        .unwrap();
    Config::from_properties(&p).unwrap()
}

/// A fresh SQLite store in `dir`, migrated.
pub async fn sqlite(dir: &Path) -> store::SqliteStore {
    let url = format!("sqlite://{}", dir.join("sessions.db").display());
    let store = store::SqliteStore::connect(&url, &store::StoreOptions::default())
        .await
        .unwrap();
    store.migrate().await.unwrap();
    store
}

/// A response as the tests look at it.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub set_cookie: Vec<String>,
    pub body: serde_json::Value,
}

impl Reply {
    /// The value of the first `Set-Cookie` named `name`.
    pub fn cookie(&self, name: &str) -> Option<String> {
        self.set_cookie.iter().find_map(|c| {
            let parsed = cookie::Cookie::parse(c.clone()).ok()?;
            (parsed.name() == name).then(|| parsed.value().to_owned())
        })
    }
}

/// Sends one request through the router (tower `oneshot`).
pub async fn send(
    app: &Router,
    method: &str,
    uri: &str,
    cookie: Option<&str>,
    json: Option<serde_json::Value>,
) -> Reply {
    let mut builder = Request::builder().method(method).uri(uri);
    if let Some(cookie) = cookie {
        builder = builder.header("cookie", cookie);
    }
    let body = match json {
        Some(json) => {
            builder = builder.header("content-type", "application/json");
            Body::from(json.to_string())
        }
        None => Body::empty(),
    };
    let response = app
        .clone()
        .oneshot(builder.body(body).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let set_cookie = response
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let body = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
    Reply {
        status,
        set_cookie,
        body,
    }
}

/// The SKUs and quantities of a `GET /cart` body.
pub fn items(body: &serde_json::Value) -> Vec<(String, u64)> {
    body["items"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .map(|i| {
                    (
                        i["sku"].as_str().unwrap().to_owned(),
                        i["qty"].as_u64().unwrap(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// A running `session-failover serve` process.
pub struct Server {
    child: Child,
    pub base: String,
    pub log: PathBuf,
}

/// Writes a config dir with the shipped project.properties and `local` as local.properties.
pub fn config_dir(dir: &Path, local: &str) -> PathBuf {
    let config = dir.join("config");
    std::fs::create_dir_all(&config).unwrap();
    std::fs::write(config.join("project.properties"), PROJECT_PROPERTIES).unwrap();
    std::fs::write(config.join("local.properties"), local).unwrap();
    config
}

impl Server {
    /// Starts `serve --config DIR --bind 127.0.0.1:0` in `work` and waits until it listens.
    pub fn start(work: &Path, config: &Path, name: &str) -> Server {
        Self::start_with(work, config, name, "127.0.0.1:0", &[])
    }

    /// Starts `serve --config DIR --bind BIND` with extra environment variables.
    pub fn start_with(
        work: &Path,
        config: &Path,
        name: &str,
        bind: &str,
        env: &[(&str, &str)],
    ) -> Server {
        let log = work.join(format!("{name}.log"));
        let mut child = Command::new(env!("CARGO_BIN_EXE_session-failover"))
            .args(["serve", "--config"])
            .arg(config)
            .args(["--bind", bind])
            .current_dir(work)
            .envs(env.iter().copied())
            .env("RUST_LOG", "info,session_failover=debug")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix("session-failover listening on ") {
                    let _ = tx.send(url.to_owned());
                }
            }
        });
        let Ok(base) = rx.recv_timeout(Duration::from_secs(30)) else {
            let _ = child.kill();
            panic!(
                "{name} did not start; log:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        };
        Server { child, base, log }
    }

    /// SIGKILL: the process dies at once, as in a crash.
    pub fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM, then waits for the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        assert!(
            Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .unwrap()
                .success()
        );
        self.child.wait().unwrap()
    }

    /// Waits for a process stopped by someone else's signal.
    pub fn terminate_wait(mut self) -> std::process::ExitStatus {
        self.child.wait().unwrap()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A blocking-free HTTP client for the process tests (cookies handled by hand, per node).
pub struct Client {
    http: reqwest::Client,
    pub cookie: Option<String>,
    /// The version cookie (`JSESSIONID_VERSION`) the server set, sent back as a browser would.
    pub version: Option<String>,
}

impl Client {
    pub fn new() -> Self {
        Self {
            http: reqwest::Client::new(),
            cookie: None,
            version: None,
        }
    }

    /// Sends a request to `base` + `path`, remembering a `JSESSIONID` the server sets.
    pub async fn send(
        &mut self,
        base: &str,
        method: &str,
        path: &str,
        json: Option<serde_json::Value>,
    ) -> (StatusCode, serde_json::Value) {
        self.try_send(base, method, path, json)
            .await
            .expect("the request failed")
    }

    /// Like [`Client::send`], but `None` when no response arrived (connection reset, timeout).
    pub async fn try_send(
        &mut self,
        base: &str,
        method: &str,
        path: &str,
        json: Option<serde_json::Value>,
    ) -> Option<(StatusCode, serde_json::Value)> {
        let mut request = self
            .http
            .request(method.parse().unwrap(), format!("{base}{path}"))
            .timeout(Duration::from_secs(10));
        let mut cookies = Vec::new();
        if let Some(cookie) = &self.cookie {
            cookies.push(format!("JSESSIONID={cookie}"));
        }
        if let Some(version) = &self.version {
            cookies.push(format!("JSESSIONID_VERSION={version}"));
        }
        if !cookies.is_empty() {
            request = request.header("cookie", cookies.join("; "));
        }
        if let Some(json) = json {
            request = request.json(&json);
        }
        let response = request.send().await.ok()?;
        for value in response.headers().get_all("set-cookie") {
            let parsed = cookie::Cookie::parse(value.to_str().unwrap().to_owned()).unwrap();
            let value = (!parsed.value().is_empty()).then(|| parsed.value().to_owned());
            match parsed.name() {
                "JSESSIONID" => self.cookie = value,
                "JSESSIONID_VERSION" => self.version = value,
                _ => {}
            }
        }
        let status = response.status();
        let body = response.json().await.unwrap_or(serde_json::Value::Null);
        Some((StatusCode::from_u16(status.as_u16()).unwrap(), body))
    }
}

/// A store wrapper that delays chosen operations: how tests line up races deterministically.
pub type SlowStore = Wrapped<Delays>;

/// The delays of a [`SlowStore`].
#[derive(Default)]
pub struct Delays {
    /// Milliseconds to wait before `update`, `set` and `destroy` (single or batched).
    pub update_ms: std::sync::atomic::AtomicU64,
    pub set_ms: std::sync::atomic::AtomicU64,
    pub destroy_ms: std::sync::atomic::AtomicU64,
    /// Milliseconds to wait before `get` (a restore's or a refresh's read).
    pub get_ms: std::sync::atomic::AtomicU64,
    /// Milliseconds an `update` or `update_many` waits after it has committed, for the next
    /// `hang_updates` of them: a store whose answer is late though the write is made.
    pub hang_ms: std::sync::atomic::AtomicU64,
    pub hang_updates: std::sync::atomic::AtomicU64,
}

impl Hook for Delays {
    async fn before(&self, call: Call<'_>) -> Result<(), store::Error> {
        let ms = match call.name() {
            "set" | "set_many" => &self.set_ms,
            "update" | "update_many" => &self.update_ms,
            "destroy" | "destroy_many" => &self.destroy_ms,
            "get" => &self.get_ms,
            _ => return Ok(()),
        };
        let ms = ms.load(std::sync::atomic::Ordering::SeqCst);
        if ms > 0 {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        Ok(())
    }

    async fn after(&self, call: Call<'_>) {
        use std::sync::atomic::Ordering::SeqCst;
        if !matches!(call.name(), "update" | "update_many") {
            return;
        }
        let hang = self
            .hang_updates
            .fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if hang {
            tokio::time::sleep(Duration::from_millis(self.hang_ms.load(SeqCst))).await;
        }
    }
}

/// A free TCP port on 127.0.0.1 (bound and released; good enough for tests on one machine).
/// The argon2 PHC hash of `password` (for `session.backoffice.password.hash`), with a fixed
/// salt: tests need a hash, not a secret.
pub fn password_hash(password: &str) -> String {
    use argon2::password_hash::{PasswordHasher as _, SaltString};
    let salt = SaltString::encode_b64(b"0123456789abcdef").unwrap();
    argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .unwrap()
        .to_string()
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Whether a program is on PATH; in CI a missing one fails the test, elsewhere it is skipped
/// with a message.
pub fn require_program(program: &str, test: &str) -> bool {
    use std::io::Write as _;
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("{test}: {program} is not installed; .ci/run must install it");
        }
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED {test}: {program} is not installed"
        );
    }
    found
}
