//! The backoffice through the server's router on real SQLite: authentication, listing without
//! values, search, show, delete (one and a principal's), and the user's next request.

mod common;

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use base64::Engine as _;
use common::{config, items, send, sqlite};
use http::{Request, StatusCode};
use http_body_util::BodyExt as _;
use serde_json::{Value, json};
use session_failover::persist::Persistence;
use session_failover::server;
use session_failover::store::SessionAdmin;
use tower::ServiceExt as _;

const PASSWORD: &str = "correct horse battery staple";

fn hash() -> String {
    common::password_hash(PASSWORD)
}

fn node(extra: &str, store: Arc<dyn SessionAdmin>) -> Router {
    let config = config(&format!(
        "spring.session.enabled=true\nspring.session.storefront.save=sync\n{extra}"
    ));
    let persistence = Persistence::from_config(store, &config);
    server::app(&config, "a", Some(persistence))
}

/// A node with the backoffice on (user `admin`, password [`PASSWORD`]).
fn operator_node(store: Arc<dyn SessionAdmin>) -> Router {
    node(
        &format!(
            "session.backoffice.user=admin\nsession.backoffice.password.hash={}\n",
            hash()
        ),
        store,
    )
}

async fn call(
    app: &Router,
    method: &str,
    uri: &str,
    auth: Option<&str>,
    cookie: Option<&str>,
    form: Option<&str>,
) -> (StatusCode, http::HeaderMap, String) {
    let auth = auth.map(|auth| {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(auth)
        )
    });
    let mut headers = Vec::new();
    if let Some(auth) = &auth {
        headers.push(("authorization", auth.as_str()));
    }
    if let Some(cookie) = cookie {
        headers.push(("cookie", cookie));
    }
    exchange(app, method, uri, &headers, form).await
}

/// One request with the given headers (and a form body for POSTs): status, headers, body.
async fn exchange(
    app: &Router,
    method: &str,
    uri: &str,
    headers: &[(&str, &str)],
    form: Option<&str>,
) -> (StatusCode, http::HeaderMap, String) {
    let mut builder = Request::builder().method(method).uri(uri);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let body = match form {
        Some(form) => {
            builder = builder.header("content-type", "application/x-www-form-urlencoded");
            Body::from(form.to_owned())
        }
        None => Body::empty(),
    };
    let response = app
        .clone()
        .oneshot(builder.body(body).unwrap())
        .await
        .unwrap();
    let (parts, body) = response.into_parts();
    let bytes = body.collect().await.unwrap().to_bytes();
    (
        parts.status,
        parts.headers,
        String::from_utf8_lossy(&bytes).into_owned(),
    )
}

#[tokio::test]
async fn without_credentials_the_backoffice_does_not_exist() {
    let dir = tempfile::tempdir().unwrap();
    let app = node("", Arc::new(sqlite(dir.path()).await));
    for uri in [
        "/backoffice",
        "/backoffice/login",
        "/backoffice/api/sessions",
        "/backoffice/api/stats",
    ] {
        let (status, _, _) = call(
            &app,
            "GET",
            uri,
            Some(&format!("admin:{PASSWORD}")),
            None,
            None,
        )
        .await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{uri}");
    }
}

#[tokio::test]
async fn operators_sign_in_find_show_and_delete_sessions() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn SessionAdmin> = Arc::new(sqlite(dir.path()).await);
    let app = operator_node(store.clone());

    // A shopper with a cart, signed in as zoë; another one.
    let r = send(
        &app,
        "POST",
        "/cart/items",
        None,
        Some(json!({"sku": "SECRET-SKU", "qty": 1})),
    )
    .await;
    let first = r.cookie("JSESSIONID").unwrap();
    let r = send(
        &app,
        "POST",
        "/login",
        Some(&format!("JSESSIONID={first}")),
        Some(json!({"user": "zoë"})),
    )
    .await;
    let zoe = r.cookie("JSESSIONID").unwrap();
    send(
        &app,
        "POST",
        "/cart/items",
        None,
        Some(json!({"sku": "X", "qty": 1})),
    )
    .await;

    // Refused without credentials, and with wrong ones; never a listing.
    for auth in [
        None,
        Some("admin:wrong"),
        Some("root:correct horse battery staple"),
    ] {
        let (status, headers, body) =
            call(&app, "GET", "/backoffice/api/sessions", auth, None, None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{auth:?}");
        // No Basic prompt: a browser would cache the credentials and replay them.
        assert!(!headers.contains_key("www-authenticate"));
        assert!(!body.contains("storefront"), "{body}");
    }
    let (status, headers, _) = call(&app, "GET", "/backoffice", None, None, None).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(headers["location"], "/backoffice/login");
    let (status, _, body) = call(
        &app,
        "POST",
        "/backoffice/login",
        None,
        None,
        Some("user=admin&password=nope"),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(body.contains("wrong user or password"));

    // With Basic credentials: list, search by principal, show; no values by default.
    let auth = Some(format!("admin:{PASSWORD}"));
    let (status, _, body) = call(
        &app,
        "GET",
        "/backoffice/api/sessions",
        auth.as_deref(),
        None,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let page: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(page["sessions"].as_array().unwrap().len(), 2);
    assert!(
        !body.contains("SECRET-SKU"),
        "attribute values never listed"
    );
    let (_, _, body) = call(
        &app,
        "GET",
        "/backoffice/api/sessions?principal=zo%C3%AB",
        auth.as_deref(),
        None,
        None,
    )
    .await;
    let found: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(found["sessions"].as_array().unwrap().len(), 1);
    let key = found["sessions"][0]["key"].as_str().unwrap().to_owned();
    let (status, _, body) = call(
        &app,
        "GET",
        &format!("/backoffice/api/sessions/{key}"),
        auth.as_deref(),
        None,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        body.contains("\"cart\"") && !body.contains("SECRET-SKU"),
        "{body}"
    );

    // The page signs in with a form and keeps a session of its own.
    let (status, headers, _) = call(
        &app,
        "POST",
        "/backoffice/login",
        None,
        None,
        Some(&format!(
            "user=admin&password={}",
            PASSWORD.replace(' ', "+")
        )),
    )
    .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let cookie = headers["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    assert!(cookie.starts_with("BACKOFFICESESSION="));
    let (status, _, html) = call(
        &app,
        "GET",
        "/backoffice?principal=zo%C3%AB",
        None,
        Some(&cookie),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        html.contains("zoë") && html.contains("Signed in as admin"),
        "{html}"
    );
    let (status, _, html) = call(
        &app,
        "GET",
        &format!("/backoffice/sessions/{key}"),
        None,
        Some(&cookie),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(html.contains("Values are not shown"));

    // Delete it: gone from the table, and the shopper's next request (served by this node, which
    // still cached the session) gets a fresh, empty session.
    let (status, headers, _) = call(
        &app,
        "POST",
        &format!("/backoffice/sessions/{key}/delete"),
        None,
        Some(&cookie),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert!(headers["location"].to_str().unwrap().contains("deleted"));
    // Left: the other shopper's session and the operator's own sign-in (a persisted session of
    // the backoffice application).
    assert_eq!(store.length().await.unwrap(), 2);
    let r = send(
        &app,
        "GET",
        "/cart",
        Some(&format!("JSESSIONID={zoe}")),
        None,
    )
    .await;
    assert!(
        items(&r.body).is_empty() && r.body["user"].is_null(),
        "{:?}",
        r.body
    );
    // Nor does a write bring it back.
    send(
        &app,
        "POST",
        "/cart/items",
        Some(&format!("JSESSIONID={zoe}")),
        Some(json!({"sku": "Y", "qty": 1})),
    )
    .await;
    let (_, _, body) = call(
        &app,
        "GET",
        "/backoffice/api/sessions?principal=zo%C3%AB",
        auth.as_deref(),
        None,
        None,
    )
    .await;
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["sessions"]
            .as_array()
            .unwrap()
            .len(),
        0
    );

    // Log a user out everywhere; stats.
    for _ in 0..3 {
        let r = send(&app, "POST", "/login", None, Some(json!({"user": "bob"}))).await;
        assert_eq!(r.status, StatusCode::OK);
    }
    let (status, _, body) = call(
        &app,
        "DELETE",
        "/backoffice/api/principals/bob/sessions",
        auth.as_deref(),
        None,
        None,
    )
    .await;
    assert_eq!(
        (
            status,
            serde_json::from_str::<Value>(&body).unwrap()["deleted"].as_u64()
        ),
        (StatusCode::OK, Some(3))
    );
    let (_, _, body) = call(
        &app,
        "GET",
        "/backoffice/api/stats",
        auth.as_deref(),
        None,
        None,
    )
    .await;
    // Only the operator's own sign-in is left signed in.
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["signed_in"],
        1
    );
    let (status, _, _) = call(
        &app,
        "GET",
        "/backoffice/api/sessions/not-a-key",
        auth.as_deref(),
        None,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn values_are_shown_only_when_configured() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn SessionAdmin> = Arc::new(sqlite(dir.path()).await);
    let app = node(
        &format!(
            "session.backoffice.user=admin\nsession.backoffice.password.hash={}\nsession.backoffice.show.values=true\n",
            hash()
        ),
        store.clone(),
    );
    send(
        &app,
        "POST",
        "/cart/items",
        None,
        Some(json!({"sku": "SHOWN-SKU", "qty": 2})),
    )
    .await;
    let auth = Some(format!("admin:{PASSWORD}"));
    let (_, _, body) = call(
        &app,
        "GET",
        "/backoffice/api/sessions",
        auth.as_deref(),
        None,
        None,
    )
    .await;
    let key = serde_json::from_str::<Value>(&body).unwrap()["sessions"][0]["key"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(!body.contains("SHOWN-SKU"), "never in listings");
    let (_, _, body) = call(
        &app,
        "GET",
        &format!("/backoffice/api/sessions/{key}"),
        auth.as_deref(),
        None,
        None,
    )
    .await;
    assert!(body.contains("SHOWN-SKU"), "{body}");
}

/// One request with the given headers (and a form body for POSTs): status and headers.
async fn request(
    app: &Router,
    method: &str,
    uri: &str,
    headers: &[(&str, &str)],
    form: Option<&str>,
) -> (StatusCode, http::HeaderMap) {
    let (status, headers, _) = exchange(app, method, uri, headers, form).await;
    (status, headers)
}

/// Cross-site requests (CSRF) are refused before they load a session; every answer forbids
/// framing and caching; pages take the signed-in session only, not Basic credentials.
#[tokio::test]
async fn cross_site_posts_framing_and_basic_on_pages_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn SessionAdmin> = Arc::new(sqlite(dir.path()).await);
    let app = operator_node(store.clone());
    let form = format!("user=admin&password={}", PASSWORD.replace(' ', "+"));
    // A sign-in posted from another site (login CSRF), by either header a browser sends.
    for headers in [
        &[("sec-fetch-site", "cross-site"), ("host", "shop.example")][..],
        &[("origin", "https://evil.example"), ("host", "shop.example")],
        &[("origin", "null"), ("host", "shop.example")],
    ] {
        let (status, _) = request(&app, "POST", "/backoffice/login", headers, Some(&form)).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{headers:?}");
    }
    // The operator signs in from the backoffice's own page.
    let (status, out) = request(
        &app,
        "POST",
        "/backoffice/login",
        &[
            ("sec-fetch-site", "same-origin"),
            ("origin", "http://shop.example"),
            ("host", "shop.example"),
        ],
        Some(&form),
    )
    .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let cookie = out["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    // A shopper's session, which another site tries to have the operator delete.
    let r = send(
        &app,
        "POST",
        "/cart/items",
        None,
        Some(json!({"sku": "K", "qty": 1})),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    let auth = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("admin:{PASSWORD}"))
    );
    let list = store
        .list(&session_failover::store::ListQuery {
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    let shopper = list
        .iter()
        .find(|m| m.app == "storefront")
        .unwrap()
        .key
        .clone();
    let before = store.length().await.unwrap();
    let delete = format!("/backoffice/sessions/{shopper}/delete");
    let (status, _) = request(
        &app,
        "POST",
        &delete,
        &[
            ("cookie", &cookie),
            ("origin", "https://evil.example"),
            ("host", "shop.example"),
        ],
        None,
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let api = format!("/backoffice/api/sessions/{shopper}");
    let (status, _) = request(
        &app,
        "DELETE",
        &api,
        &[("authorization", &auth), ("sec-fetch-site", "cross-site")],
        None,
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(store.length().await.unwrap(), before, "nothing was deleted");
    // Pages: the session, not Basic credentials (a browser would replay cached ones).
    let (status, _) = request(
        &app,
        "GET",
        "/backoffice",
        &[("authorization", &auth)],
        None,
    )
    .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let (status, page) = request(&app, "GET", "/backoffice", &[("cookie", &cookie)], None).await;
    assert_eq!(status, StatusCode::OK);
    for (name, value) in [
        ("x-frame-options", "DENY"),
        ("x-content-type-options", "nosniff"),
        ("cache-control", "no-store"),
        ("referrer-policy", "no-referrer"),
    ] {
        assert_eq!(page[name], value, "{name}");
    }
    assert!(
        page["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("frame-ancestors 'none'")
    );
    // Scripts: Basic on the API, no browser headers: allowed, and the same delete works
    // from the operator's own page.
    let (status, _) = request(
        &app,
        "GET",
        "/backoffice/api/stats",
        &[("authorization", &auth)],
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    for limit in ["0", "1001"] {
        let (status, _) = request(
            &app,
            "GET",
            &format!("/backoffice/api/sessions?limit={limit}"),
            &[("authorization", &auth)],
            None,
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "limit {limit}");
    }
    let (status, _) = request(
        &app,
        "GET",
        "/backoffice/api/stats",
        &[("authorization", &auth)],
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = request(
        &app,
        "POST",
        &delete,
        &[("cookie", &cookie), ("sec-fetch-site", "same-origin")],
        None,
    )
    .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(store.length().await.unwrap(), before - 1);
}

/// A request to the app as if from `peer` (the server puts the connection's address there).
async fn from(
    app: &Router,
    peer: &str,
    uri: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, http::HeaderMap) {
    let mut builder = Request::builder().method("GET").uri(uri);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let mut request = builder.body(Body::empty()).unwrap();
    let addr: std::net::SocketAddr = peer.parse().unwrap();
    request
        .extensions_mut()
        .insert(axum::extract::ConnectInfo(addr));
    let response = app.clone().oneshot(request).await.unwrap();
    (response.status(), response.headers().clone())
}

fn basic(user: &str, password: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

/// Guessing costs the guesser: ten failures lock the address out (right password or not), and
/// other addresses are not affected; behind a balancer on a private network, the address is the
/// one the balancer forwards.
#[tokio::test]
async fn repeated_failed_sign_ins_lock_the_address_out() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn SessionAdmin> = Arc::new(sqlite(dir.path()).await);
    let app = operator_node(store);
    let wrong = basic("admin", "guess");
    let right = basic("admin", PASSWORD);
    for i in 0..10 {
        let (status, _) = from(
            &app,
            "203.0.113.7:5000",
            "/backoffice/api/stats",
            &[("authorization", &wrong)],
        )
        .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "attempt {i}");
    }
    let (status, headers) = from(
        &app,
        "203.0.113.7:5001",
        "/backoffice/api/stats",
        &[("authorization", &right)],
    )
    .await;
    assert_eq!(
        status,
        StatusCode::TOO_MANY_REQUESTS,
        "locked out, even with the password"
    );
    assert_eq!(headers["retry-after"], "900");
    // The same client through a balancer on a private address: still locked out.
    let (status, _) = from(
        &app,
        "10.0.0.2:6000",
        "/backoffice/api/stats",
        &[
            ("authorization", &right),
            ("x-forwarded-for", "203.0.113.7"),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    // Another client, directly or through the balancer: not affected.
    for (peer, forwarded) in [
        ("198.51.100.1:5000", None),
        ("10.0.0.2:6001", Some("198.51.100.2")),
    ] {
        let mut headers = vec![("authorization", right.as_str())];
        if let Some(f) = forwarded {
            headers.push(("x-forwarded-for", f));
        }
        let (status, _) = from(&app, peer, "/backoffice/api/stats", &headers).await;
        assert_eq!(status, StatusCode::OK, "{peer} {forwarded:?}");
    }
}

/// Password checks run off the async threads, a bounded number at once: attempts that find
/// every slot busy are refused at once (429, retry in a second) instead of queueing argon2 work.
#[tokio::test(flavor = "current_thread")]
async fn concurrent_guesses_are_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn SessionAdmin> = Arc::new(sqlite(dir.path()).await);
    let app = operator_node(store);
    let wrong = basic("admin", "guess");
    let mut attempts = tokio::task::JoinSet::new();
    for i in 0..20 {
        let app = app.clone();
        let wrong = wrong.clone();
        attempts.spawn(async move {
            let peer = format!("203.0.113.{}:5000", 10 + i);
            from(
                &app,
                &peer,
                "/backoffice/api/stats",
                &[("authorization", &wrong)],
            )
            .await
        });
    }
    let results = attempts.join_all().await;
    let busy = results
        .iter()
        .filter(|(status, headers)| {
            *status == StatusCode::TOO_MANY_REQUESTS && headers["retry-after"] == "1"
        })
        .count();
    let wrong_answers = results
        .iter()
        .filter(|(status, _)| *status == StatusCode::UNAUTHORIZED)
        .count();
    assert_eq!(busy + wrong_answers, 20, "{results:?}");
    assert!(
        busy >= 10,
        "most concurrent guesses were not checked: {busy} of 20"
    );
    assert!(wrong_answers >= 1);
}

/// Guesses with made-up user names run no password check: concurrent ones are all answered
/// wrong (none finds the check slots busy), while the same guesses with the operator's name
/// queue for the slots. Credentials verified before the operator's name was locked out by
/// guesses from many addresses keep working.
#[tokio::test(flavor = "current_thread")]
async fn made_up_names_cost_no_check_and_a_verified_operator_survives_a_lockout() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn SessionAdmin> = Arc::new(sqlite(dir.path()).await);
    let app = operator_node(store);
    let right = basic("admin", PASSWORD);
    let (status, _) = from(
        &app,
        "198.51.100.9:5000",
        "/backoffice/api/stats",
        &[("authorization", &right)],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let mut attempts = tokio::task::JoinSet::new();
    for i in 0..20 {
        let app = app.clone();
        attempts.spawn(async move {
            let guess = basic(&format!("user{i}"), "guess");
            let peer = format!("203.0.113.{}:5000", 10 + i);
            from(
                &app,
                &peer,
                "/backoffice/api/stats",
                &[("authorization", &guess)],
            )
            .await
            .0
        });
    }
    let statuses = attempts.join_all().await;
    assert!(
        statuses.iter().all(|s| *s == StatusCode::UNAUTHORIZED),
        "no made-up name waits for a check slot: {statuses:?}"
    );
    // Fifty wrong passwords for the operator's name, each from another address: the name is
    // locked out (busy slots answer some of them; keep going until it is).
    let wrong = basic("admin", "guess");
    let mut locked = false;
    for i in 0..2000 {
        let peer = format!("192.0.2.{}:{}", i % 250, 1000 + i);
        let (status, headers) = from(
            &app,
            &peer,
            "/backoffice/api/stats",
            &[("authorization", &wrong)],
        )
        .await;
        if status == StatusCode::TOO_MANY_REQUESTS && headers["retry-after"] == "900" {
            locked = true;
            break;
        }
    }
    assert!(
        locked,
        "the operator's name is locked out after repeated failures"
    );
    let (status, _) = from(
        &app,
        "198.51.100.77:5000",
        "/backoffice/api/stats",
        &[("authorization", &right)],
    )
    .await;
    assert_eq!(status, StatusCode::OK, "verified credentials still pass");
    let (status, _) = from(
        &app,
        "198.51.100.78:5000",
        "/backoffice/api/stats",
        &[("authorization", &basic("admin", "another guess"))],
    )
    .await;
    assert_eq!(
        status,
        StatusCode::TOO_MANY_REQUESTS,
        "new checks of the name are refused"
    );
    // Guesses of the locked-out name count against their address: after ten, even the
    // remembered credentials get no answer from it (the memory is no oracle).
    for _ in 0..10 {
        from(
            &app,
            "198.51.100.79:5000",
            "/backoffice/api/stats",
            &[("authorization", &wrong)],
        )
        .await;
    }
    let (status, _) = from(
        &app,
        "198.51.100.79:5001",
        "/backoffice/api/stats",
        &[("authorization", &right)],
    )
    .await;
    assert_eq!(
        status,
        StatusCode::TOO_MANY_REQUESTS,
        "a locked-out address gets nothing"
    );
}
