//! The envelope decoder on arbitrary bytes, with and without keys: it must return an error or
//! a map, never panic, and never allocate without bound.
#![no_main]

use libfuzzer_sys::fuzz_target;
use session_failover::codec::{Binding, Codec, Keys};
use session_failover::session::SessionId;

const SECRET: &str = "fuzzing-secret-0123456789abcdef0123456789abcdef0123456789abcdef0123";

fuzz_target!(|data: &[u8]| {
    let key = SessionId::parse("R29sZGVuRml4dHVyZVNlc3Npb25JZEZvclRlc3RzMDA")
        .expect("a well-formed id")
        .store_key();
    let binding = Binding { app: "storefront", key: &key, principal: None };
    let _ = Codec::default().decode(data, binding);
    let keys = Keys::new(SECRET, &[]).expect("a long secret");
    let _ = Codec::default().with_keys(keys).with_accept_plaintext(true).decode(data, binding);
});
