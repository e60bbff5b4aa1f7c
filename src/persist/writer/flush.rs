//! One flush: a batch's store calls (deletes, inserts, updates), what their outcomes mean for
//! the node's entries and the waiting requests, and what a failure does (a kept write: retry with
//! backoff, or give up and leave the change to the session's next request; a sync save: try
//! again shortly while its requests wait, else drop it and refuse them).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::handle::Shared;
use super::queue::{Op, Outcome, Pending, merge};
use super::{FlushReport, Scope, WriterConfig};
use crate::id::SessionKey;
use crate::persist::{Rebased, WriteError};
use crate::store::{self, Record, Update};

impl Shared {
    pub(super) async fn flush(self: &Arc<Self>, scope: Scope) -> FlushReport {
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
        let report = self.write(batch, Disposition::Requeue).await;
        crate::metrics::queue_depth(self.queue().len());
        report
    }

    /// Stores a batch: deletes in one call, new sessions in one `set_many`, existing ones in one
    /// `update_many`; tells each entry and waiter what became of its write.
    pub(super) async fn write(
        &self,
        mut batch: Vec<(SessionKey, Pending)>,
        disposition: Disposition,
    ) -> FlushReport {
        // Folded changes are encoded now, once per session and batch, outside the queue's lock.
        for (_, pending) in &mut batch {
            if let (
                Some(folded),
                Op::Save {
                    record, version, ..
                },
            ) = (&pending.folded, &mut pending.op)
                && !folded.newest(record, version)
            {
                let entry = &pending.entry;
                // Not encodable now: the session's next request saves it again.
                entry.not_saved();
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
        let mut carried = Vec::new();
        {
            let queue = self.queue();
            for (key, pending) in batch {
                let ended = pending.entry.is_ended() || queue.deleted.contains_key(&key);
                match &pending.op {
                    Op::Delete => deletes.push((key, pending)),
                    // Ended since it was queued: writing it would bring it back.
                    Op::Save { .. } if ended => {
                        report.conflicts += 1;
                        resolve(pending, Update::Missing);
                    }
                    // A later snapshot of the session, which carries this one, is committed.
                    Op::Save {
                        version, record, ..
                    } if pending.entry.is_committed(*version) => {
                        let row = record.meta.version;
                        carried.push((key, pending, row));
                    }
                    Op::Save { new: true, .. } => inserts.push((key, pending)),
                    Op::Save { new: false, .. } => updates.push((key, pending)),
                }
            }
        }
        for (key, pending, row) in carried {
            self.written(&key, pending, row, false);
        }
        // Saves before deletes: a rotation's new row lands before its old row goes.
        if !inserts.is_empty() {
            report.statements += 1;
            // A new session's later snapshot, taken before its first insert committed, follows
            // that insert's row (an insert replaces only a lower version).
            let records: Vec<Record> = inserts.iter().map(|(_, p)| compare_and_set(p)).collect();
            match self.bounded(self.store.set_many(&records)).await {
                Ok(()) => {
                    report.written += inserts.len();
                    for ((key, pending), sent) in inserts.into_iter().zip(&records) {
                        self.written(&key, pending, sent.meta.version, false);
                    }
                }
                Err(error) => Box::pin(self.failed(inserts, error, disposition, &mut report)).await,
            }
        }
        if !updates.is_empty() {
            report.statements += 1;
            let records: Vec<Record> = updates.iter().map(|(_, p)| compare_and_set(p)).collect();
            match self.bounded(self.store.update_many(&records)).await {
                Ok(outcomes) if outcomes.len() == updates.len() => {
                    let mut lost = Vec::new();
                    for (((key, pending), outcome), sent) in
                        updates.into_iter().zip(outcomes).zip(&records)
                    {
                        match outcome {
                            Update::Written => {
                                report.written += 1;
                                self.written(&key, pending, sent.meta.version, false);
                            }
                            Update::Superseded => lost.push((key, pending)),
                            Update::Missing => {
                                report.conflicts += 1;
                                resolve(pending, Update::Missing);
                            }
                        }
                    }
                    for (key, pending) in lost {
                        Box::pin(self.rebase(key, pending, disposition, &mut report)).await;
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
                    Box::pin(self.failed(updates, error, disposition, &mut report)).await;
                }
                Err(error) => {
                    let mut updates = updates;
                    for ((_, pending), sent) in updates.iter_mut().zip(&records) {
                        pending.unsure(sent);
                    }
                    Box::pin(self.failed(updates, error, disposition, &mut report)).await;
                }
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
                Err(error) => Box::pin(self.failed(deletes, error, disposition, &mut report)).await,
            }
        }
        let seconds = started.elapsed().as_secs_f64();
        crate::metrics::flushed(report.taken, report.statements, report.failed, seconds);
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

    /// An update lost its compare-and-set: another write changed the row since the version the
    /// record descends from. If that write was this node's own later snapshot, which carries
    /// this one, there is nothing left to do. Otherwise (another node's write, usually) reads
    /// the row, lets the session merge its uncommitted changes into it
    /// ([`crate::persist::Owner::rebase`]) and writes the result, based on the row just read;
    /// a few times if the row keeps moving, then the write goes back to the queue with
    /// backoff. Nothing is acknowledged that is not written: a change refused as a true
    /// conflict is reported to its waiters.
    async fn rebase(
        &self,
        key: SessionKey,
        mut pending: Pending,
        disposition: Disposition,
        report: &mut FlushReport,
    ) {
        let mut refused = false;
        for _ in 0..MAX_REBASES {
            if let Op::Save { version, .. } = &pending.op
                && pending.entry.is_committed(*version)
            {
                let row = record_of(&pending).meta.version;
                self.written(&key, pending, row, refused);
                return;
            }
            report.statements += 1;
            let now = crate::store::now_millis();
            let stored = match self.bounded(self.store.get(&key, now)).await {
                Ok(Some(stored)) => stored,
                Ok(None) => {
                    report.conflicts += 1;
                    resolve(pending, Update::Missing);
                    return;
                }
                Err(error) => {
                    pending.refused |= refused;
                    return self
                        .failed(vec![(key, pending)], error, disposition, report)
                        .await;
                }
            };
            if let Some(own) = pending.unsure.iter().find(|u| u.is(&stored)).cloned() {
                // The row is this write's own earlier send, committed though its answer was
                // lost: applying its changes again on top would double them.
                tracing::info!(session = %key.short_hash(), row = own.row, "a write whose answer was lost had been committed; not applied again");
                crate::metrics::unsure_resolved();
                pending.unsure.clear();
                pending.entry.stored(own.version, own.row, Update::Written);
                if let Op::Save { version, .. } = &pending.op
                    && pending.entry.is_committed(*version)
                {
                    self.written(&key, pending, own.row, refused);
                    return;
                }
                // A later state merged into this write since: only its own changes, made after
                // that send, are merged into the row below.
            }
            // Changes acknowledged already (async saves, write-backs) must not be refused now: a
            // sync save, whose requests are answered only once it is committed, refuses a true
            // conflict.
            let refuse = !pending.kept;
            let (record, merged) = match pending.entry.rebase(&stored, refuse) {
                Rebased::Write {
                    record,
                    version,
                    refused: conflict,
                } => {
                    refused |= conflict;
                    (record, version)
                }
                Rebased::Gone => {
                    report.conflicts += 1;
                    resolve(pending, Update::Superseded);
                    return;
                }
            };
            crate::metrics::rebased();
            if let Op::Save {
                record: queued,
                version,
                ..
            } = &mut pending.op
            {
                *queued = record;
                *version = merged;
            }
            pending.folded = None;
            report.statements += 1;
            let sent = compare_and_set(&pending);
            match self.bounded(self.store.update(&sent)).await {
                Ok(Update::Written) => {
                    report.written += 1;
                    self.written(&key, pending, sent.meta.version, refused);
                    return;
                }
                Ok(Update::Superseded) => continue,
                Ok(Update::Missing) => {
                    report.conflicts += 1;
                    resolve(pending, Update::Missing);
                    return;
                }
                Err(error) => {
                    pending.unsure(&sent);
                    // Told when a later send commits it.
                    pending.refused |= refused;
                    return self
                        .failed(vec![(key, pending)], error, disposition, report)
                        .await;
                }
            }
        }
        pending.refused |= refused;
        let error = store::Error::Backend(
            format!("the row kept changing during {MAX_REBASES} compare-and-set attempts").into(),
        );
        self.failed(vec![(key, pending)], error, disposition, report)
            .await;
    }

    /// A save was committed as row version `row`. Queued writes of the session that this one
    /// already carries (earlier snapshots, or all of them after a rebase) are done too; a
    /// later one lost its compare-and-set and is merged.
    fn written(&self, key: &SessionKey, pending: Pending, row: i64, refused: bool) {
        let refused = refused || pending.refused;
        let version = match &pending.op {
            Op::Save { version, .. } => *version,
            Op::Delete => 0,
        };
        let carried = {
            let mut queue = self.queue();
            match queue.find(key) {
                Some(Pending {
                    op: Op::Save {
                        version: queued, ..
                    },
                    folded,
                    ..
                }) if *queued <= version
                    && folded.as_ref().is_none_or(|f| f.version <= version) =>
                {
                    queue.take(key)
                }
                _ => None,
            }
        };
        pending.entry.stored(version, row, Update::Written);
        let outcome = if refused {
            Outcome::Refused
        } else {
            Outcome::Stored(Update::Written)
        };
        for waiter in pending.waiters {
            let _ = waiter.send(outcome.clone());
        }
        if let Some(carried) = carried {
            for waiter in carried.waiters {
                let _ = waiter.send(outcome.clone());
            }
        }
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

    /// A store call bounded by the store timeout: a hung database must not hang the writer, and
    /// no request waits on one call longer than that. Every store call of the layer goes
    /// through here, except the reads of restores, which `persist::reads` bounds by the same
    /// timeout.
    pub(super) async fn bounded<T>(
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
        disposition: Disposition,
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
                let single = self.write(vec![write], disposition).await;
                report.written += single.written;
                report.conflicts += single.conflicts;
                report.deleted += single.deleted;
                report.failed += single.failed;
            }
            return;
        }
        report.failed += writes.len();
        let error = Arc::new(error);
        if disposition == Disposition::LeaveToEntry {
            // Written in the request's own task: the session's next request saves it again.
            for (_, pending) in writes {
                pending.entry.not_saved();
                for waiter in pending.waiters {
                    let _ = waiter.send(Outcome::Failed(WriteError::Store(Arc::clone(&error))));
                }
            }
            return;
        }
        tracing::error!(
            writes = writes.len(),
            error = &*error as &dyn std::error::Error,
            "session writes failed; sync saves are refused, the other writes kept and retried with backoff"
        );
        let now = Instant::now();
        let mut queue = self.queue();
        for (key, mut pending) in writes {
            if !pending.kept && transient && pending.waiters.iter().any(|w| !w.is_closed()) {
                // A sync save whose requests still wait (each until its store timeout): tried
                // again shortly, a deadlock, a certification conflict or a busy row being
                // the usual causes. If they stop waiting first, it is withdrawn or dropped.
                pending.attempts = pending.attempts.saturating_add(1);
                pending.not_before = Some(now + soon(pending.attempts));
                crate::metrics::write_retries(1);
                let pending = match queue.take(&key) {
                    Some(newer) => merge(pending, newer),
                    None => pending,
                };
                queue.put(key, pending, now);
                continue;
            }
            for waiter in pending.waiters.drain(..) {
                let _ = waiter.send(Outcome::Failed(WriteError::Store(Arc::clone(&error))));
            }
            if !pending.kept {
                // A sync save: its requests are refused, so it is not made later. A newer
                // state queued meanwhile goes on with its own waiters (built on this one, so
                // it keeps its insert-or-update and its unsure sends); otherwise the copy is
                // marked dropped, so that no request makes it again.
                match queue.take(&key) {
                    Some(newer) => queue.put(key, merge(pending, newer), now),
                    None => pending.entry.dropped(),
                }
                continue;
            }
            crate::metrics::write_retries(1);
            pending.attempts = pending.attempts.saturating_add(1);
            if !transient && pending.attempts >= MAX_ATTEMPTS {
                tracing::error!(
                    session = %key.short_hash(),
                    attempts = pending.attempts,
                    "the store keeps refusing this session's write; given up here, kept in memory for its next request"
                );
                pending.entry.not_saved();
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

/// What a failed write becomes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Disposition {
    /// Back to the queue, retried with backoff by the worker.
    Requeue,
    /// A direct write (in the request's own task, not queued): the entry is marked changed and
    /// the session's next request saves it again.
    LeaveToEntry,
}

/// The record of a pending update as sent to the store: the row version after the one its
/// state descends from (see [`crate::persist::Owner::base_for`]).
///
/// An insert (a new session's key, which only this node writes) is made as the snapshot's own
/// number instead: two inserts of one session in flight at once (a direct write beside a
/// flush) both have base 0, and the later snapshot must win the store's "replace only a lower
/// version" rule, not be skipped as equal.
fn compare_and_set(pending: &Pending) -> Record {
    let mut record = record_of(pending);
    match &pending.op {
        Op::Save {
            version, new: true, ..
        } => record.meta.version = *version,
        Op::Save { version, .. } => {
            if let Some(base) = pending.entry.base_for(*version) {
                record.meta.version = base.saturating_add(1);
            }
        }
        Op::Delete => {}
    }
    record
}

fn record_of(pending: &Pending) -> Record {
    match &pending.op {
        Op::Save { record, .. } => record.clone(),
        Op::Delete => unreachable!("deletes are batched separately"),
    }
}

/// Tells the entry and the waiters what became of a write (for an insert, `Written` means the
/// row has the record's version).
fn resolve(pending: Pending, outcome: Update) {
    if let Op::Save {
        record, version, ..
    } = &pending.op
    {
        pending.entry.stored(*version, record.meta.version, outcome);
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
pub(super) const MAX_ATTEMPTS: u32 = 5;
/// Compare-and-set attempts of one write in one flush when the row keeps changing.
const MAX_REBASES: usize = 4;

/// The pause before a sync save whose requests still wait is tried again: 5 ms, doubling to
/// 160 ms (their store timeout bounds the whole).
fn soon(attempts: u32) -> Duration {
    Duration::from_millis(5 << attempts.clamp(1, 6).saturating_sub(1))
}
/// How long, and how many, deleted keys are remembered against late saves.
const DELETED_HORIZON: Duration = Duration::from_secs(600);
const DELETED_CAPACITY: usize = 100_000;

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
