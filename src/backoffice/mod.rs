//! The backoffice (SAP Commerce "Browsing Persisted Sessions"): JSON endpoints under
//! `/backoffice/api` and a small server-rendered page at `/backoffice`, behind authentication.
//!
//! Credentials come from `session.backoffice.user` and `session.backoffice.password.hash` (an
//! argon2 PHC string: `session-failover hash-password` makes one). Without them the backoffice is
//! not mounted: every route is a 404. The page signs in with a form and keeps its own session:
//! the backoffice is an application of this very layer (`spring.session.backoffice.*`: cookie
//! `BACKOFFICESESSION` on path `/backoffice`, saved `sync` by default), so an operator stays
//! signed in when the balancer sends them to another node. The API also takes HTTP Basic
//! credentials, for scripts.
//!
//! Listings show metadata and attribute names, never values, unless
//! `session.backoffice.show.values=true` (then a session's page decodes them, decrypting with the
//! configured secret).

mod pages;
mod signin;

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{Next, from_fn_with_state};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{delete, get, post};

use crate::json::JsonLine;
use headers::HeaderMapExt as _;
use headers::authorization::{Authorization, Basic};
use serde::Deserialize;

use crate::admin;
use crate::codec::{Binding, Codec};
use crate::id::SessionKey;
use crate::store::{ListQuery, Meta, SessionAdmin};
use crate::{Session, SessionFailoverLayer};

/// Where the backoffice is mounted.
pub const PATH: &str = "/backoffice";
/// The backoffice's application name (its `spring.session.backoffice.*` keys).
pub const APP: &str = "backoffice";
const PAGE: u32 = 50;

/// The backoffice's settings and store.
pub struct Backoffice {
    store: Arc<dyn SessionAdmin>,
    /// The session layers of this process: a deleted session is ended in their caches at once.
    local: Vec<SessionFailoverLayer>,
    codec: Codec,
    user: String,
    /// Password checks: argon2 off the async threads, bounded, with lockouts.
    signins: signin::SignIns,
    show_values: bool,
}

impl std::fmt::Debug for Backoffice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backoffice")
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

impl Backoffice {
    /// A backoffice over `store` for `user` with the argon2 PHC `password_hash`.
    pub fn new(
        store: Arc<dyn SessionAdmin>,
        codec: Codec,
        user: String,
        password_hash: String,
        show_values: bool,
    ) -> Self {
        Self {
            store,
            local: Vec::new(),
            codec,
            signins: signin::SignIns::new(user.clone(), password_hash),
            user,
            show_values,
        }
    }

    /// Ends deleted sessions in these layers' node caches at once (the apps of this process).
    pub fn with_local_layers(mut self, layers: Vec<SessionFailoverLayer>) -> Self {
        self.local = layers;
        self
    }

    async fn delete(&self, key: &SessionKey) -> Result<bool, crate::store::Error> {
        for layer in &self.local {
            layer.forget(key);
        }
        admin::delete(&*self.store, key).await
    }

    /// Whether `session` is the operator's signed-in session.
    fn signed_in(&self, session: Option<&Session>) -> bool {
        session.is_some_and(|s| s.principal().as_deref() == Some(self.user.as_str()))
    }
}

/// The client's address, as the server saw the connection (none in tests without one); put in
/// every backoffice request's extensions by [`guard`], for the sign-in lockouts.
#[derive(Clone, Copy, Debug)]
struct ClientAddr(Option<std::net::IpAddr>);

/// The client's address: the connection's peer, or, when the peer is a balancer on this host
/// or a private network, the address that balancer appended last to `X-Forwarded-For` (the
/// shipped HAProxy and nginx files send it). Without this, every client behind the balancer
/// would share one address, and one guesser would lock all operators out.
fn client_address(peer: Option<std::net::IpAddr>, headers: &HeaderMap) -> Option<std::net::IpAddr> {
    let behind_balancer = peer.is_some_and(|ip| match ip {
        std::net::IpAddr::V4(v4) => v4.is_loopback() || v4.is_private(),
        std::net::IpAddr::V6(v6) => v6.is_loopback() || v6.is_unique_local(),
    });
    if !behind_balancer {
        return peer;
    }
    headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|hop| hop.trim().parse().ok())
        .next_back()
        .or(peer)
}

/// 429 with `Retry-After`: a sign-in that was not even checked.
fn too_many(checked: signin::Checked) -> Response {
    let (after, message) = match checked {
        signin::Checked::LockedOut => (
            signin::LOCKOUT.as_secs(),
            "too many failed sign-ins: try again later",
        ),
        _ => (1, "too many sign-ins at once: try again in a second"),
    };
    (
        StatusCode::TOO_MANY_REQUESTS,
        [(header::RETRY_AFTER, after.to_string())],
        JsonLine(serde_json::json!({ "error": message })),
    )
        .into_response()
}

/// The backoffice routes behind `session` (the backoffice's own session layer, for [`APP`] at
/// [`PATH`]), to merge into the server's router.
pub fn router(backoffice: Arc<Backoffice>, session: SessionFailoverLayer) -> Router {
    // Every route but sign-in and sign-out requires an operator: the API answers 401, the pages
    // redirect to the sign-in form. The session layer is outermost, so both can see the session.
    let api = Router::new()
        .route("/api/sessions", get(api_list))
        .route("/api/sessions/{key}", get(api_show).delete(api_delete))
        .route(
            "/api/principals/{principal}/sessions",
            delete(api_delete_principal),
        )
        .route("/api/stats", get(api_stats))
        .route_layer(from_fn_with_state(Arc::clone(&backoffice), require_api));
    let pages = Router::new()
        .route("/", get(pages::page))
        .route("/sessions/{key}", get(pages::detail_page))
        .route("/sessions/{key}/delete", post(pages::delete_from_page))
        .route_layer(from_fn_with_state(Arc::clone(&backoffice), require_page));
    // The guard is outermost: a cross-site request is refused before it loads a session.
    let routes = Router::new()
        .route("/login", get(pages::login_page).post(pages::login))
        .route("/logout", post(pages::logout))
        .merge(pages)
        .merge(api)
        .with_state(backoffice)
        .layer(session)
        .layer(axum::middleware::from_fn(guard));
    Router::new().nest(PATH, routes)
}

/// What every backoffice answer carries: no framing (clickjacking), no scripts or resources from
/// anywhere, forms posted only here, no type sniffing, no referrer, no caching.
const SECURITY_HEADERS: [(header::HeaderName, &str); 6] = [
    (
        header::CONTENT_SECURITY_POLICY,
        "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; form-action 'self'; \
         frame-ancestors 'none'; base-uri 'none'",
    ),
    (header::X_FRAME_OPTIONS, "DENY"),
    (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
    (header::REFERRER_POLICY, "no-referrer"),
    (header::CACHE_CONTROL, "no-store"),
    (header::VARY, "Cookie, Authorization"),
];

/// Refuses a state-changing request that a browser sent from another site (CSRF: a form on
/// another site posting to the backoffice with the operator's cookie), and adds
/// [`SECURITY_HEADERS`] to every answer.
async fn guard(request: Request, next: Next) -> Response {
    let safe = matches!(
        *request.method(),
        http::Method::GET | http::Method::HEAD | http::Method::OPTIONS
    );
    let peer = request
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|info| info.0.ip());
    let client = client_address(peer, request.headers());
    let mut request = request;
    request.extensions_mut().insert(ClientAddr(client));
    let mut response = if !safe && cross_site(request.headers()) {
        crate::metrics::backoffice_refused("cross-site");
        tracing::warn!(method = %request.method(), "backoffice: a cross-site request was refused");
        (
            StatusCode::FORBIDDEN,
            JsonLine(serde_json::json!({ "error": "cross-site request refused" })),
        )
            .into_response()
    } else {
        next.run(request).await
    };
    let headers = response.headers_mut();
    for (name, value) in SECURITY_HEADERS {
        headers.insert(name, http::HeaderValue::from_static(value));
    }
    response
}

/// Whether a browser says the request comes from another site: `Sec-Fetch-Site` (every current
/// browser sends it), else an `Origin` that is not this host. A request with neither is not a
/// browser's form post (curl, scripts), which cannot carry the operator's cookie unasked.
fn cross_site(headers: &HeaderMap) -> bool {
    if let Some(site) = headers.get("sec-fetch-site") {
        return !matches!(site.as_bytes(), b"same-origin" | b"none");
    }
    let Some(origin) = headers.get(header::ORIGIN) else {
        return false;
    };
    let authority = origin
        .to_str()
        .ok()
        .and_then(|o| o.split_once("://"))
        .map(|(_, authority)| authority);
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    match (authority, host) {
        (Some(authority), Some(host)) => !authority.eq_ignore_ascii_case(host),
        _ => true,
    }
}

/// The API: the signed-in session, or HTTP Basic credentials (checked by [`signin::SignIns`]).
async fn require_api(State(b): Shared, request: Request, next: Next) -> Response {
    if b.signed_in(request.extensions().get::<Session>()) {
        return next.run(request).await;
    }
    let Some(basic) = request.headers().typed_get::<Authorization<Basic>>() else {
        return unauthorized();
    };
    let client = request.extensions().get::<ClientAddr>().and_then(|c| c.0);
    match b
        .signins
        .check(client, basic.username(), basic.password())
        .await
    {
        signin::Checked::Right => next.run(request).await,
        signin::Checked::Wrong => unauthorized(),
        refused => too_many(refused),
    }
}

async fn require_page(State(b): Shared, request: Request, next: Next) -> Response {
    // Pages take the signed-in session only: HTTP Basic is for scripts on the API, and a
    // browser that cached Basic credentials would send them with any page it is led to.
    if b.signed_in(request.extensions().get::<Session>()) {
        next.run(request).await
    } else {
        Redirect::to(&format!("{PATH}/login")).into_response()
    }
}

/// A session key from the path; a malformed one is a 400.
struct Key(SessionKey);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Key {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut http::request::Parts,
        state: &S,
    ) -> Result<Self, Response> {
        let Path(text) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(IntoResponse::into_response)?;
        SessionKey::parse(&text)
            .map(Key)
            .ok_or_else(|| bad_key(&text))
    }
}

type Shared = State<Arc<Backoffice>>;

/// 401 without `WWW-Authenticate`: a browser does not prompt for (and then cache and replay)
/// Basic credentials; scripts send them unasked.
fn unauthorized() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        JsonLine(serde_json::json!({
            "error": "sign in to the backoffice, or send HTTP Basic credentials"
        })),
    )
        .into_response()
}

fn bad_key(text: &str) -> Response {
    (
        StatusCode::BAD_REQUEST,
        JsonLine(serde_json::json!({ "error": format!("{text:?} is not a session key") })),
    )
        .into_response()
}

fn store_error(error: &crate::store::Error) -> Response {
    tracing::error!(
        error = error as &dyn std::error::Error,
        "backoffice: store call failed"
    );
    (
        StatusCode::SERVICE_UNAVAILABLE,
        JsonLine(serde_json::json!({ "error": "the session store is unavailable" })),
    )
        .into_response()
}

/// Filters and the page cursor of a listing.
#[derive(Debug, Default, Deserialize)]
pub struct Filter {
    app: Option<String>,
    principal: Option<String>,
    node: Option<String>,
    after: Option<String>,
    limit: Option<u32>,
    message: Option<String>,
}

impl Filter {
    /// The query; `Err` with the text of an `after` that is not a key.
    fn query(&self) -> Result<ListQuery, String> {
        let after = match self.after.as_deref().filter(|a| !a.is_empty()) {
            Some(text) => Some(SessionKey::parse(text).ok_or_else(|| text.to_owned())?),
            None => None,
        };
        let nonempty = |v: &Option<String>| v.clone().filter(|s| !s.trim().is_empty());
        Ok(ListQuery {
            app: nonempty(&self.app),
            principal: nonempty(&self.principal),
            node: nonempty(&self.node),
            after,
            limit: self.limit.unwrap_or(PAGE),
        })
    }

    /// A `limit` outside 1..=1000, as a JSON 400 (as the `sessions` command refuses it).
    fn bad_limit(&self) -> Option<Response> {
        self.limit.filter(|l| !(1..=1000).contains(l)).map(|limit| {
            (
                StatusCode::BAD_REQUEST,
                JsonLine(
                    serde_json::json!({ "error": format!("limit {limit} is not in 1..=1000") }),
                ),
            )
                .into_response()
        })
    }
}

async fn api_list(State(b): Shared, Query(filter): Query<Filter>) -> Response {
    if let Some(refused) = filter.bad_limit() {
        return refused;
    }
    let query = match filter.query() {
        Ok(q) => q,
        Err(text) => return bad_key(&text),
    };
    match admin::list(&*b.store, &query).await {
        Ok(page) => JsonLine(page).into_response(),
        Err(e) => store_error(&e),
    }
}

/// A session's metadata and, when allowed, its decoded values.
async fn describe(
    b: &Backoffice,
    key: &SessionKey,
) -> Result<Option<(Meta, Option<serde_json::Value>)>, crate::store::Error> {
    let Some(record) = b.store.get(key, i64::MIN).await? else {
        return Ok(None);
    };
    let values = b.show_values.then(|| {
        let binding = Binding {
            app: &record.meta.app,
            key: &record.meta.key,
            principal: record.meta.principal.as_deref(),
        };
        match b.codec.decode(&record.data, binding) {
            Ok(attributes) => serde_json::Value::Object(
                attributes
                    .into_iter()
                    .map(|(name, bytes)| {
                        let value = rmp_serde::from_slice::<serde_json::Value>(&bytes)
                            .unwrap_or_else(|_| {
                                serde_json::Value::String("(not displayable)".into())
                            });
                        (name, value)
                    })
                    .collect(),
            ),
            Err(error) => serde_json::Value::String(format!("(cannot decode: {error})")),
        }
    });
    Ok(Some((record.meta, values)))
}

async fn api_show(State(b): Shared, Key(key): Key) -> Response {
    match describe(&b, &key).await {
        Ok(Some((meta, values))) => {
            let mut body = serde_json::to_value(&meta).unwrap_or_default();
            if let (Some(values), Some(object)) = (values, body.as_object_mut()) {
                object.insert("values".into(), values);
            }
            JsonLine(body).into_response()
        }
        Ok(None) => (
            StatusCode::NOT_FOUND,
            JsonLine(serde_json::json!({ "error": "no such session" })),
        )
            .into_response(),
        Err(e) => store_error(&e),
    }
}

async fn api_delete(State(b): Shared, Key(key): Key) -> Response {
    match b.delete(&key).await {
        Ok(true) => {
            tracing::info!(session = %key.short_hash(), "backoffice: session deleted");
            JsonLine(serde_json::json!({ "deleted": 1 })).into_response()
        }
        Ok(false) => (
            StatusCode::NOT_FOUND,
            JsonLine(serde_json::json!({ "error": "no such session" })),
        )
            .into_response(),
        Err(e) => store_error(&e),
    }
}

async fn api_delete_principal(State(b): Shared, Path(principal): Path<String>) -> Response {
    let forget = |key: &SessionKey| {
        for layer in &b.local {
            layer.forget(key);
        }
    };
    match admin::delete_principal(&*b.store, &principal, forget).await {
        Ok(n) => {
            tracing::info!(
                deleted = n,
                "backoffice: all sessions of a principal deleted"
            );
            JsonLine(serde_json::json!({ "deleted": n })).into_response()
        }
        Err(e) => store_error(&e),
    }
}

async fn api_stats(State(b): Shared) -> Response {
    match admin::stats(&*b.store, crate::store::now_millis(), |_| {}).await {
        Ok(stats) => JsonLine(stats).into_response(),
        Err(e) => store_error(&e),
    }
}
