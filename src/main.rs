//! The `session-failover` command: serve the demo storefront, check the configuration, migrate.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use session_failover::config::{Config, Properties};
use session_failover::{server, store};

/// HTTP session failover in the SAP Commerce style.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the demo storefront with session failover.
    Serve {
        /// Directory with project.properties and local.properties.
        #[arg(long, default_value = "config")]
        config: PathBuf,
        /// Listen address (overrides server.bind), e.g. 127.0.0.1:8080; port 0 picks a free one.
        #[arg(long)]
        bind: Option<SocketAddr>,
    },
    /// Print the effective configuration and where each value came from.
    CheckConfig {
        /// Directory with project.properties and local.properties.
        #[arg(long, default_value = "config")]
        config: PathBuf,
    },
    /// Apply the schema migrations to the configured store.
    Migrate {
        /// Directory with project.properties and local.properties.
        #[arg(long, default_value = "config")]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    use std::io::IsTerminal as _;
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,sqlx=warn".into()),
        )
        .init();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(2)
        }
    }
}

fn load(dir: &Path) -> anyhow::Result<(Config, Properties)> {
    if dir.is_file() {
        anyhow::bail!(
            "--config {} is a file; it takes the directory that holds project.properties and local.properties",
            dir.display()
        );
    }
    if !dir.is_dir() {
        anyhow::bail!(
            "configuration directory {} does not exist (it should hold project.properties and local.properties)",
            dir.display()
        );
    }
    if !dir.join("project.properties").is_file() && !dir.join("local.properties").is_file() {
        tracing::warn!(
            "{} has neither project.properties nor local.properties: using the built-in defaults, in which spring.session.enabled=false",
            dir.display()
        );
    }
    let (config, properties) = Config::load(dir)?;
    for warning in properties.unknown_key_warnings() {
        tracing::warn!("{warning}");
    }
    Ok((config, properties))
}

#[tokio::main]
async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve { config, bind } => {
            let (config, _) = load(&config)?;
            server::serve(config, bind, server::shutdown_signal()).await?;
        }
        Command::CheckConfig { config: dir } => {
            let (config, properties) = load(&dir)?;
            println!("# effective configuration from {}", dir.display());
            for (key, setting) in properties.iter() {
                let secret = matches!(key, "session.secret" | "session.secret.previous")
                    || key.contains("password");
                let value = if secret && !setting.value.is_empty() {
                    "********".to_owned()
                } else if key == "session.store.url" {
                    store::redact_url(&setting.value)
                } else {
                    setting.value.clone()
                };
                println!("{key}={value}    # {}", setting.source);
            }
            println!("# applications");
            let mut apps: Vec<&str> = config.apps.keys().map(String::as_str).collect();
            if !apps.contains(&server::STOREFRONT_APP) {
                apps.push(server::STOREFRONT_APP);
            }
            for app in apps {
                let c = config.app(app);
                let mode = match config.save_mode(app) {
                    Some(mode) => format!("{mode:?}").to_lowercase(),
                    None => "memory-only".to_owned(),
                };
                let encryption = if config.secrets.is_some() {
                    "encrypted"
                } else {
                    "not encrypted"
                };
                println!(
                    "# {app}: {mode}, {encryption}, cookie {} path {} secure {} httponly {}",
                    c.cookie_name,
                    c.cookie_path.as_deref().unwrap_or("(context path)"),
                    c.secure
                        .map_or("(follows request)".to_owned(), |b| b.to_string()),
                    c.http_only
                        .map_or("true (default)".to_owned(), |b| b.to_string()),
                );
            }
            println!("# configuration is valid");
        }
        Command::Migrate { config } => {
            let (config, _) = load(&config)?;
            store::open(
                &config.store_url,
                &store::StoreOptions {
                    migrate: true,
                    ..config.store.clone()
                },
            )
            .await?;
            println!(
                "migrations applied to {}",
                store::redact_url(&config.store_url)
            );
        }
    }
    Ok(())
}
