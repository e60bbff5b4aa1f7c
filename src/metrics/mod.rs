//! Counters and timings of the failover filter, through the `metrics` facade.
//!
//! Nothing is recorded unless the embedding program installs a recorder; the demo server
//! installs a Prometheus one and serves it at `/metrics`. Every series has an `app` label.
//!
//! | name | kind | what |
//! |---|---|---|
//! | `session_cache_hits_total` | counter | requests whose session was in the node cache |
//! | `session_cache_misses_total` | counter | session cookies not in the node cache (restore tried) |
//! | `session_restores_total` | counter | sessions restored from the store (failover restores) |
//! | `session_saves_total` | counter | sessions written to the store |
//! | `session_save_seconds` | histogram | time of one save (encode and store write) |
//! | `session_touches_total` | counter | expiry pushes of read-only sessions |
//! | `session_absent_hits_total` | counter | unknown session ids answered absent without a store read (sync mode: an id the store did not have in the last second) |
//! | `session_rekeys_total` | counter | rows written again under the current key when touched (after a secret rotation) |
//! | `session_written_back_total` | counter | sessions this node queued to write again after the store lost its data (Redis restarted empty) |
//! | `session_verifies_total` | counter | cached sessions checked against their row's version (`session.cache.verify.interval`) |
//! | `session_store_errors_total` | counter | failed store calls, by `op` (load, save, touch, destroy, verify) |
//! | `session_conflicts_total` | counter | refused changes, by `kind` (`attribute`: based on a value another request replaced; `missing`: the session was ended elsewhere; `superseded`: a newer stored state could not be merged) |
//! | `session_cache_entries` | gauge | sessions in the node cache (approximate) |
//! | `session_write_queue_depth` | gauge | writes queued in the write-behind writer |
//! | `session_write_oldest_pending_seconds` | gauge | age of the oldest queued write |
//! | `session_write_batch_size` | histogram | writes per flush |
//! | `session_write_flush_seconds` | histogram | time of one flush |
//! | `session_write_statements_total` | counter | store calls made by the writer |
//! | `session_write_retries_total` | counter | writes put back for retry after a failure (kept writes with backoff; sync saves tried again shortly while their requests wait) |
//! | `session_write_failures_total` | counter | writes that failed (and were retried) |
//! | `session_write_sync_fallbacks_total` | counter | async saves made synchronously (queue full) |
//! | `session_write_rebases_total` | counter | updates that lost their compare-and-set and were merged with the newer stored state |
//! | `session_write_unsure_resolved_total` | counter | writes that failed or timed out, found committed by their retry (not applied again) |
//! | `session_store_regressed_total` | counter (`app`) | sessions found in the store in an older state than this node had committed (the store lost writes: a failover to a lagging replica, a restored backup); logged at WARN, not repaired |
//!
//! | `session_purge_runs_total` / `_rows_total` / `_seconds` | counter / counter / histogram | purge runs, rows deleted, time per run |
//! | `session_purge_skipped_total` / `_failures_total` | counter | runs skipped (another node purging) / failed |
//! | `session_backoffice_refused_total` | counter | backoffice requests refused, by `reason`: `cross-site` (CSRF), `wrong-password` (a password check failed), `unknown-user` (another user name: no check run), `locked-out` (too many failures from the address or for the user), `busy` (every password-check slot taken) |
//!
//! The writer's series have no `app` label: one writer serves every app sharing a store.

/// One application's per-request series, registered once when its layer is built, so the
/// request path does not build label strings or look the series up on every request. (Install
/// the recorder before building layers; the server does.)
#[derive(Clone)]
pub(crate) struct AppMetrics {
    pub(crate) cache_hits: metrics::Counter,
    pub(crate) cache_misses: metrics::Counter,
    pub(crate) restores: metrics::Counter,
    pub(crate) saves: metrics::Counter,
    pub(crate) save_seconds: metrics::Histogram,
    pub(crate) touches: metrics::Counter,
    pub(crate) rekeys: metrics::Counter,
    pub(crate) written_back: metrics::Counter,
    pub(crate) verifies: metrics::Counter,
    pub(crate) absent_hits: metrics::Counter,
    pub(crate) cache_entries: metrics::Gauge,
}

impl AppMetrics {
    pub(crate) fn new(app: &str) -> Self {
        let label = || [("app", app.to_owned())];
        Self {
            cache_hits: metrics::counter!("session_cache_hits_total", &label()),
            cache_misses: metrics::counter!("session_cache_misses_total", &label()),
            restores: metrics::counter!("session_restores_total", &label()),
            saves: metrics::counter!("session_saves_total", &label()),
            save_seconds: metrics::histogram!("session_save_seconds", &label()),
            touches: metrics::counter!("session_touches_total", &label()),
            rekeys: metrics::counter!("session_rekeys_total", &label()),
            written_back: metrics::counter!("session_written_back_total", &label()),
            verifies: metrics::counter!("session_verifies_total", &label()),
            absent_hits: metrics::counter!("session_absent_hits_total", &label()),
            cache_entries: metrics::gauge!("session_cache_entries", &label()),
        }
    }
}

/// A backoffice request refused (`reason`: `cross-site`, `wrong-password`, `unknown-user`,
/// `locked-out`, `busy`).
#[cfg(feature = "backoffice")]
pub(crate) fn backoffice_refused(reason: &'static str) {
    metrics::counter!("session_backoffice_refused_total", "reason" => reason).increment(1);
}

pub(crate) fn store_error(app: &str, op: &'static str) {
    metrics::counter!("session_store_errors_total", "app" => app.to_owned(), "op" => op)
        .increment(1);
}

pub(crate) fn conflict(app: &str, kind: &'static str) {
    metrics::counter!("session_conflicts_total", "app" => app.to_owned(), "kind" => kind)
        .increment(1);
}

#[allow(clippy::cast_precision_loss)] // queue lengths are far below 2^52
pub(crate) fn queue_depth(pending: usize) {
    metrics::gauge!("session_write_queue_depth").set(pending as f64);
}

pub(crate) fn oldest_pending(age: std::time::Duration) {
    metrics::gauge!("session_write_oldest_pending_seconds").set(age.as_secs_f64());
}

#[allow(clippy::cast_precision_loss)]
pub(crate) fn flushed(taken: usize, statements: usize, failed: usize, seconds: f64) {
    metrics::histogram!("session_write_batch_size").record(taken as f64);
    metrics::histogram!("session_write_flush_seconds").record(seconds);
    metrics::counter!("session_write_statements_total").increment(statements as u64);
    metrics::counter!("session_write_failures_total").increment(failed as u64);
}

/// One store read of the rows of `keys` sessions (restores and refreshes; several when they
/// arrived together and `session.restore.batch` is on).
pub(crate) fn restore_read(keys: usize) {
    metrics::counter!("session_restore_reads_total").increment(1);
    metrics::histogram!("session_restore_batch_size").record(keys as f64);
}

pub(crate) fn write_retries(writes: usize) {
    metrics::counter!("session_write_retries_total").increment(writes as u64);
}

#[allow(clippy::cast_precision_loss)]
/// A purge run: `None` if it was skipped (another node purging), else the rows it deleted.
pub(crate) fn purged(deleted: Option<u64>, took: std::time::Duration) {
    let Some(deleted) = deleted else {
        metrics::counter!("session_purge_skipped_total").increment(1);
        return;
    };
    metrics::counter!("session_purge_runs_total").increment(1);
    metrics::counter!("session_purge_rows_total").increment(deleted);
    metrics::histogram!("session_purge_seconds").record(took.as_secs_f64());
}

pub(crate) fn purge_failed() {
    metrics::counter!("session_purge_failures_total").increment(1);
}

pub(crate) fn sync_fallback() {
    metrics::counter!("session_write_sync_fallbacks_total").increment(1);
}

pub(crate) fn rebased() {
    metrics::counter!("session_write_rebases_total").increment(1);
}

pub(crate) fn store_regressed(app: &str) {
    metrics::counter!("session_store_regressed_total", "app" => app.to_owned()).increment(1);
}

pub(crate) fn unsure_resolved() {
    metrics::counter!("session_write_unsure_resolved_total").increment(1);
}
