//! One worker task per assigned partition: takes its records from the partition's own
//! librdkafka queue when it is ready for them, applies them strictly in order, one at a
//! time, and records how far it got; the poll thread commits that.
//!
//! Backpressure is librdkafka's: a record stays in the partition's queue until the
//! worker takes it, and librdkafka stops fetching the partition while that queue holds
//! `queued.min.messages` records or `queued.max.messages.kbytes` (ingest.rs derives both
//! from `kafka.partition_buffer`). No pause, no resume: a resumed partition waited up to
//! a second for librdkafka to notice (docs/BENCHMARKS.md, "Kafka ingest").
//!
//! A record ends in one of two ways: applied (or, when it can never apply,
//! dead-lettered), and then its offset counts as done; or the worker is stopped first
//! (revoke, shutdown), and then it does not, so the partition's next owner applies it
//! again. A temporary failure is retried with backoff for as long as it takes: nothing
//! after the record is applied or committed meanwhile.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Condvar, Mutex};
use rand::Rng;
use rdkafka::message::{Headers, OwnedMessage};
use rdkafka::Message;
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;

use super::dlq::DeadLetters;
use super::record::{self, Outcome, IDEMPOTENCY_HEADERS};
use crate::api::methods::{call, ApiError};
use crate::metrics as m;
use crate::node::Node;

/// Records a worker takes from librdkafka at once: amortises the queue lock, and is
/// small enough that the records taken and not yet applied stay few.
const BATCH: usize = 64;
/// First retry delay of a record that failed for a temporary reason.
const BACKOFF_MIN: Duration = Duration::from_millis(100);

/// What every worker shares.
pub struct Applier {
    pub node: Node,
    /// Bounds the records being applied at once across partitions (`kafka.max_in_flight`).
    pub permits: Semaphore,
    pub dlq: Option<DeadLetters>,
    pub backoff_max: Duration,
}

/// Where a worker takes its records: the partition's own librdkafka queue (ingest.rs).
/// A trait so that this file does not depend on the consumer's context type.
pub trait Source: Send {
    /// The next fetched record, without waiting; None when none is queued.
    fn next(&self) -> Option<OwnedMessage>;
}

/// Per-topic metric handles, looked up once per partition rather than per record.
struct Counters {
    consumed: metrics::Counter,
    applied: metrics::Counter,
    invalid: metrics::Counter,
    retryable: metrics::Counter,
    dead_lettered: metrics::Counter,
}

impl Counters {
    fn new(topic: &str) -> Counters {
        let t = topic.to_string();
        Counters {
            consumed: metrics::counter!(m::KAFKA_RECORDS_CONSUMED_TOTAL, "topic" => t.clone()),
            applied: metrics::counter!(m::KAFKA_RECORDS_APPLIED_TOTAL, "topic" => t.clone()),
            invalid: metrics::counter!(m::KAFKA_RECORDS_FAILED_TOTAL, "topic" => t.clone(), "kind" => "invalid"),
            retryable: metrics::counter!(m::KAFKA_RECORDS_FAILED_TOTAL, "topic" => t.clone(), "kind" => "retryable"),
            dead_lettered: metrics::counter!(m::KAFKA_RECORDS_DEAD_LETTERED_TOTAL, "topic" => t),
        }
    }
}

/// Creates a topic's series at zero, so alerts see the first increase.
pub fn zero_series(topic: &str) {
    let c = Counters::new(topic);
    for counter in [
        c.consumed,
        c.applied,
        c.invalid,
        c.retryable,
        c.dead_lettered,
    ] {
        counter.increment(0);
    }
}

/// The worker's feed. parking_lot Mutex: held while taking records without waiting
/// (never across await) and by the poll thread to take the source away on a revoke.
struct Feed {
    /// None once the poll thread took it away (revoke, shutdown): the worker stops.
    source: Option<Box<dyn Source>>,
    /// Offset of the last record taken, to drop a record librdkafka hands over twice.
    last_offset: i64,
}

pub struct Partition {
    pub topic: Arc<str>,
    pub partition: i32,
    feed: Mutex<Feed>,
    /// Wakes the worker when librdkafka queues a record for an empty queue (the queue's
    /// non-empty callback, on a librdkafka thread). Notify keeps the wake-up if the worker
    /// is not waiting yet, so one arriving between "queue empty" and the wait is not lost.
    wake: Arc<Notify>,
    stop: CancellationToken,
    /// Set when the worker has returned; the poll thread waits on it during a revoke.
    exited: Mutex<bool>,
    exited_cv: Condvar,
    /// One past the last record done (applied or dead-lettered): the offset to commit.
    /// -1 until a record is done.
    pub applied: AtomicI64,
    /// The offset the group last confirmed as committed (written on the poll thread).
    pub committed: AtomicI64,
    counters: Counters,
    pub lag: metrics::Gauge,
}

/// Whether a record at `offset` is new, given the last one taken; advances `last`.
fn fresh(last: &mut i64, offset: i64) -> bool {
    if offset <= *last {
        return false;
    }
    *last = offset;
    true
}

impl Partition {
    pub fn new(topic: &str, partition: i32) -> Partition {
        Partition {
            topic: Arc::from(topic),
            partition,
            feed: Mutex::new(Feed {
                source: None,
                last_offset: -1,
            }),
            wake: Arc::new(Notify::new()),
            stop: CancellationToken::new(),
            exited: Mutex::new(false),
            exited_cv: Condvar::new(),
            applied: AtomicI64::new(-1),
            committed: AtomicI64::new(-1),
            counters: Counters::new(topic),
            lag: metrics::gauge!(m::KAFKA_CONSUMER_LAG, "topic" => topic.to_string(), "partition" => partition.to_string()),
        }
    }

    pub fn is(&self, topic: &str, partition: i32) -> bool {
        self.partition == partition && &*self.topic == topic
    }

    /// What the source's non-empty callback calls.
    pub fn waker(&self) -> Arc<Notify> {
        self.wake.clone()
    }

    /// Gives the worker its records' source (poll thread, on assignment), replacing any
    /// earlier one, and wakes it: records may be queued already.
    pub fn set_source(&self, source: Box<dyn Source>) {
        self.feed.lock().source = Some(source);
        self.wake.notify_one();
    }

    /// Takes the source away (poll thread, on revoke and at shutdown, after `stop`), so
    /// that librdkafka's queue is released on this thread whatever the worker does.
    pub fn take_source(&self) -> Option<Box<dyn Source>> {
        self.feed.lock().source.take()
    }

    /// Tells the worker to stop after the record it is applying.
    pub fn stop(&self) {
        self.stop.cancel();
    }

    /// Blocks the calling (non-runtime) thread until the worker returned, up to
    /// `timeout`; false if it did not.
    pub fn wait_exited(&self, timeout: Duration) -> bool {
        let mut exited = self.exited.lock();
        if !*exited {
            self.exited_cv.wait_for(&mut exited, timeout);
        }
        *exited
    }

    /// Moves up to BATCH queued records into `batch` without waiting; false once the
    /// source is gone.
    fn take(&self, batch: &mut Vec<OwnedMessage>) -> bool {
        let mut feed = self.feed.lock();
        let Feed {
            source,
            last_offset,
        } = &mut *feed;
        let Some(source) = source else {
            return false;
        };
        while batch.len() < BATCH {
            let Some(msg) = source.next() else { break };
            if !fresh(last_offset, msg.offset()) {
                tracing::debug!(topic = %self.topic, partition = self.partition, offset = msg.offset(), "record fetched twice; dropped");
                continue;
            }
            self.counters.consumed.increment(1);
            batch.push(msg);
        }
        true
    }

    /// Fills `batch` with the next records, waiting for them; false once stopped.
    async fn next_batch(&self, batch: &mut Vec<OwnedMessage>) -> bool {
        loop {
            if self.stop.is_cancelled() || !self.take(batch) {
                return false;
            }
            if !batch.is_empty() {
                return true;
            }
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = self.stop.cancelled() => return false,
            }
        }
    }
}

/// Marks the worker exited however it returns (a panic included).
struct ExitGuard(Arc<Partition>);

impl Drop for ExitGuard {
    fn drop(&mut self) {
        *self.0.exited.lock() = true;
        self.0.exited_cv.notify_all();
    }
}

/// The worker: runs until the partition is stopped.
pub async fn run(part: Arc<Partition>, applier: Arc<Applier>) {
    let _guard = ExitGuard(part.clone());
    let mut batch = Vec::with_capacity(BATCH);
    while part.next_batch(&mut batch).await {
        for msg in batch.drain(..) {
            if !applier.process(&part, &msg).await {
                return;
            }
            part.applied.store(msg.offset() + 1, Ordering::Release);
            if part.stop.is_cancelled() {
                return;
            }
        }
    }
}

fn header_key(msg: &OwnedMessage) -> Option<String> {
    let headers = msg.headers()?;
    headers.iter().find_map(|h| {
        if IDEMPOTENCY_HEADERS.contains(&h.key) {
            h.value
                .and_then(|v| std::str::from_utf8(v).ok())
                .map(str::to_string)
        } else {
            None
        }
    })
}

/// Exponential backoff with ±20% jitter, so retrying nodes do not move in step.
struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    fn delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        d.mul_f64(rand::thread_rng().gen_range(0.8..1.2))
    }
}

impl Applier {
    /// Applies one record until it is done (true) or the partition is stopped (false).
    async fn process(&self, part: &Partition, msg: &OwnedMessage) -> bool {
        let header = header_key(msg);
        let command = record::decode(msg.payload(), header.as_deref(), || {
            format!("kafka:{}:{}:{}", msg.topic(), msg.partition(), msg.offset())
        });
        let mut backoff = Backoff {
            next: BACKOFF_MIN,
            max: self.backoff_max,
        };
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let outcome = match &command {
                Err(invalid) => Outcome::Invalid(invalid.clone()),
                Ok(cmd) => {
                    // A stopped partition may already belong to another owner (the
                    // revoke gave up waiting and committed): applying the record after
                    // that could put it behind later ones. So the wait for a permit ends
                    // with the stop, and nothing starts once stopped.
                    let permit = tokio::select! {
                        p = self.permits.acquire() => p,
                        _ = part.stop.cancelled() => return false,
                    };
                    let Ok(_permit) = permit else {
                        return false;
                    };
                    if part.stop.is_cancelled() {
                        return false;
                    }
                    record::classify(cmd.method, call(&self.node, cmd.method, &cmd.payload).await)
                }
            };
            let cause = match outcome {
                Outcome::Applied => {
                    part.counters.applied.increment(1);
                    return true;
                }
                Outcome::Invalid(e) => {
                    let sent = tokio::select! {
                        r = self.dead_letter(part, msg, &e) => r,
                        _ = part.stop.cancelled() => return false,
                    };
                    match sent {
                        Ok(()) => return true,
                        Err(cause) => cause,
                    }
                }
                Outcome::Retryable(e) => format!("{} {}", e.code, e.message),
            };
            part.counters.retryable.increment(1);
            let delay = backoff.delay();
            tracing::warn!(
                topic = %part.topic, partition = part.partition, offset = msg.offset(),
                attempt, cause, retry_in = ?delay,
                "kafka record failed for a temporary reason; retrying"
            );
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = part.stop.cancelled() => return false,
            }
        }
    }

    /// Sends an invalid record to the dead-letter topic (or, without one, skips it).
    /// Err: the dead-letter topic is unavailable, so the record must be retried.
    async fn dead_letter(
        &self,
        part: &Partition,
        msg: &OwnedMessage,
        e: &ApiError,
    ) -> Result<(), String> {
        let Some(dlq) = &self.dlq else {
            part.counters.invalid.increment(1);
            tracing::warn!(
                topic = %part.topic, partition = part.partition, offset = msg.offset(),
                code = e.code, error = e.message, "invalid kafka record skipped (no kafka.dlq_topic)"
            );
            return Ok(());
        };
        dlq.send(msg, e)
            .await
            .map_err(|err| format!("dead-letter topic unavailable: {err}"))?;
        part.counters.invalid.increment(1);
        part.counters.dead_lettered.increment(1);
        tracing::warn!(
            topic = %part.topic, partition = part.partition, offset = msg.offset(),
            code = e.code, error = e.message, "invalid kafka record dead-lettered"
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_at_or_below_the_last_offset_taken_are_dropped() {
        let mut last = -1;
        assert!(fresh(&mut last, 5));
        assert!(!fresh(&mut last, 5), "same offset twice");
        assert!(!fresh(&mut last, 3), "an older one");
        assert!(
            fresh(&mut last, 7),
            "a gap (compacted or transaction markers) is fine"
        );
        assert_eq!(last, 7);
    }

    #[test]
    fn backoff_doubles_up_to_its_max() {
        let mut b = Backoff {
            next: BACKOFF_MIN,
            max: Duration::from_millis(350),
        };
        let d: Vec<u128> = (0..4).map(|_| b.delay().as_millis()).collect();
        assert!((80..=120).contains(&d[0]), "{d:?}");
        assert!((160..=240).contains(&d[1]), "{d:?}");
        assert!(
            (280..=420).contains(&d[2]) && (280..=420).contains(&d[3]),
            "{d:?}"
        );
    }
}
