//! The serializability checker (SAP Commerce `session.serialization.check`): a development
//! feature that names every attribute that would not survive failover.
//!
//! On every save of a session of a covered application it reports, at ERROR, as
//! `Failed to serialize attribute: <name> (<rust type>): <reason>`:
//! - values inserted with [`crate::Session::insert_local`] (kept on one node only);
//! - values whose `Serialize` fails;
//! - values that do not round-trip: encode → decode → encode gives something else, as with a
//!   `#[serde(skip_deserializing)]` field, a `Deserialize` that ignores what `Serialize` wrote,
//!   or a lossy custom impl: the value another node would see is not the one this node has.
//!
//! What no serde-based check can see: a field marked `#[serde(skip)]` never reaches any
//! serializer, so both encodings omit it alike; it comes back as its `Default` on another node.
//! Keep such fields out of session values (or give the type a `Deserialize` that restores them).
//!
//! With `session.serialization.check.response.error=true` such a request answers 500. When the
//! check is off it is never called: nothing extra is encoded ([`encodings`] counts what it does).
//!
//! Checked on every save whether the checker is on or not: a session larger than
//! `session.max.size` (its encoded attributes, before compression; default 1 MiB) is not saved.
//! It is logged at ERROR as `session too large to save (N bytes, session.max.size is M): <name>
//! (<bytes>), …` with its ten largest attributes, the request answers 500 with no cookie, and
//! its change is dropped (the session's next request sees the last state that was saved).

use std::sync::atomic::{AtomicU64, Ordering};

use crate::session::state::Value;

static ENCODINGS: AtomicU64 = AtomicU64::new(0);

/// How many values the checker has encoded or decoded in this process (it is zero while the
/// check is off).
pub fn encodings() -> u64 {
    ENCODINGS.load(Ordering::Relaxed)
}

/// An attribute that would not survive failover.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The attribute's name.
    pub name: String,
    /// The Rust type of its value.
    pub rust_type: &'static str,
    /// Why it would not survive.
    pub reason: String,
}

/// Checks each attribute; the failures, in attribute order.
pub(crate) fn check<'a>(
    attributes: impl IntoIterator<Item = (&'a String, &'a Value)>,
) -> Vec<Failure> {
    let mut failures = Vec::new();
    for (name, value) in attributes {
        let fail = |rust_type, reason: String| Failure {
            name: name.clone(),
            rust_type,
            reason,
        };
        match value {
            Value::Local { type_name, .. } => failures.push(fail(
                type_name,
                "not serializable: inserted with insert_local, it lives on this node only"
                    .to_owned(),
            )),
            Value::Live(live) => {
                ENCODINGS.fetch_add(1, Ordering::Relaxed);
                let first = match live.encode() {
                    Ok(bytes) => bytes,
                    Err(error) => {
                        failures.push(fail(
                            live.type_name(),
                            format!("Serialize failed: {}", crate::codec::chain(&error)),
                        ));
                        continue;
                    }
                };
                ENCODINGS.fetch_add(2, Ordering::Relaxed);
                match live.round_trip() {
                    Err(error) => failures.push(fail(
                        live.type_name(),
                        format!(
                            "does not deserialize from its own encoding: {}",
                            crate::codec::chain(&error)
                        ),
                    )),
                    Ok(second) if !same(&first, &second) => failures.push(fail(
                        live.type_name(),
                        "does not round-trip: encoded, decoded and encoded again it differs \
                         (a #[serde(skip)] field or a lossy Serialize?)"
                            .to_owned(),
                    )),
                    Ok(_) => {}
                }
            }
            // Read from the store: it has survived once already.
            Value::Encoded { .. } => {}
        }
    }
    failures
}

/// Two encodings of one value are the same, up to map order (a `HashMap` may serialize its
/// entries in any order).
fn same(first: &[u8], second: &[u8]) -> bool {
    first == second
        || matches!(
            (
                rmp_serde::from_slice::<serde_json::Value>(first),
                rmp_serde::from_slice::<serde_json::Value>(second),
            ),
            (Ok(a), Ok(b)) if a == b
        )
}
