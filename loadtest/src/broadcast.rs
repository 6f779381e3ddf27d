//! The `broadcast` scenario: N subscribers of one channel; a publisher posts stamped
//! payloads to the server's HTTP publish endpoint at a target rate; every subscriber
//! records publish-to-deliver latency. Works with every server in `peer.rs`.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use serde::Serialize;

use crate::hist;
use crate::publish::{self, PubCounters};
use crate::report::{self, thousands, RunResult};
use crate::run::{self, Common, Progress};
use crate::stage::{RateMeter, Stage, Window};
use crate::worker::ChannelPlan;

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
    let channels = ChannelPlan {
        prefix: args.channel.clone(),
        count: 1,
        room_size: 0,
    };
    eprintln!(
        "broadcast against {}: {} subscribers of {}, {} publications/s for {} s",
        c.server,
        args.subscribers,
        channels.channel(0),
        args.rate,
        args.duration_secs
    );
    let mut stage = Stage::connect(
        c,
        args.subscribers,
        &channels,
        0.0,
        Window::Later,
        Duration::from_secs_f64(args.settle_secs),
    )
    .await?;

    let client = publish::http_client(args.max_inflight)?;
    let live = Arc::new(PubCounters::default());
    let at_start = stage.fleet.total();
    let open_at_start = at_start.open();
    stage.mark_start();
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
    let mut rate = RateMeter::new(at_start.deliveries);
    while !publisher.is_finished() {
        stage.fleet.watch_for(Duration::from_secs(1)).await;
        let line = progress_line(&args, &stage, &live, measure_start, &mut rate);
        progress.show(&line, false);
    }
    let outcome = publisher.await?;
    let expected = outcome.ok * open_at_start;
    stage
        .drain(&at_start, Duration::from_secs_f64(args.drain_secs), |_| {
            expected
        })
        .await;
    let measured = measure_start.elapsed().as_secs_f64();
    stage.mark_end();
    progress.show(
        &progress_line(&args, &stage, &live, measure_start, &mut rate),
        true,
    );
    let (base, last) = stage
        .finish(
            "broadcast",
            c,
            serde_json::to_value(&args)?,
            args.subscribers,
        )
        .await;
    let deliveries = last.deliveries.saturating_sub(at_start.deliveries);
    let publish_secs = outcome.elapsed.as_secs_f64().max(1e-9);
    let result = RunResult {
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
        publish_call_latency: hist::summary(&outcome.call_latency),
        ..base
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
    stage: &Stage,
    live: &PubCounters,
    start: Instant,
    rate: &mut RateMeter,
) -> String {
    let t = stage.fleet.total();
    format!(
        "{} {:.0}/{:.0} s | subscribers {} | published {} (errors {}) | deliveries {} ({}/s) | dropped {}{}",
        args.common.server,
        start.elapsed().as_secs_f64(),
        args.duration_secs,
        t.open(),
        live.ok.load(Ordering::Relaxed),
        live.errors.load(Ordering::Relaxed),
        thousands(t.deliveries as f64),
        thousands(rate.per_sec(t.deliveries)),
        t.dropped,
        run::server_brief(stage.sampler.as_ref())
    )
}
