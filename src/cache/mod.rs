//! The node cache: the Commerce "session cache region".
//!
//! One bounded cache per application on each node, holding the live sessions that sticky load
//! balancing sends here. An entry expires after the session timeout without access (idle expiry),
//! and the least useful entries are evicted beyond `session.cache.max.entries`. An evicted or
//! expired session of a persistent app is restored from the store on its next request; one of a
//! memory-only app is gone.

use std::sync::Arc;
use std::time::Duration;

use crate::id::SessionId;
use crate::session::state::Entry;

/// Live sessions of one application on this node, by id.
///
/// Hashed with foldhash (seeded per process), not SipHash: every sticky request hashes its id,
/// and only ids this node generated or restored from the store are ever inserted, so no
/// client can fill the table with colliding keys.
pub(crate) type NodeCache = moka::future::Cache<SessionId, Arc<Entry>, foldhash::fast::RandomState>;

/// A cache of at most `max_entries` sessions, each expiring after `idle` without access.
///
/// For a persistent app (`persistent`), an entry evicted while it holds a change that failed to
/// save is logged at ERROR: that change is lost.
pub(crate) fn new(app: &str, max_entries: u64, idle: Duration, persistent: bool) -> NodeCache {
    let app = app.to_owned();
    moka::future::Cache::builder()
        .max_capacity(max_entries)
        .time_to_idle(idle)
        .eviction_listener(move |id: Arc<SessionId>, entry: Arc<Entry>, cause| {
            let state = entry.lock();
            if persistent && state.has_unsaved_change() && cause.was_evicted() {
                tracing::error!(%app, session = %id.short_hash(), ?cause, "session evicted from the node cache with a change that could not be saved; that change is lost");
            }
        })
        .build_with_hasher(foldhash::fast::RandomState::default())
}
