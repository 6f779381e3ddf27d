//! Subscriptions: client `subscribe`/`unsubscribe`/`sub_refresh`, server-side
//! subscriptions (token `channels`, personal channel, server API), and recovery.

use std::sync::Arc;

use bytes::Bytes;

use super::commands::{CmdError, CmdResult};
use super::connect::ttl_of;
use super::session::{Session, SubState};
use crate::auth::TokenError;
use crate::broker::{BrokerError, HistoryFilter};
use crate::config::ChannelOptions;
use crate::node::channels::user_limited_allows;
use crate::node::conn::ConnHandle;
use crate::node::registry::Subscriber;
use crate::node::NodeError;
use crate::protocol::codec::encode_reply;
use crate::protocol::codes;
use crate::protocol::messages::{
    ClientInfo, Empty, Push, Reply, StreamPosition, SubRefreshRequest, SubRefreshResult,
    SubscribePush, SubscribeRequest, SubscribeResult, UnsubscribePush, UnsubscribeRequest,
};
use crate::store::StoreError;

/// What a subscription asks for, whoever initiated it.
#[derive(Default)]
struct Params {
    recover: bool,
    since: StreamPosition,
    positioned: bool,
    recoverable: bool,
    join_leave: bool,
    chan_info: Bytes,
    expires_at: Option<i64>,
    token_iat: Option<Option<i64>>,
}

impl Session {
    pub(super) async fn on_subscribe(&mut self, req: SubscribeRequest) -> CmdResult {
        let node = self.st.node.clone();
        let verifier = self.st.verifier.clone();
        let opts = node.options(&req.channel)?.clone();
        let Some(conn) = self.conn.as_ref() else {
            return Err(CmdError::Disconnect(codes::DISCONNECT_BAD_REQUEST.into()));
        };
        if conn.subs.contains_key(&req.channel) {
            return Err(codes::ERROR_ALREADY_SUBSCRIBED.into());
        }
        if conn.subs.len() >= node.config().client.max_subscriptions {
            metrics::counter!(crate::metrics::LIMIT_REJECTIONS_TOTAL, "limit" => "subscriptions")
                .increment(1);
            return Err(codes::ERROR_LIMIT_EXCEEDED.into());
        }
        let user = conn.handle.user.clone();
        let mut params = Params {
            recover: req.recover,
            since: StreamPosition {
                offset: req.offset,
                epoch: req.epoch.clone(),
            },
            positioned: req.positioned,
            recoverable: req.recoverable,
            join_leave: req.join_leave,
            ..Default::default()
        };
        if !req.token.is_empty() {
            verifier.prepare(&req.token).await;
            match verifier.verify_subscribe(&req.token, &user, &req.channel) {
                Ok(g) if node.is_sub_revoked(&user, &req.channel, g.iat) => {
                    tracing::debug!(channel = %req.channel, "revoked subscription token rejected");
                    return Err(codes::ERROR_PERMISSION_DENIED.into());
                }
                Ok(g) => {
                    params.chan_info = g.info;
                    params.expires_at = g.expires_at;
                    params.token_iat = Some(g.iat);
                }
                Err(TokenError::Unavailable) => return Err(codes::ERROR_INTERNAL.into()),
                Err(TokenError::Expired) => return Err(codes::ERROR_TOKEN_EXPIRED.into()),
                Err(TokenError::Invalid(why)) => {
                    tracing::debug!(cause = %why, channel = %req.channel, "subscription token rejected");
                    return Err(codes::ERROR_PERMISSION_DENIED.into());
                }
            }
        } else if opts.members {
            // Conversations: membership (or a DM name) is the permission.
            if !node.is_member(&req.channel, &user).await? {
                return Err(codes::ERROR_PERMISSION_DENIED.into());
            }
        } else if !may_subscribe_without_token(&opts, &req.channel, &user) {
            return Err(codes::ERROR_PERMISSION_DENIED.into());
        }
        let result = self.add_subscription(&req.channel, &opts, params).await?;
        Ok(Reply {
            subscribe: Some(result),
            ..Default::default()
        })
    }

    pub(super) async fn on_unsubscribe(&mut self, req: UnsubscribeRequest) -> CmdResult {
        self.remove_subscription(&req.channel).await;
        Ok(Reply {
            unsubscribe: Some(Empty {}),
            ..Default::default()
        })
    }

    pub(super) async fn on_sub_refresh(&mut self, req: SubRefreshRequest) -> CmdResult {
        let verifier = self.st.verifier.clone();
        verifier.prepare(&req.token).await;
        let Some(conn) = self.conn.as_mut() else {
            return Err(CmdError::Disconnect(codes::DISCONNECT_BAD_REQUEST.into()));
        };
        let user = conn.handle.user.clone();
        let Some(sub) = conn.subs.get_mut(&req.channel) else {
            return Err(codes::ERROR_PERMISSION_DENIED.into());
        };
        let grant = match verifier.verify_subscribe(&req.token, &user, &req.channel) {
            Ok(g) if self.st.node.is_sub_revoked(&user, &req.channel, g.iat) => {
                return Err(codes::ERROR_PERMISSION_DENIED.into())
            }
            Ok(g) => g,
            Err(TokenError::Unavailable) => return Err(codes::ERROR_INTERNAL.into()),
            Err(TokenError::Expired) => return Err(codes::ERROR_TOKEN_EXPIRED.into()),
            Err(TokenError::Invalid(_)) => return Err(codes::ERROR_PERMISSION_DENIED.into()),
        };
        sub.expires_at = grant.expires_at;
        sub.token_iat = Some(grant.iat);
        let (expires, ttl) = ttl_of(grant.expires_at);
        Ok(Reply {
            sub_refresh: Some(SubRefreshResult { expires, ttl }),
            ..Default::default()
        })
    }

    /// A subscription the server grants (token `channels`, personal channel): no
    /// permission checks; `recover` carries the client's position on reconnect.
    pub(super) async fn subscribe_server_side(
        &mut self,
        channel: &str,
        recover: Option<&SubscribeRequest>,
        chan_info: Bytes,
    ) -> Result<SubscribeResult, CmdError> {
        let opts = self.st.node.options(channel)?.clone();
        if self
            .conn
            .as_ref()
            .is_some_and(|c| c.subs.contains_key(channel))
        {
            return Err(codes::ERROR_ALREADY_SUBSCRIBED.into());
        }
        let params = Params {
            recover: recover.is_some_and(|r| r.recover),
            since: recover
                .map(|r| StreamPosition {
                    offset: r.offset,
                    epoch: r.epoch.clone(),
                })
                .unwrap_or_default(),
            recoverable: recover.is_some_and(|r| r.recover),
            chan_info,
            ..Default::default()
        };
        self.add_subscription(channel, &opts, params).await
    }

    /// Server API `subscribe`: subscribe and tell the client with a subscribe push.
    pub(super) async fn on_server_subscribe(&mut self, channel: &str, info: Bytes) {
        match self.subscribe_server_side(channel, None, info).await {
            Ok(res) => {
                let push = Push {
                    channel: channel.to_string(),
                    subscribe: Some(SubscribePush {
                        recoverable: res.recoverable,
                        epoch: res.epoch,
                        offset: res.offset,
                        positioned: res.positioned,
                        data: res.data,
                    }),
                    ..Default::default()
                };
                self.out.push(encode_reply(
                    self.format,
                    &Reply {
                        push: Some(push),
                        ..Default::default()
                    },
                ));
            }
            Err(_) => tracing::debug!(channel, "server-side subscribe skipped"),
        }
    }

    /// Ends a subscription from the server side and tells the client why.
    pub(super) async fn server_unsubscribe(&mut self, channel: &str, code: u32, reason: &str) {
        if !self.remove_subscription(channel).await {
            return;
        }
        let push = Push {
            channel: channel.to_string(),
            unsubscribe: Some(UnsubscribePush {
                code,
                reason: reason.to_string(),
            }),
            ..Default::default()
        };
        self.out.push(encode_reply(
            self.format,
            &Reply {
                push: Some(push),
                ..Default::default()
            },
        ));
    }

    /// Registers the subscription, then reads the stream position (and, when asked,
    /// the missed publications). Registering first means nothing published in between
    /// is lost; what arrives twice is dropped by offset in `on_outbound`.
    async fn add_subscription(
        &mut self,
        channel: &str,
        opts: &ChannelOptions,
        p: Params,
    ) -> Result<SubscribeResult, CmdError> {
        let node = self.st.node.clone();
        let Some(conn) = self.conn.as_ref() else {
            return Err(CmdError::Disconnect(codes::DISCONNECT_BAD_REQUEST.into()));
        };
        let handle = conn.handle.clone();
        let conn_info = conn.conn_info.clone();
        let history = opts.history_enabled();
        let recoverable = history && (p.recoverable || p.recover || opts.force_recovery);
        let positioned = history && (recoverable || p.positioned || opts.force_positioning);
        let join_leave = opts.join_leave && (p.join_leave || opts.force_push_join_leave);
        let info = ClientInfo {
            user: handle.user.to_string(),
            client: handle.client.to_string(),
            conn_info,
            chan_info: p.chan_info.clone(),
        };
        // Presence first: with a `max_presence_size` the entry is the admission ticket
        // (checked and written in one step), so a full channel is refused before
        // anything else happens.
        if opts.presence {
            match node
                .add_presence(channel, info.clone(), opts.max_presence_size)
                .await
            {
                Ok(true) => {}
                Ok(false) => {
                    metrics::counter!(crate::metrics::LIMIT_REJECTIONS_TOTAL, "limit" => "presence_size")
                        .increment(1);
                    return Err(codes::ERROR_LIMIT_EXCEEDED.into());
                }
                // Without a cap presence is best effort; with one, a limit that cannot
                // be checked refuses the subscription (and takes back an entry the
                // script may have written before its answer was lost).
                Err(e) if opts.max_presence_size > 0 => {
                    self.drop_presence(opts, channel, &info.client).await;
                    return Err(e.into());
                }
                Err(e) => tracing::warn!(cause = %e, channel, "presence add failed"),
            }
        }
        if let Err(e) = node
            .subscribe(
                channel,
                Subscriber {
                    conn: handle.clone(),
                    join_leave,
                },
            )
            .await
        {
            self.drop_presence(opts, channel, &info.client).await;
            return Err(e.into());
        }

        let mut res = SubscribeResult {
            recoverable,
            positioned,
            ..Default::default()
        };
        let mut offset = 0;
        if positioned {
            let top = if p.recover && recoverable {
                res.was_recovering = true;
                match node.recover(channel, p.since.clone()).await {
                    Ok((pubs, top)) => {
                        res.recovered = true;
                        res.publications = pubs;
                        Ok(top)
                    }
                    Err(
                        NodeError::Broker(BrokerError::UnrecoverablePosition)
                        | NodeError::Store(StoreError::UnrecoverablePosition),
                    ) => position(&node, channel).await,
                    Err(e) => Err(e),
                }
            } else {
                position(&node, channel).await
            };
            let top = match top {
                Ok(t) => t,
                Err(e) => {
                    node.unsubscribe(channel, handle.seq).await;
                    self.drop_presence(opts, channel, &info.client).await;
                    return Err(e.into());
                }
            };
            offset = top.offset;
            res.offset = top.offset;
            res.epoch = top.epoch;
        }
        let (expires, ttl) = ttl_of(p.expires_at);
        res.expires = expires;
        res.ttl = ttl;

        if opts.join_leave {
            if let Err(e) = node.join(channel, info).await {
                tracing::warn!(cause = %e, channel, "join publish failed");
            }
        }
        if let Some(conn) = self.conn.as_mut() {
            conn.subs.insert(
                channel.to_string(),
                SubState {
                    tracked: positioned,
                    offset,
                    chan_info: p.chan_info,
                    expires_at: p.expires_at,
                    presence: opts.presence,
                    join_leave: opts.join_leave,
                    token_iat: p.token_iat,
                },
            );
        }
        Ok(res)
    }

    /// Returns whether the connection was subscribed.
    async fn remove_subscription(&mut self, channel: &str) -> bool {
        let Some(conn) = self.conn.as_mut() else {
            return false;
        };
        let Some(sub) = conn.subs.remove(channel) else {
            return false;
        };
        let (handle, conn_info) = (conn.handle.clone(), conn.conn_info.clone());
        self.release(&handle, &conn_info, channel, &sub).await;
        true
    }

    /// Takes back the presence entry of a subscription that failed after it was added.
    async fn drop_presence(&self, opts: &ChannelOptions, channel: &str, client: &str) {
        if opts.presence {
            if let Err(e) = self.st.node.remove_presence(channel, client).await {
                tracing::warn!(cause = %e, channel, "presence remove failed");
            }
        }
    }

    /// Undoes what `add_subscription` registered.
    pub(super) async fn release(
        &self,
        handle: &Arc<ConnHandle>,
        conn_info: &Bytes,
        channel: &str,
        sub: &SubState,
    ) {
        let node = &self.st.node;
        node.unsubscribe(channel, handle.seq).await;
        if sub.presence {
            if let Err(e) = node.remove_presence(channel, &handle.client).await {
                tracing::warn!(cause = %e, channel, "presence remove failed");
            }
        }
        if sub.join_leave {
            let info = ClientInfo {
                user: handle.user.to_string(),
                client: handle.client.to_string(),
                conn_info: conn_info.clone(),
                chan_info: sub.chan_info.clone(),
            };
            if let Err(e) = node.leave(channel, info).await {
                tracing::warn!(cause = %e, channel, "leave publish failed");
            }
        }
    }
}

async fn position(node: &crate::node::Node, channel: &str) -> Result<StreamPosition, NodeError> {
    let (_, top) = node
        .history(
            channel,
            HistoryFilter {
                limit: Some(0),
                ..Default::default()
            },
        )
        .await?;
    Ok(top)
}

/// Channel rules for a subscribe without a subscription token.
fn may_subscribe_without_token(opts: &ChannelOptions, channel: &str, user: &str) -> bool {
    if opts.allow_user_limited_channels {
        if let Some(allowed) = user_limited_allows(channel, user) {
            return allowed;
        }
    }
    opts.allow_subscribe_for_client && (!user.is_empty() || opts.allow_subscribe_for_anonymous)
}
