//! `connect` and `refresh`: authenticating a connection and extending its lifetime.

use std::collections::HashMap;

use super::commands::{CmdError, CmdResult};
use super::session::{Connected, Session};
use crate::auth::{now_unix, ConnectGrant, TokenError};
use crate::node::conn::ConnHandle;
use crate::protocol::codes;
use crate::protocol::messages::{
    ConnectRequest, ConnectResult, RefreshRequest, RefreshResult, Reply, SubscribeResultEntry,
};

/// `expires`/`ttl` fields for an expiry in unix seconds.
pub(super) fn ttl_of(expires_at: Option<i64>) -> (bool, u32) {
    match expires_at {
        Some(t) => (true, (t - now_unix()).clamp(0, u32::MAX as i64) as u32),
        None => (false, 0),
    }
}

impl Session {
    pub(super) async fn on_connect(&mut self, req: ConnectRequest) -> CmdResult {
        if self.conn.is_some() {
            return Err(CmdError::Disconnect(codes::DISCONNECT_BAD_REQUEST.into()));
        }
        let node = self.st.node.clone();
        let cfg = node.config();
        let grant = if req.token.is_empty() {
            if !cfg.auth.allow_anonymous {
                return Err(codes::ERROR_UNAUTHORIZED.into());
            }
            ConnectGrant::default()
        } else {
            self.st.verifier.prepare(&req.token).await;
            match self.st.verifier.verify_connect(&req.token) {
                Ok(g) => g,
                Err(TokenError::Unavailable) => return Err(codes::ERROR_INTERNAL.into()),
                // The SDK fetches a fresh token and reconnects.
                Err(TokenError::Expired) => return Err(codes::ERROR_TOKEN_EXPIRED.into()),
                Err(TokenError::Invalid(why)) => {
                    tracing::debug!(cause = %why, "connection token rejected");
                    return Err(CmdError::Disconnect(codes::DISCONNECT_INVALID_TOKEN.into()));
                }
            }
        };
        if grant.user.is_empty() && !cfg.auth.allow_anonymous {
            return Err(CmdError::Disconnect(
                codes::DISCONNECT_PERMISSION_DENIED.into(),
            ));
        }
        if node.is_revoked(&grant.user, &grant.token) {
            tracing::debug!(user = %grant.user, "revoked connection token rejected");
            return Err(CmdError::Disconnect(codes::DISCONNECT_INVALID_TOKEN.into()));
        }
        let client = uuid::Uuid::new_v4().to_string();
        let (handle, rx) = ConnHandle::new(
            node.next_seq(),
            client.clone().into(),
            grant.user.clone().into(),
            self.format,
            cfg.client.outbound_queue_len,
        );
        // Before the registration, so a revocation that finds the connection registered
        // also finds its token.
        handle.set_token(grant.token.clone());
        if !node.add_conn(handle.clone()).await {
            metrics::counter!(crate::metrics::CONNECTS_TOTAL, "result" => "limit").increment(1);
            return Err(CmdError::Disconnect(
                codes::DISCONNECT_CONNECTION_LIMIT.into(),
            ));
        }
        // A revocation that landed between the first check and the registration did not
        // see this connection: look again now that it would.
        if node.is_revoked(&grant.user, &grant.token) {
            node.remove_conn(&handle);
            return Err(CmdError::Disconnect(codes::DISCONNECT_INVALID_TOKEN.into()));
        }
        metrics::counter!(crate::metrics::CONNECTS_TOTAL, "result" => "ok").increment(1);
        self.conn = Some(Connected {
            handle,
            conn_info: grant.info,
            expires_at: grant.expires_at,
            subs: HashMap::new(),
        });
        self.queue_rx = Some(rx.queue);
        self.control_rx = Some(rx.control);

        // Server-side subscriptions: from the token, plus the personal channel.
        let mut channels = grant.channels;
        if cfg.auth.personal_channel && !grant.user.is_empty() {
            channels.push(format!("{}:#{}", cfg.auth.personal_namespace, grant.user));
        }
        let mut subs = Vec::with_capacity(channels.len());
        for channel in channels {
            let recover = req.subs.get(&channel);
            match self
                .subscribe_server_side(&channel, recover, bytes::Bytes::new())
                .await
            {
                Ok(res) => subs.push(SubscribeResultEntry::new(channel, res)),
                Err(CmdError::Code(code)) => {
                    tracing::warn!(channel, code = code.code, "server-side subscription failed");
                }
                Err(CmdError::Disconnect(d)) => return Err(CmdError::Disconnect(d)),
            }
        }
        let (expires, ttl) = ttl_of(grant.expires_at);
        Ok(Reply {
            connect: Some(ConnectResult {
                client,
                version: env!("CARGO_PKG_VERSION").to_string(),
                expires,
                ttl,
                subs,
                ping: cfg.client.ping_interval.as_secs().max(1) as u32,
                pong: true,
                ..Default::default()
            }),
            ..Default::default()
        })
    }

    pub(super) async fn on_refresh(&mut self, req: RefreshRequest) -> CmdResult {
        let verifier = self.st.verifier.clone();
        let Some(conn) = self.conn.as_mut() else {
            return Err(CmdError::Disconnect(codes::DISCONNECT_BAD_REQUEST.into()));
        };
        if req.token.is_empty() {
            return Err(codes::ERROR_BAD_REQUEST.into());
        }
        verifier.prepare(&req.token).await;
        let grant = match verifier.verify_connect(&req.token) {
            Ok(g) => g,
            // Keys unavailable for now: the SDK reconnects and refreshes again.
            Err(TokenError::Unavailable) => {
                return Err(CmdError::Disconnect(codes::DISCONNECT_SERVER_ERROR.into()))
            }
            Err(TokenError::Expired) => {
                return Err(CmdError::Disconnect(codes::DISCONNECT_EXPIRED.into()))
            }
            Err(TokenError::Invalid(_)) => {
                return Err(CmdError::Disconnect(codes::DISCONNECT_INVALID_TOKEN.into()))
            }
        };
        if grant.user != *conn.handle.user || self.st.node.is_revoked(&grant.user, &grant.token) {
            return Err(CmdError::Disconnect(codes::DISCONNECT_INVALID_TOKEN.into()));
        }
        conn.handle.set_token(grant.token);
        conn.expires_at = grant.expires_at;
        if !grant.info.is_empty() {
            conn.conn_info = grant.info;
        }
        let (expires, ttl) = ttl_of(conn.expires_at);
        Ok(Reply {
            refresh: Some(RefreshResult {
                client: conn.handle.client.to_string(),
                version: env!("CARGO_PKG_VERSION").to_string(),
                expires,
                ttl,
            }),
            ..Default::default()
        })
    }

    /// A server API `refresh`: new expiry pushed to the client.
    pub(super) fn on_server_refresh(&mut self, expire_at: Option<i64>) {
        let Some(conn) = self.conn.as_mut() else {
            return;
        };
        conn.expires_at = expire_at;
        let (expires, ttl) = ttl_of(expire_at);
        let push = crate::protocol::messages::Push {
            refresh: Some(crate::protocol::messages::RefreshPush { expires, ttl }),
            ..Default::default()
        };
        let reply = Reply {
            push: Some(push),
            ..Default::default()
        };
        self.out
            .push(crate::protocol::codec::encode_reply(self.format, &reply));
    }
}
