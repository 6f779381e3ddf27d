//! One task per connection: a `select!` over inbound frames, the outbound queue,
//! server-side control, timers (ping, pong, expiry) and shutdown.
//!
//! All of a connection's state lives here and is touched only by this task, so it
//! needs no lock; the rest of the node reaches it through its `ConnHandle`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_http::ws::OpCode;
use bytes::Bytes;
use tokio::time::sleep_until;

use super::ratelimit::TokenBucket;
use super::wire::{WireError, WsConn, WsMessage};
use super::GatewayState;
use crate::auth::now_unix;
use crate::metrics as m;
use crate::node::conn::{ConnHandle, Control, Disconnect, Outbound};
use crate::node::mailbox::{ControlRx, QueueRx};
use crate::protocol::codec::{self, decode_json_commands, decode_protobuf_commands};
use crate::protocol::codes;
use crate::protocol::messages::Command;
use crate::protocol::Format;

/// State of one subscription of this connection.
pub(super) struct SubState {
    /// Offsets are tracked (positioned or recoverable): duplicates are dropped and a
    /// gap makes the client resubscribe with recovery.
    pub tracked: bool,
    pub offset: u64,
    pub chan_info: Bytes,
    /// Unix seconds; `None` never expires.
    pub expires_at: Option<i64>,
    pub presence: bool,
    pub join_leave: bool,
    /// Made with a subscription token: its `iat` (`Some(None)` without one), for
    /// `invalidate_user_tokens` with a channel.
    pub token_iat: Option<Option<i64>>,
}

/// State that exists once the connect command succeeded.
pub(super) struct Connected {
    pub handle: Arc<ConnHandle>,
    pub conn_info: Bytes,
    pub expires_at: Option<i64>,
    pub subs: HashMap<String, SubState>,
}

/// How the loop ends.
enum Exit {
    /// The client closed or the socket broke: nothing left to send.
    Gone,
    /// The client sent a close frame: echo it.
    ClientClosed,
    /// The server ends the connection with this code.
    Disconnect(Disconnect),
}

pub(super) struct Session {
    pub(super) st: GatewayState,
    pub(super) format: Format,
    ws: WsConn,
    pub(super) conn: Option<Connected>,
    pub(super) queue_rx: Option<QueueRx>,
    pub(super) control_rx: Option<ControlRx>,
    pub(super) bucket: TokenBucket,
    /// Encoded replies and pushes waiting for the next write.
    pub(super) out: Vec<Bytes>,
    opened: Instant,
    next_ping: Instant,
    pong_deadline: Option<Instant>,
}

async fn recv_queue(rx: &mut Option<QueueRx>) -> Option<Outbound> {
    match rx {
        Some(r) => r.recv().await,
        None => std::future::pending().await,
    }
}

async fn recv_control(rx: &mut Option<ControlRx>) -> Option<Control> {
    match rx {
        Some(r) => r.recv().await,
        None => std::future::pending().await,
    }
}

/// Converts unix seconds to an `Instant` deadline (now, if it has passed). Compare
/// expiries in unix seconds, never against this clamped value.
pub(super) fn instant_at(unix: i64) -> Instant {
    let delta = unix - now_unix();
    let now = Instant::now();
    if delta <= 0 {
        now
    } else {
        now + Duration::from_secs(delta as u64)
    }
}

/// Largest number of queued frames merged into one WebSocket message.
const MAX_COALESCE: usize = 128;

impl Session {
    pub(super) fn new(st: GatewayState, format: Format, ws: WsConn) -> Self {
        let c = &st.node.config().client;
        let now = Instant::now();
        Session {
            bucket: TokenBucket::new(c.command_rate, c.command_burst),
            next_ping: now + c.ping_interval,
            st,
            format,
            ws,
            conn: None,
            queue_rx: None,
            control_rx: None,
            out: Vec::new(),
            opened: now,
            pong_deadline: None,
        }
    }

    /// Boxed: the session's state is then one pointer in the connection's future, which
    /// would otherwise hold it twice (the value handed over and the running loop).
    pub(super) async fn run(mut self: Box<Self>) {
        let mut timer = Box::pin(sleep_until(self.next_deadline().into()));
        let exit = loop {
            let deadline = self.next_deadline();
            if timer.deadline() != deadline.into() {
                timer.as_mut().reset(deadline.into());
            }
            let shutdown = self.st.shutdown.clone();
            let connected = self.conn.is_some();
            tokio::select! {
                biased;
                _ = shutdown.cancelled(), if !connected => break Exit::Disconnect(codes::DISCONNECT_SHUTDOWN.into()),
                c = recv_control(&mut self.control_rx) => {
                    if let Some(c) = c {
                        if let Some(d) = Box::pin(self.on_control(c)).await { break Exit::Disconnect(d) }
                    }
                }
                msg = self.ws.recv() => match msg {
                    None => break Exit::Gone,
                    Some(Ok(WsMessage::Close)) => break Exit::ClientClosed,
                    Some(Ok(msg)) => if let Some(d) = Box::pin(self.on_message(msg)).await { break Exit::Disconnect(d) },
                    Some(Err(e)) => break Exit::Disconnect(wire_error(&e)),
                },
                item = recv_queue(&mut self.queue_rx) => {
                    if let Some(item) = item {
                        if let Some(d) = self.on_outbound(item).await { break Exit::Disconnect(d) }
                    }
                }
                _ = &mut timer => if let Some(d) = Box::pin(self.on_timer()).await { break Exit::Disconnect(d) },
            }
        };
        Box::pin(self.finish(exit)).await;
    }

    fn next_deadline(&self) -> Instant {
        let c = &self.st.node.config().client;
        let mut d = match &self.conn {
            None => self.opened + c.connect_timeout,
            Some(conn) => {
                let grace = self.grace_secs();
                let mut d = self.next_ping;
                let expiries = conn
                    .expires_at
                    .into_iter()
                    .chain(conn.subs.values().filter_map(|s| s.expires_at));
                for t in expiries {
                    d = d.min(instant_at(t + grace));
                }
                d
            }
        };
        if let Some(p) = self.pong_deadline {
            d = d.min(p);
        }
        d
    }

    /// `auth.expired_close_delay` in whole seconds, the unit of token expiries; rounded
    /// up so that a sub-second delay still gives the client its grace.
    fn grace_secs(&self) -> i64 {
        let d = self.st.node.config().auth.expired_close_delay;
        (d.as_secs() + u64::from(d.subsec_nanos() > 0)) as i64
    }

    async fn on_timer(&mut self) -> Option<Disconnect> {
        let now = Instant::now();
        let Some(conn) = &self.conn else {
            if now >= self.opened + self.st.node.config().client.connect_timeout {
                return Some(codes::DISCONNECT_STALE.into());
            }
            return None;
        };
        if self.pong_deadline.is_some_and(|p| now >= p) {
            return Some(codes::DISCONNECT_NO_PONG.into());
        }
        let grace = self.grace_secs();
        let unix_now = now_unix();
        if conn.expires_at.is_some_and(|t| unix_now >= t + grace) {
            return Some(codes::DISCONNECT_EXPIRED.into());
        }
        if conn
            .subs
            .values()
            .any(|s| s.expires_at.is_some_and(|t| unix_now >= t + grace))
        {
            return Some(codes::DISCONNECT_SUB_EXPIRED.into());
        }
        if now >= self.next_ping {
            let c = &self.st.node.config().client;
            self.next_ping = now + c.ping_interval;
            if self.pong_deadline.is_none() {
                self.pong_deadline = Some(now + c.pong_timeout);
            }
            self.out.push(codec::ping_frame(self.format));
            return self.flush().await;
        }
        None
    }

    async fn on_message(&mut self, msg: WsMessage) -> Option<Disconnect> {
        let commands = match (msg, self.format) {
            (WsMessage::Text(text), Format::Json) => {
                self.st.meters.bytes_in.increment(text.len() as u64);
                decode_json_commands(&text)
            }
            (WsMessage::Binary(bin), Format::Protobuf) => {
                self.st.meters.bytes_in.increment(bin.len() as u64);
                decode_protobuf_commands(bin)
            }
            (WsMessage::Ping(p), _) => return self.write(OpCode::Pong, &[p], None).await,
            (WsMessage::Pong, _) => return None,
            (WsMessage::Close, _) => return None,
            // A text frame on a Protobuf connection or the reverse.
            (_, _) => Err(codec::DecodeError::WrongFrameType),
        };
        // Any frame from the client proves it is alive.
        self.pong_deadline = None;
        let commands = match commands {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(cause = %e, "malformed client frame");
                return Some(codes::DISCONNECT_BAD_REQUEST.into());
            }
        };
        for cmd in commands {
            if let Some(d) = self.on_command(cmd).await {
                // Replies to earlier commands in the batch still go out first.
                let _ = self.flush().await;
                return Some(d);
            }
        }
        self.flush().await
    }

    async fn on_command(&mut self, cmd: Command) -> Option<Disconnect> {
        match self.handle_command(cmd).await {
            super::commands::Outcome::Reply(bytes) => {
                self.out.push(bytes);
                None
            }
            super::commands::Outcome::Nothing => None,
            super::commands::Outcome::Disconnect(d) => Some(d),
        }
    }

    async fn on_outbound(&mut self, first: Outbound) -> Option<Disconnect> {
        let mut oldest: Option<Instant> = None;
        let mut gaps: Vec<String> = Vec::new();
        let mut item = Some(first);
        let mut n = 0;
        while let Some(it) = item {
            n += 1;
            match it {
                Outbound::Frame(f) => self.out.push(f),
                Outbound::Pub {
                    channel,
                    offset,
                    frame,
                    published,
                } => {
                    let Some(conn) = self.conn.as_mut() else {
                        break;
                    };
                    // Not subscribed (any more): the publication was queued before an
                    // unsubscribe.
                    if let Some(sub) = conn.subs.get_mut(&*channel) {
                        if !sub.tracked || offset == 0 {
                            self.out.push(frame);
                        } else if offset <= sub.offset {
                            // Already delivered through recovery.
                        } else if offset == sub.offset + 1 {
                            sub.offset = offset;
                            self.out.push(frame);
                        } else {
                            gaps.push(channel.to_string());
                        }
                        oldest = Some(oldest.map_or(published, |o| o.min(published)));
                    }
                }
            }
            item = if n < MAX_COALESCE {
                self.queue_rx.as_mut().and_then(QueueRx::try_recv)
            } else {
                None
            };
        }
        if let Some(t) = oldest {
            self.st
                .meters
                .publish_to_write
                .record(t.elapsed().as_secs_f64());
        }
        for channel in gaps {
            // Never a silent gap: the SDK resubscribes and recovers from its position.
            Box::pin(self.server_unsubscribe(
                &channel,
                codes::UNSUBSCRIBE_INSUFFICIENT,
                "insufficient state",
            ))
            .await;
        }
        self.flush().await
    }

    async fn on_control(&mut self, c: Control) -> Option<Disconnect> {
        match c {
            Control::Disconnect(d) => return Some(d),
            Control::Subscribe { channel, info } => self.on_server_subscribe(&channel, info).await,
            Control::Unsubscribe { channel } => {
                self.server_unsubscribe(&channel, codes::UNSUBSCRIBE_SERVER, "server unsubscribe")
                    .await
            }
            Control::Refresh { expired: true, .. } => {
                return Some(codes::DISCONNECT_EXPIRED.into())
            }
            Control::Refresh { expire_at, .. } => self.on_server_refresh(expire_at),
            Control::RevokeSubTokens {
                channel,
                issued_before,
            } => {
                let revoked = |s: &SubState| {
                    s.token_iat
                        .is_some_and(|iat| iat.unwrap_or(0) < issued_before)
                };
                self.unsubscribe_if(
                    &channel,
                    revoked,
                    codes::UNSUBSCRIBE_SERVER,
                    "token revoked",
                )
                .await;
            }
            // Only a subscription that tracks offsets can recover what was missed.
            Control::Recover { channel } => {
                self.unsubscribe_if(
                    &channel,
                    |s| s.tracked,
                    codes::UNSUBSCRIBE_INSUFFICIENT,
                    "insufficient state",
                )
                .await;
            }
        }
        self.flush().await
    }

    /// Ends the subscription to `channel` with `code` if it exists and `pred` holds.
    async fn unsubscribe_if(
        &mut self,
        channel: &str,
        pred: impl FnOnce(&SubState) -> bool,
        code: u32,
        reason: &str,
    ) {
        let hit = self
            .conn
            .as_ref()
            .and_then(|c| c.subs.get(channel))
            .is_some_and(pred);
        if hit {
            self.server_unsubscribe(channel, code, reason).await;
        }
    }

    /// Writes everything in `out` as one WebSocket message.
    pub(super) async fn flush(&mut self) -> Option<Disconnect> {
        if self.out.is_empty() {
            return None;
        }
        let (op, sep) = match self.format {
            // Newline-delimited replies; the encoder only emits UTF-8.
            Format::Json => (OpCode::Text, Some(&b"\n"[..])),
            // Each reply is length-delimited already.
            Format::Protobuf => (OpCode::Binary, None),
        };
        let out = std::mem::take(&mut self.out);
        let len = out.iter().map(Bytes::len).sum::<usize>()
            + sep.map_or(0, |s| s.len() * (out.len() - 1));
        let res = self.write(op, &out, sep).await;
        // Keep the vector's allocation for the next batch only while it is small.
        self.out = out;
        self.out.clear();
        if self.out.capacity() > MAX_COALESCE {
            self.out = Vec::new();
        }
        if res.is_none() {
            self.st.meters.bytes_out.increment(len as u64);
            self.st.meters.frames_out.increment(1);
        }
        res
    }

    /// Writes one message within `client.write_timeout`.
    async fn write(
        &mut self,
        op: OpCode,
        parts: &[Bytes],
        sep: Option<&'static [u8]>,
    ) -> Option<Disconnect> {
        let timeout = self.st.node.config().client.write_timeout;
        match ready_or_timeout(timeout, self.ws.send(op, parts, sep)).await {
            Ok(Ok(())) => None,
            Ok(Err(_broken)) => Some(codes::DISCONNECT_WRITE_ERROR.into()),
            Err(_elapsed) => Some(codes::DISCONNECT_SLOW.into()),
        }
    }

    async fn finish(mut self: Box<Self>, exit: Exit) {
        let close = match &exit {
            Exit::Gone => None,
            Exit::ClientClosed => Some(None),
            Exit::Disconnect(d) => {
                metrics::counter!(m::DISCONNECTS_TOTAL, "code" => d.code.to_string()).increment(1);
                Some(Some((d.code, d.reason.as_str())))
            }
        };
        let mut closed = false;
        if let Some(code) = close {
            // What is queued (a slow client's backlog) goes first; the close frame gets
            // its own time limit so that a client that never reads cannot hold the
            // connection open.
            let limit = self
                .st
                .node
                .config()
                .client
                .write_timeout
                .max(CLOSE_TIMEOUT);
            let sent = tokio::time::timeout(limit, self.ws.close(code)).await;
            closed = matches!(sent, Ok(Ok(())));
        }
        self.out = Vec::new();
        if let Some(conn) = self.conn.take() {
            for (channel, sub) in conn.subs {
                self.release(&conn.handle, &conn.conn_info, &channel, &sub)
                    .await;
            }
            self.st.node.remove_conn(&conn.handle);
        }
        self.queue_rx = None;
        self.control_rx = None;
        if closed {
            // Wait for the client to close its side before the socket is dropped.
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, self.ws.drain_input()).await;
        }
    }
}

/// How long a closing connection waits for its close frame to go out and for the
/// client to close its side.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs `fut` with a time limit, arming the timer only if the first poll is pending.
///
/// A write to a connection whose queue to the socket has room completes on its first
/// poll; a `tokio::time::timeout` around every write cost ~10% of all instructions in
/// the broadcast profile (docs/BENCHMARKS.md) to guard the rare write that waits.
async fn ready_or_timeout<F: std::future::Future>(
    limit: std::time::Duration,
    fut: F,
) -> Result<F::Output, tokio::time::error::Elapsed> {
    let mut fut = std::pin::pin!(fut);
    let first = std::future::poll_fn(|cx| std::task::Poll::Ready(fut.as_mut().poll(cx))).await;
    match first {
        std::task::Poll::Ready(out) => Ok(out),
        // Boxed: the timer is large and only a write that waits needs it.
        std::task::Poll::Pending => Box::pin(tokio::time::timeout(limit, fut)).await,
    }
}

/// The close code for a frame the WebSocket layer rejected.
fn wire_error(e: &WireError) -> Disconnect {
    match e {
        WireError::TooBig => codes::DISCONNECT_MESSAGE_SIZE_LIMIT.into(),
        WireError::Malformed => codes::DISCONNECT_BAD_REQUEST.into(),
    }
}
