//! [`RedisStore`] (feature `redis`): the same logical record as the SQL table, one Redis hash
//! per session, expired by Redis itself.
//!
//! Keys (the session key is unpadded base64url, so it never holds a brace):
//! - `sf:s:{KEY}`: the session's hash, one field per column (`a` app, `c` context path, `n`
//!   node, `p` principal, `ct`/`mt`/`et` created/modified/expires, `mi` max inactive seconds,
//!   `v` version, `at` attribute names as JSON, `sz` size, `d` the blob as is: compressed, and
//!   encrypted when a secret is set; binary, not base64). `PEXPIREAT` at `expires_at`. The
//!   braces are a Redis Cluster hash tag: each session has its own slot.
//! - `sf:index`: a sorted set of every session key (score 0), for listing in key order with
//!   keyset paging (`ZRANGE … BYLEX`), without `SCAN`.
//! - `sf:expiry`: the same keys scored by `expires_at`: the purge finds the keys Redis expired
//!   by score and removes them from the indexes (Redis expires the hashes; only the index
//!   entries are left for the purge).
//! - `sf:principal:<name>`: the keys of one principal's sessions (score 0), so "log this user
//!   out everywhere" and the backoffice's filter by principal do not scan. Entries of ended
//!   sessions are dropped when that principal is listed.
//!
//! - `sf:alive`: a random token, set when missing. A node that finds it gone or changed knows
//!   Redis lost its data (restarted without persistence, flushed): see [`RedisStore`]'s
//!   `emptied`.
//!
//! The version rule (an insert never replaces a version greater than or equal to its own) and
//! the compare-and-set of an update run as Lua scripts on the session's hash, so they are
//! atomic. A batch is one pipelined round trip: per session, its script and the index
//! updates. Scripts are sent by hash (`EVALSHA`) and loaded again if Redis lost them (a
//! restart).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Pipeline, Script};

use super::{EpochMillis, Error, ListQuery, Meta, Record, SessionAdmin, SessionStore, Update};
use crate::id::SessionKey;

const INDEX: &str = "sf:index";
/// The marker whose loss tells that Redis lost its data.
const ALIVE: &str = "sf:alive";
/// How often each node checks [`ALIVE`] when nothing else did.
const ALIVE_EVERY: Duration = Duration::from_secs(1);
const EXPIRY: &str = "sf:expiry";
const PRINCIPAL: &str = "sf:principal:";
/// The hash fields read back, in this order.
const FIELDS: [&str; 12] = [
    "a", "c", "n", "p", "ct", "mt", "et", "mi", "v", "at", "sz", "d",
];

/// Inserts a session unless its hash holds a version at least as high (a replaced hash keeps
/// its creation time, as the SQL upsert does). ARGV: version, expires_at, then the fields.
const SET: &str = r"
local old = redis.call('HMGET', KEYS[1], 'v', 'ct')
if old[1] and tonumber(old[1]) >= tonumber(ARGV[1]) then return 0 end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], unpack(ARGV, 3))
if old[2] then redis.call('HSET', KEYS[1], 'ct', old[2]) end
redis.call('PEXPIREAT', KEYS[1], ARGV[2])
return 1
";

/// Replaces a live session whose version is the written one minus one. ARGV: version,
/// expires_at, modified_at, whether the record has a principal (1/0), then the fields. Every
/// field is written again, so no `DEL`; a principal the record no longer has is removed. 0
/// written, 1 superseded, 2 missing.
const UPDATE: &str = r"
local cur = redis.call('HMGET', KEYS[1], 'v', 'et', 'p')
if not cur[1] or tonumber(cur[2]) <= tonumber(ARGV[3]) then return 2 end
if tonumber(cur[1]) ~= tonumber(ARGV[1]) - 1 then return 1 end
redis.call('HSET', KEYS[1], unpack(ARGV, 5))
if cur[3] and ARGV[4] == '0' then redis.call('HDEL', KEYS[1], 'p') end
redis.call('PEXPIREAT', KEYS[1], ARGV[2])
return 0
";

/// Pushes a live session's expiry forward. ARGV: modified_at, expires_at.
const TOUCH: &str = r"
local et = redis.call('HGET', KEYS[1], 'et')
if not et or tonumber(et) <= tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], 'mt', ARGV[1], 'et', ARGV[2])
redis.call('PEXPIREAT', KEYS[1], ARGV[2])
return 1
";

/// Deletes a session only if it is expired at ARGV[1].
const PURGE: &str = r"
local et = redis.call('HGET', KEYS[1], 'et')
if et and tonumber(et) <= tonumber(ARGV[1]) then return redis.call('DEL', KEYS[1]) end
return 0
";

/// Replaces the blob of a live session at a version. ARGV: version, now, data, size.
const REKEY: &str = r"
local cur = redis.call('HMGET', KEYS[1], 'v', 'et')
if not cur[1] or tonumber(cur[2]) <= tonumber(ARGV[2]) then return 0 end
if tonumber(cur[1]) ~= tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], 'd', ARGV[3], 'sz', ARGV[4])
return 1
";

/// Sessions in Redis (`session.store.url=redis://…`, or `rediss://…` with TLS).
#[derive(Clone)]
pub struct RedisStore {
    connection: ConnectionManager,
    scripts: Scripts,
    alive: Arc<Alive>,
}

/// After a loss of data is noticed, for this long every call that finds a session missing
/// fails (retried) instead of answering "missing": the nodes' write-backs land meanwhile.
const LOST_GRACE: Duration = Duration::from_secs(30);

/// What this process knows of [`ALIVE`].
struct Alive {
    /// The token last seen.
    seen: Mutex<Option<String>>,
    /// When this process last noticed a loss.
    lost_at: Mutex<Option<std::time::Instant>>,
    /// Moves on each time the token was found gone or changed.
    emptied: watch::Sender<u64>,
}

#[derive(Clone)]
struct Scripts {
    set: Script,
    update: Script,
    touch: Script,
    rekey: Script,
    purge: Script,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore").finish_non_exhaustive()
    }
}

fn session_key(key: &SessionKey) -> String {
    hash_key(key.as_str())
}

/// The hash of the session stored under `key` (as text, e.g. an index member).
fn hash_key(key: &str) -> String {
    format!("sf:s:{{{key}}}")
}

impl RedisStore {
    /// Connects to `url` (`redis://[USER:PASSWORD@]HOST[:PORT][/DB]`, `rediss://` for TLS):
    /// one multiplexed connection that reconnects by itself; every command answers within
    /// `timeout` or fails.
    pub async fn connect(url: &str, timeout: Duration) -> Result<Self, Error> {
        let redacted = super::redact_url(url);
        let client = redis::Client::open(url).map_err(|e| Error::Url {
            url: redacted.clone(),
            reason: e.to_string(),
        })?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_secs(1));
        let connection = ConnectionManager::new_with_config(client, config)
            .await
            .map_err(|source| {
                let reason = if source.is_connection_refusal()
                    || source.is_timeout()
                    || source.is_io_error()
                {
                    format!("{source}: is the Redis server running, on that host and port?")
                } else {
                    format!("the server refused: {source}")
                };
                Error::RedisConnect {
                    url: redacted,
                    reason,
                    source,
                }
            })?;
        let store = Self {
            connection,
            scripts: Scripts {
                set: Script::new(SET),
                update: Script::new(UPDATE),
                touch: Script::new(TOUCH),
                rekey: Script::new(REKEY),
                purge: Script::new(PURGE),
            },
            alive: Arc::new(Alive {
                seen: Mutex::new(None),
                lost_at: Mutex::new(None),
                emptied: watch::Sender::new(0),
            }),
        };
        store.load_scripts().await?;
        store.check_alive(None).await?;
        tokio::spawn(watch_alive(
            Arc::downgrade(&store.alive),
            store.connection.clone(),
        ));
        Ok(store)
    }

    /// Compares the marker (read by the caller as `read`, or read now) with the token last
    /// seen; sets a new one if it is gone. `true` if Redis lost its data since the last check
    /// (the first check only learns the token).
    async fn check_alive(&self, read: Option<Option<String>>) -> Result<bool, Error> {
        check_alive(&self.connection, &self.alive, read).await
    }

    /// After a call found a session missing: if the marker says Redis lost its data, or this
    /// process noticed a loss less than [`LOST_GRACE`] ago, an error (the write is retried after
    /// the sessions were written back) instead of "missing" (which ends the session on this
    /// node). A session ended elsewhere in that window ends here up to that much later.
    async fn missing_because_emptied(&self, marker: Option<String>) -> Result<(), Error> {
        let noticed = self.check_alive(Some(marker)).await?;
        let lately = self
            .alive
            .lost_at
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some_and(|at| at.elapsed() < LOST_GRACE);
        if noticed || lately {
            return Err(Error::Backend(
                "Redis lost its data (restarted empty or flushed); the sessions this node holds are being written back"
                    .into(),
            ));
        }
        Ok(())
    }

    async fn load_scripts(&self) -> Result<(), Error> {
        let mut pipe = redis::pipe();
        for script in [
            &self.scripts.set,
            &self.scripts.update,
            &self.scripts.touch,
            &self.scripts.rekey,
            &self.scripts.purge,
        ] {
            pipe.load_script(script).ignore();
        }
        let mut connection = self.connection.clone();
        pipe.query_async::<()>(&mut connection).await?;
        Ok(())
    }

    /// Runs `pipe`; if Redis lost the scripts (restarted), loads them and runs it once more
    /// (every command in these pipelines can be repeated).
    async fn run<T: redis::FromRedisValue>(&self, pipe: &Pipeline) -> Result<T, Error> {
        let mut connection = self.connection.clone();
        match pipe.query_async(&mut connection).await {
            Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                self.load_scripts().await?;
                Ok(pipe.query_async(&mut connection).await?)
            }
            other => Ok(other?),
        }
    }

    /// Adds the writes of `records` (each by `script`, after `head` arguments) and their index
    /// entries to `pipe`; only the scripts' answers are returned.
    fn writes(pipe: &mut Pipeline, script: &Script, records: &[Record], update: bool) {
        for record in records {
            let meta = &record.meta;
            let key = session_key(&meta.key);
            let mut invocation = script.key(&key);
            invocation.arg(meta.version).arg(meta.expires_at);
            if update {
                invocation
                    .arg(meta.modified_at)
                    .arg(u8::from(meta.principal.is_some()));
            }
            let attributes =
                serde_json::to_string(&meta.attributes).unwrap_or_else(|_| "[]".to_owned());
            invocation
                .arg("a")
                .arg(&meta.app)
                .arg("c")
                .arg(&meta.context_path)
                .arg("n")
                .arg(&meta.node)
                .arg("ct")
                .arg(meta.created_at)
                .arg("mt")
                .arg(meta.modified_at)
                .arg("et")
                .arg(meta.expires_at)
                .arg("mi")
                .arg(meta.max_inactive_secs)
                .arg("v")
                .arg(meta.version)
                .arg("at")
                .arg(attributes)
                .arg("sz")
                .arg(meta.size_bytes)
                .arg("d")
                .arg(&record.data);
            if let Some(principal) = &meta.principal {
                invocation.arg("p").arg(principal);
            }
            pipe.invoke_script(&invocation);
            let member = meta.key.as_str();
            // An update's key is in the index since its insert.
            if !update {
                pipe.cmd("ZADD").arg(INDEX).arg(0).arg(member).ignore();
            }
            pipe.cmd("ZADD")
                .arg(EXPIRY)
                .arg(meta.expires_at)
                .arg(member)
                .ignore();
            if let Some(principal) = &meta.principal {
                pipe.cmd("ZADD")
                    .arg(format!("{PRINCIPAL}{principal}"))
                    .arg(0)
                    .arg(member)
                    .ignore();
            }
        }
    }

    /// Up to `count` members of the sorted set `index` after `after` (all from the first if
    /// `None`), in key order (`ZRANGE … BYLEX`: every score is the same).
    async fn page(
        &self,
        index: &str,
        after: Option<&str>,
        count: usize,
    ) -> Result<Vec<String>, Error> {
        let start = after.map_or_else(|| "-".to_owned(), |key| format!("({key}"));
        let mut connection = self.connection.clone();
        Ok(redis::cmd("ZRANGE")
            .arg(index)
            .arg(start)
            .arg("+")
            .arg("BYLEX")
            .arg("LIMIT")
            .arg(0)
            .arg(count)
            .query_async(&mut connection)
            .await?)
    }

    /// One step of `SCAN` over the keys matching `pattern`: the next cursor (0 at the end) and
    /// the keys of this step.
    async fn scan(&self, cursor: u64, pattern: &str) -> Result<(u64, Vec<String>), Error> {
        let mut connection = self.connection.clone();
        Ok(redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut connection)
            .await?)
    }

    /// Drops the principal indexes' entries of sessions that ended or changed principal (the
    /// indexes are found by `SCAN`, each read in pages of `batch_size`).
    async fn tidy_principals(&self, batch_size: u32) -> Result<(), Error> {
        let count = batch_size.max(1) as usize;
        let mut cursor = 0;
        loop {
            let (next, indexes) = self.scan(cursor, &format!("{PRINCIPAL}*")).await?;
            for index in indexes {
                let principal = &index[PRINCIPAL.len()..];
                let mut after: Option<String> = None;
                loop {
                    let page = self.page(&index, after.as_deref(), count).await?;
                    if page.is_empty() {
                        break;
                    }
                    let mut pipe = redis::pipe();
                    for member in &page {
                        pipe.cmd("HGET").arg(hash_key(member)).arg("p");
                    }
                    let owners: Vec<Option<String>> = self.run(&pipe).await?;
                    let stale: Vec<&String> = page
                        .iter()
                        .zip(&owners)
                        .filter(|(_, owner)| owner.as_deref() != Some(principal))
                        .map(|(member, _)| member)
                        .collect();
                    if !stale.is_empty() {
                        let mut pipe = redis::pipe();
                        pipe.cmd("ZREM").arg(&index).arg(&stale);
                        self.run::<()>(&pipe).await?;
                    }
                    if page.len() < count {
                        break;
                    }
                    after = page.last().cloned();
                }
            }
            if next == 0 {
                return Ok(());
            }
            cursor = next;
        }
    }

    /// The metadata (and data) of `keys`, in order; `None` for keys with no hash.
    async fn read(&self, keys: &[SessionKey]) -> Result<Vec<Option<Record>>, Error> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for key in keys {
            pipe.cmd("HMGET").arg(session_key(key)).arg(&FIELDS[..]);
        }
        let rows: Vec<Vec<Option<Vec<u8>>>> = self.run(&pipe).await?;
        keys.iter()
            .zip(rows)
            .map(|(key, row)| parse(key, row))
            .collect()
    }
}

/// A session's hash fields ([`FIELDS`]) as a record; `None` if it has none.
fn parse(key: &SessionKey, mut row: Vec<Option<Vec<u8>>>) -> Result<Option<Record>, Error> {
    if row.len() != FIELDS.len() || row[8].is_none() {
        return Ok(None);
    }
    let corrupt = |reason: String| Error::CorruptRow {
        key: key.as_str().to_owned(),
        reason,
    };
    let text = |i: usize, row: &mut Vec<Option<Vec<u8>>>| -> Result<String, Error> {
        String::from_utf8(row[i].take().unwrap_or_default())
            .map_err(|_| corrupt(format!("field {} is not UTF-8", FIELDS[i])))
    };
    let number = |i: usize, row: &mut Vec<Option<Vec<u8>>>| -> Result<i64, Error> {
        let value = text(i, row)?;
        value
            .parse()
            .map_err(|_| corrupt(format!("field {} is not a number: {value:?}", FIELDS[i])))
    };
    let principal = match row[3].is_some() {
        true => Some(text(3, &mut row)?),
        false => None,
    };
    let attributes = text(9, &mut row)?;
    let attributes = serde_json::from_str(&attributes)
        .map_err(|e| corrupt(format!("attribute names are not a JSON list: {e}")))?;
    let meta = Meta {
        key: key.clone(),
        app: text(0, &mut row)?,
        context_path: text(1, &mut row)?,
        node: text(2, &mut row)?,
        principal,
        created_at: number(4, &mut row)?,
        modified_at: number(5, &mut row)?,
        expires_at: number(6, &mut row)?,
        max_inactive_secs: number(7, &mut row)?,
        version: number(8, &mut row)?,
        attributes,
        size_bytes: number(10, &mut row)?,
    };
    let data = row[11].take().unwrap_or_default();
    Ok(Some(Record { meta, data }))
}

#[async_trait::async_trait]
impl SessionStore for RedisStore {
    fn emptied(&self) -> Option<watch::Receiver<u64>> {
        Some(self.alive.emptied.subscribe())
    }

    async fn get(&self, key: &SessionKey, now: EpochMillis) -> Result<Option<Record>, Error> {
        let record = self.read(std::slice::from_ref(key)).await?.pop().flatten();
        Ok(record.filter(|r| r.meta.expires_at > now))
    }

    async fn version(&self, key: &SessionKey, now: EpochMillis) -> Result<Option<i64>, Error> {
        let mut pipe = redis::pipe();
        pipe.cmd("HMGET").arg(session_key(key)).arg("v").arg("et");
        pipe.cmd("GET").arg(ALIVE);
        let ((version, expires_at), marker): ((Option<i64>, Option<i64>), Option<String>) =
            self.run(&pipe).await?;
        if version.is_none() {
            self.missing_because_emptied(marker).await?;
        }
        Ok(version.filter(|_| expires_at.is_some_and(|e| e > now)))
    }

    async fn set_many(&self, records: &[Record]) -> Result<(), Error> {
        if records.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        Self::writes(&mut pipe, &self.scripts.set, records, false);
        let _: Vec<i64> = self.run(&pipe).await?;
        Ok(())
    }

    async fn update_many(&self, records: &[Record]) -> Result<Vec<Update>, Error> {
        if records.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        Self::writes(&mut pipe, &self.scripts.update, records, true);
        pipe.cmd("GET").arg(ALIVE);
        let (answers, marker): (Vec<i64>, Option<String>) = {
            let mut values: Vec<redis::Value> = self.run(&pipe).await?;
            let marker = values.pop().unwrap_or(redis::Value::Nil);
            (
                redis::from_redis_value(redis::Value::Array(values))
                    .map_err(redis::RedisError::from)?,
                redis::from_redis_value(marker).map_err(redis::RedisError::from)?,
            )
        };
        if answers.contains(&2) {
            self.missing_because_emptied(marker).await?;
        }
        Ok(answers
            .into_iter()
            .map(|answer| match answer {
                0 => Update::Written,
                1 => Update::Superseded,
                _ => Update::Missing,
            })
            .collect())
    }

    async fn destroy_many(&self, keys: &[SessionKey]) -> Result<u64, Error> {
        if keys.is_empty() {
            return Ok(0);
        }
        let mut pipe = redis::pipe();
        for key in keys {
            pipe.cmd("DEL").arg(session_key(key));
        }
        let members: Vec<&str> = keys.iter().map(SessionKey::as_str).collect();
        pipe.cmd("ZREM").arg(INDEX).arg(&members).ignore();
        pipe.cmd("ZREM").arg(EXPIRY).arg(&members).ignore();
        let removed: Vec<u64> = self.run(&pipe).await?;
        Ok(removed.into_iter().sum())
    }

    async fn reset_timer(
        &self,
        key: &SessionKey,
        modified_at: EpochMillis,
        expires_at: EpochMillis,
    ) -> Result<bool, Error> {
        let mut pipe = redis::pipe();
        let mut invocation = self.scripts.touch.key(session_key(key));
        invocation.arg(modified_at).arg(expires_at);
        pipe.invoke_script(&invocation);
        pipe.cmd("ZADD")
            .arg(EXPIRY)
            .arg("XX")
            .arg(expires_at)
            .arg(key.as_str())
            .ignore();
        pipe.cmd("GET").arg(ALIVE);
        let (touched, marker): (i64, Option<String>) = self.run(&pipe).await?;
        if touched == 0 {
            self.missing_because_emptied(marker).await?;
        }
        Ok(touched == 1)
    }

    async fn rekey(
        &self,
        key: &SessionKey,
        version: i64,
        data: &[u8],
        now: EpochMillis,
    ) -> Result<bool, Error> {
        let mut pipe = redis::pipe();
        let mut invocation = self.scripts.rekey.key(session_key(key));
        invocation.arg(version).arg(now).arg(data).arg(data.len());
        pipe.invoke_script(&invocation);
        let (rekeyed,): (i64,) = self.run(&pipe).await?;
        Ok(rekeyed == 1)
    }
}

#[async_trait::async_trait]
impl SessionAdmin for RedisStore {
    /// Pages through `sf:index` (or the principal's index) in key order; entries whose hash
    /// Redis expired are skipped, and dropped from the principal's index.
    async fn list(&self, query: &ListQuery) -> Result<Vec<Meta>, Error> {
        let index = match &query.principal {
            Some(principal) => format!("{PRINCIPAL}{principal}"),
            None => INDEX.to_owned(),
        };
        let limit = query.limit.max(1) as usize;
        let mut after = query.after.clone();
        let mut found = Vec::new();
        loop {
            let page = self
                .page(
                    &index,
                    after.as_ref().map(SessionKey::as_str),
                    limit.max(100),
                )
                .await?;
            let keys: Vec<SessionKey> = page.iter().filter_map(|k| SessionKey::parse(k)).collect();
            let records = self.read(&keys).await?;
            let mut gone = Vec::new();
            for (key, record) in keys.iter().zip(records) {
                match record {
                    Some(record) => {
                        let meta = record.meta;
                        let wanted = query.app.as_ref().is_none_or(|a| *a == meta.app)
                            && query.node.as_ref().is_none_or(|n| *n == meta.node)
                            && query
                                .principal
                                .as_ref()
                                .is_none_or(|p| Some(p) == meta.principal.as_ref());
                        if wanted && found.len() < limit {
                            found.push(meta);
                        }
                    }
                    None => gone.push(key.as_str().to_owned()),
                }
            }
            if query.principal.is_some() && !gone.is_empty() {
                let mut pipe = redis::pipe();
                pipe.cmd("ZREM").arg(&index).arg(&gone);
                self.run::<()>(&pipe).await?;
            }
            if found.len() >= limit || page.len() < limit.max(100) {
                return Ok(found);
            }
            after = page.last().and_then(|k| SessionKey::parse(k));
        }
    }

    /// Redis expires the sessions itself: this removes their entries from the indexes (those
    /// with `expires_at <= now`, at most `batch_size` per round trip) and any hash still there
    /// (a caller's clock ahead of Redis's), then the principal indexes' entries of sessions
    /// that ended or changed principal. Returns the hashes it deleted (usually 0: Redis was
    /// first).
    async fn purge_expired(&self, now: EpochMillis, batch_size: u32) -> Result<u64, Error> {
        let mut removed = 0;
        loop {
            let mut connection = self.connection.clone();
            let due: Vec<String> = redis::cmd("ZRANGE")
                .arg(EXPIRY)
                .arg("-inf")
                .arg(now)
                .arg("BYSCORE")
                .arg("LIMIT")
                .arg(0)
                .arg(batch_size.max(1))
                .query_async(&mut connection)
                .await?;
            if due.is_empty() {
                self.tidy_principals(batch_size).await?;
                return Ok(removed);
            }
            let keys: Vec<SessionKey> = due.iter().filter_map(|k| SessionKey::parse(k)).collect();
            // Only entries still expired are removed: a touch may have moved one since.
            let records = self.read(&keys).await?;
            let mut pipe = redis::pipe();
            let mut expired = Vec::new();
            let mut gone: Vec<String> = due
                .iter()
                .filter(|k| SessionKey::parse(k).is_none())
                .cloned()
                .collect();
            for (key, record) in keys.iter().zip(records) {
                match record {
                    // Touched since (or its score is stale): the entry moves to its expiry.
                    Some(r) if r.meta.expires_at > now => {
                        pipe.cmd("ZADD")
                            .arg(EXPIRY)
                            .arg(r.meta.expires_at)
                            .arg(key.as_str())
                            .ignore();
                    }
                    // Deleted only if still expired when Redis runs it: another node may touch
                    // or write it in between.
                    Some(_) => {
                        let mut invocation = self.scripts.purge.key(session_key(key));
                        invocation.arg(now);
                        pipe.invoke_script(&invocation);
                        expired.push(key.as_str().to_owned());
                    }
                    None => gone.push(key.as_str().to_owned()),
                }
            }
            let mut deleted = 0;
            if pipe.cmd_iter().next().is_some() {
                let answers: Vec<u64> = self.run(&pipe).await?;
                for (key, answer) in expired.into_iter().zip(answers) {
                    if answer > 0 {
                        deleted += 1;
                        gone.push(key);
                    }
                }
            }
            if gone.is_empty() && deleted == 0 && pipe.cmd_iter().next().is_none() {
                self.tidy_principals(batch_size).await?;
                return Ok(removed);
            }
            if !gone.is_empty() {
                let mut pipe = redis::pipe();
                pipe.cmd("ZREM").arg(EXPIRY).arg(&gone).ignore();
                pipe.cmd("ZREM").arg(INDEX).arg(&gone).ignore();
                self.run::<()>(&pipe).await?;
            }
            removed += deleted;
        }
    }

    async fn length(&self) -> Result<u64, Error> {
        Ok(self.stats(EpochMillis::MIN).await?.sessions)
    }

    /// Deletes every session hash and index of this layer (`sf:*`), by `SCAN`: other keys of
    /// the database are left alone.
    async fn clear(&self) -> Result<(), Error> {
        let mut connection = self.connection.clone();
        let mut cursor = 0;
        loop {
            let (next, keys) = self.scan(cursor, "sf:*").await?;
            // The marker stays: clearing is not losing data (nodes must not write back).
            let keys: Vec<String> = keys.into_iter().filter(|k| k != ALIVE).collect();
            if !keys.is_empty() {
                let mut pipe = redis::pipe();
                for key in &keys {
                    pipe.cmd("DEL").arg(key).ignore();
                }
                pipe.query_async::<()>(&mut connection).await?;
            }
            if next == 0 {
                return Ok(());
            }
            cursor = next;
        }
    }
}

/// See [`RedisStore::check_alive`].
async fn check_alive(
    connection: &ConnectionManager,
    alive: &Alive,
    read: Option<Option<String>>,
) -> Result<bool, Error> {
    let mut connection = connection.clone();
    let mut marker = match read {
        Some(marker) => marker,
        None => {
            redis::cmd("GET")
                .arg(ALIVE)
                .query_async(&mut connection)
                .await?
        }
    };
    if marker.is_none() {
        let mut token = [0u8; 16];
        getrandom::fill(&mut token).map_err(|e| Error::Backend(e.to_string().into()))?;
        let token: String = token.iter().map(|b| format!("{b:02x}")).collect();
        // Whoever sets it first wins; every node then reads the same token.
        let mut pipe = redis::pipe();
        pipe.cmd("SET").arg(ALIVE).arg(&token).arg("NX").ignore();
        pipe.cmd("GET").arg(ALIVE);
        let (now,): (Option<String>,) = pipe.query_async(&mut connection).await?;
        marker = now;
    }
    let mut seen = alive.seen.lock().unwrap_or_else(|p| p.into_inner());
    let changed = seen.is_some() && *seen != marker;
    *seen = marker;
    drop(seen);
    if changed {
        *alive.lost_at.lock().unwrap_or_else(|p| p.into_inner()) = Some(std::time::Instant::now());
        tracing::error!(
            "Redis lost its data (restarted without persistence, or flushed): writing back the sessions this node holds"
        );
        alive.emptied.send_modify(|n| *n += 1);
    }
    Ok(changed)
}

/// Checks the marker every [`ALIVE_EVERY`] until the store is dropped, so a Redis that lost
/// its data is noticed without requests.
async fn watch_alive(alive: std::sync::Weak<Alive>, connection: ConnectionManager) {
    loop {
        tokio::time::sleep(ALIVE_EVERY).await;
        let Some(alive) = alive.upgrade() else {
            return;
        };
        // Unreachable: nothing to learn now; the next check after it is back tells.
        let _ = check_alive(&connection, &alive, None).await;
    }
}
