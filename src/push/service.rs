//! Starting and stopping push, and the handle the server API and the gateway use.
//!
//! The node knows nothing of push (calls go one way): the service is found by the
//! node's uid in a process-wide map, so API methods and RPC handlers that get only a
//! `Node` can reach it. Several nodes in one process (the tests) each have their own.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Weak};
use std::time::Duration;

use super::apns::ApnsSender;
use super::dispatcher::{DispatchConfig, Dispatcher, Waker};
use super::fallback::Fallback;
use super::fcm::FcmSender;
use super::queue::PushQueue;
use super::redis_queue::RedisQueue;
use super::{Device, DeviceFilter, NewJob, Provider, PushProvider, PushStore, PushStoreError};
use crate::cluster::redis::Redis;
use crate::config::Config;
use crate::metrics as m;
use crate::node::Node;
use crate::store::push_sqlite::{PushSqliteOptions, SqlitePushStore};

/// A push setting that cannot be used; names the config key.
#[derive(Debug, thiserror::Error)]
#[error("push config `{key}`: {reason}")]
pub struct SetupError {
    pub key: &'static str,
    pub reason: String,
}

impl SetupError {
    pub fn new(key: &'static str, reason: impl std::fmt::Display) -> SetupError {
        SetupError {
            key,
            reason: reason.to_string(),
        }
    }
}

/// Devices per page when a whole audience is read.
const PAGE: usize = 1000;

/// What the API, the gateway and the fallback share.
pub struct PushService {
    store: Arc<dyn PushStore>,
    queue: Arc<dyn PushQueue>,
    providers: Vec<Provider>,
    waker: Waker,
    ttl: Duration,
    /// The dispatcher's sends in flight.
    inflight: Arc<parking_lot::Mutex<std::collections::HashSet<String>>>,
    /// Publications handed to the fallback and not resolved yet.
    pub(super) pending: std::sync::atomic::AtomicUsize,
}

static SERVICES: LazyLock<parking_lot::RwLock<HashMap<String, Weak<PushService>>>> =
    LazyLock::new(Default::default);

/// The push service of `node`, when push is configured.
pub fn for_node(node: &Node) -> Option<Arc<PushService>> {
    by_uid(node.uid())
}

/// The push service of the node with this uid (the server API `info` shows it).
pub fn by_uid(uid: &str) -> Option<Arc<PushService>> {
    SERVICES.read().get(uid).and_then(Weak::upgrade)
}

impl PushService {
    pub fn store(&self) -> &Arc<dyn PushStore> {
        &self.store
    }

    /// Providers with credentials: jobs are queued for these only.
    pub fn providers(&self) -> Vec<Provider> {
        self.providers.clone()
    }

    /// Unix seconds at which a notification queued now expires (`push.ttl`).
    pub fn expire_at(&self) -> i64 {
        super::now_ms() / 1000 + self.ttl.as_secs() as i64
    }

    /// Every device matching `filter`, page by page.
    pub async fn devices(&self, filter: DeviceFilter) -> Result<Vec<Device>, PushStoreError> {
        let mut out = Vec::new();
        let mut cursor = String::new();
        loop {
            let page = self.store.list(&filter, &cursor, PAGE, false).await?;
            out.extend(page.items);
            if page.next_cursor.is_empty() {
                return Ok(out);
            }
            cursor = page.next_cursor;
        }
    }

    /// Queues jobs durably (those for unconfigured providers are skipped) and wakes the
    /// dispatcher. Returns how many were queued.
    pub async fn enqueue(
        &self,
        mut jobs: Vec<NewJob>,
        source: &'static str,
    ) -> Result<u64, PushStoreError> {
        jobs.retain(|j| self.providers.contains(&j.provider));
        let mut per: HashMap<Provider, u64> = HashMap::new();
        for j in &jobs {
            *per.entry(j.provider).or_default() += 1;
        }
        let n = self.queue.enqueue(jobs).await?;
        for (p, k) in per {
            metrics::counter!(m::PUSH_QUEUED_TOTAL, "provider" => p.as_str(), "source" => source)
                .increment(k);
            self.waker.wake(p);
        }
        Ok(n)
    }

    /// True when nothing is queued or in flight (for tests and shutdown logs).
    pub async fn idle(&self) -> bool {
        use std::sync::atomic::Ordering;
        if self.pending.load(Ordering::SeqCst) > 0 || !self.inflight.lock().is_empty() {
            return false;
        }
        matches!(self.queue.depth().await, Ok(d) if d.iter().all(|(_, n)| *n == 0))
    }

    /// Removes the devices matching `filter` (ids and users only) and drops their
    /// queued pushes; returns how many devices went.
    pub async fn remove_devices(&self, filter: &DeviceFilter) -> Result<u64, PushStoreError> {
        let gone = if filter.is_empty() {
            Vec::new()
        } else {
            self.devices(filter.clone()).await?
        };
        let n = self.store.remove(filter).await?;
        for d in gone {
            self.queue.forget_token(d.provider, &d.token).await?;
        }
        Ok(n)
    }
}

/// Push running for one node: stop it after the clients are gone.
pub struct PushRuntime {
    service: Arc<PushService>,
    dispatcher: Dispatcher,
    fallback: Fallback,
    node_uid: String,
}

impl PushRuntime {
    /// Drains the fallback's queue into the durable queue, then stops the dispatcher
    /// (sends in flight get a moment; unfinished ones stay queued for the next start).
    pub async fn stop(self) {
        self.fallback.stop().await;
        self.dispatcher.stop(Duration::from_secs(5)).await;
        SERVICES.write().remove(&self.node_uid);
        drop(self.service);
    }
}

/// Starts push for `node` when a provider is configured: opens the device registry and
/// the queue (`store.path/push.db`; in cluster mode, given `redis`, both in Redis),
/// builds the senders (failing on unreadable keys), starts the dispatcher and hooks the
/// fallback into the node's publications.
pub async fn start(
    config: &Config,
    node: &Node,
    redis: Option<Arc<Redis>>,
) -> Result<Option<PushRuntime>, SetupError> {
    let push = &config.push;
    if !push.enabled() {
        return Ok(None);
    }
    let mut senders: Vec<Arc<dyn PushProvider>> = Vec::new();
    if !push.apns.key_file.is_empty() {
        senders.push(Arc::new(ApnsSender::from_config(&push.apns)?));
    }
    if !push.fcm.service_account_file.is_empty() {
        senders.push(Arc::new(FcmSender::from_config(&push.fcm)?));
    }
    let (store, queue, place): (Arc<dyn PushStore>, Arc<dyn PushQueue>, String) = match redis {
        Some(redis) => {
            let queue = RedisQueue::new(redis.clone(), node.uid(), push.visibility_timeout);
            let devices = super::redis_devices::RedisDevices::new(redis);
            (Arc::new(devices), Arc::new(queue), "redis".into())
        }
        None => {
            let path = std::path::Path::new(&config.store.path).join("push.db");
            let store = SqlitePushStore::open(PushSqliteOptions {
                path: path.clone(),
                sync_full: config.store.sync != "normal",
            })
            .map_err(|e| SetupError::new("store.path", e))?;
            let store = Arc::new(store);
            (store.clone(), store, path.display().to_string())
        }
    };
    let providers: Vec<Provider> = senders.iter().map(|s| s.provider()).collect();
    let dispatcher = Dispatcher::start(
        queue.clone(),
        store.clone(),
        senders,
        DispatchConfig::from_config(push),
    );
    let service = Arc::new(PushService {
        store,
        queue,
        providers: providers.clone(),
        waker: dispatcher.waker(),
        ttl: push.ttl,
        inflight: dispatcher.inflight(),
        pending: Default::default(),
    });
    let (observer, fallback) =
        Fallback::start(node.clone(), service.clone(), push.fallback_queue_len);
    node.add_observer(observer);
    SERVICES
        .write()
        .insert(node.uid().to_string(), Arc::downgrade(&service));
    for p in Provider::ALL {
        metrics::counter!(m::PUSH_FAILED_TOTAL, "provider" => p.as_str(), "reason" => "exhausted")
            .absolute(0);
        metrics::counter!(m::PUSH_SENT_TOTAL, "provider" => p.as_str()).absolute(0);
        metrics::counter!(m::PUSH_TOKENS_REMOVED_TOTAL, "provider" => p.as_str()).absolute(0);
    }
    metrics::counter!(m::PUSH_FALLBACK_DROPPED_TOTAL).absolute(0);
    tracing::info!(
        queue = %place,
        providers = ?providers.iter().map(|p| p.as_str()).collect::<Vec<_>>(),
        "push notifications on"
    );
    Ok(Some(PushRuntime {
        service,
        dispatcher,
        fallback,
        node_uid: node.uid().to_string(),
    }))
}
