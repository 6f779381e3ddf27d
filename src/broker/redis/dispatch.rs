//! Messages on a channel's Redis pub/sub channel, and their way to the node's handler.
//!
//! `p<offset>:<epoch>:<ms>:<protobuf Publication without offset>` for a publication
//! (offset 0 and an empty epoch without history; `ms` is the publish script's clock, for
//! the lag metric), `j` / `l` followed by a protobuf `ClientInfo` for join and leave.
//! Binary-safe: the body is never parsed as text.

use std::sync::{Arc, Weak};

use parking_lot::RwLock;
use prost::Message as _;

use crate::broker::BrokerEventHandler;
use crate::cluster::pubsub::PubSubHandler;
use crate::cluster::redis as r;
use crate::metrics as m;
use crate::protocol::messages::{ClientInfo, Publication};

/// The node's handler, shared with the pub/sub connections (which must not hold the
/// broker itself).
pub(super) struct Dispatch {
    pub(super) handler: RwLock<Option<Weak<dyn BrokerEventHandler>>>,
    /// `p:ch:`, stripped from pub/sub channel names.
    pub(super) pubsub_prefix: String,
    /// Redis Cluster mode: the rest is the channel's hash-tagged form.
    pub(super) cluster: bool,
}

impl Dispatch {
    /// The Herald channel of a Redis pub/sub channel name.
    pub(super) fn channel<'a>(&self, redis_channel: &'a str) -> Option<&'a str> {
        let part = redis_channel.strip_prefix(&self.pubsub_prefix)?;
        if self.cluster {
            crate::cluster::slots::untagged(part)
        } else {
            Some(part)
        }
    }

    fn handler(&self) -> Option<Arc<dyn BrokerEventHandler>> {
        self.handler.read().as_ref().and_then(Weak::upgrade)
    }
}

impl PubSubHandler for Dispatch {
    fn on_message(&self, redis_channel: &str, payload: &[u8]) {
        let Some(channel) = self.channel(redis_channel) else {
            return;
        };
        let Some(h) = self.handler() else {
            return;
        };
        match decode_message(payload) {
            Some(Message::Publication {
                publication,
                epoch,
                published_ms,
            }) => {
                let lag = (r::now_ms() - published_ms).max(0) as f64 / 1000.0;
                metrics::histogram!(m::REDIS_PUBSUB_LAG_SECONDS).record(lag);
                h.handle_publication(channel, Arc::new(publication), &epoch);
            }
            Some(Message::Join(info)) => h.handle_join(channel, info),
            Some(Message::Leave(info)) => h.handle_leave(channel, info),
            None => {
                metrics::counter!(m::REDIS_ERRORS_TOTAL, "op" => "decode").increment(1);
                tracing::warn!(channel, "undecodable pub/sub message ignored");
            }
        }
    }

    fn on_interrupted(&self, channels: &[String]) {
        let Some(h) = self.handler() else {
            return;
        };
        for c in channels {
            if let Some(channel) = self.channel(c) {
                h.handle_interrupted(channel);
            }
        }
    }
}

pub(super) enum Message {
    Publication {
        publication: Publication,
        epoch: String,
        published_ms: i64,
    },
    Join(ClientInfo),
    Leave(ClientInfo),
}

/// Splits `b` at the first `:`.
fn field(b: &[u8]) -> Option<(&[u8], &[u8])> {
    let i = b.iter().position(|&c| c == b':')?;
    Some((&b[..i], &b[i + 1..]))
}

pub(super) fn decode_message(payload: &[u8]) -> Option<Message> {
    let (&kind, rest) = payload.split_first()?;
    match kind {
        b'p' => {
            let (offset, rest) = field(rest)?;
            let (epoch, rest) = field(rest)?;
            let (ms, body) = field(rest)?;
            let mut publication = Publication::decode(body).ok()?;
            publication.offset = std::str::from_utf8(offset).ok()?.parse().ok()?;
            Some(Message::Publication {
                publication,
                epoch: String::from_utf8(epoch.to_vec()).ok()?,
                published_ms: std::str::from_utf8(ms).ok()?.parse().ok()?,
            })
        }
        b'j' => ClientInfo::decode(rest).ok().map(Message::Join),
        b'l' => ClientInfo::decode(rest).ok().map(Message::Leave),
        _ => None,
    }
}

pub(super) fn encode_publication(p: &Publication) -> Vec<u8> {
    let mut p = p.clone();
    p.offset = 0;
    p.encode_to_vec()
}
