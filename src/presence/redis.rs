//! Cluster-mode presence on Redis: per-channel entries with a per-client expiry, and
//! per-user connection counts, both refreshed by the node that owns the client.
//!
//! Keys (prefix `p`), a channel's on the channel's shard, a user's on the user's:
//! - `p:presence:data:<ch>` hash client -> ClientInfo (protobuf),
//! - `p:presence:expiry:<ch>` zset client -> expires at (ms),
//! - `p:presence:users:<ch>` hash client -> user (for `presence_stats`),
//! - `p:conns:<user>` zset connection id -> expires at (ms).
//!
//! This node remembers what it added and, every third of `broker.presence_ttl`, writes
//! it again with a new expiry: entries survive a Redis restart without persistence
//! (they come back at the next refresh), and those of a node that died expire. Reads
//! drop expired entries first (`lua/presence_read.lua`).

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use prost::Message as _;
use tokio_util::sync::{CancellationToken, DropGuard};

use super::{PresenceError, PresenceManager, PresenceStats};
use crate::cluster::redis::{self as r, Redis, RedisFailure};
use crate::protocol::messages::ClientInfo;

const READ_LUA: &str = include_str!("lua/presence_read.lua");
const CONNECTION_ADD_LUA: &str = include_str!("lua/connection_add.lua");
const ADD_LUA: &str = include_str!("lua/presence_add.lua");
const SHARDS: usize = 32;
/// Entries written per pipeline when refreshing.
const REFRESH_BATCH: usize = 500;

fn unavailable(e: RedisFailure) -> PresenceError {
    PresenceError::Unavailable(e.to_string())
}

/// What this node added, so that it can refresh it. Sharded parking_lot maps, held
/// only for map edits and snapshots, never across `.await`.
struct Local {
    /// channel -> client -> info
    presence: Vec<Mutex<HashMap<String, HashMap<String, ClientInfo>>>>,
    /// user -> connection ids
    conns: Vec<Mutex<HashMap<String, HashSet<String>>>>,
    hasher: RandomState,
}

impl Local {
    fn presence(&self, ch: &str) -> &Mutex<HashMap<String, HashMap<String, ClientInfo>>> {
        &self.presence[(self.hasher.hash_one(ch) as usize) % SHARDS]
    }
    fn conns(&self, user: &str) -> &Mutex<HashMap<String, HashSet<String>>> {
        &self.conns[(self.hasher.hash_one(user) as usize) % SHARDS]
    }
    fn has_presence(&self, ch: &str, client: &str) -> bool {
        self.presence(ch)
            .lock()
            .get(ch)
            .is_some_and(|m| m.contains_key(client))
    }
    fn has_conn(&self, user: &str, conn: &str) -> bool {
        self.conns(user)
            .lock()
            .get(user)
            .is_some_and(|s| s.contains(conn))
    }
}

struct Inner {
    redis: Arc<Redis>,
    ttl: Duration,
    local: Local,
    read_script: redis::Script,
    connection_add_script: redis::Script,
    add_script: redis::Script,
}

pub struct RedisPresence {
    inner: Arc<Inner>,
    /// Stops the refresher when the presence manager goes away.
    _refresher: DropGuard,
}

impl RedisPresence {
    /// `ttl` is `broker.presence_ttl`; starts the refresher task.
    pub fn new(redis: Arc<Redis>, ttl: Duration) -> RedisPresence {
        let inner = Arc::new(Inner {
            redis,
            ttl,
            local: Local {
                presence: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
                conns: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
                hasher: RandomState::new(),
            },
            read_script: redis::Script::new(READ_LUA),
            connection_add_script: redis::Script::new(CONNECTION_ADD_LUA),
            add_script: redis::Script::new(ADD_LUA),
        });
        let stop = CancellationToken::new();
        tokio::spawn(refresh_loop(inner.clone(), stop.clone()));
        RedisPresence {
            inner,
            _refresher: stop.drop_guard(),
        }
    }
}

impl Inner {
    /// Hash-tagged by name in Redis Cluster mode, so a channel's three presence keys
    /// share a slot (the read script and the atomic removal touch all three).
    fn key(&self, what: &str, name: &str) -> String {
        self.redis.key(what, name)
    }

    fn expires_at(&self) -> i64 {
        r::now_ms() + self.ttl.as_millis() as i64
    }

    /// Adds the commands writing one presence entry to `pipe`.
    fn write_entry(&self, pipe: &mut redis::Pipeline, ch: &str, info: &ClientInfo, exp: i64) {
        let (data, expiry, users) = self.presence_keys(ch);
        let ttl = self.ttl.as_millis() as u64;
        pipe.cmd("HSET")
            .arg(&data)
            .arg(&info.client)
            .arg(info.encode_to_vec())
            .ignore();
        pipe.cmd("HSET")
            .arg(&users)
            .arg(&info.client)
            .arg(&info.user)
            .ignore();
        pipe.cmd("ZADD")
            .arg(&expiry)
            .arg(exp)
            .arg(&info.client)
            .ignore();
        for k in [&data, &expiry, &users] {
            pipe.cmd("PEXPIRE").arg(k).arg(ttl).ignore();
        }
    }

    fn presence_keys(&self, ch: &str) -> (String, String, String) {
        (
            self.key("presence:data", ch),
            self.key("presence:expiry", ch),
            self.key("presence:users", ch),
        )
    }

    async fn remove_entry(&self, ch: &str, client: &str) -> Result<(), RedisFailure> {
        let (data, expiry, users) = self.presence_keys(ch);
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("HDEL")
            .arg(&data)
            .arg(client)
            .ignore()
            .cmd("HDEL")
            .arg(&users)
            .arg(client)
            .ignore()
            .cmd("ZREM")
            .arg(&expiry)
            .arg(client)
            .ignore();
        let mut conn = self.redis.shard_for(ch).conn.clone();
        self.redis
            .run("presence", pipe.query_async::<()>(&mut conn))
            .await
    }

    async fn remove_conn(&self, user: &str, conn_id: &str) -> Result<(), RedisFailure> {
        let mut conn = self.redis.shard_for(user).conn.clone();
        let cmd = redis::cmd("ZREM")
            .arg(self.key("conns", user))
            .arg(conn_id)
            .to_owned();
        self.redis
            .run("presence", cmd.query_async::<i64>(&mut conn))
            .await?;
        Ok(())
    }

    async fn read(&self, ch: &str, mode: &str) -> Result<redis::Value, RedisFailure> {
        let (data, expiry, users) = self.presence_keys(ch);
        let mut inv = self.read_script.prepare_invoke();
        inv.key(data)
            .key(expiry)
            .key(users)
            .arg(r::now_ms())
            .arg(mode);
        let conn = self.redis.shard_for(ch).conn.clone();
        let inv = &inv;
        self.redis
            .run_retrying("presence", || {
                let mut conn = conn.clone();
                async move { inv.invoke_async(&mut conn).await }
            })
            .await
    }

    /// Writes every entry and connection of this node again with a fresh expiry, then
    /// removes again those that went away meanwhile (so a refresh never resurrects an
    /// entry removed while it ran).
    async fn refresh(&self) -> Result<(), RedisFailure> {
        let exp = self.expires_at();
        let entries: Vec<(String, ClientInfo)> = self
            .local
            .presence
            .iter()
            .flat_map(|s| {
                s.lock()
                    .iter()
                    .flat_map(|(ch, m)| m.values().map(|i| (ch.clone(), i.clone())))
                    .collect::<Vec<_>>()
            })
            .collect();
        let conns: Vec<(String, String)> = self
            .local
            .conns
            .iter()
            .flat_map(|s| {
                s.lock()
                    .iter()
                    .flat_map(|(u, set)| set.iter().map(|c| (u.clone(), c.clone())))
                    .collect::<Vec<_>>()
            })
            .collect();
        // Group by shard so that each pipeline goes to one Redis (of one topology).
        let topology = self.redis.topology();
        let n = topology.shards.len();
        let mut pipes: Vec<Vec<redis::Pipeline>> = vec![Vec::new(); n];
        let mut counts = vec![REFRESH_BATCH; n];
        let ttl = self.ttl.as_millis() as u64;
        let mut slot = |pipes: &mut Vec<Vec<redis::Pipeline>>, i: usize| {
            if counts[i] >= REFRESH_BATCH {
                pipes[i].push(redis::pipe());
                counts[i] = 0;
            }
            counts[i] += 1;
            pipes[i].len() - 1
        };
        for (ch, info) in &entries {
            let i = topology.index_for(ch);
            let j = slot(&mut pipes, i);
            self.write_entry(&mut pipes[i][j], ch, info, exp);
        }
        for (user, id) in &conns {
            let i = topology.index_for(user);
            let j = slot(&mut pipes, i);
            let key = self.key("conns", user);
            pipes[i][j]
                .cmd("ZADD")
                .arg(&key)
                .arg(exp)
                .arg(id)
                .ignore()
                .cmd("PEXPIRE")
                .arg(&key)
                .arg(ttl)
                .ignore();
        }
        for (i, shard_pipes) in pipes.into_iter().enumerate() {
            let mut conn = topology.shards[i].conn.clone();
            for p in shard_pipes {
                self.redis
                    .run("presence", p.query_async::<()>(&mut conn))
                    .await?;
            }
        }
        for (ch, info) in &entries {
            if !self.local.has_presence(ch, &info.client) {
                self.remove_entry(ch, &info.client).await?;
            }
        }
        for (user, id) in &conns {
            if !self.local.has_conn(user, id) {
                self.remove_conn(user, id).await?;
            }
        }
        Ok(())
    }
}

async fn refresh_loop(inner: Arc<Inner>, stop: CancellationToken) {
    let every = (inner.ttl / 3).max(Duration::from_millis(100));
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {
                if let Err(e) = inner.refresh().await {
                    tracing::warn!(cause = %e, "presence refresh failed; retrying next period");
                }
            }
        }
    }
}

#[async_trait]
impl PresenceManager for RedisPresence {
    /// Without a limit, an entry whose write failed (an outage) is remembered anyway
    /// and reaches Redis at the next refresh. With one, only what Redis admitted is
    /// remembered: the caller refuses the subscription when the write failed.
    async fn add(
        &self,
        channel: &str,
        info: ClientInfo,
        limit: usize,
    ) -> Result<bool, PresenceError> {
        let me = &self.inner;
        let (data, expiry, users) = me.presence_keys(channel);
        let mut inv = me.add_script.prepare_invoke();
        inv.key(data)
            .key(expiry)
            .key(users)
            .arg(&info.client)
            .arg(info.encode_to_vec())
            .arg(&info.user)
            .arg(me.expires_at())
            .arg(limit)
            .arg(r::now_ms())
            .arg(me.ttl.as_millis() as u64);
        let mut conn = me.redis.shard_for(channel).conn.clone();
        let added = me
            .redis
            .run("presence", inv.invoke_async::<i64>(&mut conn))
            .await
            .map_err(unavailable);
        // The refresher rewrites what this map holds.
        if matches!(added, Ok(1)) || (added.is_err() && limit == 0) {
            me.local
                .presence(channel)
                .lock()
                .entry(channel.to_string())
                .or_default()
                .insert(info.client.clone(), info);
        }
        Ok(added? == 1)
    }

    async fn remove(&self, channel: &str, client_id: &str) -> Result<(), PresenceError> {
        let me = &self.inner;
        {
            let mut shard = me.local.presence(channel).lock();
            if let Some(m) = shard.get_mut(channel) {
                m.remove(client_id);
                if m.is_empty() {
                    shard.remove(channel);
                }
            }
        }
        me.remove_entry(channel, client_id)
            .await
            .map_err(unavailable)
    }

    async fn presence(&self, channel: &str) -> Result<HashMap<String, ClientInfo>, PresenceError> {
        let v = self
            .inner
            .read(channel, "list")
            .await
            .map_err(unavailable)?;
        let items = r::array(&v).map_err(unavailable)?;
        let mut out = HashMap::with_capacity(items.len() / 2);
        for kv in items.chunks(2) {
            let [client, info] = kv else {
                continue;
            };
            let client = r::string(client).map_err(unavailable)?;
            let info = r::bytes(info)
                .ok()
                .and_then(|b| ClientInfo::decode(b).ok())
                .ok_or_else(|| {
                    PresenceError::Unavailable(format!("undecodable presence entry {client}"))
                })?;
            out.insert(client, info);
        }
        Ok(out)
    }

    async fn stats(&self, channel: &str) -> Result<PresenceStats, PresenceError> {
        let v = self
            .inner
            .read(channel, "stats")
            .await
            .map_err(unavailable)?;
        match r::array(&v).map_err(unavailable)? {
            [clients, users] => Ok(PresenceStats {
                num_clients: r::int(clients).map_err(unavailable)?.max(0) as u32,
                num_users: r::int(users).map_err(unavailable)?.max(0) as u32,
            }),
            _ => Err(PresenceError::Unavailable(format!("presence stats: {v:?}"))),
        }
    }

    async fn add_connection(
        &self,
        user: &str,
        conn_id: &str,
        limit: usize,
    ) -> Result<bool, PresenceError> {
        let me = &self.inner;
        let mut inv = me.connection_add_script.prepare_invoke();
        inv.key(me.key("conns", user))
            .arg(conn_id)
            .arg(me.expires_at())
            .arg(limit)
            .arg(r::now_ms())
            .arg(me.ttl.as_millis() as u64);
        let mut conn = me.redis.shard_for(user).conn.clone();
        let added: i64 = me
            .redis
            .run("presence", inv.invoke_async(&mut conn))
            .await
            .map_err(unavailable)?;
        if added == 1 {
            me.local
                .conns(user)
                .lock()
                .entry(user.to_string())
                .or_default()
                .insert(conn_id.to_string());
        }
        Ok(added == 1)
    }

    async fn remove_connection(&self, user: &str, conn_id: &str) -> Result<(), PresenceError> {
        let me = &self.inner;
        {
            let mut shard = me.local.conns(user).lock();
            if let Some(set) = shard.get_mut(user) {
                set.remove(conn_id);
                if set.is_empty() {
                    shard.remove(user);
                }
            }
        }
        me.remove_conn(user, conn_id).await.map_err(unavailable)
    }

    async fn connections(&self, user: &str) -> Result<usize, PresenceError> {
        let me = &self.inner;
        let conn = me.redis.shard_for(user).conn.clone();
        let cmd = redis::cmd("ZCOUNT")
            .arg(me.key("conns", user))
            .arg(format!("({}", r::now_ms()))
            .arg("+inf")
            .to_owned();
        let cmd = &cmd;
        let n: i64 = me
            .redis
            .run_retrying("presence", || {
                let mut conn = conn.clone();
                async move { cmd.query_async(&mut conn).await }
            })
            .await
            .map_err(unavailable)?;
        Ok(n.max(0) as usize)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::cluster::testing::RedisServer;

    async fn connect(url: &str, prefix: &str, ttl: Duration) -> RedisPresence {
        connect_with(url, prefix, ttl, false).await
    }

    async fn connect_with(url: &str, prefix: &str, ttl: Duration, cluster: bool) -> RedisPresence {
        let cfg = crate::config::BrokerConfig {
            kind: "redis".into(),
            redis_url: url.into(),
            redis_cluster: cluster,
            redis_prefix: prefix.into(),
            redis_timeout: Duration::from_secs(2),
            history_meta_ttl: Duration::from_secs(60),
            presence_ttl: ttl,
            node_heartbeat: Duration::from_secs(1),
            node_ttl: Duration::from_secs(3),
            reconcile_interval: Duration::from_secs(1),
        };
        let redis = Redis::connect(&cfg).await.expect("connect to redis");
        RedisPresence::new(redis, ttl)
    }

    #[tokio::test]
    async fn redis_presence_passes_conformance() {
        let server = RedisServer::start();
        let p = connect(&server.url(), "conf", Duration::from_secs(30)).await;
        crate::presence::conformance::run_all(p).await;
    }

    #[tokio::test]
    async fn redis_presence_passes_conformance_on_two_shards() {
        let (a, b) = (RedisServer::start(), RedisServer::start());
        let urls = format!("{},{}", a.url(), b.url());
        let p = connect(&urls, "conf2", Duration::from_secs(30)).await;
        crate::presence::conformance::run_all(p).await;
    }

    #[tokio::test]
    async fn redis_presence_passes_conformance_on_a_redis_cluster() {
        let cluster = crate::cluster::testing::RedisCluster::start(3);
        let p = connect_with(&cluster.url(), "confc", Duration::from_secs(30), true).await;
        crate::presence::conformance::run_all(p).await;
    }

    /// Two nodes see one presence; the entries of a node that stops refreshing (it
    /// died) expire, those of a live node are kept by its refresher.
    #[tokio::test]
    async fn entries_are_cluster_wide_and_expire_without_their_node() {
        let server = RedisServer::start();
        let ttl = Duration::from_millis(600);
        let a = connect(&server.url(), "exp", ttl).await;
        let b = connect(&server.url(), "exp", ttl).await;
        let info = |u: &str, c: &str| ClientInfo {
            user: u.into(),
            client: c.into(),
            ..Default::default()
        };
        assert!(a.add("room", info("alice", "1"), 0).await.unwrap());
        assert!(b.add("room", info("bob", "2"), 0).await.unwrap());
        assert!(a.add_connection("alice", "1", 1).await.unwrap());
        assert!(
            !b.add_connection("alice", "9", 1).await.unwrap(),
            "limit is cluster-wide"
        );
        assert_eq!(b.stats("room").await.unwrap().num_users, 2);
        drop(a); // its refresher stops: node a is gone
        tokio::time::sleep(ttl * 3).await;
        let left = b.presence("room").await.unwrap();
        assert_eq!(
            left.keys().collect::<Vec<_>>(),
            vec!["2"],
            "b refreshed its own"
        );
        assert!(
            b.add_connection("alice", "9", 1).await.unwrap(),
            "a's slot expired"
        );
    }

    /// An entry added while Redis is down (the subscription goes ahead without a cap)
    /// reaches Redis once it is back; a capped add that failed is not remembered.
    #[tokio::test]
    async fn an_entry_added_during_an_outage_arrives_later() {
        let mut server = RedisServer::start();
        let ttl = Duration::from_millis(600);
        let p = connect(&server.url(), "outage", ttl).await;
        let info = |client: &str| ClientInfo {
            user: "alice".into(),
            client: client.into(),
            ..Default::default()
        };
        server.kill();
        assert!(p.add("room", info("1"), 0).await.is_err());
        assert!(p.add("room", info("2"), 5).await.is_err());
        server.restart();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            if let Ok(m) = p.presence("room").await {
                if !m.is_empty() {
                    assert_eq!(m.keys().collect::<Vec<_>>(), vec!["1"]);
                    break;
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the entry never reached Redis"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// After Redis restarts empty, the refresher writes this node's entries back.
    #[tokio::test]
    async fn entries_come_back_after_redis_loses_them() {
        let mut server = RedisServer::start();
        let ttl = Duration::from_millis(600);
        let p = connect(&server.url(), "back", ttl).await;
        p.add(
            "room",
            ClientInfo {
                user: "alice".into(),
                client: "1".into(),
                ..Default::default()
            },
            0,
        )
        .await
        .unwrap();
        server.restart();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            if let Ok(s) = p.stats("room").await {
                if s.num_clients == 1 {
                    break;
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "entry did not come back"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
