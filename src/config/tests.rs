//! Unit tests of the typed configuration.

use super::*;

fn parse(text: &str) -> Result<Config, Error> {
    let mut p = Properties::builtin();
    p.merge_file(Path::new("local.properties"), text.as_bytes())?;
    Config::from_properties(&p)
}

#[test]
fn builtin_defaults_match_the_seed() {
    let c = Config::default();
    assert!(!c.enabled);
    assert_eq!(c.writer.interval, Duration::from_millis(5000));
    assert_eq!(c.writer.queue_size, 10_000);
    assert_eq!(c.writer.max_items, 2000);
    assert_eq!(c.writer, crate::persist::WriterConfig::default());
    assert!(c.group_commit);
    assert_eq!(c.drain_timeout, Duration::from_secs(10));
    assert!(!c.check.enabled && !c.check.response_error && c.check.extensions.is_none());
    assert_eq!(c.timeout, Duration::from_secs(3600));
    assert_eq!(c.store_url, "sqlite://data/sessions.db");
    assert_eq!(c.app("storefront"), AppConfig::default());
    assert_eq!(c.app("storefront").cookie_name, "JSESSIONID");
    assert_eq!(c.save_mode("storefront"), None);
}

#[test]
fn per_app_keys() {
    let c = parse(
        "spring.session.enabled=true\n\
         spring.session.storefront.save=sync\n\
         spring.session.storefront.cookie.name=SF\n\
         spring.session.storefront.cookie.path=/shop\n\
         spring.session.storefront.secure=true\n\
         spring.session.storefront.cookie.httponly=\n\
         spring.session.hac.save=async\n",
    )
    .unwrap();
    let sf = c.app("storefront");
    assert_eq!(sf.save, Some(SaveMode::Sync));
    assert_eq!(sf.cookie_name, "SF");
    assert_eq!(sf.cookie_path.as_deref(), Some("/shop"));
    assert_eq!((sf.secure, sf.http_only), (Some(true), None));
    assert_eq!(c.save_mode("hac"), Some(SaveMode::Async));
    assert_eq!(c.save_mode("other"), None);
}

#[test]
fn disabled_means_memory_only() {
    let c = parse("spring.session.storefront.save=sync\n").unwrap();
    assert_eq!(c.save_mode("storefront"), None);
}

#[test]
fn bad_values_name_file_line_key_and_accepted_values() {
    for (text, needle) in [
        (
            "\n\nspring.session.storefront.save=syncc\n",
            "local.properties:3: spring.session.storefront.save = \"syncc\": expected sync or async",
        ),
        (
            "spring.session.enabled=yes\n",
            "local.properties:1: spring.session.enabled = \"yes\": expected true or false",
        ),
        (
            "session.timeout=-5\n",
            "session.timeout = \"-5\": expected a whole number from 1 to 31536000",
        ),
        ("session.timeout=0\n", "expected a whole number from 1"),
        (
            "server.bind=localhost\n",
            "server.bind = \"localhost\": expected IP:PORT",
        ),
        (
            "spring.session.a.cookie.name=bad name\n",
            "spring.session.a.cookie.name = \"bad name\": expected a cookie name",
        ),
        (
            "spring.session.a.cookie.path=shop\n",
            "expected a path starting with /",
        ),
        (
            "spring.session.a.secure=maybe\n",
            "expected true, false or no value",
        ),
        (
            "session.store.url=\n",
            "session.store.url = \"\": expected a store URL",
        ),
        (
            "session.store.url=sqlite://:memory:\n",
            "in-memory SQLite database is not shared",
        ),
        (
            "session.store.url=memcached://h\n",
            "scheme \"memcached\" is not supported",
        ),
        (
            "session.store.url=redis://\n",
            "session.store.url = \"redis://\": expected a usable store URL: not a Redis URL: \
             expected redis://[USER:PASSWORD@]HOST[:PORT][/DB] (rediss:// for TLS)",
        ),
        (
            "session.store.url=data/x.db\n",
            "local.properties:1: session.store.url = \"data/x.db\"",
        ),
        (
            "session.store.url=postgres://u:pw@h/db\nsession.timeout=x\n",
            "session.timeout",
        ),
        ("session.timeout=+5\n", "expected a whole number"),
        (
            "session.purge.cron=* * * * *\n",
            "session.purge.cron = \"* * * * *\": expected 6 or 7 fields, seconds first (Quartz \
             style); \"* * * * *\" has 5: write \"0 * * * * *\" for the Unix cron meaning",
        ),
        (
            "session.store.url=memcached://h\n",
            "session.store.url = \"memcached://h\": expected a usable store URL: scheme \
             \"memcached\" is not supported (supported: sqlite://PATH, postgres://USER@HOST/DB, \
             mysql://USER@HOST/DB, redis://HOST:PORT, redis-cluster://HOST:PORT[,HOST:PORT…])",
        ),
        (
            "session.store.url=data/x.db\n",
            "expected a usable store URL: no scheme (supported: sqlite://PATH, \
             postgres://USER@HOST/DB, mysql://USER@HOST/DB, redis://HOST:PORT, \
             redis-cluster://HOST:PORT[,HOST:PORT…]); for a SQLite file write sqlite://data/x.db",
        ),
    ] {
        let err = parse(text).unwrap_err().to_string();
        assert!(err.contains(needle), "{text:?} gave {err:?}");
    }
}

#[test]
fn every_bad_value_is_reported_not_only_the_first() {
    let err = parse(
        "session.timeout=x\nserver.bind=nowhere\nspring.session.storefront.save=syncc\n\
         session.store.timeout=0\nsession.purge.cron=* * * * *\n",
    )
    .unwrap_err();
    let Error::Several(errors) = &err else {
        panic!("{err}");
    };
    let text = err.to_string();
    assert!(text.starts_with("5 values cannot be used:\n"), "{text}");
    for needle in [
        "local.properties:1: session.timeout = \"x\"",
        "local.properties:2: server.bind = \"nowhere\"",
        "local.properties:3: spring.session.storefront.save = \"syncc\"",
        // Read for two settings, reported once.
        "local.properties:4: session.store.timeout = \"0\"",
        "local.properties:5: session.purge.cron",
    ] {
        assert_eq!(text.matches(needle).count(), 1, "{needle} in {text}");
    }
    assert_eq!(errors.len(), 5);
    // In the order of the file's lines, whatever order the settings are read in.
    let lines: Vec<usize> = errors
        .iter()
        .map(|e| match e {
            Error::Invalid {
                origin: Source::File { line, .. },
                ..
            } => *line,
            other => panic!("{other}"),
        })
        .collect();
    assert_eq!(lines, [1, 2, 3, 4, 5]);
}

#[test]
fn metrics_and_the_server_cannot_share_an_address() {
    let err = parse("server.bind=127.0.0.1:9000\nsession.metrics.bind=127.0.0.1:9000\n")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("session.metrics.bind = \"127.0.0.1:9000\": expected an address other than server.bind's"),
        "{err}"
    );
}

#[test]
fn guessable_secrets_are_refused() {
    for secret in ["a".repeat(64), "ab".repeat(32), "012345678".repeat(8)] {
        let err = parse(&format!("session.secret={secret}\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("repeats a few characters"), "{err}");
        assert!(!err.contains(&secret), "the message never shows the secret");
    }
    let random = "kM3v9QxZ2pL8wT4yR7nB1cF6hJ0dG5sA-eU_iO+oP/qWzXbYlKjHgNmVtCrEaSuD";
    parse(&format!("session.secret={random}\n")).unwrap();
    // Random hex that happens to lack a few digits (one in four 64-character hex secrets lacks
    // at least one) is fine.
    let hex = "3b7e9a1c5d3b7e9a1c5d3b7e9a1c5d2f4e6a8b0c3b7e9a1c5d3b7e9a1c5d2f4e";
    parse(&format!("session.secret={hex}\n")).unwrap();
}

/// A comma would split a secret once it moves to session.secret.previous (a list): refused in
/// either key, naming it, without the value.
#[test]
fn secrets_with_a_comma_are_refused() {
    let random = "kM3v9QxZ2pL8wT4yR7nB1cF6hJ0dG5sA-eU_iO+oP/qWzXbYlKjHgNmVtCrEaSuD";
    let comma = format!("{random},{random}");
    let err = parse(&format!("session.secret={comma}\n"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("session.secret: a secret must not contain a comma"),
        "{err}"
    );
    assert!(!err.contains(random), "{err}");
    // In the list, each piece is a secret of its own: two good ones are fine.
    parse(&format!(
        "session.secret={random}x\nsession.secret.previous={comma}\n"
    ))
    .unwrap();
}

#[test]
fn check_extensions() {
    let c = parse("session.serialization.check=true\nsession.serialization.check.extensions=hac, storefront\n").unwrap();
    assert!(c.check_covers("storefront") && c.check_covers("hac") && !c.check_covers("x"));
    let all = parse("session.serialization.check=true\n").unwrap();
    assert!(all.check_covers("anything"));
}

#[test]
fn session_codec_tokens_decides_how_tokens_are_written() {
    let token = "eyJhbGciOiJub25lIn0.eyJzdWIiOiJhbm4ifQ.c2lnbmF0dXJl";
    let mut attributes = crate::codec::EncodedAttributes::new();
    attributes.insert(
        "access_token".to_owned(),
        crate::codec::encode_value(token).unwrap(),
    );
    let key = crate::id::SessionId::generate().store_key();
    let binding = crate::codec::Binding {
        app: "storefront",
        key: &key,
        principal: None,
    };
    for (text, flagged) in [("", false), ("session.codec.tokens=true\n", true)] {
        let codec = parse(text).unwrap().codec();
        let blob = codec.encode(&attributes, binding).unwrap();
        assert_eq!(
            blob[1] & crate::codec::FLAG_TOKENS != 0,
            flagged,
            "{text:?}"
        );
        assert_eq!(codec.decode(&blob, binding).unwrap(), attributes);
    }
}
