//! The push queue of cluster mode: one Redis stream per provider, consumed by a
//! consumer group in which every node is a consumer named by its node id, so each
//! queued push is handed to exactly one node.
//!
//! Keys of one provider's queue (all with one hash tag on a Redis Cluster, so that each
//! script touches one slot): the stream (entries name a job id), a hash of job bodies,
//! a hash of attempts made, a sorted set of jobs waiting for a retry (by due time), and
//! a set of job ids per token. A job leaves only when its outcome is final: delivered
//! or given up on (XACK + XDEL + its body deleted, in one script), or dropped with its
//! token. A retry leaves the stream for the sorted set; the next read moves due ones
//! back, atomically. An entry a node took and never acknowledged (it died) is claimed
//! by a live node with XAUTOCLAIM once it was idle for `push.visibility_timeout`.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use super::queue::PushQueue;
use super::{Finish, Job, NewJob, Notification, Provider, PushStoreError};
use crate::cluster::redis::{array, int, string, Redis, RedisFailure};

const ENQUEUE_LUA: &str = include_str!("lua/queue_enqueue.lua");
const DUE_LUA: &str = include_str!("lua/queue_due.lua");
const FINISH_LUA: &str = include_str!("lua/queue_finish.lua");
const FORGET_LUA: &str = include_str!("lua/queue_forget.lua");

/// The consumer group every node joins.
const GROUP: &str = "herald";
/// Jobs per script call when queueing (a big audience is several calls).
const CHUNK: usize = 500;

impl From<RedisFailure> for PushStoreError {
    fn from(e: RedisFailure) -> Self {
        PushStoreError::Unavailable(e.to_string())
    }
}

/// What the jobs hash holds for one job.
#[derive(Serialize, Deserialize)]
struct Body {
    d: String,
    t: String,
    n: Notification,
}

pub struct RedisQueue {
    redis: Arc<Redis>,
    consumer: String,
    visibility: Duration,
    /// When each provider's queue was last searched for abandoned entries (at most a
    /// few times per visibility timeout, not on every read), and where that scan of
    /// the pending list stopped.
    last_claim: Mutex<HashMap<Provider, (Instant, String)>>,
    enqueue: redis::Script,
    due: redis::Script,
    finish: redis::Script,
    forget: redis::Script,
}

impl RedisQueue {
    /// `consumer`: this node's name in the group (its node id).
    pub fn new(redis: Arc<Redis>, consumer: &str, visibility: Duration) -> RedisQueue {
        RedisQueue {
            redis,
            consumer: consumer.to_string(),
            visibility,
            last_claim: Mutex::new(HashMap::new()),
            enqueue: redis::Script::new(ENQUEUE_LUA),
            due: redis::Script::new(DUE_LUA),
            finish: redis::Script::new(FINISH_LUA),
            forget: redis::Script::new(FORGET_LUA),
        }
    }

    /// The name whose hash tag every key of `p`'s queue carries.
    fn name(p: Provider) -> String {
        format!("push:{}", p.as_str())
    }

    /// Stream, jobs hash, delay zset, tries hash.
    fn keys(&self, p: Provider) -> [String; 4] {
        let n = Self::name(p);
        [
            self.redis.key("pushq", &n),
            self.redis.key("pushjobs", &n),
            self.redis.key("pushdelay", &n),
            self.redis.key("pushtries", &n),
        ]
    }

    /// The set of job ids queued for `token` (same hash tag as the queue).
    fn token_key(&self, p: Provider, token: &str) -> String {
        format!("{}:{token}", self.redis.key("pushtok", &Self::name(p)))
    }

    fn conn(&self, p: Provider) -> redis::aio::ConnectionManager {
        self.redis.shard_for(&Self::name(p)).conn.clone()
    }

    /// Where this read should resume reclaiming abandoned entries, or `None` (not now).
    fn claim_from(&self, p: Provider) -> Option<String> {
        let every = (self.visibility / 4).min(Duration::from_secs(5));
        let mut last = self.last_claim.lock();
        let cursor = match last.get(&p) {
            Some((t, _)) if t.elapsed() < every => return None,
            Some((_, c)) => c.clone(),
            None => "0-0".to_string(),
        };
        last.insert(p, (Instant::now(), cursor.clone()));
        Some(cursor)
    }

    fn claimed_to(&self, p: Provider, cursor: String) {
        if let Some(entry) = self.last_claim.lock().get_mut(&p) {
            entry.1 = cursor;
        }
    }
}

fn parse_id(id: &str) -> Option<(&str, &str)> {
    id.split_once(' ')
}

#[async_trait]
impl PushQueue for RedisQueue {
    async fn enqueue(&self, jobs: Vec<NewJob>) -> Result<u64, PushStoreError> {
        let mut per: HashMap<Provider, Vec<NewJob>> = HashMap::new();
        for j in jobs {
            per.entry(j.provider).or_default().push(j);
        }
        let mut n = 0;
        for (p, jobs) in per {
            let [stream, bodies, _, _] = self.keys(p);
            for chunk in jobs.chunks(CHUNK) {
                let mut inv = self.enqueue.prepare_invoke();
                inv.key(&stream).key(&bodies);
                for j in chunk {
                    inv.key(self.token_key(p, &j.token));
                }
                for j in chunk {
                    let body = serde_json::to_string(&Body {
                        d: j.device_id.clone(),
                        t: j.token.clone(),
                        n: j.notification.clone(),
                    })
                    .map_err(|e| PushStoreError::Unavailable(e.to_string()))?;
                    inv.arg(uuid::Uuid::new_v4().simple().to_string()).arg(body);
                }
                let mut conn = self.conn(p);
                let v: redis::Value = self
                    .redis
                    .run("push_enqueue", inv.invoke_async(&mut conn))
                    .await?;
                n += int(&v)? as u64;
            }
        }
        Ok(n)
    }

    async fn due(
        &self,
        provider: Provider,
        now_ms: i64,
        limit: usize,
        skip: HashSet<String>,
    ) -> Result<(Vec<Job>, Option<i64>), PushStoreError> {
        if limit == 0 {
            return Ok((Vec::new(), None));
        }
        let claim = self.claim_from(provider);
        let idle = match claim {
            Some(_) => self.visibility.as_millis() as i64,
            None => -1,
        };
        let mut inv = self.due.prepare_invoke();
        for k in self.keys(provider) {
            inv.key(k);
        }
        inv.arg(GROUP)
            .arg(&self.consumer)
            .arg(now_ms)
            .arg(limit)
            .arg(idle)
            .arg(claim.as_deref().unwrap_or("0-0"));
        for id in &skip {
            if let Some((sid, _)) = parse_id(id) {
                inv.arg(sid);
            }
        }
        let mut conn = self.conn(provider);
        let v: redis::Value = self
            .redis
            .run("push_due", inv.invoke_async(&mut conn))
            .await?;
        let a = array(&v)?;
        let (next, cursor) = match a {
            [n, c, ..] => (Some(int(n)?).filter(|n| *n >= 0), string(c)?),
            _ => return Err(RedisFailure::Reply("short push_due reply".into()).into()),
        };
        if claim.is_some() {
            self.claimed_to(provider, cursor);
        }
        let mut jobs = Vec::new();
        let mut unreadable = Vec::new();
        for e in a[2..].chunks(4) {
            let [sid, id, body, tries] = e else {
                return Err(RedisFailure::Reply("short push_due reply".into()).into());
            };
            let (sid, id) = (string(sid)?, string(id)?);
            let attempts = int(tries)?.max(0) as u32;
            match serde_json::from_str::<Body>(&string(body)?) {
                Ok(b) => jobs.push(Job {
                    id: format!("{sid} {id}"),
                    device_id: b.d,
                    provider,
                    token: b.t,
                    notification: b.n,
                    attempts,
                }),
                Err(e) => {
                    // An unreadable body would come back forever.
                    tracing::error!(cause = %e, id, "dropping unreadable push job");
                    unreadable.push(Job {
                        id: format!("{sid} {id}"),
                        device_id: String::new(),
                        provider,
                        token: String::new(),
                        notification: Notification::default(),
                        attempts,
                    });
                }
            }
        }
        if !unreadable.is_empty() {
            self.finish(unreadable.into_iter().map(|j| (j, Finish::Done)).collect())
                .await?;
        }
        Ok((jobs, next))
    }

    async fn finish(&self, done: Vec<(Job, Finish)>) -> Result<(), PushStoreError> {
        let mut per: HashMap<Provider, Vec<(Job, Finish)>> = HashMap::new();
        for d in done {
            per.entry(d.0.provider).or_default().push(d);
        }
        for (p, done) in per {
            let mut inv = self.finish.prepare_invoke();
            for k in self.keys(p) {
                inv.key(k);
            }
            inv.arg(GROUP);
            for (job, f) in &done {
                let Some((sid, id)) = parse_id(&job.id) else {
                    continue;
                };
                inv.key(self.token_key(p, &job.token));
                inv.arg(sid).arg(id);
                match f {
                    Finish::Done => inv.arg("").arg(0),
                    Finish::Retry { due_ms, attempts } => inv.arg(*due_ms).arg(*attempts),
                };
            }
            let mut conn = self.conn(p);
            let _: redis::Value = self
                .redis
                .run("push_finish", inv.invoke_async(&mut conn))
                .await?;
        }
        Ok(())
    }

    async fn forget_token(&self, provider: Provider, token: &str) -> Result<u64, PushStoreError> {
        let [_, bodies, delay, tries] = self.keys(provider);
        let mut inv = self.forget.prepare_invoke();
        inv.key(bodies)
            .key(delay)
            .key(tries)
            .key(self.token_key(provider, token));
        let mut conn = self.conn(provider);
        let v: redis::Value = self
            .redis
            .run("push_forget", inv.invoke_async(&mut conn))
            .await?;
        Ok(int(&v)? as u64)
    }

    /// Jobs in the bodies hash: queued, waiting for a retry or in flight, each once.
    async fn depth(&self) -> Result<Vec<(Provider, u64)>, PushStoreError> {
        let mut out = Vec::new();
        for p in Provider::ALL {
            let [_, bodies, _, _] = self.keys(p);
            let n: u64 = self
                .redis
                .run_retrying("push_depth", || {
                    let mut conn = self.conn(p);
                    let key = bodies.clone();
                    async move { redis::cmd("HLEN").arg(key).query_async(&mut conn).await }
                })
                .await?;
            out.push((p, n));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::testing::{RedisCluster, RedisServer};

    fn config(url: &str, cluster: bool, prefix: &str) -> crate::config::BrokerConfig {
        crate::config::BrokerConfig {
            kind: "redis".into(),
            redis_url: url.into(),
            redis_cluster: cluster,
            redis_prefix: prefix.into(),
            redis_timeout: Duration::from_secs(2),
            history_meta_ttl: Duration::from_secs(600),
            presence_ttl: Duration::from_secs(30),
            node_heartbeat: Duration::from_secs(1),
            node_ttl: Duration::from_secs(3),
            reconcile_interval: Duration::from_secs(1),
        }
    }

    /// Each queue handle has its own connections, as each node has.
    async fn suite(url: &str, cluster: bool) {
        use super::super::queue_conformance::{run_all, VISIBILITY};
        run_all(
            |ns: String, consumer: String| {
                let cfg = config(url, cluster, &ns);
                async move {
                    let redis = Redis::connect(&cfg).await.unwrap();
                    Arc::new(RedisQueue::new(redis, &consumer, VISIBILITY)) as Arc<dyn PushQueue>
                }
            },
            true,
        )
        .await;
    }

    #[tokio::test]
    async fn redis_queue_passes_conformance() {
        let server = RedisServer::start();
        suite(&server.url(), false).await;
    }

    #[tokio::test]
    async fn redis_queue_passes_conformance_on_a_redis_cluster() {
        let cluster = RedisCluster::start(3);
        suite(&cluster.url(), true).await;
    }
}
