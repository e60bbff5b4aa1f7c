//! SAP approuter's way in: the `EXT_SESSION_MGT` environment variable (JSON) and the Cloud
//! Foundry service binding it names in `VCAP_SERVICES`, turned into properties.
//!
//! | `EXT_SESSION_MGT` field | becomes |
//! |---|---|
//! | `instanceName` (mandatory) | the bound service whose credentials give `session.store.url` |
//! | `storageType` (mandatory) | `redis`, or the name of a store registered in code ([`crate::store::register`]) |
//! | `sessionSecret` (mandatory) | `session.secret` (real encryption, XChaCha20-Poly1305) |
//! | `defaultRetryTimeout` (ms) | `session.save.retry.max.delay`: the longest wait between attempts |
//! | `backOffMultiplier` | `session.save.retry.multiplier`: how much each wait grows |
//! | `externalStoreFilePath` | refused: Rust cannot load code from a path; the message points to the registry |
//! | `connectTimeout` (ms) | `session.store.connect.timeout` |
//! | `commandTimeout` (ms) | `session.store.timeout`: the longest a store call may take |
//! | `keepAlive` (ms) | `session.store.redis.keepalive`: idle time before TCP keepalive probes (0: none) |
//!
//! They sit above the properties files and below the `y_…` variables: the platform's binding
//! wins over what is packaged, an operator's explicit override wins over both.

use serde_json::{Map, Value};

use super::{Error, Source};

/// The variable approuter reads.
pub const EXT_SESSION_MGT: &str = "EXT_SESSION_MGT";
/// Cloud Foundry's service bindings.
pub const VCAP_SERVICES: &str = "VCAP_SERVICES";

const FIELDS: [&str; 9] = [
    "instanceName",
    "storageType",
    "sessionSecret",
    "defaultRetryTimeout",
    "backOffMultiplier",
    "externalStoreFilePath",
    "connectTimeout",
    "commandTimeout",
    "keepAlive",
];

/// The properties `EXT_SESSION_MGT` (and the binding it names) set, each with where it came
/// from; nothing if the variable is not set.
pub(crate) fn properties(
    ext: Option<&str>,
    vcap: Option<&str>,
) -> Result<Vec<(String, String, Source)>, Error> {
    let Some(ext) = ext else {
        return Ok(Vec::new());
    };
    let field_source = |field: &str| Source::Env {
        var: format!("{EXT_SESSION_MGT}.{field}"),
    };
    let invalid = |field: &str, value: String, expected: String| Error::Invalid {
        origin: field_source(field),
        key: field.to_owned(),
        value,
        expected,
    };
    let object: Map<String, Value> = serde_json::from_str(ext).map_err(|e| Error::Parse {
        path: EXT_SESSION_MGT.into(),
        line: Some(e.line()),
        message: format!("not a JSON object: {e}"),
    })?;
    // Values are not shown: a misspelled field may hold the secret.
    for field in object.keys() {
        if !FIELDS.contains(&field.as_str()) {
            return Err(invalid(
                field,
                "(not shown)".to_owned(),
                format!("one of the fields {} (field unknown)", FIELDS.join(", ")),
            ));
        }
    }
    let text = |field: &str| -> Result<Option<String>, Error> {
        match object.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(invalid(
                field,
                "(not shown)".to_owned(),
                "a string".to_owned(),
            )),
        }
    };
    let mandatory = |field: &str| -> Result<String, Error> {
        text(field)?.filter(|s| !s.is_empty()).ok_or_else(|| {
            invalid(
                field,
                String::new(),
                format!("a value: {field} is mandatory in {EXT_SESSION_MGT}"),
            )
        })
    };
    if let Some(path) = text("externalStoreFilePath")? {
        return Err(invalid(
            "externalStoreFilePath",
            path,
            "no path: a Rust program cannot load a store from a file at run time; implement \
             session_failover::store::CustomStore in the application, register it with \
             session_failover::store::register(\"NAME\", …) and set \"storageType\": \"NAME\" \
             (see docs/CONFIGURATION.md, \"Custom stores\")"
                .to_owned(),
        ));
    }
    let instance = mandatory("instanceName")?;
    let storage = mandatory("storageType")?;
    if storage != "redis" && !crate::store::is_registered(&storage) {
        let mut known = vec!["redis".to_owned()];
        known.extend(crate::store::registered_store_names());
        return Err(invalid(
            "storageType",
            storage,
            format!(
                "a storage type this program provides: {} (a store of your own is registered in code with session_failover::store::register)",
                known.join(", ")
            ),
        ));
    }
    let secret = mandatory("sessionSecret")?;
    let mut out = vec![(
        "session.secret".to_owned(),
        secret,
        field_source("sessionSecret"),
    )];
    for (field, key) in [
        ("defaultRetryTimeout", "session.save.retry.max.delay"),
        ("backOffMultiplier", "session.save.retry.multiplier"),
        ("connectTimeout", "session.store.connect.timeout"),
        ("commandTimeout", "session.store.timeout"),
        ("keepAlive", "session.store.redis.keepalive"),
    ] {
        match object.get(field) {
            None | Some(Value::Null) => {}
            Some(Value::Number(n)) if n.as_u64().is_some() => {
                out.push((key.to_owned(), n.to_string(), field_source(field)));
            }
            Some(other) => {
                return Err(invalid(
                    field,
                    other.to_string(),
                    "a whole number".to_owned(),
                ));
            }
        }
    }
    let mut url = store_url(&instance, vcap)?;
    if storage != "redis" {
        // A registered store gets the binding's URL under its own name.
        let rest = url
            .split_once("://")
            .map_or("", |(_, rest)| rest)
            .to_owned();
        url = format!("{storage}://{rest}");
    }
    out.push((
        "session.store.url".to_owned(),
        url,
        Source::Env {
            var: format!("{VCAP_SERVICES} (service \"{instance}\")"),
        },
    ));
    Ok(out)
}

/// The Redis URL of the bound service named `instance`.
fn store_url(instance: &str, vcap: Option<&str>) -> Result<String, Error> {
    let origin = Source::Env {
        var: VCAP_SERVICES.to_owned(),
    };
    let wrong = |reason: String| Error::Invalid {
        origin: origin.clone(),
        key: format!("{EXT_SESSION_MGT}.instanceName"),
        value: instance.to_owned(),
        expected: reason,
    };
    let Some(vcap) = vcap else {
        return Err(wrong(format!(
            "a service bound to this application, but {VCAP_SERVICES} is not set (cf bind-service APP {instance})"
        )));
    };
    let services: Map<String, Value> = serde_json::from_str(vcap).map_err(|e| Error::Parse {
        path: VCAP_SERVICES.into(),
        line: Some(e.line()),
        message: format!("not a JSON object of service lists: {e}"),
    })?;
    let bound: Vec<&Map<String, Value>> = services
        .values()
        .filter_map(Value::as_array)
        .flatten()
        .filter_map(Value::as_object)
        .collect();
    let name_of = |service: &Map<String, Value>| {
        service
            .get("name")
            .or_else(|| service.get("instance_name"))
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    let Some(service) = bound
        .iter()
        .find(|s| name_of(s).as_deref() == Some(instance))
    else {
        let names: Vec<String> = bound.iter().filter_map(|s| name_of(s)).collect();
        return Err(wrong(format!(
            "the name of a bound service (bound: {})",
            if names.is_empty() {
                "none".to_owned()
            } else {
                names.join(", ")
            }
        )));
    };
    let credentials = service
        .get("credentials")
        .and_then(Value::as_object)
        .ok_or_else(|| wrong("a service with credentials (it has none)".to_owned()))?;
    let field = |name: &str| credentials.get(name).filter(|v| !v.is_null());
    if field("sentinel_nodes")
        .and_then(Value::as_array)
        .is_some_and(|nodes| !nodes.is_empty())
    {
        return Err(wrong(
            "a single Redis: its credentials list sentinel_nodes, and Sentinel is not supported yet"
                .to_owned(),
        ));
    }
    let uri = field("uri").and_then(Value::as_str);
    // TLS if the binding says so or its URI is rediss://: never dropped.
    let tls = field("tls").and_then(Value::as_bool).unwrap_or(false)
        || uri.is_some_and(|u| u.starts_with("rediss://"));
    let cluster = field("cluster_mode").and_then(Value::as_bool) == Some(true);
    // A cluster's nodes are found from any one of them: its URL names that one.
    let scheme = match (tls, cluster) {
        (false, false) => "redis",
        (true, false) => "rediss",
        (false, true) => "redis-cluster",
        (true, true) => "rediss-cluster",
    };
    if let Some(uri) = uri {
        // The binding's TLS and cluster flags win over the scheme of its URI.
        return Ok(match uri.split_once("://") {
            Some(("redis" | "rediss", rest)) => format!("{scheme}://{rest}"),
            _ => uri.to_owned(),
        });
    }
    let host = field("hostname")
        .or_else(|| field("host"))
        .and_then(Value::as_str)
        .ok_or_else(|| wrong("credentials with uri or hostname (it has neither)".to_owned()))?;
    let port = match field("port") {
        Some(Value::Number(n)) => n.to_string(),
        Some(Value::String(s)) => s.clone(),
        _ => "6379".to_owned(),
    };
    Ok(match field("password").and_then(Value::as_str) {
        Some(password) => format!("{scheme}://:{}@{host}:{port}", percent_encode(password)),
        None => format!("{scheme}://{host}:{port}"),
    })
}

/// `text` with every byte that is not unreserved in a URL percent-encoded (for a password in
/// the userinfo).
fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "k3y-0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ-0123";

    fn ext(extra: &str) -> String {
        format!(
            r#"{{"instanceName": "approuter-redis", "storageType": "redis", "sessionSecret": "{SECRET}"{extra}}}"#
        )
    }

    const VCAP: &str = r#"{"redis-cache": [{"name": "approuter-redis", "label": "redis-cache",
        "credentials": {"hostname": "10.0.0.5", "port": 1234, "password": "p@ss/w:rd", "tls": true,
        "cluster_mode": false}}],
        "xsuaa": [{"name": "uaa", "credentials": {}}]}"#;

    fn get<'a>(props: &'a [(String, String, Source)], key: &str) -> (&'a str, String) {
        let (_, value, source) = props.iter().find(|(k, _, _)| k == key).unwrap();
        (value, source.to_string())
    }

    #[test]
    fn the_seeds_example_becomes_properties_with_their_sources() {
        let props = properties(
            Some(&ext(
                r#", "defaultRetryTimeout": 10000, "backOffMultiplier": 10"#,
            )),
            Some(VCAP),
        )
        .unwrap();
        assert_eq!(
            get(&props, "session.store.url"),
            (
                "rediss://:p%40ss%2Fw%3Ard@10.0.0.5:1234",
                "environment variable VCAP_SERVICES (service \"approuter-redis\")".to_owned()
            )
        );
        assert_eq!(
            get(&props, "session.secret"),
            (
                SECRET,
                "environment variable EXT_SESSION_MGT.sessionSecret".to_owned()
            )
        );
        assert_eq!(get(&props, "session.save.retry.max.delay").0, "10000");
        assert_eq!(get(&props, "session.save.retry.multiplier").0, "10");
        assert!(properties(None, Some(VCAP)).unwrap().is_empty());
    }

    #[test]
    fn a_cluster_binding_and_the_connection_options() {
        let cluster = VCAP.replace("\"cluster_mode\": false", "\"cluster_mode\": true");
        let props = properties(
            Some(&ext(
                r#", "connectTimeout": 2000, "commandTimeout": 800, "keepAlive": 30000"#,
            )),
            Some(&cluster),
        )
        .unwrap();
        assert_eq!(
            get(&props, "session.store.url").0,
            "rediss-cluster://:p%40ss%2Fw%3Ard@10.0.0.5:1234"
        );
        assert_eq!(get(&props, "session.store.connect.timeout").0, "2000");
        assert_eq!(get(&props, "session.store.timeout").0, "800");
        assert_eq!(
            get(&props, "session.store.redis.keepalive"),
            (
                "30000",
                "environment variable EXT_SESSION_MGT.keepAlive".to_owned()
            )
        );
        let by_uri = cluster.replace(
            "\"hostname\": \"10.0.0.5\"",
            "\"uri\": \"redis://:pw@10.0.0.6:6380\", \"hostname\": \"10.0.0.5\"",
        );
        let props = properties(Some(&ext("")), Some(&by_uri)).unwrap();
        assert_eq!(
            get(&props, "session.store.url").0,
            "rediss-cluster://:pw@10.0.0.6:6380"
        );
        // A rediss:// URI keeps TLS though the binding has no tls field.
        let tls_by_uri = by_uri
            .replace("\"tls\": true,", "")
            .replace("redis://:pw", "rediss://:pw");
        let props = properties(Some(&ext("")), Some(&tls_by_uri)).unwrap();
        assert_eq!(
            get(&props, "session.store.url").0,
            "rediss-cluster://:pw@10.0.0.6:6380"
        );
    }

    #[test]
    fn every_mistake_names_its_field() {
        for (ext_value, vcap, needle) in [
            (
                r#"{"instanceName": "#.to_owned(),
                Some(VCAP),
                "EXT_SESSION_MGT:1: not a JSON object",
            ),
            (
                ext("").replace("\"sessionSecret\"", "\"sessionsecret\""),
                Some(VCAP),
                "sessionsecret",
            ),
            (
                ext("").replace(&format!("\"{SECRET}\""), &format!("[\"{SECRET}\"]")),
                Some(VCAP),
                "sessionSecret",
            ),
            (
                ext(r#", "sessionTimeout": 5"#),
                Some(VCAP),
                "sessionTimeout",
            ),
            (
                r#"{"instanceName": "approuter-redis", "storageType": "redis"}"#.to_owned(),
                Some(VCAP),
                "sessionSecret is mandatory",
            ),
            (
                ext("").replace("\"redis\"", "\"mongo\""),
                Some(VCAP),
                "storageType = \"mongo\"",
            ),
            (
                ext(r#", "externalStoreFilePath": "./src/storage/x""#),
                Some(VCAP),
                "cannot load a store from a file",
            ),
            (
                ext(r#", "backOffMultiplier": "ten""#),
                Some(VCAP),
                "backOffMultiplier",
            ),
            (ext(""), None, "VCAP_SERVICES is not set"),
            (
                ext("").replace("approuter-redis", "other"),
                Some(VCAP),
                "bound: approuter-redis, uaa",
            ),
            (ext(""), Some("[1"), "VCAP_SERVICES:1: not a JSON object"),
            (ext(r#", "keepAlive": true"#), Some(VCAP), "keepAlive"),
        ] {
            let error = properties(Some(&ext_value), vcap).unwrap_err().to_string();
            assert!(error.contains(needle), "{ext_value} gave {error}");
            assert!(
                !error.contains(SECRET),
                "the secret is never shown: {error}"
            );
        }
    }
}
