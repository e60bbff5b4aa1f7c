//! `attack`: the storefront under load while forged HTTP Basic credentials hit the backoffice
//! (issue 16). Does an attack on the operators' sign-in slow the shop down, or starve requests
//! of the server's async runtime?
//!
//! Each run is a fresh session-failover process on SQLite (sync, the default; the driver's
//! [`Launcher`]) with a backoffice user whose argon2 hash `session-failover hash-password` made.
//! The load generator's `mixed` workload runs a warm-up, then the measured window; in that
//! window, and only in it:
//! - an [`attacker`] sends forged requests at a fixed rate, open loop (none in the baseline);
//! - [`probes`] send `GET /health` every 10 ms and the operator's own request once a second.
//!
//! The attacker and the probes run on threads of their own (a single-threaded runtime each),
//! so their timing does not depend on how busy the load generator keeps this process. The
//! baseline and each attack are interleaved within a round (A B C D A B C D …) and the tables
//! show medians over the rounds. Figures only: nothing asserts a time.

mod attacker;
mod probes;

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::sync::oneshot;

use crate::driver::{self, Launcher, Target, median_of, thousands};
use crate::loadgen::{self, LoadConfig, Workload};

pub use attacker::Attack;

/// The backoffice's user name in the attacked server.
const OPERATOR: &str = "operator";

/// The attack benchmark's options.
#[derive(Clone, Debug)]
pub struct Options {
    /// The attacks, each run beside the baseline in every round.
    pub attacks: Vec<Attack>,
    /// Storefront users (the `mixed` workload).
    pub users: usize,
    /// Storefront load before the measured window (no attack, no probes).
    pub warmup: Duration,
    /// The measured window, and the attack's length.
    pub duration: Duration,
    /// Rounds; each runs the baseline and every attack once.
    pub rounds: usize,
    /// Forged requests per second.
    pub rate: u32,
    /// The session-failover binary; built with `cargo build --release` when not given.
    pub session_failover_bin: Option<PathBuf>,
}

/// What one run measured, in milliseconds where it is a time.
#[derive(Debug)]
struct Run {
    /// Storefront requests per second in the window.
    rps: f64,
    p50: f64,
    p99: f64,
    max: f64,
    errors: u64,
    lost: u64,
    health: Latencies,
    health_sent: u64,
    health_failed: u64,
    operator: probes::Operator,
    attacker: Option<attacker::Report>,
    /// The server's count of refused sign-ins, by reason.
    refusals: BTreeMap<String, u64>,
    /// Lines of the server's log that report a panic.
    panics: usize,
    /// The machine's 1-minute load average after the run (other work on the machine shows here).
    load_average: String,
}

/// A histogram's p50, p99 and max, ms.
#[derive(Clone, Copy, Debug)]
struct Latencies {
    p50: f64,
    p99: f64,
    max: f64,
}

impl Latencies {
    fn of(histogram: &hdrhistogram::Histogram<u64>) -> Self {
        if histogram.is_empty() {
            return Self {
                p50: f64::NAN,
                p99: f64::NAN,
                max: f64::NAN,
            };
        }
        let ms = |micros: u64| micros as f64 / 1000.0;
        Self {
            p50: ms(histogram.value_at_quantile(0.5)),
            p99: ms(histogram.value_at_quantile(0.99)),
            max: ms(histogram.max()),
        }
    }
}

/// Runs the benchmark and prints the tables.
pub async fn run(options: Options) -> anyhow::Result<()> {
    let repo = driver::repo_root()?;
    let sf_bin = match &options.session_failover_bin {
        Some(bin) => bin.clone(),
        None => driver::build_session_failover(&repo).await?,
    };
    let password: String = std::iter::repeat_with(fastrand::alphanumeric)
        .take(24)
        .collect();
    let hash = hash_password(&sf_bin, &password).await?;
    let launcher = Launcher {
        repo,
        sf_bin,
        postgres_url: String::new(),
        redis_url: String::new(),
        extra_properties: format!(
            "session.backoffice.user={OPERATOR}\nsession.backoffice.password.hash={hash}\n"
        ),
    };
    let conditions: Vec<Option<Attack>> = std::iter::once(None)
        .chain(options.attacks.iter().copied().map(Some))
        .collect();
    print_header(&options, &launcher.sf_bin);

    let mut runs: BTreeMap<Option<Attack>, Vec<Run>> = BTreeMap::new();
    for round in 1..=options.rounds {
        for &condition in &conditions {
            let run = measure(&options, &launcher, &password, condition)
                .await
                .with_context(|| format!("round {round}, {}", label(condition)))?;
            eprintln!(
                "round {round}/{rounds} {label:<32} load {load:<5} {rps:>7.0} req/s  p99 {p99:>6.1} ms  max {max:>6.1} ms  /health max {health:>6.1} ms{attack}",
                rounds = options.rounds,
                label = label(condition),
                load = run.load_average,
                rps = run.rps,
                p99 = run.p99,
                max = run.max,
                health = run.health.max,
                attack = run.attacker.as_ref().map_or(String::new(), |a| format!(
                    "  attacker: {} sent, {} 401, {} busy, {} locked out, {} other, {} failed",
                    a.sent,
                    a.unauthorized,
                    a.busy,
                    a.locked_out,
                    a.other.values().sum::<u64>(),
                    a.failed
                )),
            );
            runs.entry(condition).or_default().push(run);
        }
    }
    print_tables(&options, &conditions, &runs);
    Ok(())
}

fn label(condition: Option<Attack>) -> &'static str {
    condition.map_or("baseline (no attack)", Attack::label)
}

/// An argon2 PHC hash of `password`, made by the binary under test as an operator would.
async fn hash_password(sf_bin: &Path, password: &str) -> anyhow::Result<String> {
    let sf_bin = sf_bin.to_path_buf();
    let password = password.to_owned();
    tokio::task::spawn_blocking(move || {
        use std::io::Write as _;
        use std::process::{Command, Stdio};
        let mut child = Command::new(&sf_bin)
            .arg("hash-password")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {} hash-password", sf_bin.display()))?;
        child
            .stdin
            .take()
            .context("hash-password's stdin")?
            .write_all(password.as_bytes())?;
        let output = child.wait_with_output()?;
        let hash = String::from_utf8_lossy(&output.stdout).trim().to_owned();
        if !output.status.success() || !hash.starts_with("$argon2") {
            bail!(
                "hash-password failed ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(hash)
    })
    .await?
}

/// One run: a fresh server, the storefront load, and (unless `attack` is none) the attacker.
async fn measure(
    options: &Options,
    launcher: &Launcher,
    password: &str,
    attack: Option<Attack>,
) -> anyhow::Result<Run> {
    let mut server = launcher.start(Target::SfSqliteSync, None).await?;
    let run = measure_on(server.addr, options, password, attack).await;
    // Stopped whatever the run found; an unclean exit is an error that carries the log.
    driver::stop(&mut server).await?;
    let mut run = run?;
    run.panics = server
        .log()
        .lines()
        .filter(|line| line.contains("panicked"))
        .count();
    Ok(run)
}

async fn measure_on(
    addr: std::net::SocketAddr,
    options: &Options,
    password: &str,
    attack: Option<Attack>,
) -> anyhow::Result<Run> {
    let (window_tx, window_rx) = oneshot::channel();
    let load = tokio::spawn(loadgen::run_with_window(
        LoadConfig {
            addrs: vec![addr],
            users: options.users,
            warmup: options.warmup,
            duration: options.duration,
            workload: Workload::Mixed,
            check_state: true,
        },
        move |from, until| {
            // The receiver is gone only if this run has already failed.
            let _ = window_tx.send((from, until));
        },
    ));
    let Ok((from, until)) = window_rx.await else {
        // The load generator ended before its window: its error says why.
        load.await.context("load generator task")??;
        bail!("the load generator ended before its measured window");
    };
    let operator = (OPERATOR.to_owned(), password.to_owned());
    let probes = on_own_thread("probes", move || probes::run(addr, operator, from, until))?;
    let attacker = match attack {
        Some(attack) => {
            let plan = attacker::Plan {
                addr,
                attack,
                operator: OPERATOR.to_owned(),
                rate: options.rate,
                from,
                until,
            };
            Some(on_own_thread("attacker", move || attacker::run(plan))?)
        }
        None => None,
    };
    let report = load.await.context("load generator task")??;
    let (health, operator) = probes
        .await
        .context("the probes' thread ended without a report")??;
    let attacker = match attacker {
        Some(report) => Some(
            report
                .await
                .context("the attacker's thread ended without a report")??,
        ),
        None => None,
    };
    let refusals = probes::refusals(addr).await?;
    Ok(Run {
        rps: report.rps(),
        p50: report.ms(0.5),
        p99: report.ms(0.99),
        max: report.latency.max() as f64 / 1000.0,
        errors: report.errors,
        lost: report.lost,
        health: Latencies::of(&health.latency),
        health_sent: health.sent,
        health_failed: health.failed,
        operator,
        attacker,
        refusals,
        panics: 0,
        load_average: load_average(),
    })
}

/// Runs `work` on a thread of its own, on a single-threaded runtime; the receiver gets its
/// result.
fn on_own_thread<T, F, Fut>(
    name: &str,
    work: F,
) -> anyhow::Result<oneshot::Receiver<anyhow::Result<T>>>
where
    T: Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = anyhow::Result<T>>,
{
    let (tx, rx) = oneshot::channel();
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            let result = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("building a runtime")
                .and_then(|runtime| runtime.block_on(work()));
            // The receiver is gone only if the run has already failed.
            let _ = tx.send(result);
        })
        .with_context(|| format!("starting the {name} thread"))?;
    Ok(rx)
}

/// The 1-minute load average, from `/proc/loadavg` ("?" elsewhere).
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|text| text.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".to_owned())
}

fn print_header(options: &Options, sf_bin: &Path) {
    println!("# session-failover under a backoffice sign-in attack");
    println!();
    println!(
        "machine: {}; the load generator, the attacker, the probes and the server share them",
        driver::machine()
    );
    println!(
        "storefront: mixed workload, {} users, {} s warm-up, {} s measured; attack: {} forged requests/s to {} in the measured window, open loop; /health every {} ms; {} round(s), conditions interleaved, medians",
        options.users,
        options.warmup.as_secs_f64(),
        options.duration.as_secs_f64(),
        options.rate,
        attacker::ROUTE,
        probes::HEALTH_EVERY.as_millis(),
        options.rounds,
    );
    println!(
        "session-failover: {} (SQLite, sync, backoffice user {OPERATOR:?}); load average before: {}",
        sf_bin.display(),
        load_average()
    );
    println!();
}

fn median(runs: &[Run], figure: impl Fn(&Run) -> f64) -> f64 {
    median_of(runs.iter().map(figure).collect())
}

fn worst(runs: &[Run], figure: impl Fn(&Run) -> f64) -> f64 {
    runs.iter().map(figure).fold(f64::NAN, f64::max)
}

fn times(value: f64, baseline: f64) -> String {
    if baseline > 0.0 && value.is_finite() {
        format!("{:.2}×", value / baseline)
    } else {
        "–".to_owned()
    }
}

fn print_tables(
    options: &Options,
    conditions: &[Option<Attack>],
    runs: &BTreeMap<Option<Attack>, Vec<Run>>,
) {
    let empty = Vec::new();
    let of = |condition: Option<Attack>| runs.get(&condition).unwrap_or(&empty);
    let baseline = of(None);
    let base = |figure: fn(&Run) -> f64| median(baseline, figure);

    println!("## Storefront (mixed, {} users)", options.users);
    println!();
    println!(
        "| condition | req/s | × baseline | p50 ms | × baseline | p99 ms | × baseline | max ms (median) | × baseline | max ms (worst round) | errors | lost | server panics |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for &condition in conditions {
        let rs = of(condition);
        let (rps, p50, p99, max) = (
            median(rs, |r| r.rps),
            median(rs, |r| r.p50),
            median(rs, |r| r.p99),
            median(rs, |r| r.max),
        );
        println!(
            "| {} | {} | {} | {:.2} | {} | {:.2} | {} | {:.1} | {} | {:.1} | {} | {} | {} |",
            label(condition),
            thousands(rps),
            times(rps, base(|r| r.rps)),
            p50,
            times(p50, base(|r| r.p50)),
            p99,
            times(p99, base(|r| r.p99)),
            max,
            times(max, base(|r| r.max)),
            worst(rs, |r| r.max),
            rs.iter().map(|r| r.errors).sum::<u64>(),
            rs.iter().map(|r| r.lost).sum::<u64>(),
            rs.iter().map(|r| r.panics).sum::<usize>(),
        );
    }
    println!();

    println!(
        "## Probes: `GET /health` every {} ms, the operator's own request every second",
        probes::HEALTH_EVERY.as_millis()
    );
    println!();
    println!(
        "| condition | /health probes | failed | p50 ms | p99 ms | max ms (median) | max ms (worst round) | operator's requests answered 200 | operator's refused |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---|");
    for &condition in conditions {
        let rs = of(condition);
        let mut refused: BTreeMap<&str, u64> = BTreeMap::new();
        for r in rs {
            for (status, count) in &r.operator.refused {
                *refused.entry(status).or_default() += count;
            }
        }
        println!(
            "| {} | {:.0} | {} | {:.2} | {:.2} | {:.1} | {:.1} | {} of {} | {} |",
            label(condition),
            median(rs, |r| r.health_sent as f64),
            rs.iter().map(|r| r.health_failed).sum::<u64>(),
            median(rs, |r| r.health.p50),
            median(rs, |r| r.health.p99),
            median(rs, |r| r.health.max),
            worst(rs, |r| r.health.max),
            rs.iter().map(|r| r.operator.ok).sum::<u64>(),
            rs.iter().map(|r| r.operator.sent).sum::<u64>(),
            counts(&refused),
        );
    }
    println!();

    println!(
        "## Attacker ({} forged requests/s; counts per window, medians of the rounds)",
        options.rate
    );
    println!();
    println!(
        "| attack | due | sent | 401 | 429 busy | 429 locked out | locked out after s | other | failed | dropped | password checks run (server) | p50 ms | p99 ms | max ms |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for &condition in conditions {
        let Some(attack) = condition else {
            continue;
        };
        let rs: Vec<&Run> = of(condition).iter().collect();
        let reports: Vec<(&attacker::Report, Latencies)> = rs
            .iter()
            .filter_map(|r| r.attacker.as_ref())
            .map(|a| (a, Latencies::of(&a.latency)))
            .collect();
        let m = |figure: fn(&attacker::Report) -> u64| {
            median_of(reports.iter().map(|(a, _)| figure(a) as f64).collect())
        };
        let ml = |figure: fn(&Latencies) -> f64| {
            median_of(reports.iter().map(|(_, l)| figure(l)).collect())
        };
        let mut other: BTreeMap<String, u64> = BTreeMap::new();
        for (a, _) in &reports {
            for (status, count) in &a.other {
                *other.entry(status.to_string()).or_default() += count;
            }
        }
        // Failed checks of the attacker's; the operator's one check a run succeeds.
        let checks = median_of(
            rs.iter()
                .map(|r| r.refusals.get("wrong-password").copied().unwrap_or(0) as f64)
                .collect(),
        );
        // Rounds without a lockout count as never (infinite): the median says whether most had one.
        let locked_after = median_of(
            reports
                .iter()
                .map(|(a, _)| {
                    a.locked_out_after
                        .map_or(f64::INFINITY, |d| d.as_secs_f64())
                })
                .collect(),
        );
        println!(
            "| {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {} | {} | {:.0} | {:.0} | {:.0} | {:.2} | {:.2} | {:.1} |",
            attack.label(),
            m(|a| a.scheduled),
            m(|a| a.sent),
            m(|a| a.unauthorized),
            m(|a| a.busy),
            m(|a| a.locked_out),
            if locked_after.is_finite() {
                format!("{locked_after:.2}")
            } else {
                "never".to_owned()
            },
            if other.is_empty() {
                "0".to_owned()
            } else {
                format!("{} (all rounds)", counts_owned(&other))
            },
            m(|a| a.failed),
            m(|a| a.dropped),
            checks,
            ml(|l| l.p50),
            ml(|l| l.p99),
            ml(|l| l.max),
        );
    }
    println!();
}

/// "429×3, error×1", or "–" for none.
fn counts(counts: &BTreeMap<&str, u64>) -> String {
    if counts.is_empty() {
        return "–".to_owned();
    }
    counts
        .iter()
        .map(|(what, n)| format!("{what}×{n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn counts_owned(map: &BTreeMap<String, u64>) -> String {
    counts(&map.iter().map(|(k, v)| (k.as_str(), *v)).collect())
}
