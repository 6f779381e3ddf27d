//! Persisted namespaces in cluster mode: Redis assigns the offset, the store write at
//! that offset completes before the publish is acknowledged, and a reconciler copies
//! any publication Redis sequenced but no node stored (a crash between the two steps).
//!
//! The two in-process nodes share one SQLite file, standing in for the shared ScyllaDB
//! keyspace of a real cluster (ARCHITECTURE.md, "Cluster mode").

mod common;

use std::time::Duration;

use common::client::{cmd, data_json};
use common::{tokens, Client, Server, Wire};
use herald::broker::{Broker, HistoryOptions};
use herald::cluster::testing::RedisServer;
use herald::protocol::messages::{Publication, StreamPosition};
use serde_json::{json, Value};

const TOML: &str = r#"
[http]
workers = 2
shutdown_timeout = "3s"

[store]
sync = "normal"

[broker]
kind = "redis"
redis_timeout = "1s"
reconcile_interval = "200ms"

# Persisted; the Redis stream keeps the last 5 (recent recovery), the store everything.
[[namespaces]]
name = "room"
persist = true
history_size = 5
force_recovery = true
"#;

struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new() -> TempDir {
        let p = std::env::temp_dir().join(format!("herald-cluster-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&p).expect("temp dir");
        TempDir(p)
    }
    fn path(&self) -> &str {
        self.0.to_str().expect("utf-8 temp path")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn env<'a>(redis_url: &'a str, store: &'a TempDir) -> [(&'a str, &'a str); 2] {
    [
        ("HERALD_BROKER__REDIS_URL", redis_url),
        ("HERALD_STORE__PATH", store.path()),
    ]
}

/// Two nodes on one Redis and one store; B starts once A has opened (and migrated)
/// the store.
async fn cluster(redis: &RedisServer, store: &TempDir) -> (Server, Server) {
    let url = redis.url();
    let a = Server::start_config(TOML, &env(&url, store));
    a.api().ok("info", json!({})).await;
    let b = Server::start_config(TOML, &env(&url, store));
    b.api().ok("info", json!({})).await;
    (a, b)
}

fn offsets(history: &Value) -> Vec<u64> {
    history["publications"]
        .as_array()
        .map(|v| v.iter().filter_map(|p| p["offset"].as_u64()).collect())
        .unwrap_or_default()
}

#[tokio::test]
async fn acknowledged_publishes_are_stored_at_the_offsets_redis_assigned() {
    let (redis, store) = (RedisServer::start(), TempDir::new());
    let (a, b) = cluster(&redis, &store).await;
    let (mut alice, _) = Client::connect(a.addr, Wire::Json, &tokens::connect("alice")).await;
    let sub = alice.ok(cmd::subscribe("room:1")).await;
    let epoch = sub.subscribe.expect("subscribe result").epoch;
    assert!(!epoch.is_empty());

    let api = b.api();
    for i in 1..=12u64 {
        let r = api.publish("room:1", json!({ "i": i })).await;
        assert_eq!(
            (r["offset"].as_u64(), r["epoch"].as_str()),
            (Some(i), Some(epoch.as_str()))
        );
    }
    for i in 1..=12u64 {
        let p = alice.next_pub("room:1").await;
        assert_eq!((p.offset, data_json(&p)["i"].as_u64()), (i, Some(i)));
    }
    // Acknowledged means stored: the full history (beyond the 5 the stream keeps) is
    // in the store, read through the other node.
    let h = a
        .api()
        .ok("history", json!({"channel": "room:1", "limit": -1}))
        .await;
    assert_eq!(offsets(&h), (1..=12).collect::<Vec<u64>>());
    assert_eq!(h["epoch"], epoch.as_str());

    // A retry with the same idempotency key gets the original's position, once.
    let body = json!({"channel": "room:1", "data": {"i": 13}, "idempotency_key": "k13"});
    let first = api.ok("publish", body.clone()).await;
    let again = a.api().ok("publish", body).await;
    assert_eq!(first, again);
    assert_eq!(alice.next_pub("room:1").await.offset, 13);
    alice.roundtrip().await;
    assert!(
        alice.queued_pushes().is_empty(),
        "the duplicate was not delivered"
    );

    // Recovery from a position older than the stream's 5 comes from the store.
    let (mut late, _) = Client::connect(b.addr, Wire::Json, &tokens::connect("bob")).await;
    let r = late.ok(cmd::subscribe_recover("room:1", 2, &epoch)).await;
    let s = r.subscribe.expect("subscribe result");
    assert!(s.recovered, "{s:?}");
    let got: Vec<u64> = s.publications.iter().map(|p| p.offset).collect();
    assert_eq!(got, (3..=13).collect::<Vec<u64>>());
}

/// A node that died after Redis sequenced a publication and before its store write:
/// simulated by sequencing through a broker in the test process and never storing.
/// The nodes' reconcilers copy it into the store.
#[tokio::test]
async fn reconciler_copies_what_a_crash_between_the_steps_left_out() {
    let (redis, store) = (RedisServer::start(), TempDir::new());
    let (a, b) = cluster(&redis, &store).await;
    let (mut bob, _) = Client::connect(b.addr, Wire::Json, &tokens::connect("bob")).await;
    bob.ok(cmd::subscribe("room:2")).await;
    let api = a.api();
    let first = api.publish("room:2", json!({"i": 1})).await;
    assert_eq!(bob.next_pub("room:2").await.offset, 1);

    let url = redis.url();
    let config = herald::config::Config::load_from(
        Some(TOML),
        "test",
        vec![("HERALD_BROKER__REDIS_URL".to_string(), url)],
    )
    .expect("config");
    let conn = herald::cluster::redis::Redis::connect(&config.broker)
        .await
        .expect("redis");
    let crashed = herald::broker::redis::RedisBroker::new(conn, Duration::from_secs(60));
    let seq = crashed.sequencer().expect("sequencer");
    let s = seq
        .publish_persisted(
            "room:2",
            Publication {
                data: bytes::Bytes::from_static(br#"{"i":2}"#),
                ..Default::default()
            },
            HistoryOptions {
                size: 5,
                ttl: Duration::from_secs(300),
            },
            None,
        )
        .await
        .expect("sequenced")
        .expect("seeded");
    assert_eq!(
        s.position,
        StreamPosition {
            offset: 2,
            epoch: first["epoch"].as_str().unwrap_or_default().to_string()
        }
    );
    // Delivered live at once (Redis published it) ...
    assert_eq!(bob.next_pub("room:2").await.offset, 2);
    // ... and stored by a reconciler a little later.
    common::within("the reconciler", async {
        loop {
            let h = b
                .api()
                .ok("history", json!({"channel": "room:2", "limit": -1}))
                .await;
            if offsets(&h) == vec![1, 2] {
                let p = &h["publications"][1];
                assert_eq!(p["data"]["i"], 2);
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    // Publishing continues after it.
    assert_eq!(api.publish("room:2", json!({"i": 3})).await["offset"], 3);
}

/// The store is the authority for a persisted channel's sequence: when Redis restarts
/// empty, offsets continue after the store's top in the same epoch.
#[tokio::test]
async fn persisted_sequence_survives_redis_losing_its_data() {
    let (mut redis, store) = (RedisServer::start(), TempDir::new());
    let (a, _b) = cluster(&redis, &store).await;
    let api = a.api();
    let mut epoch = Value::Null;
    for i in 1..=3 {
        epoch = api.publish("room:3", json!({ "i": i })).await["epoch"].clone();
    }
    redis.restart();
    let r = common::within("publishes to succeed again", async {
        loop {
            let r = api
                .call("publish", json!({"channel": "room:3", "data": {"i": 4}}))
                .await;
            if r.get("result").is_some() {
                return r["result"].clone();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert_eq!((r["offset"].as_u64(), &r["epoch"]), (Some(4), &epoch));
}

/// A recovery older than the stream reads the store, which may lack a publication still
/// being stored (another node's) while holding later ones: the hole is filled from the
/// stream, never skipped.
#[tokio::test]
async fn recovery_from_the_store_fills_holes_from_the_stream() {
    let (redis, store) = (RedisServer::start(), TempDir::new());
    let url = redis.url();
    // No reconciler during the test: the hole stays.
    let mut vars = env(&url, &store).to_vec();
    vars.push(("HERALD_BROKER__RECONCILE_INTERVAL", "1h"));
    let a = Server::start_config(TOML, &vars);
    let api = a.api();
    let mut epoch = String::new();
    for i in 1..=6 {
        let r = api.publish("room:4", json!({ "i": i })).await;
        epoch = r["epoch"].as_str().unwrap_or_default().to_string();
    }
    let config = herald::config::Config::load_from(
        Some(TOML),
        "test",
        vec![("HERALD_BROKER__REDIS_URL".to_string(), url.clone())],
    )
    .expect("config");
    let conn = herald::cluster::redis::Redis::connect(&config.broker)
        .await
        .expect("redis");
    let crashed = herald::broker::redis::RedisBroker::new(conn, Duration::from_secs(60));
    let seq = crashed.sequencer().expect("sequencer");
    let s = seq
        .publish_persisted(
            "room:4",
            Publication {
                data: bytes::Bytes::from_static(br#"{"i":7}"#),
                ..Default::default()
            },
            HistoryOptions {
                size: 5,
                ttl: Duration::from_secs(300),
            },
            None,
        )
        .await
        .expect("sequenced")
        .expect("seeded");
    assert_eq!(s.position.offset, 7);
    for i in 8..=9 {
        api.publish("room:4", json!({ "i": i })).await;
    }
    let h = api
        .ok("history", json!({"channel": "room:4", "limit": -1}))
        .await;
    assert_eq!(offsets(&h), vec![1, 2, 3, 4, 5, 6, 8, 9], "7 is not stored");

    let (mut c, _) = Client::connect(a.addr, Wire::Json, &tokens::connect("carol")).await;
    let r = c.ok(cmd::subscribe_recover("room:4", 1, &epoch)).await;
    let s = r.subscribe.expect("subscribe result");
    assert!(s.recovered, "{s:?}");
    let got: Vec<u64> = s.publications.iter().map(|p| p.offset).collect();
    assert_eq!(got, (2..=9).collect::<Vec<u64>>());
    assert_eq!(data_json(&s.publications[5])["i"], 7);
}
