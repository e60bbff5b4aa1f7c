//! Real processes: `session-failover serve` nodes on 127.0.0.1 sharing one SQLite file, killed
//! with SIGKILL.

mod common;

use std::process::Command;

use common::{Client, Server, config_dir, items};
use http::StatusCode;
use serde_json::json;

fn store_line(dir: &std::path::Path) -> String {
    format!(
        "session.store.url=sqlite://{}\n",
        dir.join("shared.db").display()
    )
}

#[tokio::test]
async fn a_cart_survives_a_killed_node_and_a_restart() {
    let work = tempfile::tempdir().unwrap();
    let config = config_dir(work.path(), &store_line(work.path()));
    let a = Server::start(work.path(), &config, "a");
    let b = Server::start(work.path(), &config, "b");

    let mut user = Client::new();
    for (sku, qty) in [("SKU-1", 2), ("SKU-2", 1), ("SKU-1", 1)] {
        let (status, _) = user
            .send(
                &a.base,
                "POST",
                "/cart/items",
                Some(json!({"sku": sku, "qty": qty})),
            )
            .await;
        assert_eq!(status, StatusCode::OK);
    }
    let (_, body) = user
        .send(&a.base, "POST", "/login", Some(json!({"user": "ann"})))
        .await;
    assert_eq!(body["user"], "ann");
    let cookie = user.cookie.clone().unwrap();

    a.kill();

    // The load balancer now sends the user to b, which has never seen the session.
    let (status, body) = user.send(&b.base, "GET", "/cart", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        items(&body),
        [("SKU-1".to_owned(), 3), ("SKU-2".to_owned(), 1)]
    );
    assert_eq!(body["user"], "ann");
    assert_eq!(
        user.cookie.as_deref(),
        Some(cookie.as_str()),
        "same session, no new cookie"
    );
    assert!(
        b.log_text().contains("restored from store"),
        "b logs the restore"
    );
    assert!(
        !b.log_text().contains(&cookie),
        "the raw id is never logged"
    );

    let (status, _) = user
        .send(
            &b.base,
            "POST",
            "/cart/items",
            Some(json!({"sku": "SKU-3", "qty": 5})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);

    // a comes back with a cold cache and restores b's latest state.
    let a = Server::start(work.path(), &config, "a2");
    let (_, body) = user.send(&a.base, "GET", "/cart", None).await;
    assert_eq!(
        items(&body),
        [
            ("SKU-1".to_owned(), 3),
            ("SKU-2".to_owned(), 1),
            ("SKU-3".to_owned(), 5)
        ]
    );
    assert_eq!(
        a.terminate().code(),
        Some(0),
        "SIGTERM stops the server cleanly"
    );
    drop(b);
}

/// Users in the storm test: enough that restores arrive while the read flights are busy.
const STORM_USERS: usize = 120;

/// A small failover storm: `STORM_USERS` carts made on node a, a killed, every user's next
/// request sent to b at once. Each user gets its own cart back (a batch read answers each
/// restore with its own row), and b read the rows in fewer store reads than restores when
/// restores are batched (`session.restore.batch`), one each when they are not.
async fn storm(store_line: &str, env: &[(&str, &str)]) -> (f64, f64) {
    let work = tempfile::tempdir().unwrap();
    let config = config_dir(work.path(), store_line);
    let a = Server::start(work.path(), &config, "a");
    let b = Server::start_with(work.path(), &config, "b", "127.0.0.1:0", env);
    let mut users = Vec::new();
    for chunk in 0..STORM_USERS / 8 {
        let adds = (0..8).map(|i| {
            let n = chunk * 8 + i;
            let base = a.base.clone();
            async move {
                let mut user = Client::new();
                let add = json!({"sku": format!("SKU-{n}"), "qty": n % 5 + 1});
                let (status, _) = user.send(&base, "POST", "/cart/items", Some(add)).await;
                assert_eq!(status, StatusCode::OK, "user {n}");
                (n, user)
            }
        });
        users.extend(futures_util::future::join_all(adds).await);
    }
    let mut latecomer = Client::new();
    let add = json!({"sku": "SKU-LATE", "qty": 1});
    let (status, _) = latecomer
        .send(&a.base, "POST", "/cart/items", Some(add))
        .await;
    assert_eq!(status, StatusCode::OK);
    a.kill();

    let reads = users.into_iter().map(|(n, mut user)| {
        let base = b.base.clone();
        tokio::spawn(async move {
            let (status, body) = user.send(&base, "GET", "/cart", None).await;
            assert_eq!(status, StatusCode::OK, "user {n}");
            assert_eq!(
                items(&body),
                [(format!("SKU-{n}"), (n % 5 + 1) as u64)],
                "user {n} gets their own cart"
            );
        })
    });
    for read in futures_util::future::join_all(reads).await {
        read.unwrap();
    }
    let restores = common::metric(&b.base, "session_restores_total").await;
    let store_reads = common::metric(&b.base, "session_restore_reads_total").await;
    assert_eq!(restores, STORM_USERS as f64, "every user was restored on b");
    // One more session of a's, restored on b after all the others and alone: its restore
    // sets the gauge last.
    let (status, _) = latecomer.send(&b.base, "GET", "/cart", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        common::metric(&b.base, "session_cache_entries").await,
        (STORM_USERS + 1) as f64,
        "the cache gauge counts the sessions restores cached"
    );
    (restores, store_reads)
}

#[tokio::test]
async fn a_failover_storm_restores_every_cart_in_batched_reads_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let (restores, reads) = storm(&store_line(dir.path()), &[]).await;
    assert!(
        reads < restores,
        "{reads} store reads for {restores} restores"
    );
    let (restores, reads) = storm(
        &store_line(dir.path()),
        &[("y_session_restore_batch", "false")],
    )
    .await;
    assert_eq!(reads, restores, "unbatched: one store read per restore");
}

#[tokio::test]
async fn a_failover_storm_restores_every_cart_in_batched_reads_postgres() {
    let Some(db) = common::backends::TestDb::create(
        common::backends::Backend::Postgres,
        "a_failover_storm_restores_every_cart_in_batched_reads_postgres",
    )
    .await
    else {
        return;
    };
    let line = format!("session.store.url={}\n", db.url);
    let (restores, reads) = storm(&line, &[]).await;
    assert!(
        reads < restores,
        "{reads} store reads for {restores} restores"
    );
}

#[tokio::test]
async fn memory_only_sessions_are_lost_on_restart() {
    for local in [
        "spring.session.storefront.save=\n",
        "spring.session.enabled=false\n",
    ] {
        let work = tempfile::tempdir().unwrap();
        let config = config_dir(work.path(), &format!("{}{local}", store_line(work.path())));
        let a = Server::start(work.path(), &config, "a");
        let mut user = Client::new();
        user.send(
            &a.base,
            "POST",
            "/cart/items",
            Some(json!({"sku": "X", "qty": 1})),
        )
        .await;
        let (_, body) = user.send(&a.base, "GET", "/cart", None).await;
        assert_eq!(
            items(&body),
            [("X".to_owned(), 1)],
            "kept while the node lives"
        );
        a.kill();
        let a = Server::start(work.path(), &config, "a2");
        let (status, body) = user.send(&a.base, "GET", "/cart", None).await;
        assert_eq!(status, StatusCode::OK);
        assert!(items(&body).is_empty(), "{local}: gone after a restart");
        assert!(
            !work.path().join("shared.db").exists(),
            "{local}: no store was even opened"
        );
    }
}

fn run(args: &[&str], dir: &std::path::Path, env: &[(&str, &str)]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_session-failover"))
        .args(args)
        .current_dir(dir)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_properties_fail_start_up_naming_file_line_and_key() {
    let work = tempfile::tempdir().unwrap();
    let config = config_dir(
        work.path(),
        "# local overrides\n\nspring.session.storefront.save=always\n",
    );
    let config = config.to_str().unwrap();
    let (code, _, err) = run(
        &["serve", "--config", config, "--bind", "127.0.0.1:0"],
        work.path(),
        &[],
    );
    assert_eq!(code, 2);
    assert!(
        err.contains("local.properties:3: spring.session.storefront.save = \"always\": expected sync or async"),
        "{err}"
    );

    // An environment override is named as the source of a bad value.
    let good = config_dir(work.path(), "");
    let good = good.to_str().unwrap();
    let (code, _, err) = run(
        &["check-config", "--config", good],
        work.path(),
        &[("y_session_timeout", "soon")],
    );
    assert_eq!(code, 2);
    assert!(
        err.contains("environment variable y_session_timeout: session.timeout = \"soon\""),
        "{err}"
    );

    // A malformed escape is reported with its line.
    let broken = config_dir(work.path(), "a=1\nb=\\u12\n");
    let (code, _, err) = run(
        &["check-config", "--config", broken.to_str().unwrap()],
        work.path(),
        &[],
    );
    assert_eq!(code, 2);
    assert!(err.contains("local.properties:2"), "{err}");

    // A missing --config directory is named.
    let (code, _, err) = run(&["serve", "--config", "/nonexistent/cfg"], work.path(), &[]);
    assert_eq!(code, 2);
    assert!(err.contains("/nonexistent/cfg"), "{err}");
}

#[test]
fn check_config_shows_values_sources_and_typos() {
    let work = tempfile::tempdir().unwrap();
    let config = config_dir(work.path(), "session.timout=60\nsession.timeout=900\n");
    let (code, out, err) = run(
        &["check-config", "--config", config.to_str().unwrap()],
        work.path(),
        &[
            ("y_session_node_name", "node-7"),
            ("y_spring_session_storefront_cookie_name", "SF"),
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("session.timeout=900    # "), "{out}");
    assert!(out.contains("local.properties:2"), "{out}");
    assert!(
        out.contains("session.node.name=node-7    # environment variable y_session_node_name"),
        "{out}"
    );
    assert!(
        out.contains("# storefront: sync, not encrypted, cookie SF path / secure (follows request) httponly true (default)"),
        "{out}"
    );
    assert!(
        out.contains("spring.session.save.async.max.items=2000    # "),
        "{out}"
    );
    assert!(
        out.lines().any(|line| {
            line.starts_with("session.timout=60    # ")
            && line.ends_with(
                "config/local.properties:1    # UNKNOWN KEY, ignored: did you mean session.timeout?"
            )
        }),
        "{out}"
    );
    assert!(
        out.contains("# 1 unknown key(s) above are ignored"),
        "{out}"
    );
}
