//! Built-in RPC methods for conversations: `chat.read`, `chat.unread`, `chat.typing`.
//!
//! Read receipts and typing indicators travel as ephemeral publications (offset 0, not
//! stored), so they never disturb a subscriber's position or the history.

use bytes::Bytes;
use serde::Deserialize;
use serde_json::json;

use super::commands::CmdError;
use super::session::Session;
use crate::protocol::codes;
use crate::protocol::messages::ClientInfo;

#[derive(Deserialize)]
struct ReadReq {
    channel: String,
    offset: u64,
}

#[derive(Deserialize)]
struct TypingReq {
    channel: String,
}

fn parse<T: serde::de::DeserializeOwned>(data: &[u8]) -> Result<T, CmdError> {
    serde_json::from_slice(data).map_err(|_| CmdError::Code(codes::ERROR_BAD_REQUEST))
}

fn to_bytes(v: serde_json::Value) -> Bytes {
    Bytes::from(v.to_string())
}

impl Session {
    fn me(&self) -> Result<ClientInfo, CmdError> {
        let conn = self
            .conn
            .as_ref()
            .ok_or(CmdError::Code(codes::ERROR_UNAUTHORIZED))?;
        if conn.handle.user.is_empty() {
            return Err(codes::ERROR_PERMISSION_DENIED.into());
        }
        Ok(ClientInfo {
            user: conn.handle.user.to_string(),
            client: conn.handle.client.to_string(),
            conn_info: conn.conn_info.clone(),
            chan_info: Bytes::new(),
        })
    }

    /// The channel must be a conversation (102 otherwise) the user belongs to (103).
    async fn conversation_member(&self, channel: &str, user: &str) -> Result<(), CmdError> {
        let node = &self.st.node;
        if !node.options(channel)?.members {
            return Err(codes::ERROR_UNKNOWN_CHANNEL.into());
        }
        if !node.is_member(channel, user).await? {
            return Err(codes::ERROR_PERMISSION_DENIED.into());
        }
        Ok(())
    }

    /// `{channel, offset}` -> stores the read marker (never moving back), tells the
    /// conversation with a `{"type":"read"}` event; answers `{channel, offset}`.
    pub(super) async fn rpc_chat_read(&self, data: &[u8]) -> Result<Bytes, CmdError> {
        let req: ReadReq = parse(data)?;
        let me = self.me()?;
        self.conversation_member(&req.channel, &me.user).await?;
        let node = &self.st.node;
        let marker = node
            .conversations()?
            .set_read(&me.user, &req.channel, req.offset)
            .await
            .map_err(crate::node::NodeError::from)?;
        let event = to_bytes(json!({"type": "read", "user": me.user, "offset": marker}));
        node.publish_ephemeral(&req.channel, event, Some(me))
            .await?;
        Ok(to_bytes(json!({"channel": req.channel, "offset": marker})))
    }

    /// Unread counts of every conversation of the user, and their total.
    pub(super) async fn rpc_chat_unread(&self) -> Result<Bytes, CmdError> {
        let me = self.me()?;
        let summaries = self.st.node.user_conversations(&me.user).await?;
        let total: u64 = summaries.iter().map(|c| c.unread).sum();
        let list: Vec<_> = summaries
            .iter()
            .map(|c| json!({"channel": c.channel, "unread": c.unread, "offset": c.top, "read_offset": c.read_offset}))
            .collect();
        Ok(to_bytes(json!({"conversations": list, "total": total})))
    }

    /// `{channel}` -> a `{"type":"typing"}` event to the conversation; nothing stored.
    pub(super) async fn rpc_chat_typing(&self, data: &[u8]) -> Result<Bytes, CmdError> {
        let req: TypingReq = parse(data)?;
        let me = self.me()?;
        self.conversation_member(&req.channel, &me.user).await?;
        let event = to_bytes(json!({"type": "typing", "user": me.user}));
        self.st
            .node
            .publish_ephemeral(&req.channel, event, Some(me))
            .await?;
        Ok(to_bytes(json!({})))
    }
}
