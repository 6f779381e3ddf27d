//! Who is subscribed to a channel, for the `presence` and `presence_stats` commands.
//!
//! `memory` is the single-node default; a Redis implementation (cluster mode) keeps
//! per-client entries with an expiry that the owning node refreshes.

pub mod memory;

use std::collections::HashMap;

use async_trait::async_trait;

use crate::protocol::messages::ClientInfo;

#[derive(Debug, thiserror::Error)]
pub enum PresenceError {
    #[error("presence backend unavailable: {0}")]
    Unavailable(String),
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PresenceStats {
    pub num_clients: u32,
    pub num_users: u32,
}

#[async_trait]
pub trait PresenceManager: Send + Sync + 'static {
    async fn add(&self, channel: &str, info: ClientInfo) -> Result<(), PresenceError>;
    async fn remove(&self, channel: &str, client_id: &str) -> Result<(), PresenceError>;
    /// Client id -> info of every client present in `channel`.
    async fn presence(&self, channel: &str) -> Result<HashMap<String, ClientInfo>, PresenceError>;
    async fn stats(&self, channel: &str) -> Result<PresenceStats, PresenceError>;
}

#[cfg(test)]
pub(crate) mod conformance {
    use super::*;

    fn info(user: &str, client: &str) -> ClientInfo {
        ClientInfo {
            user: user.into(),
            client: client.into(),
            ..Default::default()
        }
    }

    pub async fn run_all<P: PresenceManager>(p: P) {
        p.add("c", info("alice", "1")).await.unwrap();
        p.add("c", info("alice", "2")).await.unwrap();
        p.add("c", info("bob", "3")).await.unwrap();
        p.add("other", info("carol", "4")).await.unwrap();
        let m = p.presence("c").await.unwrap();
        assert_eq!(m.len(), 3);
        assert_eq!(m["3"].user, "bob");
        assert_eq!(
            p.stats("c").await.unwrap(),
            PresenceStats {
                num_clients: 3,
                num_users: 2
            }
        );
        p.remove("c", "1").await.unwrap();
        p.remove("c", "1").await.unwrap();
        assert_eq!(
            p.stats("c").await.unwrap(),
            PresenceStats {
                num_clients: 2,
                num_users: 2
            }
        );
        p.remove("c", "2").await.unwrap();
        p.remove("c", "3").await.unwrap();
        assert!(p.presence("c").await.unwrap().is_empty());
        assert_eq!(p.stats("nobody").await.unwrap(), PresenceStats::default());
    }
}
