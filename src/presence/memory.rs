//! In-process presence: a sharded map of channel -> client id -> info, and user ->
//! connection ids.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, RandomState};

use async_trait::async_trait;
use parking_lot::Mutex;

use super::{PresenceError, PresenceManager, PresenceStats};
use crate::protocol::messages::ClientInfo;

const SHARDS: usize = 32;

/// Locks are parking_lot mutexes held only for map edits, never across `.await`.
pub struct MemoryPresence {
    shards: Vec<Mutex<HashMap<String, HashMap<String, ClientInfo>>>>,
    users: Vec<Mutex<HashMap<String, HashSet<String>>>>,
    hasher: RandomState,
}

impl Default for MemoryPresence {
    fn default() -> Self {
        MemoryPresence {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            users: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
        }
    }
}

impl MemoryPresence {
    fn shard(&self, channel: &str) -> &Mutex<HashMap<String, HashMap<String, ClientInfo>>> {
        &self.shards[(self.hasher.hash_one(channel) as usize) % SHARDS]
    }

    fn user_shard(&self, user: &str) -> &Mutex<HashMap<String, HashSet<String>>> {
        &self.users[(self.hasher.hash_one(user) as usize) % SHARDS]
    }
}

#[async_trait]
impl PresenceManager for MemoryPresence {
    async fn add(
        &self,
        channel: &str,
        info: ClientInfo,
        limit: usize,
    ) -> Result<bool, PresenceError> {
        let mut shard = self.shard(channel).lock();
        let entries = shard.entry(channel.to_string()).or_default();
        if limit > 0 && entries.len() >= limit && !entries.contains_key(&info.client) {
            return Ok(false);
        }
        entries.insert(info.client.clone(), info);
        Ok(true)
    }

    async fn remove(&self, channel: &str, client_id: &str) -> Result<(), PresenceError> {
        let mut shard = self.shard(channel).lock();
        if let Some(m) = shard.get_mut(channel) {
            m.remove(client_id);
            if m.is_empty() {
                shard.remove(channel);
            }
        }
        Ok(())
    }

    async fn presence(&self, channel: &str) -> Result<HashMap<String, ClientInfo>, PresenceError> {
        Ok(self
            .shard(channel)
            .lock()
            .get(channel)
            .cloned()
            .unwrap_or_default())
    }

    async fn stats(&self, channel: &str) -> Result<PresenceStats, PresenceError> {
        let shard = self.shard(channel).lock();
        let Some(m) = shard.get(channel) else {
            return Ok(PresenceStats::default());
        };
        let users: HashSet<&str> = m.values().map(|i| i.user.as_str()).collect();
        Ok(PresenceStats {
            num_clients: m.len() as u32,
            num_users: users.len() as u32,
        })
    }

    async fn add_connection(
        &self,
        user: &str,
        conn: &str,
        limit: usize,
    ) -> Result<bool, PresenceError> {
        let mut shard = self.user_shard(user).lock();
        let set = shard.entry(user.to_string()).or_default();
        if set.contains(conn) {
            return Ok(true);
        }
        if limit > 0 && set.len() >= limit {
            if set.is_empty() {
                shard.remove(user);
            }
            return Ok(false);
        }
        set.insert(conn.to_string());
        Ok(true)
    }

    async fn remove_connection(&self, user: &str, conn: &str) -> Result<(), PresenceError> {
        let mut shard = self.user_shard(user).lock();
        if let Some(set) = shard.get_mut(user) {
            set.remove(conn);
            if set.is_empty() {
                shard.remove(user);
            }
        }
        Ok(())
    }

    async fn connections(&self, user: &str) -> Result<usize, PresenceError> {
        Ok(self
            .user_shard(user)
            .lock()
            .get(user)
            .map_or(0, HashSet::len))
    }
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn memory_presence_passes_conformance() {
        super::super::conformance::run_all(super::MemoryPresence::default()).await;
    }
}
