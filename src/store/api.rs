//! The two store traits: [`SessionStore`], what the layer and the writer need (five required
//! methods), and [`SessionAdmin`], what operators' tools add (list, stats, purge, …).

use std::time::Duration;

use super::{EpochMillis, Error, ListQuery, Meta, Pushed, Record, Stats, Update};
use crate::id::SessionKey;

/// A session store: what the failover filter and its writer ask of one. Implement it (and
/// [`SessionAdmin`] for the operator tools) to plug in a store of your own.
///
/// Every method is one logical operation, and each `_many` should be one round trip.
/// Implementations must treat rows with `expires_at <= now` as absent. An insert
/// ([`SessionStore::set_many`]) must not replace a row whose `version` is greater than or equal
/// to the written one (it is skipped, not an error); an update
/// ([`SessionStore::update_many`]) is a compare-and-set: it replaces the row only if the row's
/// `version` is exactly the written version minus one, the version the writer read. The
/// single-record methods default to their `_many` form.
#[async_trait::async_trait]
pub trait SessionStore: Send + Sync + 'static {
    /// The session stored under `key`, unless it is absent or expired at `now`.
    async fn get(&self, key: &SessionKey, now: EpochMillis) -> Result<Option<Record>, Error>;

    /// The sessions stored under `keys`, as [`SessionStore::get`] reads each: one outcome per
    /// key, in order (a key may repeat). The outer error fails them all (the query failed); an
    /// inner one only its key (a row that does not decode). Restores that arrive together are
    /// read with it only if [`SessionStore::reads_in_batches`]. The default reads the keys
    /// concurrently with `get`; a SQL store reads them in one query.
    async fn get_many(
        &self,
        keys: &[SessionKey],
        now: EpochMillis,
    ) -> Result<Vec<Result<Option<Record>, Error>>, Error> {
        Ok(futures_util::future::join_all(keys.iter().map(|key| self.get(key, now))).await)
    }

    /// Whether [`SessionStore::get_many`] reads its keys in one round trip, so that restores
    /// arriving together are worth reading together (`session.restore.batch`). Default
    /// `false`: each restore reads alone, and a slow key delays no other.
    fn reads_in_batches(&self) -> bool {
        false
    }

    /// Inserts or replaces many sessions (see the version rule above), in one round trip where
    /// the backend allows.
    async fn set_many(&self, records: &[Record]) -> Result<(), Error>;

    /// Replaces existing, unexpired sessions' rows whose version is `record.version - 1`
    /// (compare-and-set: the writer read that version); never creates or revives a row, so a
    /// session deleted or expired meanwhile stays gone. One outcome per record, in order:
    /// `Superseded` when the row holds another version (another write got there first),
    /// `Missing` when there is no live row. When a batch holds two states of one session, the
    /// older may be reported `Written` or `Superseded`.
    async fn update_many(&self, records: &[Record]) -> Result<Vec<Update>, Error>;

    /// Removes many sessions; returns how many rows were removed.
    async fn destroy_many(&self, keys: &[SessionKey]) -> Result<u64, Error>;

    /// Pushes a live session's expiry forward without rewriting its data; `true` if it was found.
    async fn reset_timer(
        &self,
        key: &SessionKey,
        modified_at: EpochMillis,
        expires_at: EpochMillis,
    ) -> Result<bool, Error>;

    /// Replaces the blob of the live row of `key` if the row is at `version`, keeping its
    /// version, expiry and every other column: `data` is the same session encoded under the
    /// current key (after a secret rotation). `false` if the row is absent, expired at `now` or
    /// at another version. The default does nothing and answers `false`: rows then move to the
    /// new key only when they are written.
    async fn rekey(
        &self,
        key: &SessionKey,
        version: i64,
        data: &[u8],
        now: EpochMillis,
    ) -> Result<bool, Error> {
        let _ = (key, version, data, now);
        Ok(false)
    }

    /// The version of the session stored under `key`, unless it is absent or expired at
    /// `now`: the cheap read a node makes to learn whether its cached copy is still the newest
    /// (`session.cache.verify.interval`). The default reads the whole row; the SQL stores read
    /// one column by primary key.
    async fn version(&self, key: &SessionKey, now: EpochMillis) -> Result<Option<i64>, Error> {
        Ok(self.get(key, now).await?.map(|record| record.meta.version))
    }

    /// Whether the store answers: one cheap round trip, for `GET /health/store`. The default
    /// reads the version of a key nobody has.
    async fn ping(&self) -> Result<(), Error> {
        let probe = crate::id::SessionId::generate().store_key();
        self.version(&probe, super::now_millis()).await.map(|_| ())
    }

    /// Changes of the table, pushed by the database as other nodes (and this one) make them,
    /// if the store can push them (PostgreSQL `LISTEN/NOTIFY`); `None` otherwise, and then
    /// nodes check their cached copies by [`SessionStore::version`]. The first call starts
    /// listening (in the caller's tokio runtime); every receiver gets every change after it
    /// subscribed, a receiver that falls behind is told it lagged.
    fn subscribe(&self) -> Option<tokio::sync::broadcast::Receiver<Pushed>> {
        None
    }

    /// A counter the store moves on each time it finds it has lost its data (a Redis
    /// restarted without persistence, a flushed database), if it can tell; `None` otherwise.
    /// Nodes then write back every session they hold, so no signed-in user is lost while a node
    /// still has them. A store that can tell also answers an update or a check that finds a
    /// session missing for that reason with an error (retried), not as missing (which ends it).
    fn emptied(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        None
    }

    /// Inserts or replaces one session: [`SessionStore::set_many`] of one.
    async fn set(&self, record: &Record) -> Result<(), Error> {
        self.set_many(std::slice::from_ref(record)).await
    }

    /// [`SessionStore::update_many`] of one.
    async fn update(&self, record: &Record) -> Result<Update, Error> {
        let outcomes = self.update_many(std::slice::from_ref(record)).await?;
        outcomes
            .into_iter()
            .next()
            .ok_or_else(|| Error::Backend("update_many answered no outcome for one record".into()))
    }

    /// Removes a session; `true` if a row was removed: [`SessionStore::destroy_many`] of one.
    async fn destroy(&self, key: &SessionKey) -> Result<bool, Error> {
        Ok(self.destroy_many(std::slice::from_ref(key)).await? > 0)
    }
}

/// What operators' tools (the `sessions` command, the backoffice, the purge) ask of a store on
/// top of [`SessionStore`].
#[async_trait::async_trait]
pub trait SessionAdmin: SessionStore {
    /// Metadata of stored sessions matching `query` (expired ones not yet purged included),
    /// ordered by key.
    async fn list(&self, query: &ListQuery) -> Result<Vec<Meta>, Error>;

    /// Up to `limit` sessions live at `now` with their data, ordered by key, after `after`
    /// (re-encryption pages through them). The default lists keys and reads each row.
    async fn records(
        &self,
        after: Option<&SessionKey>,
        limit: u32,
        now: EpochMillis,
    ) -> Result<Vec<Record>, Error> {
        let mut after = after.cloned();
        let mut records = Vec::new();
        // A page of expired rows only is not the end.
        while records.is_empty() {
            let page = self
                .list(&ListQuery {
                    after: after.take(),
                    limit,
                    ..ListQuery::default()
                })
                .await?;
            let Some(last) = page.last() else { break };
            after = Some(last.key.clone());
            for meta in page {
                if let Some(record) = self.get(&meta.key, now).await? {
                    records.push(record);
                }
            }
        }
        Ok(records)
    }

    /// Deletes rows expired at `now`, at most `batch_size` per statement; returns how many.
    async fn purge_expired(&self, now: EpochMillis, batch_size: u32) -> Result<u64, Error>;

    /// [`SessionAdmin::purge_expired`] by one node at a time: `None` if another node holds the
    /// purge lock. The default takes no lock (a store with a single writer needs none).
    async fn purge_expired_exclusive(
        &self,
        now: EpochMillis,
        batch_size: u32,
    ) -> Result<Option<u64>, Error> {
        self.purge_expired(now, batch_size).await.map(Some)
    }

    /// Counts of the stored sessions at `now`. The default pages through [`SessionAdmin::list`];
    /// the SQL stores count with one `GROUP BY`.
    async fn stats(&self, now: EpochMillis) -> Result<Stats, Error> {
        let mut stats = Stats::default();
        let mut after = None;
        loop {
            let page = self
                .list(&ListQuery {
                    after: after.clone(),
                    limit: 1000,
                    ..ListQuery::default()
                })
                .await?;
            let Some(last) = page.last() else {
                return Ok(stats);
            };
            after = Some(last.key.clone());
            for meta in &page {
                stats.add_row(meta, now);
            }
        }
    }

    /// Number of stored rows (expired ones not yet purged included).
    async fn length(&self) -> Result<u64, Error> {
        Ok(self.stats(EpochMillis::MIN).await?.sessions)
    }

    /// Removes every session.
    async fn clear(&self) -> Result<(), Error>;

    /// Whether a live session is stored under `key` at `now`.
    async fn exists(&self, key: &SessionKey, now: EpochMillis) -> Result<bool, Error> {
        Ok(self.get(key, now).await?.is_some())
    }

    /// How long until the session expires, if it is live at `now`.
    async fn ttl(&self, key: &SessionKey, now: EpochMillis) -> Result<Option<Duration>, Error> {
        Ok(self
            .get(key, now)
            .await?
            .map(|r| Duration::from_millis((r.meta.expires_at - now).unsigned_abs())))
    }
}

impl std::fmt::Debug for dyn SessionStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionStore")
    }
}

impl std::fmt::Debug for dyn SessionAdmin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionAdmin")
    }
}
