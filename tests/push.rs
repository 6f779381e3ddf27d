//! Push notifications, in process, against fake APNs and FCM servers (tests/fakes/):
//! the offline fallback (who gets a push, and what it looks like), dead tokens, retries
//! after Retry-After, the device API and client RPC, direct sends.

mod common;
mod fakes;

use std::time::Duration;

use common::client::cmd;
use common::{tokens, Client, Server, Wire};
use fakes::apns::{self, FakeApns};
use fakes::fcm::FakeFcm;
use fakes::{Dir, Reply};
use serde_json::{json, Value};

const TOML: &str = r#"
[store]
sync = "normal"

[push]
backoff_min = "20ms"
backoff_max = "200ms"

[[namespaces]]
name = "chat"
persist = true
members = true
allow_subscribe_for_client = false
force_recovery = true
push = true
push_title = "{user}"
push_body = "{data.text}"

[[namespaces]]
name = "quiet"
persist = true
members = true
"#;

/// A 64-hex-digit APNs token made from a short name.
fn apns_token(name: &str) -> String {
    let hex: String = name.bytes().map(|b| format!("{b:02x}")).collect();
    format!("{hex:0<64}")
}

struct Env {
    srv: Server,
    apns: FakeApns,
    fcm: FakeFcm,
    _dir: Dir,
}

async fn start() -> Env {
    let dir = Dir::new();
    let apns = FakeApns::start(&dir.path().join(".")).await;
    let fcm_dir = dir.path().join("fcm");
    std::fs::create_dir_all(&fcm_dir).expect("fcm dir");
    let fcm = FakeFcm::start(&fcm_dir).await;
    let mut env: Vec<(String, String)> = vec![("HERALD_STORE__PATH".into(), dir.str().into())];
    env.extend(apns.env());
    env.extend(fcm.env());
    let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let srv = Server::start_config(TOML, &pairs);
    Env {
        srv,
        apns,
        fcm,
        _dir: dir,
    }
}

impl Env {
    async fn register(&self, user: &str, platform: &str, token: &str) -> String {
        let r = self
            .srv
            .api()
            .ok(
                "device_register",
                json!({"user": user, "platform": platform, "token": token}),
            )
            .await;
        r["id"].as_str().expect("device id").to_string()
    }

    /// Waits until nothing is queued, resolving or in flight.
    async fn settle(&self) {
        let info = self.srv.api().ok("info", json!({})).await;
        let uid = info["nodes"][0]["uid"].as_str().expect("uid").to_string();
        let svc = herald::push::service::by_uid(&uid).expect("push service");
        for _ in 0..400 {
            if svc.idle().await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("push did not settle");
    }

    fn assert_clean(&self) {
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

async fn user(srv: &Server, name: &str) -> Client {
    Client::connect(srv.addr, Wire::Json, &tokens::connect(name))
        .await
        .0
}

fn rpc_json(r: &herald::protocol::messages::Reply) -> Value {
    let data = &r.rpc.as_ref().expect("rpc result").data;
    serde_json::from_slice(data).expect("rpc data is json")
}

#[tokio::test]
async fn offline_member_gets_a_push_online_sender_and_muted_do_not() {
    let e = start().await;
    let api = e.srv.api();
    api.ok(
        "conversation_create",
        json!({"channel": "chat:team", "users": ["alice", "bob", "carol", "dave"]}),
    )
    .await;
    let (ta, tb, tc, td) = (
        apns_token("alice"),
        apns_token("bob"),
        apns_token("carol"),
        apns_token("dave"),
    );
    e.register("alice", "ios", &ta).await;
    e.register("bob", "ios", &tb).await;
    e.register("carol", "ios", &tc).await;
    e.register("carol", "android", "fcm-carol-1").await;
    e.register("dave", "ios", &td).await;

    // dave mutes the conversation from his app.
    let mut dave = user(&e.srv, "dave").await;
    let r = dave
        .ok(cmd::rpc("push.mute", &json!({"channel": "chat:team"})))
        .await;
    assert_eq!(rpc_json(&r), json!({}));
    drop(dave);

    // bob is online in the conversation; alice sends.
    let mut bob = user(&e.srv, "bob").await;
    bob.ok(cmd::subscribe("chat:team")).await;
    let mut alice = user(&e.srv, "alice").await;
    alice.ok(cmd::subscribe("chat:team")).await;
    alice
        .ok(cmd::publish("chat:team", &json!({"text": "hello carol"})))
        .await;
    bob.next_push().await;

    let got = e.apns.log.wait_for(&tc, 1).await;
    let p = &got[0];
    assert_eq!(p.headers["apns-topic"], apns::TOPIC);
    assert_eq!(p.headers["apns-push-type"], "alert");
    assert_eq!(p.headers["apns-priority"], "10");
    assert_eq!(p.headers["apns-collapse-id"], "chat:team");
    let exp: i64 = p.headers["apns-expiration"].parse().expect("expiration");
    assert!(exp > herald::auth::now_unix());
    assert!(uuid::Uuid::parse_str(&p.headers["apns-id"]).is_ok());
    assert_eq!(p.payload["aps"]["alert"]["title"], "alice");
    assert_eq!(p.payload["aps"]["alert"]["body"], "hello carol");
    assert_eq!(p.payload["aps"]["badge"], 1, "carol has one unread message");
    assert_eq!(p.payload["aps"]["thread-id"], "chat:team");
    assert_eq!(p.payload["channel"], "chat:team");
    assert_eq!(p.payload["offset"], "1");

    let got = e.fcm.log.wait_for("fcm-carol-1", 1).await;
    let m = &got[0].payload;
    assert_eq!(m["notification"]["title"], "alice");
    assert_eq!(m["notification"]["body"], "hello carol");
    assert_eq!(m["android"]["collapse_key"], "chat:team");
    assert_eq!(m["android"]["priority"], "HIGH");
    assert_eq!(m["android"]["notification"]["notification_count"], 1);
    assert_eq!(m["apns"]["payload"]["aps"]["badge"], 1);
    assert_eq!(m["data"]["channel"], "chat:team");
    assert!(got[0].headers["authorization"].starts_with("Bearer ya29."));

    // A second message: the badge counts both; a publish's own push object wins.
    api.ok(
        "publish",
        json!({"channel": "chat:team", "data": {"text": "ignored"},
               "push": {"title": "Team", "body": "2 new messages", "data": {"k": "v"}}}),
    )
    .await;
    let got = e.apns.log.wait_for(&tc, 2).await;
    assert_eq!(got[1].payload["aps"]["alert"]["title"], "Team");
    assert_eq!(got[1].payload["aps"]["alert"]["body"], "2 new messages");
    assert_eq!(got[1].payload["aps"]["badge"], 2);
    assert_eq!(got[1].payload["k"], "v");
    // ... and `skip` sends none.
    api.ok(
        "publish",
        json!({"channel": "chat:team", "data": {"text": "silent"}, "push": {"skip": true}}),
    )
    .await;

    e.settle().await;
    for (who, t) in [
        ("alice (sender)", &ta),
        ("bob (online)", &tb),
        ("dave (muted)", &td),
    ] {
        assert!(e.apns.log.for_token(t).is_empty(), "{who} got a push");
    }
    assert_eq!(e.apns.log.for_token(&tc).len(), 2);
    assert_eq!(e.fcm.log.for_token("fcm-carol-1").len(), 2);
    assert_eq!(e.apns.distinct_jwts(), 1, "one provider token, reused");
    assert_eq!(e.fcm.token_requests(), 1, "one OAuth token, cached");
    e.assert_clean();

    // A namespace without push sends nothing.
    api.ok(
        "conversation_create",
        json!({"channel": "quiet:x", "users": ["alice", "carol"]}),
    )
    .await;
    api.publish("quiet:x", json!({"text": "no push"})).await;
    e.settle().await;
    assert_eq!(e.apns.log.for_token(&tc).len(), 2);
}

#[tokio::test]
async fn dead_tokens_remove_their_devices() {
    let e = start().await;
    let api = e.srv.api();
    api.ok(
        "conversation_create",
        json!({"channel": "chat:dead", "users": ["erin"]}),
    )
    .await;
    let (gone, bad, good) = (apns_token("gone"), apns_token("bad"), apns_token("good"));
    e.apns.log.script(&gone, &[Reply::Unregistered]);
    e.apns.log.script(&bad, &[Reply::InvalidToken]);
    e.fcm.log.script("fcm-gone", &[Reply::Unregistered]);
    e.fcm.log.script("fcm-bad", &[Reply::InvalidToken]);
    for t in [&gone, &bad, &good] {
        e.register("erin", "ios", t).await;
    }
    e.register("erin", "android", "fcm-gone").await;
    e.register("erin", "web", "fcm-bad").await;
    e.register("erin", "android", "fcm-good").await;

    api.publish("chat:dead", json!({"text": "anyone there?"}))
        .await;
    e.apns.log.wait_for(&good, 1).await;
    e.fcm.log.wait_for("fcm-good", 1).await;
    e.settle().await;

    for t in [&gone, &bad] {
        assert_eq!(
            e.apns.log.for_token(t).len(),
            1,
            "a dead token is not retried"
        );
    }
    for t in ["fcm-gone", "fcm-bad"] {
        assert_eq!(
            e.fcm.log.for_token(t).len(),
            1,
            "a dead token is not retried"
        );
    }
    let list = api
        .ok("device_list", json!({"filter": {"users": ["erin"]}}))
        .await;
    let mut tokens: Vec<String> = list["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|d| d["token"].as_str().unwrap_or_default().to_string())
        .collect();
    tokens.sort();
    let mut want = vec!["fcm-good".to_string(), good.clone()];
    want.sort();
    assert_eq!(tokens, want);

    // The next message goes to the live devices only.
    api.publish("chat:dead", json!({"text": "again"})).await;
    e.apns.log.wait_for(&good, 2).await;
    e.settle().await;
    assert_eq!(e.apns.log.for_token(&gone).len(), 1);
    e.assert_clean();
}

#[tokio::test]
async fn throttled_and_failed_sends_are_retried_after_the_delay() {
    let e = start().await;
    let api = e.srv.api();
    api.ok(
        "conversation_create",
        json!({"channel": "chat:busy", "users": ["finn"]}),
    )
    .await;
    let (slow, flaky) = (apns_token("slow"), apns_token("flaky"));
    e.apns
        .log
        .script(&slow, &[Reply::TooMany(Some(1)), Reply::Ok]);
    e.apns
        .log
        .script(&flaky, &[Reply::Unavailable, Reply::Internal, Reply::Ok]);
    e.fcm
        .log
        .script("fcm-slow", &[Reply::TooMany(Some(1)), Reply::Ok]);
    e.fcm.log.script(
        "fcm-flaky",
        &[Reply::Unavailable, Reply::Internal, Reply::Ok],
    );
    e.register("finn", "ios", &slow).await;
    e.register("finn", "ios", &flaky).await;
    e.register("finn", "android", "fcm-slow").await;
    e.register("finn", "android", "fcm-flaky").await;

    api.publish("chat:busy", json!({"text": "eventually"}))
        .await;
    let slow_seen = e.apns.log.wait_for(&slow, 2).await;
    let fcm_slow = e.fcm.log.wait_for("fcm-slow", 2).await;
    e.apns.log.wait_for(&flaky, 3).await;
    e.fcm.log.wait_for("fcm-flaky", 3).await;
    e.settle().await;

    for seen in [&slow_seen, &fcm_slow] {
        assert_eq!(
            seen.iter().map(|s| s.reply).collect::<Vec<_>>(),
            vec![Reply::TooMany(Some(1)), Reply::Ok]
        );
        // Retry-After: 1 is a lower bound on when the retry may come.
        assert!(seen[1].at.duration_since(seen[0].at) >= Duration::from_secs(1));
    }
    assert_eq!(
        e.apns.log.for_token(&slow).len(),
        2,
        "delivered once, not again"
    );
    assert_eq!(
        e.apns
            .log
            .for_token(&flaky)
            .iter()
            .map(|s| s.reply)
            .collect::<Vec<_>>(),
        vec![Reply::Unavailable, Reply::Internal, Reply::Ok]
    );
    // A retry is the same notification: the apns-id does not change.
    let ids: Vec<String> = e
        .apns
        .log
        .for_token(&flaky)
        .iter()
        .map(|s| s.headers["apns-id"].clone())
        .collect();
    assert!(ids.windows(2).all(|w| w[0] == w[1]), "{ids:?}");
    e.assert_clean();
}

#[tokio::test]
async fn device_api_and_client_rpc() {
    let e = start().await;
    let api = e.srv.api();
    let t1 = apns_token("gina1");
    let id = e.register("gina", "ios", &t1).await;
    let r = api
        .ok(
            "device_register",
            json!({"user": "gina", "platform": "web", "provider": "fcm", "token": "web-gina",
                   "topics": ["news"], "meta": {"browser": "firefox"}}),
        )
        .await;
    let web_id = r["id"].as_str().expect("id").to_string();

    let list = api
        .ok(
            "device_list",
            json!({"filter": {"users": ["gina"]}, "include_total_count": true,
                   "include_meta": true, "include_topics": true}),
        )
        .await;
    assert_eq!(list["total_count"], 2);
    let web = list["items"]
        .as_array()
        .expect("items")
        .iter()
        .find(|d| d["id"] == web_id.as_str())
        .expect("web device")
        .clone();
    assert_eq!(web["provider"], "fcm");
    assert_eq!(web["platform"], "web");
    assert_eq!(web["meta"]["browser"], "firefox");
    assert_eq!(web["topics"], json!(["news"]));

    // Paging.
    let page = api
        .ok(
            "device_list",
            json!({"filter": {"users": ["gina"]}, "limit": 1}),
        )
        .await;
    assert_eq!(page["items"].as_array().map(Vec::len), Some(1));
    let cursor = page["next_cursor"].as_str().expect("cursor").to_string();
    assert!(!cursor.is_empty());
    let page2 = api
        .ok(
            "device_list",
            json!({"filter": {"users": ["gina"]}, "limit": 1, "cursor": cursor}),
        )
        .await;
    assert_eq!(page2["items"].as_array().map(Vec::len), Some(1));
    assert_eq!(page2["next_cursor"], "");

    // Update topics, then send to the topic and to a device id.
    api.ok(
        "device_update",
        json!({"ids": [id], "topics_update": {"op": "add", "topics": ["news"]}}),
    )
    .await;
    let r = api
        .ok(
            "send_push_notification",
            json!({"recipient": {"filter": {"topics": ["news"]}},
                   "notification": {"title": "Breaking", "body": "news", "data": {"x": "1"}}}),
        )
        .await;
    assert_eq!(r["queued"], 2);
    assert!(r["uid"].as_str().is_some_and(|u| !u.is_empty()));
    let a = e.apns.log.wait_for(&t1, 1).await;
    assert_eq!(a[0].payload["aps"]["alert"]["title"], "Breaking");
    assert_eq!(a[0].payload["x"], "1");
    let f = e.fcm.log.wait_for("web-gina", 1).await;
    assert_eq!(f[0].payload["notification"]["body"], "news");
    assert_eq!(f[0].payload["webpush"]["headers"]["Urgency"], "high");

    // A backend's raw APNs payload and headers go out as given.
    api.ok(
        "send_push_notification",
        json!({"recipient": {"filter": {"devices": [id]}},
               "notification": {"apns": {"headers": {"apns-collapse-id": "promo"},
                                         "payload": {"aps": {"alert": {"title": "Raw"}, "badge": 7}, "promo": true}}}}),
    )
    .await;
    let a = e.apns.log.wait_for(&t1, 2).await;
    assert_eq!(a[1].payload["aps"]["badge"], 7);
    assert_eq!(a[1].payload["promo"], true);
    assert_eq!(a[1].headers["apns-collapse-id"], "promo");

    // Client RPC: register over the socket, then unregister by token.
    let mut gina = user(&e.srv, "gina").await;
    let t2 = apns_token("gina2");
    let r = gina
        .ok(cmd::rpc(
            "push.register",
            &json!({"platform": "ios", "token": t2}),
        ))
        .await;
    let rpc_id = rpc_json(&r)["id"].as_str().expect("id").to_string();
    let list = api
        .ok("device_list", json!({"filter": {"ids": [rpc_id]}}))
        .await;
    assert_eq!(list["items"][0]["user"], "gina");
    // Another user cannot take over gina's device by id.
    let mut hugo = user(&e.srv, "hugo").await;
    let err = hugo
        .err(cmd::rpc(
            "push.register",
            &json!({"id": rpc_id, "platform": "ios", "token": apns_token("hugo")}),
        ))
        .await;
    assert_eq!(err.code, 103);
    let r = gina
        .ok(cmd::rpc("push.unregister", &json!({"token": t2})))
        .await;
    assert_eq!(rpc_json(&r)["removed"], 1);
    let err = gina
        .err(cmd::rpc(
            "push.register",
            &json!({"platform": "ios", "token": "not-hex"}),
        ))
        .await;
    assert_eq!(err.code, 107);

    // Bad requests are 107; removal by user.
    for (method, body) in [
        (
            "device_register",
            json!({"user": "x", "platform": "phone", "token": "t"}),
        ),
        (
            "device_register",
            json!({"user": "x", "platform": "ios", "token": "zz"}),
        ),
        ("device_remove", json!({})),
        (
            "device_update",
            json!({"topics_update": {"op": "add", "topics": ["a"]}}),
        ),
        (
            "send_push_notification",
            json!({"recipient": {"filter": {}}}),
        ),
        ("device_list", json!({"filter": {"providers": ["hms"]}})),
    ] {
        let b = api.call(method, body.clone()).await;
        assert_eq!(b["error"]["code"], 107, "{method} {body}: {b}");
    }
    api.ok("device_remove", json!({"users": ["gina"]})).await;
    let list = api
        .ok(
            "device_list",
            json!({"filter": {"users": ["gina"]}, "include_total_count": true}),
        )
        .await;
    assert_eq!(list["total_count"], 0);
    e.settle().await;
    e.assert_clean();
}

#[tokio::test]
async fn push_is_off_without_a_provider() {
    let srv = Server::start();
    let b = srv
        .api()
        .call("device_list", json!({"filter": {"users": ["a"]}}))
        .await;
    assert_eq!(b["error"]["code"], 108, "{b}");
    let mut c = user(&srv, "a").await;
    let err = c
        .err(cmd::rpc(
            "push.register",
            &json!({"platform": "ios", "token": apns_token("a")}),
        ))
        .await;
    assert_eq!(err.code, 108);
}
