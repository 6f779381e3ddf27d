//! The broker's pub/sub connections: one per Redis, keyed by the Redis's name, made on
//! first use. Plain `SUBSCRIBE` with one or several Redis; sharded `SSUBSCRIBE` on a
//! Redis Cluster, where a topology change moves subscriptions: each wanted channel whose
//! slot now belongs to another master is subscribed there first, then dropped from the
//! old master, then reported interrupted (its subscribers recover what the move may have
//! cost). A move that fails stays on the old connection and is retried at the next
//! check.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::Mutex;
use tokio_util::sync::{CancellationToken, DropGuard};

use super::dispatch::Dispatch;
use crate::cluster::pubsub::{PubSubHandler, Subscriber};
use crate::cluster::redis::{Redis, RedisFailure, Shard};
use crate::cluster::spubsub::{Endpoint, ShardedSubscriber};

/// How often moves that failed are retried even without a new topology.
const RECHECK_EVERY: Duration = Duration::from_secs(2);

/// The pub/sub connection of one Redis.
pub(super) enum ChannelSubscriber {
    Plain(Subscriber),
    Sharded(ShardedSubscriber),
}

impl ChannelSubscriber {
    pub(super) async fn subscribe(&self, ch: &str) -> Result<(), RedisFailure> {
        match self {
            ChannelSubscriber::Plain(s) => s.subscribe(ch).await,
            ChannelSubscriber::Sharded(s) => s.subscribe(ch).await,
        }
    }

    pub(super) async fn unsubscribe(&self, ch: &str) -> Result<(), RedisFailure> {
        match self {
            ChannelSubscriber::Plain(s) => s.unsubscribe(ch).await,
            ChannelSubscriber::Sharded(s) => s.unsubscribe(ch).await,
        }
    }

    fn wanted(&self) -> Vec<String> {
        match self {
            ChannelSubscriber::Plain(_) => Vec::new(),
            ChannelSubscriber::Sharded(s) => s.wanted(),
        }
    }
}

pub(super) struct Subscribers {
    redis: Arc<Redis>,
    dispatch: Arc<Dispatch>,
    /// By shard name; parking_lot, never held across an `.await`.
    by_shard: Mutex<HashMap<String, Arc<ChannelSubscriber>>>,
    /// Stops the rebalancer (Redis Cluster only) with the broker.
    _rebalancer: Option<DropGuard>,
}

impl Subscribers {
    pub(super) fn new(redis: Arc<Redis>, dispatch: Arc<Dispatch>) -> Arc<Subscribers> {
        let stop = redis.is_cluster().then(CancellationToken::new);
        let subs = Arc::new(Subscribers {
            redis,
            dispatch,
            by_shard: Mutex::new(HashMap::new()),
            _rebalancer: stop.clone().map(CancellationToken::drop_guard),
        });
        // Connect to every Redis now, so the first subscribe does not wait for it.
        for shard in subs.redis.shards() {
            subs.of_shard(&shard);
        }
        if let Some(stop) = stop {
            tokio::spawn(rebalance_loop(Arc::downgrade(&subs), stop));
        }
        subs
    }

    /// The connection to the Redis serving `channel` now.
    pub(super) fn of(&self, channel: &str) -> Arc<ChannelSubscriber> {
        self.of_shard(&self.redis.shard_for(channel))
    }

    fn of_shard(&self, shard: &Shard) -> Arc<ChannelSubscriber> {
        let mut by = self.by_shard.lock();
        if let Some(s) = by.get(&shard.name) {
            return s.clone();
        }
        let handler = self.dispatch.clone() as Arc<dyn PubSubHandler>;
        let timeout = self.redis.timeout;
        let s = Arc::new(
            match (self.redis.is_cluster(), Endpoint::of(&shard.client)) {
                (true, Some(ep)) => ChannelSubscriber::Sharded(ShardedSubscriber::start(
                    ep, timeout, "broker", handler,
                )),
                // Cluster masters are always host:port (`cluster::topology` checks).
                _ => ChannelSubscriber::Plain(Subscriber::start(
                    {
                        let client = shard.client.clone();
                        Box::new(move || client.clone())
                    },
                    timeout,
                    "broker",
                    handler,
                )),
            },
        );
        by.insert(shard.name.clone(), s.clone());
        s
    }

    /// Moves every sharded subscription whose channel another master serves now.
    async fn rebalance(&self) {
        let current: Vec<(String, Arc<ChannelSubscriber>)> = self
            .by_shard
            .lock()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for (name, old) in current {
            for redis_channel in old.wanted() {
                let Some(channel) = self.dispatch.channel(&redis_channel) else {
                    continue;
                };
                let shard = self.redis.shard_for(channel);
                if shard.name == name {
                    continue;
                }
                let new = self.of_shard(&shard);
                if let Err(e) = new.subscribe(&redis_channel).await {
                    tracing::warn!(cause = %e, channel, to = %shard.name, "moving a subscription failed; retrying");
                    continue;
                }
                let _ = old.unsubscribe(&redis_channel).await;
                tracing::info!(channel, from = %name, to = %shard.name, "subscription moved to the slot's new master");
                self.dispatch.on_interrupted(&[redis_channel]);
            }
        }
    }
}

async fn rebalance_loop(subs: Weak<Subscribers>, stop: CancellationToken) {
    let mut changes = match subs.upgrade() {
        Some(s) => s.redis.topology_changes(),
        None => return,
    };
    let mut tick = tokio::time::interval(RECHECK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            r = changes.changed() => if r.is_err() { return },
            _ = tick.tick() => {}
        }
        let Some(s) = subs.upgrade() else {
            return;
        };
        s.rebalance().await;
    }
}
