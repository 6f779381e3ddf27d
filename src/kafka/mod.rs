//! Kafka: backend events in (ingest), chat events out (egress). docs/KAFKA.md is the
//! user's guide; this is how it works.
//!
//! ```text
//! topic partition --librdkafka--> its own queue --worker task--> api::methods::call --> node
//!   (fetched ahead up to kafka.partition_buffer)   \--never appliable--> dead-letter topic
//! poll thread: rebalances (split queues, stop workers), statistics, and commits what
//!   workers applied (every commit_interval, on rebalance, at shutdown)
//!
//! node fan-out --EgressObserver::try_send--> bounded buffer --producer task--> egress topic
//! ```
//!
//! - [`ingest`]: the consumer group. One OS thread polls librdkafka (rebalance, stats
//!   and commit callbacks run there and may block briefly without stalling the async
//!   runtime), gives each assigned partition its own librdkafka queue and worker, and
//!   commits their applied offsets.
//! - [`partition`]: one task per assigned partition takes records from its queue when
//!   ready, applies them strictly in order, retries temporary failures and
//!   dead-letters records that can never apply.
//! - [`commit`]: offset commits whose answer is known, without blocking the poll thread.
//! - [`record`]: record value -> server API command, and a result -> what to do (pure).
//! - [`dlq`]: the dead-letter producer.
//! - [`egress`]: the publication observer and its producer task.
//! - [`health`]: the dependency state `/ready` reports, derived from librdkafka's stats.
//! - [`client`]: librdkafka settings shared by every client, and log routing.
//!
//! The node knows nothing of Kafka: ingest calls the server API entry point like HTTP
//! does, egress is a [`crate::node::observer::PublicationObserver`].

pub mod client;
mod commit;
mod dlq;
pub mod egress;
pub mod health;
mod ingest;
mod partition;
pub mod record;

use std::time::Duration;

use crate::config::KafkaConfig;
use crate::node::Node;

pub use client::check_client_options;
pub use health::{KafkaHealth, Status};

/// How long shutdown waits for ingest to finish its current records, commit and leave
/// the group. Past it, shutdown goes on (what was not committed is applied again by
/// the next owner, harmlessly for keyed publishes).
const INGEST_STOP_TIMEOUT: Duration = Duration::from_secs(8);
/// How long shutdown waits for the egress buffer to drain and be confirmed.
const EGRESS_STOP_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum KafkaError {
    /// librdkafka refused the configuration (a bad `kafka.client_options` entry).
    #[error("kafka client: {0}")]
    Client(#[from] rdkafka::error::KafkaError),
    /// A produce or its delivery failed.
    #[error("kafka delivery: {0}")]
    Delivery(rdkafka::error::KafkaError),
    #[error("kafka.egress_namespaces: {0}")]
    Namespace(String),
    #[error("cannot start the kafka poll thread: {0}")]
    Thread(std::io::Error),
}

/// The running Kafka components of one Herald. Dropping it tells them to stop without
/// waiting; `stop_ingest` and `stop_egress` stop them in order and wait (bounded).
pub struct Kafka {
    ingest: Option<ingest::Ingest>,
    egress: Option<egress::Egress>,
    health: KafkaHealth,
}

impl Kafka {
    /// Starts egress (so that ingested publications are produced too), then ingest.
    /// Needs a Tokio runtime. Unreachable brokers are no error: the clients keep
    /// retrying in the background and [`KafkaHealth`] says so.
    pub fn start(config: &KafkaConfig, node: &Node) -> Result<Kafka, KafkaError> {
        let health = KafkaHealth::default();
        let egress = if config.egress_enabled {
            Some(egress::Egress::start(config, node, health.clone())?)
        } else {
            None
        };
        let ingest = if config.ingest_enabled {
            Some(ingest::Ingest::start(config, node.clone(), health.clone())?)
        } else {
            None
        };
        Ok(Kafka {
            ingest,
            egress,
            health,
        })
    }

    /// The state `/ready` reports.
    pub fn health(&self) -> KafkaHealth {
        self.health.clone()
    }

    /// Stops consuming: workers finish the record they are applying, applied offsets are
    /// committed, the consumer leaves its group. Called before clients are drained.
    pub async fn stop_ingest(&mut self) {
        if let Some(ingest) = self.ingest.take() {
            ingest.stop(INGEST_STOP_TIMEOUT).await;
        }
    }

    /// Produces what is still buffered and waits for the confirmations. Called last,
    /// when nothing publishes any more.
    pub async fn stop_egress(&mut self) {
        if let Some(egress) = self.egress.take() {
            egress.stop(EGRESS_STOP_TIMEOUT).await;
        }
    }
}
