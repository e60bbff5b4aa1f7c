//! Sessions as handlers see them: ids, attributes, and the [`Session`] extractor.
//!
//! A session lives in the node cache as one shared entry; every request of that
//! session holds the same entry, so concurrent requests on one node see one up-to-date object (the
//! Commerce "session cache region"). A request gets a [`Session`] handle: created lazily, so a
//! request that never writes sets no cookie and writes no row.
//!
//! Attribute values are typed Rust values. [`Session::insert`] keeps a serializable value live in
//! memory (encoded only when the session is saved); [`Session::insert_local`] keeps a value that
//! cannot be serialized (a handle, a channel) on this node only, where it will not survive
//! failover.

pub(crate) mod handle;
pub(crate) mod state;

pub use crate::id::{SessionId, SessionKey, ShortHash};
pub(crate) use handle::validate_principal;
pub use handle::{InvalidPrincipal, MAX_PRINCIPAL_CHARS, SaveError, Session, SessionRejection};
