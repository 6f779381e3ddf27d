//! A sharded pub/sub connection (`SSUBSCRIBE`) to one Redis Cluster master that
//! survives restarts, with the same contract as [`super::pubsub::Subscriber`]: messages
//! reach the [`PubSubHandler`] in the order Redis sent them, and after a loss the
//! connection reconnects, resubscribes every wanted channel, and only once Redis has
//! confirmed them reports them as interrupted (their subscribers recover).
//!
//! The redis crate's RESP2 pub/sub connection has no `SSUBSCRIBE` (that needs its
//! `cluster-async` feature and a RESP3 cluster connection that resubscribes on its own,
//! without telling us what may have been missed), so this speaks the few RESP2 replies
//! of pub/sub mode itself: `ssubscribe`/`sunsubscribe` confirmations, `smessage`, `pong`
//! and errors.
//!
//! One task owns the write half and the queue of commands awaiting confirmation; a
//! reader task turns the read half into frames (reading is not cancel-safe, so it never
//! sits in a `select!`). Each command names one channel (a cluster rejects several
//! channels of different slots in one `SSUBSCRIBE`), so confirmations come back in the
//! order the commands went out.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use super::pubsub::PubSubHandler;
use super::redis::RedisFailure;
use crate::metrics as m;

const PING_EVERY: Duration = Duration::from_secs(3);
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// Longest bulk string accepted from Redis (its own limit is 512 MB).
const MAX_BULK: usize = 512 * 1024 * 1024;

/// Where to connect and how to authenticate.
#[derive(Clone)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
    pub username: Option<String>,
    pub password: Option<String>,
}

impl Endpoint {
    /// The endpoint of a client made for one master (`redis://` only in cluster mode).
    pub fn of(client: &redis::Client) -> Option<Endpoint> {
        let info = client.get_connection_info();
        let redis::ConnectionAddr::Tcp(host, port) = info.addr() else {
            return None;
        };
        Some(Endpoint {
            host: host.clone(),
            port: *port,
            username: info.redis_settings().username().map(str::to_string),
            password: info.redis_settings().password().map(str::to_string),
        })
    }
}

/// A command sent to the connection task.
struct Request {
    kind: Kind,
    channel: String,
    reply: oneshot::Sender<Result<(), RedisFailure>>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Subscribe,
    Unsubscribe,
    Ping,
}

impl Kind {
    fn command(self) -> &'static str {
        match self {
            Kind::Subscribe => "SSUBSCRIBE",
            Kind::Unsubscribe => "SUNSUBSCRIBE",
            Kind::Ping => "PING",
        }
    }
    fn confirmation(self) -> &'static [u8] {
        match self {
            Kind::Subscribe => b"ssubscribe",
            Kind::Unsubscribe => b"sunsubscribe",
            Kind::Ping => b"pong",
        }
    }
}

/// A command written and not yet confirmed; `reply` is `None` for resubscriptions
/// (nobody waits for them one by one).
struct Pending {
    kind: Kind,
    channel: String,
    reply: Option<oneshot::Sender<Result<(), RedisFailure>>>,
}

struct State {
    wanted: HashSet<String>,
    /// `None` while disconnected.
    tx: Option<mpsc::UnboundedSender<Request>>,
}

struct Inner {
    endpoint: Endpoint,
    timeout: Duration,
    label: &'static str,
    /// parking_lot: held only to edit the set or read the sender, never across `.await`.
    state: Mutex<State>,
    up: watch::Sender<u64>,
    stop: CancellationToken,
}

/// Handle to one reconnecting sharded pub/sub connection; stops its task when dropped.
pub struct ShardedSubscriber {
    inner: Arc<Inner>,
}

impl Drop for ShardedSubscriber {
    fn drop(&mut self) {
        self.inner.stop.cancel();
    }
}

impl ShardedSubscriber {
    /// Starts the connection task (it connects in the background).
    pub fn start(
        endpoint: Endpoint,
        timeout: Duration,
        label: &'static str,
        handler: Arc<dyn PubSubHandler>,
    ) -> ShardedSubscriber {
        let (up, _) = watch::channel(0);
        let inner = Arc::new(Inner {
            endpoint,
            timeout,
            label,
            state: Mutex::new(State {
                wanted: HashSet::new(),
                tx: None,
            }),
            up,
            stop: CancellationToken::new(),
        });
        tokio::spawn(run(inner.clone(), handler));
        ShardedSubscriber { inner }
    }

    /// Subscribes and waits for Redis to confirm. Waits up to the timeout for a
    /// connection.
    pub async fn subscribe(&self, channel: &str) -> Result<(), RedisFailure> {
        let result = self.request(Kind::Subscribe, channel, true).await;
        if let Err(e) = &result {
            self.inner.state.lock().wanted.remove(channel);
            metrics::counter!(m::REDIS_ERRORS_TOTAL, "op" => "subscribe").increment(1);
            tracing::debug!(cause = %e, channel, "redis ssubscribe failed");
        }
        result
    }

    /// Unsubscribes; while disconnected it only forgets the channel.
    pub async fn unsubscribe(&self, channel: &str) -> Result<(), RedisFailure> {
        let tx = {
            let mut st = self.inner.state.lock();
            st.wanted.remove(channel);
            st.tx.clone()
        };
        if tx.is_none() {
            return Ok(());
        }
        self.request(Kind::Unsubscribe, channel, false).await
    }

    async fn request(&self, kind: Kind, channel: &str, want: bool) -> Result<(), RedisFailure> {
        let timeout = self.inner.timeout;
        let deadline = tokio::time::Instant::now() + timeout;
        let mut up = self.inner.up.subscribe();
        let tx = loop {
            {
                let mut st = self.inner.state.lock();
                if let Some(tx) = st.tx.clone() {
                    if want {
                        st.wanted.insert(channel.to_string());
                    }
                    break tx;
                }
            }
            match tokio::time::timeout_at(deadline, up.changed()).await {
                Ok(Ok(())) => continue,
                _ => return Err(RedisFailure::Timeout(timeout)),
            }
        };
        let (reply, rx) = oneshot::channel();
        let req = Request {
            kind,
            channel: channel.to_string(),
            reply,
        };
        if tx.send(req).is_err() {
            return Err(RedisFailure::Reply(
                "sharded pub/sub connection lost".into(),
            ));
        }
        match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(RedisFailure::Reply(
                "sharded pub/sub connection lost".into(),
            )),
            Err(_) => Err(RedisFailure::Timeout(timeout)),
        }
    }

    /// The channels this connection keeps subscribed (through reconnects).
    pub fn wanted(&self) -> Vec<String> {
        self.inner.state.lock().wanted.iter().cloned().collect()
    }

    /// Whether the connection is up.
    pub fn connected(&self) -> bool {
        self.inner.state.lock().tx.is_some()
    }
}

async fn run(inner: Arc<Inner>, handler: Arc<dyn PubSubHandler>) {
    let mut backoff = BACKOFF_MIN;
    let mut connections: u64 = 0;
    loop {
        let connect = tokio::time::timeout(inner.timeout, connect(&inner.endpoint));
        let conn = tokio::select! {
            _ = inner.stop.cancelled() => return,
            r = connect => r,
        };
        match conn {
            Ok(Ok(stream)) => {
                connections += 1;
                let (done, confirmed) = serve(&inner, stream, handler.as_ref(), connections).await;
                inner.state.lock().tx = None;
                if done {
                    return;
                }
                if confirmed {
                    backoff = BACKOFF_MIN;
                }
                metrics::counter!(m::REDIS_ERRORS_TOTAL, "op" => "pubsub").increment(1);
                tracing::warn!(conn = inner.label, "redis sharded pub/sub connection lost");
            }
            Ok(Err(e)) => {
                metrics::counter!(m::REDIS_ERRORS_TOTAL, "op" => "pubsub").increment(1);
                tracing::debug!(cause = %e, conn = inner.label, "redis sharded pub/sub connect failed");
            }
            Err(_) => {
                metrics::counter!(m::REDIS_ERRORS_TOTAL, "op" => "pubsub").increment(1);
                tracing::debug!(
                    conn = inner.label,
                    "redis sharded pub/sub connect timed out"
                );
            }
        }
        tokio::select! {
            _ = inner.stop.cancelled() => return,
            _ = tokio::time::sleep(jitter(backoff)) => {}
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// Opens the TCP connection and authenticates.
async fn connect(ep: &Endpoint) -> Result<TcpStream, RedisFailure> {
    let mut stream = TcpStream::connect((ep.host.as_str(), ep.port))
        .await
        .map_err(|e| RedisFailure::Reply(format!("connect {}:{}: {e}", ep.host, ep.port)))?;
    let _ = stream.set_nodelay(true);
    if let Some(pw) = &ep.password {
        let mut auth = redis::cmd("AUTH");
        if let Some(u) = &ep.username {
            auth.arg(u);
        }
        auth.arg(pw);
        stream
            .write_all(&auth.get_packed_command())
            .await
            .map_err(io_failure)?;
        let mut reader = BufReader::new(&mut stream);
        match read_frame(&mut reader).await.map_err(io_failure)? {
            Frame::Simple(_) => {}
            Frame::Error(e) => return Err(RedisFailure::Reply(format!("AUTH: {e}"))),
            other => return Err(RedisFailure::Reply(format!("AUTH: {other:?}"))),
        }
    }
    Ok(stream)
}

fn io_failure(e: std::io::Error) -> RedisFailure {
    RedisFailure::Reply(format!("sharded pub/sub: {e}"))
}

/// Runs one connection until it ends. Returns (stopped, resubscriptions confirmed).
async fn serve(
    inner: &Inner,
    stream: TcpStream,
    handler: &dyn PubSubHandler,
    connections: u64,
) -> (bool, bool) {
    let (read_half, mut write_half) = stream.into_split();
    let (frames_tx, mut frames) = mpsc::unbounded_channel();
    let reader = tokio::spawn(read_frames(read_half, frames_tx));
    let _reader = AbortOnDrop(reader);
    let (tx, mut requests) = mpsc::unbounded_channel::<Request>();
    // The sender and the snapshot change together: a subscribe either is in the
    // snapshot or goes through this connection after the resubscriptions.
    let snapshot: Vec<String> = {
        let mut st = inner.state.lock();
        st.tx = Some(tx);
        st.wanted.iter().cloned().collect()
    };
    inner.up.send_replace(connections);
    let mut pending: VecDeque<Pending> = VecDeque::new();
    let mut out = Vec::new();
    for ch in &snapshot {
        out.extend(packed(Kind::Subscribe, ch));
        pending.push_back(Pending {
            kind: Kind::Subscribe,
            channel: ch.clone(),
            reply: None,
        });
    }
    let mut resubscribing = snapshot.len();
    let mut confirmed = resubscribing == 0;
    if !out.is_empty() && write(inner, &mut write_half, &out).await.is_err() {
        return (false, false);
    }
    if confirmed {
        announce(inner, handler, connections, &snapshot);
    }
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ping.tick().await;
    let mut ping_unanswered = false;
    loop {
        tokio::select! {
            _ = inner.stop.cancelled() => return (true, confirmed),
            frame = frames.recv() => {
                let Some(frame) = frame else { return (false, confirmed) };
                match on_frame(frame, &mut pending, handler, inner) {
                    Answered::Resubscribed => {
                        resubscribing -= 1;
                        if resubscribing == 0 {
                            confirmed = true;
                            announce(inner, handler, connections, &snapshot);
                        }
                    }
                    Answered::Pong => ping_unanswered = false,
                    Answered::Other => {}
                    Answered::Broken => return (false, confirmed),
                }
            }
            req = requests.recv() => {
                let Some(req) = req else { return (false, confirmed) };
                let bytes = packed(req.kind, &req.channel);
                pending.push_back(Pending { kind: req.kind, channel: req.channel, reply: Some(req.reply) });
                if write(inner, &mut write_half, &bytes).await.is_err() {
                    return (false, confirmed);
                }
            }
            _ = ping.tick() => {
                if ping_unanswered {
                    return (false, confirmed);
                }
                ping_unanswered = true;
                pending.push_back(Pending { kind: Kind::Ping, channel: String::new(), reply: None });
                if write(inner, &mut write_half, &packed(Kind::Ping, "")).await.is_err() {
                    return (false, confirmed);
                }
            }
        }
    }
}

/// After a reconnect with every wanted channel confirmed: count it and have the
/// channels recovered.
fn announce(inner: &Inner, handler: &dyn PubSubHandler, connections: u64, channels: &[String]) {
    if connections <= 1 {
        return;
    }
    metrics::counter!(m::REDIS_RECONNECTS_TOTAL, "conn" => inner.label).increment(1);
    tracing::info!(
        conn = inner.label,
        channels = channels.len(),
        "redis sharded pub/sub reconnected"
    );
    if !channels.is_empty() {
        handler.on_interrupted(channels);
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn write(
    inner: &Inner,
    w: &mut tokio::net::tcp::OwnedWriteHalf,
    bytes: &[u8],
) -> Result<(), ()> {
    match tokio::time::timeout(inner.timeout, w.write_all(bytes)).await {
        Ok(Ok(())) => Ok(()),
        _ => Err(()),
    }
}

fn packed(kind: Kind, channel: &str) -> Vec<u8> {
    let mut c = redis::cmd(kind.command());
    if kind != Kind::Ping {
        c.arg(channel);
    }
    c.get_packed_command()
}

enum Answered {
    /// A resubscription after a reconnect was confirmed.
    Resubscribed,
    Pong,
    Other,
    /// The reply does not fit the commands sent: drop the connection.
    Broken,
}

fn on_frame(
    frame: Frame,
    pending: &mut VecDeque<Pending>,
    handler: &dyn PubSubHandler,
    inner: &Inner,
) -> Answered {
    let items = match frame {
        Frame::Array(items) => items,
        Frame::Error(e) => {
            // An error answers the oldest command (MOVED, CROSSSLOT, ...).
            let Some(p) = pending.pop_front() else {
                return Answered::Broken;
            };
            let failure = RedisFailure::Reply(format!("{} {}: {e}", p.kind.command(), p.channel));
            return match p.reply {
                Some(r) => {
                    let _ = r.send(Err(failure));
                    Answered::Other
                }
                None if p.kind == Kind::Subscribe => {
                    // A wanted channel this master no longer serves (a resharding or a
                    // failover): it stays wanted here until the broker, seeing the new
                    // topology, moves it to its new master.
                    metrics::counter!(m::REDIS_ERRORS_TOTAL, "op" => "subscribe").increment(1);
                    tracing::warn!(cause = %failure, conn = inner.label, "resubscription refused; waiting for the new topology");
                    Answered::Resubscribed
                }
                None => Answered::Broken,
            };
        }
        // Outside of any subscription, PING answers a plain PONG.
        Frame::Simple(s)
            if s.eq_ignore_ascii_case("PONG")
                && pending.front().is_some_and(|p| p.kind == Kind::Ping) =>
        {
            pending.pop_front();
            return Answered::Pong;
        }
        Frame::Simple(_) | Frame::Int | Frame::Bulk(_) => return Answered::Broken,
    };
    let kind = match items.first() {
        Some(Frame::Bulk(Some(k))) => k.as_slice(),
        _ => return Answered::Broken,
    };
    if kind == b"smessage" {
        if let [_, Frame::Bulk(Some(ch)), Frame::Bulk(Some(payload))] = items.as_slice() {
            handler.on_message(&String::from_utf8_lossy(ch), payload);
            return Answered::Other;
        }
        return Answered::Broken;
    }
    let channel = match items.get(1) {
        Some(Frame::Bulk(Some(c))) => c.as_slice(),
        _ => b"".as_slice(),
    };
    let matches_front = pending.front().is_some_and(|p| {
        p.kind.confirmation() == kind && (p.kind == Kind::Ping || p.channel.as_bytes() == channel)
    });
    if matches_front {
        let Some(p) = pending.pop_front() else {
            return Answered::Broken;
        };
        return match (p.kind, p.reply) {
            (_, Some(r)) => {
                let _ = r.send(Ok(()));
                Answered::Other
            }
            (Kind::Ping, None) => Answered::Pong,
            (Kind::Subscribe, None) => Answered::Resubscribed,
            (Kind::Unsubscribe, None) => Answered::Other,
        };
    }
    if kind == b"sunsubscribe" {
        // Redis unsubscribes the channels of a slot that moved to another master. The
        // channel stays wanted here until the broker moves it (cluster::topology).
        let channel = String::from_utf8_lossy(channel);
        if inner.state.lock().wanted.contains(channel.as_ref()) {
            tracing::info!(channel = %channel, conn = inner.label, "redis moved a subscribed channel's slot");
        }
        return Answered::Other;
    }
    Answered::Broken
}

/// The RESP2 replies of pub/sub mode.
#[derive(Debug)]
enum Frame {
    Simple(String),
    Error(String),
    Int,
    Bulk(Option<Vec<u8>>),
    /// One level deep: pub/sub replies never nest.
    Array(Vec<Frame>),
}

async fn read_frames(read: tokio::net::tcp::OwnedReadHalf, frames: mpsc::UnboundedSender<Frame>) {
    let mut reader = BufReader::new(read);
    while let Ok(f) = read_frame(&mut reader).await {
        if frames.send(f).is_err() {
            return;
        }
    }
}

async fn read_line<R: AsyncBufReadExt + Unpin>(r: &mut R) -> std::io::Result<Vec<u8>> {
    let mut line = Vec::new();
    if r.read_until(b'\n', &mut line).await? == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    if !line.ends_with(b"\r\n") {
        return Err(bad_data("line without CRLF"));
    }
    line.truncate(line.len() - 2);
    Ok(line)
}

fn bad_data(what: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string())
}

fn number(b: &[u8]) -> std::io::Result<i64> {
    std::str::from_utf8(b)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad_data("bad number"))
}

async fn read_scalar<R: AsyncBufReadExt + Unpin>(
    r: &mut R,
    line: Vec<u8>,
) -> std::io::Result<Frame> {
    let (&t, rest) = line.split_first().ok_or_else(|| bad_data("empty line"))?;
    Ok(match t {
        b'+' => Frame::Simple(String::from_utf8_lossy(rest).into_owned()),
        b'-' => Frame::Error(String::from_utf8_lossy(rest).into_owned()),
        b':' => {
            number(rest)?;
            Frame::Int
        }
        b'$' => {
            let n = number(rest)?;
            if n < 0 {
                return Ok(Frame::Bulk(None));
            }
            let n = usize::try_from(n).map_err(|_| bad_data("bulk length"))?;
            if n > MAX_BULK {
                return Err(bad_data("bulk too long"));
            }
            let mut buf = vec![0; n + 2];
            r.read_exact(&mut buf).await?;
            if !buf.ends_with(b"\r\n") {
                return Err(bad_data("bulk without CRLF"));
            }
            buf.truncate(n);
            Frame::Bulk(Some(buf))
        }
        _ => return Err(bad_data("unexpected reply type")),
    })
}

async fn read_frame<R: AsyncBufReadExt + Unpin>(r: &mut R) -> std::io::Result<Frame> {
    let line = read_line(r).await?;
    if line.first() != Some(&b'*') {
        return read_scalar(r, line).await;
    }
    let n = number(&line[1..])?;
    let mut items = Vec::with_capacity(n.clamp(0, 8) as usize);
    for _ in 0..n.max(0) {
        let line = read_line(r).await?;
        items.push(read_scalar(r, line).await?);
    }
    Ok(Frame::Array(items))
}

/// Between half and all of `d`, so that nodes do not reconnect in lockstep.
fn jitter(d: Duration) -> Duration {
    let f = 0.5 + rand::random::<f64>() * 0.5;
    d.mul_f64(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reads_pubsub_replies() {
        let wire: &[u8] = b"*3\r\n$10\r\nssubscribe\r\n$2\r\nch\r\n:1\r\n*3\r\n$8\r\nsmessage\r\n$2\r\nch\r\n$5\r\na\r\nb\0\r\n-MOVED 12 127.0.0.1:7001\r\n*2\r\n$4\r\npong\r\n$0\r\n\r\n";
        let mut r = BufReader::new(wire);
        let mut got = Vec::new();
        while let Ok(f) = read_frame(&mut r).await {
            got.push(format!("{f:?}"));
        }
        assert_eq!(got.len(), 4, "{got:?}");
        assert!(
            got[1].contains("[97, 13, 10, 98, 0]"),
            "binary-safe: {}",
            got[1]
        );
        assert!(got[2].starts_with("Error(\"MOVED"), "{}", got[2]);
    }
}
