//! Latency and failures of every store call, whatever the backend.
//!
//! Measured here, around the trait, rather than inside each backend: what an operator
//! needs is how long a publish or a history read waited on the store and how often the
//! store failed it, and that is the same question for SQLite and ScyllaDB. The embedded
//! backend additionally reports its group commits (`herald_store_commit_seconds`).

use std::future::Future;
use std::sync::{Arc, Weak};
use std::time::Instant;

use async_trait::async_trait;

use super::{
    Append, Appended, ConversationStore, ConversationSummary, MessageStore, Retention, StoreError,
};
use crate::broker::{BrokerEventHandler, HistoryFilter};
use crate::metrics as m;
use crate::protocol::messages::{Publication, StreamPosition};

/// Operations whose error series exist from start-up, at zero, for the alerts.
const OPS: [&str; 4] = ["append", "append_at", "history", "conversations"];

/// Wraps a message store and a conversation store (usually the same backend).
pub struct Metered {
    messages: Arc<dyn MessageStore>,
    conversations: Arc<dyn ConversationStore>,
}

impl Metered {
    pub fn new(
        messages: Arc<dyn MessageStore>,
        conversations: Arc<dyn ConversationStore>,
    ) -> Arc<Metered> {
        for op in OPS {
            metrics::counter!(m::STORE_ERRORS_TOTAL, "op" => op).absolute(0);
        }
        Arc::new(Metered {
            messages,
            conversations,
        })
    }
}

/// Runs one store call, recording its duration and, if the backend failed, an error.
/// An unrecoverable position is the caller's question, not a store failure.
async fn timed<T>(
    op: &'static str,
    call: impl Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    let started = Instant::now();
    let r = call.await;
    metrics::histogram!(m::STORE_OPERATION_SECONDS, "op" => op)
        .record(started.elapsed().as_secs_f64());
    if let Err(StoreError::Unavailable(_)) = &r {
        metrics::counter!(m::STORE_ERRORS_TOTAL, "op" => op).increment(1);
    }
    r
}

#[async_trait]
impl MessageStore for Metered {
    fn set_handler(&self, handler: Weak<dyn BrokerEventHandler>) {
        self.messages.set_handler(handler);
    }

    async fn append(&self, req: Append) -> Result<Appended, StoreError> {
        timed("append", self.messages.append(req)).await
    }

    async fn history(
        &self,
        channel: &str,
        filter: HistoryFilter,
    ) -> Result<(Vec<Publication>, StreamPosition), StoreError> {
        timed("history", self.messages.history(channel, filter)).await
    }

    async fn remove_history(&self, channel: &str) -> Result<(), StoreError> {
        timed("remove_history", self.messages.remove_history(channel)).await
    }

    async fn append_at(
        &self,
        channel: &str,
        epoch: &str,
        publication: Publication,
        retention: Retention,
    ) -> Result<(), StoreError> {
        timed(
            "append_at",
            self.messages
                .append_at(channel, epoch, publication, retention),
        )
        .await
    }
}

#[async_trait]
impl ConversationStore for Metered {
    async fn add_members(&self, channel: &str, users: &[String]) -> Result<(), StoreError> {
        timed("members", self.conversations.add_members(channel, users)).await
    }

    async fn remove_members(&self, channel: &str, users: &[String]) -> Result<(), StoreError> {
        timed("members", self.conversations.remove_members(channel, users)).await
    }

    async fn members(&self, channel: &str) -> Result<Vec<String>, StoreError> {
        timed("members", self.conversations.members(channel)).await
    }

    async fn is_member(&self, channel: &str, user: &str) -> Result<bool, StoreError> {
        timed("members", self.conversations.is_member(channel, user)).await
    }

    async fn set_read(&self, user: &str, channel: &str, offset: u64) -> Result<u64, StoreError> {
        timed(
            "set_read",
            self.conversations.set_read(user, channel, offset),
        )
        .await
    }

    async fn conversations(
        &self,
        user: &str,
        extra: &[String],
    ) -> Result<Vec<ConversationSummary>, StoreError> {
        timed(
            "conversations",
            self.conversations.conversations(user, extra),
        )
        .await
    }

    async fn dm_channels(
        &self,
        user: &str,
        namespace_prefix: &str,
    ) -> Result<Vec<String>, StoreError> {
        timed(
            "conversations",
            self.conversations.dm_channels(user, namespace_prefix),
        )
        .await
    }

    async fn remove_user_data(&self, user: &str, tombstone: bool) -> Result<u64, StoreError> {
        timed(
            "remove_user_data",
            self.conversations.remove_user_data(user, tombstone),
        )
        .await
    }
}
