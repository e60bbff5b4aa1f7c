//! The logical row every store keeps: [`Record`] (= [`Meta`] + the blob), and the shapes of the
//! store's questions and answers.

use std::collections::BTreeMap;

use crate::id::SessionKey;

/// Epoch milliseconds, UTC.
pub type EpochMillis = i64;

/// The current time as [`EpochMillis`].
pub fn now_millis() -> EpochMillis {
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(since_epoch.as_millis()).unwrap_or(i64::MAX)
}

/// One persisted session: the columns of `stored_http_session`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// Everything but the blob.
    pub meta: Meta,
    /// The encoded attributes (see [`crate::codec`]).
    pub data: Vec<u8>,
}

/// A persisted session's metadata: every column but `data`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Meta {
    /// The store key (a hash of the session id).
    pub key: SessionKey,
    /// The application ("extension") the session belongs to.
    pub app: String,
    /// The cookie path / mount point of the application.
    pub context_path: String,
    /// The node that last wrote the row.
    pub node: String,
    /// The signed-in user, if any.
    pub principal: Option<String>,
    /// When the session was created.
    pub created_at: EpochMillis,
    /// When the session was last written or touched.
    pub modified_at: EpochMillis,
    /// When the session expires unless touched again.
    pub expires_at: EpochMillis,
    /// The session's inactivity timeout in seconds.
    pub max_inactive_secs: i64,
    /// Incremented on every write; an update replaces only the version it was based on
    /// (`version - 1`), an insert never replaces a row of a higher or equal version.
    pub version: i64,
    /// Names of the stored attributes (readable without any secret).
    pub attributes: Vec<String>,
    /// Size of `data` in bytes.
    pub size_bytes: i64,
}

/// A filter and a page of [`crate::store::SessionAdmin::list`].
#[derive(Clone, Debug, Default)]
pub struct ListQuery {
    /// Only sessions of this application.
    pub app: Option<String>,
    /// Only sessions of this principal.
    pub principal: Option<String>,
    /// Only sessions last written by this node.
    pub node: Option<String>,
    /// Keyset cursor: only keys greater than this one (the last key of the previous page).
    pub after: Option<SessionKey>,
    /// At most this many rows (ordered by key).
    pub limit: u32,
}

/// What [`crate::store::SessionStore::update`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Update {
    /// The row was replaced.
    Written,
    /// The row holds another version than the one the write was based on: another write got
    /// there first (compare-and-set failed).
    Superseded,
    /// There is no row: the session was ended (logout, rotation, backoffice, purge).
    Missing,
}

/// Counts of the stored sessions ([`crate::store::SessionAdmin::stats`]).
#[derive(Clone, Debug, Default, serde::Serialize, PartialEq, Eq)]
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

impl Stats {
    /// Adds one group of rows (all of one app and node).
    pub(crate) fn add(&mut self, app: &str, node: &str, group: StatsGroup) {
        self.sessions += group.sessions;
        self.expired += group.expired;
        self.signed_in += group.signed_in;
        self.bytes += group.bytes;
        *self.by_app.entry(app.to_owned()).or_default() += group.sessions;
        *self.by_node.entry(node.to_owned()).or_default() += group.sessions;
    }

    /// Adds one row.
    pub(crate) fn add_row(&mut self, meta: &Meta, now: EpochMillis) {
        let group = StatsGroup {
            sessions: 1,
            expired: u64::from(meta.expires_at <= now),
            signed_in: u64::from(meta.principal.is_some()),
            bytes: meta.size_bytes.unsigned_abs(),
        };
        self.add(&meta.app, &meta.node, group);
    }
}

/// The counts of one (app, node) group.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct StatsGroup {
    pub(crate) sessions: u64,
    pub(crate) expired: u64,
    pub(crate) signed_in: u64,
    pub(crate) bytes: u64,
}

/// A change of the table pushed by the database to the nodes that listen
/// ([`crate::store::SessionStore::subscribe`]), so their cached copies do not go stale.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Pushed {
    /// Listening (again): changes from now on are pushed; changes before may have been missed.
    Listening,
    /// The listening connection was lost: changes are not pushed until the next `Listening`.
    Lost,
    /// The row of `key` was written as `version`.
    Written {
        /// The session's key.
        key: SessionKey,
        /// The row's new version.
        version: i64,
    },
    /// The live row of `key` was deleted (a logout, a rotation, the backoffice).
    Deleted(SessionKey),
}
