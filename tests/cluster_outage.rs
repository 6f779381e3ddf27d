//! Cluster mode through a Redis outage: two in-process nodes, a real `redis-server`
//! killed (SIGKILL) and started again on the same port. Nodes keep their WebSockets,
//! publishes during the outage answer an error (never a silent drop), and afterwards
//! subscribers are told to recover and recover every acknowledged publication; when
//! Redis comes back empty, they are told they cannot (`recovered: false`), never left
//! with a silent gap.

mod common;

use std::time::Duration;

use common::client::cmd;
use common::{tokens, Client, Server, Wire};
use herald::cluster::testing::{Persistence, RedisServer};
use serde_json::{json, Value};

const TOML: &str = r#"
[http]
workers = 2
shutdown_timeout = "3s"

[broker]
kind = "redis"
redis_timeout = "1s"

[[namespaces]]
name = "feed"
force_recovery = true
"#;

const CHANNEL: &str = "feed:live";

fn node(redis: &RedisServer) -> Server {
    let url = redis.url();
    Server::start_config(TOML, &[("HERALD_BROKER__REDIS_URL", url.as_str())])
}

fn publish_body(i: u64) -> Value {
    json!({"channel": CHANNEL, "data": {"i": i}})
}

/// Publishes until Redis accepts again (bounded), returning the acknowledged offset.
async fn publish_when_back(api: &common::Api, i: u64) -> u64 {
    common::within("publishes to succeed again", async {
        loop {
            let r = api.call("publish", publish_body(i)).await;
            if let Some(offset) = r["result"]["offset"].as_u64() {
                return offset;
            }
            assert_eq!(r["error"]["code"], 100, "{r}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
}

/// A client on node A, five publications through node B, Redis killed: what the test
/// sees before the restart. Returns (redis, a, b, client, epoch).
async fn through_outage(persistence: Persistence) -> (RedisServer, Server, Server, Client, String) {
    let mut redis = RedisServer::start_with(persistence);
    let (a, b) = (node(&redis), node(&redis));
    let (mut alice, _) = Client::connect(a.addr, Wire::Json, &tokens::connect("alice")).await;
    let sub = alice.ok(cmd::subscribe(CHANNEL)).await;
    let epoch = sub.subscribe.expect("subscribe result").epoch;
    let api = b.api();
    for i in 1..=5 {
        assert_eq!(api.publish(CHANNEL, json!({ "i": i })).await["offset"], i);
    }
    for i in 1..=5 {
        assert_eq!(alice.next_pub(CHANNEL).await.offset, i);
    }

    redis.kill();
    // Never a silent drop: the publish answers an internal error.
    let r = api.call("publish", publish_body(99)).await;
    assert_eq!(r["error"]["code"], 100, "publish during the outage: {r}");
    // The WebSocket stays open and served.
    alice.roundtrip().await;
    redis.restart();
    (redis, a, b, alice, epoch)
}

#[tokio::test]
async fn redis_restart_keeps_websockets_and_every_acknowledged_publication_is_recovered() {
    let (_redis, _a, b, mut alice, epoch) = through_outage(Persistence::AofAlways).await;
    let api = b.api();
    let mut acked = vec![publish_when_back(&api, 6).await];
    for i in 7..=10 {
        acked.push(
            api.publish(CHANNEL, json!({ "i": i })).await["offset"]
                .as_u64()
                .expect("offset"),
        );
    }
    assert_eq!(acked, (6..=10).collect::<Vec<u64>>(), "offsets continue");

    // Node A's pub/sub connection is back: alice is told to recover (2500), recovers
    // from her position, then continues live; every acknowledged offset, in order.
    let mut last = 5;
    let mut told = 0;
    common::within("every acknowledged publication", async {
        while last < 10 {
            let push = alice.next_push().await;
            if let Some(u) = push.unsubscribe {
                assert_eq!(u.code, 2500, "insufficient state");
                told += 1;
                let r = alice
                    .ok(cmd::subscribe_recover(CHANNEL, last, &epoch))
                    .await;
                let s = r.subscribe.expect("subscribe result");
                assert!(s.recovered, "recovered from the append-only file: {s:?}");
                assert_eq!(s.epoch, epoch);
                for p in s.publications {
                    assert_eq!(p.offset, last + 1, "recovered in order");
                    last = p.offset;
                }
            } else if let Some(p) = push.publication {
                assert_eq!(p.offset, last + 1, "live in order, no gap");
                last = p.offset;
            }
        }
    })
    .await;
    assert!(told >= 1, "the subscriber was told to recover");
    // And the connection is still the same one, working.
    alice.roundtrip().await;
}

#[tokio::test]
async fn redis_restarting_empty_tells_subscribers_they_cannot_recover() {
    let (_redis, _a, b, mut alice, epoch) = through_outage(Persistence::None).await;
    let api = b.api();
    let first = publish_when_back(&api, 6).await;
    assert_eq!(first, 1, "a new stream after Redis lost everything");
    let push = alice
        .push_where("the 2500 unsubscribe", |p| p.unsubscribe.is_some())
        .await;
    assert_eq!(push.unsubscribe.map(|u| u.code), Some(2500));
    let r = alice.ok(cmd::subscribe_recover(CHANNEL, 5, &epoch)).await;
    let s = r.subscribe.expect("subscribe result");
    assert!(!s.recovered, "never a silent gap: {s:?}");
    assert_ne!(s.epoch, epoch, "a new epoch");
}
