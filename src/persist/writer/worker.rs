//! The worker: the loop that flushes the queue into the store, and the drain at shutdown.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;
use tokio::time::Instant;

use super::handle::Shared;
use crate::id::SessionKey;

/// What one flush did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FlushReport {
    /// Writes taken from the queue.
    pub taken: usize,
    /// Rows written (inserted or updated).
    pub written: usize,
    /// Saves refused: a newer state in the store, or no row any more.
    pub conflicts: usize,
    /// Deletes done.
    pub deleted: usize,
    /// Writes that failed: back to the queue (flushes; a sync save only while its requests
    /// wait, else dropped), or left to the session's next request (direct writes).
    pub failed: usize,
    /// Store calls made (each one or more statements: one per chunk of a large batch).
    pub statements: usize,
}

/// Which writes a flush takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Only writes that requests wait for.
    Urgent,
    /// Everything that is due.
    All,
}

/// What draining the queue at shutdown achieved.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DrainReport {
    /// Writes stored while draining.
    pub written: usize,
    /// Writes still queued when the drain timeout ran out (lost with the process).
    pub unwritten: usize,
}

/// The worker: flushes the queue into the store.
#[doc(hidden)] // test support (see `WriteBehind::pair`)
pub struct Worker {
    pub(super) shared: Arc<Shared>,
}

impl Worker {
    /// Runs until `shutdown` completes: flushes urgent writes as soon as a flight is free (after
    /// the group-commit window, if one is set), lazy
    /// writes every interval, and failed writes when their backoff has passed, with up to
    /// `concurrency` batches in flight. Waits for the batches in flight before returning; does
    /// not drain (see [`WriteBehind::shutdown`]).
    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()>) {
        let shared = self.shared;
        let config = shared.config.clone();
        let concurrency = config.concurrency.max(1);
        let mut next_interval = Instant::now() + config.interval;
        let mut flights: JoinSet<()> = JoinSet::new();
        tokio::pin!(shutdown);
        loop {
            let next_retry = shared.queue().next_retry();
            let wake = next_retry.map_or(next_interval, |r| r.min(next_interval));
            let room = flights.len() < concurrency;
            tokio::select! {
                biased;
                () = &mut shutdown => break,
                Some(_) = flights.join_next(), if !flights.is_empty() => {
                    // Writes that arrived for sessions that were in flight can go now.
                    if shared.queue().urgent_ready() {
                        shared.urgent.notify_one();
                    }
                }
                () = tokio::time::sleep_until(wake), if room => {
                    let interval_due = Instant::now() >= next_interval;
                    if interval_due {
                        next_interval = Instant::now() + config.interval;
                    }
                    let (shared, until) = (Arc::clone(&shared), next_interval);
                    flights.spawn(async move {
                        // Keep flushing until empty, but not past the next interval.
                        loop {
                            let report = shared.flush(Scope::All).await;
                            if !interval_due || report.taken < config.max_items || report.failed > 0 || Instant::now() >= until {
                                break;
                            }
                        }
                    });
                }
                () = shared.all_now.notified() => {
                    // The next round of the interval loop goes at once.
                    next_interval = Instant::now();
                }
                () = shared.urgent.notified(), if room => {
                    // The window is waited for in the flight, not here: the loop stays free to
                    // start other flights.
                    let (shared, window) = (Arc::clone(&shared), config.group_commit_window);
                    flights.spawn(async move {
                        if !window.is_zero() {
                            tokio::time::sleep(window).await;
                        }
                        shared.flush(Scope::Urgent).await;
                    });
                }
            }
        }
        while flights.join_next().await.is_some() {}
    }

    /// Takes up to `max_items` due writes (urgent first) that are not in flight, and stores
    /// them: deletes in one call, new sessions in one `set_many`, existing ones in one
    /// `update_many`.
    pub async fn flush_once(&self, scope: Scope) -> FlushReport {
        self.shared.flush(scope).await
    }

    pub(super) async fn drain(self, timeout: Duration) -> DrainReport {
        let deadline = Instant::now() + timeout;
        let mut report = DrainReport::default();
        loop {
            // Retries are due at once while draining: there is no later.
            {
                let mut queue = self.shared.queue();
                let waiting: Vec<SessionKey> = queue.retry.keys().cloned().collect();
                for key in waiting {
                    if let Some(mut pending) = queue.retry.shift_remove(&key) {
                        pending.not_before = None;
                        queue.put(key, pending, Instant::now());
                    }
                }
            }
            let (queued, flying) = {
                let queue = self.shared.queue();
                (queue.len(), queue.in_flight.len())
            };
            if (queued == 0 && flying == 0) || Instant::now() >= deadline {
                break;
            }
            if queued == 0 {
                // Only batches of the stopped loop are in flight: let them land.
                tokio::time::sleep(Duration::from_millis(5)).await;
                continue;
            }
            // Not cut by the deadline: a dropped flush would lose its batch. Each store call is
            // bounded by the store timeout instead.
            let flush = self.shared.flush(Scope::All).await;
            report.written += flush.written + flush.deleted + flush.conflicts;
            if flush.failed > 0 {
                let pause = self
                    .shared
                    .config
                    .retry_delay
                    .min(Duration::from_millis(500));
                tokio::time::sleep_until((Instant::now() + pause).min(deadline)).await;
            } else if flush.taken == 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        report.unwritten = {
            let queue = self.shared.queue();
            queue.len() + queue.in_flight.len()
        };
        if report.unwritten == 0 {
            tracing::info!(written = report.written, "session writer drained");
        } else {
            tracing::error!(
                written = report.written,
                unwritten = report.unwritten,
                "session writer could not write everything before the drain timeout; the rest is lost"
            );
        }
        report
    }
}
