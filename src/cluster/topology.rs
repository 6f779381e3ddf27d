//! Following a Redis Cluster's topology (`broker.redis_cluster`): which master serves
//! each hash slot.
//!
//! At start a node asks the first reachable seed for `CLUSTER SLOTS` and connects to
//! every master. Then, every [`REFRESH_EVERY`], it asks a master again; when the answer
//! differs (a failover promoted a replica, slots were resharded, a master was added) it
//! installs the new topology, keeping the connections of masters that stayed, and bumps
//! [`Redis::topology_changes`]: the broker then moves each sharded subscription whose
//! slot changed master and has its subscribers recover. Between the change and the next
//! refresh, commands for the moved slots fail (`MOVED`): publishers get an error, never
//! a silent drop.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::redis::{bounded, redact, Redis, RedisFailure, Shard, Topology};
use super::slots::{self, Master};
use crate::config::BrokerConfig;
use crate::metrics as m;

/// How often a node reads the cluster's slots again.
pub const REFRESH_EVERY: Duration = Duration::from_secs(1);

/// What a node needs to connect to any master: the seed's credentials.
struct Seed {
    info: redis::ConnectionInfo,
    host: String,
}

impl Seed {
    fn parse(url: &str) -> Result<Seed, RedisFailure> {
        let client = redis::Client::open(url)?;
        let info = client.get_connection_info().clone();
        let redis::ConnectionAddr::Tcp(host, _) = info.addr() else {
            return Err(RedisFailure::Reply(format!(
                "{}: broker.redis_cluster needs redis://host:port URLs",
                redact(url)
            )));
        };
        let host = host.clone();
        Ok(Seed { info, host })
    }

    fn client_for(&self, m: &Master) -> Result<redis::Client, RedisFailure> {
        let info = self
            .info
            .clone()
            .set_addr(redis::ConnectionAddr::Tcp(m.host.clone(), m.port));
        Ok(redis::Client::open(info)?)
    }
}

fn name_of(m: &Master) -> String {
    format!("{}:{}", m.host, m.port)
}

/// Discovers the cluster from the seeds, connects to every master and starts the
/// refresh task.
pub async fn connect_cluster(
    cfg: &BrokerConfig,
    urls: &[String],
) -> Result<Arc<Redis>, RedisFailure> {
    let mut last = RedisFailure::Reply("no seed".into());
    for url in urls {
        let seed = Seed::parse(url)?;
        let reply = bounded(cfg.redis_timeout, async {
            let client = redis::Client::open(seed.info.clone())?;
            let mut conn = client.get_multiplexed_async_connection().await?;
            cluster_slots(&mut conn).await
        })
        .await;
        let reply = match reply {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(cause = %e, seed = %redact(url), "redis cluster seed unusable");
                last = e;
                continue;
            }
        };
        let (masters, slot_map) =
            slots::parse_cluster_slots(&reply, &seed.host).map_err(RedisFailure::Reply)?;
        let topology = build(
            &seed,
            &masters,
            slot_map,
            &HashMap::new(),
            cfg.redis_timeout,
        )
        .await?;
        let stop = CancellationToken::new();
        let redis = Arc::new(Redis::new(cfg, topology, Some(stop.clone().drop_guard())));
        tokio::spawn(refresh_loop(Arc::downgrade(&redis), seed, masters, stop));
        return Ok(redis);
    }
    Err(last)
}

async fn cluster_slots(
    conn: &mut impl redis::aio::ConnectionLike,
) -> redis::RedisResult<redis::Value> {
    redis::cmd("CLUSTER")
        .arg("SLOTS")
        .query_async::<redis::Value>(conn)
        .await
}

/// A topology over `masters`, reusing the connections in `known` (by name).
async fn build(
    seed: &Seed,
    masters: &[Master],
    slots: Vec<u16>,
    known: &HashMap<String, Arc<Shard>>,
    timeout: Duration,
) -> Result<Topology, RedisFailure> {
    let mut shards = Vec::with_capacity(masters.len());
    for m in masters {
        let name = name_of(m);
        let shard = match known.get(&name) {
            Some(s) => s.clone(),
            None => Arc::new(Shard::open(seed.client_for(m)?, name, timeout).await?),
        };
        shards.push(shard);
    }
    Ok(Topology {
        shards,
        slots: Some(slots),
    })
}

/// Reads the slots every [`REFRESH_EVERY`] until the [`Redis`] is gone or stopped.
async fn refresh_loop(
    redis: std::sync::Weak<Redis>,
    seed: Seed,
    mut masters: Vec<Master>,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(REFRESH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let Some(redis) = redis.upgrade() else {
            return;
        };
        match refresh_once(&redis, &seed, &masters).await {
            Ok(Some(new_masters)) => masters = new_masters,
            Ok(None) => {}
            Err(e) => {
                metrics::counter!(m::REDIS_ERRORS_TOTAL, "op" => "topology").increment(1);
                tracing::debug!(cause = %e, "redis cluster topology refresh failed");
            }
        }
    }
}

/// Asks the masters in turn for the slots; installs and returns the new masters if
/// anything changed.
async fn refresh_once(
    redis: &Redis,
    seed: &Seed,
    masters: &[Master],
) -> Result<Option<Vec<Master>>, RedisFailure> {
    let current = redis.topology();
    let mut last = RedisFailure::Reply("no master answered".into());
    for shard in &current.shards {
        let mut conn = shard.conn.clone();
        let reply = match bounded(redis.timeout, cluster_slots(&mut conn)).await {
            Ok(r) => r,
            Err(e) => {
                last = e;
                continue;
            }
        };
        let (new_masters, new_slots) =
            slots::parse_cluster_slots(&reply, &seed.host).map_err(RedisFailure::Reply)?;
        if new_masters == masters && current.slots.as_deref() == Some(new_slots.as_slice()) {
            return Ok(None);
        }
        let known: HashMap<String, Arc<Shard>> = current
            .shards
            .iter()
            .map(|s| (s.name.clone(), s.clone()))
            .collect();
        let topology = build(seed, &new_masters, new_slots, &known, redis.timeout).await?;
        tracing::info!(
            masters = %topology.shards.iter().map(|s| s.name.as_str()).collect::<Vec<_>>().join(","),
            "redis cluster topology changed"
        );
        redis.set_topology(topology);
        return Ok(Some(new_masters));
    }
    Err(last)
}
