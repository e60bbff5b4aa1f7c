//! The `session-failover` command: serve the demo storefront, check the configuration, migrate.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use session_failover::config::{Config, Properties};
use session_failover::{server, store};

/// `println!` that returns a failed write as an error rather than panicking, so that
/// `sessions list | head` ends quietly when `head` closes the pipe.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout(), $($arg)*)?
    }};
}

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
    /// Print the effective configuration and where each value came from, then every value
    /// that cannot be used (exit status 2 if any).
    CheckConfig {
        /// Directory with project.properties and local.properties.
        #[arg(long, default_value = "config")]
        config: PathBuf,
        /// Also connect to the store and read its table (creates and changes nothing).
        #[arg(long)]
        connect: bool,
    },
    /// Apply the schema migrations to the configured store.
    Migrate {
        /// Directory with project.properties and local.properties.
        #[arg(long, default_value = "config")]
        config: PathBuf,
    },
    /// Print the argon2 hash of a password read from standard input (for
    /// session.backoffice.password.hash).
    HashPassword,
    /// Look at and manage the persisted sessions of the configured store.
    Sessions {
        /// Directory with project.properties and local.properties.
        #[arg(long, default_value = "config", global = true)]
        config: PathBuf,
        /// Print JSON (for scripts) instead of text.
        #[arg(long, global = true)]
        json: bool,
        #[command(subcommand)]
        action: SessionsAction,
    },
}

#[derive(Subcommand)]
enum SessionsAction {
    /// List sessions (metadata and attribute names, never values), a page at a time.
    List {
        /// Only this application.
        #[arg(long)]
        app: Option<String>,
        /// Only this user.
        #[arg(long)]
        principal: Option<String>,
        /// Only sessions last written by this node.
        #[arg(long)]
        node: Option<String>,
        /// Start after this key (the `next` of the previous page). Keys may begin with `-`.
        #[arg(long, allow_hyphen_values = true)]
        after: Option<String>,
        /// Sessions per page (1 to 1000).
        #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=1000))]
        limit: u32,
    },
    /// Show one session by its key (as listed).
    Show {
        /// The session's key (keys may begin with `-`).
        #[arg(allow_hyphen_values = true)]
        key: String,
    },
    /// Delete one session by key, or every session of a user.
    Delete {
        /// The session's key (keys may begin with `-`).
        #[arg(
            required_unless_present = "principal",
            conflicts_with = "principal",
            allow_hyphen_values = true
        )]
        key: Option<String>,
        /// Delete every session of this user ("log out everywhere").
        #[arg(long)]
        principal: Option<String>,
    },
    /// Delete the expired sessions now (unless another node is purging).
    Purge {
        /// Rows per statement, 1 to 100000 (default: session.purge.batch.size).
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=100_000))]
        batch_size: Option<u32>,
    },
    /// Count sessions: total, expired, signed in, bytes, by application and node.
    Stats,
    /// Write every live session not under session.secret's key again under it (after a
    /// rotation, before session.secret.previous is removed). Safe while nodes serve, and to
    /// stop and run again.
    Reencrypt {
        /// Start after this key (printed when a run stops). Keys may begin with `-`.
        #[arg(long, allow_hyphen_values = true)]
        after: Option<String>,
        /// Rows read per batch, 1 to 10000.
        #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..=10_000))]
        batch_size: u32,
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
        // The reader went away (`| head`): nothing more to say, as for any Unix tool.
        Err(error)
            if error.chain().any(|cause| {
                cause
                    .downcast_ref::<std::io::Error>()
                    .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
            }) =>
        {
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("error: {}", render(&error));
            ExitCode::from(2)
        }
    }
}

/// Text from the table (written by applications, or by whoever can write to it) as a terminal
/// may show it: control characters and bidirectional overrides, which could rewrite the screen
/// or reorder what the operator reads, are printed escaped (`\u{1b}`).
fn shown(text: &str) -> std::borrow::Cow<'_, str> {
    let hidden = |c: char| {
        c.is_control()
            || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
    };
    if !text.chars().any(hidden) {
        return std::borrow::Cow::Borrowed(text);
    }
    std::borrow::Cow::Owned(
        text.chars()
            .map(|c| {
                if hidden(c) {
                    format!("\\u{{{:x}}}", u32::from(c))
                } else {
                    c.to_string()
                }
            })
            .collect(),
    )
}

/// An error and its causes on one line, each cause once: drivers often repeat their source's
/// message in their own ("error returned from database: X", then "X").
fn render(error: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if !parts.last().is_some_and(|last| last.contains(&text)) {
            parts.push(text);
        }
    }
    parts.join(": ")
}

/// The layered properties of `dir` (built-in defaults, the two files, the environment).
fn load_properties(dir: &Path) -> anyhow::Result<Properties> {
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
    let vars = std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)));
    Ok(Properties::load(dir, vars)?)
}

/// Files in `dir` whose names are near misses of the two that are read (`local.propertie`,
/// `Local.properties`, `dev.properties`): they are not read, and nobody would guess.
fn stray_files(dir: &Path) -> Vec<String> {
    const READ: [&str; 2] = ["project.properties", "local.properties"];
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut warnings: Vec<String> = entries
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().into_string().ok())
        .filter(|name| !READ.contains(&name.as_str()) && name != "local.properties.example")
        .filter_map(|name| {
            let lower = name.to_lowercase();
            let near = READ
                .iter()
                .min_by_key(|read| strsim::levenshtein(&lower, read))
                .filter(|read| {
                    strsim::levenshtein(&lower, read) <= 2 || lower.ends_with(".properties")
                })?;
            Some(format!(
                "{} is not read (only project.properties and local.properties are); did you mean {near}?",
                dir.join(&name).display()
            ))
        })
        .collect();
    warnings.sort();
    warnings
}

fn load(dir: &Path) -> anyhow::Result<(Config, Properties)> {
    let properties = load_properties(dir)?;
    let config = Config::from_properties(&properties)?;
    for warning in stray_files(dir) {
        tracing::warn!("{warning}");
    }
    for warning in properties.unknown_key_warnings() {
        tracing::warn!("{warning}");
    }
    Ok((config, properties))
}

/// Where `session.store.url` was set, to prefix a store error with: "FILE:LINE:
/// session.store.url".
fn store_origin(properties: &Properties) -> String {
    let origin = properties
        .get("session.store.url")
        .map_or_else(|| "built-in default".to_owned(), |s| s.source.to_string());
    format!("{origin}: session.store.url")
}

/// Opens the configured store as an operators' tool does: it neither creates the database nor
/// migrates it (only `serve` and `migrate` do).
async fn open_existing(
    config: &Config,
    properties: &Properties,
) -> anyhow::Result<std::sync::Arc<dyn session_failover::SessionAdmin>> {
    let options = store::StoreOptions {
        migrate: false,
        create: false,
        ..config.store.clone()
    };
    store::open(&config.store_url, &options)
        .await
        .map_err(|e| anyhow::Error::new(e).context(store_origin(properties)))
}

/// A store error, with a hint when the table is missing.
fn store_error(error: store::Error) -> anyhow::Error {
    let error = anyhow::Error::new(error);
    let text = format!("{error:#}");
    let missing = text.contains("stored_http_session")
        && ["does not exist", "doesn't exist", "no such table"]
            .iter()
            .any(|s| text.contains(s));
    if missing {
        error.context(
            "the store has no stored_http_session table: is this the right database? If it is, \
             create the table with `session-failover migrate --config DIR` (or start a node with \
             session.store.migrate=true, the default)",
        )
    } else {
        error
    }
}

fn key(text: &str) -> anyhow::Result<session_failover::session::SessionKey> {
    session_failover::session::SessionKey::parse(text).ok_or_else(|| {
        anyhow::anyhow!("{text:?} is not a session key (43 characters of base64url, as `sessions list` shows them)")
    })
}

use session_failover::admin::format_time as time;

fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    out!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

async fn sessions(
    config: &Config,
    store: &std::sync::Arc<dyn session_failover::SessionAdmin>,
    origin: &str,
    action: SessionsAction,
    json: bool,
) -> anyhow::Result<()> {
    let store_error = |e| store_error(e).context(origin.to_owned());
    use session_failover::admin;
    use session_failover::store::ListQuery;
    match action {
        SessionsAction::List {
            app,
            principal,
            node,
            after,
            limit,
        } => {
            let after = after.as_deref().map(key).transpose()?;
            let page = admin::list(
                &**store,
                &ListQuery {
                    app,
                    principal,
                    node,
                    after,
                    limit,
                },
            )
            .await
            .map_err(store_error)?;
            if json {
                return print_json(&page);
            }
            out!(
                "{:<43}  {:<12} {:<16} {:<14} {:<19} {:<19} {:>7}  attributes",
                "key",
                "app",
                "principal",
                "node",
                "modified (UTC)",
                "expires (UTC)",
                "bytes"
            );
            for m in &page.sessions {
                out!(
                    "{:<43}  {:<12} {:<16} {:<14} {:<19} {:<19} {:>7}  {}",
                    m.key,
                    shown(&m.app),
                    shown(m.principal.as_deref().unwrap_or("-")),
                    shown(&m.node),
                    time(m.modified_at),
                    time(m.expires_at),
                    m.size_bytes,
                    shown(&m.attributes.join(","))
                );
            }
            match &page.next {
                Some(next) => out!("# more: --after {next}"),
                None => out!("# {} session(s)", page.sessions.len()),
            }
        }
        SessionsAction::Show { key: text } => {
            let Some(meta) = admin::show(&**store, &key(&text)?)
                .await
                .map_err(store_error)?
            else {
                anyhow::bail!("no session with key {text}");
            };
            if json {
                return print_json(&meta);
            }
            out!(
                "key          {}\napp          {} (context path {})\nprincipal    {}\nnode         {}",
                meta.key,
                shown(&meta.app),
                shown(&meta.context_path),
                shown(meta.principal.as_deref().unwrap_or("-")),
                shown(&meta.node)
            );
            out!(
                "created      {}\nmodified     {}\nexpires      {}\ntimeout      {} s\nversion      {}\nsize         {} bytes\nattributes   {}",
                time(meta.created_at),
                time(meta.modified_at),
                time(meta.expires_at),
                meta.max_inactive_secs,
                meta.version,
                meta.size_bytes,
                shown(&meta.attributes.join(", "))
            );
        }
        SessionsAction::Delete {
            key: Some(text), ..
        } => {
            let deleted = admin::delete(&**store, &key(&text)?)
                .await
                .map_err(store_error)?;
            if json {
                return print_json(&serde_json::json!({ "deleted": u64::from(deleted) }));
            }
            if !deleted {
                anyhow::bail!("no session with key {text}");
            }
            out!("deleted 1 session");
        }
        SessionsAction::Delete {
            principal: Some(principal),
            ..
        } => {
            let deleted = admin::delete_principal(&**store, &principal, |_| {})
                .await
                .map_err(store_error)?;
            if json {
                return print_json(&serde_json::json!({ "deleted": deleted }));
            }
            out!("deleted {deleted} session(s) of {}", shown(&principal));
        }
        SessionsAction::Delete { .. } => anyhow::bail!("give a key or --principal"),
        SessionsAction::Purge { batch_size } => {
            let spinner = (!json).then(|| {
                let bar = indicatif::ProgressBar::new_spinner();
                bar.set_message("deleting expired sessions…");
                bar.enable_steady_tick(std::time::Duration::from_millis(120));
                bar
            });
            let started = std::time::Instant::now();
            let batch = batch_size.unwrap_or(config.purge_batch_size);
            let result = admin::purge(store, session_failover::store::now_millis(), batch)
                .await
                .map_err(store_error)?;
            if let Some(bar) = &spinner {
                bar.finish_and_clear();
            }
            if json {
                return print_json(
                    &serde_json::json!({ "deleted": result, "skipped": result.is_none(), "ms": started.elapsed().as_millis() }),
                );
            }
            match result {
                Some(n) => out!(
                    "deleted {n} expired session(s) in {:.1} s",
                    started.elapsed().as_secs_f64()
                ),
                None => out!("skipped: another node is purging right now"),
            }
        }
        SessionsAction::Reencrypt { after, batch_size } => {
            let after = after.as_deref().map(key).transpose()?;
            let codec = config.codec();
            if !codec.encrypts() {
                anyhow::bail!(
                    "session.secret is not set: there is no key to re-encrypt under (set it in local.properties or y_session_secret)"
                );
            }
            let bar = (!json).then(|| {
                // The total is a count of every row, read once; the bar is a guide, not a promise.
                let bar = indicatif::ProgressBar::new(0);
                bar.set_style(
                    indicatif::ProgressStyle::with_template(
                        "{bar:30} {pos}/{len} sessions read, {msg} ({elapsed})",
                    )
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
                );
                bar
            });
            if let Some(bar) = &bar
                && let Ok(total) = store.length().await
            {
                bar.set_length(total);
            }
            // The last key of the last batch done, to resume from if the run stops.
            let reached = std::cell::RefCell::new(None);
            let result = admin::reencrypt(&**store, &codec, after, batch_size, |done| {
                reached.replace(done.last.clone());
                if let Some(bar) = &bar {
                    bar.set_position(done.read);
                    bar.set_message(format!("{} rewritten", done.rewritten));
                }
            })
            .await;
            if let Some(bar) = &bar {
                bar.finish_and_clear();
            }
            let done = result.map_err(|error| {
                let resume = match reached.take() {
                    Some(key) => format!("; rows up to {key} are done: resume with --after {key}"),
                    None => String::new(),
                };
                store_error(error).context(format!("{origin}{resume}"))
            })?;
            if json {
                print_json(&done)?;
            } else {
                out!(
                    "read {} live session(s): {} written again under the current key, {} already under it, {} changed by a node meanwhile",
                    done.read,
                    done.rewritten,
                    done.current,
                    done.changed
                );
            }
            if done.unreadable > 0 {
                anyhow::bail!(
                    "{} session(s) do not decode with the configured session.secret and session.secret.previous (a secret removed too early, or not the secrets the nodes use): keep session.secret.previous until a run reports none",
                    done.unreadable
                );
            }
        }
        SessionsAction::Stats => {
            let bar = (!json).then(|| {
                let bar = indicatif::ProgressBar::new(0);
                bar.set_style(
                    indicatif::ProgressStyle::with_template("{spinner} read {pos} sessions")
                        .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
                );
                bar
            });
            let stats = admin::stats(&**store, session_failover::store::now_millis(), |n| {
                if let Some(bar) = &bar {
                    bar.set_position(n);
                }
            })
            .await
            .map_err(store_error)?;
            if let Some(bar) = &bar {
                bar.finish_and_clear();
            }
            if json {
                return print_json(&stats);
            }
            out!(
                "sessions   {}\nexpired    {}\nsigned in  {}\nbytes      {}",
                stats.sessions,
                stats.expired,
                stats.signed_in,
                stats.bytes
            );
            for (app, n) in &stats.by_app {
                out!("app   {:<20} {n}", shown(app));
            }
            for (node, n) in &stats.by_node {
                out!("node  {:<20} {n}", shown(node));
            }
        }
    }
    Ok(())
}

/// `check-config`: the effective properties and where each came from (unknown keys marked),
/// the applications, then every value that cannot be used; with `connect`, a read of the store.
async fn check_config(dir: &Path, connect: bool) -> anyhow::Result<()> {
    use session_failover::config::keys;
    let properties = load_properties(dir)?;
    out!("# effective configuration from {}", dir.display());
    for warning in stray_files(dir) {
        out!("# WARNING: {warning}");
    }
    // By name, misspelt ones included: any key that may hold a secret; and by value: any other
    // key holding one of those values (pulled in with ${…}, or pasted twice).
    let secret_name = |key: &str| {
        let lower = key.to_lowercase();
        ["secret", "passw", "hash", "token", "credential"]
            .iter()
            .any(|word| lower.contains(word))
    };
    let secret_values: Vec<&str> = properties
        .iter()
        .filter(|(key, setting)| secret_name(key) && setting.value.len() >= 8)
        .flat_map(|(_, setting)| setting.value.split(',').map(str::trim))
        .filter(|value| value.len() >= 8)
        .collect();
    for (key, setting) in properties.iter() {
        // A yes/no (session.secret.accept.plaintext) is no secret, and worth seeing.
        let flag = setting.value.eq_ignore_ascii_case("true")
            || setting.value.eq_ignore_ascii_case("false");
        let secret =
            !flag && (secret_name(key) || secret_values.iter().any(|v| setting.value.contains(v)));
        let value = if secret && !setting.value.is_empty() {
            "********".to_owned()
        } else if key == "session.store.url" {
            store::redact_url(&setting.value)
        } else {
            setting.value.clone()
        };
        let unknown = if keys::is_unknown(key) {
            match keys::nearest(key) {
                Some(near) => format!("    # UNKNOWN KEY, ignored: did you mean {near}?"),
                None => "    # UNKNOWN KEY, ignored".to_owned(),
            }
        } else {
            String::new()
        };
        out!("{key}={value}    # {}{unknown}", setting.source);
    }
    let config = match Config::from_properties(&properties) {
        Ok(config) => config,
        Err(error) => {
            out!("# configuration is NOT valid");
            return Err(error.into());
        }
    };
    out!("# applications");
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
        let note = if app == session_failover::backoffice::APP && config.backoffice.is_none() {
            "    # the backoffice is off (session.backoffice.user and .password.hash unset)"
                .to_owned()
        } else if ![server::STOREFRONT_APP, session_failover::backoffice::APP].contains(&app) {
            format!(
                "    # NOT RUN by this server (it runs {} and {}): check the spelling",
                server::STOREFRONT_APP,
                session_failover::backoffice::APP
            )
        } else {
            String::new()
        };
        out!(
            "# {app}: {mode}, {encryption}, cookie {} path {} secure {} httponly {}{note}",
            c.cookie_name,
            c.cookie_path.as_deref().unwrap_or(match app {
                server::STOREFRONT_APP => server::STOREFRONT_CONTEXT_PATH,
                session_failover::backoffice::APP => session_failover::backoffice::PATH,
                _ => "(context path)",
            }),
            c.secure
                .map_or("(follows request)".to_owned(), |b| b.to_string()),
            c.http_only
                .map_or("true (default)".to_owned(), |b| b.to_string()),
        );
    }
    let unknown = properties.unknown_key_warnings().len();
    if unknown > 0 {
        out!("# {unknown} unknown key(s) above are ignored");
    }
    if !connect {
        out!("# configuration is valid (the store was not contacted: add --connect to check it)");
        return Ok(());
    }
    let store = open_existing(&config, &properties).await?;
    let probe = session_failover::session::SessionId::generate().store_key();
    tokio::time::timeout(
        config.store.timeout,
        store.exists(&probe, store::now_millis()),
    )
    .await
    .map_err(|_| store::Error::Timeout(config.store.timeout))
    .and_then(|read| read)
    .map_err(|e| store_error(e).context(store_origin(&properties)))?;
    out!(
        "# configuration is valid; the store {} answers and has its table",
        store::redact_url(&config.store_url)
    );
    Ok(())
}

#[tokio::main]
async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve { config, bind } => {
            let (config, properties) = load(&config)?;
            let bound_by = match bind {
                Some(_) => "--bind".to_owned(),
                None => {
                    properties
                        .get("server.bind")
                        .map_or_else(|| "built-in default".to_owned(), |s| s.source.to_string())
                        + ": server.bind"
                }
            };
            server::serve(config, bind, server::shutdown_signal())
                .await
                .map_err(|e| match e {
                    server::Error::Store(e) => store_error(e).context(store_origin(&properties)),
                    server::Error::Bind { addr, source } => anyhow::Error::new(source)
                        .context(format!("{bound_by}: cannot listen on {addr}")),
                    other => other.into(),
                })?;
        }
        Command::CheckConfig {
            config: dir,
            connect,
        } => check_config(&dir, connect).await?,
        Command::Sessions {
            config,
            json,
            action,
        } => {
            let (config, properties) = load(&config)?;
            let store = open_existing(&config, &properties).await?;
            sessions(&config, &store, &store_origin(&properties), action, json).await?;
        }
        Command::HashPassword => {
            use argon2::password_hash::{PasswordHasher as _, SaltString};
            let mut password = String::new();
            std::io::stdin().read_line(&mut password)?;
            let password = password.trim_end_matches(['\r', '\n']);
            if password.is_empty() {
                anyhow::bail!(
                    "no password on standard input (e.g.: printf '%s' 'secret' | session-failover hash-password)"
                );
            }
            let mut random = [0u8; 16];
            getrandom::fill(&mut random).map_err(|e| anyhow::anyhow!("no random source: {e}"))?;
            let salt = SaltString::encode_b64(&random).map_err(|e| anyhow::anyhow!("salt: {e}"))?;
            let hash = argon2::Argon2::default()
                .hash_password(password.as_bytes(), &salt)
                .map_err(|e| anyhow::anyhow!("hashing failed: {e}"))?;
            out!("{hash}");
        }
        Command::Migrate { config } => {
            let (config, properties) = load(&config)?;
            store::open(
                &config.store_url,
                &store::StoreOptions {
                    migrate: true,
                    ..config.store.clone()
                },
            )
            .await
            .map_err(|e| anyhow::Error::new(e).context(store_origin(&properties)))?;
            out!(
                "migrations applied to {}",
                store::redact_url(&config.store_url)
            );
        }
    }
    Ok(())
}
