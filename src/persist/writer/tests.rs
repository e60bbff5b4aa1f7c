//! The writer's unit tests: a hand-driven worker over a memory store.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use crate::persist::{Owner, nobody};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use super::flush::MAX_ATTEMPTS;
use super::queue::{Op, Outcome};
use super::{DrainReport, Scope, Worker, WriteBehind, WriterConfig};
use crate::id::SessionId;
use crate::id::SessionKey;
use crate::session::state::Entry;
use crate::session::state::State;
use crate::store::testing::{Call, Hook, Wrapped};
use crate::store::{self, Record, SessionStore, Update};
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
        version,
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

/// The writer's view of a node-cache entry.
fn owner(entry: &Arc<Entry>) -> Arc<dyn Owner> {
    Arc::clone(entry) as Arc<dyn Owner>
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
            .enqueue(k.clone(), save(&k, v, v == 1), nobody())
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
            .enqueue(k.clone(), save(&k, 1, true), nobody())
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
        .enqueue(k.clone(), save(&k, 2, false), nobody())
        .unwrap();
    let deleted = handle.enqueue_and_wait(k.clone(), Op::Delete, nobody());
    // A stale request saves the session after the logout was queued.
    let late = handle.enqueue_and_wait(k.clone(), save(&k, 3, false), nobody());
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
            .enqueue(k.clone(), save(&k, 4, new), nobody())
            .unwrap();
        assert_eq!(handle.pending_len(), 0, "refused at the door");
        let late = handle.enqueue_and_wait(k.clone(), save(&k, 5, new), nobody());
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
        .enqueue(k.clone(), save(&k, 7, true), nobody())
        .unwrap();
    handle
        .enqueue(k.clone(), save(&k, 6, true), nobody())
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
            .enqueue(k.clone(), save(k, 1, true), nobody())
            .unwrap();
    }
    let bad = key();
    let mut record = record(&bad, 1);
    record.meta.app = "bad".into();
    let entry = Entry::new(State::new(SessionId::generate(), 0));
    entry.lock().saved_as(0);
    handle
        .enqueue(
            bad.clone(),
            Op::Save {
                record,
                version: 1,
                new: true,
            },
            owner(&entry),
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
    assert!(
        entry.lock().has_unsaved_change(),
        "left to the session's next request"
    );
}

#[tokio::test(start_paused = true)]
async fn a_full_queue_refuses_new_sessions_but_still_coalesces() {
    let (_, handle, _worker) = writer(WriterConfig {
        queue_size: 2,
        ..config()
    });
    let (a, b, c) = (key(), key(), key());
    handle
        .enqueue(a.clone(), save(&a, 1, true), nobody())
        .unwrap();
    handle
        .enqueue(b.clone(), save(&b, 1, true), nobody())
        .unwrap();
    assert!(
        handle
            .enqueue(c.clone(), save(&c, 1, true), nobody())
            .is_err()
    );
    handle
        .enqueue(a.clone(), save(&a, 2, true), nobody())
        .unwrap();
    assert_eq!(handle.pending_len(), 2);
}

#[tokio::test(start_paused = true)]
async fn failed_batches_are_retried_with_growing_backoff() {
    let (store, handle, worker) = writer(config());
    let k = key();
    store.fail.store(true, Ordering::SeqCst);
    let waited = handle.enqueue_and_wait(k.clone(), save(&k, 1, true), nobody());
    let report = worker.flush_once(Scope::Urgent).await;
    assert_eq!(report.failed, 1);
    // A sync save is tried again soon while its request waits...
    assert_eq!(handle.pending_len(), 1);
    let soon = handle.shared.queue().next_retry().unwrap();
    assert!(soon - Instant::now() <= Duration::from_millis(10));
    // ...and dropped once it does not (its store timeout passed: it was refused), never
    // written later.
    drop(waited);
    tokio::time::sleep_until(soon).await;
    let report = worker.flush_once(Scope::All).await;
    assert_eq!(report.failed, 1);
    assert_eq!(
        handle.pending_len(),
        0,
        "a sync save nobody waits for any more is dropped, not retried"
    );
    // An async save is kept and retried.
    handle
        .enqueue(k.clone(), save(&k, 1, true), nobody())
        .unwrap();
    let report = worker.flush_once(Scope::All).await;
    assert_eq!(report.failed, 1);
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
        .enqueue(k.clone(), save(&k, 2, false), nobody())
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
            .enqueue(k.clone(), save(&k, 1, true), nobody())
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
            .enqueue(k.clone(), save(&k, 1, true), nobody())
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
    entry.lock().saved_as(1);
    handle
        .enqueue(k.clone(), save(&k, 1, true), owner(&entry))
        .unwrap();
    worker.flush_once(Scope::All).await;
    assert!(entry.lock().has_row());
    // Another node writes version 5; this node's version 2 is superseded: its copy is dropped
    // (stale too).
    store.inner.set(&record(&k, 5)).await.unwrap();
    entry.lock().saved_as(2);
    handle
        .enqueue(k.clone(), save(&k, 2, false), owner(&entry))
        .unwrap();
    worker.flush_once(Scope::All).await;
    assert!(entry.lock().is_stale());
    // The row is deleted elsewhere: the next write ends the session here.
    store.inner.destroy(&k).await.unwrap();
    handle
        .enqueue(k.clone(), save(&k, 9, false), owner(&entry))
        .unwrap();
    worker.flush_once(Scope::All).await;
    assert!(entry.lock().is_ended());
}

#[tokio::test(start_paused = true)]
async fn a_sync_save_refused_by_a_full_queue_is_left_to_the_next_request() {
    let (_, handle, _worker) = writer(WriterConfig {
        queue_size: 2,
        ..config()
    });
    // Twice the queue size is the bound for urgent writes on top of lazy ones.
    for _ in 0..4 {
        let k = key();
        let _waiting = handle.enqueue_and_wait(k.clone(), save(&k, 1, true), nobody());
    }
    let entry = Entry::new(State::new(SessionId::generate(), 0));
    entry.lock().saved_as(1);
    let k = key();
    let outcome = handle
        .enqueue_and_wait(k.clone(), save(&k, 1, true), owner(&entry))
        .await;
    assert!(matches!(
        outcome,
        Outcome::Failed(crate::persist::WriteError::QueueFull)
    ));
    assert!(
        entry.lock().has_unsaved_change(),
        "not queued, so the session's next request must save it"
    );
}

/// Two requests of one session take snapshots 2 and 3 (both descend from row 1) and enqueue
/// them in the other order. Snapshot 3 is committed first; snapshot 2, arriving late, is a part
/// of it: written now it would undo snapshot 3's change. It is done without a store call.
#[tokio::test(start_paused = true)]
async fn an_older_snapshot_arriving_after_a_newer_one_committed_is_not_written() {
    let (store, handle, worker) = writer(config());
    let k = key();
    let row = record(&k, 1);
    store.inner.set(&row).await.unwrap();
    let entry = Entry::new(State::restored(
        SessionId::generate(),
        &row.meta,
        Default::default(),
    ));
    let snapshot = |version: i64, data: u8| {
        let mut record = record(&k, 2);
        record.data = vec![data];
        Op::Save {
            record,
            version,
            new: false,
        }
    };
    handle
        .enqueue(k.clone(), snapshot(3, 33), owner(&entry))
        .unwrap();
    let report = worker.flush_once(Scope::All).await;
    assert_eq!(report.written, 1);
    let calls = store.calls();
    handle
        .enqueue(k.clone(), snapshot(2, 22), owner(&entry))
        .unwrap();
    let report = worker.flush_once(Scope::All).await;
    assert_eq!((report.taken, report.statements, report.failed), (1, 0, 0));
    assert_eq!(store.calls(), calls, "no store call for a carried snapshot");
    let stored = store.inner.get(&k, 0).await.unwrap().unwrap();
    assert_eq!((stored.meta.version, stored.data), (2, vec![33]));
    // A later snapshot is a compare-and-set on the row the committed one made.
    handle
        .enqueue(k.clone(), snapshot(4, 44), owner(&entry))
        .unwrap();
    let report = worker.flush_once(Scope::All).await;
    assert_eq!(report.written, 1);
    let stored = store.inner.get(&k, 0).await.unwrap().unwrap();
    assert_eq!((stored.meta.version, stored.data), (3, vec![44]));
}

/// A new session's second snapshot was taken before its first insert committed (so it is an
/// insert too, made on no row): written after that insert, it replaces it, not skipped as an
/// older version.
#[tokio::test(start_paused = true)]
async fn a_second_insert_of_a_new_session_follows_the_first() {
    let (store, handle, worker) = writer(config());
    let k = key();
    let entry = Entry::new(State::new(SessionId::generate(), 0));
    let snapshot = |version: i64, data: u8| {
        let mut record = record(&k, 1);
        record.data = vec![data];
        Op::Save {
            record,
            version,
            new: true,
        }
    };
    handle
        .enqueue(k.clone(), snapshot(1, 11), owner(&entry))
        .unwrap();
    worker.flush_once(Scope::All).await;
    handle
        .enqueue(k.clone(), snapshot(2, 22), owner(&entry))
        .unwrap();
    let report = worker.flush_once(Scope::All).await;
    assert_eq!(report.written, 1);
    let stored = store.inner.get(&k, 0).await.unwrap().unwrap();
    assert_eq!((stored.meta.version, stored.data), (2, vec![22]));
}

/// Takes `delay` (virtual time) for every write call, and records each call's row count.
#[derive(Default)]
struct Slow {
    delay: Duration,
    batches: std::sync::Mutex<Vec<usize>>,
}

impl Hook for Slow {
    async fn before(&self, call: Call<'_>) -> Result<(), store::Error> {
        if let Call::Write(_, records) = call {
            self.batches.lock().unwrap().push(records.len());
            tokio::time::sleep(self.delay).await;
        }
        Ok(())
    }
}

/// Group commit without a fixed wait: a lone sync save goes at once (it waits for its store
/// call, nothing more), and the saves that arrive while a batch commits go together in the next
/// one, as soon as the flight is free.
#[tokio::test(start_paused = true)]
async fn a_lone_sync_save_goes_at_once_and_later_ones_share_the_next_batch() {
    let hook = Slow {
        delay: Duration::from_millis(10),
        ..Slow::default()
    };
    let store = Wrapped::with(Arc::new(MemoryStore::new()), hook);
    let config = WriterConfig {
        concurrency: 1,
        ..config()
    };
    assert_eq!(config.group_commit_window, Duration::ZERO, "the default");
    let (handle, worker) = WriteBehind::pair(store.clone(), config);
    tokio::spawn(worker.run_until_stopped(std::future::pending()));

    let started = Instant::now();
    let k = key();
    let outcome = handle
        .enqueue_and_wait(k.clone(), save(&k, 1, true), nobody())
        .await;
    assert!(matches!(outcome, Outcome::Stored(_)), "{outcome:?}");
    assert_eq!(
        started.elapsed(),
        Duration::from_millis(10),
        "the store call and nothing else"
    );

    // One save takes the flight; five arrive while it commits and go together next.
    let first = key();
    let waiting = handle.enqueue_and_wait(first.clone(), save(&first, 1, true), nobody());
    let first = tokio::spawn(waiting);
    tokio::time::sleep(Duration::from_millis(1)).await;
    let mut later = Vec::new();
    for _ in 0..5 {
        let k = key();
        later.push(tokio::spawn(handle.enqueue_and_wait(
            k.clone(),
            save(&k, 1, true),
            nobody(),
        )));
    }
    assert!(matches!(first.await.unwrap(), Outcome::Stored(_)));
    for save in later {
        assert!(matches!(save.await.unwrap(), Outcome::Stored(_)));
    }
    assert_eq!(*store.batches.lock().unwrap(), [1, 1, 5]);
    assert_eq!(
        started.elapsed(),
        Duration::from_millis(30),
        "three batches, back to back"
    );
}
