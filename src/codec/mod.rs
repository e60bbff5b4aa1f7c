//! The stored form of a session's attributes: a versioned envelope around MessagePack.
//!
//! ```text
//! byte 0   format version (1)
//! byte 1   flags: bit 0 = body deflate-compressed, bit 1 = body encrypted (reserved)
//! byte 2.. body: a MessagePack map { attribute name: bin(MessagePack of the value) }
//! ```
//!
//! Each value is encoded on its own (named MessagePack, so structs are maps and survive fields
//! being added or removed), which lets a value that no longer decodes be dropped while the rest
//! of the session loads. The body is deflated when it is larger than a threshold and the
//! compressed form is smaller. Anything that is not a well-formed envelope of a known version is
//! an [`Error`], never a panic: the caller treats it as a missing session.

use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};

use flate2::Compression;
use flate2::read::DeflateDecoder;
use flate2::write::DeflateEncoder;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// The envelope format this build writes.
pub const FORMAT_VERSION: u8 = 1;
/// Flag: the body is raw-deflate compressed.
pub const FLAG_COMPRESSED: u8 = 0b0000_0001;
/// Flag: the body is encrypted (reserved for the encryption format; not written by this build).
pub const FLAG_ENCRYPTED: u8 = 0b0000_0010;
const KNOWN_FLAGS: u8 = FLAG_COMPRESSED | FLAG_ENCRYPTED;
const HEADER_LEN: usize = 2;

/// Bodies up to this size are stored uncompressed: deflate does not pay for itself below it.
pub const DEFAULT_COMPRESS_THRESHOLD: usize = 256;
/// The largest body a blob may decompress to; a larger one is refused (a deflate bomb).
pub const MAX_DECODED_LEN: usize = 16 * 1024 * 1024;

/// Attribute name → the value's own MessagePack bytes.
pub type EncodedAttributes = BTreeMap<String, Vec<u8>>;

/// Why a blob could not be decoded or a value encoded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The blob is shorter than the envelope header.
    #[error("blob of {0} bytes is shorter than the envelope header")]
    Truncated(usize),
    /// The blob names a format version this build does not know.
    #[error("unknown session format version {0} (this build reads version {FORMAT_VERSION})")]
    UnknownVersion(u8),
    /// The blob sets flags this build does not know.
    #[error("unknown envelope flags {0:#010b}")]
    UnknownFlags(u8),
    /// The blob is encrypted and this build was not given a way to decrypt it.
    #[error("blob is encrypted and no session secret is configured")]
    Encrypted,
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
#[derive(Clone, Debug)]
pub struct Codec {
    compress_threshold: usize,
}

impl Default for Codec {
    fn default() -> Self {
        Self {
            compress_threshold: DEFAULT_COMPRESS_THRESHOLD,
        }
    }
}

impl Codec {
    /// A codec that compresses bodies larger than `threshold` bytes (default
    /// [`DEFAULT_COMPRESS_THRESHOLD`]).
    pub fn with_compress_threshold(mut self, threshold: usize) -> Self {
        self.compress_threshold = threshold;
        self
    }

    /// Encodes an attribute map into a blob.
    pub fn encode(&self, attributes: &EncodedAttributes) -> Result<Vec<u8>, Error> {
        let map: BTreeMap<&str, &serde_bytes::Bytes> = attributes
            .iter()
            .map(|(name, value)| (name.as_str(), serde_bytes::Bytes::new(value)))
            .collect();
        let body = rmp_serde::to_vec(&map)?;
        if body.len() > self.compress_threshold {
            let compressed = compressed_body(&body)?;
            if compressed.len() < body.len() {
                return Ok(with_header(FLAG_COMPRESSED, &compressed));
            }
        }
        Ok(with_header(0, &body))
    }

    /// Decodes a blob into its attribute map.
    pub fn decode(&self, blob: &[u8]) -> Result<EncodedAttributes, Error> {
        let [version, flags, body @ ..] = blob else {
            return Err(Error::Truncated(blob.len()));
        };
        if *version != FORMAT_VERSION {
            return Err(Error::UnknownVersion(*version));
        }
        if flags & !KNOWN_FLAGS != 0 {
            return Err(Error::UnknownFlags(*flags));
        }
        if flags & FLAG_ENCRYPTED != 0 {
            return Err(Error::Encrypted);
        }
        let map: BTreeMap<String, serde_bytes::ByteBuf> = if flags & FLAG_COMPRESSED != 0 {
            let mut plain = Vec::with_capacity(body.len().saturating_mul(3).min(MAX_DECODED_LEN));
            let read = DeflateDecoder::new(body)
                .take(MAX_DECODED_LEN as u64 + 1)
                .read_to_end(&mut plain)
                .map_err(Error::Decompress)?;
            if read > MAX_DECODED_LEN {
                return Err(Error::TooLarge);
            }
            rmp_serde::from_slice(&plain)?
        } else {
            rmp_serde::from_slice(body)?
        };
        Ok(map
            .into_iter()
            .map(|(name, value)| (name, value.into_vec()))
            .collect())
    }
}

fn compressed_body(body: &[u8]) -> Result<Vec<u8>, Error> {
    let mut encoder =
        DeflateEncoder::new(Vec::with_capacity(body.len() / 2), Compression::default());
    encoder.write_all(body).map_err(Error::Compress)?;
    encoder.finish().map_err(Error::Compress)
}

fn with_header(flags: u8, body: &[u8]) -> Vec<u8> {
    let mut blob = Vec::with_capacity(HEADER_LEN + body.len());
    blob.extend_from_slice(&[FORMAT_VERSION, flags]);
    blob.extend_from_slice(body);
    blob
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attributes(cart_items: usize) -> EncodedAttributes {
        let cart: Vec<(String, u32)> = (0..cart_items)
            .map(|i| (format!("SKU-{i:05}"), 1))
            .collect();
        BTreeMap::from([
            ("cart".to_owned(), encode_value(&cart).unwrap()),
            ("user".to_owned(), encode_value("Zoë").unwrap()),
        ])
    }

    #[test]
    fn round_trips_small_and_large() {
        let codec = Codec::default();
        for items in [0, 1, 20, 5_000] {
            let attrs = attributes(items);
            let blob = codec.encode(&attrs).unwrap();
            assert_eq!(blob[0], FORMAT_VERSION);
            assert_eq!(codec.decode(&blob).unwrap(), attrs, "{items} items");
        }
        assert_eq!(
            codec.encode(&attributes(0)).unwrap()[1],
            0,
            "small bodies stay plain"
        );
        assert_eq!(
            codec.encode(&attributes(5_000)).unwrap()[1],
            FLAG_COMPRESSED
        );
    }

    #[test]
    fn empty_map_round_trips() {
        let codec = Codec::default();
        let blob = codec.encode(&EncodedAttributes::new()).unwrap();
        assert!(codec.decode(&blob).unwrap().is_empty());
    }

    #[test]
    fn rejects_unknown_versions_flags_and_corruption() {
        let codec = Codec::default();
        let blob = codec.encode(&attributes(50)).unwrap();
        assert!(matches!(codec.decode(&[]), Err(Error::Truncated(0))));
        assert!(matches!(codec.decode(&[1]), Err(Error::Truncated(1))));
        let mut v9 = blob.clone();
        v9[0] = 9;
        assert!(matches!(codec.decode(&v9), Err(Error::UnknownVersion(9))));
        let mut odd_flags = blob.clone();
        odd_flags[1] |= 0b1000_0000;
        assert!(matches!(
            codec.decode(&odd_flags),
            Err(Error::UnknownFlags(_))
        ));
        let mut encrypted = blob.clone();
        encrypted[1] |= FLAG_ENCRYPTED;
        assert!(matches!(codec.decode(&encrypted), Err(Error::Encrypted)));
        // Every truncation and every single-byte corruption is an error or a (different) map,
        // never a panic.
        for len in 0..blob.len() {
            let _ = codec.decode(&blob[..len]);
        }
        for i in HEADER_LEN..blob.len() {
            let mut bad = blob.clone();
            bad[i] ^= 0xff;
            let _ = codec.decode(&bad);
        }
        assert!(codec.decode(&[FORMAT_VERSION, 0, 0xc1]).is_err());
        assert!(
            codec
                .decode(&[FORMAT_VERSION, FLAG_COMPRESSED, 1, 2, 3])
                .is_err()
        );
    }

    #[test]
    fn refuses_deflate_bombs() {
        let zeros = vec![0u8; MAX_DECODED_LEN + 10];
        let blob = with_header(FLAG_COMPRESSED, &compressed_body(&zeros).unwrap());
        assert!(matches!(
            Codec::default().decode(&blob),
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
