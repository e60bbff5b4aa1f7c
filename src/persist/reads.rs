//! [`Reads`]: restores that arrive together are read together.
//!
//! After a node dies, every user it served sends the next request to another node at about the
//! same time, and each of those requests restores its session from the store (the failover
//! storm). One `SELECT` per restore makes the database parse, plan and answer each alone; a
//! batch of them in one query costs little more than one. So a restore is handed to one
//! reader task per store, which sends a batch as soon as one of [`FLIGHTS`] flights is free,
//! holding every restore that arrived while the flights were busy: group commit, for reads.
//! A lone restore goes at once (one hop through a channel), so nothing waits for company.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::id::SessionKey;
use crate::store::{self, EpochMillis, Record, SessionStore};

/// Batches read at the same time.
pub(crate) const FLIGHTS: usize = 4;
/// Restores in one batch at most.
pub(crate) const MAX_BATCH: usize = 128;

type Answer = Result<Option<Record>, store::Error>;

/// One restore waiting for its batch.
struct Read {
    key: SessionKey,
    now: EpochMillis,
    answer: oneshot::Sender<Answer>,
}

/// The store reads of the layer's restores and refreshes ([`super::Persister::row`]), batched
/// when `batched` (`session.restore.batch`) and the store reads many keys in one round trip
/// ([`SessionStore::reads_in_batches`]).
#[derive(Clone)]
pub(crate) struct Reads {
    store: Arc<dyn SessionStore>,
    timeout: Duration,
    batched: bool,
    /// The reader task's queue: started by the first read, in its runtime, and started again
    /// by the next read if that runtime stopped.
    queue: Arc<Mutex<Option<mpsc::UnboundedSender<Read>>>>,
}

impl std::fmt::Debug for Reads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reads")
            .field("batched", &self.batched)
            .finish_non_exhaustive()
    }
}

impl Reads {
    pub(crate) fn new(store: Arc<dyn SessionStore>, timeout: Duration, batched: bool) -> Self {
        Self {
            batched: batched && store.reads_in_batches(),
            store,
            timeout,
            queue: Arc::default(),
        }
    }

    pub(crate) fn with_batched(self, batched: bool) -> Self {
        Self::new(self.store, self.timeout, batched)
    }

    /// The live row of `key` at `now`, within the store timeout (the wait for a free flight
    /// included).
    pub(crate) async fn get(&self, key: &SessionKey, now: EpochMillis) -> Answer {
        let deadline = tokio::time::Instant::now() + self.timeout;
        if self.batched {
            let (answer, answered) = oneshot::channel();
            let read = Read {
                key: key.clone(),
                now,
                answer,
            };
            if self.queue().send(read).is_ok() {
                match tokio::time::timeout_at(deadline, answered).await {
                    Ok(Ok(answer)) => return answer,
                    Err(_) => return Err(store::Error::Timeout(self.timeout)),
                    // The reader is gone (its runtime stopped): read alone, below.
                    Ok(Err(_)) => {}
                }
            }
        }
        crate::metrics::restore_read(1);
        match tokio::time::timeout_at(deadline, self.store.get(key, now)).await {
            Ok(answer) => answer,
            Err(_) => Err(store::Error::Timeout(self.timeout)),
        }
    }

    /// The reader's queue, the reader started (again) in this runtime if it is not running.
    fn queue(&self) -> mpsc::UnboundedSender<Read> {
        let mut queue = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
        match &*queue {
            Some(sender) if !sender.is_closed() => sender.clone(),
            _ => {
                let (sender, receiver) = mpsc::unbounded_channel();
                tokio::spawn(run(Arc::clone(&self.store), self.timeout, receiver));
                *queue = Some(sender.clone());
                sender
            }
        }
    }
}

/// The reader: takes the first waiting restore, waits for a free flight, then sends every
/// restore waiting by then (at most [`MAX_BATCH`]) as one batch.
async fn run(
    store: Arc<dyn SessionStore>,
    timeout: Duration,
    mut queue: mpsc::UnboundedReceiver<Read>,
) {
    let flights = Arc::new(Semaphore::new(FLIGHTS));
    while let Some(first) = queue.recv().await {
        let Ok(flight) = Arc::clone(&flights).acquire_owned().await else {
            return;
        };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH
            && let Ok(read) = queue.try_recv()
        {
            batch.push(read);
        }
        let store = Arc::clone(&store);
        tokio::spawn(async move {
            read_batch(store.as_ref(), timeout, batch).await;
            drop(flight);
        });
    }
}

/// Reads one batch and answers each restore; restores whose request is gone are left out.
async fn read_batch(store: &dyn SessionStore, timeout: Duration, batch: Vec<Read>) {
    let mut waiting: HashMap<SessionKey, Vec<Read>> = HashMap::with_capacity(batch.len());
    for read in batch {
        if !read.answer.is_closed() {
            waiting.entry(read.key.clone()).or_default().push(read);
        }
    }
    if waiting.is_empty() {
        return;
    }
    let keys: Vec<SessionKey> = waiting.keys().cloned().collect();
    // The earliest `now` of the batch: each restore then drops what expired by its own.
    let now = waiting
        .values()
        .flatten()
        .map(|read| read.now)
        .min()
        .unwrap_or_default();
    crate::metrics::restore_read(keys.len());
    // A lone restore takes the store's own statement for one key.
    let read = async {
        match keys.as_slice() {
            [key] => Ok(vec![store.get(key, now).await]),
            keys => store.get_many(keys, now).await,
        }
    };
    let answers = match tokio::time::timeout(timeout, read).await {
        Ok(Ok(answers)) => answers,
        Ok(Err(error)) => {
            let error = Arc::new(error);
            for read in waiting.into_values().flatten() {
                let _ = read.answer.send(Err(shared(&error)));
            }
            return;
        }
        Err(_) => {
            for read in waiting.into_values().flatten() {
                let _ = read.answer.send(Err(store::Error::Timeout(timeout)));
            }
            return;
        }
    };
    for (key, answer) in keys.iter().zip(answers) {
        let Some(reads) = waiting.remove(key) else {
            continue;
        };
        // Answers are matched to keys by position: a store that answered another key's row
        // here fails the restore rather than hand over someone else's session.
        let answer = match answer {
            Ok(Some(record)) if record.meta.key != *key => Err(store::Error::Backend(
                "the store answered a batch read with another key's row".into(),
            )),
            answer => answer,
        };
        let answer = answer.map_err(Arc::new);
        for read in reads {
            let own = match &answer {
                Ok(record) => Ok(record
                    .as_ref()
                    .filter(|record| record.meta.expires_at > read.now)
                    .cloned()),
                Err(error) => Err(shared(error)),
            };
            let _ = read.answer.send(own);
        }
    }
    // A store that answered fewer keys than asked: those restores are failed, not left waiting.
    for read in waiting.into_values().flatten() {
        let _ = read.answer.send(Err(store::Error::Backend(
            "the store answered a batch read without this key".into(),
        )));
    }
}

/// One error told to several restores: the same error, shared.
fn shared(error: &Arc<store::Error>) -> store::Error {
    store::Error::Backend(Box::new(Arc::clone(error)))
}

#[cfg(all(test, feature = "sqlite"))]
mod tests {
    use super::*;
    use crate::id::SessionId;
    use crate::store::{Meta, SqliteStore, StoreOptions};

    fn record(version: i64) -> Record {
        Record {
            meta: Meta {
                key: SessionId::generate().store_key(),
                app: "storefront".into(),
                context_path: "/".into(),
                node: "n".into(),
                principal: None,
                created_at: 0,
                modified_at: 0,
                expires_at: 1_000,
                max_inactive_secs: 60,
                version,
                attributes: vec![],
                size_bytes: 3,
            },
            data: vec![1, 0, 0x80],
        }
    }

    async fn store(dir: &std::path::Path) -> Arc<dyn SessionStore> {
        let url = format!("sqlite://{}", dir.join("s.db").display());
        let store = SqliteStore::connect(&url, &StoreOptions::default())
            .await
            .unwrap();
        store.migrate().await.unwrap();
        Arc::new(store)
    }

    /// Concurrent restores, many more than the flights: each gets its own row (or none), and
    /// a row expired by a restore's own `now` is not handed to it.
    #[test]
    fn concurrent_reads_each_get_their_own_row() {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let store = store(dir.path()).await;
            let records: Vec<Record> = (1..=300).map(record).collect();
            store.set_many(&records).await.unwrap();
            let reads = Reads::new(Arc::clone(&store), Duration::from_secs(30), true);
            assert!(reads.batched, "a SQL store reads in batches");
            let absent = SessionId::generate().store_key();
            let gets = records.iter().enumerate().map(|(i, record)| {
                let reads = reads.clone();
                let (key, absent) = (record.meta.key.clone(), absent.clone());
                tokio::spawn(async move {
                    match i % 3 {
                        0 => (reads.get(&absent, 500).await.unwrap(), None),
                        // Expired at this restore's own `now`, whatever the batch read with.
                        1 => (reads.get(&key, 1_000).await.unwrap(), None),
                        _ => (reads.get(&key, 500).await.unwrap(), Some(key)),
                    }
                })
            });
            for get in futures_util::future::join_all(gets).await {
                let (found, expected) = get.unwrap();
                assert_eq!(found.map(|record| record.meta.key), expected);
            }
        });
    }

    /// The memory store, said to read in batches (it has no runtime of its own to outlive).
    struct Batching(crate::store::MemoryStore);

    #[async_trait::async_trait]
    impl SessionStore for Batching {
        async fn get(&self, key: &SessionKey, now: EpochMillis) -> Answer {
            self.0.get(key, now).await
        }
        fn reads_in_batches(&self) -> bool {
            true
        }
        async fn set_many(&self, records: &[Record]) -> Result<(), store::Error> {
            self.0.set_many(records).await
        }
        async fn update_many(
            &self,
            records: &[Record],
        ) -> Result<Vec<crate::store::Update>, store::Error> {
            self.0.update_many(records).await
        }
        async fn destroy_many(&self, keys: &[SessionKey]) -> Result<u64, store::Error> {
            self.0.destroy_many(keys).await
        }
        async fn reset_timer(
            &self,
            key: &SessionKey,
            modified_at: EpochMillis,
            expires_at: EpochMillis,
        ) -> Result<bool, store::Error> {
            self.0.reset_timer(key, modified_at, expires_at).await
        }
    }

    /// The reader lives in the runtime of the first read; when that runtime stops, the next
    /// read (in another runtime) starts it again rather than reading alone from then on.
    #[test]
    fn the_reader_is_started_again_in_a_new_runtime() {
        let record = record(1);
        let key = record.meta.key.clone();
        let reads = {
            let first = tokio::runtime::Runtime::new().unwrap();
            first.block_on(async {
                let store = Arc::new(Batching(crate::store::MemoryStore::new()));
                store.set_many(&[record]).await.unwrap();
                let reads = Reads::new(store, Duration::from_secs(30), true);
                assert!(reads.batched);
                assert!(reads.get(&key, 500).await.unwrap().is_some());
                reads
            })
        };
        let second = tokio::runtime::Runtime::new().unwrap();
        second.block_on(async {
            assert!(reads.get(&key, 500).await.unwrap().is_some());
            let queue = reads.queue.lock().unwrap();
            assert!(
                queue.as_ref().is_some_and(|sender| !sender.is_closed()),
                "a reader runs in the new runtime"
            );
        });
    }
}
