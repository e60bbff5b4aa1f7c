//! The node cache: the Commerce "session cache region".
//!
//! One bounded cache per application on each node, holding the live sessions that sticky load
//! balancing sends here. An entry expires after the session timeout without access (idle expiry),
//! and beyond `session.cache.max.entries` the least useful entries are evicted. An evicted or
//! expired session of a persistent app is restored from the store on its next request; one of a
//! memory-only app is gone.
//!
//! A sticky read is one lookup here, so the lookup is kept to what it must do: a hash, a shard's
//! read lock, a probe, and a timestamp. The map is [`quick_cache`] (sharded, CLOCK-PRO
//! eviction, which admits every new entry); idle expiry is this module's: each [`Entry`] keeps
//! the time of its last lookup, a lookup treats an entry idle for longer than the timeout as
//! absent, and the idle entries are swept out at most every tenth of the timeout, from an
//! insert. Concurrent restores of one session are coalesced here too ([`NodeCache::restore`]).

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::FutureExt as _;
use futures_util::future::{BoxFuture, WeakShared};

use crate::id::SessionId;
use crate::session::state::Entry;
use crate::store::EpochMillis;

/// Why a restore found no session to cache.
#[derive(Debug)]
pub(crate) enum Miss {
    /// The store has no such session (or one this app must not serve).
    Absent,
    /// The store could not be read.
    Store(crate::store::Error),
    /// The restore panicked (a bug; the request is refused as if the store were down).
    Panicked,
}

/// What a restore gives every request waiting for it.
type Restored = Result<Arc<Entry>, Arc<Miss>>;

/// A session the cache let go of, and how (for the log).
type Gone = (SessionId, Arc<Entry>, &'static str);

/// The sessions a cache insert evicted beyond its capacity, logged once the shard's lock is
/// released.
#[derive(Clone, Copy, Default)]
struct Evictions;

impl quick_cache::Lifecycle<SessionId, Arc<Entry>> for Evictions {
    type RequestState = Vec<(SessionId, Arc<Entry>)>;

    fn on_evict(&self, evicted: &mut Self::RequestState, id: SessionId, entry: Arc<Entry>) {
        evicted.push((id, entry));
    }
}

/// The map itself. Hashed with foldhash (seeded per process), not SipHash: every sticky request
/// hashes its id, and only ids this node generated or restored from the store are ever
/// inserted, so no client can fill the table with colliding keys.
type Map = quick_cache::sync::Cache<
    SessionId,
    Arc<Entry>,
    quick_cache::UnitWeighter,
    foldhash::fast::RandomState,
    Evictions,
>;

/// Live sessions of one application on this node, by id.
pub(crate) struct NodeCache {
    map: Map,
    /// The application, for the log.
    app: String,
    /// Whether its sessions are stored (an evicted session with an unsaved change then loses
    /// that change, which is logged).
    persistent: bool,
    /// Idle expiry, in milliseconds.
    idle: i64,
    /// When idle entries were last swept out (epoch ms).
    swept_at: AtomicI64,
    /// Restores under way, by id: the requests that miss the same session meanwhile wait for
    /// that one read. Weak: a restore whose every waiter is gone (clients gone, timeouts) is
    /// dropped with its read, as if never begun, rather than parked to serve a row read long
    /// ago to the next request. Its dead entry goes with the next sweep.
    restoring: Mutex<HashMap<SessionId, WeakRestore>>,
    /// The `session_cache_entries` gauge, set after every change of what the map holds.
    entries: metrics::Gauge,
    /// Held while `entries` is counted and set, so that concurrent counts set it in the order
    /// they counted: the last count, after the last change, is the latest.
    counting: Mutex<()>,
}

/// A restore under way, as [`NodeCache`] keeps it.
type WeakRestore = WeakShared<BoxFuture<'static, Restored>>;

impl NodeCache {
    /// A cache of at most `max_entries` sessions, each expiring after `idle` without access.
    ///
    /// For a persistent app (`persistent`), an entry evicted while it holds a change that
    /// failed to save is logged at ERROR: that change is lost. `entries` is set to how many
    /// sessions it holds after each change (never on a lookup).
    pub(crate) fn new(
        app: &str,
        max_entries: u64,
        idle: Duration,
        persistent: bool,
        entries: metrics::Gauge,
    ) -> Self {
        let max_entries = max_entries.max(1);
        Self {
            map: Map::with(
                usize::try_from(max_entries).unwrap_or(usize::MAX),
                max_entries,
                quick_cache::UnitWeighter,
                foldhash::fast::RandomState::default(),
                Evictions,
            ),
            app: app.to_owned(),
            persistent,
            idle: i64::try_from(idle.as_millis()).unwrap_or(i64::MAX),
            swept_at: AtomicI64::new(0),
            restoring: Mutex::default(),
            entries,
            counting: Mutex::default(),
        }
    }

    /// Sets the `entries` gauge to how many sessions the map holds (idle ones included until
    /// they are swept).
    fn count(&self) {
        let _counting = self
            .counting
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        #[allow(clippy::cast_precision_loss)] // up to 10^8 entries: exact in f64
        self.entries.set(self.map.len() as f64);
    }

    /// The session cached under `id`, unless it was idle for longer than the timeout; counts
    /// as an access at `now` (epoch ms).
    pub(crate) fn get<Q>(&self, id: &Q, now: EpochMillis) -> Option<Arc<Entry>>
    where
        Q: std::hash::Hash + quick_cache::Equivalent<SessionId> + ?Sized,
    {
        let entry = self.map.get(id)?;
        self.accessed(&entry, now).then_some(entry)
    }

    /// Whether `entry` is still live at `now`; if so, `now` is its last access.
    fn accessed(&self, entry: &Entry, now: EpochMillis) -> bool {
        let last = entry.accessed.load(Ordering::Relaxed);
        if now.saturating_sub(last) > self.idle {
            return false;
        }
        // One store per millisecond at most: concurrent reads of a session do not all write
        // its cache line.
        if last < now {
            entry.accessed.store(now, Ordering::Relaxed);
        }
        true
    }

    /// Caches `entry` under `id` (replacing what was there), accessed at `now`; sweeps idle
    /// entries out when that is due.
    pub(crate) fn insert(&self, id: SessionId, entry: Arc<Entry>, now: EpochMillis) {
        let gone = self.store(id, entry, now);
        self.log_lost(gone);
        self.sweep(now);
        self.count();
    }

    /// [`NodeCache::insert`] without the sweep, and with the sessions it pushed out returned
    /// for [`NodeCache::log_lost`] (to be logged once no lock is held).
    #[must_use]
    fn store(&self, id: SessionId, entry: Arc<Entry>, now: EpochMillis) -> Vec<Gone> {
        entry.accessed.store(now, Ordering::Relaxed);
        let mut pushed_out = Vec::new();
        self.map
            .insert_with_lifecycle(id.clone(), Arc::clone(&entry), &mut pushed_out);
        pushed_out
            .into_iter()
            // The same copy inserted again (a session taken back from the write queue) stays.
            .filter(|(_, old)| !Arc::ptr_eq(old, &entry))
            .map(|(old_id, old)| {
                // Another copy under the same id is an idle one (a restore of an id that
                // expired, not yet swept): it leaves as an expired one would.
                let how = if old_id == id {
                    "expired in the node cache"
                } else {
                    "evicted from the node cache"
                };
                (old_id, old, how)
            })
            .collect()
    }

    /// Logs, for a persistent app, each of `gone` that held a change not yet saved: that
    /// change is lost with it. Called with no lock of the map (or of the restores) held.
    fn log_lost(&self, gone: impl IntoIterator<Item = Gone>) {
        if !self.persistent {
            return;
        }
        for (id, entry, how) in gone {
            if entry.lock().has_unsaved_change() {
                tracing::error!(app = %self.app, session = %id.short_hash(), "session {how} with a change that could not be saved; that change is lost");
            }
        }
    }

    /// Whether `entry` was idle for longer than the timeout at `now`.
    fn is_idle(&self, entry: &Entry, now: EpochMillis) -> bool {
        now.saturating_sub(entry.accessed.load(Ordering::Relaxed)) > self.idle
    }

    /// Removes the sessions idle for longer than the timeout, if that was last done more than
    /// a tenth of the timeout (at least a second) ago.
    fn sweep(&self, now: EpochMillis) -> bool {
        let every = (self.idle / 10).max(1_000);
        let last = self.swept_at.load(Ordering::Relaxed);
        if now.saturating_sub(last) < every
            || self
                .swept_at
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return false;
        }
        // Collected, and logged once the shards' locks are released.
        let expired = std::cell::RefCell::new(Vec::new());
        self.map.retain(|id, entry| {
            let idle = self.is_idle(entry, now);
            if idle {
                expired.borrow_mut().push((
                    id.clone(),
                    Arc::clone(entry),
                    "expired in the node cache",
                ));
            }
            !idle
        });
        self.log_lost(expired.into_inner());
        // Restores whose callers all went away and whose id never came back.
        self.restoring()
            .retain(|_, restore| restore.upgrade().is_some());
        true
    }

    /// The session cached under `id`, or else the one `restore` reads, cached. Concurrent
    /// calls for one id share one restore and its outcome (an error too); a restore that
    /// finds nothing caches nothing. A restore whose callers are all gone is dropped with its
    /// read: the next call begins its own.
    pub(crate) async fn restore<F>(&self, id: &SessionId, now: EpochMillis, restore: F) -> Restored
    where
        F: Future<Output = Result<Arc<Entry>, Miss>> + Send + 'static,
    {
        let shared = {
            let mut restoring = self.restoring();
            // Checked under the lock: a restore caches its entry before it leaves the map.
            if let Some(entry) = self.get(id, now) {
                return Ok(entry);
            }
            match restoring.get(id).and_then(WeakShared::upgrade) {
                Some(shared) => shared,
                None => {
                    // A panic in the read completes the restore as a miss: a `Shared` polled
                    // into a panic would never wake its other waiters.
                    let shared = std::panic::AssertUnwindSafe(restore)
                        .catch_unwind()
                        .map(|read| match read {
                            Ok(read) => read.map_err(Arc::new),
                            Err(_) => Err(Arc::new(Miss::Panicked)),
                        })
                        .boxed()
                        .shared();
                    // A `Shared` not yet polled is not complete: it downgrades.
                    if let Some(weak) = shared.downgrade() {
                        restoring.insert(id.clone(), weak);
                    }
                    shared
                }
            }
        };
        let restored = shared.clone().await;
        let (restored, gone, stored) = {
            let mut restoring = self.restoring();
            // The first waiter to finish ends the restore; the others find it ended (or
            // another restore of the id begun since, which is left alone).
            let first = restoring
                .get(id)
                .and_then(WeakShared::upgrade)
                .is_some_and(|current| current.ptr_eq(&shared));
            if first {
                restoring.remove(id);
            }
            match restored {
                // A live copy cached meanwhile (a concurrent request's, which may hold changes)
                // is newer than this read: every waiter gets it, and the read is not cached.
                Ok(_) if let Some(cached) = self.get(id, now) => (Ok(cached), Vec::new(), false),
                Ok(entry) if first => {
                    let gone = self.store(id.clone(), Arc::clone(&entry), now);
                    (Ok(entry), gone, true)
                }
                other => (other, Vec::new(), false),
            }
        };
        self.log_lost(gone);
        if self.sweep(now) || stored {
            self.count();
        }
        restored
    }

    /// The restores under way. Every change to the map is one insert or one remove, so a
    /// panic elsewhere cannot leave it inconsistent: a poisoned lock is taken all the same.
    fn restoring(&self) -> std::sync::MutexGuard<'_, HashMap<SessionId, WeakRestore>> {
        self.restoring
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Removes the session cached under `id`.
    pub(crate) fn remove(&self, id: &SessionId) {
        self.map.remove(id);
        self.count();
    }

    /// Removes `entry` if it is still the copy cached under `id`: a concurrent request may
    /// have replaced it already, and that newer copy stays.
    pub(crate) fn remove_if_same(&self, id: &SessionId, entry: &Arc<Entry>) {
        self.map.remove_if(id, |cached| Arc::ptr_eq(cached, entry));
        self.count();
    }

    /// The cached sessions (idle ones included until they are swept), each cloned out of the
    /// map as it is reached: an operator's scan, not a request's.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (SessionId, Arc<Entry>)> + '_ {
        self.map.iter()
    }

    /// The cached sessions not idle beyond the timeout at `now`, as [`NodeCache::iter`].
    pub(crate) fn live(
        &self,
        now: EpochMillis,
    ) -> impl Iterator<Item = (SessionId, Arc<Entry>)> + '_ {
        self.map
            .iter()
            .filter(move |(_, entry)| !self.is_idle(entry, now))
    }

    /// How many sessions the cache holds (idle ones included until they are swept).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::state::State;

    fn entry(id: &SessionId) -> Arc<Entry> {
        Entry::new(State::new(id.clone(), 0))
    }

    #[test]
    fn an_entry_idle_beyond_the_timeout_is_absent_and_swept() {
        let cache = NodeCache::new(
            "app",
            100,
            Duration::from_secs(10),
            true,
            metrics::Gauge::noop(),
        );
        let (a, b) = (SessionId::generate(), SessionId::generate());
        cache.insert(a.clone(), entry(&a), 1_000);
        cache.insert(b.clone(), entry(&b), 1_000);
        // Read at the timeout's edge: still live, and its idle time starts again.
        assert!(cache.get(&a, 11_000).is_some());
        assert!(cache.get(&b, 11_001).is_none());
        // A scan for the live ones (a write-back) skips it before it is swept.
        let live: Vec<SessionId> = cache.live(11_001).map(|(id, _)| id).collect();
        assert_eq!(live, vec![a.clone()]);
        assert!(cache.get(&a, 21_000).is_some());
        // A later insert sweeps the idle one out; the live one stays.
        let c = SessionId::generate();
        cache.insert(c.clone(), entry(&c), 21_000);
        assert_eq!(cache.len(), 2);
        assert!(cache.iter().all(|(id, _)| id != b));
    }

    #[test]
    fn beyond_its_capacity_the_cache_evicts_and_admits_every_new_session() {
        let cache = NodeCache::new(
            "app",
            50,
            Duration::from_secs(3_600),
            false,
            metrics::Gauge::noop(),
        );
        let ids: Vec<SessionId> = (0..500).map(|_| SessionId::generate()).collect();
        for (i, id) in ids.iter().enumerate() {
            cache.insert(id.clone(), entry(id), 1_000 + i as i64);
            // A new session is always admitted (it may be the only copy there is).
            assert!(cache.get(id, 1_000 + i as i64).is_some());
        }
        assert!(cache.len() <= 60, "{} entries", cache.len());
    }

    #[test]
    fn a_session_is_found_by_the_id_a_request_names() {
        let cache = NodeCache::new(
            "app",
            100,
            Duration::from_secs(60),
            true,
            metrics::Gauge::noop(),
        );
        let ids: Vec<SessionId> = (0..64).map(|_| SessionId::generate()).collect();
        for id in &ids {
            cache.insert(id.clone(), entry(id), 0);
        }
        for id in &ids {
            let named = crate::id::CookieId::parse(id.as_cookie_value().as_bytes()).unwrap();
            let found = cache.get(&named, 0).unwrap();
            assert!(found.lock().id == *id);
        }
    }

    #[test]
    fn a_removal_of_a_replaced_copy_keeps_the_newer_one() {
        let cache = NodeCache::new(
            "app",
            100,
            Duration::from_secs(60),
            true,
            metrics::Gauge::noop(),
        );
        let id = SessionId::generate();
        let (old, new) = (entry(&id), entry(&id));
        cache.insert(id.clone(), Arc::clone(&old), 0);
        cache.insert(id.clone(), Arc::clone(&new), 0);
        cache.remove_if_same(&id, &old);
        assert!(Arc::ptr_eq(&cache.get(&id, 0).unwrap(), &new));
        cache.remove_if_same(&id, &new);
        assert!(cache.get(&id, 0).is_none());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_restores_of_one_session_read_it_once_and_share_errors() {
        let cache = Arc::new(NodeCache::new(
            "app",
            100,
            Duration::from_secs(60),
            true,
            metrics::Gauge::noop(),
        ));
        let id = SessionId::generate();
        let reads = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let restore = |fail: bool| {
            let (reads, id) = (Arc::clone(&reads), id.clone());
            async move {
                reads.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(50)).await;
                if fail {
                    Err(Miss::Store(crate::store::Error::Timeout(
                        Duration::from_secs(1),
                    )))
                } else {
                    Ok(entry(&id))
                }
            }
        };
        for fail in [true, false] {
            reads.store(0, Ordering::SeqCst);
            let waiters: Vec<_> = (0..16)
                .map(|_| {
                    let (cache, id, restore) = (Arc::clone(&cache), id.clone(), restore(fail));
                    tokio::spawn(async move { cache.restore(&id, 0, restore).await })
                })
                .collect();
            let mut outcomes = Vec::new();
            for waiter in waiters {
                outcomes.push(waiter.await.unwrap());
            }
            assert_eq!(reads.load(Ordering::SeqCst), 1, "fail={fail}");
            if fail {
                assert!(outcomes.iter().all(Result::is_err));
                assert!(cache.get(&id, 0).is_none());
            } else {
                let cached = cache.get(&id, 0).unwrap();
                assert!(
                    outcomes
                        .iter()
                        .all(|o| Arc::ptr_eq(o.as_ref().unwrap(), &cached))
                );
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_restore_whose_callers_are_gone_or_panicked_is_begun_anew() {
        let cache = Arc::new(NodeCache::new(
            "app",
            100,
            Duration::from_secs(60),
            true,
            metrics::Gauge::noop(),
        ));
        let id = SessionId::generate();
        let reads = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        // A read that never answers, whose only caller goes away: the read is dropped with it.
        let parked = {
            let (cache, id, reads) = (Arc::clone(&cache), id.clone(), Arc::clone(&reads));
            tokio::spawn(async move {
                let read = async move {
                    reads.fetch_add(1, Ordering::SeqCst);
                    std::future::pending::<Result<Arc<Entry>, Miss>>().await
                };
                cache.restore(&id, 0, read).await
            })
        };
        while reads.load(Ordering::SeqCst) == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        parked.abort();
        assert!(parked.await.is_err_and(|e| e.is_cancelled()));
        // A read that panics, with several callers waiting: each is answered (a miss), none
        // hangs, and nobody after them inherits the panic.
        let panicking = (0..4)
            .map(|_| {
                let (cache, id, reads) = (Arc::clone(&cache), id.clone(), Arc::clone(&reads));
                tokio::spawn(async move {
                    let read = async move {
                        reads.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        panic!("a restore that panics");
                    };
                    cache.restore(&id, 0, read).await
                })
            })
            .collect::<Vec<_>>();
        for waiter in panicking {
            // (Within a bound: a waiter left unwoken would hang here.)
            let answered = tokio::time::timeout(Duration::from_secs(10), waiter).await;
            let outcome = answered
                .expect("answered")
                .expect("no panic reaches the caller");
            assert!(matches!(
                outcome.as_ref().map_err(|e| &**e),
                Err(Miss::Panicked)
            ));
        }
        assert_eq!(
            reads.load(Ordering::SeqCst),
            2,
            "the panicking read ran once"
        );
        let fresh = {
            let (id, reads) = (id.clone(), Arc::clone(&reads));
            async move {
                reads.fetch_add(1, Ordering::SeqCst);
                Ok(entry(&id))
            }
        };
        let restored = tokio::time::timeout(Duration::from_secs(10), cache.restore(&id, 0, fresh))
            .await
            .expect("not parked")
            .unwrap();
        assert_eq!(reads.load(Ordering::SeqCst), 3);
        assert!(Arc::ptr_eq(&restored, &cache.get(&id, 0).unwrap()));
    }

    #[tokio::test]
    async fn a_copy_cached_during_a_restore_wins_over_the_read() {
        let cache = Arc::new(NodeCache::new(
            "app",
            100,
            Duration::from_secs(60),
            true,
            metrics::Gauge::noop(),
        ));
        let id = SessionId::generate();
        let (read_copy, live_copy) = (entry(&id), entry(&id));
        let (go, wait) = tokio::sync::oneshot::channel::<()>();
        let restoring = {
            let (cache, id, read_copy) = (Arc::clone(&cache), id.clone(), Arc::clone(&read_copy));
            tokio::spawn(async move {
                let read = async move {
                    let _ = wait.await;
                    Ok(read_copy)
                };
                cache.restore(&id, 0, read).await
            })
        };
        while !cache.restoring().contains_key(&id) {
            tokio::task::yield_now().await;
        }
        // A concurrent request caches its copy (say, one it followed here) while the read runs.
        cache.insert(id.clone(), Arc::clone(&live_copy), 0);
        go.send(()).unwrap();
        let restored = restoring.await.unwrap().unwrap();
        assert!(Arc::ptr_eq(&restored, &live_copy));
        assert!(Arc::ptr_eq(&cache.get(&id, 0).unwrap(), &live_copy));
    }
}
