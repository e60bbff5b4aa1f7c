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
use super::state::{Entry, State, Value};
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
    /// Ids that this request ended (invalidated or rotated away): removed from cache and store.
    pub(crate) removed: Vec<SessionId>,
    /// This request invalidated a session.
    pub(crate) invalidated: bool,
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

    /// Takes what the request did, leaving an empty slot (used by the layer after the handler).
    pub(crate) fn take(&self) -> Slot {
        std::mem::take(&mut *self.slot())
    }

    fn with_state<R>(&self, f: impl FnOnce(&mut State) -> R) -> Option<R> {
        let entry = self.slot().entry.clone()?;
        let mut state = entry.lock();
        Some(f(&mut state))
    }

    fn with_state_or_create<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        let entry = {
            let mut slot = self.slot();
            match &slot.entry {
                Some(entry) => Arc::clone(entry),
                None => {
                    let entry = Entry::new(State::new(SessionId::generate(), now_millis()));
                    slot.entry = Some(Arc::clone(&entry));
                    slot.created = true;
                    entry
                }
            }
        };
        let mut state = entry.lock();
        f(&mut state)
    }

    /// The value of attribute `name` as a `T`, if the session has it and it decodes as a `T`.
    ///
    /// A value restored from the store that does not decode as `T` is logged at ERROR (with the
    /// attribute name and type) and reads as `None`.
    pub fn get<T>(&self, name: &str) -> Option<T>
    where
        T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
    {
        self.with_state(|state| state.get(name)).flatten()
    }

    /// The value of a node-local attribute (see [`Session::insert_local`]).
    pub fn get_local<T: Clone + 'static>(&self, name: &str) -> Option<T> {
        self.with_state(|state| state.get_local(name)).flatten()
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

    /// Sets or clears the signed-in user, creating the session if needed.
    ///
    /// Call [`Session::cycle_id`] at the same time when signing in, against session fixation.
    pub fn set_principal(&self, principal: Option<String>) {
        self.with_state_or_create(|state| {
            state.dirty |= state.principal != principal;
            state.principal = principal;
        });
    }

    /// Whether the request has a session (restored, or created by a write).
    pub fn exists(&self) -> bool {
        self.slot().entry.is_some()
    }

    /// Ends the session: removed from this node's cache and from the store, and its cookie
    /// expired. A later write in the same request starts a fresh session with a new id.
    pub fn invalidate(&self) {
        let mut slot = self.slot();
        if let Some(entry) = slot.entry.take() {
            let mut state = entry.lock();
            state.invalidated = true;
            if !slot.created {
                slot.removed.push(state.id.clone());
            }
            slot.created = false;
            slot.cycled = false;
            slot.invalidated = true;
        }
    }

    /// Gives the session a new id, keeping its data; the old id stops working everywhere.
    ///
    /// Use it at sign-in (session-fixation defence). Does nothing if the request has no session.
    pub fn cycle_id(&self) {
        let mut slot = self.slot();
        let Some(entry) = slot.entry.clone() else {
            return;
        };
        let mut state = entry.lock();
        let old = std::mem::replace(&mut state.id, SessionId::generate());
        state.dirty = true;
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
