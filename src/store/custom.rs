//! Custom stores as SAP approuter defines them: [`CustomStore`], exactly the eight operations
//! of approuter's `UserCustomStore` (`clear`, `destroy`, `get`, `length`, `ttl`, `set`,
//! `exists`, `reset_timer`) on whole sessions by id, and [`Adapted`], which makes one a full
//! [`SessionStore`] and [`SessionAdmin`]; plus a registry by name ([`register`]), so
//! `session.store.url=NAME://…` (or `EXT_SESSION_MGT`'s `storageType`) picks a store the
//! application registered in code.
//!
//! What a store of only these eight operations gives up, against the built-in ones:
//! - **No batching**: a batch of N writes is N reads and N writes, one after another.
//! - **No atomic conditional update**: the version rule of an insert and the compare-and-set
//!   of an update are a `get` then a `set`. Two nodes writing one session in the same moment
//!   (a user whose requests reach two nodes at once) can both pass the check, and the later
//!   `set` wins whole: a change acknowledged by the other node is then lost. Sticky load
//!   balancing makes that rare; the built-in stores make it impossible.
//! - **No listing**: the backoffice's list, `sessions list`/`stats`/`reencrypt` and the
//!   filter by principal answer that this store cannot list; `length` works.
//! - **Expiry by the store**: `set` and `reset_timer` pass the session's timeout, and a read
//!   takes the expiry from `ttl`, so a touch is one `reset_timer`; the purge does nothing.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use super::{
    EpochMillis, Error, ListQuery, Meta, Record, SessionAdmin, SessionStore, StoreOptions, Update,
};
use crate::id::SessionKey;

/// A session store of approuter's eight operations. A session is an opaque byte string (the
/// adapter's encoding of one stored record: its metadata and the encrypted, compressed blob).
#[async_trait::async_trait]
pub trait CustomStore: Send + Sync + 'static {
    /// Deletes every session.
    async fn clear(&self) -> Result<(), Error>;
    /// Removes session `id`.
    async fn destroy(&self, id: &str) -> Result<(), Error>;
    /// Session `id`, if the store has it (and it has not expired).
    async fn get(&self, id: &str) -> Result<Option<Vec<u8>>, Error>;
    /// The number of sessions.
    async fn length(&self) -> Result<u64, Error>;
    /// How long session `id` has before it expires; `None` if the store does not have it.
    async fn ttl(&self, id: &str) -> Result<Option<Duration>, Error>;
    /// Stores `session` as session `id`, expiring after `timeout`.
    async fn set(&self, id: &str, session: Vec<u8>, timeout: Duration) -> Result<(), Error>;
    /// Whether the store has session `id`.
    async fn exists(&self, id: &str) -> Result<bool, Error>;
    /// Makes session `id` expire after `timeout` from now.
    async fn reset_timer(&self, id: &str, timeout: Duration) -> Result<(), Error>;
}

/// A [`CustomStore`] as a full store (see the module docs for what it gives up).
pub struct Adapted<S> {
    inner: S,
}

impl<S: CustomStore> Adapted<S> {
    /// `store` as a [`SessionAdmin`].
    pub fn new(store: S) -> Self {
        Self { inner: store }
    }

    /// The record of session `key` at `now`, its expiry taken from the store's `ttl`.
    async fn read(&self, key: &SessionKey, now: EpochMillis) -> Result<Option<Record>, Error> {
        let Some(bytes) = self.inner.get(key.as_str()).await? else {
            return Ok(None);
        };
        let Some(ttl) = self.inner.ttl(key.as_str()).await? else {
            return Ok(None);
        };
        let mut record = decode(key, &bytes)?;
        record.meta.expires_at = now.saturating_add(millis(ttl));
        Ok(Some(record))
    }

    async fn write(&self, record: &Record) -> Result<(), Error> {
        let timeout = Duration::from_millis(
            u64::try_from(record.meta.expires_at - record.meta.modified_at).unwrap_or(0),
        );
        self.inner
            .set(record.meta.key.as_str(), encode(record), timeout)
            .await
    }
}

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

/// One record as the byte string a custom store keeps: its metadata as one JSON line, then the
/// blob as it is.
fn encode(record: &Record) -> Vec<u8> {
    let mut out = serde_json::to_vec(&record.meta).unwrap_or_default();
    out.push(b'\n');
    out.extend_from_slice(&record.data);
    out
}

fn decode(key: &SessionKey, bytes: &[u8]) -> Result<Record, Error> {
    let corrupt = |reason: String| Error::CorruptRow {
        key: key.as_str().to_owned(),
        reason,
    };
    let split = bytes
        .iter()
        .position(|&b| b == b'\n')
        .ok_or_else(|| corrupt("not a session written by this layer".to_owned()))?;
    let stored: StoredMeta = serde_json::from_slice(&bytes[..split])
        .map_err(|e| corrupt(format!("metadata is not the layer's JSON: {e}")))?;
    Ok(Record {
        meta: Meta {
            key: key.clone(),
            app: stored.app,
            context_path: stored.context_path,
            node: stored.node,
            principal: stored.principal,
            created_at: stored.created_at,
            modified_at: stored.modified_at,
            expires_at: stored.expires_at,
            max_inactive_secs: stored.max_inactive_secs,
            version: stored.version,
            attributes: stored.attributes,
            size_bytes: stored.size_bytes,
        },
        data: bytes[split + 1..].to_vec(),
    })
}

/// [`Meta`] as [`encode`] writes it (the key is the store's id).
#[derive(serde::Deserialize)]
struct StoredMeta {
    app: String,
    context_path: String,
    node: String,
    principal: Option<String>,
    created_at: EpochMillis,
    modified_at: EpochMillis,
    expires_at: EpochMillis,
    max_inactive_secs: i64,
    version: i64,
    attributes: Vec<String>,
    size_bytes: i64,
}

#[async_trait::async_trait]
impl<S: CustomStore> SessionStore for Adapted<S> {
    async fn get(&self, key: &SessionKey, now: EpochMillis) -> Result<Option<Record>, Error> {
        self.read(key, now).await
    }

    /// Each record: a read, then a write unless the store holds this version or a newer one.
    async fn set_many(&self, records: &[Record]) -> Result<(), Error> {
        for record in records {
            let now = record.meta.modified_at;
            match self.read(&record.meta.key, now).await? {
                Some(stored) if stored.meta.version >= record.meta.version => {}
                Some(stored) => {
                    let mut record = record.clone();
                    record.meta.created_at = stored.meta.created_at;
                    self.write(&record).await?;
                }
                None => self.write(record).await?,
            }
        }
        Ok(())
    }

    /// Each record: a read, then a write if the stored version is the one it follows. Not
    /// atomic (see the module docs).
    async fn update_many(&self, records: &[Record]) -> Result<Vec<Update>, Error> {
        let mut outcomes = Vec::with_capacity(records.len());
        for record in records {
            let now = record.meta.modified_at;
            let outcome = match self.read(&record.meta.key, now).await? {
                Some(stored) if stored.meta.expires_at > now => {
                    if stored.meta.version == record.meta.version - 1 {
                        self.write(record).await?;
                        Update::Written
                    } else {
                        Update::Superseded
                    }
                }
                _ => Update::Missing,
            };
            outcomes.push(outcome);
        }
        Ok(outcomes)
    }

    async fn destroy_many(&self, keys: &[SessionKey]) -> Result<u64, Error> {
        let mut removed = 0;
        for key in keys {
            if self.inner.exists(key.as_str()).await? {
                self.inner.destroy(key.as_str()).await?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// One `reset_timer`: reads take the expiry from `ttl`, so the blob needs no rewrite.
    async fn reset_timer(
        &self,
        key: &SessionKey,
        modified_at: EpochMillis,
        expires_at: EpochMillis,
    ) -> Result<bool, Error> {
        if !self.inner.exists(key.as_str()).await? {
            return Ok(false);
        }
        let timeout = Duration::from_millis(u64::try_from(expires_at - modified_at).unwrap_or(0));
        self.inner.reset_timer(key.as_str(), timeout).await?;
        Ok(true)
    }
}

#[async_trait::async_trait]
impl<S: CustomStore> SessionAdmin for Adapted<S> {
    async fn list(&self, _query: &ListQuery) -> Result<Vec<Meta>, Error> {
        Err(Error::Backend(
            "this store cannot list sessions: a custom store of the eight operations has no listing"
                .into(),
        ))
    }

    /// Nothing: the store expires sessions itself.
    async fn purge_expired(&self, _now: EpochMillis, _batch_size: u32) -> Result<u64, Error> {
        Ok(0)
    }

    async fn length(&self) -> Result<u64, Error> {
        self.inner.length().await
    }

    async fn clear(&self) -> Result<(), Error> {
        self.inner.clear().await
    }

    async fn exists(&self, key: &SessionKey, _now: EpochMillis) -> Result<bool, Error> {
        self.inner.exists(key.as_str()).await
    }

    async fn ttl(&self, key: &SessionKey, _now: EpochMillis) -> Result<Option<Duration>, Error> {
        self.inner.ttl(key.as_str()).await
    }
}

/// What [`register`] keeps: opens a store from its URL.
pub type Opener = Arc<
    dyn Fn(
            String,
            StoreOptions,
        ) -> Pin<Box<dyn Future<Output = Result<Arc<dyn SessionAdmin>, Error>> + Send>>
        + Send
        + Sync,
>;

fn registry() -> &'static Mutex<HashMap<String, Opener>> {
    static REGISTRY: OnceLock<Mutex<HashMap<String, Opener>>> = OnceLock::new();
    REGISTRY.get_or_init(Mutex::default)
}

/// Registers a store under `name`: `session.store.url=NAME://…` (and `EXT_SESSION_MGT`'s
/// `"storageType": "NAME"`) then opens it with `open(url, options)`. Call it before the
/// configuration is loaded. A name of a built-in scheme (`sqlite`, `postgres`, `redis`, …)
/// is refused: it would never be used.
pub fn register<F, Fut>(name: &str, open: F) -> Result<(), Error>
where
    F: Fn(String, StoreOptions) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Arc<dyn SessionAdmin>, Error>> + Send + 'static,
{
    const BUILT_IN: [&str; 8] = [
        "sqlite",
        "postgres",
        "postgresql",
        "mysql",
        "mariadb",
        "redis",
        "rediss",
        "memory",
    ];
    let valid = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '+');
    if !valid || BUILT_IN.contains(&name) {
        return Err(Error::Url {
            url: format!("{name}://"),
            reason: format!(
                "a store cannot be registered as {name:?}: use a lower-case name (letters, digits, - and +) that no built-in store uses ({})",
                BUILT_IN.join(", ")
            ),
        });
    }
    let opener: Opener = Arc::new(move |url, options| Box::pin(open(url, options)));
    registry()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(name.to_owned(), opener);
    Ok(())
}

/// The store registered under `name`, if any.
pub(crate) fn registered(name: &str) -> Option<Opener> {
    registry()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(name)
        .cloned()
}

/// The names registered, sorted (for messages).
pub(crate) fn registered_names() -> Vec<String> {
    let mut names: Vec<String> = registry()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .keys()
        .cloned()
        .collect();
    names.sort();
    names
}
