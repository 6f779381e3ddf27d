//! Who is subscribed to a channel, for the `presence` and `presence_stats` commands.
//!
//! Also counts each user's connections, for `client.max_connections_per_user`.
//!
//! `memory` is the single-node default; `redis` (cluster mode) keeps per-client entries
//! with an expiry that the owning node refreshes, so presence and the per-user limit are
//! cluster-wide and a node that dies leaves nothing behind for long.

pub mod memory;
pub mod redis;

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
    /// Adds (or refreshes) `info`'s entry unless `channel` already holds `limit` other
    /// clients (0 = no limit); false when full. Check and write are one step, so
    /// concurrent adds cannot overshoot the limit.
    async fn add(
        &self,
        channel: &str,
        info: ClientInfo,
        limit: usize,
    ) -> Result<bool, PresenceError>;
    async fn remove(&self, channel: &str, client_id: &str) -> Result<(), PresenceError>;
    /// Client id -> info of every client present in `channel`.
    async fn presence(&self, channel: &str) -> Result<HashMap<String, ClientInfo>, PresenceError>;
    async fn stats(&self, channel: &str) -> Result<PresenceStats, PresenceError>;
    /// Counts connection `conn` of `user` unless the user already has `limit` of them
    /// (0 = no limit); false when at the limit. Adding a counted `conn` again is a no-op
    /// that returns true.
    async fn add_connection(
        &self,
        user: &str,
        conn: &str,
        limit: usize,
    ) -> Result<bool, PresenceError>;
    async fn remove_connection(&self, user: &str, conn: &str) -> Result<(), PresenceError>;
    /// How many connections `user` has.
    async fn connections(&self, user: &str) -> Result<usize, PresenceError>;
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
        assert!(p.add("c", info("alice", "1"), 0).await.unwrap());
        assert!(p.add("c", info("alice", "2"), 0).await.unwrap());
        assert!(p.add("c", info("bob", "3"), 0).await.unwrap());
        assert!(p.add("other", info("carol", "4"), 0).await.unwrap());
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
        // A re-add replaces the entry (info refreshed), it does not count twice.
        let mut again = info("dave", "5");
        assert!(p.add("d", again.clone(), 1).await.unwrap());
        again.chan_info = bytes::Bytes::from_static(b"{}");
        assert!(
            p.add("d", again.clone(), 1).await.unwrap(),
            "a client already present is refreshed even at the limit"
        );
        assert_eq!(p.presence("d").await.unwrap()["5"], again);
        assert_eq!(p.stats("d").await.unwrap().num_clients, 1);

        // The channel limit: full at 2 clients, per channel, room again after a remove.
        assert!(p.add("full", info("gina", "6"), 2).await.unwrap());
        assert!(p.add("full", info("gina", "7"), 2).await.unwrap());
        assert!(!p.add("full", info("hal", "8"), 2).await.unwrap(), "full");
        assert!(!p.presence("full").await.unwrap().contains_key("8"));
        assert!(
            p.add("full", info("hal", "8"), 0).await.unwrap(),
            "0 = none"
        );
        p.remove("full", "8").await.unwrap();
        p.remove("full", "6").await.unwrap();
        assert!(
            p.add("full", info("hal", "8"), 2).await.unwrap(),
            "room again"
        );
        assert_eq!(p.stats("full").await.unwrap().num_clients, 2);

        // Per-user connection counts and the limit.
        assert!(p.add_connection("erin", "a", 2).await.unwrap());
        assert!(
            p.add_connection("erin", "a", 2).await.unwrap(),
            "idempotent"
        );
        assert!(p.add_connection("erin", "b", 2).await.unwrap());
        assert!(
            !p.add_connection("erin", "c", 2).await.unwrap(),
            "at the limit"
        );
        assert!(p.add_connection("frank", "c", 2).await.unwrap(), "per user");
        assert_eq!(p.connections("erin").await.unwrap(), 2);
        p.remove_connection("erin", "a").await.unwrap();
        assert!(
            p.add_connection("erin", "c", 2).await.unwrap(),
            "slot freed"
        );
        assert!(
            p.add_connection("erin", "d", 0).await.unwrap(),
            "0 = no limit"
        );
        assert_eq!(p.connections("erin").await.unwrap(), 3);
        assert_eq!(p.connections("nobody").await.unwrap(), 0);
    }
}
