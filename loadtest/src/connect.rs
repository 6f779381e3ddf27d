//! The `connect` scenario: a connection storm. N clients connect as fast as
//! `--concurrency` allows, each with its own JWT (Herald verifies an HS256 signature per
//! connect), and subscribe; measured: connects per second, the time from TCP connect to
//! subscribed (HDR), errors, and the server's CPU and memory over the storm.

use std::time::{Duration, Instant};

use clap::Args;
use serde::Serialize;

use crate::fleet::{Fleet, FleetPlan};
use crate::hist;
use crate::report::{self, thousands, RunResult};
use crate::run::{self, Common, Sampler};
use crate::worker::{ChannelPlan, Status};

#[derive(Args, Debug, Clone, Serialize)]
pub struct ConnectArgs {
    #[command(flatten)]
    pub common: Common,
    /// Clients to connect.
    #[arg(long, default_value_t = 10_000)]
    pub connections: u64,
    /// Clients subscribe to storm0..storm{channels-1}.
    #[arg(long, default_value_t = 100)]
    pub channels: u64,
    /// Seconds to hold the connections once all are up.
    #[arg(long, default_value_t = 2.0)]
    pub hold_secs: f64,
}

pub async fn run(args: ConnectArgs) -> anyhow::Result<()> {
    let c = &args.common;
    c.check_clients(args.connections)?;
    let peer = c.peer_conf();
    let t0 = Instant::now();
    let sampler = c.server_pid.map(|pid| Sampler::start(pid, t0));
    let channels = ChannelPlan {
        prefix: "storm".into(),
        count: args.channels,
        room_size: 0,
    };
    if let Some(s) = &sampler {
        s.mark_start();
    }
    let mut fleet = Fleet::spawn(&FleetPlan {
        peer: &peer,
        secret: &c.hmac_secret,
        connections: args.connections,
        workers: c.workers,
        source_addrs: c.source_addrs,
        concurrency: c.concurrency,
        channels: &channels,
        connect_timeout: Duration::from_secs_f64(c.connect_timeout_secs),
        chat_rate: 0.0,
    })?;
    eprintln!(
        "connect storm against {}: {} clients, {} connecting at once",
        c.server, args.connections, c.concurrency
    );
    let connect_secs = run::connect_phase(
        &mut fleet,
        args.connections,
        c.connect_deadline_secs,
        sampler.as_ref(),
    )
    .await?;
    if let Some(s) = &sampler {
        s.mark_end();
    }
    let connected = fleet.total();
    fleet
        .watch_for(Duration::from_secs_f64(args.hold_secs))
        .await;
    let last = fleet.stop(Duration::from_secs(15)).await;
    let connect_latency = fleet.merged(|s: &Status| s.connect_hist.as_ref());
    let result = RunResult {
        scenario: "connect".into(),
        server: c.server.to_string(),
        unix_time: run::unix_now(),
        params: serde_json::to_value(&args)?,
        clients: args.connections,
        connected: connected.connected,
        connect_errors: connected.failed,
        errors: connected.errors.clone(),
        first_error: last.first_error.clone(),
        dropped: last.dropped,
        first_drop: last.first_drop.clone(),
        connect_secs,
        connects_per_sec: connected.connected as f64 / connect_secs.max(1e-9),
        duration_secs: connect_secs,
        connect_latency: hist::summary(&connect_latency),
        server_stats: sampler.map(Sampler::finish),
        ..RunResult::default()
    };
    let base = c.output_base("connect");
    let title = format!(
        "connect storm: {} clients, {} at once",
        thousands(args.connections as f64),
        c.concurrency
    );
    report::write_all(&[result], &base, &title)
}
