//! User-level commands (server API `disconnect`, `subscribe`, `unsubscribe`,
//! `refresh`) and the node list, for one node or a cluster.
//!
//! What the node needs from the other nodes is a small trait it defines,
//! [`ClusterLink`], which `crate::cluster` implements: the node never knows Redis.

use async_trait::async_trait;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::conn::{Control, Disconnect};
use super::{Node, NodeError, NodeInfo};

/// A server-side change to a user's connections (server API `subscribe`,
/// `unsubscribe`, `refresh`, `disconnect`), applied by each node to the connections it
/// holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UserCommand {
    pub user: String,
    /// Only the connection with this client id; all of the user's otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
    pub action: UserAction,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum UserAction {
    Subscribe {
        channel: String,
        /// Channel info (JSON bytes), base64 on the wire.
        #[serde(with = "b64", default, skip_serializing_if = "Bytes::is_empty")]
        info: Bytes,
    },
    Unsubscribe {
        channel: String,
    },
    Refresh {
        #[serde(default)]
        expire_at: Option<i64>,
        #[serde(default)]
        expired: bool,
    },
    Disconnect {
        code: u16,
        reason: String,
        /// Client ids left connected.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        whitelist: Vec<String>,
    },
}

impl UserAction {
    /// The same action as a connection-level control message (`None` for a
    /// disconnect, which also honours a whitelist).
    pub fn to_control(&self) -> Option<Control> {
        match self {
            UserAction::Subscribe { channel, info } => Some(Control::Subscribe {
                channel: channel.clone(),
                info: info.clone(),
            }),
            UserAction::Unsubscribe { channel } => Some(Control::Unsubscribe {
                channel: channel.clone(),
            }),
            UserAction::Refresh { expire_at, expired } => Some(Control::Refresh {
                expire_at: *expire_at,
                expired: *expired,
            }),
            UserAction::Disconnect { .. } => None,
        }
    }

    /// The action of a control message a caller sent to a user's connections; `None`
    /// for `Recover`, which only the node itself sends, to its own connections.
    pub fn from_control(c: &Control) -> Option<UserAction> {
        Some(match c {
            Control::Subscribe { channel, info } => UserAction::Subscribe {
                channel: channel.clone(),
                info: info.clone(),
            },
            Control::Unsubscribe { channel } => UserAction::Unsubscribe {
                channel: channel.clone(),
            },
            Control::Refresh { expire_at, expired } => UserAction::Refresh {
                expire_at: *expire_at,
                expired: *expired,
            },
            Control::Disconnect(Disconnect { code, reason }) => UserAction::Disconnect {
                code: *code,
                reason: reason.clone(),
                whitelist: Vec::new(),
            },
            Control::Recover { .. } | Control::RevokeSubTokens { .. } => return None,
        })
    }
}

mod b64 {
    use base64::Engine as _;
    use bytes::Bytes;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(b: &Bytes, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(b))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Bytes, D::Error> {
        let s = String::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(s.as_bytes())
            .map(Bytes::from)
            .map_err(serde::de::Error::custom)
    }
}

/// User commands and node listing: local, plus the other nodes in cluster mode.
impl Node {
    /// Sends `control` to the user's connections (all, or the one with `client` id).
    /// Returns how many connections it reached on this node; in cluster mode the other
    /// nodes are told in the background (failures are logged). The server API uses
    /// [`Node::user_command`], which reports them.
    pub fn user_control(&self, user: &str, client: Option<&str>, control: Control) -> usize {
        let n = self.control_local(user, client, &control);
        if let (Some(link), Some(action)) = (
            self.shared.cluster.get(),
            UserAction::from_control(&control),
        ) {
            let cmd = UserCommand {
                user: user.to_string(),
                client: client.map(str::to_string),
                action,
            };
            let link = link.clone();
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move {
                    if let Err(e) = link.broadcast(&cmd).await {
                        tracing::warn!(cause = %e, user = %cmd.user, "user command not sent to other nodes");
                    }
                });
            }
        }
        n
    }

    fn control_local(&self, user: &str, client: Option<&str>, control: &Control) -> usize {
        let mut n = 0;
        for conn in self.shared.registry.user_conns(user) {
            if client.is_none_or(|c| c == &*conn.client) {
                conn.control(control.clone());
                n += 1;
            }
        }
        n
    }

    /// Disconnects a user's connections on this node, except those whose client id is
    /// whitelisted.
    pub fn disconnect_user(
        &self,
        user: &str,
        client: Option<&str>,
        whitelist: &[String],
        d: &Disconnect,
    ) -> usize {
        let mut n = 0;
        for conn in self.shared.registry.user_conns(user) {
            if client.is_none_or(|c| c == &*conn.client)
                && !whitelist.iter().any(|w| w == &*conn.client)
            {
                conn.disconnect(d.clone());
                n += 1;
            }
        }
        n
    }

    /// A server API user command: applied to this node's connections and, in cluster
    /// mode, sent to every other node. Fails if it could not be sent.
    pub async fn user_command(&self, cmd: UserCommand) -> Result<usize, NodeError> {
        let n = self.apply_user_command(&cmd);
        if let Some(link) = self.shared.cluster.get() {
            link.broadcast(&cmd).await?;
        }
        Ok(n)
    }

    /// Applies a user command to this node's connections only (the cluster's control
    /// channel calls it for commands from other nodes).
    pub fn apply_user_command(&self, cmd: &UserCommand) -> usize {
        let client = cmd.client.as_deref();
        match &cmd.action {
            UserAction::Disconnect {
                code,
                reason,
                whitelist,
            } => {
                let d = Disconnect {
                    code: *code,
                    reason: reason.clone(),
                };
                self.disconnect_user(&cmd.user, client, whitelist, &d)
            }
            other => match other.to_control() {
                Some(c) => self.control_local(&cmd.user, client, &c),
                None => 0,
            },
        }
    }

    /// Every live node: this one, plus the others in cluster mode.
    pub async fn nodes(&self) -> Result<Vec<NodeInfo>, NodeError> {
        match self.shared.cluster.get() {
            Some(link) => link.nodes(self.info()).await,
            None => Ok(vec![self.info()]),
        }
    }
}

/// The other nodes, as the node sees them in cluster mode.
#[async_trait]
pub trait ClusterLink: Send + Sync + 'static {
    /// Sends `cmd` to every other node; each applies it to its own connections of the
    /// user. Returns once the command is on its way (like Centrifugo's API, it does not
    /// wait for the nodes to act).
    async fn broadcast(&self, cmd: &UserCommand) -> Result<(), NodeError>;
    /// Sends a token revocation to every other node; each records it and disconnects
    /// its connections that use a revoked token.
    async fn broadcast_revocation(
        &self,
        r: &super::revocation::Revocation,
    ) -> Result<(), NodeError>;
    /// Every live node, this one included (this one with live figures).
    async fn nodes(&self, me: NodeInfo) -> Result<Vec<NodeInfo>, NodeError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_commands_roundtrip_as_json() {
        for action in [
            UserAction::Subscribe {
                channel: "news".into(),
                info: Bytes::from_static(br#"{"a":1}"#),
            },
            UserAction::Unsubscribe {
                channel: "news".into(),
            },
            UserAction::Refresh {
                expire_at: Some(5),
                expired: false,
            },
            UserAction::Disconnect {
                code: 4000,
                reason: "bye".into(),
                whitelist: vec!["c1".into()],
            },
        ] {
            let cmd = UserCommand {
                user: "alice".into(),
                client: Some("c2".into()),
                action,
            };
            let json = serde_json::to_string(&cmd).unwrap();
            assert_eq!(serde_json::from_str::<UserCommand>(&json).unwrap(), cmd);
        }
    }
}
