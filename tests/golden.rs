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

/// Base64url without padding, for the JWT-shaped test data.
fn b64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Bytes that do not compress (a signature), from a fixed seed.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()[0]
        })
        .collect()
}

/// A JWT of this header and payload with an RS256-sized (256-byte) signature.
fn jwt(header: &serde_json::Value, payload: &serde_json::Value, seed: u64) -> String {
    format!(
        "{}.{}.{}",
        b64(header.to_string().as_bytes()),
        b64(payload.to_string().as_bytes()),
        b64(&noise(256, seed))
    )
}

/// The session of a signed-in approuter user, as the issue describes it: XSUAA-shaped access,
/// refresh and id tokens (JWTs, 20 scopes), the scopes, a CSRF token. approuter stores this
/// shape in 3,256 bytes (gzip + base64, unencrypted); the target here is below 2,000 encrypted.
#[test]
fn a_login_shaped_session_is_stored_in_fewer_bytes_than_approuter_stores() {
    use serde_json::json;
    let scopes: Vec<String> = (0..20)
        .map(|i| format!("shop-app!t48213.Scope{i:02}"))
        .collect();
    let header = json!({
        "alg": "RS256",
        "jku": "https://shop.authentication.eu10.hana.ondemand.com/token_keys",
        "kid": "default-jwt-key-9d3bd5a1c1",
        "typ": "JWT",
        "jid": "k2a3QxhHzbtwP5XcXQxJ0JkGfVf8XgKTGZYwVHNcFG8="
    });
    let common = json!({
        "sub": "5f7e2a1c-6d0b-4c1e-9a3f-2b8d7c6e5f40",
        "user_id": "5f7e2a1c-6d0b-4c1e-9a3f-2b8d7c6e5f40",
        "user_name": "ann.example@example.com",
        "email": "ann.example@example.com",
        "given_name": "Ann",
        "family_name": "Example",
        "origin": "sap.default",
        "zid": "1e8a7b2c-3d4e-4f5a-8b6c-7d8e9f0a1b2c",
        "iss": "https://shop.authentication.eu10.hana.ondemand.com/oauth/token",
        "iat": 1_764_672_000,
        "exp": 1_764_715_200,
    });
    let mut access = common.clone();
    access["jti"] = json!("0f4c5e6a7b8c4d9e8f0a1b2c3d4e5f60");
    access["client_id"] = json!("sb-shop-app!t48213");
    access["cid"] = json!("sb-shop-app!t48213");
    access["azp"] = json!("sb-shop-app!t48213");
    access["grant_type"] = json!("authorization_code");
    access["scope"] = json!(scopes);
    access["aud"] = json!(["shop-app!t48213", "openid", "uaa"]);
    access["ext_attr"] = json!({"enhancer": "XSUAA", "subaccountid": "1e8a7b2c-3d4e-4f5a-8b6c-7d8e9f0a1b2c", "zdn": "shop"});
    access["xs.system.attributes"] = json!({"xs.rolecollections": ["Shop Buyer", "Shop Viewer"]});
    access["rev_sig"] = json!("8a1f2b3c");
    access["auth_time"] = json!(1_764_672_000);
    let mut refresh = common.clone();
    refresh["jti"] = json!("7c8d9e0f1a2b4c3d8e9f0a1b2c3d4e5f-r");
    refresh["client_id"] = json!("sb-shop-app!t48213");
    refresh["scope"] = json!(scopes);
    refresh["grant_type"] = json!("authorization_code");
    let mut id = common;
    id["aud"] = json!(["sb-shop-app!t48213"]);
    id["azp"] = json!("sb-shop-app!t48213");
    id["nonce"] = json!("b5f0c8a97d6e4e2f");
    id["amr"] = json!(["pwd"]);
    let tokens = [
        ("access_token", jwt(&header, &access, 11)),
        ("refresh_token", jwt(&header, &refresh, 22)),
        ("id_token", jwt(&header, &id, 33)),
    ];
    let mut map = EncodedAttributes::new();
    let mut json_bytes = 0;
    for (name, token) in &tokens {
        json_bytes += token.len();
        map.insert((*name).to_owned(), codec::encode_value(token).unwrap());
    }
    map.insert("scopes".to_owned(), codec::encode_value(&scopes).unwrap());
    let csrf = b64(&noise(32, 44));
    map.insert("csrf".to_owned(), codec::encode_value(&csrf).unwrap());
    let key = SessionId::generate().store_key();
    let binding = Binding {
        app: "approuter",
        key: &key,
        principal: Some("ann.example@example.com"),
    };
    let codec = Codec::default().with_keys(Keys::new(SECRET, &[]).unwrap());
    let encrypted = codec.encode(&map, binding).unwrap();
    assert_eq!(codec.decode(&encrypted, binding).unwrap(), map);
    // session.codec.tokens=true: the tokens stored decoded.
    let tokens = codec.clone().with_tokens(true);
    let decoded_tokens = tokens.encode(&map, binding).unwrap();
    assert_eq!(decoded_tokens[1] & codec::FLAG_TOKENS, codec::FLAG_TOKENS);
    assert_eq!(tokens.decode(&decoded_tokens, binding).unwrap(), map);
    assert_eq!(
        codec.decode(&decoded_tokens, binding).unwrap(),
        map,
        "any codec of this release reads it, the setting only decides how it writes"
    );
    eprintln!(
        "login-shaped session: tokens {json_bytes} B as text; stored compressed + encrypted {} B, \
         {} B with session.codec.tokens=true (approuter: 3,256 B for this shape, unencrypted)",
        encrypted.len(),
        decoded_tokens.len()
    );
    assert!(
        encrypted.len() < 3_256,
        "{} bytes: not fewer than approuter's",
        encrypted.len()
    );
    assert!(
        decoded_tokens.len() < 2_000,
        "{} bytes with the tokens decoded: not below 2,000",
        decoded_tokens.len()
    );
}
