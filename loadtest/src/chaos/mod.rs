//! `chaos`: the clients and the loss checker of scripts/chaos.sh. The script runs
//! Herald nodes over Redis, starts `chaos sub` and `chaos pub` processes (so it can stall
//! one with SIGSTOP), injects faults, creates the stop file, then runs `chaos check`
//! on the logs the processes wrote. Each process writes one log; `check.rs` documents
//! the lines and the rules.

mod check;
mod log;
mod publisher;
mod subscriber;

use std::path::PathBuf;
use std::sync::Arc;

use jsonwebtoken::EncodingKey;

#[derive(clap::Args)]
pub struct ChaosArgs {
    #[command(subcommand)]
    role: Role,
}

#[derive(clap::Subcommand)]
enum Role {
    /// WebSocket subscribers with recovery, until the file `stop` exists.
    Sub(ClientArgs),
    /// Server API publishers with payload ids, until the file `stop-pub` exists.
    Pub(ClientArgs),
    /// Check the logs in a directory; exits non-zero on any loss or silent gap.
    Check {
        dir: PathBuf,
        /// Also write the counts as JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
    },
}

#[derive(clap::Args)]
struct ClientArgs {
    /// This process's name (log file `<dir>/<role>-<name>.log`).
    #[arg(long)]
    name: String,
    /// Node addresses, host:port, comma-separated.
    #[arg(long, value_delimiter = ',')]
    nodes: Vec<String>,
    #[arg(long, value_delimiter = ',')]
    channels: Vec<String>,
    /// Subscriber clients, or publisher tasks, in this process.
    #[arg(long, default_value_t = 4)]
    clients: usize,
    /// Publications per second per publisher task.
    #[arg(long, default_value_t = 5.0)]
    rate: f64,
    #[arg(long)]
    dir: PathBuf,
    #[arg(
        long,
        env = "HERALD_AUTH__HMAC_SECRET",
        hide_env_values = true,
        default_value = ""
    )]
    hmac_secret: String,
    #[arg(
        long,
        env = "HERALD_API__KEY",
        hide_env_values = true,
        default_value = ""
    )]
    api_key: String,
}

pub async fn run(args: ChaosArgs) -> anyhow::Result<()> {
    match args.role {
        Role::Check { dir, json } => {
            let report = check::check_dir(&dir)?;
            let text = serde_json::to_string_pretty(&report)?;
            println!("{text}");
            if let Some(path) = json {
                std::fs::write(path, &text)?;
            }
            anyhow::ensure!(report.counts.ok(), "loss or silent gap found");
            anyhow::ensure!(report.counts.acknowledged > 0, "nothing was acknowledged");
            Ok(())
        }
        Role::Sub(a) => {
            anyhow::ensure!(
                !a.nodes.is_empty() && !a.channels.is_empty(),
                "--nodes and --channels"
            );
            let log = Arc::new(log::EventLog::create(
                &a.dir.join(format!("sub-{}.log", a.name)),
            )?);
            let key = EncodingKey::from_secret(a.hmac_secret.as_bytes());
            let mut tasks = Vec::new();
            for i in 0..a.clients {
                let name = format!("{}.{i}", a.name);
                let token = crate::client::token(&key, &name)?;
                tasks.push(tokio::spawn(subscriber::run(subscriber::SubSpec {
                    name,
                    nodes: a.nodes.clone(),
                    token,
                    channels: a.channels.clone(),
                    log: log.clone(),
                    stop_file: a.dir.join("stop"),
                })));
            }
            for t in tasks {
                t.await?;
            }
            log.flush();
            Ok(())
        }
        Role::Pub(a) => {
            anyhow::ensure!(
                !a.nodes.is_empty() && !a.channels.is_empty(),
                "--nodes and --channels"
            );
            let log = Arc::new(log::EventLog::create(
                &a.dir.join(format!("pub-{}.log", a.name)),
            )?);
            let mut tasks = Vec::new();
            for i in 0..a.clients {
                // Each task starts on another node.
                let mut nodes = a.nodes.clone();
                nodes.rotate_left(i % a.nodes.len());
                tasks.push(tokio::spawn(publisher::run(publisher::PubSpec {
                    name: format!("{}.{i}", a.name),
                    nodes,
                    api_key: a.api_key.clone(),
                    channels: a.channels.clone(),
                    rate: a.rate,
                    log: log.clone(),
                    stop_file: a.dir.join("stop-pub"),
                })));
            }
            for t in tasks {
                t.await??;
            }
            log.flush();
            Ok(())
        }
    }
}
