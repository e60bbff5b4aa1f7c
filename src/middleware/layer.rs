//! The [`SessionFailoverLayer`] and its builder methods.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tower::Layer;

use super::app::AppShared;
use super::service::SessionFailover;
use super::settings::AppSettings;
use crate::codec::Codec;
use crate::config::{Config, SaveMode};
use crate::persist::{DrainReport, Persistence, Persister, WriterConfig};
use crate::store::SessionStore;

/// The failover filter of one application (a Commerce "extension").
///
/// Without a store it keeps memory-only sessions (lost when the node stops). With one, changed
/// sessions are written to it and restored from it on any node whose cache does not hold them.
///
/// ```
/// use std::sync::{Arc, OnceLock};
/// use axum::{Router, routing::get};
/// use session_failover::{SessionFailoverLayer, Session, SaveMode, store::MemoryStore};
///
/// async fn visits(session: Session) -> String {
///     let n: u64 = session.get("visits").unwrap_or(0) + 1;
///     session.insert("visits", n);
///     n.to_string()
/// }
///
/// let store = Arc::new(MemoryStore::new());
/// let app: Router = Router::new()
///     .route("/", get(visits))
///     .layer(SessionFailoverLayer::new("storefront").with_store(store, SaveMode::Sync));
/// ```
///
/// The builder methods only change settings; the shared state (the node cache, the metrics
/// handles) is built once, when the layer first wraps a service, and every clone of the layer
/// made after configuration shares it.
#[derive(Clone)]
pub struct SessionFailoverLayer {
    settings: AppSettings,
    persister: Option<Persister>,
    /// Built on the first [`Layer::layer`] and shared by the clones; reset by every builder
    /// method (a layer reconfigured is a new application state).
    shared: Arc<OnceLock<Arc<AppShared>>>,
}

impl std::fmt::Debug for SessionFailoverLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionFailoverLayer")
            .field("settings", &self.settings)
            .field("mode", &self.persister.as_ref().map(Persister::mode))
            .finish_non_exhaustive()
    }
}

impl SessionFailoverLayer {
    /// A memory-only layer for application `app` with the defaults: cookie `JSESSIONID` on path
    /// `/`, `HttpOnly`, `SameSite=Lax`, `Secure` when the request is secure, a 3600 s timeout,
    /// 100,000 cached sessions checked against the store at most once a second, node name
    /// `"node"`.
    pub fn new(app: impl Into<String>) -> Self {
        let settings = AppSettings {
            app: app.into(),
            context_path: "/".to_owned(),
            cookie_name: "JSESSIONID".to_owned(),
            cookie_path: None,
            secure: None,
            http_only: None,
            timeout: Duration::from_secs(3600),
            node: "node".to_owned(),
            cache_max_entries: 100_000,
            verify_every: Duration::from_millis(crate::config::DEFAULT_VERIFY_INTERVAL_MS),
            codec: Codec::default(),
            check: false,
            check_response_error: false,
            max_size: crate::config::DEFAULT_MAX_SIZE,
        };
        Self::build(settings, None)
    }

    /// The layer for `app` as configured: cookie settings from `spring.session.<app>.*`, timeout,
    /// node name and cache size from `session.*`, and `persistence` used only if failover is
    /// enabled and the app has a save mode. Apps of one process share one [`Persistence`].
    pub fn from_config(
        config: &Config,
        app: &str,
        context_path: &str,
        node: &str,
        persistence: Option<Persistence>,
    ) -> Self {
        let app_config = config.app(app);
        let settings = AppSettings {
            app: app.to_owned(),
            context_path: context_path.to_owned(),
            cookie_name: app_config.cookie_name,
            cookie_path: app_config.cookie_path,
            secure: app_config.secure,
            http_only: app_config.http_only,
            timeout: config.timeout,
            node: node.to_owned(),
            cache_max_entries: config.cache_max_entries,
            verify_every: config.cache_verify_interval,
            codec: config.codec(),
            check: config.check_covers(app),
            check_response_error: config.check.response_error,
            max_size: config.max_size,
        };
        let persister = match (config.save_mode(app), persistence) {
            (Some(mode), Some(persistence)) => Some(Persister::new(persistence, mode)),
            _ => None,
        };
        Self::build(settings, persister)
    }

    fn build(settings: AppSettings, persister: Option<Persister>) -> Self {
        Self {
            settings,
            persister,
            shared: Arc::default(),
        }
    }

    fn rebuild(mut self, change: impl FnOnce(&mut AppSettings)) -> Self {
        change(&mut self.settings);
        Self::build(self.settings, self.persister)
    }

    /// The application's shared state, built on first use.
    fn shared(&self) -> &Arc<AppShared> {
        self.shared.get_or_init(|| {
            let settings = self.settings.clone();
            let persistent = self.persister.is_some();
            let metrics = crate::metrics::AppMetrics::new(&settings.app);
            Arc::new(AppShared {
                cache: crate::cache::NodeCache::new(
                    &settings.app,
                    settings.cache_max_entries,
                    settings.timeout,
                    persistent,
                    metrics.cache_entries.clone(),
                ),
                metrics,
                push: super::push::Push::new(settings.cache_max_entries, settings.timeout),
                verify_paused_until: std::sync::atomic::AtomicI64::new(0),
                verify_failures: std::sync::atomic::AtomicU32::new(0),
                foreign_warned_at: std::sync::atomic::AtomicI64::new(0),
                foreign_quiet: std::sync::atomic::AtomicU64::new(0),
                version_cookie: format!("{}_VERSION", settings.cookie_name),
                absent: moka::sync::Cache::builder()
                    .max_capacity(super::app::ABSENT_MAX)
                    .time_to_live(super::app::ABSENT_TTL)
                    .build(),
                emptied_watch: std::sync::OnceLock::new(),
                codec: settings.codec.clone(),
                persister: self.persister.clone(),
                settings: Arc::new(settings),
            })
        })
    }

    /// Persists sessions to `store` in `mode` with the defaults: each store call bounded by 5 s,
    /// sync saves grouped, async saves every 5 s (see [`WriterConfig`]). Default: none
    /// (memory-only sessions). Call [`SessionFailoverLayer::drain`] at shutdown.
    pub fn with_store(self, store: Arc<dyn SessionStore>, mode: SaveMode) -> Self {
        let persistence = Persistence::new(
            store,
            WriterConfig::default(),
            crate::store::StoreOptions::default().timeout,
            true,
        );
        self.with_persistence(persistence, mode)
    }

    /// Persists sessions through `persistence` (shared with other apps of the process) in `mode`.
    pub fn with_persistence(self, persistence: Persistence, mode: SaveMode) -> Self {
        Self::build(self.settings, Some(Persister::new(persistence, mode)))
    }

    /// Writes what the write-behind writer still holds, for at most `timeout`; call it at
    /// graceful shutdown (async mode loses what is not drained). `None` for memory-only apps.
    pub async fn drain(&self, timeout: Duration) -> Option<DrainReport> {
        match &self.persister {
            Some(persister) => Some(persister.persistence().shutdown(timeout).await),
            None => None,
        }
    }

    /// The path the application is mounted at; the cookie path unless set. Default `/`.
    pub fn with_context_path(self, path: impl Into<String>) -> Self {
        let path = path.into();
        self.rebuild(|s| s.context_path = path)
    }

    /// The session cookie's name. Default `JSESSIONID`.
    ///
    /// # Panics
    /// If `name` is not an RFC 6265 token (a programming error; configuration is validated
    /// before it gets here).
    pub fn with_cookie_name(self, name: impl Into<String>) -> Self {
        let name = name.into();
        assert!(
            crate::config::valid_cookie_name(&name),
            "invalid session cookie name {name:?}: use letters, digits and !#$%&'*+-.^_`|~"
        );
        self.rebuild(|s| s.cookie_name = name)
    }

    /// The session cookie's path. Default: the context path.
    ///
    /// # Panics
    /// If `path` does not start with `/` or holds `;` or control characters.
    pub fn with_cookie_path(self, path: impl Into<String>) -> Self {
        let path = path.into();
        assert!(
            crate::config::valid_cookie_path(&path),
            "invalid session cookie path {path:?}: start with / and use no ; or control characters"
        );
        self.rebuild(|s| s.cookie_path = Some(path))
    }

    /// The cookie's `Secure` attribute; `None` (the default): set when the request is secure.
    pub fn with_secure(self, secure: Option<bool>) -> Self {
        self.rebuild(|s| s.secure = secure)
    }

    /// The cookie's `HttpOnly` attribute; `None` (the default): set. Scripts have no business
    /// reading a session id.
    pub fn with_http_only(self, http_only: Option<bool>) -> Self {
        self.rebuild(|s| s.http_only = http_only)
    }

    /// The largest session that is saved, in bytes of encoded attributes before compression
    /// (`session.max.size`), clamped to 1 KiB ..= 16 MiB. A larger one is refused: the request
    /// is answered 500 and its change dropped. Default 1 MiB.
    pub fn with_max_size(self, bytes: usize) -> Self {
        let bytes = bytes.clamp(1024, crate::codec::MAX_DECODED_LEN);
        self.rebuild(|s| s.max_size = bytes)
    }

    /// Inactivity before a session expires, in cache and store, clamped to 1 s ..= 365 days.
    /// Default 3600 s.
    pub fn with_timeout(self, timeout: Duration) -> Self {
        let timeout = timeout.clamp(Duration::from_secs(1), Duration::from_secs(365 * 86_400));
        self.rebuild(|s| s.timeout = timeout)
    }

    /// The name written to the `node` column. Default `"node"`.
    pub fn with_node_name(self, node: impl Into<String>) -> Self {
        let node = node.into();
        self.rebuild(|s| s.node = node)
    }

    /// How sessions are stored: e.g. `Codec::default().with_keys(Keys::new(secret, &[])?)` to
    /// encrypt them. Default: compressed, not encrypted.
    pub fn with_codec(self, codec: Codec) -> Self {
        self.rebuild(|s| s.codec = codec)
    }

    /// Runs the serializability checker on every save (a development feature; see
    /// [`crate::check`]); with `response_error`, a session that would not survive failover
    /// answers 500. Default: off, and then it costs nothing.
    pub fn with_serialization_check(self, enabled: bool, response_error: bool) -> Self {
        self.rebuild(|s| {
            s.check = enabled;
            s.check_response_error = response_error;
        })
    }

    /// Sessions kept in this node's cache. Default 100,000.
    pub fn with_cache_max_entries(self, max: u64) -> Self {
        self.rebuild(|s| s.cache_max_entries = max)
    }

    /// How long a session is served from this node's cache before the version of its row is
    /// checked again (one cheap read; a newer row written by another node is refreshed, a
    /// deleted one ends the session here): the bound on how stale a read can be after another
    /// node changed or ended the session (`session.cache.verify.interval`, default 1 s).
    /// `Duration::ZERO` checks on every request. Only copies without changes of their own
    /// waiting to be saved are checked; memory-only apps never are.
    pub fn with_verify_interval(self, every: Duration) -> Self {
        self.rebuild(|s| s.verify_every = every)
    }
}

impl SessionFailoverLayer {
    /// Ends the session stored under `key` in this node's cache, if the cache holds it: for a
    /// session deleted by an operator, so this node stops serving it at once (other nodes stop
    /// at their next write or touch of it). Scans the cache: an operator's action, not a
    /// request's. `true` if it was held here.
    pub fn forget(&self, key: &crate::id::SessionKey) -> bool {
        // Not yet serving: nothing is cached.
        let Some(shared) = self.shared.get() else {
            return false;
        };
        let mut found = false;
        for (id, entry) in shared.cache.iter() {
            if id.store_key() == *key {
                entry.lock().end();
                found = true;
            }
        }
        found
    }
}

impl<S> Layer<S> for SessionFailoverLayer {
    type Service = SessionFailover<S>;

    fn layer(&self, inner: S) -> Self::Service {
        SessionFailover {
            inner,
            app: Arc::clone(self.shared()),
        }
    }
}
