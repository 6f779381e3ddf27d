//! Moving publications between nodes, sequencing them per channel, keeping the recent
//! history stream used for recovery.
//!
//! The broker calls back into a [`BrokerEventHandler`] (the node) and never sees a
//! socket. `memory` is the single-node default; a Redis broker (cluster mode) implements
//! the same trait and passes the same conformance suite (`tests` below).

pub mod memory;

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
}

#[cfg(test)]
pub(crate) mod conformance;
