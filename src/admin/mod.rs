//! Operations on persisted sessions for operators: what `session-failover sessions …` runs (and
//! what a backoffice would run): list, show, delete one, delete all of a principal, purge, stats.
//!
//! Nothing here decrypts or prints attribute values: a row's metadata and attribute names are
//! readable without the secret, and that is what operators see.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Serialize;

use crate::session::SessionKey;
use crate::store::{self, EpochMillis, ListQuery, Meta, SessionStore};

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
pub async fn list(store: &dyn SessionStore, query: &ListQuery) -> Result<Page, store::Error> {
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
    store: &dyn SessionStore,
    key: &SessionKey,
) -> Result<Option<Meta>, store::Error> {
    // `get` filters expired rows; an operator wants to see those too.
    Ok(store
        .get(key, EpochMillis::MIN)
        .await?
        .map(|record| record.meta))
}

/// Deletes one session; `true` if it was stored.
pub async fn delete(store: &dyn SessionStore, key: &SessionKey) -> Result<bool, store::Error> {
    store.destroy(key).await
}

/// Deletes every session of `principal` ("log this user out everywhere"); how many.
/// `deleting` is told each key first.
pub async fn delete_principal(
    store: &dyn SessionStore,
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

/// Counts of the stored sessions.
#[derive(Debug, Default, Serialize, PartialEq, Eq)]
pub struct Stats {
    /// Rows in the table.
    pub sessions: u64,
    /// Of which expired (waiting for the purge).
    pub expired: u64,
    /// Rows with a principal.
    pub signed_in: u64,
    /// Bytes of session data.
    pub bytes: u64,
    /// Rows by application.
    pub by_app: BTreeMap<String, u64>,
    /// Rows by the node that last wrote them.
    pub by_node: BTreeMap<String, u64>,
}

/// Counts the stored sessions at `now`, reading the table page by page (`progress` is told how
/// many rows have been read).
pub async fn stats(
    store: &dyn SessionStore,
    now: EpochMillis,
    progress: impl Fn(u64),
) -> Result<Stats, store::Error> {
    let mut stats = Stats::default();
    let mut after = None;
    loop {
        let page = store
            .list(&ListQuery {
                after: after.clone(),
                limit: MAX_PAGE,
                ..ListQuery::default()
            })
            .await?;
        let Some(last) = page.last() else {
            return Ok(stats);
        };
        after = Some(last.key.clone());
        for meta in &page {
            stats.sessions += 1;
            stats.expired += u64::from(meta.expires_at <= now);
            stats.signed_in += u64::from(meta.principal.is_some());
            stats.bytes += meta.size_bytes.unsigned_abs();
            *stats.by_app.entry(meta.app.clone()).or_default() += 1;
            *stats.by_node.entry(meta.node.clone()).or_default() += 1;
        }
        progress(stats.sessions);
    }
}

/// Deletes the rows expired at `now`, `batch_size` per statement, unless another node is
/// purging (`None`).
pub async fn purge(
    store: &Arc<dyn SessionStore>,
    now: EpochMillis,
    batch_size: u32,
) -> Result<Option<u64>, store::Error> {
    store.purge_expired_exclusive(now, batch_size).await
}
