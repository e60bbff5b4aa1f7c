//! The attacker: forged HTTP Basic credentials for `GET /backoffice/api/stats` at a fixed rate,
//! open loop. Request `i` is due at `from + i / rate` whether or not earlier ones were answered
//! (a guesser does not wait for the server), on a pool of keep-alive connections that grows
//! when every connection is busy. Latency runs from the time a request was due, so a server
//! that falls behind shows it in full (no coordinated omission).

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper::{Request, StatusCode, header};
use tokio::task::JoinSet;

use crate::loadgen::{connect, new_histogram};

/// The route every forged request asks for.
pub(crate) const ROUTE: &str = "/backoffice/api/stats";
/// Requests in flight beyond which a due request is dropped (counted, not sent): bounds the
/// attacker's memory and connections if the server stops answering.
const MAX_IN_FLIGHT: usize = 256;
/// How long after the window the attacker waits for its last answers.
const DRAIN: Duration = Duration::from_secs(5);

/// What the forged requests carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, clap::ValueEnum)]
pub enum Attack {
    /// Random user names and passwords, all from 127.0.0.1 (no `X-Forwarded-For`): one
    /// guesser, whom the address lockout stops after 10 failures.
    Forged,
    /// Random user names and passwords, each from a random address in `X-Forwarded-For`
    /// (198.18.0.0/15, the range set aside for benchmarks), as many guessers arrive behind the
    /// balancer: no lockout applies, every attempt is checked or finds the checks busy.
    ForgedSpread,
    /// The operator's own user name with random wrong passwords, from random addresses: the
    /// user name's lockout (after 50 failures) stops it, and locks the operator out too.
    RealUser,
}

impl Attack {
    /// Its name in tables.
    pub fn label(self) -> &'static str {
        match self {
            Self::Forged => "forged users, one address",
            Self::ForgedSpread => "forged users, spread addresses",
            Self::RealUser => "real user, spread addresses",
        }
    }
}

/// One attack on one server.
#[derive(Clone, Debug)]
pub(crate) struct Plan {
    /// The server (loopback).
    pub(crate) addr: SocketAddr,
    /// What the requests carry.
    pub(crate) attack: Attack,
    /// The backoffice's real user name (for [`Attack::RealUser`]).
    pub(crate) operator: String,
    /// Requests per second.
    pub(crate) rate: u32,
    /// When the first request is due.
    pub(crate) from: Instant,
    /// No request is due at or after this.
    pub(crate) until: Instant,
}

/// What the attacker sent and what it got back.
#[derive(Debug)]
pub(crate) struct Report {
    /// Requests due in the window (`rate` × its length).
    pub(crate) scheduled: u64,
    /// Requests sent.
    pub(crate) sent: u64,
    /// Requests not sent because [`MAX_IN_FLIGHT`] were unanswered.
    pub(crate) dropped: u64,
    /// 401: checked, and wrong.
    pub(crate) unauthorized: u64,
    /// 429 with `Retry-After: 1`: every check slot was busy, not checked.
    pub(crate) busy: u64,
    /// 429 with a longer `Retry-After`: the address or user name is locked out, not checked.
    pub(crate) locked_out: u64,
    /// Any other status, by status.
    pub(crate) other: BTreeMap<u16, u64>,
    /// Connection errors, and requests unanswered [`DRAIN`] after the window.
    pub(crate) failed: u64,
    /// From the time a request was due to the end of its answer, µs.
    pub(crate) latency: Histogram<u64>,
    /// When the first request answered "locked out" was due, from the window's start.
    pub(crate) locked_out_after: Option<Duration>,
}

/// How one forged request ended.
enum Outcome {
    Answered {
        status: StatusCode,
        /// The `Retry-After` header, if any.
        retry_after: Option<String>,
        /// When the request was due.
        due: Instant,
        latency: Duration,
    },
    Failed,
}

impl Report {
    fn add(&mut self, outcome: Outcome, from: Instant) {
        match outcome {
            Outcome::Answered {
                status,
                retry_after,
                due,
                latency,
            } => {
                match status {
                    StatusCode::UNAUTHORIZED => self.unauthorized += 1,
                    StatusCode::TOO_MANY_REQUESTS if retry_after.as_deref() == Some("1") => {
                        self.busy += 1;
                    }
                    StatusCode::TOO_MANY_REQUESTS => {
                        self.locked_out += 1;
                        let after = due.saturating_duration_since(from);
                        if self.locked_out_after.is_none_or(|first| after < first) {
                            self.locked_out_after = Some(after);
                        }
                    }
                    other => *self.other.entry(other.as_u16()).or_default() += 1,
                }
                let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
                self.latency.saturating_record(micros.max(1));
            }
            Outcome::Failed => self.failed += 1,
        }
    }
}

/// Idle keep-alive connections to the server. A std mutex: each use is a push or a pop, never
/// held across an `.await`.
type Pool = Arc<Mutex<Vec<SendRequest<Full<Bytes>>>>>;

/// Runs the attack to its end (every due request sent, answered or given up on) and reports.
pub(crate) async fn run(plan: Plan) -> anyhow::Result<Report> {
    if !plan.addr.ip().is_loopback() {
        anyhow::bail!("the attacker sends only to loopback, not to {}", plan.addr);
    }
    if plan.rate == 0 {
        anyhow::bail!("--rate must be at least 1");
    }
    let window = plan.until.saturating_duration_since(plan.from);
    // At most a few million: the rate is a u32 and the window a command-line number of seconds.
    let scheduled = (f64::from(plan.rate) * window.as_secs_f64()).floor() as u64;
    let period = Duration::from_secs_f64(1.0 / f64::from(plan.rate));
    let mut report = Report {
        scheduled,
        sent: 0,
        dropped: 0,
        unauthorized: 0,
        busy: 0,
        locked_out: 0,
        other: BTreeMap::new(),
        failed: 0,
        latency: new_histogram(),
        locked_out_after: None,
    };
    let pool: Pool = Arc::default();
    let mut rng = fastrand::Rng::new();
    let mut in_flight = JoinSet::new();
    for i in 0..scheduled {
        let due = plan.from + period.mul_f64(i as f64);
        tokio::time::sleep_until(due.into()).await;
        while let Some(done) = in_flight.try_join_next() {
            report.add(done.unwrap_or(Outcome::Failed), plan.from);
        }
        if in_flight.len() >= MAX_IN_FLIGHT {
            report.dropped += 1;
            continue;
        }
        let request = forge(&plan, &mut rng)?;
        report.sent += 1;
        in_flight.spawn(send(Arc::clone(&pool), plan.addr, request, due));
    }
    let deadline = tokio::time::Instant::from_std(plan.until + DRAIN);
    loop {
        match tokio::time::timeout_at(deadline, in_flight.join_next()).await {
            Ok(Some(done)) => report.add(done.unwrap_or(Outcome::Failed), plan.from),
            Ok(None) => break,
            Err(_) => {
                report.failed += in_flight.len() as u64;
                in_flight.abort_all();
                break;
            }
        }
    }
    Ok(report)
}

/// A forged request: wrong credentials, and for the spread attacks an address of its own.
fn forge(plan: &Plan, rng: &mut fastrand::Rng) -> anyhow::Result<Request<Full<Bytes>>> {
    let user = match plan.attack {
        Attack::RealUser => plan.operator.clone(),
        Attack::Forged | Attack::ForgedSpread => {
            let len = rng.usize(5..=12);
            std::iter::repeat_with(|| rng.lowercase())
                .take(len)
                .collect()
        }
    };
    let password: String = std::iter::repeat_with(|| rng.alphanumeric())
        .take(16)
        .collect();
    let credentials =
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    let mut request = Request::get(ROUTE)
        .header(header::HOST, plan.addr.to_string())
        .header(header::AUTHORIZATION, format!("Basic {credentials}"));
    if plan.attack != Attack::Forged {
        let from = Ipv4Addr::new(198, rng.u8(18..=19), rng.u8(..), rng.u8(1..=254));
        request = request.header("x-forwarded-for", from.to_string());
    }
    Ok(request.body(Full::new(Bytes::new()))?)
}

/// Sends `request` on an idle pooled connection (or a new one) and puts the connection back.
async fn send(
    pool: Pool,
    addr: SocketAddr,
    request: Request<Full<Bytes>>,
    due: Instant,
) -> Outcome {
    let pooled = {
        let mut idle = pool.lock().expect("the pool lock is never poisoned");
        std::iter::from_fn(|| idle.pop()).find(|sender| !sender.is_closed())
    };
    let mut sender = match pooled {
        Some(sender) => sender,
        None => match connect(addr).await {
            Ok(sender) => sender,
            Err(_) => return Outcome::Failed,
        },
    };
    let answer = async {
        sender.ready().await?;
        let response = sender.send_request(request).await?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get(header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        response.into_body().collect().await?;
        Ok::<_, anyhow::Error>((status, retry_after))
    }
    .await;
    let latency = due.elapsed();
    if !sender.is_closed() {
        pool.lock()
            .expect("the pool lock is never poisoned")
            .push(sender);
    }
    match answer {
        Ok((status, retry_after)) => Outcome::Answered {
            status,
            retry_after,
            due,
            latency,
        },
        Err(_) => Outcome::Failed,
    }
}
