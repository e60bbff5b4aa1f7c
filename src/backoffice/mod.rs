//! The backoffice (SAP Commerce "Browsing Persisted Sessions"): JSON endpoints under
//! `/backoffice/api` and a small server-rendered page at `/backoffice`, behind authentication.
//!
//! Credentials come from `session.backoffice.user` and `session.backoffice.password.hash` (an
//! argon2 PHC string: `session-failover hash-password` makes one). Without them the backoffice is
//! not mounted: every route is a 404. The page signs in with a form and keeps its own session
//! (the backoffice is an application of this very layer, cookie `BACKOFFICESESSION` on path
//! `/backoffice`, memory-only); the API also takes HTTP Basic credentials, for scripts.
//!
//! Listings show metadata and attribute names, never values, unless
//! `session.backoffice.show.values=true` (then a session's page decodes them, decrypting with the
//! configured secret).

use std::sync::Arc;

use argon2::password_hash::{PasswordHash, PasswordVerifier as _};
use axum::extract::{Form, Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{Next, from_fn_with_state};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use base64::Engine as _;
use serde::Deserialize;

use crate::admin;
use crate::codec::{Binding, Codec};
use crate::server::escape;
use crate::session::SessionKey;
use crate::store::{ListQuery, Meta, SessionAdmin};
use crate::{Session, SessionFailoverLayer};

/// Where the backoffice is mounted.
pub const PATH: &str = "/backoffice";
const COOKIE: &str = "BACKOFFICESESSION";
const PAGE: u32 = 50;

/// The backoffice's settings and store.
pub struct Backoffice {
    store: Arc<dyn SessionAdmin>,
    /// The session layers of this process: a deleted session is ended in their caches at once.
    local: Vec<SessionFailoverLayer>,
    codec: Codec,
    user: String,
    password_hash: String,
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
            user,
            password_hash,
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

    fn check_password(&self, user: &str, password: &str) -> bool {
        let Ok(hash) = PasswordHash::new(&self.password_hash) else {
            return false;
        };
        // Verify even for a wrong user name, so timing does not tell which part was wrong.
        let password_ok = argon2::Argon2::default()
            .verify_password(password.as_bytes(), &hash)
            .is_ok();
        password_ok && user == self.user
    }

    /// Signed in through the page's session, or HTTP Basic credentials on this request.
    fn authorized(&self, session: &Session, headers: &HeaderMap) -> bool {
        if session.principal().as_deref() == Some(self.user.as_str()) {
            return true;
        }
        let Some(basic) = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Basic "))
            .and_then(|v| {
                base64::engine::general_purpose::STANDARD
                    .decode(v.trim())
                    .ok()
            })
            .and_then(|v| String::from_utf8(v).ok())
        else {
            return false;
        };
        basic
            .split_once(':')
            .is_some_and(|(user, password)| self.check_password(user, password))
    }
}

/// The backoffice routes, with their own session layer, to merge into the server's router.
pub fn router(backoffice: Arc<Backoffice>) -> Router {
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
        .route("/", get(page))
        .route("/sessions/{key}", get(detail_page))
        .route("/sessions/{key}/delete", post(delete_from_page))
        .route_layer(from_fn_with_state(Arc::clone(&backoffice), require_page));
    let routes = Router::new()
        .route("/login", get(login_page).post(login))
        .route("/logout", post(logout))
        .merge(pages)
        .merge(api)
        .with_state(backoffice)
        .layer(
            SessionFailoverLayer::new("backoffice")
                .with_context_path(PATH)
                .with_cookie_name(COOKIE)
                .with_timeout(std::time::Duration::from_secs(3600)),
        );
    Router::new().nest(PATH, routes)
}

fn operator(b: &Backoffice, request: &Request) -> bool {
    request
        .extensions()
        .get::<Session>()
        .is_some_and(|session| b.authorized(session, request.headers()))
}

async fn require_api(State(b): Shared, request: Request, next: Next) -> Response {
    if operator(&b, &request) {
        next.run(request).await
    } else {
        unauthorized()
    }
}

async fn require_page(State(b): Shared, request: Request, next: Next) -> Response {
    if operator(&b, &request) {
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

fn unauthorized() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [(
            header::WWW_AUTHENTICATE,
            "Basic realm=\"backoffice\", charset=\"UTF-8\"",
        )],
        Json(serde_json::json!({ "error": "sign in to the backoffice" })),
    )
        .into_response()
}

fn bad_key(text: &str) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(serde_json::json!({ "error": format!("{text:?} is not a session key") })),
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
        Json(serde_json::json!({ "error": "the session store is unavailable" })),
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
}

async fn api_list(State(b): Shared, Query(filter): Query<Filter>) -> Response {
    let query = match filter.query() {
        Ok(q) => q,
        Err(text) => return bad_key(&text),
    };
    match admin::list(&*b.store, &query).await {
        Ok(page) => Json(page).into_response(),
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
            Json(body).into_response()
        }
        Ok(None) => (
            StatusCode::NOT_FOUND,
            Json(serde_json::json!({ "error": "no such session" })),
        )
            .into_response(),
        Err(e) => store_error(&e),
    }
}

async fn api_delete(State(b): Shared, Key(key): Key) -> Response {
    match b.delete(&key).await {
        Ok(true) => {
            tracing::info!(session = %key.short_hash(), "backoffice: session deleted");
            Json(serde_json::json!({ "deleted": 1 })).into_response()
        }
        Ok(false) => (
            StatusCode::NOT_FOUND,
            Json(serde_json::json!({ "error": "no such session" })),
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
            Json(serde_json::json!({ "deleted": n })).into_response()
        }
        Err(e) => store_error(&e),
    }
}

async fn api_stats(State(b): Shared) -> Response {
    match admin::stats(&*b.store, crate::store::now_millis(), |_| {}).await {
        Ok(stats) => Json(stats).into_response(),
        Err(e) => store_error(&e),
    }
}

/// The sign-in form.
#[derive(Debug, Deserialize)]
pub struct Credentials {
    user: String,
    password: String,
}

async fn login_page() -> Html<String> {
    Html(layout("Sign in", &login_form(None)))
}

fn login_form(error: Option<&str>) -> String {
    let error = error
        .map(|e| format!("<p class=\"error\">{}</p>", escape(e)))
        .unwrap_or_default();
    format!(
        r#"{error}<form method="post" action="{PATH}/login" id="login">
<label>user <input name="user" autocomplete="username" required></label>
<label>password <input name="password" type="password" autocomplete="current-password" required></label>
<button>sign in</button></form>"#
    )
}

async fn login(
    State(b): Shared,
    session: Session,
    Form(credentials): Form<Credentials>,
) -> Response {
    if b.check_password(&credentials.user, &credentials.password) {
        session.set_principal(Some(credentials.user));
        session.cycle_id();
        return Redirect::to(PATH).into_response();
    }
    tracing::warn!("backoffice: sign-in refused");
    (
        StatusCode::UNAUTHORIZED,
        Html(layout(
            "Sign in",
            &login_form(Some("wrong user or password")),
        )),
    )
        .into_response()
}

async fn logout(session: Session) -> Redirect {
    session.invalidate();
    Redirect::to(&format!("{PATH}/login"))
}

fn layout(title: &str, body: &str) -> String {
    format!(
        r#"<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{title} · session-failover backoffice</title>
<style>body{{font-family:sans-serif;margin:1.5em}}table{{border-collapse:collapse;font-size:.9em}}td,th{{border:1px solid #ccc;padding:.25em .5em;text-align:left}}
.error{{color:#b00}}.note{{color:#060}}form.inline{{display:inline}}code{{font-size:.85em}}</style></head>
<body><h1>Persisted sessions</h1>{body}</body></html>"#,
        title = escape(title)
    )
}

use crate::admin::format_time as time;

async fn page(State(b): Shared, Query(filter): Query<Filter>) -> Response {
    let query = match filter.query() {
        Ok(q) => q,
        Err(text) => return bad_key(&text),
    };
    let listing = match admin::list(&*b.store, &query).await {
        Ok(page) => page,
        Err(e) => return store_error(&e),
    };
    let value = |v: &Option<String>| escape(v.as_deref().unwrap_or(""));
    let mut html = format!(
        r#"<p>Signed in as {user}. <form class="inline" method="post" action="{PATH}/logout"><button>sign out</button></form></p>
{message}<form method="get" action="{PATH}" id="search">
<label>principal <input name="principal" value="{principal}"></label>
<label>app <input name="app" value="{app}"></label>
<label>node <input name="node" value="{node}"></label>
<button>search</button></form>
<table id="sessions"><tr><th>key</th><th>app</th><th>principal</th><th>node</th><th>created</th><th>modified</th><th>expires</th><th>bytes</th><th>attributes</th><th></th></tr>"#,
        user = escape(&b.user),
        message = filter
            .message
            .as_deref()
            .map(|m| format!("<p class=\"note\">{}</p>", escape(m)))
            .unwrap_or_default(),
        principal = value(&filter.principal),
        app = value(&filter.app),
        node = value(&filter.node),
    );
    for m in &listing.sessions {
        html.push_str(&format!(
            r#"<tr><td><a href="{PATH}/sessions/{key}"><code>{short}…</code></a></td><td>{app}</td><td>{principal}</td><td>{node}</td><td>{created}</td><td>{modified}</td><td>{expires}</td><td>{size}</td><td>{attributes}</td>
<td><form class="inline" method="post" action="{PATH}/sessions/{key}/delete"><button>delete</button></form></td></tr>"#,
            key = m.key,
            short = m.key.short_hash(),
            app = escape(&m.app),
            principal = escape(m.principal.as_deref().unwrap_or("-")),
            node = escape(&m.node),
            created = time(m.created_at),
            modified = time(m.modified_at),
            expires = time(m.expires_at),
            size = m.size_bytes,
            attributes = escape(&m.attributes.join(", ")),
        ));
    }
    html.push_str("</table>");
    if let Some(next) = &listing.next {
        let keep = |k: &str, v: &Option<String>| {
            v.as_deref()
                .map(|v| format!("&{k}={}", escape(&urlencode(v))))
                .unwrap_or_default()
        };
        html.push_str(&format!(
            r#"<p><a id="next" href="{PATH}?after={next}{}{}{}">next page</a></p>"#,
            keep("principal", &filter.principal),
            keep("app", &filter.app),
            keep("node", &filter.node)
        ));
    }
    html.push_str(&format!(
        "<p>{} session(s) on this page. Times are UTC.</p>",
        listing.sessions.len()
    ));
    Html(layout("Sessions", &html)).into_response()
}

fn urlencode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

async fn detail_page(State(b): Shared, Key(key): Key) -> Response {
    let (meta, values) = match describe(&b, &key).await {
        Ok(Some(found)) => found,
        Ok(None) => {
            return (
                StatusCode::NOT_FOUND,
                Html(layout(
                    "Not found",
                    "<p>No such session (deleted, or purged).</p>",
                )),
            )
                .into_response();
        }
        Err(e) => return store_error(&e),
    };
    let values = match values {
        Some(v) => format!(
            "<h2>Values</h2><pre>{}</pre>",
            escape(&serde_json::to_string_pretty(&v).unwrap_or_default())
        ),
        None => "<p>Values are not shown (session.backoffice.show.values=false).</p>".to_owned(),
    };
    let body = format!(
        r#"<p><a href="{PATH}">all sessions</a></p><table id="session">
<tr><th>key</th><td><code>{key}</code></td></tr><tr><th>app</th><td>{app}</td></tr><tr><th>principal</th><td>{principal}</td></tr>
<tr><th>node</th><td>{node}</td></tr><tr><th>created</th><td>{created}</td></tr><tr><th>modified</th><td>{modified}</td></tr>
<tr><th>expires</th><td>{expires}</td></tr><tr><th>version</th><td>{version}</td></tr><tr><th>bytes</th><td>{size}</td></tr>
<tr><th>attributes</th><td>{attributes}</td></tr></table>
<form method="post" action="{PATH}/sessions/{key}/delete" id="delete"><button>delete this session</button></form>{values}"#,
        key = meta.key,
        app = escape(&meta.app),
        principal = escape(meta.principal.as_deref().unwrap_or("-")),
        node = escape(&meta.node),
        created = time(meta.created_at),
        modified = time(meta.modified_at),
        expires = time(meta.expires_at),
        version = meta.version,
        size = meta.size_bytes,
        attributes = escape(&meta.attributes.join(", ")),
    );
    Html(layout("Session", &body)).into_response()
}

async fn delete_from_page(State(b): Shared, Key(key): Key) -> Response {
    match b.delete(&key).await {
        Ok(_) => {
            tracing::info!(session = %key.short_hash(), "backoffice: session deleted");
            Redirect::to(&format!(
                "{PATH}?message=session+{}+deleted",
                key.short_hash()
            ))
            .into_response()
        }
        Err(e) => store_error(&e),
    }
}
