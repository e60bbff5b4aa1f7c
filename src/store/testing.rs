//! Test support, not part of the API: [`Wrapped`], one store wrapper that forwards every call to
//! a real store after a [`Hook`] has seen it (to count calls, delay them, or fail them).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use super::{
    EpochMillis, Error, ListQuery, Meta, Pushed, Record, SessionAdmin, SessionStore, Stats, Update,
};
use crate::id::SessionKey;

/// One store call, as a [`Hook`] sees it.
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub enum Call<'a> {
    /// `get`, `version`, `exists` or `ttl` of a key.
    Read(&'static str, &'a SessionKey),
    /// `set`, `set_many`, `update` or `update_many` of records.
    Write(&'static str, &'a [Record]),
    /// `destroy` or `destroy_many` of keys.
    Delete(&'static str, &'a [SessionKey]),
    /// Any other call, by name.
    Other(&'static str),
}

impl Call<'_> {
    /// The method's name.
    pub fn name(&self) -> &'static str {
        match self {
            Call::Read(name, _)
            | Call::Write(name, _)
            | Call::Delete(name, _)
            | Call::Other(name) => name,
        }
    }

    /// The records a write carries (none for other calls).
    pub fn records(&self) -> &[Record] {
        match self {
            Call::Write(_, records) => records,
            _ => &[],
        }
    }
}

/// What a [`Wrapped`] store does before each call; an error is returned instead of calling the
/// store.
pub trait Hook: Send + Sync + 'static {
    /// Runs before `call`.
    fn before(&self, call: Call<'_>) -> impl Future<Output = Result<(), Error>> + Send;

    /// Runs after a write the store has made (`set`, `update` and their batches), before its
    /// answer is returned: a store that commits and then does not answer in time.
    fn after(&self, call: Call<'_>) -> impl Future<Output = ()> + Send {
        let _ = call;
        async {}
    }
}

/// A store that forwards every call to `inner` after its hook has seen it. Derefs to the hook.
pub struct Wrapped<H> {
    inner: Arc<dyn SessionAdmin>,
    hook: H,
}

impl<H: Hook + Default> Wrapped<H> {
    /// `inner` behind a default hook.
    pub fn new(inner: Arc<dyn SessionAdmin>) -> Arc<Self> {
        Self::with(inner, H::default())
    }
}

impl<H: Hook> Wrapped<H> {
    /// `inner` behind `hook`.
    pub fn with(inner: Arc<dyn SessionAdmin>, hook: H) -> Arc<Self> {
        Arc::new(Self { inner, hook })
    }

    /// The wrapped store.
    pub fn inner(&self) -> &Arc<dyn SessionAdmin> {
        &self.inner
    }
}

impl<H> std::ops::Deref for Wrapped<H> {
    type Target = H;
    fn deref(&self) -> &H {
        &self.hook
    }
}

#[async_trait::async_trait]
impl<H: Hook> SessionStore for Wrapped<H> {
    async fn get(&self, key: &SessionKey, now: EpochMillis) -> Result<Option<Record>, Error> {
        self.hook.before(Call::Read("get", key)).await?;
        self.inner.get(key, now).await
    }
    /// The hook sees each key as a `get` (all at once, as concurrent reads); the keys it lets
    /// through are read in one `get_many` of the wrapped store.
    async fn get_many(
        &self,
        keys: &[SessionKey],
        now: EpochMillis,
    ) -> Result<Vec<Result<Option<Record>, Error>>, Error> {
        let hooked = futures_util::future::join_all(
            keys.iter()
                .map(|key| self.hook.before(Call::Read("get", key))),
        )
        .await;
        let passed: Vec<SessionKey> = keys
            .iter()
            .zip(&hooked)
            .filter(|(_, hook)| hook.is_ok())
            .map(|(key, _)| key.clone())
            .collect();
        let mut read = self.inner.get_many(&passed, now).await?.into_iter();
        Ok(hooked
            .into_iter()
            .map(|hook| match hook {
                Ok(()) => read.next().unwrap_or_else(|| {
                    Err(Error::Backend(
                        "the wrapped store answered a batch read without this key".into(),
                    ))
                }),
                Err(error) => Err(error),
            })
            .collect())
    }
    fn reads_in_batches(&self) -> bool {
        self.inner.reads_in_batches()
    }
    async fn version(&self, key: &SessionKey, now: EpochMillis) -> Result<Option<i64>, Error> {
        self.hook.before(Call::Read("version", key)).await?;
        self.inner.version(key, now).await
    }

    async fn ping(&self) -> Result<(), Error> {
        self.inner.ping().await
    }
    fn subscribe(&self) -> Option<tokio::sync::broadcast::Receiver<Pushed>> {
        self.inner.subscribe()
    }
    fn emptied(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        self.inner.emptied()
    }
    async fn set_many(&self, records: &[Record]) -> Result<(), Error> {
        self.hook.before(Call::Write("set_many", records)).await?;
        self.inner.set_many(records).await?;
        self.hook.after(Call::Write("set_many", records)).await;
        Ok(())
    }
    async fn update_many(&self, records: &[Record]) -> Result<Vec<Update>, Error> {
        self.hook
            .before(Call::Write("update_many", records))
            .await?;
        let outcomes = self.inner.update_many(records).await?;
        self.hook.after(Call::Write("update_many", records)).await;
        Ok(outcomes)
    }
    async fn destroy_many(&self, keys: &[SessionKey]) -> Result<u64, Error> {
        self.hook.before(Call::Delete("destroy_many", keys)).await?;
        self.inner.destroy_many(keys).await
    }
    async fn reset_timer(
        &self,
        key: &SessionKey,
        modified_at: EpochMillis,
        expires_at: EpochMillis,
    ) -> Result<bool, Error> {
        self.hook.before(Call::Other("reset_timer")).await?;
        self.inner.reset_timer(key, modified_at, expires_at).await
    }
    async fn rekey(
        &self,
        key: &SessionKey,
        version: i64,
        data: &[u8],
        now: EpochMillis,
    ) -> Result<bool, Error> {
        self.hook.before(Call::Other("rekey")).await?;
        self.inner.rekey(key, version, data, now).await
    }
    async fn set(&self, record: &Record) -> Result<(), Error> {
        let records = std::slice::from_ref(record);
        self.hook.before(Call::Write("set", records)).await?;
        self.inner.set(record).await?;
        self.hook.after(Call::Write("set", records)).await;
        Ok(())
    }
    async fn update(&self, record: &Record) -> Result<Update, Error> {
        let records = std::slice::from_ref(record);
        self.hook.before(Call::Write("update", records)).await?;
        let outcome = self.inner.update(record).await?;
        self.hook.after(Call::Write("update", records)).await;
        Ok(outcome)
    }
    async fn destroy(&self, key: &SessionKey) -> Result<bool, Error> {
        let keys = std::slice::from_ref(key);
        self.hook.before(Call::Delete("destroy", keys)).await?;
        self.inner.destroy(key).await
    }
}

#[async_trait::async_trait]
impl<H: Hook> SessionAdmin for Wrapped<H> {
    async fn list(&self, query: &ListQuery) -> Result<Vec<Meta>, Error> {
        self.hook.before(Call::Other("list")).await?;
        self.inner.list(query).await
    }
    async fn purge_expired(&self, now: EpochMillis, batch_size: u32) -> Result<u64, Error> {
        self.hook.before(Call::Other("purge_expired")).await?;
        self.inner.purge_expired(now, batch_size).await
    }
    async fn purge_expired_exclusive(
        &self,
        now: EpochMillis,
        batch_size: u32,
    ) -> Result<Option<u64>, Error> {
        self.hook
            .before(Call::Other("purge_expired_exclusive"))
            .await?;
        self.inner.purge_expired_exclusive(now, batch_size).await
    }
    async fn stats(&self, now: EpochMillis) -> Result<Stats, Error> {
        self.hook.before(Call::Other("stats")).await?;
        self.inner.stats(now).await
    }
    async fn length(&self) -> Result<u64, Error> {
        self.hook.before(Call::Other("length")).await?;
        self.inner.length().await
    }
    async fn clear(&self) -> Result<(), Error> {
        self.hook.before(Call::Other("clear")).await?;
        self.inner.clear().await
    }
    async fn exists(&self, key: &SessionKey, now: EpochMillis) -> Result<bool, Error> {
        self.hook.before(Call::Read("exists", key)).await?;
        self.inner.exists(key, now).await
    }
    async fn ttl(&self, key: &SessionKey, now: EpochMillis) -> Result<Option<Duration>, Error> {
        self.hook.before(Call::Read("ttl", key)).await?;
        self.inner.ttl(key, now).await
    }
}
