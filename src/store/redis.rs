//! [`RedisStore`] (feature `redis`): the same logical record as the SQL table, one Redis hash
//! per session, expired by Redis itself; on one Redis or on a Redis Cluster.
//!
//! Keys (the session key is unpadded base64url, so it never holds a brace):
//! - `sf:s:{KEY}`: the session's hash, one field per column (`a` app, `c` context path, `n`
//!   node, `p` principal, `ct`/`mt`/`et` created/modified/expires, `mi` max inactive seconds,
//!   `v` version, `at` attribute names as JSON, `sz` size, `d` the blob as is: compressed, and
//!   encrypted when a secret is set; binary, not base64). `PEXPIREAT` at `expires_at`. The
//!   braces are a Redis Cluster hash tag: each session has its own slot.
//! - `sf:index:{N}` (N = 0..15, the session key's [`SHARDS`] shard): sorted sets of every
//!   session key (score 0), for listing in key order with keyset paging (`ZRANGE … BYLEX`,
//!   the shards' pages merged), without `SCAN`.
//! - `sf:expiry:{N}`: the same keys scored by `expires_at`: the purge finds the keys Redis
//!   expired by score and removes them from the indexes (Redis expires the hashes; only the
//!   index entries are left for the purge). Sharded so that on a cluster the index writes
//!   spread over the masters like the sessions do.
//! - `sf:principal:<name>`: the keys of one principal's sessions (score 0), so "log this user
//!   out everywhere" and the backoffice's filter by principal do not scan. Entries of ended
//!   sessions are dropped when that principal is listed.
//! - `sf:alive`: a random token, set when missing. A node that finds it gone or changed knows
//!   Redis lost its data (restarted without persistence, flushed): see [`RedisStore`]'s
//!   `emptied`.
//!
//! The version rule (an insert never replaces a version greater than or equal to its own) and
//! the compare-and-set of an update run as Lua scripts on the session's hash, so they are
//! atomic. A batch is one pipelined round trip: per session, its script and the index
//! updates; on a cluster, one pipeline per hash slot, all sent at once (one round trip to
//! each master, in parallel). Scripts are sent by hash (`EVALSHA`) and loaded again if Redis
//! lost them (a restart, a failover to a replica that never saw them).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo, Slot};
use redis::{Cmd, Script, Value};

use super::{
    EpochMillis, Error, ListQuery, Meta, Record, SessionAdmin, SessionStore, StoreOptions, Update,
};
use crate::id::SessionKey;

/// The index shards: `sf:index:{N}` and `sf:expiry:{N}` for N in `0..SHARDS`.
const SHARDS: usize = 16;
/// The marker whose loss tells that Redis lost its data.
const ALIVE: &str = "sf:alive";
/// How often each node checks [`ALIVE`] when nothing else did.
const ALIVE_EVERY: Duration = Duration::from_secs(1);
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
/// written, 1 superseded, 2 missing. The same update run twice (a batch sent again after
/// `NOSCRIPT` on another slot, a client's resend) finds its own row (its version, blob, node
/// and modification time) and answers 0 again.
const UPDATE: &str = r"
local cur = redis.call('HMGET', KEYS[1], 'v', 'et', 'p')
if not cur[1] or tonumber(cur[2]) <= tonumber(ARGV[3]) then return 2 end
if tonumber(cur[1]) ~= tonumber(ARGV[1]) - 1 then
  if tonumber(cur[1]) == tonumber(ARGV[1]) then
    local sent = {}
    for i = 5, #ARGV - 1, 2 do sent[ARGV[i]] = ARGV[i + 1] end
    local row = redis.call('HMGET', KEYS[1], 'd', 'n', 'mt', 'p')
    local principal = row[4] or nil
    if row[1] == sent['d'] and row[2] == sent['n'] and row[3] == sent['mt']
      and principal == sent['p'] then return 0 end
  end
  return 1
end
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

/// Sessions in Redis (`session.store.url=redis://…`, `rediss://…` with TLS, or
/// `redis-cluster://HOST:PORT[,HOST:PORT…]` for a Redis Cluster).
#[derive(Clone)]
pub struct RedisStore {
    connection: Connection,
    scripts: Scripts,
    alive: Arc<Alive>,
    /// `session.store.redis.wait.replicas`: replicas a save waits for (`WAIT`), and how long.
    wait: Option<(u32, Duration)>,
}

/// One Redis, or a cluster's masters (each command to the master of its key's slot).
#[derive(Clone)]
enum Connection {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
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

/// The scripts' code, loaded on every server at start-up and again after a `NOSCRIPT`.
const ALL_SCRIPTS: [&str; 5] = [SET, UPDATE, TOUCH, REKEY, PURGE];

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

/// The index shard of a session key (keys are random: they spread evenly).
fn shard(member: &str) -> usize {
    member.bytes().fold(0usize, |h, b| {
        h.wrapping_mul(31).wrapping_add(usize::from(b))
    }) % SHARDS
}

fn index_key(shard: usize) -> String {
    format!("sf:index:{{{shard}}}")
}

fn expiry_key(shard: usize) -> String {
    format!("sf:expiry:{{{shard}}}")
}

fn principal_key(principal: &str) -> String {
    format!("{PRINCIPAL}{principal}")
}

/// Commands sent together, each with the slot of the key it works on: one pipeline on one
/// Redis; on a cluster one pipeline per slot, all sent at once. Answers come back in order.
#[derive(Default)]
struct Batch {
    commands: Vec<Command>,
    /// A save: the `WAIT` setting applies.
    save: bool,
}

struct Command {
    slot: Slot,
    cmd: Cmd,
    /// Whether its answer is returned (else only checked for an error).
    answered: bool,
}

impl Batch {
    fn saving() -> Self {
        Self {
            save: true,
            ..Self::default()
        }
    }

    /// Adds `name key`; more arguments go on the returned command. Its answer is returned.
    fn cmd(&mut self, name: &str, key: &str) -> &mut Cmd {
        self.push(name, key, true)
    }

    /// Like [`Batch::cmd`], for a command whose answer is not returned.
    fn ignored(&mut self, name: &str, key: &str) -> &mut Cmd {
        self.push(name, key, false)
    }

    /// `script` on `key` (by hash); its arguments go on the returned command.
    fn script(&mut self, script: &Script, key: &str) -> &mut Cmd {
        self.commands.push(Command {
            slot: Slot::for_key(key),
            cmd: {
                let mut cmd = redis::cmd("EVALSHA");
                cmd.arg(script.get_hash()).arg(1).arg(key);
                cmd
            },
            answered: true,
        });
        &mut self.commands.last_mut().expect("just pushed").cmd
    }

    fn push(&mut self, name: &str, key: &str, answered: bool) -> &mut Cmd {
        let mut cmd = redis::cmd(name);
        cmd.arg(key);
        self.commands.push(Command {
            slot: Slot::for_key(key),
            cmd,
            answered,
        });
        &mut self.commands.last_mut().expect("just pushed").cmd
    }

    fn is_empty(&self) -> bool {
        self.commands.is_empty()
    }
}

/// Sends `commands` as one pipeline on `connection`, followed by `WAIT` if `wait` is set; every
/// answer, in order (the `WAIT`'s checked and left out).
async fn send<'a, C: ConnectionLike>(
    mut connection: C,
    commands: impl Iterator<Item = &'a Cmd>,
    wait: Option<(u32, Duration)>,
) -> Result<Vec<Value>, Error> {
    let mut pipe = redis::pipe();
    for cmd in commands {
        pipe.add_command(cmd.clone());
    }
    if let Some((replicas, timeout)) = wait {
        pipe.cmd("WAIT")
            .arg(replicas)
            .arg(u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX));
    }
    let mut answers: Vec<Value> = pipe.query_async(&mut connection).await?;
    if let Some((replicas, timeout)) = wait {
        let acknowledged: i64 = redis::from_redis_value(answers.pop().unwrap_or(Value::Nil))
            .map_err(redis::RedisError::from)?;
        if acknowledged < i64::from(replicas) {
            return Err(Error::Backend(
                format!(
                    "the save reached {acknowledged} of {replicas} replicas within {} ms (session.store.redis.wait.replicas)",
                    timeout.as_millis()
                )
                .into(),
            ));
        }
    }
    Ok(answers)
}

/// `redis-cluster://[USER:PASSWORD@]HOST:PORT[,HOST:PORT…]` (`rediss-cluster://` for TLS) as
/// one `redis://` (`rediss://`) URL per node; `None` for another scheme.
pub(crate) fn cluster_nodes(url: &str) -> Option<Result<Vec<String>, String>> {
    let (scheme, rest) = url.split_once("://")?;
    let node_scheme = match scheme {
        "redis-cluster" => "redis",
        "rediss-cluster" => "rediss",
        _ => return None,
    };
    let (userinfo, hosts) = match rest.rsplit_once('@') {
        Some((userinfo, hosts)) => (format!("{userinfo}@"), hosts),
        None => (String::new(), rest),
    };
    let hosts = hosts.trim_end_matches('/');
    if hosts.contains('/') {
        return Some(Err(
            "a Redis Cluster has no databases: remove the /DB from the URL".to_owned(),
        ));
    }
    let nodes: Vec<String> = hosts
        .split(',')
        .map(|host| format!("{node_scheme}://{userinfo}{}", host.trim()))
        .collect();
    for (node, host) in nodes.iter().zip(hosts.split(',')) {
        let usable = redis::parse_redis_url(node)
            .is_some_and(|parsed| parsed.host_str().is_some_and(|h| !h.is_empty()));
        if !usable {
            return Some(Err(format!(
                "{:?} is not HOST:PORT (expected {scheme}://[USER:PASSWORD@]HOST:PORT[,HOST:PORT…])",
                host.trim()
            )));
        }
    }
    Some(Ok(nodes))
}

/// The crate's TCP settings, with keepalive probes if asked for.
fn tcp_settings(options: &StoreOptions) -> redis::io::tcp::TcpSettings {
    let settings = redis::io::tcp::TcpSettings::default();
    match options.redis_keepalive {
        Some(idle) => {
            settings.set_keepalive(redis::io::tcp::socket2::TcpKeepalive::new().with_time(idle))
        }
        None => settings,
    }
}

fn connect_error(url: String, source: redis::RedisError) -> Error {
    let reason = if source.is_connection_refusal() || source.is_timeout() || source.is_io_error() {
        format!("{source}: is the Redis server running, on that host and port?")
    } else {
        format!("the server refused: {source}")
    };
    Error::RedisConnect {
        url,
        reason,
        source,
    }
}

impl RedisStore {
    /// Connects to `url`: `redis://[USER:PASSWORD@]HOST[:PORT][/DB]` (`rediss://` for TLS), one
    /// multiplexed connection that reconnects by itself; or
    /// `redis-cluster://[USER:PASSWORD@]HOST:PORT[,HOST:PORT…]` (`rediss-cluster://`), any of the
    /// cluster's nodes, from which the client learns the others. Every command answers within
    /// `options.timeout` or fails; with `options.redis_wait_replicas`, every save waits for
    /// that many replicas (`WAIT`, for up to half the timeout) or fails.
    pub async fn connect(url: &str, options: &StoreOptions) -> Result<Self, Error> {
        let redacted = super::redact_url(url);
        let timeout = options.timeout;
        let connection = match cluster_nodes(url) {
            Some(nodes) => {
                let nodes = nodes.map_err(|reason| Error::Url {
                    url: redacted.clone(),
                    reason,
                })?;
                // No `overall_response_timeout`: with it, requests in flight when a master dies
                // kept timing out after the failover, for good (redis 1.8, seen with eight
                // concurrent callers). The writer bounds every call by the store timeout.
                let client = ClusterClientBuilder::new(nodes)
                    .connection_timeout(options.connect_timeout())
                    .response_timeout(timeout)
                    .tcp_settings(tcp_settings(options))
                    .build()
                    .map_err(|e| Error::Url {
                        url: redacted.clone(),
                        reason: e.to_string(),
                    })?;
                Connection::Cluster(
                    client
                        .get_async_connection()
                        .await
                        .map_err(|e| connect_error(redacted.clone(), e))?,
                )
            }
            None => {
                let client = redis::IntoConnectionInfo::into_connection_info(url)
                    .map(|info| info.set_tcp_settings(tcp_settings(options)))
                    .and_then(redis::Client::open)
                    .map_err(|e| Error::Url {
                        url: redacted.clone(),
                        reason: e.to_string(),
                    })?;
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(options.connect_timeout()))
                    .set_response_timeout(Some(timeout))
                    .set_number_of_retries(2)
                    .set_max_delay(Duration::from_secs(1));
                Connection::Single(
                    ConnectionManager::new_with_config(client, config)
                        .await
                        .map_err(|e| connect_error(redacted.clone(), e))?,
                )
            }
        };
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
            wait: (options.redis_wait_replicas > 0)
                .then(|| (options.redis_wait_replicas, timeout / 2)),
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

    /// Loads the scripts (on a cluster, `SCRIPT LOAD` goes to every node).
    async fn load_scripts(&self) -> Result<(), Error> {
        for code in ALL_SCRIPTS {
            query::<Value>(&self.connection, redis::cmd("SCRIPT").arg("LOAD").arg(code)).await?;
        }
        Ok(())
    }

    /// Every answer of `batch`, in order.
    async fn exec(&self, batch: &Batch) -> Result<Vec<Value>, Error> {
        let wait = self.wait.filter(|_| batch.save);
        match &self.connection {
            Connection::Single(c) => {
                send(c.clone(), batch.commands.iter().map(|c| &c.cmd), wait).await
            }
            Connection::Cluster(c) => {
                let mut groups: Vec<(Slot, Vec<usize>)> = Vec::new();
                for (i, command) in batch.commands.iter().enumerate() {
                    match groups.iter_mut().find(|(slot, _)| *slot == command.slot) {
                        Some((_, members)) => members.push(i),
                        None => groups.push((command.slot, vec![i])),
                    }
                }
                let sent = groups.iter().map(|(_, members)| {
                    send(
                        c.clone(),
                        members.iter().map(|&i| &batch.commands[i].cmd),
                        wait,
                    )
                });
                let answers = futures_util::future::try_join_all(sent).await?;
                let mut all = vec![Value::Nil; batch.commands.len()];
                for ((_, members), answers) in groups.iter().zip(answers) {
                    for (&i, answer) in members.iter().zip(answers) {
                        all[i] = answer;
                    }
                }
                Ok(all)
            }
        }
    }

    /// Runs `batch`; if Redis lost the scripts (restarted, failed over), loads them and runs it
    /// once more (every command in these batches can be repeated). The answers of the commands
    /// added with [`Batch::cmd`] or [`Batch::script`], as `T`.
    async fn run<T: redis::FromRedisValue>(&self, batch: &Batch) -> Result<T, Error> {
        let answers = match self.exec(batch).await {
            Err(Error::Redis(e))
                if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) =>
            {
                self.load_scripts().await?;
                self.exec(batch).await?
            }
            other => other?,
        };
        let answered: Vec<Value> = answers
            .into_iter()
            .zip(&batch.commands)
            .filter(|(_, command)| command.answered)
            .map(|(answer, _)| answer)
            .collect();
        Ok(redis::from_redis_value(Value::Array(answered)).map_err(redis::RedisError::from)?)
    }

    /// Adds the writes of `records` (each by `script`) and their index entries to `batch`.
    fn writes(batch: &mut Batch, script: &Script, records: &[Record], update: bool) {
        for record in records {
            let meta = &record.meta;
            let invocation = batch.script(script, &session_key(&meta.key));
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
            let member = meta.key.as_str();
            let shard = shard(member);
            // An update's key is in the index since its insert.
            if !update {
                batch.ignored("ZADD", &index_key(shard)).arg(0).arg(member);
            }
            batch
                .ignored("ZADD", &expiry_key(shard))
                .arg(meta.expires_at)
                .arg(member);
            if let Some(principal) = &meta.principal {
                batch
                    .ignored("ZADD", &principal_key(principal))
                    .arg(0)
                    .arg(member);
            }
        }
    }

    /// Removes `members` from the index shards they belong to (`INDEX` and expiry, or expiry
    /// only), as ignored commands of `batch`.
    fn unindex(batch: &mut Batch, members: &[String], from_index: bool) {
        let mut by_shard: Vec<Vec<&str>> = vec![Vec::new(); SHARDS];
        for member in members {
            by_shard[shard(member)].push(member);
        }
        for (shard, members) in by_shard.iter().enumerate() {
            if members.is_empty() {
                continue;
            }
            batch.ignored("ZREM", &expiry_key(shard)).arg(members);
            if from_index {
                batch.ignored("ZREM", &index_key(shard)).arg(members);
            }
        }
    }

    /// Up to `count` members after `after` (all from the first if `None`) of the sorted sets
    /// `indexes` together, in key order (`ZRANGE … BYLEX` on each: every score is the same).
    async fn page(
        &self,
        indexes: &[String],
        after: Option<&str>,
        count: usize,
    ) -> Result<Vec<String>, Error> {
        let start = after.map_or_else(|| "-".to_owned(), |key| format!("({key}"));
        let mut batch = Batch::default();
        for index in indexes {
            batch
                .cmd("ZRANGE", index)
                .arg(&start)
                .arg("+")
                .arg("BYLEX")
                .arg("LIMIT")
                .arg(0)
                .arg(count);
        }
        let pages: Vec<Vec<String>> = self.run(&batch).await?;
        let mut merged: Vec<String> = pages.into_iter().flatten().collect();
        merged.sort_unstable();
        merged.dedup();
        merged.truncate(count);
        Ok(merged)
    }

    /// The servers `SCAN` must visit: the one Redis (`None`), or each master of the cluster
    /// (`CLUSTER NODES`).
    async fn scan_targets(&self) -> Result<Vec<Option<(String, u16)>>, Error> {
        let Connection::Cluster(c) = &self.connection else {
            return Ok(vec![None]);
        };
        let nodes: String = redis::cmd("CLUSTER")
            .arg("NODES")
            .query_async(&mut c.clone())
            .await?;
        let masters = cluster_masters(&nodes);
        if masters.is_empty() {
            // Scanning nothing would report a clean keyspace that is not.
            return Err(Error::Backend(
                "CLUSTER NODES lists no master serving slots: cannot scan the cluster".into(),
            ));
        }
        Ok(masters.into_iter().map(Some).collect())
    }

    /// One step of `SCAN` on `target` over the keys matching `pattern`: the next cursor (0 at
    /// the end) and the keys of this step.
    async fn scan(
        &self,
        target: &Option<(String, u16)>,
        cursor: u64,
        pattern: &str,
    ) -> Result<(u64, Vec<String>), Error> {
        let mut scan = redis::cmd("SCAN");
        scan.arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(1000);
        let answer = match (&self.connection, target) {
            (Connection::Single(c), _) => scan.query_async(&mut c.clone()).await?,
            (Connection::Cluster(c), Some((host, port))) => {
                c.clone()
                    .route_command(
                        scan,
                        RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                            host: host.clone(),
                            port: *port,
                        }),
                    )
                    .await?
            }
            (Connection::Cluster(_), None) => return Ok((0, Vec::new())),
        };
        Ok(redis::from_redis_value(answer).map_err(redis::RedisError::from)?)
    }

    /// Every key matching `pattern` on every server, a step of `SCAN` at a time, each step's
    /// keys handed to `each`.
    async fn scan_all<F, Fut>(&self, pattern: &str, mut each: F) -> Result<(), Error>
    where
        F: FnMut(Vec<String>) -> Fut,
        Fut: std::future::Future<Output = Result<(), Error>>,
    {
        for target in self.scan_targets().await? {
            let mut cursor = 0;
            loop {
                let (next, keys) = self.scan(&target, cursor, pattern).await?;
                if !keys.is_empty() {
                    each(keys).await?;
                }
                if next == 0 {
                    break;
                }
                cursor = next;
            }
        }
        Ok(())
    }

    /// Drops the principal indexes' entries of sessions that ended or changed principal (the
    /// indexes are found by `SCAN`, each read in pages of `batch_size`).
    async fn tidy_principals(&self, batch_size: u32) -> Result<(), Error> {
        let count = batch_size.max(1) as usize;
        self.scan_all(&format!("{PRINCIPAL}*"), |indexes| async move {
            for index in indexes {
                self.tidy_principal(&index, count).await?;
            }
            Ok(())
        })
        .await
    }

    /// [`RedisStore::tidy_principals`] for one principal's index.
    async fn tidy_principal(&self, index: &str, count: usize) -> Result<(), Error> {
        let principal = &index[PRINCIPAL.len()..];
        let indexes = [index.to_owned()];
        let mut after: Option<String> = None;
        loop {
            let page = self.page(&indexes, after.as_deref(), count).await?;
            if page.is_empty() {
                return Ok(());
            }
            let mut batch = Batch::default();
            for member in &page {
                batch.cmd("HGET", &hash_key(member)).arg("p");
            }
            let owners: Vec<Option<String>> = self.run(&batch).await?;
            let stale: Vec<&String> = page
                .iter()
                .zip(&owners)
                .filter(|(_, owner)| owner.as_deref() != Some(principal))
                .map(|(member, _)| member)
                .collect();
            if !stale.is_empty() {
                let mut batch = Batch::default();
                batch.ignored("ZREM", index).arg(&stale);
                self.run::<()>(&batch).await?;
            }
            if page.len() < count {
                return Ok(());
            }
            after = page.last().cloned();
        }
    }

    /// The metadata (and data) of `keys`, in order; `None` for keys with no hash.
    async fn read(&self, keys: &[SessionKey]) -> Result<Vec<Option<Record>>, Error> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let mut batch = Batch::default();
        for key in keys {
            batch.cmd("HMGET", &session_key(key)).arg(&FIELDS[..]);
        }
        let rows: Vec<Vec<Option<Vec<u8>>>> = self.run(&batch).await?;
        keys.iter()
            .zip(rows)
            .map(|(key, row)| parse(key, row))
            .collect()
    }
}

/// The masters that serve slots, from `CLUSTER NODES` (`<id> <host:port@cport[,hostname]>
/// <flags> <master> … <slots…>`), as host and port.
fn cluster_masters(nodes: &str) -> Vec<(String, u16)> {
    nodes
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let flags = fields.get(2)?;
            let serving = flags.split(',').any(|f| f == "master")
                && !flags.split(',').any(|f| f == "fail" || f == "noaddr")
                && fields.len() > 8;
            if !serving {
                return None;
            }
            let address = fields[1].split(['@', ',']).next()?;
            let (host, port) = address.rsplit_once(':')?;
            Some((host.to_owned(), port.parse().ok()?))
        })
        .collect()
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

    /// `PING`: a read of a missing key would fail for a while after Redis lost its data (see
    /// `LOST_GRACE`), and the node would report itself down while it writes its sessions back.
    async fn ping(&self) -> Result<(), Error> {
        query::<String>(&self.connection, &redis::cmd("PING")).await?;
        Ok(())
    }

    async fn version(&self, key: &SessionKey, now: EpochMillis) -> Result<Option<i64>, Error> {
        let mut batch = Batch::default();
        batch.cmd("HMGET", &session_key(key)).arg("v").arg("et");
        batch.cmd("GET", ALIVE);
        let ((version, expires_at), marker): ((Option<i64>, Option<i64>), Option<String>) =
            self.run(&batch).await?;
        if version.is_none() {
            self.missing_because_emptied(marker).await?;
        }
        Ok(version.filter(|_| expires_at.is_some_and(|e| e > now)))
    }

    async fn set_many(&self, records: &[Record]) -> Result<(), Error> {
        if records.is_empty() {
            return Ok(());
        }
        let mut batch = Batch::saving();
        Self::writes(&mut batch, &self.scripts.set, records, false);
        let _: Vec<i64> = self.run(&batch).await?;
        Ok(())
    }

    async fn update_many(&self, records: &[Record]) -> Result<Vec<Update>, Error> {
        if records.is_empty() {
            return Ok(Vec::new());
        }
        let mut batch = Batch::saving();
        Self::writes(&mut batch, &self.scripts.update, records, true);
        batch.cmd("GET", ALIVE);
        let (answers, marker): (Vec<i64>, Option<String>) = {
            let mut values: Vec<Value> = self.run(&batch).await?;
            let marker = values.pop().unwrap_or(Value::Nil);
            (
                redis::from_redis_value(Value::Array(values)).map_err(redis::RedisError::from)?,
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
        let mut batch = Batch::saving();
        for key in keys {
            batch.cmd("DEL", &session_key(key));
        }
        let members: Vec<String> = keys.iter().map(|k| k.as_str().to_owned()).collect();
        Self::unindex(&mut batch, &members, true);
        let removed: Vec<u64> = self.run(&batch).await?;
        Ok(removed.into_iter().sum())
    }

    async fn reset_timer(
        &self,
        key: &SessionKey,
        modified_at: EpochMillis,
        expires_at: EpochMillis,
    ) -> Result<bool, Error> {
        let mut batch = Batch::default();
        batch
            .script(&self.scripts.touch, &session_key(key))
            .arg(modified_at)
            .arg(expires_at);
        batch
            .ignored("ZADD", &expiry_key(shard(key.as_str())))
            .arg("XX")
            .arg(expires_at)
            .arg(key.as_str());
        batch.cmd("GET", ALIVE);
        let (touched, marker): (i64, Option<String>) = self.run(&batch).await?;
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
        let mut batch = Batch::default();
        batch
            .script(&self.scripts.rekey, &session_key(key))
            .arg(version)
            .arg(now)
            .arg(data)
            .arg(data.len());
        let (rekeyed,): (i64,) = self.run(&batch).await?;
        Ok(rekeyed == 1)
    }
}

#[async_trait::async_trait]
impl SessionAdmin for RedisStore {
    /// Pages through the index shards together (or the principal's index) in key order;
    /// entries whose hash Redis expired are skipped, and dropped from the principal's index.
    async fn list(&self, query: &ListQuery) -> Result<Vec<Meta>, Error> {
        let indexes: Vec<String> = match &query.principal {
            Some(principal) => vec![principal_key(principal)],
            None => (0..SHARDS).map(index_key).collect(),
        };
        let limit = query.limit.max(1) as usize;
        let step = limit.max(100);
        let mut after = query.after.clone();
        let mut found = Vec::new();
        loop {
            let page = self
                .page(&indexes, after.as_ref().map(SessionKey::as_str), step)
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
                let mut batch = Batch::default();
                batch.ignored("ZREM", &indexes[0]).arg(&gone);
                self.run::<()>(&batch).await?;
            }
            if found.len() >= limit || page.len() < step {
                return Ok(found);
            }
            after = page.last().and_then(|k| SessionKey::parse(k));
        }
    }

    /// Redis expires the sessions itself: this removes their entries from the indexes (those
    /// with `expires_at <= now`, at most `batch_size` per shard and round trip) and any hash
    /// still there (a caller's clock ahead of Redis's), then the principal indexes' entries of
    /// sessions that ended or changed principal. Returns the hashes it deleted (usually 0:
    /// Redis was first).
    async fn purge_expired(&self, now: EpochMillis, batch_size: u32) -> Result<u64, Error> {
        let mut removed = 0;
        loop {
            let mut batch = Batch::default();
            for shard in 0..SHARDS {
                batch
                    .cmd("ZRANGE", &expiry_key(shard))
                    .arg("-inf")
                    .arg(now)
                    .arg("BYSCORE")
                    .arg("LIMIT")
                    .arg(0)
                    .arg(batch_size.max(1));
            }
            let due: Vec<Vec<String>> = self.run(&batch).await?;
            let due: Vec<String> = due.into_iter().flatten().collect();
            if due.is_empty() {
                self.tidy_principals(batch_size).await?;
                return Ok(removed);
            }
            let keys: Vec<SessionKey> = due.iter().filter_map(|k| SessionKey::parse(k)).collect();
            // Only entries still expired are removed: a touch may have moved one since.
            let records = self.read(&keys).await?;
            let mut batch = Batch::default();
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
                        batch
                            .ignored("ZADD", &expiry_key(shard(key.as_str())))
                            .arg(r.meta.expires_at)
                            .arg(key.as_str());
                    }
                    // Deleted only if still expired when Redis runs it: another node may touch
                    // or write it in between.
                    Some(_) => {
                        batch
                            .script(&self.scripts.purge, &session_key(key))
                            .arg(now);
                        expired.push(key.as_str().to_owned());
                    }
                    None => gone.push(key.as_str().to_owned()),
                }
            }
            let moved = !batch.is_empty();
            let mut deleted = 0;
            if moved {
                let answers: Vec<u64> = self.run(&batch).await?;
                for (key, answer) in expired.into_iter().zip(answers) {
                    if answer > 0 {
                        deleted += 1;
                        gone.push(key);
                    }
                }
            }
            if gone.is_empty() && deleted == 0 && !moved {
                self.tidy_principals(batch_size).await?;
                return Ok(removed);
            }
            if !gone.is_empty() {
                let mut batch = Batch::default();
                Self::unindex(&mut batch, &gone, true);
                self.run::<()>(&batch).await?;
            }
            removed += deleted;
        }
    }

    async fn length(&self) -> Result<u64, Error> {
        Ok(self.stats(EpochMillis::MIN).await?.sessions)
    }

    /// Deletes every session hash and index of this layer (`sf:*`), by `SCAN` (on every
    /// master of a cluster): other keys of the database are left alone.
    async fn clear(&self) -> Result<(), Error> {
        self.scan_all("sf:*", |keys| async move {
            let mut batch = Batch::default();
            // The marker stays: clearing is not losing data (nodes must not write back).
            for key in keys.iter().filter(|k| *k != ALIVE) {
                batch.ignored("DEL", key);
            }
            if !batch.is_empty() {
                self.run::<()>(&batch).await?;
            }
            Ok(())
        })
        .await
    }
}

/// Runs one command on `connection`.
async fn query<T: redis::FromRedisValue>(connection: &Connection, cmd: &Cmd) -> Result<T, Error> {
    Ok(match connection {
        Connection::Single(c) => cmd.query_async(&mut c.clone()).await?,
        Connection::Cluster(c) => cmd.query_async(&mut c.clone()).await?,
    })
}

/// See [`RedisStore::check_alive`].
async fn check_alive(
    connection: &Connection,
    alive: &Alive,
    read: Option<Option<String>>,
) -> Result<bool, Error> {
    let mut marker = match read {
        Some(marker) => marker,
        None => query(connection, redis::cmd("GET").arg(ALIVE)).await?,
    };
    if marker.is_none() {
        let mut token = [0u8; 16];
        getrandom::fill(&mut token).map_err(|e| Error::Backend(e.to_string().into()))?;
        let token: String = token.iter().map(|b| format!("{b:02x}")).collect();
        // Whoever sets it first wins; every node then reads the same token.
        let mut pipe = redis::pipe();
        pipe.cmd("SET").arg(ALIVE).arg(&token).arg("NX").ignore();
        pipe.cmd("GET").arg(ALIVE);
        let (now,): (Option<String>,) = match connection {
            Connection::Single(c) => pipe.query_async(&mut c.clone()).await?,
            Connection::Cluster(c) => pipe.query_async(&mut c.clone()).await?,
        };
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
async fn watch_alive(alive: std::sync::Weak<Alive>, connection: Connection) {
    loop {
        tokio::time::sleep(ALIVE_EVERY).await;
        let Some(alive) = alive.upgrade() else {
            return;
        };
        // Unreachable: nothing to learn now; the next check after it is back tells.
        let _ = check_alive(&connection, &alive, None).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_urls_name_each_node() {
        assert_eq!(
            cluster_nodes("redis-cluster://:pw@a:7000,b:7001").unwrap(),
            Ok(vec![
                "redis://:pw@a:7000".to_owned(),
                "redis://:pw@b:7001".to_owned()
            ])
        );
        assert_eq!(
            cluster_nodes("rediss-cluster://a:7000").unwrap(),
            Ok(vec!["rediss://a:7000".to_owned()])
        );
        assert!(cluster_nodes("redis://a:7000").is_none());
        let no_db = cluster_nodes("redis-cluster://a:7000/2")
            .unwrap()
            .unwrap_err();
        assert!(no_db.contains("no databases"), "{no_db}");
        let empty = cluster_nodes("redis-cluster://a:7000,")
            .unwrap()
            .unwrap_err();
        assert!(empty.contains("\"\" is not HOST:PORT"), "{empty}");
    }

    #[test]
    fn cluster_masters_are_the_nodes_serving_slots() {
        let nodes = "\
e7d1 127.0.0.1:30004@40004 slave 07c3 0 1 4 connected
07c3 127.0.0.1:30001@40001 myself,master - 0 0 1 connected 0-5460
67ed 127.0.0.1:30002@40002,host-b master - 0 1 2 connected 5461-10922
292f 127.0.0.1:30003@40003 master,fail - 0 1 3 disconnected 10923-16383
6ec2 127.0.0.1:30005@40005 master - 0 1 5 connected
";
        assert_eq!(
            cluster_masters(nodes),
            vec![
                ("127.0.0.1".to_owned(), 30001),
                ("127.0.0.1".to_owned(), 30002)
            ]
        );
    }

    #[test]
    fn shards_spread_keys() {
        let mut counts = [0usize; SHARDS];
        for _ in 0..16_000 {
            counts[shard(crate::id::SessionId::generate().store_key().as_str())] += 1;
        }
        assert!(
            counts.iter().all(|&n| (700..1300).contains(&n)),
            "{counts:?}"
        );
    }
}
