//! The Redis broker against real `redis-server`s (started on free ports, never a
//! system one): the conformance suite on one and on two shards, delivery between
//! brokers sharing Redis, an outage, and persisted sequencing.

use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::Mutex;

use super::RedisBroker;
use crate::broker::{
    Broker, BrokerError, BrokerEventHandler, HistoryFilter, HistoryOptions, PersistedSequencer,
};
use crate::cluster::redis::Redis;
use crate::cluster::testing::{Persistence, RedisServer};
use crate::protocol::messages::{ClientInfo, Publication, StreamPosition};

pub(super) fn config(urls: &str, prefix: &str) -> crate::config::BrokerConfig {
    crate::config::BrokerConfig {
        kind: "redis".into(),
        redis_url: urls.into(),
        redis_cluster: false,
        redis_prefix: prefix.into(),
        redis_timeout: Duration::from_millis(1500),
        history_meta_ttl: Duration::from_secs(600),
        presence_ttl: Duration::from_secs(30),
        node_heartbeat: Duration::from_secs(1),
        node_ttl: Duration::from_secs(3),
        reconcile_interval: Duration::from_secs(1),
    }
}

pub(super) async fn broker(urls: &str, prefix: &str) -> Arc<RedisBroker> {
    broker_with(config(urls, prefix)).await
}

pub(super) async fn broker_with(cfg: crate::config::BrokerConfig) -> Arc<RedisBroker> {
    let redis = Redis::connect(&cfg).await.expect("connect to redis");
    Arc::new(RedisBroker::new(redis, Duration::from_secs(600)))
}

/// Builds the brokers first (connecting is async), then hands them to the suite.
pub(super) async fn conformance(urls: &str, cluster: bool) {
    let mut brokers = Vec::new();
    for i in 0..6 {
        let mut cfg = config(urls, &format!("conf{i}"));
        cfg.redis_cluster = cluster;
        brokers.push(broker_with(cfg).await);
    }
    let brokers = Mutex::new(brokers);
    crate::broker::conformance::run_all(|| brokers.lock().remove(0)).await;
}

#[tokio::test]
async fn redis_broker_passes_conformance() {
    let server = RedisServer::start();
    conformance(&server.url(), false).await;
}

#[tokio::test]
async fn redis_broker_passes_conformance_on_two_shards() {
    let (a, b) = (RedisServer::start(), RedisServer::start());
    conformance(&format!("{},{}", a.url(), b.url()), false).await;
}

#[derive(Default)]
pub(super) struct Seen {
    pub(super) pubs: Mutex<Vec<(String, u64, String)>>,
    pub(super) interrupted: Mutex<Vec<String>>,
}

impl BrokerEventHandler for Seen {
    fn handle_publication(&self, channel: &str, p: Arc<Publication>, epoch: &str) {
        self.pubs
            .lock()
            .push((channel.to_string(), p.offset, epoch.to_string()));
    }
    fn handle_join(&self, _: &str, _: ClientInfo) {}
    fn handle_leave(&self, _: &str, _: ClientInfo) {}
    fn handle_interrupted(&self, channel: &str) {
        self.interrupted.lock().push(channel.to_string());
    }
}

pub(super) fn attach(b: &RedisBroker) -> Arc<Seen> {
    let seen = Arc::new(Seen::default());
    let h: Arc<dyn BrokerEventHandler> = seen.clone();
    let weak: Weak<dyn BrokerEventHandler> = Arc::downgrade(&h);
    b.set_handler(weak);
    seen
}

pub(super) async fn eventually(what: &str, cond: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub(super) fn data(i: u64) -> Publication {
    Publication {
        data: bytes::Bytes::from(format!("{{\"i\":{i}}}")),
        ..Default::default()
    }
}

pub(super) const HIST: HistoryOptions = HistoryOptions {
    size: 100,
    ttl: Duration::from_secs(60),
};

/// Two brokers (two nodes) on one Redis: what one publishes reaches the other's
/// handler in order, only while it is subscribed; history is shared.
#[tokio::test]
async fn brokers_sharing_redis_deliver_to_each_other() {
    let server = RedisServer::start();
    let (a, b) = (
        broker(&server.url(), "x").await,
        broker(&server.url(), "x").await,
    );
    let (_seen_a, seen_b) = (attach(&a), attach(&b));
    b.subscribe("room").await.unwrap();
    for i in 1..=20 {
        a.publish("room", data(i), HIST).await.unwrap();
    }
    eventually("20 deliveries", || seen_b.pubs.lock().len() == 20).await;
    let offsets: Vec<u64> = seen_b.pubs.lock().iter().map(|p| p.1).collect();
    assert_eq!(offsets, (1..=20).collect::<Vec<_>>());
    let (pubs, top) = b.history("room", HistoryFilter::default()).await.unwrap();
    assert_eq!((pubs.len(), top.offset), (20, 20));

    b.unsubscribe("room").await.unwrap();
    a.publish("room", data(21), HIST).await.unwrap();
    // A marker on another channel: once it arrives, "room" 21 would have too.
    b.subscribe("marker").await.unwrap();
    a.publish("marker", data(1), HIST).await.unwrap();
    eventually("the marker", || seen_b.pubs.lock().len() == 21).await;
    assert_eq!(seen_b.pubs.lock()[20].0, "marker");
}

/// Redis killed and restarted with its append-only file: publishes fail while it is
/// down; the subscription comes back by itself and is reported interrupted; history
/// kept every acknowledged publication.
#[tokio::test]
async fn outage_fails_publishes_then_resubscribes_and_reports() {
    let mut server = RedisServer::start_with(Persistence::AofAlways);
    let (a, b) = (
        broker(&server.url(), "o").await,
        broker(&server.url(), "o").await,
    );
    let seen = attach(&b);
    b.subscribe("feed").await.unwrap();
    let first = a.publish("feed", data(1), HIST).await.unwrap();
    eventually("the first delivery", || seen.pubs.lock().len() == 1).await;

    server.kill();
    let failed = a.publish("feed", data(2), HIST).await;
    assert!(
        matches!(failed, Err(BrokerError::Unavailable(_))),
        "{failed:?}"
    );
    server.restart();
    eventually("the interruption report", || {
        seen.interrupted.lock().contains(&"feed".to_string())
    })
    .await;
    // Publishing works again (the command connection reconnects on its own).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let second = loop {
        match a.publish("feed", data(3), HIST).await {
            Ok(p) => break p,
            Err(_) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => panic!("publish after restart: {e}"),
        }
    };
    assert_eq!(
        second.epoch, first.epoch,
        "the append-only file kept the stream"
    );
    assert_eq!(second.offset, 2);
    eventually("the delivery after the restart", || {
        seen.pubs.lock().iter().any(|p| p.1 == 2)
    })
    .await;
    let (pubs, _) = b
        .history(
            "feed",
            HistoryFilter {
                since: Some(first),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(pubs.iter().map(|p| p.offset).collect::<Vec<_>>(), vec![2]);
}

/// Persisted channels: never a new epoch (seeded from the store), idempotency,
/// the unstored list the reconciler reads.
#[tokio::test]
async fn persisted_sequencing_needs_a_seed_and_tracks_unstored() {
    let server = RedisServer::start();
    let b = broker(&server.url(), "p").await;
    let seen = attach(&b);
    b.subscribe("chat:a").await.unwrap();
    let seq: &dyn PersistedSequencer = b.sequencer().expect("redis sequences persisted channels");
    assert!(seq
        .publish_persisted("chat:a", data(1), HIST, None)
        .await
        .unwrap()
        .is_none());
    assert!(seq
        .recent("chat:a", HistoryFilter::default())
        .await
        .unwrap()
        .is_none());
    let store_top = StreamPosition {
        offset: 41,
        epoch: "store-epoch".into(),
    };
    seq.seed("chat:a", &store_top).await.unwrap();
    // A second seed does not move anything.
    seq.seed(
        "chat:a",
        &StreamPosition {
            offset: 7,
            epoch: "other".into(),
        },
    )
    .await
    .unwrap();
    let window = Duration::from_secs(60);
    let s = seq
        .publish_persisted("chat:a", data(1), HIST, Some(("k1", window)))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (s.position.offset, s.position.epoch.as_str(), s.duplicate),
        (42, "store-epoch", false)
    );
    assert_eq!(s.publication.offset, 42);
    let again = seq
        .publish_persisted("chat:a", data(1), HIST, Some(("k1", window)))
        .await
        .unwrap()
        .unwrap();
    assert!(again.duplicate);
    assert_eq!(again.position, s.position);
    eventually("one delivery", || seen.pubs.lock().len() == 1).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(seen.pubs.lock().len(), 1, "a duplicate is not delivered");

    let unstored = seq.unstored(Duration::ZERO, 10).await.unwrap();
    assert_eq!(unstored.len(), 1);
    let u = &unstored[0];
    assert_eq!(
        (u.channel.as_str(), u.offset, u.epoch.as_str()),
        ("chat:a", 42, "store-epoch")
    );
    assert_eq!(u.publication.as_ref().map(|p| p.offset), Some(42));
    assert!(seq
        .unstored(Duration::from_secs(60), 10)
        .await
        .unwrap()
        .is_empty());
    seq.mark_stored("chat:a", 42).await.unwrap();
    assert!(seq.unstored(Duration::ZERO, 10).await.unwrap().is_empty());

    let (pubs, top) = seq
        .recent(
            "chat:a",
            HistoryFilter {
                since: Some(store_top),
                ..Default::default()
            },
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(top.offset, 42);
    assert_eq!(pubs.iter().map(|p| p.offset).collect::<Vec<_>>(), vec![42]);
}

#[test]
fn messages_decode_binary_payloads() {
    let p = Publication {
        data: bytes::Bytes::from_static(b"\x00\xff:\n"),
        ..Default::default()
    };
    let mut msg = b"p7:abcd:123:".to_vec();
    msg.extend_from_slice(&super::dispatch::encode_publication(&p));
    match super::dispatch::decode_message(&msg) {
        Some(super::dispatch::Message::Publication {
            publication,
            epoch,
            published_ms,
        }) => {
            assert_eq!(publication.offset, 7);
            assert_eq!(&publication.data[..], b"\x00\xff:\n");
            assert_eq!((epoch.as_str(), published_ms), ("abcd", 123));
        }
        _ => panic!("not decoded"),
    }
    assert!(super::dispatch::decode_message(b"x").is_none());
    assert!(super::dispatch::decode_message(b"p1:").is_none());
}
