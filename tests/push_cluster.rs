//! Push in cluster mode, end to end: two real `herald` binaries on one real
//! `redis-server`, sending to the fake APNs and FCM. The queue is a Redis stream with a
//! consumer group and the devices live in Redis, so a device registered through one node
//! gets pushes caused on the other; each push is sent by exactly one node (counted at
//! the fakes); Retry-After holds across nodes; the pushes a SIGKILLed node had taken are
//! sent by the other node once their visibility timeout passes.

mod common;
mod fakes;
mod push_binary;

use std::collections::BTreeMap;
use std::time::Duration;

use common::client::cmd;
use common::{tokens, Client, Wire};
use fakes::apns::FakeApns;
use fakes::fcm::FakeFcm;
use fakes::{Dir, Reply, Seen};
use herald::cluster::testing::RedisServer;
use push_binary::{apns_token, free_port, Herald};
use serde_json::json;

const KEY: &str = "cluster-push-key";

/// Members and messages in a store both nodes open (as the other cluster tests do: no
/// ScyllaDB here); devices, mutes and the queue in Redis.
const CONFIG: &str = r#"
[store]
sync = "normal"

[broker]
kind = "redis"

[push]
backoff_min = "20ms"
backoff_max = "200ms"
max_attempts = 1000
visibility_timeout = "5s"

[[namespaces]]
name = "chat"
persist = true
members = true
presence = true
allow_subscribe_for_client = false
push = true
"#;

struct Cluster {
    dir: Dir,
    redis: RedisServer,
    apns: FakeApns,
    fcm: FakeFcm,
}

impl Cluster {
    async fn start() -> Cluster {
        let dir = Dir::new();
        let apns = FakeApns::start(dir.path()).await;
        let fcm_dir = dir.path().join("fcm");
        std::fs::create_dir_all(&fcm_dir).expect("fcm dir");
        let fcm = FakeFcm::start(&fcm_dir).await;
        std::fs::write(dir.path().join("herald.toml"), CONFIG).expect("write config");
        Cluster {
            dir,
            redis: RedisServer::start(),
            apns,
            fcm,
        }
    }

    async fn node(&self) -> Herald {
        let mut env: Vec<(String, String)> = vec![
            ("HERALD_API__KEY".into(), KEY.into()),
            ("HERALD_AUTH__HMAC_SECRET".into(), common::SECRET.into()),
            ("HERALD_BROKER__REDIS_URL".into(), self.redis.url()),
            (
                "HERALD_STORE__PATH".into(),
                self.store().display().to_string(),
            ),
        ];
        env.extend(self.apns.env().into_iter().chain(self.fcm.env()));
        Herald::spawn(free_port(), &self.dir.path().join("herald.toml"), KEY, &env).await
    }

    fn store(&self) -> std::path::PathBuf {
        self.dir.path().join("store")
    }

    fn no_violations(&self) {
        assert!(
            self.apns.log.violations().is_empty(),
            "{:?}",
            self.apns.log.violations()
        );
        assert!(
            self.fcm.log.violations().is_empty(),
            "{:?}",
            self.fcm.log.violations()
        );
    }
}

/// Accepted sends per message offset to `token`, on connections numbered above `after`.
fn delivered(seen: &[Seen], token: &str, after: u64) -> BTreeMap<u64, usize> {
    let mut per = BTreeMap::new();
    for s in seen
        .iter()
        .filter(|s| s.token == token && s.reply == Reply::Ok && s.conn > after)
    {
        let offset = s.payload["offset"]
            .as_str()
            .or(s.payload["data"]["offset"].as_str())
            .and_then(|o| o.parse::<u64>().ok());
        if let Some(o) = offset {
            *per.entry(o).or_default() += 1;
        }
    }
    per
}

async fn sum_metric(nodes: &[&Herald], name: &str, labels: &[(&str, &str)]) -> f64 {
    let mut n = 0.0;
    for h in nodes {
        n += h.metric(name, labels).await;
    }
    n
}

#[tokio::test]
async fn two_nodes_share_devices_and_send_each_push_once() {
    const N: u64 = 10;
    let c = Cluster::start().await;
    let (a, b) = (c.node().await, c.node().await);
    let (tb, tc, td, gone) = (
        apns_token("bob"),
        apns_token("carol"),
        apns_token("dave"),
        apns_token("gone"),
    );
    // Every send to it is refused: pushes queued before the first refusal came back may
    // still be tried (they were in flight), never delivered.
    c.apns.log.script(&gone, &[Reply::Unregistered; N as usize]);
    c.fcm
        .log
        .script("fcm-carol", &[Reply::TooMany(Some(1)), Reply::Ok]);
    // Devices and the mute go through node B; the messages through node A.
    for (u, p, t) in [
        ("bob", "ios", tb.as_str()),
        ("carol", "ios", tc.as_str()),
        ("carol", "ios", gone.as_str()),
        ("carol", "android", "fcm-carol"),
        ("dave", "ios", td.as_str()),
    ] {
        b.api(
            "device_register",
            json!({"user": u, "platform": p, "token": t}),
        )
        .await;
    }
    b.api(
        "device_update",
        json!({"users": ["dave"], "mute_update": {"op": "add", "channels": ["chat:cl"]}}),
    )
    .await;
    a.api(
        "conversation_create",
        json!({"channel": "chat:cl", "users": ["alice", "bob", "carol", "dave"]}),
    )
    .await;
    let listed = a
        .api("device_list", json!({"filter": {"users": ["carol"]}}))
        .await;
    assert_eq!(listed["items"].as_array().map(Vec::len), Some(3));

    // bob is online on node B (cluster-wide presence), alice sends through node A.
    let mut bob = Client::connect(b.addr(), Wire::Json, &tokens::connect("bob"))
        .await
        .0;
    bob.ok(cmd::subscribe("chat:cl")).await;
    let mut alice = Client::connect(a.addr(), Wire::Protobuf, &tokens::connect("alice"))
        .await
        .0;
    alice.ok(cmd::subscribe("chat:cl")).await;
    for i in 0..N {
        alice
            .ok(cmd::publish("chat:cl", &json!({"text": format!("m{i}")})))
            .await;
        bob.next_push().await;
    }

    let want: BTreeMap<u64, usize> = (1..=N).map(|o| (o, 1)).collect();
    c.apns
        .log
        .wait_until("every apns push", Duration::from_secs(30), |s| {
            delivered(s, &tc, 0).len() as u64 == N
        })
        .await;
    c.fcm
        .log
        .wait_until("every fcm push", Duration::from_secs(30), |s| {
            delivered(s, "fcm-carol", 0).len() as u64 == N
        })
        .await;
    a.wait_drained().await;
    b.wait_drained().await;
    // Each push reached the provider once, whichever node sent it.
    assert_eq!(
        delivered(&c.apns.log.seen(), &tc, 0),
        want,
        "apns: once each"
    );
    assert_eq!(
        delivered(&c.fcm.log.seen(), "fcm-carol", 0),
        want,
        "fcm: once each"
    );
    let both = [&a, &b];
    assert_eq!(
        sum_metric(&both, "herald_push_sent_total", &[("provider", "apns")]).await,
        N as f64
    );
    assert_eq!(
        sum_metric(&both, "herald_push_sent_total", &[("provider", "fcm")]).await,
        N as f64
    );
    // The 429 was honoured: the retry came at least Retry-After (1 s) later.
    let f = c.fcm.log.for_token("fcm-carol");
    let throttled: Vec<&Seen> = f.iter().filter(|s| s.reply != Reply::Ok).collect();
    assert_eq!(throttled.len(), 1);
    let retried = f
        .iter()
        .find(|s| {
            s.reply == Reply::Ok
                && s.payload["data"]["offset"] == throttled[0].payload["data"]["offset"]
        })
        .expect("the throttled push was retried");
    assert!(retried.at.duration_since(throttled[0].at) >= Duration::from_secs(1));
    // Not the sender, not the online member, not the muted one.
    for (who, t) in [("alice", apns_token("alice")), ("bob", tb), ("dave", td)] {
        assert!(c.apns.log.for_token(&t).is_empty(), "{who} got a push");
    }
    // The dead token's device is gone, for both nodes.
    let tried = c.apns.log.for_token(&gone);
    assert!(!tried.is_empty() && tried.iter().all(|s| s.reply == Reply::Unregistered));
    for h in both {
        let left = h
            .api("device_list", json!({"filter": {"users": ["carol"]}}))
            .await;
        let mut tokens: Vec<&str> = left["items"]
            .as_array()
            .expect("items")
            .iter()
            .filter_map(|d| d["token"].as_str())
            .collect();
        tokens.sort();
        let mut want = vec!["fcm-carol", tc.as_str()];
        want.sort();
        assert_eq!(tokens, want);
    }
    // Cluster mode keeps nothing of push in the node's own files.
    assert!(!c.store().join("push.db").exists());
    c.no_violations();
}

#[tokio::test]
async fn pushes_a_killed_node_had_taken_are_sent_by_the_other() {
    const N: u64 = 12;
    let c = Cluster::start().await;
    let mut a = c.node().await;
    a.api(
        "conversation_create",
        json!({"channel": "chat:k", "users": ["ivy"]}),
    )
    .await;
    let ti = apns_token("ivy");
    for (p, t) in [("ios", ti.as_str()), ("android", "fcm-ivy")] {
        a.api(
            "device_register",
            json!({"user": "ivy", "platform": p, "token": t}),
        )
        .await;
    }
    // The providers hang: node A takes every push and keeps it in flight.
    c.apns.log.hold(true);
    c.fcm.log.hold(true);
    for i in 0..N {
        a.api(
            "publish",
            json!({"channel": "chat:k", "data": {"text": format!("m{i}")}}),
        )
        .await;
    }
    for (what, log) in [("apns", &c.apns.log), ("fcm", &c.fcm.log)] {
        let mut n = 0;
        for _ in 0..400 {
            n = log.waiting();
            if n as u64 == N {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        assert_eq!(n as u64, N, "{what}: sends in flight on node A");
    }
    // Node B joins; everything is taken by A, so B has nothing to send yet.
    let b = c.node().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(c.apns.log.waiting() as u64, N);
    assert_eq!(c.fcm.log.waiting() as u64, N);
    assert_eq!(b.metric("herald_push_sent_total", &[]).await, 0.0);

    a.child.kill().expect("SIGKILL");
    let _ = a.child.wait();
    drop(a);
    // Whatever comes on connections opened from now on is node B's.
    let after_kill = fakes::tls::connections_accepted();
    c.apns.log.hold(false);
    c.fcm.log.hold(false);

    let want: BTreeMap<u64, usize> = (1..=N).map(|o| (o, 1)).collect();
    c.apns
        .log
        .wait_until("B sends every apns push", Duration::from_secs(30), |s| {
            delivered(s, &ti, after_kill).len() as u64 == N
        })
        .await;
    c.fcm
        .log
        .wait_until("B sends every fcm push", Duration::from_secs(30), |s| {
            delivered(s, "fcm-ivy", after_kill).len() as u64 == N
        })
        .await;
    b.wait_drained().await;
    assert_eq!(delivered(&c.apns.log.seen(), &ti, after_kill), want);
    assert_eq!(delivered(&c.fcm.log.seen(), "fcm-ivy", after_kill), want);
    assert_eq!(
        b.metric("herald_push_sent_total", &[("provider", "apns")])
            .await,
        N as f64
    );
    assert_eq!(
        b.metric("herald_push_sent_total", &[("provider", "fcm")])
            .await,
        N as f64
    );
    c.no_violations();
}
