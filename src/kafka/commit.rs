//! Offset commits whose outcome Herald learns, without blocking the poll thread.
//!
//! Why not `Consumer::commit`: rust-rdkafka reports an asynchronous commit's result
//! through `ConsumerContext::commit_callback`, which only runs from inside `poll`. On a
//! revoke Herald must commit what was applied and learn that it landed *inside* the
//! rebalance callback, where polling again is not allowed; a synchronous commit there
//! waits for the group coordinator without any bound (forever during an outage). So each
//! commit gets its own reply queue (`rd_kafka_commit_queue`), which the poll thread checks
//! without waiting between polls, and waits on with a bound on a revoke and at shutdown.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::bindings as rd;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use super::partition::Partition;

/// A commit sent and not answered yet.
struct Pending {
    /// Owned reply queue: destroyed on drop. librdkafka counts references, so a reply
    /// arriving after that is simply discarded.
    queue: *mut rd::rd_kafka_queue_t,
    offsets: Vec<(Arc<Partition>, i64)>,
    sent: Instant,
}

// SAFETY: librdkafka queues may be used from any thread; `Pending` is only moved
// between threads, never shared.
unsafe impl Send for Pending {}

impl Drop for Pending {
    fn drop(&mut self) {
        // SAFETY: `queue` came from rd_kafka_queue_new and is destroyed exactly once.
        unsafe { rd::rd_kafka_queue_destroy(self.queue) };
    }
}

/// The commits in flight, owned by the poll thread.
#[derive(Default)]
pub struct Commits {
    pending: Vec<Pending>,
}

/// Applied offsets of `parts` not yet confirmed as committed.
pub fn due(parts: &[Arc<Partition>]) -> Vec<(Arc<Partition>, i64)> {
    parts
        .iter()
        .filter_map(|p| {
            let applied = p.applied.load(Ordering::Acquire);
            (applied >= 0 && applied > p.committed.load(Ordering::Acquire))
                .then(|| (p.clone(), applied))
        })
        .collect()
}

impl Commits {
    /// Sends a commit of `offsets` without waiting.
    pub fn send<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
        offsets: Vec<(Arc<Partition>, i64)>,
    ) {
        if offsets.is_empty() {
            return;
        }
        let mut tpl = TopicPartitionList::new();
        for (p, offset) in &offsets {
            if let Err(e) = tpl.add_partition_offset(&p.topic, p.partition, Offset::Offset(*offset))
            {
                tracing::warn!(cause = %e, "kafka commit list");
            }
        }
        let rk = consumer.client().native_ptr();
        // SAFETY: `rk` is the live consumer's handle; `tpl` outlives the call (librdkafka
        // copies it); the queue is owned by `Pending` from here on.
        let pending = Pending {
            queue: unsafe { rd::rd_kafka_queue_new(rk) },
            offsets,
            sent: Instant::now(),
        };
        let err = unsafe {
            rd::rd_kafka_commit_queue(rk, tpl.ptr(), pending.queue, None, std::ptr::null_mut())
        };
        if err != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
            tracing::warn!(error = ?err, "kafka commit not sent; retried at the next interval");
            return;
        }
        self.pending.push(pending);
    }

    /// Records the answers that arrived, waiting up to `wait` for the outstanding ones.
    /// True when nothing is pending any more.
    pub fn collect(&mut self, wait: Duration) -> bool {
        let deadline = Instant::now() + wait;
        let mut still = Vec::new();
        for pending in std::mem::take(&mut self.pending) {
            let left = deadline.saturating_duration_since(Instant::now());
            // SAFETY: the queue is alive (owned by `pending`); the event is destroyed
            // below, after its partition list was read.
            let ev = unsafe { rd::rd_kafka_queue_poll(pending.queue, left.as_millis() as i32) };
            if ev.is_null() {
                if pending.sent.elapsed() > Duration::from_secs(60) {
                    tracing::warn!(
                        "kafka commit unanswered for a minute (coordinator unavailable?)"
                    );
                }
                still.push(pending);
                continue;
            }
            unsafe { record(&pending, ev) };
            unsafe { rd::rd_kafka_event_destroy(ev) };
        }
        self.pending = still;
        self.pending.is_empty()
    }
}

/// Marks the partitions whose commit the answer confirms.
///
/// # Safety
/// `ev` must be a live event from a commit reply queue.
unsafe fn record(pending: &Pending, ev: *mut rd::rd_kafka_event_t) {
    let err = rd::rd_kafka_event_error(ev);
    if err != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
        tracing::warn!(error = ?err, "kafka commit failed; retried at the next interval");
        return;
    }
    let list = rd::rd_kafka_event_topic_partition_list(ev);
    if list.is_null() {
        return;
    }
    let list = &*list;
    let elems: &[rd::rd_kafka_topic_partition_t] = if list.elems.is_null() || list.cnt <= 0 {
        &[]
    } else {
        std::slice::from_raw_parts(list.elems, list.cnt as usize)
    };
    for e in elems {
        if e.err != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR || e.topic.is_null() {
            tracing::warn!(partition = e.partition, error = ?e.err, "kafka commit failed for a partition");
            continue;
        }
        let topic = std::ffi::CStr::from_ptr(e.topic).to_string_lossy();
        if let Some((p, offset)) = pending
            .offsets
            .iter()
            .find(|(p, _)| p.is(&topic, e.partition))
        {
            p.committed.fetch_max(*offset, Ordering::AcqRel);
        }
    }
}
