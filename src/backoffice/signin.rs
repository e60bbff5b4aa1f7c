//! Password checks that cost whoever guesses, not the node: argon2 runs only for the configured
//! user name (any other is answered wrong after as long as a check takes, without one), off the
//! async threads, a bounded number at once (an attempt that finds them all busy is refused at
//! once), and repeated failures lock out the client address (after [`ADDRESS_LIMIT`]) and the
//! user name (after [`USER_LIMIT`]) for [`LOCKOUT`]. A success is remembered for [`REMEMBER`],
//! so a script sending HTTP Basic credentials on every request pays for one check, not for each,
//! and keeps working while its user name is locked out by someone else's guesses.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use argon2::password_hash::{PasswordHash, PasswordVerifier as _};
use sha2::Digest as _;
use tokio::sync::Semaphore;

/// Failed attempts from one client address, within [`LOCKOUT`], before it is locked out.
pub(super) const ADDRESS_LIMIT: u32 = 10;
/// Failed attempts for one user name, from anywhere, within [`LOCKOUT`], before it is locked
/// out (higher than [`ADDRESS_LIMIT`]: locking the operator out is itself an attack).
pub(super) const USER_LIMIT: u32 = 50;
/// How long a lockout lasts, and the window failures are counted in.
pub(super) const LOCKOUT: Duration = Duration::from_secs(15 * 60);
/// How long a verified user and password are taken without a new argon2 check.
const REMEMBER: Duration = Duration::from_secs(60);
/// How long a check is taken to last before one was timed.
const FIRST_CHECK_MICROS: u64 = 50_000;

/// What a password check found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Checked {
    /// The user and password are right.
    Right,
    /// Wrong user or password.
    Wrong,
    /// Too many failures from this address or for this user: not checked.
    LockedOut,
    /// Every check slot is busy: not checked; try again in a second.
    Busy,
}

/// The backoffice's password checks.
pub(super) struct SignIns {
    user: String,
    hash: String,
    /// Checks that may run at once.
    slots: Arc<Semaphore>,
    /// Failures per "addr IP" and "user NAME", forgotten [`LOCKOUT`] after the first.
    failures: moka::sync::Cache<String, Arc<AtomicU32>>,
    /// Locked-out addresses and user names.
    locked: moka::sync::Cache<String, ()>,
    /// Digests of recently verified credentials (keyed with [`SignIns::key`], never stored
    /// in the clear).
    verified: moka::sync::Cache<[u8; 32], ()>,
    /// A random key for those digests, new in each process.
    key: [u8; 32],
    /// How long the last argon2 check took (µs): a wrong user name is answered after as long.
    check_micros: std::sync::atomic::AtomicU64,
}

impl SignIns {
    pub(super) fn new(user: String, hash: String) -> Self {
        let slots = std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1));
        let mut key = [0u8; 32];
        // Without randomness the digests are still keyed by the hash, which is secret enough
        // for a cache that lives a minute in memory.
        if getrandom::fill(&mut key).is_err() {
            key.copy_from_slice(&sha2::Sha256::digest(hash.as_bytes()));
        }
        Self {
            user,
            hash,
            slots: Arc::new(Semaphore::new(slots)),
            failures: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(LOCKOUT)
                .build(),
            locked: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(LOCKOUT)
                .build(),
            verified: moka::sync::Cache::builder()
                .max_capacity(1_000)
                .time_to_live(REMEMBER)
                .build(),
            key,
            check_micros: std::sync::atomic::AtomicU64::new(FIRST_CHECK_MICROS),
        }
    }

    /// Checks `user` and `password` sent from `client` (when known).
    pub(super) async fn check(
        &self,
        client: Option<IpAddr>,
        user: &str,
        password: &str,
    ) -> Checked {
        let address = client.map(|ip| format!("addr {ip}"));
        let name = format!("user {user}");
        let keys: Vec<String> = address.iter().cloned().chain([name.clone()]).collect();
        // A locked-out address gets no answer at all, not even from the memory below.
        if address
            .as_ref()
            .is_some_and(|a| self.locked.contains_key(a))
        {
            crate::metrics::backoffice_refused("locked-out");
            return Checked::LockedOut;
        }
        // Credentials verified lately pass even while their user name is locked out by someone
        // else's guesses (a script already signed in keeps working).
        let digest = self.digest(user, password);
        if self.verified.contains_key(&digest) {
            return Checked::Right;
        }
        if self.locked.contains_key(&name) {
            // Counted against the address: the memory above must not become a free oracle for
            // guesses of the locked-out name.
            self.failed(address.into_iter().collect(), "locked-out");
            return Checked::LockedOut;
        }
        if user != self.user {
            // Cannot be right: no argon2 (guesses with made-up names cost the node nothing).
            // Answered as a check would be: busy when every slot is taken, else after as long
            // as the last check took.
            if self.slots.available_permits() == 0 {
                crate::metrics::backoffice_refused("busy");
                return Checked::Busy;
            }
            let micros = self.check_micros.load(Ordering::Relaxed);
            tokio::time::sleep(Duration::from_micros(micros)).await;
            return self.failed(keys, "unknown-user");
        }
        let Ok(slot) = Arc::clone(&self.slots).try_acquire_owned() else {
            crate::metrics::backoffice_refused("busy");
            return Checked::Busy;
        };
        let hash = self.hash.clone();
        let password = password.to_owned();
        let started = std::time::Instant::now();
        let password_ok = tokio::task::spawn_blocking(move || {
            let _slot = slot;
            PasswordHash::new(&hash).is_ok_and(|hash| {
                argon2::Argon2::default()
                    .verify_password(password.as_bytes(), &hash)
                    .is_ok()
            })
        })
        .await
        .unwrap_or(false);
        let took = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.check_micros.store(took, Ordering::Relaxed);
        if password_ok {
            self.verified.insert(digest, ());
            return Checked::Right;
        }
        self.failed(keys, "wrong-password")
    }

    /// Counts a failed attempt (`reason`, for the metric) against each of `keys` (address, user
    /// name), locking out those that reach their limit.
    fn failed(&self, keys: Vec<String>, reason: &'static str) -> Checked {
        crate::metrics::backoffice_refused(reason);
        for key in keys {
            let limit = if key.starts_with("addr ") {
                ADDRESS_LIMIT
            } else {
                USER_LIMIT
            };
            let count = self
                .failures
                .get_with(key.clone(), || Arc::new(AtomicU32::new(0)))
                .fetch_add(1, Ordering::Relaxed)
                + 1;
            if count >= limit {
                tracing::warn!(
                    who = ?key,
                    failures = count,
                    minutes = LOCKOUT.as_secs() / 60,
                    "backoffice: locked out after repeated failed sign-ins"
                );
                self.locked.insert(key.clone(), ());
                self.failures.invalidate(&key);
            }
        }
        Checked::Wrong
    }

    fn digest(&self, user: &str, password: &str) -> [u8; 32] {
        let mut hasher = sha2::Sha256::new();
        hasher.update(self.key);
        hasher.update(user.as_bytes());
        hasher.update([0]);
        hasher.update(password.as_bytes());
        hasher.finalize().into()
    }
}
