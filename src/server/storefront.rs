//! The demo storefront: a cart and a sign-in, kept in the session.
//!
//! | route | what it does |
//! |---|---|
//! | `GET /` | an HTML page showing the cart, with forms to add, remove, sign in and out |
//! | `GET /cart` | the cart as JSON: `{"user": …, "items": [{"sku", "qty"}], "count"}` |
//! | `POST /cart/items` | adds `{"sku", "qty"}` (qty 1–999) to the cart |
//! | `DELETE /cart/items/{sku}` | removes a line |
//! | `POST /login` | `{"user"}`: sets the principal and rotates the session id |
//! | `POST /logout` | invalidates the session |

use axum::extract::Path;
use axum::extract::rejection::JsonRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};

use crate::json::JsonLine;
use serde::{Deserialize, Serialize};

use crate::Session;
use maud::{DOCTYPE, Markup, PreEscaped, html};

const CART: &str = "cart";
const MAX_SKU_LEN: usize = 64;
const MAX_USER_LEN: usize = 128;
const MAX_QTY: u32 = 999;
const MAX_LINES: usize = 100;

/// A cart line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CartItem {
    /// The product's stock-keeping unit.
    pub sku: String,
    /// How many.
    pub qty: u32,
}

/// The cart kept in the session under `"cart"`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cart {
    /// Lines in the order they were first added.
    pub items: Vec<CartItem>,
}

/// What `GET /cart` answers.
#[derive(Debug, Serialize, Deserialize)]
pub struct CartView {
    /// The signed-in user, if any.
    pub user: Option<String>,
    /// The cart lines.
    pub items: Vec<CartItem>,
    /// Total quantity.
    pub count: u32,
}

/// `{"user": …}` for `POST /login`.
#[derive(Debug, Deserialize)]
pub struct Login {
    /// The user to sign in as.
    pub user: String,
}

/// The storefront routes (put a [`crate::SessionFailoverLayer`] on them).
pub fn router() -> Router {
    Router::new()
        .route("/", get(page))
        .route("/cart", get(cart))
        .route("/cart/items", post(add_item))
        .route("/cart/items/{sku}", delete(remove_item))
        .route("/login", post(login))
        .route("/logout", post(logout))
}

/// A body the JSON extractor refused, answered in the same JSON shape as the app's own errors.
fn json_rejection(rejection: &JsonRejection) -> Response {
    (
        rejection.status(),
        JsonLine(serde_json::json!({ "error": rejection.body_text() })),
    )
        .into_response()
}

fn bad_request(message: String) -> Response {
    (
        StatusCode::UNPROCESSABLE_ENTITY,
        JsonLine(serde_json::json!({ "error": message })),
    )
        .into_response()
}

fn view(session: &Session) -> CartView {
    let cart: Cart = session.get(CART).unwrap_or_default();
    CartView {
        user: session.principal(),
        count: cart.items.iter().map(|i| i.qty).sum(),
        items: cart.items,
    }
}

async fn cart(session: Session) -> JsonLine<CartView> {
    JsonLine(view(&session))
}

async fn add_item(session: Session, item: Result<Json<CartItem>, JsonRejection>) -> Response {
    let mut item = match item {
        Ok(Json(item)) => item,
        Err(rejection) => return json_rejection(&rejection),
    };
    item.sku = item.sku.trim().to_owned();
    if item.sku.is_empty()
        || item.sku.chars().count() > MAX_SKU_LEN
        || item.sku.chars().any(char::is_control)
    {
        return bad_request(format!(
            "sku must be 1 to {MAX_SKU_LEN} characters without control characters"
        ));
    }
    if !(1..=MAX_QTY).contains(&item.qty) {
        return bad_request(format!("qty must be from 1 to {MAX_QTY}"));
    }
    // One read-modify-write of the cart: two requests adding at once (two tabs, two nodes)
    // both land, and none is refused.
    let added = session.update(CART, move |cart: &mut Cart| {
        if let Some(line) = cart.items.iter_mut().find(|line| line.sku == item.sku) {
            if line.qty + item.qty > MAX_QTY {
                return Err(format!(
                    "the cart holds at most {MAX_QTY} of one sku; it has {} of {}",
                    line.qty, item.sku
                ));
            }
            line.qty += item.qty;
        } else if cart.items.len() >= MAX_LINES {
            return Err(format!("the cart holds at most {MAX_LINES} lines"));
        } else {
            cart.items.push(item.clone());
        }
        Ok(())
    });
    match added {
        Ok(()) => JsonLine(view(&session)).into_response(),
        Err(message) => bad_request(message),
    }
}

async fn remove_item(session: Session, Path(sku): Path<String>) -> Response {
    let listed = session
        .get::<Cart>(CART)
        .is_some_and(|cart| cart.items.iter().any(|line| line.sku == sku));
    let removed = listed
        && session.update(CART, move |cart: &mut Cart| {
            let before = cart.items.len();
            cart.items.retain(|line| line.sku != sku);
            cart.items.len() < before
        });
    if !removed {
        return (
            StatusCode::NOT_FOUND,
            JsonLine(serde_json::json!({ "error": "no such line" })),
        )
            .into_response();
    }
    JsonLine(view(&session)).into_response()
}

async fn login(session: Session, login: Result<Json<Login>, JsonRejection>) -> Response {
    let login = match login {
        Ok(Json(login)) => login,
        Err(rejection) => return json_rejection(&rejection),
    };
    let user = login.user.trim();
    if user.is_empty() || user.chars().count() > MAX_USER_LEN || user.chars().any(char::is_control)
    {
        return bad_request(format!(
            "user must be 1 to {MAX_USER_LEN} characters without control characters"
        ));
    }
    // A new id comes with the new user: an id planted before the sign-in (session fixation) is
    // worth nothing after it.
    if let Err(error) = session.set_principal(Some(user.to_owned())) {
        return bad_request(format!("user: {error}"));
    }
    JsonLine(view(&session)).into_response()
}

async fn logout(session: Session) -> StatusCode {
    session.invalidate();
    StatusCode::NO_CONTENT
}

/// The page's script: it calls the JSON routes and reloads.
const SCRIPT: &str = r#"
const send = (method, url, body) => fetch(url, {method, headers: {'content-type': 'application/json'}, body: body && JSON.stringify(body)}).then(() => location.reload());
document.getElementById('add').onsubmit = e => { e.preventDefault(); const f = e.target; send('POST', '/cart/items', {sku: f.sku.value, qty: Number(f.qty.value)}); };
document.getElementById('login').onsubmit = e => { e.preventDefault(); send('POST', '/login', {user: e.target.user.value}); };
document.getElementById('logout').onsubmit = e => { e.preventDefault(); send('POST', '/logout'); };
document.querySelectorAll('.rm').forEach(b => b.onclick = () => send('DELETE', '/cart/items/' + encodeURIComponent(b.dataset.sku)));
"#;

async fn page(session: Session) -> Markup {
    let v = view(&session);
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                title { "Storefront · session-failover demo" }
                style { "body{font-family:sans-serif;max-width:40em;margin:2em auto}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.3em .6em}" }
            }
            body {
                h1 { "Storefront" }
                p {
                    @match &v.user {
                        Some(user) => { "signed in as " b { (user) } }
                        None => "not signed in",
                    }
                    ". Your cart survives a crashed node: it is persisted by session failover."
                }
                table {
                    tr { th { "SKU" } th { "qty" } th {} }
                    @for item in &v.items {
                        tr {
                            td { (item.sku) }
                            td { (item.qty) }
                            td { button data-sku=(item.sku) class="rm" { "remove" } }
                        }
                    }
                }
                p { (v.count) " item(s)." }
                form #add {
                    input name="sku" placeholder="SKU" required maxlength="64";
                    " "
                    input name="qty" type="number" value="1" min="1" max="999";
                    " "
                    button { "add to cart" }
                }
                form #login {
                    input name="user" placeholder="user name" required maxlength="128";
                    " "
                    button { "sign in" }
                }
                form #logout { button { "sign out" } }
                script { (PreEscaped(SCRIPT)) }
            }
        }
    }
}
