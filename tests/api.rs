//! The server HTTP API: every method, its effect on a live client, and its errors.

mod common;

use serde_json::{json, Value};

use common::client::{cmd, data_json};
use common::{now, tokens, Client, Server, Wire, API_KEY};

async fn alice(srv: &Server) -> (Client, String) {
    let (c, res) = Client::connect(srv.addr, Wire::Json, &tokens::connect("alice")).await;
    (c, res.client)
}

#[tokio::test]
async fn api_key_is_required_in_either_header() {
    let srv = Server::start();
    let api = srv.api();
    let body = || b"{}".to_vec();

    let a = api.raw("info", body(), &[]).await;
    assert_eq!(a.status, 401, "missing key: {}", a.text);
    assert_eq!(a.body["error"]["code"], 101, "{}", a.text);
    let a = api.raw("info", body(), &[("X-API-Key", "wrong")]).await;
    assert_eq!(a.status, 401, "wrong key: {}", a.text);
    let wrong = "apikey wrong".to_string();
    let a = api.raw("info", body(), &[("Authorization", &wrong)]).await;
    assert_eq!(a.status, 401, "wrong key: {}", a.text);
    let bearer = format!("Bearer {API_KEY}");
    let a = api.raw("info", body(), &[("Authorization", &bearer)]).await;
    assert_eq!(a.status, 401, "not the apikey scheme: {}", a.text);

    let a = api.raw("info", body(), &[("X-API-Key", API_KEY)]).await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert!(a.body["result"]["nodes"].is_array(), "{}", a.text);
    let apikey = format!("apikey {API_KEY}");
    let a = api.raw("info", body(), &[("Authorization", &apikey)]).await;
    assert_eq!(a.status, 200, "{}", a.text);
}

#[tokio::test]
async fn malformed_body_is_400_and_unknown_method_404() {
    let srv = Server::start();
    let api = srv.api();
    let key = [("X-API-Key", API_KEY)];
    let a = api.raw("publish", b"{not json".to_vec(), &key).await;
    assert_eq!(a.status, 400, "{}", a.text);
    assert_eq!(a.body["error"]["code"], 107, "{}", a.text);
    assert!(a.body["error"]["message"].is_string(), "{}", a.text);

    let a = api.raw("no_such_method", b"{}".to_vec(), &key).await;
    assert_eq!(a.status, 404, "{}", a.text);
    assert_eq!(a.body["error"]["code"], 104, "{}", a.text);

    // An empty body is an empty request.
    let a = api.raw("info", Vec::new(), &key).await;
    assert_eq!(a.status, 200, "{}", a.text);

    // Valid JSON with bad fields is a method error: 200 with an error object.
    let body = api.call("publish", json!({"data": {"x": 1}})).await;
    assert_eq!(body["error"]["code"], 107, "channel missing: {body}");
    let body = api
        .call("publish", json!({"channel": "nope:x", "data": {}}))
        .await;
    assert_eq!(body["error"]["code"], 102, "unknown namespace: {body}");
}

#[tokio::test]
async fn publish_reaches_subscriber() {
    let srv = Server::start();
    let api = srv.api();
    let (mut c, _) = alice(&srv).await;
    c.ok(cmd::subscribe("chat:api")).await;

    let r = api.publish("chat:api", json!({"text": "hi"})).await;
    assert_eq!(r["offset"], 1, "{r}");
    assert!(r["epoch"].as_str().is_some_and(|e| !e.is_empty()), "{r}");
    let p = c.next_pub("chat:api").await;
    assert_eq!((p.offset, data_json(&p)), (1, json!({"text": "hi"})));

    // base64 payloads, tags, and skip_history.
    let r = api
        .ok(
            "publish",
            json!({"channel": "chat:api", "b64data": "eyJiIjo2NH0=", "tags": {"k": "v"}}),
        )
        .await;
    assert_eq!(r["offset"], 2, "{r}");
    let p = c.next_pub("chat:api").await;
    assert_eq!(data_json(&p), json!({"b": 64}));
    assert_eq!(p.tags.get("k").map(String::as_str), Some("v"));

    api.ok(
        "publish",
        json!({"channel": "chat:api", "data": {"n": 3}, "skip_history": true}),
    )
    .await;
    let p = c.next_pub("chat:api").await;
    assert_eq!(data_json(&p), json!({"n": 3}));
    let h = api
        .ok("history", json!({"channel": "chat:api", "limit": -1}))
        .await;
    assert_eq!(h["publications"].as_array().unwrap().len(), 2, "{h}");
}

#[tokio::test]
async fn broadcast_reaches_every_channel() {
    let srv = Server::start();
    let api = srv.api();
    let (mut c, _) = alice(&srv).await;
    c.ok(cmd::subscribe("chat:b1")).await;
    c.ok(cmd::subscribe("news")).await;

    let r = api
        .ok(
            "broadcast",
            json!({"channels": ["chat:b1", "news", "nope:x"], "data": {"all": true}}),
        )
        .await;
    let responses = r["responses"].as_array().expect("responses");
    assert_eq!(responses.len(), 3, "{r}");
    assert_eq!(responses[0]["result"]["offset"], 1, "{r}");
    assert_eq!(responses[2]["error"]["code"], 102, "{r}");
    assert_eq!(
        data_json(&c.next_pub("chat:b1").await),
        json!({"all": true})
    );
    assert_eq!(data_json(&c.next_pub("news").await), json!({"all": true}));

    let body = api
        .call("broadcast", json!({"channels": [], "data": {}}))
        .await;
    assert_eq!(body["error"]["code"], 107, "{body}");
}

#[tokio::test]
async fn subscribe_sends_subscribe_push_then_publications() {
    let srv = Server::start();
    let api = srv.api();
    let (mut c, _) = alice(&srv).await;
    let (mut c2, c2_id) = alice(&srv).await;

    api.ok("subscribe", json!({"user": "alice", "channel": "chat:srv"}))
        .await;
    for client in [&mut c, &mut c2] {
        let p = client.next_push().await;
        assert_eq!(p.channel, "chat:srv", "{p:?}");
        assert!(p.subscribe.is_some(), "subscribe push: {p:?}");
    }
    api.publish("chat:srv", json!({"n": 1})).await;
    assert_eq!(data_json(&c.next_pub("chat:srv").await), json!({"n": 1}));
    assert_eq!(data_json(&c2.next_pub("chat:srv").await), json!({"n": 1}));

    // Only the named client.
    api.ok(
        "subscribe",
        json!({"user": "alice", "channel": "news", "client": c2_id}),
    )
    .await;
    let p = c2.next_push().await;
    assert_eq!((p.channel.as_str(), p.subscribe.is_some()), ("news", true));
    api.publish("news", json!({"n": 2})).await;
    api.publish("chat:srv", json!({"n": 3})).await;
    assert_eq!(data_json(&c2.next_pub("news").await), json!({"n": 2}));
    // c was not subscribed to news: its next push is chat:srv's.
    assert_eq!(data_json(&c.next_pub("chat:srv").await), json!({"n": 3}));

    // `info` becomes the subscription's chan_info.
    api.ok(
        "subscribe",
        json!({"user": "alice", "channel": "chat:info", "client": c2_id, "info": {"vip": true}}),
    )
    .await;
    // (c2 also has chat:srv's third publication queued before it.)
    c2.push_where("subscribe push for chat:info", |p| {
        p.channel == "chat:info" && p.subscribe.is_some()
    })
    .await;
    let p = api.ok("presence", json!({"channel": "chat:info"})).await;
    assert_eq!(
        p["presence"][&c2_id]["chan_info"],
        json!({"vip": true}),
        "{p}"
    );

    let body = api.call("subscribe", json!({"channel": "x"})).await;
    assert_eq!(body["error"]["code"], 107, "user required: {body}");
}

#[tokio::test]
async fn unsubscribe_sends_unsubscribe_push_2000() {
    let srv = Server::start();
    let api = srv.api();
    let (mut c, _) = alice(&srv).await;
    c.ok(cmd::subscribe("chat:u")).await;
    c.ok(cmd::subscribe("chat:marker")).await;

    api.ok("unsubscribe", json!({"user": "alice", "channel": "chat:u"}))
        .await;
    let p = c.next_push().await;
    assert_eq!(p.channel, "chat:u");
    let u = p.unsubscribe.expect("unsubscribe push");
    assert_eq!(u.code, 2000, "{u:?}");

    api.publish("chat:u", json!({"n": 1})).await;
    api.publish("chat:marker", json!({"n": 2})).await;
    assert_eq!(data_json(&c.next_pub("chat:marker").await), json!({"n": 2}));
    // The client may subscribe again.
    c.ok(cmd::subscribe("chat:u")).await;
}

#[tokio::test]
async fn disconnect_closes_with_given_code() {
    let srv = Server::start();
    let api = srv.api();
    let (mut c, _) = alice(&srv).await;
    api.ok(
        "disconnect",
        json!({"user": "alice", "disconnect": {"code": 4000, "reason": "bye"}}),
    )
    .await;
    let close = c.expect_close().await;
    assert_eq!((close.code, close.reason.as_str()), (4000, "bye"));

    // Without a code: force disconnect, no reconnect.
    let (mut c, _) = alice(&srv).await;
    api.ok("disconnect", json!({"user": "alice"})).await;
    assert_eq!(c.expect_close().await.code, 3503);

    // A whitelisted client stays.
    let (mut keep, keep_id) = alice(&srv).await;
    let (mut gone, _) = alice(&srv).await;
    api.ok(
        "disconnect",
        json!({"user": "alice", "whitelist": [keep_id]}),
    )
    .await;
    assert_eq!(gone.expect_close().await.code, 3503);
    keep.roundtrip().await;

    // Only the named client.
    let (mut other, other_id) = alice(&srv).await;
    api.ok(
        "disconnect",
        json!({"user": "alice", "client": other_id, "disconnect": {"code": 3011, "reason": "force reconnect"}}),
    )
    .await;
    assert_eq!(other.expect_close().await.code, 3011);
    keep.roundtrip().await;

    let body = api
        .call(
            "disconnect",
            json!({"user": "alice", "disconnect": {"code": 1000, "reason": "x"}}),
        )
        .await;
    assert_eq!(body["error"]["code"], 107, "{body}");
}

#[tokio::test]
async fn refresh_pushes_new_expiry_or_expires() {
    let srv = Server::start();
    let api = srv.api();
    let (mut c, _) = Client::connect(srv.addr, Wire::Json, &tokens::connect_ttl("alice", 30)).await;
    api.ok(
        "refresh",
        json!({"user": "alice", "expire_at": now() + 600}),
    )
    .await;
    let p = c.next_push().await;
    let r = p.refresh.expect("refresh push");
    assert!(r.expires && r.ttl > 30 && r.ttl <= 600, "{r:?}");
    c.roundtrip().await;

    api.ok("refresh", json!({"user": "alice", "expired": true}))
        .await;
    assert_eq!(c.expect_close().await.code, 3005);
}

#[tokio::test]
async fn presence_and_presence_stats() {
    let srv = Server::start();
    let api = srv.api();
    let (mut c, id) = alice(&srv).await;
    c.ok(cmd::subscribe("chat:p")).await;

    let r = api.ok("presence", json!({"channel": "chat:p"})).await;
    let presence = r["presence"].as_object().expect("presence map");
    assert_eq!(presence.len(), 1, "{r}");
    assert_eq!(presence[&id]["user"], "alice", "{r}");
    assert_eq!(presence[&id]["client"], id.as_str(), "{r}");

    let r = api.ok("presence_stats", json!({"channel": "chat:p"})).await;
    assert_eq!(r, json!({"num_clients": 1, "num_users": 1}));

    let body = api.call("presence", json!({"channel": "nope:p"})).await;
    assert_eq!(body["error"]["code"], 102, "{body}");
}

#[tokio::test]
async fn history_and_history_remove() {
    let srv = Server::start();
    let api = srv.api();
    for n in 1..=3 {
        api.publish("chat:h", json!({"n": n})).await;
    }
    let h = api
        .ok("history", json!({"channel": "chat:h", "limit": -1}))
        .await;
    let pubs = h["publications"].as_array().expect("publications");
    assert_eq!(pubs.len(), 3, "{h}");
    assert_eq!(pubs[0]["data"], json!({"n": 1}), "{h}");
    assert_eq!(pubs[2]["offset"], 3, "{h}");
    assert_eq!(h["offset"], 3, "{h}");
    let epoch = h["epoch"].as_str().expect("epoch").to_string();

    let h = api
        .ok(
            "history",
            json!({"channel": "chat:h", "limit": 1, "reverse": true}),
        )
        .await;
    assert_eq!(h["publications"][0]["offset"], 3, "{h}");
    let h = api
        .ok(
            "history",
            json!({"channel": "chat:h", "limit": -1, "since": {"offset": 1, "epoch": epoch}}),
        )
        .await;
    let offsets: Vec<_> = h["publications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["offset"].clone())
        .collect();
    assert_eq!(offsets, vec![json!(2), json!(3)], "{h}");

    // Without a limit: only the stream position.
    let h = api.ok("history", json!({"channel": "chat:h"})).await;
    assert_eq!(h["publications"], json!([]), "{h}");
    assert_eq!(h["offset"], 3, "{h}");

    api.ok("history_remove", json!({"channel": "chat:h"})).await;
    let h = api
        .ok("history", json!({"channel": "chat:h", "limit": -1}))
        .await;
    assert_eq!(h["publications"], json!([]), "{h}");
    assert_eq!(h["offset"], 3, "the stream position survives: {h}");
    assert_eq!(h["epoch"], epoch.as_str(), "{h}");

    // A client subscribed after the removal sees no history.
    let (mut c, _) = alice(&srv).await;
    c.ok(cmd::subscribe("chat:h")).await;
    let r = c.ok(cmd::history("chat:h", -1, None, false)).await;
    assert!(r.history.unwrap().publications.is_empty());
}

#[tokio::test]
async fn channels_lists_active_channels() {
    let srv = Server::start();
    let api = srv.api();
    let (mut c, _) = alice(&srv).await;
    let (mut c2, _) = Client::connect(srv.addr, Wire::Json, &tokens::connect("bob")).await;
    c.ok(cmd::subscribe("chat:one")).await;
    c2.ok(cmd::subscribe("chat:one")).await;
    c.ok(cmd::subscribe("news")).await;

    let r = api.ok("channels", json!({})).await;
    assert_eq!(r["channels"]["chat:one"]["num_clients"], 2, "{r}");
    assert_eq!(r["channels"]["news"]["num_clients"], 1, "{r}");
    let r = api.ok("channels", json!({"pattern": "chat:*"})).await;
    let names: Vec<&String> = r["channels"].as_object().unwrap().keys().collect();
    assert_eq!(names, vec!["chat:one"], "{r}");
}

#[tokio::test]
async fn info_counts_clients() {
    let srv = Server::start();
    let api = srv.api();
    let (mut c, _) = alice(&srv).await;
    let (_c2, _) = alice(&srv).await;
    let (_c3, _) = Client::connect(srv.addr, Wire::Protobuf, &tokens::connect("bob")).await;
    c.ok(cmd::subscribe("chat:i")).await;
    let r = api.ok("info", json!({})).await;
    let node = &r["nodes"][0];
    assert_eq!(node["num_clients"], 3, "{r}");
    assert_eq!(node["num_users"], 2, "{r}");
    assert_eq!(node["num_channels"], 1, "{r}");
    assert!(node["uid"].as_str().is_some_and(|s| !s.is_empty()), "{r}");
    assert!(node["version"].is_string(), "{r}");
}

#[tokio::test]
async fn batch_runs_each_command() {
    let srv = Server::start();
    let api = srv.api();
    let (mut c, _) = alice(&srv).await;
    c.ok(cmd::subscribe("chat:batch")).await;

    for parallel in [false, true] {
        let body = api
            .call(
                "batch",
                json!({"parallel": parallel, "commands": [
                    {"publish": {"channel": "chat:batch", "data": {"p": parallel}}},
                    {"presence_stats": {"channel": "chat:batch"}},
                    {"publish": {"channel": "nope:x", "data": {}}},
                ]}),
            )
            .await;
        let replies: &Vec<Value> = body["replies"].as_array().expect("replies");
        assert_eq!(replies.len(), 3, "{body}");
        assert!(
            replies[0]["publish"]["offset"].is_u64(),
            "publish reply: {body}"
        );
        assert_eq!(
            replies[1]["presence_stats"],
            json!({"num_clients": 1, "num_users": 1}),
            "{body}"
        );
        assert_eq!(replies[2]["error"]["code"], 102, "{body}");
        assert_eq!(
            data_json(&c.next_pub("chat:batch").await),
            json!({"p": parallel})
        );
    }
}

#[tokio::test]
async fn batch_cannot_nest() {
    let srv = Server::start();
    let body = srv
        .api()
        .call(
            "batch",
            json!({"commands": [{"batch": {"commands": []}}, {"info": {}}]}),
        )
        .await;
    assert_eq!(body["replies"][0]["error"]["code"], 107, "{body}");
    assert!(body["replies"][1]["info"]["nodes"].is_array(), "{body}");
}

#[tokio::test]
async fn health_and_ready() {
    let srv = Server::start();
    for path in ["health", "ready"] {
        let resp = reqwest::get(format!("http://{}/{path}", srv.addr))
            .await
            .expect("request");
        assert_eq!(resp.status().as_u16(), 200, "/{path}");
    }
}

#[tokio::test]
async fn legacy_single_endpoint() {
    let srv = Server::start();
    let resp = reqwest::Client::new()
        .post(format!("http://{}/api", srv.addr))
        .header("Authorization", format!("apikey {API_KEY}"))
        .json(&json!({"method": "publish", "params": {"channel": "news", "data": {"x": 1}}}))
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status().as_u16(), 200);
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body["result"]["offset"], 1, "{body}");
}
