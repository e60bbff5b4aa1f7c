//! The two servers the benchmark compares session-failover with, serving the demo storefront's
//! routes with the same JSON shapes (`src/server/storefront.rs` in the main crate):
//!
//! | route | answer |
//! |---|---|
//! | `GET /health` | `ok` |
//! | `GET /cart` | `{"user", "items": [{"sku", "qty"}], "count"}` |
//! | `POST /cart/items` | adds `{"sku", "qty"}` and answers the cart |
//! | `DELETE /cart/items/{sku}` | removes the line and answers the cart (404 if there is none) |
//!
//! - [`ceiling`]: no session layer. Each user's cart lives in a process-global map under a plain
//!   `uid` cookie, so the answers are byte for byte those of the storefront, but nothing is
//!   encoded, persisted or expired: the cost of HTTP, routing, JSON and the cart itself, which
//!   no session layer can beat.
//! - [`tower_sessions`]: tower-sessions 0.14 with tower-sessions-sqlx-store 0.15 (PostgreSQL or
//!   SQLite) or tower-sessions-redis-store 0.16 (Redis, fred 10), optionally behind a moka cache (`CachingSessionStore`), which is what a Rust user
//!   would pick instead of session-failover.

use std::net::SocketAddr;

use axum::extract::Path;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;

/// A cart line, as in the storefront.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CartItem {
    /// The product's stock-keeping unit.
    pub sku: String,
    /// How many.
    pub qty: u32,
}

/// The cart kept in the session.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Cart {
    items: Vec<CartItem>,
}

/// What the cart routes answer.
#[derive(Debug, Serialize, Deserialize)]
pub struct CartView {
    /// The signed-in user, if any (always `null` here: the benchmark does not sign in).
    pub user: Option<String>,
    /// The cart lines.
    pub items: Vec<CartItem>,
    /// Total quantity.
    pub count: u32,
}

const CART: &str = "cart";
const MAX_SKU_LEN: usize = 64;
const MAX_QTY: u32 = 999;
const MAX_LINES: usize = 100;

fn view(cart: Cart) -> Json<CartView> {
    Json(CartView {
        user: None,
        count: cart.items.iter().map(|i| i.qty).sum(),
        items: cart.items,
    })
}

fn unprocessable(message: &str) -> Response {
    (
        StatusCode::UNPROCESSABLE_ENTITY,
        Json(serde_json::json!({ "error": message })),
    )
        .into_response()
}

/// The storefront's validation of an added line.
fn validate(item: &mut CartItem) -> Result<(), &'static str> {
    item.sku = item.sku.trim().to_owned();
    if item.sku.is_empty()
        || item.sku.chars().count() > MAX_SKU_LEN
        || item.sku.chars().any(char::is_control)
    {
        return Err("sku must be 1 to 64 characters");
    }
    if !(1..=MAX_QTY).contains(&item.qty) {
        return Err("qty must be from 1 to 999");
    }
    Ok(())
}

/// The storefront's merge of an added line into a cart.
fn add(cart: &mut Cart, item: CartItem) -> Result<(), &'static str> {
    if let Some(line) = cart.items.iter_mut().find(|line| line.sku == item.sku) {
        if line.qty + item.qty > MAX_QTY {
            return Err("too many of one sku");
        }
        line.qty += item.qty;
    } else if cart.items.len() >= MAX_LINES {
        return Err("too many lines");
    } else {
        cart.items.push(item);
    }
    Ok(())
}

fn no_such_line() -> Response {
    (
        StatusCode::NOT_FOUND,
        Json(serde_json::json!({ "error": "no such line" })),
    )
        .into_response()
}

/// Binds `bind`, prints `listening on http://ADDR` (the driver reads it), and serves `router`
/// until SIGTERM.
async fn serve(router: Router, bind: SocketAddr) -> anyhow::Result<()> {
    let listener = TcpListener::bind(bind).await?;
    println!("listening on http://{}", listener.local_addr()?);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    axum::serve(listener, router)
        .with_graceful_shutdown(async move {
            term.recv().await;
        })
        .await?;
    Ok(())
}

/// The ceiling: the same app without a session layer.
pub mod ceiling {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};

    use axum::extract::State;
    use axum::http::{HeaderMap, HeaderValue, header};

    use super::*;

    /// Each user's cart in a process-global map, keyed by a plain `uid` cookie: what an app
    /// would do with no session library and no failover. Nothing is encoded, persisted or
    /// expired.
    #[derive(Clone, Default)]
    struct Carts(Arc<Mutex<HashMap<u64, Cart>>>);

    fn uid(headers: &HeaderMap) -> Option<u64> {
        headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(';'))
            .find_map(|pair| pair.trim().strip_prefix("uid="))
            .and_then(|value| u64::from_str_radix(value, 16).ok())
    }

    fn cart_of(carts: &Carts, headers: &HeaderMap) -> Cart {
        uid(headers)
            .and_then(|uid| carts.0.lock().expect("not poisoned").get(&uid).cloned())
            .unwrap_or_default()
    }

    /// Stores `cart` for the request's user, or a new one (answering its cookie).
    fn store(carts: &Carts, headers: &HeaderMap, cart: Cart) -> Option<HeaderValue> {
        let mut map = carts.0.lock().expect("not poisoned");
        match uid(headers).filter(|uid| map.contains_key(uid)) {
            Some(uid) => {
                map.insert(uid, cart);
                None
            }
            None => {
                let uid = loop {
                    let uid = rand_u64();
                    if !map.contains_key(&uid) {
                        break uid;
                    }
                };
                map.insert(uid, cart);
                HeaderValue::from_str(&format!("uid={uid:016x}; Path=/; HttpOnly")).ok()
            }
        }
    }

    fn rand_u64() -> u64 {
        use std::hash::{BuildHasher, Hasher};
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
        );
        hasher.finish()
    }

    fn answer(cart: Cart, cookie: Option<HeaderValue>) -> Response {
        let mut response = view(cart).into_response();
        if let Some(cookie) = cookie {
            response.headers_mut().insert(header::SET_COOKIE, cookie);
        }
        response
    }

    async fn cart(State(carts): State<Carts>, headers: HeaderMap) -> Json<CartView> {
        view(cart_of(&carts, &headers))
    }

    async fn add_item(
        State(carts): State<Carts>,
        headers: HeaderMap,
        Json(mut item): Json<CartItem>,
    ) -> Response {
        if let Err(message) = validate(&mut item) {
            return unprocessable(message);
        }
        let mut cart = cart_of(&carts, &headers);
        if let Err(message) = add(&mut cart, item) {
            return unprocessable(message);
        }
        let cookie = store(&carts, &headers, cart.clone());
        answer(cart, cookie)
    }

    async fn remove_item(
        State(carts): State<Carts>,
        headers: HeaderMap,
        Path(sku): Path<String>,
    ) -> Response {
        let mut cart = cart_of(&carts, &headers);
        let before = cart.items.len();
        cart.items.retain(|line| line.sku != sku);
        if cart.items.len() == before {
            return no_such_line();
        }
        let cookie = store(&carts, &headers, cart.clone());
        answer(cart, cookie)
    }

    /// Serves the ceiling on `bind`.
    pub async fn run(bind: SocketAddr) -> anyhow::Result<()> {
        let router = Router::new()
            .route("/health", get(|| async { "ok" }))
            .route("/cart", get(cart))
            .route("/cart/items", post(add_item))
            .route("/cart/items/{sku}", delete(remove_item))
            .with_state(Carts::default());
        serve(router, bind).await
    }
}

/// tower-sessions with tower-sessions-sqlx-store.
pub mod tower_sessions {
    use std::str::FromStr;
    use std::time::Duration;

    use ::tower_sessions::{
        CachingSessionStore, Expiry, Session, SessionManagerLayer, SessionStore,
    };
    use sqlx::postgres::PgPoolOptions;
    use sqlx::sqlite::{
        SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous,
    };
    use tower_sessions_moka_store::MokaStore;
    use tower_sessions_sqlx_store::{PostgresStore, SqliteStore};

    use super::*;

    /// Which store tower-sessions uses.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
    pub enum StoreKind {
        /// `PostgresStore`.
        Postgres,
        /// `CachingSessionStore<MokaStore, PostgresStore>`.
        PostgresMoka,
        /// `SqliteStore`.
        Sqlite,
        /// tower-sessions-redis-store's `RedisStore` over a fred pool.
        Redis,
    }

    fn internal(error: impl std::fmt::Display) -> Response {
        (StatusCode::INTERNAL_SERVER_ERROR, error.to_string()).into_response()
    }

    async fn cart(session: Session) -> Response {
        match session.get::<Cart>(CART).await {
            Ok(cart) => view(cart.unwrap_or_default()).into_response(),
            Err(error) => internal(error),
        }
    }

    async fn add_item(session: Session, Json(mut item): Json<CartItem>) -> Response {
        if let Err(message) = validate(&mut item) {
            return unprocessable(message);
        }
        let mut cart = match session.get::<Cart>(CART).await {
            Ok(cart) => cart.unwrap_or_default(),
            Err(error) => return internal(error),
        };
        if let Err(message) = add(&mut cart, item) {
            return unprocessable(message);
        }
        match session.insert(CART, &cart).await {
            Ok(()) => view(cart).into_response(),
            Err(error) => internal(error),
        }
    }

    async fn remove_item(session: Session, Path(sku): Path<String>) -> Response {
        let mut cart = match session.get::<Cart>(CART).await {
            Ok(cart) => cart.unwrap_or_default(),
            Err(error) => return internal(error),
        };
        let before = cart.items.len();
        cart.items.retain(|line| line.sku != sku);
        if cart.items.len() == before {
            return no_such_line();
        }
        match session.insert(CART, &cart).await {
            Ok(()) => view(cart).into_response(),
            Err(error) => internal(error),
        }
    }

    fn router<S: SessionStore + Clone>(store: S) -> Router {
        // As a user would set it up: an inactivity timeout like session-failover's default, the
        // store's defaults otherwise (saved when modified).
        let layer = SessionManagerLayer::new(store)
            .with_secure(false)
            .with_expiry(Expiry::OnInactivity(time::Duration::hours(1)));
        Router::new()
            .route("/cart", get(cart))
            .route("/cart/items", post(add_item))
            .route("/cart/items/{sku}", delete(remove_item))
            .layer(layer)
            .route("/health", get(|| async { "ok" }))
    }

    /// Serves the storefront routes with tower-sessions on `bind`, its store at `url`.
    ///
    /// The pools are tuned as DEPENDENCIES.md recommends, so the comparison is with
    /// tower-sessions at its best: no ping before each acquire (`test_before_acquire(false)`,
    /// +42 % reads), the same pool size as session-failover (10), and SQLite in WAL mode with
    /// `synchronous = NORMAL` and a busy timeout.
    pub async fn run(bind: SocketAddr, kind: StoreKind, url: &str) -> anyhow::Result<()> {
        let router = match kind {
            StoreKind::Postgres | StoreKind::PostgresMoka => {
                let pool = PgPoolOptions::new()
                    .max_connections(10)
                    .test_before_acquire(false)
                    .connect(url)
                    .await?;
                let store = PostgresStore::new(pool);
                store.migrate().await?;
                if kind == StoreKind::PostgresMoka {
                    let cache = MokaStore::new(Some(100_000));
                    router(CachingSessionStore::new(cache, store))
                } else {
                    router(store)
                }
            }
            StoreKind::Redis => {
                use tower_sessions_redis_store::fred::prelude::{ClientLike as _, Config, Pool};
                // A pool of 6 connections, as the crate's README sets it up.
                let pool = Pool::new(Config::from_url(url)?, None, None, None, 6)?;
                pool.init().await?;
                router(tower_sessions_redis_store::RedisStore::new(pool))
            }
            StoreKind::Sqlite => {
                let options = SqliteConnectOptions::from_str(url)?
                    .create_if_missing(true)
                    .journal_mode(SqliteJournalMode::Wal)
                    .synchronous(SqliteSynchronous::Normal)
                    .busy_timeout(Duration::from_secs(5));
                let pool = SqlitePoolOptions::new()
                    .max_connections(10)
                    .test_before_acquire(false)
                    .connect_with(options)
                    .await?;
                let store = SqliteStore::new(pool);
                store.migrate().await?;
                router(store)
            }
        };
        serve(router, bind).await
    }
}
