//! Writing sessions to the store: the failover filter's half that runs after the handler.
//!
//! - `sync` mode: the write is committed before the response leaves. With group commit
//!   (`session.save.group.commit=true`, the default) concurrent sync saves are gathered by the
//!   [`WriteBehind`] writer into one batch (after at most `session.save.group.commit.window`),
//!   and each request is answered when its own batch has committed. Without it, each request
//!   writes its own row.
//! - `async` mode: the write is queued before the response and written by the writer later
//!   (`spring.session.save.async.*`); when the queue is full, that request saves synchronously.
//! - Deletes (logout, rotation) always wait for their commit, through the writer when there is
//!   one, so a queued save can never overtake them.
//!
//! A failed write never loses the session: through the writer it stays queued and is retried
//! with backoff; written directly, it stays in the node cache marked changed and the next
//! request writes it. A new session is inserted; an existing one is only updated, and only by a
//! higher version, so a session ended elsewhere is not brought back.

mod writer;

use std::future::Future;
use std::sync::{Arc, Weak};
use std::time::Duration;

pub use writer::{DrainReport, FlushReport, Scope, Worker, WriteBehind, WriterConfig};
pub(crate) use writer::{Folded, Op, Outcome, apply};

use crate::config::SaveMode;
use crate::session::SessionKey;
use crate::session::state::Entry;
use crate::store::{self, EpochMillis, Record, SessionAdmin, SessionStore, Update};

/// A store as the applications of a process share it: the store, its write-behind writer, and
/// the bound on each store call.
#[derive(Clone, Debug)]
pub struct Persistence {
    store: Arc<dyn SessionStore>,
    /// The same store as the operator tools see it, when it offers them.
    admin: Option<Arc<dyn SessionAdmin>>,
    writer: WriteBehind,
    timeout: Duration,
    group_commit: bool,
}

impl Persistence {
    /// `store` with a writer of `config` (its worker starts on first use), each store call
    /// bounded by `timeout`, and sync saves grouped if `group_commit`.
    pub fn new(
        store: Arc<dyn SessionStore>,
        config: WriterConfig,
        timeout: Duration,
        group_commit: bool,
    ) -> Self {
        let config = WriterConfig {
            store_timeout: timeout,
            ..config
        };
        Self {
            writer: WriteBehind::new(Arc::clone(&store), config),
            store,
            admin: None,
            timeout,
            group_commit,
        }
    }

    /// `store` with a writer you drive yourself (see [`WriteBehind::pair`]).
    pub fn with_writer(
        store: Arc<dyn SessionStore>,
        writer: WriteBehind,
        timeout: Duration,
        group_commit: bool,
    ) -> Self {
        Self {
            store,
            admin: None,
            writer,
            timeout,
            group_commit,
        }
    }

    /// The configured persistence: `session.store.timeout`, `session.save.group.commit*`,
    /// `spring.session.save.async.*` and `session.save.retry.*`.
    pub fn from_config(store: Arc<dyn SessionAdmin>, config: &crate::Config) -> Self {
        Self::new(
            Arc::clone(&store) as Arc<dyn SessionStore>,
            config.writer.clone(),
            config.store.timeout,
            config.group_commit,
        )
        .with_admin(store)
    }

    /// The same, with `store`'s operator side for the backoffice and the purge.
    pub fn with_admin(mut self, store: Arc<dyn SessionAdmin>) -> Self {
        self.admin = Some(store);
        self
    }

    /// The store's operator side, if it was given ([`Persistence::with_admin`]).
    pub fn admin(&self) -> Option<&Arc<dyn SessionAdmin>> {
        self.admin.as_ref()
    }

    /// The write-behind writer.
    pub fn writer(&self) -> &WriteBehind {
        &self.writer
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn SessionStore> {
        &self.store
    }

    /// Writes what is queued, for at most `timeout` (graceful shutdown).
    pub async fn shutdown(&self, timeout: Duration) -> DrainReport {
        self.writer.shutdown(timeout).await
    }
}

/// What became of a save.
#[derive(Debug)]
pub(crate) enum Saved {
    /// Committed, or refused with this outcome.
    Stored(Update),
    /// Queued (async mode); the writer reports to the entry later.
    Queued,
    /// Not committed now, but still queued: the writer retries it.
    Kept(store::Error),
    /// Not committed and not queued: the caller must keep the session marked changed.
    Failed(store::Error),
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

    /// Bounds a store operation: a request never waits longer than the store timeout.
    async fn bounded<T>(
        &self,
        operation: impl Future<Output = Result<T, store::Error>>,
    ) -> Result<T, store::Error> {
        let timeout = self.persistence.timeout;
        tokio::time::timeout(timeout, operation)
            .await
            .unwrap_or(Err(store::Error::Timeout(timeout)))
    }

    /// Reads a live session: the newest state queued on this node if there is one, else the
    /// row; and whether the row exists (a queued first write has not made it yet).
    pub(crate) async fn load(
        &self,
        key: &SessionKey,
        now: EpochMillis,
    ) -> Result<Option<(Record, bool)>, store::Error> {
        match self.persistence.writer.pending(key) {
            Some(queued) => Ok(queued.filter(|(r, _)| r.meta.expires_at > now)),
            None => Ok(self
                .bounded(self.persistence.store.get(key, now))
                .await?
                .map(|record| (record, true))),
        }
    }

    /// Writes a changed session as the app's mode says (see the module docs), and tells the
    /// entry what became of it.
    pub(crate) async fn save(&self, record: Record, new: bool, entry: &Arc<Entry>) -> Saved {
        let writer = &self.persistence.writer;
        let key = record.meta.key.clone();
        match self.mode {
            SaveMode::Async => {
                let op = Op::Save {
                    record: record.clone(),
                    new,
                };
                if writer.enqueue(key, op, Arc::downgrade(entry)).is_ok() {
                    return Saved::Queued;
                }
                crate::metrics::sync_fallback();
                self.save_directly(record, new, entry).await
            }
            SaveMode::Sync if self.persistence.group_commit => {
                let op = Op::Save { record, new };
                let wait = writer.enqueue_and_wait(key, op, Arc::downgrade(entry));
                match tokio::time::timeout(self.persistence.timeout, wait).await {
                    // The writer has already told the entry.
                    Ok(Outcome::Stored(update)) => Saved::Stored(update),
                    Ok(Outcome::Failed(error)) => Saved::Kept(clone_error(&error)),
                    Err(_) => Saved::Kept(store::Error::Timeout(self.persistence.timeout)),
                }
            }
            SaveMode::Sync => self.save_directly(record, new, entry).await,
        }
    }

    async fn save_directly(&self, record: Record, new: bool, entry: &Arc<Entry>) -> Saved {
        let store = &self.persistence.store;
        let result = if new {
            self.bounded(store.set(&record))
                .await
                .map(|()| Update::Written)
        } else {
            self.bounded(store.update(&record)).await
        };
        match result {
            Ok(update) => {
                apply(entry, record.meta.version, update);
                Saved::Stored(update)
            }
            Err(error) => Saved::Failed(error),
        }
    }

    /// Pushes an unchanged session's expiry forward.
    pub(crate) async fn touch(
        &self,
        key: &SessionKey,
        now: EpochMillis,
        expires_at: EpochMillis,
    ) -> Result<bool, store::Error> {
        self.bounded(self.persistence.store.reset_timer(key, now, expires_at))
            .await
    }

    /// Queues the removal of a session's old row behind the writes already queued (a rotation
    /// whose new row is not written yet): in one batch saves go before deletes.
    pub(crate) async fn destroy_later(&self, key: &SessionKey) {
        let queued = self
            .persistence
            .writer
            .enqueue(key.clone(), Op::Delete, Weak::new());
        if queued.is_err()
            && let Err(error) = self.destroy(key).await
        {
            tracing::error!(session = %key.short_hash(), error = &error as &dyn std::error::Error, "cannot remove ended session from the store");
        }
    }

    /// Removes an ended session, after any write of it that is already queued.
    pub(crate) async fn destroy(&self, key: &SessionKey) -> Result<(), store::Error> {
        let wait = self
            .persistence
            .writer
            .enqueue_and_wait(key.clone(), Op::Delete, Weak::new());
        match tokio::time::timeout(self.persistence.timeout, wait).await {
            Ok(Outcome::Stored(_)) => Ok(()),
            Ok(Outcome::Failed(error)) => Err(clone_error(&error)),
            Err(_) => Err(store::Error::Timeout(self.persistence.timeout)),
        }
    }
}

/// A shared error as an owned one for the caller's log (the source chain is kept as text).
fn clone_error(error: &Arc<store::Error>) -> store::Error {
    store::Error::Backend(Box::new(SharedError(Arc::clone(error))))
}

#[derive(Debug)]
struct SharedError(Arc<store::Error>);

impl std::fmt::Display for SharedError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(&self.0, f)
    }
}

impl std::error::Error for SharedError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        std::error::Error::source(&*self.0)
    }
}
