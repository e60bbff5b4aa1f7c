//! The stored form of a session's attributes: a versioned envelope around MessagePack,
//! compressed, and with a secret configured, encrypted.
//!
//! ```text
//! byte 0      format version (1)
//! byte 1      flags: bit 0 = body deflate-compressed, bit 1 = body encrypted,
//!             bit 2 = the body's JSON Web Tokens stored decoded (`tokens`)
//! -- if encrypted --
//! byte 2      key id (which secret's key encrypted it)
//! bytes 3..27 XChaCha20-Poly1305 nonce (24 random bytes, fresh for every write)
//! then        ciphertext of the (compressed) body, with its 16-byte tag
//! -- else --
//! byte 2..    the (compressed) body
//! ```
//!
//! The body is a MessagePack map { attribute name: bin(named MessagePack of the value) }. Each
//! value is encoded on its own (structs as maps, so they survive fields being added or removed),
//! which lets a value that no longer decodes be dropped while the rest of the session loads. The
//! body is deflated when it is larger than a threshold and the compressed form is smaller.
//!
//! Encryption binds the blob to its row: the header, the application, the store key and the
//! principal are associated data, so a blob copied onto another row, or a row whose principal was
//! changed, fails authentication. Keys are derived with HKDF-SHA256 from `session.secret`; older
//! secrets (`session.secret.previous`) still decrypt, and every write uses the current one.
//! Docs: `docs/FORMAT.md`. Anything that is not a well-formed, authentic envelope of a known
//! version is an [`Error`], never a panic: the caller treats it as a missing session.

mod keys;
mod masked;
mod tokens;

pub(crate) use masked::chain;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io::Read as _;

use chacha20poly1305::aead::Aead as _;
use flate2::Compression;
use flate2::read::DeflateDecoder;
use flate2::{Compress, FlushCompress, Status};
use serde::Serialize;
use serde::de::DeserializeOwned;

pub use keys::{Keys, MIN_SECRET_LEN};

use crate::id::SessionKey;

/// The envelope format this build writes.
pub const FORMAT_VERSION: u8 = 1;
/// Flag: the body is raw-deflate compressed.
pub const FLAG_COMPRESSED: u8 = 0b0000_0001;
/// Flag: the body is encrypted (XChaCha20-Poly1305; key id and nonce follow the flags).
pub const FLAG_ENCRYPTED: u8 = 0b0000_0010;
/// Flag: the body's JSON Web Tokens are stored decoded (see `tokens`), before compression.
pub const FLAG_TOKENS: u8 = 0b0000_0100;
const KNOWN_FLAGS: u8 = FLAG_COMPRESSED | FLAG_ENCRYPTED | FLAG_TOKENS;
const HEADER_LEN: usize = 2;
const NONCE_LEN: usize = 24;

/// Bodies up to this size are stored uncompressed: deflate does not pay for itself below it.
pub const DEFAULT_COMPRESS_THRESHOLD: usize = 256;
/// The largest body a blob may decompress to; a larger one is refused (a deflate bomb).
pub const MAX_DECODED_LEN: usize = 16 * 1024 * 1024;

/// Attribute name → the value's own MessagePack bytes.
pub type EncodedAttributes = BTreeMap<String, Vec<u8>>;

/// What a blob is bound to: the row it belongs to. Encryption authenticates it.
#[derive(Clone, Copy, Debug)]
pub struct Binding<'a> {
    /// The application the session belongs to.
    pub app: &'a str,
    /// The row's key.
    pub key: &'a SessionKey,
    /// The row's principal.
    pub principal: Option<&'a str>,
}

/// Why a blob could not be decoded or a value encoded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The blob is shorter than its envelope header.
    #[error("blob of {0} bytes is shorter than its envelope header")]
    Truncated(usize),
    /// The blob names a format version this build does not know.
    #[error("unknown session format version {0} (this build reads version {FORMAT_VERSION})")]
    UnknownVersion(u8),
    /// The blob sets flags this build does not know.
    #[error("unknown envelope flags {0:#010b}")]
    UnknownFlags(u8),
    /// The blob is encrypted and no session secret is configured.
    #[error("blob is encrypted and no session secret is configured")]
    Encrypted,
    /// The blob is not encrypted but a secret is configured and plaintext is not accepted.
    #[error("blob is not encrypted and session.secret.accept.plaintext is false")]
    Plaintext,
    /// No configured secret has the blob's key id.
    #[error("blob was encrypted with a key (id {0}) that no configured secret derives")]
    UnknownKey(u8),
    /// The ciphertext or its binding (row, app, principal) was altered, or the secret is wrong.
    #[error("blob failed authentication (altered, moved to another row, or a wrong secret)")]
    Authentication,
    /// Encrypting failed.
    #[error("encrypting the body failed")]
    Encrypt,
    /// The compressed body is corrupt.
    #[error("corrupt compressed body")]
    Decompress(#[source] std::io::Error),
    /// The body decompresses to more than [`MAX_DECODED_LEN`] bytes.
    #[error("body decompresses to more than {MAX_DECODED_LEN} bytes")]
    TooLarge,
    /// The body is not a MessagePack attribute map, or a value is not of the asked type.
    #[error("corrupt body or value")]
    Decode(#[from] rmp_serde::decode::Error),
    /// A value's `Serialize` implementation failed.
    #[error("value could not be serialized")]
    Encode(#[from] rmp_serde::encode::Error),
    /// Compressing the body failed.
    #[error("compressing the body failed")]
    Compress(#[source] std::io::Error),
    /// The body's decoded tokens are malformed, or restore to more than [`MAX_DECODED_LEN`].
    #[error("corrupt decoded tokens in the body")]
    Tokens,
}

/// Encodes one attribute value (named MessagePack: structs as maps).
pub fn encode_value<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, Error> {
    Ok(rmp_serde::to_vec_named(value)?)
}

/// Decodes one attribute value.
pub fn decode_value<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Error> {
    Ok(rmp_serde::from_slice(bytes)?)
}

/// Turns attribute maps into blobs and back.
#[derive(Clone, Debug, Default)]
pub struct Codec {
    compress_threshold: Option<usize>,
    keys: Option<std::sync::Arc<Keys>>,
    accept_plaintext: bool,
    tokens: bool,
}

impl Codec {
    /// A codec that compresses bodies larger than `threshold` bytes (default
    /// [`DEFAULT_COMPRESS_THRESHOLD`]).
    pub fn with_compress_threshold(mut self, threshold: usize) -> Self {
        self.compress_threshold = Some(threshold);
        self
    }

    /// Encrypts every blob with `keys`' current key, and decrypts with any of them. Default:
    /// none (stored unencrypted).
    pub fn with_keys(mut self, keys: Keys) -> Self {
        self.keys = Some(std::sync::Arc::new(keys));
        self
    }

    /// With keys, still read unencrypted blobs (written before a secret was set). Default false.
    pub fn with_accept_plaintext(mut self, accept: bool) -> Self {
        self.accept_plaintext = accept;
        self
    }

    /// Stores the JSON Web Tokens found in the body decoded (flag bit 2): about a third fewer
    /// bytes for a signed-in user's tokens. Nodes of releases before this flag cannot read
    /// such blobs. Default false (`session.codec.tokens`).
    pub fn with_tokens(mut self, tokens: bool) -> Self {
        self.tokens = tokens;
        self
    }

    /// Whether blobs are encrypted.
    pub fn encrypts(&self) -> bool {
        self.keys.is_some()
    }

    /// Encodes an attribute map into a blob bound to `binding`.
    pub fn encode(
        &self,
        attributes: &EncodedAttributes,
        binding: Binding<'_>,
    ) -> Result<Vec<u8>, Error> {
        let map: BTreeMap<&str, &serde_bytes::Bytes> = attributes
            .iter()
            .map(|(name, value)| (name.as_str(), serde_bytes::Bytes::new(value)))
            .collect();
        let mut body = rmp_serde::to_vec(&map)?;
        let mut flags = 0;
        if self.tokens
            && let Some(packed) = tokens::pack(&body)
        {
            body = packed;
            flags |= FLAG_TOKENS;
        }
        if body.len()
            > self
                .compress_threshold
                .unwrap_or(DEFAULT_COMPRESS_THRESHOLD)
        {
            let compressed = compressed_body(&body)?;
            if compressed.len() < body.len() {
                body = compressed;
                flags |= FLAG_COMPRESSED;
            }
        }
        let Some(keys) = &self.keys else {
            return Ok(with_header(&[FORMAT_VERSION, flags], &body));
        };
        let key = keys.current();
        let header = [FORMAT_VERSION, flags | FLAG_ENCRYPTED, key.id];
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut nonce).map_err(|_| Error::Encrypt)?;
        let aad = associated_data(&header, binding);
        let ciphertext = key
            .cipher
            .encrypt(
                (&nonce).into(),
                chacha20poly1305::aead::Payload {
                    msg: &body,
                    aad: &aad,
                },
            )
            .map_err(|_| Error::Encrypt)?;
        let mut blob = Vec::with_capacity(header.len() + NONCE_LEN + ciphertext.len());
        blob.extend_from_slice(&header);
        blob.extend_from_slice(&nonce);
        blob.extend_from_slice(&ciphertext);
        Ok(blob)
    }

    /// Decodes a blob of the row `binding` into its attribute map.
    pub fn decode(&self, blob: &[u8], binding: Binding<'_>) -> Result<EncodedAttributes, Error> {
        self.decode_keyed(blob, binding)
            .map(|(attributes, _)| attributes)
    }

    /// [`Codec::decode`], and whether the blob should be written again to be under the current
    /// key: it was encrypted under a previous one, or stored in plaintext while a secret is set.
    pub fn decode_keyed(
        &self,
        blob: &[u8],
        binding: Binding<'_>,
    ) -> Result<(EncodedAttributes, bool), Error> {
        let [version, flags, rest @ ..] = blob else {
            return Err(Error::Truncated(blob.len()));
        };
        if *version != FORMAT_VERSION {
            return Err(Error::UnknownVersion(*version));
        }
        if flags & !KNOWN_FLAGS != 0 {
            return Err(Error::UnknownFlags(*flags));
        }
        let decrypted;
        let mut rekey = false;
        let body = if flags & FLAG_ENCRYPTED != 0 {
            let keys = self.keys.as_ref().ok_or(Error::Encrypted)?;
            let [key_id, rest @ ..] = rest else {
                return Err(Error::Truncated(blob.len()));
            };
            if rest.len() < NONCE_LEN {
                return Err(Error::Truncated(blob.len()));
            }
            let (nonce, ciphertext) = rest.split_at(NONCE_LEN);
            let nonce: &[u8; NONCE_LEN] =
                nonce.try_into().map_err(|_| Error::Truncated(blob.len()))?;
            let aad = associated_data(&blob[..HEADER_LEN + 1], binding);
            let mut candidates = keys.with_id(*key_id).peekable();
            if candidates.peek().is_none() {
                return Err(Error::UnknownKey(*key_id));
            }
            decrypted = candidates
                .find_map(|key| {
                    let plain = key
                        .cipher
                        .decrypt(
                            nonce.into(),
                            chacha20poly1305::aead::Payload {
                                msg: ciphertext,
                                aad: &aad,
                            },
                        )
                        .ok()?;
                    // Key ids are one byte: which key decrypted it is what counts.
                    rekey = !std::ptr::eq(key, keys.current());
                    Some(plain)
                })
                .ok_or(Error::Authentication)?;
            decrypted.as_slice()
        } else {
            if self.keys.is_some() && !self.accept_plaintext {
                return Err(Error::Plaintext);
            }
            rekey = self.keys.is_some();
            rest
        };
        let inflated;
        let body = if flags & FLAG_COMPRESSED != 0 {
            let mut plain = Vec::with_capacity(body.len().saturating_mul(3).min(MAX_DECODED_LEN));
            let read = DeflateDecoder::new(body)
                .take(MAX_DECODED_LEN as u64 + 1)
                .read_to_end(&mut plain)
                .map_err(Error::Decompress)?;
            if read > MAX_DECODED_LEN {
                return Err(Error::TooLarge);
            }
            inflated = plain;
            inflated.as_slice()
        } else {
            body
        };
        let unpacked;
        let body = if flags & FLAG_TOKENS != 0 {
            unpacked = tokens::unpack(body, MAX_DECODED_LEN).ok_or(Error::Tokens)?;
            unpacked.as_slice()
        } else {
            body
        };
        let map: BTreeMap<String, serde_bytes::ByteBuf> = rmp_serde::from_slice(body)?;
        let attributes = map
            .into_iter()
            .map(|(name, value)| (name, value.into_vec()))
            .collect();
        Ok((attributes, rekey))
    }
}

/// The associated data of an encrypted blob: its header and the row it belongs to, each part
/// length-prefixed so no two bindings share an encoding.
fn associated_data(header: &[u8], binding: Binding<'_>) -> Vec<u8> {
    let mut aad = Vec::with_capacity(header.len() + 128);
    aad.extend_from_slice(header);
    for part in [
        Some(binding.app),
        Some(binding.key.as_str()),
        binding.principal,
    ] {
        match part {
            Some(text) => {
                aad.push(1);
                aad.extend_from_slice(&u32::try_from(text.len()).unwrap_or(u32::MAX).to_be_bytes());
                aad.extend_from_slice(text.as_bytes());
            }
            None => aad.push(0),
        }
    }
    aad
}

thread_local! {
    /// One deflate state per thread, reset between bodies. A fresh state allocates and zeroes
    /// about 300 KB (window, hash chains), which cost 24 µs per 600-byte body, 60 times the
    /// MessagePack encoding (benches/codec.rs).
    static DEFLATE: RefCell<Compress> = RefCell::new(Compress::new(Compression::fast(), false));
}

/// Raw deflate of `body` at level 1 (the bytes a fresh `DeflateEncoder` at that level makes).
fn compressed_body(body: &[u8]) -> Result<Vec<u8>, Error> {
    DEFLATE.with(|deflate| {
        let mut deflate = deflate.borrow_mut();
        deflate.reset();
        let mut out = Vec::with_capacity(body.len() / 2 + 64);
        loop {
            let consumed = usize::try_from(deflate.total_in()).unwrap_or(body.len());
            let status = deflate
                .compress_vec(&body[consumed..], &mut out, FlushCompress::Finish)
                .map_err(|error| Error::Compress(std::io::Error::other(error)))?;
            match status {
                Status::StreamEnd => return Ok(out),
                // The output is full: make room and go on.
                Status::Ok | Status::BufError => out.reserve(out.capacity().max(64)),
            }
        }
    })
}

fn with_header(header: &[u8], body: &[u8]) -> Vec<u8> {
    let mut blob = Vec::with_capacity(header.len() + body.len());
    blob.extend_from_slice(header);
    blob.extend_from_slice(body);
    blob
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::SessionId;

    const SECRET_A: &str = "a-secret-of-sixty-four-characters-or-more-for-the-tests-0123456789";
    const SECRET_B: &str = "b-secret-of-sixty-four-characters-or-more-for-the-tests-0123456789";

    fn attributes(cart_items: usize) -> EncodedAttributes {
        let cart: Vec<(String, u32)> = (0..cart_items)
            .map(|i| (format!("SKU-{i:05}"), 1))
            .collect();
        BTreeMap::from([
            ("cart".to_owned(), encode_value(&cart).unwrap()),
            ("user".to_owned(), encode_value("Zoë").unwrap()),
        ])
    }

    fn binding(key: &SessionKey) -> Binding<'_> {
        Binding {
            app: "storefront",
            key,
            principal: Some("zoë"),
        }
    }

    #[test]
    fn round_trips_small_and_large_plain_and_encrypted() {
        let key = SessionId::generate().store_key();
        let encrypted = Codec::default().with_keys(Keys::new(SECRET_A, &[]).unwrap());
        for codec in [Codec::default(), encrypted] {
            for items in [0, 1, 20, 5_000] {
                let attrs = attributes(items);
                let blob = codec.encode(&attrs, binding(&key)).unwrap();
                assert_eq!(blob[0], FORMAT_VERSION);
                assert_eq!(
                    codec.decode(&blob, binding(&key)).unwrap(),
                    attrs,
                    "{items} items"
                );
            }
        }
        let plain = Codec::default();
        assert_eq!(
            plain.encode(&attributes(0), binding(&key)).unwrap()[1],
            0,
            "small bodies stay plain"
        );
        assert_eq!(
            plain.encode(&attributes(5_000), binding(&key)).unwrap()[1],
            FLAG_COMPRESSED
        );
    }

    #[test]
    fn ciphertext_hides_values_and_is_bound_to_its_row() {
        let key = SessionId::generate().store_key();
        let other = SessionId::generate().store_key();
        let codec = Codec::default().with_keys(Keys::new(SECRET_A, &[]).unwrap());
        let blob = codec.encode(&attributes(20), binding(&key)).unwrap();
        assert_eq!(blob[1] & FLAG_ENCRYPTED, FLAG_ENCRYPTED);
        assert!(!blob.windows(3).any(|w| w == b"SKU"), "no plaintext value");
        let again = codec.encode(&attributes(20), binding(&key)).unwrap();
        assert_ne!(blob, again, "a fresh nonce per write");
        // Another row, another app, another principal, a flipped bit, a truncation: refused.
        let moved = Binding {
            key: &other,
            ..binding(&key)
        };
        assert!(matches!(
            codec.decode(&blob, moved),
            Err(Error::Authentication)
        ));
        let app = Binding {
            app: "backoffice",
            ..binding(&key)
        };
        assert!(matches!(
            codec.decode(&blob, app),
            Err(Error::Authentication)
        ));
        let user = Binding {
            principal: Some("mallory"),
            ..binding(&key)
        };
        assert!(matches!(
            codec.decode(&blob, user),
            Err(Error::Authentication)
        ));
        for i in 0..blob.len() {
            let mut bad = blob.clone();
            bad[i] ^= 0x01;
            assert!(
                codec.decode(&bad, binding(&key)).is_err(),
                "bit flip at {i}"
            );
        }
        for len in 0..blob.len() {
            assert!(
                codec.decode(&blob[..len], binding(&key)).is_err(),
                "truncated to {len}"
            );
        }
    }

    #[test]
    fn rotation_and_wrong_or_missing_secrets() {
        let key = SessionId::generate().store_key();
        let old = Codec::default().with_keys(Keys::new(SECRET_A, &[]).unwrap());
        let blob = old.encode(&attributes(3), binding(&key)).unwrap();
        // B is current and A is listed as previous: A's blobs still decrypt, B's are written.
        let rotated = Codec::default().with_keys(Keys::new(SECRET_B, &[SECRET_A]).unwrap());
        assert_eq!(rotated.decode(&blob, binding(&key)).unwrap(), attributes(3));
        let new_blob = rotated.encode(&attributes(3), binding(&key)).unwrap();
        // Which blobs must be written again to move to the current key.
        let rekey = |codec: &Codec, blob: &[u8]| codec.decode_keyed(blob, binding(&key)).unwrap().1;
        assert!(rekey(&rotated, &blob), "under the previous key");
        assert!(!rekey(&rotated, &new_blob), "under the current key");
        assert!(!rekey(&old, &blob), "A is current for the old codec");
        assert_eq!(new_blob[2], Keys::new(SECRET_B, &[]).unwrap().current_id());
        assert_ne!(
            new_blob[2], blob[2],
            "these two secrets have different key ids"
        );
        // B alone cannot read A's blob; no secret cannot read any encrypted blob.
        let only_b = Codec::default().with_keys(Keys::new(SECRET_B, &[]).unwrap());
        assert!(matches!(
            only_b.decode(&blob, binding(&key)),
            Err(Error::UnknownKey(_) | Error::Authentication)
        ));
        assert!(matches!(
            Codec::default().decode(&blob, binding(&key)),
            Err(Error::Encrypted)
        ));
        // Plaintext blobs are refused once a secret is set, unless accepted explicitly.
        let plain = Codec::default()
            .encode(&attributes(3), binding(&key))
            .unwrap();
        assert!(matches!(
            only_b.decode(&plain, binding(&key)),
            Err(Error::Plaintext)
        ));
        let lenient = only_b.clone().with_accept_plaintext(true);
        assert_eq!(
            lenient.decode(&plain, binding(&key)).unwrap(),
            attributes(3)
        );
        assert!(rekey(&lenient, &plain), "plaintext moves under the key");
        assert!(
            !rekey(&Codec::default(), &plain),
            "no secret: nothing to move"
        );
        assert!(Keys::new("short", &[]).is_err());
        assert!(Keys::new(SECRET_A, &["short"]).is_err());
        assert!(!format!("{:?}", Keys::new(SECRET_A, &[]).unwrap()).contains("secret"));
    }

    #[test]
    fn empty_map_round_trips() {
        let key = SessionId::generate().store_key();
        let codec = Codec::default();
        let blob = codec
            .encode(&EncodedAttributes::new(), binding(&key))
            .unwrap();
        assert!(codec.decode(&blob, binding(&key)).unwrap().is_empty());
    }

    #[test]
    fn rejects_unknown_versions_flags_and_corruption() {
        let key = SessionId::generate().store_key();
        let b = binding(&key);
        let codec = Codec::default();
        let blob = codec.encode(&attributes(50), b).unwrap();
        assert!(matches!(codec.decode(&[], b), Err(Error::Truncated(0))));
        assert!(matches!(codec.decode(&[1], b), Err(Error::Truncated(1))));
        let mut v9 = blob.clone();
        v9[0] = 9;
        assert!(matches!(
            codec.decode(&v9, b),
            Err(Error::UnknownVersion(9))
        ));
        let mut odd_flags = blob.clone();
        odd_flags[1] |= 0b1000_0000;
        assert!(matches!(
            codec.decode(&odd_flags, b),
            Err(Error::UnknownFlags(_))
        ));
        let mut encrypted = blob.clone();
        encrypted[1] |= FLAG_ENCRYPTED;
        assert!(matches!(codec.decode(&encrypted, b), Err(Error::Encrypted)));
        for len in 0..blob.len() {
            let _ = codec.decode(&blob[..len], b);
        }
        for i in HEADER_LEN..blob.len() {
            let mut bad = blob.clone();
            bad[i] ^= 0xff;
            let _ = codec.decode(&bad, b);
        }
        assert!(codec.decode(&[FORMAT_VERSION, 0, 0xc1], b).is_err());
        assert!(
            codec
                .decode(&[FORMAT_VERSION, FLAG_COMPRESSED, 1, 2, 3], b)
                .is_err()
        );
    }

    #[test]
    fn refuses_deflate_bombs() {
        let key = SessionId::generate().store_key();
        let zeros = vec![0u8; MAX_DECODED_LEN + 10];
        let blob = with_header(
            &[FORMAT_VERSION, FLAG_COMPRESSED],
            &compressed_body(&zeros).unwrap(),
        );
        assert!(matches!(
            Codec::default().decode(&blob, binding(&key)),
            Err(Error::TooLarge)
        ));
    }

    #[test]
    fn values_survive_added_and_removed_fields() {
        #[derive(Serialize, serde::Deserialize, PartialEq, Debug)]
        struct V1 {
            sku: String,
        }
        #[derive(Serialize, serde::Deserialize, PartialEq, Debug)]
        struct V2 {
            sku: String,
            #[serde(default)]
            gift: Option<bool>,
        }
        let old = encode_value(&V1 { sku: "A".into() }).unwrap();
        let new: V2 = decode_value(&old).unwrap();
        assert_eq!(
            new,
            V2 {
                sku: "A".into(),
                gift: None
            }
        );
        let back: V1 = decode_value(&encode_value(&new).unwrap()).unwrap();
        assert_eq!(back, V1 { sku: "A".into() });
    }
}
