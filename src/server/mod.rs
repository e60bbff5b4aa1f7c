//! The runnable server: the demo storefront behind the failover filter.
//!
//! [`app`] builds the router (testable with `tower::ServiceExt::oneshot`); [`serve`] binds,
//! prints `session-failover listening on http://ADDR` on stdout, and runs until SIGTERM or
//! SIGINT, finishing the requests in flight.

pub mod storefront;

use std::future::Future;
use std::net::SocketAddr;

use axum::Router;
use axum::routing::get;
use tokio::net::TcpListener;

use crate::config::Config;
use crate::middleware::SessionFailoverLayer;
use crate::persist::Persistence;
use crate::store;
use std::sync::Arc;

/// The demo storefront's application name (its `spring.session.<app>.*` keys).
pub const STOREFRONT_APP: &str = "storefront";
/// Where the storefront is mounted.
pub const STOREFRONT_CONTEXT_PATH: &str = "/";

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The session store could not be opened or migrated.
    #[error("cannot open the session store")]
    Store(#[from] store::Error),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr} (server.bind / --bind)")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Serving failed.
    #[error("server error")]
    Io(#[from] std::io::Error),
}

/// Opens the configured store if any application persists sessions; `None` otherwise.
pub async fn open_store(config: &Config) -> Result<Option<Persistence>, store::Error> {
    for app in config
        .apps
        .keys()
        .filter(|app| ![STOREFRONT_APP, crate::backoffice::APP].contains(&app.as_str()))
    {
        tracing::warn!(
            "spring.session.{app}.* configures an application this server does not run (it runs {STOREFRONT_APP} and {}); check the spelling",
            crate::backoffice::APP
        );
    }
    if config.save_mode(STOREFRONT_APP).is_none() {
        if !config.enabled {
            tracing::warn!(
                "spring.session.enabled=false: sessions are memory-only and lost when this node stops"
            );
        } else {
            tracing::warn!(
                "spring.session.{STOREFRONT_APP}.save is not set: {STOREFRONT_APP} sessions are memory-only and lost when this node stops"
            );
        }
        return Ok(None);
    }
    match (&config.backoffice, config.save_mode(STOREFRONT_APP)) {
        (None, _) => tracing::info!(
            "the backoffice is off: set session.backoffice.user and session.backoffice.password.hash to turn it on"
        ),
        (Some(_), None) => tracing::warn!(
            "the backoffice is off: it shows persisted sessions, and failover is not on (no store is opened)"
        ),
        (Some(_), Some(_)) => tracing::info!("the backoffice is at /backoffice"),
    }
    if config.secrets.is_some() && config.accept_plaintext {
        tracing::warn!(
            "session.secret.accept.plaintext=true: unencrypted sessions are still read, so whoever can write to the table can forge one; turn it off once the old sessions have expired"
        );
    }
    if config.secrets.is_none() {
        tracing::warn!(
            "session.secret is not set: sessions are stored unencrypted (set a secret of at least 64 characters to encrypt them)"
        );
    }
    let store = store::open(&config.store_url, &config.store).await?;
    // One read of the table, so that a store without it (session.store.migrate=false on a
    // database nobody migrated) stops start-up instead of failing every save.
    let probe = crate::id::SessionId::generate().store_key();
    tokio::time::timeout(
        config.store.timeout,
        store.exists(&probe, store::now_millis()),
    )
    .await
    .map_err(|_| store::Error::Timeout(config.store.timeout))??;
    tracing::info!(url = %store::redact_url(&config.store_url), "session store ready");
    Ok(Some(Persistence::from_config(store, config)))
}

/// The router of the whole server: `/health`, `/metrics`, the storefront behind its session
/// layer, and the backoffice behind its own (when configured).
pub fn app(config: &Config, node: &str, persistence: Option<Persistence>) -> Router {
    let layer = SessionFailoverLayer::from_config(
        config,
        STOREFRONT_APP,
        STOREFRONT_CONTEXT_PATH,
        node,
        persistence.clone(),
    );
    let admin = persistence.as_ref().and_then(Persistence::admin);
    let backoffice = match (&config.backoffice, admin) {
        (Some(credentials), Some(admin)) => {
            let backoffice = crate::backoffice::Backoffice::new(
                Arc::clone(admin),
                config.codec(),
                credentials.user.clone(),
                credentials.password_hash.clone(),
                config.backoffice_show_values,
            )
            .with_local_layers(vec![layer.clone()]);
            let session = SessionFailoverLayer::from_config(
                config,
                crate::backoffice::APP,
                crate::backoffice::PATH,
                node,
                persistence.clone(),
            );
            Some(crate::backoffice::router(Arc::new(backoffice), session))
        }
        _ => None,
    };
    let store_health = StoreHealth::new(persistence.as_ref(), config.store.timeout);
    let router = Router::new()
        .route("/health", get(|| async { "ok\n" }))
        .route(
            "/health/store",
            get(move || {
                let health = store_health.clone();
                async move { health.check().await }
            }),
        )
        .merge(storefront::router().layer(layer))
        .merge(backoffice.unwrap_or_default());
    match config.metrics_bind {
        // Served on its own listener (see `serve`).
        Some(_) => router,
        None => router.route("/metrics", get(metrics_text)),
    }
}

/// `GET /health/store`: whether this node's session store answers (one read, bounded by the
/// store timeout). For a balancer whose nodes each have their own database node (a Galera node
/// each): a node whose database died is taken out, and its users go to nodes that can save.
/// With one database shared by every node, check `/health` instead: an outage of that database
/// would take every node out, where they still serve sticky reads from memory.
#[derive(Clone)]
struct StoreHealth {
    store: Option<Arc<dyn store::SessionStore>>,
    timeout: std::time::Duration,
    /// The last answer, so that a change of state is logged once, not at every check.
    up: Arc<std::sync::atomic::AtomicBool>,
}

impl StoreHealth {
    fn new(persistence: Option<&Persistence>, timeout: std::time::Duration) -> Self {
        Self {
            store: persistence.map(|p| Arc::clone(p.store())),
            timeout,
            up: Arc::new(std::sync::atomic::AtomicBool::new(true)),
        }
    }

    async fn check(&self) -> (axum::http::StatusCode, &'static str) {
        use axum::http::StatusCode;
        use std::sync::atomic::Ordering;
        let Some(store) = &self.store else {
            return (StatusCode::OK, "ok (no store)\n");
        };
        let answer = tokio::time::timeout(self.timeout, store.ping())
            .await
            .map_err(|_| store::Error::Timeout(self.timeout))
            .and_then(|answer| answer);
        let up = answer.is_ok();
        if self.up.swap(up, Ordering::Relaxed) != up {
            match answer {
                Ok(_) => tracing::info!("/health/store: the session store answers again"),
                Err(error) => tracing::warn!(
                    error = &error as &dyn std::error::Error,
                    "/health/store: the session store does not answer; this node reports itself down"
                ),
            }
        }
        if up {
            (StatusCode::OK, "ok\n")
        } else {
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "the session store does not answer\n",
            )
        }
    }
}

/// The process-wide Prometheus recorder, installed on first use.
fn prometheus() -> Option<&'static metrics_exporter_prometheus::PrometheusHandle> {
    static HANDLE: std::sync::OnceLock<Option<metrics_exporter_prometheus::PrometheusHandle>> =
        std::sync::OnceLock::new();
    HANDLE
        .get_or_init(|| {
            metrics_exporter_prometheus::PrometheusBuilder::new()
                .install_recorder()
                .inspect_err(|error| tracing::warn!(%error, "metrics recorder not installed; /metrics stays empty"))
                .ok()
        })
        .as_ref()
}

/// `GET /metrics`: Prometheus text (see [`crate::metrics`]).
async fn metrics_text() -> String {
    prometheus().map(|h| h.render()).unwrap_or_default()
}

/// Binds `bind` (or `server.bind`), then serves until `shutdown` completes.
pub async fn serve(
    config: Config,
    bind: Option<SocketAddr>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let addr = bind.unwrap_or(config.bind);
    prometheus();
    // The port first: a taken port should fail before anything touches the database.
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| Error::Bind { addr, source })?;
    let metrics_listener = match config.metrics_bind {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .map_err(|source| Error::Bind { addr, source })?,
        ),
        None => None,
    };
    let store = open_store(&config).await?;
    let local = listener.local_addr()?;
    let node = config
        .node_name
        .clone()
        .unwrap_or_else(|| format!("{}:{}", host_name(), local.port()));
    let router = app(&config, &node, store.clone());
    let stop_purge = std::sync::Arc::new(tokio::sync::Notify::new());
    let admin = store.as_ref().and_then(Persistence::admin);
    let purge = match (admin, config.purge_cron.is_empty()) {
        (Some(admin), false) => {
            let schedule = crate::purge::PurgeSchedule::parse(&config.purge_cron)
                .expect("validated with the configuration");
            let purger = crate::purge::Purger::new(
                std::sync::Arc::clone(admin),
                schedule,
                config.purge_batch_size,
                config.purge_jitter,
            );
            let stop = std::sync::Arc::clone(&stop_purge);
            Some(tokio::spawn(async move {
                purger.run_until_stopped(stop.notified()).await;
            }))
        }
        _ => None,
    };
    // One shutdown signal for every listener.
    let (stopping, stop) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stopping.send(true);
    });
    let stopped = |mut stop: tokio::sync::watch::Receiver<bool>| async move {
        let _ = stop.wait_for(|stopped| *stopped).await;
    };
    let metrics_server = match metrics_listener {
        Some(metrics_listener) => {
            let at = metrics_listener.local_addr()?;
            tracing::info!("metrics on http://{at}/metrics");
            let metrics = Router::new().route("/metrics", get(metrics_text));
            Some(tokio::spawn(
                axum::serve(metrics_listener, metrics)
                    .with_graceful_shutdown(stopped(stop.clone()))
                    .into_future(),
            ))
        }
        None => None,
    };
    tracing::info!(%node, "session-failover listening on http://{local}");
    // On stdout too, for scripts and tests that start the server on port 0.
    println!("session-failover listening on http://{local}");
    // The peer's address reaches handlers (the backoffice's sign-in lockouts).
    axum::serve(
        listener,
        router.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(stopped(stop))
    .await?;
    if let Some(metrics_server) = metrics_server {
        let _ = metrics_server.await;
    }
    stop_purge.notify_one();
    if let Some(purge) = purge {
        let _ = purge.await;
    }
    // The requests in flight have been answered; write what the writer still holds.
    if let Some(persistence) = store {
        persistence.shutdown(config.drain_timeout).await;
    }
    tracing::info!("stopped");
    Ok(())
}

/// Completes on SIGTERM or SIGINT (Ctrl-C).
pub async fn shutdown_signal() {
    let interrupt = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        () = interrupt => tracing::info!("SIGINT: finishing requests in flight"),
        () = terminate => tracing::info!("SIGTERM: finishing requests in flight"),
    }
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}
