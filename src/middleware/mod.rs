//! The failover filter as tower middleware: [`SessionFailoverLayer`] and [`SessionFailover`].
//!
//! Per request: read the session cookie, find the session in the node cache (a sticky hit reads
//! nothing from the store) or restore it from the store ("failover restore"), hand the handler a
//! [`crate::Session`], then after the handler save it if it changed (or touch it, throttled, if it
//! was only read), and send `Set-Cookie` for a new, rotated or invalidated session.
//!
//! The layer always returns a response: a store that cannot be read while restoring answers an
//! opaque `503 Service Unavailable` (the cause goes to the log), never the store's error text. A
//! change that the store refused because another node holds a newer state of the session, or
//! because the session was ended elsewhere, answers an empty `409 Conflict` instead of the
//! handler's response: it was not kept, so it must not be acknowledged.

mod app;
pub mod future;
mod layer;
mod push;
mod service;
mod settings;

pub use layer::SessionFailoverLayer;
pub use service::SessionFailover;
