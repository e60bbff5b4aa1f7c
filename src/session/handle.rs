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
use super::state::{Entry, LiveValue, Reapply, Recode, State, Value, identical};
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
    /// The application's codec, given to the entries this request creates.
    recode: Option<Arc<dyn Recode>>,
    /// The session was created by this request: its cookie must be sent.
    pub(crate) created: bool,
    /// The session got a new id in this request: its cookie must be sent.
    pub(crate) cycled: bool,
    /// The session got a new id in a concurrent request, and this one followed it there: its
    /// cookie is sent too.
    pub(crate) followed: bool,
    /// Ids that this request ended (invalidated or rotated away): removed from the store.
    pub(crate) removed: Vec<SessionId>,
    /// This request invalidated a session.
    pub(crate) invalidated: bool,
    /// The layer has taken the slot: the response is on its way and later changes are not saved.
    pub(crate) finished: bool,
    /// The value of each attribute this request read before writing it (`None`: absent), so a
    /// write based on a value another request replaced meanwhile is detected.
    /// Inline for the usual one or two attributes a request reads, names of up to 24 bytes
    /// included (no allocation).
    read: smallvec::SmallVec<[(ReadName, Option<Value>); 2]>,
    /// A write of this request was based on a value another request replaced: it was not
    /// applied, and the response must say so (409).
    pub(crate) conflict: bool,
    /// This request changed the session (its response must not leave before a write carrying
    /// the change is committed, in sync mode, even if a concurrent request took the save).
    pub(crate) changed: bool,
    /// How [`Session::save`] saves (`None`: a memory-only application, or a unit test).
    commit: Option<Arc<dyn Commit>>,
    /// A [`Session::save`] of this request was refused: so is the response.
    pub(crate) refused: Option<SaveError>,
    /// The row version a [`Session::save`] of this request committed (sync mode): the response's
    /// version cookie.
    pub(crate) saved_row: Option<i64>,
}

/// An attribute name as [`Slot::read`] keeps it: its bytes, inline up to 24.
type ReadName = smallvec::SmallVec<[u8; 24]>;

impl Slot {
    /// The value of `name` this request read first, if it read it.
    fn read_of(&mut self, name: &str) -> Option<&mut Option<Value>> {
        self.read
            .iter_mut()
            .find(|(n, _)| n.as_slice() == name.as_bytes())
            .map(|(_, value)| value)
    }
}

/// What [`Session::save`] asks of the layer: save the request's session now, as it would after
/// the handler. Returns the committed row version, if the mode commits before answering.
pub(crate) trait Commit: Send + Sync {
    fn commit(
        self: Arc<Self>,
        session: Session,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Option<i64>, SaveError>> + Send>>;
}

/// Why [`Session::save`] did not keep the request's changes. The response is refused the same
/// way whatever the handler returns (its status is this error's [`IntoResponse`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SaveError {
    /// Another request or node changed a value this request's change was based on, or ended
    /// the session: the change was not kept (409).
    #[error("the session was changed or ended elsewhere: this change was not kept")]
    Conflict,
    /// The store could not take the change and nobody keeps it (503: retry later).
    #[error("the session store cannot take the change now")]
    Unavailable,
    /// The session cannot be stored: larger than `session.max.size`, or not encodable (500).
    #[error("the session cannot be stored (larger than session.max.size, or not encodable)")]
    NotSaved,
    /// The serializability checker found an attribute that would not survive failover, and
    /// `session.serialization.check.response.error` is on (500).
    #[error("an attribute would not survive failover (see the log)")]
    CheckFailed,
}

impl SaveError {
    /// The status the response gets.
    pub fn status(self) -> StatusCode {
        match self {
            SaveError::Conflict => StatusCode::CONFLICT,
            SaveError::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            SaveError::NotSaved | SaveError::CheckFailed => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for SaveError {
    fn into_response(self) -> Response {
        self.status().into_response()
    }
}

/// What a typed read must do outside the entry's lock.
enum Decode {
    Bytes(Arc<[u8]>),
    Convert(Arc<dyn LiveValue>),
}

impl Session {
    pub(crate) fn new(
        entry: Option<Arc<Entry>>,
        recode: Option<Arc<dyn Recode>>,
        commit: Option<Arc<dyn Commit>>,
    ) -> Self {
        Self(Arc::new(Mutex::new(Slot {
            entry,
            recode,
            commit,
            ..Slot::default()
        })))
    }

    /// Saves the session's changes now, as the layer would after the handler, and says whether
    /// they were kept: call it before a side effect that must not happen unless the session
    /// change is kept (an order placed, a payment sent).
    ///
    /// `Ok` means what the application's mode promises for an answered change: in `sync` mode
    /// the change is committed; in `async` mode it is in the write-behind queue (written within
    /// `session.save.interval`, and by the drain at shutdown). Memory-only applications always
    /// answer `Ok`. A later change in the same request is saved after the handler, as usual.
    ///
    /// `Err` means the change is not acknowledged: the layer refuses the response the same way
    /// (409, 503 or 500, without the handler's body) whatever the handler returns, saves nothing
    /// more of the request, and drops this node's copy of the session (its next request sees
    /// the last stored state). Skip the side effect and return the error (`SaveError` is an
    /// axum response). One case stores the change all the same: a concurrent request's write
    /// that carried it, merged with another node's newer state and refused for a conflicting
    /// attribute; make the side effect idempotent if that matters.
    ///
    /// ```no_run
    /// # use session_failover::Session;
    /// # use session_failover::session::SaveError;
    /// # async fn place(_: &str) {}
    /// async fn checkout(session: Session) -> Result<&'static str, SaveError> {
    ///     session.insert("order", "A-1001".to_owned());
    ///     session.save().await?; // the order is in the session before it is placed
    ///     place("A-1001").await;
    ///     Ok("placed")
    /// }
    /// ```
    pub async fn save(&self) -> Result<(), SaveError> {
        let commit = {
            let mut slot = self.slot();
            if slot.finished {
                tracing::warn!(
                    "Session::save after the response was sent; the change is not saved"
                );
                return Err(SaveError::NotSaved);
            }
            if let Some(refused) = slot.refused {
                return Err(refused);
            }
            if slot.conflict {
                // A write of this request was refused: the request is refused as a whole, and
                // its other changes are not saved at its end either.
                slot.refused = Some(SaveError::Conflict);
                return Err(SaveError::Conflict);
            }
            slot.commit.clone()
        };
        let Some(commit) = commit else {
            return Ok(());
        };
        let result = commit.commit(self.clone()).await;
        let mut slot = self.slot();
        match result {
            Ok(row) => slot.saved_row = slot.saved_row.max(row),
            Err(error) => slot.refused = Some(error),
        }
        result.map(|_| ())
    }

    /// For [`Session::save`]: the request's live entry, whether its cookie is new to this node,
    /// and whether this request changed it. `changed` stays set: if this save is cut short (its
    /// future dropped), the end of the request still waits for the write that carries it.
    pub(crate) fn to_save(&self) -> Result<Option<(Arc<Entry>, bool, bool)>, SaveError> {
        let mut slot = self.slot();
        if slot.finished {
            return Err(SaveError::NotSaved);
        }
        let Some(entry) = follow(&mut slot) else {
            return Ok(None);
        };
        let fresh = slot.created || slot.cycled || slot.followed;
        Ok(Some((entry, fresh, slot.changed)))
    }

    fn slot(&self) -> MutexGuard<'_, Slot> {
        // Slot operations are plain field updates that cannot leave it half-done.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes what the request did, leaving a finished, empty slot (used by the layer after the
    /// handler).
    pub(crate) fn take(&self) -> Slot {
        let mut slot = self.slot();
        follow(&mut slot);
        let taken = std::mem::take(&mut *slot);
        slot.finished = true;
        taken
    }

    /// The live entry of this request, if any (an entry ended by a concurrent request is none).
    fn entry(&self) -> Option<Arc<Entry>> {
        follow(&mut self.slot())
    }

    fn with_state<R>(&self, f: impl FnOnce(&mut State) -> R) -> Option<R> {
        let entry = self.entry()?;
        let mut state = entry.lock();
        (!state.is_ended()).then(|| f(&mut state))
    }

    fn with_state_or_create<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        let entry = self.entry_or_create();
        let mut state = entry.lock();
        f(&mut state)
    }

    /// The request's live entry, or a new session's.
    fn entry_or_create(&self) -> Arc<Entry> {
        {
            let mut slot = self.slot();
            if slot.finished {
                tracing::warn!(
                    "session changed after its response was sent; the change is not saved"
                );
            }
            match follow(&mut slot) {
                Some(entry) => entry,
                None => {
                    let state = State::new(SessionId::generate(), now_millis());
                    let entry = Entry::with_recode(state, slot.recode.clone());
                    slot.entry = Some(Arc::clone(&entry));
                    slot.created = !slot.finished;
                    entry
                }
            }
        }
    }

    /// The value of attribute `name` as a `T`, if the session has it and it decodes as a `T`.
    ///
    /// A value restored from the store is decoded on its first read (outside any lock) and the
    /// result kept for later reads; its stored bytes are what a save writes back until an
    /// [`Session::insert`] replaces them. A stored value that does not decode as `T` (its type
    /// changed incompatibly, or another type was asked for) is logged at ERROR with the
    /// attribute name and type and reads as `None`; the session keeps it unchanged.
    ///
    /// The value read is remembered for this request: an [`Session::insert`] of the same
    /// attribute later in the request is refused (the response becomes 409) if another request
    /// replaced the value meanwhile, so no change is lost by a read-modify-write of two requests
    /// at once. Use [`Session::update`] for a read-modify-write that is never refused.
    pub fn get<T>(&self, name: &str) -> Option<T>
    where
        T: DeserializeOwned + Clone + Send + Sync + 'static,
    {
        let entry = self.entry()?;
        let current = entry.lock().attributes.get(name).cloned();
        // Outside the entry's lock: the slot's lock is always taken first.
        self.remember_read(name, current.as_ref());
        let next = match current? {
            Value::Live(live) => match live.as_any().downcast_ref::<T>() {
                Some(value) => return Some(value.clone()),
                None => Decode::Convert(live),
            },
            Value::Local { value, .. } => return value.downcast_ref::<T>().cloned(),
            Value::Encoded { bytes, decoded } => {
                if let Some(value) = decoded.as_ref().and_then(|d| d.downcast_ref::<T>()) {
                    return Some(value.clone());
                }
                Decode::Bytes(bytes)
            }
        };
        let decode = |bytes: &[u8]| match codec::decode_value::<T>(bytes) {
            Ok(value) => Some(value),
            Err(error) => {
                // The id is read only here: a clone of it on every read costs an allocation.
                let session = entry.lock().id.short_hash();
                tracing::error!(
                    %session,
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
                // A stored value that does not decode as `T` (another type asked for, or its
                // type changed incompatibly) stays as it is: a read never changes the session.
                let value = decode(&bytes)?;
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
        self.write(name.into(), Some(Value::Live(Arc::new(value))));
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
        self.write(name.into(), Some(value));
    }

    /// Removes attribute `name`; `true` if it was there.
    pub fn remove(&self, name: &str) -> bool {
        if self.entry().is_none() {
            return false;
        }
        self.write(name.to_owned(), None)
    }

    /// Reads, changes and writes back attribute `name` as one step that no concurrent request
    /// of the session can interleave with: `f` gets the current value (`T::default()` if the
    /// attribute is absent or does not decode as `T`) and its result is stored. Returns what
    /// `f` returns. Creates the session if the request has none.
    ///
    /// This is the way to change a value that depends on its current one (add to a cart,
    /// count): it is never refused. Two requests at once on one node both apply; a request
    /// whose node held an older copy than another node committed has `f` run again on the
    /// newer value when it is saved. So `f` may run more than once and must depend on nothing
    /// but its argument and what it captured.
    pub fn update<T, R, F>(&self, name: impl Into<String>, f: F) -> R
    where
        T: Serialize + DeserializeOwned + Default + Clone + Send + Sync + 'static,
        F: Fn(&mut T) -> R + Send + Sync + 'static,
    {
        let name = name.into();
        let f = Arc::new(f);
        loop {
            // Read outside the lock (decoding runs user code), then write back only if nobody
            // replaced the value meanwhile; else read again.
            let entry = self.entry_or_create();
            let current = entry.lock().attributes.get(&name).cloned();
            let mut value: T = current
                .as_ref()
                .and_then(|v| typed::<T>(v))
                .unwrap_or_default();
            let result = f(&mut value);
            let mut slot = self.slot();
            let mut state = entry.lock();
            if state.is_ended() {
                continue;
            }
            if !identical(state.attributes.get(&name), current.as_ref()) {
                continue;
            }
            let written = Value::Live(Arc::new(value));
            let f = Arc::clone(&f);
            let apply: Arc<Reapply> = Arc::new(move |v: Option<&Value>| {
                let mut value: T = v.and_then(|v| typed::<T>(v)).unwrap_or_default();
                f(&mut value);
                Some(Value::Live(Arc::new(value)))
            });
            state.set_updated(name.clone(), written.clone(), apply);
            drop(state);
            slot.changed = true;
            if let Some(read) = slot.read_of(&name) {
                *read = Some(written);
            }
            return result;
        }
    }

    /// Remembers the value of `name` this request read first (for [`Session::write`]).
    fn remember_read(&self, name: &str, value: Option<&Value>) {
        let mut slot = self.slot();
        if slot.read_of(name).is_none() {
            slot.read
                .push((ReadName::from_slice(name.as_bytes()), value.cloned()));
        }
    }

    /// Sets (`Some`) or removes (`None`) attribute `name`, creating the session for a set.
    /// Refused (the request answers 409) if the request read the attribute and another request
    /// replaced it since. Returns whether an attribute was replaced or removed.
    fn write(&self, name: String, value: Option<Value>) -> bool {
        let entry = self.entry_or_create();
        let mut slot = self.slot();
        let mut state = entry.lock();
        let read = slot.read_of(&name).map(|read| read.clone());
        if let Some(read) = &read
            && !identical(read.as_ref(), state.attributes.get(&name))
        {
            tracing::warn!(
                session = %state.id.short_hash(),
                attribute = %name,
                "attribute was changed by a concurrent request since this one read it; \
                 this change is refused (409); use Session::update for a read-modify-write"
            );
            slot.conflict = true;
            return false;
        }
        let replaced = state
            .set(name.clone(), value.clone(), read.clone())
            .is_some();
        drop(state);
        slot.changed = true;
        if read.is_some()
            && let Some(slot_read) = slot.read_of(&name)
        {
            *slot_read = value;
        }
        replaced
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
    /// A change of user also gives the session a new id ([`Session::cycle_id`]), against
    /// session fixation: an id planted in a browser before the sign-in is worth nothing after
    /// it. [`Session::set_principal_keeping_id`] opts out.
    ///
    /// The principal is refused (and nothing changes) when a store could not keep it as it is:
    /// empty, more than [`MAX_PRINCIPAL_CHARS`] characters (MariaDB's column; non-strict MySQL
    /// would cut it), or with control characters (PostgreSQL refuses NUL). A refused principal
    /// never reaches the store, where it would fail the write of every session in its batch.
    pub fn set_principal(&self, principal: Option<String>) -> Result<(), InvalidPrincipal> {
        let changes = principal != self.principal();
        self.set_principal_keeping_id(principal)?;
        if changes {
            self.cycle_id();
        }
        Ok(())
    }

    /// As [`Session::set_principal`], keeping the session's id: for an application that rotates
    /// ids itself, or sets a principal that is not a sign-in.
    pub fn set_principal_keeping_id(
        &self,
        principal: Option<String>,
    ) -> Result<(), InvalidPrincipal> {
        if let Some(principal) = &principal {
            validate_principal(principal)?;
        }
        let creates = principal.is_some();
        let update = |state: &mut State| state.set_principal(principal);
        match creates {
            true => self.with_state_or_create(update),
            false => {
                self.with_state(update);
            }
        }
        self.slot().changed = true;
        Ok(())
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
            let moved =
                Entry::with_recode(state.rotate(SessionId::generate()), entry.recode().cloned());
            // Under the old entry's lock: a concurrent request of the session never finds it
            // ended without its successor (it would start a second session).
            state.set_successor(&moved);
            (old, moved)
        };
        slot.entry = Some(moved);
        if !slot.created {
            slot.removed.push(old);
            slot.cycled = true;
        }
    }
}

/// The request's live entry: its own, or, if a concurrent request gave the session a new id
/// since, the entry under that id (a request that already held the session goes on with it; a
/// request arriving with the old id later finds no session).
fn follow(slot: &mut Slot) -> Option<Arc<Entry>> {
    let mut entry = slot.entry.clone()?;
    loop {
        // `None`: live; `Some(None)`: ended for good.
        let moved = {
            let state = entry.lock();
            state.is_ended().then(|| state.successor())
        };
        let next = match moved {
            None => return Some(entry),
            Some(next) => next?,
        };
        entry = next;
        slot.entry = Some(Arc::clone(&entry));
        slot.followed = true;
    }
}

/// `value` as a `T`, if it is one or decodes as one.
fn typed<T: DeserializeOwned + Clone + 'static>(value: &Value) -> Option<T> {
    match value {
        Value::Live(live) => match live.as_any().downcast_ref::<T>() {
            Some(value) => Some(value.clone()),
            None => codec::decode_value(&live.encode().ok()?).ok(),
        },
        Value::Encoded { bytes, decoded } => {
            match decoded.as_ref().and_then(|d| d.downcast_ref::<T>()) {
                Some(value) => Some(value.clone()),
                None => codec::decode_value(bytes).ok(),
            }
        }
        Value::Local { value, .. } => value.downcast_ref::<T>().cloned(),
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

/// The longest principal [`Session::set_principal`] takes, in characters: MariaDB's and MySQL's
/// `principal VARCHAR(255)`.
pub const MAX_PRINCIPAL_CHARS: usize = 255;

/// Why [`Session::set_principal`] refused a principal: a store could not keep it as it is.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidPrincipal {
    /// The empty string (clear the principal with `None`).
    #[error("a principal must not be empty (clear it with None)")]
    Empty,
    /// Longer than [`MAX_PRINCIPAL_CHARS`].
    #[error("a principal is at most 255 characters; this one has {0}")]
    TooLong(usize),
    /// A control character (NUL cannot be stored in PostgreSQL; the others would reach logs and
    /// terminals as they are).
    #[error("a principal must not contain control characters")]
    Control,
}

pub(crate) fn validate_principal(principal: &str) -> Result<(), InvalidPrincipal> {
    let chars = principal.chars().count();
    if chars == 0 {
        Err(InvalidPrincipal::Empty)
    } else if chars > MAX_PRINCIPAL_CHARS {
        Err(InvalidPrincipal::TooLong(chars))
    } else if principal.chars().any(char::is_control) {
        Err(InvalidPrincipal::Control)
    } else {
        Ok(())
    }
}
