//! One application's shared state and the two halves of the filter: load and finish.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use cookie::{Cookie, SameSite};
use http::header::{COOKIE, SET_COOKIE};
use http::{HeaderMap, HeaderValue, Request};

use crate::cache::NodeCache;
use crate::codec::{Codec, EncodedAttributes};
use crate::persist::Persister;
use crate::session::state::{Entry, State, Value};
use crate::session::{Session, SessionId};
use crate::store::{EpochMillis, Meta, Record, now_millis};

/// A session only read is touched in the store at most once per this fraction of its timeout.
pub(crate) const TOUCH_DIVISOR: u32 = 10;
/// At most this many session cookies of one request are tried (a request with thousands of
/// cookies must not cause thousands of store reads).
const MAX_COOKIE_CANDIDATES: usize = 3;

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
}

/// Everything the filter of one application shares across requests.
pub(crate) struct AppShared {
    pub(crate) settings: AppSettings,
    /// Live sessions on this node.
    pub(crate) cache: NodeCache,
    /// `None`: memory-only sessions.
    pub(crate) persister: Option<Persister>,
    pub(crate) codec: Codec,
}

/// What loading a request's session gave.
pub(crate) enum Loaded {
    Session(Session),
    /// A store read failed: the session may exist but cannot be restored now.
    StoreDown,
}

/// Why a restore did not produce a session.
#[derive(Debug)]
enum Miss {
    Absent,
    Store(crate::store::Error),
}

/// Whether the request arrived over TLS, directly or through a proxy that says so.
///
/// `X-Forwarded-Proto` is trusted for this because it can only make the cookie stricter.
pub(crate) fn request_is_secure<B>(request: &Request<B>) -> bool {
    request.uri().scheme_str() == Some("https")
        || request
            .headers()
            .get("x-forwarded-proto")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(',').next())
            .is_some_and(|proto| proto.trim().eq_ignore_ascii_case("https"))
}

impl AppShared {
    /// The well-formed session ids among the request's cookies of our name, in order.
    pub(crate) fn cookie_ids(&self, headers: &HeaderMap) -> Vec<SessionId> {
        let name = self.settings.cookie_name.as_str();
        headers
            .get_all(COOKIE)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .filter(|(n, _)| n.trim() == name)
            .filter_map(|(_, v)| SessionId::parse(v.trim().trim_matches('"')))
            .take(MAX_COOKIE_CANDIDATES)
            .collect()
    }

    /// Finds the session of the first id that names one: node cache first, then the store.
    pub(crate) async fn load(&self, ids: &[SessionId]) -> Loaded {
        for id in ids {
            if let Some(entry) = self.cache.get(id).await {
                if !entry.lock().invalidated {
                    return Loaded::Session(Session::new(Some(entry)));
                }
                continue;
            }
            let Some(persister) = &self.persister else {
                tracing::debug!(app = %self.settings.app, session = %id.short_hash(), "unknown session id; a fresh session will be used");
                continue;
            };
            // Concurrent requests of one session restore it once and share the entry.
            let restored = self
                .cache
                .try_get_with(id.clone(), async {
                    match self.restore(persister, id).await {
                        Ok(Some(entry)) => Ok(entry),
                        Ok(None) => Err(Miss::Absent),
                        Err(e) => Err(Miss::Store(e)),
                    }
                })
                .await;
            match restored {
                Ok(entry) => return Loaded::Session(Session::new(Some(entry))),
                Err(miss) => match &*miss {
                    Miss::Absent => {}
                    Miss::Store(error) => {
                        tracing::error!(
                            app = %self.settings.app,
                            session = %id.short_hash(),
                            error = error as &dyn std::error::Error,
                            "cannot restore session: store read failed; answering 503"
                        );
                        return Loaded::StoreDown;
                    }
                },
            }
        }
        Loaded::Session(Session::new(None))
    }

    async fn restore(
        &self,
        persister: &Persister,
        id: &SessionId,
    ) -> Result<Option<Arc<Entry>>, crate::store::Error> {
        let short = id.short_hash();
        let Some(record) = persister.load(&id.store_key(), now_millis()).await? else {
            tracing::info!(app = %self.settings.app, session = %short, "unknown or expired session id; a fresh session will be used");
            return Ok(None);
        };
        if record.meta.app != self.settings.app {
            tracing::warn!(app = %self.settings.app, session = %short, stored_app = %record.meta.app, "session belongs to another application; not restored");
            return Ok(None);
        }
        match self.codec.decode(&record.data) {
            Ok(attributes) => {
                tracing::info!(app = %self.settings.app, session = %short, from_node = %record.meta.node, "restored from store");
                Ok(Some(Entry::new(State::restored(
                    id.clone(),
                    &record.meta,
                    attributes,
                ))))
            }
            Err(error) => {
                tracing::error!(app = %self.settings.app, session = %short, error = &error as &dyn std::error::Error, "stored session does not decode; a fresh session will be used");
                Ok(None)
            }
        }
    }

    /// After the handler: end removed ids, save or touch the session, set the cookie.
    pub(crate) async fn finish(
        &self,
        session: &Session,
        had_cookie: bool,
        secure: bool,
        headers: &mut HeaderMap,
    ) {
        let slot = session.take();
        for old in &slot.removed {
            self.cache.invalidate(old).await;
            if let Some(persister) = &self.persister
                && let Err(error) = persister.destroy(&old.store_key()).await
            {
                tracing::error!(app = %self.settings.app, session = %old.short_hash(), error = &error as &dyn std::error::Error, "cannot remove ended session from the store");
            }
        }
        let Some(entry) = slot.entry else {
            if slot.invalidated && had_cookie {
                self.set_cookie(headers, None, secure);
            }
            return;
        };
        let now = now_millis();
        let (id, work) = self.plan(&entry, now);
        if slot.created || slot.cycled {
            self.cache.insert(id.clone(), Arc::clone(&entry)).await;
            self.set_cookie(headers, Some(&id), secure);
        }
        let Some(persister) = &self.persister else {
            return;
        };
        match work {
            Work::None => {}
            Work::Touch => {
                let expires_at = now + millis(self.settings.timeout);
                if let Err(error) = persister.touch(&id.store_key(), now, expires_at).await {
                    tracing::warn!(app = %self.settings.app, session = %id.short_hash(), error = &error as &dyn std::error::Error, "cannot push session expiry forward");
                }
            }
            Work::Save(snapshot) => {
                let record = self.record(&id, snapshot, now);
                if let Err(error) = persister.save(&record).await {
                    // Keep it: still in the cache, marked changed, saved by its next request.
                    entry.lock().dirty = true;
                    tracing::error!(app = %self.settings.app, session = %id.short_hash(), error = &error as &dyn std::error::Error, "cannot save session; kept in memory and retried on its next request");
                }
            }
        }
    }

    /// Decides under the session's lock what to persist, and marks it done.
    fn plan(&self, entry: &Entry, now: EpochMillis) -> (SessionId, Work) {
        let mut state = entry.lock();
        let id = state.id.clone();
        if state.invalidated {
            return (id, Work::None);
        }
        if state.dirty {
            state.dirty = false;
            state.version += 1;
            state.persisted_at = now;
            let snapshot = Snapshot {
                principal: state.principal.clone(),
                created_at: state.created_at,
                version: state.version,
                attributes: state.attributes.clone(),
            };
            return (id, Work::Save(snapshot));
        }
        let touch_every = millis(self.settings.timeout / TOUCH_DIVISOR);
        if now - state.persisted_at >= touch_every {
            state.persisted_at = now;
            return (id, Work::Touch);
        }
        (id, Work::None)
    }

    /// Encodes a snapshot (outside the lock: user `Serialize` impls run here).
    fn record(&self, id: &SessionId, snapshot: Snapshot, now: EpochMillis) -> Record {
        let mut encoded = EncodedAttributes::new();
        for (name, value) in snapshot.attributes {
            match value {
                Value::Live(live) => match live.encode() {
                    Ok(bytes) => {
                        encoded.insert(name, bytes);
                    }
                    Err(error) => tracing::error!(
                        app = %self.settings.app,
                        session = %id.short_hash(),
                        "Failed to serialize attribute: {name} ({}): {error}; it will not survive failover",
                        live.type_name()
                    ),
                },
                Value::Encoded(bytes) => {
                    encoded.insert(name, bytes.to_vec());
                }
                Value::Local { type_name, .. } => tracing::debug!(
                    app = %self.settings.app,
                    session = %id.short_hash(),
                    attribute = %name,
                    rust_type = type_name,
                    "node-local attribute not persisted"
                ),
            }
        }
        let attributes = encoded.keys().cloned().collect();
        let data = self.codec.encode(&encoded).unwrap_or_else(|error| {
            // Encoding a map of byte strings cannot fail short of memory exhaustion; keep going
            // with an empty session rather than failing the request.
            tracing::error!(app = %self.settings.app, session = %id.short_hash(), error = &error as &dyn std::error::Error, "cannot encode session");
            Vec::new()
        });
        let timeout = millis(self.settings.timeout);
        Record {
            meta: Meta {
                key: id.store_key(),
                app: self.settings.app.clone(),
                context_path: self.settings.context_path.clone(),
                node: self.settings.node.clone(),
                principal: snapshot.principal,
                created_at: snapshot.created_at,
                modified_at: now,
                expires_at: now + timeout,
                max_inactive_secs: i64::try_from(self.settings.timeout.as_secs())
                    .unwrap_or(i64::MAX),
                version: snapshot.version,
                attributes,
                size_bytes: i64::try_from(data.len()).unwrap_or(i64::MAX),
            },
            data,
        }
    }

    /// Sets the session cookie, or expires it when `id` is `None`.
    fn set_cookie(&self, headers: &mut HeaderMap, id: Option<&SessionId>, secure: bool) {
        let s = &self.settings;
        let path = s
            .cookie_path
            .clone()
            .unwrap_or_else(|| s.context_path.clone());
        let mut cookie = Cookie::build((
            s.cookie_name.clone(),
            id.map(|id| id.as_cookie_value().to_owned())
                .unwrap_or_default(),
        ))
        .path(path)
        .secure(s.secure.unwrap_or(secure))
        .http_only(s.http_only.unwrap_or(secure))
        .same_site(SameSite::Lax)
        .build();
        if id.is_none() {
            cookie.make_removal();
        }
        match HeaderValue::try_from(cookie.to_string()) {
            Ok(value) => {
                headers.append(SET_COOKIE, value);
            }
            Err(error) => {
                tracing::error!(app = %s.app, %error, "session cookie is not a valid header value")
            }
        }
    }
}

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

/// What a request leaves to persist.
enum Work {
    None,
    Touch,
    Save(Snapshot),
}

/// The parts of a session to write, taken under its lock.
struct Snapshot {
    principal: Option<String>,
    created_at: EpochMillis,
    version: i64,
    attributes: BTreeMap<String, Value>,
}
