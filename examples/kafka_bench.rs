//! Ingest throughput of one partition (docs/BENCHMARKS.md, "Kafka ingest").
//!
//! Fills one partition of an in-process mock Kafka broker with `--records` publish
//! commands of `--value-bytes` each, then starts Herald (in-process, as `herald serve`
//! would) with ingest on that topic and `--subscribers` WebSocket clients on the
//! channel. Measures from the first publication a subscriber receives to the last one
//! every subscriber received: records applied per second, deliveries per second.
//!
//! librdkafka's mock broker keeps at most 5 MiB (or 100,000 records) per partition and
//! drops the oldest beyond that (`rdkafka_mock.c`), so with 200-byte values only about
//! 21,000 records survive: a larger `--records` never completes, because the first ones
//! are gone before Herald reads them.
//!
//! `--brokers` runs against an external Kafka-protocol broker instead (e.g. tansu, see
//! scripts/kafka-e2e.sh), which keeps every record: each run creates its own topic
//! (`bench-<pid>`, one partition) and consumer group, so runs of any length measure.
//!
//! ```sh
//! cargo run --release --example kafka_bench -- --records 20000 --subscribers 1
//! cargo run --release --example kafka_bench -- --records 20000 --persist
//! cargo run --release --example kafka_bench -- --records 200000 --brokers 127.0.0.1:9092
//! ```

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;
use rdkafka::ClientConfig;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message as WsMessage;

#[derive(Parser)]
struct Args {
    /// At most about 5 MiB in all: the mock broker drops older records beyond that.
    #[arg(long, default_value_t = 20_000)]
    records: u64,
    /// Size of each record value (the whole publish command), bytes.
    #[arg(long, default_value_t = 200)]
    value_bytes: usize,
    #[arg(long, default_value_t = 1)]
    subscribers: usize,
    /// Publish into a persisted namespace (embedded store, sync = "normal").
    #[arg(long)]
    persist: bool,
    /// kafka.partition_buffer: records librdkafka fetches ahead of the partition's worker.
    #[arg(long, default_value_t = 1000)]
    partition_buffer: usize,
    /// Tokio worker threads of Herald's runtime (the subscribers get one more).
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// An external broker (host:port) instead of the in-process mock; the topic is
    /// created per run.
    #[arg(long)]
    brokers: Option<String>,
}

const SECRET: &str = "bench-secret";

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // RUST_LOG=herald=info shows Herald's log.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .try_init();
    // The subscribers' runtime; Herald gets its own below.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    rt.block_on(bench(args))
}

fn value(seq: u64, channel: &str, size: usize) -> String {
    let base = json!({"method": "publish", "payload": {"channel": channel, "data": {"seq": seq, "pad": ""}}}).to_string();
    let pad = "x".repeat(size.saturating_sub(base.len()));
    json!({"method": "publish", "payload": {"channel": channel, "data": {"seq": seq, "pad": pad}}})
        .to_string()
}

async fn bench(args: Args) -> anyhow::Result<()> {
    // The mock lives until the end of the run.
    let (_mock, bootstrap, topic) = match &args.brokers {
        Some(brokers) => {
            let topic = format!("bench-{}", std::process::id());
            create_topic(brokers, &topic).await?;
            (None, brokers.clone(), topic)
        }
        None => {
            let cluster = MockCluster::new(1).context("mock cluster")?;
            cluster.create_topic("bench", 1, 1)?;
            let bootstrap = cluster.bootstrap_servers();
            (Some(cluster), bootstrap, "bench".to_string())
        }
    };
    let channel = if args.persist {
        "room:bench"
    } else {
        "live:bench"
    };

    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("linger.ms", "20")
        .set("queue.buffering.max.messages", "1000000")
        .create()?;
    let started = Instant::now();
    for seq in 0..args.records {
        let v = value(seq, channel, args.value_bytes);
        let record = FutureRecord::<str, str>::to(&topic)
            .partition(0)
            .payload(&v);
        producer
            .send_result(record)
            .map_err(|(e, _)| anyhow!("enqueue: {e}"))?;
    }
    producer
        .flush(Timeout::After(Duration::from_secs(120)))
        .context("flush")?;
    eprintln!(
        "produced {} records of {} bytes in {:.1?}",
        args.records,
        value(0, channel, args.value_bytes).len(),
        started.elapsed()
    );

    let store = std::env::temp_dir().join(format!("herald-kafka-bench-{}", std::process::id()));
    let toml = r#"
[http]
workers = 1

[client]
# One in-process subscriber receives every record: let its queue absorb bursts.
outbound_queue_len = 1000000
command_rate = 0

[store]
sync = "normal"

[kafka]
ingest_enabled = true

[[namespaces]]
name = "live"

[[namespaces]]
name = "room"
persist = true
"#;
    let mut env = vec![
        ("HERALD_KAFKA__BROKERS".to_string(), bootstrap.clone()),
        ("HERALD_KAFKA__TOPICS".to_string(), topic.clone()),
        ("HERALD_KAFKA__GROUP_ID".to_string(), topic.clone()),
        (
            "HERALD_KAFKA__PARTITION_BUFFER".to_string(),
            args.partition_buffer.to_string(),
        ),
        ("HERALD_AUTH__HMAC_SECRET".to_string(), SECRET.to_string()),
        ("HERALD_API__KEY".to_string(), "bench-key".to_string()),
        (
            "HERALD_STORE__PATH".to_string(),
            store.to_string_lossy().into_owned(),
        ),
    ];
    // librdkafka properties to try (comma-separated), e.g. fetch.queue.backoff.ms=10.
    if let Ok(options) = std::env::var("BENCH_CLIENT_OPTIONS") {
        env.push(("HERALD_KAFKA__CLIENT_OPTIONS".to_string(), options));
    }
    let config = herald::config::Config::load_from(Some(toml), "bench", env)?;
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    // Herald on its own runtime and threads, as `herald serve` runs it (`run` is not Send).
    let workers = args.workers;
    let server = std::thread::spawn(move || -> anyhow::Result<()> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .enable_all()
            .build()?;
        rt.block_on(herald::app::run(config, listener, async move {
            let _ = stop_rx.await;
        }))
    });

    // Subscribers connect while the consumer group forms (the mock broker waits 3 s
    // before the first assignment), so every record is delivered to them.
    let received: Arc<Vec<AtomicU64>> =
        Arc::new((0..args.subscribers).map(|_| AtomicU64::new(0)).collect());
    let first = Arc::new(std::sync::OnceLock::<Instant>::new());
    let mut tasks = Vec::new();
    for i in 0..args.subscribers {
        let (received, first) = (received.clone(), first.clone());
        let url = format!("ws://{addr}/connection/websocket");
        let mut ws = loop {
            match tokio_tungstenite::connect_async(&url).await {
                Ok((ws, _)) => break ws,
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        };
        let now = herald::auth::now_unix();
        let token = herald::auth::mint_hs256(
            SECRET,
            &herald::auth::MintClaims {
                sub: &format!("sub{i}"),
                iat: now,
                exp: Some(now + 3600),
                channels: &[],
                info: None,
                channel: None,
            },
        )
        .map_err(|e| anyhow!("token: {e}"))?;
        let cmds = format!(
            "{}\n{}",
            json!({"id": 1, "connect": {"token": token}}),
            json!({"id": 2, "subscribe": {"channel": channel}})
        );
        ws.send(WsMessage::text(cmds)).await?;
        tasks.push(tokio::spawn(async move {
            while let Some(Ok(msg)) = ws.next().await {
                let WsMessage::Text(text) = msg else { continue };
                let n = text.split('\n').filter(|l| l.contains("\"pub\"")).count() as u64;
                if n > 0 {
                    first.get_or_init(Instant::now);
                    received[i].fetch_add(n, Ordering::Relaxed);
                }
                if text.as_str() == "{}" {
                    let _ = ws.send(WsMessage::text("{}")).await;
                }
            }
        }));
    }

    // No progress for 30 s: records were lost (mock broker trimmed them) or applied
    // before a subscriber was subscribed.
    let (mut last, mut moved) = (0, Instant::now());
    let done = loop {
        let min = received
            .iter()
            .map(|r| r.load(Ordering::Relaxed))
            .min()
            .unwrap_or(0);
        if min >= args.records {
            break Instant::now();
        }
        if min != last {
            (last, moved) = (min, Instant::now());
        }
        if moved.elapsed() > Duration::from_secs(30) {
            bail!("stuck at {min} of {} delivered for 30 s", args.records);
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    let start = *first.get().ok_or_else(|| anyhow!("nothing received"))?;
    let secs = done.duration_since(start).as_secs_f64();
    let records = args.records as f64;
    println!(
        "kafka ingest ({}), 1 partition, {} records of {} bytes, {} subscriber(s), {}: {:.0} records/s applied, {:.0} deliveries/s ({:.2} s)",
        if args.brokers.is_some() { "external broker" } else { "mock broker" },
        args.records,
        value(0, channel, args.value_bytes).len(),
        args.subscribers,
        if args.persist { "persisted namespace (sync=normal)" } else { "memory namespace" },
        (records - 1.0) / secs,
        (records - 1.0) * args.subscribers as f64 / secs,
        secs
    );
    let _ = stop_tx.send(());
    let _ = tokio::task::spawn_blocking(move || server.join()).await;
    for t in tasks {
        t.abort();
    }
    let _ = std::fs::remove_dir_all(&store);
    Ok(())
}

async fn create_topic(brokers: &str, topic: &str) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()?;
    let results = admin
        .create_topics(
            &[NewTopic::new(topic, 1, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .context("create topic")?;
    for r in results {
        r.map_err(|(t, e)| anyhow!("create topic {t}: {e}"))?;
    }
    Ok(())
}
