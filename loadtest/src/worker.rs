//! A worker process: opens its share of the clients and keeps them connected until its
//! stdin closes. Lines on stdin switch the clients' phase: `publish` (chat clients start
//! publishing), `quiet` (they stop). It reports a [`Status`] as one JSON line on stdout
//! every 250 ms and a last one (`stopped: true`, with its histograms) before it exits.
//! One process per share because one process may hold only so many file descriptors.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use jsonwebtoken::EncodingKey;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncBufReadExt;
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::http::Uri;

use crate::client::{self, ChatPlan, FailKind, IdleEnd, Phase, Spec, Tally, Target};
use crate::hist;
use crate::peer::{Peer, PeerConf};

/// Environment variable that hands the server description ([`PeerConf`], JSON) to
/// workers.
pub const PEER_ENV: &str = "HERALD_LOADTEST_PEER";

/// Which channel client `n` subscribes to.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ChannelPlan {
    pub prefix: String,
    /// `prefix{n % count}` ...
    pub count: u64,
    /// ... or, when above 0, rooms of this many members: `prefix{n / room_size}`.
    pub room_size: u64,
}

impl ChannelPlan {
    pub fn channel(&self, n: u64) -> String {
        match n.checked_div(self.room_size) {
            Some(room) => format!("{}{room}", self.prefix),
            None => format!("{}{}", self.prefix, n % self.count.max(1)),
        }
    }
}

/// What one worker is to do; clients `start..end` of the whole run.
pub struct WorkerArgs {
    pub index: usize,
    pub secret: String,
    pub start: u64,
    pub end: u64,
    /// Client `n` binds to 127.0.0.(2 + n % source_addrs); 0: let the kernel choose.
    pub source_addrs: u8,
    pub concurrency: usize,
    pub channels: ChannelPlan,
    pub connect_timeout: Duration,
    pub peer: PeerConf,
    /// Publications per second of each client in the publish phase (chat; 0: none).
    pub chat_rate: f64,
}

/// A worker's counters, as it reports them.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Status {
    pub worker: usize,
    pub target: u64,
    /// Clients that connected and subscribed.
    pub connected: u64,
    /// Clients that never got there.
    pub failed: u64,
    pub errors: BTreeMap<String, u64>,
    /// Clients that were connected and then lost their connection.
    pub dropped: u64,
    /// Server pings answered, over all clients.
    pub pings: u64,
    /// Stamped messages received.
    #[serde(default)]
    pub deliveries: u64,
    /// Publications sent through client sockets.
    #[serde(default)]
    pub published: u64,
    #[serde(default)]
    pub publish_errors: u64,
    /// Publish-to-deliver latency histogram (µs, [`hist::encode`]), in the last report.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_hist: Option<String>,
    /// Connect-to-subscribed time histogram (µs), in the last report.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_hist: Option<String>,
    /// Every client has connected or failed.
    pub connecting_done: bool,
    /// Seconds from the worker's start to `connecting_done`.
    pub connect_secs: Option<f64>,
    /// Last report: the worker is exiting.
    pub stopped: bool,
    pub first_error: Option<String>,
    pub first_drop: Option<String>,
}

impl Status {
    /// Clients connected right now.
    pub fn open(&self) -> u64 {
        self.connected.saturating_sub(self.dropped)
    }
}

struct Counters {
    connected: AtomicU64,
    failed: [AtomicU64; FailKind::ALL.len()],
    dropped: AtomicU64,
    tally: Tally,
    connect_time: Mutex<hdrhistogram::Histogram<u64>>,
    first_error: Mutex<Option<String>>,
    first_drop: Mutex<Option<String>>,
}

impl Default for Counters {
    fn default() -> Counters {
        Counters {
            connected: AtomicU64::new(0),
            failed: Default::default(),
            dropped: AtomicU64::new(0),
            tally: Tally::default(),
            connect_time: Mutex::new(hist::new()),
            first_error: Mutex::new(None),
            first_drop: Mutex::new(None),
        }
    }
}

impl Counters {
    fn record_failure(&self, f: client::Failure) {
        if let Some(i) = FailKind::ALL.iter().position(|k| *k == f.kind) {
            self.failed[i].fetch_add(1, Ordering::Relaxed);
        }
        keep_first(
            &self.first_error,
            format!("{}: {}", f.kind.name(), f.detail),
        );
    }

    fn status(&self, args: &WorkerArgs) -> Status {
        let errors: BTreeMap<String, u64> = FailKind::ALL
            .iter()
            .zip(&self.failed)
            .map(|(k, n)| (k.name().to_owned(), n.load(Ordering::Relaxed)))
            .filter(|(_, n)| *n > 0)
            .collect();
        let connected = self.connected.load(Ordering::Relaxed);
        let failed = errors.values().sum();
        Status {
            worker: args.index,
            target: args.end - args.start,
            connected,
            failed,
            errors,
            dropped: self.dropped.load(Ordering::Relaxed),
            pings: self.tally.pings.load(Ordering::Relaxed),
            deliveries: self.tally.deliveries.load(Ordering::Relaxed),
            published: self.tally.published.load(Ordering::Relaxed),
            publish_errors: self.tally.publish_errors.load(Ordering::Relaxed),
            latency_hist: None,
            connect_hist: None,
            connecting_done: connected + failed >= args.end - args.start,
            connect_secs: None,
            stopped: false,
            first_error: self.first_error.lock().ok().and_then(|g| g.clone()),
            first_drop: self.first_drop.lock().ok().and_then(|g| g.clone()),
        }
    }
}

fn keep_first(slot: &Mutex<Option<String>>, text: String) {
    if let Ok(mut g) = slot.lock() {
        g.get_or_insert(text);
    }
}

/// Runs the worker until stdin reaches end of file.
pub async fn run(args: WorkerArgs) -> anyhow::Result<()> {
    let target = Arc::new(resolve(&args.peer).await?);
    let counters = Arc::new(Counters::default());
    let (phase_tx, phase_rx) = watch::channel(Phase::Hold);
    let started = Instant::now();
    let launcher = tokio::spawn(launch(
        launch_plan(&args)?,
        target,
        counters.clone(),
        phase_rx,
        args.concurrency,
        args.connect_timeout,
        args.chat_rate,
    ));

    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let mut connect_secs = None;
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let mut s = counters.status(&args);
                if s.connecting_done && connect_secs.is_none() {
                    connect_secs = Some(started.elapsed().as_secs_f64());
                }
                s.connect_secs = connect_secs;
                emit(&s);
            }
            line = lines.next_line() => match line {
                Ok(Some(l)) => match l.trim() {
                    "publish" => { let _ = phase_tx.send(Phase::Publish); }
                    "quiet" => { let _ = phase_tx.send(Phase::Quiet); }
                    other => eprintln!("worker {}: unknown command {other:?}", args.index),
                },
                Ok(None) | Err(_) => break,
            },
        }
    }

    let _ = phase_tx.send(Phase::Stop);
    let handles = launcher.await.unwrap_or_default();
    let all_done = futures_util::future::join_all(handles);
    let _ = tokio::time::timeout(Duration::from_secs(5), all_done).await;
    let mut s = counters.status(&args);
    s.connect_secs = connect_secs;
    s.stopped = true;
    s.latency_hist = counters.tally.encoded_latency();
    s.connect_hist = counters
        .connect_time
        .lock()
        .ok()
        .and_then(|h| hist::encode(&h).ok());
    emit(&s);
    Ok(())
}

fn emit(s: &Status) {
    match serde_json::to_string(s) {
        Ok(line) => println!("{line}"),
        Err(e) => eprintln!("worker {}: cannot encode status: {e}", s.worker),
    }
}

/// Tokens and channels for every client of this worker, made up front.
fn launch_plan(args: &WorkerArgs) -> anyhow::Result<Vec<(u64, Spec)>> {
    let key = EncodingKey::from_secret(args.secret.as_bytes());
    (args.start..args.end)
        .map(|n| {
            let source = (args.source_addrs > 0).then(|| {
                let last = 2 + (n % u64::from(args.source_addrs)) as u8;
                IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
            });
            let token = if args.peer.peer == Peer::Herald {
                client::token(&key, &format!("u{n}"))?
            } else {
                String::new()
            };
            Ok((
                n,
                Spec {
                    source,
                    token,
                    channel: args.channels.channel(n),
                },
            ))
        })
        .collect()
}

/// Starts every client, at most `concurrency` of them connecting at once.
async fn launch(
    specs: Vec<(u64, Spec)>,
    target: Arc<Target>,
    counters: Arc<Counters>,
    phase: watch::Receiver<Phase>,
    concurrency: usize,
    connect_timeout: Duration,
    chat_rate: f64,
) -> Vec<JoinHandle<()>> {
    let limit = Arc::new(Semaphore::new(concurrency.max(1)));
    let mut handles = Vec::with_capacity(specs.len());
    for (n, spec) in specs {
        let Ok(permit) = limit.clone().acquire_owned().await else {
            break;
        };
        if *phase.borrow() == Phase::Stop {
            break;
        }
        let chat = (chat_rate > 0.0).then_some(ChatPlan { rate: chat_rate, n });
        handles.push(tokio::spawn(one_client(
            spec,
            target.clone(),
            counters.clone(),
            phase.clone(),
            permit,
            connect_timeout,
            chat,
        )));
    }
    handles
}

async fn one_client(
    spec: Spec,
    target: Arc<Target>,
    counters: Arc<Counters>,
    phase: watch::Receiver<Phase>,
    permit: OwnedSemaphorePermit,
    connect_timeout: Duration,
    chat: Option<ChatPlan>,
) {
    let began = Instant::now();
    let result = client::establish(&target, &spec, connect_timeout).await;
    drop(permit);
    let ws = match result {
        Ok(ws) => ws,
        Err(f) => return counters.record_failure(f),
    };
    let took = u64::try_from(began.elapsed().as_micros()).unwrap_or(u64::MAX);
    if let Ok(mut h) = counters.connect_time.lock() {
        hist::record(&mut h, took);
    }
    counters.connected.fetch_add(1, Ordering::Relaxed);
    let Spec { channel, .. } = spec;
    let end = client::session(ws, &target.peer, &channel, phase, &counters.tally, chat).await;
    if let IdleEnd::Dropped(why) = end {
        counters.dropped.fetch_add(1, Ordering::Relaxed);
        keep_first(&counters.first_drop, why);
    }
}

/// Resolves the host and port of the server's `ws://` URL.
pub async fn resolve(peer: &PeerConf) -> anyhow::Result<Target> {
    let url = peer.ws_base.as_str();
    let uri: Uri = url.parse().with_context(|| format!("bad URL {url}"))?;
    if uri.scheme_str() != Some("ws") {
        anyhow::bail!("only ws:// URLs are supported (got {url})");
    }
    let host = uri.host().context("URL has no host")?;
    let port = uri.port_u16().unwrap_or(80);
    let addr = tokio::net::lookup_host((host, port))
        .await
        .with_context(|| format!("resolving {host}"))?
        .next()
        .with_context(|| format!("{host} has no address"))?;
    Ok(Target {
        addr,
        peer: peer.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::ChannelPlan;

    #[test]
    fn channels_by_modulo_or_room() {
        let m = ChannelPlan {
            prefix: "idle".into(),
            count: 100,
            room_size: 0,
        };
        assert_eq!(m.channel(205), "idle5");
        let r = ChannelPlan {
            prefix: "room".into(),
            count: 0,
            room_size: 10,
        };
        assert_eq!(r.channel(9), "room0");
        assert_eq!(r.channel(10), "room1");
        assert_eq!(r.channel(205), "room20");
    }
}
