//! One application's shared state and the two halves of the filter: load and finish.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU32, Ordering};

use cookie::{Cookie, SameSite};
use http::header::{COOKIE, SET_COOKIE};
use http::{HeaderMap, HeaderValue};

use super::settings::{AppSettings, Snapshot, millis};
use crate::cache::{Miss, NodeCache};
use crate::codec::{Binding, Codec};
use crate::config::SaveMode;
use crate::id::{CookieId, SessionId};
use crate::persist::{Folded, Owner, Persister, Rebased, Saved};
use crate::session::Session;
use crate::session::handle::{Commit, SaveError};
use crate::session::state::{Due, Entry, State};
use crate::store::{EpochMillis, Update, now_millis};

/// A session only read is touched in the store at most once per this fraction of its timeout.
pub(crate) const TOUCH_DIVISOR: u32 = 10;
/// After a check found the store unreachable, cached copies are served unchecked for this long
/// (or `session.cache.verify.interval` if longer), doubling while it stays so: a read must not
/// wait for a dead database on every request.
const VERIFY_PAUSE_MS: i64 = 1000;
/// The longest such pause, however long the store stays unreachable.
const VERIFY_PAUSE_MAX_MS: i64 = 30_000;
/// At most this many session cookies of one request are tried (a request with thousands of
/// cookies must not cause thousands of store reads).
const MAX_COOKIE_CANDIDATES: usize = 3;

/// How long an id the store did not have is answered absent without asking it again (sync
/// mode): a client that keeps sending an unknown id costs one store read a second, not one a
/// request.
pub(crate) const ABSENT_TTL: std::time::Duration = std::time::Duration::from_secs(1);
/// Absent ids remembered at most.
pub(crate) const ABSENT_MAX: u64 = 10_000;

/// The well-formed session ids in the `Cookie` headers under cookie `name`, in order, at most
/// [`MAX_COOKIE_CANDIDATES`]. A value may be quoted; anything else is skipped.
#[cfg(test)]
pub(crate) fn cookie_ids(headers: &HeaderMap, name: &[u8]) -> Vec<SessionId> {
    let ids = request_cookies(headers, name, None).ids;
    ids.into_iter().map(CookieId::to_id).collect()
}

/// What the layer reads of a request's headers, in one pass over them (every request pays it):
/// the well-formed session ids under the session cookie, in order, at most
/// [`MAX_COOKIE_CANDIDATES`] (a value may be quoted; anything else is skipped); the value of
/// the version cookie (see [`Executed::row`]) if its first occurrence is a positive number;
/// and the first `X-Forwarded-Proto` and `Forwarded` headers, for
/// [`super::settings::is_secure`].
#[derive(Default)]
pub(crate) struct RequestHeaders<'a> {
    pub(crate) ids: CookieIds,
    pub(crate) hint: Option<i64>,
    pub(crate) forwarded_proto: Option<&'a HeaderValue>,
    pub(crate) forwarded: Option<&'a HeaderValue>,
}

/// [`RequestHeaders`] of `headers`, for session cookie `name` and version cookie
/// `version_name`.
fn request_cookies<'a>(
    headers: &'a HeaderMap,
    name: &[u8],
    version_name: Option<&[u8]>,
) -> RequestHeaders<'a> {
    static X_FORWARDED_PROTO: http::HeaderName = http::HeaderName::from_static("x-forwarded-proto");
    let mut found = RequestHeaders::default();
    let mut version_seen = false;
    for (header, value) in headers {
        if *header != COOKIE {
            if *header == X_FORWARDED_PROTO {
                found.forwarded_proto.get_or_insert(value);
            } else if *header == http::header::FORWARDED {
                found.forwarded.get_or_insert(value);
            }
            continue;
        }
        let mut rest = value.as_bytes();
        while !rest.is_empty() {
            // memchr: this runs on every request, over every cookie of the site.
            let pair = match memchr::memchr(b';', rest) {
                Some(end) => {
                    let pair = &rest[..end];
                    rest = &rest[end + 1..];
                    pair
                }
                None => std::mem::take(&mut rest),
            };
            // A plain scan: the `=` ends a short name, before memchr's set-up pays off.
            let Some(at) = pair.iter().position(|&b| b == b'=') else {
                continue;
            };
            let (n, v) = (pair[..at].trim_ascii(), pair[at + 1..].trim_ascii());
            if n == name {
                if found.ids.len() < MAX_COOKIE_CANDIDATES {
                    let v = v
                        .strip_prefix(b"\"")
                        .and_then(|v| v.strip_suffix(b"\""))
                        .unwrap_or(v);
                    if let Some(id) = CookieId::parse(v) {
                        found.ids.push(id);
                    }
                }
            } else if !version_seen && version_name == Some(n) {
                version_seen = true;
                found.hint = positive_number(v);
            }
        }
    }
    found
}

/// `bytes` as a number above zero, written in decimal digits only (a version cookie's value).
fn positive_number(bytes: &[u8]) -> Option<i64> {
    if bytes.is_empty() {
        return None;
    }
    let mut number: i64 = 0;
    for &digit in bytes {
        if !digit.is_ascii_digit() {
            return None;
        }
        number = number
            .checked_mul(10)?
            .checked_add(i64::from(digit - b'0'))?;
    }
    (number > 0).then_some(number)
}

/// The session ids a request names: nearly always one, kept inline (no allocation).
pub(crate) type CookieIds = smallvec::SmallVec<[CookieId; 2]>;

/// Everything the filter of one application shares across requests.
pub(crate) struct AppShared {
    pub(crate) settings: Arc<AppSettings>,
    /// Live sessions on this node, and tombstones of sessions ended here.
    pub(crate) cache: NodeCache,
    /// `None`: memory-only sessions.
    pub(crate) persister: Option<Persister>,
    pub(crate) codec: Codec,
    /// The per-request series of this app, registered once.
    pub(crate) metrics: crate::metrics::AppMetrics,
    /// Changes of the stored sessions pushed by the database, when it pushes them.
    pub(crate) push: super::push::Push,
    /// Cached copies are not checked against the store before this instant (epoch ms): the
    /// last check found it unreachable.
    pub(crate) verify_paused_until: AtomicI64,
    /// Checks in a row that found the store unreachable.
    pub(crate) verify_failures: AtomicU32,
    /// When a request last logged another application's session id at WARN (epoch ms), and
    /// how many were logged at DEBUG since: one client can send such ids on every request.
    pub(crate) foreign_warned_at: std::sync::atomic::AtomicI64,
    pub(crate) foreign_quiet: std::sync::atomic::AtomicU64,
    /// The name of the version cookie: the session cookie's, with `_VERSION`.
    pub(crate) version_cookie: String,
    /// Ids the store lately did not have ([`ABSENT_TTL`]; sync mode only: in sync mode a
    /// session's cookie is sent once its row is committed, so an id absent from the store is
    /// rarely one whose write is on its way; in async mode it often is, from another node's
    /// queue).
    pub(crate) absent: moka::sync::Cache<SessionId, ()>,
    /// Whether the watch of the store's data loss ([`crate::store::SessionStore::emptied`]) is
    /// started (on the first request: in its runtime).
    pub(crate) emptied_watch: std::sync::OnceLock<()>,
}

/// What loading a request's session gave.
pub(crate) enum Loaded {
    Session(Session),
    /// A store read failed: the session may exist but cannot be restored now.
    StoreDown,
}

/// What checking a cached copy against the row found.
enum Verified {
    /// The copy is the stored state (or could not be checked, or has changes of its own).
    Current,
    /// Another node stored a newer state: refresh the copy from it.
    Newer,
    /// The row is gone (ended elsewhere): the copy was ended here.
    Gone,
}

/// What refreshing a stale cached copy from the row did ([`AppShared::refresh`]).
enum Refreshed {
    /// The copy is the row now (with its own uncommitted changes merged, if it had some).
    Current,
    /// The row is gone (ended elsewhere): the copy was ended here.
    Gone,
    /// Not refreshed (the copy was dropped, or the row does not decode here): the restore
    /// path replaces it with a new entry.
    Replace,
}

/// What is left to do after the handler, decided without waiting on anything.
pub(crate) struct Finish {
    /// The request's session, if it has a live one.
    entry: Option<(SessionId, Arc<Entry>)>,
    /// The session is new to this node's cache (created or rotated by this request).
    cache_it: bool,
    work: Work,
    /// Ids this request ended: their rows are deleted after the session is saved.
    removed: Vec<SessionId>,
    /// The checker found an attribute that would not survive failover, and the response must
    /// say so (500).
    check_failed: bool,
    /// A write of the request was refused (based on a value a concurrent request replaced):
    /// the response must say so (409).
    conflict: bool,
    /// The request changed the session but a concurrent request's snapshot carries the change
    /// (it found nothing left to save): sync mode waits for that snapshot's commit.
    carried_by: Option<i64>,
    /// A [`Session::save`] of the request was refused: so is the response.
    refused: Option<SaveError>,
    /// The row version a [`Session::save`] of the request committed.
    saved_row: Option<i64>,
}

/// Whether the request's change may be acknowledged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Answer {
    /// Saved, or kept in memory to be saved later: the response stands.
    Done,
    /// Not kept (a newer state elsewhere, or the session was ended elsewhere): answer 409.
    Conflict,
    /// Kept, but the serializability checker failed and asks for a 500.
    CheckFailed,
    /// Neither committed nor queued (the store failed and the writer could not keep it): not
    /// acknowledged (503, no cookie) and not kept: this node drops its copy.
    Unavailable,
    /// The session could not be encoded for the store (larger than `session.max.size`, or the
    /// codec failed): not acknowledged (500, no cookie) and not kept, as for `Unavailable`.
    NotSaved,
}

impl From<SaveError> for Answer {
    fn from(error: SaveError) -> Self {
        match error {
            SaveError::Conflict => Answer::Conflict,
            SaveError::Unavailable => Answer::Unavailable,
            SaveError::NotSaved => Answer::NotSaved,
            SaveError::CheckFailed => Answer::CheckFailed,
        }
    }
}

impl Commit for AppShared {
    /// [`Session::save`]: the save the layer makes after the handler, made now, in a task of
    /// its own (a handler dropped meanwhile does not cut it in half).
    fn commit(
        self: Arc<Self>,
        session: Session,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Option<i64>, SaveError>> + Send>>
    {
        Box::pin(async move {
            let Some(finish) = self.plan_save(&session)? else {
                return Ok(None);
            };
            let executed = tokio::spawn(Arc::clone(&self).execute(finish))
                .await
                .inspect_err(|error| tracing::error!(%error, "session save task failed"))
                .map_err(|_| SaveError::NotSaved)?;
            match executed.answer {
                Answer::Done => Ok(executed.row),
                Answer::Conflict => Err(SaveError::Conflict),
                Answer::CheckFailed => Err(SaveError::CheckFailed),
                Answer::Unavailable => Err(SaveError::Unavailable),
                Answer::NotSaved => Err(SaveError::NotSaved),
            }
        })
    }
}

/// The least time between two WARN lines about another application's session id.
const FOREIGN_WARN_EVERY_MS: i64 = 60_000;

/// What [`AppShared::execute`] did.
pub(crate) struct Executed {
    pub(crate) answer: Answer,
    /// The row version holding the request's change, committed (sync mode): sent to the client
    /// as the version cookie, so its next request on any node reads at least that version.
    pub(crate) row: Option<i64>,
}

/// What a request leaves to persist.
enum Work {
    None,
    /// Push the expiry forward; with the settled state to write again under the current key
    /// if the row is under an older one.
    Touch(Option<Snapshot>),
    Save(Snapshot),
}

/// Writes back the sessions of `app` each time its store says it lost its data, until the
/// application is gone.
async fn watch_emptied(
    app: std::sync::Weak<AppShared>,
    mut emptied: tokio::sync::watch::Receiver<u64>,
) {
    while emptied.changed().await.is_ok() {
        let Some(app) = app.upgrade() else {
            return;
        };
        app.write_back().await;
    }
}

/// A node-cache entry as the writer sees it.
fn owner(entry: &Arc<Entry>) -> Arc<dyn Owner> {
    Arc::clone(entry) as Arc<dyn Owner>
}

impl Owner for Entry {
    fn is_ended(&self) -> bool {
        self.lock().is_ended()
    }

    fn into_any(self: Arc<Self>) -> Arc<dyn std::any::Any + Send + Sync> {
        self
    }

    fn is_committed(&self, version: i64) -> bool {
        self.lock().is_committed(version)
    }

    fn base_for(&self, version: i64) -> Option<i64> {
        self.lock().base_for(version)
    }

    fn stored(&self, version: i64, row: i64, outcome: Update) {
        {
            let mut state = self.lock();
            match outcome {
                Update::Written => state.mark_written(version, row),
                // The session was ended elsewhere: stop serving it here.
                Update::Missing => state.end(),
                // A newer stored state this node could not merge with (it does not decode
                // here): nobody writes this copy's changes; the next request restores the row
                // into a new entry.
                Update::Superseded => state.mark_dropped(),
            }
        }
        self.wake();
    }

    fn not_saved(&self) {
        self.lock().keep_change();
        self.wake();
    }

    fn dropped(&self) {
        self.lock().mark_dropped();
        self.wake();
    }

    fn rebase(&self, stored: &crate::store::Record, refuse: bool) -> Rebased {
        let Some(recode) = self.recode() else {
            return Rebased::Gone;
        };
        // Decoded outside the lock.
        let Some(attributes) = recode.decode(stored) else {
            return Rebased::Gone;
        };
        let mut state = self.lock();
        // A copy whose refused changes were dropped is not merged again: a write of it (a
        // request that held it meanwhile) would bring them back, or apply them twice.
        if state.is_ended() || state.is_dropped() {
            return Rebased::Gone;
        }
        if stored.meta.version < state.base() {
            // The store lost writes this node committed (a failover to a replica that lagged,
            // a restored backup): merged on the older row below, the changes committed since
            // it are gone. Said, not repaired: see docs/DEPLOYMENT.md (WAIT, persistence).
            crate::metrics::store_regressed(&stored.meta.app);
            tracing::warn!(session = %state.id.short_hash(), row = stored.meta.version, base = state.base(), "the store holds an older state of this session than this node committed (it lost writes: a failover to a lagging replica, a restored backup); the changes committed since that state are lost");
        }
        let (version, conflicts) = state.rebase(&stored.meta, attributes, refuse);
        let Some(record) = recode.encode(&state) else {
            state.keep_change();
            return Rebased::Gone;
        };
        let short = state.id.short_hash();
        drop(state);
        tracing::debug!(session = %short, from_node = %stored.meta.node, "merged this node's changes into a newer stored state");
        if !conflicts.is_empty() {
            crate::metrics::conflict(&stored.meta.app, "attribute");
            if refuse {
                tracing::warn!(session = %short, attributes = ?conflicts, "changes based on values another node replaced are refused (409); the other node's values stay");
            } else {
                tracing::warn!(session = %short, attributes = ?conflicts, "async mode: changes based on values another node replaced were acknowledged already; they replace the other node's values");
            }
        }
        Rebased::Write {
            record,
            version,
            refused: refuse && !conflicts.is_empty(),
        }
    }
}

impl AppShared {
    /// The well-formed session ids among the request's cookies of our name, in order, and the
    /// version cookie's value (see [`Executed::row`]), if it has a well-formed one.
    ///
    /// Works on bytes: a cookie of another part of the site with non-ASCII bytes in it must not
    /// hide ours.
    pub(crate) fn cookies<'a>(&self, headers: &'a HeaderMap) -> RequestHeaders<'a> {
        request_cookies(
            headers,
            self.settings.cookie_name.as_bytes(),
            Some(self.version_cookie.as_bytes()),
        )
    }

    /// What [`Session::save`] calls (none for memory-only sessions: nothing to save).
    fn commit(self: &Arc<Self>) -> Option<Arc<dyn Commit>> {
        self.persister.as_ref()?;
        Some(Arc::clone(self) as Arc<dyn Commit>)
    }

    /// The codec entries merge themselves with (none for memory-only sessions: they are
    /// never merged).
    fn recode(&self) -> Option<Arc<dyn crate::session::state::Recode>> {
        self.persister.as_ref()?;
        Some(Arc::clone(&self.settings) as Arc<dyn crate::session::state::Recode>)
    }

    /// Sets the version cookie to `row`: the client's next request, on any node, is served a
    /// state at least that new (read-your-writes across nodes).
    pub(crate) fn set_version_cookie(&self, headers: &mut HeaderMap, row: i64, secure: bool) {
        let s = &self.settings;
        let path = s
            .cookie_path
            .clone()
            .unwrap_or_else(|| s.context_path.clone());
        let cookie = Cookie::build((self.version_cookie.clone(), row.to_string()))
            .path(path)
            .secure(s.secure.unwrap_or(secure))
            .http_only(s.http_only.unwrap_or(true))
            .same_site(SameSite::Lax)
            .build();
        if let Ok(value) = HeaderValue::try_from(cookie.to_string()) {
            headers.append(SET_COOKIE, value);
        }
    }

    /// Finds the session of the first id that names one: node cache first, then the store. A
    /// cached copy older than `hint` (the version the client last wrote, from its version
    /// cookie) is refreshed from the row; so is one older than another node's write, when the push or
    /// the version check says so.
    ///
    /// `now` is the request's arrival (epoch ms), read once for the whole request.
    pub(crate) async fn load(
        self: &Arc<Self>,
        ids: &[CookieId],
        hint: Option<i64>,
        now: EpochMillis,
    ) -> Loaded {
        if let Some(persister) = &self.persister {
            self.push.start(persister.persistence().store().as_ref());
            self.emptied_watch.get_or_init(|| {
                if let Some(emptied) = persister.persistence().store().emptied() {
                    tokio::spawn(watch_emptied(Arc::downgrade(self), emptied));
                }
            });
        }
        for cookie in ids {
            if let Some(entry) = self.cache.get(cookie, now) {
                let before = self
                    .push
                    .check_before(now, millis(self.settings.verify_every));
                let (mut live, mut stale, check) = {
                    let mut state = entry.lock();
                    // The entry may be a tombstone, or (after a rotation) hold another id.
                    let live = !state.is_ended()
                        && state.id.as_cookie_value().as_bytes() == cookie.as_bytes();
                    // The client wrote a newer version (on another node) than this copy.
                    if live && hint.is_some_and(|hint| state.is_behind(hint)) {
                        // A newer row than the hint is not required: the client's async write
                        // may not be stored yet (`saw_hint` then stops asking again).
                        state.mark_stale(0);
                    }
                    (live, state.is_stale(), live && state.due_for_check(before))
                };
                // A sticky read: nothing to check, nothing to allocate.
                if live && !stale && !check {
                    self.metrics.cache_hits.increment(1);
                    return self.loaded(Some(entry));
                }
                let id = &cookie.to_id();
                if check && let Some(persister) = &self.persister {
                    match self.verify(persister, id, &entry, now).await {
                        Verified::Current => {}
                        Verified::Newer => stale = true,
                        Verified::Gone => live = false,
                    }
                }
                // Another node stored a newer state: this copy becomes it, in place.
                if live
                    && stale
                    && let Some(persister) = &self.persister
                {
                    match self.refresh(persister, id, &entry, hint).await {
                        Ok(Refreshed::Current) => {
                            // Read from the store, as a restore.
                            self.metrics.cache_misses.increment(1);
                            return self.loaded(Some(entry));
                        }
                        Ok(Refreshed::Gone) => (live, stale) = (false, false),
                        Ok(Refreshed::Replace) => {}
                        Err(error) => return self.store_down(id, &error),
                    }
                }
                if live && !stale {
                    self.metrics.cache_hits.increment(1);
                    return self.loaded(Some(entry));
                }
                if !stale {
                    continue;
                }
                // Dropped (or the newer row does not decode here): replaced by a new entry.
                self.forget(id, &entry);
            }
            let id = &cookie.to_id();
            self.metrics.cache_misses.increment(1);
            let Some(persister) = &self.persister else {
                tracing::debug!(app = %self.settings.app, session = %id.short_hash(), "unknown session id; a fresh session will be used");
                continue;
            };
            // Remembered absent, and the client names no version it wrote.
            let negative = persister.mode() == SaveMode::Sync && hint.is_none();
            if negative && self.absent.contains_key(id) {
                self.metrics.absent_hits.increment(1);
                continue;
            }
            // Concurrent requests of one session restore it once and share the entry.
            let restore = {
                let (app, id) = (Arc::clone(self), id.clone());
                async move {
                    let Some(persister) = &app.persister else {
                        return Err(Miss::Absent);
                    };
                    match app.restore(persister, &id).await {
                        Ok(Some(entry)) => Ok(entry),
                        Ok(None) => Err(Miss::Absent),
                        Err(e) => Err(Miss::Store(e)),
                    }
                }
            };
            let restored = self.cache.restore(id, now, restore).await;
            match restored {
                Ok(entry) => {
                    self.push.index(id, &entry);
                    if let Some(hint) = hint {
                        // Not newer in the store either (async, not written yet): not asked again.
                        entry.lock().saw_hint(hint);
                    }
                    return self.loaded(Some(entry));
                }
                Err(miss) => match &*miss {
                    Miss::Absent => {
                        if negative {
                            self.absent.insert(id.clone(), ());
                        }
                    }
                    Miss::Store(error) => return self.store_down(id, error),
                    Miss::Panicked => {
                        tracing::error!(app = %self.settings.app, session = %id.short_hash(), "restoring the session panicked; answering 503");
                        return Loaded::StoreDown;
                    }
                },
            }
        }
        self.loaded(None)
    }

    /// The request's session: on `entry`, or (`None`) a fresh one created if the handler
    /// writes.
    fn loaded(self: &Arc<Self>, entry: Option<Arc<Entry>>) -> Loaded {
        Loaded::Session(Session::new(entry, self.recode(), self.commit()))
    }

    /// A store read for `id` failed: the request is answered 503.
    fn store_down(&self, id: &SessionId, error: &crate::store::Error) -> Loaded {
        crate::metrics::store_error(&self.settings.app, "load");
        tracing::error!(
            app = %self.settings.app,
            session = %id.short_hash(),
            error = error as &dyn std::error::Error,
            "cannot restore session: store read failed; answering 503"
        );
        Loaded::StoreDown
    }

    /// A cached copy found older than the row (`stale`) becomes that row in place
    /// ([`State::refresh`]): requests holding the entry meanwhile go on with it. A copy that a
    /// request changed since it was found stale is left to merge when it writes. A copy that
    /// was dropped, or a row that does not decode here (the copy is then dropped), is left to
    /// the restore path (`Replace`), which makes a new entry.
    async fn refresh(
        &self,
        persister: &Persister,
        id: &SessionId,
        entry: &Entry,
        hint: Option<i64>,
    ) -> Result<Refreshed, crate::store::Error> {
        let base = {
            let state = entry.lock();
            if state.is_dropped() {
                return Ok(Refreshed::Replace);
            }
            state.base()
        };
        let row = persister.row(&id.store_key(), now_millis()).await?;
        // Decoded outside the lock; `None` if not a state of this app's session here.
        let decoded = row.as_ref().map(|record| {
            let binding = Binding {
                app: &record.meta.app,
                key: &record.meta.key,
                principal: record.meta.principal.as_deref(),
            };
            (record.meta.app == self.settings.app)
                .then(|| self.codec.decode_keyed(&record.data, binding).ok())
                .flatten()
        });
        let mut state = entry.lock();
        if state.is_ended() {
            return Ok(Refreshed::Gone);
        }
        if state.is_dropped() {
            return Ok(Refreshed::Replace);
        }
        let (Some(record), Some(decoded)) = (row, decoded) else {
            // Changes of its own: its write learns what became of the row (ended elsewhere, or
            // a store that lost its data writes it back).
            if state.keeps_own_changes() {
                return Ok(Refreshed::Current);
            }
            drop(state);
            self.ended_elsewhere(id, entry);
            return Ok(Refreshed::Gone);
        };
        let Some((attributes, rekey)) = decoded else {
            // The restore path says why and starts a fresh session; this copy is never saved
            // again.
            state.mark_dropped();
            return Ok(Refreshed::Replace);
        };
        if state.is_stale() && state.refresh(&record.meta, attributes, base, rekey) {
            // Not newer than the client's version cookie: the store has nothing newer yet (an
            // async write), and the cookie does not make it read again.
            if let Some(hint) = hint {
                state.saw_hint(hint);
            }
            drop(state);
            self.metrics.restores.increment(1);
            tracing::debug!(app = %self.settings.app, session = %id.short_hash(), from_node = %record.meta.node, "refreshed from the newer stored state");
        }
        Ok(Refreshed::Current)
    }

    /// Checks a settled cached copy against the row's version (see
    /// `session.cache.verify.interval`): another node may have written a newer state (refresh
    /// from it) or ended the session (end it here). A store that cannot answer leaves the copy
    /// served (reads do not need the database); one that cannot be reached is not asked again
    /// for a while, and the request's save does not wait for it either.
    async fn verify(
        &self,
        persister: &Persister,
        id: &SessionId,
        entry: &Entry,
        now: EpochMillis,
    ) -> Verified {
        if now < self.verify_paused_until.load(Ordering::Relaxed) {
            return Verified::Current;
        }
        let probed = persister.version(&id.store_key(), now).await;
        self.metrics.verifies.increment(1);
        if probed.is_ok() && self.verify_failures.swap(0, Ordering::Relaxed) > 0 {
            tracing::info!(app = %self.settings.app, "the store answers again; cached sessions are checked again");
        }
        let mut state = entry.lock();
        match probed {
            // Changed by this node meanwhile: it writes, and merges if the row moved on.
            _ if !state.is_settled() => Verified::Current,
            Ok(Some(version)) if version == state.base() => {
                state.checked(now);
                Verified::Current
            }
            Ok(Some(version)) => {
                if version < state.base() {
                    crate::metrics::store_regressed(&self.settings.app);
                    tracing::warn!(app = %self.settings.app, session = %id.short_hash(), row = version, base = state.base(), "the store holds an older state of this session than this node committed (it lost writes: a failover to a lagging replica, a restored backup); serving the stored state");
                }
                state.mark_stale(version);
                drop(state);
                tracing::debug!(app = %self.settings.app, session = %id.short_hash(), "a newer state was stored by another node; refreshing this copy from it");
                Verified::Newer
            }
            Ok(None) => {
                drop(state);
                self.ended_elsewhere(id, entry);
                Verified::Gone
            }
            Err(error) => {
                state.checked(now);
                drop(state);
                if error.is_unreachable() {
                    // The next reads do not wait for it again; the
                    // pause doubles while the store stays unreachable.
                    let failures = self.verify_failures.fetch_add(1, Ordering::Relaxed);
                    let pause = millis(self.settings.verify_every)
                        .max(VERIFY_PAUSE_MS)
                        .saturating_mul(1 << failures.min(5))
                        .min(VERIFY_PAUSE_MAX_MS);
                    self.verify_paused_until
                        .store(now_millis().saturating_add(pause), Ordering::Relaxed);
                }
                crate::metrics::store_error(&self.settings.app, "verify");
                tracing::warn!(app = %self.settings.app, session = %id.short_hash(), error = &error as &dyn std::error::Error, "cannot check the cached session against the store; served from the cache");
                Verified::Current
            }
        }
    }

    async fn restore(
        &self,
        persister: &Persister,
        id: &SessionId,
    ) -> Result<Option<Arc<Entry>>, crate::store::Error> {
        let short = id.short_hash();
        let Some(found) = persister.load(&id.store_key(), now_millis()).await? else {
            tracing::debug!(app = %self.settings.app, session = %short, "unknown or expired session id; a fresh session will be used");
            return Ok(None);
        };
        let (record, row_exists) = (found.record, found.exists);
        if record.meta.app != self.settings.app {
            // At most one WARN every FOREIGN_WARN_EVERY_MS, with how many went to DEBUG since.
            let now = now_millis();
            let last = self.foreign_warned_at.load(Ordering::Relaxed);
            if now - last >= FOREIGN_WARN_EVERY_MS
                && self
                    .foreign_warned_at
                    .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok()
            {
                let quiet = self.foreign_quiet.swap(0, Ordering::Relaxed);
                tracing::warn!(app = %self.settings.app, session = %short, stored_app = %record.meta.app, since_last_warning = quiet, "session belongs to another application; not restored");
            } else {
                self.foreign_quiet.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(app = %self.settings.app, session = %short, stored_app = %record.meta.app, "session belongs to another application; not restored");
            }
            return Ok(None);
        }
        // Its write is queued on this node: the cache takes back that very session (with its
        // uncommitted changes and their order), not a copy of its state.
        if let Some(entry) = found
            .queued_by
            .and_then(|owner| owner.into_any().downcast::<Entry>().ok())
        {
            let stale = {
                let state = entry.lock();
                if state.is_ended() || state.id != *id {
                    return Ok(None);
                }
                state.is_stale()
            };
            if stale {
                match self.refresh(persister, id, &entry, None).await? {
                    Refreshed::Current => return Ok(Some(entry)),
                    Refreshed::Gone => return Ok(None),
                    Refreshed::Replace => {}
                }
            } else {
                tracing::debug!(app = %self.settings.app, session = %short, "taken back from this node's write queue");
                return Ok(Some(entry));
            }
        }
        let binding = Binding {
            app: &record.meta.app,
            key: &record.meta.key,
            principal: record.meta.principal.as_deref(),
        };
        match self.codec.decode_keyed(&record.data, binding) {
            Ok((attributes, rekey)) => {
                tracing::info!(app = %self.settings.app, session = %short, from_node = %record.meta.node, "restored from store");
                self.metrics.restores.increment(1);
                let mut state = State::restored(id.clone(), &record.meta, attributes);
                if rekey {
                    state.needs_rekey();
                }
                // Restored from this node's queue before its first write landed: no row yet.
                if !row_exists {
                    state.restored_without_row();
                }
                Ok(Some(Entry::with_recode(state, self.recode())))
            }
            Err(error) => {
                tracing::error!(app = %self.settings.app, session = %short, error = &error as &dyn std::error::Error, "stored session does not decode; a fresh session will be used");
                Ok(None)
            }
        }
    }

    /// After the handler, without waiting: takes what the request did, sets the cookie header,
    /// and returns the store and cache work left, if any (a sticky read usually leaves none).
    /// `now` is the request's arrival, as [`AppShared::load`] had it: a touch falls due at most
    /// one handler's time early.
    pub(crate) fn plan(
        &self,
        session: &Session,
        had_cookie: bool,
        secure: bool,
        headers: &mut HeaderMap,
        now: EpochMillis,
    ) -> Option<Finish> {
        let slot = session.take();
        let mut finish = Finish {
            entry: None,
            cache_it: slot.created || slot.cycled || slot.followed,
            work: Work::None,
            removed: slot.removed,
            check_failed: false,
            conflict: slot.conflict,
            carried_by: None,
            refused: slot.refused,
            saved_row: slot.saved_row,
        };
        if let Some(entry) = slot.entry {
            let mut state = entry.lock();
            if finish.refused.is_some() {
                // A refused explicit save: nothing of the request is saved, no cookie is sent,
                // and this node drops its copy (execute), so nothing the handler did after the
                // refusal is saved by a later request either.
                let id = state.id.clone();
                drop(state);
                finish.saved_row = None;
                finish.entry = Some((id, entry));
            } else if state.is_dropped() {
                // Its write was dropped and nobody will make it (a refused sync save, or a newer
                // row that does not decode here): never saved again; the next request restores
                // the row into a new entry. A request that held this copy and changed it is
                // refused too.
                if slot.changed {
                    let id = state.id.clone();
                    drop(state);
                    finish.refused = Some(SaveError::Unavailable);
                    finish.entry = Some((id, entry));
                }
            } else if !state.is_ended() {
                finish.work = self.work(&mut state, now);
                if slot.changed && !matches!(finish.work, Work::Save(_)) {
                    finish.carried_by = state.uncommitted();
                }
                if self.persister.is_none() {
                    state.forget_changes();
                }
                let announce = state.take_announce();
                let id = state.id.clone();
                drop(state);
                if finish.cache_it || announce {
                    self.set_cookie(headers, Some(&id), secure);
                }
                if self.settings.check
                    && let Work::Save(snapshot) = &finish.work
                {
                    finish.check_failed = self.check(&id, snapshot);
                }
                finish.entry = Some((id, entry));
            }
        } else {
            // Invalidated after an explicit save: no version cookie for a session that is gone.
            finish.saved_row = None;
            if slot.invalidated && had_cookie {
                self.set_cookie(headers, None, secure);
            }
        }
        if self.persister.is_none() {
            finish.work = Work::None;
            finish.removed.clear();
        }
        let idle = !finish.cache_it
            && finish.carried_by.is_none()
            && finish.removed.is_empty()
            && !finish.check_failed
            && !finish.conflict
            && finish.refused.is_none()
            && finish.saved_row.is_none()
            && matches!(finish.work, Work::None);
        (!idle).then_some(finish)
    }

    /// What [`Session::save`] leaves to do: the request's change, taken as the save after the
    /// handler would take it (that save then finds it done). Cookies, ended ids and the cache's
    /// tombstones stay for the end of the request.
    fn plan_save(&self, session: &Session) -> Result<Option<Finish>, SaveError> {
        let Some((entry, fresh, changed)) = session.to_save()? else {
            return Ok(None);
        };
        let mut state = entry.lock();
        if state.is_ended() {
            return Ok(None);
        }
        if state.is_dropped() {
            // See `plan`: a copy whose write was dropped is never saved again.
            return if changed {
                Err(SaveError::Unavailable)
            } else {
                Ok(None)
            };
        }
        let work = if state.has_unsaved_change() {
            self.work(&mut state, now_millis())
        } else {
            Work::None
        };
        let carried_by = if changed && !matches!(work, Work::Save(_)) {
            state.uncommitted()
        } else {
            None
        };
        let id = state.id.clone();
        drop(state);
        if matches!(&work, Work::Save(snapshot) if self.settings.check && self.check(&id, snapshot))
        {
            // Refused before anything is written: the handler skips its side effect, so the
            // session must not keep the change either (the end of the request drops this copy).
            entry.lock().keep_change();
            return Err(SaveError::CheckFailed);
        }
        Ok(Some(Finish {
            entry: Some((id, entry)),
            cache_it: fresh,
            work,
            removed: Vec::new(),
            check_failed: false,
            conflict: false,
            carried_by,
            refused: None,
            saved_row: None,
        }))
    }

    /// Runs the serializability checker on a session about to be saved; whether the response
    /// must become a 500 (`session.serialization.check.response.error`).
    fn check(&self, id: &SessionId, snapshot: &Snapshot) -> bool {
        let failures = crate::check::check(snapshot.attributes.iter().map(|(n, v)| (n, v)));
        for failure in &failures {
            tracing::error!(
                app = %self.settings.app,
                session = %id.short_hash(),
                "Failed to serialize attribute: {} ({}): {}",
                failure.name,
                failure.rust_type,
                failure.reason
            );
        }
        !failures.is_empty() && self.settings.check_response_error
    }

    /// Decides under the session's lock what to persist, and marks it done.
    fn work(&self, state: &mut State, now: EpochMillis) -> Work {
        let touch_every = millis(self.settings.timeout / TOUCH_DIVISOR);
        match state.take_work(now, touch_every) {
            Due::Nothing => Work::None,
            // A row under a previous key (or in plaintext) is written again under the current
            // one when it is touched, so the old secret can go once every live session was.
            Due::Touch => Work::Touch(
                state
                    .wants_rekey()
                    .then(|| Snapshot::of(state, state.base(), state.base(), false)),
            ),
            Due::Save { version, base, new } => Work::Save(Snapshot::of(state, version, base, new)),
        }
    }

    /// The store and cache work of [`AppShared::plan`]. Run it in its own task: a dropped
    /// response future (a client gone, a timeout) must not cut a save, a logout or a rotation in
    /// half.
    ///
    /// Returns [`Answer::Conflict`] when the change was not kept because the store holds a newer
    /// state or no longer holds the session: the response must not acknowledge it.
    pub(crate) async fn execute(self: Arc<Self>, finish: Finish) -> Executed {
        let mut saved = finish.refused.map_or(Answer::Done, Answer::from);
        // Whether this request's new state is in the store (nothing to save counts as yes).
        let mut committed = true;
        // The row version that holds this request's change, once committed (sync).
        let mut row = finish.saved_row;
        if let Some((id, entry)) = &finish.entry {
            if finish.cache_it {
                self.cache
                    .insert(id.clone(), Arc::clone(entry), now_millis());
                self.push.index(id, entry);
            }
            if let Some(persister) = &self.persister {
                if let Some(version) = finish.carried_by
                    && persister.mode() == SaveMode::Sync
                {
                    let wait = persister.persistence().writer().store_timeout();
                    let _ = tokio::time::timeout(wait, entry.carried(version)).await;
                    let state = entry.lock();
                    if state.is_committed(version) && !state.conflicted_since(version) {
                        row = Some(state.base());
                    } else if state.is_committed(version) || state.is_ended() {
                        // The write that carried the change was committed with a change of
                        // this copy dropped as a true conflict (perhaps this one), or it was
                        // not kept: the session was ended elsewhere.
                        saved = Answer::Conflict;
                    } else {
                        // Not committed within the store timeout (sync means committed): the
                        // write that carried it failed, was dropped, or is still on its way.
                        saved = Answer::Unavailable;
                    }
                }
                match finish.work {
                    Work::None => {}
                    Work::Touch(rekey) => {
                        if let Some(snapshot) = rekey {
                            self.rekey(persister, id, entry, snapshot).await;
                        }
                        self.touch(persister, id, entry).await;
                    }
                    Work::Save(snapshot) => {
                        let carries = snapshot.version;
                        (saved, committed) = self.save(persister, id, entry, snapshot).await;
                        let state = entry.lock();
                        if persister.mode() == SaveMode::Sync && state.is_committed(carries) {
                            row = row.max(Some(state.base()));
                        }
                    }
                }
            }
        }
        if finish.conflict {
            crate::metrics::conflict(&self.settings.app, "attribute");
            saved = Answer::Conflict;
        }
        if finish.check_failed && saved == Answer::Done {
            saved = Answer::CheckFailed;
        }
        if matches!(saved, Answer::Unavailable | Answer::NotSaved) || finish.refused.is_some() {
            // Refused, so not kept either: this node drops its copy, and the session's next
            // request restores the last stored state. A rotation keeps its old id and row: the
            // old id's tombstone goes too, so that row is served again.
            if let Some((id, entry)) = &finish.entry {
                // Sync, and no write of the session left on this node (a direct write that
                // failed): nobody writes this copy's change, so nobody saves the copy again
                // either (a request holding it is refused if it changes it; see `plan`). A
                // write still queued or in flight keeps its copy, which it may yet merge.
                if saved == Answer::Unavailable
                    && let Some(persister) = &self.persister
                    && persister.mode() == SaveMode::Sync
                    && !persister.persistence().writer().is_queued(&id.store_key())
                {
                    entry.lock().mark_dropped();
                }
                self.forget(id, entry);
            }
            for old in &finish.removed {
                self.cache.remove(old);
            }
            return Executed {
                answer: saved,
                row: None,
            };
        }
        // After the save: a rotation's old row goes only once its new row is written; if that
        // write is still queued (async, or being retried), the delete is queued behind it.
        if let Some(persister) = &self.persister {
            for old in &finish.removed {
                if !committed {
                    persister.destroy_later(&old.store_key()).await;
                    continue;
                }
                if let Err(error) = persister.destroy(&old.store_key()).await {
                    crate::metrics::store_error(&self.settings.app, "destroy");
                    tracing::error!(app = %self.settings.app, session = %old.short_hash(), error = &error as &dyn std::error::Error, "cannot remove ended session from the store");
                }
            }
        }
        Executed {
            answer: saved,
            row: row.filter(|_| saved == Answer::Done),
        }
    }

    async fn touch(&self, persister: &Persister, id: &SessionId, entry: &Entry) {
        let now = now_millis();
        let expires_at = now.saturating_add(millis(self.settings.timeout));
        match persister.touch(&id.store_key(), now, expires_at).await {
            Ok(true) => self.metrics.touches.increment(1),
            Ok(false) => self.ended_elsewhere(id, entry),
            Err(error) => {
                crate::metrics::store_error(&self.settings.app, "touch");
                tracing::warn!(app = %self.settings.app, session = %id.short_hash(), error = &error as &dyn std::error::Error, "cannot push session expiry forward")
            }
        }
    }

    /// Writes the row again under the current key: the same data and version (no other node
    /// needs to reload it), only if the row still holds the version `snapshot` was taken from.
    async fn rekey(
        &self,
        persister: &Persister,
        id: &SessionId,
        entry: &Entry,
        snapshot: Snapshot,
    ) {
        let version = snapshot.base;
        let Some(record) = self.settings.record(id, snapshot) else {
            // Logged with its cause (larger than session.max.size, say): not tried again for
            // this copy; its next write meets the same refusal.
            entry.lock().rekeyed();
            return;
        };
        match persister
            .rekey(&record.meta.key, version, &record.data)
            .await
        {
            Ok(true) => {
                entry.lock().rekeyed();
                self.metrics.rekeys.increment(1);
                tracing::debug!(app = %self.settings.app, session = %id.short_hash(), "written again under the current key");
            }
            // Written or ended meanwhile: a write is under the current key, and the copy is
            // checked against the row as usual.
            Ok(false) => {}
            Err(error) => {
                crate::metrics::store_error(&self.settings.app, "rekey");
                tracing::warn!(app = %self.settings.app, session = %id.short_hash(), error = &error as &dyn std::error::Error, "cannot write session again under the current key; tried at its next touch");
            }
        }
    }

    async fn save(
        self: &Arc<Self>,
        persister: &Persister,
        id: &SessionId,
        entry: &Arc<Entry>,
        snapshot: Snapshot,
    ) -> (Answer, bool) {
        // Async mode, and the session already has a write queued: this change goes with it,
        // encoded once when the writer makes it, not on every request.
        let snapshot = if persister.mode() == SaveMode::Async {
            let snapshot = Arc::new(snapshot);
            let folded = self.folded(id, &snapshot);
            if persister
                .persistence()
                .writer()
                .fold(&id.store_key(), owner(entry), folded)
            {
                return (Answer::Done, false);
            }
            Arc::try_unwrap(snapshot).unwrap_or_else(|shared| (*shared).clone())
        } else {
            snapshot
        };
        let (version, new) = (snapshot.version, snapshot.new);
        let started = std::time::Instant::now();
        let Some(record) = self.settings.record(id, snapshot) else {
            // Logged with its cause; retrying would only fail again.
            return (Answer::NotSaved, false);
        };
        let app = &self.settings.app;
        let saved = persister.save(record, version, new, owner(entry)).await;
        let committed = matches!(saved, Saved::Stored(Update::Written));
        let answer = match saved {
            Saved::Stored(Update::Written) => {
                self.metrics.saves.increment(1);
                self.metrics
                    .save_seconds
                    .record(started.elapsed().as_secs_f64());
                Answer::Done
            }
            Saved::Queued => Answer::Done,
            Saved::Refused => {
                // Logged where the conflict was found.
                Answer::Conflict
            }
            Saved::Stored(Update::Missing) => {
                crate::metrics::conflict(app, "missing");
                tracing::info!(%app, session = %id.short_hash(), "session was ended elsewhere; dropped from this node");
                Answer::Conflict
            }
            Saved::Stored(Update::Superseded) => {
                // A newer local save of this entry got there first: nothing is lost.
                if !entry.lock().is_stale() {
                    return (Answer::Done, true);
                }
                // Another node wrote a newer version: this node's copy is stale and will be
                // dropped by the next request; this change is not acknowledged.
                tracing::warn!(%app, session = %id.short_hash(), "session was changed on another node; this node's change is refused and its copy dropped");
                crate::metrics::conflict(app, "superseded");
                Answer::Conflict
            }
            Saved::Failed(error) => {
                // Nobody keeps it (not queued, not committed): refused, and dropped from this
                // node by the caller.
                crate::metrics::store_error(app, "save");
                tracing::error!(%app, session = %id.short_hash(), error = &error as &dyn std::error::Error, "cannot save session; the change is refused (503) and this node's copy dropped");
                Answer::Unavailable
            }
        };
        (answer, committed)
    }

    /// The store lost its data: every session this node holds is written again. A settled copy
    /// is inserted at once as the row it was, with that row's version; a copy with changes of
    /// its own is queued as a new snapshot (above every row it descends from) and flushed at
    /// once. Between two nodes' copies, the store's version rule keeps the newer.
    pub(crate) async fn write_back(self: &Arc<Self>) {
        let Some(persister) = &self.persister else {
            return;
        };
        let now = now_millis();
        let (mut queued, mut left) = (0u64, 0u64);
        // Copies that are exactly a stored state go back as that row, with its version: of two
        // nodes' copies, the newer row wins by the store's version rule (a stale copy on a node
        // the user left loses to the node serving it now).
        let mut settled = Vec::new();
        // Not the idle ones: their sessions timed out here, and must not be written back alive.
        for (id, entry) in self.cache.live(now) {
            let snapshot = {
                let mut state = entry.lock();
                if state.is_settled() {
                    let base = state.base();
                    let snapshot = Snapshot::of(&state, base, base.saturating_sub(1), false);
                    drop(state);
                    if let Some(record) = self.settings.record(&id, snapshot) {
                        settled.push(record);
                    }
                    continue;
                }
                // Changes of its own not committed yet: written as a new snapshot, which is
                // numbered above every row this copy descends from.
                if !state.lost_row() {
                    continue;
                }
                match self.work(&mut state, now) {
                    Work::Save(snapshot) => snapshot,
                    _ => continue,
                }
            };
            let version = snapshot.version;
            let Some(record) = self.settings.record(&id, snapshot) else {
                // Logged with its cause; its next request tries again.
                entry.lock().keep_change();
                continue;
            };
            if persister.write_back(record, version, owner(&entry)) {
                queued += 1;
            } else {
                entry.lock().keep_change();
                left += 1;
            }
        }
        let rows = settled.len() as u64;
        if let Err(error) = persister.write_rows(&settled).await {
            crate::metrics::store_error(&self.settings.app, "write_back");
            tracing::error!(app = %self.settings.app, sessions = rows, error = &error as &dyn std::error::Error, "cannot write back the sessions held here; their next requests save them only if they change");
        } else {
            queued += rows;
        }
        persister.flush_soon();
        self.metrics.written_back.increment(queued);
        tracing::warn!(app = %self.settings.app, queued, left_to_their_next_request = left, "the store lost its data: the sessions this node holds are written again");
    }

    /// Drops `entry` from the node cache if it is still the copy cached under `id`: a
    /// concurrent request may have replaced it already, and that newer copy stays.
    fn forget(&self, id: &SessionId, entry: &Arc<Entry>) {
        self.cache.remove_if_same(id, entry);
    }

    /// The row is gone (logout on another node, the backoffice, the purge): stop serving it.
    fn ended_elsewhere(&self, id: &SessionId, entry: &Entry) {
        tracing::info!(app = %self.settings.app, session = %id.short_hash(), "session was ended elsewhere; dropped from this node");
        entry.lock().end();
    }

    /// `snapshot` as a change folded into a queued write: encoded when the writer makes it,
    /// with the app's settings only (no reference back to the app, its cache or its writer;
    /// the writer drains after the app is gone).
    fn folded(&self, id: &SessionId, snapshot: &Arc<Snapshot>) -> Folded {
        let (settings, id, state) = (Arc::clone(&self.settings), id.clone(), Arc::clone(snapshot));
        Folded {
            version: snapshot.version,
            encode: Arc::new(move || settings.record(&id, (*state).clone())),
        }
    }

    /// Sets the session cookie, or expires it (and the version cookie) when `id` is `None`.
    fn set_cookie(&self, headers: &mut HeaderMap, id: Option<&SessionId>, secure: bool) {
        let s = &self.settings;
        let path = s
            .cookie_path
            .clone()
            .unwrap_or_else(|| s.context_path.clone());
        let build = |name: &str, value: String| {
            let mut cookie = Cookie::build((name.to_owned(), value))
                .path(path.clone())
                .secure(s.secure.unwrap_or(secure))
                .http_only(s.http_only.unwrap_or(true))
                .same_site(SameSite::Lax)
                .build();
            if id.is_none() {
                cookie.make_removal();
            }
            cookie
        };
        let mut cookies = vec![build(
            &s.cookie_name,
            id.map(|id| id.as_cookie_value().to_owned())
                .unwrap_or_default(),
        )];
        if id.is_none() {
            // The version of a session that is gone means nothing any more.
            cookies.push(build(&self.version_cookie, String::new()));
        }
        for cookie in cookies {
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
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const NAME: &[u8] = b"JSESSIONID";

    fn headers(values: &[Vec<u8>]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in values {
            if let Ok(value) = HeaderValue::from_bytes(value) {
                headers.append(COOKIE, value);
            }
        }
        headers
    }

    /// A cookie pair that is not the session's: another name, any value a header may hold.
    fn other_pair() -> impl Strategy<Value = String> {
        ("[A-Za-z_][A-Za-z0-9_-]{0,12}", "[ -:<-~]{0,40}")
            .prop_filter("not the session cookie", |(name, _)| name != "JSESSIONID")
            .prop_map(|(name, value)| format!("{name}={value}"))
    }

    #[test]
    fn the_proxy_headers_are_found_in_the_same_pass_first_one_wins() {
        let secure = |pairs: &[(&'static str, &'static str)]| {
            let mut headers = HeaderMap::new();
            for (name, value) in pairs {
                headers.append(*name, HeaderValue::from_static(value));
            }
            let found = request_cookies(&headers, b"JSESSIONID", None);
            crate::middleware::settings::is_secure(None, found.forwarded_proto, found.forwarded)
        };
        assert!(!secure(&[("cookie", "a=b")]));
        assert!(secure(&[("x-forwarded-proto", "https"), ("cookie", "a=b")]));
        assert!(secure(&[("x-forwarded-proto", "HTTPS, http")]));
        assert!(!secure(&[
            ("x-forwarded-proto", "http"),
            ("x-forwarded-proto", "https")
        ]));
        assert!(secure(&[("forwarded", "for=192.0.2.60;proto=https")]));
        assert!(!secure(&[
            ("forwarded", "proto=http"),
            ("forwarded", "proto=https")
        ]));
        assert!(crate::middleware::settings::is_secure(
            Some("https"),
            None,
            None
        ));
    }

    /// The ids and the version cookie come out of one pass: ids in order (quoted or not,
    /// malformed ones skipped), the version cookie's first occurrence only, and only a
    /// positive number.
    #[test]
    fn session_ids_and_the_version_cookie_in_one_pass() {
        let (a, b) = (SessionId::generate(), SessionId::generate());
        let (a_, b_) = (a.as_cookie_value(), b.as_cookie_value());
        let version = Some(&b"JSESSIONID_VERSION"[..]);
        let cases: [(&str, Vec<&SessionId>, Option<i64>); 5] = [
            (
                &format!("JSESSIONID={a_}; JSESSIONID_VERSION=7"),
                vec![&a],
                Some(7),
            ),
            (
                &format!(
                    "JSESSIONID_VERSION=9; JSESSIONID=\"{a_}\"; JSESSIONID=bad; JSESSIONID={b_}"
                ),
                vec![&a, &b],
                Some(9),
            ),
            (
                &format!("JSESSIONID_VERSION=x; JSESSIONID_VERSION=3; JSESSIONID={b_}"),
                vec![&b],
                None,
            ),
            ("JSESSIONID_VERSION=0", vec![], None),
            ("JSESSIONID_VERSION=-4; other=1", vec![], None),
        ];
        for (header, ids, hint) in cases {
            let headers = headers(&[header.as_bytes().to_vec()]);
            let RequestHeaders {
                ids: found,
                hint: found_hint,
                ..
            } = request_cookies(&headers, NAME, version);
            let found: Vec<_> = found.into_iter().map(CookieId::to_id).collect();
            assert_eq!(found.iter().collect::<Vec<_>>(), ids, "{header}");
            assert_eq!(found_hint, hint, "{header}");
        }
        // Several Cookie headers: read in order across them, at most three ids.
        let c = SessionId::generate();
        let (d, c_) = (SessionId::generate(), c.as_cookie_value());
        let headers = headers(&[
            format!("JSESSIONID={a_}; JSESSIONID={b_}").into_bytes(),
            format!("JSESSIONID_VERSION=5; JSESSIONID={c_}").into_bytes(),
            format!("JSESSIONID={}; JSESSIONID_VERSION=6", d.as_cookie_value()).into_bytes(),
        ]);
        let RequestHeaders {
            ids: found,
            hint: found_hint,
            ..
        } = request_cookies(&headers, NAME, version);
        let found: Vec<_> = found.into_iter().map(CookieId::to_id).collect();
        assert_eq!(found, [a.clone(), b.clone(), c]);
        assert_eq!(found_hint, Some(5));
    }

    proptest! {
        /// A version cookie's value reads as the standard parser reads it, less a sign.
        #[test]
        fn version_numbers_read_as_integers(text in "[+-]?[0-9]{0,21}") {
            let expected = text.parse::<i64>().ok().filter(|&v| v > 0 && !text.starts_with('+'));
            prop_assert_eq!(positive_number(text.as_bytes()), expected, "{}", text);
        }

        /// Any bytes a header may carry: no panic, at most three ids, each a value the header
        /// holds under the session cookie's name.
        #[test]
        fn any_cookie_header_parses_without_panic(values in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..200), 0..4)) {
            let headers = headers(&values);
            let ids = cookie_ids(&headers, NAME);
            prop_assert!(ids.len() <= MAX_COOKIE_CANDIDATES);
            let all: Vec<u8> = values.concat();
            for id in &ids {
                let needle = id.as_cookie_value().as_bytes();
                prop_assert!(all.windows(needle.len()).any(|w| w == needle));
            }
        }

        /// A session id among other cookies, anywhere, spaced or quoted, is found, and is the
        /// first candidate when it is the only session cookie.
        #[test]
        fn the_session_cookie_is_found_among_others(
            before in prop::collection::vec(other_pair(), 0..6),
            after in prop::collection::vec(other_pair(), 0..6),
            quoted in any::<bool>(),
            spaces in "[ ]{0,3}",
            split in any::<bool>(),
        ) {
            let id = SessionId::generate();
            let value = if quoted {
                format!("\"{}\"", id.as_cookie_value())
            } else {
                id.as_cookie_value().to_owned()
            };
            let ours = format!("{spaces}JSESSIONID={value}{spaces}");
            let mut pairs = before.clone();
            pairs.push(ours);
            pairs.extend(after.iter().cloned());
            // One header, or one header per pair (HTTP/2 sends cookies that way).
            let values: Vec<Vec<u8>> = if split {
                pairs.iter().map(|p| p.clone().into_bytes()).collect()
            } else {
                vec![pairs.join("; ").into_bytes()]
            };
            prop_assert_eq!(cookie_ids(&headers(&values), NAME), vec![id]);
        }
    }
}
