//! Encryption keys derived from `session.secret` (and the secrets listed for rotation).

use chacha20poly1305::{KeyInit as _, XChaCha20Poly1305};
use hkdf::Hkdf;
use sha2::Sha256;
use zeroize::Zeroizing;

/// The shortest secret accepted (as the SAP approuter asks: "at least 64 characters").
pub const MIN_SECRET_LEN: usize = 64;

const SALT: &[u8] = b"session-failover/v1";
const KEY_INFO: &[u8] = b"stored session encryption key";
const ID_INFO: &[u8] = b"stored session key id";

/// One key: its id (a byte derived from the secret, written in each blob) and its cipher.
pub(crate) struct Key {
    pub(crate) id: u8,
    pub(crate) cipher: XChaCha20Poly1305,
}

/// The current key and the previous ones (for rotation).
pub struct Keys {
    current: Key,
    previous: Vec<Key>,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key material; the ids are what an operator needs.
        f.debug_struct("Keys")
            .field("current_id", &self.current.id)
            .field(
                "previous_ids",
                &self.previous.iter().map(|k| k.id).collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// A secret that is too short.
#[derive(Debug, thiserror::Error)]
#[error("a session secret must be at least {MIN_SECRET_LEN} characters; this one has {0}")]
pub struct ShortSecret(pub usize);

fn derive(secret: &str) -> Result<Key, ShortSecret> {
    let length = secret.chars().count();
    if length < MIN_SECRET_LEN {
        return Err(ShortSecret(length));
    }
    let hkdf = Hkdf::<Sha256>::new(Some(SALT), secret.as_bytes());
    let mut key = Zeroizing::new([0u8; 32]);
    let mut id = [0u8; 1];
    // Both lengths are far below HKDF-SHA256's limit of 8160 bytes.
    hkdf.expand(KEY_INFO, key.as_mut_slice())
        .map_err(|_| ShortSecret(length))?;
    hkdf.expand(ID_INFO, &mut id)
        .map_err(|_| ShortSecret(length))?;
    let cipher =
        XChaCha20Poly1305::new_from_slice(key.as_slice()).map_err(|_| ShortSecret(length))?;
    Ok(Key { id: id[0], cipher })
}

impl Keys {
    /// Keys from the current secret and the previous ones (each at least [`MIN_SECRET_LEN`]
    /// characters).
    pub fn new(current: &str, previous: &[&str]) -> Result<Self, ShortSecret> {
        Ok(Self {
            current: derive(current)?,
            previous: previous
                .iter()
                .map(|s| derive(s))
                .collect::<Result<_, _>>()?,
        })
    }

    pub(crate) fn current(&self) -> &Key {
        &self.current
    }

    /// The id of the key every write uses.
    pub fn current_id(&self) -> u8 {
        self.current.id
    }

    /// Every key with this id (ids are one byte: two secrets may share one, and decryption
    /// tries each).
    pub(crate) fn with_id(&self, id: u8) -> impl Iterator<Item = &Key> {
        std::iter::once(&self.current)
            .chain(&self.previous)
            .filter(move |key| key.id == id)
    }
}
