//! The write-behind writer: one queue of pending session writes in front of one worker task.
//!
//! Shaped like tower's `buffer`: a cheap-clone handle ([`WriteBehind`]) that requests enqueue
//! into, and a worker ([`Worker`]) whose one testable step is [`Worker::flush_once`] and whose
//! loop is [`Worker::run_until_stopped`]. [`WriteBehind::new`] spawns the worker on first use;
//! [`WriteBehind::pair`] hands it to the caller (tests drive it step by step).
//!
//! - **Coalescing**: the queue holds one pending write per session; a newer state replaces an
//!   older one in place, so memory is bounded by sessions, not by writes.
//! - **Invalidation wins**: a pending delete is never replaced by a save of the same session,
//!   and the single worker writes batches in order, so a delete is never overtaken.
//! - **Urgent writes** (sync-mode saves with group commit, and every delete) carry waiters: the
//!   worker flushes them after a short window, in one batch with whatever else is urgent, and
//!   answers each waiter when its own batch has committed.
//! - **Lazy writes** (async mode) are flushed every interval, `max_items` per round trip,
//!   repeating until the queue is empty or the next interval is due.
//! - **Failures** keep a write someone was told would be made (async saves, deletes,
//!   write-backs): it goes back to the queue with exponential backoff and jitter, unless a newer
//!   state of the session arrived meanwhile, which replaces it. A sync save is tried again
//!   shortly while its requests wait, then dropped: they are refused.

//!
//! The parts: [`queue`](self) holds pending writes and the merge rules, `handle` is what
//! requests call ([`WriteBehind`]), `worker` the loop and the drain ([`Worker`]), `flush` one
//! batch's store calls, outcomes and retries.

mod flush;
mod handle;
mod queue;
#[cfg(test)]
mod tests;
mod worker;

use std::time::Duration;

pub use handle::WriteBehind;

pub(crate) use queue::{Folded, Op, Outcome};
pub use worker::{DrainReport, FlushReport, Scope, Worker};

/// How the writer batches and retries (`spring.session.save.async.*`, `session.save.*`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WriterConfig {
    /// Time between flushes of lazy (async) writes. Default 5 s.
    pub interval: Duration,
    /// Lazy writes the queue holds; beyond it a request saves synchronously. Default 10,000.
    pub queue_size: usize,
    /// Writes in one batch (one round trip per statement kind). Default 2,000.
    pub max_items: usize,
    /// How long a batch of urgent writes waits for others before it goes. Default 0: it goes
    /// as soon as a flight is free, holding every urgent write that arrived while the flights
    /// were busy (group commit as PostgreSQL's WAL does it: no wait when there is nothing to
    /// group).
    pub group_commit_window: Duration,
    /// The first retry delay after a failed batch. Default 1 s.
    pub retry_delay: Duration,
    /// Each further retry waits this many times longer. Default 2.
    pub retry_multiplier: u32,
    /// The longest retry delay. Default 10 s.
    pub retry_max_delay: Duration,
    /// The longest one store call may take (`session.store.timeout`). Default 5 s.
    pub store_timeout: Duration,
    /// Batches written at the same time (`session.save.concurrency`). Default 4: a database
    /// commits concurrent transactions with one log flush, so a few batches in flight beat one.
    pub concurrency: usize,
}

impl Default for WriterConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(5),
            queue_size: 10_000,
            max_items: 2_000,
            group_commit_window: Duration::ZERO,
            retry_delay: Duration::from_secs(1),
            retry_multiplier: 2,
            retry_max_delay: Duration::from_secs(10),
            store_timeout: Duration::from_secs(5),
            concurrency: 4,
        }
    }
}
