//! In-process broker: the single-node default.
//!
//! Each channel's stream sits behind its own mutex, so publications to one channel are
//! sequenced and delivered in offset order while other channels proceed in parallel. The
//! handler is called with that mutex held; it only does non-blocking queue pushes.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Weak};
use std::time::Instant;

use async_trait::async_trait;
use parking_lot::{Mutex, RwLock};

use super::{Broker, BrokerError, BrokerEventHandler, HistoryFilter, HistoryOptions};
use crate::protocol::messages::{ClientInfo, Publication, StreamPosition};

const SHARDS: usize = 64;

struct Stream {
    epoch: String,
    top: u64,
    items: VecDeque<Publication>,
    expires: Option<Instant>,
}

impl Stream {
    fn new() -> Self {
        Stream {
            epoch: new_epoch(),
            top: 0,
            items: VecDeque::new(),
            expires: None,
        }
    }

    /// Drops the items once the stream's TTL has passed; the epoch and top offset stay so
    /// that a client asking for an older position learns it cannot recover.
    fn expire(&mut self, now: Instant) {
        if self.expires.is_some_and(|t| now >= t) {
            self.items.clear();
            self.expires = None;
        }
    }

    fn position(&self) -> StreamPosition {
        StreamPosition {
            offset: self.top,
            epoch: self.epoch.clone(),
        }
    }
}

fn new_epoch() -> String {
    let v: u32 = rand::random();
    format!("{v:08x}")
}

pub struct MemoryBroker {
    shards: Vec<RwLock<HashMap<String, Arc<Mutex<Stream>>>>>,
    hasher: RandomState,
    handler: RwLock<Option<Weak<dyn BrokerEventHandler>>>,
}

impl Default for MemoryBroker {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryBroker {
    pub fn new() -> Self {
        MemoryBroker {
            shards: (0..SHARDS).map(|_| RwLock::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
            handler: RwLock::new(None),
        }
    }

    fn shard(&self, channel: &str) -> &RwLock<HashMap<String, Arc<Mutex<Stream>>>> {
        let i = (self.hasher.hash_one(channel) as usize) % SHARDS;
        &self.shards[i]
    }

    fn stream(&self, channel: &str) -> Arc<Mutex<Stream>> {
        if let Some(s) = self.shard(channel).read().get(channel) {
            return s.clone();
        }
        self.shard(channel)
            .write()
            .entry(channel.to_string())
            .or_insert_with(|| Arc::new(Mutex::new(Stream::new())))
            .clone()
    }

    fn existing(&self, channel: &str) -> Option<Arc<Mutex<Stream>>> {
        self.shard(channel).read().get(channel).cloned()
    }

    fn handler(&self) -> Option<Arc<dyn BrokerEventHandler>> {
        self.handler.read().as_ref().and_then(Weak::upgrade)
    }
}

#[async_trait]
impl Broker for MemoryBroker {
    fn set_handler(&self, handler: Weak<dyn BrokerEventHandler>) {
        *self.handler.write() = Some(handler);
    }

    async fn publish(
        &self,
        channel: &str,
        mut publication: Publication,
        history: HistoryOptions,
    ) -> Result<StreamPosition, BrokerError> {
        let handler = self.handler();
        if !history.enabled() {
            // No stream: nothing to sequence, deliver as is (offset 0).
            if let Some(h) = handler {
                h.handle_publication(channel, Arc::new(publication), "");
            }
            return Ok(StreamPosition::default());
        }
        let stream = self.stream(channel);
        let mut s = stream.lock();
        let now = Instant::now();
        s.expire(now);
        s.top += 1;
        publication.offset = s.top;
        s.items.push_back(publication.clone());
        while s.items.len() > history.size {
            s.items.pop_front();
        }
        s.expires = Some(now + history.ttl);
        let pos = s.position();
        if let Some(h) = handler {
            h.handle_publication(channel, Arc::new(publication), &pos.epoch);
        }
        Ok(pos)
    }

    async fn publish_join(&self, channel: &str, info: ClientInfo) -> Result<(), BrokerError> {
        if let Some(h) = self.handler() {
            h.handle_join(channel, info);
        }
        Ok(())
    }

    async fn publish_leave(&self, channel: &str, info: ClientInfo) -> Result<(), BrokerError> {
        if let Some(h) = self.handler() {
            h.handle_leave(channel, info);
        }
        Ok(())
    }

    async fn subscribe(&self, _channel: &str) -> Result<(), BrokerError> {
        Ok(())
    }

    async fn unsubscribe(&self, _channel: &str) -> Result<(), BrokerError> {
        Ok(())
    }

    async fn history(
        &self,
        channel: &str,
        filter: HistoryFilter,
    ) -> Result<(Vec<Publication>, StreamPosition), BrokerError> {
        let stream = self.stream(channel);
        let mut s = stream.lock();
        s.expire(Instant::now());
        let pos = s.position();
        let limit = filter.limit.unwrap_or(usize::MAX);
        if limit == 0 {
            return Ok((Vec::new(), pos));
        }
        let first_kept = s.items.front().map(|p| p.offset).unwrap_or(s.top + 1);
        let pubs: Vec<Publication> = match (&filter.since, filter.reverse) {
            (Some(since), _) if since.epoch != s.epoch => {
                return Err(BrokerError::UnrecoverablePosition)
            }
            (Some(since), false) => {
                // Everything after `since` must still be kept, or there is a gap.
                if since.offset + 1 < first_kept && since.offset < s.top {
                    return Err(BrokerError::UnrecoverablePosition);
                }
                s.items
                    .iter()
                    .filter(|p| p.offset > since.offset)
                    .take(limit)
                    .cloned()
                    .collect()
            }
            (Some(since), true) => s
                .items
                .iter()
                .rev()
                .filter(|p| p.offset < since.offset)
                .take(limit)
                .cloned()
                .collect(),
            (None, false) => s.items.iter().take(limit).cloned().collect(),
            (None, true) => s.items.iter().rev().take(limit).cloned().collect(),
        };
        Ok((pubs, pos))
    }

    async fn remove_history(&self, channel: &str) -> Result<(), BrokerError> {
        if let Some(stream) = self.existing(channel) {
            stream.lock().items.clear();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn memory_broker_passes_conformance() {
        crate::broker::conformance::run_all(|| std::sync::Arc::new(super::MemoryBroker::new()))
            .await;
    }
}
