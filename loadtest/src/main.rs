//! `herald-loadtest`: opens many Centrifugo-protocol (v2, JSON) WebSocket clients against
//! a Herald server and measures what they cost it.
//!
//! Scenarios (one file each):
//! - `idle`: N connected, subscribed, idle clients; server RSS per connection.
//! - `broadcast`: N subscribers of one channel, a publisher on the HTTP API at a rate
//!   (Herald and the peer servers of `peer.rs`).
//! - `chat`: rooms of k members publishing through their own sockets.
//! - `connect`: a connection storm with JWT auth.
//! - `history`: paging through long histories with the server API.
//! - `report`: joins results into one table and one plot.
//! - `chaos`: subscribers, publishers and the loss checker of scripts/chaos.sh.
//!
//! The clients run in worker processes (this binary again, as the hidden `worker`
//! command) because one process may hold only so many file descriptors.

mod broadcast;
mod chaos;
mod chat;
mod client;
mod connect;
mod fleet;
mod hist;
mod history;
mod idle;
mod metrics;
mod pace;
mod peer;
mod plot;
mod proc;
mod publish;
mod report;
mod run;
mod stage;
mod stamp;
mod worker;

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "herald-loadtest", version, about = "Load generator for Herald")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Hold N idle subscribed connections and measure the server's memory per connection.
    Idle(idle::IdleArgs),
    /// N subscribers of one channel; publish through the HTTP API at a rate.
    Broadcast(broadcast::BroadcastArgs),
    /// Rooms of k members who publish through their own WebSocket.
    Chat(chat::ChatArgs),
    /// Connection storm: N clients connect (JWT) and subscribe as fast as they can.
    Connect(connect::ConnectArgs),
    /// Page through long channel histories, 50 at a time, with the server API.
    History(history::HistoryArgs),
    /// Clients and loss checker of the chaos run (scripts/chaos.sh).
    Chaos(chaos::ChaosArgs),
    /// Join JSON results into one Markdown table, one JSON array and one PNG plot.
    Report(report::ReportArgs),
    /// One worker process of a scenario (started by the coordinator).
    #[command(hide = true)]
    Worker(WorkerCli),
}

#[derive(clap::Args)]
struct WorkerCli {
    #[arg(long)]
    worker_index: usize,
    /// The server ([`peer::PeerConf`] as JSON).
    #[arg(long, env = worker::PEER_ENV, hide_env_values = true)]
    peer: String,
    #[arg(long, env = fleet::SECRET_ENV, hide_env_values = true, default_value = "")]
    hmac_secret: String,
    #[arg(long)]
    start: u64,
    #[arg(long)]
    end: u64,
    #[arg(long, default_value_t = 0)]
    source_addrs: u8,
    #[arg(long, default_value_t = 100)]
    concurrency: usize,
    #[arg(long, default_value = "idle")]
    channel_prefix: String,
    #[arg(long, default_value_t = 100)]
    channels: u64,
    #[arg(long, default_value_t = 0)]
    room_size: u64,
    #[arg(long, default_value_t = 0.0)]
    chat_rate: f64,
    #[arg(long, default_value_t = 15.0)]
    connect_timeout_secs: f64,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Idle(args) => idle::run(args).await,
        Command::Broadcast(args) => broadcast::run(args).await,
        Command::Chat(args) => chat::run(args).await,
        Command::Connect(args) => connect::run(args).await,
        Command::History(args) => history::run(args).await,
        Command::Report(args) => report::run(args),
        Command::Chaos(args) => chaos::run(args).await,
        Command::Worker(w) => {
            let index = w.worker_index;
            let peer = match serde_json::from_str(&w.peer) {
                Ok(p) => p,
                Err(e) => {
                    eprintln!("herald-loadtest worker {index}: bad server description: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let r = worker::run(worker::WorkerArgs {
                index: w.worker_index,
                peer,
                chat_rate: w.chat_rate,
                secret: w.hmac_secret,
                start: w.start,
                end: w.end.max(w.start),
                source_addrs: w.source_addrs,
                concurrency: w.concurrency,
                channels: worker::ChannelPlan {
                    prefix: w.channel_prefix,
                    count: w.channels,
                    room_size: w.room_size,
                },
                connect_timeout: Duration::from_secs_f64(w.connect_timeout_secs.max(0.001)),
            })
            .await;
            r.map_err(|e| e.context(format!("worker {index}")))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("herald-loadtest: {e:#}");
            ExitCode::FAILURE
        }
    }
}
