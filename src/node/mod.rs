//! The node: local subscriptions, the one publish path, and the fan-out.
//!
//! Gateway, server API (and later Kafka ingest) call the node; the node calls the
//! broker and presence traits. It never touches a socket: it pushes pre-encoded frames
//! into each connection's bounded queue ([`conn::ConnHandle`]).

pub mod channels;
pub mod conn;
pub mod observer;
pub mod registry;

use std::cell::OnceCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
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
    #[error(transparent)]
    Broker(#[from] BrokerError),
    #[error(transparent)]
    Presence(#[from] PresenceError),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The namespace needs the durable store, which is not open.
    #[error("store not configured")]
    NoStore,
}

impl NodeError {
    /// The protocol error a client or API caller sees.
    pub fn code(&self) -> ErrorCode {
        match self {
            NodeError::UnknownChannel => codes::ERROR_UNKNOWN_CHANNEL,
            NodeError::BadChannel => codes::ERROR_BAD_REQUEST,
            NodeError::NotAvailable => codes::ERROR_NOT_AVAILABLE,
            NodeError::Broker(BrokerError::UnrecoverablePosition)
            | NodeError::Store(StoreError::UnrecoverablePosition) => {
                codes::ERROR_UNRECOVERABLE_POSITION
            }
            NodeError::Broker(BrokerError::Unavailable(_))
            | NodeError::Presence(_)
            | NodeError::Store(StoreError::Unavailable(_))
            | NodeError::NoStore => codes::ERROR_INTERNAL,
        }
    }
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

#[derive(Debug, Clone)]
pub struct NodeInfo {
    pub uid: String,
    pub name: String,
    pub version: &'static str,
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
    uid: String,
    name: String,
    started: Instant,
    next_seq: AtomicU64,
}

impl Node {
    pub fn new(
        config: Arc<Config>,
        broker: Arc<dyn Broker>,
        presence: Arc<dyn PresenceManager>,
        store: Option<Stores>,
    ) -> Node {
        let name = std::env::var("HOSTNAME").unwrap_or_else(|_| "herald".to_string());
        let shared = Arc::new(Shared {
            rules: ChannelRules::new(&config),
            config,
            registry: Registry::default(),
            broker,
            presence,
            store,
            observers: parking_lot::RwLock::new(Vec::new()),
            uid: uuid::Uuid::new_v4().to_string(),
            name,
            started: Instant::now(),
            next_seq: AtomicU64::new(1),
        });
        let as_handler: Arc<dyn BrokerEventHandler> = shared.clone();
        let weak: Weak<dyn BrokerEventHandler> = Arc::downgrade(&as_handler);
        shared.broker.set_handler(weak.clone());
        if let Some(store) = &shared.store {
            store.messages.set_handler(weak);
        }
        Node { shared }
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

    /// Registers a connection; false if its user is at the per-node connection limit.
    pub fn add_conn(&self, conn: Arc<ConnHandle>) -> bool {
        let ok = self
            .shared
            .registry
            .add_conn(conn, self.shared.config.client.max_connections_per_user);
        if ok {
            metrics::gauge!(m::CONNECTIONS).increment(1.0);
        }
        ok
    }

    pub fn remove_conn(&self, conn: &ConnHandle) {
        self.shared.registry.remove_conn(conn);
        metrics::gauge!(m::CONNECTIONS).decrement(1.0);
    }

    /// Adds a local subscriber; the broker is subscribed on the channel's first one.
    pub async fn subscribe(&self, channel: &str, sub: Subscriber) -> Result<(), NodeError> {
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
        let publication = Publication {
            data,
            info: opts.info,
            tags: opts.tags,
            ..Default::default()
        };
        if options.persist {
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
        Ok(self
            .shared
            .broker
            .publish(channel, publication, history)
            .await?)
    }

    /// An event delivered to current subscribers only: not stored, no offset (typing
    /// indicators, read receipts). SDKs ignore offset 0 for their position tracking.
    pub async fn publish_ephemeral(
        &self,
        channel: &str,
        data: Bytes,
        info: Option<ClientInfo>,
    ) -> Result<(), NodeError> {
        self.shared.rules.options(channel)?;
        let publication = Publication {
            data,
            info,
            ..Default::default()
        };
        self.shared
            .broker
            .publish(channel, publication, HistoryOptions::default())
            .await?;
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
            return Ok(self.stores()?.messages.remove_history(channel).await?);
        }
        Ok(self.shared.broker.remove_history(channel).await?)
    }

    pub async fn add_presence(&self, channel: &str, info: ClientInfo) -> Result<(), NodeError> {
        Ok(self.shared.presence.add(channel, info).await?)
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

    /// Sends `control` to the user's connections (all, or the one with `client` id).
    /// Returns how many connections it reached.
    pub fn user_control(&self, user: &str, client: Option<&str>, control: Control) -> usize {
        let mut n = 0;
        for conn in self.shared.registry.user_conns(user) {
            if client.is_none_or(|c| c == &*conn.client) {
                conn.control(control.clone());
                n += 1;
            }
        }
        n
    }

    /// Disconnects a user's connections, except those whose client id is whitelisted.
    pub fn disconnect_user(
        &self,
        user: &str,
        client: Option<&str>,
        whitelist: &[String],
        d: &Disconnect,
    ) -> usize {
        let mut n = 0;
        for conn in self.shared.registry.user_conns(user) {
            if client.is_none_or(|c| c == &*conn.client)
                && !whitelist.iter().any(|w| w == &*conn.client)
            {
                conn.disconnect(d.clone());
                n += 1;
            }
        }
        n
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
            version: env!("CARGO_PKG_VERSION"),
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
        metrics::counter!(m::DELIVERIES_TOTAL).increment(n as u64);
        for o in self.observers.read().iter() {
            o.on_publication(channel, &publication, epoch);
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
}
