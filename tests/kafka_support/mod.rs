//! Helpers of the Kafka tests: librdkafka's in-process mock cluster, a producer and a
//! reader for it, Herald's `/ready`, and a WebSocket watcher whose waits are longer than
//! the harness's standard bound (a consumer group takes seconds to form; a broker
//! outage lasts as long as the test makes it). Every wait is bounded; none is measured.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Duration;

use futures_util::StreamExt;
use herald::protocol::messages::Publication;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, OwnedHeaders, OwnedMessage};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{DefaultProducerContext, FutureProducer, FutureRecord};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::util::Timeout;
use rdkafka::{ClientConfig, Message};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message as WsMessage;

use crate::common::client::{cmd, decode};
use crate::common::{tokens, Client, Wire};

/// The bound of waits that involve Kafka (group joins, outages, rebalances).
pub const KAFKA_WAIT: Duration = Duration::from_secs(45);

/// librdkafka settings that make a test's consumer group react within a second or two
/// (the defaults are tuned for production: 45 s sessions, 3 s heartbeats).
pub const FAST_GROUP: &str = r#"client_options = ["session.timeout.ms=6000", "heartbeat.interval.ms=300", "topic.metadata.refresh.interval.ms=1000"]"#;

/// An in-process Kafka cluster (librdkafka's mock brokers) with a producer.
pub struct Mock {
    pub cluster: MockCluster<'static, DefaultProducerContext>,
    pub producer: FutureProducer,
}

impl Mock {
    pub fn new(brokers: i32) -> Mock {
        let cluster = MockCluster::new(brokers).expect("mock cluster");
        let producer = ClientConfig::new()
            .set("bootstrap.servers", cluster.bootstrap_servers())
            .set("enable.idempotence", "true")
            .set("reconnect.backoff.max.ms", "1000")
            .create()
            .expect("producer");
        Mock { cluster, producer }
    }

    pub fn bootstrap(&self) -> String {
        self.cluster.bootstrap_servers()
    }

    pub fn topic(&self, name: &str, partitions: i32) {
        self.cluster
            .create_topic(name, partitions, 1)
            .expect("create topic");
    }

    /// Produces one record and waits for its delivery (as long as an outage lasts, up
    /// to `KAFKA_WAIT`).
    pub async fn produce(
        &self,
        topic: &str,
        partition: i32,
        key: Option<&str>,
        value: &[u8],
        headers: &[(&str, &str)],
    ) {
        let mut h = OwnedHeaders::new();
        for (k, v) in headers {
            h = h.insert(Header {
                key: k,
                value: Some(*v),
            });
        }
        let mut record = FutureRecord::<str, [u8]>::to(topic)
            .partition(partition)
            .payload(value)
            .headers(h);
        if let Some(k) = key {
            record = record.key(k);
        }
        let sent = tokio::time::timeout(KAFKA_WAIT, self.producer.send(record, Timeout::Never))
            .await
            .expect("produce within the bound");
        if let Err((e, _)) = sent {
            panic!("produce to {topic}: {e}");
        }
    }

    /// Produces a publish command for `channel` carrying `{"seq": seq}`.
    pub async fn publish(&self, topic: &str, partition: i32, channel: &str, seq: u64) {
        let v = json!({"method": "publish", "payload": {"channel": channel, "data": {"seq": seq}}});
        self.produce(topic, partition, None, v.to_string().as_bytes(), &[])
            .await;
    }

    /// Reads every record of `topic` until `n` arrived (in partition order).
    pub async fn read(&self, topic: &str, partitions: i32, n: usize) -> Vec<OwnedMessage> {
        let bootstrap = self.bootstrap();
        let topic = topic.to_string();
        tokio::task::spawn_blocking(move || {
            let consumer: BaseConsumer = ClientConfig::new()
                .set("bootstrap.servers", &bootstrap)
                .set("group.id", "herald-test-reader")
                .set("enable.auto.commit", "false")
                .create()
                .expect("reader");
            let mut tpl = TopicPartitionList::new();
            for p in 0..partitions {
                tpl.add_partition_offset(&topic, p, Offset::Beginning)
                    .expect("tpl");
            }
            consumer.assign(&tpl).expect("assign");
            let deadline = std::time::Instant::now() + KAFKA_WAIT;
            let mut out = Vec::new();
            while out.len() < n {
                assert!(
                    std::time::Instant::now() < deadline,
                    "only {} of {n} records on {topic} within {KAFKA_WAIT:?}",
                    out.len()
                );
                match consumer.poll(Duration::from_millis(100)) {
                    Some(Ok(m)) => out.push(m.detach()),
                    Some(Err(e)) => eprintln!("reader: {e}"),
                    None => {}
                }
            }
            out
        })
        .await
        .expect("reader task")
    }
}

impl Mock {
    /// Waits until `group` has committed `offsets` (by partition) for `topic`.
    pub async fn wait_committed(&self, group: &str, topic: &str, offsets: &[i64]) {
        let bootstrap = self.bootstrap();
        let (group, topic, want) = (group.to_string(), topic.to_string(), offsets.to_vec());
        tokio::task::spawn_blocking(move || {
            let consumer: BaseConsumer = ClientConfig::new()
                .set("bootstrap.servers", &bootstrap)
                .set("group.id", &group)
                .create()
                .expect("offset reader");
            let mut tpl = TopicPartitionList::new();
            for p in 0..want.len() as i32 {
                tpl.add_partition(&topic, p);
            }
            let deadline = std::time::Instant::now() + KAFKA_WAIT;
            loop {
                let got: Vec<i64> = consumer
                    .committed_offsets(tpl.clone(), Duration::from_secs(5))
                    .map(|l| {
                        l.elements()
                            .iter()
                            .map(|e| match e.offset() {
                                Offset::Offset(o) => o,
                                _ => -1,
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                if got == want {
                    return;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "group {group} committed {got:?}, not {want:?}"
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        })
        .await
        .expect("offset reader task");
    }
}

/// A record header's value as text.
pub fn header(m: &OwnedMessage, key: &str) -> Option<String> {
    m.headers()?
        .iter()
        .find(|h| h.key == key)
        .and_then(|h| h.value)
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

/// Herald's `/ready` body.
pub async fn ready(addr: SocketAddr) -> Value {
    let resp = reqwest::get(format!("http://{addr}/ready"))
        .await
        .expect("GET /ready");
    resp.json().await.expect("/ready is JSON")
}

/// Polls `/ready` until `pred` holds for its body.
pub async fn wait_ready(addr: SocketAddr, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + KAFKA_WAIT;
    loop {
        let body = ready(addr).await;
        if pred(&body) {
            return body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "/ready never showed {what}: last {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub fn ingest_state(body: &Value) -> &str {
    body["kafka"]["ingest"]["state"].as_str().unwrap_or("")
}

/// Waits until ingest has joined its group and is connected.
pub async fn wait_ingest_ok(addr: SocketAddr) {
    wait_ready(addr, "kafka ingest ok", |b| ingest_state(b) == "ok").await;
}

/// A WebSocket subscriber that waits up to `KAFKA_WAIT` for each publication.
pub struct Watcher {
    pub client: Client,
    pubs: VecDeque<(String, Publication)>,
}

impl Watcher {
    /// Connects as `user` and subscribes to `channels`.
    pub async fn subscribe(addr: SocketAddr, user: &str, channels: &[&str]) -> Watcher {
        let (mut client, _) = Client::connect(addr, Wire::Json, &tokens::connect(user)).await;
        for ch in channels {
            client.ok(cmd::subscribe(ch)).await;
        }
        Watcher {
            client,
            pubs: VecDeque::new(),
        }
    }

    /// The next publication (channel, publication), answering pings meanwhile.
    pub async fn next(&mut self) -> (String, Publication) {
        let deadline = tokio::time::Instant::now() + KAFKA_WAIT;
        loop {
            if let Some(p) = self.pubs.pop_front() {
                return p;
            }
            let msg = tokio::time::timeout_at(deadline, self.client.ws.next())
                .await
                .unwrap_or_else(|_| panic!("no publication within {KAFKA_WAIT:?}"));
            let payload = match msg {
                Some(Ok(WsMessage::Text(t))) => t.as_bytes().to_vec(),
                Some(Ok(_)) => continue,
                other => panic!("websocket ended: {other:?}"),
            };
            for reply in decode(Wire::Json, &payload) {
                match reply.push {
                    Some(push) => {
                        if let Some(p) = push.publication {
                            self.pubs.push_back((push.channel, p));
                        }
                    }
                    None if reply.id == 0 => self.client.pong().await,
                    None => {}
                }
            }
        }
    }

    /// The next `n` publications' `seq` fields, with their channels.
    pub async fn seqs(&mut self, n: usize) -> Vec<(String, u64)> {
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let (ch, p) = self.next().await;
            let v: Value = serde_json::from_slice(&p.data).expect("json data");
            out.push((ch, v["seq"].as_u64().expect("seq")));
        }
        out
    }

    /// Proves nothing else is queued: a ping round trip, then no publication pending.
    pub async fn assert_no_more(&mut self) {
        assert!(self.pubs.is_empty(), "unexpected: {:?}", self.pubs);
        let id = self.client.next_id();
        let mut ping = cmd::ping();
        ping.id = id;
        self.client.send(&ping).await;
        loop {
            let msg = tokio::time::timeout(KAFKA_WAIT, self.client.ws.next())
                .await
                .expect("ping reply");
            let Some(Ok(WsMessage::Text(t))) = msg else {
                continue;
            };
            for reply in decode(Wire::Json, t.as_bytes()) {
                if let Some(push) = &reply.push {
                    panic!("unexpected push: {push:?}");
                }
                if reply.id == id {
                    return;
                }
            }
        }
    }
}

/// A store directory removed when dropped.
pub struct TempDir(pub std::path::PathBuf);

impl TempDir {
    pub fn new() -> TempDir {
        let p = std::env::temp_dir().join(format!("herald-kafka-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&p).expect("temp dir");
        TempDir(p)
    }
    pub fn path(&self) -> &str {
        self.0.to_str().expect("utf-8 path")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
