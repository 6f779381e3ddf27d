//! Local subscriptions and connections of this node.
//!
//! Sharded by hash so that fan-out on one channel and subscribe/unsubscribe on others
//! never contend on one global lock. parking_lot locks, held only for map edits and the
//! non-blocking pushes of a fan-out, never across `.await`.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;

use parking_lot::RwLock;

use super::conn::ConnHandle;

const SHARDS: usize = 64;

#[derive(Clone)]
pub struct Subscriber {
    pub conn: Arc<ConnHandle>,
    /// Whether this subscriber receives join and leave pushes.
    pub join_leave: bool,
}

type Subs = HashMap<u64, Subscriber>;

pub struct Registry {
    channels: Vec<RwLock<HashMap<Arc<str>, Subs>>>,
    conns: Vec<RwLock<HashMap<u64, Arc<ConnHandle>>>>,
    users: Vec<RwLock<HashMap<Arc<str>, HashSet<u64>>>>,
    hasher: RandomState,
}

impl Default for Registry {
    fn default() -> Self {
        let shards = |_| RwLock::new(HashMap::new());
        Registry {
            channels: (0..SHARDS).map(shards).collect(),
            conns: (0..SHARDS).map(|_| RwLock::new(HashMap::new())).collect(),
            users: (0..SHARDS).map(|_| RwLock::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
        }
    }
}

impl Registry {
    fn idx(&self, key: &str) -> usize {
        (self.hasher.hash_one(key) as usize) % SHARDS
    }

    /// Adds a connection unless its user already has `max_per_user` (0 = no limit).
    /// The per-user connection limit is not checked here: the presence backend counts
    /// connections (per process, or cluster-wide on Redis) before the node registers one.
    pub fn add_conn(&self, conn: Arc<ConnHandle>) {
        self.users[self.idx(&conn.user)]
            .write()
            .entry(conn.user.clone())
            .or_default()
            .insert(conn.seq);
        self.conns[(conn.seq as usize) % SHARDS]
            .write()
            .insert(conn.seq, conn);
    }

    pub fn remove_conn(&self, conn: &ConnHandle) {
        self.conns[(conn.seq as usize) % SHARDS]
            .write()
            .remove(&conn.seq);
        let mut users = self.users[self.idx(&conn.user)].write();
        if let Some(set) = users.get_mut(&conn.user) {
            set.remove(&conn.seq);
            if set.is_empty() {
                users.remove(&conn.user);
            }
        }
    }

    /// Returns true when this is the channel's first local subscriber.
    pub fn add_sub(&self, channel: &str, sub: Subscriber) -> bool {
        let mut shard = self.channels[self.idx(channel)].write();
        match shard.get_mut(channel) {
            Some(subs) => {
                subs.insert(sub.conn.seq, sub);
                false
            }
            None => {
                let mut subs = HashMap::with_capacity(1);
                subs.insert(sub.conn.seq, sub);
                shard.insert(Arc::from(channel), subs);
                true
            }
        }
    }

    /// Returns true when the channel has no local subscriber left.
    pub fn remove_sub(&self, channel: &str, seq: u64) -> bool {
        let mut shard = self.channels[self.idx(channel)].write();
        let Some(subs) = shard.get_mut(channel) else {
            return false;
        };
        if subs.remove(&seq).is_none() {
            return false;
        }
        if subs.is_empty() {
            shard.remove(channel);
            return true;
        }
        false
    }

    /// Runs `f` over the channel's subscribers under the shard's read lock.
    pub fn for_each_sub(&self, channel: &str, mut f: impl FnMut(&Arc<str>, &Subscriber)) -> usize {
        let shard = self.channels[self.idx(channel)].read();
        let Some((name, subs)) = shard.get_key_value(channel) else {
            return 0;
        };
        for s in subs.values() {
            f(name, s);
        }
        subs.len()
    }

    /// Connections of `user` on this node.
    pub fn user_conns(&self, user: &str) -> Vec<Arc<ConnHandle>> {
        let seqs: Vec<u64> = self.users[self.idx(user)]
            .read()
            .get(user)
            .map(|s| s.iter().copied().collect())
            .unwrap_or_default();
        seqs.iter()
            .filter_map(|seq| {
                self.conns[(*seq as usize) % SHARDS]
                    .read()
                    .get(seq)
                    .cloned()
            })
            .collect()
    }

    /// Whether any connection of `user` is subscribed to `channel`.
    pub fn user_subscribed(&self, user: &str, channel: &str) -> bool {
        let shard = self.channels[self.idx(channel)].read();
        let Some(subs) = shard.get(channel) else {
            return false;
        };
        subs.values().any(|s| &*s.conn.user == user)
    }

    pub fn all_conns(&self) -> Vec<Arc<ConnHandle>> {
        self.conns
            .iter()
            .flat_map(|s| s.read().values().cloned().collect::<Vec<_>>())
            .collect()
    }

    pub fn num_conns(&self) -> usize {
        self.conns.iter().map(|s| s.read().len()).sum()
    }

    pub fn num_users(&self) -> usize {
        self.users.iter().map(|s| s.read().len()).sum()
    }

    /// Channel name -> local subscriber count.
    pub fn channels(&self) -> Vec<(String, usize)> {
        self.channels
            .iter()
            .flat_map(|s| {
                s.read()
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.len()))
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    pub fn num_channels(&self) -> usize {
        self.channels.iter().map(|s| s.read().len()).sum()
    }

    pub fn num_subs(&self) -> usize {
        self.channels
            .iter()
            .map(|s| s.read().values().map(HashMap::len).sum::<usize>())
            .sum()
    }
}
