//! `session-failover sessions list|show|delete|purge|stats` against SQLite and PostgreSQL.

mod common;

use std::path::Path;
use std::process::Command;

use common::backends::{Backend, TestDb};
use common::config_dir;
use serde_json::Value;
use session_failover::session::SessionId;
use session_failover::store::{self, Meta, Record, StoreOptions, now_millis};

fn record(app: &str, principal: Option<&str>, node: &str, expired: bool) -> Record {
    let now = now_millis();
    Record {
        meta: Meta {
            key: SessionId::generate().store_key(),
            app: app.into(),
            context_path: "/".into(),
            node: node.into(),
            principal: principal.map(str::to_owned),
            created_at: now,
            modified_at: now,
            expires_at: if expired { now - 1000 } else { now + 3_600_000 },
            max_inactive_secs: 3600,
            version: 1,
            attributes: vec!["cart".into()],
            size_bytes: 10,
        },
        data: vec![1, 0, 0x80, 0, 0, 0, 0, 0, 0, 0],
    }
}

fn cli(dir: &Path, config: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_session-failover"))
        .arg("sessions")
        .args(args)
        .arg("--config")
        .arg(config)
        .current_dir(dir)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn json(out: &str) -> Value {
    serde_json::from_str(out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

#[test]
fn keys_that_begin_with_a_hyphen_are_keys_not_flags() {
    // base64url keys begin with '-' one time in 64: `--after -x…` and `show -x…` must work.
    let work = tempfile::tempdir().unwrap();
    let config = config_dir(
        work.path(),
        &format!(
            "session.store.url=sqlite://{}/s.db\n",
            work.path().display()
        ),
    );
    // The operators' tools do not create a store: the server or `migrate` does.
    let migrated = Command::new(env!("CARGO_BIN_EXE_session-failover"))
        .args(["migrate", "--config"])
        .arg(&config)
        .current_dir(work.path())
        .status()
        .unwrap();
    assert!(migrated.success());
    let key = format!("-{}", &SessionId::generate().store_key().as_str()[1..]);
    let (code, _, err) = cli(work.path(), &config, &["list", "--json", "--after", &key]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = cli(work.path(), &config, &["show", &key]);
    assert_eq!(code, 2);
    assert!(err.contains("no session with key"), "{err}");
}

async fn exercise(url: &str) {
    let work = tempfile::tempdir().unwrap();
    let config = config_dir(work.path(), &format!("session.store.url={url}\n"));
    let store = store::open(url, &StoreOptions::default()).await.unwrap();
    let mut records = vec![
        record("storefront", Some("bob"), "node1", false),
        record("storefront", Some("bob"), "node2", false),
        record("storefront", Some("ann"), "node1", false),
        record("backoffice", None, "node2", false),
    ];
    records.extend((0..7).map(|_| record("storefront", None, "node1", true)));
    store.set_many(&records).await.unwrap();
    let dir = work.path();

    // list: filters, paging with --after, JSON
    let (code, out, err) = cli(dir, &config, &["list", "--json", "--principal", "bob"]);
    assert_eq!(code, 0, "{err}");
    let page = json(&out);
    assert_eq!(page["sessions"].as_array().unwrap().len(), 2);
    assert!(page["sessions"][0]["attributes"] == serde_json::json!(["cart"]));
    assert!(!out.contains("\"data\""), "no values, ever");
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let mut args = vec!["list", "--json", "--limit", "3"];
        if let Some(a) = &after {
            args.extend(["--after", a.as_str()]);
        }
        let page = json(&cli(dir, &config, &args).1);
        for s in page["sessions"].as_array().unwrap() {
            seen.push(s["key"].as_str().unwrap().to_owned());
        }
        match page["next"].as_str() {
            Some(next) => after = Some(next.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen.len(), 11);
    let (code, text, _) = cli(dir, &config, &["list", "--app", "backoffice"]);
    assert_eq!(code, 0);
    assert!(
        text.contains("backoffice") && text.contains("# 1 session(s)"),
        "{text}"
    );

    // show
    let key = records[2].meta.key.as_str();
    let (code, out, _) = cli(dir, &config, &["show", key, "--json"]);
    assert_eq!(code, 0);
    assert_eq!(json(&out)["principal"], "ann");
    let (code, _, err) = cli(dir, &config, &["show", "not-a-key"]);
    assert_eq!(code, 2);
    assert!(err.contains("\"not-a-key\" is not a session key"), "{err}");

    // stats
    let stats = json(&cli(dir, &config, &["stats", "--json"]).1);
    assert_eq!(
        (
            stats["sessions"].as_u64(),
            stats["expired"].as_u64(),
            stats["signed_in"].as_u64()
        ),
        (Some(11), Some(7), Some(3))
    );
    assert_eq!(stats["by_app"]["backoffice"], 1);

    // delete one, delete a principal's, purge
    let (code, out, _) = cli(dir, &config, &["delete", key, "--json"]);
    assert_eq!((code, json(&out)["deleted"].as_u64()), (0, Some(1)));
    let (code, _, err) = cli(dir, &config, &["delete", key]);
    assert_eq!(code, 2, "a second delete says there is no such session");
    assert!(err.contains("no session with key"), "{err}");
    let (code, out, _) = cli(dir, &config, &["delete", "--principal", "bob"]);
    assert_eq!(code, 0);
    assert!(out.contains("deleted 2 session(s) of bob"), "{out}");
    let (code, out, _) = cli(dir, &config, &["purge", "--json", "--batch-size", "2"]);
    assert_eq!((code, json(&out)["deleted"].as_u64()), (0, Some(7)));
    assert_eq!(
        store.length().await.unwrap(),
        1,
        "only the backoffice session is left"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_command_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    exercise(&format!("sqlite://{}/s.db", dir.path().display())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_command_on_postgres() {
    let Some(db) = TestDb::create(Backend::Postgres, "sessions_command_on_postgres").await else {
        return;
    };
    exercise(&db.url).await;
}

/// What the table holds reaches the operator's terminal escaped (no control characters, no
/// bidirectional overrides), and a row whose key is not a session key is skipped, not shown.
#[tokio::test]
async fn hostile_rows_cannot_write_to_the_terminal() {
    let work = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/s.db", work.path().display());
    let config = config_dir(work.path(), &format!("session.store.url={url}\n"));
    let store = store::SqliteStore::connect(&url, &StoreOptions::default())
        .await
        .unwrap();
    store.migrate().await.unwrap();
    let mut hostile = record(
        "storefront",
        Some("eve\u{1b}[2J\u{1b}[31mroot"),
        "n\u{202e}1",
        false,
    );
    hostile.meta.attributes = vec!["cart\ninjected".into()];
    store::SessionStore::set_many(&store, &[hostile])
        .await
        .unwrap();
    // A row written around the store, with a key that is markup.
    sqlx::query(
        "INSERT INTO stored_http_session SELECT '<script>x</script>', app, context_path, node, \
         principal, created_at, modified_at, expires_at, max_inactive_secs, version, attributes, \
         size_bytes, data FROM stored_http_session",
    )
    .execute(store.pool())
    .await
    .unwrap();
    for args in [&["list"][..], &["stats"]] {
        let (code, out, err) = cli(work.path(), &config, args);
        assert_eq!(code, 0, "{err}");
        assert!(
            !out.contains('\u{1b}') && !out.contains('\u{202e}') && !out.contains("<script>"),
            "{out:?}"
        );
    }
    let (_, out, _) = cli(work.path(), &config, &["list"]);
    assert!(out.contains("eve\\u{1b}[2J\\u{1b}[31mroot"), "{out}");
    assert!(
        out.contains("n\\u{202e}1") && out.contains("cart\\u{a}injected"),
        "{out}"
    );
    assert!(
        out.contains("# 1 session(s)"),
        "the markup row is skipped: {out}"
    );
}

/// A reader that goes away (`sessions list | head`) ends the command quietly, as for any Unix
/// tool: exit 0, no panic, no backtrace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_pipe_ends_the_listing_quietly() {
    use session_failover::store::SessionStore as _;
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/s.db", dir.path().display());
    let store = store::SqliteStore::connect(&url, &StoreOptions::default())
        .await
        .unwrap();
    store.migrate().await.unwrap();
    // More than a pipe's buffer (64 KiB) of listing.
    let rows: Vec<Record> = (0..1000)
        .map(|_| record("storefront", Some("ann"), "a", false))
        .collect();
    store.set_many(&rows).await.unwrap();
    let config = config_dir(dir.path(), &format!("session.store.url={url}\n"));
    let mut child = Command::new(env!("CARGO_BIN_EXE_session-failover"))
        .args(["sessions", "list", "--limit", "1000", "--config"])
        .arg(&config)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}
