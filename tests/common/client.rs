//! A protocol client over tokio-tungstenite for both wire formats.
//!
//! JSON: commands are text frames, several joined by `\n`; Protobuf: binary frames of
//! varint length-delimited messages. Replies are matched by id; pushes are queued;
//! server pings (an empty reply) are counted and, unless turned off, answered.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use herald::protocol::messages::*;
use prost::Message as _;
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wire {
    Json,
    Protobuf,
}

/// How the server ended the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Close {
    pub code: u16,
    pub reason: String,
}

/// One thing read from the socket.
#[derive(Debug)]
pub enum Incoming {
    Replies(Vec<Reply>),
    Close(Option<Close>),
    /// The stream ended or broke without a close frame.
    Ended(String),
}

pub struct Client {
    pub ws: Ws,
    pub wire: Wire,
    next_id: u32,
    replies: HashMap<u32, Reply>,
    pushes: VecDeque<Push>,
    /// Server pings seen so far.
    pub pings: usize,
    /// Answer server pings with a pong (on by default).
    pub auto_pong: bool,
    /// Set once a close frame (or the end of the stream) was read.
    pub closed: Option<Incoming>,
}

/// Encodes one command for the wire (without the JSON `\n` separator).
pub fn encode(wire: Wire, cmd: &Command) -> Vec<u8> {
    match wire {
        Wire::Json => serde_json::to_vec(cmd).expect("encode json"),
        Wire::Protobuf => cmd.encode_length_delimited_to_vec(),
    }
}

/// Decodes every reply in one frame's payload.
pub fn decode(wire: Wire, payload: &[u8]) -> Vec<Reply> {
    match wire {
        Wire::Json => std::str::from_utf8(payload)
            .expect("json frame is utf-8")
            .split('\n')
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad reply {l:?}: {e}")))
            .collect(),
        Wire::Protobuf => {
            let mut buf = Bytes::copy_from_slice(payload);
            let mut out = Vec::new();
            while !buf.is_empty() {
                out.push(Reply::decode_length_delimited(&mut buf).expect("decode protobuf reply"));
            }
            out
        }
    }
}

impl Client {
    /// Opens a WebSocket without sending anything. Protobuf asks for the
    /// `centrifuge-protobuf` subprotocol and checks that the server echoes it.
    pub async fn open(addr: SocketAddr, wire: Wire) -> Client {
        let url = format!("ws://{addr}/connection/websocket");
        let mut req = url.into_client_request().expect("request");
        if wire == Wire::Protobuf {
            req.headers_mut().insert(
                "Sec-WebSocket-Protocol",
                HeaderValue::from_static("centrifuge-protobuf"),
            );
        }
        let (ws, resp) =
            super::within("websocket handshake", tokio_tungstenite::connect_async(req))
                .await
                .expect("websocket handshake");
        if wire == Wire::Protobuf {
            let echoed = resp
                .headers()
                .get("sec-websocket-protocol")
                .and_then(|v| v.to_str().ok());
            assert_eq!(
                echoed,
                Some("centrifuge-protobuf"),
                "server must echo the protobuf subprotocol"
            );
        }
        Client::from_ws(ws, wire)
    }

    /// Opens a WebSocket at `/connection/websocket?{query}` with no subprotocol.
    pub async fn open_query(addr: SocketAddr, query: &str, wire: Wire) -> (Client, Option<String>) {
        let url = format!("ws://{addr}/connection/websocket?{query}");
        let (ws, resp) =
            super::within("websocket handshake", tokio_tungstenite::connect_async(url))
                .await
                .expect("websocket handshake");
        let proto = resp
            .headers()
            .get("sec-websocket-protocol")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        (Client::from_ws(ws, wire), proto)
    }

    pub fn from_ws(ws: Ws, wire: Wire) -> Client {
        Client {
            ws,
            wire,
            next_id: 0,
            replies: HashMap::new(),
            pushes: VecDeque::new(),
            pings: 0,
            auto_pong: true,
            closed: None,
        }
    }

    /// Opens a socket and connects with `token`; panics unless connect succeeds.
    pub async fn connect(addr: SocketAddr, wire: Wire, token: &str) -> (Client, ConnectResult) {
        let mut c = Client::open(addr, wire).await;
        let res = c.connect_with(cmd::connect(token)).await;
        (c, res)
    }

    /// Sends a connect command and returns its result; panics on an error reply.
    pub async fn connect_with(&mut self, command: Command) -> ConnectResult {
        let reply = self.ok(command).await;
        reply.connect.expect("connect result")
    }

    pub fn next_id(&mut self) -> u32 {
        self.next_id += 1;
        self.next_id
    }

    pub async fn send_message(&mut self, msg: Message) {
        super::within("send", self.ws.send(msg))
            .await
            .expect("websocket send");
    }

    /// Sends `payload` as a frame of this client's format (text for JSON).
    pub async fn send_payload(&mut self, payload: Vec<u8>) {
        let msg = match self.wire {
            Wire::Json => Message::text(String::from_utf8(payload).expect("utf-8")),
            Wire::Protobuf => Message::binary(payload),
        };
        self.send_message(msg).await;
    }

    /// Sends commands as they are (ids untouched) in one frame.
    pub async fn send_batch(&mut self, cmds: &[Command]) {
        let mut payload = Vec::new();
        for (i, c) in cmds.iter().enumerate() {
            if self.wire == Wire::Json && i > 0 {
                payload.push(b'\n');
            }
            payload.extend(encode(self.wire, c));
        }
        self.send_payload(payload).await;
    }

    pub async fn send(&mut self, cmd: &Command) {
        self.send_batch(std::slice::from_ref(cmd)).await;
    }

    /// The pong answering a server ping: an empty command.
    pub async fn pong(&mut self) {
        self.send(&Command::default()).await;
    }

    /// Reads one WebSocket message within the standard bound.
    pub async fn recv_message(&mut self) -> Option<Result<Message, String>> {
        super::within("a websocket message", self.ws.next())
            .await
            .map(|r| r.map_err(|e| e.to_string()))
    }

    /// Reads until something meaningful arrives: replies, a close, or the end.
    pub async fn recv(&mut self) -> Incoming {
        loop {
            match self.recv_message().await {
                None => return Incoming::Ended("stream ended".into()),
                Some(Err(e)) => return Incoming::Ended(e),
                Some(Ok(Message::Text(t))) => {
                    assert_eq!(self.wire, Wire::Json, "text frame on a protobuf connection");
                    return Incoming::Replies(decode(Wire::Json, t.as_bytes()));
                }
                Some(Ok(Message::Binary(b))) => {
                    assert_eq!(
                        self.wire,
                        Wire::Protobuf,
                        "binary frame on a json connection"
                    );
                    return Incoming::Replies(decode(Wire::Protobuf, &b));
                }
                Some(Ok(Message::Close(frame))) => {
                    return Incoming::Close(frame.map(|f| Close {
                        code: u16::from(f.code),
                        reason: f.reason.to_string(),
                    }))
                }
                Some(Ok(_)) => continue,
            }
        }
    }

    /// Reads one frame and files its contents; returns false once the connection ended.
    async fn pump(&mut self) -> bool {
        if self.closed.is_some() {
            return false;
        }
        match self.recv().await {
            Incoming::Replies(replies) => {
                for r in replies {
                    self.file(r).await;
                }
                true
            }
            other => {
                self.closed = Some(other);
                false
            }
        }
    }

    async fn file(&mut self, r: Reply) {
        if r.id != 0 {
            self.replies.insert(r.id, r);
        } else if let Some(p) = r.push {
            self.pushes.push_back(p);
        } else if r == Reply::default() {
            self.pings += 1;
            if self.auto_pong {
                self.pong().await;
            }
        } else {
            panic!("reply without id or push: {r:?}");
        }
    }

    fn closed_description(&self) -> String {
        format!("{:?}", self.closed)
    }

    /// Waits for the reply with `id`, filing pushes and pings that arrive first.
    pub async fn wait_reply(&mut self, id: u32) -> Reply {
        loop {
            if let Some(r) = self.replies.remove(&id) {
                return r;
            }
            if !self.pump().await {
                panic!(
                    "connection ended while waiting for reply {id}: {}",
                    self.closed_description()
                );
            }
        }
    }

    /// Sends `command` with a fresh id (unless it has one) and returns its reply.
    pub async fn call(&mut self, mut command: Command) -> Reply {
        if command.id == 0 {
            command.id = self.next_id();
        }
        self.send(&command).await;
        self.wait_reply(command.id).await
    }

    /// Like `call`, and panics on an error reply.
    pub async fn ok(&mut self, command: Command) -> Reply {
        let r = self.call(command.clone()).await;
        assert!(r.error.is_none(), "{command:?} failed: {:?}", r.error);
        r
    }

    /// Like `call`, and returns the error reply's code (panics on success).
    pub async fn err(&mut self, command: Command) -> Error {
        let r = self.call(command.clone()).await;
        match r.error {
            Some(e) => e,
            None => panic!("{command:?} should have failed, got {r:?}"),
        }
    }

    /// The next push, waiting for one if none is queued.
    pub async fn next_push(&mut self) -> Push {
        loop {
            if let Some(p) = self.pushes.pop_front() {
                return p;
            }
            if !self.pump().await {
                panic!(
                    "connection ended while waiting for a push: {}",
                    self.closed_description()
                );
            }
        }
    }

    /// Skips pushes until one matches `pred`.
    pub async fn push_where(&mut self, what: &str, pred: impl Fn(&Push) -> bool) -> Push {
        let mut skipped = Vec::new();
        loop {
            let p = super::within(what, self.next_push()).await;
            if pred(&p) {
                return p;
            }
            skipped.push(p);
            assert!(skipped.len() < 1000, "no {what} among {skipped:?}");
        }
    }

    /// The next publication push, which must be for `channel`.
    pub async fn next_pub(&mut self, channel: &str) -> Publication {
        let p = self.next_push().await;
        assert_eq!(p.channel, channel, "push for another channel: {p:?}");
        match p.publication {
            Some(publication) => publication,
            None => panic!("expected a publication, got {p:?}"),
        }
    }

    /// Pushes already read and not yet taken.
    pub fn queued_pushes(&self) -> Vec<Push> {
        self.pushes.iter().cloned().collect()
    }

    /// Reads until the server closes; returns the close code and reason.
    pub async fn expect_close(&mut self) -> Close {
        while self.pump().await {}
        match self.closed.take() {
            Some(Incoming::Close(Some(c))) => c,
            other => panic!("expected a close frame with a code, got {other:?}"),
        }
    }

    /// Reads (answering pings unless `auto_pong` is off) until `n` pings were seen.
    pub async fn wait_pings(&mut self, n: usize) {
        while self.pings < n {
            if !self.pump().await {
                panic!(
                    "connection ended after {} of {n} pings: {}",
                    self.pings,
                    self.closed_description()
                );
            }
        }
    }

    /// Reads until the server closes, for at most `limit` (longer than the standard
    /// bound, for closes that are due after a delay). Pings are answered as usual.
    pub async fn close_within(&mut self, limit: std::time::Duration) -> Result<Close, String> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let next = match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Ok(next) => next,
                Err(_) => return Err(format!("no close within {limit:?}")),
            };
            match next {
                Some(Ok(Message::Close(Some(f)))) => {
                    return Ok(Close {
                        code: u16::from(f.code),
                        reason: f.reason.to_string(),
                    })
                }
                Some(Ok(Message::Text(t))) => {
                    for r in decode(self.wire, t.as_bytes()) {
                        self.file(r).await;
                    }
                }
                Some(Ok(Message::Binary(b))) => {
                    for r in decode(self.wire, &b) {
                        self.file(r).await;
                    }
                }
                Some(Ok(_)) => {}
                other => return Err(format!("connection ended without a close frame: {other:?}")),
            }
        }
    }

    /// Round-trips a `ping` command: proves the connection is alive and that every
    /// frame sent before it was processed.
    pub async fn roundtrip(&mut self) {
        let r = self.ok(cmd::ping()).await;
        assert!(r.ping.is_some(), "ping reply: {r:?}");
    }
}

/// Command constructors.
pub mod cmd {
    use super::*;

    pub fn json(v: &Value) -> Bytes {
        Bytes::from(v.to_string())
    }

    pub fn connect(token: &str) -> Command {
        Command {
            connect: Some(ConnectRequest {
                token: token.into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    pub fn subscribe(channel: &str) -> Command {
        subscribe_with(SubscribeRequest {
            channel: channel.into(),
            ..Default::default()
        })
    }

    pub fn subscribe_with(req: SubscribeRequest) -> Command {
        Command {
            subscribe: Some(req),
            ..Default::default()
        }
    }

    /// A subscribe that asks for a recoverable subscription.
    pub fn subscribe_recoverable(channel: &str) -> Command {
        subscribe_with(SubscribeRequest {
            channel: channel.into(),
            recoverable: true,
            ..Default::default()
        })
    }

    /// A subscribe that recovers from `offset` in `epoch`.
    pub fn subscribe_recover(channel: &str, offset: u64, epoch: &str) -> Command {
        subscribe_with(SubscribeRequest {
            channel: channel.into(),
            recover: true,
            recoverable: true,
            offset,
            epoch: epoch.into(),
            ..Default::default()
        })
    }

    pub fn subscribe_token(channel: &str, token: &str) -> Command {
        subscribe_with(SubscribeRequest {
            channel: channel.into(),
            token: token.into(),
            ..Default::default()
        })
    }

    pub fn unsubscribe(channel: &str) -> Command {
        Command {
            unsubscribe: Some(UnsubscribeRequest {
                channel: channel.into(),
            }),
            ..Default::default()
        }
    }

    pub fn publish(channel: &str, data: &Value) -> Command {
        Command {
            publish: Some(PublishRequest {
                channel: channel.into(),
                data: json(data),
            }),
            ..Default::default()
        }
    }

    pub fn presence(channel: &str) -> Command {
        Command {
            presence: Some(PresenceRequest {
                channel: channel.into(),
            }),
            ..Default::default()
        }
    }

    pub fn presence_stats(channel: &str) -> Command {
        Command {
            presence_stats: Some(PresenceStatsRequest {
                channel: channel.into(),
            }),
            ..Default::default()
        }
    }

    pub fn history(
        channel: &str,
        limit: i32,
        since: Option<StreamPosition>,
        reverse: bool,
    ) -> Command {
        Command {
            history: Some(HistoryRequest {
                channel: channel.into(),
                limit,
                since,
                reverse,
            }),
            ..Default::default()
        }
    }

    pub fn rpc(method: &str, data: &Value) -> Command {
        Command {
            rpc: Some(RpcRequest {
                method: method.into(),
                data: json(data),
            }),
            ..Default::default()
        }
    }

    /// An asynchronous message: no id, no reply.
    pub fn send(data: &Value) -> Command {
        Command {
            send: Some(SendRequest { data: json(data) }),
            ..Default::default()
        }
    }

    pub fn refresh(token: &str) -> Command {
        Command {
            refresh: Some(RefreshRequest {
                token: token.into(),
            }),
            ..Default::default()
        }
    }

    pub fn sub_refresh(channel: &str, token: &str) -> Command {
        Command {
            sub_refresh: Some(SubRefreshRequest {
                channel: channel.into(),
                token: token.into(),
            }),
            ..Default::default()
        }
    }

    pub fn ping() -> Command {
        Command {
            ping: Some(Empty {}),
            ..Default::default()
        }
    }
}

/// The server-side subscriptions of a connect result, by channel.
pub fn subs_of(res: &ConnectResult) -> HashMap<String, SubscribeResult> {
    res.subs
        .iter()
        .map(|e| (e.key.clone(), e.value.clone().unwrap_or_default()))
        .collect()
}

/// Parses a publication's data as JSON.
pub fn data_json(p: &Publication) -> Value {
    serde_json::from_slice(&p.data)
        .unwrap_or_else(|e| panic!("publication data is not json ({e}): {:?}", p.data))
}
