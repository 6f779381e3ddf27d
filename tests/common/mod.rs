//! Test harness shared by the integration tests: an in-process Herald, token minting,
//! a WebSocket client for both wire formats, and a server API helper.
//!
//! Every test starts its own server on port 0, so tests never share state.
#![allow(dead_code)]

pub mod api;
pub mod client;
pub mod tokens;

use std::net::SocketAddr;
use std::thread::JoinHandle;
use std::time::Duration;

use herald::config::Config;
use tokio::sync::oneshot;

pub use api::Api;
pub use client::{Client, Wire};

pub const API_KEY: &str = "test-key";
pub const SECRET: &str = "test-secret";

/// The longest any single wait in a test may take; only bounds waits, never measures.
pub const WAIT: Duration = Duration::from_secs(5);

/// Namespaces every test server has. Keys left out take `[channel]`'s defaults
/// (history_size 100, presence on, subscribe for client on, publish for subscriber on).
const BASE_TOML: &str = r#"
[http]
workers = 2
shutdown_timeout = "3s"

[[namespaces]]
name = "personal"
allow_subscribe_for_client = false
allow_publish_for_subscriber = false
history_size = 0

# Join/leave, presence and history; clients ask for join/leave pushes.
[[namespaces]]
name = "chat"
join_leave = true

# Anyone connected may publish, read history and presence without subscribing.
[[namespaces]]
name = "open"
allow_publish_for_client = true
allow_history_for_client = true
allow_presence_for_client = true

# Subscribing needs a subscription token.
[[namespaces]]
name = "secret"
allow_subscribe_for_client = false

# A short history, to push positions out of it.
[[namespaces]]
name = "small"
history_size = 3

# Every subscription is recoverable (server-side subscriptions included).
[[namespaces]]
name = "feed"
force_recovery = true

# No history at all.
[[namespaces]]
name = "nohist"
history_size = 0
"#;

/// A Herald running on its own thread and runtime (actix starts its own workers).
pub struct Server {
    pub addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<anyhow::Result<()>>>,
}

impl Server {
    /// A server with the base namespaces and default client settings.
    pub fn start() -> Server {
        Server::start_with(&[])
    }

    /// A server with extra settings given as environment overrides, e.g.
    /// `("HERALD_CLIENT__MAX_SUBSCRIPTIONS", "2")`.
    pub fn start_with(env: &[(&str, &str)]) -> Server {
        Server::start_config(BASE_TOML, env)
    }

    /// A server with its own config file text (instead of the base namespaces) and
    /// environment overrides.
    pub fn start_config(toml: &str, env: &[(&str, &str)]) -> Server {
        let mut vars = vec![
            ("HERALD_API__KEY".to_string(), API_KEY.to_string()),
            ("HERALD_AUTH__HMAC_SECRET".to_string(), SECRET.to_string()),
        ];
        vars.extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let config = Config::load_from(Some(toml), "test", vars).expect("test config");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("local addr");
        let (tx, rx) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name(format!("herald-{}", addr.port()))
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()?;
                rt.block_on(herald::app::run(config, listener, async move {
                    let _ = rx.await;
                }))
            })
            .expect("spawn server thread");
        Server {
            addr,
            shutdown: Some(tx),
            thread: Some(thread),
        }
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/connection/websocket", self.addr)
    }

    pub fn api(&self) -> Api {
        Api::new(self.addr)
    }

    /// Triggers a graceful shutdown without waiting for it.
    pub fn trigger_shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }

    /// Triggers shutdown (if not yet) and waits for `run` to return, off the async
    /// runtime so the test's own tasks keep running.
    pub async fn join(mut self) -> anyhow::Result<()> {
        self.trigger_shutdown();
        let thread = self.thread.take().expect("joined twice");
        let joined = tokio::time::timeout(
            Duration::from_secs(15),
            tokio::task::spawn_blocking(move || thread.join()),
        )
        .await
        .expect("server did not stop within 15 s")
        .expect("join task");
        match joined {
            Ok(result) => result,
            Err(_) => panic!("server thread panicked"),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.trigger_shutdown();
        // Not joined here: a test that failed must not hang on a server still draining.
        // The thread ends on its own once its drain completes.
        self.thread.take();
    }
}

/// Unix time in seconds.
pub fn now() -> i64 {
    herald::auth::now_unix()
}

/// Runs `fut` with the standard bound, failing with `what` on timeout.
pub async fn within<T>(what: &str, fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, fut)
        .await
        .unwrap_or_else(|_| panic!("timed out after {WAIT:?} waiting for {what}"))
}
