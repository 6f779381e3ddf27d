//! One simulated client: TCP (optionally from a chosen source address), the WebSocket
//! handshake and whatever the server wants to subscribe it (Centrifugo `connect` and
//! `subscribe` for Herald; see `peer.rs` for the others), then a session that answers
//! keep-alives, records the send-time stamp of every message it receives and, in the
//! chat scenario, publishes through its own socket.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use jsonwebtoken::{EncodingKey, Header};
use serde::Serialize;
use serde_json::Value;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::hist;
use crate::pace::{self, Pacer};
use crate::peer::{self, Peer, PeerConf};
use crate::stamp;

type Ws = WebSocketStream<TcpStream>;

/// Where every client connects.
pub struct Target {
    /// Resolved address of the server's host and port.
    pub addr: SocketAddr,
    /// The server and its protocol.
    pub peer: PeerConf,
}

/// What makes one client different from the others.
pub struct Spec {
    pub source: Option<IpAddr>,
    /// Connection JWT (Herald only; empty for the others).
    pub token: String,
    pub channel: String,
}

/// What the clients of one worker received, added up.
pub struct Tally {
    /// Publish-to-deliver latency of every stamped message received (µs).
    pub latency: Mutex<Histogram<u64>>,
    /// Stamped messages received.
    pub deliveries: AtomicU64,
    /// Publications sent through client sockets (chat).
    pub published: AtomicU64,
    /// Error replies to those publications.
    pub publish_errors: AtomicU64,
    /// Keep-alives answered.
    pub pings: AtomicU64,
}

impl Default for Tally {
    fn default() -> Tally {
        Tally {
            latency: Mutex::new(hist::new()),
            deliveries: AtomicU64::new(0),
            published: AtomicU64::new(0),
            publish_errors: AtomicU64::new(0),
            pings: AtomicU64::new(0),
        }
    }
}

impl Tally {
    /// Records the stamps in one received text frame and its error replies.
    pub fn frame(&self, text: &str, errors: usize) {
        if errors > 0 {
            self.publish_errors
                .fetch_add(errors as u64, Ordering::Relaxed);
        }
        let now = stamp::now_nanos();
        let mut n = 0u64;
        let mut guard = None;
        stamp::scan(text, |t| {
            n += 1;
            let g = guard.get_or_insert_with(|| self.latency.lock());
            if let Ok(h) = g.as_mut() {
                hist::record(h, stamp::latency_micros(t, now));
            }
        });
        if n > 0 {
            self.deliveries.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// The latency histogram, encoded for the coordinator.
    pub fn encoded_latency(&self) -> Option<String> {
        let h = self.latency.lock().ok()?;
        hist::encode(&h).ok()
    }
}

/// Why a client never became an idle subscriber.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailKind {
    Tcp,
    Handshake,
    ConnectRejected,
    SubscribeRejected,
    Closed,
    Timeout,
}

impl FailKind {
    pub const ALL: [FailKind; 6] = [
        FailKind::Tcp,
        FailKind::Handshake,
        FailKind::ConnectRejected,
        FailKind::SubscribeRejected,
        FailKind::Closed,
        FailKind::Timeout,
    ];

    pub fn name(self) -> &'static str {
        match self {
            FailKind::Tcp => "tcp",
            FailKind::Handshake => "handshake",
            FailKind::ConnectRejected => "connect_rejected",
            FailKind::SubscribeRejected => "subscribe_rejected",
            FailKind::Closed => "closed",
            FailKind::Timeout => "timeout",
        }
    }
}

#[derive(Debug)]
pub struct Failure {
    pub kind: FailKind,
    pub detail: String,
}

fn fail(kind: FailKind, detail: impl ToString) -> Failure {
    Failure {
        kind,
        detail: detail.to_string(),
    }
}

/// How an established client's idle period ended.
pub enum IdleEnd {
    /// We were told to stop.
    Stopped,
    /// The server closed the connection or it broke.
    Dropped(String),
}

#[derive(Serialize)]
struct Claims<'a> {
    sub: &'a str,
}

/// An HS256 connection token for `user`, without expiry.
pub fn token(key: &EncodingKey, user: &str) -> anyhow::Result<String> {
    Ok(jsonwebtoken::encode(
        &Header::default(),
        &Claims { sub: user },
        key,
    )?)
}

/// Connects, authenticates and subscribes within `timeout`.
pub async fn establish(target: &Target, spec: &Spec, timeout: Duration) -> Result<Ws, Failure> {
    match tokio::time::timeout(timeout, establish_inner(target, spec)).await {
        Ok(r) => r,
        Err(_) => Err(fail(
            FailKind::Timeout,
            format!("no session within {timeout:?}"),
        )),
    }
}

async fn establish_inner(target: &Target, spec: &Spec) -> Result<Ws, Failure> {
    let socket = match target.addr {
        SocketAddr::V4(_) => TcpSocket::new_v4(),
        SocketAddr::V6(_) => TcpSocket::new_v6(),
    }
    .map_err(|e| fail(FailKind::Tcp, e))?;
    if let Some(ip) = spec.source {
        socket
            .bind(SocketAddr::new(ip, 0))
            .map_err(|e| fail(FailKind::Tcp, format!("bind {ip}: {e}")))?;
    }
    let stream = socket
        .connect(target.addr)
        .await
        .map_err(|e| fail(FailKind::Tcp, e))?;
    stream
        .set_nodelay(true)
        .map_err(|e| fail(FailKind::Tcp, e))?;
    let url = target.peer.ws_url(&spec.channel);
    let (mut ws, _response) = tokio_tungstenite::client_async(url.as_str(), stream)
        .await
        .map_err(|e| fail(FailKind::Handshake, e))?;
    subscribe(&mut ws, &target.peer, spec).await?;
    Ok(ws)
}

/// What each server wants after the handshake before the socket is a subscriber.
async fn subscribe(ws: &mut Ws, peer: &PeerConf, spec: &Spec) -> Result<(), Failure> {
    let channel = peer::json_str(&spec.channel);
    match peer.peer {
        Peer::Herald => {
            let connect = format!(
                "{{\"id\":1,\"connect\":{{\"token\":{}}}}}",
                peer::json_str(&spec.token)
            );
            call(ws, peer, 1, connect, FailKind::ConnectRejected).await?;
            let subscribe = format!("{{\"id\":2,\"subscribe\":{{\"channel\":{channel}}}}}");
            call(ws, peer, 2, subscribe, FailKind::SubscribeRejected).await?;
        }
        // Subscribed by opening /sub/<channel>.
        Peer::Nchan => {}
        // The origin subscribes the socket, then sends {"ready":true}.
        Peer::Pushpin => {
            expect(ws, peer, FailKind::SubscribeRejected, |f| {
                f.contains("\"ready\"")
            })
            .await?;
        }
        Peer::Soketi => {
            expect(ws, peer, FailKind::ConnectRejected, |f| {
                f.contains("pusher:connection_established")
            })
            .await?;
            send(
                ws,
                format!("{{\"event\":\"pusher:subscribe\",\"data\":{{\"channel\":{channel}}}}}"),
            )
            .await?;
            expect(ws, peer, FailKind::SubscribeRejected, |f| {
                f.contains("pusher_internal:subscription_succeeded")
            })
            .await?;
        }
        Peer::Socketio => {
            // Engine.IO open packet, then the Socket.IO namespace connect.
            expect(ws, peer, FailKind::ConnectRejected, |f| f.starts_with('0')).await?;
            send(ws, "40".into()).await?;
            expect(ws, peer, FailKind::ConnectRejected, |f| f.starts_with("40")).await?;
            // An event with ack id 1; the server acknowledges once joined.
            send(ws, format!("421[\"subscribe\",{channel}]")).await?;
            expect(ws, peer, FailKind::SubscribeRejected, |f| {
                f.starts_with("431")
            })
            .await?;
        }
    }
    Ok(())
}

async fn send(ws: &mut Ws, text: String) -> Result<(), Failure> {
    ws.send(Message::text(text))
        .await
        .map_err(|e| fail(FailKind::Closed, e))
}

/// Reads text frames, answering keep-alives, until one satisfies `done`. A close from
/// the server counts as `rejected`; an error frame of the server as well.
async fn expect(
    ws: &mut Ws,
    peer: &PeerConf,
    rejected: FailKind,
    mut done: impl FnMut(&str) -> bool,
) -> Result<String, Failure> {
    loop {
        let text = next_text(ws, rejected).await?;
        if let Some(reply) = peer.keepalive_reply(&text) {
            send(ws, reply.into()).await?;
        }
        if done(&text) {
            return Ok(text);
        }
        if peer.peer == Peer::Soketi && text.contains("\"pusher:error\"") {
            return Err(fail(rejected, text));
        }
        if peer.peer == Peer::Socketio && (text.starts_with("44") || text.starts_with('1')) {
            return Err(fail(rejected, text));
        }
    }
}

async fn next_text(ws: &mut Ws, rejected: FailKind) -> Result<String, Failure> {
    loop {
        return match ws.next().await {
            Some(Ok(Message::Text(t))) => Ok(t.as_str().to_owned()),
            Some(Ok(Message::Close(frame))) => {
                Err(fail(rejected, format!("server closed: {frame:?}")))
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => Err(fail(FailKind::Closed, e)),
            None => Err(fail(FailKind::Closed, "connection ended")),
        };
    }
}

/// Sends a Centrifugo `command` and waits for the reply with `id`, answering pings
/// meanwhile. An error reply or a close frame from the server counts as `rejected`.
async fn call(
    ws: &mut Ws,
    peer: &PeerConf,
    id: u64,
    command: String,
    rejected: FailKind,
) -> Result<Value, Failure> {
    send(ws, command).await?;
    loop {
        let text = next_text(ws, rejected).await?;
        let mut found = None;
        for reply in replies(&text) {
            if is_ping(&reply) {
                if let Some(pong) = peer.keepalive_reply("{}") {
                    send(ws, pong.into()).await?;
                }
            } else if reply.get("id").and_then(Value::as_u64) == Some(id) {
                found = Some(reply);
            }
        }
        if let Some(reply) = found {
            return match reply.get("error") {
                Some(err) => Err(fail(rejected, err)),
                None => Ok(reply),
            };
        }
    }
}

/// What a connected client does besides answering keep-alives and recording stamps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Only listen.
    Hold,
    /// Publish (chat clients) at their rate.
    Publish,
    /// Stop publishing, keep listening.
    Quiet,
    /// Close and return.
    Stop,
}

/// Publishing through the client's own socket (Centrifugo `publish`).
#[derive(Debug, Clone, Copy)]
pub struct ChatPlan {
    /// Publications per second of this client.
    pub rate: f64,
    /// Client number, to spread clients' send times.
    pub n: u64,
}

/// Stays connected until `phase` turns to `Stop` or the connection ends: answers
/// keep-alives (counted in `pings`), records every stamp received, and in the `Publish`
/// phase publishes to its channel at `chat.rate`.
pub async fn session(
    mut ws: Ws,
    peer: &PeerConf,
    channel: &str,
    mut phase: watch::Receiver<Phase>,
    tally: &Tally,
    chat: Option<ChatPlan>,
) -> IdleEnd {
    let mut pacer: Option<Pacer> = None;
    let mut next_id: u64 = 10;
    let channel_json = peer::json_str(channel);
    loop {
        let due = pacer.as_ref().map(Pacer::next_due);
        let wake = async move {
            match due {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            changed = phase.changed() => {
                let now = if changed.is_err() { Phase::Stop } else { *phase.borrow_and_update() };
                match now {
                    Phase::Stop => {
                        let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(None)).await;
                        return IdleEnd::Stopped;
                    }
                    Phase::Publish => if let Some(c) = chat {
                        let offset = Duration::from_secs_f64(pace::phase(c.n) / c.rate.max(1e-6));
                        pacer = Some(Pacer::new(Instant::now() + offset, c.rate, 10));
                    },
                    Phase::Quiet | Phase::Hold => pacer = None,
                }
            }
            _ = wake => {
                let n = pacer.as_mut().map_or(0, |p| p.take_due(Instant::now()));
                for _ in 0..n {
                    let seq = tally.published.fetch_add(1, Ordering::Relaxed);
                    let cmd = format!(
                        "{{\"id\":{next_id},\"publish\":{{\"channel\":{channel_json},\"data\":{}}}}}",
                        stamp::payload(seq)
                    );
                    next_id += 1;
                    if let Err(e) = ws.send(Message::text(cmd)).await {
                        return IdleEnd::Dropped(format!("publishing: {e}"));
                    }
                }
            }
            msg = ws.next() => match msg {
                Some(Ok(Message::Text(text))) => {
                    if let Some(reply) = peer.keepalive_reply(&text) {
                        if let Err(e) = ws.send(Message::text(reply)).await {
                            return IdleEnd::Dropped(format!("answering ping: {e}"));
                        }
                        tally.pings.fetch_add(1, Ordering::Relaxed);
                    }
                    tally.frame(&text, peer.error_replies(&text));
                }
                Some(Ok(Message::Close(frame))) => {
                    return IdleEnd::Dropped(format!("server closed: {frame:?}"))
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return IdleEnd::Dropped(e.to_string()),
                None => return IdleEnd::Dropped("connection ended".into()),
            }
        }
    }
}

/// The JSON replies in one text frame: the server joins several with newlines.
/// Lines that are not JSON are skipped.
fn replies(frame: &str) -> impl Iterator<Item = Value> + '_ {
    frame
        .lines()
        .filter(|l| !l.trim().is_empty())
        .filter_map(|l| serde_json::from_str(l).ok())
}

/// A server ping is an empty JSON object.
fn is_ping(reply: &Value) -> bool {
    reply.as_object().is_some_and(|o| o.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_batched_replies_and_spots_pings() {
        let frame = "{\"id\":1,\"connect\":{\"client\":\"c\"}}\n{}\nnot json\n";
        let all: Vec<Value> = replies(frame).collect();
        assert_eq!(all.len(), 2);
        assert!(!is_ping(&all[0]));
        assert!(is_ping(&all[1]));
        assert_eq!(all[0].get("id").and_then(Value::as_u64), Some(1));
    }

    #[test]
    fn tally_records_every_stamp_in_a_frame() {
        let t = Tally::default();
        let now = stamp::now_nanos();
        let frame = format!(
            "{{\"push\":{{\"pub\":{{\"data\":{}}}}}}}\n{{}}\n{{\"push\":{{\"pub\":{{\"data\":{}}}}}}}",
            stamp::payload_at(now - 2_000_000, 1),
            stamp::payload_at(now - 4_000_000, 2)
        );
        t.frame(&frame, 1);
        assert_eq!(t.deliveries.load(Ordering::Relaxed), 2);
        assert_eq!(t.publish_errors.load(Ordering::Relaxed), 1);
        let h = t.latency.lock().expect("lock");
        assert_eq!(h.len(), 2);
        assert!(h.min() >= 2000 && h.max() < 1_000_000);
    }

    #[test]
    fn token_carries_sub() {
        let key = EncodingKey::from_secret(b"s");
        let t = token(&key, "u7").expect("encode");
        let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
        v.required_spec_claims.clear();
        let data =
            jsonwebtoken::decode::<Value>(&t, &jsonwebtoken::DecodingKey::from_secret(b"s"), &v)
                .expect("decode");
        assert_eq!(data.claims["sub"], "u7");
    }
}
