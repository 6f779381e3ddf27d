//! The `chat` scenario: clients in rooms of `room_size` members (channel `room<r>`);
//! every member publishes stamped payloads through its own WebSocket (Centrifugo
//! `publish`) at `rate / clients` per second, and every member, the sender included,
//! records publish-to-deliver latency. Herald only: the channel must allow subscribers
//! to publish (the default `[channel]` options do).

use std::time::{Duration, Instant};

use anyhow::bail;
use clap::Args;
use serde::Serialize;

use crate::peer::Peer;
use crate::report::{self, thousands, RunResult};
use crate::run::{self, Common, Progress};
use crate::stage::{RateMeter, Stage, Window};
use crate::worker::ChannelPlan;

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
    let channels = ChannelPlan {
        prefix: args.prefix.clone(),
        count: 0,
        room_size: args.room_size,
    };
    eprintln!(
        "chat against {}: {} clients in {} rooms of {}, {} publications/s ({per_client:.3}/s each) for {} s",
        c.server,
        args.clients,
        args.clients / args.room_size,
        args.room_size,
        args.rate,
        args.duration_secs
    );
    let mut stage = Stage::connect(
        c,
        args.clients,
        &channels,
        per_client,
        Window::Later,
        Duration::from_secs_f64(args.settle_secs),
    )
    .await?;

    let at_start = stage.fleet.total();
    stage.mark_start();
    let measure_start = Instant::now();
    stage.fleet.command("publish").await;
    let mut progress = Progress::new();
    let mut rate = RateMeter::new(at_start.deliveries);
    let publish_for = Duration::from_secs_f64(args.duration_secs);
    while measure_start.elapsed() < publish_for {
        let left = publish_for.saturating_sub(measure_start.elapsed());
        stage
            .fleet
            .watch_for(left.min(Duration::from_secs(1)))
            .await;
        progress.show(
            &progress_line(&args, &stage, measure_start, &mut rate),
            false,
        );
    }
    stage.fleet.command("quiet").await;
    let publish_secs = measure_start.elapsed().as_secs_f64();
    // Let the workers report what they sent, then wait for the deliveries.
    stage.fleet.watch_for(Duration::from_millis(600)).await;
    stage
        .drain(&at_start, Duration::from_secs_f64(args.drain_secs), |t| {
            t.published.saturating_sub(at_start.published) * args.room_size
        })
        .await;
    let measured = measure_start.elapsed().as_secs_f64();
    stage.mark_end();
    progress.show(
        &progress_line(&args, &stage, measure_start, &mut rate),
        true,
    );
    let (base, last) = stage
        .finish("chat", c, serde_json::to_value(&args)?, args.clients)
        .await;
    let published = last.published.saturating_sub(at_start.published);
    let deliveries = last.deliveries.saturating_sub(at_start.deliveries);
    let expected = published * args.room_size;
    let result = RunResult {
        duration_secs: measured,
        target_rate: args.rate,
        published,
        publish_errors: last.publish_errors,
        publishes_per_sec: published as f64 / publish_secs.max(1e-9),
        deliveries,
        deliveries_expected: Some(expected),
        delivered_pct: (expected > 0).then(|| 100.0 * deliveries as f64 / expected as f64),
        deliveries_per_sec: deliveries as f64 / publish_secs.max(1e-9),
        extra: [("room_size".to_owned(), args.room_size as f64)].into(),
        ..base
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

fn progress_line(args: &ChatArgs, stage: &Stage, start: Instant, rate: &mut RateMeter) -> String {
    let t = stage.fleet.total();
    format!(
        "chat {:.0}/{:.0} s | clients {} | published {} (errors {}) | deliveries {} ({}/s) | dropped {}{}",
        start.elapsed().as_secs_f64(),
        args.duration_secs,
        t.open(),
        thousands(t.published as f64),
        t.publish_errors,
        thousands(t.deliveries as f64),
        thousands(rate.per_sec(t.deliveries)),
        t.dropped,
        run::server_brief(stage.sampler.as_ref())
    )
}
