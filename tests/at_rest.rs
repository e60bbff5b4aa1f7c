//! Sessions at rest: encryption in the table, tampering, rotation across a restart, values whose
//! type changed, and the serializability checker.

mod common;

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::routing::{get, post};
use common::{Client, Server, config, config_dir, items, send, sqlite};
use http::StatusCode;
use serde::{Deserialize, Serialize, Serializer};
use serde_json::json;
use session_failover::persist::Persistence;
use session_failover::session::SessionId;
use session_failover::store::SessionAdmin;
use session_failover::{SaveMode, Session, SessionFailoverLayer, server};
use sqlx::Row as _;

const SECRET_A: &str = "secret-A-0123456789abcdef0123456789abcdef0123456789abcdef0123456789";
const SECRET_B: &str = "secret-B-0123456789abcdef0123456789abcdef0123456789abcdef0123456789";

fn encrypted(secret: &str, previous: &str) -> String {
    format!(
        "spring.session.enabled=true\nspring.session.storefront.save=sync\n\
         session.secret={secret}\nsession.secret.previous={previous}\n"
    )
}

fn node(local: &str, name: &str, store: Arc<dyn SessionAdmin>) -> Router {
    let config = config(local);
    let persistence = Persistence::from_config(store, &config);
    server::app(&config, name, Some(persistence))
}

async fn blob(sqlite: &session_failover::store::SqliteStore, id: &str) -> Vec<u8> {
    let key = SessionId::parse(id).unwrap().store_key();
    sqlx::query("SELECT data FROM stored_http_session WHERE session_id = ?")
        .bind(key.as_str())
        .fetch_one(sqlite.pool())
        .await
        .unwrap()
        .get("data")
}

async fn set_blob(sqlite: &session_failover::store::SqliteStore, id: &str, data: &[u8]) {
    let key = SessionId::parse(id).unwrap().store_key();
    sqlx::query("UPDATE stored_http_session SET data = ? WHERE session_id = ?")
        .bind(data)
        .bind(key.as_str())
        .execute(sqlite.pool())
        .await
        .unwrap();
}

#[tokio::test]
async fn the_table_holds_ciphertext_and_tampering_gives_a_fresh_session() {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = sqlite(dir.path()).await;
    let store: Arc<dyn SessionAdmin> = Arc::new(sqlite.clone());
    let local = encrypted(SECRET_A, "");
    let a = node(&local, "a", store.clone());
    let mut ids = Vec::new();
    for _ in 0..5 {
        let r = send(
            &a,
            "POST",
            "/cart/items",
            None,
            Some(json!({"sku": "PLAINTEXT-SKU-42", "qty": 3})),
        )
        .await;
        ids.push(r.cookie("JSESSIONID").unwrap());
    }
    for id in &ids {
        let data = blob(&sqlite, id).await;
        assert_eq!(data[1] & 0b10, 0b10, "the encrypted flag is set");
        assert!(
            !data.windows(16).any(|w| w == b"PLAINTEXT-SKU-42"),
            "no plaintext value in the table"
        );
    }
    // Each tampering is caught on a node that must restore from the table.
    let good = blob(&sqlite, &ids[0]).await;
    let mut flipped = good.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 0x01;
    set_blob(&sqlite, &ids[0], &flipped).await;
    set_blob(&sqlite, &ids[1], &good[..good.len() / 2]).await;
    let other = blob(&sqlite, &ids[3]).await;
    set_blob(&sqlite, &ids[2], &other).await; // another row's blob
    let b = node(&local, "b", store.clone());
    for id in &ids[..3] {
        let r = send(&b, "GET", "/cart", Some(&format!("JSESSIONID={id}")), None).await;
        assert_eq!(r.status, StatusCode::OK);
        assert!(
            items(&r.body).is_empty(),
            "a fresh session, not the tampered one"
        );
    }
    // The untouched ones restore; with a wrong secret they do not (and nothing fails).
    let r = send(
        &b,
        "GET",
        "/cart",
        Some(&format!("JSESSIONID={}", ids[4])),
        None,
    )
    .await;
    assert_eq!(items(&r.body), [("PLAINTEXT-SKU-42".to_owned(), 3)]);
    let wrong = node(&encrypted(SECRET_B, ""), "c", store.clone());
    let r = send(
        &wrong,
        "GET",
        "/cart",
        Some(&format!("JSESSIONID={}", ids[3])),
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(items(&r.body).is_empty());
    // A principal changed in the table no longer matches the blob.
    let key = SessionId::parse(&ids[4]).unwrap().store_key();
    sqlx::query("UPDATE stored_http_session SET principal = 'admin' WHERE session_id = ?")
        .bind(key.as_str())
        .execute(sqlite.pool())
        .await
        .unwrap();
    let d = node(&local, "d", store.clone());
    let r = send(
        &d,
        "GET",
        "/cart",
        Some(&format!("JSESSIONID={}", ids[4])),
        None,
    )
    .await;
    assert!(
        items(&r.body).is_empty() && r.body["user"].is_null(),
        "no privilege from a forged principal"
    );
}

#[tokio::test]
async fn sessions_survive_a_restart_with_a_rotated_secret_and_move_to_the_new_key() {
    let work = tempfile::tempdir().unwrap();
    let db = work.path().join("s.db");
    let config = config_dir(
        work.path(),
        &format!("session.store.url=sqlite://{}\n", db.display()),
    );
    let a = Server::start_with(
        work.path(),
        &config,
        "a",
        "127.0.0.1:0",
        &[("y_session_secret", SECRET_A)],
    );
    let mut user = Client::new();
    user.send(
        &a.base,
        "POST",
        "/cart/items",
        Some(json!({"sku": "ROT-1", "qty": 1})),
    )
    .await;
    assert!(
        !a.log_text().contains(SECRET_A),
        "the secret is never logged"
    );
    a.kill();
    let store = session_failover::store::SqliteStore::connect(
        &format!("sqlite://{}", db.display()),
        &Default::default(),
    )
    .await
    .unwrap();
    let id = user.cookie.clone().unwrap();
    let under_a = blob(&store, &id).await[2];

    let b = Server::start_with(
        work.path(),
        &config,
        "b",
        "127.0.0.1:0",
        &[
            ("y_session_secret", SECRET_B),
            ("y_session_secret_previous", SECRET_A),
        ],
    );
    let (status, body) = user.send(&b.base, "GET", "/cart", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        items(&body),
        [("ROT-1".to_owned(), 1)],
        "A's session loads with B current"
    );
    assert_eq!(
        blob(&store, &id).await[2],
        under_a,
        "a read does not rewrite"
    );
    user.send(
        &b.base,
        "POST",
        "/cart/items",
        Some(json!({"sku": "ROT-2", "qty": 1})),
    )
    .await;
    let under_b = blob(&store, &id).await[2];
    assert_ne!(under_b, under_a, "re-encrypted under B on its next write");
    b.kill();
    // With B alone the session still loads (it is under B now).
    let c = Server::start_with(
        work.path(),
        &config,
        "c",
        "127.0.0.1:0",
        &[("y_session_secret", SECRET_B)],
    );
    let (_, body) = user.send(&c.base, "GET", "/cart", None).await;
    assert_eq!(items(&body).len(), 2);
    // A short secret refuses to start, naming the key and not the secret.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_session-failover"))
        .args(["check-config", "--config"])
        .arg(&config)
        .env("y_session_secret", "too-short-secret-value")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2));
    assert!(err.contains("environment variable y_session_secret: session.secret: a secret must be at least 64 characters; this one has 22"), "{err}");
    assert!(!err.contains("too-short-secret-value"), "{err}");
}

/// Collects log lines written while it is the thread's default subscriber.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    fn capture() -> (Self, tracing::subscriber::DefaultGuard) {
        let logs = Logs::default();
        let writer = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .finish();
        (logs, tracing::subscriber::set_default(subscriber))
    }
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

#[derive(Clone, Serialize, Deserialize, PartialEq, Debug)]
struct CartV1 {
    skus: Vec<String>,
}

#[derive(Clone, Serialize, Deserialize, PartialEq, Debug)]
struct CartV2 {
    lines: Vec<(String, u32)>,
}

#[tokio::test]
async fn an_attribute_that_does_not_decode_as_asked_is_named_and_kept_while_the_others_load() {
    let (logs, _guard) = Logs::capture();
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn SessionAdmin> = Arc::new(sqlite(dir.path()).await);
    let old = Router::new()
        .route(
            "/",
            post(|s: Session| async move {
                s.insert(
                    "cart",
                    CartV1 {
                        skus: vec!["A".into()],
                    },
                );
                s.insert("user", "ann".to_owned());
            }),
        )
        .layer(SessionFailoverLayer::new("shop").with_store(store.clone(), SaveMode::Sync));
    let id = send(&old, "POST", "/", None, None)
        .await
        .cookie("JSESSIONID")
        .unwrap();
    // The next release changed the cart's type incompatibly.
    let new = Router::new()
        .route(
            "/",
            get(|s: Session| async move {
                let cart = s.get::<CartV2>("cart");
                let user = s.get::<String>("user");
                axum::Json(
                    json!({"cart": cart.is_some(), "user": user, "names": s.attribute_names()}),
                )
            }),
        )
        .layer(SessionFailoverLayer::new("shop").with_store(store.clone(), SaveMode::Sync));
    let r = send(&new, "GET", "/", Some(&format!("JSESSIONID={id}")), None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["cart"], false);
    assert_eq!(r.body["user"], "ann", "the other attributes load");
    assert_eq!(
        r.body["names"],
        json!(["cart", "user"]),
        "a read never changes the session: the unreadable value stays (an older node, or a \
         get with another type, still reads it)"
    );
    let again = send(&new, "GET", "/", Some(&format!("JSESSIONID={id}")), None).await;
    assert_eq!(again.body["names"], json!(["cart", "user"]));
    let text = logs.text();
    assert!(
        text.contains("ERROR") && text.contains("attribute=\"cart\"") && text.contains("CartV2"),
        "{text}"
    );
}

/// A value whose Serialize always fails.
#[derive(Clone, Deserialize)]
struct Unserializable;

impl Serialize for Unserializable {
    fn serialize<S: Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
        Err(serde::ser::Error::custom(
            "database handles cannot be serialized",
        ))
    }
}

/// A value that loses a field on the way: written, but never read back. (A plain
/// `#[serde(skip)]` field never reaches any serializer at all, so no serde-based check can see
/// it; see the checker's docs.)
#[derive(Clone, Serialize, Deserialize)]
struct Lossy {
    kept: u32,
    #[serde(skip_deserializing)]
    lost: u32,
}

fn checked(store: Arc<dyn SessionAdmin>, check: bool, response_error: bool) -> Router {
    Router::new()
        .route(
            "/bad",
            post(|s: Session| async move {
                s.insert_local("connection", std::sync::mpsc::channel::<u8>().0);
                s.insert("handle", Unserializable);
                s.insert("lossy", Lossy { kept: 1, lost: 2 });
                s.insert("fine", vec![1u32, 2, 3]);
                "ok"
            }),
        )
        .route(
            "/good",
            post(|s: Session| async move {
                s.insert("fine", vec![1u32, 2, 3]);
                "ok"
            }),
        )
        .layer(
            SessionFailoverLayer::new("shop")
                .with_store(store, SaveMode::Sync)
                .with_serialization_check(check, response_error),
        )
}

#[tokio::test]
async fn the_checker_names_what_would_not_survive_failover() {
    let (logs, _guard) = Logs::capture();
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn SessionAdmin> = Arc::new(sqlite(dir.path()).await);

    // Off: nothing extra is encoded, whatever the session holds.
    let before = session_failover::check::encodings();
    let off = checked(store.clone(), false, false);
    for _ in 0..10 {
        assert_eq!(
            send(&off, "POST", "/bad", None, None).await.status,
            StatusCode::OK
        );
    }
    assert_eq!(
        session_failover::check::encodings(),
        before,
        "the check off costs nothing"
    );
    assert!(!logs.text().contains("Failed to serialize attribute: lossy"));

    // On: each culprit named, at ERROR, with its type; the request still succeeds.
    let on = checked(store.clone(), true, false);
    assert_eq!(
        send(&on, "POST", "/bad", None, None).await.status,
        StatusCode::OK
    );
    assert!(session_failover::check::encodings() > before);
    let text = logs.text();
    for (name, why) in [
        ("connection", "insert_local"),
        ("handle", "database handles cannot be serialized"),
        ("lossy", "does not round-trip"),
    ] {
        let line = text
            .lines()
            .find(|l| l.contains(&format!("Failed to serialize attribute: {name} (")))
            .unwrap_or_else(|| panic!("{name} not named in:\n{text}"));
        assert!(line.contains("ERROR") && line.contains(why), "{line}");
    }
    assert!(
        text.contains("Failed to serialize attribute: handle (at_rest::Unserializable)"),
        "{text}"
    );
    assert!(
        !text.contains("Failed to serialize attribute: fine"),
        "{text}"
    );

    // With response.error the request answers 500 (an empty body; the names are in the log).
    let strict = checked(store.clone(), true, true);
    let r = send(&strict, "POST", "/bad", None, None).await;
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(r.body, serde_json::Value::Null);
    assert_eq!(
        send(&strict, "POST", "/good", None, None).await.status,
        StatusCode::OK
    );
}

#[test]
fn the_checker_keys_are_read_from_properties() {
    let c = config(
        "session.serialization.check=true\nsession.serialization.check.extensions=storefront\nsession.serialization.check.response.error=true\n",
    );
    assert!(c.check_covers("storefront") && !c.check_covers("backoffice"));
    assert!(c.check.response_error);
}

/// The `sessions` command with the secrets given as environment variables.
fn sessions_cli(config: &std::path::Path, secrets: &[(&str, &str)], args: &[&str]) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_session-failover"))
        .args(["sessions", "--config"])
        .arg(config)
        .args(args)
        .envs(secrets.iter().copied())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{args:?}: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

/// After a rotation, a session kept alive by reads alone moves to the new key when it is
/// touched, `sessions reencrypt` moves the idle ones, and once the old secret is removed every
/// user still has their cart.
#[tokio::test]
async fn removing_the_old_secret_after_rotation_loses_nobody() {
    let work = tempfile::tempdir().unwrap();
    let db = work.path().join("s.db");
    // A 20 s timeout: a read-only session is touched once 2 s have passed since its last write.
    let config = config_dir(
        work.path(),
        &format!(
            "session.store.url=sqlite://{}\nsession.timeout=20\n",
            db.display()
        ),
    );
    let only_a = [("y_session_secret", SECRET_A)];
    let rotated = [
        ("y_session_secret", SECRET_B),
        ("y_session_secret_previous", SECRET_A),
    ];
    let only_b = [("y_session_secret", SECRET_B)];
    let a = Server::start_with(work.path(), &config, "a", "127.0.0.1:0", &only_a);
    let (mut reader, mut idle) = (Client::new(), Client::new());
    for (user, sku) in [(&mut reader, "READS"), (&mut idle, "IDLE")] {
        let (status, _) = user
            .send(
                &a.base,
                "POST",
                "/cart/items",
                Some(json!({"sku": sku, "qty": 1})),
            )
            .await;
        assert_eq!(status, StatusCode::OK);
    }
    a.kill();
    let store = session_failover::store::SqliteStore::connect(
        &format!("sqlite://{}", db.display()),
        &Default::default(),
    )
    .await
    .unwrap();
    let key_id = |secret: &str| {
        session_failover::codec::Keys::new(secret, &[])
            .unwrap()
            .current_id()
    };
    let (reader_id, idle_id) = (reader.cookie.clone().unwrap(), idle.cookie.clone().unwrap());
    assert_eq!(blob(&store, &reader_id).await[2], key_id(SECRET_A));

    // The rotation: B current, A previous. The reader only reads, past the touch interval.
    let b = Server::start_with(work.path(), &config, "b", "127.0.0.1:0", &rotated);
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    let (status, body) = reader.send(&b.base, "GET", "/cart", None).await;
    assert_eq!(
        (status, items(&body)),
        (StatusCode::OK, vec![("READS".to_owned(), 1)])
    );
    let moved = async {
        for _ in 0..100 {
            if blob(&store, &reader_id).await[2] == key_id(SECRET_B) {
                return true;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        false
    };
    assert!(moved.await, "a touched session is written again under B");
    assert_eq!(
        blob(&store, &idle_id).await[2],
        key_id(SECRET_A),
        "not touched yet"
    );
    let metrics = reqwest::get(format!("{}/metrics", b.base))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("session_rekeys_total{") && l.ends_with(" 1")),
        "{metrics}"
    );
    b.kill();

    // The idle session is moved by the command; a second run finds nothing left to do.
    let first = sessions_cli(&config, &rotated, &["reencrypt"]);
    assert!(
        first.contains("read 2 live session(s): 1 written again under the current key, 1 already under it, 0 changed"),
        "{first}"
    );
    assert_eq!(blob(&store, &idle_id).await[2], key_id(SECRET_B));
    let again = sessions_cli(&config, &rotated, &["reencrypt", "--batch-size", "1"]);
    assert!(
        again.contains("0 written again under the current key, 2 already under it"),
        "{again}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&sessions_cli(&config, &only_b, &["--json", "reencrypt"])).unwrap();
    assert_eq!(
        (
            json["read"].as_u64(),
            json["current"].as_u64(),
            json["unreadable"].as_u64()
        ),
        (Some(2), Some(2), Some(0)),
        "{json}"
    );

    // Run with secrets that are not the nodes' (the operator's mistake): the sessions it cannot
    // read are counted, and the run fails, so a script stops before removing a secret.
    let secret_c = SECRET_A.replace('A', "C");
    let other = [("y_session_secret", secret_c.as_str())];
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_session-failover"))
        .args(["sessions", "--config"])
        .arg(&config)
        .arg("reencrypt")
        .envs(other.iter().map(|(k, v)| (*k, *v)))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("2 session(s) do not decode with the configured session.secret"),
        "{err}"
    );

    // The old secret removed: both carts are still there.
    let c = Server::start_with(work.path(), &config, "c", "127.0.0.1:0", &only_b);
    for (user, sku) in [(&mut reader, "READS"), (&mut idle, "IDLE")] {
        let (status, body) = user.send(&c.base, "GET", "/cart", None).await;
        assert_eq!(
            (status, items(&body)),
            (StatusCode::OK, vec![(sku.to_owned(), 1)])
        );
    }
}
