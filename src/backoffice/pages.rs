//! The server-rendered pages: sign-in, the listing and one session. Built with maud, which
//! escapes every interpolated value by default.

use axum::extract::{Extension, Form, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use maud::{DOCTYPE, Markup, html};
use serde::Deserialize;

use super::signin::Checked;
use super::{ClientAddr, Filter, Key, PATH, Shared, bad_key, describe, store_error};
use crate::Session;
use crate::admin::{self, format_time as time};

/// The sign-in form.
#[derive(Debug, Deserialize)]
pub(super) struct Credentials {
    user: String,
    password: String,
}

/// Every page: the document around `body`.
fn layout(title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                title { (title) " · session-failover backoffice" }
                style {
                    "body{font-family:sans-serif;margin:1.5em}table{border-collapse:collapse;font-size:.9em}"
                    "td,th{border:1px solid #ccc;padding:.25em .5em;text-align:left}"
                    ".error{color:#b00}.note{color:#060}form.inline{display:inline}code{font-size:.85em}"
                }
            }
            body {
                h1 { "Persisted sessions" }
                (body)
            }
        }
    }
}

fn login_form(error: Option<&str>) -> Markup {
    html! {
        @if let Some(error) = error {
            p.error { (error) }
        }
        form method="post" action={ (PATH) "/login" } id="login" {
            label { "user " input name="user" autocomplete="username" required; }
            label { "password " input name="password" type="password" autocomplete="current-password" required; }
            button { "sign in" }
        }
    }
}

pub(super) async fn login_page() -> Markup {
    layout("Sign in", login_form(None))
}

pub(super) async fn login(
    State(b): Shared,
    Extension(client): Extension<ClientAddr>,
    session: Session,
    Form(credentials): Form<Credentials>,
) -> Response {
    let checked = b
        .signins
        .check(client.0, &credentials.user, &credentials.password)
        .await;
    let (status, message) = match checked {
        // The configured user name is a valid principal (checked at start-up); the id changes
        // with it.
        Checked::Right if session.set_principal(Some(credentials.user)).is_ok() => {
            return Redirect::to(PATH).into_response();
        }
        Checked::Right | Checked::Wrong => {
            tracing::warn!("backoffice: sign-in refused");
            (StatusCode::UNAUTHORIZED, "wrong user or password")
        }
        Checked::LockedOut => (
            StatusCode::TOO_MANY_REQUESTS,
            "too many failed sign-ins: try again later",
        ),
        Checked::Busy => (
            StatusCode::TOO_MANY_REQUESTS,
            "too many sign-ins at once: try again in a second",
        ),
    };
    (status, layout("Sign in", login_form(Some(message)))).into_response()
}

pub(super) async fn logout(session: Session) -> Redirect {
    session.invalidate();
    Redirect::to(&format!("{PATH}/login"))
}

/// The listing's link to its next page: the cursor and the filters, URL-encoded.
fn next_href(next: &str, filter: &Filter) -> String {
    let mut query = form_urlencoded::Serializer::new(String::new());
    query.append_pair("after", next);
    for (name, value) in [
        ("principal", &filter.principal),
        ("app", &filter.app),
        ("node", &filter.node),
    ] {
        if let Some(value) = value {
            query.append_pair(name, value);
        }
    }
    format!("{PATH}?{}", query.finish())
}

pub(super) async fn page(State(b): Shared, Query(filter): Query<Filter>) -> Response {
    let query = match filter.query() {
        Ok(q) => q,
        Err(text) => return bad_key(&text),
    };
    let listing = match admin::list(&*b.store, &query).await {
        Ok(page) => page,
        Err(e) => return store_error(&e),
    };
    listing_page(&b.user, &filter, &listing).into_response()
}

/// The listing of `listing` for `user`, with the search form holding `filter`.
fn listing_page(user: &str, filter: &Filter, listing: &admin::Page) -> Markup {
    let value = |v: &Option<String>| v.clone().unwrap_or_default();
    let body = html! {
        p {
            "Signed in as " (user) ". "
            form.inline method="post" action={ (PATH) "/logout" } { button { "sign out" } }
        }
        @if let Some(message) = &filter.message {
            p.note { (message) }
        }
        form method="get" action=(PATH) id="search" {
            label { "principal " input name="principal" value=(value(&filter.principal)); }
            label { "app " input name="app" value=(value(&filter.app)); }
            label { "node " input name="node" value=(value(&filter.node)); }
            button { "search" }
        }
        table #sessions {
            tr {
                th { "key" } th { "app" } th { "principal" } th { "node" } th { "created" }
                th { "modified" } th { "expires" } th { "bytes" } th { "attributes" } th {}
            }
            @for m in &listing.sessions {
                tr {
                    td { a href={ (PATH) "/sessions/" (m.key) } { code { (m.key.short_hash()) "…" } } }
                    td { (m.app) }
                    td { (m.principal.as_deref().unwrap_or("-")) }
                    td { (m.node) }
                    td { (time(m.created_at)) }
                    td { (time(m.modified_at)) }
                    td { (time(m.expires_at)) }
                    td { (m.size_bytes) }
                    td { (m.attributes.join(", ")) }
                    td {
                        form.inline method="post" action={ (PATH) "/sessions/" (m.key) "/delete" } {
                            button { "delete" }
                        }
                    }
                }
            }
        }
        @if let Some(next) = &listing.next {
            p { a #next href=(next_href(next.as_str(), filter)) { "next page" } }
        }
        p { (listing.sessions.len()) " session(s) on this page. Times are UTC." }
    };
    layout("Sessions", body)
}

pub(super) async fn detail_page(State(b): Shared, Key(key): Key) -> Response {
    let (meta, values) = match describe(&b, &key).await {
        Ok(Some(found)) => found,
        Ok(None) => {
            let body = html! { p { "No such session (deleted, or purged)." } };
            return (StatusCode::NOT_FOUND, layout("Not found", body)).into_response();
        }
        Err(e) => return store_error(&e),
    };
    detail(&meta, values.as_ref()).into_response()
}

/// One session's page: its metadata, and its values if they are shown.
fn detail(meta: &crate::store::Meta, values: Option<&serde_json::Value>) -> Markup {
    let body = html! {
        p { a href=(PATH) { "all sessions" } }
        table #session {
            tr { th { "key" } td { code { (meta.key) } } }
            tr { th { "app" } td { (meta.app) } }
            tr { th { "principal" } td { (meta.principal.as_deref().unwrap_or("-")) } }
            tr { th { "node" } td { (meta.node) } }
            tr { th { "created" } td { (time(meta.created_at)) } }
            tr { th { "modified" } td { (time(meta.modified_at)) } }
            tr { th { "expires" } td { (time(meta.expires_at)) } }
            tr { th { "version" } td { (meta.version) } }
            tr { th { "bytes" } td { (meta.size_bytes) } }
            tr { th { "attributes" } td { (meta.attributes.join(", ")) } }
        }
        form method="post" action={ (PATH) "/sessions/" (meta.key) "/delete" } id="delete" {
            button { "delete this session" }
        }
        @match values {
            Some(values) => {
                h2 { "Values" }
                pre { (serde_json::to_string_pretty(&values).unwrap_or_default()) }
            }
            None => p { "Values are not shown (session.backoffice.show.values=false)." },
        }
    };
    layout("Session", body)
}

pub(super) async fn delete_from_page(State(b): Shared, Key(key): Key) -> Response {
    match b.delete(&key).await {
        Ok(_) => {
            tracing::info!(session = %key.short_hash(), "backoffice: session deleted");
            let message = format!("session {} deleted", key.short_hash());
            let query = form_urlencoded::Serializer::new(String::new())
                .append_pair("message", &message)
                .finish();
            Redirect::to(&format!("{PATH}?{query}")).into_response()
        }
        Err(e) => store_error(&e),
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::id::SessionId;
    use crate::store::Meta;

    /// Text with the characters that matter in HTML, often.
    fn hostile() -> impl Strategy<Value = String> {
        prop_oneof![
            any::<String>(),
            "[<>\"'&a-z /=]{0,24}",
            Just("\"><script>alert(1)</script>".to_owned()),
            Just("' onmouseover='x".to_owned()),
        ]
    }

    fn meta(text: &str) -> Meta {
        Meta {
            key: SessionId::generate().store_key(),
            app: text.to_owned(),
            context_path: text.to_owned(),
            node: text.to_owned(),
            principal: Some(text.to_owned()),
            created_at: 0,
            modified_at: 0,
            expires_at: 0,
            max_inactive_secs: 60,
            version: 1,
            attributes: vec![text.to_owned(), text.to_owned()],
            size_bytes: 3,
        }
    }

    fn filter(text: &str) -> Filter {
        Filter {
            app: Some(text.to_owned()),
            principal: Some(text.to_owned()),
            node: Some(text.to_owned()),
            after: None,
            limit: None,
            message: Some(text.to_owned()),
        }
    }

    /// How many of each character that could open markup or leave an attribute (maud quotes
    /// attributes with `"`; a `'` is text everywhere).
    fn markup(html: &str) -> [usize; 2] {
        ['<', '"'].map(|c| html.matches(c).count())
    }

    proptest! {
        /// Whatever a stored row, a filter or a session value holds, the pages hold exactly the
        /// `<` and `"` of their own markup: every field is escaped.
        #[test]
        fn no_field_reaches_the_html_unescaped(text in hostile(), user in hostile()) {
            let plain = "x";
            let rows = |t: &str| admin::Page {
                sessions: vec![meta(t), meta(t)],
                next: Some(SessionId::generate().store_key()),
            };
            let listing = listing_page(&user, &filter(&text), &rows(&text)).into_string();
            let expected = listing_page(plain, &filter(plain), &rows(plain)).into_string();
            prop_assert_eq!(markup(&listing), markup(&expected), "{}", listing);

            let values = serde_json::json!({ text.clone(): text.clone() });
            let page = detail(&meta(&text), Some(&values)).into_string();
            let expected = detail(&meta(plain), Some(&serde_json::json!({ plain: plain }))).into_string();
            prop_assert_eq!(markup(&page), markup(&expected), "{}", page);
        }
    }
}
