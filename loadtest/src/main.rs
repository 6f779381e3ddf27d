//! `herald-loadtest`: opens many Centrifugo-protocol (v2, JSON) WebSocket clients against
//! a Herald server and measures what they cost it.
//!
//! Scenarios:
//! - `idle`: N connected, subscribed, idle clients; server RSS per connection.
//!
//! The clients run in worker processes (this binary again, as the hidden `worker`
//! command) because one process may hold only so many file descriptors.

mod client;
mod fleet;
mod idle;
mod metrics;
mod proc;
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
    /// One worker process of a scenario (started by the coordinator).
    #[command(hide = true)]
    Worker(WorkerCli),
}

#[derive(clap::Args)]
struct WorkerCli {
    #[arg(long)]
    worker_index: usize,
    #[arg(long)]
    url: String,
    #[arg(long, env = fleet::SECRET_ENV, hide_env_values = true)]
    hmac_secret: String,
    #[arg(long)]
    start: u64,
    #[arg(long)]
    end: u64,
    #[arg(long, default_value_t = 0)]
    source_addrs: u8,
    #[arg(long, default_value_t = 100)]
    concurrency: usize,
    #[arg(long, default_value_t = 100)]
    channels: u64,
    #[arg(long, default_value_t = 15.0)]
    connect_timeout_secs: f64,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Idle(args) => idle::run(args).await,
        Command::Worker(w) => {
            let index = w.worker_index;
            let r = worker::run(worker::WorkerArgs {
                index: w.worker_index,
                url: w.url,
                secret: w.hmac_secret,
                start: w.start,
                end: w.end.max(w.start),
                source_addrs: w.source_addrs,
                concurrency: w.concurrency,
                channels: w.channels,
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
