//! The consumer group: one OS thread polls librdkafka's consumer queue for rebalance,
//! statistics and error events, gives each assigned partition's worker that
//! partition's own librdkafka queue, and commits what the workers applied.
//!
//! Why a dedicated thread: librdkafka runs the rebalance, commit and statistics
//! callbacks inside `poll`, and a revoke must wait for the revoked partitions' workers
//! to finish their current record before committing. Blocking there is fine on this
//! thread and would stall an async runtime worker.
//!
//! Why a queue per partition (`split_partition_queue`): records stay in librdkafka until
//! the partition's worker takes them, so librdkafka's own prefetch bound
//! (`queued.min.messages`, `queued.max.messages.kbytes`, both per partition once the
//! queues are split) holds a slow partition back without Herald pausing it, and one
//! partition's backlog never stands in front of another's records. The split is done in
//! the assign callback, before librdkafka starts fetching: from then on librdkafka never
//! forwards that partition's records to the consumer queue (it keeps an application's
//! forwarding, `RD_KAFKA_Q_F_FWD_APP`), and it is done again on every assignment.
//!
//! At-least-once: auto-commit and auto offset store are off; the thread commits each
//! partition's `applied` offset (one past the last record done) every
//! `kafka.commit_interval`, when partitions are revoked (waiting for the answer, bounded)
//! and once more at shutdown. A record fetched but not applied is never committed, so
//! after a crash, rebalance or outage the partition's next owner starts from it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::base_consumer::PartitionQueue;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError as RdError, RDKafkaErrorCode};
use rdkafka::message::BorrowedMessage;
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::TopicPartitionList;
use rdkafka::util::Timeout;
use rdkafka::{ClientContext, Message};
use tokio::runtime::Handle;
use tokio::sync::{oneshot, Semaphore};

use super::client;
use super::commit::{self, Commits};
use super::dlq::DeadLetters;
use super::health::{self, KafkaHealth, Role, Status};
use super::partition::{self, Applier, Partition, Source};
use super::KafkaError;
use crate::config::KafkaConfig;
use crate::node::Node;

/// The longest `poll` of the consumer queue blocks when no event arrives: bounds how late
/// a stop request or a commit is noticed.
const POLL: Duration = Duration::from_millis(20);
/// How long librdkafka waits before it looks again at a partition whose queue was at its
/// bound (`fetch.queue.backoff.ms`, 1000 by default). Nothing wakes it when the worker
/// drains the queue, so a partition applied faster than one bound's worth per backoff
/// would sit idle for the rest of each backoff; 10 ms keeps a queue of
/// `partition_buffer` = 1000 records from running dry below 100,000 records/s, for one
/// cheap check per 10 ms per full partition.
const FETCH_QUEUE_BACKOFF_MS: &str = "10";
/// How long a revoke or shutdown waits for a worker's current record.
const WORKER_STOP_WAIT: Duration = Duration::from_secs(5);
/// How long a revoke or shutdown waits for the brokers to confirm a commit.
const COMMIT_WAIT: Duration = Duration::from_secs(3);

/// The running ingest.
pub struct Ingest {
    stop: Arc<AtomicBool>,
    done: Option<oneshot::Receiver<()>>,
}

impl Ingest {
    /// Creates the consumer, subscribes, and starts the poll thread. Needs a Tokio
    /// runtime: the partition workers run on it.
    pub fn start(
        config: &KafkaConfig,
        node: Node,
        health: KafkaHealth,
    ) -> Result<Ingest, KafkaError> {
        let dlq = if config.dlq_topic.is_empty() {
            None
        } else {
            Some(DeadLetters::new(config, health.clone())?)
        };
        let state = Arc::new(State {
            applier: Arc::new(Applier {
                node,
                permits: Semaphore::new(config.max_in_flight),
                dlq,
                backoff_max: config.retry_backoff_max,
            }),
            runtime: Handle::current(),
            consumer: OnceLock::new(),
            health: health.clone(),
            partitions: Mutex::new(Vec::new()),
            ever_joined: AtomicBool::new(false),
            closing: AtomicBool::new(false),
            commits: Mutex::new(Commits::default()),
        });
        let mut c = client::base(config);
        c.set("group.id", &config.group_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            // A new group starts at the beginning: events produced before Herald's
            // first start are delivered too.
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "false");
        prefetch_bounds(&mut c, config.partition_buffer);
        client::apply_options(&mut c, &config.client_options);
        let consumer: Arc<BaseConsumer<Ctx>> = Arc::new(c.create_with_context(Ctx {
            state: state.clone(),
        })?);
        // Weak: the consumer owns the context, which owns `state`.
        let _ = state.consumer.set(Arc::downgrade(&consumer));
        let topics: Vec<&str> = config.topics.iter().map(String::as_str).collect();
        consumer.subscribe(&topics)?;
        for topic in &config.topics {
            partition::zero_series(topic);
        }
        health.set(Role::Ingest, Status::Starting);
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = oneshot::channel();
        let commit_interval = config.commit_interval;
        let thread_stop = stop.clone();
        std::thread::Builder::new()
            .name("kafka-ingest".into())
            .spawn(move || {
                poll_loop(consumer, &thread_stop, commit_interval);
                let _ = tx.send(());
            })
            .map_err(KafkaError::Thread)?;
        tracing::info!(topics = ?config.topics, group = config.group_id, "kafka ingest started");
        Ok(Ingest {
            stop,
            done: Some(rx),
        })
    }

    /// Stops polling, lets the workers finish their current record, commits, leaves the
    /// group; waits up to `timeout` for all of it.
    pub async fn stop(mut self, timeout: Duration) {
        self.stop.store(true, Ordering::Release);
        if let Some(done) = self.done.take() {
            if tokio::time::timeout(timeout, done).await.is_err() {
                tracing::warn!("kafka ingest did not stop in time; going on with shutdown");
            }
        }
    }
}

impl Drop for Ingest {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
    }
}

/// How far librdkafka fetches ahead of a partition's worker: `partition_buffer` records
/// (`queued.min.messages`) or `partition_buffer` kilobytes (`queued.max.messages.kbytes`,
/// so 1 KB a record on average), whichever comes first, plus at most one fetch response
/// (`fetch.message.max.bytes`, 1 MiB). Both apply per partition because each partition
/// has its own queue. `kafka.client_options` may override any of them.
fn prefetch_bounds(c: &mut rdkafka::ClientConfig, partition_buffer: usize) {
    // Config validation keeps partition_buffer within 1..=10,000,000, librdkafka's range
    // for queued.min.messages; queued.max.messages.kbytes stops lower.
    let records = partition_buffer.clamp(1, 10_000_000);
    let kbytes = partition_buffer.clamp(1, (i32::MAX / 1024) as usize);
    c.set("queued.min.messages", records.to_string())
        .set("queued.max.messages.kbytes", kbytes.to_string())
        .set("fetch.queue.backoff.ms", FETCH_QUEUE_BACKOFF_MS);
}

fn poll_loop(consumer: Arc<BaseConsumer<Ctx>>, stop: &AtomicBool, commit_interval: Duration) {
    let state = consumer.context().state.clone();
    let mut next_commit = Instant::now() + commit_interval;
    while !stop.load(Ordering::Acquire) {
        match consumer.poll(POLL) {
            Some(Ok(msg)) => state.stray(&msg),
            Some(Err(e)) => state.poll_error(&e),
            None => {}
        }
        let now = Instant::now();
        if now >= next_commit {
            state.commit_periodic(&consumer);
            next_commit = now + commit_interval;
        }
    }
    state.shutdown(&consumer);
    // Dropping the consumer closes it: it leaves the group, so the partitions move to
    // the other nodes at once instead of after the session timeout. This is the last
    // strong reference: `shutdown` dropped every partition queue (each holds one).
    if Arc::strong_count(&consumer) > 1 {
        tracing::warn!("kafka consumer still referenced at shutdown; it leaves the group late");
    }
    drop(consumer);
    tracing::info!("kafka ingest stopped");
}

/// What the poll thread, the callbacks and the workers share.
struct State {
    applier: Arc<Applier>,
    runtime: Handle,
    /// Set right after creation; the assign callback needs the `Arc` to split queues
    /// (it is only handed `&BaseConsumer`).
    consumer: OnceLock<Weak<BaseConsumer<Ctx>>>,
    health: KafkaHealth,
    /// The assigned partitions. Touched by the poll thread (and its callbacks) only; a
    /// Mutex because the context must be Sync. Never held while calling librdkafka.
    partitions: Mutex<Vec<Arc<Partition>>>,
    ever_joined: AtomicBool,
    /// Shutdown began: health is left alone and revokes neither wait nor commit.
    closing: AtomicBool,
    /// Commits in flight (poll thread only; a Mutex for the same reason as above).
    commits: Mutex<Commits>,
}

impl State {
    fn find(&self, topic: &str, partition: i32) -> Option<Arc<Partition>> {
        self.partitions
            .lock()
            .iter()
            .find(|p| p.is(topic, partition))
            .cloned()
    }

    /// Registers a partition with its own queue and starts its worker.
    fn add(&self, consumer: &Arc<BaseConsumer<Ctx>>, topic: &str, partition: i32) {
        let part = Arc::new(Partition::new(topic, partition));
        if !give_queue(consumer, &part) {
            return;
        }
        self.partitions.lock().push(part.clone());
        self.runtime
            .spawn(partition::run(part, self.applier.clone()));
    }

    /// A record on the consumer queue. Cannot happen: every assigned partition's queue
    /// is split before librdkafka fetches it, and librdkafka never forwards a queue the
    /// application forwarded. Not applied here, as that could reorder the partition.
    fn stray(&self, msg: &BorrowedMessage<'_>) {
        tracing::error!(
            topic = msg.topic(),
            partition = msg.partition(),
            offset = msg.offset(),
            "kafka record arrived outside its partition queue; not applied"
        );
    }

    fn poll_error(&self, e: &RdError) {
        if let RdError::MessageConsumptionFatal(code) = e {
            self.health.set(
                Role::Ingest,
                Status::Degraded {
                    reason: format!("fatal consumer error: {code}"),
                },
            );
        }
        tracing::warn!(cause = %e, "kafka consumer error");
    }

    /// Every `commit_interval`: collects answers, and commits what moved unless a
    /// commit is still unanswered (during an outage one waits for the coordinator; the
    /// next one carries the newer offsets once it is back).
    fn commit_periodic(&self, consumer: &BaseConsumer<Ctx>) {
        let mut commits = self.commits.lock();
        if commits.collect(Duration::ZERO) {
            let parts = self.partitions.lock().clone();
            commits.send(consumer, commit::due(&parts));
        }
    }

    /// Commits what `parts` applied and waits (bounded) for the answers; false if some
    /// did not come.
    fn commit_and_wait(&self, consumer: &BaseConsumer<Ctx>, parts: &[Arc<Partition>]) -> bool {
        let mut commits = self.commits.lock();
        commits.send(consumer, commit::due(parts));
        commits.collect(COMMIT_WAIT) && commit::due(parts).is_empty()
    }

    /// Runs before librdkafka starts fetching the new partitions: each gets its queue
    /// and worker now, so none of its records reaches the consumer queue.
    fn assign(&self, tpl: &TopicPartitionList) {
        let Some(consumer) = self.consumer.get().and_then(Weak::upgrade) else {
            return;
        };
        let mut names = Vec::new();
        for elem in tpl.elements() {
            match self.find(elem.topic(), elem.partition()) {
                None => self.add(&consumer, elem.topic(), elem.partition()),
                // Still assigned (an assignment repeated without a revoke in between):
                // keep its worker and position, give it a fresh queue.
                Some(part) => {
                    give_queue(&consumer, &part);
                }
            }
            names.push(format!("{}/{}", elem.topic(), elem.partition()));
        }
        self.ever_joined.store(true, Ordering::Release);
        // Joined: records flow now; the next statistics confirm or correct this.
        if self.health.get(Role::Ingest) == Status::Starting {
            self.health.set(Role::Ingest, Status::Ok);
        }
        tracing::info!(partitions = ?names, "kafka partitions assigned");
    }

    /// Revoked partitions: stop their workers after the current record, wait, drop
    /// their queues (librdkafka discards what they still hold) and commit what they
    /// applied before the partitions move to another node.
    fn revoke(&self, consumer: &BaseConsumer<Ctx>, tpl: &TopicPartitionList) {
        let gone: Vec<(String, i32)> = tpl
            .elements()
            .iter()
            .map(|e| (e.topic().to_string(), e.partition()))
            .collect();
        let revoked: Vec<Arc<Partition>> = {
            let mut parts = self.partitions.lock();
            let (out, keep) = parts
                .drain(..)
                .partition(|p| gone.iter().any(|(t, n)| p.is(t, *n)));
            *parts = keep;
            out
        };
        stop_all(&revoked);
        for p in &revoked {
            p.lag.set(0.0);
        }
        if self.closing.load(Ordering::Acquire) || revoked.is_empty() {
            return;
        }
        if consumer.assignment_lost() {
            tracing::warn!("kafka assignment lost: applied offsets not committed (the next owner applies them again)");
            return;
        }
        if self.commit_and_wait(consumer, &revoked) {
            tracing::info!(
                partitions = revoked.len(),
                "kafka partitions revoked; applied offsets committed"
            );
        } else {
            tracing::warn!(partitions = revoked.len(), "kafka partitions revoked; commit refused or unanswered (the next owner applies those records again)");
        }
    }

    fn stats(&self, stats: &Statistics) {
        if self.closing.load(Ordering::Acquire) {
            return;
        }
        let parts = self.partitions.lock().clone();
        let assigned: Vec<(String, i32)> = parts
            .iter()
            .map(|p| (p.topic.to_string(), p.partition))
            .collect();
        let joined = self.ever_joined.load(Ordering::Acquire);
        self.health.set(
            Role::Ingest,
            health::consumer_status(stats, &assigned, joined),
        );
        for p in &parts {
            let Some(s) = stats
                .topics
                .get(&*p.topic)
                .and_then(|t| t.partitions.get(&p.partition))
            else {
                continue;
            };
            if s.hi_offset < 0 {
                continue;
            }
            let position = p.applied.load(Ordering::Acquire).max(s.committed_offset);
            let position = if position >= 0 { position } else { s.lo_offset };
            if position >= 0 {
                p.lag.set((s.hi_offset - position).max(0) as f64);
            }
        }
    }

    /// Stops every worker, commits what they applied, waits for the confirmation.
    fn shutdown(&self, consumer: &BaseConsumer<Ctx>) {
        self.closing.store(true, Ordering::Release);
        let parts = std::mem::take(&mut *self.partitions.lock());
        stop_all(&parts);
        if !self.commit_and_wait(consumer, &parts) {
            tracing::warn!("kafka: the last commit was not confirmed; the next owner may apply some records again");
        }
    }
}

/// Gives `part` its own librdkafka queue; librdkafka wakes the worker when records
/// arrive in it. False only for a topic name with a NUL byte, which config refuses.
fn give_queue(consumer: &Arc<BaseConsumer<Ctx>>, part: &Partition) -> bool {
    let Some(mut queue) = consumer.split_partition_queue(&part.topic, part.partition) else {
        tracing::error!(topic = %part.topic, partition = part.partition, "kafka partition queue unavailable; partition not consumed");
        return false;
    };
    let wake = part.waker();
    queue.set_nonempty_callback(move || wake.notify_one());
    part.set_source(Box::new(queue));
    true
}

/// Stops the workers after their current record, waits (bounded), and drops their
/// queues here, on the poll thread, even for a worker still applying: each queue holds
/// a reference to the consumer, which must close when the poll thread ends.
fn stop_all(parts: &[Arc<Partition>]) {
    for p in parts {
        p.stop();
    }
    // One deadline for all: waiting WORKER_STOP_WAIT per stuck partition could keep
    // the poll thread past max.poll.interval.ms and cost the whole assignment.
    let deadline = Instant::now() + WORKER_STOP_WAIT;
    for p in parts {
        if !p.wait_exited(deadline.saturating_duration_since(Instant::now())) {
            tracing::warn!(topic = %p.topic, partition = p.partition, "kafka worker still applying a record; not waiting longer");
        }
        drop(p.take_source());
    }
}

impl Source for PartitionQueue<Ctx> {
    fn next(&self) -> Option<rdkafka::message::OwnedMessage> {
        loop {
            match self.poll(Duration::ZERO)? {
                Ok(msg) => return Some(msg.detach()),
                // Per-partition fetch errors; librdkafka retries by itself.
                Err(e) => tracing::warn!(cause = %e, "kafka partition fetch error"),
            }
        }
    }
}

/// librdkafka's callbacks, all run on the poll thread.
struct Ctx {
    state: Arc<State>,
}

impl ClientContext for Ctx {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        client::log("ingest", level, fac, log_message);
    }

    fn stats(&self, statistics: Statistics) {
        self.state.stats(&statistics);
    }

    fn error(&self, error: RdError, reason: &str) {
        tracing::debug!(role = "ingest", %error, reason, "kafka client error");
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::AllBrokersDown)
            && !self.state.closing.load(Ordering::Acquire)
        {
            self.state.health.set(
                Role::Ingest,
                Status::Degraded {
                    reason: "all brokers down".into(),
                },
            );
        }
    }
}

impl ConsumerContext for Ctx {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(tpl) => self.state.revoke(consumer, tpl),
            Rebalance::Assign(tpl) => self.state.assign(tpl),
            Rebalance::Error(e) => tracing::warn!(cause = %e, "kafka rebalance error"),
        }
    }

    fn main_queue_min_poll_interval(&self) -> Timeout {
        Timeout::After(POLL)
    }
}
