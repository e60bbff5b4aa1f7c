//! Blobs written by earlier releases must keep decoding: `tests/fixtures/` holds blobs written by
//! the release that introduced each format. Never regenerate an existing fixture; add new ones.
//! (A missing fixture is written, with `SESSION_FAILOVER_WRITE_FIXTURES=1` only.)

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use session_failover::codec::{self, Binding, Codec, EncodedAttributes, Keys};
use session_failover::server::storefront::{Cart, CartItem};
use session_failover::session::SessionId;

/// The secret the encrypted fixture was written with (a test secret, not a real one).
const SECRET: &str = "golden-fixture-secret-0123456789abcdef0123456789abcdef0123456789ab";
/// The session id the fixtures are bound to.
const ID: &str = "R29sZGVuRml4dHVyZVNlc3Npb25JZEZvclRlc3RzMDA";

fn cart(items: usize) -> Cart {
    Cart {
        items: (0..items)
            .map(|i| CartItem {
                sku: format!("SKU-{i:05}"),
                qty: u32::try_from(i % 5 + 1).unwrap(),
            })
            .collect(),
    }
}

fn attributes(items: usize) -> EncodedAttributes {
    BTreeMap::from([
        (
            "cart".to_owned(),
            codec::encode_value(&cart(items)).unwrap(),
        ),
        ("user".to_owned(), codec::encode_value("ann").unwrap()),
    ])
}

fn fixture(name: &str, write: impl FnOnce() -> Vec<u8>) -> Vec<u8> {
    let path = Path::new("tests/fixtures").join(name);
    match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(_) if std::env::var("SESSION_FAILOVER_WRITE_FIXTURES").is_ok_and(|v| v == "1") => {
            let bytes = write();
            std::fs::write(&path, &bytes).unwrap();
            bytes
        }
        Err(e) => panic!(
            "{}: {e} (fixtures are committed; never regenerate one)",
            path.display()
        ),
    }
}

#[test]
fn blobs_of_format_1_still_decode() {
    let id = SessionId::parse(ID).expect("a well-formed fixture id");
    let key = id.store_key();
    let binding = Binding {
        app: "storefront",
        key: &key,
        principal: Some("ann"),
    };
    let encrypting = Codec::default().with_keys(Keys::new(SECRET, &[]).unwrap());
    for (name, items, codec) in [
        ("v1-plain.bin", 2, Codec::default()),
        ("v1-compressed.bin", 60, Codec::default()),
        ("v1-encrypted.bin", 20, encrypting),
    ] {
        let blob = fixture(name, || codec.encode(&attributes(items), binding).unwrap());
        let decoded = codec
            .decode(&blob, binding)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let stored: Cart = codec::decode_value(&decoded["cart"]).unwrap();
        assert_eq!(stored, cart(items), "{name}");
        let user: String = codec::decode_value(&decoded["user"]).unwrap();
        assert_eq!(user, "ann");
    }
}

/// The cart as a later release might define it: a new optional field on each line.
#[derive(Serialize, Deserialize, Debug, PartialEq)]
struct NextCart {
    items: Vec<NextItem>,
    #[serde(default)]
    coupon: Option<String>,
}

#[derive(Serialize, Deserialize, Debug, PartialEq)]
struct NextItem {
    sku: String,
    qty: u32,
    #[serde(default)]
    gift_wrap: Option<bool>,
}

#[test]
fn a_struct_that_gained_optional_fields_decodes_an_older_blob() {
    let key = SessionId::parse(ID).unwrap().store_key();
    let binding = Binding {
        app: "storefront",
        key: &key,
        principal: Some("ann"),
    };
    let blob = fixture("v1-plain.bin", || unreachable!("written by the test above"));
    let decoded = Codec::default().decode(&blob, binding).unwrap();
    let next: NextCart = codec::decode_value(&decoded["cart"]).unwrap();
    assert_eq!(next.items.len(), 2);
    assert_eq!(
        (
            next.items[1].sku.as_str(),
            next.items[1].qty,
            next.items[1].gift_wrap
        ),
        ("SKU-00001", 2, None)
    );
    assert_eq!(next.coupon, None);
}

#[test]
fn the_demo_cart_of_twenty_items_stays_under_one_kilobyte() {
    let key = SessionId::generate().store_key();
    let binding = Binding {
        app: "storefront",
        key: &key,
        principal: Some("ann"),
    };
    let json = serde_json::to_vec(&cart(20)).unwrap().len();
    let mut map = EncodedAttributes::new();
    map.insert("cart".to_owned(), codec::encode_value(&cart(20)).unwrap());
    let plain = Codec::default()
        .with_compress_threshold(usize::MAX)
        .encode(&map, binding)
        .unwrap()
        .len();
    let compressed = Codec::default().encode(&map, binding).unwrap().len();
    let encrypted = Codec::default()
        .with_keys(Keys::new(SECRET, &[]).unwrap())
        .encode(&map, binding)
        .unwrap()
        .len();
    eprintln!(
        "20-item demo cart: JSON {json} B, MessagePack envelope {plain} B, compressed {compressed} B, \
         compressed + encrypted {encrypted} B"
    );
    assert!(encrypted <= 1024, "{encrypted} bytes");
    assert!(compressed < plain && encrypted == compressed + 1 + 24 + 16);
}
