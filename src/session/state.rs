//! The state of one session on this node, shared by the node cache and every request.

use std::any::Any;
use std::sync::{Arc, Mutex, MutexGuard, Weak};

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

/// Runs a read-modify-write ([`crate::Session::update`]) again on another value of its
/// attribute (`None`: absent); `None` if the value does not decode as the closure's type.
pub(crate) type Reapply = dyn Fn(Option<&Value>) -> Option<Value> + Send + Sync;

/// A change made on this node since the stored version the state descends from, kept until a
/// write that carries it is committed, so that it can be applied again on top of a newer state
/// another node stored ([`State::rebase`]): requests change attributes, not snapshots.
#[derive(Clone)]
pub(crate) enum Change {
    /// Attribute `name` set to `value` (`None`: removed). `read` is the value the request read
    /// before it wrote (`None` if it wrote blindly): if the stored value is no longer that, the
    /// write was based on a value another request replaced: a conflict.
    Set {
        name: String,
        value: Option<Value>,
        read: Option<Option<Value>>,
    },
    /// A read-modify-write of attribute `name`: run again on the newer value, it never
    /// conflicts.
    Update { name: String, apply: Arc<Reapply> },
    /// The principal set (or cleared).
    Principal(Option<String>),
}

/// Whether `a` and `b` are the very same value (not a copy): a request that read `a` and finds
/// `b` knows whether another request replaced it meanwhile.
pub(crate) fn identical(a: Option<&Value>, b: Option<&Value>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(Value::Live(a)), Some(Value::Live(b))) => Arc::ptr_eq(a, b),
        (Some(Value::Encoded { bytes: a, .. }), Some(Value::Encoded { bytes: b, .. })) => {
            Arc::ptr_eq(a, b)
        }
        (Some(Value::Local { value: a, .. }), Some(Value::Local { value: b, .. })) => {
            Arc::ptr_eq(a, b)
        }
        _ => false,
    }
}

/// Whether `ours` encodes to the `stored` bytes (`None`: absent); node-local values count as
/// absent, since they are never stored.
fn same_content(ours: Option<&Value>, stored: Option<&[u8]>) -> bool {
    match (ours, stored) {
        (None | Some(Value::Local { .. }), None) => true,
        (Some(Value::Encoded { bytes, .. }), Some(stored)) => **bytes == *stored,
        (Some(Value::Live(live)), Some(stored)) => live.encode().is_ok_and(|b| b == stored),
        _ => false,
    }
}

/// A session's attributes by name, in name order: a sorted vector. A session holds a few
/// attributes; a `BTreeMap` allocated a node for eleven (about 700 bytes) for the first one,
/// the largest single cost of a cached session (bench/memory.sh).
#[derive(Clone, Default)]
pub(crate) struct Attributes(Vec<(String, Value)>);

impl Attributes {
    fn find(&self, name: &str) -> Result<usize, usize> {
        self.0.binary_search_by(|(n, _)| n.as_str().cmp(name))
    }

    pub(crate) fn get(&self, name: &str) -> Option<&Value> {
        self.find(name).ok().map(|i| &self.0[i].1)
    }

    pub(crate) fn get_mut(&mut self, name: &str) -> Option<&mut Value> {
        self.find(name).ok().map(|i| &mut self.0[i].1)
    }

    pub(crate) fn contains_key(&self, name: &str) -> bool {
        self.find(name).is_ok()
    }

    /// Sets `name` to `value`; returns the value it replaces.
    pub(crate) fn insert(&mut self, name: String, value: Value) -> Option<Value> {
        match self.find(&name) {
            Ok(i) => Some(std::mem::replace(&mut self.0[i].1, value)),
            Err(i) => {
                // Exactly: a new attribute is rare, and a session lives long in the cache.
                self.0.reserve_exact(1);
                self.0.insert(i, (name, value));
                None
            }
        }
    }

    pub(crate) fn remove(&mut self, name: &str) -> Option<Value> {
        self.find(name).ok().map(|i| self.0.remove(i).1)
    }

    pub(crate) fn clear(&mut self) {
        self.0 = Vec::new();
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (&String, &Value)> {
        self.0.iter().map(|(n, v)| (n, v))
    }

    pub(crate) fn iter_mut(&mut self) -> impl Iterator<Item = (&String, &mut Value)> {
        self.0.iter_mut().map(|(n, v)| (&*n, v))
    }

    pub(crate) fn keys(&self) -> impl Iterator<Item = &String> {
        self.0.iter().map(|(n, _)| n)
    }
}

impl FromIterator<(String, Value)> for Attributes {
    /// In any order; of two values of one name, the later stands.
    fn from_iter<I: IntoIterator<Item = (String, Value)>>(items: I) -> Self {
        let mut items: Vec<(String, Value)> = items.into_iter().collect();
        // Stable: of two values of one name, the later comes last.
        items.sort_by(|a, b| a.0.cmp(&b.0));
        let mut sorted: Vec<(String, Value)> = Vec::with_capacity(items.len());
        for item in items {
            match sorted.last_mut() {
                Some(last) if last.0 == item.0 => *last = item,
                _ => sorted.push(item),
            }
        }
        sorted.shrink_to_fit();
        Self(sorted)
    }
}

/// Stored attributes as values that stay bytes until their first typed read.
fn encoded_values(attributes: EncodedAttributes) -> Attributes {
    attributes
        .into_iter()
        .map(|(name, bytes)| {
            let value = Value::Encoded {
                bytes: bytes.into(),
                decoded: None,
            };
            (name, value)
        })
        .collect()
}

/// The mutable part of a session. The data (`id`, `principal`, `created_at`, `attributes`) is
/// read and written by the handle; the persistence state is private and changes only through
/// the transition methods below, each named for the event that causes it.
pub(crate) struct State {
    pub(crate) id: SessionId,
    pub(crate) principal: Option<String>,
    pub(crate) created_at: EpochMillis,
    pub(crate) attributes: Attributes,
    /// Changed since the last successful save.
    dirty: bool,
    /// The version of the last snapshot taken for saving (this node's sequence; it orders the
    /// node's own writes of the session).
    version: i64,
    /// The stored version this state descends from (restored, or last written by this node):
    /// the next update is a compare-and-set on it. 0: never stored.
    stored: i64,
    /// The highest snapshot version known to be committed.
    written: i64,
    /// The highest version cookie a restore of this copy could not satisfy (an async write not
    /// stored yet): not restored again for it.
    hint_seen: i64,
    /// The snapshot version of the last merge with another node's write ([`State::rebase`]):
    /// snapshots taken before it lack that write's changes.
    rebased: i64,
    /// Changes since `stored` not yet known to be committed, in order, each with the version of
    /// the first snapshot that carried it (0: none yet).
    log: Vec<(i64, Change)>,
    /// How many entries at the start of `log` carry a snapshot version (the rest are 0): each
    /// request's save stamps only the new ones (async mode keeps a busy session's changes for a
    /// whole interval; scanning them all on every request was quadratic).
    stamped: usize,
    /// The store has a row for this id (restored from it, or saved once): later saves only
    /// update that row, so a row deleted meanwhile (logout elsewhere, backoffice) is not
    /// re-created.
    persisted: bool,
    /// When the row was last written or touched (for the touch throttle).
    persisted_at: EpochMillis,
    /// When this copy was last known to be the stored state (restored, written, or its
    /// version checked against the row's): see [`State::due_for_check`].
    verified_at: EpochMillis,
    /// Ended (invalidated, rotated away, or deleted elsewhere): never served or saved again. The
    /// entry stays in the cache as a tombstone until its idle expiry, so a concurrent request
    /// cannot restore the old row before it is deleted.
    invalidated: bool,
    /// Another node stored a newer state: this copy must not be served as it is; the next
    /// request refreshes it in place from the row ([`State::refresh`]). A copy is never
    /// replaced by a second entry for the same id while requests may hold it (their changes
    /// would be made on a copy nobody saves, and the two copies' writes would replace each
    /// other in the queue), unless it was dropped.
    stale: bool,
    /// The newest row version known to be newer than this copy while it is stale (0: none
    /// known, as for a client's version cookie): a refresh that read an older row leaves the
    /// copy stale.
    stale_row: i64,
    /// A write of this copy was dropped, not committed (a refused sync save, or a newer stored
    /// state that does not decode here): the copy holds changes nobody will write. Stale too,
    /// and replaced, not refreshed: the next request restores the row into a new entry, and a
    /// request that held this one is refused (503) if it changed it.
    dropped: bool,
    /// The newest snapshot version taken when a merge with another node's write dropped a
    /// change of this copy as a true conflict (0: never). A request whose change rode in a
    /// snapshot up to it cannot be told its change is kept, even once a later snapshot commits.
    conflicted: i64,
    /// The entry this session moved to when it got a new id ([`State::rotate`]): a request
    /// that held the session before goes on there.
    successor: Option<Weak<Entry>>,
    /// Restored from the store on this node and its cookie not yet sent again. The first request
    /// after a restore re-sends the cookie (same id), so a load balancer that sticks on a cookie
    /// prefix re-sticks the user to this node.
    announce: bool,
    /// The row is under a previous key (or in plaintext): see [`State::needs_rekey`].
    rekey: bool,
}

/// What a request leaves to persist, decided by [`State::take_work`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Due {
    /// Nothing.
    Nothing,
    /// Push the row's expiry forward.
    Touch,
    /// Write snapshot `version` (this node's sequence) as the row version after `base`, the
    /// stored version its content descends from; insert it if `new` (the store has no row yet).
    Save { version: i64, base: i64, new: bool },
}

/// What an entry needs from its application to merge itself with a newer stored state (see
/// [`State::rebase`]): the application's codec, both ways.
pub(crate) trait Recode: Send + Sync {
    /// The attributes of `record`, a stored state of this session; `None` if it does not decode.
    fn decode(&self, record: &crate::store::Record) -> Option<EncodedAttributes>;
    /// The record of `state` as the row version after `state`'s base.
    fn encode(&self, state: &State) -> Option<crate::store::Record>;
}

/// A session as the node cache holds it.
pub(crate) struct Entry {
    /// A std mutex: every section is a short in-memory operation (no user `Serialize` or
    /// `Deserialize` runs under it, but for the rare rebase on a newer stored state, which runs
    /// read-modify-write closures again) and none is held across `.await`
    /// (`clippy::await_holding_lock` is denied).
    state: Mutex<State>,
    /// The application's codec (`None` in unit tests of the writer).
    recode: Option<Arc<dyn Recode>>,
    /// Woken when a write of the session is committed or given up ([`Entry::settled`]).
    commits: tokio::sync::Notify,
    /// When the node cache last handed this entry out (epoch ms): its idle expiry
    /// ([`crate::cache::NodeCache`]). Kept outside the mutex: a sticky read only stores it.
    pub(crate) accessed: std::sync::atomic::AtomicI64,
}

impl Entry {
    #[cfg(test)]
    pub(crate) fn new(state: State) -> Arc<Self> {
        Self::with_recode(state, None)
    }

    pub(crate) fn with_recode(state: State, recode: Option<Arc<dyn Recode>>) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(state),
            recode,
            commits: tokio::sync::Notify::new(),
            accessed: std::sync::atomic::AtomicI64::new(0),
        })
    }

    /// Wakes the requests waiting in [`Entry::carried`]: a write was committed or given up.
    pub(crate) fn wake(&self) {
        self.commits.notify_waiters();
    }

    /// Waits until snapshot `version` is committed, or cannot be by the write that carries it
    /// (given up: the change is saved by the session's next request; or the session ended).
    pub(crate) async fn carried(&self, version: i64) {
        loop {
            let notified = self.commits.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let state = self.lock();
                if state.is_committed(version)
                    || state.is_ended()
                    || state.dirty
                    || state.is_dropped()
                {
                    return;
                }
            }
            notified.await;
        }
    }

    /// The application's codec, if the entry has one.
    pub(crate) fn recode(&self) -> Option<&Arc<dyn Recode>> {
        self.recode.as_ref()
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
            attributes: Attributes::default(),
            dirty: true,
            version: 0,
            stored: 0,
            written: 0,
            rebased: 0,
            hint_seen: 0,
            log: Vec::new(),
            stamped: 0,
            persisted: false,
            persisted_at: now,
            verified_at: now,
            invalidated: false,
            stale: false,
            stale_row: 0,
            dropped: false,
            conflicted: 0,
            successor: None,
            announce: false,
            rekey: false,
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
            attributes: encoded_values(attributes),
            dirty: false,
            version: meta.version,
            stored: meta.version,
            written: meta.version,
            rebased: 0,
            hint_seen: 0,
            log: Vec::new(),
            stamped: 0,
            persisted: true,
            persisted_at: meta.modified_at,
            verified_at: crate::store::now_millis(),
            invalidated: false,
            stale: false,
            stale_row: 0,
            dropped: false,
            conflicted: 0,
            successor: None,
            announce: true,
            rekey: false,
        }
    }

    /// The row was found under a previous key (or in plaintext): written again under the
    /// current one at its next touch, unless a write does it first.
    pub(crate) fn needs_rekey(&mut self) {
        self.rekey = true;
    }

    /// Whether a touch should write the row again under the current key: it is under an older
    /// one and this copy is exactly the stored state (so writing it changes only the key).
    pub(crate) fn wants_rekey(&self) -> bool {
        self.rekey && self.is_settled()
    }

    /// The row was written again under the current key.
    pub(crate) fn rekeyed(&mut self) {
        self.rekey = false;
    }

    /// Restored from this node's write queue before its first write landed: no row yet.
    pub(crate) fn restored_without_row(&mut self) {
        self.persisted = false;
    }

    /// The store lost this session's row (it lost its data, [`crate::store::SessionStore::emptied`]):
    /// the next save inserts it again. `false` for a copy that is not to be written (ended, or
    /// stale: a newer state was stored, which the store lost too; this copy is older).
    pub(crate) fn lost_row(&mut self) -> bool {
        if self.invalidated || self.dropped || (self.stale && self.is_settled_if_current()) {
            return false;
        }
        self.persisted = false;
        self.dirty = true;
        true
    }

    /// Whether the session was ended (a tombstone).
    pub(crate) fn is_ended(&self) -> bool {
        self.invalidated
    }

    /// Whether another node stored a newer state: the next request refreshes this copy from
    /// the row ([`State::refresh`]), or replaces it if it was dropped.
    pub(crate) fn is_stale(&self) -> bool {
        self.stale
    }

    /// Whether it holds a change not yet saved (and is not ended).
    pub(crate) fn has_unsaved_change(&self) -> bool {
        self.dirty && !self.invalidated
    }

    /// The latest snapshot taken, if it is not committed yet: a request whose change another
    /// request's snapshot carries waits for it.
    pub(crate) fn uncommitted(&self) -> Option<i64> {
        (self.version > self.written && !self.invalidated).then_some(self.version)
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
            self.next_version();
            self.persisted_at = now;
            return Due::Save {
                version: self.version,
                base: self.stored,
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

    /// The next snapshot version, which carries every change not yet carried by one.
    fn next_version(&mut self) -> i64 {
        self.version = self.version.max(self.stored).saturating_add(1);
        // Entries are stamped in order: only the ones after the last stamped are new.
        for (taken, _) in &mut self.log[self.stamped..] {
            *taken = self.version;
        }
        self.stamped = self.log.len();
        self.version
    }

    /// A save taken by [`State::take_work`] was not made (not encodable, or the store failed
    /// and nobody retries it): the session's next request saves it again.
    pub(crate) fn keep_change(&mut self) {
        if !self.invalidated {
            self.dirty = true;
        }
    }

    /// The store committed this node's snapshot `version` as row version `row`: the changes
    /// it carried are done, and the next update is based on `row`.
    pub(crate) fn mark_written(&mut self, version: i64, row: i64) {
        self.persisted = true;
        // Every write is under the current key.
        self.rekey = false;
        self.stored = self.stored.max(row);
        self.written = self.written.max(version);
        self.verified_at = crate::store::now_millis();
        // The committed entries are a prefix of the stamped ones (stamps grow along the log).
        let done = self.log[..self.stamped]
            .iter()
            .take_while(|(taken, _)| *taken <= version)
            .count();
        self.log.drain(..done);
        self.stamped -= done;
        // Every change committed (the usual case): the buffer goes too, rather than staying
        // with the cached session until its next change.
        if self.log.is_empty() {
            self.log = Vec::new();
        }
    }

    /// Whether this copy is exactly a stored state: it has a row, no change of its own waiting
    /// to be saved, and every snapshot taken is committed, and it is not known to be stale. Only
    /// such a copy is refreshed when the row moves on; one with changes of its own merges with
    /// the newer row when it is written.
    pub(crate) fn is_settled(&self) -> bool {
        self.is_settled_if_current() && !self.stale
    }

    /// Whether this copy is a stored state, current or not: settled but for being stale (and
    /// not dropped). Pushes, checks and refreshes apply to such a copy.
    pub(crate) fn is_settled_if_current(&self) -> bool {
        self.persisted
            && !self.dirty
            && !self.invalidated
            && !self.dropped
            && self.version <= self.written
    }

    /// Whether the row's version should be checked before this copy is served again: it is
    /// settled and was last known current at or before `before`.
    pub(crate) fn due_for_check(&self, before: EpochMillis) -> bool {
        self.is_settled() && self.verified_at <= before
    }

    /// Whether the client's version cookie names a newer row than this settled copy holds (it
    /// wrote through another node): the copy must be refreshed from the row.
    pub(crate) fn is_behind(&self, hint: i64) -> bool {
        hint > self.stored && hint > self.hint_seen && self.is_settled()
    }

    /// A restore for version cookie `hint` gave this copy: if it is still older, the store has
    /// nothing newer yet, and `hint` does not make it restore again.
    pub(crate) fn saw_hint(&mut self, hint: i64) {
        if hint > self.stored {
            self.hint_seen = self.hint_seen.max(hint);
        }
    }

    /// The copy was found current (or could not be checked) at `now`.
    pub(crate) fn checked(&mut self, now: EpochMillis) {
        self.verified_at = now;
    }

    /// A newer stored state exists (a push, the version check or the client's version cookie
    /// said so): the next request refreshes this copy from it.
    /// `row` is the newer row's version if known (0 if not).
    pub(crate) fn mark_stale(&mut self, row: i64) {
        self.stale = true;
        self.stale_row = self.stale_row.max(row);
    }

    /// A write of this copy was dropped (see the field): never served or saved again.
    pub(crate) fn mark_dropped(&mut self) {
        self.dropped = true;
        self.stale = true;
    }

    /// Whether a sync write of this copy was dropped.
    pub(crate) fn is_dropped(&self) -> bool {
        self.dropped
    }

    /// Whether a change carried by snapshot `version` may have been dropped as a true conflict
    /// by a later merge.
    pub(crate) fn conflicted_since(&self, version: i64) -> bool {
        self.conflicted >= version
    }

    /// The stored version this state descends from (the base of the next compare-and-set).
    pub(crate) fn base(&self) -> i64 {
        self.stored
    }

    /// The row version a write of snapshot `version` is a compare-and-set on, if the snapshot
    /// carries the state the session descends from now: it was taken after the last merge
    /// with another node's write, and no later snapshot is committed, so the rows written since
    /// it was taken hold only this node's earlier snapshots, each a part of it. `None`
    /// otherwise: taken before that merge it lacks the other write's changes, and an older
    /// snapshot than a committed one would undo changes; only the row its record was made on
    /// will do (and the compare-and-set fails).
    pub(crate) fn base_for(&self, version: i64) -> Option<i64> {
        (version > self.rebased && version > self.written).then_some(self.stored)
    }

    /// Whether snapshot `version` is carried by a committed write (its own or a later one:
    /// every snapshot holds every change of the snapshots before it).
    pub(crate) fn is_committed(&self, version: i64) -> bool {
        version <= self.written
    }

    /// Memory-only sessions are never rebased: their change log is not kept.
    pub(crate) fn forget_changes(&mut self) {
        // Not `clear`: a cached session would keep the log's buffer for as long as it lives.
        self.log = Vec::new();
        self.stamped = 0;
    }

    /// Another node committed `stored` (version `meta.version`, attributes `attributes`) since
    /// the version this state descends from: the state becomes that one with this node's
    /// uncommitted changes applied again in order, and the next update is based on it.
    ///
    /// A read-modify-write ([`Change::Update`]) runs again on the newer value; a blind set is
    /// applied as is; a set based on a value that the other write replaced is a true conflict:
    /// with `refuse` it is dropped (the newer stored value stays, and the caller refuses the
    /// request), otherwise applied (last writer wins on that attribute, as async mode has
    /// already acknowledged it). Returns the snapshot version of the merged state, which
    /// carries every change made so far, and the names of the conflicting attributes.
    ///
    /// Whether the session has a change to save is left as it was: a request whose change the
    /// merged state carries but which has not taken its save yet still saves and waits for its
    /// own commit (a sync request must not be answered before a write carrying it commits).
    pub(crate) fn rebase(
        &mut self,
        meta: &crate::store::Meta,
        attributes: EncodedAttributes,
        refuse: bool,
    ) -> (i64, Vec<String>) {
        let mut merged = encoded_values(attributes);
        let mut principal = meta.principal.clone();
        let mut conflicts = Vec::new();
        let mut log = std::mem::take(&mut self.log);
        log.retain(|(_, change)| match change {
            Change::Set { name, value, read } => {
                let stored = match merged.get(name) {
                    Some(Value::Encoded { bytes, .. }) => Some(&bytes[..]),
                    _ => None,
                };
                let based_on_other = read
                    .as_ref()
                    .is_some_and(|read| !same_content(read.as_ref(), stored));
                if based_on_other {
                    conflicts.push(name.clone());
                    if refuse {
                        return false;
                    }
                }
                match value {
                    Some(value) => merged.insert(name.clone(), value.clone()),
                    None => merged.remove(name),
                };
                true
            }
            Change::Update { name, apply } => {
                match apply(merged.get(name)) {
                    Some(value) => merged.insert(name.clone(), value),
                    None => merged.remove(name),
                };
                true
            }
            Change::Principal(p) => {
                principal.clone_from(p);
                true
            }
        });
        // Node-local values are never stored: they stay.
        for (name, value) in self.attributes.iter() {
            if matches!(value, Value::Local { .. }) && !merged.contains_key(name) {
                merged.insert(name.clone(), value.clone());
            }
        }
        self.stamped = log.iter().take_while(|(taken, _)| *taken != 0).count();
        self.log = log;
        self.attributes = merged;
        self.principal = principal;
        self.stored = meta.version;
        self.persisted = true;
        if refuse && !conflicts.is_empty() {
            self.conflicted = self.version;
        }
        self.rebased = self.next_version();
        (self.rebased, conflicts)
    }

    /// This copy was found older than the row (`stale`) and `meta`/`attributes` were read
    /// from the store while its base was `read_base`: it becomes that row in place, so that a
    /// request holding the entry meanwhile goes on with it rather than with a copy nobody
    /// saves. Only a copy that is a stored state takes the row; one that a request changed
    /// since it was found stale keeps its state and is no longer stale: its writes compare with
    /// the base they descend from, fail, and are merged by the writer (which reports true
    /// conflicts and recognises its own committed sends). A copy whose base moved while the
    /// row was read (this node wrote meanwhile) is left as it is, current if it reached the row
    /// that made it stale. The copy stays stale if the row read is older than a newer version
    /// pushed meanwhile.
    ///
    /// Returns whether the copy took the row.
    pub(crate) fn refresh(
        &mut self,
        meta: &crate::store::Meta,
        attributes: EncodedAttributes,
        read_base: i64,
        rekey: bool,
    ) -> bool {
        if self.keeps_own_changes() {
            return false;
        }
        if self.stored != read_base {
            if self.stored >= self.stale_row {
                self.stale = false;
                self.stale_row = 0;
            }
            return false;
        }
        let mut values = encoded_values(attributes);
        for (name, value) in values.iter_mut() {
            // An unchanged value stays the very value: a request that read it and writes it
            // back meanwhile is not refused for a replacement that changed nothing.
            if let (
                Some(
                    old @ Value::Encoded {
                        bytes: old_bytes, ..
                    },
                ),
                Value::Encoded { bytes, .. },
            ) = (self.attributes.get(name), &*value)
                && old_bytes == bytes
            {
                *value = old.clone();
            }
        }
        for (name, value) in self.attributes.iter() {
            if matches!(value, Value::Local { .. }) && !values.contains_key(name) {
                values.insert(name.clone(), value.clone());
            }
        }
        self.attributes = values;
        self.principal.clone_from(&meta.principal);
        self.stored = meta.version;
        self.persisted = true;
        self.persisted_at = meta.modified_at;
        self.verified_at = crate::store::now_millis();
        self.rekey = rekey;
        // A newer version was pushed while the row was read: refreshed once more by the next
        // request (only once: a store that went back to an older state never reaches it).
        self.stale = meta.version < self.stale_row;
        self.stale_row = 0;
        true
    }

    /// A stale copy that a request changed since it was found stale is no longer refreshed:
    /// it is not stale any more, and its writes merge with the newer row (see
    /// [`State::refresh`]). Whether it had such changes.
    pub(crate) fn keeps_own_changes(&mut self) -> bool {
        if self.is_settled_if_current() {
            return false;
        }
        self.stale = false;
        self.stale_row = 0;
        true
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
        if self.principal != principal {
            self.dirty = true;
            self.log.push((0, Change::Principal(principal.clone())));
        }
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
            // A new id is a new row: inserted, not compared.
            stored: 0,
            written: 0,
            rebased: 0,
            hint_seen: 0,
            log: Vec::new(),
            stamped: 0,
            persisted: false,
            persisted_at: self.persisted_at,
            verified_at: self.verified_at,
            invalidated: false,
            stale: false,
            stale_row: 0,
            dropped: false,
            conflicted: 0,
            successor: None,
            announce: false,
            rekey: false,
        };
        self.end();
        moved
    }

    /// Records the entry the session moved to (after [`State::rotate`]).
    pub(crate) fn set_successor(&mut self, entry: &Arc<Entry>) {
        self.successor = Some(Arc::downgrade(entry));
    }

    /// The entry the session moved to, if it was rotated and that entry is still alive.
    pub(crate) fn successor(&self) -> Option<Arc<Entry>> {
        self.successor.as_ref()?.upgrade()
    }

    /// Marks the session ended and frees its data.
    pub(crate) fn end(&mut self) {
        self.invalidated = true;
        self.dirty = false;
        self.principal = None;
        self.attributes.clear();
        self.log = Vec::new();
        self.stamped = 0;
    }

    /// Sets (`Some`) or removes (`None`) attribute `name`; `read` is the value the request read
    /// before, if it did (see [`Change::Set`]). Returns the value replaced.
    pub(crate) fn set(
        &mut self,
        name: String,
        value: Option<Value>,
        read: Option<Option<Value>>,
    ) -> Option<Value> {
        let old = match &value {
            Some(value) => self.attributes.insert(name.clone(), value.clone()),
            None => self.attributes.remove(&name),
        };
        if old.is_some() || value.is_some() {
            self.dirty = true;
            self.log.push((0, Change::Set { name, value, read }));
        }
        old
    }

    /// Sets attribute `name` to `value`, the result of a read-modify-write that `apply` can
    /// make again on another value.
    pub(crate) fn set_updated(&mut self, name: String, value: Value, apply: Arc<Reapply>) {
        self.attributes.insert(name.clone(), value);
        self.dirty = true;
        self.log.push((0, Change::Update { name, apply }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The attributes stay in name order whatever the order they come in (the stored blob
    /// lists them in that order), and of two values of one name the later stands.
    #[test]
    fn attributes_keep_name_order() {
        let value = |n: u8| Value::Encoded {
            bytes: vec![n].into(),
            decoded: None,
        };
        let bytes = |v: Option<&Value>| match v {
            Some(Value::Encoded { bytes, .. }) => bytes.to_vec(),
            _ => Vec::new(),
        };
        let mut attributes: Attributes = [("b", 1), ("a", 2), ("c", 3), ("a", 4)]
            .into_iter()
            .map(|(n, v)| (n.to_owned(), value(v)))
            .collect();
        assert_eq!(attributes.keys().collect::<Vec<_>>(), ["a", "b", "c"]);
        assert_eq!(bytes(attributes.get("a")), [4]);
        assert_eq!(bytes(attributes.insert("b".into(), value(5)).as_ref()), [1]);
        assert!(attributes.insert("aa".into(), value(6)).is_none());
        assert_eq!(attributes.keys().collect::<Vec<_>>(), ["a", "aa", "b", "c"]);
        assert_eq!(bytes(attributes.remove("a").as_ref()), [4]);
        assert!(attributes.remove("a").is_none() && !attributes.contains_key("a"));
        assert_eq!(
            attributes
                .iter()
                .map(|(n, _)| n.as_str())
                .collect::<Vec<_>>(),
            ["aa", "b", "c"]
        );
    }

    fn meta(id: &SessionId, version: i64) -> crate::store::Meta {
        crate::store::Meta {
            key: id.store_key(),
            app: "storefront".into(),
            context_path: "/".into(),
            node: "other".into(),
            principal: None,
            created_at: 0,
            modified_at: 0,
            expires_at: i64::MAX,
            max_inactive_secs: 60,
            version,
            attributes: vec![],
            size_bytes: 0,
        }
    }

    fn bytes(b: u8) -> Value {
        Value::Encoded {
            bytes: vec![b].into(),
            decoded: None,
        }
    }

    /// A snapshot taken before a merge with another node's write lacks that write: it may only
    /// be compared with the row it was made on. One taken after the merge descends from the
    /// merged row. A change not yet taken by its request stays to be saved by it.
    #[test]
    fn snapshots_before_a_merge_keep_their_own_base() {
        let id = SessionId::generate();
        let mut state = State::restored(id.clone(), &meta(&id, 1), EncodedAttributes::new());
        state.set("a".into(), Some(bytes(1)), None);
        let Due::Save { version, base, .. } = state.take_work(0, i64::MAX) else {
            panic!("a change is saved");
        };
        assert_eq!((base, state.base_for(version)), (1, Some(1)));
        // Another request changes "b" but has not taken its save yet when the merge comes.
        state.set("b".into(), Some(bytes(2)), None);
        let mut theirs = EncodedAttributes::new();
        theirs.insert("c".into(), vec![3]);
        let (merged, conflicts) = state.rebase(&meta(&id, 7), theirs, true);
        assert!(conflicts.is_empty());
        assert!(merged > version);
        assert_eq!(state.base_for(version), None, "made before the merge");
        assert_eq!(state.attributes.keys().collect::<Vec<_>>(), ["a", "b", "c"]);
        assert!(
            state.has_unsaved_change(),
            "the request of \"b\" still saves"
        );
        let Due::Save {
            version: later,
            base,
            ..
        } = state.take_work(0, i64::MAX)
        else {
            panic!("\"b\" is saved by its request");
        };
        assert_eq!((base, state.base_for(later)), (7, Some(7)));
        // The merged write commits as row 8: the later snapshot now follows it; the earlier
        // one is carried.
        state.mark_written(merged, 8);
        assert_eq!(state.base_for(later), Some(8));
        assert!(state.is_committed(version));
        assert_eq!(state.base_for(version), None);
    }
}
