//! The Redis broker on a real Redis Cluster (three masters on free loopback ports,
//! joined by `redis-cli --cluster create`): the conformance suite, delivery between two
//! brokers for channels on every master by sharded pub/sub, the reconciler's
//! per-channel lists, and a master restart.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use super::tests::{attach, broker_with, config, conformance, data, eventually, Seen, HIST};
use super::RedisBroker;
use crate::broker::{Broker, HistoryFilter, PersistedSequencer};
use crate::cluster::testing::RedisCluster;
use crate::protocol::messages::StreamPosition;

fn cluster_config(urls: &str, prefix: &str) -> crate::config::BrokerConfig {
    let mut cfg = config(urls, prefix);
    cfg.redis_cluster = true;
    cfg
}

#[tokio::test]
async fn redis_broker_passes_conformance_on_a_redis_cluster() {
    let cluster = RedisCluster::start(3);
    conformance(&cluster.url(), true).await;
}

/// Channel names until every master serves at least `per_master` of them.
fn channels_on_every_master(
    redis: &crate::cluster::redis::Redis,
    per_master: usize,
) -> Vec<String> {
    let t = redis.topology();
    let mut count = vec![0; t.shards.len()];
    let mut out = Vec::new();
    for i in 0.. {
        if count.iter().all(|c| *c >= per_master) {
            break;
        }
        let ch = if i % 5 == 4 {
            format!("odd{{{i}}}")
        } else {
            format!("room:{i}")
        };
        let s = t.index_for(&ch);
        if count[s] < per_master {
            count[s] += 1;
            out.push(ch);
        }
    }
    out
}

/// Two brokers (two nodes): what one publishes reaches the other in offset order for
/// channels on all three masters (including names with braces, which cannot be their
/// own hash tag); history is shared.
#[tokio::test]
async fn brokers_on_a_redis_cluster_deliver_in_order_on_every_master() {
    let cluster = RedisCluster::start(3);
    // Only the first master as a seed: the others are discovered.
    let seed = cluster.nodes[0].url();
    let a = broker_with(cluster_config(&seed, "x")).await;
    let b = broker_with(cluster_config(&cluster.url(), "x")).await;
    assert_eq!(a.redis.shards().len(), 3, "every master discovered");
    let channels = channels_on_every_master(&a.redis, 2);
    let masters: HashSet<String> = channels
        .iter()
        .map(|c| a.redis.shard_for(c).name.clone())
        .collect();
    assert_eq!(masters.len(), 3);
    let seen = attach(&b);
    for ch in &channels {
        b.subscribe(ch).await.unwrap();
    }
    for i in 1..=10 {
        for ch in &channels {
            a.publish(ch, data(i), HIST).await.unwrap();
        }
    }
    let total = channels.len() * 10;
    eventually("every delivery", || seen.pubs.lock().len() == total).await;
    for ch in &channels {
        let offsets: Vec<u64> = seen
            .pubs
            .lock()
            .iter()
            .filter(|p| &p.0 == ch)
            .map(|p| p.1)
            .collect();
        assert_eq!(offsets, (1..=10).collect::<Vec<_>>(), "{ch}");
        let (pubs, top) = b.history(ch, HistoryFilter::default()).await.unwrap();
        assert_eq!((pubs.len(), top.offset), (10, 10), "{ch}");
    }
}

/// Persisted sequencing on a cluster: the per-channel unstored lists are found on
/// every master by the reconciler's scan, and emptied by `mark_stored`.
#[tokio::test]
async fn unstored_lists_are_found_on_every_master() {
    let cluster = RedisCluster::start(3);
    let b = broker_with(cluster_config(&cluster.url(), "p")).await;
    let seq: &dyn PersistedSequencer = b.sequencer().expect("sequencer");
    let channels = channels_on_every_master(&b.redis, 1);
    let top = StreamPosition {
        offset: 5,
        epoch: "e".into(),
    };
    for ch in &channels {
        seq.seed(ch, &top).await.unwrap();
        let s = seq
            .publish_persisted(ch, data(1), HIST, Some(("k", Duration::from_secs(60))))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(s.position.offset, 6);
        let again = seq
            .publish_persisted(ch, data(1), HIST, Some(("k", Duration::from_secs(60))))
            .await
            .unwrap()
            .unwrap();
        assert!(again.duplicate, "idempotency key in the channel's slot");
    }
    let mut found: Vec<String> = seq
        .unstored(Duration::ZERO, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|u| {
            assert_eq!((u.offset, u.publication.map(|p| p.offset)), (6, Some(6)));
            u.channel
        })
        .collect();
    found.sort();
    let mut want = channels.clone();
    want.sort();
    assert_eq!(found, want);
    for ch in &channels {
        seq.mark_stored(ch, 6).await.unwrap();
    }
    assert!(seq.unstored(Duration::ZERO, 100).await.unwrap().is_empty());
}

/// A master restarts (empty: no persistence): its sharded subscriptions come back by
/// themselves and are reported interrupted; delivery resumes.
#[tokio::test]
async fn sharded_subscriptions_survive_a_master_restart() {
    let mut cluster = RedisCluster::start(3);
    let a = broker_with(cluster_config(&cluster.url(), "r")).await;
    let b = broker_with(cluster_config(&cluster.url(), "r")).await;
    let seen = attach(&b);
    let ch = channels_on_every_master(&a.redis, 1).remove(0);
    let port = a
        .redis
        .shard_for(&ch)
        .name
        .rsplit(':')
        .next()
        .unwrap()
        .to_string();
    b.subscribe(&ch).await.unwrap();
    a.publish(&ch, data(1), HIST).await.unwrap();
    eventually("the first delivery", || seen.pubs.lock().len() == 1).await;
    let node = cluster
        .nodes
        .iter_mut()
        .find(|n| n.port().to_string() == port)
        .expect("the first master's server");
    node.restart();
    eventually("the interruption report", || {
        seen.interrupted.lock().contains(&ch)
    })
    .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        match a.publish(&ch, data(2), HIST).await {
            Ok(_) => break,
            Err(e) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "publish after restart: {e}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    eventually("a delivery after the restart", || {
        seen.pubs.lock().len() >= 2
    })
    .await;
}

/// Two brokers (two nodes) on `seeds`; `b` subscribed to `ch`, which already carries
/// three publications from `a`.
async fn subscribed_with_three(
    seeds: &str,
    prefix: &str,
    ch: &str,
) -> (Arc<RedisBroker>, Arc<RedisBroker>, Arc<Seen>) {
    let a = broker_with(cluster_config(seeds, prefix)).await;
    let b = broker_with(cluster_config(seeds, prefix)).await;
    let seen = attach(&b);
    b.subscribe(ch).await.unwrap();
    for i in 1..=3 {
        a.publish(ch, data(i), HIST).await.unwrap();
    }
    eventually("three deliveries", || seen.pubs.lock().len() == 3).await;
    (a, b, seen)
}

/// The port of the master a broker sends `ch` to.
fn master_port(broker: &RedisBroker, ch: &str) -> u16 {
    let name = broker.redis.shard_for(ch).name.clone();
    match name.rsplit(':').next().and_then(|p| p.parse::<u16>().ok()) {
        Some(p) => p,
        None => panic!("no port in {name}"),
    }
}

/// After `ch`'s slot moved to the master on `now_on`: `b`'s subscription followed it
/// and was reported interrupted, `a`'s next publication (once `a` has seen the new
/// topology; until then its publishes fail with MOVED, never silently) continues the
/// sequence at 4 and reaches `b`, and history holds all four.
async fn continues_on(a: &RedisBroker, b: &RedisBroker, seen: &Seen, ch: &str, now_on: u16) {
    eventually("the interruption report", || {
        seen.interrupted.lock().iter().any(|c| c == ch)
    })
    .await;
    assert_eq!(master_port(b, ch), now_on, "b follows the slot");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let next = loop {
        match a.publish(ch, data(4), HIST).await {
            Ok(p) => break p,
            Err(e) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "publish after the move: {e}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    assert_eq!(next.offset, 4, "the sequence moved with the slot");
    eventually("the delivery after the move", || {
        seen.pubs.lock().iter().any(|p| p.1 == 4)
    })
    .await;
    let (pubs, _) = b.history(ch, HistoryFilter::default()).await.unwrap();
    assert_eq!(
        pubs.iter().map(|p| p.offset).collect::<Vec<_>>(),
        vec![1, 2, 3, 4]
    );
}

/// A resharding moves a subscribed channel's slot (with its keys) to another master:
/// the nodes notice the new topology, the subscription follows the slot and is
/// reported interrupted, publishing resumes with the next offset, and delivery goes on.
#[tokio::test]
async fn subscriptions_follow_a_moved_slot() {
    let cluster = RedisCluster::start(3);
    let ch = "room:moving";
    let (a, b, seen) = subscribed_with_three(&cluster.url(), "m", ch).await;
    let from = master_port(&a, ch);
    let to = cluster
        .nodes
        .iter()
        .map(|n| n.port())
        .find(|p| *p != from)
        .unwrap();
    cluster.move_slot(crate::cluster::slots::name_slot(ch), from, to);
    continues_on(&a, &b, &seen, ch, to).await;
}

/// Failovers: the replica of the master serving a subscribed channel takes over,
/// planned (`CLUSTER FAILOVER`) or because its master was SIGKILLed (elected after the
/// cluster's node timeout). The nodes find the new master by their topology refresh,
/// and everything `continues_on` checks holds: nothing replicated is lost.
#[tokio::test]
async fn subscriptions_follow_a_planned_failover() {
    failover(false).await;
}

#[tokio::test]
async fn subscriptions_follow_a_killed_master_s_replica() {
    failover(true).await;
}

async fn failover(kill: bool) {
    let mut cluster = RedisCluster::start_with_replicas(3, 1);
    let seeds = cluster.nodes[..3]
        .iter()
        .map(|n| n.url())
        .collect::<Vec<_>>()
        .join(",");
    let ch = "room:failing-over";
    let (a, b, seen) = subscribed_with_three(&seeds, "f", ch).await;
    let old = master_port(&a, ch);
    let replica = cluster.replica_of(old);
    if kill {
        // Asynchronous replication: what the replica had not received would be lost,
        // so the test kills only once it has everything.
        cluster.wait_replicated(old);
        let Some(master) = cluster.nodes.iter_mut().find(|n| n.port() == old) else {
            panic!("no node on {old}");
        };
        master.kill();
        cluster.wait_master(replica);
    } else {
        cluster.fail_over_to(replica);
    }
    continues_on(&a, &b, &seen, ch, replica).await;
}
