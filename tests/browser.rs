//! The backoffice in a real headless browser (Debian's Chromium, driven by Playwright from
//! tests/browser/backoffice.mjs): sign in, find a session by principal, open it, delete it; the
//! user's next request gets a fresh session. Needs `chromium` and `node` with
//! `tests/browser/node_modules` (`npm ci` there); `.ci/run` installs them. Elsewhere the test
//! says it was skipped.

mod common;

use std::process::Command;

use argon2::password_hash::{PasswordHasher as _, SaltString};
use common::{Client, Server, config_dir, items, require_program};
use http::StatusCode;
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_finds_and_deletes_a_session_in_the_browser() {
    let test = "an_operator_finds_and_deletes_a_session_in_the_browser";
    if !require_program("chromium", test) || !require_program("node", test) {
        return;
    }
    if !std::path::Path::new("tests/browser/node_modules/playwright-core").exists() {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("{test}: run `npm ci` in tests/browser (.ci/run does)");
        }
        use std::io::Write as _;
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED {test}: run `npm ci` in tests/browser"
        );
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let password = "correct horse battery staple";
    let salt = SaltString::encode_b64(b"fedcba9876543210").unwrap();
    let hash = argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .unwrap()
        .to_string();
    let config = config_dir(
        work.path(),
        &format!(
            "session.store.url=sqlite://{}/s.db\nsession.backoffice.user=admin\nsession.backoffice.password.hash={hash}\n",
            work.path().display()
        ),
    );
    let server = Server::start(work.path(), &config, "a");
    let mut shopper = Client::new();
    shopper
        .send(
            &server.base,
            "POST",
            "/cart/items",
            Some(json!({"sku": "BROWSER-1", "qty": 1})),
        )
        .await;
    let (_, body) = shopper
        .send(
            &server.base,
            "POST",
            "/login",
            Some(json!({"user": "grace.hopper"})),
        )
        .await;
    assert_eq!(body["user"], "grace.hopper");
    let mut other = Client::new();
    other
        .send(
            &server.base,
            "POST",
            "/cart/items",
            Some(json!({"sku": "OTHER", "qty": 1})),
        )
        .await;

    let screenshot = std::env::var("SESSION_FAILOVER_SCREENSHOT")
        .unwrap_or_else(|_| work.path().join("backoffice.png").display().to_string());
    let out = Command::new("node")
        .arg("tests/browser/backoffice.mjs")
        .args([
            server.base.as_str(),
            "admin",
            password,
            "grace.hopper",
            screenshot.as_str(),
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let result: Value = serde_json::from_str(stdout.lines().last().unwrap_or_default()).unwrap();
    assert_eq!(
        result["found"], true,
        "one session of grace.hopper was listed"
    );
    assert_eq!(result["deleted"], true);
    assert_eq!(result["key"].as_str().unwrap().len(), 43);
    assert!(
        std::fs::metadata(&screenshot).unwrap().len() > 1000,
        "a screenshot was taken"
    );

    // The shopper's next request gets a fresh session; the other shopper keeps theirs.
    let (status, body) = shopper.send(&server.base, "GET", "/cart", None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(items(&body).is_empty() && body["user"].is_null(), "{body}");
    let (_, body) = other.send(&server.base, "GET", "/cart", None).await;
    assert_eq!(items(&body).len(), 1);
}
