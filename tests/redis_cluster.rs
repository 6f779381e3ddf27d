//! Cluster mode over a real Redis Cluster: three masters on free loopback ports, joined
//! by `redis-cli --cluster create`, and two in-process Herald nodes with
//! `broker.redis_cluster = true`. Channels spread over all three masters travel by
//! sharded pub/sub: a client on node A receives what node B's API and node B's client
//! publish, in offset order, for channels on every master; presence, `info` and user
//! commands work across nodes as with one Redis.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::client::{cmd, data_json};
use common::{tokens, Client, Server, Wire};
use herald::cluster::redis::Redis;
use herald::cluster::testing::RedisCluster;
use serde_json::json;

const CLUSTER_TOML: &str = r#"
[http]
workers = 2
shutdown_timeout = "3s"

[broker]
kind = "redis"
redis_cluster = true
redis_timeout = "2s"
node_heartbeat = "300ms"
node_ttl = "3s"

[[namespaces]]
name = "feed"
force_recovery = true
allow_publish_for_client = true

[[namespaces]]
name = "chat"
join_leave = true
"#;

fn node(seed: &str) -> Server {
    Server::start_config(CLUSTER_TOML, &[("HERALD_BROKER__REDIS_URL", seed)])
}

/// Which master serves each channel, as Herald routes it.
async fn routing(cluster: &RedisCluster) -> std::sync::Arc<Redis> {
    let mut cfg = herald::config::Config::load_from(None, "<none>", Vec::new())
        .expect("default config")
        .broker;
    cfg.redis_url = cluster.url();
    cfg.redis_cluster = true;
    Redis::connect(&cfg).await.expect("connect to the cluster")
}

/// `per_master` `feed:` channels on each master.
fn channels_on_every_master(redis: &Redis, per_master: usize) -> Vec<String> {
    let t = redis.topology();
    let mut count = vec![0; t.shards.len()];
    let mut out = Vec::new();
    let mut i = 0;
    while count.iter().any(|c| *c < per_master) {
        let ch = format!("feed:room{i}");
        let s = t.index_for(&ch);
        if count[s] < per_master {
            count[s] += 1;
            out.push(ch);
        }
        i += 1;
    }
    out
}

#[tokio::test]
async fn publications_cross_nodes_in_order_on_every_master() {
    let cluster = RedisCluster::start(3);
    let redis = routing(&cluster).await;
    assert_eq!(redis.shards().len(), 3);
    let channels = channels_on_every_master(&redis, 2);
    let masters: HashSet<String> = channels
        .iter()
        .map(|c| redis.shard_for(c).name.clone())
        .collect();
    assert_eq!(masters.len(), 3, "channels on every master");

    // Each node knows only one seed; it discovers the other masters.
    let a = node(&cluster.nodes[0].url());
    let b = node(&cluster.nodes[1].url());
    let mut on_a = Client::connect(a.addr, Wire::Json, &tokens::connect("alice"))
        .await
        .0;
    let mut on_b = Client::connect(b.addr, Wire::Protobuf, &tokens::connect("bob"))
        .await
        .0;
    let mut epochs = Vec::new();
    for ch in &channels {
        let sub = on_a.ok(cmd::subscribe(ch)).await;
        epochs.push(sub.subscribe.expect("subscribe result").epoch);
    }

    // Through node B's API, then through a client publishing on node B.
    let api = b.api();
    for i in 1..=10u64 {
        for (ch, epoch) in channels.iter().zip(&epochs) {
            let r = api.publish(ch, json!({ "i": i })).await;
            assert_eq!(r["offset"].as_u64(), Some(i), "{ch}: {r}");
            assert_eq!(r["epoch"], epoch.as_str(), "{ch}: one epoch across nodes");
        }
    }
    for ch in &channels {
        on_b.ok(cmd::publish(ch, &json!({ "i": 11 }))).await;
    }
    // Per channel in offset order with no gap (channels interleave freely).
    let mut next: Vec<u64> = vec![1; channels.len()];
    let total = channels.len() * 11;
    for _ in 0..total {
        let p = on_a.next_push().await;
        let at = channels
            .iter()
            .position(|c| *c == p.channel)
            .unwrap_or_else(|| panic!("push on an unexpected channel {}", p.channel));
        let publication = p.publication.expect("a publication");
        assert_eq!(
            publication.offset, next[at],
            "{}: in order, no gap",
            p.channel
        );
        assert_eq!(data_json(&publication)["i"], next[at]);
        next[at] += 1;
    }
    // History is shared too.
    for ch in &channels {
        let h = a
            .api()
            .ok("history", json!({"channel": ch, "limit": -1}))
            .await;
        assert_eq!(h["publications"].as_array().map(Vec::len), Some(11), "{ch}");
    }
}

#[tokio::test]
async fn presence_info_and_user_commands_span_nodes() {
    let cluster = RedisCluster::start(3);
    let a = node(&cluster.url());
    let b = node(&cluster.url());
    let mut alice = Client::connect(a.addr, Wire::Json, &tokens::connect("alice"))
        .await
        .0;
    let mut bob = Client::connect(b.addr, Wire::Json, &tokens::connect("bob"))
        .await
        .0;
    for room in ["chat:one", "chat:two{x}", "chat:three"] {
        alice.ok(cmd::subscribe(room)).await;
        bob.ok(cmd::subscribe(room)).await;
        let s = a.api().ok("presence_stats", json!({"channel": room})).await;
        assert_eq!(
            (s["num_clients"].as_u64(), s["num_users"].as_u64()),
            (Some(2), Some(2)),
            "{room}"
        );
    }
    common::within("both nodes in info", async {
        loop {
            let info = b.api().ok("info", json!({})).await;
            if info["nodes"].as_array().map(Vec::len) == Some(2) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    // A user command sent to node A reaches bob's connection on node B.
    a.api()
        .ok(
            "disconnect",
            json!({"user": "bob", "disconnect": {"code": 4001, "reason": "moved"}}),
        )
        .await;
    let close = bob.expect_close().await;
    assert_eq!((close.code, close.reason.as_str()), (4001, "moved"));
}
