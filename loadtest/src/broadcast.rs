//! The `broadcast` scenario: N subscribers of one channel; a publisher posts stamped
//! payloads to the server's HTTP publish endpoint at a target rate; every subscriber
//! records publish-to-deliver latency. Works with every server in `peer.rs`.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use serde::Serialize;

use crate::fleet::{Fleet, FleetPlan};
use crate::hist;
use crate::publish::{self, PubCounters};
use crate::report::{self, thousands, RunResult};
use crate::run::{self, Common, Progress, Sampler};
use crate::worker::{ChannelPlan, Status};

#[derive(Args, Debug, Clone, Serialize)]
pub struct BroadcastArgs {
    #[command(flatten)]
    pub common: Common,
    /// Subscribers of the channel.
    #[arg(long, default_value_t = 1000)]
    pub subscribers: u64,
    /// Publications per second.
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,
    /// Seconds of publishing.
    #[arg(long, default_value_t = 30.0)]
    pub duration_secs: f64,
    /// The channel.
    #[arg(long, default_value = "bench")]
    pub channel: String,
    /// Seconds between the last subscriber connecting and the first publication.
    #[arg(long, default_value_t = 2.0)]
    pub settle_secs: f64,
    /// Longest wait for deliveries after the last publication.
    #[arg(long, default_value_t = 10.0)]
    pub drain_secs: f64,
    /// Publish requests outstanding at most.
    #[arg(long, default_value_t = 64)]
    pub max_inflight: usize,
}

pub async fn run(args: BroadcastArgs) -> anyhow::Result<()> {
    let c = &args.common;
    c.check_clients(args.subscribers)?;
    let peer = c.peer_conf();
    let t0 = Instant::now();
    let sampler = c.server_pid.map(|pid| Sampler::start(pid, t0));
    let channels = ChannelPlan {
        prefix: args.channel.clone(),
        count: 1,
        room_size: 0,
    };
    let mut fleet = Fleet::spawn(&FleetPlan {
        peer: &peer,
        secret: &c.hmac_secret,
        connections: args.subscribers,
        workers: c.workers,
        source_addrs: c.source_addrs,
        concurrency: c.concurrency,
        channels: &channels,
        connect_timeout: Duration::from_secs_f64(c.connect_timeout_secs),
        chat_rate: 0.0,
    })?;
    eprintln!(
        "broadcast against {}: {} subscribers of {}, {} publications/s for {} s",
        c.server,
        args.subscribers,
        channels.channel(0),
        args.rate,
        args.duration_secs
    );
    let connect_secs = run::connect_phase(
        &mut fleet,
        args.subscribers,
        c.connect_deadline_secs,
        sampler.as_ref(),
    )
    .await?;
    let connected = fleet.total();
    fleet
        .watch_for(Duration::from_secs_f64(args.settle_secs))
        .await;

    let client = publish::http_client(args.max_inflight)?;
    let live = Arc::new(PubCounters::default());
    let at_start = fleet.total();
    let open_at_start = at_start.open();
    if let Some(s) = &sampler {
        s.mark_start();
    }
    let measure_start = Instant::now();
    let publisher = {
        let client = client.clone();
        let peer = peer.clone();
        let live = live.clone();
        let channel = channels.channel(0);
        let plan = publish::Plan {
            rate: args.rate,
            duration: Duration::from_secs_f64(args.duration_secs),
            count: None,
            max_inflight: args.max_inflight,
        };
        tokio::spawn(async move { publish::run(&client, &peer, &[channel], &plan, live).await })
    };
    let mut progress = Progress::new();
    let mut last = (Instant::now(), at_start.deliveries);
    while !publisher.is_finished() {
        fleet.watch_for(Duration::from_secs(1)).await;
        let t = fleet.total();
        let line = progress_line(&args, &t, &live, measure_start, &mut last, sampler.as_ref());
        progress.show(&line, false);
    }
    let outcome = publisher.await?;
    // Wait for the last deliveries: until everything expected arrived, nothing new
    // came for a second, or drain_secs passed.
    let expected = outcome.ok * open_at_start;
    let drain_until = Instant::now() + Duration::from_secs_f64(args.drain_secs);
    let mut prev = fleet.total().deliveries;
    while Instant::now() < drain_until {
        fleet.watch_for(Duration::from_secs(1)).await;
        let now = fleet.total().deliveries;
        if now.saturating_sub(at_start.deliveries) >= expected || now == prev {
            break;
        }
        prev = now;
    }
    let measured = measure_start.elapsed().as_secs_f64();
    if let Some(s) = &sampler {
        s.mark_end();
    }
    let t = fleet.total();
    progress.show(
        &progress_line(&args, &t, &live, measure_start, &mut last, sampler.as_ref()),
        true,
    );
    let last_status = fleet.stop(Duration::from_secs(15)).await;
    let latency = fleet.merged(|s: &Status| s.latency_hist.as_ref());
    let connect_latency = fleet.merged(|s: &Status| s.connect_hist.as_ref());
    let deliveries = last_status.deliveries.saturating_sub(at_start.deliveries);
    let publish_secs = outcome.elapsed.as_secs_f64().max(1e-9);
    let result = RunResult {
        scenario: "broadcast".into(),
        server: c.server.to_string(),
        unix_time: run::unix_now(),
        params: serde_json::to_value(&args)?,
        clients: args.subscribers,
        connected: connected.connected,
        connect_errors: connected.failed,
        errors: connected.errors.clone(),
        first_error: last_status.first_error.clone(),
        dropped: last_status.dropped,
        first_drop: last_status.first_drop.clone(),
        connect_secs,
        connects_per_sec: connected.connected as f64 / connect_secs.max(1e-9),
        duration_secs: measured,
        target_rate: args.rate,
        published: outcome.ok,
        publish_errors: outcome.errors,
        publish_skipped: outcome.skipped,
        publish_first_error: outcome.first_error.clone(),
        publishes_per_sec: outcome.ok as f64 / publish_secs,
        deliveries,
        deliveries_expected: Some(expected),
        delivered_pct: (expected > 0).then(|| 100.0 * deliveries as f64 / expected as f64),
        deliveries_per_sec: deliveries as f64 / publish_secs,
        latency: hist::summary(&latency),
        connect_latency: hist::summary(&connect_latency),
        publish_call_latency: hist::summary(&outcome.call_latency),
        server_stats: sampler.map(Sampler::finish),
        extra: Default::default(),
    };
    let base = c.output_base("broadcast");
    let title = format!(
        "broadcast: {} subscribers, {} publications/s, {} s",
        thousands(args.subscribers as f64),
        thousands(args.rate),
        args.duration_secs
    );
    report::write_all(&[result], &base, &title)
}

fn progress_line(
    args: &BroadcastArgs,
    t: &Status,
    live: &PubCounters,
    start: Instant,
    last: &mut (Instant, u64),
    sampler: Option<&Sampler>,
) -> String {
    let now = Instant::now();
    let rate =
        (t.deliveries.saturating_sub(last.1)) as f64 / (now - last.0).as_secs_f64().max(1e-3);
    *last = (now, t.deliveries);
    format!(
        "{} {:.0}/{:.0} s | subscribers {} | published {} (errors {}) | deliveries {} ({}/s) | dropped {}{}",
        args.common.server,
        start.elapsed().as_secs_f64(),
        args.duration_secs,
        t.open(),
        live.ok.load(Ordering::Relaxed),
        live.errors.load(Ordering::Relaxed),
        thousands(t.deliveries as f64),
        thousands(rate),
        t.dropped,
        run::server_brief(sampler)
    )
}
