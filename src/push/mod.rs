//! Push notifications: a device registry, APNs and FCM senders, a durable queue with a
//! dispatcher, and the offline fallback that turns chat messages into pushes.
//!
//! ```text
//! node fan-out --> fallback::Observer --(bounded, try_send)--> fallback resolver tasks
//!                  (recipients - sender - live subscribers - muted) --> PushStore queue
//! api send_push_notification ------------------------------------------^      |
//!                                          dispatcher (per provider, bounded) <-+
//!                                          --> apns::ApnsSender / fcm::FcmSender
//!                                          outcome: delete | reschedule | remove token
//! ```
//!
//! - [`PushStore`]: devices and mutes; embedded implementation in `store::push_sqlite`
//!   (its own SQLite file, so its commits never wait on the message store's writer),
//!   cluster implementation in `redis_devices` (shared by every node).
//! - [`queue::PushQueue`]: the durable queue; a table of the same SQLite file when
//!   embedded, a Redis stream with a consumer group in cluster mode (`redis_queue`), so
//!   that each push is sent by exactly one node.
//! - [`PushProvider`]: one sender per provider; a send ends in `Ok` or a [`SendError`]
//!   whose variant tells the dispatcher what to do.
//! - [`service::PushService`]: the handle the server API and the gateway use.

pub mod apns;
mod auth;
pub mod devices;
pub mod dispatcher;
pub mod fallback;
pub mod fcm;
mod http;
pub mod import;
pub mod message;
pub mod queue;
pub mod redis_devices;
pub mod redis_queue;
pub mod service;
pub mod template;

#[cfg(test)]
pub(crate) mod conformance;
#[cfg(test)]
pub(crate) mod queue_conformance;

use std::time::Duration;

use async_trait::async_trait;

pub use devices::{Device, DeviceFilter, DevicePage, DeviceUpdate, NewDevice, Platform, Provider};
pub use message::{Job, NewJob, Notification};

/// Why a send did not deliver; the variant is what the dispatcher does next.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The provider says the token will never work again: remove the device.
    #[error("invalid device token ({reason})")]
    InvalidToken { reason: String },
    /// Try again later: not before `after` when the provider said so (Retry-After).
    #[error("temporary failure ({reason})")]
    Retry {
        reason: String,
        after: Option<Duration>,
    },
    /// Retrying cannot help (a malformed request, a configuration problem): drop it.
    #[error("cannot be delivered ({reason})")]
    Fatal { reason: String },
}

impl SendError {
    /// A short, bounded label for metrics (the provider's reason code, or ours).
    pub fn reason(&self) -> &str {
        match self {
            SendError::InvalidToken { reason }
            | SendError::Retry { reason, .. }
            | SendError::Fatal { reason } => reason,
        }
    }
}

/// One push provider (APNs, FCM).
#[async_trait]
pub trait PushProvider: Send + Sync + 'static {
    fn provider(&self) -> Provider;
    /// Sends one notification to one device token.
    async fn send(&self, token: &str, notification: &Notification) -> Result<(), SendError>;
}

#[derive(Debug, thiserror::Error)]
pub enum PushStoreError {
    /// The backend failed; the operation may succeed if retried.
    #[error("push store unavailable: {0}")]
    Unavailable(String),
    /// A device named by id does not exist.
    #[error("device not found")]
    NotFound,
}

/// How a dequeued job ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// Delivered, or given up on: delete it.
    Done,
    /// Send again at `due_ms` (unix ms), with `attempts` made so far.
    Retry { due_ms: i64, attempts: u32 },
}

/// Devices and per-conversation mutes. The queue of pushes is a [`queue::PushQueue`].
#[async_trait]
pub trait PushStore: Send + Sync + 'static {
    /// Registers a device, or updates the one with the same id or the same provider and
    /// token (a token that moved to another user follows its new owner).
    async fn register(&self, device: NewDevice) -> Result<Device, PushStoreError>;
    /// Applies `update` to the devices matching `filter` (ids and users only); returns
    /// how many changed.
    async fn update(
        &self,
        filter: &DeviceFilter,
        update: &DeviceUpdate,
    ) -> Result<u64, PushStoreError>;
    /// Removes the devices matching `filter` (ids and users only); a backend that is
    /// also the queue drops their queued jobs in the same transaction.
    async fn remove(&self, filter: &DeviceFilter) -> Result<u64, PushStoreError>;
    /// Removes a dead token wherever it is registered (and, as above, its queued jobs).
    async fn remove_token(&self, provider: Provider, token: &str) -> Result<u64, PushStoreError>;
    /// Devices matching `filter`, ordered by id, after `cursor` (an id; "" = start).
    async fn list(
        &self,
        filter: &DeviceFilter,
        cursor: &str,
        limit: usize,
        with_total: bool,
    ) -> Result<DevicePage, PushStoreError>;
    /// Mutes `channel` for `user` until `until_ms` (unix ms; `None` = until unmuted).
    async fn mute(
        &self,
        user: &str,
        channel: &str,
        until_ms: Option<i64>,
    ) -> Result<(), PushStoreError>;
    async fn unmute(&self, user: &str, channel: &str) -> Result<(), PushStoreError>;
    /// Which of `users` have `channel` muted now.
    async fn muted(&self, users: &[String], channel: &str) -> Result<Vec<String>, PushStoreError>;
}

/// Unix time in milliseconds.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
