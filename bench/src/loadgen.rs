//! The load generator: N simulated users against 127.0.0.1, each with its own keep-alive
//! connection and cookie jar, a warm-up, then a measured window of fixed length.
//!
//! Workloads (the storefront's routes):
//! - `health`: `GET /health`, no session;
//! - `read`: one add to create the session, then `GET /cart` over and over;
//! - `write`: `POST /cart/items` over 20 SKUs in turn, one more of each every time; a line that
//!   has reached [`MAX_LINE_QTY`] is removed (`DELETE`) instead, so a cart never holds more than
//!   20 lines;
//! - `mixed`: 90 % reads and 10 % writes, each user's writes spread evenly;
//! - `roundrobin`: `mixed` sent to two nodes on one database in turn (a balancer without
//!   stickiness): every request of a user goes to the other node than its last one.
//!
//! A user knows what its cart should hold. A cart answer that differs (a session that vanished,
//! or an older state served) counts the user as **lost** once, and the user carries on from
//! what the server answered.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper::{Method, Request, StatusCode, header};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::Barrier;

use crate::servers::CartView;

/// Lines in a write workload's cart.
pub const LINES: usize = 20;
/// A line that reaches this quantity is removed instead of increased.
pub const MAX_LINE_QTY: u32 = 50;
/// In the mixed workload, one request in this many is a write.
const MIXED_WRITE_EVERY: u64 = 10;

/// What the users do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, clap::ValueEnum)]
pub enum Workload {
    /// `GET /health`: no session.
    Health,
    /// Repeated `GET /cart` of a one-line cart.
    Read,
    /// Repeated cart changes.
    Write,
    /// 90 % reads, 10 % writes.
    Mixed,
    /// 90 % reads, 10 % writes, alternating between two nodes.
    #[value(name = "roundrobin")]
    RoundRobin,
}

impl Workload {
    /// Its name on the command line and in tables.
    pub fn name(self) -> &'static str {
        match self {
            Self::Health => "health",
            Self::Read => "read",
            Self::Write => "write",
            Self::Mixed => "mixed",
            Self::RoundRobin => "roundrobin",
        }
    }

    /// Nodes the workload sends to.
    pub fn nodes(self) -> usize {
        if self == Self::RoundRobin { 2 } else { 1 }
    }
}

/// One load run.
#[derive(Clone, Debug)]
pub struct LoadConfig {
    /// The servers, one per node of the workload (must be on loopback); a user sends its
    /// requests to them in turn.
    pub addrs: Vec<SocketAddr>,
    /// Concurrent users.
    pub users: usize,
    /// Requests before the measured window (not counted in the figures).
    pub warmup: Duration,
    /// The measured window.
    pub duration: Duration,
    /// What the users do.
    pub workload: Workload,
    /// Whether answers are checked against each user's cart (off for the stateless ceiling).
    pub check_state: bool,
}

/// What a load run measured.
#[derive(Debug)]
pub struct Report {
    /// Requests answered in the measured window.
    pub requests: u64,
    /// Requests sent in the whole run, set-up and warm-up included (to divide database counters
    /// by).
    pub requests_total: u64,
    /// Failed requests (connection errors and unexpected statuses) in the whole run.
    pub errors: u64,
    /// Users whose cart answer differed from what they had been told before.
    pub lost: u64,
    /// The measured window, in seconds.
    pub seconds: f64,
    /// Latencies in the measured window, microseconds.
    pub latency: Histogram<u64>,
}

impl Report {
    /// Requests per second in the measured window.
    pub fn rps(&self) -> f64 {
        self.requests as f64 / self.seconds
    }

    /// A latency quantile in milliseconds.
    pub fn ms(&self, quantile: f64) -> f64 {
        self.latency.value_at_quantile(quantile) as f64 / 1000.0
    }
}

/// Runs the load and reports. Refuses any address but loopback.
pub async fn run(config: LoadConfig) -> anyhow::Result<Report> {
    run_with_window(config, |_, _| {}).await
}

/// [`run`], telling `on_window` when the measured window starts and ends (once every user is
/// set up, before the warm-up's first request), so that other traffic can be aligned with it.
pub async fn run_with_window(
    config: LoadConfig,
    on_window: impl FnOnce(Instant, Instant),
) -> anyhow::Result<Report> {
    if let Some(addr) = config.addrs.iter().find(|a| !a.ip().is_loopback()) {
        bail!("the load generator sends traffic only to loopback, not to {addr}");
    }
    if config.addrs.is_empty() {
        bail!("no server to send to");
    }
    if config.users == 0 {
        bail!("--users must be at least 1");
    }
    let ready = Arc::new(Barrier::new(config.users + 1));
    let mut users = Vec::with_capacity(config.users);
    for id in 0..config.users {
        let config = config.clone();
        let ready = Arc::clone(&ready);
        users.push(tokio::spawn(async move {
            let user = match User::new(id, config.addrs.clone()).await {
                Ok(mut user) => user
                    .set_up(config.workload, config.check_state)
                    .await
                    .map(|()| user),
                Err(error) => Err(error),
            };
            // Wait for everyone, even after a failed set-up, or the others would wait forever.
            ready.wait().await;
            user
        }));
    }
    ready.wait().await;
    let measure_from = Instant::now() + config.warmup;
    let until = measure_from + config.duration;
    on_window(measure_from, until);
    let mut runs = Vec::with_capacity(users.len());
    for user in users {
        runs.push(async move {
            let mut user = user.await.context("user task")??;
            user.run(config.workload, config.check_state, measure_from, until)
                .await;
            Ok::<_, anyhow::Error>(user)
        });
    }
    let mut handles = Vec::new();
    for run in runs {
        handles.push(tokio::spawn(run));
    }
    let mut report = Report {
        requests: 0,
        requests_total: 0,
        errors: 0,
        lost: 0,
        seconds: config.duration.as_secs_f64(),
        latency: new_histogram(),
    };
    for handle in handles {
        let user = handle.await.context("user task")??;
        report.requests += user.measured;
        report.requests_total += user.sent;
        report.errors += user.errors;
        report.lost += u64::from(user.lost);
        report
            .latency
            .add(&user.latency)
            .context("merging histograms")?;
    }
    Ok(report)
}

/// A latency histogram in microseconds.
pub(crate) fn new_histogram() -> Histogram<u64> {
    // 1 µs to 60 s, 3 significant digits.
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

/// A simulated user: one keep-alive connection, a cookie jar, and what its cart should hold.
struct User {
    id: usize,
    /// The nodes, and a keep-alive connection to each.
    addrs: Vec<SocketAddr>,
    senders: Vec<SendRequest<Full<Bytes>>>,
    /// Requests sent so far by node turn: the next goes to `addrs[turn % len]`.
    turn: usize,
    /// Cookie name to value, as the server set them.
    jar: HashMap<String, String>,
    /// Quantity of each of the [`LINES`] SKUs (0: no line).
    cart: [u32; LINES],
    next_line: usize,
    requests: u64,
    sent: u64,
    measured: u64,
    errors: u64,
    lost: bool,
    latency: Histogram<u64>,
}

/// The SKU of line `i`, about as long as a real one.
fn sku(i: usize) -> String {
    format!("SKU-{:06}-BLUE-M", 100_000 + i)
}

/// A keep-alive HTTP/1.1 connection to `addr`, driven by a task on the current runtime.
pub(crate) async fn connect(addr: SocketAddr) -> anyhow::Result<SendRequest<Full<Bytes>>> {
    let stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    stream.set_nodelay(true)?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        // Ends when the server closes the connection or the sender is dropped.
        let _ = connection.await;
    });
    Ok(sender)
}

impl User {
    async fn new(id: usize, addrs: Vec<SocketAddr>) -> anyhow::Result<Self> {
        let mut senders = Vec::with_capacity(addrs.len());
        for &addr in &addrs {
            senders.push(connect(addr).await?);
        }
        Ok(Self {
            id,
            addrs,
            senders,
            turn: 0,
            jar: HashMap::new(),
            cart: [0; LINES],
            // Users start on different lines, as real ones would.
            next_line: id % LINES,
            requests: 0,
            sent: 0,
            measured: 0,
            errors: 0,
            lost: false,
            latency: new_histogram(),
        })
    }

    /// Creates the session where the workload reads one.
    async fn set_up(&mut self, workload: Workload, check: bool) -> anyhow::Result<()> {
        if matches!(
            workload,
            Workload::Read | Workload::Mixed | Workload::RoundRobin
        ) {
            let (status, body) = self.write().await?;
            if status != StatusCode::OK {
                bail!(
                    "set-up add answered {status}: {}",
                    String::from_utf8_lossy(&body)
                );
            }
            self.check(&body, check);
        }
        Ok(())
    }

    async fn run(
        &mut self,
        workload: Workload,
        check: bool,
        measure_from: Instant,
        until: Instant,
    ) {
        loop {
            let started = Instant::now();
            if started >= until {
                break;
            }
            let outcome = match workload {
                Workload::Health => self.get("/health").await,
                Workload::Read => self.get("/cart").await,
                Workload::Write => self.write().await,
                Workload::Mixed | Workload::RoundRobin => {
                    if (self.requests + self.id as u64).is_multiple_of(MIXED_WRITE_EVERY) {
                        self.write().await
                    } else {
                        self.get("/cart").await
                    }
                }
            };
            self.requests += 1;
            let finished = Instant::now();
            match outcome {
                Ok((status, body)) if status.is_success() => {
                    if workload != Workload::Health {
                        self.check(&body, check);
                    }
                    if started >= measure_from && finished <= until {
                        self.measured += 1;
                        let micros = u64::try_from(finished.duration_since(started).as_micros())
                            .unwrap_or(u64::MAX);
                        self.latency.saturating_record(micros.max(1));
                    }
                }
                Ok(_) | Err(_) => {
                    self.errors += 1;
                    for i in 0..self.senders.len() {
                        if self.senders[i].is_closed() {
                            match connect(self.addrs[i]).await {
                                Ok(sender) => self.senders[i] = sender,
                                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                            }
                        }
                    }
                }
            }
        }
    }

    /// Compares a cart answer with what this user expects; on a difference, counts the user as
    /// lost and carries on from the server's answer.
    fn check(&mut self, body: &[u8], check: bool) {
        // Parsed even when not checked, so every target costs the load generator the same.
        let view = serde_json::from_slice::<CartView>(body);
        if !check {
            return;
        }
        let Ok(view) = view else {
            self.lost = true;
            return;
        };
        let expected: u32 = self.cart.iter().sum();
        if view.count != expected {
            self.lost = true;
            self.cart = [0; LINES];
            for item in view.items {
                if let Some(i) = (0..LINES).find(|&i| sku(i) == item.sku) {
                    self.cart[i] = item.qty;
                }
            }
        }
    }

    /// The next cart change: one more of the next line, or its removal once it is full.
    async fn write(&mut self) -> anyhow::Result<(StatusCode, Bytes)> {
        let line = self.next_line;
        self.next_line = (self.next_line + 1) % LINES;
        if self.cart[line] >= MAX_LINE_QTY {
            let answer = self
                .send(Method::DELETE, &format!("/cart/items/{}", sku(line)), None)
                .await?;
            if answer.0.is_success() {
                self.cart[line] = 0;
            }
            Ok(answer)
        } else {
            let body = format!(r#"{{"sku":"{}","qty":1}}"#, sku(line));
            let answer = self
                .send(Method::POST, "/cart/items", Some(Bytes::from(body)))
                .await?;
            if answer.0.is_success() {
                self.cart[line] += 1;
            }
            Ok(answer)
        }
    }

    async fn get(&mut self, path: &str) -> anyhow::Result<(StatusCode, Bytes)> {
        self.send(Method::GET, path, None).await
    }

    async fn send(
        &mut self,
        method: Method,
        path: &str,
        body: Option<Bytes>,
    ) -> anyhow::Result<(StatusCode, Bytes)> {
        self.sent += 1;
        let node = self.turn % self.senders.len();
        self.turn += 1;
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, self.addrs[node].to_string());
        if !self.jar.is_empty() {
            let cookies: Vec<String> = self
                .jar
                .iter()
                .map(|(name, value)| format!("{name}={value}"))
                .collect();
            request = request.header(header::COOKIE, cookies.join("; "));
        }
        let request = match body {
            Some(body) => request
                .header(header::CONTENT_TYPE, "application/json")
                .body(Full::new(body))?,
            None => request.body(Full::new(Bytes::new()))?,
        };
        let sender = &mut self.senders[node];
        sender.ready().await?;
        let response = sender.send_request(request).await?;
        for set_cookie in response.headers().get_all(header::SET_COOKIE) {
            self.remember(set_cookie.to_str().unwrap_or_default());
        }
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        Ok((status, body))
    }

    /// Keeps or forgets a cookie from a `Set-Cookie` header (a past expiry or `Max-Age=0`
    /// removes it).
    fn remember(&mut self, set_cookie: &str) {
        let mut parts = set_cookie.split(';');
        let Some((name, value)) = parts.next().and_then(|pair| pair.split_once('=')) else {
            return;
        };
        let removed = parts.any(|attribute| {
            let attribute = attribute.trim().to_ascii_lowercase();
            attribute == "max-age=0" || attribute.starts_with("max-age=-")
        });
        if removed || value.is_empty() {
            self.jar.remove(name.trim());
        } else {
            self.jar
                .insert(name.trim().to_owned(), value.trim().to_owned());
        }
    }
}
