//! The dispatcher: takes due jobs from the durable queue and sends them, with bounded
//! concurrency per provider, retries with exponential backoff and jitter (never sooner
//! than a provider's Retry-After), and removal of devices whose token is dead.
//!
//! A job leaves the queue only after its outcome is known (delivered, given up on, or
//! its token removed), so a crash re-sends what was in flight: at-least-once. The
//! in-flight set lives in memory and only keeps this process from taking its own sends
//! twice; which node may take a job is the queue's business (the SQLite queue has one
//! consumer, the Redis queue hands each entry to one node of its consumer group).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::queue::PushQueue;
use super::{now_ms, Finish, Job, Provider, PushProvider, PushStore, SendError};
use crate::metrics as m;

/// Longest sleep of an idle provider loop: a bound, in case a wake-up was missed.
const IDLE_POLL: Duration = Duration::from_secs(1);
const DEPTH_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug, Clone)]
pub struct DispatchConfig {
    pub concurrency: usize,
    pub max_attempts: u32,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
}

impl DispatchConfig {
    pub fn from_config(c: &crate::config::PushConfig) -> DispatchConfig {
        DispatchConfig {
            concurrency: c.concurrency,
            max_attempts: c.max_attempts,
            backoff_min: c.backoff_min,
            backoff_max: c.backoff_max,
        }
    }

    /// The delay before retry number `attempts` (1 = the first retry): exponential,
    /// capped, with "equal jitter" (half fixed, half random) so that a burst of
    /// failures does not come back as a burst; at least `after` (Retry-After).
    pub fn delay(&self, attempts: u32, after: Option<Duration>) -> Duration {
        let exp = self
            .backoff_min
            .saturating_mul(1u32 << attempts.saturating_sub(1).min(20));
        let base = exp.min(self.backoff_max);
        let half = base / 2;
        let jitter = rand::thread_rng().gen_range(0..=half.as_millis() as u64);
        let d = half + Duration::from_millis(jitter);
        d.max(after.unwrap_or_default())
    }
}

/// Wakes a provider's loop when jobs were queued for it.
#[derive(Clone, Default)]
pub struct Waker(Arc<HashMap<Provider, Arc<Notify>>>);

impl Waker {
    pub fn wake(&self, p: Provider) {
        if let Some(n) = self.0.get(&p) {
            // notify_one keeps a permit when no one waits yet: a wake-up that comes
            // before the loop sleeps is not lost.
            n.notify_one();
        }
    }
}

pub struct Dispatcher {
    waker: Waker,
    cancel: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// Sends in flight, all providers: read by `idle()`.
    inflight: Arc<parking_lot::Mutex<HashSet<String>>>,
}

struct Shared {
    queue: Arc<dyn PushQueue>,
    /// Devices: a dead token's are removed.
    store: Arc<dyn PushStore>,
    cfg: DispatchConfig,
    cancel: CancellationToken,
    inflight: Arc<parking_lot::Mutex<HashSet<String>>>,
}

impl Dispatcher {
    /// Starts one loop per sender and the queue-depth gauge.
    pub fn start(
        queue: Arc<dyn PushQueue>,
        store: Arc<dyn PushStore>,
        senders: Vec<Arc<dyn PushProvider>>,
        cfg: DispatchConfig,
    ) -> Dispatcher {
        let cancel = CancellationToken::new();
        let inflight = Arc::new(parking_lot::Mutex::new(HashSet::new()));
        let notifies: HashMap<Provider, Arc<Notify>> = senders
            .iter()
            .map(|s| (s.provider(), Arc::new(Notify::new())))
            .collect();
        let waker = Waker(Arc::new(notifies));
        let shared = Arc::new(Shared {
            queue,
            store,
            cfg,
            cancel: cancel.clone(),
            inflight: inflight.clone(),
        });
        let mut tasks = Vec::new();
        for s in senders {
            let notify = waker.0.get(&s.provider()).cloned().unwrap_or_default();
            tasks.push(tokio::spawn(shared.clone().run(s, notify)));
        }
        tasks.push(tokio::spawn(shared.depth_gauge()));
        Dispatcher {
            waker,
            cancel,
            tasks,
            inflight,
        }
    }

    pub fn waker(&self) -> Waker {
        self.waker.clone()
    }

    /// The ids of jobs being sent (empty when the dispatcher is idle).
    pub fn inflight(&self) -> Arc<parking_lot::Mutex<HashSet<String>>> {
        self.inflight.clone()
    }

    /// Stops taking jobs and waits up to `grace` for sends in flight; whatever is not
    /// finished stays queued and is sent again after a restart.
    pub async fn stop(self, grace: Duration) {
        self.cancel.cancel();
        let all = futures_util::future::join_all(self.tasks);
        if tokio::time::timeout(grace, all).await.is_err() {
            tracing::warn!("push dispatcher did not stop in time");
        }
    }
}

impl Shared {
    async fn run(self: Arc<Self>, sender: Arc<dyn PushProvider>, wake: Arc<Notify>) {
        let p = sender.provider();
        let sem = Arc::new(Semaphore::new(self.cfg.concurrency));
        let refill_at = (self.cfg.concurrency / 4).max(1);
        let mut sends = JoinSet::new();
        loop {
            while sends.try_join_next().is_some() {}
            if self.cancel.is_cancelled() {
                break;
            }
            let mut sleep = IDLE_POLL;
            let free = sem.available_permits();
            // Refill in batches: a query per finished send would read the queue's head
            // again for every push.
            let busy = self.cfg.concurrency - free;
            if free > 0 && (busy == 0 || free >= refill_at) {
                let skip = self.inflight.lock().clone();
                match self.queue.due(p, now_ms(), free, skip).await {
                    Ok((jobs, next)) => {
                        let fresh: Vec<Job> = {
                            let inflight = self.inflight.lock();
                            jobs.into_iter()
                                .filter(|j| !inflight.contains(&j.id))
                                .take(free)
                                .collect()
                        };
                        if !fresh.is_empty() {
                            for job in fresh {
                                let Ok(permit) = sem.clone().try_acquire_owned() else {
                                    break;
                                };
                                self.inflight.lock().insert(job.id.clone());
                                let (me, s, w) = (self.clone(), sender.clone(), wake.clone());
                                sends.spawn(async move { me.send_one(s, job, permit, w).await });
                            }
                            continue;
                        }
                        if let Some(next) = next {
                            let wait = Duration::from_millis((next - now_ms()).max(0) as u64);
                            sleep = sleep.min(wait);
                        }
                    }
                    Err(e) => {
                        tracing::warn!(cause = %e, provider = p.as_str(), "push queue read failed");
                    }
                }
            }
            tokio::select! {
                _ = wake.notified() => {}
                _ = tokio::time::sleep(sleep) => {}
                _ = self.cancel.cancelled() => break,
            }
        }
        // Let sends in flight record their outcome (bounded by the HTTP timeout).
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            while sends.join_next().await.is_some() {}
        })
        .await;
    }

    async fn send_one(
        self: Arc<Self>,
        sender: Arc<dyn PushProvider>,
        job: Job,
        permit: OwnedSemaphorePermit,
        wake: Arc<Notify>,
    ) {
        let p = sender.provider();
        let label = p.as_str();
        let started = Instant::now();
        let result = sender.send(&job.token, &job.notification).await;
        metrics::histogram!(m::PUSH_PROVIDER_SECONDS, "provider" => label)
            .record(started.elapsed().as_secs_f64());
        let finish = match result {
            Ok(()) => {
                metrics::counter!(m::PUSH_SENT_TOTAL, "provider" => label).increment(1);
                if let Some(at) = job.notification.published_ms {
                    let secs = (now_ms() - at).max(0) as f64 / 1000.0;
                    metrics::histogram!(m::PUSH_PUBLISH_TO_SEND_SECONDS, "provider" => label)
                        .record(secs);
                }
                Finish::Done
            }
            Err(SendError::InvalidToken { reason }) => {
                metrics::counter!(m::PUSH_FAILED_TOTAL, "provider" => label, "reason" => reason.clone())
                    .increment(1);
                match self.store.remove_token(p, &job.token).await {
                    Ok(n) => {
                        tracing::info!(provider = label, device = %job.device_id, reason, "push token removed");
                        metrics::counter!(m::PUSH_TOKENS_REMOVED_TOTAL, "provider" => label)
                            .increment(n);
                    }
                    Err(e) => tracing::warn!(cause = %e, "push token removal failed"),
                }
                if let Err(e) = self.queue.forget_token(p, &job.token).await {
                    tracing::warn!(cause = %e, "dropping a dead token's pushes failed");
                }
                Finish::Done
            }
            Err(SendError::Retry { reason, after }) => {
                let attempts = job.attempts + 1;
                if attempts >= self.cfg.max_attempts {
                    tracing::warn!(provider = label, device = %job.device_id, reason, attempts, "push given up");
                    metrics::counter!(m::PUSH_FAILED_TOTAL, "provider" => label, "reason" => "exhausted")
                        .increment(1);
                    Finish::Done
                } else {
                    metrics::counter!(m::PUSH_RETRIES_TOTAL, "provider" => label, "reason" => reason)
                        .increment(1);
                    let delay = self.cfg.delay(attempts, after);
                    Finish::Retry {
                        due_ms: now_ms() + delay.as_millis() as i64,
                        attempts,
                    }
                }
            }
            Err(SendError::Fatal { reason }) => {
                tracing::warn!(provider = label, device = %job.device_id, reason, "push dropped");
                metrics::counter!(m::PUSH_FAILED_TOTAL, "provider" => label, "reason" => reason)
                    .increment(1);
                Finish::Done
            }
        };
        let id = job.id.clone();
        if let Err(e) = self.queue.finish(vec![(job, finish)]).await {
            // The job stays queued as it was and is sent again: at-least-once.
            tracing::warn!(cause = %e, "push job outcome not recorded");
        }
        self.inflight.lock().remove(&id);
        drop(permit);
        wake.notify_one();
    }

    async fn depth_gauge(self: Arc<Self>) {
        loop {
            if let Ok(depths) = self.queue.depth().await {
                for p in Provider::ALL {
                    let n = depths.iter().find(|(q, _)| *q == p).map_or(0, |(_, n)| *n);
                    metrics::gauge!(m::PUSH_QUEUE_DEPTH, "provider" => p.as_str()).set(n as f64);
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(DEPTH_EVERY) => {}
                _ = self.cancel.cancelled() => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_is_capped_and_honours_retry_after() {
        let cfg = DispatchConfig {
            concurrency: 1,
            max_attempts: 10,
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(1),
        };
        for _ in 0..50 {
            let d1 = cfg.delay(1, None);
            assert!(d1 >= Duration::from_millis(50) && d1 <= Duration::from_millis(100));
            let d3 = cfg.delay(3, None);
            assert!(d3 >= Duration::from_millis(200) && d3 <= Duration::from_millis(400));
            let d9 = cfg.delay(9, None);
            assert!(d9 <= Duration::from_secs(1));
            assert_eq!(
                cfg.delay(1, Some(Duration::from_secs(7))),
                Duration::from_secs(7)
            );
        }
    }
}
