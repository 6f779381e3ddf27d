//! Moving publications between nodes, sequencing them per channel, keeping the recent
//! history stream used for recovery.
//!
//! The broker calls back into a [`BrokerEventHandler`] (the node) and never sees a
//! socket. `memory` is the single-node default; `redis` is cluster mode: several nodes
//! share it, and it also sequences persisted channels ([`PersistedSequencer`]). Both pass
//! the same conformance suite (`conformance.rs`).

pub mod memory;
pub mod redis;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::protocol::messages::{ClientInfo, Publication, StreamPosition};

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The stream position asked for is not in the history any more (or the epoch
    /// changed): the caller must tell the client it cannot recover.
    #[error("unrecoverable position")]
    UnrecoverablePosition,
    /// The backend is unreachable; the operation may succeed if retried.
    #[error("broker unavailable: {0}")]
    Unavailable(String),
}

/// History settings of the channel a publication goes to.
#[derive(Debug, Clone, Copy, Default)]
pub struct HistoryOptions {
    /// Publications kept; 0 keeps none and publications get no offset.
    pub size: usize,
    /// The stream expires this long after its last publication.
    pub ttl: Duration,
}

impl HistoryOptions {
    pub fn enabled(&self) -> bool {
        self.size > 0 && !self.ttl.is_zero()
    }
}

/// Which part of a channel's history to read.
#[derive(Debug, Clone, Default)]
pub struct HistoryFilter {
    /// Only publications after (or, with `reverse`, before) this position; its epoch
    /// must match the stream's.
    pub since: Option<StreamPosition>,
    /// `Some(0)` returns only the stream position; `None` returns everything kept.
    pub limit: Option<usize>,
    /// Newest first.
    pub reverse: bool,
}

/// The protocol's history `limit`: 0 asks only for the stream position, a negative
/// value for everything kept, a positive value for at most that many.
pub fn limit_from_protocol(limit: i32) -> Option<usize> {
    match limit {
        0 => Some(0),
        l if l < 0 => None,
        l => Some(l as usize),
    }
}

/// Receives what the broker delivers to this node. Implemented by the node.
pub trait BrokerEventHandler: Send + Sync {
    /// Called in offset order for each channel this node subscribed to; `epoch` is the
    /// channel stream's epoch (empty for publications without an offset).
    fn handle_publication(&self, channel: &str, publication: Arc<Publication>, epoch: &str);
    fn handle_join(&self, channel: &str, info: ClientInfo);
    fn handle_leave(&self, channel: &str, info: ClientInfo);
    /// Delivery of `channel` to this node was interrupted and is back (a Redis
    /// reconnect): publications may have been missed, so every subscriber that tracks
    /// offsets must recover. Never called by the memory broker.
    fn handle_interrupted(&self, _channel: &str) {}
}

#[async_trait]
pub trait Broker: Send + Sync + 'static {
    /// Registers the node's handler; called once before any other method.
    fn set_handler(&self, handler: std::sync::Weak<dyn BrokerEventHandler>);
    /// Assigns the next offset (when history is on), stores and delivers the
    /// publication to every subscribed node. Returns the position it got.
    async fn publish(
        &self,
        channel: &str,
        publication: Publication,
        history: HistoryOptions,
    ) -> Result<StreamPosition, BrokerError>;
    async fn publish_join(&self, channel: &str, info: ClientInfo) -> Result<(), BrokerError>;
    async fn publish_leave(&self, channel: &str, info: ClientInfo) -> Result<(), BrokerError>;
    /// Called by the node on its first local subscriber of a channel.
    async fn subscribe(&self, channel: &str) -> Result<(), BrokerError>;
    /// Called by the node when its last local subscriber of a channel leaves.
    async fn unsubscribe(&self, channel: &str) -> Result<(), BrokerError>;
    /// Reads history and returns it with the stream's current top position.
    async fn history(
        &self,
        channel: &str,
        filter: HistoryFilter,
    ) -> Result<(Vec<Publication>, StreamPosition), BrokerError>;
    async fn remove_history(&self, channel: &str) -> Result<(), BrokerError>;
    /// True when several nodes share this broker: the handler then also receives the
    /// publications of other nodes (only for channels this node subscribed to), and
    /// the node runs per-publication side effects (observers) where it publishes.
    fn spans_nodes(&self) -> bool {
        false
    }
    /// Cluster brokers sequence persisted channels as well (the store then writes at
    /// the offset the broker assigned); `None`: the store sequences them itself.
    fn sequencer(&self) -> Option<&dyn PersistedSequencer> {
        None
    }
}

/// A publication the cluster sequencer gave an offset.
#[derive(Debug, Clone)]
pub struct Sequenced {
    pub position: StreamPosition,
    /// The publication with its offset.
    pub publication: Publication,
    /// The idempotency key matched an earlier publish: nothing was published and
    /// `position` is the original's.
    pub duplicate: bool,
}

/// A persisted publication the sequencer handed out but whose store write was never
/// confirmed (`mark_stored`).
#[derive(Debug, Clone)]
pub struct Unstored {
    pub channel: String,
    pub offset: u64,
    pub epoch: String,
    /// `None` once the stream no longer holds it (expired or trimmed).
    pub publication: Option<Publication>,
}

/// Sequencing of persisted channels in cluster mode: the broker assigns the offset and
/// delivers; the node writes the store at that offset before acknowledging; the
/// reconciler copies what a crash between the two left out.
///
/// The store stays the authority for a persisted channel's epoch and top: the broker
/// never starts a new epoch for one and answers `Ok(None)` ("not seeded") instead; the
/// caller then seeds it from the store and retries.
#[async_trait]
pub trait PersistedSequencer: Send + Sync {
    /// Assigns the next offset, appends to the recent stream (`stream` bounds it),
    /// delivers, and records the publication as not yet stored. With an idempotency
    /// key and window, a repeat returns the original's position as a duplicate.
    async fn publish_persisted(
        &self,
        channel: &str,
        publication: Publication,
        stream: HistoryOptions,
        idempotency: Option<(&str, Duration)>,
    ) -> Result<Option<Sequenced>, BrokerError>;
    /// Starts the channel's sequence at `top` (the store's position) unless it has one.
    async fn seed(&self, channel: &str, top: &StreamPosition) -> Result<(), BrokerError>;
    /// The channel's position and recent history, as [`Broker::history`] reads it.
    async fn recent(
        &self,
        channel: &str,
        filter: HistoryFilter,
    ) -> Result<Option<(Vec<Publication>, StreamPosition)>, BrokerError>;
    /// The store has the publication at `offset`: the reconciler can forget it.
    async fn mark_stored(&self, channel: &str, offset: u64) -> Result<(), BrokerError>;
    /// Up to `max` publications handed out at least `older_than` ago and never marked
    /// stored.
    async fn unstored(
        &self,
        older_than: Duration,
        max: usize,
    ) -> Result<Vec<Unstored>, BrokerError>;
}

#[cfg(test)]
pub(crate) mod conformance;
