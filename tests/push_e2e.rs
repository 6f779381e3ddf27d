//! Push notifications end to end with the real `herald` binary against the fake APNs and
//! FCM servers: who gets an offline push, dead-token cleanup, Retry-After, and a
//! SIGKILL with pushes still queued (all sent after the restart, each once).

mod common;
mod fakes;
mod push_binary;

use std::collections::BTreeMap;
use std::time::Duration;

use common::client::cmd;
use common::{tokens, Client, Wire};
use fakes::apns::FakeApns;
use fakes::fcm::FakeFcm;
use fakes::{Dir, Reply};
use push_binary::{apns_token, free_port, Herald};
use serde_json::{json, Value};

const KEY: &str = "e2e-push-key";

const CONFIG: &str = r#"
[store]
sync = "normal"

[push]
backoff_min = "20ms"
backoff_max = "200ms"
max_attempts = 1000

[[namespaces]]
name = "chat"
persist = true
members = true
allow_subscribe_for_client = false
push = true
"#;

/// Starts the binary with this test's config, a store in `dir` and the fakes' keys.
async fn spawn(port: u16, dir: &Dir, apns: &FakeApns, fcm: &FakeFcm) -> Herald {
    let config = dir.path().join("herald.toml");
    std::fs::write(&config, CONFIG).expect("write config");
    let mut env: Vec<(String, String)> = vec![
        ("HERALD_API__KEY".into(), KEY.into()),
        ("HERALD_AUTH__HMAC_SECRET".into(), common::SECRET.into()),
        (
            "HERALD_STORE__PATH".into(),
            dir.path().join("store").display().to_string(),
        ),
    ];
    env.extend(apns.env().into_iter().chain(fcm.env()));
    Herald::spawn(port, &config, KEY, &env).await
}

async fn fakes(dir: &Dir) -> (FakeApns, FakeFcm) {
    let apns = FakeApns::start(dir.path()).await;
    let fcm_dir = dir.path().join("fcm");
    std::fs::create_dir_all(&fcm_dir).expect("fcm dir");
    (apns, FakeFcm::start(&fcm_dir).await)
}

#[tokio::test]
async fn binary_pushes_to_offline_members_only_and_cleans_up() {
    let dir = Dir::new();
    let (apns, fcm) = fakes(&dir).await;
    let h = spawn(free_port(), &dir, &apns, &fcm).await;
    h.api(
        "conversation_create",
        json!({"channel": "chat:e2e", "users": ["alice", "bob", "carol", "dave"]}),
    )
    .await;
    let (ta, tb, tc, td, gone) = (
        apns_token("alice"),
        apns_token("bob"),
        apns_token("carol"),
        apns_token("dave"),
        apns_token("gone"),
    );
    apns.log.script(&gone, &[Reply::Unregistered]);
    fcm.log
        .script("fcm-carol", &[Reply::TooMany(Some(1)), Reply::Ok]);
    for (u, p, t) in [
        ("alice", "ios", ta.as_str()),
        ("bob", "ios", tb.as_str()),
        ("carol", "ios", tc.as_str()),
        ("carol", "ios", gone.as_str()),
        ("carol", "android", "fcm-carol"),
        ("dave", "ios", td.as_str()),
    ] {
        h.api(
            "device_register",
            json!({"user": u, "platform": p, "token": t}),
        )
        .await;
    }
    // dave's backend mutes the conversation for him.
    h.api(
        "device_update",
        json!({"users": ["dave"], "mute_update": {"op": "add", "channels": ["chat:e2e"]}}),
    )
    .await;

    let mut bob = Client::connect(h.addr(), Wire::Json, &tokens::connect("bob"))
        .await
        .0;
    bob.ok(cmd::subscribe("chat:e2e")).await;
    let mut alice = Client::connect(h.addr(), Wire::Protobuf, &tokens::connect("alice"))
        .await
        .0;
    alice.ok(cmd::subscribe("chat:e2e")).await;
    alice
        .ok(cmd::publish(
            "chat:e2e",
            &json!({"text": "are you there, carol?"}),
        ))
        .await;
    bob.next_push().await;

    let got = apns.log.wait_for(&tc, 1).await;
    assert_eq!(got[0].payload["aps"]["alert"]["title"], "alice");
    assert_eq!(
        got[0].payload["aps"]["alert"]["body"],
        "are you there, carol?"
    );
    assert_eq!(got[0].payload["aps"]["badge"], 1);
    assert_eq!(got[0].headers["apns-collapse-id"], "chat:e2e");
    let f = fcm.log.wait_for("fcm-carol", 2).await;
    assert_eq!(
        f.iter().map(|s| s.reply).collect::<Vec<_>>(),
        vec![Reply::TooMany(Some(1)), Reply::Ok]
    );
    assert!(f[1].at.duration_since(f[0].at) >= Duration::from_secs(1));
    assert_eq!(
        f[1].payload["notification"]["body"],
        "are you there, carol?"
    );

    // Exactly carol's three devices were queued: not the sender, the online member or
    // the muted one.
    h.wait_metric("herald_push_queued_total", &[("provider", "apns")], 2.0)
        .await;
    h.wait_metric(
        "herald_push_tokens_removed_total",
        &[("provider", "apns")],
        1.0,
    )
    .await;
    h.wait_drained().await;
    assert_eq!(
        h.metric("herald_push_queued_total", &[("provider", "apns")])
            .await,
        2.0
    );
    assert_eq!(
        h.metric("herald_push_queued_total", &[("provider", "fcm")])
            .await,
        1.0
    );
    for (who, t) in [("alice", &ta), ("bob", &tb), ("dave", &td)] {
        assert!(apns.log.for_token(t).is_empty(), "{who} got a push");
    }
    assert_eq!(apns.log.for_token(&gone).len(), 1);
    let list = h
        .api("device_list", json!({"filter": {"users": ["carol"]}}))
        .await;
    let mut left: Vec<String> = list["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|d| d["token"].as_str().unwrap_or_default().to_string())
        .collect();
    left.sort();
    let mut want = vec!["fcm-carol".to_string(), tc.clone()];
    want.sort();
    assert_eq!(left, want, "410 removed the device");
    assert_eq!(
        h.metric("herald_push_sent_total", &[("provider", "fcm")])
            .await,
        1.0
    );
    assert_eq!(
        h.metric(
            "herald_push_retries_total",
            &[("provider", "fcm"), ("reason", "QUOTA_EXCEEDED")]
        )
        .await,
        1.0
    );
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

#[tokio::test]
async fn queued_pushes_survive_sigkill() {
    const N: u64 = 20;
    let dir = Dir::new();
    let (apns, fcm) = fakes(&dir).await;
    // Providers down: every push stays queued, retrying.
    apns.log.set_default(Reply::Unavailable);
    fcm.log.set_default(Reply::Unavailable);
    let port = free_port();
    let mut h = spawn(port, &dir, &apns, &fcm).await;
    h.api(
        "conversation_create",
        json!({"channel": "chat:r", "users": ["ivy"]}),
    )
    .await;
    let ti = apns_token("ivy");
    h.api(
        "device_register",
        json!({"user": "ivy", "platform": "ios", "token": ti}),
    )
    .await;
    h.api(
        "device_register",
        json!({"user": "ivy", "platform": "android", "token": "fcm-ivy"}),
    )
    .await;
    for i in 0..N {
        h.api(
            "publish",
            json!({"channel": "chat:r", "data": {"text": format!("m{i}")}}),
        )
        .await;
    }
    h.wait_metric(
        "herald_push_queued_total",
        &[("provider", "apns")],
        N as f64,
    )
    .await;
    h.wait_metric("herald_push_queued_total", &[("provider", "fcm")], N as f64)
        .await;
    // Some sends were attempted (and refused) before the kill.
    apns.log
        .wait_until("a refused send", Duration::from_secs(10), |s| !s.is_empty())
        .await;
    h.child.kill().expect("SIGKILL");
    let _ = h.child.wait();
    drop(h);
    // A send the dead process had in flight may still be answered (and logged) after
    // this point; such a push did reach the phone, which at-least-once allows twice.
    // "Once" is checked for the restarted process: its connections come after this.
    let restarted_after = fakes::tls::connections_accepted();

    apns.log.set_default(Reply::Ok);
    fcm.log.set_default(Reply::Ok);
    let h = spawn(port, &dir, &apns, &fcm).await;
    let delivered = |seen: &[fakes::Seen], token: &str, offset: &dyn Fn(&Value) -> Option<u64>| {
        let mut per: BTreeMap<u64, usize> = BTreeMap::new();
        for s in seen
            .iter()
            .filter(|s| s.token == token && s.reply == Reply::Ok && s.conn > restarted_after)
        {
            if let Some(o) = offset(&s.payload) {
                *per.entry(o).or_default() += 1;
            }
        }
        per
    };
    let apns_offset = |p: &Value| p["offset"].as_str()?.parse().ok();
    let fcm_offset = |p: &Value| p["data"]["offset"].as_str()?.parse().ok();
    apns.log
        .wait_until("all apns pushes", Duration::from_secs(30), |seen| {
            delivered(seen, &ti, &apns_offset).len() as u64 == N
        })
        .await;
    fcm.log
        .wait_until("all fcm pushes", Duration::from_secs(30), |seen| {
            delivered(seen, "fcm-ivy", &fcm_offset).len() as u64 == N
        })
        .await;
    h.wait_drained().await;
    let want: BTreeMap<u64, usize> = (1..=N).map(|o| (o, 1)).collect();
    assert_eq!(
        delivered(&apns.log.seen(), &ti, &apns_offset),
        want,
        "each message once"
    );
    assert_eq!(
        delivered(&fcm.log.seen(), "fcm-ivy", &fcm_offset),
        want,
        "each message once"
    );
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
