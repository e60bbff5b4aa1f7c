//! What runs beside the storefront load in every measured window, attacked or not:
//! - `GET /health` every [`HEALTH_EVERY`] on a connection of its own: the route touches no
//!   session and no database, so a slow probe is a request that waited for the server's async
//!   runtime (or for a core);
//! - the operator's own `GET /backoffice/api/stats` with the right password every
//!   [`OPERATOR_EVERY`], from an address of its own: whether the operator still gets in.
//!
//! And, after the window, the server's own count of refused sign-ins from `/metrics`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use base64::Engine as _;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper::{HeaderMap, Request, StatusCode, header};
use tokio::time::MissedTickBehavior;

use crate::loadgen::{connect, new_histogram};

/// How often `/health` is probed.
pub(crate) const HEALTH_EVERY: Duration = Duration::from_millis(10);
/// How often the operator asks for the stats.
const OPERATOR_EVERY: Duration = Duration::from_secs(1);
/// The address the operator's requests come from (`X-Forwarded-For`, TEST-NET-1): never one
/// the attackers use.
const OPERATOR_ADDRESS: &str = "192.0.2.10";

/// The `/health` probes of one window.
#[derive(Debug)]
pub(crate) struct Health {
    /// Probes sent.
    pub(crate) sent: u64,
    /// Probes that failed (connection error or a status other than 200).
    pub(crate) failed: u64,
    /// Latency of the answered probes, µs.
    pub(crate) latency: Histogram<u64>,
}

/// The operator's requests of one window.
#[derive(Debug, Default)]
pub(crate) struct Operator {
    /// Requests sent.
    pub(crate) sent: u64,
    /// Answered 200.
    pub(crate) ok: u64,
    /// Answered anything else, or failed: ("429 busy", "429 locked out", another status, or
    /// "error"; count).
    pub(crate) refused: BTreeMap<String, u64>,
}

/// Runs both probes over the window `from..until` and reports.
pub(crate) async fn run(
    addr: SocketAddr,
    operator: (String, String),
    from: Instant,
    until: Instant,
) -> anyhow::Result<(Health, Operator)> {
    if !addr.ip().is_loopback() {
        anyhow::bail!("the probes send only to loopback, not to {addr}");
    }
    let (health, operator) = tokio::join!(
        health(addr, from, until),
        operator_requests(addr, operator, from, until)
    );
    Ok((health?, operator?))
}

async fn health(addr: SocketAddr, from: Instant, until: Instant) -> anyhow::Result<Health> {
    let mut sender = connect(addr).await?;
    let mut report = Health {
        sent: 0,
        failed: 0,
        latency: new_histogram(),
    };
    let mut ticks = tokio::time::interval_at(from.into(), HEALTH_EVERY);
    // A probe that outlasts the period delays the next one rather than bunching them.
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        if ticks.tick().await.into_std() >= until {
            break;
        }
        report.sent += 1;
        let started = Instant::now();
        match get(&mut sender, addr, "/health", HeaderMap::new()).await {
            Ok((StatusCode::OK, ..)) => {
                let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
                report.latency.saturating_record(micros.max(1));
            }
            Ok(_) | Err(_) => {
                report.failed += 1;
                if sender.is_closed() {
                    sender = connect(addr).await?;
                }
            }
        }
    }
    Ok(report)
}

async fn operator_requests(
    addr: SocketAddr,
    (user, password): (String, String),
    from: Instant,
    until: Instant,
) -> anyhow::Result<Operator> {
    let mut sender = connect(addr).await?;
    let mut headers = HeaderMap::new();
    let credentials =
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    headers.insert(
        header::AUTHORIZATION,
        format!("Basic {credentials}").parse()?,
    );
    headers.insert("x-forwarded-for", OPERATOR_ADDRESS.parse()?);
    let mut report = Operator::default();
    let mut ticks = tokio::time::interval_at(from.into(), OPERATOR_EVERY);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        if ticks.tick().await.into_std() >= until {
            break;
        }
        report.sent += 1;
        match get(&mut sender, addr, super::attacker::ROUTE, headers.clone()).await {
            Ok((StatusCode::OK, ..)) => report.ok += 1,
            Ok((status, headers, _)) => {
                let what = match status {
                    StatusCode::TOO_MANY_REQUESTS
                        if headers.get(header::RETRY_AFTER).is_some_and(|v| v == "1") =>
                    {
                        "429 busy".to_owned()
                    }
                    StatusCode::TOO_MANY_REQUESTS => "429 locked out".to_owned(),
                    other => other.as_str().to_owned(),
                };
                *report.refused.entry(what).or_default() += 1;
            }
            Err(_) => {
                *report.refused.entry("error".to_owned()).or_default() += 1;
                if sender.is_closed() {
                    sender = connect(addr).await?;
                }
            }
        }
    }
    Ok(report)
}

/// The server's `session_backoffice_refused_total`, by reason (`wrong-password` is the number
/// of password checks that ran and failed).
pub(crate) async fn refusals(addr: SocketAddr) -> anyhow::Result<BTreeMap<String, u64>> {
    let mut sender = connect(addr).await?;
    let (status, _, body) = get(&mut sender, addr, "/metrics", HeaderMap::new()).await?;
    if status != StatusCode::OK {
        anyhow::bail!("GET /metrics answered {status}");
    }
    let text = String::from_utf8_lossy(&body);
    Ok(text
        .lines()
        .filter_map(|line| line.strip_prefix("session_backoffice_refused_total{"))
        .filter_map(|rest| {
            let (labels, value) = rest.split_once('}')?;
            let reason = labels.split("reason=\"").nth(1)?.split('"').next()?;
            let count = value.trim().parse::<f64>().ok()?;
            // A Prometheus counter is printed as a float; these are whole and small.
            Some((reason.to_owned(), count as u64))
        })
        .collect())
}

async fn get(
    sender: &mut SendRequest<Full<Bytes>>,
    addr: SocketAddr,
    path: &str,
    headers: HeaderMap,
) -> anyhow::Result<(StatusCode, HeaderMap, Bytes)> {
    let mut request = Request::get(path).header(header::HOST, addr.to_string());
    if let Some(map) = request.headers_mut() {
        map.extend(headers);
    }
    sender.ready().await?;
    let response = sender
        .send_request(request.body(Full::new(Bytes::new()))?)
        .await?;
    let (parts, body) = response.into_parts();
    let body = body.collect().await?.to_bytes();
    Ok((parts.status, parts.headers, body))
}
