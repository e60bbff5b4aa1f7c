//! Session ids, the keys they are stored under, and the short hashes that logs show.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};

/// Random bytes in a session id: 256 bits from the operating system's CSPRNG.
const ID_BYTES: usize = 32;
/// Length of an id (and of a [`SessionKey`]) as unpadded base64url text.
const ID_LEN: usize = 43;
/// Characters of a [`SessionKey`] shown as a [`ShortHash`].
const SHORT_HASH_LEN: usize = 10;

/// Whether `text` is 256 bits as canonical unpadded base64url: [`ID_LEN`] characters of the
/// URL-safe alphabet, the last one's two bits beyond the 256th zero (so each value has one
/// spelling). One table lookup a character: this runs on every request that carries a cookie,
/// and the base64 crate's decoder cost twice as much there (bench/sticky_read.sh). The tests
/// check it against that decoder.
fn is_256_bits(text: &[u8]) -> bool {
    /// Each byte's 6-bit value in the URL-safe alphabet; `NOT` for every other byte.
    const NOT: u8 = 0xff;
    static VALUE: [u8; 256] = {
        let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut table = [NOT; 256];
        let mut value: u8 = 0;
        while value < 64 {
            table[alphabet[value as usize] as usize] = value;
            value += 1;
        }
        table
    };
    // Values are below 64 and `NOT` has the top bit: one OR over the text, no branch a byte.
    text.len() == ID_LEN
        && text.iter().fold(0, |seen, &c| seen | VALUE[usize::from(c)]) & 0x80 == 0
        && VALUE[usize::from(text[ID_LEN - 1])] & 0b11 == 0
}

/// A session id as the client holds it in its cookie.
///
/// 256 bits from the OS CSPRNG, unpadded base64url. It is never logged and never stored: the
/// store keys rows by [`SessionKey`], a SHA-256 of the id, so a dump of the table yields no usable
/// cookie, and logs show a [`ShortHash`].
#[derive(Clone, PartialEq, Eq)]
pub struct SessionId(std::sync::Arc<str>);

/// Hashes the id's bytes, as `CookieId` does: the node cache finds a session by the id a
/// request names without making a [`SessionId`] of it.
impl std::hash::Hash for SessionId {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write(self.0.as_bytes());
    }
}

impl SessionId {
    /// A new random id.
    ///
    /// # Panics
    /// If the operating system has no random source, which leaves no safe way to make an id.
    pub fn generate() -> Self {
        let mut bytes = [0u8; ID_BYTES];
        getrandom::fill(&mut bytes).expect("the operating system's random source failed");
        Self(URL_SAFE_NO_PAD.encode(bytes).into())
    }

    /// Parses an id sent by a client; `None` for anything this crate could not have generated.
    pub fn parse(text: &str) -> Option<Self> {
        is_256_bits(text.as_bytes()).then(|| Self(text.into()))
    }

    /// The value to put in the session cookie.
    pub fn as_cookie_value(&self) -> &str {
        &self.0
    }

    /// The key the store keeps this session under.
    pub fn store_key(&self) -> SessionKey {
        SessionKey(URL_SAFE_NO_PAD.encode(Sha256::digest(self.0.as_bytes())))
    }

    /// A short, non-reversible name for logs: the first characters of the store key.
    pub fn short_hash(&self) -> ShortHash {
        self.store_key().short_hash()
    }
}

/// A well-formed id as a request names it, kept inline: reading the cookies and looking the
/// session up in the node cache allocate nothing ([`SessionId`] is made only when one is kept).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct CookieId([u8; ID_LEN]);

impl CookieId {
    /// The id in `bytes`, if they are one this crate could have generated.
    pub(crate) fn parse(bytes: &[u8]) -> Option<Self> {
        if !is_256_bits(bytes) {
            return None;
        }
        bytes.try_into().ok().map(Self)
    }

    /// The id's bytes: its text (base64url, so ASCII).
    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The id's text (base64url: ASCII by construction).
    pub(crate) fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).unwrap_or_default()
    }

    /// The id as the rest of the crate keeps it.
    pub(crate) fn to_id(self) -> SessionId {
        SessionId(self.as_str().into())
    }
}

/// Hashes as the [`SessionId`] of the same text.
impl std::hash::Hash for CookieId {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write(&self.0);
    }
}

/// The node cache is looked up with the id a request names.
impl quick_cache::Equivalent<SessionId> for CookieId {
    fn equivalent(&self, key: &SessionId) -> bool {
        key.0.as_bytes() == self.0
    }
}

impl fmt::Debug for CookieId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CookieId({})", self.to_id().short_hash())
    }
}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SessionId({})", self.short_hash())
    }
}

/// The key of a stored session: unpadded base64url of the SHA-256 of its [`SessionId`].
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(transparent)]
pub struct SessionKey(String);

impl SessionKey {
    /// Parses a key as shown by the backoffice or the command line.
    pub fn parse(text: &str) -> Option<Self> {
        if text.len() != ID_LEN {
            return None;
        }
        is_256_bits(text.as_bytes()).then(|| Self(text.to_owned()))
    }

    /// The key as text, as stored in the `session_id` column.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The short hash logs use for this session.
    pub fn short_hash(&self) -> ShortHash {
        // Keys read from a store are not checked: take characters, never slice bytes blindly.
        ShortHash(self.0.chars().take(SHORT_HASH_LEN).collect())
    }
}

impl fmt::Display for SessionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What logs show for a session: the first ten characters of its [`SessionKey`].
///
/// An operator can match it against the key listed by the backoffice; it reveals nothing of the id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShortHash(String);

impl fmt::Display for ShortHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// The table check accepts exactly what the base64 crate decodes to 32 bytes
        /// (canonical, unpadded, URL-safe), for strings near the id's shape.
        #[test]
        fn the_id_check_agrees_with_the_base64_decoder(text in "[A-Za-z0-9_+/=.-]{42,44}") {
            let decoded = URL_SAFE_NO_PAD.decode(&text).is_ok_and(|b| b.len() == ID_BYTES);
            proptest::prop_assert_eq!(is_256_bits(text.as_bytes()), decoded, "{}", text);
        }

        /// Every last character, after 42 valid ones: only the canonical ones pass.
        #[test]
        fn the_last_character_must_be_canonical(last in proptest::char::any()) {
            let text = format!("{}{last}", "A".repeat(42));
            let decoded = URL_SAFE_NO_PAD.decode(&text).is_ok_and(|b| b.len() == ID_BYTES);
            proptest::prop_assert_eq!(is_256_bits(text.as_bytes()), decoded, "{}", text);
        }
    }

    #[test]
    fn generated_ids_parse_and_differ() {
        let a = SessionId::generate();
        let b = SessionId::generate();
        assert_ne!(a, b);
        assert_eq!(SessionId::parse(a.as_cookie_value()), Some(a.clone()));
        assert_eq!(a.as_cookie_value().len(), ID_LEN);
    }

    #[test]
    fn malformed_ids_are_rejected() {
        let good = SessionId::generate();
        let good = good.as_cookie_value();
        for bad in [
            "",
            "abc",
            &good[..42],
            &format!("{good}A"),
            &good.replace(|_: char| true, "!"),
            "ÄÄÄÄÄÄÄÄÄÄÄÄÄÄÄÄÄÄÄÄÄ", // 42 bytes of UTF-8, wrong alphabet
            &"A".repeat(10_000),
        ] {
            assert_eq!(SessionId::parse(bad), None, "{bad:?}");
        }
        // 43 base64url characters whose last one carries non-zero padding bits.
        let mut noncanonical = good[..42].to_owned();
        noncanonical.push('B');
        if noncanonical != good && URL_SAFE_NO_PAD.decode(&noncanonical).is_err() {
            assert_eq!(SessionId::parse(&noncanonical), None);
        }
    }

    #[test]
    fn a_cookie_id_is_the_id_it_names() {
        use std::hash::BuildHasher as _;
        let id = SessionId::generate();
        let cookie = CookieId::parse(id.as_cookie_value().as_bytes()).expect("a generated id");
        assert_eq!(cookie.as_str(), id.as_cookie_value());
        assert_eq!(cookie.to_id(), id);
        assert!(!format!("{cookie:?}").contains(id.as_cookie_value()));
        // The cache finds the id by the one a request names: the same hash, and equivalent.
        let std_state = std::hash::RandomState::new();
        let fold_state = foldhash::fast::RandomState::default();
        assert_eq!(std_state.hash_one(&id), std_state.hash_one(cookie));
        assert_eq!(fold_state.hash_one(&id), fold_state.hash_one(cookie));
        assert!(quick_cache::Equivalent::equivalent(&cookie, &id));
        assert!(!quick_cache::Equivalent::equivalent(
            &cookie,
            &SessionId::generate()
        ));
        for bad in ["", "abc", &id.as_cookie_value()[..42]] {
            assert_eq!(CookieId::parse(bad.as_bytes()), None, "{bad:?}");
        }
    }

    #[test]
    fn key_and_short_hash_hide_the_id() {
        let id = SessionId::generate();
        let key = id.store_key();
        assert_ne!(key.as_str(), id.as_cookie_value());
        assert!(key.as_str().starts_with(&id.short_hash().to_string()));
        assert!(!format!("{id:?}").contains(id.as_cookie_value()));
        assert_eq!(SessionKey::parse(key.as_str()), Some(key));
    }
}
