//! Server API methods with Centrifugo's request and result shapes.
//!
//! `call` is the one entry point: HTTP (`POST /api/<method>`), `batch`, and later Kafka
//! ingest all go through it, so every transport gets the same validation and errors.

use std::collections::HashMap;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{json, Value};

use super::conversations as conv;
use super::push;
use super::tokens;
use crate::broker::{limit_from_protocol, HistoryFilter};
use crate::node::cluster::{UserAction, UserCommand};
use crate::node::conn::Disconnect;
use crate::node::{Node, NodeError, PublishOptions};
use crate::protocol::codes::{self, ErrorCode};
use crate::protocol::messages::StreamPosition;

/// An error returned as `{"error":{"code":N,"message":"..."}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ApiError {
    pub code: u32,
    pub message: String,
}

impl ApiError {
    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError {
            code: codes::ERROR_BAD_REQUEST.code,
            message: message.into(),
        }
    }
}

impl From<ErrorCode> for ApiError {
    fn from(c: ErrorCode) -> Self {
        ApiError {
            code: c.code,
            message: c.message.to_string(),
        }
    }
}

impl From<NodeError> for ApiError {
    fn from(e: NodeError) -> Self {
        e.code().into()
    }
}

/// Every method name `call` knows, for routing and documentation.
pub const METHODS: &[&str] = &[
    "publish",
    "broadcast",
    "subscribe",
    "unsubscribe",
    "disconnect",
    "refresh",
    "presence",
    "presence_stats",
    "history",
    "history_remove",
    "channels",
    "info",
    "batch",
    "conversation_create",
    "conversation_members_add",
    "conversation_members_remove",
    "conversation_members",
    "user_conversations",
    "user_data_remove",
    "device_register",
    "device_update",
    "device_remove",
    "device_list",
    "send_push_notification",
    "revoke_token",
    "invalidate_user_tokens",
];

fn parse<T: serde::de::DeserializeOwned>(params: &[u8]) -> Result<T, ApiError> {
    let params = if params.iter().all(u8::is_ascii_whitespace) {
        b"{}".as_slice()
    } else {
        params
    };
    serde_json::from_slice(params)
        .map_err(|e| ApiError::bad_request(format!("invalid request body: {e}")))
}

fn channel_required(channel: &str) -> Result<(), ApiError> {
    if channel.is_empty() {
        return Err(ApiError::bad_request("channel required"));
    }
    Ok(())
}

fn user_required(user: &str) -> Result<(), ApiError> {
    if user.is_empty() {
        return Err(ApiError::bad_request("user required"));
    }
    Ok(())
}

/// Runs one API method; `params` is its JSON request body.
pub async fn call(node: &Node, method: &str, params: &[u8]) -> Result<Value, ApiError> {
    match method {
        "publish" => publish(node, parse(params)?).await,
        "broadcast" => broadcast(node, parse(params)?).await,
        "subscribe" => subscribe(node, parse(params)?).await,
        "unsubscribe" => unsubscribe(node, parse(params)?).await,
        "disconnect" => disconnect(node, parse(params)?).await,
        "refresh" => refresh(node, parse(params)?).await,
        "presence" => presence(node, parse(params)?).await,
        "presence_stats" => presence_stats(node, parse(params)?).await,
        "history" => history(node, parse(params)?).await,
        "history_remove" => history_remove(node, parse(params)?).await,
        "channels" => channels(node, parse(params)?),
        "info" => info(node).await,
        "batch" => Box::pin(batch(node, parse(params)?)).await,
        "conversation_create" | "conversation_members_add" => {
            conv::add_members(node, parse(params)?).await
        }
        "conversation_members_remove" => conv::remove_members(node, parse(params)?).await,
        "conversation_members" => conv::members(node, parse(params)?).await,
        "user_conversations" => conv::user_conversations(node, parse(params)?).await,
        "user_data_remove" => conv::user_data_remove(node, parse(params)?).await,
        "device_register" => push::device_register(node, parse(params)?).await,
        "device_update" => push::device_update(node, parse(params)?).await,
        "device_remove" => push::device_remove(node, parse(params)?).await,
        "device_list" => push::device_list(node, parse(params)?).await,
        "send_push_notification" => push::send_push_notification(node, parse(params)?).await,
        "revoke_token" => tokens::revoke_token(node, parse(params)?).await,
        "invalidate_user_tokens" => tokens::invalidate_user_tokens(node, parse(params)?).await,
        _ => Err(codes::ERROR_METHOD_NOT_FOUND.into()),
    }
}

/// Publication data: embedded JSON (`data`) or base64 (`b64data`).
fn payload(data: Option<Box<RawValue>>, b64data: Option<String>) -> Result<Bytes, ApiError> {
    match (data, b64data) {
        (Some(raw), _) => {
            let s: Box<str> = raw.into();
            Ok(Bytes::from(String::from(s)))
        }
        (None, Some(b)) => {
            use base64::Engine as _;
            base64::engine::general_purpose::STANDARD
                .decode(b.as_bytes())
                .map(Bytes::from)
                .map_err(|e| ApiError::bad_request(format!("b64data: {e}")))
        }
        (None, None) => Err(ApiError::bad_request("data required")),
    }
}

#[derive(Deserialize)]
struct PublishReq {
    #[serde(default)]
    channel: String,
    data: Option<Box<RawValue>>,
    b64data: Option<String>,
    #[serde(default)]
    skip_history: bool,
    #[serde(default)]
    tags: HashMap<String, String>,
    /// A retry with the same key gets the original's position (persisted namespaces).
    #[serde(default)]
    idempotency_key: Option<String>,
    /// Title, body and data of the offline push fallback's notification (docs/PUSH.md).
    #[serde(default)]
    push: Option<Box<RawValue>>,
}

async fn publish(node: &Node, mut r: PublishReq) -> Result<Value, ApiError> {
    channel_required(&r.channel)?;
    push::push_tag(r.push.as_deref(), &mut r.tags)?;
    let data = payload(r.data, r.b64data)?;
    let pos = node
        .publish(
            &r.channel,
            data,
            PublishOptions {
                info: None,
                tags: r.tags,
                skip_history: r.skip_history,
                idempotency_key: r.idempotency_key,
            },
        )
        .await?;
    metrics::counter!(crate::metrics::PUBLICATIONS_TOTAL, "source" => "api").increment(1);
    Ok(position_json(&pos))
}

fn position_json(pos: &StreamPosition) -> Value {
    if pos.offset == 0 {
        json!({})
    } else {
        json!({"offset": pos.offset, "epoch": pos.epoch})
    }
}

#[derive(Deserialize)]
struct BroadcastReq {
    #[serde(default)]
    channels: Vec<String>,
    data: Option<Box<RawValue>>,
    b64data: Option<String>,
    #[serde(default)]
    skip_history: bool,
    #[serde(default)]
    tags: HashMap<String, String>,
    #[serde(default)]
    idempotency_key: Option<String>,
}

async fn broadcast(node: &Node, r: BroadcastReq) -> Result<Value, ApiError> {
    if r.channels.is_empty() {
        return Err(ApiError::bad_request("channels required"));
    }
    let data = payload(r.data, r.b64data)?;
    let mut responses = Vec::with_capacity(r.channels.len());
    for ch in &r.channels {
        let opts = PublishOptions {
            info: None,
            tags: r.tags.clone(),
            skip_history: r.skip_history,
            idempotency_key: r.idempotency_key.clone(),
        };
        match node.publish(ch, data.clone(), opts).await {
            Ok(pos) => {
                metrics::counter!(crate::metrics::PUBLICATIONS_TOTAL, "source" => "api")
                    .increment(1);
                responses.push(json!({"result": position_json(&pos)}));
            }
            Err(e) => responses.push(json!({"error": ApiError::from(e)})),
        }
    }
    Ok(json!({"responses": responses}))
}

#[derive(Deserialize)]
struct SubscribeReq {
    #[serde(default)]
    user: String,
    #[serde(default)]
    channel: String,
    #[serde(default)]
    client: Option<String>,
    info: Option<Box<RawValue>>,
}

/// User commands reach every node holding the user's connections (cluster mode).
async fn user_command(
    node: &Node,
    user: String,
    client: Option<String>,
    action: UserAction,
) -> Result<Value, ApiError> {
    node.user_command(UserCommand {
        user,
        client,
        action,
    })
    .await?;
    Ok(json!({}))
}

async fn subscribe(node: &Node, r: SubscribeReq) -> Result<Value, ApiError> {
    user_required(&r.user)?;
    channel_required(&r.channel)?;
    node.options(&r.channel)?;
    let info = r
        .info
        .map(|raw| Bytes::from(String::from(Box::<str>::from(raw))))
        .unwrap_or_default();
    let action = UserAction::Subscribe {
        channel: r.channel,
        info,
    };
    user_command(node, r.user, r.client, action).await
}

#[derive(Deserialize)]
struct UnsubscribeReq {
    #[serde(default)]
    user: String,
    #[serde(default)]
    channel: String,
    #[serde(default)]
    client: Option<String>,
}

async fn unsubscribe(node: &Node, r: UnsubscribeReq) -> Result<Value, ApiError> {
    user_required(&r.user)?;
    channel_required(&r.channel)?;
    let action = UserAction::Unsubscribe { channel: r.channel };
    user_command(node, r.user, r.client, action).await
}

#[derive(Deserialize)]
struct DisconnectSpec {
    code: u16,
    #[serde(default)]
    reason: String,
}

#[derive(Deserialize)]
struct DisconnectReq {
    #[serde(default)]
    user: String,
    #[serde(default)]
    client: Option<String>,
    #[serde(default)]
    whitelist: Vec<String>,
    disconnect: Option<DisconnectSpec>,
}

async fn disconnect(node: &Node, r: DisconnectReq) -> Result<Value, ApiError> {
    user_required(&r.user)?;
    let d = match r.disconnect {
        None => codes::DISCONNECT_FORCE_NO_RECONNECT.into(),
        Some(spec) => {
            if !(3000..=4999).contains(&spec.code) {
                return Err(ApiError::bad_request(
                    "disconnect code must be in 3000..=4999",
                ));
            }
            // A close frame's reason must fit in 123 bytes, and the SDKs need one to
            // tell a final disconnect from a transport failure.
            if spec.reason.is_empty() || spec.reason.len() > 100 {
                return Err(ApiError::bad_request(
                    "disconnect reason must be 1..=100 bytes",
                ));
            }
            Disconnect {
                code: spec.code,
                reason: spec.reason,
            }
        }
    };
    let action = UserAction::Disconnect {
        code: d.code,
        reason: d.reason,
        whitelist: r.whitelist,
    };
    user_command(node, r.user, r.client, action).await
}

#[derive(Deserialize)]
struct RefreshReq {
    #[serde(default)]
    user: String,
    #[serde(default)]
    client: Option<String>,
    #[serde(default)]
    expired: bool,
    #[serde(default)]
    expire_at: Option<i64>,
}

async fn refresh(node: &Node, r: RefreshReq) -> Result<Value, ApiError> {
    user_required(&r.user)?;
    let action = UserAction::Refresh {
        expire_at: r.expire_at.filter(|t| *t > 0),
        expired: r.expired,
    };
    user_command(node, r.user, r.client, action).await
}

#[derive(Deserialize)]
struct ChannelReq {
    #[serde(default)]
    channel: String,
}

async fn presence(node: &Node, r: ChannelReq) -> Result<Value, ApiError> {
    channel_required(&r.channel)?;
    let p = node.presence(&r.channel).await?;
    Ok(json!({"presence": p}))
}

async fn presence_stats(node: &Node, r: ChannelReq) -> Result<Value, ApiError> {
    channel_required(&r.channel)?;
    let s = node.presence_stats(&r.channel).await?;
    Ok(json!({"num_clients": s.num_clients, "num_users": s.num_users}))
}

#[derive(Deserialize)]
struct HistoryReq {
    #[serde(default)]
    channel: String,
    #[serde(default)]
    limit: i32,
    since: Option<StreamPosition>,
    #[serde(default)]
    reverse: bool,
}

async fn history(node: &Node, r: HistoryReq) -> Result<Value, ApiError> {
    channel_required(&r.channel)?;
    let filter = HistoryFilter {
        since: r.since,
        limit: limit_from_protocol(r.limit),
        reverse: r.reverse,
    };
    let (pubs, top) = node.history(&r.channel, filter).await?;
    Ok(json!({"publications": pubs, "offset": top.offset, "epoch": top.epoch}))
}

async fn history_remove(node: &Node, r: ChannelReq) -> Result<Value, ApiError> {
    channel_required(&r.channel)?;
    node.remove_history(&r.channel).await?;
    Ok(json!({}))
}

#[derive(Deserialize)]
struct ChannelsReq {
    #[serde(default)]
    pattern: String,
}

fn channels(node: &Node, r: ChannelsReq) -> Result<Value, ApiError> {
    let mut out = serde_json::Map::new();
    for (name, n) in node.channels() {
        if r.pattern.is_empty() || glob_match(&r.pattern, &name) {
            out.insert(name, json!({"num_clients": n}));
        }
    }
    Ok(json!({"channels": out}))
}

/// Every live node (cluster mode: from the node registry in Redis).
async fn info(node: &Node) -> Result<Value, ApiError> {
    let nodes: Vec<Value> = node
        .nodes()
        .await?
        .into_iter()
        .map(|i| {
            json!({
                "uid": i.uid,
                "name": i.name,
                "version": i.version,
                "num_clients": i.num_clients,
                "num_users": i.num_users,
                "num_channels": i.num_channels,
                "num_subs": i.num_subs,
                "uptime": i.uptime_secs,
            })
        })
        .collect();
    Ok(json!({ "nodes": nodes }))
}

#[derive(Deserialize)]
struct BatchReq {
    #[serde(default)]
    commands: Vec<HashMap<String, Box<RawValue>>>,
    #[serde(default)]
    parallel: bool,
}

async fn batch(node: &Node, r: BatchReq) -> Result<Value, ApiError> {
    let run = |cmd: HashMap<String, Box<RawValue>>| async move {
        let mut it = cmd.into_iter();
        let (Some((method, params)), None) = (it.next(), it.next()) else {
            return json!({"error": ApiError::bad_request("each command has exactly one method key")});
        };
        if method == "batch" {
            return json!({"error": ApiError::bad_request("batch cannot nest")});
        }
        match call(node, &method, params.get().as_bytes()).await {
            Ok(v) => json!({ method: v }),
            Err(e) => json!({"error": e}),
        }
    };
    let replies: Vec<Value> = if r.parallel {
        futures_util::future::join_all(r.commands.into_iter().map(run)).await
    } else {
        let mut v = Vec::with_capacity(r.commands.len());
        for c in r.commands {
            v.push(run(c).await);
        }
        v
    };
    Ok(json!({"replies": replies}))
}

/// `*` matches any run of characters, `?` one character.
fn glob_match(pattern: &str, s: &str) -> bool {
    let (p, s): (Vec<char>, Vec<char>) = (pattern.chars().collect(), s.chars().collect());
    let (mut pi, mut si, mut star, mut mark) = (0, 0, None, 0);
    while si < s.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == s[si]) {
            pi += 1;
            si += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = si;
            pi += 1;
        } else if let Some(st) = star {
            pi = st + 1;
            mark += 1;
            si = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

#[cfg(test)]
mod tests {
    use super::glob_match;

    #[test]
    fn globs() {
        assert!(glob_match("chat:*", "chat:room"));
        assert!(glob_match("*", "x"));
        assert!(glob_match("a?c", "abc"));
        assert!(!glob_match("chat:*", "news"));
        assert!(glob_match("*:room*", "chat:room1"));
    }
}
