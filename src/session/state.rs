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

/// The mutable part of a session. The data (`id`, `principal`, `created_at`, `attributes`) is
/// read and written by the handle; the persistence state is private and changes only through
/// the transition methods below, each named for the event that causes it.
pub(crate) struct State {
    pub(crate) id: SessionId,
    pub(crate) principal: Option<String>,
    pub(crate) created_at: EpochMillis,
    pub(crate) attributes: BTreeMap<String, Value>,
    /// Changed since the last successful save.
    dirty: bool,
    /// The version of the last snapshot taken for saving; the next save writes `version + 1`.
    version: i64,
    /// The store has a row for this id (restored from it, or saved once): later saves only
    /// update that row, so a row deleted meanwhile (logout elsewhere, backoffice) is not
    /// re-created.
    persisted: bool,
    /// When the row was last written or touched (for the touch throttle).
    persisted_at: EpochMillis,
    /// Ended (invalidated, rotated away, or deleted elsewhere): never served or saved again. The
    /// entry stays in the cache as a tombstone until its idle expiry, so a concurrent request
    /// cannot restore the old row before it is deleted.
    invalidated: bool,
    /// Another node stored a newer state: this copy must not be served again; the next request
    /// drops it and restores the newer state.
    stale: bool,
    /// Restored from the store on this node and its cookie not yet sent again. The first request
    /// after a restore re-sends the cookie (same id), so a load balancer that sticks on a cookie
    /// prefix re-sticks the user to this node.
    announce: bool,
}

/// What a request leaves to persist, decided by [`State::take_work`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Due {
    /// Nothing.
    Nothing,
    /// Push the row's expiry forward.
    Touch,
    /// Write this version; insert it if `new` (the store has no row yet).
    Save { version: i64, new: bool },
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

    /// Restored from this node's write queue before its first write landed: no row yet.
    pub(crate) fn restored_without_row(&mut self) {
        self.persisted = false;
    }

    /// Whether the session was ended (a tombstone).
    pub(crate) fn is_ended(&self) -> bool {
        self.invalidated
    }

    /// Whether another node stored a newer state (this copy must be dropped).
    pub(crate) fn is_stale(&self) -> bool {
        self.stale
    }

    /// Whether it holds a change not yet saved (and is not ended).
    pub(crate) fn has_unsaved_change(&self) -> bool {
        self.dirty && !self.invalidated
    }

    /// Whether the cookie must be sent again (first request after a restore); once.
    pub(crate) fn take_announce(&mut self) -> bool {
        std::mem::take(&mut self.announce)
    }

    /// After a request: what to persist, marked as taken. A change becomes the next version; an
    /// unchanged session with a row is touched at most once per `touch_every` ms.
    pub(crate) fn take_work(&mut self, now: EpochMillis, touch_every: EpochMillis) -> Due {
        if self.dirty {
            self.dirty = false;
            self.version = self.version.saturating_add(1);
            self.persisted_at = now;
            return Due::Save {
                version: self.version,
                new: !self.persisted,
            };
        }
        // Only a row known to exist is touched: a session whose first write is still queued
        // has none yet, and "not found" would wrongly end it.
        if self.persisted && now.saturating_sub(self.persisted_at) >= touch_every {
            self.persisted_at = now;
            return Due::Touch;
        }
        Due::Nothing
    }

    /// A save taken by [`State::take_work`] was not made (not encodable, or the store failed
    /// and nobody retries it): the session's next request saves it again.
    pub(crate) fn keep_change(&mut self) {
        if !self.invalidated {
            self.dirty = true;
        }
    }

    /// The store holds the state of `version` (or newer from this node).
    pub(crate) fn mark_written(&mut self) {
        self.persisted = true;
    }

    /// Another node wrote a newer state than `version`: unless this node has a newer one on its
    /// way, its copy is stale and the next request restores the newer state.
    pub(crate) fn mark_superseded(&mut self, version: i64) {
        if self.version <= version {
            self.stale = true;
        }
    }

    /// Test support: as if version `version` had just been taken for saving.
    #[cfg(test)]
    pub(crate) fn saved_as(&mut self, version: i64) {
        self.dirty = false;
        self.version = version;
    }

    /// Test support: whether the store is known to hold a row.
    #[cfg(test)]
    pub(crate) fn has_row(&self) -> bool {
        self.persisted
    }

    /// Sets the principal; a change is a change of the session.
    pub(crate) fn set_principal(&mut self, principal: Option<String>) {
        self.dirty |= self.principal != principal;
        self.principal = principal;
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
