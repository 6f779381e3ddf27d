//! The dead-letter topic: records that can never be applied go there unchanged (key,
//! value, headers) plus headers naming the error and where the record came from, so an
//! operator can fix and re-produce them.

use std::time::Duration;

use rdkafka::message::{Header, Headers, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use rdkafka::Message;

use super::client;
use super::egress::ProducerContext;
use super::health::{KafkaHealth, Role};
use super::KafkaError;
use crate::api::methods::ApiError;
use crate::config::KafkaConfig;

/// Headers Herald adds to a dead-lettered record.
pub const ERROR_CODE_HEADER: &str = "herald-error-code";
pub const ERROR_MESSAGE_HEADER: &str = "herald-error-message";
pub const SOURCE_TOPIC_HEADER: &str = "herald-source-topic";
pub const SOURCE_PARTITION_HEADER: &str = "herald-source-partition";
pub const SOURCE_OFFSET_HEADER: &str = "herald-source-offset";

/// A dead-letter send gives up after this long (the record is then retried): a stuck
/// send must not hide behind librdkafka's default of five minutes.
const DELIVERY_TIMEOUT_MS: &str = "30000";

pub struct DeadLetters {
    producer: FutureProducer<ProducerContext>,
    topic: String,
}

impl DeadLetters {
    pub fn new(config: &KafkaConfig, health: KafkaHealth) -> Result<DeadLetters, KafkaError> {
        let mut c = client::base(config);
        c.set("enable.idempotence", "true")
            .set("message.timeout.ms", DELIVERY_TIMEOUT_MS);
        client::apply_options(&mut c, &config.client_options);
        // The dead-letter producer's health shows through ingest (a failed send is
        // retried and counted there); its statistics are not needed.
        let producer = c.create_with_context(ProducerContext::new(Role::Ingest, health, false))?;
        Ok(DeadLetters {
            producer,
            topic: config.dlq_topic.clone(),
        })
    }

    /// Produces `msg` with `error` to the dead-letter topic and waits for the brokers'
    /// confirmation: the source record is committed only after that.
    pub async fn send(&self, msg: &OwnedMessage, error: &ApiError) -> Result<(), KafkaError> {
        let mut headers = OwnedHeaders::new();
        if let Some(original) = msg.headers() {
            for h in original.iter() {
                headers = headers.insert(Header {
                    key: h.key,
                    value: h.value,
                });
            }
        }
        let code = error.code.to_string();
        let partition = msg.partition().to_string();
        let offset = msg.offset().to_string();
        for (key, value) in [
            (ERROR_CODE_HEADER, code.as_str()),
            (ERROR_MESSAGE_HEADER, error.message.as_str()),
            (SOURCE_TOPIC_HEADER, msg.topic()),
            (SOURCE_PARTITION_HEADER, partition.as_str()),
            (SOURCE_OFFSET_HEADER, offset.as_str()),
        ] {
            headers = headers.insert(Header {
                key,
                value: Some(value),
            });
        }
        let mut record = FutureRecord::<[u8], [u8]>::to(&self.topic).headers(headers);
        if let Some(key) = msg.key() {
            record = record.key(key);
        }
        if let Some(value) = msg.payload() {
            record = record.payload(value);
        }
        self.producer
            .send(record, Timeout::After(Duration::from_secs(5)))
            .await
            .map(|_| ())
            .map_err(|(e, _)| KafkaError::Delivery(e))
    }
}
