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
//! - **Failures** keep the write: it goes back to the queue with exponential backoff and
//!   jitter, unless a newer state of the session arrived meanwhile, which replaces it.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::Duration;

use indexmap::IndexMap;
use tokio::sync::{Notify, oneshot};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::session::SessionKey;
use crate::session::state::Entry;
use crate::store::{self, Record, SessionStore, Update};

/// How the writer batches and retries (`spring.session.save.async.*`, `session.save.*`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WriterConfig {
    /// Time between flushes of lazy (async) writes. Default 5 s.
    pub interval: Duration,
    /// Lazy writes the queue holds; beyond it a request saves synchronously. Default 10,000.
    pub queue_size: usize,
    /// Writes in one batch (one round trip per statement kind). Default 2,000.
    pub max_items: usize,
    /// How long an urgent write waits for others to join its batch. Default 2 ms.
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
            group_commit_window: Duration::from_millis(2),
            retry_delay: Duration::from_secs(1),
            retry_multiplier: 2,
            retry_max_delay: Duration::from_secs(10),
            store_timeout: Duration::from_secs(5),
            concurrency: 4,
        }
    }
}

/// A write to make.
#[derive(Clone, Debug)]
#[allow(clippy::large_enum_variant)] // nearly every op is a save; boxing would only add a hop
pub(crate) enum Op {
    /// Write this state; insert if `new` (the store has no row yet), else update only.
    Save { record: Record, new: bool },
    /// Remove the row.
    Delete,
}

/// What became of a write, as told to a waiting request.
#[derive(Clone, Debug)]
pub(crate) enum Outcome {
    /// Committed (or, for a delete, done).
    Stored(Update),
    /// The attempt failed; the write stays queued and is retried.
    Failed(Arc<store::Error>),
}

/// The enqueue was refused: the lazy queue is full. The caller saves synchronously.
#[derive(Debug)]
pub(crate) struct QueueFull;

/// Encodes a folded change as the record of its queued key.
pub(crate) type EncodeFolded = dyn Fn() -> Option<Record> + Send + Sync;

/// A later change of a session folded into its queued async write, encoded only when the write
/// is made: the state the request that made it acknowledged, not whatever the entry holds then.
#[derive(Clone)]
pub(crate) struct Folded {
    /// The version of that state.
    pub(crate) version: i64,
    /// Its record; `None` if it cannot be encoded (logged where it fails).
    pub(crate) encode: Arc<EncodeFolded>,
}

impl Folded {
    /// Makes `record` the folded state if that is newer. `false` if the folded state could not
    /// be encoded (or its encoding panicked): `record` stands, and the caller must keep the
    /// change for the session's next request.
    fn newest(&self, record: &mut Record) -> bool {
        if self.version <= record.meta.version {
            return true;
        }
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (self.encode)())) {
            Ok(Some(fresh)) => {
                *record = fresh;
                true
            }
            Ok(None) => false,
            Err(_) => {
                tracing::error!(
                    session = %record.meta.key.short_hash(),
                    "encoding the session panicked; its older queued state is written and the change is kept in memory"
                );
                false
            }
        }
    }
}

/// The newer of two folded changes.
fn newer(a: Option<Folded>, b: Option<Folded>) -> Option<Folded> {
    match (a, b) {
        (Some(a), Some(b)) => Some(if a.version >= b.version { a } else { b }),
        (a, b) => a.or(b),
    }
}

struct Pending {
    op: Op,
    /// The session's node entry, told what became of the write.
    entry: Weak<Entry>,
    /// A later change folded into this write without being encoded yet (async mode).
    folded: Option<Folded>,
    waiters: Vec<oneshot::Sender<Outcome>>,
    /// When the oldest state merged into this one was queued.
    since: Instant,
    attempts: u32,
    /// Retry not before this instant.
    not_before: Option<Instant>,
}

#[derive(Default)]
struct Queue {
    /// Sessions this writer deleted recently, and when: a save of one of them arriving late
    /// (its request encoded it before the logout) is refused, not inserted. Pruned by age.
    deleted: HashMap<SessionKey, Instant>,
    /// Sessions in a batch being written now: not taken into another batch until it is done,
    /// so the writes of one session are stored in order.
    in_flight: HashSet<SessionKey>,
    /// Writes someone waits for.
    urgent: IndexMap<SessionKey, Pending>,
    /// Async writes, flushed every interval.
    lazy: IndexMap<SessionKey, Pending>,
    /// Failed writes waiting for their backoff.
    retry: IndexMap<SessionKey, Pending>,
}

impl Queue {
    fn len(&self) -> usize {
        self.urgent.len() + self.lazy.len() + self.retry.len()
    }

    fn take(&mut self, key: &SessionKey) -> Option<Pending> {
        self.urgent
            .shift_remove(key)
            .or_else(|| self.lazy.shift_remove(key))
            .or_else(|| self.retry.shift_remove(key))
    }

    fn find(&self, key: &SessionKey) -> Option<&Pending> {
        self.urgent
            .get(key)
            .or_else(|| self.lazy.get(key))
            .or_else(|| self.retry.get(key))
    }

    fn put(&mut self, key: SessionKey, pending: Pending, now: Instant) {
        if pending.not_before.is_some_and(|t| t > now) {
            self.retry.insert(key, pending);
        } else if pending.waiters.is_empty() {
            self.lazy.insert(key, pending);
        } else {
            self.urgent.insert(key, pending);
        }
    }

    /// Moves retries whose backoff has passed back to the urgent or lazy queue.
    fn release_due(&mut self, now: Instant) {
        let due: Vec<SessionKey> = self
            .retry
            .iter()
            .filter(|(_, p)| p.not_before.is_none_or(|t| t <= now))
            .map(|(k, _)| k.clone())
            .collect();
        for key in due {
            if let Some(pending) = self.retry.shift_remove(&key) {
                let pending = Pending {
                    not_before: None,
                    ..pending
                };
                self.put(key, pending, now);
            }
        }
    }

    /// Takes up to `max` writes that are not in flight (urgent first, then lazy if `All`), and
    /// marks them in flight.
    fn take_batch(&mut self, scope: Scope, max: usize) -> Vec<(SessionKey, Pending)> {
        let mut batch = Vec::new();
        let queues: &mut [&mut IndexMap<SessionKey, Pending>] = match scope {
            Scope::Urgent => &mut [&mut self.urgent],
            Scope::All => &mut [&mut self.urgent, &mut self.lazy],
        };
        for queue in queues.iter_mut() {
            if batch.len() >= max {
                break;
            }
            let keys: Vec<SessionKey> = queue
                .keys()
                .filter(|k| !self.in_flight.contains(*k))
                .take(max - batch.len())
                .cloned()
                .collect();
            for key in keys {
                if let Some(pending) = queue.shift_remove(&key) {
                    self.in_flight.insert(key.clone());
                    batch.push((key, pending));
                }
            }
        }
        batch
    }

    /// Urgent writes that could be taken now.
    fn urgent_ready(&self) -> bool {
        self.urgent.keys().any(|k| !self.in_flight.contains(k))
    }

    fn next_retry(&self) -> Option<Instant> {
        self.retry.values().filter_map(|p| p.not_before).min()
    }

    fn oldest(&self) -> Option<Instant> {
        [&self.urgent, &self.lazy, &self.retry]
            .into_iter()
            .filter_map(|q| q.values().map(|p| p.since).min())
            .min()
    }
}

/// Merges a new write into the pending one of the same session.
fn merge(old: Pending, mut new: Pending) -> Pending {
    new.since = old.since;
    new.folded = newer(old.folded.clone(), new.folded.take());
    new.attempts = old.attempts;
    new.not_before = old.not_before;
    let mut waiters = old.waiters;
    match (&old.op, &mut new.op) {
        // Invalidation wins: a later save of an ended session is not written, and whoever waits
        // for it learns that the session is gone.
        (Op::Delete, Op::Save { .. }) => {
            for waiter in new.waiters.drain(..) {
                let _ = waiter.send(Outcome::Stored(Update::Missing));
            }
            return Pending { waiters, ..old };
        }
        (
            Op::Save {
                record: old_record,
                new: was_new,
            },
            Op::Save {
                record: new_record,
                new: is_new,
            },
        ) => {
            // A session new to the store stays an insert until that insert has happened.
            *is_new |= *was_new;
            // Requests of one session encode and enqueue in their own tasks, so states can
            // arrive out of order: the higher version is the newer state.
            if old_record.meta.version > new_record.meta.version {
                *new_record = old_record.clone();
            }
        }
        _ => {}
    }
    waiters.append(&mut new.waiters);
    new.waiters = waiters;
    new
}

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
    /// Writes that failed and went back to the queue.
    pub failed: usize,
    /// Store calls made (each one statement, or one transaction on SQLite).
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

struct Shared {
    store: Arc<dyn SessionStore>,
    config: WriterConfig,
    /// The queue. A std mutex: every section is a few map operations, never held across
    /// `.await`.
    queue: Mutex<Queue>,
    /// Wakes the worker for urgent writes.
    urgent: Notify,
    /// Stops the worker's loop (the drain is then run by whoever stopped it).
    stop: Notify,
    /// The worker task, started on first use by [`WriteBehind::new`] handles.
    started: OnceLock<()>,
    /// Whether this handle spawns its own worker.
    autostart: bool,
    /// The last flush that reached the store failed: urgent writes then do not wait (they would
    /// only wait for the store timeout) but are queued for the next retry at once.
    failing: AtomicBool,
}

impl Shared {
    fn queue(&self) -> MutexGuard<'_, Queue> {
        // Queue operations leave it consistent before anything that could panic.
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The handle requests enqueue writes into. Cheap to clone; all clones share one queue.
#[derive(Clone)]
pub struct WriteBehind {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for WriteBehind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteBehind")
            .field("config", &self.shared.config)
            .field("pending", &self.shared.queue().len())
            .finish()
    }
}

/// The worker: flushes the queue into the store.
pub struct Worker {
    shared: Arc<Shared>,
}

impl WriteBehind {
    /// A writer for `store` whose worker task is spawned on the first enqueue.
    pub fn new(store: Arc<dyn SessionStore>, config: WriterConfig) -> Self {
        Self::build(store, config, true)
    }

    /// A writer and its worker, not spawned: run [`Worker::run_until_stopped`] yourself, or
    /// call [`Worker::flush_once`] step by step.
    pub fn pair(store: Arc<dyn SessionStore>, config: WriterConfig) -> (Self, Worker) {
        let handle = Self::build(store, config, false);
        let worker = Worker {
            shared: Arc::clone(&handle.shared),
        };
        (handle, worker)
    }

    fn build(store: Arc<dyn SessionStore>, config: WriterConfig, autostart: bool) -> Self {
        Self {
            shared: Arc::new(Shared {
                store,
                config,
                queue: Mutex::default(),
                urgent: Notify::new(),
                stop: Notify::new(),
                started: OnceLock::new(),
                autostart,
                failing: AtomicBool::new(false),
            }),
        }
    }

    fn ensure_started(&self) {
        if self.shared.autostart {
            self.shared.started.get_or_init(|| {
                let worker = Worker {
                    shared: Arc::clone(&self.shared),
                };
                tokio::spawn(async move {
                    let stop = Arc::clone(&worker.shared);
                    worker.run_until_stopped(stop.stop.notified()).await;
                });
            });
        }
    }

    /// Queues an async write. `Err(QueueFull)` if the session has nothing pending and the queue
    /// is full: the caller then saves synchronously.
    pub(crate) fn enqueue(
        &self,
        key: SessionKey,
        op: Op,
        entry: Weak<Entry>,
    ) -> Result<(), QueueFull> {
        self.ensure_started();
        let now = Instant::now();
        let mut queue = self.shared.queue();
        if queue.find(&key).is_none() && queue.len() >= self.shared.config.queue_size {
            return Err(QueueFull);
        }
        self.insert(&mut queue, key, op, entry, None, now);
        crate::metrics::queue_depth(queue.len());
        Ok(())
    }

    /// Queues a write someone waits for; the answer comes when its batch has committed.
    pub(crate) fn enqueue_and_wait(
        &self,
        key: SessionKey,
        op: Op,
        entry: Weak<Entry>,
    ) -> impl Future<Output = Outcome> + Send + 'static {
        self.ensure_started();
        let (tx, rx) = oneshot::channel();
        let failing = self.shared.failing.load(Ordering::Relaxed);
        let mut full = false;
        {
            let now = Instant::now();
            let mut queue = self.shared.queue();
            // Bounded like the async queue (twice over, for the urgent writes on top): beyond it
            // the caller keeps the change in memory instead.
            if queue.find(&key).is_none()
                && queue.len() >= self.shared.config.queue_size.saturating_mul(2)
            {
                full = true;
            } else if failing {
                // The store is failing: queue the write for the next retry and answer at once.
                let not_before = queue
                    .next_retry()
                    .unwrap_or(now + self.shared.config.retry_delay);
                self.insert(&mut queue, key.clone(), op, entry, None, now);
                if let Some(mut pending) = queue.take(&key) {
                    pending.not_before = Some(not_before);
                    queue.put(key, pending, now);
                }
            } else {
                self.insert(&mut queue, key, op, entry, Some(tx), now);
            }
            crate::metrics::queue_depth(queue.len());
        }
        if !failing && !full {
            self.shared.urgent.notify_one();
        }
        async move {
            if full {
                return Outcome::Failed(Arc::new(store::Error::Backend(
                    "the session write queue is full; the change is kept in memory".into(),
                )));
            }
            if failing {
                return Outcome::Failed(Arc::new(store::Error::Backend(
                    "the session store is failing; the write is queued for retry".into(),
                )));
            }
            rx.await.unwrap_or_else(|_| {
                Outcome::Failed(Arc::new(store::Error::Backend(
                    "the session writer stopped before this write was made".into(),
                )))
            })
        }
    }

    fn insert(
        &self,
        queue: &mut Queue,
        key: SessionKey,
        op: Op,
        entry: Weak<Entry>,
        waiter: Option<oneshot::Sender<Outcome>>,
        now: Instant,
    ) {
        // A save of a session that was ended (here, or by a delete this writer already made) is
        // never written: it would bring the session back.
        let ended = entry.upgrade().is_some_and(|e| e.lock().invalidated);
        if matches!(op, Op::Save { .. }) && (ended || queue.deleted.contains_key(&key)) {
            if let Some(waiter) = waiter {
                let _ = waiter.send(Outcome::Stored(Update::Missing));
            }
            return;
        }
        let urgent = waiter.is_some();
        let pending = Pending {
            op,
            entry,
            folded: None,
            waiters: waiter.into_iter().collect(),
            since: now,
            attempts: 0,
            not_before: None,
        };
        let mut pending = match queue.take(&key) {
            Some(old) => merge(old, pending),
            None => pending,
        };
        // Someone waits and the store is healthy: do not park them behind an old backoff.
        if urgent && !self.shared.failing.load(Ordering::Relaxed) {
            pending.not_before = None;
        }
        queue.put(key, pending, now);
    }

    /// The newest state queued for `key`, if any, and whether its row exists yet:
    /// `Some(None)` if the session is queued for deletion or was deleted lately. A restore on
    /// this node must see it, not the older row in the store.
    pub(crate) fn pending(&self, key: &SessionKey) -> Option<Option<(Record, bool)>> {
        let (found, folded) = {
            let queue = self.shared.queue();
            if queue.deleted.contains_key(key) {
                return Some(None);
            }
            let pending = queue.find(key)?;
            let found = match &pending.op {
                Op::Save { record, new } => Some((record.clone(), !new)),
                Op::Delete => None,
            };
            (found, pending.folded.clone())
        };
        // Encoded outside the queue's lock.
        Some(found.map(|(mut record, exists)| {
            if let Some(folded) = folded {
                folded.newest(&mut record);
            }
            (record, exists)
        }))
    }

    /// Folds a later change of `key` (made on `entry`) into its queued async write without
    /// encoding it now: `true` if there was such a write not yet taken for writing; it will
    /// encode the newest folded change when it is made. `false`: the caller encodes and
    /// enqueues as usual.
    pub(crate) fn fold(&self, key: &SessionKey, entry: &Arc<Entry>, folded: Folded) -> bool {
        let mut queue = self.shared.queue();
        match queue.lazy.get_mut(key) {
            Some(pending) if matches!(pending.op, Op::Save { .. }) => {
                if pending
                    .folded
                    .as_ref()
                    .is_none_or(|f| f.version < folded.version)
                {
                    pending.folded = Some(folded);
                    // Told what became of the write: the entry whose state it carries.
                    pending.entry = Arc::downgrade(entry);
                }
                true
            }
            _ => false,
        }
    }

    /// Writes queued and not yet stored.
    pub fn pending_len(&self) -> usize {
        self.shared.queue().len()
    }

    /// Stops the worker and writes what is queued, for at most `timeout`; logs and returns what
    /// was and was not written.
    pub async fn shutdown(&self, timeout: Duration) -> DrainReport {
        self.shared.stop.notify_one();
        let worker = Worker {
            shared: Arc::clone(&self.shared),
        };
        worker.drain(timeout).await
    }
}

impl Worker {
    /// Runs until `shutdown` completes: flushes urgent writes after the group-commit window, lazy
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

    async fn drain(self, timeout: Duration) -> DrainReport {
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

impl Shared {
    async fn flush(self: &Arc<Self>, scope: Scope) -> FlushReport {
        let now = Instant::now();
        let batch = {
            let mut queue = self.queue();
            queue.release_due(now);
            let batch = queue.take_batch(scope, self.config.max_items);
            if let Some(oldest) = queue.oldest() {
                crate::metrics::oldest_pending(now.saturating_duration_since(oldest));
            }
            batch
        };
        // Whatever happens to this future (a panic in a store, a drop), the sessions of this
        // batch leave the in-flight set, so their later writes are not blocked for good.
        let _flight = Flight {
            shared: self,
            keys: batch.iter().map(|(k, _)| k.clone()).collect(),
        };
        let report = self.write(batch).await;
        crate::metrics::queue_depth(self.queue().len());
        report
    }

    async fn write(&self, mut batch: Vec<(SessionKey, Pending)>) -> FlushReport {
        // Folded changes are encoded now, once per session and batch, outside the queue's lock.
        for (_, pending) in &mut batch {
            if let (Some(folded), Op::Save { record, .. }) = (&pending.folded, &mut pending.op)
                && !folded.newest(record)
                && let Some(entry) = pending.entry.upgrade()
            {
                // Not encodable now: the session's next request saves it again.
                entry.lock().dirty = true;
            }
        }
        let mut report = FlushReport {
            taken: batch.len(),
            ..FlushReport::default()
        };
        if batch.is_empty() {
            return report;
        }
        let started = std::time::Instant::now();
        let (mut deletes, mut inserts, mut updates) = (Vec::new(), Vec::new(), Vec::new());
        {
            let queue = self.queue();
            for (key, pending) in batch {
                let ended = pending
                    .entry
                    .upgrade()
                    .is_some_and(|e| e.lock().invalidated)
                    || queue.deleted.contains_key(&key);
                match &pending.op {
                    Op::Delete => deletes.push((key, pending)),
                    // Ended since it was queued: writing it would bring it back.
                    Op::Save { .. } if ended => {
                        report.conflicts += 1;
                        resolve(pending, Update::Missing);
                    }
                    Op::Save { new: true, .. } => inserts.push((key, pending)),
                    Op::Save { new: false, .. } => updates.push((key, pending)),
                }
            }
        }
        // Saves before deletes: a rotation's new row lands before its old row goes.
        if !inserts.is_empty() {
            report.statements += 1;
            let records: Vec<Record> = inserts.iter().map(|(_, p)| record_of(p)).collect();
            match self.bounded(self.store.set_many(&records)).await {
                Ok(()) => {
                    report.written += inserts.len();
                    for (_, pending) in inserts {
                        resolve(pending, Update::Written);
                    }
                }
                Err(error) => Box::pin(self.failed(inserts, error, &mut report)).await,
            }
        }
        if !updates.is_empty() {
            report.statements += 1;
            let records: Vec<Record> = updates.iter().map(|(_, p)| record_of(p)).collect();
            match self.bounded(self.store.update_many(&records)).await {
                Ok(outcomes) if outcomes.len() == updates.len() => {
                    for ((_, pending), outcome) in updates.into_iter().zip(outcomes) {
                        if outcome == Update::Written {
                            report.written += 1;
                        } else {
                            report.conflicts += 1;
                        }
                        resolve(pending, outcome);
                    }
                }
                Ok(outcomes) => {
                    let error = store::Error::Backend(
                        format!(
                            "update_many answered {} outcomes for {} records",
                            outcomes.len(),
                            updates.len()
                        )
                        .into(),
                    );
                    Box::pin(self.failed(updates, error, &mut report)).await;
                }
                Err(error) => Box::pin(self.failed(updates, error, &mut report)).await,
            }
        }
        if !deletes.is_empty() {
            report.statements += 1;
            let keys: Vec<SessionKey> = deletes.iter().map(|(k, _)| k.clone()).collect();
            match self.bounded(self.store.destroy_many(&keys)).await {
                Ok(_) => {
                    report.deleted += deletes.len();
                    self.remember_deleted(&keys);
                    for (_, pending) in deletes {
                        resolve(pending, Update::Written);
                    }
                }
                Err(error) => Box::pin(self.failed(deletes, error, &mut report)).await,
            }
        }
        if report.failed == 0 {
            self.failing.store(false, Ordering::Relaxed);
        }
        let seconds = started.elapsed().as_secs_f64();
        crate::metrics::flushed(&report, seconds);
        tracing::debug!(
            taken = report.taken,
            written = report.written,
            deleted = report.deleted,
            conflicts = report.conflicts,
            failed = report.failed,
            statements = report.statements,
            ms = seconds * 1e3,
            "session writer flushed a batch"
        );
        report
    }

    /// Keeps deleted keys for a while, so a save arriving late cannot re-insert them.
    fn remember_deleted(&self, keys: &[SessionKey]) {
        let now = Instant::now();
        let mut queue = self.queue();
        if queue.deleted.len() + keys.len() > DELETED_CAPACITY {
            queue
                .deleted
                .retain(|_, at| now.saturating_duration_since(*at) < DELETED_HORIZON);
        }
        for key in keys {
            queue.deleted.insert(key.clone(), now);
        }
    }

    /// A store call bounded by the store timeout: a hung database must not hang the writer.
    async fn bounded<T>(
        &self,
        call: impl Future<Output = Result<T, store::Error>>,
    ) -> Result<T, store::Error> {
        let timeout = self.config.store_timeout;
        tokio::time::timeout(timeout, call)
            .await
            .unwrap_or(Err(store::Error::Timeout(timeout)))
    }

    /// A failed write: a data error in a batch of several is retried record by record at once
    /// (one bad record must not hold up the others); otherwise the writes go back to the queue
    /// with backoff (a newer state arriving meanwhile wins), until `MAX_ATTEMPTS` data errors,
    /// after which the write is given up: logged, and its session marked changed so its next
    /// request saves it again. Waiters are told.
    async fn failed(
        &self,
        writes: Vec<(SessionKey, Pending)>,
        error: store::Error,
        report: &mut FlushReport,
    ) {
        let transient = error.is_transient();
        if !transient && writes.len() > 1 {
            tracing::warn!(
                writes = writes.len(),
                error = &error as &dyn std::error::Error,
                "a batch of session writes was refused; writing its records one by one"
            );
            report.statements += writes.len();
            for write in writes {
                let single = self.write(vec![write]).await;
                report.written += single.written;
                report.conflicts += single.conflicts;
                report.deleted += single.deleted;
                report.failed += single.failed;
            }
            return;
        }
        tracing::error!(
            writes = writes.len(),
            error = &error as &dyn std::error::Error,
            "session writes failed; kept and retried with backoff"
        );
        self.failing.store(transient, Ordering::Relaxed);
        report.failed += writes.len();
        crate::metrics::write_retries(writes.len());
        let error = Arc::new(error);
        let now = Instant::now();
        let mut queue = self.queue();
        for (key, mut pending) in writes {
            for waiter in pending.waiters.drain(..) {
                let _ = waiter.send(Outcome::Failed(Arc::clone(&error)));
            }
            pending.attempts = pending.attempts.saturating_add(1);
            if !transient && pending.attempts >= MAX_ATTEMPTS {
                tracing::error!(
                    session = %key.short_hash(),
                    attempts = pending.attempts,
                    "the store keeps refusing this session's write; given up here, kept in memory for its next request"
                );
                if let Some(entry) = pending.entry.upgrade() {
                    entry.lock().dirty = true;
                }
                continue;
            }
            pending.not_before = Some(now + backoff(&self.config, pending.attempts));
            match queue.take(&key) {
                // A newer state arrived while this one was being written: it wins.
                Some(newer) => {
                    let merged = merge(pending, newer);
                    queue.put(key, merged, now);
                }
                None => queue.put(key, pending, now),
            }
        }
    }
}

fn record_of(pending: &Pending) -> Record {
    match &pending.op {
        Op::Save { record, .. } => record.clone(),
        Op::Delete => unreachable!("deletes are batched separately"),
    }
}

/// Tells the entry and the waiters what became of a write.
fn resolve(pending: Pending, outcome: Update) {
    if let (Op::Save { record, .. }, Some(entry)) = (&pending.op, pending.entry.upgrade()) {
        apply(&entry, record.meta.version, outcome);
    }
    for waiter in pending.waiters {
        let _ = waiter.send(Outcome::Stored(outcome));
    }
}

/// Removes a batch's sessions from the in-flight set when the flush ends, however it ends.
struct Flight<'a> {
    shared: &'a Shared,
    keys: Vec<SessionKey>,
}

impl Drop for Flight<'_> {
    fn drop(&mut self) {
        let mut queue = self.shared.queue();
        for key in &self.keys {
            queue.in_flight.remove(key);
        }
    }
}

/// Failed attempts after which a write the store keeps refusing (not a connection problem) is
/// given up by the writer and left to the session's next request.
const MAX_ATTEMPTS: u32 = 5;
/// How long, and how many, deleted keys are remembered against late saves.
const DELETED_HORIZON: Duration = Duration::from_secs(600);
const DELETED_CAPACITY: usize = 100_000;

/// What a stored (or refused) save means for the node's copy of the session.
pub(crate) fn apply(entry: &Entry, version: i64, outcome: Update) {
    let mut state = entry.lock();
    match outcome {
        Update::Written => state.persisted = true,
        // The session was ended elsewhere: stop serving it here.
        Update::Missing => state.end(),
        // Another node wrote a newer state; unless this node has a newer one on its way, its
        // copy is stale: the next request restores the newer state.
        Update::Superseded if state.version <= version => state.stale = true,
        Update::Superseded => {}
    }
}

/// The delay before retry number `attempts` (1-based): exponential, capped, ±20 % jitter.
fn backoff(config: &WriterConfig, attempts: u32) -> Duration {
    let factor = config
        .retry_multiplier
        .max(1)
        .saturating_pow(attempts.saturating_sub(1));
    let delay = config
        .retry_delay
        .saturating_mul(factor)
        .min(config.retry_max_delay);
    let mut byte = [0u8; 1];
    let jitter = if getrandom::fill(&mut byte).is_ok() {
        0.8 + 0.4 * f64::from(byte[0]) / 255.0
    } else {
        1.0
    };
    delay.mul_f64(jitter)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;
    use crate::session::SessionId;
    use crate::session::state::State;
    use crate::store::testing::{Call, Hook, Wrapped};
    use crate::store::{MemoryStore, Meta};

    /// Counts calls and rows handed to writes, and fails them while told to.
    #[derive(Default)]
    struct Faults {
        calls: AtomicUsize,
        rows: AtomicUsize,
        fail: AtomicBool,
    }

    impl Hook for Faults {
        async fn before(&self, call: Call<'_>) -> Result<(), store::Error> {
            if matches!(call, Call::Read(..)) {
                return Ok(());
            }
            self.calls.fetch_add(1, Ordering::SeqCst);
            if self.fail.load(Ordering::SeqCst) {
                return Err(store::Error::Backend("injected failure".into()));
            }
            self.rows.fetch_add(call.records().len(), Ordering::SeqCst);
            Ok(())
        }
    }

    /// A memory store behind [`Faults`].
    struct TestStore {
        inner: Arc<MemoryStore>,
        wrapped: Arc<Wrapped<Faults>>,
    }

    impl Default for TestStore {
        fn default() -> Self {
            let inner = Arc::new(MemoryStore::new());
            let wrapped = Wrapped::new(inner.clone());
            Self { inner, wrapped }
        }
    }

    impl std::ops::Deref for TestStore {
        type Target = Faults;
        fn deref(&self) -> &Faults {
            &self.wrapped
        }
    }

    impl TestStore {
        fn calls(&self) -> usize {
            self.calls.load(Ordering::SeqCst)
        }
        fn rows(&self) -> usize {
            self.rows.load(Ordering::SeqCst)
        }
    }

    fn record(key: &SessionKey, version: i64) -> Record {
        Record {
            meta: Meta {
                key: key.clone(),
                app: "storefront".into(),
                context_path: "/".into(),
                node: "n".into(),
                principal: None,
                created_at: 0,
                modified_at: 0,
                expires_at: i64::MAX,
                max_inactive_secs: 60,
                version,
                attributes: vec![],
                size_bytes: 3,
            },
            data: vec![1, 0, 0x80],
        }
    }

    fn save(key: &SessionKey, version: i64, new: bool) -> Op {
        Op::Save {
            record: record(key, version),
            new,
        }
    }

    fn config() -> WriterConfig {
        WriterConfig {
            interval: Duration::from_secs(5),
            queue_size: 100,
            max_items: 10,
            ..WriterConfig::default()
        }
    }

    fn writer(config: WriterConfig) -> (Arc<TestStore>, WriteBehind, Worker) {
        let store = Arc::new(TestStore::default());
        let (handle, worker) = WriteBehind::pair(store.wrapped.clone(), config);
        (store, handle, worker)
    }

    fn key() -> SessionKey {
        SessionId::generate().store_key()
    }

    #[tokio::test(start_paused = true)]
    async fn a_thousand_updates_of_one_session_are_one_row_write() {
        let (store, handle, worker) = writer(config());
        let k = key();
        for v in 1..=1000 {
            handle
                .enqueue(k.clone(), save(&k, v, v == 1), Weak::new())
                .unwrap();
        }
        assert_eq!(
            handle.pending_len(),
            1,
            "memory holds one write per session"
        );
        let report = worker.flush_once(Scope::All).await;
        assert_eq!((report.taken, report.written, report.statements), (1, 1, 1));
        assert_eq!(store.rows(), 1);
        let stored = store.inner.get(&k, 0).await.unwrap().unwrap();
        assert_eq!(
            stored.meta.version, 1000,
            "the newest state, inserted (it was new)"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn batches_respect_max_items_and_the_interval_loop_empties_the_queue() {
        let (store, handle, worker) = writer(config());
        for _ in 0..35 {
            let k = key();
            handle
                .enqueue(k.clone(), save(&k, 1, true), Weak::new())
                .unwrap();
        }
        let report = worker.flush_once(Scope::All).await;
        assert_eq!(
            (report.taken, store.calls()),
            (10, 1),
            "max.items per round trip"
        );
        assert_eq!(
            worker.flush_once(Scope::Urgent).await.taken,
            0,
            "async writes are not urgent"
        );

        // The loop: nothing before the interval, then everything, max.items a statement.
        let stop = Arc::new(Notify::new());
        let loop_stop = Arc::clone(&stop);
        let task =
            tokio::spawn(async move { worker.run_until_stopped(loop_stop.notified_owned()).await });
        tokio::time::sleep(Duration::from_millis(4900)).await;
        assert_eq!(handle.pending_len(), 25, "not before the interval");
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(handle.pending_len(), 0);
        assert_eq!((store.rows(), store.calls()), (35, 4));
        stop.notify_one();
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn an_invalidation_is_never_overtaken_by_a_stale_write() {
        let (store, handle, worker) = writer(config());
        let k = key();
        store.inner.set(&record(&k, 1)).await.unwrap();
        handle
            .enqueue(k.clone(), save(&k, 2, false), Weak::new())
            .unwrap();
        let deleted = handle.enqueue_and_wait(k.clone(), Op::Delete, Weak::new());
        // A stale request saves the session after the logout was queued.
        let late = handle.enqueue_and_wait(k.clone(), save(&k, 3, false), Weak::new());
        assert!(
            matches!(late.await, Outcome::Stored(Update::Missing)),
            "told at once"
        );
        assert_eq!(handle.pending_len(), 1);
        let report = worker.flush_once(Scope::Urgent).await;
        assert_eq!((report.deleted, report.written), (1, 0));
        assert!(matches!(deleted.await, Outcome::Stored(_)));
        assert_eq!(store.inner.get(&k, 0).await.unwrap(), None);
        // And a save that arrives after the delete landed (even an insert: a request that
        // encoded a new session before the logout) cannot bring it back.
        for new in [false, true] {
            handle
                .enqueue(k.clone(), save(&k, 4, new), Weak::new())
                .unwrap();
            assert_eq!(handle.pending_len(), 0, "refused at the door");
            let late = handle.enqueue_and_wait(k.clone(), save(&k, 5, new), Weak::new());
            assert!(matches!(late.await, Outcome::Stored(Update::Missing)));
        }
        assert_eq!(worker.flush_once(Scope::All).await.taken, 0);
        assert_eq!(store.inner.get(&k, 0).await.unwrap(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn states_arriving_out_of_order_keep_the_newest() {
        let (store, handle, worker) = writer(config());
        let k = key();
        handle
            .enqueue(k.clone(), save(&k, 7, true), Weak::new())
            .unwrap();
        handle
            .enqueue(k.clone(), save(&k, 6, true), Weak::new())
            .unwrap();
        worker.flush_once(Scope::All).await;
        assert_eq!(
            store.inner.get(&k, 0).await.unwrap().unwrap().meta.version,
            7
        );
    }

    #[tokio::test(start_paused = true)]
    async fn one_record_the_store_refuses_does_not_hold_up_the_others() {
        // A data error (not a connection problem) on a batch: the records are retried one by
        // one at once, the good ones land, and the bad one is given up after a few attempts.
        /// Refuses (as a data error) any write of a record of app "bad".
        #[derive(Default)]
        struct Picky;
        impl Hook for Picky {
            async fn before(&self, call: Call<'_>) -> Result<(), store::Error> {
                if call.records().iter().any(|r| r.meta.app == "bad") {
                    return Err(store::Error::CorruptRow {
                        key: "x".into(),
                        reason: "refused".into(),
                    });
                }
                Ok(())
            }
        }
        let memory = Arc::new(MemoryStore::new());
        let store: Arc<Wrapped<Picky>> = Wrapped::new(memory.clone());
        let (handle, worker) = WriteBehind::pair(store, config());
        let good: Vec<SessionKey> = (0..3).map(|_| key()).collect();
        for k in &good {
            handle
                .enqueue(k.clone(), save(k, 1, true), Weak::new())
                .unwrap();
        }
        let bad = key();
        let mut record = record(&bad, 1);
        record.meta.app = "bad".into();
        let entry = Entry::new(State::new(SessionId::generate(), 0));
        entry.lock().dirty = false;
        handle
            .enqueue(
                bad.clone(),
                Op::Save { record, new: true },
                Arc::downgrade(&entry),
            )
            .unwrap();
        let report = worker.flush_once(Scope::All).await;
        assert_eq!((report.written, report.failed), (3, 1));
        for k in &good {
            assert!(memory.get(k, 0).await.unwrap().is_some());
        }
        for _ in 0..MAX_ATTEMPTS {
            tokio::time::sleep(Duration::from_secs(60)).await;
            worker.flush_once(Scope::All).await;
        }
        assert_eq!(handle.pending_len(), 0, "given up");
        assert!(entry.lock().dirty, "left to the session's next request");
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_queue_refuses_new_sessions_but_still_coalesces() {
        let (_, handle, _worker) = writer(WriterConfig {
            queue_size: 2,
            ..config()
        });
        let (a, b, c) = (key(), key(), key());
        handle
            .enqueue(a.clone(), save(&a, 1, true), Weak::new())
            .unwrap();
        handle
            .enqueue(b.clone(), save(&b, 1, true), Weak::new())
            .unwrap();
        assert!(
            handle
                .enqueue(c.clone(), save(&c, 1, true), Weak::new())
                .is_err()
        );
        handle
            .enqueue(a.clone(), save(&a, 2, true), Weak::new())
            .unwrap();
        assert_eq!(handle.pending_len(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn failed_batches_are_retried_with_growing_backoff() {
        let (store, handle, worker) = writer(config());
        let k = key();
        store.fail.store(true, Ordering::SeqCst);
        let waited = handle.enqueue_and_wait(k.clone(), save(&k, 1, true), Weak::new());
        let report = worker.flush_once(Scope::Urgent).await;
        assert_eq!(report.failed, 1);
        assert!(
            matches!(waited.await, Outcome::Failed(_)),
            "the request is told, not blocked"
        );
        assert_eq!(handle.pending_len(), 1, "kept");
        let first = handle.shared.queue().next_retry().unwrap();
        let delay = first - Instant::now();
        assert!(
            delay >= Duration::from_millis(800) && delay <= Duration::from_millis(1200),
            "{delay:?}"
        );
        // Not due yet: nothing is retried.
        assert_eq!(worker.flush_once(Scope::All).await.taken, 0);
        // A newer state arriving meanwhile replaces the failed one.
        handle
            .enqueue(k.clone(), save(&k, 2, false), Weak::new())
            .unwrap();
        tokio::time::sleep_until(first).await;
        let report = worker.flush_once(Scope::All).await;
        assert_eq!(report.failed, 1, "still failing");
        let second = handle.shared.queue().next_retry().unwrap() - Instant::now();
        assert!(
            second >= Duration::from_millis(1600) && second <= Duration::from_millis(2400),
            "{second:?}"
        );
        store.fail.store(false, Ordering::SeqCst);
        tokio::time::sleep(second).await;
        let report = worker.flush_once(Scope::All).await;
        assert_eq!(report.written, 1);
        assert_eq!(
            store.inner.get(&k, 0).await.unwrap().unwrap().meta.version,
            2
        );
        assert_eq!(handle.pending_len(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_drains_the_queue_and_reports_what_it_could_not_write() {
        let (store, handle, _worker) = writer(config());
        for _ in 0..25 {
            let k = key();
            handle
                .enqueue(k.clone(), save(&k, 1, true), Weak::new())
                .unwrap();
        }
        let report = handle.shutdown(Duration::from_secs(5)).await;
        assert_eq!(
            report,
            DrainReport {
                written: 25,
                unwritten: 0
            }
        );
        assert_eq!(store.rows(), 25);

        let (store, handle, _worker) = writer(config());
        store.fail.store(true, Ordering::SeqCst);
        for _ in 0..3 {
            let k = key();
            handle
                .enqueue(k.clone(), save(&k, 1, true), Weak::new())
                .unwrap();
        }
        let report = handle.shutdown(Duration::from_secs(2)).await;
        assert_eq!(
            report,
            DrainReport {
                written: 0,
                unwritten: 3
            }
        );
    }

    #[tokio::test(start_paused = true)]
    async fn outcomes_reach_the_entry() {
        let (store, handle, worker) = writer(config());
        let k = key();
        let entry = Entry::new(State::new(SessionId::generate(), 0));
        entry.lock().version = 1;
        handle
            .enqueue(k.clone(), save(&k, 1, true), Arc::downgrade(&entry))
            .unwrap();
        worker.flush_once(Scope::All).await;
        assert!(entry.lock().persisted);
        // Another node writes version 5; this node's version 2 is superseded: its copy is stale.
        store.inner.set(&record(&k, 5)).await.unwrap();
        entry.lock().version = 2;
        handle
            .enqueue(k.clone(), save(&k, 2, false), Arc::downgrade(&entry))
            .unwrap();
        worker.flush_once(Scope::All).await;
        assert!(entry.lock().stale);
        // The row is deleted elsewhere: the next write ends the session here.
        store.inner.destroy(&k).await.unwrap();
        handle
            .enqueue(k.clone(), save(&k, 9, false), Arc::downgrade(&entry))
            .unwrap();
        worker.flush_once(Scope::All).await;
        assert!(entry.lock().invalidated);
    }
}
