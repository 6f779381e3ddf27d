//! A worker process: opens its share of the clients and keeps them idle until its stdin
//! closes. It reports a [`Status`] as one JSON line on stdout every 250 ms and a last one
//! (`stopped: true`) before it exits. One process per share because one process may hold
//! only so many file descriptors.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use jsonwebtoken::EncodingKey;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncReadExt;
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::http::Uri;

use crate::client::{self, FailKind, IdleEnd, Spec, Target};

/// What one worker is to do; clients `start..end` of the whole run.
pub struct WorkerArgs {
    pub index: usize,
    pub url: String,
    pub secret: String,
    pub start: u64,
    pub end: u64,
    /// Client `n` binds to 127.0.0.(2 + n % source_addrs); 0: let the kernel choose.
    pub source_addrs: u8,
    pub concurrency: usize,
    pub channels: u64,
    pub connect_timeout: Duration,
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

#[derive(Default)]
struct Counters {
    connected: AtomicU64,
    failed: [AtomicU64; FailKind::ALL.len()],
    dropped: AtomicU64,
    pings: AtomicU64,
    first_error: Mutex<Option<String>>,
    first_drop: Mutex<Option<String>>,
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
            pings: self.pings.load(Ordering::Relaxed),
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
    let target = Arc::new(resolve(&args.url).await?);
    let counters = Arc::new(Counters::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    let started = Instant::now();
    let launcher = tokio::spawn(launch(
        launch_plan(&args)?,
        target,
        counters.clone(),
        stop_rx,
        args.concurrency,
        args.connect_timeout,
    ));

    let mut stdin_closed = Box::pin(wait_for_eof());
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
            _ = &mut stdin_closed => break,
        }
    }

    let _ = stop_tx.send(true);
    let handles = launcher.await.unwrap_or_default();
    let all_done = futures_util::future::join_all(handles);
    let _ = tokio::time::timeout(Duration::from_secs(5), all_done).await;
    let mut s = counters.status(&args);
    s.connect_secs = connect_secs;
    s.stopped = true;
    emit(&s);
    Ok(())
}

fn emit(s: &Status) {
    match serde_json::to_string(s) {
        Ok(line) => println!("{line}"),
        Err(e) => eprintln!("worker {}: cannot encode status: {e}", s.worker),
    }
}

async fn wait_for_eof() {
    let mut stdin = tokio::io::stdin();
    let mut buf = [0u8; 256];
    while let Ok(n) = stdin.read(&mut buf).await {
        if n == 0 {
            break;
        }
    }
}

/// Tokens and channels for every client of this worker, made up front.
fn launch_plan(args: &WorkerArgs) -> anyhow::Result<Vec<Spec>> {
    let key = EncodingKey::from_secret(args.secret.as_bytes());
    (args.start..args.end)
        .map(|n| {
            let source = (args.source_addrs > 0).then(|| {
                let last = 2 + (n % u64::from(args.source_addrs)) as u8;
                IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
            });
            Ok(Spec {
                source,
                token: client::token(&key, &format!("u{n}"))?,
                channel: format!("idle{}", n % args.channels.max(1)),
            })
        })
        .collect()
}

/// Starts every client, at most `concurrency` of them connecting at once.
async fn launch(
    specs: Vec<Spec>,
    target: Arc<Target>,
    counters: Arc<Counters>,
    stop: watch::Receiver<bool>,
    concurrency: usize,
    connect_timeout: Duration,
) -> Vec<JoinHandle<()>> {
    let limit = Arc::new(Semaphore::new(concurrency.max(1)));
    let mut handles = Vec::with_capacity(specs.len());
    for spec in specs {
        let Ok(permit) = limit.clone().acquire_owned().await else {
            break;
        };
        if *stop.borrow() {
            break;
        }
        handles.push(tokio::spawn(one_client(
            spec,
            target.clone(),
            counters.clone(),
            stop.clone(),
            permit,
            connect_timeout,
        )));
    }
    handles
}

async fn one_client(
    spec: Spec,
    target: Arc<Target>,
    counters: Arc<Counters>,
    stop: watch::Receiver<bool>,
    permit: OwnedSemaphorePermit,
    connect_timeout: Duration,
) {
    let result = client::establish(&target, &spec, connect_timeout).await;
    drop(permit);
    drop(spec);
    let ws = match result {
        Ok(ws) => ws,
        Err(f) => return counters.record_failure(f),
    };
    counters.connected.fetch_add(1, Ordering::Relaxed);
    if let IdleEnd::Dropped(why) = client::idle(ws, stop, &counters.pings).await {
        counters.dropped.fetch_add(1, Ordering::Relaxed);
        keep_first(&counters.first_drop, why);
    }
}

/// Resolves the host and port of a `ws://` URL.
pub async fn resolve(url: &str) -> anyhow::Result<Target> {
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
        url: url.to_owned(),
    })
}
