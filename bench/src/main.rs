//! `session-failover-bench`: the load generator, the comparison servers and the driver that runs
//! them side by side with session-failover; and `attack`, the storefront's load while forged
//! HTTP Basic credentials hit the backoffice. See docs/BENCHMARKS.md in the repository.

mod attack;
mod driver;
mod loadgen;
mod servers;
mod storm;

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::driver::Target;
use crate::loadgen::Workload;

#[derive(Parser)]
#[command(about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run every target under every workload, interleaved, and print the table.
    Run {
        /// Targets (comma-separated); all by default.
        #[arg(long, value_delimiter = ',', value_enum)]
        targets: Option<Vec<Target>>,
        /// Workloads (comma-separated).
        #[arg(
            long,
            value_delimiter = ',',
            value_enum,
            default_value = "health,read,write,mixed"
        )]
        workloads: Vec<Workload>,
        #[command(flatten)]
        load: LoadArgs,
        /// Rounds; each measures every target under every workload once.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// PostgreSQL database for the PostgreSQL targets (created if missing, emptied before
        /// each measurement).
        #[arg(
            long,
            env = "BENCH_POSTGRES_URL",
            default_value = "postgres://postgres@127.0.0.1:5432/sfbench"
        )]
        postgres_url: String,
        /// Redis database for the Redis targets (flushed before each measurement; its
        /// command counters are reset: use a Redis nothing else uses while it runs).
        #[arg(
            long,
            env = "BENCH_REDIS_URL",
            default_value = "redis://127.0.0.1:6379/9"
        )]
        redis_url: String,
        /// The session-failover binary (default: `cargo build --release` in the repository).
        #[arg(long)]
        session_failover: Option<std::path::PathBuf>,
    },
    /// The storefront's mixed load with and without forged HTTP Basic requests to the
    /// backoffice (session-failover on SQLite), interleaved, and the tables.
    Attack {
        /// Attacks (comma-separated), each run beside the baseline in every round.
        #[arg(
            long,
            value_delimiter = ',',
            value_enum,
            default_value = "forged,forged-spread,real-user"
        )]
        attacks: Vec<attack::Attack>,
        /// Forged requests per second, in the measured window.
        #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..=100_000))]
        rate: u32,
        #[command(flatten)]
        load: AttackLoadArgs,
        /// Rounds; each runs the baseline and every attack once.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// The session-failover binary (default: `cargo build --release` in the repository).
        #[arg(long)]
        session_failover: Option<std::path::PathBuf>,
    },
    /// The failover storm: N sessions on node A, A killed, every user's next request at node B.
    Storm {
        /// Session counts (comma-separated), a storm each.
        #[arg(long, value_delimiter = ',', default_value = "10000,100000")]
        sessions: Vec<usize>,
        /// session-failover targets in sync mode (comma-separated).
        #[arg(
            long,
            value_delimiter = ',',
            value_enum,
            default_value = "sf-sqlite-sync,sf-pg-sync"
        )]
        targets: Vec<Target>,
        /// Requests in flight at once (each on its own connection).
        #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=4096))]
        concurrency: u32,
        /// PostgreSQL database for the PostgreSQL target (created if missing, emptied first).
        #[arg(
            long,
            env = "BENCH_POSTGRES_URL",
            default_value = "postgres://postgres@127.0.0.1:5432/sfbench"
        )]
        postgres_url: String,
        /// The session-failover binary (default: `cargo build --release` in the repository).
        #[arg(long)]
        session_failover: Option<std::path::PathBuf>,
    },
    /// Run the load generator alone against a server on 127.0.0.1.
    Load {
        /// The server's address (loopback only).
        #[arg(long, default_value = "127.0.0.1:8080")]
        addr: SocketAddr,
        /// What the users do.
        #[arg(long, value_enum, default_value = "read")]
        workload: Workload,
        #[command(flatten)]
        load: LoadArgs,
        /// Do not check cart answers (for a server without sessions).
        #[arg(long)]
        stateless: bool,
    },
    /// Serve the storefront routes without any session (the ceiling).
    ServeCeiling {
        /// Listen address.
        #[arg(long, default_value = "127.0.0.1:0")]
        bind: SocketAddr,
    },
    /// Serve the storefront routes with tower-sessions.
    ServeTowerSessions {
        /// Listen address.
        #[arg(long, default_value = "127.0.0.1:0")]
        bind: SocketAddr,
        /// The store.
        #[arg(long, value_enum)]
        store: servers::tower_sessions::StoreKind,
        /// Its database URL.
        #[arg(long)]
        url: String,
    },
}

/// How many users, and for how long (per measurement, for `run`).
#[derive(clap::Args)]
struct LoadArgs {
    /// Concurrent users.
    #[arg(long, default_value_t = 64)]
    users: usize,
    /// Warm-up, seconds.
    #[arg(long, default_value_t = 3.0)]
    warmup: f64,
    /// Measured window, seconds.
    #[arg(long, default_value_t = 15.0)]
    seconds: f64,
}

/// The storefront load beside an attack (its measured window is the attack's length).
#[derive(clap::Args)]
struct AttackLoadArgs {
    /// Concurrent storefront users.
    #[arg(long, default_value_t = 32)]
    users: usize,
    /// Warm-up, seconds (storefront only: no attack, no probes).
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Measured window and attack, seconds.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
}

impl LoadArgs {
    /// The warm-up and the measured window; the window must be more than 0.
    fn durations(&self) -> anyhow::Result<(Duration, Duration)> {
        let seconds = |value: f64, flag: &str| {
            Duration::try_from_secs_f64(value).map_err(|_| {
                anyhow::anyhow!("--{flag} must be a number of seconds ≥ 0, not {value}")
            })
        };
        let duration = seconds(self.seconds, "seconds")?;
        if duration.is_zero() {
            anyhow::bail!("--seconds must be more than 0");
        }
        Ok((seconds(self.warmup, "warmup")?, duration))
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Run {
            targets,
            workloads,
            load,
            rounds,
            postgres_url,
            redis_url,
            session_failover,
        } => {
            let (warmup, duration) = load.durations()?;
            driver::run(driver::Options {
                targets: targets.unwrap_or_else(|| Target::ALL.to_vec()),
                workloads,
                users: load.users,
                warmup,
                duration,
                rounds: rounds.max(1),
                postgres_url,
                redis_url,
                session_failover_bin: session_failover,
            })
            .await
        }
        Command::Attack {
            attacks,
            rate,
            load,
            rounds,
            session_failover,
        } => {
            let load = LoadArgs {
                users: load.users,
                warmup: load.warmup,
                seconds: load.seconds,
            };
            let (warmup, duration) = load.durations()?;
            attack::run(attack::Options {
                attacks,
                users: load.users,
                warmup,
                duration,
                rounds: rounds.max(1),
                rate,
                session_failover_bin: session_failover,
            })
            .await
        }
        Command::Storm {
            sessions,
            targets,
            concurrency,
            postgres_url,
            session_failover,
        } => {
            storm::run(storm::Options {
                sessions,
                targets,
                concurrency: concurrency as usize,
                postgres_url,
                session_failover_bin: session_failover,
            })
            .await
        }
        Command::Load {
            addr,
            workload,
            load,
            stateless,
        } => {
            let (warmup, duration) = load.durations()?;
            let report = loadgen::run(loadgen::LoadConfig {
                addrs: vec![addr],
                users: load.users,
                warmup,
                duration,
                workload,
                check_state: !stateless,
            })
            .await?;
            println!(
                "{workload}: {rps:.0} req/s, p50 {p50:.2} ms, p99 {p99:.2} ms, p99.9 {p999:.2} ms, {errors} errors, {lost} lost sessions ({requests} requests measured)",
                workload = workload.name(),
                rps = report.rps(),
                p50 = report.ms(0.5),
                p99 = report.ms(0.99),
                p999 = report.ms(0.999),
                errors = report.errors,
                lost = report.lost,
                requests = report.requests,
            );
            Ok(())
        }
        Command::ServeCeiling { bind } => servers::ceiling::run(bind).await,
        Command::ServeTowerSessions { bind, store, url } => {
            servers::tower_sessions::run(bind, store, &url).await
        }
    }
}
