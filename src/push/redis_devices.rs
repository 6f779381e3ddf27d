//! The device registry and mutes of cluster mode, in Redis, so that every node sees a
//! device registered through any of them.
//!
//! Devices are JSON in one hash (by id), with indexes: token -> id, a sorted set of ids
//! (ordered paging), a set of ids per user and per topic. Mutes are a hash per channel
//! (user -> until, "" = until unmuted). Every key carries one hash tag on a Redis
//! Cluster, so the registry lives on one master: simple and atomic per script, bounded
//! by what one Redis holds (a device is a few hundred bytes). A write is a
//! compare-and-set script over the device as read, retried on a conflict, so concurrent
//! registrations on several nodes keep the indexes right.

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;

use async_trait::async_trait;

use super::devices::TopicsOp;
use super::{
    now_ms, Device, DeviceFilter, DevicePage, DeviceUpdate, NewDevice, Provider, PushStore,
    PushStoreError,
};
use crate::cluster::redis::{int, Redis};

const PUT_LUA: &str = include_str!("lua/devices_put.lua");
/// The name whose hash tag every registry key carries.
const NAME: &str = "push:devices";
/// Compare-and-set attempts before a write gives up.
const ATTEMPTS: usize = 16;
/// Ids read per round trip.
const CHUNK: usize = 500;

pub struct RedisDevices {
    redis: Arc<Redis>,
    put: redis::Script,
}

/// What a device write replaces: the stored JSON and the device.
type Current = Option<(String, Device)>;

fn unavailable(e: impl std::fmt::Display) -> PushStoreError {
    PushStoreError::Unavailable(e.to_string())
}

fn token_field(p: Provider, token: &str) -> String {
    format!("{}:{token}", p.as_str())
}

impl RedisDevices {
    pub fn new(redis: Arc<Redis>) -> RedisDevices {
        RedisDevices {
            redis,
            put: redis::Script::new(PUT_LUA),
        }
    }

    fn key(&self, what: &str) -> String {
        self.redis.key(what, NAME)
    }

    fn user_key(&self, user: &str) -> String {
        format!("{}:{user}", self.key("pushdevuser"))
    }

    fn topic_key(&self, topic: &str) -> String {
        format!("{}:{topic}", self.key("pushdevtopic"))
    }

    fn mute_key(&self, channel: &str) -> String {
        format!("{}:{channel}", self.key("pushmute"))
    }

    fn conn(&self) -> redis::aio::ConnectionManager {
        self.redis.shard_for(NAME).conn.clone()
    }

    async fn query<T: redis::FromRedisValue + Send>(
        &self,
        op: &'static str,
        cmd: redis::Cmd,
    ) -> Result<T, PushStoreError> {
        self.redis
            .run_retrying(op, || {
                let mut conn = self.conn();
                let cmd = cmd.clone();
                async move { cmd.query_async(&mut conn).await }
            })
            .await
            .map_err(unavailable)
    }

    /// Devices by id, in the order asked, missing ones left out.
    async fn load(&self, ids: &[String]) -> Result<Vec<(String, Device)>, PushStoreError> {
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(CHUNK) {
            let mut cmd = redis::cmd("HMGET");
            cmd.arg(self.key("pushdevs")).arg(chunk);
            let raw: Vec<Option<String>> = self.query("push_devices_get", cmd).await?;
            for json in raw.into_iter().flatten() {
                match serde_json::from_str::<Device>(&json) {
                    Ok(d) => out.push((json, d)),
                    Err(e) => tracing::error!(cause = %e, "unreadable device in Redis"),
                }
            }
        }
        Ok(out)
    }

    async fn get(&self, id: &str) -> Result<Current, PushStoreError> {
        Ok(self.load(&[id.to_string()]).await?.pop())
    }

    async fn owner_of(&self, p: Provider, token: &str) -> Result<Option<String>, PushStoreError> {
        let mut cmd = redis::cmd("HGET");
        cmd.arg(self.key("pushdevtokens"))
            .arg(token_field(p, token));
        self.query("push_devices_token", cmd).await
    }

    /// Replaces `old` by `new` (`None` deletes) if the device is still as read.
    /// 1 written, 0 changed meanwhile, -1 the token belongs to another device.
    async fn put(
        &self,
        id: &str,
        old: &Current,
        new: Option<&Device>,
    ) -> Result<i64, PushStoreError> {
        let mut remove: Vec<String> = Vec::new();
        let mut add: Vec<String> = Vec::new();
        if let Some((_, d)) = old {
            remove.push(self.user_key(&d.user));
            remove.extend(d.topics.iter().map(|t| self.topic_key(t)));
        }
        if let Some(d) = new {
            add.push(self.user_key(&d.user));
            add.extend(d.topics.iter().map(|t| self.topic_key(t)));
        }
        let json = match new {
            Some(d) => serde_json::to_string(d).map_err(unavailable)?,
            None => String::new(),
        };
        let mut inv = self.put.prepare_invoke();
        inv.key(self.key("pushdevs"))
            .key(self.key("pushdevtokens"))
            .key(self.key("pushdevids"));
        for k in remove.iter().chain(&add) {
            inv.key(k);
        }
        inv.arg(id)
            .arg(old.as_ref().map_or("", |(j, _)| j.as_str()))
            .arg(json)
            .arg(
                old.as_ref()
                    .map_or(String::new(), |(_, d)| token_field(d.provider, &d.token)),
            )
            .arg(new.map_or(String::new(), |d| token_field(d.provider, &d.token)))
            .arg(remove.len())
            .arg(add.len());
        let mut conn = self.conn();
        let v: redis::Value = self
            .redis
            .run("push_devices_put", inv.invoke_async(&mut conn))
            .await
            .map_err(unavailable)?;
        int(&v).map_err(unavailable)
    }

    /// Deletes a device, whatever it became meanwhile; false if it is gone.
    async fn delete(&self, id: &str) -> Result<bool, PushStoreError> {
        for _ in 0..ATTEMPTS {
            let cur = self.get(id).await?;
            if cur.is_none() {
                return Ok(false);
            }
            if self.put(id, &cur, None).await? == 1 {
                return Ok(true);
            }
        }
        Err(unavailable("device changed too often to remove"))
    }

    /// Ids a filter's ids / users / topics narrow to, or `None` (every device).
    async fn candidates(&self, f: &DeviceFilter) -> Result<Option<Vec<String>>, PushStoreError> {
        let sets: Vec<String> = if !f.ids.is_empty() {
            return Ok(Some(f.ids.clone()));
        } else if !f.users.is_empty() {
            f.users.iter().map(|u| self.user_key(u)).collect()
        } else if !f.topics.is_empty() {
            f.topics.iter().map(|t| self.topic_key(t)).collect()
        } else {
            return Ok(None);
        };
        let mut ids = BTreeSet::new();
        for chunk in sets.chunks(CHUNK) {
            let mut cmd = redis::cmd("SUNION");
            cmd.arg(chunk);
            let part: Vec<String> = self.query("push_devices_index", cmd).await?;
            ids.extend(part);
        }
        Ok(Some(ids.into_iter().collect()))
    }

    /// Devices matching `f` with an id above `after`, in id order, at most `limit`
    /// (`None`: all of them).
    async fn matching(
        &self,
        f: &DeviceFilter,
        after: &str,
        limit: Option<usize>,
    ) -> Result<Vec<(String, Device)>, PushStoreError> {
        let full = |n: usize| limit.is_some_and(|l| n >= l);
        let mut out = Vec::new();
        if let Some(mut ids) = self.candidates(f).await? {
            ids.sort();
            ids.dedup();
            ids.retain(|id| id.as_str() > after);
            for chunk in ids.chunks(CHUNK) {
                for d in self.load(chunk).await? {
                    if matches(f, &d.1) && !full(out.len()) {
                        out.push(d);
                    }
                }
                if full(out.len()) {
                    break;
                }
            }
            return Ok(out);
        }
        // No index applies: walk every id in order.
        let mut from = if after.is_empty() {
            "-".to_string()
        } else {
            format!("({after}")
        };
        loop {
            let mut cmd = redis::cmd("ZRANGEBYLEX");
            cmd.arg(self.key("pushdevids"))
                .arg(&from)
                .arg("+")
                .arg("LIMIT")
                .arg(0)
                .arg(CHUNK);
            let ids: Vec<String> = self.query("push_devices_ids", cmd).await?;
            let Some(last) = ids.last().cloned() else {
                return Ok(out);
            };
            for d in self.load(&ids).await? {
                if matches(f, &d.1) && !full(out.len()) {
                    out.push(d);
                }
            }
            if full(out.len()) || ids.len() < CHUNK {
                return Ok(out);
            }
            from = format!("({last}");
        }
    }

    /// The (ids, users) part of a filter, as update and remove use it.
    fn targets_filter(f: &DeviceFilter) -> DeviceFilter {
        DeviceFilter {
            ids: f.ids.clone(),
            users: f.users.clone(),
            ..Default::default()
        }
    }
}

/// Every condition of a filter (empty lists place none).
fn matches(f: &DeviceFilter, d: &Device) -> bool {
    (f.ids.is_empty() || f.ids.contains(&d.id))
        && (f.users.is_empty() || f.users.contains(&d.user))
        && (f.providers.is_empty() || f.providers.contains(&d.provider))
        && (f.platforms.is_empty() || f.platforms.contains(&d.platform))
        && (f.topics.is_empty() || d.topics.iter().any(|t| f.topics.contains(t)))
}

fn sorted(topics: impl IntoIterator<Item = String>) -> Vec<String> {
    topics
        .into_iter()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}

#[async_trait]
impl PushStore for RedisDevices {
    async fn register(&self, d: NewDevice) -> Result<Device, PushStoreError> {
        for _ in 0..ATTEMPTS {
            let owner = self.owner_of(d.provider, &d.token).await?;
            let by_id = if d.id.is_empty() {
                None
            } else {
                self.get(&d.id).await?
            };
            let (id, cur) = match (by_id, owner) {
                (Some(cur), other) => {
                    // The token moves from the device holding it to this one.
                    if let Some(other) = other.filter(|o| *o != cur.1.id) {
                        self.delete(&other).await?;
                    }
                    (cur.1.id.clone(), Some(cur))
                }
                (None, Some(owner)) => match self.get(&owner).await? {
                    Some(cur) => (owner, Some(cur)),
                    // Removed meanwhile: look again.
                    None => continue,
                },
                (None, None) if d.id.is_empty() => (uuid::Uuid::new_v4().to_string(), None),
                (None, None) => (d.id.clone(), None),
            };
            let now = now_ms();
            let new = Device {
                id: id.clone(),
                user: d.user.clone(),
                provider: d.provider,
                platform: d.platform,
                token: d.token.clone(),
                topics: sorted(d.topics.iter().cloned()),
                meta: d.meta.clone(),
                created_at: cur.as_ref().map_or(now, |(_, c)| c.created_at),
                updated_at: now,
            };
            if self.put(&id, &cur, Some(&new)).await? == 1 {
                return Ok(new);
            }
        }
        Err(unavailable("device changed too often to register"))
    }

    async fn update(&self, filter: &DeviceFilter, u: &DeviceUpdate) -> Result<u64, PushStoreError> {
        let f = Self::targets_filter(filter);
        if f.is_empty() {
            return Ok(0);
        }
        let mut n = 0;
        for (_, target) in self.matching(&f, "", None).await? {
            for attempt in 0..ATTEMPTS {
                let Some(cur) = self.get(&target.id).await? else {
                    break;
                };
                let mut d = cur.1.clone();
                if let Some(user) = &u.user {
                    d.user = user.clone();
                }
                if let Some(meta) = &u.meta {
                    d.meta = meta.clone();
                }
                if let Some((op, topics)) = &u.topics {
                    d.topics = match op {
                        TopicsOp::Set => sorted(topics.iter().cloned()),
                        TopicsOp::Add => sorted(d.topics.iter().chain(topics).cloned()),
                        TopicsOp::Remove => {
                            let gone: HashSet<&String> = topics.iter().collect();
                            sorted(d.topics.iter().filter(|t| !gone.contains(t)).cloned())
                        }
                    };
                }
                d.updated_at = now_ms();
                if self.put(&d.id.clone(), &Some(cur), Some(&d)).await? == 1 {
                    n += 1;
                    break;
                }
                if attempt + 1 == ATTEMPTS {
                    return Err(unavailable("device changed too often to update"));
                }
            }
        }
        Ok(n)
    }

    async fn remove(&self, filter: &DeviceFilter) -> Result<u64, PushStoreError> {
        let f = Self::targets_filter(filter);
        if f.is_empty() {
            return Ok(0);
        }
        let mut n = 0;
        for (_, d) in self.matching(&f, "", None).await? {
            if self.delete(&d.id).await? {
                n += 1;
            }
        }
        Ok(n)
    }

    async fn remove_token(&self, provider: Provider, token: &str) -> Result<u64, PushStoreError> {
        match self.owner_of(provider, token).await? {
            Some(id) if self.delete(&id).await? => Ok(1),
            _ => Ok(0),
        }
    }

    async fn list(
        &self,
        filter: &DeviceFilter,
        cursor: &str,
        limit: usize,
        with_total: bool,
    ) -> Result<DevicePage, PushStoreError> {
        let mut items: Vec<Device> = self
            .matching(filter, cursor, Some(limit.saturating_add(1)))
            .await?
            .into_iter()
            .map(|(_, d)| d)
            .collect();
        let next_cursor = if items.len() > limit {
            items.truncate(limit);
            items.last().map(|d| d.id.clone()).unwrap_or_default()
        } else {
            String::new()
        };
        let total = if with_total {
            Some(self.matching(filter, "", None).await?.len() as u64)
        } else {
            None
        };
        Ok(DevicePage {
            items,
            next_cursor,
            total,
        })
    }

    async fn mute(
        &self,
        user: &str,
        channel: &str,
        until_ms: Option<i64>,
    ) -> Result<(), PushStoreError> {
        let mut cmd = redis::cmd("HSET");
        cmd.arg(self.mute_key(channel))
            .arg(user)
            .arg(until_ms.map_or(String::new(), |t| t.to_string()));
        let _: i64 = self.query("push_mute", cmd).await?;
        Ok(())
    }

    async fn unmute(&self, user: &str, channel: &str) -> Result<(), PushStoreError> {
        let mut cmd = redis::cmd("HDEL");
        cmd.arg(self.mute_key(channel)).arg(user);
        let _: i64 = self.query("push_mute", cmd).await?;
        Ok(())
    }

    async fn muted(&self, users: &[String], channel: &str) -> Result<Vec<String>, PushStoreError> {
        let now = now_ms();
        let mut out = Vec::new();
        for chunk in users.chunks(CHUNK) {
            let mut cmd = redis::cmd("HMGET");
            cmd.arg(self.mute_key(channel)).arg(chunk);
            let until: Vec<Option<String>> = self.query("push_muted", cmd).await?;
            for (u, t) in chunk.iter().zip(until) {
                let muted = match t.as_deref() {
                    None => false,
                    Some("") => true,
                    Some(t) => t.parse::<i64>().is_ok_and(|t| t > now),
                };
                if muted {
                    out.push(u.clone());
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::testing::{RedisCluster, RedisServer};

    async fn suite(url: &str, cluster: bool) {
        let cfg = crate::config::BrokerConfig {
            kind: "redis".into(),
            redis_url: url.into(),
            redis_cluster: cluster,
            redis_prefix: format!("dev{}", uuid::Uuid::new_v4().simple()),
            redis_timeout: std::time::Duration::from_secs(2),
            history_meta_ttl: std::time::Duration::from_secs(600),
            presence_ttl: std::time::Duration::from_secs(30),
            node_heartbeat: std::time::Duration::from_secs(1),
            node_ttl: std::time::Duration::from_secs(3),
            reconcile_interval: std::time::Duration::from_secs(1),
        };
        let redis = Redis::connect(&cfg).await.unwrap();
        crate::push::conformance::run_all(&RedisDevices::new(redis)).await;
    }

    #[tokio::test]
    async fn redis_devices_pass_conformance() {
        let server = RedisServer::start();
        suite(&server.url(), false).await;
    }

    #[tokio::test]
    async fn redis_devices_pass_conformance_on_a_redis_cluster() {
        let cluster = RedisCluster::start(3);
        suite(&cluster.url(), true).await;
    }
}
