//! [`WriteError`]: why a save was not committed when its request asked.

use std::sync::Arc;
use std::time::Duration;

use crate::store;

/// Why a write was not committed when its request asked. For a sync save, whatever the variant,
/// nobody keeps the change: the request is refused (503) and the change dropped from this node
/// (a write that was in flight may still commit, as with any request whose answer was lost). A
/// delete that failed stays queued and is retried.
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WriteError {
    /// The write queue is full.
    #[error("the session write queue is full")]
    QueueFull,
    /// The writer stopped (shutdown) before this write was made.
    #[error("the session writer stopped before this write was made")]
    Stopped,
    /// The write was not committed within the store timeout.
    #[error("the write was not committed within {0:?} (session.store.timeout)")]
    Timeout(Duration),
    /// The store failed or refused the write.
    #[error("the session store failed the write")]
    Store(#[source] Arc<store::Error>),
}
