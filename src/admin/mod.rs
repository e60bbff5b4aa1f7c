//! Operations on persisted sessions for operators: what `session-failover sessions …` runs (and
//! what a backoffice would run): list, show, delete one, delete all of a principal, purge, stats.
//!
//! Nothing here prints attribute values: a row's metadata and attribute names are readable
//! without the secret, and that is what operators see. Only [`reencrypt`] decrypts, to write the
//! same data again under the current key.

use std::sync::Arc;

use serde::Serialize;

use crate::codec::{Binding, Codec};
use crate::id::SessionKey;
pub use crate::store::Stats;
use crate::store::{self, EpochMillis, ListQuery, Meta, SessionAdmin};

/// An epoch-millisecond time as `YYYY-MM-DD HH:MM:SS` (UTC), for operators.
pub fn format_time(millis: EpochMillis) -> String {
    chrono::DateTime::from_timestamp_millis(millis).map_or_else(
        || millis.to_string(),
        |t| t.format("%Y-%m-%d %H:%M:%S").to_string(),
    )
}

/// The largest page [`list`] returns.
pub const MAX_PAGE: u32 = 1000;

/// One page of sessions and the cursor of the next.
#[derive(Debug, Serialize)]
pub struct Page {
    /// The sessions, ordered by key.
    pub sessions: Vec<Meta>,
    /// Pass as `after` for the next page; `None` on the last page.
    pub next: Option<SessionKey>,
}

/// A page of sessions matching `query` (its limit capped at [`MAX_PAGE`]).
pub async fn list(store: &dyn SessionAdmin, query: &ListQuery) -> Result<Page, store::Error> {
    let limit = query.limit.clamp(1, MAX_PAGE);
    let sessions = store
        .list(&ListQuery {
            limit,
            ..query.clone()
        })
        .await?;
    let next = (sessions.len() == limit as usize)
        .then(|| sessions.last().map(|m| m.key.clone()))
        .flatten();
    Ok(Page { sessions, next })
}

/// One session's metadata (live or expired-but-not-purged), if it is stored.
pub async fn show(
    store: &dyn SessionAdmin,
    key: &SessionKey,
) -> Result<Option<Meta>, store::Error> {
    // `get` filters expired rows; an operator wants to see those too.
    Ok(store
        .get(key, EpochMillis::MIN)
        .await?
        .map(|record| record.meta))
}

/// Deletes one session; `true` if it was stored.
pub async fn delete(store: &dyn SessionAdmin, key: &SessionKey) -> Result<bool, store::Error> {
    store.destroy(key).await
}

/// Deletes every session of `principal` ("log this user out everywhere"); how many.
/// `deleting` is told each key first.
pub async fn delete_principal(
    store: &dyn SessionAdmin,
    principal: &str,
    deleting: impl Fn(&SessionKey),
) -> Result<u64, store::Error> {
    let mut deleted = 0;
    loop {
        let query = ListQuery {
            principal: Some(principal.to_owned()),
            limit: MAX_PAGE,
            ..ListQuery::default()
        };
        let keys: Vec<SessionKey> = store
            .list(&query)
            .await?
            .into_iter()
            .map(|m| m.key)
            .collect();
        if keys.is_empty() {
            return Ok(deleted);
        }
        keys.iter().for_each(&deleting);
        deleted += store.destroy_many(&keys).await?;
    }
}

/// Counts the stored sessions at `now` (one `GROUP BY` on the SQL stores); `progress` is told
/// how many rows were counted.
pub async fn stats(
    store: &dyn SessionAdmin,
    now: EpochMillis,
    progress: impl Fn(u64),
) -> Result<Stats, store::Error> {
    let stats = store.stats(now).await?;
    progress(stats.sessions);
    Ok(stats)
}

/// Deletes the rows expired at `now`, `batch_size` per statement, unless another node is
/// purging (`None`).
pub async fn purge(
    store: &Arc<dyn SessionAdmin>,
    now: EpochMillis,
    batch_size: u32,
) -> Result<Option<u64>, store::Error> {
    store.purge_expired_exclusive(now, batch_size).await
}

/// What [`reencrypt`] did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Reencrypted {
    /// Live sessions read.
    pub read: u64,
    /// Written again under the current key.
    pub rewritten: u64,
    /// Already under the current key.
    pub current: u64,
    /// Written, ended or expired by a node while they were being re-encrypted: a node's
    /// write is under its current key, so a later run finds them done.
    pub changed: u64,
    /// Under no key this configuration has (or corrupt): no node with it can restore them.
    pub unreadable: u64,
    /// The last key done: give it as `after` to go on from there.
    pub last: Option<SessionKey>,
}

/// Writes every live session not under the codec's current key again under it, `batch` rows
/// at a time in key order, starting after `after`. Each row keeps its version and expiry, and
/// is replaced only if no node wrote it meanwhile ([`crate::SessionStore::rekey`]), so this runs
/// while the nodes serve. Safe to stop and run again: rows already under the current key are
/// only read. `progress` is told the counts after each batch.
pub async fn reencrypt(
    store: &dyn SessionAdmin,
    codec: &Codec,
    after: Option<SessionKey>,
    batch: u32,
    progress: impl Fn(&Reencrypted),
) -> Result<Reencrypted, store::Error> {
    let mut done = Reencrypted {
        last: after,
        ..Reencrypted::default()
    };
    loop {
        let now = store::now_millis();
        let records = store.records(done.last.as_ref(), batch.max(1), now).await?;
        let Some(last) = records.last() else {
            return Ok(done);
        };
        let last = last.meta.key.clone();
        for record in records {
            done.read += 1;
            let binding = Binding {
                app: &record.meta.app,
                key: &record.meta.key,
                principal: record.meta.principal.as_deref(),
            };
            let attributes = match codec.decode_keyed(&record.data, binding) {
                Ok((_, false)) => {
                    done.current += 1;
                    continue;
                }
                Ok((attributes, true)) => attributes,
                Err(error) => {
                    done.unreadable += 1;
                    // Counted and reported once at the end; a table of them would flood the log.
                    tracing::debug!(session = %record.meta.key.short_hash(), error = &error as &dyn std::error::Error, "stored session does not decode with the configured secrets");
                    continue;
                }
            };
            let data = codec.encode(&attributes, binding).map_err(|error| {
                store::Error::Backend(format!("cannot encode a session: {error}").into())
            })?;
            if store
                .rekey(&record.meta.key, record.meta.version, &data, now)
                .await?
            {
                done.rewritten += 1;
            } else {
                done.changed += 1;
            }
        }
        done.last = Some(last);
        progress(&done);
    }
}
