//! Kafka demo tool for docs/KAFKA.md, the README example and scripts/kafka-e2e.sh.
//!
//! ```text
//! kafka_demo broker  [--brokers 3] [--topic herald.commands:3 ...]   an in-process mock Kafka cluster
//! kafka_demo produce --brokers ADDR --topic T --channel C [--text T] [--count N] [--key K]
//! kafka_demo watch   [--url ws://127.0.0.1:8000] --secret S --channel C [--count N]
//! kafka_demo consume --brokers ADDR --topic T --count N                print records from the start
//! ```
//!
//! `broker` uses librdkafka's mock cluster: a real Kafka-protocol listener for trying
//! Herald without installing Kafka. Any broker works for the other commands.

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use clap::{Parser, Subcommand};
use futures_util::{SinkExt, StreamExt};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, OwnedHeaders};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::util::Timeout;
use rdkafka::{ClientConfig, Message};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message as WsMessage;

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run an in-process mock Kafka cluster until Ctrl-C; prints its bootstrap servers.
    Broker {
        #[arg(long, default_value_t = 3)]
        brokers: i32,
        /// Topics to create, NAME or NAME:PARTITIONS (repeatable).
        #[arg(long = "topic", default_values_t = ["herald.commands:3".to_string(), "herald.publications:3".to_string()])]
        topics: Vec<String>,
    },
    /// Produce publish commands: {"method":"publish","payload":{"channel":C,"data":{...}}}.
    Produce {
        #[arg(long)]
        brokers: String,
        #[arg(long)]
        topic: String,
        #[arg(long)]
        channel: String,
        #[arg(long, default_value = "hello from Kafka")]
        text: String,
        #[arg(long, default_value_t = 1)]
        count: u64,
        /// Also send an `idempotency_key` header: KEY-0, KEY-1, ...
        #[arg(long)]
        key: Option<String>,
        /// Send this text as the record value instead of a publish command.
        #[arg(long)]
        raw: Option<String>,
    },
    /// Subscribe to a channel over Herald's WebSocket and print publications.
    Watch {
        #[arg(long, default_value = "ws://127.0.0.1:8000/connection/websocket")]
        url: String,
        /// Herald's auth.hmac_secret, to mint a connection token.
        #[arg(long)]
        secret: String,
        #[arg(long, default_value = "demo")]
        user: String,
        #[arg(long)]
        channel: String,
        /// Exit after this many publications (0 = run until Ctrl-C).
        #[arg(long, default_value_t = 0)]
        count: u64,
        /// Give up when nothing arrives for this long.
        #[arg(long, default_value = "60s")]
        idle: humantime::Duration,
    },
    /// Print the first `count` records of a topic (all partitions).
    Consume {
        #[arg(long)]
        brokers: String,
        #[arg(long)]
        topic: String,
        #[arg(long, default_value_t = 1)]
        count: usize,
        #[arg(long, default_value = "60s")]
        timeout: humantime::Duration,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Cmd::Broker { brokers, topics } => broker(brokers, &topics).await,
        Cmd::Produce {
            brokers,
            topic,
            channel,
            text,
            count,
            key,
            raw,
        } => {
            let spec = Produce {
                brokers: &brokers,
                topic: &topic,
                channel: &channel,
                text: &text,
                key: key.as_deref(),
                raw: raw.as_deref(),
            };
            produce(spec, count).await
        }
        Cmd::Watch {
            url,
            secret,
            user,
            channel,
            count,
            idle,
        } => watch(&url, &secret, &user, &channel, count, idle.into()).await,
        Cmd::Consume {
            brokers,
            topic,
            count,
            timeout,
        } => consume(brokers, topic, count, timeout.into()).await,
    }
}

async fn broker(brokers: i32, topics: &[String]) -> anyhow::Result<()> {
    let cluster = MockCluster::new(brokers).context("mock cluster")?;
    for t in topics {
        let (name, partitions) = match t.split_once(':') {
            Some((n, p)) => (n, p.parse().context("partitions")?),
            None => (t.as_str(), 1),
        };
        cluster
            .create_topic(name, partitions, 1)
            .context("create topic")?;
        eprintln!("topic {name}: {partitions} partitions");
    }
    println!("{}", cluster.bootstrap_servers());
    eprintln!("mock Kafka cluster of {brokers} brokers; Ctrl-C stops it");
    tokio::signal::ctrl_c().await?;
    Ok(())
}

struct Produce<'a> {
    brokers: &'a str,
    topic: &'a str,
    channel: &'a str,
    text: &'a str,
    key: Option<&'a str>,
    raw: Option<&'a str>,
}

async fn produce(spec: Produce<'_>, count: u64) -> anyhow::Result<()> {
    let Produce {
        brokers,
        topic,
        channel,
        text,
        key,
        raw,
    } = spec;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .create()
        .context("producer")?;
    let started = Instant::now();
    for i in 0..count {
        let value = match raw {
            Some(raw) => raw.to_string(),
            None => json!({"method": "publish", "payload": {"channel": channel, "data": {"text": text, "seq": i}}})
                .to_string(),
        };
        let mut headers = OwnedHeaders::new();
        let k = key.map(|k| format!("{k}-{i}"));
        if let Some(k) = &k {
            headers = headers.insert(Header {
                key: "idempotency_key",
                value: Some(k.as_str()),
            });
        }
        let record = FutureRecord::<str, str>::to(topic)
            .payload(&value)
            .key(channel)
            .headers(headers);
        producer
            .send(record, Timeout::After(Duration::from_secs(30)))
            .await
            .map_err(|(e, _)| anyhow!("produce: {e}"))?;
    }
    eprintln!(
        "produced {count} record(s) to {topic} in {:?}",
        started.elapsed()
    );
    Ok(())
}

async fn watch(
    url: &str,
    secret: &str,
    user: &str,
    channel: &str,
    count: u64,
    idle: Duration,
) -> anyhow::Result<()> {
    let now = herald::auth::now_unix();
    let token = herald::auth::mint_hs256(
        secret,
        &herald::auth::MintClaims {
            sub: user,
            iat: now,
            exp: Some(now + 3600),
            channels: &[],
            info: None,
            channel: None,
        },
    )
    .map_err(|e| anyhow!("token: {e}"))?;
    let (mut ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .with_context(|| format!("connect {url}"))?;
    let cmds = format!(
        "{}\n{}",
        json!({"id": 1, "connect": {"token": token}}),
        json!({"id": 2, "subscribe": {"channel": channel}})
    );
    ws.send(WsMessage::text(cmds)).await?;
    let mut seen = 0u64;
    loop {
        let msg = match tokio::time::timeout(idle, ws.next()).await {
            Ok(Some(msg)) => msg?,
            Ok(None) => bail!("connection closed"),
            Err(_) => bail!("nothing for {idle:?} ({seen} publications seen)"),
        };
        let WsMessage::Text(text) = msg else {
            if let WsMessage::Close(frame) = msg {
                bail!("closed: {frame:?}");
            }
            continue;
        };
        for line in text.split('\n').filter(|l| !l.trim().is_empty()) {
            let reply: Value = serde_json::from_str(line)?;
            if reply.as_object().is_some_and(|o| o.is_empty()) {
                ws.send(WsMessage::text("{}")).await?; // pong
            } else if let Some(e) = reply.get("error") {
                bail!("error reply: {e}");
            } else if reply["id"] == 2 {
                eprintln!("subscribed to {channel}");
            } else if let Some(p) = reply["push"].get("pub") {
                println!(
                    "{} offset {}: {}",
                    reply["push"]["channel"].as_str().unwrap_or(""),
                    p["offset"],
                    p["data"]
                );
                seen += 1;
                if count > 0 && seen >= count {
                    return Ok(());
                }
            }
        }
    }
}

async fn consume(
    brokers: String,
    topic: String,
    count: usize,
    timeout: Duration,
) -> anyhow::Result<()> {
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("group.id", "kafka-demo-consume")
            .set("enable.auto.commit", "false")
            .create()
            .context("consumer")?;
        let metadata = consumer
            .fetch_metadata(Some(&topic), Duration::from_secs(10))
            .context("metadata")?;
        let mut tpl = TopicPartitionList::new();
        for t in metadata.topics() {
            for p in t.partitions() {
                tpl.add_partition_offset(&topic, p.id(), Offset::Beginning)?;
            }
        }
        consumer.assign(&tpl)?;
        let deadline = Instant::now() + timeout;
        let mut n = 0;
        while n < count {
            if Instant::now() > deadline {
                bail!("only {n} of {count} records on {topic} within {timeout:?}");
            }
            if let Some(m) = consumer.poll(Duration::from_millis(200)) {
                let m = m?;
                let headers: Vec<String> = m
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|h| {
                                format!(
                                    "{}={}",
                                    h.key,
                                    String::from_utf8_lossy(h.value.unwrap_or_default())
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                println!(
                    "{}/{} key={} {} {}",
                    m.partition(),
                    m.offset(),
                    String::from_utf8_lossy(m.key().unwrap_or_default()),
                    String::from_utf8_lossy(m.payload().unwrap_or_default()),
                    headers.join(" ")
                );
                n += 1;
            }
        }
        Ok(())
    })
    .await?
}
