//! [`Persister`]: what saving, touching and deleting one application's sessions does in its
//! save mode.

use std::sync::Arc;

use super::{Op, Outcome, Owner, Persistence, SaveMode, WriteError, nobody};

/// A session found by [`Persister::load`].
pub(crate) struct Found {
    /// Its newest state.
    pub(crate) record: Record,
    /// Whether the store has a row for it (a queued first write has not made one yet).
    pub(crate) exists: bool,
    /// The session whose write is queued on this node, if the state came from the queue.
    pub(crate) queued_by: Option<Arc<dyn Owner>>,
}
use crate::id::SessionKey;
use crate::store::{self, EpochMillis, Record, Update, now_millis};

/// What became of a save.
#[derive(Debug)]
pub(crate) enum Saved {
    /// Committed, or refused with this outcome.
    Stored(Update),
    /// Queued (async mode); the writer reports to the entry later.
    Queued,
    /// Committed, but a change it carried was a true conflict and was dropped: not kept.
    Refused,
    /// Not committed, and not kept by the writer: the request is refused.
    Failed(WriteError),
}

/// Persists one application's sessions.
#[derive(Clone, Debug)]
pub(crate) struct Persister {
    persistence: Persistence,
    mode: SaveMode,
}

impl Persister {
    pub(crate) fn new(persistence: Persistence, mode: SaveMode) -> Self {
        Self { persistence, mode }
    }

    pub(crate) fn mode(&self) -> SaveMode {
        self.mode
    }

    pub(crate) fn persistence(&self) -> &Persistence {
        &self.persistence
    }

    /// Reads a live session: the newest state queued on this node if there is one (with
    /// whether its row exists yet, and the session the write belongs to), else the row.
    pub(crate) async fn load(
        &self,
        key: &SessionKey,
        now: EpochMillis,
    ) -> Result<Option<Found>, store::Error> {
        let writer = &self.persistence.writer;
        match writer.pending(key) {
            Some(queued) => Ok(queued
                .filter(|q| q.record.meta.expires_at > now)
                .map(|q| Found {
                    record: q.record,
                    exists: q.exists,
                    queued_by: Some(q.owner),
                })),
            None => Ok(self.row(key, now).await?.map(|record| Found {
                record,
                exists: true,
                queued_by: None,
            })),
        }
    }

    /// The live row of `key` in the store, whatever this node has queued (`None`: absent or
    /// expired): what a cached copy found older than the row is refreshed from.
    pub(crate) async fn row(
        &self,
        key: &SessionKey,
        now: EpochMillis,
    ) -> Result<Option<Record>, store::Error> {
        self.persistence.reads.get(key, now).await
    }

    /// The version of the live row of `key` (`None`: absent or expired), to check a cached
    /// copy.
    pub(crate) async fn version(
        &self,
        key: &SessionKey,
        now: EpochMillis,
    ) -> Result<Option<i64>, store::Error> {
        let writer = &self.persistence.writer;
        writer.bounded(writer.store().version(key, now)).await
    }

    /// Writes a changed session as the app's mode says (see the module docs). The entry is told
    /// what became of it.
    pub(crate) async fn save(
        &self,
        record: Record,
        version: i64,
        new: bool,
        entry: Arc<dyn Owner>,
    ) -> Saved {
        let writer = &self.persistence.writer;
        let key = record.meta.key.clone();
        let op = Op::Save {
            record,
            version,
            new,
        };
        match self.mode {
            SaveMode::Async => {
                if writer
                    .enqueue(key.clone(), op.clone(), entry.clone())
                    .is_ok()
                {
                    return Saved::Queued;
                }
                crate::metrics::sync_fallback();
                self.save_directly(key, op, entry).await
            }
            SaveMode::Sync if self.persistence.group_commit => {
                let wait = writer.enqueue_and_wait(key.clone(), op, entry);
                // The request's deadline: the window and the commit of its batch. A save not
                // committed by then is refused, and its write withdrawn if it is still queued:
                // sync means answered 2xx once committed, never kept for later.
                let timeout = writer.store_timeout();
                match tokio::time::timeout(timeout, wait).await {
                    // The writer has already told the entry.
                    Ok(Outcome::Stored(update)) => Saved::Stored(update),
                    Ok(Outcome::Refused) => Saved::Refused,
                    Ok(Outcome::Failed(error)) => {
                        writer.withdraw(&key);
                        Saved::Failed(error)
                    }
                    Err(_) => {
                        writer.withdraw(&key);
                        Saved::Failed(WriteError::Timeout(timeout))
                    }
                }
            }
            SaveMode::Sync => self.save_directly(key, op, entry).await,
        }
    }

    async fn save_directly(&self, key: SessionKey, op: Op, entry: Arc<dyn Owner>) -> Saved {
        let writer = &self.persistence.writer;
        match writer.write_direct(key, op, entry).await {
            Outcome::Stored(update) => Saved::Stored(update),
            Outcome::Refused => Saved::Refused,
            Outcome::Failed(error) => Saved::Failed(error),
        }
    }

    /// Queues the write of a session the store lost (see [`crate::store::SessionStore::emptied`])
    /// for the next flush, which [`Persister::flush_soon`] brings forward. `false` if the queue
    /// is full: the session's next request saves it.
    pub(crate) fn write_back(&self, record: Record, version: i64, entry: Arc<dyn Owner>) -> bool {
        let key = record.meta.key.clone();
        let op = Op::Save {
            record,
            version,
            new: true,
        };
        self.persistence.writer.enqueue(key, op, entry).is_ok()
    }

    /// Inserts `records` as they are (their versions decide against rows other nodes write),
    /// in batches of the writer's size, each bounded by the store timeout.
    pub(crate) async fn write_rows(&self, records: &[Record]) -> Result<(), store::Error> {
        let writer = &self.persistence.writer;
        for chunk in records.chunks(writer.max_items()) {
            writer.bounded(writer.store().set_many(chunk)).await?;
        }
        Ok(())
    }

    /// Flushes every queued write now.
    pub(crate) fn flush_soon(&self) {
        self.persistence.writer.flush_soon();
    }

    /// Pushes an unchanged session's expiry forward.
    pub(crate) async fn touch(
        &self,
        key: &SessionKey,
        now: EpochMillis,
        expires_at: EpochMillis,
    ) -> Result<bool, store::Error> {
        let writer = &self.persistence.writer;
        writer
            .bounded(writer.store().reset_timer(key, now, expires_at))
            .await
    }

    /// Replaces the blob of the live row of `key` at `version` (the same data under the
    /// current key); `true` if it was.
    pub(crate) async fn rekey(
        &self,
        key: &SessionKey,
        version: i64,
        data: &[u8],
    ) -> Result<bool, store::Error> {
        let writer = &self.persistence.writer;
        writer
            .bounded(writer.store().rekey(key, version, data, now_millis()))
            .await
    }

    /// Queues the removal of a session's old row behind the writes already queued (a rotation
    /// whose new row is not written yet): in one batch saves go before deletes.
    pub(crate) async fn destroy_later(&self, key: &SessionKey) {
        let queued = self
            .persistence
            .writer
            .enqueue(key.clone(), Op::Delete, nobody());
        if queued.is_err()
            && let Err(error) = self.destroy(key).await
        {
            tracing::error!(session = %key.short_hash(), error = &error as &dyn std::error::Error, "cannot remove ended session from the store");
        }
    }

    /// Removes an ended session, after any write of it that is already queued.
    pub(crate) async fn destroy(&self, key: &SessionKey) -> Result<(), WriteError> {
        let writer = &self.persistence.writer;
        let wait = writer.enqueue_and_wait(key.clone(), Op::Delete, nobody());
        let timeout = writer.store_timeout();
        match tokio::time::timeout(timeout, wait).await {
            Ok(Outcome::Stored(_) | Outcome::Refused) => Ok(()),
            Ok(Outcome::Failed(error)) => Err(error),
            Err(_) => Err(WriteError::Timeout(timeout)),
        }
    }
}
