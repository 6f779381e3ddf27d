//! The durable queue of pushes the dispatcher drains.
//!
//! Two backends: a table in the embedded push store (`store::push_sqlite`, one process
//! consumes it) and a Redis stream with a consumer group (`push::redis_queue`, every
//! node of a cluster consumes it and each entry goes to one of them). Both keep a job
//! until its outcome is final, so a crash re-sends what was in flight: at-least-once.

use std::collections::HashSet;

use async_trait::async_trait;

use super::{Finish, Job, NewJob, Provider, PushStoreError};

#[async_trait]
pub trait PushQueue: Send + Sync + 'static {
    /// Adds jobs, due now; durable when this returns.
    async fn enqueue(&self, jobs: Vec<NewJob>) -> Result<u64, PushStoreError>;
    /// Up to `limit` jobs of `provider` due at `now_ms`, oldest first, for this consumer
    /// to send, leaving out the ids in `skip` (its sends in flight); and the due time of
    /// the next job not due yet, when known. A job returned and never finished (the
    /// consumer died) becomes due again: at once after a restart (SQLite) or after the
    /// visibility timeout, for any node (Redis).
    async fn due(
        &self,
        provider: Provider,
        now_ms: i64,
        limit: usize,
        skip: HashSet<String>,
    ) -> Result<(Vec<Job>, Option<i64>), PushStoreError>;
    /// Records how jobs ended: removed, or due again at a later time.
    async fn finish(&self, done: Vec<(Job, Finish)>) -> Result<(), PushStoreError>;
    /// Drops the queued jobs for a token (dead, or its device was removed).
    async fn forget_token(&self, provider: Provider, token: &str) -> Result<u64, PushStoreError>;
    /// Queued jobs per provider (due, waiting for a retry, or in flight).
    async fn depth(&self) -> Result<Vec<(Provider, u64)>, PushStoreError>;
}
