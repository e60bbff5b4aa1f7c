//! Fresh reads pushed by the database: what an application does with the changes a store pushes
//! ([`crate::store::SessionStore::subscribe`], PostgreSQL `LISTEN/NOTIFY`).
//!
//! While the store pushes, a cached copy is not checked by version on every
//! `session.cache.verify.interval`: a pushed change of its row marks it stale (the next request
//! refreshes it from the newer row) and a pushed delete ends it, within the notification's
//! delay. Copies last checked before listening (re)started, or before the receiver fell behind,
//! are checked once by version. While the listener is down the interval applies again.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use tokio::sync::broadcast::Receiver;
use tokio::sync::broadcast::error::RecvError;

use crate::id::{SessionId, SessionKey};
use crate::session::state::Entry;
use crate::store::{EpochMillis, Pushed, SessionStore, now_millis};

/// Not listening: `since` holds this.
const NOT_LISTENING: i64 = -1;
/// A pushed delete, as a version.
const DELETED: i64 = -1;
/// How long a pushed change is remembered for a copy cached just after it arrived (a restore
/// that read the row before the change, and indexed its entry after it).
const REMEMBERED: Duration = Duration::from_secs(30);
/// Pushed changes remembered at most.
const REMEMBERED_MAX: u64 = 100_000;

/// One application's pushed invalidation.
pub(crate) struct Push {
    inner: Arc<Inner>,
    /// Whether the store pushes (decided on the first request).
    started: OnceLock<bool>,
}

struct Inner {
    /// When listening last (re)started, epoch ms; [`NOT_LISTENING`] while it is down.
    since: AtomicI64,
    /// The cached entries by store key (pushes name keys, the cache holds ids).
    by_key: moka::sync::Cache<SessionKey, Weak<Entry>>,
    /// The latest pushed version of each key lately ([`DELETED`]: deleted).
    recent: moka::sync::Cache<SessionKey, i64>,
}

impl Push {
    /// For a cache of `max_entries` sessions expiring after `idle` without access.
    pub(crate) fn new(max_entries: u64, idle: Duration) -> Self {
        Self {
            inner: Arc::new(Inner {
                since: AtomicI64::new(NOT_LISTENING),
                by_key: moka::sync::Cache::builder()
                    .max_capacity(max_entries)
                    .time_to_idle(idle)
                    .build(),
                recent: moka::sync::Cache::builder()
                    .max_capacity(REMEMBERED_MAX)
                    .time_to_live(REMEMBERED)
                    .build(),
            }),
            started: OnceLock::new(),
        }
    }

    /// Subscribes to `store`'s pushes once, if it pushes (from a request: in its runtime).
    pub(crate) fn start(&self, store: &dyn SessionStore) {
        self.started.get_or_init(|| match store.subscribe() {
            Some(receiver) => {
                tokio::spawn(watch(Arc::downgrade(&self.inner), receiver));
                true
            }
            None => false,
        });
    }

    /// Cached copies last known current at or before this instant must be checked by version
    /// before they are served: `every` ms ago without pushes, since listening (re)started with.
    pub(crate) fn check_before(&self, now: EpochMillis, every: EpochMillis) -> EpochMillis {
        match self.inner.since.load(Ordering::Relaxed) {
            NOT_LISTENING => now.saturating_sub(every),
            since => since,
        }
    }

    /// A session entered this node's cache under `key`: pushes of its row reach it from now on,
    /// and one that arrived while it was being restored applies at once.
    pub(crate) fn index(&self, id: &SessionId, entry: &Arc<Entry>) {
        if self.started.get() != Some(&true) {
            return;
        }
        let key = id.store_key();
        // Indexed before the remembered pushes are read (a push stores them before it reads
        // the index): a push racing this call is applied by one side or both.
        self.inner.by_key.insert(key.clone(), Arc::downgrade(entry));
        if let Some(version) = self.inner.recent.get(&key) {
            apply(entry, version);
        }
    }
}

impl Inner {
    fn changed(&self, key: SessionKey, version: i64) {
        self.recent.insert(key.clone(), version);
        if let Some(entry) = self.by_key.get(&key).and_then(|weak| weak.upgrade()) {
            apply(&entry, version);
        }
    }
}

/// A pushed change of an entry's row: a settled copy (nothing of its own unsaved) older than
/// it is marked stale, one whose row was deleted is ended. A copy with changes of its own
/// merges with the newer row when it writes (or learns the row is gone).
fn apply(entry: &Entry, version: i64) {
    let mut state = entry.lock();
    // Stale copies too: a newer version pushed while one is being refreshed keeps it stale.
    if !state.is_settled_if_current() {
        return;
    }
    if version == DELETED {
        tracing::info!(session = %state.id.short_hash(), "session was ended elsewhere (pushed); dropped from this node");
        state.end();
    } else if version > state.base() {
        state.mark_stale(version);
    }
}

/// Applies the store's pushes until the application is gone.
async fn watch(inner: Weak<Inner>, mut receiver: Receiver<Pushed>) {
    loop {
        let pushed = receiver.recv().await;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        match pushed {
            Ok(Pushed::Listening) => inner.since.store(now_millis(), Ordering::Relaxed),
            Ok(Pushed::Lost) => inner.since.store(NOT_LISTENING, Ordering::Relaxed),
            Ok(Pushed::Written { key, version }) => inner.changed(key, version),
            Ok(Pushed::Deleted(key)) => inner.changed(key, DELETED),
            // Changes were missed: every copy cached until now is checked once.
            Err(RecvError::Lagged(missed)) => {
                tracing::warn!(
                    missed,
                    "fell behind the pushed session changes; cached sessions are checked by version once"
                );
                inner.since.store(now_millis(), Ordering::Relaxed);
            }
            Err(RecvError::Closed) => {
                inner.since.store(NOT_LISTENING, Ordering::Relaxed);
                return;
            }
        }
    }
}
