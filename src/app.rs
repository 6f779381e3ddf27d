//! Builds the backends from config, starts the HTTP server, and stops everything in
//! order: stop accepting, tell every client to reconnect elsewhere, drain, exit.

use std::future::Future;
use std::net::TcpListener;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::distributions::Alphanumeric;
use rand::Rng;
use tokio_util::sync::CancellationToken;

use crate::api::ApiState;
use crate::auth::Verifier;
use crate::broker::memory::MemoryBroker;
use crate::config::Config;
use crate::gateway::GatewayState;
use crate::node::{Node, Stores};
use crate::presence::memory::MemoryPresence;
use crate::protocol::codes;
use crate::store::metered::Metered;
use crate::store::scylla::{ScyllaOptions, ScyllaStore};
use crate::store::sqlite::{SqliteOptions, SqliteStore, Sync};

fn random_secret() -> String {
    rand::thread_rng()
        .sample_iter(&Alphanumeric)
        .take(32)
        .map(char::from)
        .collect()
}

/// Fills an empty API key or HMAC secret with a random one, so Herald never runs with
/// an empty secret. Returns lines to show the operator once.
pub fn fill_missing_secrets(config: &mut Config) -> Vec<String> {
    let mut notes = Vec::new();
    if config.api.key.is_empty() {
        config.api.key = random_secret();
        notes.push(format!(
            "api.key was not set; generated for this run: {}",
            config.api.key
        ));
    }
    if config.auth.hmac_secret.is_empty() {
        config.auth.hmac_secret = random_secret();
        notes.push(format!(
            "auth.hmac_secret was not set; generated for this run: {}",
            config.auth.hmac_secret
        ));
    }
    notes
}

/// Opens the durable store (`store.kind`: embedded SQLite or ScyllaDB) when a namespace
/// needs it (persisted history or members).
async fn open_store(config: &Config) -> anyhow::Result<Option<Stores>> {
    let needed = std::iter::once(&config.channel)
        .chain(config.namespaces.iter().map(|n| &n.options))
        .any(|o| o.persist || o.members);
    if !needed {
        return Ok(None);
    }
    if config.store.kind == "scylla" {
        let options = ScyllaOptions::from_config(&config.store).map_err(anyhow::Error::msg)?;
        let store = ScyllaStore::open(options)
            .await
            .map_err(|e| anyhow::anyhow!("cannot open the ScyllaDB store: {e}"))?;
        tracing::info!(
            nodes = %config.store.scylla_uri,
            keyspace = %config.store.scylla_keyspace,
            "ScyllaDB store open"
        );
        return Ok(Some(metered(Arc::new(store.clone()), Arc::new(store))));
    }
    let options = sqlite_options(config);
    let path = options.path.clone();
    let store = SqliteStore::open(options)
        .map_err(|e| anyhow::anyhow!("cannot open the store at {}: {e}", path.display()))?;
    let store = Arc::new(store);
    tracing::info!(path = %path.display(), "embedded store open");
    Ok(Some(metered(Arc::new(store.clone()), Arc::new(store))))
}

/// Every store call goes through [`Metered`] so its latency and failures are measured
/// the same way for each backend.
fn metered(
    messages: Arc<dyn crate::store::MessageStore>,
    conversations: Arc<dyn crate::store::ConversationStore>,
) -> Stores {
    let store = Metered::new(messages, conversations);
    Stores {
        messages: store.clone(),
        conversations: store,
    }
}

fn sqlite_options(config: &Config) -> SqliteOptions {
    let sync = if config.store.sync == "normal" {
        Sync::Normal
    } else {
        Sync::Full
    };
    SqliteOptions {
        path: std::path::Path::new(&config.store.path).join("herald.db"),
        sync,
        idempotency_window: config.store.idempotency_window,
    }
}

/// `herald migrate`: brings the configured store's schema up to date. ScyllaDB: creates
/// the keyspace if needed, applies the CQL files of schema/cql/ not yet recorded, and
/// records the version. SQLite: opening the store applies its migrations.
pub async fn migrate(config: &Config) -> anyhow::Result<String> {
    if config.store.kind == "scylla" {
        let options = ScyllaOptions::from_config(&config.store).map_err(anyhow::Error::msg)?;
        let report = crate::store::scylla::migrate(&options)
            .await
            .map_err(|e| anyhow::anyhow!("migrate failed: {e}"))?;
        return Ok(report.to_string());
    }
    let options = sqlite_options(config);
    let path = options.path.clone();
    SqliteStore::open(options)
        .map_err(|e| anyhow::anyhow!("cannot open the store at {}: {e}", path.display()))?;
    Ok(format!("sqlite store {} is up to date", path.display()))
}

/// The broker and presence backends (`broker.kind`), and in cluster mode the Redis
/// connections the cluster membership shares with them.
async fn build_broker(
    config: &Config,
) -> anyhow::Result<(
    Arc<dyn crate::broker::Broker>,
    Arc<dyn crate::presence::PresenceManager>,
    Option<Arc<crate::cluster::redis::Redis>>,
)> {
    let b = &config.broker;
    if !b.is_redis() {
        return Ok((
            Arc::new(MemoryBroker::new()),
            Arc::new(MemoryPresence::default()),
            None,
        ));
    }
    let redis = crate::cluster::redis::Redis::connect(b)
        .await
        .map_err(|e| anyhow::anyhow!("cannot reach Redis ({}): {e}", redact_urls(&b.redis_url)))?;
    tracing::info!(redis = %redact_urls(&b.redis_url), "cluster mode: broker and presence on Redis");
    Ok((
        Arc::new(crate::broker::redis::RedisBroker::new(
            redis.clone(),
            b.history_meta_ttl,
        )),
        Arc::new(crate::presence::redis::RedisPresence::new(
            redis.clone(),
            b.presence_ttl,
        )),
        Some(redis),
    ))
}

fn redact_urls(urls: &str) -> String {
    urls.split(',')
        .map(|u| crate::cluster::redis::redact(u.trim()))
        .collect::<Vec<_>>()
        .join(",")
}

/// Serves on `listener` until `shutdown` completes, then drains and returns.
pub async fn run(
    mut config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    fill_missing_secrets(&mut config);
    let config = Arc::new(config);
    let prometheus = crate::metrics::install();
    // The exporter keeps every histogram sample until upkeep folds them into buckets;
    // without it (no scrapes) memory grows with traffic. Upkeep on a timer bounds it.
    if let Some(handle) = prometheus.clone() {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
            loop {
                tick.tick().await;
                handle.run_upkeep();
            }
        });
    }
    metrics::gauge!(crate::metrics::BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);

    let (broker, presence, redis) = build_broker(&config).await?;
    let node = Node::new(config.clone(), broker, presence, open_store(&config).await?);
    let limits = Arc::new(crate::gateway::ratelimit::SharedLimits::new(
        &config,
        redis.clone(),
    ));
    let push_redis = redis.clone();
    let cluster = match redis {
        Some(redis) => Some(
            crate::cluster::Cluster::start(node.clone(), redis, &config.broker)
                .await
                .map_err(|e| anyhow::anyhow!("cannot join the cluster: {e}"))?,
        ),
        None => None,
    };
    // Kafka: egress observes the node's publications; ingest calls the server API.
    let mut kafka = crate::kafka::Kafka::start(&config.kafka, &node)?;
    // Push hooks into the node's publications; it stops after the clients are gone.
    let push = crate::push::service::start(&config, &node, push_redis)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let verifier = Arc::new(
        Verifier::new(&config.auth, &config.auth.hmac_secret).map_err(anyhow::Error::msg)?,
    );
    let stop = CancellationToken::new();
    if let Some(set) = verifier.jwks().cloned() {
        let every = config.auth.jwks_refresh_interval;
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tick.tick() => match set.refresh().await {
                        Ok(n) => tracing::info!(keys = n, "jwks loaded"),
                        Err(e) => tracing::warn!(cause = %e, "jwks fetch failed; keeping the previous keys"),
                    },
                }
            }
        });
    }
    let gateway_state = GatewayState {
        node: node.clone(),
        verifier,
        shutdown: stop.clone(),
        meters: crate::gateway::meters::WireMeters::register(),
        limits,
    };
    let api_state = ApiState {
        node: node.clone(),
        api_key: Arc::from(config.api.key.as_str()),
        prometheus,
        shutdown: stop.clone(),
        kafka: kafka.health(),
    };

    let addr = listener.local_addr()?;
    let http = &config.http;
    let tls = if http.tls_cert.is_empty() {
        None
    } else {
        let store = crate::tls::CertStore::open(&http.tls_cert, &http.tls_key)
            .map_err(anyhow::Error::msg)?;
        crate::tls::reload_on_sighup(store.clone())?;
        tracing::info!(cert = %http.tls_cert, "tls on the listener");
        Some(store.server_config().map_err(anyhow::Error::msg)?)
    };
    let server = crate::http::serve(listener, tls, config.http.workers, gateway_state, api_state)?;
    let handle = server.handle();
    let mut server_task = tokio::spawn(server);
    tracing::info!(%addr, "herald listening");

    tokio::select! {
        r = &mut server_task => {
            return match r {
                Ok(res) => res.map_err(Into::into),
                Err(e) => Err(anyhow::anyhow!("server task failed: {e}")),
            };
        }
        _ = shutdown => {}
    }

    tracing::info!(
        connections = node.num_conns(),
        "shutting down: draining clients"
    );
    stop.cancel();
    // Ingest stops before the drain: it finishes the records it is applying and
    // commits them, so nothing it acknowledged to Kafka is lost with the clients.
    kafka.stop_ingest().await;
    node.disconnect_all(codes::DISCONNECT_SHUTDOWN.into());
    let deadline = Instant::now() + config.http.shutdown_timeout;
    while node.num_conns() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let left = node.num_conns();
    if left > 0 {
        tracing::warn!(left, "drain timeout reached; closing remaining connections");
    }
    handle.stop(true).await;
    let _ = server_task.await;
    if let Some(push) = push {
        // After the API is closed: nothing new is queued while push drains and stops.
        push.stop().await;
    }
    // Egress last: nothing publishes any more; what is buffered is produced.
    kafka.stop_egress().await;
    if let Some(cluster) = cluster {
        // After the clients are gone: `info` stops listing this node.
        cluster.stop().await;
    }
    tracing::info!("herald stopped");
    Ok(())
}

/// Completes on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
