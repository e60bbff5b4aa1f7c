//! Writing sessions to the store: the failover filter's half that runs after the handler.
//!
//! `sync` mode writes before the response leaves. A failed write does not lose the session: it
//! stays in the node cache, still marked changed, and the next request of that session writes it
//! again; the error is logged.
//!
//! A new session is inserted; an existing one is only updated, and only by a higher version, so
//! a session ended elsewhere (logout on another node, the backoffice) is not brought back.
//!
//! `async` mode (write-behind, `spring.session.save.async.*`) is not built yet: an app configured
//! with `async` is saved synchronously, which keeps every guarantee of `sync`, and a warning says
//! so at start-up.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use crate::config::SaveMode;
use crate::session::SessionKey;
use crate::store::{self, EpochMillis, Record, SessionStore, Update};

/// Persists one application's sessions to a store.
#[derive(Clone)]
pub(crate) struct Persister {
    store: Arc<dyn SessionStore>,
    mode: SaveMode,
    /// The longest one store operation may take (`session.store.timeout`).
    timeout: Duration,
}

impl Persister {
    pub(crate) fn new(store: Arc<dyn SessionStore>, mode: SaveMode, timeout: Duration) -> Self {
        Self {
            store,
            mode,
            timeout,
        }
    }

    /// Bounds a store operation: a request never waits longer than the store timeout.
    async fn bounded<T>(
        &self,
        operation: impl Future<Output = Result<T, store::Error>>,
    ) -> Result<T, store::Error> {
        tokio::time::timeout(self.timeout, operation)
            .await
            .unwrap_or(Err(store::Error::Timeout(self.timeout)))
    }

    pub(crate) fn mode(&self) -> SaveMode {
        self.mode
    }

    pub(crate) fn store(&self) -> Arc<dyn SessionStore> {
        Arc::clone(&self.store)
    }

    /// Reads a live session.
    pub(crate) async fn load(
        &self,
        key: &SessionKey,
        now: EpochMillis,
    ) -> Result<Option<Record>, store::Error> {
        self.bounded(self.store.get(key, now)).await
    }

    /// Writes a changed session; in every mode of this build, before returning.
    ///
    /// A session new to the store (`new`) is inserted; one the store already had is only
    /// updated, so a row deleted meanwhile is not re-created ([`Update::Missing`]).
    pub(crate) async fn save(&self, record: &Record, new: bool) -> Result<Update, store::Error> {
        if new {
            self.bounded(self.store.set(record)).await?;
            Ok(Update::Written)
        } else {
            self.bounded(self.store.update(record)).await
        }
    }

    /// Pushes an unchanged session's expiry forward.
    pub(crate) async fn touch(
        &self,
        key: &SessionKey,
        now: EpochMillis,
        expires_at: EpochMillis,
    ) -> Result<bool, store::Error> {
        self.bounded(self.store.reset_timer(key, now, expires_at))
            .await
    }

    /// Removes an ended session.
    pub(crate) async fn destroy(&self, key: &SessionKey) -> Result<bool, store::Error> {
        self.bounded(self.store.destroy(key)).await
    }
}
