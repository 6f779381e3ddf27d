//! The `idle` scenario: how much server memory an idle, subscribed connection costs.
//!
//! 1. Sample the server's RSS with no clients (baseline).
//! 2. Open N clients over worker processes; each connects with its own token, subscribes
//!    to one channel and then only answers server pings.
//! 3. Once every client has connected or failed, wait `settle` seconds (by default
//!    longer than one ping interval, so every client has answered a ping), then sample
//!    the server again.
//! 4. Stop the clients, optionally sample once more, write the JSON result and print a
//!    Markdown table row.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use clap::Args;
use serde::Serialize;

use crate::fleet::{Fleet, FleetPlan, SECRET_ENV};
use crate::metrics;
use crate::peer::{Peer, PeerConf};
use crate::proc::{self, Sample};
use crate::worker::ChannelPlan;

/// Most clients one worker may hold: its file descriptor limit less some headroom.
const FD_HEADROOM: u64 = 100;

#[derive(Args, Debug)]
pub struct IdleArgs {
    /// Herald's WebSocket URL.
    #[arg(long, default_value = "ws://127.0.0.1:8000/connection/websocket")]
    pub url: String,
    /// HMAC secret the server verifies tokens with (HS256).
    #[arg(long, env = SECRET_ENV, hide_env_values = true)]
    pub hmac_secret: String,
    /// Clients to open.
    #[arg(long, default_value_t = 1000)]
    pub connections: u64,
    /// Worker processes to spread the clients over.
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    /// Source addresses 127.0.0.2, 127.0.0.3, ... to spread clients over (0: default).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=250))]
    pub source_addrs: u8,
    /// Clients connecting at the same time, over all workers.
    #[arg(long, default_value_t = 200)]
    pub concurrency: usize,
    /// Clients subscribe to channels idle0..idle{channels-1}.
    #[arg(long, default_value_t = 100)]
    pub channels: u64,
    /// Server process whose memory to sample (/proc/PID/status).
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Herald's metrics URL, e.g. http://127.0.0.1:8000/metrics, to read the server's
    /// own connection count when memory is sampled.
    #[arg(long)]
    pub metrics_url: Option<String>,
    /// Seconds to wait after connecting before sampling memory.
    #[arg(long, default_value_t = 30.0)]
    pub settle_secs: f64,
    /// Seconds after the clients are gone to sample memory once more (0: skip).
    #[arg(long, default_value_t = 5.0)]
    pub after_close_secs: f64,
    /// Seconds one client may take to connect and subscribe.
    #[arg(long, default_value_t = 15.0)]
    pub connect_timeout_secs: f64,
    /// Give up waiting for the connecting phase after this many seconds.
    #[arg(long, default_value_t = 600.0)]
    pub connect_deadline_secs: f64,
    /// Where to write the JSON result.
    #[arg(long)]
    pub output: Option<PathBuf>,
}

/// What one run measured; written as JSON.
#[derive(Debug, Serialize)]
pub struct IdleResult {
    pub scenario: &'static str,
    pub unix_time: u64,
    pub url: String,
    pub connections_target: u64,
    pub workers: usize,
    pub source_addrs: u8,
    pub concurrency: usize,
    pub channels: u64,
    pub settle_secs: f64,
    pub connected: u64,
    pub connect_errors: u64,
    pub errors: BTreeMap<String, u64>,
    pub first_error: Option<String>,
    /// Clients lost after connecting, up to the memory sample.
    pub dropped_before_sample: u64,
    /// Clients lost after connecting, over the whole run.
    pub dropped_total: u64,
    pub first_drop: Option<String>,
    /// Clients open when memory was sampled.
    pub open_at_sample: u64,
    pub pings_answered: u64,
    pub connect_secs: f64,
    pub connects_per_sec: f64,
    pub server_pid: Option<u32>,
    pub baseline: Option<Sample>,
    pub loaded: Option<Sample>,
    pub after_close: Option<Sample>,
    /// (loaded RSS - baseline RSS) / open clients.
    pub rss_bytes_per_connection: Option<f64>,
    /// `herald_connections` from the metrics endpoint when memory was sampled.
    pub server_connections_gauge: Option<f64>,
}

pub async fn run(args: IdleArgs) -> anyhow::Result<()> {
    check_args(&args)?;
    let sample = |what: &str| -> anyhow::Result<Option<Sample>> {
        let Some(pid) = args.server_pid else {
            return Ok(None);
        };
        let s = proc::sample(pid).with_context(|| format!("sampling server ({what})"))?;
        eprintln!(
            "server {what}: RSS {}, {} open fds",
            mib(s.rss_bytes),
            s.open_fds.map_or("?".into(), |n| n.to_string())
        );
        Ok(Some(s))
    };
    let baseline = sample("baseline")?;

    let peer = PeerConf {
        peer: Peer::Herald,
        ws_base: args.url.clone(),
        publish_base: args.url.replacen("ws://", "http://", 1),
        api_key: String::new(),
        pusher_app_id: String::new(),
        pusher_key: String::new(),
        pusher_secret: String::new(),
    };
    let channels = ChannelPlan {
        prefix: "idle".into(),
        count: args.channels,
        room_size: 0,
    };
    let plan = FleetPlan {
        peer: &peer,
        secret: &args.hmac_secret,
        connections: args.connections,
        workers: args.workers,
        source_addrs: args.source_addrs,
        concurrency: args.concurrency,
        channels: &channels,
        connect_timeout: Duration::from_secs_f64(args.connect_timeout_secs),
        chat_rate: 0.0,
    };
    let mut fleet = Fleet::spawn(&plan)?;
    let started = Instant::now();
    connect_phase(&mut fleet, &args, started).await?;
    let connect_secs = started.elapsed().as_secs_f64();
    let connected = fleet.total();
    eprintln!(
        "connected {} of {} in {connect_secs:.1} s ({} failed); settling {} s",
        connected.connected, connected.target, connected.failed, args.settle_secs
    );

    fleet
        .watch_for(Duration::from_secs_f64(args.settle_secs))
        .await;
    let at_sample = fleet.total();
    let loaded = sample("with clients")?;
    let gauge = match &args.metrics_url {
        Some(url) => match metrics::scrape_gauge(url, "herald_connections").await {
            Ok(v) => Some(v),
            Err(e) => {
                eprintln!("metrics: {e:#}");
                None
            }
        },
        None => None,
    };

    let last = fleet.stop(Duration::from_secs(15)).await;
    let after_close = if args.after_close_secs > 0.0 {
        tokio::time::sleep(Duration::from_secs_f64(args.after_close_secs)).await;
        sample("after clients left")?
    } else {
        None
    };

    let open = at_sample.open();
    let per_conn = match (baseline, loaded) {
        (Some(b), Some(l)) if open > 0 => {
            Some((l.rss_bytes as f64 - b.rss_bytes as f64) / open as f64)
        }
        _ => None,
    };
    let result = IdleResult {
        scenario: "idle",
        unix_time: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        url: args.url.clone(),
        connections_target: args.connections,
        workers: args.workers,
        source_addrs: args.source_addrs,
        concurrency: args.concurrency,
        channels: args.channels,
        settle_secs: args.settle_secs,
        connected: at_sample.connected,
        connect_errors: at_sample.failed,
        errors: at_sample.errors.clone(),
        first_error: last.first_error.clone(),
        dropped_before_sample: at_sample.dropped,
        dropped_total: last.dropped,
        first_drop: last.first_drop.clone(),
        open_at_sample: open,
        pings_answered: last.pings,
        connect_secs,
        connects_per_sec: at_sample.connected as f64 / connect_secs.max(1e-9),
        server_pid: args.server_pid,
        baseline,
        loaded,
        after_close,
        rss_bytes_per_connection: per_conn,
        server_connections_gauge: gauge,
    };
    if let Some(path) = &args.output {
        let json = serde_json::to_string_pretty(&result)?;
        std::fs::write(path, json + "\n").with_context(|| format!("writing {path:?}"))?;
        eprintln!("result written to {}", path.display());
    }
    println!("{}", markdown_row(&result));
    if open == 0 {
        bail!(
            "no client was connected when memory was sampled (first error: {})",
            result.first_error.as_deref().unwrap_or("none")
        );
    }
    Ok(())
}

fn check_args(args: &IdleArgs) -> anyhow::Result<()> {
    if args.workers == 0 || args.connections == 0 {
        bail!("--workers and --connections must be at least 1");
    }
    if args.connections < args.workers as u64 {
        bail!("fewer connections than workers");
    }
    let per_worker = args.connections.div_ceil(args.workers as u64);
    if let Some(limit) = proc::own_fd_limit() {
        if per_worker + FD_HEADROOM > limit {
            bail!(
                "{per_worker} clients per worker exceed the open-file limit {limit}: \
                 use --workers {} or more",
                args.connections
                    .div_ceil(limit.saturating_sub(FD_HEADROOM).max(1))
            );
        }
    }
    Ok(())
}

/// Waits until every worker has connected or failed all its clients, printing progress.
async fn connect_phase(fleet: &mut Fleet, args: &IdleArgs, started: Instant) -> anyhow::Result<()> {
    let deadline = started + Duration::from_secs_f64(args.connect_deadline_secs);
    let tty = std::io::stderr().is_terminal();
    let mut last_print = Instant::now();
    loop {
        if !fleet.poll(Duration::from_millis(500)).await {
            bail!("every worker exited before connecting finished");
        }
        let t = fleet.total();
        let done = t.connecting_done;
        if done || last_print.elapsed() >= Duration::from_secs(if tty { 1 } else { 2 }) {
            last_print = Instant::now();
            let secs = started.elapsed().as_secs_f64();
            let line = format!(
                "connecting: {}/{} ok, {} failed, {} dropped, {:.0}/s, {secs:.1} s",
                t.connected,
                args.connections,
                t.failed,
                t.dropped,
                t.connected as f64 / secs.max(1e-9)
            );
            if tty {
                eprint!("\r{line}   ");
                if done {
                    eprintln!();
                }
            } else {
                eprintln!("{line}");
            }
        }
        if done {
            return Ok(());
        }
        if Instant::now() >= deadline {
            eprintln!("connect deadline reached; measuring what is connected");
            return Ok(());
        }
    }
}

/// `| connections | baseline RSS | RSS at N | bytes/conn | connect errors |`
pub fn markdown_row(r: &IdleResult) -> String {
    let rss = |s: &Option<Sample>| s.map_or("n/a".to_owned(), |s| mib(s.rss_bytes));
    let per_conn = r
        .rss_bytes_per_connection
        .map_or("n/a".to_owned(), |b| format!("{b:.0}"));
    format!(
        "| {} | {} | {} | {} | {} |",
        r.open_at_sample,
        rss(&r.baseline),
        rss(&r.loaded),
        per_conn,
        r.connect_errors
    )
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}
