//! `storm`: the failover storm (issue 13). N users have sessions on node A (sync mode, so
//! every one is committed); a node B starts on the same store; A is killed with SIGKILL; then
//! every user's next request (`GET /cart`) arrives at B at once, as many in flight as
//! `--concurrency` (a balancer sending A's users to B; each in-flight request on its own
//! keep-alive connection). B's cache is cold: each first request restores its session.
//!
//! Printed per backend and size: restores per second (users ÷ storm time), p50/p99/max of the
//! first request after the failover, errors, carts that did not hold the user's item, and
//! store reads per restore (PostgreSQL: B's transactions from `pg_stat_database`, a real
//! count; SQLite: B's `session_restore_reads_total` from its `/metrics`, the store reads its
//! restores made, batched or not; a build without that counter: B's cache misses, about 1 by
//! construction). Figures only.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, bail};
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request, header};

use crate::driver::{self, Launcher, Target};
use crate::loadgen;

/// The storm's options.
#[derive(Clone, Debug)]
pub struct Options {
    /// Session counts, each a storm of its own.
    pub sessions: Vec<usize>,
    /// The session-failover targets (their backend and mode).
    pub targets: Vec<Target>,
    /// Requests in flight at once, while creating the sessions and in the storm.
    pub concurrency: usize,
    /// The PostgreSQL targets' database.
    pub postgres_url: String,
    /// The session-failover binary (default: built in release mode).
    pub session_failover_bin: Option<std::path::PathBuf>,
}

/// One storm's figures.
struct Storm {
    seconds: f64,
    latency: Histogram<u64>,
    errors: usize,
    wrong: usize,
    statements: Option<u64>,
    restores: u64,
}

pub async fn run(options: Options) -> anyhow::Result<()> {
    for target in &options.targets {
        if !matches!(target, Target::SfSqliteSync | Target::SfPgSync) {
            bail!(
                "storm runs session-failover in sync mode: --targets sf-sqlite-sync,sf-pg-sync, not {}",
                target.label()
            );
        }
    }
    let repo = driver::repo_root()?;
    let sf_bin = match &options.session_failover_bin {
        Some(bin) => bin.clone(),
        None => driver::build_session_failover(&repo).await?,
    };
    if options.targets.contains(&Target::SfPgSync) {
        driver::prepare_postgres(&options.postgres_url).await?;
    }
    let largest = options.sessions.iter().copied().max().unwrap_or(0);
    let launcher = Launcher {
        repo,
        sf_bin,
        postgres_url: options.postgres_url.clone(),
        redis_url: String::new(),
        // Every session fits in each node's cache.
        extra_properties: format!("session.cache.max.entries={}\n", largest.max(1000)),
    };
    let mut rows = Vec::new();
    for &target in &options.targets {
        for &sessions in &options.sessions {
            let storm = storm(&options, &launcher, target, sessions)
                .await
                .with_context(|| format!("{} with {sessions} sessions", target.label()))?;
            eprintln!(
                "{:<36} {sessions:>7} sessions: {:.0} restores/s, p99 {:.1} ms",
                target.label(),
                f64::from(u32::try_from(sessions).unwrap_or(u32::MAX)) / storm.seconds,
                ms(&storm.latency, 0.99)
            );
            rows.push((target, sessions, storm));
        }
    }
    println!(
        "\nFailover storm: N sessions on node A, A killed (SIGKILL), every user's next request at node B (cold cache), {} in flight\n",
        options.concurrency
    );
    println!(
        "| target | sessions | storm s | restores/s | first request p50 ms | p99 ms | max ms | errors | wrong carts | restores | store reads/restore |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (target, sessions, s) in rows {
        let per = s.statements.map_or_else(
            || "n/a".to_owned(),
            |n| format!("{:.2}", n as f64 / s.restores.max(1) as f64),
        );
        println!(
            "| {} | {sessions} | {:.2} | {} | {:.2} | {:.2} | {:.2} | {} | {} | {} | {per} |",
            target.label(),
            s.seconds,
            driver::thousands(sessions as f64 / s.seconds),
            ms(&s.latency, 0.5),
            ms(&s.latency, 0.99),
            s.latency.max() as f64 / 1000.0,
            s.errors,
            s.wrong,
            s.restores,
        );
    }
    Ok(())
}

fn ms(h: &Histogram<u64>, quantile: f64) -> f64 {
    h.value_at_quantile(quantile) as f64 / 1000.0
}

async fn storm(
    options: &Options,
    launcher: &Launcher,
    target: Target,
    sessions: usize,
) -> anyhow::Result<Storm> {
    if target == Target::SfPgSync {
        driver::empty_postgres(&options.postgres_url).await?;
    }
    let mut a = launcher.start(target, None).await?;
    let users = create_sessions(a.addr, sessions, options.concurrency)
        .await
        .with_context(|| format!("creating the sessions on node A:\n{}", a.log()))?;
    let b = launcher.start(target, Some(a.data_dir())).await?;
    a.kill().await?;
    // A PostgreSQL backend reports its counters when its session ends and the statistics
    // collector takes a moment: let A's last ones land before B's are counted.
    tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    let pg_before = match target {
        Target::SfPgSync => Some(driver::pg_counters(&options.postgres_url).await?.0),
        _ => None,
    };
    let metrics_before = metrics(b.addr).await?;
    let started = Instant::now();
    let users = Arc::new(users);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..options.concurrency.min(sessions).max(1) {
        let (users, next, addr) = (users.clone(), next.clone(), b.addr);
        workers.push(tokio::spawn(async move {
            let mut latency = Histogram::<u64>::new(3)?;
            let (mut errors, mut wrong) = (0, 0);
            let mut sender = loadgen::connect(addr).await?;
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some((cookie, sku)) = users.get(i) else {
                    break;
                };
                let request = Request::builder()
                    .method(Method::GET)
                    .uri("/cart")
                    .header(header::HOST, addr.to_string())
                    .header(header::COOKIE, cookie)
                    .body(Full::new(Bytes::new()))?;
                let sent = Instant::now();
                sender.ready().await?;
                let response = sender.send_request(request).await?;
                let status = response.status();
                let body = response.into_body().collect().await?.to_bytes();
                latency.record(u64::try_from(sent.elapsed().as_micros()).unwrap_or(u64::MAX))?;
                if !status.is_success() {
                    errors += 1;
                } else if !String::from_utf8_lossy(&body).contains(sku.as_str()) {
                    wrong += 1;
                }
            }
            Ok::<_, anyhow::Error>((latency, errors, wrong))
        }));
    }
    let mut latency = Histogram::<u64>::new(3)?;
    let (mut errors, mut wrong) = (0, 0);
    for worker in workers {
        let (l, e, w) = worker.await??;
        latency.add(&l)?;
        errors += e;
        wrong += w;
    }
    let seconds = started.elapsed().as_secs_f64();
    let metrics_after = metrics(b.addr).await?;
    let counter = |m: &BTreeMap<String, f64>, name: &str| m.get(name).copied().unwrap_or(0.0);
    let restores = (counter(&metrics_after, "session_restores_total")
        - counter(&metrics_before, "session_restores_total")) as u64;
    let reads = if metrics_after.contains_key("session_restore_reads_total") {
        "session_restore_reads_total"
    } else {
        "session_cache_misses_total"
    };
    let reads = (counter(&metrics_after, reads) - counter(&metrics_before, reads)) as u64;
    let mut b = b;
    driver::stop(&mut b).await?;
    let statements = match pg_before {
        // B's statements: read after B stopped (a backend flushes its counters on exit, the
        // collector a moment later).
        Some(before) => {
            tokio::time::sleep(std::time::Duration::from_millis(700)).await;
            Some(driver::pg_counters(&options.postgres_url).await?.0 - before)
        }
        None => Some(reads),
    };
    Ok(Storm {
        seconds,
        latency,
        errors,
        wrong,
        statements,
        restores,
    })
}

/// `count` users, each with a one-line cart on the node at `addr`: their cookies (as a
/// `Cookie` header) and the SKU each added.
async fn create_sessions(
    addr: SocketAddr,
    count: usize,
    concurrency: usize,
) -> anyhow::Result<Vec<(String, String)>> {
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..concurrency.min(count).max(1) {
        let next = next.clone();
        workers.push(tokio::spawn(async move {
            let mut sender = loadgen::connect(addr).await?;
            let mut made = Vec::new();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= count {
                    break;
                }
                let sku = format!("STORM-{i:07}");
                let request = Request::builder()
                    .method(Method::POST)
                    .uri("/cart/items")
                    .header(header::HOST, addr.to_string())
                    .header(header::CONTENT_TYPE, "application/json")
                    .body(Full::new(Bytes::from(format!(
                        r#"{{"sku":"{sku}","qty":1}}"#
                    ))))?;
                sender.ready().await?;
                let response = sender.send_request(request).await?;
                if !response.status().is_success() {
                    bail!("creating session {i}: {}", response.status());
                }
                let cookie: Vec<String> = response
                    .headers()
                    .get_all(header::SET_COOKIE)
                    .iter()
                    .filter_map(|v| v.to_str().ok()?.split(';').next().map(str::to_owned))
                    .collect();
                response.into_body().collect().await?;
                made.push((i, cookie.join("; "), sku));
            }
            Ok::<_, anyhow::Error>(made)
        }));
    }
    let mut users = Vec::with_capacity(count);
    for worker in workers {
        users.extend(worker.await??);
    }
    // In creation order, so the storm does not follow one worker's share.
    users.sort_by_key(|(i, _, _)| *i);
    Ok(users.into_iter().map(|(_, c, s)| (c, s)).collect())
}

/// The counters of a node's `/metrics` (Prometheus text), summed over labels.
async fn metrics(addr: SocketAddr) -> anyhow::Result<BTreeMap<String, f64>> {
    let mut sender = loadgen::connect(addr).await?;
    let request = Request::builder()
        .uri("/metrics")
        .header(header::HOST, addr.to_string())
        .body(Full::new(Bytes::new()))?;
    let response = sender.send_request(request).await?;
    let body = response.into_body().collect().await?.to_bytes();
    let mut out = BTreeMap::new();
    for line in String::from_utf8_lossy(&body).lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some((name, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let name = name.split('{').next().unwrap_or(name).to_owned();
        if let Ok(value) = value.parse::<f64>() {
            *out.entry(name).or_insert(0.0) += value;
        }
    }
    Ok(out)
}
