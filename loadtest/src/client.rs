//! One simulated client: TCP (optionally from a chosen source address), the WebSocket
//! handshake, Centrifugo `connect` and `subscribe` (JSON protocol), then idle, answering
//! every server ping `{}` with `{}` until told to stop or the server goes away.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use jsonwebtoken::{EncodingKey, Header};
use serde::Serialize;
use serde_json::Value;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

type Ws = WebSocketStream<TcpStream>;

/// Where every client connects.
pub struct Target {
    /// Resolved address of the URL's host and port.
    pub addr: SocketAddr,
    /// `ws://host:port/connection/websocket`.
    pub url: String,
}

/// What makes one client different from the others.
pub struct Spec {
    pub source: Option<IpAddr>,
    pub token: String,
    pub channel: String,
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
    let (mut ws, _response) = tokio_tungstenite::client_async(target.url.as_str(), stream)
        .await
        .map_err(|e| fail(FailKind::Handshake, e))?;

    let connect = serde_json::json!({"id": 1, "connect": {"token": spec.token}});
    call(&mut ws, 1, connect, FailKind::ConnectRejected).await?;
    let subscribe = serde_json::json!({"id": 2, "subscribe": {"channel": spec.channel}});
    call(&mut ws, 2, subscribe, FailKind::SubscribeRejected).await?;
    Ok(ws)
}

/// Sends `command` and waits for the reply with `id`, answering pings meanwhile. An
/// error reply or a close frame from the server counts as `rejected`.
async fn call(ws: &mut Ws, id: u64, command: Value, rejected: FailKind) -> Result<Value, Failure> {
    ws.send(Message::text(command.to_string()))
        .await
        .map_err(|e| fail(FailKind::Closed, e))?;
    loop {
        let text = match ws.next().await {
            Some(Ok(Message::Text(t))) => t,
            Some(Ok(Message::Close(frame))) => {
                return Err(fail(rejected, format!("server closed: {frame:?}")))
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(fail(FailKind::Closed, e)),
            None => return Err(fail(FailKind::Closed, "connection ended")),
        };
        let mut found = None;
        for reply in replies(&text) {
            if is_ping(&reply) {
                pong(ws).await.map_err(|e| fail(FailKind::Closed, e))?;
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

/// Stays connected until `stop` turns true or the connection ends, counting answered
/// server pings in `pings`.
pub async fn idle(mut ws: Ws, mut stop: watch::Receiver<bool>, pings: &AtomicU64) -> IdleEnd {
    loop {
        tokio::select! {
            changed = stop.changed() => {
                if changed.is_err() || *stop.borrow() {
                    let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(None)).await;
                    return IdleEnd::Stopped;
                }
            }
            msg = ws.next() => match msg {
                Some(Ok(Message::Text(text))) => {
                    for reply in replies(&text) {
                        if is_ping(&reply) {
                            if let Err(e) = pong(&mut ws).await {
                                return IdleEnd::Dropped(format!("answering ping: {e}"));
                            }
                            pings.fetch_add(1, Ordering::Relaxed);
                        }
                    }
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

async fn pong(ws: &mut Ws) -> Result<(), tokio_tungstenite::tungstenite::Error> {
    ws.send(Message::text("{}")).await
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
