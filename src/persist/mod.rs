//! Writing sessions to the store: the failover filter's half that runs after the handler.
//!
//! - `sync` mode: the write is committed before the response leaves. With group commit
//!   (`session.save.group.commit=true`, the default) concurrent sync saves are gathered by the
//!   [`WriteBehind`] writer: a batch goes as soon as one of `session.save.concurrency` flights
//!   is free, holding every sync save that arrived while the flights were busy (no wait when
//!   there is nothing to group; `session.save.group.commit.window` adds one), and each request
//!   is answered when its own batch has committed. Without it, each request
//!   writes its own row, in its own task, through the same batch code.
//! - `async` mode: the write is queued before the response and written by the writer later
//!   (`spring.session.save.async.*`); when the queue is full, that request writes directly.
//! - Deletes (logout, rotation) always wait for their commit, through the writer, so a queued
//!   save can never overtake them.
//!
//! A write acknowledged before it is committed (async, a delete, a write-back) is kept: through
//! the writer it stays queued and is retried with backoff. A sync save is acknowledged only once
//! committed: one that fails is tried again while its request waits (at most
//! `session.store.timeout`), then dropped and its request refused. A new session is inserted; an existing one is only updated, with a
//! compare-and-set on the row version its state descends from (a write that lost the race is
//! merged into the newer row, `Owner::rebase`), so a session ended elsewhere is not brought
//! back and no committed change is overwritten. Every store call is bounded
//! by `session.store.timeout`, in one place (the writer's `bounded`).
//!
//! Restores and refreshes read the store through `reads.rs`: restores that arrive together
//! (a failover storm) are read in one query, as soon as a read flight is free
//! (`session.restore.batch`).
//!
//! Layout: `persister.rs` (what a save, touch or delete does in an app's mode), `error.rs`
//! ([`WriteError`]), `reads.rs` (batched restores), `writer/` (the queue, the handle, the
//! worker, one flush).

mod error;
mod persister;
mod reads;
mod writer;

use std::sync::Arc;
use std::time::Duration;

pub use error::WriteError;
pub(crate) use persister::{Persister, Saved};
pub use writer::{DrainReport, FlushReport, Scope, Worker, WriteBehind, WriterConfig};
pub(crate) use writer::{Folded, Op, Outcome};

use crate::store::{SessionAdmin, SessionStore};

/// The session a write belongs to, as the writer sees it: asked whether it was ended and which
/// stored version its next update is based on, told what became of its writes, and asked to
/// merge itself with a newer stored state when another write got to the row first. The node
/// cache's entries implement it; the writer knows no more of them than this. A queued write
/// holds its owner, so a session evicted from the cache with a write pending can still merge.
pub(crate) trait Owner: Send + Sync + std::any::Any {
    /// The session was ended here (a save of it must not be written).
    fn is_ended(&self) -> bool;
    /// Whether snapshot `version` is carried by a write already committed (a later snapshot
    /// holds every change of the earlier ones): a write of it that arrives late is done.
    fn is_committed(&self, version: i64) -> bool;
    /// The row version an update of snapshot `version` is a compare-and-set on, if it is not
    /// the one its record was made on (the session's own writes committed since the snapshot
    /// was taken are parts of it); `None`: the record's own.
    fn base_for(&self, version: i64) -> Option<i64>;
    /// The write of snapshot `version` was committed as row version `row` (`Written`), or
    /// refused with `outcome`.
    fn stored(&self, version: i64, row: i64, outcome: crate::store::Update);
    /// A write of it was not made and nobody retries it: its next request must save again.
    fn not_saved(&self);
    /// A sync write of it was dropped, not committed, and its requests refused: the copy holds
    /// changes nobody will write, so it is not served or saved again.
    fn dropped(&self);
    /// Another write got to the row first (`stored` is the row now): merge this node's
    /// uncommitted changes into it, and give the record to write instead. With `refuse`, a
    /// change based on a value the other write replaced is dropped and reported.
    fn rebase(&self, stored: &crate::store::Record, refuse: bool) -> Rebased;
    /// The owner as itself, for a restore on this node to take back the very session its
    /// queued write belongs to.
    fn into_any(self: Arc<Self>) -> Arc<dyn std::any::Any + Send + Sync>;
}

/// What [`Owner::rebase`] gave.
#[allow(clippy::large_enum_variant)] // made and taken at once, on the rare rebase path
pub(crate) enum Rebased {
    /// Write this record (the row version after the stored one), snapshot `version` of the
    /// session; `refused`: some change of this node was a true conflict and was dropped, so
    /// whoever waits for it must not be told it is kept.
    Write {
        record: crate::store::Record,
        version: i64,
        refused: bool,
    },
    /// Nothing to merge: the session was ended here, or the stored state cannot be read.
    Gone,
}

/// The owner of a write nobody is told about (deletes).
pub(crate) fn nobody() -> Arc<dyn Owner> {
    struct Nobody;
    impl Owner for Nobody {
        fn is_ended(&self) -> bool {
            false
        }
        fn is_committed(&self, _: i64) -> bool {
            false
        }
        fn base_for(&self, _: i64) -> Option<i64> {
            None
        }
        fn stored(&self, _: i64, _: i64, _: crate::store::Update) {}
        fn not_saved(&self) {}
        fn dropped(&self) {}
        fn rebase(&self, _: &crate::store::Record, _: bool) -> Rebased {
            Rebased::Gone
        }
        fn into_any(self: Arc<Self>) -> Arc<dyn std::any::Any + Send + Sync> {
            self
        }
    }
    Arc::new(Nobody)
}

/// How an application's sessions are persisted (`spring.session.<app>.save`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SaveMode {
    /// Saved after the handler, before the response leaves.
    Sync,
    /// Queued before the response and written later by a background writer.
    Async,
}

/// A store as the applications of a process share it: the store and its write-behind writer
/// (which bounds every store call by the store timeout).
#[derive(Clone, Debug)]
pub struct Persistence {
    /// The same store as the operator tools see it, when it offers them.
    admin: Option<Arc<dyn SessionAdmin>>,
    writer: WriteBehind,
    group_commit: bool,
    reads: reads::Reads,
}

impl Persistence {
    /// `store` with a writer of `config` (its worker starts on first use), each store call
    /// bounded by `timeout` (`session.store.timeout`), and sync saves grouped if
    /// `group_commit`.
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
        Self::with_writer(WriteBehind::new(store, config), group_commit)
    }

    /// A writer you drive yourself (see [`WriteBehind::pair`]); its config's `store_timeout`
    /// bounds every store call.
    pub fn with_writer(writer: WriteBehind, group_commit: bool) -> Self {
        let reads = reads::Reads::new(Arc::clone(writer.store()), writer.store_timeout(), true);
        Self {
            admin: None,
            writer,
            group_commit,
            reads,
        }
    }

    /// Restores that arrive together are read in one query (`session.restore.batch`). Default:
    /// on.
    pub fn with_batched_reads(mut self, batched: bool) -> Self {
        self.reads = self.reads.with_batched(batched);
        self
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
        self.writer.store()
    }

    /// Writes what is queued, for at most `timeout` (graceful shutdown).
    pub async fn shutdown(&self, timeout: Duration) -> DrainReport {
        self.writer.shutdown(timeout).await
    }
}
