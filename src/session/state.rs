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
    fn type_name(&self) -> &'static str;
    fn as_any(&self) -> &dyn Any;
}

impl<T: Serialize + Send + Sync + 'static> LiveValue for T {
    fn encode(&self) -> Result<Vec<u8>, codec::Error> {
        codec::encode_value(self)
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
    /// Restored from the store; decoded on first typed read.
    Encoded(Arc<[u8]>),
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
    /// When the row was last written or touched (for the touch throttle).
    pub(crate) persisted_at: EpochMillis,
    /// Set by `invalidate`: no request may save this session again.
    pub(crate) invalidated: bool,
}

/// A session as the node cache holds it.
pub(crate) struct Entry {
    /// A std mutex: every section is a short in-memory operation and none is held across
    /// `.await` (`clippy::await_holding_lock` is denied).
    state: Mutex<State>,
}

impl Entry {
    pub(crate) fn new(state: State) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(state),
        })
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        // Each section leaves `State` consistent before anything that could panic (user `Serialize`
        // impls run outside the lock), so a poisoned lock still guards consistent data.
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
            persisted_at: now,
            invalidated: false,
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
                .map(|(name, bytes)| (name, Value::Encoded(bytes.into())))
                .collect(),
            dirty: false,
            version: meta.version,
            persisted_at: meta.modified_at,
            invalidated: false,
        }
    }

    /// A typed read. A value restored from the store is decoded once and then kept live.
    pub(crate) fn get<T>(&mut self, name: &str) -> Option<T>
    where
        T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
    {
        let decoded: T = match self.attributes.get(name)? {
            Value::Live(live) => {
                if let Some(value) = live.as_any().downcast_ref::<T>() {
                    return Some(value.clone());
                }
                // Another type with a compatible serde shape: convert through the codec.
                let bytes = live.encode().ok()?;
                return self.decode_or_log(name, &bytes);
            }
            Value::Local { value, .. } => return value.downcast_ref::<T>().cloned(),
            Value::Encoded(bytes) => {
                let bytes = Arc::clone(bytes);
                self.decode_or_log(name, &bytes)?
            }
        };
        self.attributes
            .insert(name.to_owned(), Value::Live(Arc::new(decoded.clone())));
        Some(decoded)
    }

    fn decode_or_log<T: DeserializeOwned>(&self, name: &str, bytes: &[u8]) -> Option<T> {
        match codec::decode_value(bytes) {
            Ok(value) => Some(value),
            Err(error) => {
                tracing::error!(
                    session = %self.id.short_hash(),
                    attribute = name,
                    rust_type = std::any::type_name::<T>(),
                    error = &error as &dyn std::error::Error,
                    "attribute does not decode as the requested type; treated as absent"
                );
                None
            }
        }
    }

    /// Reads a node-local value.
    pub(crate) fn get_local<T: Clone + 'static>(&self, name: &str) -> Option<T> {
        match self.attributes.get(name)? {
            Value::Local { value, .. } => value.downcast_ref::<T>().cloned(),
            Value::Live(live) => live.as_any().downcast_ref::<T>().cloned(),
            Value::Encoded(_) => None,
        }
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
