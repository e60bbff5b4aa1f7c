//! Every configuration key this crate reads: its built-in default and what it means.
//!
//! `config/project.properties` repeats this table as a file (a test keeps the two in step).

/// A global key.
#[derive(Debug, Clone, Copy)]
pub struct KeySpec {
    /// The property name.
    pub key: &'static str,
    /// The built-in default (empty: unset).
    pub default: &'static str,
    /// What it does and what it accepts.
    pub doc: &'static str,
}

/// The global keys, in the order `project.properties` lists them.
pub const KEYS: &[KeySpec] = &[
    KeySpec {
        key: "spring.session.enabled",
        default: "false",
        doc: "true/false: enables session failover; without it every app keeps memory-only sessions",
    },
    KeySpec {
        key: "spring.session.save.async.interval",
        default: "5000",
        doc: "milliseconds between async save attempts (1..=3600000)",
    },
    KeySpec {
        key: "spring.session.save.async.queue.size",
        default: "10000",
        doc: "sessions the async save queue holds (1..=10000000)",
    },
    KeySpec {
        key: "spring.session.save.async.max.items",
        default: "2000",
        doc: "sessions saved in one async attempt (1..=100000)",
    },
    KeySpec {
        key: "session.save.group.commit",
        default: "true",
        doc: "true/false: concurrent sync saves share one batch (each still waits for its commit)",
    },
    KeySpec {
        key: "session.restore.batch",
        default: "true",
        doc: "true/false: sessions restored from the store at the same time (after a node failed) are read in one query per batch",
    },
    KeySpec {
        key: "session.save.group.commit.window",
        default: "0",
        doc: "milliseconds a batch of sync saves waits for others before it goes; 0: it goes as soon as a flight is free, with every save that arrived while the others committed (0..=1000)",
    },
    KeySpec {
        key: "session.save.concurrency",
        default: "4",
        doc: "batches the writer has in flight at once (1..=64)",
    },
    KeySpec {
        key: "session.save.retry.delay",
        default: "1000",
        doc: "milliseconds before the first retry of a failed write (1..=3600000)",
    },
    KeySpec {
        key: "session.save.retry.multiplier",
        default: "2",
        doc: "each further retry waits this many times longer (1..=100)",
    },
    KeySpec {
        key: "session.save.retry.max.delay",
        default: "10000",
        doc: "the longest wait between retries, in milliseconds (1..=86400000)",
    },
    KeySpec {
        key: "session.shutdown.drain.timeout",
        default: "10000",
        doc: "milliseconds a graceful shutdown spends writing queued sessions (0..=3600000)",
    },
    KeySpec {
        key: "session.serialization.check",
        default: "false",
        doc: "true/false: development check that session attributes survive failover",
    },
    KeySpec {
        key: "session.serialization.check.extensions",
        default: "",
        doc: "comma-separated apps to check; unset: all apps",
    },
    KeySpec {
        key: "session.serialization.check.response.error",
        default: "false",
        doc: "true/false: answer 500 when a session is not serializable",
    },
    KeySpec {
        key: "session.store.url",
        default: "sqlite://data/sessions.db",
        doc: "where sessions are persisted: sqlite://PATH, postgres://USER@HOST/DB, mysql://USER@HOST/DB, redis://HOST:PORT[/DB], redis-cluster://HOST:PORT[,HOST:PORT…]",
    },
    KeySpec {
        key: "session.store.migrate",
        default: "true",
        doc: "true/false: apply the schema migrations at start-up",
    },
    KeySpec {
        key: "session.store.pool.size",
        default: "10",
        doc: "connections in the store's pool (1..=1000)",
    },
    KeySpec {
        key: "session.store.timeout",
        default: "5000",
        doc: "milliseconds a store operation may take before it fails (1..=600000)",
    },
    KeySpec {
        key: "session.store.connect.timeout",
        default: "",
        doc: "milliseconds connecting to the store may take (1..=600000); empty: session.store.timeout",
    },
    KeySpec {
        key: "session.store.redis.keepalive",
        default: "0",
        doc: "Redis: milliseconds a connection is idle before TCP keepalive probes start (0..=3600000; 0: none)",
    },
    KeySpec {
        key: "session.store.redis.wait.replicas",
        default: "0",
        doc: "Redis: replicas each save waits for (WAIT, up to half the store timeout) before it is acknowledged; 0: none (0..=16)",
    },
    KeySpec {
        key: "session.secret",
        default: "",
        doc: "encrypts stored sessions (at least 64 characters); unset: stored unencrypted",
    },
    KeySpec {
        key: "session.secret.previous",
        default: "",
        doc: "comma-separated older secrets that still decrypt (key rotation)",
    },
    KeySpec {
        key: "session.secret.accept.plaintext",
        default: "false",
        doc: "true/false: with a secret, still read sessions stored unencrypted before it was set",
    },
    KeySpec {
        key: "session.codec.tokens",
        default: "false",
        doc: "true/false: store the JSON Web Tokens in sessions decoded (about a third fewer bytes for a signed-in user's tokens); nodes older than this release cannot read such sessions, so set it once every node runs it",
    },
    KeySpec {
        key: "session.purge.cron",
        default: "0 * * * * *",
        doc: "when expired rows are deleted: Quartz-style cron, seconds first, UTC; empty: never",
    },
    KeySpec {
        key: "session.purge.batch.size",
        default: "1000",
        doc: "rows deleted per statement (1..=100000)",
    },
    KeySpec {
        key: "session.purge.jitter",
        default: "10",
        doc: "seconds of random delay added to each run, so a fleet does not purge in step (0..=3600)",
    },
    KeySpec {
        key: "session.backoffice.user",
        default: "",
        doc: "user name of the backoffice at /backoffice; unset: backoffice off",
    },
    KeySpec {
        key: "session.backoffice.password.hash",
        default: "",
        doc: "argon2 PHC hash of the backoffice password (session-failover hash-password makes one)",
    },
    KeySpec {
        key: "spring.session.backoffice.save",
        default: "sync",
        doc: "the backoffice's own sessions (its sign-in): sync, async, or empty for memory-only; persisted, an operator stays signed in when the balancer moves them to another node",
    },
    KeySpec {
        key: "spring.session.backoffice.cookie.name",
        default: "BACKOFFICESESSION",
        doc: "the backoffice's session cookie (stick on it in the balancer, as on the storefront's)",
    },
    KeySpec {
        key: "session.backoffice.show.values",
        default: "false",
        doc: "true/false: the backoffice shows decoded attribute values, not only their names",
    },
    KeySpec {
        key: "session.timeout",
        default: "3600",
        doc: "seconds of inactivity before a session expires (1..=31536000)",
    },
    KeySpec {
        key: "session.max.size",
        default: "1048576",
        doc: "bytes: the largest session saved (its encoded attributes, before compression); a larger one is refused with 500 and logged with its largest attributes (1024..=16777216)",
    },
    KeySpec {
        key: "session.node.name",
        default: "",
        doc: "name written to the node column; unset: host name and port",
    },
    KeySpec {
        key: "session.cache.max.entries",
        default: "100000",
        doc: "sessions each app keeps in this node's cache (1..=100000000)",
    },
    KeySpec {
        key: "session.cache.verify.interval",
        default: "1000",
        doc: "milliseconds a cached session is served before its stored version is checked again (one cheap read): the bound on a stale read after another node changed or ended it (0..=3600000; 0: every request)",
    },
    KeySpec {
        key: "server.bind",
        default: "127.0.0.1:8080",
        doc: "address the server listens on (IP:PORT)",
    },
    KeySpec {
        key: "session.metrics.bind",
        default: "",
        doc: "address /metrics is served on instead of server.bind (IP:PORT), so it can stay off the public port; empty: on server.bind",
    },
];

/// Per-application keys: `spring.session.<app>.<suffix>`.
#[derive(Debug, Clone, Copy)]
pub struct AppKeySpec {
    /// What follows `spring.session.<app>.`.
    pub suffix: &'static str,
    /// The built-in default, described.
    pub default: &'static str,
    /// What it does and what it accepts.
    pub doc: &'static str,
}

/// The per-application keys.
pub const APP_KEYS: &[AppKeySpec] = &[
    AppKeySpec {
        suffix: "save",
        default: "(unset: memory-only sessions)",
        doc: "sync or async: the failover mode of this app",
    },
    AppKeySpec {
        suffix: "cookie.name",
        default: "JSESSIONID",
        doc: "name of the session cookie",
    },
    AppKeySpec {
        suffix: "cookie.path",
        default: "(the app's context path)",
        doc: "path of the session cookie",
    },
    AppKeySpec {
        suffix: "secure",
        default: "(unset: Secure when the request is secure)",
        doc: "true/false/no value: the cookie's Secure attribute",
    },
    AppKeySpec {
        suffix: "cookie.httponly",
        default: "(unset: HttpOnly)",
        doc: "true/false/no value: the cookie's HttpOnly attribute",
    },
];

/// Key prefixes this crate owns: an unknown key under one of them is probably a typo.
pub const NAMESPACES: &[&str] = &["spring.session.", "session.", "server."];

/// The global key spec for `key`.
pub fn global(key: &str) -> Option<&'static KeySpec> {
    KEYS.iter().find(|spec| spec.key == key)
}

/// Splits `spring.session.<app>.<suffix>` into the app and the per-app key spec.
pub fn per_app(key: &str) -> Option<(&str, &'static AppKeySpec)> {
    let rest = key.strip_prefix("spring.session.")?;
    let (app, suffix) = rest.split_once('.')?;
    let spec = APP_KEYS.iter().find(|spec| spec.suffix == suffix)?;
    valid_app_name(app).then_some((app, spec))
}

/// App names are Commerce extension names: letters, digits, `_` and `-`.
pub fn valid_app_name(app: &str) -> bool {
    !app.is_empty()
        && app
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// Whether `key` looks like one of ours but names nothing we read: it is under one of our
/// namespaces, or it is a near miss of a known key (`spring.sesion.enabled`).
pub fn is_unknown(key: &str) -> bool {
    if global(key).is_some() || per_app(key).is_some() {
        return false;
    }
    // A misspelt namespace too: `spring.sesion.storefront.save` would silently leave an app
    // memory-only.
    let near_namespace = key.match_indices('.').take(2).any(|(dot, _)| {
        let prefix = &key[..=dot];
        NAMESPACES
            .iter()
            .any(|ns| prefix != *ns && strsim::levenshtein(prefix, ns) <= 2)
    });
    NAMESPACES.iter().any(|ns| key.starts_with(ns))
        || near_namespace
        || KEYS
            .iter()
            .any(|spec| strsim::levenshtein(key, spec.key) <= 2)
}

/// The known key closest to `key` (for "did you mean" warnings).
pub fn nearest(key: &str) -> Option<String> {
    let app = key
        .strip_prefix("spring.session.")
        .and_then(|rest| rest.split_once('.'))
        .map(|(app, _)| app)
        .filter(|app| valid_app_name(app));
    let candidates = KEYS
        .iter()
        .map(|spec| spec.key.to_owned())
        .chain(app.into_iter().flat_map(|app| {
            APP_KEYS
                .iter()
                .map(move |spec| format!("spring.session.{app}.{}", spec.suffix))
        }));
    candidates
        .map(|candidate| (strsim::levenshtein(key, &candidate), candidate))
        .filter(|(distance, _)| *distance <= key.len() / 3 + 2)
        .min()
        .map(|(_, candidate)| candidate)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_keys() {
        assert!(
            is_unknown("spring.sesion.storefront.save"),
            "a misspelt namespace"
        );
        assert!(is_unknown("sesion.timeout"));
        assert!(!is_unknown("spring.session.storefront.save"));
        assert!(global("session.timeout").is_some());
        assert_eq!(
            per_app("spring.session.storefront.save").unwrap().0,
            "storefront"
        );
        assert_eq!(
            per_app("spring.session.storefront.cookie.httponly")
                .unwrap()
                .1
                .suffix,
            "cookie.httponly"
        );
        assert!(per_app("spring.session.save.async.interval").is_none());
        assert!(is_unknown("session.timout"));
        assert!(is_unknown("spring.session.storefront.cookie.nmae"));
        assert!(!is_unknown("my.own.key"));
        assert!(
            is_unknown("spring.sesion.enabled"),
            "a near miss outside our namespaces"
        );
        assert_eq!(
            nearest("spring.sesion.enabled").as_deref(),
            Some("spring.session.enabled")
        );
    }

    #[test]
    fn suggests_the_nearest_key() {
        assert_eq!(
            nearest("session.timout").as_deref(),
            Some("session.timeout")
        );
        assert_eq!(
            nearest("spring.session.storefront.cookie.nmae").as_deref(),
            Some("spring.session.storefront.cookie.name")
        );
        assert_eq!(nearest("session.completely.different.thing"), None);
    }
}
