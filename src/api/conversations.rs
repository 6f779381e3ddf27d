//! Server API methods for conversations and user data (Herald extensions).

use serde::Deserialize;
use serde_json::{json, Value};

use super::methods::ApiError;
use crate::node::conn::Control;
use crate::node::{Node, NodeError};
use crate::protocol::codes;

#[derive(Deserialize)]
pub struct MembersReq {
    #[serde(default)]
    channel: String,
    #[serde(default, alias = "members")]
    users: Vec<String>,
}

#[derive(Deserialize)]
pub struct ChannelReq {
    #[serde(default)]
    channel: String,
}

#[derive(Deserialize)]
pub struct UserReq {
    #[serde(default)]
    user: String,
    /// `user_data_remove`: replace the user's messages with tombstones.
    #[serde(default)]
    tombstone: bool,
}

/// The channel must be in a `members` namespace; DM channels have no stored members.
fn conversation_channel(node: &Node, channel: &str) -> Result<(), ApiError> {
    if channel.is_empty() {
        return Err(ApiError::bad_request("channel required"));
    }
    if !node.options(channel)?.members {
        return Err(ApiError {
            code: codes::ERROR_UNKNOWN_CHANNEL.code,
            message: "not a conversation namespace".into(),
        });
    }
    if channel.contains('#') {
        return Err(ApiError::bad_request(
            "members of a user-limited (DM) channel are implied by its name",
        ));
    }
    Ok(())
}

fn users_required(users: &[String]) -> Result<(), ApiError> {
    if users.is_empty() || users.iter().any(String::is_empty) {
        return Err(ApiError::bad_request("users required (non-empty user ids)"));
    }
    Ok(())
}

/// `conversation_create` / `conversation_members_add`: `{channel, users}`.
pub async fn add_members(node: &Node, r: MembersReq) -> Result<Value, ApiError> {
    conversation_channel(node, &r.channel)?;
    users_required(&r.users)?;
    node.conversations()?
        .add_members(&r.channel, &r.users)
        .await
        .map_err(NodeError::from)?;
    Ok(json!({}))
}

/// `conversation_members_remove`: `{channel, users}`; removed users' connections are
/// unsubscribed from the channel.
pub async fn remove_members(node: &Node, r: MembersReq) -> Result<Value, ApiError> {
    conversation_channel(node, &r.channel)?;
    users_required(&r.users)?;
    node.conversations()?
        .remove_members(&r.channel, &r.users)
        .await
        .map_err(NodeError::from)?;
    for u in &r.users {
        node.user_control(
            u,
            None,
            Control::Unsubscribe {
                channel: r.channel.clone(),
            },
        );
    }
    Ok(json!({}))
}

/// `conversation_members`: `{channel}` -> `{members}`.
pub async fn members(node: &Node, r: ChannelReq) -> Result<Value, ApiError> {
    conversation_channel(node, &r.channel)?;
    let members = node
        .conversations()?
        .members(&r.channel)
        .await
        .map_err(NodeError::from)?;
    Ok(json!({"members": members}))
}

/// `user_conversations`: `{user}` -> conversations with last message and unread count.
pub async fn user_conversations(node: &Node, r: UserReq) -> Result<Value, ApiError> {
    if r.user.is_empty() {
        return Err(ApiError::bad_request("user required"));
    }
    let list = node.user_conversations(&r.user).await?;
    let total: u64 = list.iter().map(|c| c.unread).sum();
    let conversations: Vec<Value> = list
        .into_iter()
        .map(|c| {
            json!({
                "channel": c.channel,
                "offset": c.top,
                "read_offset": c.read_offset,
                "unread": c.unread,
                "last": c.last,
            })
        })
        .collect();
    Ok(json!({"conversations": conversations, "total_unread": total}))
}

/// `user_data_remove`: `{user, tombstone}` -> read markers and memberships deleted;
/// with `tombstone`, the user's messages become `{"deleted":true}` (offsets stay).
pub async fn user_data_remove(node: &Node, r: UserReq) -> Result<Value, ApiError> {
    if r.user.is_empty() {
        return Err(ApiError::bad_request("user required"));
    }
    let n = node
        .conversations()?
        .remove_user_data(&r.user, r.tombstone)
        .await
        .map_err(NodeError::from)?;
    Ok(json!({"tombstoned": n}))
}
