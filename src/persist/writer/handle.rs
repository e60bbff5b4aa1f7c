//! The handle requests call: [`WriteBehind`] and the state it shares with its worker.

use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use tokio::sync::{Notify, oneshot};
use tokio::time::Instant;

use super::flush::Disposition;
use super::queue::{Op, Outcome, Pending, Queue, merge};
use super::{DrainReport, Folded, Worker, WriterConfig};
use crate::id::SessionKey;
use crate::persist::{Owner, WriteError};
use crate::store::{Record, SessionStore, Update};

pub(super) struct Shared {
    pub(super) store: Arc<dyn SessionStore>,
    pub(super) config: WriterConfig,
    /// The queue. A std mutex: every section is a few map operations, never held across
    /// `.await`.
    pub(super) queue: Mutex<Queue>,
    /// Wakes the worker for urgent writes.
    pub(super) urgent: Notify,
    /// Makes the worker flush everything queued now, as if the interval were due.
    pub(super) all_now: Notify,
    /// Stops the worker's loop (the drain is then run by whoever stopped it).
    pub(super) stop: Notify,
    /// The worker task, started on first use by [`WriteBehind::new`] handles.
    pub(super) started: OnceLock<()>,
    /// Whether this handle spawns its own worker.
    pub(super) autostart: bool,
}

impl Shared {
    pub(super) fn queue(&self) -> MutexGuard<'_, Queue> {
        // Queue operations leave it consistent before anything that could panic.
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A session's write found in the queue ([`WriteBehind::pending`]).
pub(crate) struct Queued {
    /// The newest state queued.
    pub(crate) record: Record,
    /// Whether the store has a row for it yet.
    pub(crate) exists: bool,
    /// The session the write belongs to.
    pub(crate) owner: Arc<dyn Owner>,
}

/// The handle requests enqueue writes into. Cheap to clone; all clones share one queue.
#[derive(Clone)]
pub struct WriteBehind {
    pub(super) shared: Arc<Shared>,
}

impl std::fmt::Debug for WriteBehind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteBehind")
            .field("config", &self.shared.config)
            .field("pending", &self.shared.queue().len())
            .finish()
    }
}

impl WriteBehind {
    /// A writer for `store` whose worker task is spawned on the first enqueue.
    pub fn new(store: Arc<dyn SessionStore>, config: WriterConfig) -> Self {
        Self::build(store, config, true)
    }

    /// A writer and its worker, not spawned: run [`Worker::run_until_stopped`] yourself, or
    /// call [`Worker::flush_once`] step by step.
    #[doc(hidden)] // test support: a worker the caller drives
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
                all_now: Notify::new(),
                stop: Notify::new(),
                started: OnceLock::new(),
                autostart,
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

    /// Queues an async write. `Err(WriteError::QueueFull)` if the session has nothing pending
    /// and the queue is full: the caller then saves directly.
    pub(crate) fn enqueue(
        &self,
        key: SessionKey,
        op: Op,
        entry: Arc<dyn Owner>,
    ) -> Result<(), WriteError> {
        self.ensure_started();
        let now = Instant::now();
        let mut queue = self.shared.queue();
        if queue.find(&key).is_none() && queue.len() >= self.shared.config.queue_size {
            return Err(WriteError::QueueFull);
        }
        self.insert(&mut queue, key, op, entry, None, now);
        crate::metrics::queue_depth(queue.len());
        Ok(())
    }

    /// Queues a write someone waits for; the answer comes when its batch has committed or
    /// failed. A save that fails is tried again shortly while its request waits, then dropped
    /// (the request is refused); a delete that fails is kept and retried.
    pub(crate) fn enqueue_and_wait(
        &self,
        key: SessionKey,
        op: Op,
        entry: Arc<dyn Owner>,
    ) -> impl Future<Output = Outcome> + Send + 'static {
        self.ensure_started();
        let (tx, rx) = oneshot::channel();
        let mut full = false;
        // Told if this write ends up kept by nobody (queue full, or the writer stopped first).
        let owner = entry.clone();
        {
            let now = Instant::now();
            let mut queue = self.shared.queue();
            // Bounded like the async queue (twice over, for the urgent writes on top): beyond it
            // the caller keeps the change in memory instead.
            if queue.find(&key).is_none()
                && queue.len() >= self.shared.config.queue_size.saturating_mul(2)
            {
                full = true;
            } else {
                self.insert(&mut queue, key, op, entry, Some(tx), now);
            }
            crate::metrics::queue_depth(queue.len());
        }
        if !full {
            self.shared.urgent.notify_one();
        }
        async move {
            let outcome = if full {
                Outcome::Failed(WriteError::QueueFull)
            } else {
                rx.await.unwrap_or(Outcome::Failed(WriteError::Stopped))
            };
            // Not queued, or dropped with a stopped writer: the session's next request saves it.
            if matches!(
                outcome,
                Outcome::Failed(WriteError::QueueFull | WriteError::Stopped)
            ) {
                owner.not_saved();
            }
            outcome
        }
    }

    /// Writes one session now, in the caller's task, through the same batch code as the worker
    /// but outside the queue: no waiting for a window or a flight. A failure leaves the change
    /// to the session's next request (the entry is marked changed). For `group.commit=false`
    /// and for an async save that found the queue full.
    pub(crate) async fn write_direct(
        &self,
        key: SessionKey,
        op: Op,
        entry: Arc<dyn Owner>,
    ) -> Outcome {
        let (tx, rx) = oneshot::channel();
        let pending = Pending {
            op,
            entry,
            folded: None,
            waiters: vec![tx],
            since: Instant::now(),
            attempts: 0,
            not_before: None,
            unsure: Vec::new(),
            kept: false,
            refused: false,
        };
        self.shared
            .write(vec![(key, pending)], Disposition::LeaveToEntry)
            .await;
        rx.await.unwrap_or(Outcome::Failed(WriteError::Stopped))
    }

    /// A store call bounded by the store timeout (see [`Shared::bounded`]).
    pub(crate) async fn bounded<T>(
        &self,
        call: impl Future<Output = Result<T, crate::store::Error>>,
    ) -> Result<T, crate::store::Error> {
        self.shared.bounded(call).await
    }

    /// A sync save of `key` was refused (it failed, or its request stopped waiting): drops
    /// its write if it is still queued, nobody was told it would be made and nobody waits for
    /// it any more, so that it is not written later behind the refusal (a newer save that
    /// merged with it goes on for its own requests). A write already in flight cannot be
    /// recalled: if it commits, the change is in the store although its request was refused,
    /// as with any request whose answer was lost.
    pub(crate) fn withdraw(&self, key: &SessionKey) {
        let mut queue = self.shared.queue();
        if queue
            .find(key)
            .is_some_and(|pending| !pending.kept && pending.waiters.iter().all(|w| w.is_closed()))
            && let Some(pending) = queue.take(key)
        {
            pending.entry.dropped();
            crate::metrics::queue_depth(queue.len());
        }
    }

    /// Whether a write of `key` is queued or being made.
    pub(crate) fn is_queued(&self, key: &SessionKey) -> bool {
        let queue = self.shared.queue();
        queue.in_flight.contains(key) || queue.find(key).is_some()
    }

    /// Writes in one batch (`WriterConfig::max_items`).
    pub(crate) fn max_items(&self) -> usize {
        self.shared.config.max_items.max(1)
    }

    /// The store timeout every store call is bounded by.
    pub(crate) fn store_timeout(&self) -> Duration {
        self.shared.config.store_timeout
    }

    /// The store this writer writes to.
    pub(crate) fn store(&self) -> &Arc<dyn SessionStore> {
        &self.shared.store
    }

    fn insert(
        &self,
        queue: &mut Queue,
        key: SessionKey,
        op: Op,
        entry: Arc<dyn Owner>,
        waiter: Option<oneshot::Sender<Outcome>>,
        now: Instant,
    ) {
        // A save of a session that was ended (here, or by a delete this writer already made) is
        // never written: it would bring the session back.
        let ended = entry.is_ended();
        if matches!(op, Op::Save { .. }) && (ended || queue.deleted.contains_key(&key)) {
            if let Some(waiter) = waiter {
                let _ = waiter.send(Outcome::Stored(Update::Missing));
            }
            return;
        }
        let urgent = waiter.is_some();
        let kept = !urgent || matches!(op, Op::Delete);
        let pending = Pending {
            op,
            entry,
            folded: None,
            waiters: waiter.into_iter().collect(),
            since: now,
            attempts: 0,
            not_before: None,
            unsure: Vec::new(),
            kept,
            refused: false,
        };
        let mut pending = match queue.take(&key) {
            Some(old) => merge(old, pending),
            None => pending,
        };
        // Someone waits: an old backoff would only make them wait for their timeout.
        if urgent {
            pending.not_before = None;
        }
        queue.put(key, pending, now);
    }

    /// The newest state queued for `key`, if any, whether its row exists yet, and the session
    /// the write belongs to: `Some(None)` if the session is queued for deletion or was deleted
    /// lately. A restore on this node must see it, not the older row in the store.
    pub(crate) fn pending(&self, key: &SessionKey) -> Option<Option<Queued>> {
        let (found, folded) = {
            let queue = self.shared.queue();
            if queue.deleted.contains_key(key) {
                return Some(None);
            }
            let pending = queue.find(key)?;
            let found = match &pending.op {
                Op::Save {
                    record,
                    version,
                    new,
                } => Some((record.clone(), *version, !new, Arc::clone(&pending.entry))),
                Op::Delete => None,
            };
            (found, pending.folded.clone())
        };
        // Encoded outside the queue's lock.
        Some(found.map(|(mut record, mut version, exists, owner)| {
            if let Some(folded) = folded {
                folded.newest(&mut record, &mut version);
            }
            Queued {
                record,
                exists,
                owner,
            }
        }))
    }

    /// Folds a later change of `key` (made on `entry`) into its queued async write without
    /// encoding it now: `true` if there was such a write not yet taken for writing; it will
    /// encode the newest folded change when it is made. `false`: the caller encodes and
    /// enqueues as usual.
    pub(crate) fn fold(&self, key: &SessionKey, entry: Arc<dyn Owner>, folded: Folded) -> bool {
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
                    pending.entry = entry;
                }
                true
            }
            _ => false,
        }
    }

    /// Flushes every queued write now rather than at the next interval, retries waiting for
    /// their backoff included (the store is back: it said so).
    pub(crate) fn flush_soon(&self) {
        self.ensure_started();
        {
            let mut queue = self.shared.queue();
            for pending in queue.retry.values_mut() {
                pending.not_before = None;
            }
        }
        self.shared.all_now.notify_one();
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
