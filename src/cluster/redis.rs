//! The Redis connections of cluster mode, shared by the Redis broker, Redis presence and
//! node control, and which Redis holds what.
//!
//! With several Redis URLs, channels (and users) are spread over them by jump consistent
//! hashing of a stable hash of the name: adding a Redis at the end of the list moves
//! only about 1/n of the channels. With `broker.redis_cluster`, the shards are the masters of a
//! Redis Cluster and a name goes to the master owning its hash slot (`super::slots`). Node-level keys (the node registry, the control
//! channel, the reconciler's work list of each shard) live on their shard; the registry
//! and control channel on the first.
//!
//! Commands go through one `ConnectionManager` per Redis: a multiplexed connection that
//! pipelines concurrent commands and reconnects after a failure. Every command is bounded
//! by `broker.redis_timeout`, so an outage turns into errors, never into hangs. The
//! manager only notices a dead connection when a command fails on it, so a keepalive
//! PING per Redis every second makes it reconnect soon after Redis comes back, not on
//! the first publish (which would fail).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;
use tokio::sync::watch;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio_util::sync::{CancellationToken, DropGuard};

use super::{slots, topology};
use crate::config::BrokerConfig;
use crate::metrics as m;

/// Why a Redis operation failed. Callers map it to their module's `Unavailable`.
#[derive(Debug, thiserror::Error)]
pub enum RedisFailure {
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// Redis answered something the code did not expect (a bug or a foreign key).
    #[error("redis: unexpected reply: {0}")]
    Reply(String),
}

/// Splits `broker.redis_url` into URLs and checks each one parses.
pub fn parse_urls(s: &str) -> Result<Vec<String>, String> {
    let urls: Vec<String> = s
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(str::to_string)
        .collect();
    if urls.is_empty() {
        return Err("no Redis URL given".into());
    }
    for u in &urls {
        redis::Client::open(u.as_str()).map_err(|e| format!("{}: {e}", redact(u)))?;
    }
    Ok(urls)
}

/// A URL without its password, for logs and errors.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://***{}", &url[..scheme], &url[at..])
        }
        _ => url.to_string(),
    }
}

/// One Redis server.
pub struct Shard {
    /// For new connections (pub/sub needs its own).
    pub client: redis::Client,
    /// Commands; cheap to clone, reconnects on its own.
    pub conn: ConnectionManager,
    /// The URL without password (`host:port` of a Redis Cluster master): the shard's
    /// identity across topology changes.
    pub name: String,
    /// Stops the keepalive task when the shard leaves the topology.
    _keepalive: DropGuard,
}

impl Shard {
    /// Connects the command connection and starts its keepalive.
    pub(super) async fn open(
        client: redis::Client,
        name: String,
        timeout: Duration,
    ) -> Result<Shard, RedisFailure> {
        // One quick retry: a command during an outage must fail within about
        // `redis_timeout`, not after the crate's default six attempts.
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_millis(500));
        let conn = bounded(
            timeout * 2,
            ConnectionManager::new_with_config(client.clone(), config),
        )
        .await?;
        let stop = CancellationToken::new();
        metrics::gauge!(m::REDIS_UP, "shard" => name.clone()).set(1.0);
        tokio::spawn(keepalive(name.clone(), conn.clone(), timeout, stop.clone()));
        Ok(Shard {
            client,
            conn,
            name,
            _keepalive: stop.drop_guard(),
        })
    }
}

/// Which Redis serves what, at one moment.
pub struct Topology {
    pub shards: Vec<Arc<Shard>>,
    /// Redis Cluster mode: for each slot, the index in `shards` of its master.
    pub(super) slots: Option<Vec<u16>>,
}

impl Topology {
    /// The index in `shards` of the Redis holding everything about `name`.
    pub fn index_for(&self, name: &str) -> usize {
        match &self.slots {
            Some(slots) => usize::from(slots[slots::name_slot(name)]),
            None => shard_index(name, self.shards.len()),
        }
    }
}

/// Every Redis of the cluster plus the settings all users of it share.
pub struct Redis {
    /// Replaced as a whole when a Redis Cluster's topology changes; parking_lot
    /// because it is only read or swapped, never held across an `.await`.
    topology: RwLock<Arc<Topology>>,
    /// Bumped at each topology change (the broker moves its subscriptions).
    changed: watch::Sender<u64>,
    cluster: bool,
    pub prefix: String,
    pub timeout: Duration,
    /// Stops the topology refresh when the last user of the connections goes away.
    _refresh: Option<DropGuard>,
}

const KEEPALIVE_EVERY: Duration = Duration::from_secs(1);

impl Redis {
    /// Connects to every configured Redis (with `broker.redis_cluster`, to every master
    /// of the cluster the URLs lead to); fails if one cannot be reached, so a
    /// misconfigured node stops at start instead of serving errors.
    pub async fn connect(cfg: &BrokerConfig) -> Result<Arc<Redis>, RedisFailure> {
        let urls = parse_urls(&cfg.redis_url).map_err(RedisFailure::Reply)?;
        if cfg.redis_cluster {
            return topology::connect_cluster(cfg, &urls).await;
        }
        let mut shards = Vec::with_capacity(urls.len());
        for u in &urls {
            let client = redis::Client::open(u.as_str())?;
            shards.push(Arc::new(
                Shard::open(client, redact(u), cfg.redis_timeout).await?,
            ));
        }
        Ok(Arc::new(Redis::new(
            cfg,
            Topology {
                shards,
                slots: None,
            },
            None,
        )))
    }

    pub(super) fn new(cfg: &BrokerConfig, topology: Topology, refresh: Option<DropGuard>) -> Redis {
        let (changed, _) = watch::channel(0);
        Redis {
            cluster: topology.slots.is_some(),
            topology: RwLock::new(Arc::new(topology)),
            changed,
            prefix: cfg.redis_prefix.clone(),
            timeout: cfg.redis_timeout,
            _refresh: refresh,
        }
    }

    /// The current topology.
    pub fn topology(&self) -> Arc<Topology> {
        self.topology.read().clone()
    }

    /// Installs a new topology (Redis Cluster) and tells the watchers.
    pub(super) fn set_topology(&self, t: Topology) {
        *self.topology.write() = Arc::new(t);
        self.changed.send_modify(|v| *v += 1);
    }

    /// Changes with each new topology.
    pub fn topology_changes(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Redis Cluster mode: keys carry hash tags, pub/sub is sharded.
    pub fn is_cluster(&self) -> bool {
        self.cluster
    }

    /// The key of `what` (`meta`, `stream`, `ch`, `presence:data`, `conns`, ...) for a
    /// channel or user: `<prefix>:<what>:<name>`, with the name as a hash tag in
    /// cluster mode so that all keys of one name share a slot.
    pub fn key(&self, what: &str, name: &str) -> String {
        format!("{}:{what}:{}", self.prefix, self.name_part(name))
    }

    /// `name`, or its hash-tagged form in cluster mode.
    pub fn name_part(&self, name: &str) -> String {
        if self.is_cluster() {
            slots::tagged(name)
        } else {
            name.to_string()
        }
    }

    /// A node-level key (registry): `<prefix>:<what>`, in cluster mode
    /// `{<prefix>}:<what>` so that all of them share the slot of [`Redis::first`].
    pub fn node_key(&self, what: &str) -> String {
        if self.is_cluster() {
            format!("{{{}}}:{what}", self.prefix)
        } else {
            format!("{}:{what}", self.prefix)
        }
    }

    /// The command that publishes to a channel's pub/sub channel.
    pub fn publish_command(&self) -> &'static str {
        if self.is_cluster() {
            "SPUBLISH"
        } else {
            "PUBLISH"
        }
    }

    /// Every Redis of the current topology.
    pub fn shards(&self) -> Vec<Arc<Shard>> {
        self.topology().shards.clone()
    }

    /// The Redis holding node-level keys (registry, control channel).
    pub fn first(&self) -> Arc<Shard> {
        let t = self.topology();
        match &t.slots {
            Some(slots) => {
                let slot = slots::key_slot(&self.node_key(""));
                t.shards[usize::from(slots[slot])].clone()
            }
            None => t.shards[0].clone(),
        }
    }

    /// The Redis holding everything about `name` (a channel or a user).
    pub fn shard_for(&self, name: &str) -> Arc<Shard> {
        let t = self.topology();
        t.shards[t.index_for(name)].clone()
    }

    /// Runs one Redis operation within the timeout, counting failures by `op`.
    pub async fn run<T>(
        &self,
        op: &'static str,
        fut: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, RedisFailure> {
        let started = std::time::Instant::now();
        let r = bounded(self.timeout, fut).await;
        metrics::histogram!(m::REDIS_COMMAND_SECONDS, "op" => op)
            .record(started.elapsed().as_secs_f64());
        if let Err(e) = &r {
            metrics::counter!(m::REDIS_ERRORS_TOTAL, "op" => op).increment(1);
            tracing::debug!(cause = %e, op, "redis operation failed");
        }
        r
    }
}

impl Redis {
    /// Like [`Redis::run`] for an operation that is safe to repeat (a read): one retry
    /// when the first attempt hit a dead connection, which the manager has replaced by
    /// then.
    pub async fn run_retrying<T, F, Fut>(
        &self,
        op: &'static str,
        mut make: F,
    ) -> Result<T, RedisFailure>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        let started = std::time::Instant::now();
        let first = bounded(self.timeout, make()).await;
        let seconds = started.elapsed().as_secs_f64();
        match first {
            Err(RedisFailure::Redis(e)) if e.is_io_error() || e.is_unrecoverable_error() => {
                self.run(op, make()).await
            }
            Err(e) => {
                metrics::histogram!(m::REDIS_COMMAND_SECONDS, "op" => op).record(seconds);
                metrics::counter!(m::REDIS_ERRORS_TOTAL, "op" => op).increment(1);
                Err(e)
            }
            ok => {
                metrics::histogram!(m::REDIS_COMMAND_SECONDS, "op" => op).record(seconds);
                ok
            }
        }
    }
}

/// Pings through the command connection so that a connection killed by a Redis restart
/// is noticed (and replaced) without waiting for a real command to fail on it. The
/// answer is also the shard's `herald_redis_up`: errors only count commands that were
/// tried, so an idle node needs this to say its Redis is gone.
///
/// The `shard` label is the Redis's `host:port` (its identity across a Redis Cluster's
/// topology changes). A shard that left the topology is not down: its series goes back
/// to 1 so that `HeraldRedisDown` does not fire for a master nobody uses any more.
async fn keepalive(
    name: String,
    mut conn: ConnectionManager,
    timeout: Duration,
    stop: CancellationToken,
) {
    let up = metrics::gauge!(m::REDIS_UP, "shard" => name);
    let mut tick = tokio::time::interval(KEEPALIVE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => {
                up.set(1.0);
                return;
            }
            _ = tick.tick() => {
                let ping = redis::cmd("PING").to_owned();
                let answered = bounded(timeout, ping.query_async::<redis::Value>(&mut conn)).await;
                up.set(if answered.is_ok() { 1.0 } else { 0.0 });
            }
        }
    }
}

pub(super) async fn bounded<T>(
    timeout: Duration,
    fut: impl Future<Output = redis::RedisResult<T>>,
) -> Result<T, RedisFailure> {
    match tokio::time::timeout(timeout, fut).await {
        Ok(r) => Ok(r?),
        Err(_) => Err(RedisFailure::Timeout(timeout)),
    }
}

/// FNV-1a: a hash that is the same in every process and version, unlike std's.
pub fn stable_hash(s: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Jump consistent hash (Lamping and Veach, 2014): bucket of `name` among `n`.
pub fn shard_index(name: &str, n: usize) -> usize {
    if n <= 1 {
        return 0;
    }
    let mut key = stable_hash(name);
    let (mut b, mut j): (i64, i64) = (-1, 0);
    while j < n as i64 {
        b = j;
        key = key.wrapping_mul(2_862_933_555_777_941_757).wrapping_add(1);
        j = ((b + 1) as f64 * ((1u64 << 31) as f64 / ((key >> 33) + 1) as f64)) as i64;
    }
    b as usize
}

/// Reads an integer field of a script reply.
pub fn int(v: &redis::Value) -> Result<i64, RedisFailure> {
    match v {
        redis::Value::Int(i) => Ok(*i),
        redis::Value::BulkString(b) => std::str::from_utf8(b)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| RedisFailure::Reply(format!("not an integer: {v:?}"))),
        _ => Err(RedisFailure::Reply(format!("not an integer: {v:?}"))),
    }
}

/// Reads a string field of a script reply (`Nil` is empty).
pub fn string(v: &redis::Value) -> Result<String, RedisFailure> {
    match v {
        redis::Value::BulkString(b) => String::from_utf8(b.clone())
            .map_err(|_| RedisFailure::Reply("string is not UTF-8".into())),
        redis::Value::SimpleString(s) => Ok(s.clone()),
        redis::Value::Nil => Ok(String::new()),
        _ => Err(RedisFailure::Reply(format!("not a string: {v:?}"))),
    }
}

/// Reads a binary field of a script reply.
pub fn bytes(v: &redis::Value) -> Result<&[u8], RedisFailure> {
    match v {
        redis::Value::BulkString(b) => Ok(b),
        _ => Err(RedisFailure::Reply(format!("not a bulk string: {v:?}"))),
    }
}

/// Reads an array reply.
pub fn array(v: &redis::Value) -> Result<&[redis::Value], RedisFailure> {
    match v {
        redis::Value::Array(a) => Ok(a),
        redis::Value::Nil => Ok(&[]),
        _ => Err(RedisFailure::Reply(format!("not an array: {v:?}"))),
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_and_redact() {
        assert_eq!(
            parse_urls("redis://a:6379, redis://:pw@b:6380/1").unwrap(),
            vec!["redis://a:6379", "redis://:pw@b:6380/1"]
        );
        assert!(parse_urls("").is_err());
        assert!(parse_urls("http://a").is_err());
        assert_eq!(redact("redis://:pw@b:6380/1"), "redis://***@b:6380/1");
        assert_eq!(redact("redis://b:6380"), "redis://b:6380");
    }

    #[test]
    fn jump_hash_is_stable_and_moves_little() {
        assert_eq!(shard_index("anything", 1), 0);
        let names: Vec<String> = (0..2000).map(|i| format!("chat:room{i}")).collect();
        let three: Vec<usize> = names.iter().map(|n| shard_index(n, 3)).collect();
        let four: Vec<usize> = names.iter().map(|n| shard_index(n, 4)).collect();
        for b in 0..3 {
            let n = three.iter().filter(|&&x| x == b).count();
            assert!((500..=850).contains(&n), "bucket {b} has {n}");
        }
        // Growing 3 -> 4 moves only keys into the new bucket, about a quarter.
        let moved = three.iter().zip(&four).filter(|(a, b)| a != b).count();
        assert!(three.iter().zip(&four).all(|(a, b)| a == b || *b == 3));
        assert!((350..=650).contains(&moved), "moved {moved}");
        assert_eq!(shard_index("chat:room1", 4), four[1]);
    }
}
