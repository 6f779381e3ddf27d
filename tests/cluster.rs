//! Cluster mode: two in-process Herald nodes sharing a real `redis-server` (started on a
//! free port for each test, never a system one) behave as one hub: publications cross
//! nodes in order with gap-free offsets, presence and the per-user limit are
//! cluster-wide, user commands reach the node holding the user's connections, and
//! `info` lists every node.

mod common;

use common::client::{cmd, data_json};
use common::{tokens, Client, Server, Wire};
use herald::cluster::testing::RedisServer;
use serde_json::{json, Value};

/// Namespaces of the cluster tests; short heartbeats so `info` settles quickly.
const CLUSTER_TOML: &str = r#"
[http]
workers = 2
shutdown_timeout = "3s"

[broker]
kind = "redis"
redis_timeout = "1s"
node_heartbeat = "300ms"
node_ttl = "3s"

# Every subscription recoverable.
[[namespaces]]
name = "feed"
force_recovery = true

[[namespaces]]
name = "chat"
join_leave = true
"#;

fn node(redis: &RedisServer, extra: &[(&str, &str)]) -> Server {
    let url = redis.url();
    let mut env = vec![("HERALD_BROKER__REDIS_URL", url.as_str())];
    env.extend_from_slice(extra);
    Server::start_config(CLUSTER_TOML, &env)
}

/// Redis and two nodes, A and B.
fn cluster(extra: &[(&str, &str)]) -> (RedisServer, Server, Server) {
    let redis = RedisServer::start();
    let a = node(&redis, extra);
    let b = node(&redis, extra);
    (redis, a, b)
}

async fn client(srv: &Server, user: &str) -> Client {
    Client::connect(srv.addr, Wire::Json, &tokens::connect(user))
        .await
        .0
}

#[tokio::test]
async fn publications_cross_nodes_in_order_with_gap_free_offsets() {
    let (_redis, a, b) = cluster(&[]);
    let mut on_a = client(&a, "alice").await;
    let mut on_b = Client::connect(b.addr, Wire::Protobuf, &tokens::connect("bob"))
        .await
        .0;
    let sub = on_a.ok(cmd::subscribe("feed:news")).await;
    let epoch = sub.subscribe.expect("subscribe result").epoch;
    on_b.ok(cmd::subscribe("feed:news")).await;

    // Through node B's API, and through a client publishing on node A.
    let api = b.api();
    let mut acked = Vec::new();
    for i in 1..=30 {
        let r = api.publish("feed:news", json!({ "i": i })).await;
        assert_eq!(r["epoch"], epoch.as_str(), "one epoch across nodes");
        acked.push(r["offset"].as_u64().expect("offset"));
    }
    assert_eq!(acked, (1..=30).collect::<Vec<u64>>());

    for c in [&mut on_a, &mut on_b] {
        for i in 1..=30u64 {
            let p = c.next_pub("feed:news").await;
            assert_eq!(p.offset, i, "in order, no gap");
            assert_eq!(data_json(&p)["i"], i);
        }
    }
    // History is shared too.
    let h = a
        .api()
        .ok("history", json!({"channel": "feed:news", "limit": -1}))
        .await;
    assert_eq!(h["publications"].as_array().map(Vec::len), Some(30));
    assert_eq!(h["offset"], 30);
}

/// Both nodes publishing to one channel at the same time: one sequence, delivered in
/// order to clients on both nodes.
#[tokio::test]
async fn concurrent_publishers_on_both_nodes_make_one_sequence() {
    let (_redis, a, b) = cluster(&[]);
    let mut on_a = client(&a, "alice").await;
    let mut on_b = client(&b, "bob").await;
    on_a.ok(cmd::subscribe("feed:busy")).await;
    on_b.ok(cmd::subscribe("feed:busy")).await;
    let (api_a, api_b) = (a.api(), b.api());
    let sends = (0..20u64).flat_map(|i| {
        [(&api_a, i), (&api_b, 100 + i)].map(|(api, i)| async move {
            let body = json!({"channel": "feed:busy", "data": {"i": i}});
            api.call("publish", body).await["result"]["offset"].as_u64()
        })
    });
    let mut offsets: Vec<u64> = futures_util::future::join_all(sends)
        .await
        .into_iter()
        .map(|o| o.expect("acknowledged"))
        .collect();
    offsets.sort_unstable();
    assert_eq!(offsets, (1..=40).collect::<Vec<u64>>(), "each offset once");
    for c in [&mut on_a, &mut on_b] {
        for i in 1..=40u64 {
            assert_eq!(c.next_pub("feed:busy").await.offset, i);
        }
    }
}

#[tokio::test]
async fn presence_and_connection_limit_are_cluster_wide() {
    let (_redis, a, b) = cluster(&[("HERALD_CLIENT__MAX_CONNECTIONS_PER_USER", "1")]);
    let mut alice = client(&a, "alice").await;
    let mut bob = client(&b, "bob").await;
    alice.ok(cmd::subscribe("room")).await;
    bob.ok(cmd::subscribe("room")).await;

    for srv in [&a, &b] {
        let p = srv.api().ok("presence", json!({"channel": "room"})).await;
        let users: Vec<&str> = p["presence"]
            .as_object()
            .expect("presence map")
            .values()
            .filter_map(|i| i["user"].as_str())
            .collect();
        assert_eq!(users.len(), 2, "{p}");
        assert!(users.contains(&"alice") && users.contains(&"bob"));
        let s = srv
            .api()
            .ok("presence_stats", json!({"channel": "room"}))
            .await;
        assert_eq!(
            (s["num_clients"].as_u64(), s["num_users"].as_u64()),
            (Some(2), Some(2))
        );
    }
    // A client's presence command sees the other node's client as well.
    let r = alice.ok(cmd::presence_stats("room")).await;
    assert_eq!(r.presence_stats.map(|s| s.num_clients), Some(2));

    bob.ok(cmd::unsubscribe("room")).await;
    let s = a
        .api()
        .ok("presence_stats", json!({"channel": "room"}))
        .await;
    assert_eq!(s["num_clients"], 1);

    // alice holds her one connection on A: B refuses a second.
    let mut second = Client::open(b.addr, Wire::Json).await;
    second
        .send(&herald::protocol::messages::Command {
            id: 1,
            ..cmd::connect(&tokens::connect("alice"))
        })
        .await;
    assert_eq!(second.expect_close().await.code, 3504);
}

#[tokio::test]
async fn user_commands_reach_the_node_holding_the_connection() {
    let (_redis, a, b) = cluster(&[]);
    let mut carol = client(&b, "carol").await;
    carol.ok(cmd::subscribe("chat:x")).await;
    let api = a.api();

    api.ok(
        "subscribe",
        json!({"user": "carol", "channel": "feed:extra"}),
    )
    .await;
    let push = carol
        .push_where("subscribe push", |p| p.subscribe.is_some())
        .await;
    assert_eq!(push.channel, "feed:extra");

    api.ok("unsubscribe", json!({"user": "carol", "channel": "chat:x"}))
        .await;
    let push = carol
        .push_where("unsubscribe push", |p| p.unsubscribe.is_some())
        .await;
    assert_eq!(push.channel, "chat:x");

    api.ok(
        "refresh",
        json!({"user": "carol", "expire_at": common::now() + 3600}),
    )
    .await;
    let push = carol
        .push_where("refresh push", |p| p.refresh.is_some())
        .await;
    assert!(push.refresh.is_some_and(|r| r.expires));

    api.ok(
        "disconnect",
        json!({"user": "carol", "disconnect": {"code": 4001, "reason": "moved"}}),
    )
    .await;
    let close = carol.expect_close().await;
    assert_eq!((close.code, close.reason.as_str()), (4001, "moved"));
}

#[tokio::test]
async fn info_lists_every_node() {
    let (_redis, a, b) = cluster(&[]);
    let _c1 = client(&a, "u1").await;
    let mut c2 = client(&b, "u2").await;
    c2.ok(cmd::subscribe("feed:one")).await;
    // Registrations are refreshed every 300 ms: wait (bounded) for the figures.
    let nodes = common::within("both nodes in info", async {
        loop {
            let info = a.api().ok("info", json!({})).await;
            let nodes = info["nodes"].as_array().cloned().unwrap_or_default();
            let clients: u64 = nodes.iter().filter_map(|n| n["num_clients"].as_u64()).sum();
            let subs: u64 = nodes.iter().filter_map(|n| n["num_subs"].as_u64()).sum();
            if nodes.len() == 2 && clients == 2 && subs == 1 {
                return nodes;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    })
    .await;
    let uids: Vec<&str> = nodes.iter().filter_map(|n| n["uid"].as_str()).collect();
    assert_ne!(uids[0], uids[1]);
    for n in &nodes {
        assert!(n["version"].as_str().is_some_and(|v| !v.is_empty()));
        assert!(n["uptime"].is_u64());
    }
    // Both nodes agree.
    let from_b = b.api().ok("info", json!({})).await;
    let mut uids_b: Vec<String> = from_b["nodes"]
        .as_array()
        .map(|v| {
            v.iter()
                .filter_map(|n| n["uid"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    uids_b.sort();
    let mut uids_a: Vec<String> = uids.iter().map(|s| s.to_string()).collect();
    uids_a.sort();
    assert_eq!(uids_a, uids_b);

    // A node that stops leaves the list.
    b.join().await.expect("node b stops");
    let info = a.api().ok("info", json!({})).await;
    assert_eq!(info["nodes"].as_array().map(Vec::len), Some(1), "{info}");
}

/// Join and leave pushes and a client publish cross nodes too.
#[tokio::test]
async fn join_leave_and_client_publishes_cross_nodes() {
    let (_redis, a, b) = cluster(&[]);
    let mut alice = client(&a, "alice").await;
    alice
        .ok(cmd::subscribe_with(
            herald::protocol::messages::SubscribeRequest {
                channel: "chat:room".into(),
                join_leave: true,
                ..Default::default()
            },
        ))
        .await;
    let mut bob = client(&b, "bob").await;
    bob.ok(cmd::subscribe("chat:room")).await;
    // Her own join comes first; bob's crosses from node B.
    let user_of = |p: &herald::protocol::messages::Push| {
        p.join
            .as_ref()
            .and_then(|j| j.info.as_ref())
            .map(|i| i.user.clone())
    };
    alice
        .push_where("bob's join", |p| user_of(p).as_deref() == Some("bob"))
        .await;
    bob.ok(cmd::publish("chat:room", &json!({"text": "hi"})))
        .await;
    let p = alice
        .push_where("publication", |p| p.publication.is_some())
        .await;
    let data: Value = data_json(p.publication.as_ref().expect("publication"));
    assert_eq!(data["text"], "hi");
    bob.ok(cmd::unsubscribe("chat:room")).await;
    let leave = alice.push_where("leave push", |p| p.leave.is_some()).await;
    assert_eq!(
        leave.leave.and_then(|l| l.info).map(|i| i.user),
        Some("bob".to_string())
    );
}

/// Channels spread over two Redis servers: every one still crosses nodes in order.
#[tokio::test]
async fn channels_spread_over_two_redis_servers() {
    let (r1, r2) = (RedisServer::start(), RedisServer::start());
    let urls = format!("{},{}", r1.url(), r2.url());
    let env = [("HERALD_BROKER__REDIS_URL", urls.as_str())];
    let a = Server::start_config(CLUSTER_TOML, &env);
    let b = Server::start_config(CLUSTER_TOML, &env);
    let mut on_a = client(&a, "alice").await;
    let channels: Vec<String> = (0..8).map(|i| format!("feed:c{i}")).collect();
    for c in &channels {
        on_a.ok(cmd::subscribe(c)).await;
    }
    let api = b.api();
    for round in 1..=3u64 {
        for c in &channels {
            assert_eq!(api.publish(c, json!({ "r": round })).await["offset"], round);
        }
    }
    let mut seen: std::collections::HashMap<String, u64> = Default::default();
    for _ in 0..channels.len() * 3 {
        let p = on_a.next_push().await;
        let publication = p.publication.expect("a publication");
        let last = seen.entry(p.channel.clone()).or_default();
        assert_eq!(publication.offset, *last + 1, "{} in order", p.channel);
        *last = publication.offset;
    }
    assert!(seen.values().all(|&o| o == 3));
    // Presence and user commands work with the registry on the first Redis.
    let s = a
        .api()
        .ok("presence_stats", json!({"channel": "feed:c5"}))
        .await;
    assert_eq!(s["num_clients"], 1);
    api.ok("disconnect", json!({"user": "alice"})).await;
    assert_eq!(on_a.expect_close().await.code, 3503);
}

/// The shipped two-node example is a valid configuration.
#[test]
fn cluster_example_config_is_valid() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/config/cluster.example.toml");
    let text = std::fs::read_to_string(path).expect("config/cluster.example.toml");
    let c = herald::config::Config::load_from(Some(&text), path, Vec::new()).expect("valid");
    assert!(c.broker.is_redis());
}
