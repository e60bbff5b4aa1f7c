//! [`WriteError`]: why a save was not committed when its request asked.

use std::sync::Arc;
use std::time::Duration;

use crate::store;

/// Why a write was not committed when its request asked. Whether the change is still kept (and
/// by whom) is said by the variant: [`WriteError::QueueFull`], [`WriteError::Stopped`] and a
/// direct write's [`WriteError::Store`] are kept by nobody, so the request is refused (503) and
/// the change dropped from this node; the others stay queued in the writer.
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WriteError {
    /// The write queue is full; the change is kept in memory, and the session's next request
    /// saves it.
    #[error("the session write queue is full; the change is kept in memory")]
    QueueFull,
    /// The last attempt to reach the store failed; the write is queued for the next retry
    /// instead of waiting for the store timeout.
    #[error("the session store is failing; the write is queued for retry")]
    StoreFailing,
    /// The writer stopped (shutdown) before this write was made.
    #[error("the session writer stopped before this write was made")]
    Stopped,
    /// The write was not committed within the store timeout; it stays queued.
    #[error("the write was not committed within {0:?} (session.store.timeout); it stays queued")]
    Timeout(Duration),
    /// The store failed or refused the write.
    #[error("the session store failed the write")]
    Store(#[source] Arc<store::Error>),
}
