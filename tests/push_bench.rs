//! Push benchmarks against the fake APNs and FCM servers (ignored by default; they
//! measure, they do not assert speed). Run in release:
//!
//! ```sh
//! cargo test --release --test push_bench -- --ignored --nocapture --test-threads 1
//! ```
//!
//! - `sustained_pushes_per_provider`: 1,000 devices per provider, 20 direct sends to all
//!   of them (20,000 pushes per provider); pushes/s from the first send call to the
//!   fake's last accepted request.
//! - `publish_to_push_latency`: 2,000 publications at 200/s into a conversation whose
//!   one other member is offline with an APNs device; latency from before the publish
//!   call to the fake receiving the push; p50, p99, max.
//! - `..._cluster`: the same in cluster mode (`broker.kind = "redis"` on a throwaway
//!   `redis-server`): devices in Redis, the queue a Redis stream with a consumer group.

#[allow(unused_imports)]
mod common;
mod fakes;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::{Api, Server};
use fakes::apns::FakeApns;
use fakes::fcm::FakeFcm;
use fakes::Dir;
use herald::cluster::testing::RedisServer;
use serde_json::json;

const TOML: &str = r#"
[http]
workers = 1

[store]
sync = "full"

[[namespaces]]
name = "chat"
persist = true
members = true
push = true
"#;

fn apns_token(i: usize) -> String {
    format!("{i:064x}")
}

/// Herald (in cluster mode when `redis` is given) and the fakes.
async fn setup(redis: Option<&RedisServer>) -> (Server, FakeApns, FakeFcm, Dir) {
    let dir = Dir::new();
    let apns = FakeApns::start(dir.path()).await;
    let fcm_dir = dir.path().join("fcm");
    std::fs::create_dir_all(&fcm_dir).expect("fcm dir");
    let fcm = FakeFcm::start(&fcm_dir).await;
    let mut env: Vec<(String, String)> = vec![("HERALD_STORE__PATH".into(), dir.str().into())];
    env.extend(apns.env());
    env.extend(fcm.env());
    if let Some(r) = redis {
        env.push(("HERALD_BROKER__KIND".into(), "redis".into()));
        env.push(("HERALD_BROKER__REDIS_URL".into(), r.url()));
    }
    let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let srv = Server::start_config(TOML, &pairs);
    (srv, apns, fcm, dir)
}

async fn register_many(api: &Api, user: &str, platform: &str, tokens: Vec<String>) {
    for chunk in tokens.chunks(50) {
        let calls = chunk.iter().map(|t| {
            api.ok(
                "device_register",
                json!({"user": user, "platform": platform, "token": t}),
            )
        });
        futures_util::future::join_all(calls).await;
    }
}

async fn wait_count(log: &fakes::Log, n: usize, limit: Duration) -> Instant {
    let deadline = Instant::now() + limit;
    loop {
        if log.count() >= n {
            return Instant::now();
        }
        assert!(
            Instant::now() < deadline,
            "only {} of {n} pushes arrived",
            log.count()
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn sustained_pushes_per_provider() {
    sustained(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn sustained_pushes_per_provider_cluster() {
    let redis = RedisServer::start();
    sustained(Some(&redis)).await;
}

async fn sustained(redis: Option<&RedisServer>) {
    const DEVICES: usize = 1000;
    const ROUNDS: usize = 20;
    let (srv, apns, fcm, _dir) = setup(redis).await;
    let api = srv.api();
    register_many(
        &api,
        "bench-apns",
        "ios",
        (0..DEVICES).map(apns_token).collect(),
    )
    .await;
    register_many(
        &api,
        "bench-fcm",
        "android",
        (0..DEVICES).map(|i| format!("fcm-bench-{i}")).collect(),
    )
    .await;
    for (name, user, log) in [
        ("apns", "bench-apns", &apns.log),
        ("fcm", "bench-fcm", &fcm.log),
    ] {
        let before = log.count();
        let t0 = Instant::now();
        for _ in 0..ROUNDS {
            api.ok(
                "send_push_notification",
                json!({"recipient": {"filter": {"users": [user]}},
                       "notification": {"title": "Bench", "body": "sustained throughput"}}),
            )
            .await;
        }
        let queued = t0.elapsed();
        let total = DEVICES * ROUNDS;
        let done = wait_count(log, before + total, Duration::from_secs(300)).await;
        let secs = done.duration_since(t0).as_secs_f64();
        println!(
            "push_bench {name}{}: {total} pushes in {secs:.2} s = {:.0} pushes/s (queueing took {:.2} s)",
            if redis.is_some() { " (cluster)" } else { "" },
            total as f64 / secs,
            queued.as_secs_f64()
        );
    }
    assert!(
        apns.log.violations().is_empty(),
        "{:?}",
        apns.log.violations()
    );
    assert!(
        fcm.log.violations().is_empty(),
        "{:?}",
        fcm.log.violations()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn publish_to_push_latency() {
    latency(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn publish_to_push_latency_cluster() {
    let redis = RedisServer::start();
    latency(Some(&redis)).await;
}

async fn latency(redis: Option<&RedisServer>) {
    const N: usize = 2000;
    const RATE: u64 = 200;
    let (srv, apns, _fcm, _dir) = setup(redis).await;
    let api = srv.api();
    api.ok(
        "conversation_create",
        json!({"channel": "chat:latency", "users": ["offline"]}),
    )
    .await;
    let token = apns_token(7);
    register_many(&api, "offline", "ios", vec![token.clone()]).await;

    let mut sent: HashMap<u64, Instant> = HashMap::new();
    let start = Instant::now();
    for i in 0..N {
        let due = start + Duration::from_micros(i as u64 * 1_000_000 / RATE);
        tokio::time::sleep_until(due.into()).await;
        let t = Instant::now();
        let r = api
            .ok(
                "publish",
                json!({"channel": "chat:latency", "data": {"text": format!("m{i}")}}),
            )
            .await;
        sent.insert(r["offset"].as_u64().expect("offset"), t);
    }
    wait_count(&apns.log, N, Duration::from_secs(120)).await;
    let mut lat: Vec<Duration> = apns
        .log
        .for_token(&token)
        .iter()
        .filter_map(|s| {
            let o: u64 = s.payload["offset"].as_str()?.parse().ok()?;
            Some(s.at.duration_since(*sent.get(&o)?))
        })
        .collect();
    lat.sort();
    let pct = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)];
    println!(
        "push_bench latency{}: {} pushes at {RATE}/s: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        if redis.is_some() { " (cluster)" } else { "" },
        lat.len(),
        pct(0.50).as_secs_f64() * 1e3,
        pct(0.99).as_secs_f64() * 1e3,
        lat.last().copied().unwrap_or_default().as_secs_f64() * 1e3
    );
    assert_eq!(lat.len(), N);
    assert!(
        apns.log.violations().is_empty(),
        "{:?}",
        apns.log.violations()
    );
}
