//! Cluster mode over Redis (`broker.kind = "redis"`): what makes several nodes behind a
//! load balancer behave as one hub, besides the broker and presence backends.
//!
//! - [`redis`]: the Redis connections (one or several, channels spread by consistent
//!   hashing, or the masters of a Redis Cluster), shared by the broker, presence and
//!   this module;
//! - [`slots`]: Redis Cluster hash slots and the hash-tagged key names; [`topology`]
//!   follows which master serves each slot;
//! - [`pubsub`]: a pub/sub connection that resubscribes after a Redis restart and
//!   reports what may have been missed; [`spubsub`] the same for sharded pub/sub
//!   (`SSUBSCRIBE`) on a Redis Cluster master;
//! - node registry: each node writes its [`NodeInfo`] to Redis every
//!   `broker.node_heartbeat` with a TTL of `broker.node_ttl`; `info` lists every node
//!   whose registration is live;
//! - control channel: server API user commands (`disconnect`, `subscribe`,
//!   `unsubscribe`, `refresh`) are applied by the node that received them and published
//!   on `<prefix>:control`, where every other node applies them to the user's
//!   connections it holds; token revocations travel the same way and are also kept in
//!   a zset scored by expiry, which a starting node loads;
//! - reconciler: every `broker.reconcile_interval` each node copies into the store the
//!   persisted publications Redis sequenced but no node confirmed storing
//!   ([`Node::reconcile_once`]).
//!
//! Calls go one way: this module calls the node (it applies commands, reads its
//! figures); the node reaches the other nodes only through the small
//! [`ClusterLink`] trait it defines.

pub mod pubsub;
pub mod rate;
pub mod redis;
pub mod slots;
pub mod spubsub;
pub mod testing;
pub mod topology;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::config::BrokerConfig;
use crate::metrics as m;
use crate::node::cluster::{ClusterLink, UserCommand};
use crate::node::revocation::Revocation;
use crate::node::{Node, NodeError, NodeInfo};
use pubsub::{PubSubHandler, Subscriber};
use redis::{now_ms, Redis, RedisFailure};

/// A control-channel message: a user command or a token revocation.
#[derive(Serialize, Deserialize)]
struct ControlMessage {
    /// The sending node's uid: it applied the command itself already.
    from: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cmd: Option<UserCommand>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    revoke: Option<Revocation>,
}

/// The node's view of the others, handed to the node as its [`ClusterLink`].
struct Link {
    redis: Arc<Redis>,
    uid: String,
    node_ttl: Duration,
}

impl Link {
    fn nodes_key(&self) -> String {
        self.redis.node_key("nodes")
    }
    fn node_key(&self, uid: &str) -> String {
        self.redis.node_key(&format!("node:{uid}"))
    }
    fn control_channel(&self) -> String {
        format!("{}:control", self.redis.prefix)
    }
    /// Token revocations: a zset of revocation JSON scored by expiry (unix seconds,
    /// `+inf` for none), so a node that starts later loads the ones still in force. A
    /// node-level key: in Redis Cluster mode it shares the slot of [`Redis::first`],
    /// the connection it is read and written through.
    fn revocations_key(&self) -> String {
        self.redis.node_key("revocations")
    }

    /// Loads every revocation still in force into the node (start, and after the control
    /// connection was interrupted); drops expired ones from Redis on the way.
    async fn load_revocations(&self, node: &Node) -> Result<usize, RedisFailure> {
        let key = self.revocations_key();
        let now = crate::auth::now_unix();
        let mut pipe = ::redis::pipe();
        pipe.cmd("ZREMRANGEBYSCORE")
            .arg(&key)
            .arg("-inf")
            .arg(now)
            .ignore()
            .cmd("ZRANGE")
            .arg(&key)
            .arg(0)
            .arg(-1);
        let mut conn = self.redis.first().conn.clone();
        let (items,): (Vec<String>,) = self
            .redis
            .run("control", pipe.query_async(&mut conn))
            .await?;
        let mut n = 0;
        for item in items {
            match serde_json::from_str::<Revocation>(&item) {
                Ok(r) => {
                    node.apply_revocation(&r);
                    n += 1;
                }
                Err(e) => tracing::warn!(cause = %e, "undecodable revocation in redis ignored"),
            }
        }
        Ok(n)
    }

    /// Writes this node's registration; returns how many nodes are live.
    async fn heartbeat(&self, info: &NodeInfo) -> Result<i64, RedisFailure> {
        let json = serde_json::to_string(info).map_err(|e| RedisFailure::Reply(e.to_string()))?;
        let now = now_ms();
        let ttl = self.node_ttl.as_millis() as i64;
        let mut pipe = ::redis::pipe();
        pipe.cmd("SET")
            .arg(self.node_key(&self.uid))
            .arg(json)
            .arg("PX")
            .arg(ttl)
            .ignore()
            .cmd("ZADD")
            .arg(self.nodes_key())
            .arg(now + ttl)
            .arg(&self.uid)
            .ignore()
            .cmd("ZREMRANGEBYSCORE")
            .arg(self.nodes_key())
            .arg("-inf")
            .arg(format!("({now}"))
            .ignore()
            .cmd("ZCARD")
            .arg(self.nodes_key());
        let mut conn = self.redis.first().conn.clone();
        let (live,): (i64,) = self
            .redis
            .run("heartbeat", pipe.query_async(&mut conn))
            .await?;
        Ok(live)
    }

    /// Publishes a control message to every node (the sender skips its own).
    async fn publish_control(&self, msg: ControlMessage) -> Result<(), NodeError> {
        let json = serde_json::to_string(&msg).map_err(|e| NodeError::Cluster(e.to_string()))?;
        let mut conn = self.redis.first().conn.clone();
        let publish = ::redis::cmd("PUBLISH")
            .arg(self.control_channel())
            .arg(json)
            .to_owned();
        self.redis
            .run("control", publish.query_async::<i64>(&mut conn))
            .await
            .map_err(cluster_error)?;
        Ok(())
    }

    /// Removes this node's registration (graceful shutdown).
    async fn deregister(&self) -> Result<(), RedisFailure> {
        let mut pipe = ::redis::pipe();
        pipe.cmd("ZREM")
            .arg(self.nodes_key())
            .arg(&self.uid)
            .ignore()
            .cmd("DEL")
            .arg(self.node_key(&self.uid))
            .ignore();
        let mut conn = self.redis.first().conn.clone();
        self.redis
            .run("heartbeat", pipe.query_async::<()>(&mut conn))
            .await
    }
}

fn cluster_error(e: RedisFailure) -> NodeError {
    NodeError::Cluster(e.to_string())
}

#[async_trait]
impl ClusterLink for Link {
    async fn broadcast(&self, cmd: &UserCommand) -> Result<(), NodeError> {
        self.publish_control(ControlMessage {
            from: self.uid.clone(),
            cmd: Some(cmd.clone()),
            revoke: None,
        })
        .await
    }

    async fn broadcast_revocation(&self, r: &Revocation) -> Result<(), NodeError> {
        let json = serde_json::to_string(r).map_err(|e| NodeError::Cluster(e.to_string()))?;
        let expire_at = match r {
            Revocation::Token { expire_at, .. } | Revocation::User { expire_at, .. } => *expire_at,
        };
        let score = expire_at.map_or_else(|| "+inf".to_string(), |t| t.to_string());
        let mut conn = self.redis.first().conn.clone();
        let add = ::redis::cmd("ZADD")
            .arg(self.revocations_key())
            .arg(score)
            .arg(json)
            .to_owned();
        self.redis
            .run("control", add.query_async::<i64>(&mut conn))
            .await
            .map_err(cluster_error)?;
        self.publish_control(ControlMessage {
            from: self.uid.clone(),
            cmd: None,
            revoke: Some(r.clone()),
        })
        .await
    }

    async fn nodes(&self, me: NodeInfo) -> Result<Vec<NodeInfo>, NodeError> {
        let conn = self.redis.first().conn.clone();
        let live = ::redis::cmd("ZRANGEBYSCORE")
            .arg(self.nodes_key())
            .arg(format!("({}", now_ms()))
            .arg("+inf")
            .to_owned();
        let live = &live;
        let uids: Vec<String> = self
            .redis
            .run_retrying("control", || {
                let mut conn = conn.clone();
                async move { live.query_async(&mut conn).await }
            })
            .await
            .map_err(cluster_error)?;
        let mut conn = conn.clone();
        let others: Vec<&String> = uids.iter().filter(|u| **u != self.uid).collect();
        let mut out = vec![me];
        if !others.is_empty() {
            let mut get = ::redis::cmd("MGET");
            for u in &others {
                get.arg(self.node_key(u));
            }
            let infos: Vec<Option<String>> = self
                .redis
                .run("control", get.query_async(&mut conn))
                .await
                .map_err(cluster_error)?;
            // A registration that expired between the two reads is simply left out.
            out.extend(
                infos
                    .into_iter()
                    .flatten()
                    .filter_map(|j| serde_json::from_str::<NodeInfo>(&j).ok()),
            );
        }
        out.sort_by(|a, b| a.name.cmp(&b.name).then_with(|| a.uid.cmp(&b.uid)));
        Ok(out)
    }
}

/// Applies commands from other nodes to this node's connections.
struct ControlHandler {
    node: Node,
    link: Arc<Link>,
}

impl PubSubHandler for ControlHandler {
    fn on_message(&self, _channel: &str, payload: &[u8]) {
        match serde_json::from_slice::<ControlMessage>(payload) {
            Ok(msg) if msg.from == self.node.uid() => {}
            Ok(msg) => {
                if let Some(cmd) = &msg.cmd {
                    self.node.apply_user_command(cmd);
                }
                if let Some(r) = &msg.revoke {
                    self.node.apply_revocation(r);
                }
            }
            Err(e) => {
                metrics::counter!(m::REDIS_ERRORS_TOTAL, "op" => "decode").increment(1);
                tracing::warn!(cause = %e, "undecodable control message ignored");
            }
        }
    }

    fn on_interrupted(&self, _channels: &[String]) {
        // Commands other nodes sent while this connection was down (and Redis was
        // up) did not reach this node; their senders got no error.
        tracing::warn!("control channel interrupted: user commands sent meanwhile may not have reached this node");
        // Revocations are kept in Redis: read them again so none sent meanwhile is missed.
        let (node, link) = (self.node.clone(), self.link.clone());
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                if let Err(e) = link.load_revocations(&node).await {
                    tracing::warn!(cause = %e, "revocations not reloaded after the interruption");
                }
            });
        }
    }
}

/// The running cluster membership of one node; stop it with [`Cluster::stop`].
pub struct Cluster {
    link: Arc<Link>,
    stop: CancellationToken,
    /// Stops the control connection when dropped.
    _control: Subscriber,
}

impl Cluster {
    /// Joins the cluster: subscribes the control channel, registers the node (so that
    /// `info` lists it from the first request), connects the node to the others and
    /// starts the heartbeat and the reconciler.
    pub async fn start(
        node: Node,
        redis: Arc<Redis>,
        cfg: &BrokerConfig,
    ) -> Result<Cluster, RedisFailure> {
        zero_series();
        let link = Arc::new(Link {
            redis: redis.clone(),
            uid: node.uid().to_string(),
            node_ttl: cfg.node_ttl,
        });
        // Asked again at each reconnect: on a Redis Cluster the master holding the
        // node keys may have changed (any master receives a cluster-wide PUBLISH).
        let source = {
            let redis = redis.clone();
            Box::new(move || redis.first().client.clone())
        };
        let control = Subscriber::start(
            source,
            redis.timeout,
            "control",
            Arc::new(ControlHandler {
                node: node.clone(),
                link: link.clone(),
            }),
        );
        control.subscribe(&link.control_channel()).await?;
        // After subscribing: a revocation sent from now on arrives on the channel, and
        // every earlier one still in force is in Redis.
        let revoked = link.load_revocations(&node).await?;
        let live = link.heartbeat(&node.info()).await?;
        metrics::gauge!(m::CLUSTER_NODES).set(live as f64);
        node.set_cluster(link.clone());
        let stop = CancellationToken::new();
        tokio::spawn(heartbeat_loop(
            node.clone(),
            link.clone(),
            cfg.node_heartbeat,
            stop.clone(),
        ));
        tokio::spawn(reconcile_loop(node, cfg.reconcile_interval, stop.clone()));
        tracing::info!(
            redis = %redis.shards().iter().map(|s| s.name.as_str()).collect::<Vec<_>>().join(","),
            live,
            revoked,
            "joined the cluster"
        );
        Ok(Cluster {
            link,
            stop,
            _control: control,
        })
    }

    /// Stops the background tasks and removes the node's registration.
    pub async fn stop(self) {
        self.stop.cancel();
        if let Err(e) = self.link.deregister().await {
            tracing::warn!(cause = %e, "could not remove the node's registration; it expires");
        }
    }
}

async fn heartbeat_loop(node: Node, link: Arc<Link>, every: Duration, stop: CancellationToken) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => match link.heartbeat(&node.info()).await {
                Ok(live) => metrics::gauge!(m::CLUSTER_NODES).set(live as f64),
                Err(e) => tracing::warn!(cause = %e, "node heartbeat failed"),
            },
        }
    }
}

async fn reconcile_loop(node: Node, every: Duration, stop: CancellationToken) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {
                // Only publications older than one interval: younger ones are most
                // likely still being stored by their publisher.
                if let Err(e) = node.reconcile_once(every).await {
                    tracing::warn!(cause = %e, "reconciler pass failed; retrying next interval");
                }
            }
        }
    }
}

/// Cluster series exist from the start, at zero (alerts use `increase()`).
fn zero_series() {
    for op in [
        "publish",
        "history",
        "seed",
        "subscribe",
        "presence",
        "control",
        "heartbeat",
        "reconcile",
        "pubsub",
        "decode",
        "topology",
    ] {
        metrics::counter!(m::REDIS_ERRORS_TOTAL, "op" => op).increment(0);
    }
    for conn in ["broker", "control"] {
        metrics::counter!(m::REDIS_RECONNECTS_TOTAL, "conn" => conn).increment(0);
    }
    for result in ["copied", "lost"] {
        metrics::counter!(m::RECONCILED_TOTAL, "result" => result).increment(0);
    }
}
