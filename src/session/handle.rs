//! The per-request [`Session`] handle and its axum extractor.

use std::any::Any;
use std::sync::{Arc, Mutex, MutexGuard};

use axum::extract::FromRequestParts;
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use http::request::Parts;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::SessionId;
use super::state::{Entry, LiveValue, State, Value};
use crate::codec;
use crate::store::now_millis;

/// The session of the current request: a cheap clone of a shared handle.
///
/// Get it as an axum extractor on a route behind [`crate::SessionFailoverLayer`]. Nothing is
/// created until the handler writes: [`Session::get`] on a request without a session returns
/// `None` and leaves no trace. Changes are saved after the handler returns (in `sync` mode before
/// the response leaves).
#[derive(Clone)]
pub struct Session(Arc<Mutex<Slot>>);

/// What one request did to its session; read by the layer after the handler.
#[derive(Default)]
pub(crate) struct Slot {
    /// The session this request works on, if it has one.
    pub(crate) entry: Option<Arc<Entry>>,
    /// The session was created by this request: its cookie must be sent.
    pub(crate) created: bool,
    /// The session got a new id in this request: its cookie must be sent.
    pub(crate) cycled: bool,
    /// Ids that this request ended (invalidated or rotated away): removed from the store.
    pub(crate) removed: Vec<SessionId>,
    /// This request invalidated a session.
    pub(crate) invalidated: bool,
    /// The layer has taken the slot: the response is on its way and later changes are not saved.
    pub(crate) finished: bool,
}

/// What a typed read must do outside the entry's lock.
enum Decode {
    Bytes(Arc<[u8]>),
    Convert(Arc<dyn LiveValue>),
}

impl Session {
    pub(crate) fn new(entry: Option<Arc<Entry>>) -> Self {
        Self(Arc::new(Mutex::new(Slot {
            entry,
            ..Slot::default()
        })))
    }

    fn slot(&self) -> MutexGuard<'_, Slot> {
        // Slot operations are plain field updates that cannot leave it half-done.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes what the request did, leaving a finished, empty slot (used by the layer after the
    /// handler).
    pub(crate) fn take(&self) -> Slot {
        let mut slot = self.slot();
        let taken = std::mem::take(&mut *slot);
        slot.finished = true;
        taken
    }

    /// The live entry of this request, if any (an entry ended by a concurrent request is none).
    fn entry(&self) -> Option<Arc<Entry>> {
        let entry = self.slot().entry.clone()?;
        let ended = entry.lock().is_ended();
        (!ended).then_some(entry)
    }

    fn with_state<R>(&self, f: impl FnOnce(&mut State) -> R) -> Option<R> {
        let entry = self.entry()?;
        let mut state = entry.lock();
        (!state.is_ended()).then(|| f(&mut state))
    }

    fn with_state_or_create<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        let entry = {
            let mut slot = self.slot();
            if slot.finished {
                tracing::warn!(
                    "session changed after its response was sent; the change is not saved"
                );
            }
            match &slot.entry {
                Some(entry) if !entry.lock().is_ended() => Arc::clone(entry),
                _ => {
                    let entry = Entry::new(State::new(SessionId::generate(), now_millis()));
                    slot.entry = Some(Arc::clone(&entry));
                    slot.created = !slot.finished;
                    entry
                }
            }
        };
        let mut state = entry.lock();
        f(&mut state)
    }

    /// The value of attribute `name` as a `T`, if the session has it and it decodes as a `T`.
    ///
    /// A value restored from the store is decoded on its first read (outside any lock) and the
    /// result kept for later reads; its stored bytes are what a save writes back until an
    /// [`Session::insert`] replaces them. A stored value that does not decode as `T` (its type
    /// changed incompatibly) is logged at ERROR with the attribute name and type, dropped from
    /// the session, and reads as `None`; the other attributes are unaffected.
    pub fn get<T>(&self, name: &str) -> Option<T>
    where
        T: DeserializeOwned + Clone + Send + Sync + 'static,
    {
        let entry = self.entry()?;
        let (next, id) = {
            let state = entry.lock();
            let next = match state.attributes.get(name)? {
                Value::Live(live) => match live.as_any().downcast_ref::<T>() {
                    Some(value) => return Some(value.clone()),
                    None => Decode::Convert(Arc::clone(live)),
                },
                Value::Local { value, .. } => return value.downcast_ref::<T>().cloned(),
                Value::Encoded { bytes, decoded } => {
                    if let Some(value) = decoded.as_ref().and_then(|d| d.downcast_ref::<T>()) {
                        return Some(value.clone());
                    }
                    Decode::Bytes(Arc::clone(bytes))
                }
            };
            (next, state.id.clone())
        };
        let decode = |bytes: &[u8]| match codec::decode_value::<T>(bytes) {
            Ok(value) => Some(value),
            Err(error) => {
                tracing::error!(
                    session = %id.short_hash(),
                    attribute = name,
                    rust_type = std::any::type_name::<T>(),
                    error = %crate::codec::chain(&error),
                    "attribute does not decode as the requested type; dropped from the session"
                );
                None
            }
        };
        match next {
            // Another type with a compatible serde shape: convert through the codec.
            Decode::Convert(live) => decode(&live.encode().ok()?),
            Decode::Bytes(bytes) => {
                let Some(value) = decode(&bytes) else {
                    // A stored value this build cannot read (its type changed incompatibly):
                    // dropped, so it is not read again or written back; the rest stays.
                    let mut state = entry.lock();
                    if let Some(Value::Encoded { bytes: b, .. }) = state.attributes.get(name)
                        && Arc::ptr_eq(b, &bytes)
                    {
                        state.attributes.remove(name);
                    }
                    return None;
                };
                let mut state = entry.lock();
                if let Some(Value::Encoded { bytes: b, decoded }) = state.attributes.get_mut(name)
                    && Arc::ptr_eq(b, &bytes)
                {
                    *decoded = Some(Arc::new(value.clone()));
                }
                Some(value)
            }
        }
    }

    /// The value of a node-local attribute (see [`Session::insert_local`]).
    pub fn get_local<T: Clone + 'static>(&self, name: &str) -> Option<T> {
        self.with_state(|state| match state.attributes.get(name)? {
            Value::Local { value, .. } => value.downcast_ref::<T>().cloned(),
            Value::Live(live) => live.as_any().downcast_ref::<T>().cloned(),
            Value::Encoded { .. } => None,
        })
        .flatten()
    }

    /// Sets attribute `name`, creating the session if the request has none.
    ///
    /// The value is kept live on this node and encoded (MessagePack, structs as maps) when the
    /// session is saved, so it survives failover. `T` must also deserialize: a value that can be
    /// written but not read back would be lost on failover.
    pub fn insert<T>(&self, name: impl Into<String>, value: T)
    where
        T: Serialize + DeserializeOwned + Send + Sync + 'static,
    {
        let value = Value::Live(Arc::new(value));
        self.with_state_or_create(|state| state.insert(name.into(), value));
    }

    /// Sets a node-local attribute: a value that cannot be serialized (a handle, a channel).
    ///
    /// It lives in this node's memory only and is missing after failover; the serializability
    /// checker names it.
    pub fn insert_local<T: Any + Send + Sync>(&self, name: impl Into<String>, value: T) {
        let value = Value::Local {
            value: Arc::new(value),
            type_name: std::any::type_name::<T>(),
        };
        self.with_state_or_create(|state| state.insert(name.into(), value));
    }

    /// Removes attribute `name`; `true` if it was there.
    pub fn remove(&self, name: &str) -> bool {
        self.with_state(|state| state.remove(name)).unwrap_or(false)
    }

    /// Names of the session's attributes, in order.
    pub fn attribute_names(&self) -> Vec<String> {
        self.with_state(|state| state.attributes.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// The signed-in user, if any (stored in the indexed `principal` column).
    pub fn principal(&self) -> Option<String> {
        self.with_state(|state| state.principal.clone()).flatten()
    }

    /// Sets or clears the signed-in user. Setting one creates the session if needed; clearing
    /// one on a request without a session does nothing.
    ///
    /// Call [`Session::cycle_id`] at the same time when signing in, against session fixation.
    pub fn set_principal(&self, principal: Option<String>) {
        let creates = principal.is_some();
        let update = |state: &mut State| state.set_principal(principal);
        match creates {
            true => self.with_state_or_create(update),
            false => {
                self.with_state(update);
            }
        }
    }

    /// Whether the request has a live session (restored, or created by a write).
    pub fn exists(&self) -> bool {
        self.entry().is_some()
    }

    /// Ends the session: it stops being served on this node at once, its row is removed from
    /// the store, and its cookie is expired. A later write in the same request starts a fresh
    /// session with a new id.
    pub fn invalidate(&self) {
        let mut slot = self.slot();
        let Some(entry) = slot.entry.take() else {
            return;
        };
        let mut state = entry.lock();
        if !state.is_ended() && !slot.created {
            slot.removed.push(state.id.clone());
        }
        state.end();
        slot.created = false;
        slot.cycled = false;
        slot.invalidated = true;
    }

    /// Gives the session a new id, keeping its data; the old id stops working at once on this
    /// node (a request still holding it sees no session) and its row is removed after the new
    /// one is written.
    ///
    /// Use it at sign-in (session-fixation defence). Does nothing if the request has no session.
    pub fn cycle_id(&self) {
        let mut slot = self.slot();
        let Some(entry) = slot.entry.clone() else {
            return;
        };
        let (old, moved) = {
            let mut state = entry.lock();
            if state.is_ended() {
                return;
            }
            let old = state.id.clone();
            (old, state.rotate(SessionId::generate()))
        };
        slot.entry = Some(Entry::new(moved));
        if !slot.created {
            slot.removed.push(old);
            slot.cycled = true;
        }
    }
}

/// The [`Session`] extractor was used on a route that has no session layer.
#[derive(Debug, Clone, Copy)]
pub struct SessionRejection;

impl IntoResponse for SessionRejection {
    fn into_response(self) -> Response {
        tracing::error!(
            "the Session extractor was used on a route without SessionFailoverLayer; \
             add the layer to the router that serves this route"
        );
        StatusCode::INTERNAL_SERVER_ERROR.into_response()
    }
}

impl std::fmt::Display for SessionRejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(
            "missing SessionFailoverLayer: the Session extractor needs the layer on this route",
        )
    }
}

impl std::error::Error for SessionRejection {}

impl<S: Send + Sync> FromRequestParts<S> for Session {
    type Rejection = SessionRejection;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Session>()
            .cloned()
            .ok_or(SessionRejection)
    }
}
