//! What a new user and an operator meet first, through the real binary: errors that name their
//! cause, the key and where it was set; `check-config` reporting every problem and reaching the
//! store on request; operators' tools that never create a store; a quiet idle server.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::backends::Backend;
use common::{Server, config_dir, free_port};

/// Runs the binary in `dir` with `args`: exit code, stdout, stderr.
fn run(dir: &Path, args: &[&str]) -> (i32, String, String) {
    run_as(dir, args, false)
}

/// As [`run`]; `unprivileged`: as user nobody when this runs as root (root reads and writes
/// every file, so permissions would not be tested).
fn run_as(dir: &Path, args: &[&str], unprivileged: bool) -> (i32, String, String) {
    let bin = env!("CARGO_BIN_EXE_session-failover");
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"));
    let mut command = if unprivileged && root {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups", bin]);
        c
    } else {
        Command::new(bin)
    };
    let out = command.args(args).current_dir(dir).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn assert_error(result: &(i32, String, String), needles: &[&str]) {
    let (code, out, err) = result;
    assert_eq!(*code, 2, "exit status; stdout {out}, stderr {err}");
    for needle in needles {
        assert!(err.contains(needle), "{needle:?} not in: {err}");
    }
}

#[test]
fn a_refused_connection_is_said_at_once_with_the_key_and_its_line() {
    let work = tempfile::tempdir().unwrap();
    let port = free_port(); // nothing listens there
    config_dir(
        work.path(),
        &format!(
            "# the store\nsession.store.url=postgres://u:pw@127.0.0.1:{port}/x\nsession.store.timeout=60000\n"
        ),
    );
    let started = Instant::now();
    let result = run(work.path(), &["migrate"]);
    assert_error(
        &result,
        &[
            "config/local.properties:2: session.store.url: cannot connect to postgres://u:***@127.0.0.1",
            "Connection refused",
            "is the database server running",
        ],
    );
    assert!(!result.2.contains("pw@"), "no password in: {}", result.2);
    // Not the 60 s timeout: a refused connection does not wait.
    assert!(started.elapsed() < Duration::from_secs(30));
    // The same from the server and from check-config --connect.
    assert_error(
        &run(work.path(), &["serve", "--bind", "127.0.0.1:0"]),
        &[
            "config/local.properties:2: session.store.url",
            "Connection refused",
        ],
    );
    assert_error(
        &run(work.path(), &["check-config", "--connect"]),
        &[
            "config/local.properties:2: session.store.url",
            "Connection refused",
        ],
    );
}

/// Redis: a closed port says where to look; a wrong password or database number gives the
/// server's words, without the password.
#[test]
fn a_redis_store_that_cannot_be_used_says_why() {
    let Some(redis) = common::backends::redis_url("a_redis_store_that_cannot_be_used_says_why")
    else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let port = free_port();
    let host = redis.trim_start_matches("redis://");
    for (url, expected) in [
        (
            format!("redis://127.0.0.1:{port}"),
            vec!["Connection refused", "is the Redis server running"],
        ),
        (
            format!("redis://:secret-pw@{host}"),
            vec!["the server refused", "redis://:***@"],
        ),
        (
            format!("{redis}/99"),
            vec!["the server refused", "DB index is out of range"],
        ),
        (
            "redis://".to_owned(),
            vec!["session.store.url", "not a Redis URL: expected redis://"],
        ),
    ] {
        config_dir(work.path(), &format!("session.store.url={url}\n"));
        let result = run(work.path(), &["check-config", "--connect"]);
        let mut wanted = vec!["config/local.properties:1: session.store.url"];
        wanted.extend(expected);
        assert_error(&result, &wanted);
        assert!(!result.2.contains("secret-pw"), "{}", result.2);
    }
}

#[test]
fn the_database_servers_words_for_a_refused_sign_in_or_an_unknown_database() {
    let test = "the_database_servers_words_for_a_refused_sign_in_or_an_unknown_database";
    let (Some(pg), Some(my)) = (Backend::Postgres.url(test), Backend::MySql.url(test)) else {
        return;
    };
    // scheme://user@host:port/db → scheme://, host:port
    let parts = |url: &str| {
        let (scheme, rest) = url.split_once("://").unwrap();
        let host = rest.split_once('@').map_or(rest, |(_, h)| h);
        (
            scheme.to_owned(),
            host.split_once('/').unwrap().0.to_owned(),
        )
    };
    let (pg_scheme, pg_host) = parts(&pg);
    let (my_scheme, my_host) = parts(&my);
    let work = tempfile::tempdir().unwrap();
    for (url, needle) in [
        (
            format!("{pg_scheme}://no_such_role@{pg_host}/test"),
            "the server refused: role \"no_such_role\" does not exist",
        ),
        (
            format!("{pg}_no_such_database"),
            "_no_such_database\" does not exist",
        ),
        (
            format!("{my_scheme}://root@{my_host}/no_such_database"),
            "the server refused: Unknown database 'no_such_database'",
        ),
    ] {
        config_dir(work.path(), &format!("session.store.url={url}\n"));
        assert_error(
            &run(work.path(), &["migrate"]),
            &[
                "config/local.properties:1: session.store.url: cannot connect to",
                needle,
            ],
        );
    }
}

#[test]
fn sqlite_paths_that_cannot_be_used_say_why() {
    let work = tempfile::tempdir().unwrap();
    // `nobody` must be able to reach the configuration.
    std::fs::set_permissions(
        work.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    std::fs::create_dir(work.path().join("locked")).unwrap();
    std::fs::set_permissions(
        work.path().join("locked"),
        std::os::unix::fs::PermissionsExt::from_mode(0o555),
    )
    .unwrap();
    std::fs::write(work.path().join("data"), "not a directory").unwrap();
    for (url, needle) in [
        (
            "sqlite://locked/sessions.db",
            "locked/sessions.db: cannot create: Permission denied",
        ),
        (
            "sqlite://locked/sub/sessions.db",
            "locked/sub: cannot create the directory: Permission denied",
        ),
        (
            "sqlite://data/sessions.db",
            "data: is a file; the database's directory must be a directory",
        ),
    ] {
        config_dir(
            work.path(),
            &format!("spring.session.enabled=true\nsession.store.url={url}\n"),
        );
        let result = run_as(work.path(), &["migrate"], true);
        assert_error(
            &result,
            &["config/local.properties:2: session.store.url: ", needle],
        );
        assert!(
            !result.2.contains("unable to open database file"),
            "{}",
            result.2
        );
    }
}

#[test]
fn check_config_reports_every_problem_and_marks_unknown_keys() {
    let work = tempfile::tempdir().unwrap();
    config_dir(
        work.path(),
        "session.timeout=soon\nspring.sesion.enabled=true\nsession.purge.cron=0 3 * * *\n\
         server.bind=localhost\n",
    );
    let (code, out, err) = run(work.path(), &["check-config"]);
    assert_eq!(code, 2, "{out}\n{err}");
    assert!(
        out.contains(
            "spring.sesion.enabled=true    # config/local.properties:2    # UNKNOWN KEY, ignored: \
             did you mean spring.session.enabled?"
        ),
        "{out}"
    );
    assert!(out.contains("# configuration is NOT valid"), "{out}");
    for needle in [
        "3 values cannot be used:",
        "config/local.properties:1: session.timeout = \"soon\"",
        "config/local.properties:3: session.purge.cron = \"0 3 * * *\": expected 6 or 7 fields, \
         seconds first (Quartz style); \"0 3 * * *\" has 5: write \"0 0 3 * * *\" for the Unix \
         cron meaning",
        "config/local.properties:4: server.bind = \"localhost\"",
    ] {
        assert!(err.contains(needle), "{needle:?} not in: {err}");
    }
}

#[test]
fn check_config_connect_reads_the_store_and_creates_nothing() {
    let work = tempfile::tempdir().unwrap();
    config_dir(
        work.path(),
        "spring.session.enabled=true\nsession.store.url=sqlite://data/sessions.db\n",
    );
    // Without --connect: valid, and says the store was not contacted.
    let (code, out, _) = run(work.path(), &["check-config"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("the store was not contacted: add --connect"),
        "{out}"
    );
    // With it: the missing database is an error, and is not created.
    assert_error(
        &run(work.path(), &["check-config", "--connect"]),
        &[
            "config/local.properties:2: session.store.url: data/sessions.db: does not exist",
            "a store is created only by `migrate`, or by `serve` with session.store.migrate=true",
        ],
    );
    assert!(!work.path().join("data").exists());
    // An empty database file: the table is missing, and the message says what to run.
    std::fs::create_dir(work.path().join("data")).unwrap();
    std::fs::write(work.path().join("data/sessions.db"), "").unwrap();
    assert_error(
        &run(work.path(), &["check-config", "--connect"]),
        &["no stored_http_session table", "session-failover migrate"],
    );
    // After migrate: valid and reachable.
    let (code, _, err) = run(work.path(), &["migrate"]);
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = run(work.path(), &["check-config", "--connect"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("answers and has its table"), "{out}");
}

#[test]
fn operators_tools_never_create_a_store() {
    let work = tempfile::tempdir().unwrap();
    config_dir(
        work.path(),
        "spring.session.enabled=true\nsession.store.url=sqlite://dta/sessions.db\n",
    );
    for args in [
        &["sessions", "list"][..],
        &["sessions", "stats"],
        &["sessions", "purge"],
    ] {
        assert_error(
            &run(work.path(), args),
            &["config/local.properties:2: session.store.url: dta/sessions.db: does not exist"],
        );
    }
    assert!(!work.path().join("dta").exists(), "nothing was created");
    let (code, _, err) = run(work.path(), &["sessions", "list", "--limit", "0"]);
    assert_eq!(code, 2);
    assert!(err.contains("0 is not in 1..=1000"), "{err}");
}

/// An idle server's purge logs nothing at INFO; a purge that deletes says so.
#[tokio::test]
async fn an_idle_purge_is_quiet_and_a_useful_one_is_logged() {
    let work = tempfile::tempdir().unwrap();
    let config = config_dir(
        work.path(),
        "spring.session.enabled=true\nspring.session.storefront.save=sync\n\
         session.store.url=sqlite://data/sessions.db\nsession.purge.cron=* * * * * *\n\
         session.purge.jitter=0\nsession.timeout=1\n",
    );
    let server = Server::start(work.path(), &config, "node");
    // Several purges run over an empty table (counted in /metrics).
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let metrics = reqwest::get(format!("{}/metrics", server.base))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let runs = metrics
            .lines()
            .find_map(|l| l.strip_prefix("session_purge_runs_total "))
            .and_then(|n| n.trim().parse::<f64>().ok())
            .unwrap_or(0.0);
        if runs >= 2.0 {
            break;
        }
        assert!(Instant::now() < deadline, "no purge ran: {metrics}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let quiet = server.log_text();
    assert!(!quiet.contains("purged expired sessions"), "{quiet}");
    // A session that expires: the next purge deletes it, and says so.
    let mut client = common::Client::new();
    let (status, _) = client
        .send(
            &server.base,
            "POST",
            "/cart/items",
            Some(serde_json::json!({"sku": "A", "qty": 1})),
        )
        .await;
    assert_eq!(status, http::StatusCode::OK);
    let deadline = Instant::now() + Duration::from_secs(15);
    while !server.log_text().contains("purged expired sessions") {
        assert!(Instant::now() < deadline, "{}", server.log_text());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let log = server.log_text();
    assert!(log.contains("deleted=1"), "{log}");
}

/// JSON answers end with a newline, so two curl outputs do not run together.
#[tokio::test]
async fn json_answers_end_with_a_newline() {
    let work = tempfile::tempdir().unwrap();
    let config = config_dir(
        work.path(),
        "spring.session.enabled=true\nspring.session.storefront.save=sync\n\
         session.store.url=sqlite://data/sessions.db\n",
    );
    let server = Server::start(work.path(), &config, "node");
    let http = reqwest::Client::new();
    for (method, path, body) in [
        ("GET", "/health", None),
        ("GET", "/cart", None),
        ("POST", "/cart/items", Some(r#"{"sku":"A","qty":1}"#)),
        ("POST", "/login", Some(r#"{"user":"ann"}"#)),
        ("DELETE", "/cart/items/nothing", None),
        ("POST", "/cart/items", Some("not json")),
    ] {
        let mut request = http.request(method.parse().unwrap(), format!("{}{path}", server.base));
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body);
        }
        let text = request.send().await.unwrap().text().await.unwrap();
        assert!(text.ends_with('\n'), "{method} {path}: {text:?}");
    }
}

/// README's command list names every command and `sessions` action the binary has.
#[test]
fn readme_lists_every_command() {
    let readme = std::fs::read_to_string("README.md").unwrap();
    let work = tempfile::tempdir().unwrap();
    let commands = |args: &[&str]| -> Vec<String> {
        let (code, out, err) = run(work.path(), args);
        assert_eq!(code, 0, "{err}");
        out.lines()
            .skip_while(|line| !line.starts_with("Commands:"))
            .skip(1)
            .take_while(|line| line.starts_with("  "))
            .filter_map(|line| line.split_whitespace().next().map(str::to_owned))
            .filter(|name| name != "help")
            .collect()
    };
    let top = commands(&["--help"]);
    assert!(top.contains(&"hash-password".to_owned()), "{top:?}");
    for command in top {
        assert!(
            readme.contains(&format!("session-failover {command}")),
            "README's command list lacks {command}"
        );
    }
    for action in commands(&["sessions", "--help"]) {
        assert!(
            readme.contains(&format!("session-failover sessions {action}")),
            "README's command list lacks sessions {action}"
        );
    }
}

/// `session.store.migrate=false` on a database nobody migrated: the node refuses to start,
/// rather than answering changes it cannot save.
#[test]
fn a_node_without_its_table_refuses_to_start() {
    let work = tempfile::tempdir().unwrap();
    std::fs::create_dir(work.path().join("data")).unwrap();
    std::fs::write(work.path().join("data/sessions.db"), "").unwrap();
    config_dir(
        work.path(),
        "spring.session.enabled=true\nspring.session.storefront.save=sync\n\
         session.store.url=sqlite://data/sessions.db\nsession.store.migrate=false\n",
    );
    assert_error(
        &run(work.path(), &["serve", "--bind", "127.0.0.1:0"]),
        &[
            "config/local.properties:3: session.store.url: the store has no stored_http_session table",
            "session-failover migrate --config DIR",
            "no such table: stored_http_session",
        ],
    );
}

/// A sync change the store cannot take, with nobody to keep it (group commit off: the request
/// writes it itself), is answered 503 with no cookie, and is dropped: it never shows up, not even
/// once the store is back. A change answered 200 is stored. Here the table is renamed away under
/// the running node, then back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_change_nobody_keeps_is_refused_and_dropped() {
    let work = tempfile::tempdir().unwrap();
    let config = config_dir(
        work.path(),
        "spring.session.enabled=true\nspring.session.storefront.save=sync\n\
         session.store.url=sqlite://data/sessions.db\n\
         session.save.group.commit=false\nsession.store.timeout=3000\n",
    );
    let server = Server::start(work.path(), &config, "node");
    let mut client = common::Client::new();
    let add = |sku: &str| Some(serde_json::json!({"sku": sku, "qty": 1}));
    let (status, _) = client
        .send(&server.base, "POST", "/cart/items", add("A"))
        .await;
    assert_eq!(status, http::StatusCode::OK);
    let store = common::sqlite(&work.path().join("data")).await;
    let rename = |from: &'static str, to: &'static str| {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "ALTER TABLE {from} RENAME TO {to}"
        )))
        .execute(store.pool())
    };
    rename("stored_http_session", "away").await.unwrap();
    let refused = reqwest::Client::new()
        .post(format!("{}/cart/items", server.base))
        .header(
            "cookie",
            format!("JSESSIONID={}", client.cookie.clone().unwrap()),
        )
        .header("content-type", "application/json")
        .body(r#"{"sku":"B","qty":1}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(
        refused.status(),
        http::StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        server.log_text()
    );
    assert_eq!(refused.headers()["retry-after"], "1");
    assert!(refused.headers().get("set-cookie").is_none());
    rename("away", "stored_http_session").await.unwrap();
    // The refused change is gone from the node too; the acknowledged one is served and stored.
    let (status, body) = client.send(&server.base, "GET", "/cart", None).await;
    assert_eq!(status, http::StatusCode::OK);
    let skus: Vec<String> = common::items(&body).into_iter().map(|(s, _)| s).collect();
    assert_eq!(skus, ["A"], "{body}");
    let (status, body) = client
        .send(&server.base, "POST", "/cart/items", add("C"))
        .await;
    assert_eq!(status, http::StatusCode::OK);
    let skus: Vec<String> = common::items(&body).into_iter().map(|(s, _)| s).collect();
    assert_eq!(skus, ["A", "C"], "{body}");
}

#[test]
fn check_config_names_stray_files_apps_not_run_and_a_backoffice_that_is_off() {
    let work = tempfile::tempdir().unwrap();
    let config = config_dir(work.path(), "spring.session.storefrnt.save=sync\n");
    std::fs::write(config.join("local.propertie"), "session.timeout=60\n").unwrap();
    let (code, out, err) = run(work.path(), &["check-config"]);
    assert_eq!(code, 0, "{err}");
    for needle in [
        "# WARNING: config/local.propertie is not read (only project.properties and \
         local.properties are); did you mean local.properties?",
        "# storefrnt: sync",
        "# NOT RUN by this server (it runs storefront and backoffice): check the spelling",
        "# the backoffice is off (session.backoffice.user and .password.hash unset)",
    ] {
        assert!(out.contains(needle), "{needle:?} not in:\n{out}");
    }
}

#[test]
fn flags_out_of_range_and_a_taken_port_say_so() {
    let work = tempfile::tempdir().unwrap();
    config_dir(
        work.path(),
        "spring.session.enabled=true\nsession.store.url=sqlite://data/sessions.db\n",
    );
    let (code, _, err) = run(work.path(), &["sessions", "purge", "--batch-size", "0"]);
    assert_eq!(code, 2);
    assert!(err.contains("0 is not in 1..=100000"), "{err}");
    // A taken port names where the address came from.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = Command::new(env!("CARGO_BIN_EXE_session-failover"))
        .arg("serve")
        .env("y_server_bind", &addr)
        .current_dir(work.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains(&format!(
            "environment variable y_server_bind: server.bind: cannot listen on {addr}: Address \
             already in use"
        )),
        "{err}"
    );
}

/// Logging out expires the session cookie and the version cookie with it.
#[tokio::test]
async fn logout_expires_the_version_cookie_too() {
    let work = tempfile::tempdir().unwrap();
    let config = config_dir(
        work.path(),
        "spring.session.enabled=true\nspring.session.storefront.save=sync\n\
         session.store.url=sqlite://data/sessions.db\n",
    );
    let server = Server::start(work.path(), &config, "node");
    let http = reqwest::Client::new();
    let added = http
        .post(format!("{}/cart/items", server.base))
        .header("content-type", "application/json")
        .body(r#"{"sku":"A","qty":1}"#)
        .send()
        .await
        .unwrap();
    let cookies: Vec<String> = added
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect();
    let session = cookies
        .iter()
        .find_map(|c| c.strip_prefix("JSESSIONID="))
        .and_then(|c| c.split(';').next())
        .expect("a session cookie")
        .to_owned();
    assert!(
        cookies.iter().any(|c| c.starts_with("JSESSIONID_VERSION=")),
        "{cookies:?}"
    );
    let out = http
        .post(format!("{}/logout", server.base))
        .header(
            "cookie",
            format!("JSESSIONID={session}; JSESSIONID_VERSION=1"),
        )
        .send()
        .await
        .unwrap();
    let cleared: Vec<String> = out
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect();
    for name in ["JSESSIONID=;", "JSESSIONID_VERSION=;"] {
        assert!(
            cleared
                .iter()
                .any(|c| c.starts_with(name) && c.contains("Max-Age=0")),
            "{name} not expired: {cleared:?}"
        );
    }
}

/// check-config shows no secret: by name (misspelt names too), by value (a secret pulled into
/// another key with ${…}), and in a store URL (with or without a scheme, or as a parameter).
#[test]
fn check_config_masks_secrets_by_name_and_by_value() {
    let secret = "kM3v9QxZ2pL8wT4yR7nB1cF6hJ0dG5sA-eU_iO+oP/qWzXbYlKjHgNmVtCrEaSuD";
    let work = tempfile::tempdir().unwrap();
    config_dir(
        work.path(),
        &format!(
            "session.secret={secret}\nsession.secret.previus=older-secret-value-123\n\
             app.copy=${{session.secret}}\n\
             session.store.url=postgres://app:hunter2pw@db/x?password=hunter3pw\n"
        ),
    );
    let (_, out, err) = run(work.path(), &["check-config"]);
    for leaked in [secret, "older-secret-value-123", "hunter2pw", "hunter3pw"] {
        assert!(
            !out.contains(leaked) && !err.contains(leaked),
            "{leaked} shown:\n{out}\n{err}"
        );
    }
    assert!(out.contains("app.copy=********"), "{out}");
    // A yes/no is no secret.
    assert!(
        out.contains("session.secret.accept.plaintext=false    # "),
        "{out}"
    );
    // A guessable secret is refused, without being shown.
    config_dir(work.path(), &format!("session.secret={}\n", "a".repeat(64)));
    let (code, out, err) = run(work.path(), &["check-config"]);
    assert_eq!(code, 2);
    assert!(
        err.contains("session.secret: this secret repeats a few characters"),
        "{err}"
    );
    assert!(!out.contains(&"a".repeat(64)) && !err.contains(&"a".repeat(64)));
}

/// `session.metrics.bind` serves /metrics on an address of its own, and not on the public
/// port; a bad value names the key.
#[tokio::test]
async fn metrics_can_have_an_address_of_their_own() {
    let work = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = config_dir(
        work.path(),
        &format!(
            "spring.session.enabled=true\nspring.session.storefront.save=sync\n\
             session.store.url=sqlite://data/sessions.db\nsession.metrics.bind=127.0.0.1:{port}\n"
        ),
    );
    let server = Server::start(work.path(), &config, "node");
    let public = reqwest::get(format!("{}/metrics", server.base))
        .await
        .unwrap();
    assert_eq!(public.status(), http::StatusCode::NOT_FOUND);
    // Traffic, then its counters on the metrics address.
    let mut client = common::Client::new();
    client.send(&server.base, "GET", "/cart", None).await;
    let metrics = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .unwrap();
    assert_eq!(metrics.status(), http::StatusCode::OK);
    // SIGTERM stops both listeners.
    assert!(server.terminate().success());
    assert!(
        reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
            .await
            .is_err()
    );
    config_dir(work.path(), "session.metrics.bind=localhost:9100\n");
    assert_error(
        &run(work.path(), &["check-config"]),
        &["config/local.properties:1: session.metrics.bind = \"localhost:9100\": expected IP:PORT"],
    );
}

/// A client that sends another application's session id on every request costs one WARN line
/// a minute, not one per request.
#[tokio::test]
async fn another_apps_id_is_logged_once_not_per_request() {
    let work = tempfile::tempdir().unwrap();
    let hash = common::password_hash("pw");
    let config = config_dir(
        work.path(),
        &format!(
            "spring.session.enabled=true\nspring.session.storefront.save=sync\n\
             session.store.url=sqlite://data/sessions.db\nsession.backoffice.user=ops\n\
             session.backoffice.password.hash={hash}\n"
        ),
    );
    let server = Server::start(work.path(), &config, "node");
    let mut shopper = common::Client::new();
    let (status, _) = shopper
        .send(
            &server.base,
            "POST",
            "/cart/items",
            Some(serde_json::json!({"sku": "A", "qty": 1})),
        )
        .await;
    assert_eq!(status, http::StatusCode::OK);
    let id = shopper.cookie.clone().unwrap();
    let http = reqwest::Client::new();
    for _ in 0..30 {
        // The storefront's id, sent as the backoffice's cookie: a stored session of another app.
        let status = http
            .get(format!("{}/backoffice/login", server.base))
            .header("cookie", format!("BACKOFFICESESSION={id}"))
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, http::StatusCode::OK);
    }
    let warnings = server
        .log_text()
        .lines()
        .filter(|l| l.contains(" WARN ") && l.contains("session belongs to another application"))
        .count();
    assert_eq!(warnings, 1, "{}", server.log_text());
}
