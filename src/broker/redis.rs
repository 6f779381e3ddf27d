//! Cluster-mode broker on Redis: every node that has a local subscriber of a channel
//! subscribes to the channel's Redis pub/sub channel, and every publish goes through
//! one Lua script (`lua/publish.lua`) that assigns the next offset, appends to the
//! channel's capped stream (recent history, with a TTL) and publishes, atomically. Redis
//! runs one script at a time and a pub/sub connection delivers in order, so each node
//! receives a channel's publications in offset order, whichever node published them.
//!
//! Keys (prefix `p` = `broker.redis_prefix`), all of a channel on the channel's shard:
//! - `p:meta:<ch>` hash `e` epoch, `s` top offset; outlives the stream
//!   (`broker.history_meta_ttl`) so an old position is reported unrecoverable, never
//!   silently skipped; kept forever for persisted channels;
//! - `p:stream:<ch>` stream with entry ids `0-<offset>`, so `XRANGE (0-N +` reads
//!   everything after offset N;
//! - `p:ch:<ch>` the pub/sub channel; messages are `p<offset>:<epoch>:<ms>:<protobuf
//!   Publication>` (binary-safe), `j<protobuf ClientInfo>`, `l<protobuf ClientInfo>`;
//! - `p:idem:<len>:<ch>:<key>` idempotency keys, `p:unstored` (per shard) the persisted
//!   publications whose store write is not confirmed yet.
//!
//! When a pub/sub connection comes back after a loss (`cluster::pubsub`), each of its
//! channels is reported to the node as interrupted: its subscribers are told to recover.

use std::sync::{Arc, Weak};
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::RwLock;
use prost::Message as _;

use dispatch::{encode_publication, Dispatch};

use super::{
    Broker, BrokerError, BrokerEventHandler, HistoryFilter, HistoryOptions, PersistedSequencer,
    Sequenced, Unstored,
};
use crate::cluster::redis::{self as r, Redis, RedisFailure};
use crate::cluster::slots;
use crate::protocol::messages::{ClientInfo, Publication, StreamPosition};
use subscribers::Subscribers;

const PUBLISH_LUA: &str = include_str!("lua/publish.lua");
const HISTORY_LUA: &str = include_str!("lua/history.lua");
const SEED_LUA: &str = include_str!("lua/seed.lua");

/// Script statuses (see the scripts); 0 is "published" / "ok".
const DUPLICATE: i64 = 1;
const NOT_SEEDED: i64 = 2;
const OTHER_EPOCH: i64 = 3;

fn unavailable(e: RedisFailure) -> BrokerError {
    BrokerError::Unavailable(e.to_string())
}

fn new_epoch() -> String {
    format!("{:08x}", rand::random::<u32>())
}

/// Key names of one cluster (one prefix); in Redis Cluster mode every key of a channel
/// carries the channel's hash tag (`cluster::slots`), so the scripts touch one slot.
#[derive(Clone)]
struct Keys {
    prefix: String,
    cluster: bool,
}

impl Keys {
    fn part(&self, ch: &str) -> String {
        if self.cluster {
            slots::tagged(ch)
        } else {
            ch.to_string()
        }
    }
    fn meta(&self, ch: &str) -> String {
        format!("{}:meta:{}", self.prefix, self.part(ch))
    }
    fn stream(&self, ch: &str) -> String {
        format!("{}:stream:{}", self.prefix, self.part(ch))
    }
    fn pubsub(&self, ch: &str) -> String {
        format!("{}:ch:{}", self.prefix, self.part(ch))
    }
    fn pubsub_prefix(&self) -> String {
        format!("{}:ch:", self.prefix)
    }
    /// The channel's length first, so that no channel and key pair collides with another.
    fn idempotency(&self, ch: &str, key: &str) -> String {
        if self.cluster {
            format!(
                "{}:idem:{}:{}:{ch}:{key}",
                self.prefix,
                slots::tagged(ch),
                ch.len()
            )
        } else {
            format!("{}:idem:{}:{ch}:{key}", self.prefix, ch.len())
        }
    }
    /// One list per Redis; in cluster mode one per channel (a script touches one slot),
    /// found by the reconciler with `SCAN`.
    fn unstored(&self, ch: &str) -> String {
        if self.cluster {
            format!("{}:unstored:{}", self.prefix, slots::tagged(ch))
        } else {
            self.unstored_root()
        }
    }
    fn unstored_root(&self) -> String {
        format!("{}:unstored", self.prefix)
    }
}

pub struct RedisBroker {
    redis: Arc<Redis>,
    keys: Keys,
    subscribers: Arc<Subscribers>,
    dispatch: Arc<Dispatch>,
    meta_ttl: Duration,
    publish_script: redis::Script,
    history_script: redis::Script,
    seed_script: redis::Script,
}

impl RedisBroker {
    /// Starts one pub/sub connection per Redis (in the background; on a Redis Cluster
    /// also the task moving subscriptions after a topology change). `meta_ttl` is
    /// `broker.history_meta_ttl`.
    pub fn new(redis: Arc<Redis>, meta_ttl: Duration) -> RedisBroker {
        let keys = Keys {
            prefix: redis.prefix.clone(),
            cluster: redis.is_cluster(),
        };
        let dispatch = Arc::new(Dispatch {
            handler: RwLock::new(None),
            pubsub_prefix: keys.pubsub_prefix(),
            cluster: keys.cluster,
        });
        let subscribers = Subscribers::new(redis.clone(), dispatch.clone());
        RedisBroker {
            redis,
            keys,
            subscribers,
            dispatch,
            meta_ttl,
            publish_script: redis::Script::new(PUBLISH_LUA),
            history_script: redis::Script::new(HISTORY_LUA),
            seed_script: redis::Script::new(SEED_LUA),
        }
    }

    fn subscriber(&self, channel: &str) -> Arc<subscribers::ChannelSubscriber> {
        self.subscribers.of(channel)
    }

    /// Runs the publish script; returns (offset, epoch, status).
    async fn run_publish(&self, p: PublishArgs<'_>) -> Result<(u64, String, i64), RedisFailure> {
        let ch = p.channel;
        let shard = self.redis.shard_for(ch);
        let mut conn = shard.conn.clone();
        let mut inv = self.publish_script.prepare_invoke();
        inv.key(self.keys.meta(ch))
            .key(self.keys.stream(ch))
            .key(
                p.idempotency
                    .map(|(k, _)| self.keys.idempotency(ch, k))
                    .unwrap_or_else(|| self.keys.meta(ch)),
            )
            .key(if p.persisted {
                self.keys.unstored(ch)
            } else {
                self.keys.meta(ch)
            })
            .arg(self.keys.pubsub(ch))
            .arg(encode_publication(p.publication))
            .arg(p.history.size)
            .arg(p.history.ttl.as_millis().max(1) as u64)
            .arg(if p.persisted {
                0
            } else {
                self.meta_ttl.as_millis().max(1) as u64
            })
            .arg(p.new_epoch)
            .arg(
                p.idempotency
                    .map(|(_, w)| w.as_millis().max(1) as u64)
                    .unwrap_or(1),
            )
            .arg(r::now_ms())
            .arg(ch)
            .arg(self.redis.publish_command())
            .arg(if p.idempotency.is_some() { "1" } else { "0" })
            .arg(if p.persisted { "1" } else { "0" });
        let v: redis::Value = self
            .redis
            .run("publish", inv.invoke_async(&mut conn))
            .await?;
        let a = r::array(&v)?;
        match a {
            [offset, epoch, status] => Ok((
                r::int(offset)?.max(0) as u64,
                r::string(epoch)?,
                r::int(status)?,
            )),
            _ => Err(RedisFailure::Reply(format!("publish script: {v:?}"))),
        }
    }

    /// Runs the history script; returns the publications, the top and the status.
    async fn run_history(
        &self,
        channel: &str,
        filter: &HistoryFilter,
        new_epoch: &str,
        meta_ttl: Duration,
    ) -> Result<(Vec<Publication>, StreamPosition, i64), RedisFailure> {
        let conn = self.redis.shard_for(channel).conn.clone();
        let limit: i64 = match filter.limit {
            None => -1,
            Some(l) => l.min(i64::MAX as usize) as i64,
        };
        let mut inv = self.history_script.prepare_invoke();
        inv.key(self.keys.meta(channel))
            .key(self.keys.stream(channel))
            .arg(new_epoch)
            .arg(meta_ttl.as_millis() as u64)
            .arg(
                filter
                    .since
                    .as_ref()
                    .map(|s| s.offset.to_string())
                    .unwrap_or_default(),
            )
            .arg(
                filter
                    .since
                    .as_ref()
                    .map(|s| s.epoch.clone())
                    .unwrap_or_default(),
            )
            .arg(limit)
            .arg(if filter.reverse { "1" } else { "0" });
        let inv = &inv;
        let v: redis::Value = self
            .redis
            .run_retrying("history", || {
                let mut conn = conn.clone();
                async move { inv.invoke_async(&mut conn).await }
            })
            .await?;
        let [top, epoch, status, items] = r::array(&v)? else {
            return Err(RedisFailure::Reply(format!("history script: {v:?}")));
        };
        let top = StreamPosition {
            offset: r::int(top)?.max(0) as u64,
            epoch: r::string(epoch)?,
        };
        let pubs = r::array(items)?
            .iter()
            .map(decode_entry)
            .collect::<Result<Vec<_>, _>>()?;
        Ok((pubs, top, r::int(status)?))
    }

    /// Interprets a history read like the memory broker does.
    fn checked(
        filter: &HistoryFilter,
        pubs: Vec<Publication>,
        top: StreamPosition,
        status: i64,
    ) -> Result<(Vec<Publication>, StreamPosition), BrokerError> {
        if filter.limit == Some(0) {
            return Ok((Vec::new(), top));
        }
        if status == OTHER_EPOCH {
            return Err(BrokerError::UnrecoverablePosition);
        }
        if let (Some(since), false) = (&filter.since, filter.reverse) {
            // Everything after `since` must still be kept, or there is a gap.
            let continuous = pubs
                .first()
                .map_or(since.offset >= top.offset, |p| p.offset == since.offset + 1);
            if !continuous {
                return Err(BrokerError::UnrecoverablePosition);
            }
        }
        Ok((pubs, top))
    }
}

struct PublishArgs<'a> {
    channel: &'a str,
    publication: &'a Publication,
    history: HistoryOptions,
    persisted: bool,
    /// Epoch to start with; "" refuses to start one (persisted channels).
    new_epoch: &'a str,
    idempotency: Option<(&'a str, Duration)>,
}

/// A stream entry `[id "0-<offset>", [field, value, ...]]` as a publication.
fn decode_entry(v: &redis::Value) -> Result<Publication, RedisFailure> {
    let [id, fields] = r::array(v)? else {
        return Err(RedisFailure::Reply(format!("stream entry: {v:?}")));
    };
    let id = r::string(id)?;
    let offset = id
        .strip_prefix("0-")
        .and_then(|o| o.parse::<u64>().ok())
        .ok_or_else(|| RedisFailure::Reply(format!("stream id {id}")))?;
    let fields = r::array(fields)?;
    let body = fields
        .chunks(2)
        .find_map(|kv| match kv {
            [k, v] if r::bytes(k).ok() == Some(b"d".as_slice()) => r::bytes(v).ok(),
            _ => None,
        })
        .ok_or_else(|| RedisFailure::Reply(format!("stream entry {id} without data")))?;
    let mut p = Publication::decode(body)
        .map_err(|e| RedisFailure::Reply(format!("stream entry {id}: {e}")))?;
    p.offset = offset;
    Ok(p)
}

#[async_trait]
impl Broker for RedisBroker {
    fn set_handler(&self, handler: Weak<dyn BrokerEventHandler>) {
        *self.dispatch.handler.write() = Some(handler);
    }

    async fn publish(
        &self,
        channel: &str,
        publication: Publication,
        history: HistoryOptions,
    ) -> Result<StreamPosition, BrokerError> {
        if !history.enabled() {
            // No stream: nothing to sequence, deliver as is (offset 0).
            let mut msg = format!("p0::{}:", r::now_ms()).into_bytes();
            msg.extend_from_slice(&encode_publication(&publication));
            let mut conn = self.redis.shard_for(channel).conn.clone();
            let cmd = redis::cmd(self.redis.publish_command())
                .arg(self.keys.pubsub(channel))
                .arg(msg)
                .to_owned();
            self.redis
                .run("publish", cmd.query_async::<i64>(&mut conn))
                .await
                .map_err(unavailable)?;
            return Ok(StreamPosition::default());
        }
        let epoch = new_epoch();
        let (offset, epoch, _) = self
            .run_publish(PublishArgs {
                channel,
                publication: &publication,
                history,
                persisted: false,
                new_epoch: &epoch,
                idempotency: None,
            })
            .await
            .map_err(unavailable)?;
        Ok(StreamPosition { offset, epoch })
    }

    async fn publish_join(&self, channel: &str, info: ClientInfo) -> Result<(), BrokerError> {
        self.publish_presence_event(channel, b'j', &info).await
    }

    async fn publish_leave(&self, channel: &str, info: ClientInfo) -> Result<(), BrokerError> {
        self.publish_presence_event(channel, b'l', &info).await
    }

    async fn subscribe(&self, channel: &str) -> Result<(), BrokerError> {
        self.subscriber(channel)
            .subscribe(&self.keys.pubsub(channel))
            .await
            .map_err(unavailable)
    }

    async fn unsubscribe(&self, channel: &str) -> Result<(), BrokerError> {
        self.subscriber(channel)
            .unsubscribe(&self.keys.pubsub(channel))
            .await
            .map_err(unavailable)
    }

    async fn history(
        &self,
        channel: &str,
        filter: HistoryFilter,
    ) -> Result<(Vec<Publication>, StreamPosition), BrokerError> {
        let epoch = new_epoch();
        let (pubs, top, status) = self
            .run_history(channel, &filter, &epoch, self.meta_ttl)
            .await
            .map_err(unavailable)?;
        Self::checked(&filter, pubs, top, status)
    }

    async fn remove_history(&self, channel: &str) -> Result<(), BrokerError> {
        let mut conn = self.redis.shard_for(channel).conn.clone();
        let cmd = redis::cmd("DEL").arg(self.keys.stream(channel)).to_owned();
        self.redis
            .run("history", cmd.query_async::<i64>(&mut conn))
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    fn spans_nodes(&self) -> bool {
        true
    }

    fn sequencer(&self) -> Option<&dyn PersistedSequencer> {
        Some(self)
    }
}

impl RedisBroker {
    async fn publish_presence_event(
        &self,
        channel: &str,
        kind: u8,
        info: &ClientInfo,
    ) -> Result<(), BrokerError> {
        let mut msg = vec![kind];
        msg.extend_from_slice(&info.encode_to_vec());
        let mut conn = self.redis.shard_for(channel).conn.clone();
        let cmd = redis::cmd(self.redis.publish_command())
            .arg(self.keys.pubsub(channel))
            .arg(msg)
            .to_owned();
        self.redis
            .run("publish", cmd.query_async::<i64>(&mut conn))
            .await
            .map_err(unavailable)?;
        Ok(())
    }
}

#[async_trait]
impl PersistedSequencer for RedisBroker {
    async fn publish_persisted(
        &self,
        channel: &str,
        mut publication: Publication,
        stream: HistoryOptions,
        idempotency: Option<(&str, Duration)>,
    ) -> Result<Option<Sequenced>, BrokerError> {
        let (offset, epoch, status) = self
            .run_publish(PublishArgs {
                channel,
                publication: &publication,
                history: stream,
                persisted: true,
                new_epoch: "",
                idempotency,
            })
            .await
            .map_err(unavailable)?;
        if status == NOT_SEEDED {
            return Ok(None);
        }
        publication.offset = offset;
        Ok(Some(Sequenced {
            position: StreamPosition { offset, epoch },
            publication,
            duplicate: status == DUPLICATE,
        }))
    }

    async fn seed(&self, channel: &str, top: &StreamPosition) -> Result<(), BrokerError> {
        let mut conn = self.redis.shard_for(channel).conn.clone();
        let mut inv = self.seed_script.prepare_invoke();
        inv.key(self.keys.meta(channel))
            .key(self.keys.stream(channel))
            .arg(&top.epoch)
            .arg(top.offset);
        let seeded: i64 = self
            .redis
            .run("seed", inv.invoke_async(&mut conn))
            .await
            .map_err(unavailable)?;
        if seeded == 1 {
            tracing::info!(channel, offset = top.offset, epoch = %top.epoch, "persisted channel sequence seeded from the store");
        }
        Ok(())
    }

    async fn recent(
        &self,
        channel: &str,
        filter: HistoryFilter,
    ) -> Result<Option<(Vec<Publication>, StreamPosition)>, BrokerError> {
        let (pubs, top, status) = self
            .run_history(channel, &filter, "", Duration::ZERO)
            .await
            .map_err(unavailable)?;
        if status == NOT_SEEDED {
            return Ok(None);
        }
        Self::checked(&filter, pubs, top, status).map(Some)
    }

    async fn mark_stored(&self, channel: &str, offset: u64) -> Result<(), BrokerError> {
        let mut conn = self.redis.shard_for(channel).conn.clone();
        let cmd = redis::cmd("ZREM")
            .arg(self.keys.unstored(channel))
            .arg(format!("{offset}:{channel}"))
            .to_owned();
        self.redis
            .run("reconcile", cmd.query_async::<i64>(&mut conn))
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn unstored(
        &self,
        older_than: Duration,
        max: usize,
    ) -> Result<Vec<Unstored>, BrokerError> {
        let cutoff = r::now_ms() - older_than.as_millis() as i64;
        let mut out = Vec::new();
        for shard in self.redis.shards() {
            let mut conn = shard.conn.clone();
            for list in self.unstored_lists(&mut conn).await? {
                if out.len() >= max {
                    return Ok(out);
                }
                self.unstored_of(&mut conn, &list, cutoff, max - out.len(), &mut out)
                    .await?;
            }
        }
        Ok(out)
    }
}

impl RedisBroker {
    /// The unstored lists one Redis holds: the one list, or in cluster mode the
    /// per-channel lists of this master (only channels with pending entries have one).
    async fn unstored_lists(
        &self,
        conn: &mut redis::aio::ConnectionManager,
    ) -> Result<Vec<String>, BrokerError> {
        if !self.keys.cluster {
            return Ok(vec![self.keys.unstored_root()]);
        }
        let pattern = format!("{}:*", self.keys.unstored_root());
        let mut lists = Vec::new();
        let mut cursor: u64 = 0;
        loop {
            let cmd = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000)
                .to_owned();
            let (next, keys): (u64, Vec<String>) = self
                .redis
                .run("reconcile", cmd.query_async(conn))
                .await
                .map_err(unavailable)?;
            lists.extend(keys);
            if next == 0 {
                return Ok(lists);
            }
            cursor = next;
        }
    }

    /// Appends to `out` up to `max` entries of one unstored list older than `cutoff`.
    async fn unstored_of(
        &self,
        conn: &mut redis::aio::ConnectionManager,
        list: &str,
        cutoff: i64,
        max: usize,
        out: &mut Vec<Unstored>,
    ) -> Result<(), BrokerError> {
        {
            let cmd = redis::cmd("ZRANGEBYSCORE")
                .arg(list)
                .arg("-inf")
                .arg(cutoff)
                .arg("LIMIT")
                .arg(0)
                .arg(max)
                .to_owned();
            let members: Vec<String> = self
                .redis
                .run("reconcile", cmd.query_async(conn))
                .await
                .map_err(unavailable)?;
            for member in members {
                let Some((offset, channel)) = member
                    .split_once(':')
                    .and_then(|(o, c)| Some((o.parse::<u64>().ok()?, c.to_string())))
                else {
                    continue;
                };
                let mut pipe = redis::pipe();
                pipe.cmd("HGET").arg(self.keys.meta(&channel)).arg("e");
                pipe.cmd("XRANGE")
                    .arg(self.keys.stream(&channel))
                    .arg(format!("0-{offset}"))
                    .arg(format!("0-{offset}"));
                let (epoch, entries): (Option<String>, redis::Value) = self
                    .redis
                    .run("reconcile", pipe.query_async(conn))
                    .await
                    .map_err(unavailable)?;
                let publication = match r::array(&entries).map_err(unavailable)?.first() {
                    Some(e) => Some(decode_entry(e).map_err(unavailable)?),
                    None => None,
                };
                out.push(Unstored {
                    channel,
                    offset,
                    epoch: epoch.unwrap_or_default(),
                    publication,
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod cluster_tests;
mod dispatch;
mod subscribers;
#[cfg(test)]
mod tests;
