//! Durable state: the message history of persisted namespaces, conversation members,
//! read markers.
//!
//! `sqlite` is the embedded single-node backend; `scylla` the ScyllaDB (or Cassandra)
//! backend for cluster deployments, chosen with `store.kind`. A store assigns offsets in
//! single-node mode and hands every committed publication, in offset order, to the node's
//! [`BrokerEventHandler`] so the fan-out sees exactly the order of the log. Every backend
//! passes the conformance suite in `conformance.rs`.

pub mod metered;
pub mod push_sqlite;
pub mod scylla;
pub mod sqlite;

use std::sync::Weak;
use std::time::Duration;

use async_trait::async_trait;

use crate::broker::{BrokerEventHandler, HistoryFilter};
use crate::protocol::messages::{Publication, StreamPosition};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The position asked for is from another epoch or no longer kept.
    #[error("unrecoverable position")]
    UnrecoverablePosition,
    /// The backend failed; the operation may succeed if retried. Nothing was
    /// acknowledged.
    #[error("store unavailable: {0}")]
    Unavailable(String),
}

/// Per-namespace retention of persisted history.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Retention {
    /// Messages older than this are removed; zero keeps them forever.
    pub max_age: Duration,
    /// At most this many messages per channel are kept; zero keeps all.
    pub max_count: u64,
}

/// An append request.
#[derive(Debug, Clone, Default)]
pub struct Append {
    pub channel: String,
    pub publication: Publication,
    /// Retried publishes with the same key get the original's position back.
    pub idempotency_key: Option<String>,
    pub retention: Retention,
}

/// What an append produced.
#[derive(Debug, Clone, PartialEq)]
pub struct Appended {
    pub position: StreamPosition,
    /// True when the idempotency key matched an earlier append: nothing was written or
    /// delivered again.
    pub duplicate: bool,
}

/// A conversation of a user, for `user_conversations` and unread counts.
#[derive(Debug, Clone, PartialEq)]
pub struct ConversationSummary {
    pub channel: String,
    /// The channel's latest offset (0 if it has no messages yet).
    pub top: u64,
    pub read_offset: u64,
    pub unread: u64,
    pub last: Option<Publication>,
}

#[async_trait]
pub trait MessageStore: Send + Sync + 'static {
    /// Where committed publications go, in offset order per channel.
    fn set_handler(&self, handler: Weak<dyn BrokerEventHandler>);
    /// Appends durably, assigning the channel's next offset; returns once committed.
    async fn append(&self, req: Append) -> Result<Appended, StoreError>;
    async fn history(
        &self,
        channel: &str,
        filter: HistoryFilter,
    ) -> Result<(Vec<Publication>, StreamPosition), StoreError>;
    /// Removes the messages; the epoch and the top offset stay.
    async fn remove_history(&self, channel: &str) -> Result<(), StoreError>;
    /// Cluster mode: writes `publication` at the offset the cluster's sequencer gave it
    /// (`publication.offset`), in the sequencer's `epoch`, and returns once durable.
    /// Idempotent: a message already at that offset is kept. The channel's top only
    /// moves forward. Nothing is delivered (the broker already did).
    async fn append_at(
        &self,
        channel: &str,
        epoch: &str,
        publication: Publication,
        retention: Retention,
    ) -> Result<(), StoreError> {
        let _ = (channel, epoch, publication, retention);
        Err(StoreError::Unavailable(
            "append_at (cluster mode) is not supported by this store backend".into(),
        ))
    }
}

#[async_trait]
pub trait ConversationStore: Send + Sync + 'static {
    async fn add_members(&self, channel: &str, users: &[String]) -> Result<(), StoreError>;
    async fn remove_members(&self, channel: &str, users: &[String]) -> Result<(), StoreError>;
    async fn members(&self, channel: &str) -> Result<Vec<String>, StoreError>;
    async fn is_member(&self, channel: &str, user: &str) -> Result<bool, StoreError>;
    /// Stores a read marker; markers never move backwards.
    async fn set_read(&self, user: &str, channel: &str, offset: u64) -> Result<u64, StoreError>;
    /// The user's conversations: member channels plus `extra` (DMs, members implied
    /// by name), with tops, read markers and last messages.
    async fn conversations(
        &self,
        user: &str,
        extra: &[String],
    ) -> Result<Vec<ConversationSummary>, StoreError>;
    /// DM channels (`ns:...#user,...`) the user has messages or a read marker in.
    async fn dm_channels(
        &self,
        user: &str,
        namespace_prefix: &str,
    ) -> Result<Vec<String>, StoreError>;
    /// Deletes the user's read markers and memberships; with `tombstone`, replaces the
    /// data of their messages with `{"deleted":true}`. Returns messages tombstoned.
    async fn remove_user_data(&self, user: &str, tombstone: bool) -> Result<u64, StoreError>;
}

#[cfg(test)]
pub(crate) mod conformance;
