//! A Redis pub/sub connection that survives Redis restarts.
//!
//! One task owns the connection: it reads messages and hands them to a
//! [`PubSubHandler`] in the order Redis sent them, pings to notice a dead peer, and
//! after any loss reconnects (with backoff), resubscribes every channel still wanted,
//! and only then reports those channels as interrupted: whatever was published to them
//! while the connection was down never reached this node, and the handler must have it
//! recovered.
//!
//! Subscribing and unsubscribing are called from other tasks through the split sink.
//! The set of wanted channels and the current sink change together under one lock, so
//! a reconnect either sees a new channel in its snapshot or the subscribe goes through
//! the new connection: a wanted channel is never left unsubscribed. (The reverse race
//! can leave a channel subscribed with nobody wanting it; its messages are ignored by
//! the handler.)

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use parking_lot::Mutex;
use redis::aio::PubSubSink;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::redis::RedisFailure;
use crate::metrics as m;

/// Where messages and interruptions go.
pub trait PubSubHandler: Send + Sync + 'static {
    /// Called for each message, in the order the connection received them.
    fn on_message(&self, channel: &str, payload: &[u8]);
    /// The connection was lost and is back, subscribed again to `channels`: anything
    /// published to them in between did not arrive.
    fn on_interrupted(&self, channels: &[String]);
}

/// Channels subscribed per SUBSCRIBE command when resubscribing after a reconnect.
const RESUBSCRIBE_BATCH: usize = 512;
/// A live connection is pinged this often; no answer within the timeout reconnects.
const PING_EVERY: Duration = Duration::from_secs(3);
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

struct State {
    wanted: HashSet<String>,
    /// `None` while disconnected.
    sink: Option<PubSubSink>,
}

/// Gives the client to (re)connect with; asked at each connection attempt, so that a
/// connection can follow a Redis Cluster's topology.
pub type ClientSource = Box<dyn Fn() -> redis::Client + Send + Sync>;

struct Inner {
    client: ClientSource,
    timeout: Duration,
    /// Metrics label of this connection ("broker", "control").
    label: &'static str,
    /// parking_lot: held only to read or swap the sink and edit the set, never across
    /// an `.await`.
    state: Mutex<State>,
    /// Bumped each time a connection is up; subscribers wait on it while disconnected.
    up: watch::Sender<u64>,
    stop: CancellationToken,
}

/// Handle to one reconnecting pub/sub connection; stops its task when dropped.
pub struct Subscriber {
    inner: Arc<Inner>,
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.inner.stop.cancel();
    }
}

impl Subscriber {
    /// Starts the connection task (it connects in the background).
    pub fn start(
        client: ClientSource,
        timeout: Duration,
        label: &'static str,
        handler: Arc<dyn PubSubHandler>,
    ) -> Subscriber {
        let (up, _) = watch::channel(0);
        let inner = Arc::new(Inner {
            client,
            timeout,
            label,
            state: Mutex::new(State {
                wanted: HashSet::new(),
                sink: None,
            }),
            up,
            stop: CancellationToken::new(),
        });
        tokio::spawn(run(inner.clone(), handler));
        Subscriber { inner }
    }

    /// Subscribes and waits for Redis to confirm, so that everything published after
    /// this returns is delivered. Waits up to the timeout for a connection.
    pub async fn subscribe(&self, channel: &str) -> Result<(), RedisFailure> {
        let sink = self.sink_adding(channel).await;
        let result = match sink {
            Some(mut sink) => {
                match tokio::time::timeout(self.inner.timeout, sink.subscribe(channel)).await {
                    Ok(r) => r.map_err(RedisFailure::from),
                    Err(_) => Err(RedisFailure::Timeout(self.inner.timeout)),
                }
            }
            None => Err(RedisFailure::Timeout(self.inner.timeout)),
        };
        if let Err(e) = &result {
            // The caller treats the channel as not subscribed and will not unsubscribe.
            self.inner.state.lock().wanted.remove(channel);
            metrics::counter!(m::REDIS_ERRORS_TOTAL, "op" => "subscribe").increment(1);
            tracing::debug!(cause = %e, channel, "redis subscribe failed");
        }
        result
    }

    /// Unsubscribes; while disconnected it only forgets the channel (the next
    /// connection will not subscribe it).
    pub async fn unsubscribe(&self, channel: &str) -> Result<(), RedisFailure> {
        let sink = {
            let mut st = self.inner.state.lock();
            st.wanted.remove(channel);
            st.sink.clone()
        };
        let Some(mut sink) = sink else {
            return Ok(());
        };
        match tokio::time::timeout(self.inner.timeout, sink.unsubscribe(channel)).await {
            Ok(r) => r.map_err(RedisFailure::from),
            Err(_) => Err(RedisFailure::Timeout(self.inner.timeout)),
        }
    }

    /// Adds `channel` to the wanted set and returns the sink to subscribe through,
    /// waiting (bounded) for a connection if there is none.
    async fn sink_adding(&self, channel: &str) -> Option<PubSubSink> {
        let mut up = self.inner.up.subscribe();
        let deadline = tokio::time::Instant::now() + self.inner.timeout;
        loop {
            {
                let mut st = self.inner.state.lock();
                if let Some(sink) = st.sink.clone() {
                    st.wanted.insert(channel.to_string());
                    return Some(sink);
                }
            }
            match tokio::time::timeout_at(deadline, up.changed()).await {
                Ok(Ok(())) => continue,
                _ => return None,
            }
        }
    }

    /// Whether the connection is up (for health reporting and tests).
    pub fn connected(&self) -> bool {
        self.inner.state.lock().sink.is_some()
    }
}

async fn run(inner: Arc<Inner>, handler: Arc<dyn PubSubHandler>) {
    let mut backoff = BACKOFF_MIN;
    let mut connections: u64 = 0;
    loop {
        let client = (inner.client)();
        let connect = tokio::time::timeout(inner.timeout, client.get_async_pubsub());
        let pubsub = tokio::select! {
            _ = inner.stop.cancelled() => return,
            r = connect => r,
        };
        match pubsub {
            Ok(Ok(pubsub)) => {
                let (sink, stream) = pubsub.split();
                let snapshot: Vec<String> = {
                    let mut st = inner.state.lock();
                    st.sink = Some(sink.clone());
                    st.wanted.iter().cloned().collect()
                };
                connections += 1;
                inner.up.send_replace(connections);
                if resubscribe(&inner, sink.clone(), &snapshot).await {
                    backoff = BACKOFF_MIN;
                    if connections > 1 {
                        metrics::counter!(m::REDIS_RECONNECTS_TOTAL, "conn" => inner.label)
                            .increment(1);
                        tracing::info!(
                            conn = inner.label,
                            channels = snapshot.len(),
                            "redis pub/sub reconnected"
                        );
                        if !snapshot.is_empty() {
                            handler.on_interrupted(&snapshot);
                        }
                    }
                    if read(&inner, sink, stream, handler.as_ref()).await {
                        return;
                    }
                }
                inner.state.lock().sink = None;
                metrics::counter!(m::REDIS_ERRORS_TOTAL, "op" => "pubsub").increment(1);
                tracing::warn!(conn = inner.label, "redis pub/sub connection lost");
            }
            Ok(Err(e)) => {
                metrics::counter!(m::REDIS_ERRORS_TOTAL, "op" => "pubsub").increment(1);
                tracing::debug!(cause = %e, conn = inner.label, "redis pub/sub connect failed");
            }
            Err(_) => {
                metrics::counter!(m::REDIS_ERRORS_TOTAL, "op" => "pubsub").increment(1);
                tracing::debug!(conn = inner.label, "redis pub/sub connect timed out");
            }
        }
        tokio::select! {
            _ = inner.stop.cancelled() => return,
            _ = tokio::time::sleep(jitter(backoff)) => {}
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// Subscribes `channels` on a fresh connection; false if the connection failed.
async fn resubscribe(inner: &Inner, mut sink: PubSubSink, channels: &[String]) -> bool {
    for chunk in channels.chunks(RESUBSCRIBE_BATCH) {
        match tokio::time::timeout(inner.timeout, sink.subscribe(chunk)).await {
            Ok(Ok(())) => {}
            _ => return false,
        }
    }
    true
}

/// Reads until the connection ends (false) or the subscriber stops (true).
async fn read(
    inner: &Inner,
    mut sink: PubSubSink,
    mut stream: redis::aio::PubSubStream,
    handler: &dyn PubSubHandler,
) -> bool {
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ping.tick().await;
    loop {
        tokio::select! {
            _ = inner.stop.cancelled() => return true,
            msg = stream.next() => match msg {
                Some(msg) => handler.on_message(msg.get_channel_name(), msg.get_payload_bytes()),
                None => return false,
            },
            _ = ping.tick() => {
                let pong = tokio::time::timeout(inner.timeout, sink.ping::<redis::Value>()).await;
                if !matches!(pong, Ok(Ok(_))) {
                    return false;
                }
            }
        }
    }
}

/// Between half and all of `d`, so that nodes do not reconnect in lockstep.
fn jitter(d: Duration) -> Duration {
    let f = 0.5 + rand::random::<f64>() * 0.5;
    d.mul_f64(f)
}
