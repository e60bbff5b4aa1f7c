//! The benchmark driver: every target under every workload, A B A B interleaved, repeated, with
//! medians; database counters and stored bytes per session; a table of ratios.
//!
//! Each measurement starts its server as a fresh process on 127.0.0.1 (port 0), runs the load
//! generator in this process, then stops the server with SIGTERM. Stopping it closes its database
//! connections, and a PostgreSQL backend flushes its statistics when it exits, so the
//! `pg_stat_database` counters read afterwards hold all of the run's transactions.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::str::FromStr;
use std::time::Duration;

use anyhow::{Context, bail};
use sqlx::postgres::PgConnectOptions;
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{ConnectOptions, Connection, PgConnection, Row, SqliteConnection};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::loadgen::{self, LoadConfig, Workload};

/// What is measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, clap::ValueEnum)]
pub enum Target {
    /// The same routes without a session layer.
    Ceiling,
    /// session-failover, sync mode (group commit, the default), SQLite.
    SfSqliteSync,
    /// session-failover, async mode, SQLite.
    SfSqliteAsync,
    /// session-failover, sync mode (group commit, the default), PostgreSQL.
    SfPgSync,
    /// session-failover, async mode, PostgreSQL.
    SfPgAsync,
    /// tower-sessions with its SQLite store.
    TsSqlite,
    /// tower-sessions with its PostgreSQL store.
    TsPg,
    /// tower-sessions with a moka cache in front of its PostgreSQL store.
    TsPgMoka,
    /// session-failover, sync mode (group commit, the default), Redis.
    SfRedisSync,
    /// session-failover, async mode, Redis.
    SfRedisAsync,
    /// tower-sessions with tower-sessions-redis-store (fred).
    TsRedis,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Backend {
    None,
    Sqlite,
    Postgres,
    Redis,
}

impl Target {
    /// Every target, in the order they run within a round.
    pub const ALL: [Target; 11] = [
        Target::Ceiling,
        Target::SfSqliteSync,
        Target::SfSqliteAsync,
        Target::TsSqlite,
        Target::SfPgSync,
        Target::SfPgAsync,
        Target::TsPg,
        Target::TsPgMoka,
        Target::SfRedisSync,
        Target::SfRedisAsync,
        Target::TsRedis,
    ];

    pub(crate) fn label(self) -> &'static str {
        match self {
            Self::Ceiling => "ceiling (no session)",
            Self::SfSqliteSync => "session-failover sync, SQLite",
            Self::SfSqliteAsync => "session-failover async, SQLite",
            Self::SfPgSync => "session-failover sync, PostgreSQL",
            Self::SfPgAsync => "session-failover async, PostgreSQL",
            Self::TsSqlite => "tower-sessions, SQLite",
            Self::TsPg => "tower-sessions, PostgreSQL",
            Self::TsPgMoka => "tower-sessions + moka, PostgreSQL",
            Self::SfRedisSync => "session-failover sync, Redis",
            Self::SfRedisAsync => "session-failover async, Redis",
            Self::TsRedis => "tower-sessions, Redis",
        }
    }

    fn backend(self) -> Backend {
        match self {
            Self::Ceiling => Backend::None,
            Self::SfSqliteSync | Self::SfSqliteAsync | Self::TsSqlite => Backend::Sqlite,
            Self::SfPgSync | Self::SfPgAsync | Self::TsPg | Self::TsPgMoka => Backend::Postgres,
            Self::SfRedisSync | Self::SfRedisAsync | Self::TsRedis => Backend::Redis,
        }
    }

    fn is_ours(self) -> bool {
        matches!(
            self,
            Self::SfSqliteSync
                | Self::SfSqliteAsync
                | Self::SfPgSync
                | Self::SfPgAsync
                | Self::SfRedisSync
                | Self::SfRedisAsync
        )
    }

    /// The tower-sessions target on the same database, to compare with.
    fn tower_sessions_peer(self) -> Option<Target> {
        match self.backend() {
            Backend::None => None,
            Backend::Sqlite => Some(Self::TsSqlite),
            Backend::Postgres => Some(Self::TsPg),
            Backend::Redis => Some(Self::TsRedis),
        }
    }
}

/// The driver's options.
#[derive(Clone, Debug)]
pub struct Options {
    /// Targets to run.
    pub targets: Vec<Target>,
    /// Workloads to run.
    pub workloads: Vec<Workload>,
    /// Concurrent users.
    pub users: usize,
    /// Warm-up per measurement.
    pub warmup: Duration,
    /// Measured window per measurement.
    pub duration: Duration,
    /// Rounds (each round measures every target under every workload once).
    pub rounds: usize,
    /// The PostgreSQL database the PostgreSQL targets use (created if missing, emptied before
    /// each measurement).
    pub postgres_url: String,
    /// The Redis database the Redis targets use (flushed before each measurement).
    pub redis_url: String,
    /// The session-failover binary; built with `cargo build --release` when not given.
    pub session_failover_bin: Option<PathBuf>,
}

/// One measurement.
#[derive(Clone, Debug)]
struct Measurement {
    rps: f64,
    p50: f64,
    p99: f64,
    p999: f64,
    errors: u64,
    lost: u64,
    requests_total: u64,
    /// PostgreSQL transactions committed or rolled back in the bench database during the run;
    /// for Redis, the commands it ran.
    transactions: Option<u64>,
    /// Rows inserted, updated or deleted in the bench database during the run.
    row_writes: Option<u64>,
    /// Sessions stored after the run, and their mean stored size in bytes.
    stored: Option<(u64, f64)>,
}

/// A 64-character secret: session-failover encrypts at rest, as in production.
const SECRET: &str = "bench-secret-0123456789-abcdefghijklmnopqrstuvwxyz-ABCDEFGHIJKLMNOP";

/// The repository the bench crate lives in (its `config/`, its `cargo build`).
pub(crate) fn repo_root() -> anyhow::Result<PathBuf> {
    Ok(Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("bench/ has a parent")?
        .to_path_buf())
}

/// Runs the benchmark and prints the table.
pub async fn run(options: Options) -> anyhow::Result<()> {
    let repo = repo_root()?;
    let needs_ours = options.targets.iter().any(|t| t.is_ours());
    let sf_bin = match (&options.session_failover_bin, needs_ours) {
        (Some(bin), _) => bin.clone(),
        (None, true) => build_session_failover(&repo).await?,
        (None, false) => PathBuf::new(),
    };
    let needs_pg = options
        .targets
        .iter()
        .any(|t| t.backend() == Backend::Postgres);
    if needs_pg {
        prepare_postgres(&options.postgres_url).await?;
    }
    print_machine(&options, &sf_bin).await;
    let launcher = Launcher {
        repo,
        sf_bin,
        postgres_url: options.postgres_url.clone(),
        redis_url: options.redis_url.clone(),
        extra_properties: String::new(),
    };

    let mut results: BTreeMap<(Workload, Target), Vec<Measurement>> = BTreeMap::new();
    for round in 1..=options.rounds {
        for &workload in &options.workloads {
            for &target in &options.targets {
                let m = measure(&options, &launcher, target, workload)
                    .await
                    .with_context(|| format!("{} under {}", target.label(), workload.name()))?;
                eprintln!(
                    "round {round}/{rounds} {workload:<6} {label:<36} {rps:>9.0} req/s  p99 {p99:>6.1} ms  errors {errors}  lost {lost}",
                    rounds = options.rounds,
                    workload = workload.name(),
                    label = target.label(),
                    rps = m.rps,
                    p99 = m.p99,
                    errors = m.errors,
                    lost = m.lost,
                );
                results.entry((workload, target)).or_default().push(m);
            }
        }
    }
    let medians: BTreeMap<(Workload, Target), Measurement> =
        results.iter().map(|(key, ms)| (*key, median(ms))).collect();
    print_tables(&options, &medians);
    print_targets(&medians);
    Ok(())
}

/// Builds the session-failover binary in release mode; its path.
pub(crate) async fn build_session_failover(repo: &Path) -> anyhow::Result<PathBuf> {
    eprintln!("building session-failover (cargo build --release)…");
    let status = Command::new("cargo")
        .args(["build", "--release", "--quiet", "--bin", "session-failover"])
        .current_dir(repo)
        .status()
        .await
        .context("running cargo build --release")?;
    if !status.success() {
        bail!("cargo build --release of session-failover failed ({status})");
    }
    Ok(repo.join("target/release/session-failover"))
}

/// Creates the bench database if it is missing.
pub(crate) async fn prepare_postgres(url: &str) -> anyhow::Result<()> {
    let options = PgConnectOptions::from_str(url)
        .with_context(|| format!("--postgres-url {url} is not a PostgreSQL URL"))?;
    let database = options
        .get_database()
        .context("--postgres-url must name a database (it is created if missing)")?
        .to_owned();
    let mut admin = options
        .clone()
        .database("postgres")
        .connect()
        .await
        .with_context(|| format!("cannot reach PostgreSQL at {url} (is it running?)"))?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(&database)
            .fetch_one(&mut admin)
            .await?;
    if !exists {
        sqlx::query(&format!(
            r#"CREATE DATABASE "{}""#,
            database.replace('"', "\"\"")
        ))
        .execute(&mut admin)
        .await
        .with_context(|| format!("creating database {database}"))?;
    }
    Ok(())
}

/// The machine, as "N cores (CPU model)".
pub(crate) fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|line| line.starts_with("model name"))
                .and_then(|line| line.split(':').nth(1))
                .map(|name| name.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned());
    format!("{cores} cores ({cpu})")
}

async fn print_machine(options: &Options, sf_bin: &Path) {
    println!("# session-failover benchmark");
    println!();
    println!(
        "machine: {}; the load generator, the server and the database share them",
        machine()
    );
    println!(
        "load: {} users, {} s warm-up, {} s measured, {} round(s), medians; targets interleaved within each round",
        options.users,
        options.warmup.as_secs_f64(),
        options.duration.as_secs_f64(),
        options.rounds
    );
    if options
        .targets
        .iter()
        .any(|t| t.backend() == Backend::Postgres)
        && let Ok(mut conn) = PgConnection::connect(&options.postgres_url).await
        && let Ok(version) = sqlx::query_scalar::<_, String>("SHOW server_version")
            .fetch_one(&mut conn)
            .await
    {
        println!("PostgreSQL {version} at {}", redact(&options.postgres_url));
    }
    if !sf_bin.as_os_str().is_empty() {
        println!("session-failover: {}", sf_bin.display());
    }
    println!();
}

/// The URL without a password.
fn redact(url: &str) -> String {
    match url.split_once('@') {
        Some((scheme_user, rest)) => match scheme_user.rsplit_once(':') {
            Some((scheme_user, _password)) if scheme_user.contains("//") => {
                format!("{scheme_user}:***@{rest}")
            }
            _ => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

/// A server process for one measurement, with its scratch directory.
pub(crate) struct Server {
    child: Child,
    /// Where it listens (on 127.0.0.1).
    pub(crate) addr: SocketAddr,
    dir: tempfile::TempDir,
}

impl Server {
    /// What the server wrote on stderr so far.
    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// Its data directory (its SQLite file), for a second node on the same store.
    pub(crate) fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    /// SIGKILL: it dies at once, as in a crash.
    pub(crate) async fn kill(&mut self) -> anyhow::Result<()> {
        self.child.kill().await?;
        Ok(())
    }
}

/// How servers are started for a measurement.
pub(crate) struct Launcher {
    /// The repository (its `config/project.properties` is session-failover's base).
    pub(crate) repo: PathBuf,
    /// The session-failover binary (unused by the other targets).
    pub(crate) sf_bin: PathBuf,
    /// The PostgreSQL targets' database.
    pub(crate) postgres_url: String,
    /// The Redis targets' database.
    pub(crate) redis_url: String,
    /// Lines appended to session-failover's `local.properties` (empty for `run`).
    pub(crate) extra_properties: String,
}

async fn measure(
    options: &Options,
    launcher: &Launcher,
    target: Target,
    workload: Workload,
) -> anyhow::Result<Measurement> {
    let pg = target.backend() == Backend::Postgres;
    if pg {
        empty_postgres(&options.postgres_url).await?;
    }
    let redis = target.backend() == Backend::Redis;
    if redis {
        redis_reset(&options.redis_url)?;
    }
    let before = if pg {
        Some(pg_counters(&options.postgres_url).await?)
    } else {
        None
    };
    let mut server = launcher.start(target, None).await?;
    // A second node on the same database (SQLite: the same file).
    let mut second = if workload.nodes() == 2 {
        Some(launcher.start(target, Some(server.dir.path())).await?)
    } else {
        None
    };
    let mut addrs = vec![server.addr];
    addrs.extend(second.as_ref().map(|s| s.addr));
    let report = loadgen::run(LoadConfig {
        addrs,
        users: options.users,
        warmup: options.warmup,
        duration: options.duration,
        workload,
        check_state: true,
    })
    .await;
    if let Some(second) = &mut second {
        stop(second).await?;
    }
    stop(&mut server).await?;
    let report = report?;
    let (transactions, row_writes) = match before {
        Some(before) => {
            // A backend flushes its statistics when it exits, just after the server closed its
            // connections.
            tokio::time::sleep(Duration::from_millis(700)).await;
            let after = pg_counters(&options.postgres_url).await?;
            (
                Some(after.0.saturating_sub(before.0)),
                Some(after.1.saturating_sub(before.1)),
            )
        }
        None if redis => (Some(redis_commands(&options.redis_url)?), None),
        None => (None, None),
    };
    let stored = if workload == Workload::Health {
        None
    } else {
        stored_sessions(options, &server, target).await?
    };
    Ok(Measurement {
        rps: report.rps(),
        p50: report.ms(0.50),
        p99: report.ms(0.99),
        p999: report.ms(0.999),
        errors: report.errors,
        lost: report.lost,
        requests_total: report.requests_total,
        transactions,
        row_writes,
        stored,
    })
}

impl Launcher {
    /// Starts `target`'s server; with `first`, as a second node sharing the first's data
    /// directory (its SQLite file).
    pub(crate) async fn start(
        &self,
        target: Target,
        first: Option<&Path>,
    ) -> anyhow::Result<Server> {
        let (repo, sf_bin) = (&self.repo, &self.sf_bin);
        let dir = tempfile::tempdir()?;
        let data = first.unwrap_or(dir.path()).to_path_buf();
        let node = if first.is_some() { "bench-b" } else { "bench" };
        let me = std::env::current_exe()?;
        let mut command = match target {
            Target::Ceiling => {
                let mut command = Command::new(&me);
                command.args(["serve-ceiling", "--bind", "127.0.0.1:0"]);
                command
            }
            Target::TsSqlite | Target::TsPg | Target::TsPgMoka | Target::TsRedis => {
                let (store, url) = match target {
                    Target::TsRedis => ("redis", self.redis_url.clone()),
                    Target::TsSqlite => (
                        "sqlite",
                        format!("sqlite://{}", data.join("ts.db").display()),
                    ),
                    Target::TsPg => ("postgres", self.postgres_url.clone()),
                    _ => ("postgres-moka", self.postgres_url.clone()),
                };
                let mut command = Command::new(&me);
                command.args([
                    "serve-tower-sessions",
                    "--bind",
                    "127.0.0.1:0",
                    "--store",
                    store,
                    "--url",
                    &url,
                ]);
                command
            }
            Target::SfSqliteSync
            | Target::SfSqliteAsync
            | Target::SfPgSync
            | Target::SfPgAsync
            | Target::SfRedisSync
            | Target::SfRedisAsync => {
                let config = dir.path().join("config");
                std::fs::create_dir(&config)?;
                // The shipped defaults, and a local.properties as an operator would write one.
                std::fs::copy(
                    repo.join("config/project.properties"),
                    config.join("project.properties"),
                )
                .context("copying config/project.properties")?;
                let url = match target.backend() {
                    Backend::Postgres => self.postgres_url.clone(),
                    Backend::Redis => self.redis_url.clone(),
                    _ => format!("sqlite://{}", data.join("sessions.db").display()),
                };
                let mode = match target {
                    Target::SfSqliteAsync | Target::SfPgAsync | Target::SfRedisAsync => "async",
                    _ => "sync",
                };
                std::fs::write(
                    config.join("local.properties"),
                    format!(
                        "spring.session.storefront.save={mode}\n\
                     session.store.url={url}\n\
                     session.secret={SECRET}\n\
                     session.node.name={node}\n\
                     # No purge during a measurement (tower-sessions runs none either).\n\
                     session.purge.cron=\n\
                     {extra}",
                        extra = self.extra_properties,
                    ),
                )?;
                let mut command = Command::new(sf_bin);
                command
                    .args(["serve", "--bind", "127.0.0.1:0", "--config"])
                    .arg(&config)
                    .env("RUST_LOG", "warn");
                command
            }
        };
        let log = std::fs::File::create(dir.path().join("server.log"))?;
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", target.label()))?;
        let stdout = child.stdout.take().context("server stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let addr = tokio::time::timeout(Duration::from_secs(60), async {
            while let Some(line) = lines.next_line().await? {
                if let Some(url) = line.split("listening on http://").nth(1) {
                    return Ok::<_, anyhow::Error>(Some(url.trim().parse::<SocketAddr>()?));
                }
            }
            Ok(None)
        })
        .await
        .context("the server did not say where it listens within 60 s")??;
        let Some(addr) = addr else {
            let log = std::fs::read_to_string(dir.path().join("server.log")).unwrap_or_default();
            bail!("{} exited before listening:\n{log}", target.label());
        };
        // Keep reading stdout so the server never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(Server { child, addr, dir })
    }
}

/// SIGTERM, then waits (session-failover drains its write-behind queue before it exits).
pub(crate) async fn stop(server: &mut Server) -> anyhow::Result<()> {
    if let Some(pid) = server.child.id() {
        let status = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .await?;
        if !status.success() {
            bail!("kill -TERM {pid} failed");
        }
    }
    match tokio::time::timeout(Duration::from_secs(60), server.child.wait()).await {
        Ok(status) => {
            let status = status?;
            if !status.success() {
                bail!("the server exited with {status}:\n{}", server.log());
            }
            Ok(())
        }
        Err(_) => {
            server.child.kill().await?;
            bail!("the server did not stop within 60 s of SIGTERM")
        }
    }
}

pub(crate) async fn empty_postgres(url: &str) -> anyhow::Result<()> {
    let mut conn = PgConnection::connect(url).await?;
    for table in ["stored_http_session", "tower_sessions.session"] {
        let exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
            .bind(table)
            .fetch_one(&mut conn)
            .await?;
        if exists {
            sqlx::query(&format!("TRUNCATE {table}"))
                .execute(&mut conn)
                .await?;
        }
    }
    conn.close().await?;
    Ok(())
}

/// (transactions, row writes) of the bench database so far, read from another database so the
/// reading itself is not counted.
pub(crate) async fn pg_counters(url: &str) -> anyhow::Result<(u64, u64)> {
    let options = PgConnectOptions::from_str(url)?;
    let database = options.get_database().unwrap_or("postgres").to_owned();
    let mut conn = options.database("postgres").connect().await?;
    sqlx::query("SELECT pg_stat_clear_snapshot()")
        .execute(&mut conn)
        .await?;
    let row = sqlx::query(
        "SELECT (xact_commit + xact_rollback)::int8, (tup_inserted + tup_updated + tup_deleted)::int8 \
         FROM pg_stat_database WHERE datname = $1",
    )
    .bind(&database)
    .fetch_one(&mut conn)
    .await?;
    conn.close().await?;
    let transactions: i64 = row.try_get(0)?;
    let writes: i64 = row.try_get(1)?;
    Ok((
        u64::try_from(transactions).unwrap_or(0),
        u64::try_from(writes).unwrap_or(0),
    ))
}

/// Empties the Redis database and resets the server's command counters.
fn redis_reset(url: &str) -> anyhow::Result<()> {
    let mut conn = redis::Client::open(url)
        .with_context(|| format!("--redis-url {url} is not a Redis URL"))?
        .get_connection()
        .with_context(|| format!("cannot reach Redis at {url} (is it running?)"))?;
    redis::cmd("FLUSHDB").query::<()>(&mut conn)?;
    redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query::<()>(&mut conn)?;
    Ok(())
}

/// The commands Redis ran since [`redis_reset`], from `INFO commandstats`, without the
/// driver's own (the reset, this `INFO`).
fn redis_commands(url: &str) -> anyhow::Result<u64> {
    let mut conn = redis::Client::open(url)?.get_connection()?;
    let info: String = redis::cmd("INFO").arg("commandstats").query(&mut conn)?;
    let mut total = 0;
    for line in info.lines() {
        let Some((name, stats)) = line
            .strip_prefix("cmdstat_")
            .and_then(|l| l.split_once(':'))
        else {
            continue;
        };
        if matches!(
            name,
            "info" | "config|resetstat" | "flushdb" | "select" | "hello" | "client|setinfo"
        ) {
            continue;
        }
        let calls = stats
            .split(',')
            .find_map(|kv| kv.strip_prefix("calls="))
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0);
        total += calls;
    }
    Ok(total)
}

/// Sessions in the Redis database and their mean stored size: session-failover's blob (the `d`
/// field of each `sf:s:{…}` hash), tower-sessions-redis-store's whole value.
fn redis_stored(url: &str, ours: bool) -> anyhow::Result<(u64, f64)> {
    let mut conn = redis::Client::open(url)?.get_connection()?;
    let pattern = if ours { "sf:s:*" } else { "*" };
    let keys: Vec<String> = redis::cmd("KEYS").arg(pattern).query(&mut conn)?;
    let mut bytes = 0u64;
    for key in &keys {
        let len: u64 = if ours {
            redis::cmd("HSTRLEN").arg(key).arg("d").query(&mut conn)?
        } else {
            redis::cmd("STRLEN").arg(key).query(&mut conn)?
        };
        bytes += len;
    }
    let count = keys.len() as u64;
    Ok((
        count,
        if count == 0 {
            0.0
        } else {
            bytes as f64 / count as f64
        },
    ))
}

/// How many sessions the run left in the store, and their mean stored size.
async fn stored_sessions(
    options: &Options,
    server: &Server,
    target: Target,
) -> anyhow::Result<Option<(u64, f64)>> {
    let table = match (target.is_ours(), target.backend()) {
        (true, _) => "stored_http_session",
        (false, Backend::Sqlite) => "tower_sessions",
        (false, _) => "tower_sessions.session",
    };
    let row = match target.backend() {
        Backend::None => return Ok(None),
        Backend::Redis => return redis_stored(&options.redis_url, target.is_ours()).map(Some),
        Backend::Postgres => {
            let mut conn = PgConnection::connect(&options.postgres_url).await?;
            let row = sqlx::query(&format!(
                "SELECT count(*)::int8, coalesce(avg(octet_length(data)), 0)::float8 FROM {table}"
            ))
            .fetch_one(&mut conn)
            .await?;
            (row.try_get::<i64, _>(0)?, row.try_get::<f64, _>(1)?)
        }
        Backend::Sqlite => {
            let file = if target.is_ours() {
                "sessions.db"
            } else {
                "ts.db"
            };
            let mut conn = SqliteConnectOptions::new()
                .filename(server.dir.path().join(file))
                .connect()
                .await?;
            let row: (i64, f64) = sqlx::query_as(&format!(
                "SELECT count(*), coalesce(avg(length(data)), 0.0) FROM {table}"
            ))
            .fetch_one(&mut conn)
            .await?;
            let _ = SqliteConnection::close(conn).await;
            row
        }
    };
    Ok(Some((u64::try_from(row.0).unwrap_or(0), row.1)))
}

/// The median (the mean of the middle two for an even count); NaN for none.
pub(crate) fn median_of(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

fn median_u64(values: impl Iterator<Item = u64>) -> u64 {
    let mut values: Vec<u64> = values.collect();
    values.sort_unstable();
    values.get(values.len() / 2).copied().unwrap_or(0)
}

/// Medians of throughput and latencies; sums of errors and lost users; per-request database
/// figures of the median-throughput round.
fn median(ms: &[Measurement]) -> Measurement {
    let rps = median_of(ms.iter().map(|m| m.rps).collect());
    let closest = ms
        .iter()
        .min_by(|a, b| (a.rps - rps).abs().total_cmp(&(b.rps - rps).abs()))
        .expect("at least one measurement");
    Measurement {
        rps,
        p50: median_of(ms.iter().map(|m| m.p50).collect()),
        p99: median_of(ms.iter().map(|m| m.p99).collect()),
        p999: median_of(ms.iter().map(|m| m.p999).collect()),
        errors: ms.iter().map(|m| m.errors).sum(),
        lost: ms.iter().map(|m| m.lost).sum(),
        requests_total: median_u64(ms.iter().map(|m| m.requests_total)),
        transactions: closest.transactions,
        row_writes: closest.row_writes,
        stored: closest.stored,
    }
}

fn ratio(a: Option<&Measurement>, b: Option<&Measurement>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b.rps > 0.0 => format!("{:.2}×", a.rps / b.rps),
        _ => "–".to_owned(),
    }
}

fn per_request(count: Option<u64>, m: &Measurement) -> String {
    match count {
        Some(count) if m.requests_total > 0 => {
            format!("{:.3}", count as f64 / m.requests_total as f64)
        }
        _ => "–".to_owned(),
    }
}

/// `n` rounded, with thousands separated by commas.
pub(crate) fn thousands(n: f64) -> String {
    let n = n.round() as i64;
    let digits = n.abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 { format!("-{out}") } else { out }
}

fn print_tables(options: &Options, medians: &BTreeMap<(Workload, Target), Measurement>) {
    for &workload in &options.workloads {
        println!("## {}", workload.name());
        println!();
        println!(
            "| target | req/s | × ceiling | × tower-sessions | × ts + moka | p50 ms | p99 ms | p99.9 ms | errors | lost | db xact/req (Redis: commands/req) | row writes/req | sessions stored | bytes/session |"
        );
        println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        let ceiling = medians.get(&(workload, Target::Ceiling));
        for &target in &options.targets {
            let Some(m) = medians.get(&(workload, target)) else {
                continue;
            };
            let versus_ts = target
                .tower_sessions_peer()
                .filter(|&peer| peer != target)
                .and_then(|peer| medians.get(&(workload, peer)));
            let versus_moka = (target.backend() == Backend::Postgres && target != Target::TsPgMoka)
                .then(|| medians.get(&(workload, Target::TsPgMoka)))
                .flatten();
            let (rows, bytes) = match m.stored {
                Some((rows, bytes)) => (rows.to_string(), format!("{bytes:.0}")),
                None => ("–".to_owned(), "–".to_owned()),
            };
            println!(
                "| {} | {} | {} | {} | {} | {:.2} | {:.2} | {:.2} | {} | {} | {} | {} | {} | {} |",
                target.label(),
                thousands(m.rps),
                if target == Target::Ceiling {
                    "1.00×".to_owned()
                } else {
                    ratio(Some(m), ceiling)
                },
                ratio(Some(m), versus_ts),
                ratio(Some(m), versus_moka),
                m.p50,
                m.p99,
                m.p999,
                m.errors,
                m.lost,
                per_request(m.transactions, m),
                per_request(m.row_writes, m),
                rows,
                bytes,
            );
        }
        println!();
    }
}

/// The issue's targets, each with the figure that decides it.
fn print_targets(medians: &BTreeMap<(Workload, Target), Measurement>) {
    let get = |w: Workload, t: Target| medians.get(&(w, t));
    let mut lines = Vec::new();
    let mut check = |name: String, value: Option<f64>, bound: f64, at_least: bool, unit: &str| {
        let line = match value {
            Some(v) if v.is_finite() => {
                let met = if at_least { v >= bound } else { v <= bound };
                format!(
                    "- {} {name}: {v:.2}{unit} (target {} {bound}{unit})",
                    if met { "MET " } else { "MISS" },
                    if at_least { "≥" } else { "≤" }
                )
            }
            _ => format!("- n/a  {name}: not measured in this run"),
        };
        lines.push(line);
    };
    let rps_ratio = |a: Option<&Measurement>, b: Option<&Measurement>| match (a, b) {
        (Some(a), Some(b)) if b.rps > 0.0 => Some(a.rps / b.rps),
        _ => None,
    };
    for target in [
        Target::SfPgSync,
        Target::SfPgAsync,
        Target::SfSqliteSync,
        Target::SfSqliteAsync,
    ] {
        check(
            format!("sticky read, {} vs ceiling", target.label()),
            rps_ratio(
                get(Workload::Read, target),
                get(Workload::Read, Target::Ceiling),
            ),
            0.90,
            true,
            "×",
        );
    }
    for target in [Target::SfPgSync, Target::SfPgAsync] {
        // Transactions beyond the one insert per user that creates each session.
        let reads = get(Workload::Read, target).and_then(|m| {
            m.transactions
                .map(|t| t as f64 / m.requests_total.max(1) as f64)
        });
        check(
            format!(
                "database transactions per read, {} (whole run, session creation included)",
                target.label()
            ),
            reads,
            0.001,
            false,
            "",
        );
    }
    check(
        "write, session-failover async PostgreSQL vs ceiling".to_owned(),
        rps_ratio(
            get(Workload::Write, Target::SfPgAsync),
            get(Workload::Write, Target::Ceiling),
        ),
        0.80,
        true,
        "×",
    );
    check(
        "row writes per write request, session-failover async PostgreSQL".to_owned(),
        get(Workload::Write, Target::SfPgAsync).and_then(|m| {
            m.row_writes
                .map(|w| w as f64 / m.requests_total.max(1) as f64)
        }),
        0.10,
        false,
        "",
    );
    check(
        "write, session-failover sync (group commit) PostgreSQL vs tower-sessions PostgreSQL"
            .to_owned(),
        rps_ratio(
            get(Workload::Write, Target::SfPgSync),
            get(Workload::Write, Target::TsPg),
        ),
        3.0,
        true,
        "×",
    );
    for target in [Target::SfPgSync, Target::SfPgAsync] {
        check(
            format!(
                "mixed, {} vs tower-sessions + moka PostgreSQL",
                target.label()
            ),
            rps_ratio(
                get(Workload::Mixed, target),
                get(Workload::Mixed, Target::TsPgMoka),
            ),
            3.0,
            true,
            "×",
        );
    }
    for target in [Target::SfPgSync, Target::SfSqliteSync] {
        check(
            format!(
                "stored bytes per session after the write workload (≤ 20-line carts, encrypted), {}",
                target.label()
            ),
            get(Workload::Write, target).and_then(|m| m.stored.map(|(_, bytes)| bytes)),
            1024.0,
            false,
            " B",
        );
    }
    println!("## Targets");
    println!();
    for line in lines {
        println!("{line}");
    }
}
