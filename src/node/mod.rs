//! The node: local subscriptions, the one publish path, and the fan-out.
//!
//! Gateway, server API and Kafka ingest call the node; the node calls the
//! broker and presence traits. It never touches a socket: it pushes pre-encoded frames
//! into each connection's bounded queue ([`conn::ConnHandle`]).
//!
//! In cluster mode (a broker that [spans nodes](Broker::spans_nodes)) the node also
//! orders each channel's first/last-subscriber transitions ([`locks`]), runs observers
//! where it publishes, sequences persisted channels through the broker ([`sequenced`])
//! and reaches the other nodes through a [`cluster::ClusterLink`].

pub mod channels;
pub mod cluster;
pub mod conn;
pub mod locks;
pub mod mailbox;
pub mod observer;
pub mod registry;
pub mod revocation;
mod sequenced;

use std::cell::OnceCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Instant;

use bytes::Bytes;

use crate::broker::{Broker, BrokerError, BrokerEventHandler, HistoryFilter, HistoryOptions};
use crate::config::{ChannelOptions, Config};
use crate::metrics as m;
use crate::presence::{PresenceError, PresenceManager, PresenceStats};
use crate::protocol::codec::encode_reply;
use crate::protocol::codes::{self, ErrorCode};
use crate::protocol::messages::{
    ClientInfo, Join, Leave, Publication, Push, Reply, StreamPosition,
};
use crate::protocol::Format;
use crate::store::{Append, ConversationStore, MessageStore, Retention, StoreError};

use channels::{ChannelError, ChannelRules};
use cluster::ClusterLink;
use conn::{ConnHandle, Control, Disconnect, Outbound};
use registry::{Registry, Subscriber};

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("unknown channel")]
    UnknownChannel,
    #[error("bad channel name")]
    BadChannel,
    #[error("not available for this channel")]
    NotAvailable,
    /// The publication is larger than the namespace's `max_publication_size`.
    #[error("publication too large")]
    TooLarge,
    #[error(transparent)]
    Broker(#[from] BrokerError),
    #[error(transparent)]
    Presence(#[from] PresenceError),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The namespace needs the durable store, which is not open.
    #[error("store not configured")]
    NoStore,
    /// Another node could not be reached (cluster mode).
    #[error("cluster unavailable: {0}")]
    Cluster(String),
}

impl NodeError {
    /// The protocol error a client or API caller sees.
    pub fn code(&self) -> ErrorCode {
        match self {
            NodeError::UnknownChannel => codes::ERROR_UNKNOWN_CHANNEL,
            NodeError::BadChannel => codes::ERROR_BAD_REQUEST,
            NodeError::NotAvailable => codes::ERROR_NOT_AVAILABLE,
            NodeError::TooLarge => codes::ERROR_LIMIT_EXCEEDED,
            NodeError::Broker(BrokerError::UnrecoverablePosition)
            | NodeError::Store(StoreError::UnrecoverablePosition) => {
                codes::ERROR_UNRECOVERABLE_POSITION
            }
            NodeError::Broker(BrokerError::Unavailable(_))
            | NodeError::Presence(_)
            | NodeError::Store(StoreError::Unavailable(_))
            | NodeError::NoStore
            | NodeError::Cluster(_) => codes::ERROR_INTERNAL,
        }
    }
}

/// Every publish path (client, server API, Kafka ingest) goes through here, so the
/// namespace's limit holds whatever the source.
fn check_publication_size(options: &ChannelOptions, data: &[u8]) -> Result<(), NodeError> {
    let max = options.max_publication_size;
    if max > 0 && data.len() > max {
        metrics::counter!(crate::metrics::LIMIT_REJECTIONS_TOTAL, "limit" => "publication_size")
            .increment(1);
        return Err(NodeError::TooLarge);
    }
    Ok(())
}

impl From<ChannelError> for NodeError {
    fn from(e: ChannelError) -> Self {
        match e {
            ChannelError::Unknown => NodeError::UnknownChannel,
            ChannelError::BadRequest => NodeError::BadChannel,
        }
    }
}

/// What a publish carries besides the channel and data.
#[derive(Debug, Clone, Default)]
pub struct PublishOptions {
    pub info: Option<ClientInfo>,
    pub tags: HashMap<String, String>,
    pub skip_history: bool,
    /// A retry with the same key (within `store.idempotency_window`) gets the
    /// original's position back; honoured for persisted namespaces.
    pub idempotency_key: Option<String>,
}

/// The durable store's two faces, when one is open.
#[derive(Clone)]
pub struct Stores {
    pub messages: Arc<dyn MessageStore>,
    pub conversations: Arc<dyn ConversationStore>,
}

/// What the `info` API shows of a node (also what nodes publish to each other).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct NodeInfo {
    pub uid: String,
    pub name: String,
    pub version: String,
    pub num_clients: usize,
    pub num_users: usize,
    pub num_channels: usize,
    pub num_subs: usize,
    pub uptime_secs: u64,
}

/// Cheap-clone handle to the node's shared state.
#[derive(Clone)]
pub struct Node {
    shared: Arc<Shared>,
}

struct Shared {
    config: Arc<Config>,
    rules: ChannelRules,
    registry: Registry,
    broker: Arc<dyn Broker>,
    presence: Arc<dyn PresenceManager>,
    store: Option<Stores>,
    /// Kafka egress, push fallback. Read on every publication, written at start-up.
    observers: parking_lot::RwLock<Vec<Arc<dyn observer::PublicationObserver>>>,
    /// The broker spans nodes (cluster mode): other nodes' publications arrive through
    /// the handler, so observers run where a publication is published instead.
    spans_nodes: bool,
    /// Cluster mode: orders each channel's first/last-subscriber transitions.
    sub_locks: Option<locks::ChannelLocks>,
    /// Cluster mode: the other nodes; set once at start-up.
    cluster: OnceLock<Arc<dyn ClusterLink>>,
    /// Revoked token ids and per-user "issued before" times.
    revocations: revocation::Revocations,
    uid: String,
    name: String,
    started: Instant,
    next_seq: AtomicU64,
    /// Registered once: a lookup per publication showed in the broadcast profile.
    deliveries: metrics::Counter,
}

impl Node {
    pub fn new(
        config: Arc<Config>,
        broker: Arc<dyn Broker>,
        presence: Arc<dyn PresenceManager>,
        store: Option<Stores>,
    ) -> Node {
        let name = std::env::var("HOSTNAME").unwrap_or_else(|_| "herald".to_string());
        let spans_nodes = broker.spans_nodes();
        let shared = Arc::new(Shared {
            rules: ChannelRules::new(&config),
            config,
            registry: Registry::default(),
            broker,
            presence,
            store,
            observers: parking_lot::RwLock::new(Vec::new()),
            spans_nodes,
            sub_locks: spans_nodes.then(locks::ChannelLocks::default),
            cluster: OnceLock::new(),
            revocations: revocation::Revocations::default(),
            uid: uuid::Uuid::new_v4().to_string(),
            name,
            started: Instant::now(),
            next_seq: AtomicU64::new(1),
            deliveries: metrics::counter!(m::DELIVERIES_TOTAL),
        });
        let as_handler: Arc<dyn BrokerEventHandler> = shared.clone();
        let weak: Weak<dyn BrokerEventHandler> = Arc::downgrade(&as_handler);
        shared.broker.set_handler(weak.clone());
        if let Some(store) = &shared.store {
            store.messages.set_handler(weak);
        }
        Node { shared }
    }

    /// Connects the node to the other nodes (cluster mode); called once at start-up.
    pub fn set_cluster(&self, link: Arc<dyn ClusterLink>) {
        let _ = self.shared.cluster.set(link);
    }

    /// Adds an observer of every publication (see [`observer::PublicationObserver`]).
    pub fn add_observer(&self, o: Arc<dyn observer::PublicationObserver>) {
        self.shared.observers.write().push(o);
    }

    /// Whether one of `user`'s connections on this node is subscribed to `channel`
    /// (the push fallback skips users who got the publication live).
    pub fn user_subscribed_locally(&self, user: &str, channel: &str) -> bool {
        self.shared.registry.user_subscribed(user, channel)
    }

    pub fn config(&self) -> &Config {
        &self.shared.config
    }

    pub fn uid(&self) -> &str {
        &self.shared.uid
    }

    pub fn options(&self, channel: &str) -> Result<&ChannelOptions, NodeError> {
        Ok(self.shared.rules.options(channel)?)
    }

    pub fn next_seq(&self) -> u64 {
        self.shared.next_seq.fetch_add(1, Ordering::Relaxed)
    }

    /// Registers a connection; false if its user is at `client.max_connections_per_user`
    /// (counted by the presence backend: per process, or cluster-wide on Redis).
    pub async fn add_conn(&self, conn: Arc<ConnHandle>) -> bool {
        if self.counts_connections(&conn) {
            let limit = self.shared.config.client.max_connections_per_user;
            match self
                .shared
                .presence
                .add_connection(&conn.user, &conn.client, limit)
                .await
            {
                Ok(true) => {}
                Ok(false) => return false,
                // Fail open: a presence outage must not lock every user out; the limit
                // guards against runaway clients, it is not an authorization.
                Err(e) => {
                    tracing::warn!(cause = %e, "connection count unavailable; connection allowed")
                }
            }
        }
        self.shared.registry.add_conn(conn);
        metrics::gauge!(m::CONNECTIONS).increment(1.0);
        true
    }

    pub fn remove_conn(&self, conn: &ConnHandle) {
        self.shared.registry.remove_conn(conn);
        metrics::gauge!(m::CONNECTIONS).decrement(1.0);
        if self.counts_connections(conn) {
            let presence = self.shared.presence.clone();
            let (user, client) = (conn.user.clone(), conn.client.clone());
            // Not awaited: the session is ending. A failure heals when the entry
            // expires (cluster mode) and is impossible in memory.
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move {
                    if let Err(e) = presence.remove_connection(&user, &client).await {
                        tracing::debug!(cause = %e, "connection count removal failed");
                    }
                });
            }
        }
    }

    fn counts_connections(&self, conn: &ConnHandle) -> bool {
        self.shared.config.client.max_connections_per_user > 0 && !conn.user.is_empty()
    }

    /// Adds a local subscriber; the broker is subscribed on the channel's first one
    /// (and, in cluster mode, this returns only once that subscription is active).
    pub async fn subscribe(&self, channel: &str, sub: Subscriber) -> Result<(), NodeError> {
        let _ordered = match &self.shared.sub_locks {
            Some(l) => Some(l.lock(channel).await),
            None => None,
        };
        let seq = sub.conn.seq;
        if self.shared.registry.add_sub(channel, sub) {
            if let Err(e) = self.shared.broker.subscribe(channel).await {
                self.shared.registry.remove_sub(channel, seq);
                return Err(e.into());
            }
        }
        metrics::gauge!(m::SUBSCRIPTIONS).increment(1.0);
        Ok(())
    }

    pub async fn unsubscribe(&self, channel: &str, seq: u64) {
        let _ordered = match &self.shared.sub_locks {
            Some(l) => Some(l.lock(channel).await),
            None => None,
        };
        metrics::gauge!(m::SUBSCRIPTIONS).decrement(1.0);
        if self.shared.registry.remove_sub(channel, seq) {
            if let Err(e) = self.shared.broker.unsubscribe(channel).await {
                tracing::warn!(cause = %e, channel, "broker unsubscribe failed");
            }
        }
    }

    /// The single publish path for clients, the server API and ingest.
    pub async fn publish(
        &self,
        channel: &str,
        data: Bytes,
        opts: PublishOptions,
    ) -> Result<StreamPosition, NodeError> {
        let options = self.shared.rules.options(channel)?;
        check_publication_size(options, &data)?;
        let publication = Publication {
            data,
            info: opts.info,
            tags: opts.tags,
            ..Default::default()
        };
        if options.persist {
            if let Some(seq) = self.shared.broker.sequencer() {
                return self
                    .publish_sequenced(
                        seq,
                        channel,
                        publication,
                        options,
                        opts.idempotency_key.as_deref(),
                    )
                    .await;
            }
            // The store sequences, commits, then hands the publication to the fan-out.
            let append = Append {
                channel: channel.to_string(),
                publication,
                idempotency_key: opts.idempotency_key,
                retention: Retention {
                    max_age: options.history_max_age,
                    max_count: options.history_max_count,
                },
            };
            return Ok(self.stores()?.messages.append(append).await?.position);
        }
        let history = if opts.skip_history {
            HistoryOptions::default()
        } else {
            HistoryOptions {
                size: options.history_size,
                ttl: options.history_ttl,
            }
        };
        let observed = self.shared.observe_here().then(|| publication.clone());
        let pos = self
            .shared
            .broker
            .publish(channel, publication, history)
            .await?;
        if let Some(mut p) = observed {
            p.offset = pos.offset;
            self.shared
                .notify_observers(channel, &Arc::new(p), &pos.epoch);
        }
        Ok(pos)
    }

    /// An event delivered to current subscribers only: not stored, no offset (typing
    /// indicators, read receipts). SDKs ignore offset 0 for their position tracking.
    pub async fn publish_ephemeral(
        &self,
        channel: &str,
        data: Bytes,
        info: Option<ClientInfo>,
    ) -> Result<(), NodeError> {
        check_publication_size(self.shared.rules.options(channel)?, &data)?;
        let publication = Publication {
            data,
            info,
            ..Default::default()
        };
        let observed = self.shared.observe_here().then(|| publication.clone());
        self.shared
            .broker
            .publish(channel, publication, HistoryOptions::default())
            .await?;
        if let Some(p) = observed {
            self.shared.notify_observers(channel, &Arc::new(p), "");
        }
        Ok(())
    }

    fn stores(&self) -> Result<&Stores, NodeError> {
        self.shared.store.as_ref().ok_or(NodeError::NoStore)
    }

    /// The conversation store, for membership and read markers.
    pub fn conversations(&self) -> Result<&Arc<dyn ConversationStore>, NodeError> {
        Ok(&self.stores()?.conversations)
    }

    /// Whether `user` belongs to the conversation `channel`: named in a user-limited
    /// channel, or a stored member.
    pub async fn is_member(&self, channel: &str, user: &str) -> Result<bool, NodeError> {
        if user.is_empty() {
            return Ok(false);
        }
        if let Some(allowed) = channels::user_limited_allows(channel, user) {
            return Ok(allowed);
        }
        Ok(self.conversations()?.is_member(channel, user).await?)
    }

    /// The user's conversations (memberships and DMs of every `members` namespace)
    /// with tops, read markers, unread counts and last messages.
    pub async fn user_conversations(
        &self,
        user: &str,
    ) -> Result<Vec<crate::store::ConversationSummary>, NodeError> {
        let store = self.conversations()?;
        let mut dms = Vec::new();
        let cfg = &self.shared.config;
        for ns in cfg.namespaces.iter().filter(|n| n.options.members) {
            dms.extend(store.dm_channels(user, &format!("{}:", ns.name)).await?);
        }
        Ok(store.conversations(user, &dms).await?)
    }

    /// Publications after `since`, for a resubscribing client; an error when the gap
    /// cannot be filled (too old, other epoch, or longer than `store.max_recovery`).
    pub async fn recover(
        &self,
        channel: &str,
        since: StreamPosition,
    ) -> Result<(Vec<Publication>, StreamPosition), NodeError> {
        let options = self.shared.rules.options(channel)?;
        if options.persist {
            if let Some(seq) = self.shared.broker.sequencer() {
                return self.recover_sequenced(seq, channel, since).await;
            }
            let max = self.shared.config.store.max_recovery;
            let filter = HistoryFilter {
                since: Some(since),
                limit: Some(max + 1),
                reverse: false,
            };
            let (pubs, top) = self.stores()?.messages.history(channel, filter).await?;
            if pubs.len() > max {
                return Err(StoreError::UnrecoverablePosition.into());
            }
            return Ok((pubs, top));
        }
        if !options.history_enabled() {
            return Err(NodeError::NotAvailable);
        }
        let filter = HistoryFilter {
            since: Some(since),
            limit: None,
            reverse: false,
        };
        Ok(self.shared.broker.history(channel, filter).await?)
    }

    pub async fn history(
        &self,
        channel: &str,
        filter: HistoryFilter,
    ) -> Result<(Vec<Publication>, StreamPosition), NodeError> {
        let options = self.shared.rules.options(channel)?;
        if options.persist {
            if let (Some(seq), Some(0)) = (self.shared.broker.sequencer(), filter.limit) {
                // The position: the sequencer's, which may be ahead of the store's by
                // publications still being stored.
                return self.recent_sequenced(seq, channel, filter).await;
            }
            let max = self.shared.config.store.max_history_page;
            let filter = HistoryFilter {
                limit: Some(filter.limit.unwrap_or(max).min(max)),
                ..filter
            };
            return Ok(self.stores()?.messages.history(channel, filter).await?);
        }
        if !options.history_enabled() {
            return Err(NodeError::NotAvailable);
        }
        Ok(self.shared.broker.history(channel, filter).await?)
    }

    pub async fn remove_history(&self, channel: &str) -> Result<(), NodeError> {
        if self.shared.rules.options(channel)?.persist {
            self.stores()?.messages.remove_history(channel).await?;
            if self.shared.broker.sequencer().is_some() {
                // The recent stream too, or recovery would still return what was removed.
                self.shared.broker.remove_history(channel).await?;
            }
            return Ok(());
        }
        Ok(self.shared.broker.remove_history(channel).await?)
    }

    /// False when the channel already holds `limit` clients (0 = no limit).
    pub async fn add_presence(
        &self,
        channel: &str,
        info: ClientInfo,
        limit: usize,
    ) -> Result<bool, NodeError> {
        Ok(self.shared.presence.add(channel, info, limit).await?)
    }

    pub async fn remove_presence(&self, channel: &str, client: &str) -> Result<(), NodeError> {
        Ok(self.shared.presence.remove(channel, client).await?)
    }

    pub async fn presence(&self, channel: &str) -> Result<HashMap<String, ClientInfo>, NodeError> {
        if !self.shared.rules.options(channel)?.presence {
            return Err(NodeError::NotAvailable);
        }
        Ok(self.shared.presence.presence(channel).await?)
    }

    pub async fn presence_stats(&self, channel: &str) -> Result<PresenceStats, NodeError> {
        if !self.shared.rules.options(channel)?.presence {
            return Err(NodeError::NotAvailable);
        }
        Ok(self.shared.presence.stats(channel).await?)
    }

    pub async fn join(&self, channel: &str, info: ClientInfo) -> Result<(), NodeError> {
        Ok(self.shared.broker.publish_join(channel, info).await?)
    }

    pub async fn leave(&self, channel: &str, info: ClientInfo) -> Result<(), NodeError> {
        Ok(self.shared.broker.publish_leave(channel, info).await?)
    }

    /// Asks every connection to go away (graceful shutdown).
    pub fn disconnect_all(&self, d: Disconnect) {
        for conn in self.shared.registry.all_conns() {
            conn.disconnect(d.clone());
        }
    }

    pub fn num_conns(&self) -> usize {
        self.shared.registry.num_conns()
    }

    pub fn channels(&self) -> Vec<(String, usize)> {
        self.shared.registry.channels()
    }

    pub fn info(&self) -> NodeInfo {
        let r = &self.shared.registry;
        NodeInfo {
            uid: self.shared.uid.clone(),
            name: self.shared.name.clone(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            num_clients: r.num_conns(),
            num_users: r.num_users(),
            num_channels: r.num_channels(),
            num_subs: r.num_subs(),
            uptime_secs: self.shared.started.elapsed().as_secs(),
        }
    }
}

/// A push encoded at most once per wire format, whatever the number of subscribers.
struct Prepared {
    reply: Reply,
    json: OnceCell<Bytes>,
    protobuf: OnceCell<Bytes>,
}

impl Prepared {
    fn new(push: Push) -> Self {
        Prepared {
            reply: Reply {
                push: Some(push),
                ..Default::default()
            },
            json: OnceCell::new(),
            protobuf: OnceCell::new(),
        }
    }

    fn frame(&self, format: Format) -> Bytes {
        let cell = match format {
            Format::Json => &self.json,
            Format::Protobuf => &self.protobuf,
        };
        cell.get_or_init(|| encode_reply(format, &self.reply))
            .clone()
    }
}

impl Shared {
    /// Whether the publishing code (not the fan-out) runs the observers: in cluster
    /// mode, so that each publication is observed once, on the node that published it.
    fn observe_here(&self) -> bool {
        self.spans_nodes && !self.observers.read().is_empty()
    }

    fn notify_observers(&self, channel: &str, publication: &Arc<Publication>, epoch: &str) {
        for o in self.observers.read().iter() {
            o.on_publication(channel, publication, epoch);
        }
    }
}

impl BrokerEventHandler for Shared {
    fn handle_publication(&self, channel: &str, publication: Arc<Publication>, epoch: &str) {
        let offset = publication.offset;
        let prepared = Prepared::new(Push {
            channel: channel.to_string(),
            publication: Some(Publication::clone(&publication)),
            ..Default::default()
        });
        let now = Instant::now();
        let n = self.registry.for_each_sub(channel, |name, sub| {
            sub.conn.deliver(Outbound::Pub {
                channel: name.clone(),
                offset,
                frame: prepared.frame(sub.conn.format),
                published: now,
            });
        });
        self.deliveries.increment(n as u64);
        if !self.spans_nodes {
            self.notify_observers(channel, &publication, epoch);
        }
    }

    fn handle_interrupted(&self, channel: &str) {
        let n = self.registry.for_each_sub(channel, |name, sub| {
            sub.conn.control(Control::Recover {
                channel: name.to_string(),
            });
        });
        if n > 0 {
            tracing::debug!(
                channel,
                subscribers = n,
                "delivery interrupted: subscribers told to recover"
            );
        }
    }

    fn handle_join(&self, channel: &str, info: ClientInfo) {
        let prepared = Prepared::new(Push {
            channel: channel.to_string(),
            join: Some(Join { info: Some(info) }),
            ..Default::default()
        });
        self.registry.for_each_sub(channel, |_, sub| {
            if sub.join_leave {
                sub.conn
                    .deliver(Outbound::Frame(prepared.frame(sub.conn.format)));
            }
        });
    }

    fn handle_leave(&self, channel: &str, info: ClientInfo) {
        let prepared = Prepared::new(Push {
            channel: channel.to_string(),
            leave: Some(Leave { info: Some(info) }),
            ..Default::default()
        });
        self.registry.for_each_sub(channel, |_, sub| {
            if sub.join_leave {
                sub.conn
                    .deliver(Outbound::Frame(prepared.frame(sub.conn.format)));
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::memory::MemoryBroker;
    use crate::presence::memory::MemoryPresence;

    #[derive(Default)]
    struct Seen(parking_lot::Mutex<Vec<(String, u64, String)>>);

    impl observer::PublicationObserver for Seen {
        fn on_publication(&self, channel: &str, p: &Arc<Publication>, epoch: &str) {
            self.0
                .lock()
                .push((channel.to_string(), p.offset, epoch.to_string()));
        }
    }

    #[tokio::test]
    async fn observers_see_every_publication_with_its_position() {
        let config = Arc::new(Config::load_from(None, "t", vec![]).unwrap());
        let node = Node::new(
            config,
            Arc::new(MemoryBroker::new()),
            Arc::new(MemoryPresence::default()),
            None,
        );
        let seen = Arc::new(Seen::default());
        node.add_observer(seen.clone());
        let a = node
            .publish("news", Bytes::from_static(b"{}"), PublishOptions::default())
            .await
            .unwrap();
        let b = node
            .publish("news", Bytes::from_static(b"{}"), PublishOptions::default())
            .await
            .unwrap();
        node.publish_ephemeral("news", Bytes::from_static(b"{}"), None)
            .await
            .unwrap();
        let got = seen.0.lock().clone();
        assert_eq!(
            got,
            vec![
                ("news".to_string(), a.offset, a.epoch.clone()),
                ("news".to_string(), b.offset, b.epoch),
                ("news".to_string(), 0, String::new()),
            ]
        );
    }

    /// Cluster mode: the subscriber on node B gets node A's publication, and only node
    /// A (the publisher) runs the observers.
    #[tokio::test]
    async fn cluster_mode_observes_each_publication_once_where_published() {
        let redis = crate::cluster::testing::RedisServer::start();
        let node = |url: String| async move {
            let config = Arc::new(
                Config::load_from(
                    Some("[broker]\nkind = \"redis\"\n"),
                    "t",
                    vec![("HERALD_BROKER__REDIS_URL".to_string(), url)],
                )
                .unwrap(),
            );
            let conns = crate::cluster::redis::Redis::connect(&config.broker)
                .await
                .unwrap();
            let broker =
                crate::broker::redis::RedisBroker::new(conns, std::time::Duration::from_secs(60));
            Node::new(
                config,
                Arc::new(broker),
                Arc::new(MemoryPresence::default()),
                None,
            )
        };
        let (a, b) = (node(redis.url()).await, node(redis.url()).await);
        let (seen_a, seen_b) = (Arc::new(Seen::default()), Arc::new(Seen::default()));
        a.add_observer(seen_a.clone());
        b.add_observer(seen_b.clone());
        let (conn, mut rx) = ConnHandle::new(1, "c".into(), "u".into(), Format::Json, 16);
        b.subscribe(
            "news",
            Subscriber {
                conn,
                join_leave: false,
            },
        )
        .await
        .unwrap();
        let pos = a
            .publish("news", Bytes::from_static(b"{}"), PublishOptions::default())
            .await
            .unwrap();
        let delivered = tokio::time::timeout(std::time::Duration::from_secs(5), rx.queue.recv())
            .await
            .unwrap();
        assert!(matches!(delivered, Some(Outbound::Pub { offset: 1, .. })));
        assert_eq!(
            seen_a.0.lock().clone(),
            vec![("news".to_string(), pos.offset, pos.epoch)]
        );
        assert!(seen_b.0.lock().is_empty(), "observed once, where published");
    }

    /// A broker whose subscribe and unsubscribe take a random while before they take
    /// effect, like a Redis round trip, and that spans nodes (so the node orders them).
    #[derive(Default)]
    struct SlowBroker {
        inner: MemoryBroker,
        subscribed: parking_lot::Mutex<HashMap<String, bool>>,
    }

    async fn jitter() {
        let us = rand::random::<u64>() % 500;
        tokio::time::sleep(std::time::Duration::from_micros(us)).await;
    }

    #[async_trait::async_trait]
    impl Broker for SlowBroker {
        fn set_handler(&self, h: Weak<dyn BrokerEventHandler>) {
            self.inner.set_handler(h)
        }
        async fn publish(
            &self,
            c: &str,
            p: Publication,
            h: HistoryOptions,
        ) -> Result<StreamPosition, BrokerError> {
            self.inner.publish(c, p, h).await
        }
        async fn publish_join(&self, c: &str, i: ClientInfo) -> Result<(), BrokerError> {
            self.inner.publish_join(c, i).await
        }
        async fn publish_leave(&self, c: &str, i: ClientInfo) -> Result<(), BrokerError> {
            self.inner.publish_leave(c, i).await
        }
        async fn subscribe(&self, c: &str) -> Result<(), BrokerError> {
            jitter().await;
            self.subscribed.lock().insert(c.to_string(), true);
            Ok(())
        }
        async fn unsubscribe(&self, c: &str) -> Result<(), BrokerError> {
            jitter().await;
            self.subscribed.lock().insert(c.to_string(), false);
            Ok(())
        }
        async fn history(
            &self,
            c: &str,
            f: HistoryFilter,
        ) -> Result<(Vec<Publication>, StreamPosition), BrokerError> {
            self.inner.history(c, f).await
        }
        async fn remove_history(&self, c: &str) -> Result<(), BrokerError> {
            self.inner.remove_history(c).await
        }
        fn spans_nodes(&self) -> bool {
            true
        }
    }

    /// Cluster mode: first/last-subscriber transitions racing on one channel never leave
    /// it unsubscribed in the broker while it has a local subscriber, and a subscriber
    /// returns only once the channel is subscribed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn racing_first_and_last_subscribers_keep_the_channel_subscribed() {
        let broker = Arc::new(SlowBroker::default());
        let config = Arc::new(Config::load_from(None, "t", vec![]).unwrap());
        let node = Node::new(
            config,
            broker.clone(),
            Arc::new(MemoryPresence::default()),
            None,
        );
        let sub = |seq: u64| {
            let (conn, _rx) = ConnHandle::new(seq, "c".into(), "u".into(), Format::Json, 4);
            Subscriber {
                conn,
                join_leave: false,
            }
        };
        let mut tasks = Vec::new();
        for t in 0..16u64 {
            let (node, broker) = (node.clone(), broker.clone());
            tasks.push(tokio::spawn(async move {
                for round in 0..20u64 {
                    let seq = t * 100 + round;
                    node.subscribe("race", sub(seq)).await.unwrap();
                    let active = broker.subscribed.lock().get("race").copied();
                    assert_eq!(active, Some(true), "subscribed before subscribe returns");
                    node.unsubscribe("race", seq).await;
                }
            }));
        }
        node.subscribe("race", sub(1_000_000)).await.unwrap();
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(broker.subscribed.lock().get("race").copied(), Some(true));
        assert!(node.shared.sub_locks.as_ref().is_some_and(|l| l.is_empty()));
    }
}
