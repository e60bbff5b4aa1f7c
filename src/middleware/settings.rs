//! [`AppSettings`]: one application's settings, and what they decide on their own: how a
//! session becomes a stored record, and whether a request counts as secure for the cookie.

use std::time::Duration;

use crate::codec::{Binding, Codec, EncodedAttributes};
use crate::id::SessionId;
use crate::session::state::{Recode, State, Value};
use crate::store::{EpochMillis, Meta, Record, now_millis};

/// The parts of a session to write, taken under its lock.
#[derive(Clone)]
pub(super) struct Snapshot {
    pub(super) principal: Option<String>,
    pub(super) created_at: EpochMillis,
    /// This node's sequence number of the snapshot (orders its writes of the session).
    pub(super) version: i64,
    /// The stored version the snapshot descends from: its record is the row version after it.
    pub(super) base: i64,
    pub(super) new: bool,
    pub(super) attributes: Vec<(String, Value)>,
}

impl Snapshot {
    /// The data of `state` as snapshot `version` of the row after `base`.
    pub(super) fn of(state: &State, version: i64, base: i64, new: bool) -> Self {
        Self {
            principal: state.principal.clone(),
            created_at: state.created_at,
            version,
            base,
            new,
            attributes: state
                .attributes
                .iter()
                .map(|(name, value)| (name.clone(), value.clone()))
                .collect(),
        }
    }
}

/// An application's settings, fixed when the layer is built.
#[derive(Clone, Debug)]
pub(crate) struct AppSettings {
    pub(crate) app: String,
    pub(crate) context_path: String,
    pub(crate) cookie_name: String,
    pub(crate) cookie_path: Option<String>,
    pub(crate) secure: Option<bool>,
    pub(crate) http_only: Option<bool>,
    pub(crate) timeout: Duration,
    pub(crate) node: String,
    pub(crate) cache_max_entries: u64,
    /// `session.cache.verify.interval`: how long a cached copy is served before the row's
    /// version is checked again.
    pub(crate) verify_every: Duration,
    pub(crate) codec: Codec,
    /// The serializability checker runs on every save.
    pub(crate) check: bool,
    /// ...and a failure answers 500.
    pub(crate) check_response_error: bool,
    /// `session.max.size`: the largest encoded session (before compression) that is saved.
    pub(crate) max_size: usize,
}

/// Whether the request arrived over TLS, directly (`scheme`) or through a proxy that says so
/// (`X-Forwarded-Proto: https` or `Forwarded: proto=https`; the first of each header, found by
/// the layer's one pass over the headers).
///
/// The proxy headers are trusted for this because they can only make the cookie stricter.
pub(crate) fn is_secure(
    scheme: Option<&str>,
    forwarded_proto: Option<&http::HeaderValue>,
    forwarded: Option<&http::HeaderValue>,
) -> bool {
    fn first(value: Option<&http::HeaderValue>) -> Option<&str> {
        value
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(',').next())
            .map(str::trim)
    }
    scheme == Some("https")
        || first(forwarded_proto).is_some_and(|p| p.eq_ignore_ascii_case("https"))
        || first(forwarded).is_some_and(|element| {
            element.split(';').any(|pair| {
                pair.split_once('=').is_some_and(|(k, v)| {
                    k.trim().eq_ignore_ascii_case("proto")
                        && v.trim().trim_matches('"').eq_ignore_ascii_case("https")
                })
            })
        })
}

pub(super) fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

impl AppSettings {
    /// Encodes a snapshot (user `Serialize` impls run here, outside any lock). `None` if the
    /// envelope cannot be built, which must not overwrite a good row.
    pub(super) fn record(&self, id: &SessionId, snapshot: Snapshot) -> Option<Record> {
        let mut encoded = EncodedAttributes::new();
        for (name, value) in snapshot.attributes {
            match value {
                Value::Live(live) => match live.encode() {
                    Ok(bytes) => {
                        encoded.insert(name, bytes);
                    }
                    Err(error) => tracing::error!(
                        app = %self.app,
                        session = %id.short_hash(),
                        "Failed to serialize attribute: {name} ({}): {}; it will not survive failover",
                        live.type_name(),
                        crate::codec::chain(&error)
                    ),
                },
                Value::Encoded { bytes, .. } => {
                    encoded.insert(name, bytes.to_vec());
                }
                Value::Local { type_name, .. } => tracing::debug!(
                    app = %self.app,
                    session = %id.short_hash(),
                    attribute = %name,
                    rust_type = type_name,
                    "node-local attribute not persisted"
                ),
            }
        }
        // One limit, where the value is saved: a session larger than this (before compression)
        // is refused rather than stored, since a body that compresses well would be stored and
        // then never restored (decoding refuses more than MAX_DECODED_LEN).
        let size: usize = encoded
            .iter()
            .map(|(name, bytes)| name.len() + bytes.len())
            .sum();
        if size > self.max_size {
            let mut largest: Vec<(&String, usize)> = encoded
                .iter()
                .map(|(name, bytes)| (name, bytes.len()))
                .collect();
            largest.sort_by_key(|&(_, len)| std::cmp::Reverse(len));
            let listed: Vec<String> = largest
                .iter()
                .take(10)
                .map(|(name, len)| format!("{name} ({len} bytes)"))
                .collect();
            tracing::error!(
                app = %self.app,
                session = %id.short_hash(),
                size,
                max = self.max_size,
                "session too large to save ({size} bytes, session.max.size is {}): {}; the change is refused",
                self.max_size,
                listed.join(", ")
            );
            return None;
        }
        let key = id.store_key();
        let binding = Binding {
            app: &self.app,
            key: &key,
            principal: snapshot.principal.as_deref(),
        };
        let data = match self.codec.encode(&encoded, binding) {
            Ok(data) => data,
            Err(error) => {
                tracing::error!(app = %self.app, session = %id.short_hash(), error = &error as &dyn std::error::Error, "cannot encode session; not saved");
                return None;
            }
        };
        let now = now_millis();
        Some(Record {
            meta: Meta {
                key,
                app: self.app.clone(),
                context_path: self.context_path.clone(),
                node: self.node.clone(),
                principal: snapshot.principal,
                created_at: snapshot.created_at,
                modified_at: now,
                expires_at: now.saturating_add(millis(self.timeout)),
                max_inactive_secs: i64::try_from(self.timeout.as_secs()).unwrap_or(i64::MAX),
                version: snapshot.base.saturating_add(1),
                attributes: encoded.keys().cloned().collect(),
                size_bytes: i64::try_from(data.len()).unwrap_or(i64::MAX),
            },
            data,
        })
    }
}

impl Recode for AppSettings {
    fn decode(&self, record: &Record) -> Option<EncodedAttributes> {
        let binding = Binding {
            app: &record.meta.app,
            key: &record.meta.key,
            principal: record.meta.principal.as_deref(),
        };
        match self.codec.decode(&record.data, binding) {
            Ok(attributes) => Some(attributes),
            Err(error) => {
                tracing::error!(app = %self.app, session = %record.meta.key.short_hash(), error = &error as &dyn std::error::Error, "the newer stored state of a session does not decode; this node's copy is dropped");
                None
            }
        }
    }

    fn encode(&self, state: &State) -> Option<Record> {
        self.record(&state.id, Snapshot::of(state, 0, state.base(), false))
    }
}
