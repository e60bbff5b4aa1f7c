//! # session-failover
//!
//! HTTP session failover for tower/axum services in the SAP Commerce style. Each node keeps its
//! sessions in memory (sticky load balancing sends a user back to the same node); a failover
//! filter persists changed sessions to a relational `stored_http_session` table, so that when a
//! node dies, restarts or is redeployed, any other node restores the session from the database.
//!
//! ## Quick start
//!
//! ```no_run
//! use axum::{Router, routing::post};
//! use session_failover::{Session, SessionFailoverLayer, SaveMode, store};
//!
//! # async fn run() -> anyhow::Result<()> {
//! let store = store::open("sqlite://data/sessions.db", &store::StoreOptions::default()).await?;
//! let app: Router = Router::new()
//!     .route("/cart", post(|session: Session| async move {
//!         let mut cart: Vec<String> = session.get("cart").unwrap_or_default();
//!         cart.push("SKU-1".into());
//!         session.insert("cart", cart);
//!     }))
//!     .layer(SessionFailoverLayer::new("storefront").with_store(store, SaveMode::Sync));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! axum::serve(listener, app).await?;
//! # Ok(()) }
//! ```
//!
//! ## Feature flags
//! The default set is everything (the binary and every backend). An application embedding the
//! layer picks what it needs, e.g. `default-features = false, features = ["postgres"]`, and
//! compiles none of the others.
//!
//! | feature | what it adds |
//! |---|---|
//! | `sqlite` | `store::SqliteStore`, the embedded default (SQLite compiled in) |
//! | `postgres` | `store::PgStore` |
//! | `mysql` | `store::MySqlStore` (MySQL and MariaDB) |
//! | `backoffice` | the operators' web backoffice (argon2, maud, typed headers) |
//! | `cli` | the `session-failover` binary: demo server, `sessions` command, Prometheus exporter |
//!
//! Without any backend feature, [`store::MemoryStore`] and stores of your own still work.
//!
//! ## Layout
//! - [`id`]: session ids, the store keys derived from them, and their short hashes for logs.
//! - [`config`]: `.properties` layers (defaults, `project.properties`, `local.properties`,
//!   environment) parsed into a typed [`Config`].
//! - [`session`]: attributes and the [`Session`] extractor (re-exports the ids).
//! - [`codec`]: the versioned, compressed, encrypted stored form of a session.
//! - [`check`]: the serializability checker (a development feature).
//! - [`store`]: [`SessionStore`] (what the layer needs), [`SessionAdmin`] (what operator tools
//!   add), one SQL store over three dialects, and an in-memory store.
//! - `cache`: the node cache (the Commerce "session cache region").
//! - [`persist`]: writing sessions to the store: sync, group commit, async write-behind.
//! - [`middleware`]: [`SessionFailoverLayer`], the failover filter.
//! - [`metrics`]: the counters and timings it records.
//! - [`purge`]: deleting expired rows on a cron schedule, one node at a time.
//! - [`admin`]: operator operations on stored sessions (the `sessions` command).
//! - `backoffice` (feature `backoffice`): the operators' web pages and JSON API.

pub mod admin;
#[cfg(feature = "backoffice")]
pub mod backoffice;
mod cache;
pub mod check;
pub mod codec;
pub mod config;
pub mod id;
#[cfg(feature = "backoffice")]
mod json;
pub mod metrics;
pub mod middleware;
pub mod persist;
pub mod purge;
#[doc(hidden)] // the binary's demo server; public only for the tests and benchmarks
#[cfg(feature = "cli")]
pub mod server;
pub mod session;
pub mod store;

pub use config::{Config, SaveMode};
pub use middleware::SessionFailoverLayer;
pub use session::Session;
pub use store::{SessionAdmin, SessionStore};

#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
