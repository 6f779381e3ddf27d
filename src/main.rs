//! The `herald` command line. Everything else lives in the library.

use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use herald::auth::{mint_hs256, now_unix, MintClaims};
use herald::config::Config;

#[derive(Parser)]
#[command(
    name = "herald",
    version,
    about = "Realtime messaging and push-notification hub"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (the default when no command is given).
    Serve {
        /// TOML file with the keys to change from the embedded defaults.
        #[arg(long)]
        config: Option<String>,
    },
    /// Mint a connection token (HS256, with the configured auth.hmac_secret).
    Token {
        #[arg(long)]
        user: String,
        /// Lifetime, e.g. 1h, 30m; "0" for a token that never expires.
        #[arg(long, default_value = "1h")]
        ttl: String,
        /// Server-side subscription (repeatable): goes into the `channels` claim.
        #[arg(long = "channel")]
        channels: Vec<String>,
        /// JSON for the `info` claim, shown to other clients in presence and publications.
        #[arg(long)]
        info: Option<String>,
        #[arg(long)]
        config: Option<String>,
    },
    /// Bring the durable store's schema up to date and exit.
    ///
    /// store.kind = "scylla": create the keyspace if needed and apply the CQL files of
    /// schema/cql/ it has not recorded yet (idempotent; records the version).
    /// store.kind = "sqlite": open the store, which applies its migrations.
    Migrate {
        #[arg(long)]
        config: Option<String>,
    },
    /// Move an embedded node's push devices, mutes and queued pushes into Redis, for a
    /// deployment switching to cluster mode (broker.kind = "redis"), then exit.
    ///
    /// Reads store.path/push.db (or --from). Run it with that node stopped; running it
    /// again is harmless (devices keep their ids).
    PushImport {
        #[arg(long)]
        config: Option<String>,
        /// The push store to read (default: store.path/push.db).
        #[arg(long)]
        from: Option<String>,
    },
    /// Validate a config file (with the environment applied) and exit.
    CheckConfig { file: String },
    /// Print the version.
    Version,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("herald: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command.unwrap_or(Command::Serve { config: None }) {
        Command::Serve { config } => serve(config.as_deref()),
        Command::Token {
            user,
            ttl,
            channels,
            info,
            config,
        } => {
            let cfg = Config::load(config.as_deref())?;
            if cfg.auth.hmac_secret.is_empty() {
                anyhow::bail!(
                    "auth.hmac_secret is not set (set HERALD_AUTH__HMAC_SECRET or use --config)"
                );
            }
            let exp = if ttl == "0" {
                None
            } else {
                let d =
                    humantime::parse_duration(&ttl).with_context(|| format!("--ttl {ttl:?}"))?;
                Some(now_unix() + d.as_secs() as i64)
            };
            let info_raw = match &info {
                Some(s) => Some(
                    serde_json::from_str::<Box<serde_json::value::RawValue>>(s)
                        .context("--info must be JSON")?,
                ),
                None => None,
            };
            let claims = MintClaims {
                sub: &user,
                iat: now_unix(),
                exp,
                channels: &channels,
                info: info_raw.as_deref(),
                channel: None,
            };
            println!("{}", mint_hs256(&cfg.auth.hmac_secret, &claims)?);
            Ok(())
        }
        Command::Migrate { config } => {
            let cfg = Config::load(config.as_deref())?;
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            println!("{}", rt.block_on(herald::app::migrate(&cfg))?);
            Ok(())
        }
        Command::PushImport { config, from } => {
            let cfg = Config::load(config.as_deref())?;
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let done = rt
                .block_on(herald::push::import::from_file(
                    &cfg,
                    from.as_deref().map(std::path::Path::new),
                ))
                .map_err(anyhow::Error::msg)?;
            println!(
                "imported {} devices, {} mutes, {} queued pushes",
                done.devices, done.mutes, done.queued
            );
            Ok(())
        }
        Command::CheckConfig { file } => {
            Config::load(Some(&file))?;
            println!("{file}: ok");
            Ok(())
        }
        Command::Version => {
            println!("herald {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
    }
}

fn serve(config_file: Option<&str>) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let mut config = Config::load(config_file)?;
    for note in herald::app::fill_missing_secrets(&mut config) {
        eprintln!("herald: {note}");
    }
    let addr = config.socket_addr();
    let listener =
        std::net::TcpListener::bind(addr).with_context(|| format!("cannot listen on {addr}"))?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(herald::app::run(
        config,
        listener,
        herald::app::shutdown_signal(),
    ))
}
