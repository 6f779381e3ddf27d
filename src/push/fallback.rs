//! The offline fallback: a publication in a namespace with `push = true` becomes a push
//! for every recipient who did not get it live.
//!
//! The observer runs on the sequencing path (the store's writer thread or under the
//! broker's channel lock), so it only filters by namespace and `try_send`s into a
//! bounded queue; when that queue is full the publication gets no push and
//! `herald_push_fallback_dropped_total` counts it. Resolver tasks take it from there:
//! recipients are the conversation's members (or the users a user-limited channel
//! names), minus the sender, minus users with a connection subscribed to the channel
//! (on this node, or in the channel's presence, which the Redis presence backend keeps
//! cluster-wide), minus users who muted it.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use serde::Deserialize;
use serde_json::Value;
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;

use super::service::PushService;
use super::template::{render, Context};
use super::{now_ms, DeviceFilter, NewJob, Notification};
use crate::metrics as m;
use crate::node::channels::ChannelRules;
use crate::node::observer::PublicationObserver;
use crate::node::Node;
use crate::protocol::messages::Publication;

/// The tag a server API publish with a `push` object carries to the fallback (JSON of
/// [`PushOverride`]).
pub const PUSH_TAG: &str = "herald.push";
/// Publications resolved at once: resolution reads the store (members, devices,
/// unread counts) and should not be one-at-a-time behind a slow read.
const RESOLVERS: usize = 8;
/// Body used when the templates render nothing: an alert needs some text.
const DEFAULT_BODY: &str = "New message";

/// A publisher's say over the push of one publication.
#[derive(Debug, Default, Deserialize, serde::Serialize)]
#[serde(default)]
pub struct PushOverride {
    pub title: Option<String>,
    pub body: Option<String>,
    pub data: HashMap<String, String>,
    /// No push at all for this publication.
    pub skip: bool,
}

struct Work {
    channel: String,
    publication: Arc<Publication>,
    at_ms: i64,
}

/// The observer the node calls.
pub struct Observer {
    tx: mpsc::Sender<Work>,
    service: Arc<PushService>,
    /// The node's channel rules, copied: holding the node here would make a cycle
    /// (the node holds its observers).
    rules: ChannelRules,
}

impl PublicationObserver for Observer {
    fn on_publication(&self, channel: &str, publication: &Arc<Publication>, _epoch: &str) {
        let Ok(options) = self.rules.options(channel) else {
            return;
        };
        // Offset 0 in a namespace with offsets is an ephemeral event (typing, a read
        // receipt), never a message.
        if !options.push || (publication.offset == 0 && options.history_enabled()) {
            return;
        }
        let work = Work {
            channel: channel.to_string(),
            publication: publication.clone(),
            at_ms: now_ms(),
        };
        // Counted before the send so that `idle()` never misses work in the queue.
        self.service.pending.fetch_add(1, Ordering::SeqCst);
        if self.tx.try_send(work).is_err() {
            self.service.pending.fetch_sub(1, Ordering::SeqCst);
            metrics::counter!(m::PUSH_FALLBACK_DROPPED_TOTAL).increment(1);
        }
    }
}

/// The resolver side; `stop` drains what is queued into the durable queue first.
pub struct Fallback {
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Fallback {
    pub fn start(
        node: Node,
        service: Arc<PushService>,
        queue_len: usize,
    ) -> (Arc<Observer>, Fallback) {
        let (tx, rx) = mpsc::channel(queue_len);
        let observer = Arc::new(Observer {
            tx,
            service: service.clone(),
            rules: ChannelRules::new(node.config()),
        });
        let cancel = CancellationToken::new();
        let task = tokio::spawn(resolve_loop(node, service, rx, cancel.clone()));
        (observer, Fallback { cancel, task })
    }

    pub async fn stop(self) {
        self.cancel.cancel();
        let _ = self.task.await;
    }
}

async fn resolve_loop(
    node: Node,
    service: Arc<PushService>,
    mut rx: mpsc::Receiver<Work>,
    cancel: CancellationToken,
) {
    let sem = Arc::new(Semaphore::new(RESOLVERS));
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        let work = tokio::select! {
            w = rx.recv() => w,
            _ = cancel.cancelled() => {
                // Whatever is queued still gets resolved: close, then drain.
                rx.close();
                rx.recv().await
            }
        };
        let Some(work) = work else { break };
        let Ok(permit) = sem.clone().acquire_owned().await else {
            break;
        };
        let (node, service) = (node.clone(), service.clone());
        tasks.spawn(async move {
            if let Err(e) = resolve(&node, &service, work).await {
                tracing::warn!(cause = %e, "push fallback failed");
            }
            service.pending.fetch_sub(1, Ordering::SeqCst);
            drop(permit);
        });
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
}

#[derive(Debug, thiserror::Error)]
enum ResolveError {
    #[error(transparent)]
    Node(#[from] crate::node::NodeError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Push(#[from] super::PushStoreError),
}

/// The users a channel's publications are for: named by a user-limited channel, or the
/// stored members of a conversation.
async fn audience(node: &Node, channel: &str) -> Result<Vec<String>, ResolveError> {
    if let Some((_, names)) = channel.rsplit_once('#') {
        return Ok(names
            .split(',')
            .filter(|u| !u.is_empty())
            .map(String::from)
            .collect());
    }
    if node.options(channel)?.members {
        return Ok(node.conversations()?.members(channel).await?);
    }
    Ok(Vec::new())
}

async fn resolve(node: &Node, service: &PushService, w: Work) -> Result<(), ResolveError> {
    let options = node.options(&w.channel)?;
    let p = &w.publication;
    let over: PushOverride = p
        .tags
        .get(PUSH_TAG)
        .and_then(|s| serde_json::from_str(s).ok())
        .unwrap_or_default();
    if over.skip {
        return Ok(());
    }
    let sender = p.info.as_ref().map_or("", |i| i.user.as_str());
    let mut users = audience(node, &w.channel).await?;
    users.sort();
    users.dedup();
    users.retain(|u| u != sender && !node.user_subscribed_locally(u, &w.channel));
    if users.is_empty() {
        return Ok(());
    }
    if options.presence {
        // Subscribers on other nodes: the channel's presence is cluster-wide with the
        // Redis presence backend (with the memory backend it repeats the local check).
        // On a presence error the push is sent: better twice than never.
        match node.presence(&w.channel).await {
            Ok(present) => {
                let online: HashSet<&str> = present.values().map(|c| c.user.as_str()).collect();
                users.retain(|u| !online.contains(u.as_str()));
            }
            Err(e) => tracing::debug!(cause = %e, "push fallback: presence unavailable"),
        }
        if users.is_empty() {
            return Ok(());
        }
    }
    let muted = service.store().muted(&users, &w.channel).await?;
    users.retain(|u| !muted.contains(u));
    let devices = service
        .devices(DeviceFilter {
            users,
            providers: service.providers(),
            ..Default::default()
        })
        .await?;
    if devices.is_empty() {
        return Ok(());
    }

    let data: Option<Value> = serde_json::from_slice(&p.data).ok();
    let info: Option<Value> = p
        .info
        .as_ref()
        .and_then(|i| serde_json::from_slice(&i.conn_info).ok());
    let ctx = Context {
        user: sender,
        channel: &w.channel,
        data: data.as_ref(),
        info: info.as_ref(),
    };
    let title = over
        .title
        .unwrap_or_else(|| render(&options.push_title, &ctx));
    let mut body = over
        .body
        .unwrap_or_else(|| render(&options.push_body, &ctx));
    if title.is_empty() && body.is_empty() {
        body = DEFAULT_BODY.into();
    }
    let mut extra: std::collections::BTreeMap<String, String> = over.data.into_iter().collect();
    extra.insert("channel".into(), w.channel.clone());
    if p.offset > 0 {
        extra.insert("offset".into(), p.offset.to_string());
    }
    let collapse = collapse_id(&w.channel);

    // Badge: the recipient's total unread count, read once per user.
    let mut badges: HashMap<String, Option<u64>> = HashMap::new();
    let mut jobs = Vec::with_capacity(devices.len());
    for d in devices {
        if !badges.contains_key(&d.user) {
            let badge = match node.user_conversations(&d.user).await {
                Ok(list) => Some(list.iter().map(|c| c.unread).sum()),
                Err(_) => None,
            };
            badges.insert(d.user.clone(), badge);
        }
        let badge = badges.get(&d.user).copied().flatten();
        jobs.push(NewJob {
            device_id: d.id,
            provider: d.provider,
            token: d.token,
            notification: Notification {
                id: uuid::Uuid::new_v4().to_string(),
                title: title.clone(),
                body: body.clone(),
                badge,
                data: extra.clone(),
                collapse_id: Some(collapse.clone()),
                thread_id: Some(w.channel.clone()),
                expire_at: service.expire_at(),
                published_ms: Some(w.at_ms),
                ..Default::default()
            },
        });
    }
    service.enqueue(jobs, "fallback").await?;
    Ok(())
}

/// One collapse id per conversation. APNs allows 64 bytes: a longer channel name is
/// replaced by a stable 64-bit FNV-1a hash of it.
pub fn collapse_id(channel: &str) -> String {
    if channel.len() <= 64 {
        return channel.to_string();
    }
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in channel.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("h:{h:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collapse_ids_fit_apns() {
        assert_eq!(collapse_id("chat:room"), "chat:room");
        let long = format!("chat:{}", "x".repeat(100));
        let c = collapse_id(&long);
        assert!(c.len() <= 64);
        assert_eq!(c, collapse_id(&long));
        assert_ne!(c, collapse_id(&format!("{long}y")));
    }
}
