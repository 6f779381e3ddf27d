//! Egress: publications of the configured namespaces, produced to `kafka.egress_topic`
//! with the channel as key (so one channel's publications stay in one partition, in
//! order) and delivery confirmation.
//!
//! Producer trouble never blocks realtime delivery: the observer only `try_send`s into a
//! bounded buffer (`kafka.egress_buffer`). When the buffer is full the publication is
//! dropped for egress, counted in `herald_kafka_egress_dropped_total` and logged; its
//! subscribers got it all the same. Downstream consumers can see such a gap in a
//! channel's offsets and read the missing publications from the history API.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::stream::FuturesUnordered;
use futures_util::StreamExt;
use parking_lot::Mutex;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::{KafkaError as RdError, RDKafkaErrorCode};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use rdkafka::statistics::Statistics;
use rdkafka::ClientContext;
use serde::Serialize;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::client;
use super::health::{self, KafkaHealth, Role, Status};
use super::KafkaError;
use crate::config::{Config, KafkaConfig};
use crate::metrics as m;
use crate::node::observer::PublicationObserver;
use crate::node::Node;
use crate::protocol::messages::{ClientInfo, Publication};

/// librdkafka client context of Herald's producers: logs, statistics -> health.
pub struct ProducerContext {
    role: Role,
    health: KafkaHealth,
    /// Whether this producer's statistics decide `role`'s health (the egress producer
    /// does; the dead-letter producer reports through ingest).
    report: bool,
    /// The last delivery failure, cleared by the next success (written by the task).
    last_failure: Arc<Mutex<Option<String>>>,
}

impl ProducerContext {
    pub fn new(role: Role, health: KafkaHealth, report: bool) -> ProducerContext {
        ProducerContext {
            role,
            health,
            report,
            last_failure: Arc::default(),
        }
    }
}

impl ClientContext for ProducerContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        client::log(self.role.name(), level, fac, log_message);
    }

    fn stats(&self, statistics: Statistics) {
        if self.report {
            let failure = self.last_failure.lock().clone();
            self.health.set(
                self.role,
                health::producer_status(&statistics, failure.as_deref()),
            );
        }
    }

    fn error(&self, error: RdError, reason: &str) {
        tracing::debug!(role = self.role.name(), %error, reason, "kafka client error");
        if self.report && error.rdkafka_error_code() == Some(RDKafkaErrorCode::AllBrokersDown) {
            self.health.set(
                self.role,
                Status::Degraded {
                    reason: "all brokers down".into(),
                },
            );
        }
    }
}

/// One publication waiting to be produced.
struct Item {
    channel: String,
    publication: Arc<Publication>,
    epoch: String,
    timestamp_ms: i64,
}

/// Which publications egress takes: those of the configured namespaces, except the
/// offset-less ones of namespaces that keep history (typing indicators, read receipts:
/// ephemeral events, not messages).
struct Filter {
    /// namespace ("" = no namespace) -> whether it keeps history.
    namespaces: HashMap<String, bool>,
}

impl Filter {
    fn new(config: &Config) -> Result<Filter, KafkaError> {
        let mut namespaces = HashMap::new();
        for name in &config.kafka.egress_namespaces {
            let options = if name.is_empty() {
                &config.channel
            } else {
                match config.namespaces.iter().find(|n| &n.name == name) {
                    Some(n) => &n.options,
                    None => return Err(KafkaError::Namespace(format!("no namespace {name:?}"))),
                }
            };
            namespaces.insert(name.clone(), options.history_enabled());
        }
        Ok(Filter { namespaces })
    }

    fn accepts(&self, channel: &str, offset: u64) -> bool {
        let ns = channel.split_once(':').map(|(ns, _)| ns).unwrap_or("");
        match self.namespaces.get(ns) {
            Some(keeps_history) => offset > 0 || !keeps_history,
            None => false,
        }
    }
}

/// The node's observer: a non-blocking hand-off into the bounded buffer.
struct EgressObserver {
    tx: mpsc::Sender<Item>,
    filter: Filter,
    buffered: metrics::Gauge,
    dropped: metrics::Counter,
    /// Drops so far, to log the first and then every 10,000th rather than each one.
    drops: AtomicU64,
}

impl PublicationObserver for EgressObserver {
    fn on_publication(&self, channel: &str, publication: &Arc<Publication>, epoch: &str) {
        if !self.filter.accepts(channel, publication.offset) {
            return;
        }
        let item = Item {
            channel: channel.to_string(),
            publication: publication.clone(),
            epoch: epoch.to_string(),
            timestamp_ms: now_ms(),
        };
        match self.tx.try_send(item) {
            Ok(()) => self.buffered.increment(1.0),
            Err(_) => {
                self.dropped.increment(1);
                let n = self.drops.fetch_add(1, Ordering::Relaxed);
                if n.is_multiple_of(10_000) {
                    tracing::warn!(
                        channel,
                        dropped = n + 1,
                        "kafka egress buffer full: publication not produced"
                    );
                }
            }
        }
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The record value downstream systems read.
#[derive(Serialize)]
struct Value<'a> {
    channel: &'a str,
    offset: u64,
    epoch: &'a str,
    /// The publication's data when it is JSON (as it is from the server API and JSON
    /// clients), embedded as is.
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<&'a serde_json::value::RawValue>,
    /// Otherwise (binary data from Protobuf clients), base64.
    #[serde(skip_serializing_if = "Option::is_none")]
    b64data: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    info: Option<&'a ClientInfo>,
    #[serde(skip_serializing_if = "HashMap::is_empty")]
    tags: &'a HashMap<String, String>,
    /// Unix milliseconds when this node delivered the publication.
    timestamp: i64,
}

/// The JSON value of one egress record.
fn encode(item: &Item) -> Result<Vec<u8>, serde_json::Error> {
    let data: &Bytes = &item.publication.data;
    let raw = std::str::from_utf8(data)
        .ok()
        .and_then(|s| serde_json::from_str::<&serde_json::value::RawValue>(s).ok());
    let b64data = match raw {
        Some(_) => None,
        None => {
            use base64::Engine as _;
            Some(base64::engine::general_purpose::STANDARD.encode(data))
        }
    };
    serde_json::to_vec(&Value {
        channel: &item.channel,
        offset: item.publication.offset,
        epoch: &item.epoch,
        data: raw,
        b64data,
        info: item.publication.info.as_ref(),
        tags: &item.publication.tags,
        timestamp: item.timestamp_ms,
    })
}

/// The running egress: its producer task.
pub struct Egress {
    stop: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl Egress {
    /// Creates the producer, registers the observer with the node, starts the task.
    pub fn start(
        config: &KafkaConfig,
        node: &Node,
        health: KafkaHealth,
    ) -> Result<Egress, KafkaError> {
        let filter = Filter::new(node.config())?;
        let mut c = client::base(config);
        // Idempotence keeps each partition's order through librdkafka's retries.
        c.set("enable.idempotence", "true").set("linger.ms", "5");
        client::apply_options(&mut c, &config.client_options);
        let context = ProducerContext::new(Role::Egress, health.clone(), true);
        let last_failure = context.last_failure.clone();
        let producer: FutureProducer<ProducerContext> = c.create_with_context(context)?;
        health.set(Role::Egress, Status::Starting);
        let (tx, rx) = mpsc::channel(config.egress_buffer);
        let buffered = metrics::gauge!(m::KAFKA_EGRESS_BUFFERED);
        let dropped = metrics::counter!(m::KAFKA_EGRESS_DROPPED_TOTAL);
        dropped.absolute(0);
        node.add_observer(Arc::new(EgressObserver {
            tx,
            filter,
            buffered: buffered.clone(),
            dropped,
            drops: AtomicU64::new(0),
        }));
        let stop = CancellationToken::new();
        let task = Producing {
            producer: Arc::new(producer),
            topic: config.egress_topic.clone(),
            inflight: FuturesUnordered::new(),
            last_failure,
            buffered,
            produced: metrics::counter!(m::KAFKA_EGRESS_PRODUCED_TOTAL, "topic" => config.egress_topic.clone()),
            failed: metrics::counter!(m::KAFKA_EGRESS_FAILED_TOTAL, "topic" => config.egress_topic.clone()),
        };
        task.produced.absolute(0);
        task.failed.absolute(0);
        let task = tokio::spawn(task.run(rx, stop.clone()));
        Ok(Egress {
            stop,
            task: Some(task),
        })
    }

    /// Produces what is buffered, waits for confirmations up to `timeout`, then stops.
    pub async fn stop(mut self, timeout: Duration) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            if tokio::time::timeout(timeout + Duration::from_secs(1), task)
                .await
                .is_err()
            {
                tracing::warn!("kafka egress did not stop in time");
            }
        }
    }
}

impl Drop for Egress {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// The producer task's state.
struct Producing {
    producer: Arc<FutureProducer<ProducerContext>>,
    topic: String,
    /// Deliveries awaiting the brokers' confirmation (bounded by librdkafka's queue).
    inflight: FuturesUnordered<DeliveryFuture>,
    /// Shared with the producer's context, whose statistics callback reads it.
    last_failure: Arc<Mutex<Option<String>>>,
    buffered: metrics::Gauge,
    produced: metrics::Counter,
    failed: metrics::Counter,
}

/// A delivery's result; the outer error means the producer went away first.
type Delivered = <DeliveryFuture as std::future::Future>::Output;

/// How long shutdown waits for the last confirmations.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

impl Producing {
    async fn run(mut self, mut rx: mpsc::Receiver<Item>, stop: CancellationToken) {
        let mut closing = false;
        loop {
            tokio::select! {
                Some(done) = self.inflight.next(), if !self.inflight.is_empty() => self.delivered(done),
                item = rx.recv() => match item {
                    Some(item) => self.produce(item).await,
                    None => break,
                },
                _ = stop.cancelled(), if !closing => {
                    // Refuse new publications; what is buffered is still produced.
                    closing = true;
                    rx.close();
                }
            }
        }
        let deadline = tokio::time::Instant::now() + DRAIN_TIMEOUT;
        while !self.inflight.is_empty() {
            match tokio::time::timeout_at(deadline, self.inflight.next()).await {
                Ok(Some(done)) => self.delivered(done),
                Ok(None) => break,
                Err(_) => {
                    let left = self.inflight.len();
                    tracing::warn!(left, "kafka egress: publications not confirmed at shutdown");
                    self.buffered.decrement(left as f64);
                    break;
                }
            }
        }
        // Dropping a producer purges and flushes for up to half a second: off the runtime.
        let producer = self.producer.clone();
        drop(self);
        let _ = tokio::task::spawn_blocking(move || drop(producer)).await;
    }

    async fn produce(&mut self, item: Item) {
        let value = match encode(&item) {
            Ok(v) => v,
            Err(e) => {
                self.fail(&item.channel, &e.to_string());
                return;
            }
        };
        loop {
            let record = FutureRecord::to(&self.topic)
                .key(item.channel.as_str())
                .payload(value.as_slice())
                .timestamp(item.timestamp_ms);
            match self.producer.send_result(record) {
                Ok(delivery) => {
                    self.inflight.push(delivery);
                    return;
                }
                Err((RdError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    // librdkafka's own queue is full: wait for a confirmation (the
                    // bounded buffer in front absorbs publications meanwhile).
                    match self.inflight.next().await {
                        Some(done) => self.delivered(done),
                        None => tokio::time::sleep(Duration::from_millis(10)).await,
                    }
                }
                Err((e, _)) => {
                    self.fail(&item.channel, &e.to_string());
                    return;
                }
            }
        }
    }

    fn delivered(&self, done: Delivered) {
        self.buffered.decrement(1.0);
        match done {
            Ok(Ok(_)) => {
                self.produced.increment(1);
                *self.last_failure.lock() = None;
            }
            Ok(Err((e, _))) => {
                self.failed.increment(1);
                tracing::warn!(cause = %e, topic = self.topic, "kafka egress delivery failed");
                *self.last_failure.lock() = Some(e.to_string());
            }
            Err(_) => {
                self.failed.increment(1);
            }
        }
    }

    fn fail(&self, channel: &str, cause: &str) {
        self.buffered.decrement(1.0);
        self.failed.increment(1);
        tracing::warn!(
            cause,
            channel,
            topic = self.topic,
            "kafka egress produce failed"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(toml: &str) -> Config {
        Config::load_from(Some(toml), "t", vec![]).expect("config")
    }

    #[test]
    fn filter_takes_configured_namespaces_without_ephemeral_events() {
        let c = config(
            "[kafka]\negress_namespaces = [\"chat\", \"\", \"live\"]\n[[namespaces]]\nname = \"chat\"\n[[namespaces]]\nname = \"live\"\nhistory_size = 0\n[[namespaces]]\nname = \"other\"\n",
        );
        let f = Filter::new(&c).unwrap();
        assert!(f.accepts("chat:team", 3));
        assert!(!f.accepts("chat:team", 0), "typing indicator");
        assert!(f.accepts("news", 1));
        assert!(f.accepts("live:x", 0), "no history, no offsets");
        assert!(!f.accepts("other:x", 1));
        let c = config("[kafka]\negress_namespaces = [\"nope\"]\n");
        assert!(Filter::new(&c).is_err());
    }

    #[test]
    fn value_embeds_json_data_and_base64_otherwise() {
        let mut p = Publication {
            data: Bytes::from_static(br#"{"text":"hi"}"#),
            offset: 7,
            ..Default::default()
        };
        p.info = Some(ClientInfo {
            user: "alice".into(),
            client: "c1".into(),
            ..Default::default()
        });
        let item = Item {
            channel: "chat:team".into(),
            publication: Arc::new(p),
            epoch: "e1".into(),
            timestamp_ms: 1000,
        };
        let v: serde_json::Value = serde_json::from_slice(&encode(&item).unwrap()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"channel": "chat:team", "offset": 7, "epoch": "e1",
                "data": {"text": "hi"}, "info": {"user": "alice", "client": "c1"}, "timestamp": 1000})
        );
        let item = Item {
            publication: Arc::new(Publication {
                data: Bytes::from_static(&[0xff, 0x00]),
                ..Default::default()
            }),
            ..item
        };
        let v: serde_json::Value = serde_json::from_slice(&encode(&item).unwrap()).unwrap();
        assert_eq!(v["b64data"], "/wA=");
        assert!(v.get("data").is_none());
    }
}
