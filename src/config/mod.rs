//! Configuration in the SAP Commerce style: `.properties` files and environment overrides.
//!
//! Layers, later wins:
//! 1. built-in defaults ([`keys::KEYS`]; `config/project.properties` lists the same keys),
//! 2. `<dir>/project.properties` (the project's shipped settings),
//! 3. `<dir>/local.properties` (git-ignored, per machine),
//! 4. environment variables `y_<key with . as _ and _ as __>` (e.g. `y_session_store_url`).
//!
//! `${other.key}` placeholders are expanded after layering. Typed values are parsed once, into
//! [`Config`]; a bad value fails with the file and line (or variable), the key, the value and
//! what is accepted. Unknown keys under `spring.session.`, `session.` and `server.` produce a
//! warning naming the nearest known key.

mod binding;
pub mod keys;
mod properties;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub use binding::{EXT_SESSION_MGT, VCAP_SERVICES};
pub use properties::{ENV_PREFIX, Properties, Setting, Source, env_var_to_key, key_to_env_var};

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A properties file exists but cannot be read.
    #[error("cannot read {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A properties file is malformed (e.g. a bad `\u` escape).
    #[error("{}:{}: {message}", path.display(), line.map_or("?".to_owned(), |l| l.to_string()))]
    Parse {
        /// The file.
        path: PathBuf,
        /// The line, when known.
        line: Option<usize>,
        /// What the parser said.
        message: String,
    },
    /// A value does not parse as what its key accepts.
    #[error("{origin}: {key} = {value:?}: expected {expected}")]
    Invalid {
        /// Where the value was set.
        origin: Source,
        /// The key.
        key: String,
        /// The value as written.
        value: String,
        /// What is accepted.
        expected: String,
    },
    /// A `${key}` placeholder cannot be expanded.
    #[error("{origin}: {key}: {reason}")]
    Placeholder {
        /// Where the value with the placeholder was set.
        origin: Source,
        /// The key whose value has the placeholder.
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// A secret is unusable. The message never includes the secret.
    #[error("{origin}: {key}: {reason}")]
    Secret {
        /// Where it was set.
        origin: Source,
        /// The key.
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// Several values cannot be used: each is one of the other variants.
    #[error("{} values cannot be used:\n  {}", .0.len(), .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n  "))]
    Several(Vec<Error>),
    /// The configuration directory given on the command line does not exist.
    #[error("configuration directory {} does not exist", .0.display())]
    MissingDir(PathBuf),
}

pub use crate::persist::SaveMode;

impl crate::persist::Persistence {
    /// The configured persistence of `store`: `session.store.timeout`,
    /// `session.save.group.commit*`, `spring.session.save.async.*`, `session.save.retry.*` and
    /// `session.restore.batch`.
    pub fn from_config(store: Arc<dyn crate::store::SessionAdmin>, config: &Config) -> Self {
        Self::new(
            Arc::clone(&store) as Arc<dyn crate::store::SessionStore>,
            config.writer.clone(),
            config.store.timeout,
            config.group_commit,
        )
        .with_batched_reads(config.restore_batch)
        .with_admin(store)
    }
}

/// The serializability checker's settings (`session.serialization.check*`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckConfig {
    /// The check runs at all.
    pub enabled: bool,
    /// Only these apps are checked; `None`: all apps.
    pub extensions: Option<Vec<String>>,
    /// A session that would not survive failover answers 500.
    pub response_error: bool,
}

/// One application's settings (`spring.session.<app>.*`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppConfig {
    /// The configured save mode; `None`: memory-only sessions.
    pub save: Option<SaveMode>,
    /// The session cookie's name.
    pub cookie_name: String,
    /// The session cookie's path; `None`: the app's context path.
    pub cookie_path: Option<String>,
    /// The cookie's `Secure` attribute; `None`: set when the request is secure.
    pub secure: Option<bool>,
    /// The cookie's `HttpOnly` attribute; `None`: set.
    pub http_only: Option<bool>,
}

impl Default for AppConfig {
    fn default() -> Self {
        Self {
            save: None,
            cookie_name: "JSESSIONID".to_owned(),
            cookie_path: None,
            secure: None,
            http_only: None,
        }
    }
}

/// The default of `session.max.size`, in bytes.
pub(crate) const DEFAULT_MAX_SIZE: usize = 1024 * 1024;

/// The default of `session.cache.verify.interval`, in milliseconds.
pub(crate) const DEFAULT_VERIFY_INTERVAL_MS: u64 = 1000;

/// The typed, validated configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// `spring.session.enabled`.
    pub enabled: bool,
    /// `spring.session.save.async.*`.
    pub writer: crate::persist::WriterConfig,
    /// `session.save.group.commit`: sync saves are grouped by the writer.
    pub group_commit: bool,
    /// `session.restore.batch`: restores that arrive together are read in one query.
    pub restore_batch: bool,
    /// `session.shutdown.drain.timeout`.
    pub drain_timeout: Duration,
    /// `session.serialization.check*`.
    pub check: CheckConfig,
    /// `session.store.url`.
    pub store_url: String,
    /// `session.store.migrate`, `session.store.pool.size`, `session.store.timeout`.
    pub store: crate::store::StoreOptions,
    /// `session.timeout`.
    pub timeout: Duration,
    /// `session.node.name`; `None`: host name and port.
    pub node_name: Option<String>,
    /// `session.cache.max.entries`.
    pub cache_max_entries: u64,
    /// `session.cache.verify.interval`.
    pub cache_verify_interval: Duration,
    /// `server.bind`.
    pub bind: SocketAddr,
    /// `session.max.size`: the largest session saved, in bytes before compression.
    pub max_size: usize,
    /// `session.metrics.bind`: where `/metrics` is served instead of `bind`.
    pub metrics_bind: Option<SocketAddr>,
    /// `spring.session.<app>.*`, by app.
    pub apps: BTreeMap<String, AppConfig>,
    /// `session.secret` and `session.secret.previous`; `None`: sessions stored unencrypted.
    pub secrets: Option<Secrets>,
    /// `session.secret.accept.plaintext`.
    pub accept_plaintext: bool,
    /// `session.codec.tokens`.
    pub codec_tokens: bool,
    /// `session.backoffice.user` and `.password.hash`; `None`: the backoffice is off.
    pub backoffice: Option<BackofficeCredentials>,
    /// `session.backoffice.show.values`.
    pub backoffice_show_values: bool,
    /// `session.purge.cron`, validated; empty: no purge.
    pub purge_cron: String,
    /// `session.purge.batch.size`.
    pub purge_batch_size: u32,
    /// `session.purge.jitter`.
    pub purge_jitter: Duration,
}

/// The backoffice's credentials. `Debug` hides the hash.
#[derive(Clone, PartialEq, Eq)]
pub struct BackofficeCredentials {
    /// The user name.
    pub user: String,
    /// The argon2 PHC hash of the password.
    pub password_hash: String,
}

impl std::fmt::Debug for BackofficeCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BackofficeCredentials({}, hash redacted)", self.user)
    }
}

/// The encryption secrets. Never printed: `Debug` shows only how many there are.
#[derive(Clone, PartialEq, Eq)]
pub struct Secrets {
    current: zeroize::Zeroizing<String>,
    previous: Vec<zeroize::Zeroizing<String>>,
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Secrets(current + {} previous, redacted)",
            self.previous.len()
        )
    }
}

impl Secrets {
    /// The keys derived from the secrets.
    pub fn keys(&self) -> crate::codec::Keys {
        let previous: Vec<&str> = self.previous.iter().map(|s| s.as_str()).collect();
        crate::codec::Keys::new(&self.current, &previous)
            .expect("secret lengths are checked when the configuration is parsed")
    }
}

impl Default for Config {
    fn default() -> Self {
        Self::from_properties(&Properties::builtin()).expect("the built-in defaults are valid")
    }
}

impl Config {
    /// Loads the layers from `dir` and the process environment and validates them.
    ///
    /// Returns the typed configuration and the effective properties (for `check-config` and for
    /// the unknown-key warnings).
    pub fn load(dir: &Path) -> Result<(Self, Properties), Error> {
        // Variables that are not UTF-8 cannot be ours (keys and values are text): skip them
        // rather than fail on some other program's environment.
        let vars = std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)));
        let properties = Properties::load(dir, vars)?;
        let config = Self::from_properties(&properties)?;
        Ok((config, properties))
    }

    /// Parses and validates effective properties.
    ///
    /// Every value that cannot be used is reported, not only the first: one error as itself,
    /// several as [`Error::Several`].
    pub fn from_properties(p: &Properties) -> Result<Self, Error> {
        let mut problems = Problems::default();
        let config = Self::collect(p, &mut problems);
        problems.into_result(config)
    }

    fn collect(p: &Properties, problems: &mut Problems) -> Self {
        let mut apps: BTreeMap<String, AppConfig> = BTreeMap::new();
        for (key, setting) in p.iter() {
            let Some((app, spec)) = keys::per_app(key) else {
                continue;
            };
            let app = apps.entry(app.to_owned()).or_default();
            let value = setting.value.as_str();
            match spec.suffix {
                "save" => {
                    app.save = match value {
                        "sync" => Some(SaveMode::Sync),
                        "async" => Some(SaveMode::Async),
                        "" => None,
                        _ => {
                            problems.push(invalid(key, setting, "sync or async"));
                            continue;
                        }
                    }
                }
                "cookie.name" => {
                    if !valid_cookie_name(value) {
                        problems.push(invalid(
                            key,
                            setting,
                            "a cookie name: letters, digits and !#$%&'*+-.^_`|~",
                        ));
                        continue;
                    }
                    value.clone_into(&mut app.cookie_name);
                }
                "cookie.path" => {
                    app.cookie_path = match value {
                        "" => None,
                        _ if valid_cookie_path(value) => Some(value.to_owned()),
                        _ => {
                            problems.push(invalid(
                                key,
                                setting,
                                "a path starting with / without ; or control characters",
                            ));
                            continue;
                        }
                    }
                }
                "secure" => app.secure = problems.ok(optional_bool(key, setting)),
                "cookie.httponly" => app.http_only = problems.ok(optional_bool(key, setting)),
                other => unreachable!("per-app key suffix {other} has no parser"),
            }
        }
        let extensions = string(p, "session.serialization.check.extensions");
        Self {
            enabled: problems.ok(boolean(p, "spring.session.enabled")),
            writer: crate::persist::WriterConfig {
                interval: problems.ok(millis(
                    p,
                    "spring.session.save.async.interval",
                    1,
                    3_600_000,
                )),
                queue_size: problems.ok(usize_number(
                    p,
                    "spring.session.save.async.queue.size",
                    1,
                    10_000_000,
                )),
                max_items: problems.ok(usize_number(
                    p,
                    "spring.session.save.async.max.items",
                    1,
                    100_000,
                )),
                group_commit_window: problems.ok(millis(
                    p,
                    "session.save.group.commit.window",
                    0,
                    1000,
                )),
                retry_delay: problems.ok(millis(p, "session.save.retry.delay", 1, 3_600_000)),
                retry_multiplier: u32::try_from(problems.ok(number(
                    p,
                    "session.save.retry.multiplier",
                    1,
                    100,
                )))
                .unwrap_or(100),
                retry_max_delay: problems.ok(millis(
                    p,
                    "session.save.retry.max.delay",
                    1,
                    86_400_000,
                )),
                store_timeout: problems.ok(millis(p, "session.store.timeout", 1, 600_000)),
                concurrency: problems.ok(usize_number(p, "session.save.concurrency", 1, 64)),
            },
            group_commit: problems.ok(boolean(p, "session.save.group.commit")),
            restore_batch: problems.ok(boolean(p, "session.restore.batch")),
            drain_timeout: problems.ok(millis(p, "session.shutdown.drain.timeout", 0, 3_600_000)),
            check: CheckConfig {
                enabled: problems.ok(boolean(p, "session.serialization.check")),
                extensions: (!extensions.is_empty()).then(|| {
                    extensions
                        .split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(str::to_owned)
                        .collect()
                }),
                response_error: problems
                    .ok(boolean(p, "session.serialization.check.response.error")),
            },
            store_url: {
                let url = problems.ok(required(
                    p,
                    "session.store.url",
                    "a store URL such as sqlite://data/sessions.db",
                ));
                if !url.is_empty()
                    && let Err(error) = crate::store::validate_url(&url)
                {
                    let reason = match error {
                        crate::store::Error::Url { reason, .. } => reason,
                        other => other.to_string(),
                    };
                    problems.push(Error::Invalid {
                        origin: setting(p, "session.store.url").source,
                        key: "session.store.url".to_owned(),
                        value: crate::store::redact_url(&url),
                        expected: format!("a usable store URL: {reason}"),
                    });
                }
                url
            },
            store: {
                let migrate = problems.ok(boolean(p, "session.store.migrate"));
                crate::store::StoreOptions {
                    migrate,
                    // Creating a database is part of migrating it: a node told not to migrate does
                    // not create an empty SQLite file at a mistyped path either.
                    create: migrate,
                    pool_size: u32::try_from(problems.ok(number(
                        p,
                        "session.store.pool.size",
                        1,
                        1000,
                    )))
                    .unwrap_or(1000),
                    timeout: Duration::from_millis(problems.ok(number(
                        p,
                        "session.store.timeout",
                        1,
                        600_000,
                    ))),
                    redis_wait_replicas: u32::try_from(problems.ok(number(
                        p,
                        "session.store.redis.wait.replicas",
                        0,
                        16,
                    )))
                    .unwrap_or(16),
                    connect_timeout: if string(p, "session.store.connect.timeout").is_empty() {
                        None
                    } else {
                        Some(problems.ok(millis(p, "session.store.connect.timeout", 1, 600_000)))
                    },
                    redis_keepalive: Some(problems.ok(millis(
                        p,
                        "session.store.redis.keepalive",
                        0,
                        3_600_000,
                    )))
                    .filter(|d| !d.is_zero()),
                }
            },
            timeout: Duration::from_secs(problems.ok(number(p, "session.timeout", 1, 31_536_000))),
            node_name: Some(string(p, "session.node.name")).filter(|s| !s.is_empty()),
            cache_max_entries: problems.ok(number(p, "session.cache.max.entries", 1, 100_000_000)),
            cache_verify_interval: Duration::from_millis(problems.ok(number(
                p,
                "session.cache.verify.interval",
                0,
                3_600_000,
            ))),
            bind: {
                let setting = setting(p, "server.bind");
                setting.value.parse().unwrap_or_else(|_| {
                    problems.push(invalid(
                        "server.bind",
                        &setting,
                        "IP:PORT, e.g. 127.0.0.1:8080",
                    ));
                    SocketAddr::from(([127, 0, 0, 1], 8080))
                })
            },
            max_size: problems.ok(usize_number(
                p,
                "session.max.size",
                1024,
                crate::codec::MAX_DECODED_LEN as u64,
            )),
            metrics_bind: {
                let setting = setting(p, "session.metrics.bind");
                let server = string(p, "server.bind");
                match setting.value.as_str() {
                    "" => None,
                    value if value == server => {
                        problems.push(invalid(
                            "session.metrics.bind",
                            &setting,
                            "an address other than server.bind's (or nothing, to serve /metrics there)",
                        ));
                        None
                    }
                    value => value.parse().map(Some).unwrap_or_else(|_| {
                        problems.push(invalid(
                            "session.metrics.bind",
                            &setting,
                            "IP:PORT, e.g. 10.0.0.11:9100, or nothing",
                        ));
                        None
                    }),
                }
            },
            apps,
            secrets: problems.ok(secrets(p)),
            backoffice: problems.ok(backoffice(p)),
            backoffice_show_values: problems.ok(boolean(p, "session.backoffice.show.values")),
            purge_cron: {
                let cron = string(p, "session.purge.cron");
                if !cron.is_empty()
                    && let Err(e) = crate::purge::PurgeSchedule::parse(&cron)
                {
                    problems.push(invalid(
                        "session.purge.cron",
                        &setting(p, "session.purge.cron"),
                        &e.to_string(),
                    ));
                }
                cron
            },
            purge_batch_size: u32::try_from(problems.ok(number(
                p,
                "session.purge.batch.size",
                1,
                100_000,
            )))
            .unwrap_or(100_000),
            purge_jitter: Duration::from_secs(problems.ok(number(
                p,
                "session.purge.jitter",
                0,
                3600,
            ))),
            accept_plaintext: problems.ok(boolean(p, "session.secret.accept.plaintext")),
            codec_tokens: problems.ok(boolean(p, "session.codec.tokens")),
        }
    }

    /// The codec these settings ask for: encrypting if a secret is set.
    pub fn codec(&self) -> crate::codec::Codec {
        let codec = crate::codec::Codec::default()
            .with_accept_plaintext(self.accept_plaintext)
            .with_tokens(self.codec_tokens);
        match &self.secrets {
            Some(secrets) => codec.with_keys(secrets.keys()),
            None => codec,
        }
    }

    /// The settings of `app` (defaults if no key names it).
    pub fn app(&self, app: &str) -> AppConfig {
        self.apps.get(app).cloned().unwrap_or_default()
    }

    /// The save mode in force for `app`: none when failover is disabled or the app has no mode.
    pub fn save_mode(&self, app: &str) -> Option<SaveMode> {
        self.enabled.then(|| self.app(app).save).flatten()
    }

    /// Whether the serializability check covers `app`.
    pub fn check_covers(&self, app: &str) -> bool {
        self.check.enabled
            && self
                .check
                .extensions
                .as_ref()
                .is_none_or(|apps| apps.iter().any(|a| a == app))
    }
}

fn backoffice(p: &Properties) -> Result<Option<BackofficeCredentials>, Error> {
    let user = string(p, "session.backoffice.user");
    let hash = string(p, "session.backoffice.password.hash");
    let fail = |key: &str, reason: &str| Error::Secret {
        origin: setting(p, key).source,
        key: key.to_owned(),
        reason: reason.to_owned(),
    };
    match (user.is_empty(), hash.is_empty()) {
        (true, true) => Ok(None),
        (false, true) => Err(fail(
            "session.backoffice.user",
            "is set but session.backoffice.password.hash is not (make one with: session-failover hash-password)",
        )),
        (true, false) => Err(fail(
            "session.backoffice.password.hash",
            "is set but session.backoffice.user is not",
        )),
        (false, false) => {
            // The user becomes the operator's session principal.
            crate::session::validate_principal(&user)
                .map_err(|e| fail("session.backoffice.user", &e.to_string()))?;
            // Without the backoffice compiled in, the hash is kept but never checked against.
            #[cfg(feature = "backoffice")]
            argon2::password_hash::PasswordHash::new(&hash).map_err(|_| {
                fail(
                    "session.backoffice.password.hash",
                    "is not an argon2 PHC string ($argon2id$v=19$...); make one with: session-failover hash-password",
                )
            })?;
            Ok(Some(BackofficeCredentials {
                user,
                password_hash: hash,
            }))
        }
    }
}

/// The fewest different characters a secret may have. Low enough for any random secret (a
/// random 64-character hex string has 16 different ones, rarely fewer than 13), high enough to
/// refuse a few characters repeated.
const MIN_SECRET_DISTINCT: usize = 10;

fn secrets(p: &Properties) -> Result<Option<Secrets>, Error> {
    let check = |key: &str, value: &str| {
        let length = value.chars().count();
        if length < crate::codec::MIN_SECRET_LEN {
            return Err(Error::Secret {
                origin: setting(p, key).source,
                key: key.to_owned(),
                reason: format!(
                    "a secret must be at least {} characters; this one has {length} \
                     (generate one with: openssl rand -base64 48)",
                    crate::codec::MIN_SECRET_LEN
                ),
            });
        }
        // A comma would split it in two once it moves to session.secret.previous (a list).
        if value.contains(',') {
            return Err(Error::Secret {
                origin: setting(p, key).source,
                key: key.to_owned(),
                reason: "a secret must not contain a comma (session.secret.previous lists \
                         secrets separated by commas, so a rotation would split it): generate \
                         one with: openssl rand -base64 48"
                    .to_owned(),
            });
        }
        // Long but guessable: a few characters repeated (64 × "a", "abab…"). A random
        // base64 secret of 64 characters has about 40 different ones.
        let distinct = value
            .chars()
            .collect::<std::collections::BTreeSet<_>>()
            .len();
        if distinct < MIN_SECRET_DISTINCT {
            return Err(Error::Secret {
                origin: setting(p, key).source,
                key: key.to_owned(),
                reason: format!(
                    "this secret repeats a few characters (it has {distinct} different \
                     characters; at least {MIN_SECRET_DISTINCT} are needed): generate one with: \
                     openssl rand -base64 48"
                ),
            });
        }
        Ok(zeroize::Zeroizing::new(value.to_owned()))
    };
    let current = string(p, "session.secret");
    let previous = string(p, "session.secret.previous");
    if current.is_empty() {
        if !previous.is_empty() {
            return Err(Error::Secret {
                origin: setting(p, "session.secret.previous").source,
                key: "session.secret.previous".to_owned(),
                reason: "is set but session.secret is not: set the current secret too".to_owned(),
            });
        }
        return Ok(None);
    }
    Ok(Some(Secrets {
        current: check("session.secret", &current)?,
        previous: previous
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| check("session.secret.previous", s))
            .collect::<Result<_, _>>()?,
    }))
}

/// The values that cannot be used, gathered so that all are reported at once.
#[derive(Default)]
struct Problems(Vec<Error>);

impl Problems {
    fn push(&mut self, error: Error) {
        self.0.push(error);
    }

    /// The value, or its type's default (never used: the configuration is refused) after
    /// noting why it cannot be had.
    fn ok<T: Default>(&mut self, result: Result<T, Error>) -> T {
        result.unwrap_or_else(|error| {
            self.push(error);
            T::default()
        })
    }

    fn into_result<T>(mut self, value: T) -> Result<T, Error> {
        // A key read for two settings (session.store.timeout) is reported once, and all in
        // the order an operator reads them: file by file, line by line, then the environment.
        let mut seen = std::collections::HashSet::new();
        self.0.retain(|error| seen.insert(error.to_string()));
        self.0.sort_by_key(|error| match error {
            Error::Invalid { origin, .. }
            | Error::Placeholder { origin, .. }
            | Error::Secret { origin, .. } => match origin {
                Source::Builtin => (0, String::new(), 0),
                Source::File { path, line } => (1, path.display().to_string(), *line),
                Source::Env { var } => (2, var.clone(), 0),
            },
            _ => (3, String::new(), 0),
        });
        match self.0.len() {
            0 => Ok(value),
            1 => Err(self.0.remove(0)),
            _ => Err(Error::Several(self.0)),
        }
    }
}

fn setting(p: &Properties, key: &str) -> Setting {
    p.get(key).cloned().unwrap_or(Setting {
        value: String::new(),
        source: Source::Builtin,
    })
}

fn string(p: &Properties, key: &str) -> String {
    setting(p, key).value
}

fn invalid(key: &str, setting: &Setting, expected: &str) -> Error {
    Error::Invalid {
        origin: setting.source.clone(),
        key: key.to_owned(),
        value: setting.value.clone(),
        expected: expected.to_owned(),
    }
}

fn required(p: &Properties, key: &str, expected: &str) -> Result<String, Error> {
    let s = setting(p, key);
    if s.value.is_empty() {
        return Err(invalid(key, &s, expected));
    }
    Ok(s.value)
}

fn boolean(p: &Properties, key: &str) -> Result<bool, Error> {
    let s = setting(p, key);
    parse_bool(&s.value).ok_or_else(|| invalid(key, &s, "true or false"))
}

fn optional_bool(key: &str, s: &Setting) -> Result<Option<bool>, Error> {
    if s.value.is_empty() {
        return Ok(None);
    }
    parse_bool(&s.value)
        .map(Some)
        .ok_or_else(|| invalid(key, s, "true, false or no value"))
}

fn parse_bool(value: &str) -> Option<bool> {
    if value.eq_ignore_ascii_case("true") {
        Some(true)
    } else if value.eq_ignore_ascii_case("false") {
        Some(false)
    } else {
        None
    }
}

fn number(p: &Properties, key: &str, min: u64, max: u64) -> Result<u64, Error> {
    let s = setting(p, key);
    Some(s.value.as_str())
        .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|n| (min..=max).contains(n))
        .ok_or_else(|| invalid(key, &s, &format!("a whole number from {min} to {max}")))
}

fn millis(p: &Properties, key: &str, min: u64, max: u64) -> Result<Duration, Error> {
    number(p, key, min, max).map(Duration::from_millis)
}

fn usize_number(p: &Properties, key: &str, min: u64, max: u64) -> Result<usize, Error> {
    let n = number(p, key, min, max)?;
    usize::try_from(n).map_err(|_| invalid(key, &setting(p, key), "a smaller number"))
}

/// RFC 6265 cookie-name: an HTTP token.
pub(crate) fn valid_cookie_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

pub(crate) fn valid_cookie_path(path: &str) -> bool {
    path.starts_with('/') && !path.bytes().any(|b| b == b';' || b.is_ascii_control())
}

#[cfg(test)]
mod tests;
