//! Command dispatch, and the commands that do not change subscriptions: publish,
//! presence, presence_stats, history, rpc, send.

use bytes::Bytes;

use super::session::Session;
use crate::broker::HistoryFilter;
use crate::metrics as m;
use crate::node::conn::Disconnect;
use crate::node::PublishOptions;
use crate::protocol::codec::encode_reply;
use crate::protocol::codes::{self, ErrorCode};
use crate::protocol::messages::{
    ClientInfo, Command, Empty, HistoryRequest, HistoryResult, PresenceRequest, PresenceResult,
    PresenceStatsRequest, PresenceStatsResult, PublishRequest, Reply, RpcRequest, RpcResult,
};

/// What a command produced.
pub(super) enum Outcome {
    /// An encoded reply to queue for the next write.
    Reply(Bytes),
    /// Nothing to send (pong, send).
    Nothing,
    /// End the connection with this code.
    Disconnect(Disconnect),
}

/// Why a command failed: an error reply, or the connection must end.
pub(super) enum CmdError {
    Code(ErrorCode),
    Disconnect(Disconnect),
}

impl From<ErrorCode> for CmdError {
    fn from(c: ErrorCode) -> Self {
        CmdError::Code(c)
    }
}

impl From<crate::node::NodeError> for CmdError {
    fn from(e: crate::node::NodeError) -> Self {
        if matches!(e.code(), codes::ERROR_INTERNAL) {
            tracing::warn!(cause = %e, "command failed");
        }
        CmdError::Code(e.code())
    }
}

pub(super) type CmdResult = Result<Reply, CmdError>;

/// A label for the commands metric that needs no allocation.
fn code_label(code: u32) -> &'static str {
    match code {
        100 => "100",
        101 => "101",
        102 => "102",
        103 => "103",
        104 => "104",
        105 => "105",
        106 => "106",
        107 => "107",
        108 => "108",
        109 => "109",
        110 => "110",
        111 => "111",
        112 => "112",
        _ => "other",
    }
}

/// A channel feature a command uses, for [`Session::authorize`].
#[derive(Clone, Copy)]
enum Feature {
    Publish,
    History,
    Presence,
}

/// Whether a client may use a channel feature: always, or only while subscribed.
pub(super) fn permitted(for_client: bool, for_subscriber: bool, subscribed: bool) -> bool {
    for_client || (for_subscriber && subscribed)
}

impl Session {
    pub(super) async fn handle_command(&mut self, cmd: Command) -> Outcome {
        let id = cmd.id;
        if self.conn.is_none() && cmd.connect.is_none() && cmd != Command::default() {
            // The first command must be connect (a pong may come before it).
            return Outcome::Disconnect(codes::DISCONNECT_BAD_REQUEST.into());
        }
        if id == 0 {
            // A command without id is a pong (empty) or a `send`; anything else is
            // malformed.
            if let Some(send) = cmd.send {
                self.on_send(send.data);
                return Outcome::Nothing;
            }
            if cmd == Command::default() {
                return Outcome::Nothing;
            }
            return Outcome::Disconnect(codes::DISCONNECT_BAD_REQUEST.into());
        }
        let method = method_name(&cmd);
        if method != "connect" {
            if let Some(limit) = self.over_command_limit().await {
                metrics::counter!(m::LIMIT_REJECTIONS_TOTAL, "limit" => limit).increment(1);
                metrics::counter!(m::COMMANDS_TOTAL, "method" => method, "result" => "111")
                    .increment(1);
                return self.error_reply(id, codes::ERROR_TOO_MANY_REQUESTS);
            }
        }
        let result = match cmd {
            Command {
                connect: Some(r), ..
            } => self.on_connect(r).await,
            Command {
                subscribe: Some(r), ..
            } => self.on_subscribe(r).await,
            Command {
                unsubscribe: Some(r),
                ..
            } => self.on_unsubscribe(r).await,
            Command {
                publish: Some(r), ..
            } => self.on_publish(r).await,
            Command {
                presence: Some(r), ..
            } => self.on_presence(r).await,
            Command {
                presence_stats: Some(r),
                ..
            } => self.on_presence_stats(r).await,
            Command {
                history: Some(r), ..
            } => self.on_history(r).await,
            Command { ping: Some(_), .. } => Ok(Reply {
                ping: Some(Empty {}),
                ..Default::default()
            }),
            Command { rpc: Some(r), .. } => self.on_rpc(r).await,
            Command {
                refresh: Some(r), ..
            } => self.on_refresh(r).await,
            Command {
                sub_refresh: Some(r),
                ..
            } => self.on_sub_refresh(r).await,
            Command { send: Some(s), .. } => {
                self.on_send(s.data);
                return Outcome::Nothing;
            }
            _ => Err(CmdError::Code(codes::ERROR_METHOD_NOT_FOUND)),
        };
        match result {
            Ok(mut reply) => {
                metrics::counter!(m::COMMANDS_TOTAL, "method" => method, "result" => "ok")
                    .increment(1);
                reply.id = id;
                Outcome::Reply(encode_reply(self.format, &reply))
            }
            Err(CmdError::Code(code)) => {
                metrics::counter!(m::COMMANDS_TOTAL, "method" => method, "result" => code_label(code.code)).increment(1);
                self.error_reply(id, code)
            }
            Err(CmdError::Disconnect(d)) => {
                metrics::counter!(m::COMMANDS_TOTAL, "method" => method, "result" => "disconnect")
                    .increment(1);
                Outcome::Disconnect(d)
            }
        }
    }

    /// The command limit this command would exceed, if any: the connection's own bucket
    /// first, then (once connected) the bucket its user shares with its other
    /// connections (on this node, or on every node in cluster mode). Anonymous connections (empty user) would all share one
    /// bucket, so they have only the per-connection one.
    async fn over_command_limit(&mut self) -> Option<&'static str> {
        if !self.bucket.allow() {
            return Some("connection_commands");
        }
        let user = self.conn.as_ref()?.handle.user.clone();
        if !user.is_empty() && !self.st.limits.allow_user(&user).await {
            return Some("user_commands");
        }
        None
    }

    fn error_reply(&self, id: u32, code: ErrorCode) -> Outcome {
        let reply = Reply {
            id,
            error: Some(code.to_error()),
            ..Default::default()
        };
        Outcome::Reply(encode_reply(self.format, &reply))
    }

    /// The publisher's info attached to a client publication.
    fn client_info(&self, channel: &str) -> Option<ClientInfo> {
        let conn = self.conn.as_ref()?;
        Some(ClientInfo {
            user: conn.handle.user.to_string(),
            client: conn.handle.client.to_string(),
            conn_info: conn.conn_info.clone(),
            chan_info: conn
                .subs
                .get(channel)
                .map(|s| s.chan_info.clone())
                .unwrap_or_default(),
        })
    }

    /// Channel permission for publish, history and presence (103 when denied):
    /// membership in a conversation namespace, otherwise the namespace's rules for any
    /// client or for subscribers.
    async fn authorize(&self, channel: &str, feature: Feature) -> Result<(), CmdError> {
        let opts = self.st.node.options(channel)?;
        let allowed = if opts.members {
            let user = self
                .conn
                .as_ref()
                .map(|c| c.handle.user.clone())
                .unwrap_or_default();
            self.st.node.is_member(channel, &user).await?
        } else {
            let (for_client, for_subscriber) = match feature {
                Feature::Publish => (
                    opts.allow_publish_for_client,
                    opts.allow_publish_for_subscriber,
                ),
                Feature::History => (
                    opts.allow_history_for_client,
                    opts.allow_history_for_subscriber,
                ),
                Feature::Presence => (
                    opts.allow_presence_for_client,
                    opts.allow_presence_for_subscriber,
                ),
            };
            permitted(for_client, for_subscriber, self.is_subscribed(channel))
        };
        if allowed {
            Ok(())
        } else {
            Err(codes::ERROR_PERMISSION_DENIED.into())
        }
    }

    fn is_subscribed(&self, channel: &str) -> bool {
        self.conn
            .as_ref()
            .is_some_and(|c| c.subs.contains_key(channel))
    }

    async fn on_publish(&mut self, req: PublishRequest) -> CmdResult {
        let node = self.st.node.clone();
        self.authorize(&req.channel, Feature::Publish).await?;
        let id_field = &node.options(&req.channel)?.client_message_id_field;
        if req.data.is_empty() {
            return Err(codes::ERROR_BAD_REQUEST.into());
        }
        let info = self.client_info(&req.channel);
        let idempotency_key = client_message_id(id_field, &req.data).map(|id| {
            format!(
                "client:{}:{id}",
                info.as_ref().map(|i| i.user.as_str()).unwrap_or_default()
            )
        });
        let opts = PublishOptions {
            info,
            idempotency_key,
            ..Default::default()
        };
        node.publish(&req.channel, req.data, opts).await?;
        metrics::counter!(m::PUBLICATIONS_TOTAL, "source" => "client").increment(1);
        Ok(Reply {
            publish: Some(Empty {}),
            ..Default::default()
        })
    }

    async fn on_presence(&mut self, req: PresenceRequest) -> CmdResult {
        let node = self.st.node.clone();
        self.authorize(&req.channel, Feature::Presence).await?;
        let presence = node.presence(&req.channel).await?;
        Ok(Reply {
            presence: Some(PresenceResult { presence }),
            ..Default::default()
        })
    }

    async fn on_presence_stats(&mut self, req: PresenceStatsRequest) -> CmdResult {
        let node = self.st.node.clone();
        self.authorize(&req.channel, Feature::Presence).await?;
        let s = node.presence_stats(&req.channel).await?;
        Ok(Reply {
            presence_stats: Some(PresenceStatsResult {
                num_clients: s.num_clients,
                num_users: s.num_users,
            }),
            ..Default::default()
        })
    }

    async fn on_history(&mut self, req: HistoryRequest) -> CmdResult {
        let node = self.st.node.clone();
        self.authorize(&req.channel, Feature::History).await?;
        let filter = HistoryFilter {
            since: req.since,
            limit: crate::broker::limit_from_protocol(req.limit),
            reverse: req.reverse,
        };
        let (publications, top) = node.history(&req.channel, filter).await?;
        Ok(Reply {
            history: Some(HistoryResult {
                publications,
                epoch: top.epoch,
                offset: top.offset,
            }),
            ..Default::default()
        })
    }

    async fn on_rpc(&mut self, req: RpcRequest) -> CmdResult {
        let data = match req.method.as_str() {
            "chat.read" => self.rpc_chat_read(&req.data).await?,
            "chat.unread" => self.rpc_chat_unread().await?,
            "chat.typing" => self.rpc_chat_typing(&req.data).await?,
            "push.register" => self.rpc_push_register(&req.data).await?,
            "push.unregister" => self.rpc_push_unregister(&req.data).await?,
            "push.mute" => self.rpc_push_mute(&req.data).await?,
            "push.unmute" => self.rpc_push_unmute(&req.data).await?,
            _ => {
                tracing::debug!(method = %req.method, "unknown rpc method");
                return Err(codes::ERROR_METHOD_NOT_FOUND.into());
            }
        };
        Ok(Reply {
            rpc: Some(RpcResult { data }),
            ..Default::default()
        })
    }

    fn on_send(&mut self, data: Bytes) {
        // Asynchronous client-to-server messages have no handler without a backend
        // proxy; they are accepted and dropped, as the protocol allows.
        tracing::trace!(len = data.len(), "send ignored");
    }
}

/// The client's message id: `field` at the top level of a JSON object payload.
fn client_message_id(field: &str, data: &[u8]) -> Option<String> {
    if field.is_empty() {
        return None;
    }
    let map: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(data).ok()?;
    match map.get(field)? {
        serde_json::Value::String(s) if !s.is_empty() => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn method_name(cmd: &Command) -> &'static str {
    if cmd.connect.is_some() {
        "connect"
    } else if cmd.subscribe.is_some() {
        "subscribe"
    } else if cmd.unsubscribe.is_some() {
        "unsubscribe"
    } else if cmd.publish.is_some() {
        "publish"
    } else if cmd.presence.is_some() {
        "presence"
    } else if cmd.presence_stats.is_some() {
        "presence_stats"
    } else if cmd.history.is_some() {
        "history"
    } else if cmd.ping.is_some() {
        "ping"
    } else if cmd.rpc.is_some() {
        "rpc"
    } else if cmd.refresh.is_some() {
        "refresh"
    } else if cmd.sub_refresh.is_some() {
        "sub_refresh"
    } else if cmd.send.is_some() {
        "send"
    } else {
        "unknown"
    }
}
