//! The queue: one pending write per session, in three insertion-ordered maps, and the rules
//! that merge a new write into a pending one.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use indexmap::IndexMap;
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::Scope;
use crate::id::SessionKey;
use crate::persist::{Owner, WriteError};
use crate::store::{Record, Update};

/// A write to make.
#[derive(Clone, Debug)]
#[allow(clippy::large_enum_variant)] // nearly every op is a save; boxing would only add a hop
pub(crate) enum Op {
    /// Write `record`, snapshot `version` of the session on this node (the node's sequence,
    /// which orders its writes; the row version is in the record); insert if `new` (the store
    /// has no row yet), else update only, with a compare-and-set on the row version before the
    /// record's.
    Save {
        record: Record,
        version: i64,
        new: bool,
    },
    /// Remove the row.
    Delete,
}

/// What became of a write, as told to a waiting request.
#[derive(Clone, Debug)]
pub(crate) enum Outcome {
    /// Committed (or, for a delete, done).
    Stored(Update),
    /// Committed with the other changes of its batch, but a change it carried was based on a
    /// value another node replaced meanwhile and was dropped (a true conflict): not kept.
    Refused,
    /// Not committed (a sync save: dropped, nobody keeps it; a delete: kept and retried).
    Failed(WriteError),
}

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
    /// Makes `record` (snapshot `version`) the folded state if that is newer. `false` if the
    /// folded state could not be encoded (or its encoding panicked): `record` stands, and the
    /// caller must keep the change for the session's next request.
    pub(super) fn newest(&self, record: &mut Record, version: &mut i64) -> bool {
        if self.version <= *version {
            return true;
        }
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (self.encode)())) {
            Ok(Some(fresh)) => {
                *record = fresh;
                *version = self.version;
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
pub(super) fn newer(a: Option<Folded>, b: Option<Folded>) -> Option<Folded> {
    match (a, b) {
        (Some(a), Some(b)) => Some(if a.version >= b.version { a } else { b }),
        (a, b) => a.or(b),
    }
}

pub(super) struct Pending {
    pub(super) op: Op,
    /// The session's node entry, told what became of the write.
    pub(super) entry: Arc<dyn Owner>,
    /// A later change folded into this write without being encoded yet (async mode).
    pub(super) folded: Option<Folded>,
    pub(super) waiters: Vec<oneshot::Sender<Outcome>>,
    /// When the oldest state merged into this one was queued.
    pub(super) since: Instant,
    pub(super) attempts: u32,
    /// Retry not before this instant.
    pub(super) not_before: Option<Instant>,
    /// Earlier sends of this write that failed or timed out and may have been committed all
    /// the same (a late answer, a connection lost during the commit). A compare-and-set that
    /// then fails checks these before it merges: finding its own row, it must not apply its
    /// changes a second time.
    pub(super) unsure: Vec<Unsure>,
    /// Whether someone was told this write will be made: an async save (answered when
    /// queued), a delete, a write-back. A sync save is not: its request is answered once it
    /// is committed, or refused, so a sync save that fails is dropped, never retried later
    /// behind a refusal.
    pub(super) kept: bool,
    /// A merge of this write with another node's row dropped a change it carried as a true
    /// conflict: its requests are told `Refused` when it commits, whichever send commits it.
    pub(super) refused: bool,
}

/// A send of a write whose outcome is unknown (see [`Pending::unsure`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Unsure {
    /// The node's snapshot version it carried.
    pub(super) version: i64,
    /// The row version it was sent as.
    pub(super) row: i64,
    /// SHA-256 of the blob sent (every encryption draws a new nonce, so with a secret set only
    /// this send made it; without one, an equal blob is an equal state).
    digest: [u8; 32],
}

impl Unsure {
    /// The most kept per write. More sends fail only while the store stays unreachable; the
    /// first is always kept (the send most likely to have committed before the store went
    /// away), later ones give way to newer ones.
    pub(super) const KEPT: usize = 4;

    /// Keeps the first note and the newest ones, [`Unsure::KEPT`] in all.
    fn cap(notes: &mut Vec<Unsure>) {
        if notes.len() > Self::KEPT {
            let excess = notes.len() - Self::KEPT;
            notes.drain(1..=excess);
        }
    }

    pub(super) fn new(version: i64, sent: &Record) -> Self {
        use sha2::Digest as _;
        Self {
            version,
            row: sent.meta.version,
            digest: sha2::Sha256::digest(&sent.data).into(),
        }
    }

    /// Whether `stored` is this send, committed.
    pub(super) fn is(&self, stored: &Record) -> bool {
        use sha2::Digest as _;
        stored.meta.version == self.row
            && <[u8; 32]>::from(sha2::Sha256::digest(&stored.data)) == self.digest
    }
}

#[derive(Default)]
pub(super) struct Queue {
    /// Sessions this writer deleted recently, and when: a save of one of them arriving late
    /// (its request encoded it before the logout) is refused, not inserted. Pruned by age.
    pub(super) deleted: HashMap<SessionKey, Instant>,
    /// Sessions in a batch being written now: not taken into another batch until it is done,
    /// so the writes of one session are stored in order.
    pub(super) in_flight: HashSet<SessionKey>,
    /// Writes someone waits for.
    pub(super) urgent: IndexMap<SessionKey, Pending>,
    /// Async writes, flushed every interval.
    pub(super) lazy: IndexMap<SessionKey, Pending>,
    /// Failed writes waiting for their backoff.
    pub(super) retry: IndexMap<SessionKey, Pending>,
}

impl Pending {
    /// Notes that `sent` (this write, as sent) failed or timed out: see [`Pending::unsure`].
    pub(super) fn unsure(&mut self, sent: &Record) {
        if let Op::Save { version, .. } = &self.op {
            self.unsure.push(Unsure::new(*version, sent));
            Unsure::cap(&mut self.unsure);
        }
    }
}

impl Queue {
    pub(super) fn len(&self) -> usize {
        self.urgent.len() + self.lazy.len() + self.retry.len()
    }

    pub(super) fn take(&mut self, key: &SessionKey) -> Option<Pending> {
        self.urgent
            .shift_remove(key)
            .or_else(|| self.lazy.shift_remove(key))
            .or_else(|| self.retry.shift_remove(key))
    }

    pub(super) fn find(&self, key: &SessionKey) -> Option<&Pending> {
        self.urgent
            .get(key)
            .or_else(|| self.lazy.get(key))
            .or_else(|| self.retry.get(key))
    }

    pub(super) fn put(&mut self, key: SessionKey, pending: Pending, now: Instant) {
        if pending.not_before.is_some_and(|t| t > now) {
            self.retry.insert(key, pending);
        } else if pending.waiters.is_empty() {
            self.lazy.insert(key, pending);
        } else {
            self.urgent.insert(key, pending);
        }
    }

    /// Moves retries whose backoff has passed back to the urgent or lazy queue.
    pub(super) fn release_due(&mut self, now: Instant) {
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
    pub(super) fn take_batch(&mut self, scope: Scope, max: usize) -> Vec<(SessionKey, Pending)> {
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
    pub(super) fn urgent_ready(&self) -> bool {
        self.urgent.keys().any(|k| !self.in_flight.contains(k))
    }

    pub(super) fn next_retry(&self) -> Option<Instant> {
        self.retry.values().filter_map(|p| p.not_before).min()
    }

    pub(super) fn oldest(&self) -> Option<Instant> {
        [&self.urgent, &self.lazy, &self.retry]
            .into_iter()
            .filter_map(|q| q.values().map(|p| p.since).min())
            .min()
    }
}

/// Merges a new write into the pending one of the same session.
pub(super) fn merge(old: Pending, mut new: Pending) -> Pending {
    new.since = old.since;
    new.folded = newer(old.folded.clone(), new.folded.take());
    new.attempts = old.attempts;
    new.not_before = old.not_before;
    new.kept |= old.kept;
    new.refused |= old.refused;
    let mut unsure = old.unsure.clone();
    unsure.append(&mut new.unsure);
    Unsure::cap(&mut unsure);
    new.unsure = unsure;
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
                version: old_version,
                new: was_new,
            },
            Op::Save {
                record: new_record,
                version: new_version,
                new: is_new,
            },
        ) => {
            // A session new to the store stays an insert until that insert has happened.
            *is_new |= *was_new;
            // Requests of one session encode and enqueue in their own tasks, so states can
            // arrive out of order: the higher version is the newer state.
            if *old_version > *new_version {
                *new_record = old_record.clone();
                *new_version = *old_version;
            }
        }
        _ => {}
    }
    waiters.append(&mut new.waiters);
    new.waiters = waiters;
    new
}
