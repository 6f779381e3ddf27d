//! The `connect` scenario: a connection storm. N clients connect as fast as
//! `--concurrency` allows, each with its own JWT (Herald verifies an HS256 signature per
//! connect), and subscribe; measured: connects per second, the time from TCP connect to
//! subscribed (HDR), errors, and the server's CPU and memory over the storm.

use std::time::Duration;

use clap::Args;
use serde::Serialize;

use crate::report::{self, thousands};
use crate::run::Common;
use crate::stage::{Stage, Window};
use crate::worker::ChannelPlan;

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
    let channels = ChannelPlan {
        prefix: "storm".into(),
        count: args.channels,
        room_size: 0,
    };
    eprintln!(
        "connect storm against {}: {} clients, {} connecting at once",
        c.server, args.connections, c.concurrency
    );
    let stage = Stage::connect(
        c,
        args.connections,
        &channels,
        0.0,
        Window::Connecting,
        Duration::from_secs_f64(args.hold_secs),
    )
    .await?;
    let (result, _) = stage
        .finish("connect", c, serde_json::to_value(&args)?, args.connections)
        .await;
    let base = c.output_base("connect");
    let title = format!(
        "connect storm: {} clients, {} at once",
        thousands(args.connections as f64),
        c.concurrency
    );
    report::write_all(&[result], &base, &title)
}
