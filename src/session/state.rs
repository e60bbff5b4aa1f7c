//! The state of one session on this node, shared by the node cache and every request.

use std::any::Any;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::SessionId;
use crate::codec::{self, EncodedAttributes};
use crate::store::EpochMillis;

/// A serializable value kept live in memory.
pub(crate) trait LiveValue: Any + Send + Sync {
    fn encode(&self) -> Result<Vec<u8>, codec::Error>;
    /// Encodes, decodes as its own type and encodes again (for the serializability checker).
    fn round_trip(&self) -> Result<Vec<u8>, codec::Error>;
    fn type_name(&self) -> &'static str;
    fn as_any(&self) -> &dyn Any;
}

impl<T: Serialize + DeserializeOwned + Send + Sync + 'static> LiveValue for T {
    fn encode(&self) -> Result<Vec<u8>, codec::Error> {
        codec::encode_value(self)
    }
    fn round_trip(&self) -> Result<Vec<u8>, codec::Error> {
        let decoded: T = codec::decode_value(&codec::encode_value(self)?)?;
        codec::encode_value(&decoded)
    }
    fn type_name(&self) -> &'static str {
        std::any::type_name::<T>()
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// One attribute value.
#[derive(Clone)]
pub(crate) enum Value {
    /// Inserted on this node as a typed value; encoded when the session is saved.
    Live(Arc<dyn LiveValue>),
    /// Restored from the store. The bytes stay the truth (they are what a save writes back) until
    /// an insert replaces them, so a node reading them as an older type loses no fields; the last
    /// typed read is kept beside them so repeated reads do not decode again.
    Encoded {
        bytes: Arc<[u8]>,
        decoded: Option<Arc<dyn Any + Send + Sync>>,
    },
    /// Not serializable: kept on this node only.
    Local {
        value: Arc<dyn Any + Send + Sync>,
        type_name: &'static str,
    },
}

/// The mutable part of a session.
pub(crate) struct State {
    pub(crate) id: SessionId,
    pub(crate) principal: Option<String>,
    pub(crate) created_at: EpochMillis,
    pub(crate) attributes: BTreeMap<String, Value>,
    /// Changed since the last successful save.
    pub(crate) dirty: bool,
    /// The version of the last snapshot taken for saving; the next save writes `version + 1`.
    pub(crate) version: i64,
    /// The store has a row for this id (restored from it, or saved once): later saves only
    /// update that row, so a row deleted meanwhile (logout elsewhere, backoffice) is not
    /// re-created.
    pub(crate) persisted: bool,
    /// When the row was last written or touched (for the touch throttle).
    pub(crate) persisted_at: EpochMillis,
    /// Ended (invalidated, rotated away, or deleted elsewhere): never served or saved again. The
    /// entry stays in the cache as a tombstone until its idle expiry, so a concurrent request
    /// cannot restore the old row before it is deleted.
    pub(crate) invalidated: bool,
    /// Another node stored a newer state: this copy must not be served again; the next request
    /// drops it and restores the newer state.
    pub(crate) stale: bool,
    /// Restored from the store on this node and its cookie not yet sent again. The first request
    /// after a restore re-sends the cookie (same id), so a load balancer that sticks on a cookie
    /// prefix re-sticks the user to this node.
    pub(crate) announce: bool,
}

/// A session as the node cache holds it.
pub(crate) struct Entry {
    /// A std mutex: every section is a short in-memory operation (no user `Serialize` or
    /// `Deserialize` runs under it) and none is held across `.await`
    /// (`clippy::await_holding_lock` is denied).
    state: Mutex<State>,
}

impl Entry {
    pub(crate) fn new(state: State) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(state),
        })
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        // Each section leaves `State` consistent before anything that could panic, so a poisoned
        // lock still guards consistent data.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl State {
    pub(crate) fn new(id: SessionId, now: EpochMillis) -> Self {
        Self {
            id,
            principal: None,
            created_at: now,
            attributes: BTreeMap::new(),
            dirty: true,
            version: 0,
            persisted: false,
            persisted_at: now,
            invalidated: false,
            stale: false,
            announce: false,
        }
    }

    /// A session restored from the store.
    pub(crate) fn restored(
        id: SessionId,
        meta: &crate::store::Meta,
        attributes: EncodedAttributes,
    ) -> Self {
        Self {
            id,
            principal: meta.principal.clone(),
            created_at: meta.created_at,
            attributes: attributes
                .into_iter()
                .map(|(name, bytes)| {
                    let value = Value::Encoded {
                        bytes: bytes.into(),
                        decoded: None,
                    };
                    (name, value)
                })
                .collect(),
            dirty: false,
            version: meta.version,
            persisted: true,
            persisted_at: meta.modified_at,
            invalidated: false,
            stale: false,
            announce: true,
        }
    }

    /// Moves the data out into a state under a new id, leaving this one an empty tombstone.
    pub(crate) fn rotate(&mut self, new_id: SessionId) -> State {
        let moved = State {
            id: new_id,
            principal: self.principal.take(),
            created_at: self.created_at,
            attributes: std::mem::take(&mut self.attributes),
            dirty: true,
            version: self.version,
            // A new id is a new row.
            persisted: false,
            persisted_at: self.persisted_at,
            invalidated: false,
            stale: false,
            announce: false,
        };
        self.end();
        moved
    }

    /// Marks the session ended and frees its data.
    pub(crate) fn end(&mut self) {
        self.invalidated = true;
        self.dirty = false;
        self.principal = None;
        self.attributes.clear();
    }

    pub(crate) fn insert(&mut self, name: String, value: Value) {
        self.attributes.insert(name, value);
        self.dirty = true;
    }

    pub(crate) fn remove(&mut self, name: &str) -> bool {
        let removed = self.attributes.remove(name).is_some();
        self.dirty |= removed;
        removed
    }
}
