//! An in-process store: for unit tests and as a reference for the trait's rules.

use std::collections::BTreeMap;
use std::sync::Mutex;

use super::{EpochMillis, Error, ListQuery, Meta, Record, SessionAdmin, SessionStore, Update};
use crate::id::SessionKey;

/// Sessions in a `BTreeMap` in this process; gone when it exits.
#[derive(Debug, Default)]
pub struct MemoryStore {
    /// Rows by key. A std mutex: every section is a short map operation, never held across
    /// `.await`.
    rows: Mutex<BTreeMap<SessionKey, Record>>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn rows(&self) -> std::sync::MutexGuard<'_, BTreeMap<SessionKey, Record>> {
        // A panic while holding the lock cannot leave a map half-updated (each operation is one
        // map call), so a poisoned lock is still consistent.
        self.rows
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// An upsert replaces a row only with a higher version, and keeps its creation time (as
    /// the SQL stores' conflict clauses do).
    fn upsert(rows: &mut BTreeMap<SessionKey, Record>, record: &Record) {
        match rows.get_mut(&record.meta.key) {
            Some(stored) if stored.meta.version >= record.meta.version => {}
            Some(stored) => {
                let created_at = stored.meta.created_at;
                *stored = record.clone();
                stored.meta.created_at = created_at;
            }
            None => {
                rows.insert(record.meta.key.clone(), record.clone());
            }
        }
    }
}

fn live(record: &Record, now: EpochMillis) -> bool {
    record.meta.expires_at > now
}

#[async_trait::async_trait]
impl SessionStore for MemoryStore {
    async fn get(&self, key: &SessionKey, now: EpochMillis) -> Result<Option<Record>, Error> {
        Ok(self.rows().get(key).filter(|r| live(r, now)).cloned())
    }

    async fn version(&self, key: &SessionKey, now: EpochMillis) -> Result<Option<i64>, Error> {
        Ok(self
            .rows()
            .get(key)
            .filter(|r| live(r, now))
            .map(|r| r.meta.version))
    }

    async fn set_many(&self, records: &[Record]) -> Result<(), Error> {
        let mut rows = self.rows();
        for record in records {
            Self::upsert(&mut rows, record);
        }
        Ok(())
    }

    async fn update_many(&self, records: &[Record]) -> Result<Vec<Update>, Error> {
        let mut rows = self.rows();
        Ok(records
            .iter()
            .map(|record| match rows.get_mut(&record.meta.key) {
                Some(stored) if !live(stored, record.meta.modified_at) => Update::Missing,
                None => Update::Missing,
                Some(stored) if stored.meta.version != record.meta.version - 1 => {
                    Update::Superseded
                }
                Some(stored) => {
                    *stored = record.clone();
                    Update::Written
                }
            })
            .collect())
    }

    async fn destroy_many(&self, keys: &[SessionKey]) -> Result<u64, Error> {
        let mut rows = self.rows();
        Ok(keys.iter().filter(|k| rows.remove(*k).is_some()).count() as u64)
    }

    async fn reset_timer(
        &self,
        key: &SessionKey,
        modified_at: EpochMillis,
        expires_at: EpochMillis,
    ) -> Result<bool, Error> {
        let mut rows = self.rows();
        match rows.get_mut(key).filter(|r| live(r, modified_at)) {
            Some(row) => {
                row.meta.modified_at = modified_at;
                row.meta.expires_at = expires_at;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    async fn rekey(
        &self,
        key: &SessionKey,
        version: i64,
        data: &[u8],
        now: EpochMillis,
    ) -> Result<bool, Error> {
        let mut rows = self.rows();
        match rows
            .get_mut(key)
            .filter(|r| live(r, now) && r.meta.version == version)
        {
            Some(row) => {
                row.data = data.to_vec();
                row.meta.size_bytes = i64::try_from(data.len()).unwrap_or(i64::MAX);
                Ok(true)
            }
            None => Ok(false),
        }
    }
}

#[async_trait::async_trait]
impl SessionAdmin for MemoryStore {
    async fn list(&self, query: &ListQuery) -> Result<Vec<Meta>, Error> {
        let rows = self.rows();
        let start = match &query.after {
            Some(after) => std::ops::Bound::Excluded(after),
            None => std::ops::Bound::Unbounded,
        };
        Ok(rows
            .range((start, std::ops::Bound::Unbounded))
            .map(|(_, r)| &r.meta)
            .filter(|m| query.app.as_ref().is_none_or(|app| &m.app == app))
            .filter(|m| {
                query
                    .principal
                    .as_ref()
                    .is_none_or(|p| m.principal.as_ref() == Some(p))
            })
            .filter(|m| query.node.as_ref().is_none_or(|node| &m.node == node))
            .take(query.limit as usize)
            .cloned()
            .collect())
    }

    async fn purge_expired(&self, now: EpochMillis, _batch_size: u32) -> Result<u64, Error> {
        let mut rows = self.rows();
        let before = rows.len();
        rows.retain(|_, r| live(r, now));
        Ok((before - rows.len()) as u64)
    }

    async fn length(&self) -> Result<u64, Error> {
        Ok(self.rows().len() as u64)
    }

    async fn clear(&self) -> Result<(), Error> {
        self.rows().clear();
        Ok(())
    }
}
