//! The `chat` scenario: clients in rooms of `room_size` members (channel `room<r>`);
//! every member publishes stamped payloads through its own WebSocket (Centrifugo
//! `publish`) at `rate / clients` per second, and every member, the sender included,
//! records publish-to-deliver latency. Herald only: the channel must allow subscribers
//! to publish (the default `[channel]` options do).

use std::time::{Duration, Instant};

use anyhow::bail;
use clap::Args;
use serde::Serialize;

use crate::fleet::{Fleet, FleetPlan};
use crate::hist;
use crate::peer::Peer;
use crate::report::{self, thousands, RunResult};
use crate::run::{self, Common, Progress, Sampler};
use crate::worker::{ChannelPlan, Status};

#[derive(Args, Debug, Clone, Serialize)]
pub struct ChatArgs {
    #[command(flatten)]
    pub common: Common,
    /// Clients (room members), a multiple of --room-size.
    #[arg(long, default_value_t = 1000)]
    pub clients: u64,
    /// Members per room.
    #[arg(long, default_value_t = 10)]
    pub room_size: u64,
    /// Publications per second over all clients.
    #[arg(long, default_value_t = 500.0)]
    pub rate: f64,
    /// Seconds of publishing.
    #[arg(long, default_value_t = 30.0)]
    pub duration_secs: f64,
    /// Room channel prefix (a namespace prefix such as `chat:` needs that namespace).
    #[arg(long, default_value = "room")]
    pub prefix: String,
    #[arg(long, default_value_t = 2.0)]
    pub settle_secs: f64,
    /// Longest wait for deliveries after publishing stops.
    #[arg(long, default_value_t = 10.0)]
    pub drain_secs: f64,
}

pub async fn run(args: ChatArgs) -> anyhow::Result<()> {
    let c = &args.common;
    if c.server != Peer::Herald {
        bail!("the chat scenario publishes through Centrifugo clients: --server herald only");
    }
    if args.room_size == 0 || !args.clients.is_multiple_of(args.room_size) {
        bail!("--clients must be a multiple of --room-size (at least 1)");
    }
    c.check_clients(args.clients)?;
    let per_client = args.rate / args.clients as f64;
    if per_client > 50.0 {
        bail!("{per_client:.1} publications/s per client is above what the default command rate limit (100/s) allows comfortably");
    }
    let peer = c.peer_conf();
    let t0 = Instant::now();
    let sampler = c.server_pid.map(|pid| Sampler::start(pid, t0));
    let channels = ChannelPlan {
        prefix: args.prefix.clone(),
        count: 0,
        room_size: args.room_size,
    };
    let mut fleet = Fleet::spawn(&FleetPlan {
        peer: &peer,
        secret: &c.hmac_secret,
        connections: args.clients,
        workers: c.workers,
        source_addrs: c.source_addrs,
        concurrency: c.concurrency,
        channels: &channels,
        connect_timeout: Duration::from_secs_f64(c.connect_timeout_secs),
        chat_rate: per_client,
    })?;
    eprintln!(
        "chat against {}: {} clients in {} rooms of {}, {} publications/s ({per_client:.3}/s each) for {} s",
        c.server,
        args.clients,
        args.clients / args.room_size,
        args.room_size,
        args.rate,
        args.duration_secs
    );
    let connect_secs = run::connect_phase(
        &mut fleet,
        args.clients,
        c.connect_deadline_secs,
        sampler.as_ref(),
    )
    .await?;
    let connected = fleet.total();
    fleet
        .watch_for(Duration::from_secs_f64(args.settle_secs))
        .await;

    let at_start = fleet.total();
    if let Some(s) = &sampler {
        s.mark_start();
    }
    let measure_start = Instant::now();
    fleet.command("publish").await;
    let mut progress = Progress::new();
    let mut last = (Instant::now(), at_start.deliveries);
    let publish_for = Duration::from_secs_f64(args.duration_secs);
    while measure_start.elapsed() < publish_for {
        let left = publish_for.saturating_sub(measure_start.elapsed());
        fleet.watch_for(left.min(Duration::from_secs(1))).await;
        let t = fleet.total();
        progress.show(
            &progress_line(&args, &t, measure_start, &mut last, sampler.as_ref()),
            false,
        );
    }
    fleet.command("quiet").await;
    let publish_secs = measure_start.elapsed().as_secs_f64();
    // Let the workers report what they sent, then wait for the deliveries.
    fleet.watch_for(Duration::from_millis(600)).await;
    let drain_until = Instant::now() + Duration::from_secs_f64(args.drain_secs);
    let mut prev = fleet.total().deliveries;
    loop {
        let t = fleet.total();
        let expected = t.published.saturating_sub(at_start.published) * args.room_size;
        if t.deliveries.saturating_sub(at_start.deliveries) >= expected
            || Instant::now() >= drain_until
        {
            break;
        }
        fleet.watch_for(Duration::from_secs(1)).await;
        let now = fleet.total().deliveries;
        if now == prev {
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
        &progress_line(&args, &t, measure_start, &mut last, sampler.as_ref()),
        true,
    );
    let last_status = fleet.stop(Duration::from_secs(15)).await;
    let latency = fleet.merged(|s: &Status| s.latency_hist.as_ref());
    let connect_latency = fleet.merged(|s: &Status| s.connect_hist.as_ref());
    let published = last_status.published.saturating_sub(at_start.published);
    let deliveries = last_status.deliveries.saturating_sub(at_start.deliveries);
    let expected = published * args.room_size;
    let result = RunResult {
        scenario: "chat".into(),
        server: c.server.to_string(),
        unix_time: run::unix_now(),
        params: serde_json::to_value(&args)?,
        clients: args.clients,
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
        published,
        publish_errors: last_status.publish_errors,
        publish_skipped: 0,
        publish_first_error: None,
        publishes_per_sec: published as f64 / publish_secs.max(1e-9),
        deliveries,
        deliveries_expected: Some(expected),
        delivered_pct: (expected > 0).then(|| 100.0 * deliveries as f64 / expected as f64),
        deliveries_per_sec: deliveries as f64 / publish_secs.max(1e-9),
        latency: hist::summary(&latency),
        connect_latency: hist::summary(&connect_latency),
        publish_call_latency: None,
        server_stats: sampler.map(Sampler::finish),
        extra: [("room_size".to_owned(), args.room_size as f64)].into(),
    };
    let base = c.output_base("chat");
    let title = format!(
        "chat: {} clients, rooms of {}, {} publications/s, {} s",
        thousands(args.clients as f64),
        args.room_size,
        thousands(args.rate),
        args.duration_secs
    );
    report::write_all(&[result], &base, &title)
}

fn progress_line(
    args: &ChatArgs,
    t: &Status,
    start: Instant,
    last: &mut (Instant, u64),
    sampler: Option<&Sampler>,
) -> String {
    let now = Instant::now();
    let rate =
        (t.deliveries.saturating_sub(last.1)) as f64 / (now - last.0).as_secs_f64().max(1e-3);
    *last = (now, t.deliveries);
    format!(
        "chat {:.0}/{:.0} s | clients {} | published {} (errors {}) | deliveries {} ({}/s) | dropped {}{}",
        start.elapsed().as_secs_f64(),
        args.duration_secs,
        t.open(),
        thousands(t.published as f64),
        t.publish_errors,
        thousands(t.deliveries as f64),
        thousands(rate),
        t.dropped,
        run::server_brief(sampler)
    )
}
