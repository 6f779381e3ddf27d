//! Per-channel serialization of a channel's first-subscriber and last-subscriber
//! transitions in cluster mode.
//!
//! Adding a channel's first local subscriber subscribes the broker (a Redis round
//! trip); removing its last unsubscribes it. Without ordering, "last leaves, first
//! arrives" could reach Redis as SUBSCRIBE then UNSUBSCRIBE and leave the channel
//! unsubscribed while it has a subscriber. Holding the channel's lock across the
//! registry change and the broker call orders them; and a second subscriber that
//! arrives while the first is still subscribing waits for the subscription to be
//! active before it reads its position, so it misses nothing either.
//!
//! Only subscribe and unsubscribe take these locks; the fan-out never does.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;

use parking_lot::Mutex;

const SHARDS: usize = 64;

type Lock = Arc<tokio::sync::Mutex<()>>;

pub struct ChannelLocks {
    /// parking_lot: held only to find or drop an entry, never across `.await`. Entries
    /// are created on demand and dropped when nobody holds them.
    shards: Vec<Mutex<HashMap<String, Lock>>>,
    hasher: RandomState,
}

/// Held while a channel's subscription state changes; releases (and forgets the
/// channel's lock if nobody else waits for it) on drop.
pub struct ChannelGuard<'a> {
    locks: &'a ChannelLocks,
    channel: String,
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl Default for ChannelLocks {
    fn default() -> Self {
        ChannelLocks {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
        }
    }
}

impl ChannelLocks {
    fn shard(&self, channel: &str) -> &Mutex<HashMap<String, Lock>> {
        &self.shards[(self.hasher.hash_one(channel) as usize) % SHARDS]
    }

    pub async fn lock(&self, channel: &str) -> ChannelGuard<'_> {
        let lock = self
            .shard(channel)
            .lock()
            .entry(channel.to_string())
            .or_default()
            .clone();
        let guard = lock.lock_owned().await;
        ChannelGuard {
            locks: self,
            channel: channel.to_string(),
            guard: Some(guard),
        }
    }

    /// Channels with a lock entry (tests).
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Drop for ChannelGuard<'_> {
    fn drop(&mut self) {
        // Release first: the guard holds one reference to the lock.
        self.guard.take();
        let mut shard = self.locks.shard(&self.channel).lock();
        // References are only taken under this shard lock, so a count of one (the
        // map's) means nobody holds or waits for the lock.
        if shard
            .get(&self.channel)
            .is_some_and(|l| Arc::strong_count(l) == 1)
        {
            shard.remove(&self.channel);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn serializes_per_channel_and_forgets_idle_channels() {
        let locks = Arc::new(ChannelLocks::default());
        let order = Arc::new(Mutex::new(Vec::new()));
        let g = locks.lock("a").await;
        let (l2, o2) = (locks.clone(), order.clone());
        let waiter = tokio::spawn(async move {
            let _g = l2.lock("a").await;
            o2.lock().push("second");
        });
        // Another channel is not blocked.
        drop(locks.lock("b").await);
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        order.lock().push("first");
        drop(g);
        waiter.await.unwrap();
        assert_eq!(*order.lock(), vec!["first", "second"]);
        assert!(locks.is_empty());
    }
}
