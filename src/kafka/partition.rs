//! One worker task per assigned partition: applies its records strictly in order, one at
//! a time, and records how far it got; the poll thread commits that.
//!
//! A record ends in one of two ways: applied (or, when it can never apply,
//! dead-lettered), and then its offset counts as done; or the worker is stopped first
//! (revoke, shutdown), and then it does not, so the partition's next owner applies it
//! again. A temporary failure is retried with backoff for as long as it takes: nothing
//! after the record is applied or committed meanwhile.

use std::collections::VecDeque;
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

/// Records a worker takes from its queue at once.
const BATCH: usize = 256;
/// First retry delay of a record that failed for a temporary reason.
const BACKOFF_MIN: Duration = Duration::from_millis(100);

/// What every worker shares.
pub struct Applier {
    pub node: Node,
    /// Bounds the records being applied at once across partitions (`kafka.max_in_flight`).
    pub permits: Semaphore,
    pub dlq: Option<DeadLetters>,
    pub backoff_max: Duration,
    /// Partitions whose queue drained enough to fetch again; the poll thread resumes
    /// them (librdkafka's pause and resume belong to the thread that polls).
    pub resumes: Mutex<Vec<Arc<Partition>>>,
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

struct Queue {
    records: VecDeque<OwnedMessage>,
    /// Fetching is paused because the queue reached its bound.
    paused: bool,
    /// Offset of the last record queued, to drop a record librdkafka hands over twice.
    last_offset: i64,
}

/// What the poll thread should do after queueing a record.
#[derive(Debug, PartialEq, Eq)]
pub enum Queued {
    Ok,
    /// The queue is full: pause fetching this partition.
    Pause,
    /// Already queued once (an offset at or below the last one): dropped.
    Duplicate,
}

pub struct Partition {
    pub topic: Arc<str>,
    pub partition: i32,
    /// parking_lot Mutex: held only to move records in or out, never across await.
    queue: Mutex<Queue>,
    /// Wakes the worker when records arrive.
    wake: Notify,
    stop: CancellationToken,
    /// Set when the worker has returned; the poll thread waits on it during a revoke.
    exited: Mutex<bool>,
    exited_cv: Condvar,
    /// One past the last record done (applied or dead-lettered): the offset to commit.
    /// -1 until a record is done.
    pub applied: AtomicI64,
    /// The offset the group last confirmed as committed (written on the poll thread).
    pub committed: AtomicI64,
    capacity: usize,
    counters: Counters,
    pub lag: metrics::Gauge,
}

impl Partition {
    pub fn new(topic: &str, partition: i32, capacity: usize) -> Partition {
        Partition {
            topic: Arc::from(topic),
            partition,
            queue: Mutex::new(Queue {
                records: VecDeque::new(),
                paused: false,
                last_offset: -1,
            }),
            wake: Notify::new(),
            stop: CancellationToken::new(),
            exited: Mutex::new(false),
            exited_cv: Condvar::new(),
            applied: AtomicI64::new(-1),
            committed: AtomicI64::new(-1),
            capacity,
            counters: Counters::new(topic),
            lag: metrics::gauge!(m::KAFKA_CONSUMER_LAG, "topic" => topic.to_string(), "partition" => partition.to_string()),
        }
    }

    pub fn is(&self, topic: &str, partition: i32) -> bool {
        self.partition == partition && &*self.topic == topic
    }

    /// Queues a fetched record for the worker (poll thread).
    pub fn push(&self, msg: OwnedMessage) -> Queued {
        let mut q = self.queue.lock();
        if msg.offset() <= q.last_offset {
            return Queued::Duplicate;
        }
        self.counters.consumed.increment(1);
        q.last_offset = msg.offset();
        q.records.push_back(msg);
        let pause = !q.paused && q.records.len() >= self.capacity;
        if pause {
            q.paused = true;
        }
        drop(q);
        self.wake.notify_one();
        if pause {
            Queued::Pause
        } else {
            Queued::Ok
        }
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

    /// The next records, or None once stopped.
    async fn next_batch(self: &Arc<Self>, applier: &Applier) -> Option<Vec<OwnedMessage>> {
        loop {
            if self.stop.is_cancelled() {
                return None;
            }
            {
                let mut q = self.queue.lock();
                if !q.records.is_empty() {
                    let n = q.records.len().min(BATCH);
                    let batch: Vec<OwnedMessage> = q.records.drain(..n).collect();
                    if q.paused && q.records.len() <= self.capacity / 2 {
                        q.paused = false;
                        applier.resumes.lock().push(self.clone());
                    }
                    return Some(batch);
                }
            }
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = self.stop.cancelled() => return None,
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
    while let Some(batch) = part.next_batch(&applier).await {
        for msg in batch {
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
                    let Ok(_permit) = self.permits.acquire().await else {
                        return false;
                    };
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
    use rdkafka::message::Timestamp;

    fn msg(offset: i64) -> OwnedMessage {
        OwnedMessage::new(
            None,
            None,
            "t".into(),
            Timestamp::NotAvailable,
            0,
            offset,
            None,
        )
    }

    #[test]
    fn queue_pauses_at_capacity_and_drops_replayed_offsets() {
        let p = Partition::new("t", 0, 2);
        assert_eq!(p.push(msg(5)), Queued::Ok);
        assert_eq!(p.push(msg(5)), Queued::Duplicate);
        assert_eq!(p.push(msg(6)), Queued::Pause);
        assert_eq!(p.push(msg(7)), Queued::Ok, "pauses once");
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
