//! The node's view of one connection: a cheap handle the fan-out pushes into.
//!
//! The session task owns the socket; everything else reaches the connection through
//! this handle. Data goes through a bounded queue (a slow reader fills it and is then
//! disconnected, so it never slows anyone else); control messages go through an
//! unbounded queue that only ever carries a handful of items per connection. Both are
//! in one [`Mailbox`](super::mailbox), which holds no memory while they are empty.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use super::mailbox::{ControlRx, Mailbox, Pushed, QueueRx};
use super::revocation::TokenMeta;
use crate::metrics as m;
use crate::protocol::codes::{self, DisconnectCode};
use crate::protocol::Format;

/// A frame waiting to be written to one connection.
pub enum Outbound {
    /// A publication push. The offset lets the session drop a publication it already
    /// delivered through recovery, and spot a gap.
    Pub {
        channel: Arc<str>,
        offset: u64,
        frame: Bytes,
        published: Instant,
    },
    /// Any other push (join, leave, message).
    Frame(Bytes),
}

/// A disconnect with a code and a reason (the reason must stay under 123 bytes to fit
/// a WebSocket close frame).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disconnect {
    pub code: u16,
    pub reason: String,
}

impl From<DisconnectCode> for Disconnect {
    fn from(d: DisconnectCode) -> Self {
        Disconnect {
            code: d.code,
            reason: d.reason.to_string(),
        }
    }
}

/// Server-side changes to a connection's state, applied by its session task.
#[derive(Debug, Clone)]
pub enum Control {
    Disconnect(Disconnect),
    Subscribe {
        channel: String,
        info: Bytes,
    },
    Unsubscribe {
        channel: String,
    },
    /// New expiry (unix seconds, `None` = never) or `expired` to end the connection.
    Refresh {
        expire_at: Option<i64>,
        expired: bool,
    },
    /// Publications of `channel` may have been missed (the broker's connection to Redis
    /// was lost and is back): a subscription that tracks offsets is ended with 2500
    /// "insufficient state", so the SDK resubscribes and recovers; others stay.
    Recover {
        channel: String,
    },
    /// Subscription tokens for `channel` issued before this time were revoked: a
    /// subscription made with one ends (unsubscribe 2000).
    RevokeSubTokens {
        channel: String,
        issued_before: i64,
    },
}

pub struct ConnHandle {
    /// Registry key; unique within this process.
    pub seq: u64,
    /// The protocol-level client id.
    pub client: Arc<str>,
    pub user: Arc<str>,
    pub format: Format,
    mailbox: Arc<Mailbox>,
    /// Set once a disconnect was requested, so that a burst of full-queue events sends
    /// one disconnect and not thousands.
    closing: AtomicBool,
    /// The token the connection authenticated with (changes on refresh), so that a
    /// revocation can find the connections using it. Locked only to copy or replace.
    token: parking_lot::Mutex<TokenMeta>,
}

pub struct ConnReceivers {
    pub queue: QueueRx,
    pub control: ControlRx,
}

impl ConnHandle {
    pub fn new(
        seq: u64,
        client: Arc<str>,
        user: Arc<str>,
        format: Format,
        queue_len: usize,
    ) -> (Arc<Self>, ConnReceivers) {
        let (mailbox, qrx, crx) = Mailbox::new(queue_len);
        let h = Arc::new(ConnHandle {
            seq,
            client,
            user,
            format,
            mailbox,
            closing: AtomicBool::new(false),
            token: parking_lot::Mutex::new(TokenMeta::default()),
        });
        (
            h,
            ConnReceivers {
                queue: qrx,
                control: crx,
            },
        )
    }

    /// Queues a frame without waiting; a full queue disconnects the connection as slow.
    pub fn deliver(&self, item: Outbound) {
        match self.mailbox.push(item) {
            Pushed::Queued | Pushed::Closed => {}
            Pushed::Full => {
                metrics::counter!(m::QUEUE_DROPPED_TOTAL).increment(1);
                self.disconnect(codes::DISCONNECT_SLOW.into());
            }
        }
    }

    pub fn disconnect(&self, d: Disconnect) {
        if !self.closing.swap(true, Ordering::AcqRel) {
            self.mailbox.push_control(Control::Disconnect(d));
        }
    }

    pub fn control(&self, c: Control) {
        self.mailbox.push_control(c);
    }

    /// Records the token the connection (re)authenticated with.
    pub fn set_token(&self, meta: TokenMeta) {
        *self.token.lock() = meta;
    }

    pub fn token(&self) -> TokenMeta {
        self.token.lock().clone()
    }
}
