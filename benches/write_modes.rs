#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_precision_loss
)] // report arithmetic on counts
//! Write-heavy load against the demo storefront in each save mode, on SQLite and PostgreSQL:
//! requests/s, latency, and the row writes and statements each mode issued. One run, same
//! machine, same workload; compare the ratios, not the absolute figures.
//!
//! ```text
//! cargo bench --bench write_modes                       # SQLite only
//! SESSION_FAILOVER_TEST_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/test \
//!     cargo bench --bench write_modes                   # SQLite and PostgreSQL
//! BENCH_SECONDS=10 BENCH_USERS=64 cargo bench --bench write_modes
//! BENCH_PROPERTIES="session.save.group.commit.window=0;session.save.concurrency=8" \
//!     cargo bench --bench write_modes                   # try other settings
//! ```
//!
//! Every request changes its session (adds a cart line, or removes one once the cart holds 20),
//! so every request is a session write. Traffic goes to 127.0.0.1 only and stops by itself.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use session_failover::config::Properties;
use session_failover::persist::Persistence;
use session_failover::store::testing::{Call, Hook, Wrapped};
use session_failover::store::{self, SessionAdmin, StoreOptions};
use session_failover::{Config, server};

/// Counts statements (store calls that write) and rows written.
#[derive(Default)]
struct Counting {
    statements: AtomicU64,
    rows: AtomicU64,
}

impl Hook for Counting {
    async fn before(&self, call: Call<'_>) -> Result<(), store::Error> {
        if let Call::Write(_, records) = call {
            self.statements.fetch_add(1, Ordering::Relaxed);
            self.rows.fetch_add(records.len() as u64, Ordering::Relaxed);
        }
        Ok(())
    }
}

struct Outcome {
    requests: u64,
    errors: u64,
    seconds: f64,
    p50: Duration,
    p99: Duration,
    rows: u64,
    statements: u64,
}

fn config(mode: &str) -> Config {
    let (save, group) = match mode {
        "sync" => ("sync", "false"),
        "sync+group" => ("sync", "true"),
        _ => ("async", "true"),
    };
    // BENCH_PROPERTIES adds settings to try, e.g. "session.save.group.commit.window=0".
    let extra = std::env::var("BENCH_PROPERTIES")
        .unwrap_or_default()
        .replace(';', "\n");
    let text = format!(
        "spring.session.enabled=true\nspring.session.storefront.save={save}\n\
         session.save.group.commit={group}\nspring.session.save.async.interval=1000\n{extra}\n"
    );
    let mut p = Properties::builtin();
    p.merge_file(std::path::Path::new("bench"), text.as_bytes())
        .unwrap();
    Config::from_properties(&p).unwrap()
}

async fn run(
    mode: &str,
    store: Arc<dyn SessionAdmin>,
    users: usize,
    warmup: Duration,
    measure: Duration,
) -> Outcome {
    let counting: Arc<Wrapped<Counting>> = Wrapped::new(store);
    let config = config(mode);
    let persistence = Persistence::from_config(counting.clone(), &config);
    let router = server::app(&config, "bench", Some(persistence.clone()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });

    let start = Instant::now();
    let measure_from = start + warmup;
    let end = measure_from + measure;
    let counted_from = Arc::new(std::sync::Mutex::new(None::<(u64, u64)>));
    let tasks: Vec<_> = (0..users)
        .map(|u| {
            let base = base.clone();
            tokio::spawn(async move {
                let http = reqwest::Client::new();
                let mut cookie: Option<String> = None;
                let (mut done, mut errors, mut latencies) = (0u64, 0u64, Vec::new());
                let mut n = 0u64;
                while Instant::now() < end {
                    // Cart kept at ≤ 20 lines: add 20, then remove them, and so on.
                    let line = n % 40;
                    let request = if line < 20 {
                        http.post(format!("{base}/cart/items"))
                            .json(&serde_json::json!({"sku": format!("u{u}-{line}"), "qty": 1}))
                    } else {
                        http.delete(format!("{base}/cart/items/u{u}-{}", line - 20))
                    };
                    let request = match &cookie {
                        Some(c) => request.header("cookie", format!("JSESSIONID={c}")),
                        None => request,
                    };
                    let sent = Instant::now();
                    let response = request.send().await;
                    let took = sent.elapsed();
                    let measuring = sent >= measure_from;
                    match response {
                        Ok(r) if r.status().is_success() => {
                            if let Some(v) = r.headers().get("set-cookie") {
                                let v = v.to_str().unwrap();
                                cookie =
                                    Some(v["JSESSIONID=".len()..v.find(';').unwrap()].to_owned());
                            }
                            let _ = r.bytes().await;
                            if measuring {
                                done += 1;
                                latencies.push(took);
                            }
                        }
                        _ => {
                            if measuring {
                                errors += 1;
                            }
                        }
                    }
                    n += 1;
                }
                (done, errors, latencies)
            })
        })
        .collect();
    // Snapshot the counters when measuring starts.
    {
        let counting = counting.clone();
        let counted_from = counted_from.clone();
        tokio::spawn(async move {
            tokio::time::sleep_until(measure_from.into()).await;
            *counted_from.lock().unwrap() = Some((
                counting.rows.load(Ordering::Relaxed),
                counting.statements.load(Ordering::Relaxed),
            ));
        });
    }
    let (mut requests, mut errors, mut latencies) = (0, 0, Vec::new());
    for task in tasks {
        let (d, e, l) = task.await.unwrap();
        requests += d;
        errors += e;
        latencies.extend(l);
    }
    let seconds = measure.as_secs_f64();
    // Async writes made during the window may still be queued: drain them, and count them.
    persistence.shutdown(Duration::from_secs(30)).await;
    let (rows0, statements0) = counted_from.lock().unwrap().unwrap_or((0, 0));
    server.abort();
    latencies.sort();
    let pick = |q: f64| {
        latencies
            .get(((latencies.len() as f64 - 1.0) * q) as usize)
            .copied()
            .unwrap_or_default()
    };
    Outcome {
        requests,
        errors,
        seconds,
        p50: pick(0.5),
        p99: pick(0.99),
        rows: counting.rows.load(Ordering::Relaxed) - rows0,
        statements: counting.statements.load(Ordering::Relaxed) - statements0,
    }
}

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::main]
async fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` would pass nothing we need.
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let users = usize::try_from(env_number("BENCH_USERS", 64)).unwrap();
    let measure = Duration::from_secs(env_number("BENCH_SECONDS", 5));
    let warmup = Duration::from_secs(1);
    let dir = tempfile::tempdir().unwrap();
    let mut backends: Vec<(&str, String)> = vec![(
        "SQLite",
        format!("sqlite://{}/bench.db", dir.path().display()),
    )];
    match std::env::var("SESSION_FAILOVER_TEST_POSTGRES_URL") {
        Ok(url) if !url.is_empty() => backends.push(("PostgreSQL", url)),
        _ => eprintln!("PostgreSQL skipped: set SESSION_FAILOVER_TEST_POSTGRES_URL to include it"),
    }
    println!(
        "write-heavy workload: {users} users, each request changes its session (cart <= 20 lines), \
         {}s measured after 1s warm-up, loopback HTTP, server and load generator in one process",
        measure.as_secs()
    );
    println!(
        "{:<11} {:<11} {:>9} {:>8} {:>9} {:>9} {:>10} {:>11} {:>9} {:>9}",
        "backend",
        "mode",
        "req/s",
        "ratio",
        "p50 ms",
        "p99 ms",
        "row writes",
        "statements",
        "rows/stmt",
        "errors"
    );
    for (name, url) in backends {
        let store = store::open(
            &url,
            &StoreOptions {
                pool_size: 16,
                ..StoreOptions::default()
            },
        )
        .await
        .unwrap();
        store.clear().await.unwrap();
        let mut baseline = None;
        for mode in ["sync", "sync+group", "async"] {
            let o = run(mode, store.clone(), users, warmup, measure).await;
            let rps = o.requests as f64 / o.seconds;
            let base = *baseline.get_or_insert(rps);
            println!(
                "{:<11} {:<11} {:>9.0} {:>7.2}x {:>9.2} {:>9.2} {:>10} {:>11} {:>9.1} {:>9}",
                name,
                mode,
                rps,
                rps / base,
                o.p50.as_secs_f64() * 1e3,
                o.p99.as_secs_f64() * 1e3,
                o.rows,
                o.statements,
                o.rows as f64 / o.statements.max(1) as f64,
                o.errors
            );
            store.clear().await.unwrap();
        }
    }
    println!(
        "ratio: requests/s against plain sync (one statement per request) on the same backend"
    );
}
